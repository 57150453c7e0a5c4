"""The device checks of a GPU session, as one script: sweep on this device, then score
what the sweep supports there (per-unit fits, the GEMM family and unit families
leave-one-model-out, check points), and graph replay against eager launches.

    python bench/gpu_check.py [CONFIG ...] [--db PATH] [--device cuda|cpu]
        [--inventories PATH | --save-inventories PATH] [--max-tokens N --max-batch N
        --max-context N] [--tolerance PCT] [--sweep-seconds S] [--json PATH]

On a device lent for minutes, run it as one command with the captures carried, the sweep
capped and the figures under $OUT (the eight models' grids at 2048/32/2048 hold about
12,000 points): `python3 bench/gpu_check.py --inventories bench/gpu_inventories.json
--db $OUT/gpu.db --max-tokens 2048 --max-batch 32 --max-context 2048 --sweep-seconds 230
--json $OUT/gpu_check.json`.

Default configs: eight fixtures of the transformers engine (it runs where vLLM is not
installed, as on a GPU machine with only torch). `--save-inventories` writes the
captures (data) so another host sweeps them with `--inventories`, without capturing
again: `bench/gpu_inventories.json` holds the eight, for a device whose torch cannot
capture them (a test keeps it readable by this Dooly). Figures (the family ones
leave-one-model-out, none fitted on what it scores):
  * unit CV MAPE: each unit's chosen regression, cross-validated over its own points;
  * GEMM family: all (K, N) shapes of a model held out, MAPE on that model's GEMM points;
  * unit families: per op, the point error of families trained on the other models'
    units, and how many held-out units pass their three check points at --tolerance;
  * graph replay: per unit at its grid's least and most work, the eager launch time
    (events around plain calls, caches warm) over the graph-replay time the sweep records
    (the L2 flushed before each replay): launch overhead and cache state together."""
from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import family_lomo  # noqa: E402
import flatjson  # noqa: E402
from dooly.cli import OneLineParser  # noqa: E402
from dooly.analyze import Analysis, analyze  # noqa: E402
from dooly.errors import DoolyInputError, read_json  # noqa: E402
from dooly.inventory import Inventory  # noqa: E402

CONFIGS = ["HuggingFaceTB__SmolLM2-135M-Instruct", "Qwen__Qwen2.5-0.5B", "Qwen__Qwen3-0.6B",
           "meta-llama__Llama-3.2-1B-Instruct", "google__gemma-2-2b", "meta-llama__Llama-3.2-3B",
           "Qwen__Qwen2.5-7B", "meta-llama__Llama-3.1-8B"]


def inventories(args) -> Analysis:
    if args.inventories:
        objs = read_json(args.inventories)
        try:
            return Analysis("transformers", [Inventory.from_json(o) for o in objs])
        except KeyError as err:
            raise DoolyInputError(args.inventories, "missing", str(err.args[0])) from None
        except (ValueError, TypeError, AttributeError) as err:
            raise DoolyInputError(args.inventories, f"not a list of Dooly inventories ({err})") from None
    paths = args.configs or [str(ROOT / "fixtures" / "configs" / f"{c}.json") for c in CONFIGS]
    a = analyze(paths, "transformers")
    for f in a.failed:
        print(f"capture failed: {f['config']}: {f['error']}")
    if args.save_inventories:
        Path(args.save_inventories).write_text(json.dumps([i.to_json() for i in a.inventories]))
    return a


def unit_fits(units, meas, out) -> None:
    from dooly.fit.select import fit_units
    by_op = defaultdict(list)
    for (key, _), fm in fit_units(units, meas).items():
        if fm.cv_mape_pct is not None:
            by_op[units[key].op].append(fm.cv_mape_pct)
    print(f"\n{'op':40s} {'units':>5s} {'CV MAPE % mean':>15s} {'max':>7s}")
    for op, v in sorted(by_op.items()):
        print(f"{op[:40]:40s} {len(v):5d} {np.mean(v):15.2f} {np.max(v):7.2f}")
    every = [x for v in by_op.values() for x in v]
    if every:
        out["unit_cv_mape_pct.mean"] = float(np.mean(every))
        out["unit_cv_mape_pct.median"] = float(np.median(every))


def gemm_lomo(units, meas, envs, held, out) -> None:
    from dooly.fit.gemm_rows import gemm_shape, is_gemm, rows_from_units
    shapes_of = {name: {s[1:] for _, k in pairs if is_gemm(units[k]) and (s := gemm_shape(units[k]))}
                 for name, pairs in held.items()}
    family_lomo.gemm_table(rows_from_units(units, meas, envs),
                           {n: v for n, v in shapes_of.items() if v}, out, "gemm_family_lomo_pct")


def graph_vs_eager(analysis, env, lim, out, limit: int = 12) -> None:
    """Eager launches against graph replay, per unit at its grid's least and most work."""
    if env.device_kind != "cuda":
        return
    from dooly.profile.checkpoints import work_order
    from dooly.profile.sweep_units import Runners, grid_for
    from dooly.profile.timing import time_cuda
    runners = Runners(env, lim)
    seen, ratios = set(), defaultdict(list)
    print(f"\neager launch / graph replay, per unit (first {limit} stateless units):")
    for inv in analysis.inventories:
        for key, e in inv.entries.items():
            if key in seen or e.unit.stateful or len(seen) >= limit:
                continue
            pts = work_order(e.unit, grid_for(e.unit, lim))
            if len(pts) < 2:
                continue
            seen.add(key)
            for tag, p in (("least", pts[0]), ("most", pts[-1])):
                fn = runners.prepare(e.unit, p)
                ratios[tag].append(_eager_ms(fn) / time_cuda(fn).median_ms)
            print(f"  {e.unit.op[:32]:32s} {json.dumps(pts[0]):>18s}: {ratios['least'][-1]:6.2f}x   "
                  f"{json.dumps(pts[-1]):>18s}: {ratios['most'][-1]:6.2f}x")
    for tag, v in ratios.items():
        out[f"eager_over_graph.{tag}_work.median"] = float(np.median(v))


def _eager_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        samples.append(s.elapsed_time(e))
    return float(np.median(samples))


def _interrupt(*_):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*")
    ap.add_argument("--db", help="sweep into this DB (default: a temporary file)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--inventories", help="read the captures from this JSON instead of capturing")
    ap.add_argument("--save-inventories", help="write the captures to this JSON")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-context", type=int, default=4096)
    ap.add_argument("--tolerance", type=float, default=3.0)
    ap.add_argument("--sweep-seconds", type=int, default=0,
                    help="stop the sweep after this long and score what it measured (0: no limit)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from dooly.db import Store
    from dooly.profile.grid import GridLimits
    from dooly.profile.sweep import sweep
    out: dict = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
                 "torch": torch.__version__}
    print(f"device {out['device']}, torch {out['torch']}")
    t0 = time.time()
    try:
        analysis = inventories(args)   # every input read before the sweep writes anything
    except DoolyInputError as err:
        print(err, file=sys.stderr)
        return 2
    out["models"], out["capture_s"] = len(analysis.inventories), time.time() - t0
    db = args.db or str(Path(tempfile.mkdtemp()) / "gpu.db")
    lim = GridLimits(args.max_tokens, args.max_batch, args.max_context)
    if args.sweep_seconds:   # the sweep commits each point and stops cleanly on an interrupt
        signal.signal(signal.SIGALRM, _interrupt)
        signal.alarm(args.sweep_seconds)
    s = sweep(analysis, db, args.device, lim=lim)
    signal.alarm(0)
    out.update({f"sweep.{k}": v for k, v in s.to_json().items() if isinstance(v, (int, float))})
    print(f"sweep: {s.to_json()}")
    with Store.open(db) as store:
        units = {u.key: u for u in store.units()}
        meas = store.measurements(env_key=s.env_key)
        envs = store.environments()
    held = {inv.model: [(e.unit.op, k) for k, e in inv.entries.items() if k in units]
            for inv in analysis.inventories}
    unit_fits(units, meas, out)
    gemm_lomo(units, meas, envs, held, out)
    errs, checks = family_lomo.lomo(units, meas, held, args.tolerance)
    print(f"\nunit families, leave-one-model-out; per-point error %, check points at {args.tolerance:g}%:")
    family_lomo.table(errs, checks, out)
    out["seconds"] = time.time() - t0
    flatjson.write(args.json, out)   # the figures above stand whatever the last part does
    env = next(e for e in envs if e.key == s.env_key)
    try:
        graph_vs_eager(analysis, env, lim, out)
    except Exception as err:   # noqa: BLE001 - a device check reports, it does not stop
        print(f"graph replay check failed: {type(err).__name__}: {err}")
        return 1
    flatjson.write(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
