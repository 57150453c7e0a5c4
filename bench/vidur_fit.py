"""Fit Dooly's per-unit latency models on Vidur's profiling data and report accuracy.

    python bench/vidur_fit.py [--root DIR] [--tp 1] [--json PATH]

For every mlp.csv under --root (default: /work/shared/reference/vidur/compute/a100):
import it (dooly.interop.vidur_import.read_vidur_mlp), fit one model per (unit, environment)
(dooly.fit.fit_units: CV-selected among interpolation / isotonic / polynomials), and
print per Vidur op the mean over models of the op's unit CV MAPE (%). Then the GEMM
family model (dooly.fit.gemm_family) is scored leave-one-model-out: all (K, N) shapes
of one model are held out of training (also where another model shares them) and
the MAPE on that model's GEMM rows is reported; the headline figure is the mean
over models. --json writes one flat JSON object of all the figures.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dooly.fit.gemm_family import GemmFamily, gemm_shape, holdout_error, rows_from_units  # noqa: E402
from dooly.fit.select import fit_units  # noqa: E402
from dooly.interop.vidur_import import (VIDUR_GEMM_OPS, VIDUR_MLP_OPS, find_vidur_mlp, model_name_from_path,  # noqa: E402
                         read_vidur_mlp, vidur_units)

DEFAULT_ROOT = "/work/shared/reference/vidur/compute/a100"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=DEFAULT_ROOT, help="directory searched for mlp.csv files")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of the rows used")
    ap.add_argument("--gemm-model", default="roofline+gbr", choices=GemmFamily.MODELS)
    ap.add_argument("--json", help="write the figures as one flat JSON object here")
    args = ap.parse_args(argv)

    t0 = time.time()
    files = find_vidur_mlp(args.root)
    if not files:
        print(f"{args.root}: no mlp.csv found", file=sys.stderr)
        return 2
    units, meas, envs = {}, [], {}
    op_units: dict[str, dict[str, str]] = {}   # model -> op -> unit key
    for p in files:
        env, us, ms = read_vidur_mlp(p, tp=args.tp)
        if not ms:
            continue
        model = model_name_from_path(p)
        envs[env.key] = env
        units.update({u.key: u for u in us})
        meas += ms
        with open(p, newline="") as f:
            row = next(csv.DictReader(f))
        present = {u.key for u in us}
        op_units[model] = {op: u.key for op, u in vidur_units(row, args.tp).items() if u.key in present}
    env_of = {m.unit_key: m.env_key for m in meas}
    t_import = time.time() - t0

    t0 = time.time()
    fits = fit_units(units, meas)
    t_fit = time.time() - t0

    out: dict[str, float] = {}
    print(f"{len(files)} files, {len(units)} units, {len(meas)} measurements "
          f"(import {t_import:.1f}s, fit {t_fit:.1f}s)\n")
    print(f"{'op':26s} {'CV MAPE % (mean)':>16s} {'max':>8s}  chosen models")
    per_op_all = []
    for op in VIDUR_MLP_OPS:
        vals, names = [], defaultdict(int)
        for model, ops in op_units.items():
            key = ops.get(op)
            if key is None:
                continue
            fm = fits.get((key, env_of.get(key, "")))
            if fm is None or fm.cv_mape_pct is None:
                continue
            vals.append(fm.cv_mape_pct)
            names[fm.name] += 1
        if not vals:
            continue
        out[f"cv_mape_pct.{op}"] = round(float(np.mean(vals)), 3)
        per_op_all += vals
        print(f"{op:26s} {np.mean(vals):16.2f} {np.max(vals):8.2f}  "
              + ", ".join(f"{k}x{v}" for k, v in sorted(names.items())))
    out["cv_mape_pct.all_ops_mean"] = round(float(np.mean(per_op_all)), 3)
    print(f"{'(all ops)':26s} {np.mean(per_op_all):16.2f}")

    # GEMM family, leave-one-model-out over (K, N) shapes.
    rows = rows_from_units(units, meas, envs)
    shapes_of = {model: {gemm_shape(units[ops[op]])[1:] for op in VIDUR_GEMM_OPS}
                 for model, ops in op_units.items()}
    print(f"\nGEMM family ({args.gemm_model}), {len(rows)} rows, "
          f"{len({r.shape for r in rows})} distinct (K, N); leave-one-model-out MAPE %:")
    errs = []
    t0 = time.time()
    for model, shapes in sorted(shapes_of.items()):
        if all(r.shape in shapes for r in rows):
            continue  # nothing left to train on
        e = holdout_error(rows, shapes, model=args.gemm_model)
        errs.append(e)
        out[f"gemm_family_holdout_mape_pct.{model}"] = round(e, 3)
        print(f"  {model:40s} {e:7.2f}   shapes {sorted(shapes)}")
    if errs:
        out["gemm_family_holdout_mape_pct"] = round(float(np.mean(errs)), 3)
        print(f"  {'mean':40s} {np.mean(errs):7.2f}   ({time.time() - t0:.1f}s)")

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
