"""`dooly fit` and `dooly predict`."""
from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit one regression per (unit, environment); print CV MAPE")
    p.add_argument("--db", required=True)
    p.add_argument("--env", default=None, help="environment key (default: all)")
    p.add_argument("--json", dest="json_path")
    p.set_defaults(func=run_fit)
    p = sub.add_parser("predict", help="forward-step latency of one batch, with a per-unit breakdown")
    p.add_argument("config")
    p.add_argument("--db", required=True)
    p.add_argument("--batch", required=True, help='e.g. "prefill:512x2,decode:32@1024" or a JSON file')
    p.add_argument("--engine", default=None)
    p.add_argument("--env", default=None)
    p.add_argument("--json", dest="json_path")
    p.set_defaults(func=run_predict)


def run_fit(args) -> int:
    from dooly.db import Store
    from dooly.fit.select import fit_units
    with Store.open(args.db, create=False) as store:
        units = {u.key: u for u in store.units()}
        meas = store.measurements(env_key=args.env)
    models = fit_units(units, meas)
    rows = [{"key": uk, "env": ek, "op": units[uk].op, "model": m.name,
             "cv_mape_pct": None if m.cv_mape_pct is None else round(m.cv_mape_pct, 2),
             "points": m.points} for (uk, ek), m in sorted(models.items())]
    t = Table(title=f"fitted {len(rows)} (unit, environment) models")
    for col in ("unit", "op", "model", "CV MAPE %", "points"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["key"], r["op"][:32], r["model"], "-" if r["cv_mape_pct"] is None
                  else f"{r['cv_mape_pct']:.2f}", str(r["points"]))
    Console().print(t)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"units": rows}, f, indent=1)
    return 0


def run_predict(args) -> int:
    from dooly.cli.batchspec import parse_batch
    from dooly.predict import Predictor
    batch = parse_batch(args.batch)
    pred = Predictor.load(args.config, args.db, args.engine, args.env)
    res = pred.predict(batch)
    t = Table(title=f"{len(batch)} sequences, {sum(q for q, _ in batch)} tokens: "
                    f"{res.total_ms:.3f} ms ({pred.env.label()})")
    for col in ("unit", "op", "count", "ms", "%"):
        t.add_column(col)
    for key, ms in sorted(res.breakdown.items(), key=lambda kv: -kv[1]):
        note = (f" (GEMM family, ±{pred.models[key].cv_mape_pct:.0f}% on held-out shapes)"
                if key in pred.fallback else "")
        t.add_row(key, pred.units[key].op[:32] + note, str(pred.counts[key]), f"{ms:.3f}",
                  f"{100 * ms / res.total_ms:.1f}" if res.total_ms else "-")
    Console().print(t)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"total_ms": res.total_ms, "breakdown": res.breakdown, "env": pred.env.key}, f)
    return 0
