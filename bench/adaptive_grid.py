"""Adaptive grids against today's fixed grid, at equal error, on stored and synthetic curves.

    python bench/adaptive_grid.py [--vidur DIR] [--db DB ...] [--json PATH]

No timing runs: every curve is data already measured. A curve is one unit's latency
over one request axis; the error of a set of points is the error of interpolating
between them (what a unit's fitted model does), against the whole curve.

  * Vidur (--vidur, default fixtures/vidur/a100, one model; Vidur's whole A100 set is its
    compute/a100 folder, e.g. ../shared/reference/vidur/compute/a100 here): every (model,
    op) curve of Vidur's mlp.csv at TP 1, densely measured over num_tokens (GPU). Fixed
    grid: today's octave grid (dooly.profile.grid.octave_grid, two points per octave) where
    the curve has it; adaptive: dooly.profile.grid.adaptive_points over candidates four per
    octave plus the fixed grid's, at several tolerances. Error: MAPE over every measured
    point of the curve.
  * Synthetic: a launch floor, then bandwidth- or compute-bound lines with tile
    quantisation steps and 1% noise, sampled at every integer token count.
  * CPU sweeps (--db, read from copies): every one-axis unit swept on the octave grid;
    the adaptive grid picks a subset of it, and its error is measured at the grid points
    it skipped (the fixed grid's own error there is unknown, so only the count and the
    adaptive error are shown).

"At equal error": the mean point count where the adaptive grid's mean error (falling
with the tolerance) meets the fixed grid's, interpolated between the tolerances tried;
against the fixed grid's count it is the headline figure."""
from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dooly.cli import OneLineParser  # noqa: E402

from dooly.profile.grid import adaptive_points, octave_grid  # noqa: E402

TOLERANCES = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0)


PER_OCTAVE = 4


def fine_grid(lo: int, hi: int, per_octave: int = PER_OCTAVE) -> list[int]:
    xs = {int(round(lo * 2 ** (i / per_octave))) for i in range(int(np.log2(hi / lo) * per_octave) + 1)}
    return sorted(x for x in xs | {hi} if lo <= x <= hi)


def interp_error(xs, ys, chosen: list[int]) -> float:
    """MAPE (%) over the whole curve of interpolating between the chosen x values."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    kx = np.array(sorted(chosen), dtype=float)
    ky = np.interp(kx, xs, ys)
    return float(np.mean(np.abs(np.interp(xs, kx, ky) - ys) / ys) * 100.0)


def seconds(ys_ms, hw) -> float:
    """What measuring points of these latencies costs on `hw` (dooly.profile.cost's per-point
    formula, with the measured latency in place of the roofline's)."""
    return float(sum(hw.passes * hw.repeats * y / 1e3 + hw.point_overhead_s for y in ys_ms))


def compare(curves: dict[str, tuple[list, list]], hw) -> dict:
    """Per curve set: the fixed grid's points and error, and the adaptive grid's per tolerance
    (points, error, and its seconds on `hw` over the fixed grid's, pooled over the curves)."""
    fixed_n, fixed_e, fixed_s, adapt = [], [], 0.0, defaultdict(lambda: ([], [], []))
    for xs, ys in curves.values():
        have = dict(zip(xs, ys))
        lo, hi = min(xs), max(xs)
        grid = [x for x in octave_grid(lo, hi) if x in have]
        fixed_n.append(len(grid))
        fixed_e.append(interp_error(xs, ys, grid))
        fixed_s += seconds([have[x] for x in grid], hw)
        # four per octave, and today's grid: the adaptive grid may pick any of them
        cands = sorted({x for x in fine_grid(lo, hi) if x in have} | set(grid))
        for tol in TOLERANCES:
            # the first pass two octaves apart, as the sweep's on its two-per-octave grid
            got = adaptive_points([{"T": x} for x in cands], lambda p: have[p["T"]], tol,
                                  coarse_step=2 * PER_OCTAVE)
            chosen = [cands[i] for i in got]
            adapt[tol][0].append(len(chosen))
            adapt[tol][1].append(interp_error(xs, ys, chosen))
            adapt[tol][2].append(seconds([have[x] for x in chosen], hw))
    out = {"curves": len(curves), "fixed_points": float(np.mean(fixed_n)), "fixed_mape_pct": float(np.mean(fixed_e))}
    for tol, (n, e, sec) in adapt.items():
        out[f"adaptive_{tol:g}.points"] = float(np.mean(n))
        out[f"adaptive_{tol:g}.mape_pct"] = float(np.mean(e))
        out[f"adaptive_{tol:g}.cost_ratio"] = float(sum(sec) / fixed_s) if fixed_s else 1.0
    ok = [t for t in TOLERANCES if out[f"adaptive_{t:g}.mape_pct"] <= out["fixed_mape_pct"]]
    if ok:
        t = max(ok)
        n, c = out[f"adaptive_{t:g}.points"], out[f"adaptive_{t:g}.cost_ratio"]
        nxt = [u for u in TOLERANCES if u > t]
        if nxt:  # the point count where the error crosses the fixed grid's, between tolerances
            e0, e1 = out[f"adaptive_{t:g}.mape_pct"], out[f"adaptive_{nxt[0]:g}.mape_pct"]
            if e1 > e0:
                w = min(max((out["fixed_mape_pct"] - e0) / (e1 - e0), 0.0), 1.0)
                n += w * (out[f"adaptive_{nxt[0]:g}.points"] - n)
                c += w * (out[f"adaptive_{nxt[0]:g}.cost_ratio"] - c)
        out["equal_error_tolerance_pct"] = t
        out["equal_error_points"] = n
        out["equal_error_point_ratio"] = n / out["fixed_points"]
        out["equal_error_cost_ratio"] = c
    return out


def vidur_curves(root: Path) -> dict:
    import csv

    from dooly.interop.vidur_import import find_vidur_mlp, read_vidur_mlp, vidur_units
    curves = {}
    for p in find_vidur_mlp(root):
        env, units, meas = read_vidur_mlp(p, tp=1)
        with open(p, newline="") as f:
            ops = {u.key: op for op, u in vidur_units(next(csv.DictReader(f)), 1).items()}
        by: dict = defaultdict(dict)
        for m in meas:
            by[m.unit_key].setdefault(m.point["T"], []).append(m.median_ms)
        for key, pts in by.items():
            xs = sorted(pts)
            ys = [float(np.median(pts[x])) for x in xs]
            if len(xs) >= 16 and min(ys) > 0 and key in ops:
                curves[f"{p.parent.name}:{ops[key]}"] = (xs, ys)
    return curves


def synthetic_curves(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    curves = {}
    xs = list(range(1, 2049))
    for i in range(24):
        floor, slope = rng.uniform(0.005, 0.05), rng.uniform(1e-5, 1e-3)
        knee, tile = rng.choice([1, 16, 64, 128]), rng.choice([1, 16, 64, 128])
        x = np.asarray(xs, float)
        y = floor + slope * np.maximum(np.ceil(x / tile) * tile - knee, 0.0)
        y *= 1 + rng.normal(0, 0.01, len(x))
        curves[f"synthetic{i}"] = (xs, list(np.maximum(y, 1e-6)))
    return curves


def cpu_adaptive(dbs: list[Path], tol: float = 3.0) -> dict:
    """Adaptive subsets of one-axis units swept on the octave grid (copies of the DBs)."""
    from dooly.db import Store
    from dooly.db.store import copy_db
    from dooly.profile.cost import get_hardware
    hw = get_hardware("cpu")
    counts, errs, kept_s, all_s = [], [], 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, db in enumerate(dbs):
            with Store.open(copy_db(db, Path(tmp) / f"{i}.db"), readonly=True) as s:
                by: dict = defaultdict(dict)
                for m in s.measurements():
                    if len(m.point) == 1 and next(iter(m.point)) in ("T", "B"):
                        by[m.unit_key][next(iter(m.point.values()))] = m.median_ms
            for key, have in by.items():
                xs = sorted(have)
                if len(xs) < 8:
                    continue
                got = adaptive_points([{"T": x} for x in xs], lambda p: have[p["T"]], tol)
                chosen = {xs[j] for j in got}
                skipped = [x for x in xs if x not in chosen]
                counts.append((len(chosen), len(xs)))
                kept_s += seconds([have[x] for x in chosen], hw)
                all_s += seconds([have[x] for x in xs], hw)
                if skipped:
                    truth = np.array([have[x] for x in skipped])
                    pred = np.interp(skipped, sorted(chosen), [have[x] for x in sorted(chosen)])
                    errs += list(np.abs(pred - truth) / truth * 100)
    return {"curves": len(counts), "grid_points": float(np.mean([b for _, b in counts])) if counts else 0.0,
            "adaptive_points": float(np.mean([a for a, _ in counts])) if counts else 0.0,
            "skipped_mape_pct": float(np.mean(errs)) if errs else 0.0, "tolerance_pct": tol,
            "cost_ratio": kept_s / all_s if all_s else 1.0}


def report(name: str, r: dict) -> None:
    print(f"\n{name}: {r['curves']} curves; fixed octave grid {r['fixed_points']:.1f} points, "
          f"interpolation MAPE {r['fixed_mape_pct']:.2f}%")
    for tol in TOLERANCES:
        print(f"  adaptive at {tol:>3g}%: {r[f'adaptive_{tol:g}.points']:5.1f} points, "
              f"MAPE {r[f'adaptive_{tol:g}.mape_pct']:.2f}%, "
              f"{100 * r[f'adaptive_{tol:g}.cost_ratio']:.0f}% of the fixed grid's seconds")
    if "equal_error_points" in r:
        print(f"  at equal error (the fixed grid's {r['fixed_mape_pct']:.2f}%, reached past a "
              f"{r['equal_error_tolerance_pct']:g}% tolerance): {r['equal_error_points']:.1f} points vs "
              f"{r['fixed_points']:.1f} fixed ({100 * r['equal_error_point_ratio']:.0f}%; "
              f"{100 * r['equal_error_cost_ratio']:.0f}% of its seconds)")
    else:
        print("  no tolerance tried reaches the fixed grid's error")


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vidur", type=Path, default=ROOT / "fixtures" / "vidur" / "a100",
                    help="a folder of Vidur mlp.csv files (default: the repository's one-model fixture)")
    ap.add_argument("--db", type=Path, nargs="*", default=[], help="DBs of real CPU sweeps (copied first)")
    ap.add_argument("--hardware", default="a100",
                    help="whose per-point cost weighs the Vidur and synthetic curves' seconds (default a100)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from dooly.profile.cost import HARDWARE, get_hardware
    if args.hardware not in HARDWARE:
        print(f"adaptive_grid: --hardware: expected one of {', '.join(sorted(HARDWARE))}, got {args.hardware!r}",
              file=sys.stderr)
        return 2
    if not args.vidur.is_dir() or any(not p.is_file() for p in args.db):
        print(f"adaptive_grid: no such directory or DB: {args.vidur} {' '.join(map(str, args.db))}",
              file=sys.stderr)
        return 2
    out = {}
    for name, curves in (("vidur", vidur_curves(args.vidur)), ("synthetic", synthetic_curves())):
        r = compare(curves, get_hardware(args.hardware))
        report(name, r)
        out.update({f"{name}.{k}": v for k, v in r.items()})
    if args.db:
        c = cpu_adaptive(args.db)
        print(f"\nCPU sweeps: {c['curves']} one-axis curves; adaptive at {c['tolerance_pct']:g}% keeps "
              f"{c['adaptive_points']:.1f} of {c['grid_points']:.1f} grid points ({100 * c['cost_ratio']:.0f}% "
              f"of their seconds on the cpu cost model); MAPE at the skipped ones {c['skipped_mape_pct']:.2f}%")
        out.update({f"cpu.{k}": v for k, v in c.items()})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
