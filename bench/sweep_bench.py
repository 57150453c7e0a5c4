"""What reuse saves in a real sweep: model A (default SmolLM2-135M), the same sweep again
(nothing to measure), then model B (default Qwen2.5-0.5B) into the same DB (only units A
lacked), compared with B swept into an empty DB.

    python bench/sweep_bench.py [--first CONFIG] [--second CONFIG] [--engine vllm]
        [--max-tokens 256 --max-batch 16 --max-context 512] [--json PATH]

With --ray: points per second of one process and of a local Ray cluster of two
single-core workers (`dooly sweep --ray`) on the same synthetic GEMM units (transformers
engine, 1 thread each, so both sweeps write one environment), and whether their rows
are identical:

    python bench/sweep_bench.py --ray [--units 8] [--max-tokens 256] [--json PATH]
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dooly.cli import OneLineParser  # noqa: E402

from dooly.engines import ENGINES, default_engine  # noqa: E402
from dooly.profile.grid import GridLimits  # noqa: E402
from dooly.analyze import analyze
from dooly.profile.sweep import sweep  # noqa: E402

CONFIGS = ROOT / "fixtures" / "configs"


def run_sweeps(first: Path, second: Path, engine: str, lim: GridLimits, out: dict) -> dict:
    """The four sweeps; their figures go into `out`, their summaries come back by name."""
    summaries = {}
    with tempfile.TemporaryDirectory() as tmp:
        shared, alone = f"{tmp}/shared.db", f"{tmp}/alone.db"
        runs = [("first", first, shared), ("first_again", first, shared),
                ("second_after_first", second, shared), ("second_alone", second, alone)]
        for name, cfg, db in runs:
            s = summaries[name] = sweep(analyze([str(cfg)], engine), db, lim=lim)
            out[f"{name}.units_measured"] = len(s.units_measured)
            out[f"{name}.units_reused"] = len(s.units_reused)
            out[f"{name}.points_measured"] = s.points_measured
            out[f"{name}.seconds"] = round(s.seconds, 2)
            print(f"{name:20s} measured {len(s.units_measured):3d} units ({s.points_measured} points), "
                  f"reused {len(s.units_reused):3d}, failed {len(s.units_failed)}; {s.seconds:6.1f} s",
                  flush=True)
    return summaries


def savings(summaries: dict, out: dict) -> None:
    """The second model's saving: the share of its stand-alone sweep time spent on units
    the first model already had (wall-clock differences between the two runs are mostly
    noise on a shared host), and the share of its units reused."""
    alone = summaries["second_alone"].unit_seconds
    reused = set(summaries["second_after_first"].units_reused)
    total = sum(alone.values())
    out["second_saving_pct"] = round(100 * sum(alone.get(k, 0) for k in reused) / total, 1) if total else 0.0
    out["second_units_saving_pct"] = round(100 * out["second_after_first.units_reused"] /
                                           max(1, out["second_alone.units_measured"]), 1)


def synthetic(n_units: int):
    """GEMMs [T, n] x [n, n] of growing n, the work a sweep of real models is mostly made of."""
    from dooly.analyze import Analysis
    from dooly.graph.units import Entry, Inventory
    from dooly.symbolic.labels import DimLabel, Label
    from dooly.unit import TensorSig, Unit
    t = DimLabel("T", Label.REQUEST)
    units = []
    for i in range(n_units):
        n = DimLabel(256 + 128 * i, Label.CONFIG)
        units.append(Unit("aten.linear.default", inputs=(TensorSig((t, n), "bfloat16"), TensorSig((n, n), "bfloat16")),
                          outputs=(TensorSig((t, n), "bfloat16"),)))
    inv = Inventory("synthetic", "-", "Synthetic", "transformers", "synthetic", {u.key: Entry(u, 1) for u in units})
    return Analysis("transformers", [inv])


def _rows(db: str) -> list:
    from dooly.db import Store
    with Store.open(db, readonly=True) as s:
        return sorted((m.unit_key, m.env_key, m.point_json, m.status) for m in s.measurements(status=None))


def ray_scaling(args) -> dict:
    """One process, then a local two-worker Ray cluster, over the same units."""
    import time
    from dooly.profile.ray_sweep import ray_sweep
    lim = GridLimits(args.max_tokens, args.max_batch, args.max_context)
    out: dict = {"units": args.units, "max_tokens": args.max_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("one_process", "ray_2x1"):
            db, stamps = f"{tmp}/{name}.db", []
            t0 = time.perf_counter()
            if name == "one_process":
                s = sweep(synthetic(args.units), db, lim=lim, threads=1, recheck=False,
                          progress=lambda *a: stamps.append(time.perf_counter()))
            else:
                s = ray_sweep(synthetic(args.units), db, lim=lim, threads=1, recheck=False, workers=2,
                              progress=lambda p: stamps.append(time.perf_counter()))
                out["ray_workers"] = s.workers
            wall = time.perf_counter() - t0
            n = s.points_measured + s.points_failed
            # steady: from the first point committed to the last (no cluster start, no imports)
            steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
            out[name] = {"points": n, "seconds": round(wall, 2), "points_per_s": round(n / wall, 2),
                         "steady_points_per_s": round(steady, 2), "first_point_after_s": round(stamps[0] - t0, 2)}
            print(f"{name:12s} {n} points in {wall:6.1f} s: {n / wall:6.2f} points/s overall, "
                  f"{steady:6.2f} points/s from first point to last (first after {stamps[0] - t0:.1f} s)",
                  flush=True)
        out["rows_identical"] = _rows(f"{tmp}/one_process.db") == _rows(f"{tmp}/ray_2x1.db")
    one, two = out["one_process"]["steady_points_per_s"], out["ray_2x1"]["steady_points_per_s"]
    out["steady_speedup"] = round(two / one, 2) if one else 0.0
    print(f"rows identical: {out['rows_identical']}; steady speedup {out['steady_speedup']}x with "
          f"two single-core workers ({', '.join(out['ray_workers'])})")
    return out


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=Path, default=CONFIGS / "HuggingFaceTB__SmolLM2-135M-Instruct.json")
    ap.add_argument("--second", type=Path, default=CONFIGS / "Qwen__Qwen2.5-0.5B.json")
    ap.add_argument("--engine", choices=ENGINES, default=None,
                    help="default: vllm when installed, else transformers")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-context", type=int, default=512)
    ap.add_argument("--json", type=Path, help="write the figures as one flat JSON object here")
    ap.add_argument("--ray", action="store_true",
                    help="instead: one process vs a local Ray cluster of two single-core workers")
    ap.add_argument("--units", type=int, default=8, help="with --ray: synthetic GEMM units")
    args = ap.parse_args(argv)
    if args.ray:
        out = ray_scaling(args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out) + "\n")
        return 0 if out["rows_identical"] else 1
    engine = args.engine or default_engine()
    lim = GridLimits(args.max_tokens, args.max_batch, args.max_context)
    out: dict = {"engine": engine, "first": args.first.stem, "second": args.second.stem}
    summaries = run_sweeps(args.first, args.second, engine, lim, out)
    savings(summaries, out)
    print(f"{args.second.stem} after {args.first.stem}: {out['second_units_saving_pct']}% of its "
          f"units reused, {out['second_saving_pct']}% of its sweep time saved "
          f"({out['second_after_first.seconds']} s after, {out['second_alone.seconds']} s alone)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
