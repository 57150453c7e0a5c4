"""Fit Dooly's per-unit latency models on Vidur's profiling data and report accuracy.

    python bench/vidur_fit.py [--root DIR] [--tp 1] [--json PATH]

For every mlp.csv under --root (default: the repository's cut of Vidur's A100 data,
fixtures/vidur/a100; point it at a full copy of Vidur's data/profiling/compute/a100 for
the whole set): import it (dooly.interop.vidur_import.read_vidur_mlp), fit one model per
(unit, environment) (dooly.fit.select.fit_units: CV-selected among interpolation /
isotonic / polynomials), and print per Vidur op the mean over models of the op's unit
CV MAPE (%). Then the GEMM family model (dooly.fit.gemm_family) is scored
leave-one-model-out: all (K, N) shapes of one model are held out of training (also where
another model shares them) and the MAPE on that model's GEMM rows is reported; the
headline figure is the mean over models (it needs two models or more). --json writes
one flat JSON object of all the figures.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dooly.fit.gemm_family import GemmFamily, gemm_shape, holdout_error, rows_from_units  # noqa: E402
from dooly.fit.select import fit_units  # noqa: E402
from dooly.interop.vidur_import import (VIDUR_GEMM_OPS, VIDUR_MLP_OPS, find_vidur_mlp,  # noqa: E402
                                        model_name_from_path, read_vidur_mlp, vidur_units)

DEFAULT_ROOT = ROOT / "fixtures" / "vidur" / "a100"


def load(files: list[Path], tp: int):
    """Units, measurements and environments of every file, and per model its op -> unit key."""
    units, meas, envs = {}, [], {}
    op_units: dict[str, dict[str, str]] = {}
    for p in files:
        env, us, ms = read_vidur_mlp(p, tp=tp)
        if not ms:
            continue
        envs[env.key] = env
        units.update({u.key: u for u in us})
        meas += ms
        with open(p, newline="") as f:
            row = next(csv.DictReader(f))
        present = {u.key for u in us}
        op_units[model_name_from_path(p)] = {op: u.key for op, u in vidur_units(row, tp).items()
                                             if u.key in present}
    return units, meas, envs, op_units


def unit_cv_mape(fits, meas, op_units, out: dict) -> None:
    """Per Vidur op: mean and max over models of its unit's CV MAPE, into `out`."""
    env_of = {m.unit_key: m.env_key for m in meas}
    print(f"{'op':26s} {'CV MAPE % (mean)':>16s} {'max':>8s}  chosen models")
    every = []
    for op in VIDUR_MLP_OPS:
        vals, names = [], defaultdict(int)
        for ops in op_units.values():
            fm = fits.get((ops.get(op), env_of.get(ops.get(op), "")))
            if fm is None or fm.cv_mape_pct is None:
                continue
            vals.append(fm.cv_mape_pct)
            names[fm.name] += 1
        if not vals:
            continue
        out[f"cv_mape_pct.{op}"] = round(float(np.mean(vals)), 3)
        every += vals
        print(f"{op:26s} {np.mean(vals):16.2f} {np.max(vals):8.2f}  "
              + ", ".join(f"{k}x{v}" for k, v in sorted(names.items())))
    out["cv_mape_pct.all_ops_mean"] = round(float(np.mean(every)), 3)
    print(f"{'(all ops)':26s} {np.mean(every):16.2f}")


def gemm_holdout(units, meas, envs, op_units, model: str, out: dict) -> None:
    """The GEMM family's leave-one-model-out MAPE over (K, N) shapes, into `out`."""
    rows = rows_from_units(units, meas, envs)
    shapes_of = {name: {gemm_shape(units[ops[op]])[1:] for op in VIDUR_GEMM_OPS}
                 for name, ops in op_units.items()}
    print(f"\nGEMM family ({model}), {len(rows)} rows, "
          f"{len({r.shape for r in rows})} distinct (K, N); leave-one-model-out MAPE %:")
    errs, t0 = [], time.time()
    for name, shapes in sorted(shapes_of.items()):
        if all(r.shape in shapes for r in rows):
            print(f"  {name:40s} skipped: no other model's shapes to train on")
            continue
        e = holdout_error(rows, shapes, model=model)
        errs.append(e)
        out[f"gemm_family_holdout_mape_pct.{name}"] = round(e, 3)
        print(f"  {name:40s} {e:7.2f}   shapes {sorted(shapes)}")
    if errs:
        out["gemm_family_holdout_mape_pct"] = round(float(np.mean(errs)), 3)
        print(f"  {'mean':40s} {np.mean(errs):7.2f}   ({time.time() - t0:.1f}s)")


def family_holdout(units, meas, op_units, tolerance: float, out: dict) -> None:
    """Unit families (dooly.fit.families) leave-one-model-out: each model's ops predicted
    by families trained on the other models' units only (a unit of the same shape held out
    too), pooled per Vidur op: median and p90 of the per-point error; and the share of
    held-out units whose three check points pass at `tolerance` (dooly.fit.checks), with
    the served units' error over all their points."""
    from dooly.fit.checks import judge
    from dooly.fit.families import design, family_data, select_family
    from dooly.graph.family import family_key
    from dooly.profile.checkpoints import check_points
    t0 = time.time()
    data = family_data(units, meas)
    by_unit = defaultdict(list)
    for m in meas:
        by_unit[m.unit_key].append(m)
    errs, checks = defaultdict(list), defaultdict(list)
    for name, ops in sorted(op_units.items()):
        held = set(ops.values())
        fams = {}
        for (fkey, ekey), d in data.items():
            keep = ~np.isin(d.groups, list(held))
            if keep.any():
                sub = type(d)(fkey, ekey, d.columns, d.X[keep], d.y[keep], d.groups[keep], "")
                fams[fkey] = select_family(sub)
        for op, key in ops.items():
            unit, rows = units[key], by_unit[key]
            fam = fams.get(family_key(unit))
            if fam is None:
                continue
            y = np.array([m.median_ms for m in rows])
            pred = fam.estimator.predict(design(unit, [m.point for m in rows], fam.columns))
            errs[op] += list(np.abs(pred - y) / y * 100.0)
            pts = {json.dumps(p, sort_keys=True) for p in check_points(unit, [m.point for m in rows])}
            v = judge(unit, fam, [m for m in rows if json.dumps(m.point, sort_keys=True) in pts], tolerance)
            served_err = float(np.mean(np.abs(v.scale * pred - y) / y * 100.0))
            checks[op].append((v.served, served_err))
    print(f"\nunit families, leave-one-model-out (trained on the other models' units; "
          f"{time.time() - t0:.1f}s); per-point error %, check points at {tolerance:g}%:")
    family_table(errs, checks, out)


def family_table(errs: dict, checks: dict, out: dict) -> None:
    """Per op: median and p90 point error, checks passed, served units' MAPE, into `out`."""
    if not any(errs.values()):
        # one model's data (the repository's cut): no other model to train a family on
        print("  no op could be scored: it needs the ops of two models or more (--root)")
        return
    print(f"{'op':26s} {'median':>7s} {'p90':>7s} {'points':>7s}  {'checks passed':>13s} "
          f"{'served units MAPE':>17s}")
    for op in VIDUR_MLP_OPS:
        if not errs.get(op):
            continue
        e = np.array(errs[op])
        served = [err for ok, err in checks[op] if ok]
        out[f"family.{op}.median_pct"] = round(float(np.median(e)), 3)
        out[f"family.{op}.p90_pct"] = round(float(np.percentile(e, 90)), 3)
        out[f"family.{op}.checks_passed"] = f"{len(served)}/{len(checks[op])}"
        if served:
            out[f"family.{op}.served_mape_pct"] = round(float(np.mean(served)), 3)
        print(f"{op:26s} {np.median(e):7.2f} {np.percentile(e, 90):7.2f} {len(e):7d}  "
              f"{len(served):6d} of {len(checks[op]):3d} "
              f"{(f'{np.mean(served):.2f}' if served else '-'):>17s}")
    every = np.concatenate([np.array(v) for v in errs.values()])
    passed = sum(ok for v in checks.values() for ok, _ in v)
    total = sum(len(v) for v in checks.values())
    out["family.all_ops.median_pct"] = round(float(np.median(every)), 3)
    out["family.all_ops.p90_pct"] = round(float(np.percentile(every, 90)), 3)
    out["family.check_pass_pct"] = round(100.0 * passed / max(total, 1), 1)
    print(f"{'(all ops)':26s} {np.median(every):7.2f} {np.percentile(every, 90):7.2f} {len(every):7d}  "
          f"{passed:6d} of {total:3d}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                    help="directory searched for mlp.csv files (default: %(default)s)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of the rows used")
    ap.add_argument("--gemm-model", default="roofline+gbr", choices=GemmFamily.MODELS)
    ap.add_argument("--json", type=Path, help="write the figures as one flat JSON object here")
    ap.add_argument("--no-families", action="store_true", help="skip the unit-family figures")
    ap.add_argument("--no-unit-fits", action="store_true", help="skip the per-unit CV figures")
    ap.add_argument("--tolerance", type=float, default=3.0, help="check-point tolerance %% (default 3)")
    args = ap.parse_args(argv)

    files = find_vidur_mlp(args.root)
    if not files:
        print(f"{args.root}: no mlp.csv found", file=sys.stderr)
        return 2
    t0 = time.time()
    units, meas, envs, op_units = load(files, args.tp)
    t_import, t0 = time.time() - t0, time.time()
    fits = {} if args.no_unit_fits else fit_units(units, meas)
    t_fit = time.time() - t0
    out: dict[str, float] = {"files": len(files), "units": len(units), "measurements": len(meas)}
    print(f"{len(files)} files, {len(units)} units, {len(meas)} measurements "
          f"(import {t_import:.1f}s, fit {t_fit:.1f}s)\n")
    if fits:
        unit_cv_mape(fits, meas, op_units, out)
    gemm_holdout(units, meas, envs, op_units, args.gemm_model, out)
    if not args.no_families:
        family_holdout(units, meas, op_units, args.tolerance, out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
