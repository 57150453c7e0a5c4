"""Profiling-cost reduction over the 12-model benchmark set, per engine and set: exact-key
dedup (comparable to the paper's 56.4%) and unit families with check points.

    python bench/reuse_bench.py [--list FILE [FILE ...]] [--configs DIR] [--engines vllm,transformers]
                                [--hardware h100|a100|cpu] [--calibrate DB [DB ...]] [--json PATH]
                                [--tp 1,2,4,8] [--pass-rate PCT | --pass-rates JSON] [--adaptive-keep PCT]

--list names one config file per line (default: fixtures/benchmarks/reuse12.txt, the
public 12-model set); names are looked up in --configs (default: fixtures/configs).
--tp counts each model at each tensor-parallel size as a variant, as the paper counts
variants: one rank's shards (a TP=2 shard equal to another model's TP=1 GEMM is one unit)
plus the collectives. A variant vLLM refuses (heads the size does not divide) is left out
and listed; engines without tensor parallelism (transformers) count TP=1 only.

Every point that must be measured is counted (dooly.profile.plan.reuse_with_families):
exact-key dedup sweeps each distinct unit's grid once; with families the first unit of
each family (in list order, as `dooly sweep --families` goes) is swept in full and
every later one measures its check points, assuming each check passes; the break-even
pass rate is the share of checks that must pass for the families' figure to reach 75%.
The cost model is named in the output: GPUs (h100, a100) are a roofline plus an assumed
per-point overhead; `cpu` has its per-point overhead calibrated from the seconds real
sweeps took (dooly.profile.cost.calibrate_cpu; --calibrate recalibrates from DBs, each
copied to a temporary directory first and opened read-only).

--pass-rate PCT: the reduction expected when that share of the checks passes (measured by
bench/family_lomo.py or bench/vidur_fit.py; --calibrate measures it on its DBs).
--pass-rates JSON: the same with a rate per kind of work (GEMMs, attention, norms, ...:
`kind_of`) read from a JSON either bench wrote: a kind's checks count at its own rate (on
this CPU the cheap pointwise kinds pass and GEMMs and attention, where the seconds are, do
not), a kind the file does not measure at its pooled rate. --calibrate applies its rates
per kind too.
--adaptive-keep PCT: the share of a one-axis unit's grid seconds an adaptive sweep measures
(bench/adaptive_grid.py; --calibrate measures it on its DBs' one-axis units): the
reductions are printed again with every one-axis full sweep adaptive (attention batches
and padded grids are swept whole); the exact-key figure above stays the fixed grid's."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dooly.cli import OneLineParser  # noqa: E402

from dooly.analyze import Analysis, analyze, reuse_summary  # noqa: E402
from dooly.config import load_config  # noqa: E402
from dooly.errors import DoolyInputError  # noqa: E402

PAPER_REDUCTION_PCT = 56.4
FIGURES = ("reduction_pct", "unique_units", "total_units", "independent_cost_s", "dedup_cost_s")


def model_list(list_file: Path, configs: Path) -> list[Path]:
    names = [ln.strip() for ln in list_file.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    return [configs / n for n in names]


def analyze_variants(paths: list[str], engine: str, tps: list[int]) -> tuple[Analysis, list[str]]:
    """Every (model, TP size) variant the engine builds, in one analysis; the variants
    left out, as model@tpN."""
    from dooly.parallel import check_tp
    out, skipped = Analysis(engine), []
    for tp in tps:
        ok = []
        for p in paths:
            try:
                check_tp(load_config(p), tp, engine)
                ok.append(p)
            except DoolyInputError:
                skipped.append(f"{Path(p).stem}@tp{tp}")
        if ok:
            a = analyze(ok, engine, tp=tp)
            out.inventories += a.inventories
            out.failed += getattr(a, "failed", [])
    return out, skipped


TARGET_PCT = 75.0


def calibrated_cpu(dbs: list[Path], tolerance: float = 3.0):
    """(HARDWARE["cpu"] recalibrated from copies of `dbs` (a DB in use is never opened),
    kind -> (checks passed, checks made) on their swept units)."""
    import tempfile
    from dooly.db import Store
    from dooly.db.store import copy_db
    from dooly.profile.cost import calibrate_cpu
    with tempfile.TemporaryDirectory() as tmp:
        stores = []
        for i, db in enumerate(dbs):
            stores.append(Store.open(copy_db(db, Path(tmp) / f"{i}-{db.name}"), readonly=True))
        try:
            return calibrate_cpu(stores)[0], check_pass_rate(stores, tolerance)
        finally:
            for st in stores:
                st.close()


def check_pass_rate(stores, tolerance: float) -> dict[str, tuple[int, int]]:
    """Per kind of work (`kind_of` the unit's op), how many swept units would have passed
    their check points, of how many: each unit of a family with another swept member,
    judged at its three check points by the family trained on the other members only
    (leave-one-unit-out, as `dooly sweep --families` would)."""
    from collections import defaultdict
    from dooly.db import point_json
    from dooly.fit.checks import judge
    from dooly.fit.families import family_data, select_family
    from dooly.graph.family import family_key
    from dooly.profile.checkpoints import check_points
    by_kind: dict[str, tuple[int, int]] = {}
    for store in stores:
        units = {u.key: u for u in store.units() if u.op != "engine.step"}
        for env in store.find_environment(device_kind="cpu"):
            meas = [m for m in store.measurements(env_key=env.key) if m.unit_key in units]
            by = defaultdict(list)
            for m in meas:
                by[m.unit_key].append(m)
            for key, rows in by.items():
                data = family_data(units, meas, exclude=[key]).get((family_key(units[key]), env.key))
                if data is None or len(rows) < 4:
                    continue
                cps = {point_json(p) for p in check_points(units[key], [m.point for m in rows])}
                v = judge(units[key], select_family(data), [m for m in rows if point_json(m.point) in cps],
                          tolerance)
                _count(by_kind, kind_of(units[key].op), int(v.served), 1)
    return by_kind


# what kind of work a label names: a unit's op (vLLM's or the transformers engine's) or a
# Vidur op (its mlp.csv), so a pass rate measured on one engine's or Vidur's units can be
# applied to the same kind of work in the reuse set's (a GEMM's rate to GEMMs); first match
_KINDS = (("kv_write", ("kv_cache",)), ("norm", ("norm",)),
          ("attention", ("attention", "attn_prefill", "attn_decode")),
          ("collective", ("all_reduce", "all_gather")), ("moe", ("moe", "_grouped_mm")),
          ("gemm", ("linear", "mm", "matmul", "proj")), ("rotary", ("rotary", "rope")),
          ("embedding", ("emb",)), ("sampler", ("sampler",)), ("pointwise", ("fused", "act", "add")))


def kind_of(label: str) -> str:
    """The kind of work `label` names (`_KINDS`); the label itself when none matches."""
    low = label.lower()
    return next((kind for kind, words in _KINDS if any(w in low for w in words)), label)


def _count(by_kind: dict, kind: str, passed: int, checked: int) -> None:
    p0, c0 = by_kind.get(kind, (0, 0))
    by_kind[kind] = (p0 + passed, c0 + checked)


def expected_reduction_pct(f: dict, pass_rate: float, by_kind: dict | None = None) -> float:
    """The families' reduction when a share `pass_rate` (0-1) of the checks pass: a failed
    check costs the rest of the unit's grid, what a passing one saves (`check_savings_s`).
    `by_kind`: kind -> (passed, checked) measured per kind (`kind_of`); a kind it names
    counts at its own rate, every other at `pass_rate`."""
    fail = (1 - pass_rate) * f["check_savings_s"]
    for op, saved in f.get("check_savings_by_op", {}).items():
        passed, checked = (by_kind or {}).get(kind_of(op), (0, 0))
        if checked:  # this kind at its own rate instead of the pooled one
            fail += (pass_rate - passed / checked) * saved
    cost = f["families_cost_s"] + fail
    return round(100.0 * (1 - cost / f["independent_cost_s"]), 2)


def rates_from_json(path: Path) -> tuple[float, dict]:
    """(pooled pass rate 0-1, kind -> (passed, checked)) from a JSON that bench/family_lomo.py
    or bench/vidur_fit.py wrote (`family.<label>.checks_passed` as "passed/checked")."""
    obj = json.loads(path.read_text())
    if not isinstance(obj, dict):
        raise ValueError("expected one JSON object")
    by_kind: dict[str, tuple[int, int]] = {}
    for key, v in obj.items():
        if key.startswith("family.") and key.endswith(".checks_passed"):
            try:
                passed, checked = (int(x) for x in str(v).split("/"))
            except ValueError:
                raise ValueError(f"{key}: expected \"passed/checked\", got {v!r}") from None
            _count(by_kind, kind_of(key[len("family."):-len(".checks_passed")]), passed, checked)
    checked = sum(c for _, c in by_kind.values())
    if not checked:
        raise ValueError("family.<op>.checks_passed: no checks in it")
    return sum(p for p, _ in by_kind.values()) / checked, by_kind


def kind_rates(by_kind: dict) -> str:
    return ", ".join(f"{k} {p}/{c}" for k, (p, c) in sorted(by_kind.items()))


def print_families(engine: str, f: dict, source: str = "given") -> None:
    be = f["break_even_pass_pct"]
    print(f"{'':13s} exact-key dedup {f['dedup_reduction_pct']:5.1f}% ({f['dedup_points']} points); "
          f"families + check points {f['families_reduction_pct']:5.1f}% ({f['families_points']} points, "
          f"{f['check_points']} of them check points; {f['families']} families, {f['checked_units']} "
          f"units checked; {TARGET_PCT:.0f}% needs "
          + ("more than every check to pass" if be is None or be > 100 else f"{be:.0f}% of checks to pass")
          + ")", flush=True)
    if "expected_reduction_pct" in f:
        print(f"{'':13s} at the pass rate {source}: families + check points "
              f"{f['expected_reduction_pct']:5.1f}%", flush=True)


def print_adaptive(a: dict) -> None:
    be = a["break_even_pass_pct"]
    print(f"{'':13s} with adaptive grids ({100 * a['adaptive_keep']:.0f}% of a one-axis grid's seconds): "
          f"exact-key dedup {a['dedup_adaptive_reduction_pct']:5.1f}%, families + check points "
          f"{a['families_reduction_pct']:5.1f}% if every check passes ("
          + ("more than every check must pass" if be is None or be > 100 else f"{be:.0f}% of checks must pass")
          + f" for {TARGET_PCT:.0f}%)"
          + (f", {a['expected_reduction_pct']:5.1f}% at the pass rate" if "expected_reduction_pct" in a else ""),
          flush=True)


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", type=Path, nargs="+",
                    default=[ROOT / "fixtures" / "benchmarks" / "reuse12.txt"],
                    help="one file per set of models (default: the public 12-model set)")
    ap.add_argument("--calibrate", type=Path, nargs="+",
                    help="--hardware cpu: recalibrate the per-point overhead from these DBs' sweeps")
    ap.add_argument("--configs", type=Path, default=ROOT / "fixtures" / "configs")
    ap.add_argument("--engines", default="vllm,transformers")
    ap.add_argument("--hardware", default="h100")
    ap.add_argument("--json", type=Path, help="write the figures as one flat JSON object here")
    ap.add_argument("--tp", default="1", help="tensor-parallel sizes, each a variant (e.g. 1,2,4,8)")
    ap.add_argument("--pass-rate", type=float, metavar="PCT",
                    help="the share of checks that pass, in %% (one measured elsewhere: bench/vidur_fit.py, "
                         "bench/family_lomo.py): also print the reduction expected at that rate")
    ap.add_argument("--pass-rates", type=Path, metavar="JSON",
                    help="pass rates per kind of work, from a JSON of bench/family_lomo.py or "
                         "bench/vidur_fit.py: each kind's checks count at its own rate")
    ap.add_argument("--adaptive-keep", type=float, metavar="PCT",
                    help="the share of a one-axis unit's grid seconds an adaptive sweep keeps, in %% (measured "
                         "by bench/adaptive_grid.py): also print the reductions with adaptive full sweeps")
    return ap


def resolve(ap: argparse.ArgumentParser, args) -> tuple[list[int], object]:
    """Check the arguments (ap.error on a bad one) and settle the pass rates, the TP sizes
    and the cost model; returns (TP sizes, hardware)."""
    from dooly.profile.cost import get_hardware
    if args.adaptive_keep is not None and not 0 < args.adaptive_keep <= 100:
        ap.error(f"--adaptive-keep: expected a percentage in (0, 100], got {args.adaptive_keep:g}")
    args.adaptive_keep = None if args.adaptive_keep is None else args.adaptive_keep / 100.0
    if args.pass_rate is not None and not 0 <= args.pass_rate <= 100:
        ap.error(f"--pass-rate: expected a percentage in [0, 100], got {args.pass_rate:g}")
    if args.pass_rate is not None and args.calibrate:
        ap.error("--pass-rate: not with --calibrate, which measures the pass rate on its DBs")
    if args.pass_rates is not None and (args.calibrate or args.pass_rate is not None):
        ap.error("--pass-rates: not with --pass-rate or --calibrate (each gives the pass rate)")
    args.pass_source = "given (--pass-rate)"
    args.pass_rate = None if args.pass_rate is None else args.pass_rate / 100.0
    args.by_kind = None
    if args.pass_rates is not None:
        try:
            args.pass_rate, args.by_kind = rates_from_json(args.pass_rates)
        except (OSError, ValueError) as err:   # one line, as a bad input file is answered
            print(f"reuse_bench: --pass-rates: {args.pass_rates}: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        args.pass_source = f"per kind ({kind_rates(args.by_kind)})"
    try:
        tps = sorted({int(t) for t in args.tp.split(",") if t.strip()}) or [1]
    except ValueError:
        ap.error(f"--tp: expected sizes like 1,2,4,8, got {args.tp!r}")
    if min(tps) < 1:
        ap.error(f"--tp: sizes must be at least 1, got {args.tp!r}")
    try:
        hw = get_hardware(args.hardware)
    except ValueError as err:
        ap.error(str(err))
    if args.calibrate:
        missing = [str(p) for p in args.calibrate if not p.is_file()]
        if missing or args.hardware != "cpu":
            ap.error("--calibrate: needs --hardware cpu and existing DB files"
                     + (f" (missing: {', '.join(missing)})" if missing else ""))
        hw, args.by_kind = calibrated_cpu(args.calibrate)
        passed, checked = (sum(v[i] for v in args.by_kind.values()) for i in (0, 1))
        args.pass_rate = passed / checked if checked else None
        args.pass_source = "measured on the calibration sweeps, per kind"
        print(f"check points on those sweeps: {passed} of {checked} swept units would pass at 3% "
              f"(leave-one-unit-out within their families; {kind_rates(args.by_kind)})", flush=True)
        if args.adaptive_keep is None:
            import adaptive_grid
            args.adaptive_keep = adaptive_grid.cpu_adaptive(args.calibrate)["cost_ratio"]
            print(f"adaptive grids on those sweeps keep {100 * args.adaptive_keep:.0f}% of their one-axis "
                  f"units' seconds (at 3%)", flush=True)
    return tps, hw


def main(argv=None) -> int:
    from dooly.profile.plan import reuse_with_families
    ap = build_parser()
    args = ap.parse_args(argv)
    tps, hw = resolve(ap, args)
    print(f"cost model on {args.hardware}: {hw.source} ({hw.point_overhead_s:g} s per point, "
          f"{hw.passes} pass(es) x {hw.repeats} runs)", flush=True)
    out: dict = {"hardware": args.hardware, "tp": tps, "cost_model": hw.source,
                 "point_overhead_s": hw.point_overhead_s, "measured_pass_rate": args.pass_rate}
    out.update({f"pass_rate.{k}": f"{p}/{c}" for k, (p, c) in sorted((args.by_kind or {}).items())})
    for list_file in args.list:
        tag = "" if len(args.list) == 1 else f"{list_file.stem}."
        paths = [str(p) for p in model_list(list_file, args.configs)]
        out[f"{tag}models"] = len(paths)
        if len(args.list) > 1:
            print(f"set {list_file.stem} ({len(paths)} models)", flush=True)
        run_set(paths, args, tps, hw, tag, out, reuse_with_families)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def run_set(paths, args, tps, hw, tag, out, reuse_with_families) -> None:
    for engine in args.engines.split(","):
        t0 = time.perf_counter()
        variants, skipped = analyze_variants(paths, engine, tps if engine == "vllm" else [1])
        r = reuse_summary(variants, hw)
        secs = time.perf_counter() - t0
        e = f"{tag}{engine}"
        out[f"{e}.variants"] = len(variants.inventories)
        out[f"{e}.skipped_variants"] = skipped
        if skipped:
            print(f"{engine}: variants vLLM refuses, left out: {', '.join(skipped)}", flush=True)
        out.update({f"{e}.{k}": r[k] for k in FIGURES})
        out[f"{e}.analyze_seconds"] = round(secs, 2)
        print(f"{engine:13s} reduction {r['reduction_pct']:5.1f}% (paper: {PAPER_REDUCTION_PCT}%)  "
              f"unique {r['unique_units']} of {r['total_units']} units  "
              f"cost {r['independent_cost_s']:.1f} s -> {r['dedup_cost_s']:.1f} s on {args.hardware}  "
              f"[{len(variants.inventories)} variants of {len(paths)} models, {secs:.1f} s]", flush=True)
        f = reuse_with_families(variants.inventories, hw, target_pct=TARGET_PCT)
        if args.pass_rate is not None:
            f["expected_reduction_pct"] = expected_reduction_pct(f, args.pass_rate, args.by_kind)
        out.update({f"{e}.{k}": v for k, v in f.items() if k not in ("hardware", "cost_model", "check_savings_by_op")})
        out.update({f"{e}.check_savings_s.{op}": v for op, v in f["check_savings_by_op"].items()})
        print_families(engine, f, args.pass_source)
        if args.adaptive_keep is not None:
            a = reuse_with_families(variants.inventories, hw, target_pct=TARGET_PCT,
                                    adaptive_keep=args.adaptive_keep)
            if args.pass_rate is not None:
                a["expected_reduction_pct"] = expected_reduction_pct(a, args.pass_rate, args.by_kind)
            out.update({f"{e}.adaptive.{k}": v for k, v in a.items() if k.startswith(
                ("dedup_adaptive", "families_reduction", "expected_reduction", "break_even"))})
            print_adaptive(a)


if __name__ == "__main__":
    sys.exit(main())
