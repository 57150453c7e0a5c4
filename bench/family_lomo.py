"""Unit families and the GEMM family scored leave-one-model-out, shared by the benches
that do it (`vidur_fit.py` on Vidur's profiles, `gpu_check.py` on a sweep of this device),
and on its own over any Dooly DB that holds two or more models' inventories:

    python bench/family_lomo.py --db DB [--engine vllm] [--env KEY] [--tolerance 3] [--json PATH]

A model's units are predicted by families trained on the other models' units only (a
unit of the same key held out too, even where another model shares it); per label (an op
name) the per-point errors are pooled, and each held-out unit's three check points are
judged at the tolerance (dooly.fit.checks), with the served unit's error over all its
points. Beside it, the rule's ceiling: how many of the same units would pass if the
predictor were the unit's own grid (each check point from the line between its measured
neighbours, the point left out), so a reader can tell a family's miss from a tolerance the
data's own steps (a GPU's tile quantisation, say) do not allow. Nothing is measured: the DB
is copied to a temporary directory and read there."""
from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runs from a checkout, no install
from dooly.cli import OneLineParser  # noqa: E402


class Check(NamedTuple):
    """One held-out unit's check: served or not, the served unit's MAPE and worst error over
    all its measured points (what the check points did not see), and the own-grid ceiling."""
    served: bool
    mape_pct: float
    worst_pct: float
    ceiling: bool | None


def own_grid_passes(unit, rows: list, tolerance: float) -> bool | None:
    """Whether `unit` would pass its check points with the best predictor short of measuring
    them: each check point read off the log-log line between the unit's other measured points,
    judged by the family's rule (one leave-one-out scale, every point within `tolerance`).
    None where the grid is not one request axis (attention batches) or too small."""
    from dooly.fit.checks import loo_scaled_errors
    from dooly.profile.checkpoints import check_points, one_axis
    pts = [m.point for m in rows]
    if len(pts) < 4 or not one_axis(pts):
        return None
    x = np.log([float(next(iter(p.values()))) for p in pts])
    y = np.log([m.median_ms for m in rows])
    order = np.argsort(x)
    x, y = x[order], y[order]
    picked = {json.dumps(p, sort_keys=True) for p in check_points(unit, pts)}
    idx = [i for i, j in enumerate(order) if json.dumps(pts[j], sort_keys=True) in picked]
    pred = [float(np.exp(np.interp(x[i], np.delete(x, i), np.delete(y, i)))) for i in idx]
    return max(loo_scaled_errors(np.exp(y[idx]), pred)[1]) <= tolerance


def one_per_point(meas: Iterable) -> list:
    """The ok measurements, one per (unit, environment, point): where several profiles
    measured the same unit at the same point (Vidur profiled every model on its own, so
    a shape two models share is in both files) the median of their latencies, as a DB
    holds one row per point. Judging a check on four copies of a point would judge the
    copies' disagreement with each other, not the family."""
    from dataclasses import replace
    groups: dict = defaultdict(list)
    for m in meas:
        if m.status == "ok":
            groups[(m.unit_key, m.env_key, m.point_json)].append(m)
    return [ms[0] if len(ms) == 1 else replace(ms[0], median_ms=float(np.median([m.median_ms for m in ms])))
            for ms in groups.values()]


class MemoryStore:
    """The slice of a dooly.db Store that dooly.profile.shares reads, over lists in memory
    (`inventories`: model -> {unit key: calls per step})."""

    def __init__(self, units: Mapping, meas: Iterable, inventories: Mapping[str, dict]):
        self._units, self._inv = units, inventories
        self._rows: dict = defaultdict(list)
        for m in meas:
            self._rows[m.unit_key].append(m)

    def models(self, engine: str) -> dict:
        return {name: name for name in self._inv}

    def inventory(self, name: str, engine: str) -> dict:
        return dict(self._inv[name])

    def get_unit(self, key: str):
        return self._units.get(key)

    def measurements(self, unit_key: str | None = None, env_key: str | None = None) -> list:
        return [m for m in self._rows.get(unit_key, []) if env_key is None or m.env_key == env_key]


def lomo(units: Mapping, meas: Iterable, held: Mapping[str, list[tuple[str, str]]],
         tolerance: float, step_tolerance: float | None = None,
         counts: Mapping[str, dict] | None = None) -> tuple[dict, dict]:
    """`held`: model -> [(label, unit key)]. Returns (label -> point errors %,
    label -> [Check]). With `step_tolerance`,
    checks are also weighed by each unit's share of its model's units (dooly.profile.shares,
    over `counts`: model -> {unit key: calls per step}; one call each where not given)."""
    from dooly.fit.checks import judge
    from dooly.fit.families import design, family_data, select_family
    from dooly.graph.family import family_key
    from dooly.profile.checkpoints import check_points
    from dooly.profile.shares import check_shares
    meas = one_per_point(meas)
    mem = MemoryStore(units, meas, counts or {n: {k: 1 for _, k in pairs} for n, pairs in held.items()})
    data = family_data(units, meas)
    by_unit = defaultdict(list)
    for m in meas:
        by_unit[m.unit_key].append(m)
    errs, checks = defaultdict(list), defaultdict(list)
    for name, pairs in sorted(held.items()):
        keys = {k for _, k in pairs}
        fams = {}
        for (fkey, ekey), d in data.items():
            keep = ~np.isin(d.groups, list(keys))
            if keep.any():
                sub = type(d)(fkey, ekey, d.columns, d.X[keep], d.y[keep], d.groups[keep], "")
                fams[fkey] = select_family(sub)
        for label, key in pairs:
            unit, rows = units[key], by_unit[key]
            fam = fams.get(family_key(unit))
            if fam is None or not rows:
                continue
            y = np.array([m.median_ms for m in rows])
            pred = fam.estimator.predict(design(unit, [m.point for m in rows], fam.columns))
            errs[label] += list(np.abs(pred - y) / y * 100.0)
            pts = {json.dumps(p, sort_keys=True) for p in check_points(unit, [m.point for m in rows])}
            chk = [m for m in rows if json.dumps(m.point, sort_keys=True) in pts]
            shares = None if step_tolerance is None else check_shares(mem, chk[0].env_key, "", unit, chk)
            v = judge(unit, fam, chk, tolerance, shares, step_tolerance)
            e = np.abs(v.scale * pred - y) / y * 100.0
            checks[label].append(Check(v.served, float(np.mean(e)), float(np.max(e)),
                                       own_grid_passes(unit, rows, tolerance)))
    return errs, checks


def table(errs: dict, checks: dict, out: dict, labels: Iterable[str] | None = None) -> None:
    """Per label: median and p90 point error, checks passed, served units' MAPE and worst
    point (the largest error over their measured points: what three checks did not see),
    and the rule's ceiling (own_grid_passes: passed of those it could judge), into `out`."""
    if not any(errs.values()):
        print("  nothing could be scored: it needs the ops of two models or more")
        return
    print(f"{'op':26s} {'median':>7s} {'p90':>7s} {'points':>7s}  {'checks passed':>13s} "
          f"{'served units MAPE':>17s} {'worst':>6s}  {'own-grid ceiling':>16s}")
    for op in (labels or sorted(errs)):
        if not errs.get(op):
            continue
        e = np.array(errs[op])
        served = [c.mape_pct for c in checks[op] if c.served]
        worst = max((c.worst_pct for c in checks[op] if c.served), default=None)
        ceiling = [c.ceiling for c in checks[op] if c.ceiling is not None]
        out[f"family.{op}.median_pct"] = round(float(np.median(e)), 3)
        out[f"family.{op}.p90_pct"] = round(float(np.percentile(e, 90)), 3)
        out[f"family.{op}.checks_passed"] = f"{len(served)}/{len(checks[op])}"
        out[f"family.{op}.own_grid_passed"] = f"{sum(ceiling)}/{len(ceiling)}"
        if served:
            out[f"family.{op}.served_mape_pct"] = round(float(np.mean(served)), 3)
            out[f"family.{op}.served_worst_pct"] = round(worst, 3)
        print(f"{op[:26]:26s} {np.median(e):7.2f} {np.percentile(e, 90):7.2f} {len(e):7d}  "
              f"{len(served):6d} of {len(checks[op]):3d} "
              f"{(f'{np.mean(served):.2f}' if served else '-'):>17s} "
              f"{(f'{worst:.1f}' if served else '-'):>6s}  "
              f"{(f'{sum(ceiling)} of {len(ceiling)}' if ceiling else '-'):>16s}")
    every = np.concatenate([np.array(v) for v in errs.values() if v])
    every_check = [c for v in checks.values() for c in v]
    passed = sum(c.served for c in every_check)
    total = len(every_check)
    ceiling = [c.ceiling for c in every_check if c.ceiling is not None]
    worst = [c.worst_pct for c in every_check if c.served]
    if worst:
        out["family.served_worst_max_pct"] = round(float(np.max(worst)), 3)
        out["family.served_worst_median_pct"] = round(float(np.median(worst)), 3)
    if ceiling:
        out["family.own_grid_pass_pct"] = round(100.0 * sum(ceiling) / len(ceiling), 1)
    out["family.all_ops.median_pct"] = round(float(np.median(every)), 3)
    out["family.all_ops.p90_pct"] = round(float(np.percentile(every, 90)), 3)
    out["family.check_pass_pct"] = round(100.0 * passed / max(total, 1), 1)
    print(f"{'(all ops)':26s} {np.median(every):7.2f} {np.percentile(every, 90):7.2f} {len(every):7d}  "
          f"{passed:6d} of {total:3d} {'':17s} "
          f"{(f'{np.max(worst):.1f}' if worst else '-'):>6s}  "
          + (f"{sum(ceiling)} of {len(ceiling)}".rjust(16) if ceiling else ""))


def gemm_table(rows: list, shapes_of: Mapping[str, set], out: dict, key: str, label: str = "",
               **params) -> None:
    """The GEMM family (dooly.fit.gemm_family) with all (K, N) shapes of one model held out
    in turn: the MAPE on that model's rows, per model and the mean, into `out[key...]`."""
    from dooly.fit.gemm_family import holdout_error
    print(f"\nGEMM family{label}, {len(rows)} rows, "
          f"{len({r.shape for r in rows})} distinct (K, N); leave-one-model-out MAPE %:")
    errs, t0 = [], time.time()
    for name, shapes in sorted(shapes_of.items()):
        if all(r.shape in shapes for r in rows):
            print(f"  {name:40s} skipped: no other model's shapes to train on")
            continue
        e = holdout_error(rows, shapes, **params)
        errs.append(e)
        out[f"{key}.{name}"] = round(e, 3)
        print(f"  {name:40s} {e:7.2f}   shapes {sorted(shapes)}")
    if errs:
        out[key] = round(float(np.mean(errs)), 3)
        print(f"  {'mean':40s} {np.mean(errs):7.2f}   ({time.time() - t0:.1f}s)")


def db_inputs(db: str, engine: str, env_key: str | None) -> tuple[dict, list, dict, dict]:
    """(units, measurements of the chosen environment, model name -> [(op, unit key)] of its
    units measured there, model name -> its inventory {unit key: calls per step}) of a Dooly DB. Tensor-parallel inventories are left out (a TP=N
    shard may be the model's own TP=1 unit, which would then train its family), and so are
    engine-step pseudo-units (whole steps, not units)."""
    from dooly.db import Store
    from dooly.db.envs import choose_environment
    from dooly.fit.step_features import STEP_OP
    with Store.open(db, create=False, readonly=True) as store:
        env = choose_environment(store, engine, env_key, db)
        units = {u.key: u for u in store.units() if u.op != STEP_OP}
        meas = [m for m in store.measurements(env_key=env.key) if m.unit_key in units]
        measured = {m.unit_key for m in meas}
        invs = {name: store.inventory(h, engine) for h, name in store.models(engine).items() if "@" not in h}
    held = {name: [(units[k].op, k) for k in inv if k in measured] for name, inv in invs.items()}
    held = {name: pairs for name, pairs in held.items() if pairs}
    return units, meas, held, {name: invs[name] for name in held}


def main(argv=None) -> int:
    from dooly.db.store import copy_db
    from dooly.errors import DoolyInputError
    ap = OneLineParser(description="unit families leave-one-model-out over a Dooly DB")
    ap.add_argument("--db", required=True, help="a Dooly DB with two or more models' inventories")
    ap.add_argument("--engine", default="vllm", help="the engine whose inventories are held out (default vllm)")
    ap.add_argument("--env", help="environment key (default: the engine's most measured)")
    ap.add_argument("--tolerance", type=float, default=3.0, help="check-point tolerance %% (default 3)")
    ap.add_argument("--step-tolerance", type=float, default=None,
                    help="also pass a check whose errors, weighed by the unit's share of its model, are within this %%")
    ap.add_argument("--json", help="write the figures as one flat JSON object here")
    args = ap.parse_args(argv)
    for flag, v in (("--tolerance", args.tolerance), ("--step-tolerance", args.step_tolerance)):
        if v is not None and not 0 < v < 100:
            print(f"{flag}: expected a percentage in (0, 100), got {v}", file=sys.stderr)
            return 2
    if not Path(args.db).is_file():
        print(f"{args.db}: no such DB (--db)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        copy = str(copy_db(args.db, Path(tmp) / "copy.db"))
        try:
            units, meas, held, counts = db_inputs(copy, args.engine, args.env)
        except DoolyInputError as e:
            print(str(e).replace(copy, args.db), file=sys.stderr)
            return 2
    if len(held) < 2:
        print(f"{args.db}: inventories of {args.engine}: two models or more with measured units are "
              f"needed, found {len(held)}", file=sys.stderr)
        return 2
    n_units = len({k for pairs in held.values() for _, k in pairs})
    print(f"{args.db}: {len(held)} models, {n_units} units, {len(meas)} measurements; "
          f"check points at {args.tolerance:g}%" + ("" if args.step_tolerance is None else
                                                    f" or {args.step_tolerance:g}% of the step"))
    out: dict = {"models": len(held), "units": n_units, "step_tolerance_pct": args.step_tolerance}
    errs, checks = lomo(units, meas, held, args.tolerance, args.step_tolerance, counts)
    table(errs, checks, out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
