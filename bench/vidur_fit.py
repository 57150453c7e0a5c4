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

import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dooly.cli import OneLineParser  # noqa: E402
sys.path.insert(0, str(ROOT / "bench"))

import family_lomo  # noqa: E402
from dooly.fit.gemm_family import GemmFamily  # noqa: E402
from dooly.fit.gemm_rows import gemm_shape, rows_from_units  # noqa: E402
from dooly.fit.select import fit_units  # noqa: E402
from dooly.interop.vidur_format import VIDUR_GEMM_OPS, VIDUR_MLP_OPS  # noqa: E402
from dooly.interop.vidur_import import (find_vidur_mlp, model_name_from_path, read_vidur_mlp,  # noqa: E402
                                        vidur_units)

DEFAULT_ROOT = ROOT / "fixtures" / "vidur" / "a100"


def load(files: list[Path], tp: int):
    """Units, measurements (one per unit and point: the median where several files measured
    it) and environments of every file, and per model its op -> unit key."""
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
    # a shape two models share was profiled in both files: one row per point, as in a DB
    return units, family_lomo.one_per_point(meas), envs, op_units


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
    shapes_of = {name: {gemm_shape(units[ops[op]])[1:] for op in VIDUR_GEMM_OPS}
                 for name, ops in op_units.items()}
    family_lomo.gemm_table(rows_from_units(units, meas, envs), shapes_of, out,
                           "gemm_family_holdout_mape_pct", f" ({model})", model=model)


def family_holdout(units, meas, op_units, tolerance: float, out: dict,
                   step_tolerance: float | None = None) -> None:
    """Unit families leave-one-model-out (bench/family_lomo.py), pooled per Vidur op. With
    `step_tolerance`, a check is also weighed by the op's share of the layer's ops that Vidur
    times at that point (its mlp.csv, attention not among them: the share is an upper bound)."""
    t0 = time.time()
    held = {name: sorted(ops.items()) for name, ops in op_units.items()}
    errs, checks = family_lomo.lomo(units, meas, held, tolerance, step_tolerance)
    print(f"\nunit families, leave-one-model-out (trained on the other models' units; "
          f"{time.time() - t0:.1f}s); per-point error %, check points at {tolerance:g}%"
          + ("" if step_tolerance is None else f" or {step_tolerance:g}% of the layer") + ":")
    family_lomo.table(errs, checks, out, VIDUR_MLP_OPS)


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                    help="directory searched for mlp.csv files (default: %(default)s)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of the rows used")
    ap.add_argument("--gemm-model", default="roofline+gbr", choices=GemmFamily.MODELS)
    ap.add_argument("--json", type=Path, help="write the figures as one flat JSON object here")
    ap.add_argument("--no-families", action="store_true", help="skip the unit-family figures")
    ap.add_argument("--no-unit-fits", action="store_true", help="skip the per-unit CV figures")
    ap.add_argument("--tolerance", type=float, default=3.0, help="check-point tolerance %% (default 3)")
    ap.add_argument("--step-tolerance", type=float, default=None,
                    help="also pass checks whose errors, weighed by the op's share of the layer, are within this %%")
    args = ap.parse_args(argv)
    if args.step_tolerance is not None and not 0 < args.step_tolerance < 100:
        ap.error(f"--step-tolerance: expected a percentage in (0, 100), got {args.step_tolerance:g}")

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
        family_holdout(units, meas, op_units, args.tolerance, out, args.step_tolerance)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
