"""`dooly fit` and `dooly predict`."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from dooly.cli.flags import dump_json, out_file


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit one regression per (unit, environment) and store it in the DB; "
                                   "print CV MAPE")
    p.add_argument("--db", required=True)
    p.add_argument("--env", default=None, help="environment key (default: every environment)")
    p.add_argument("--json", dest="json_path", type=out_file)
    p.set_defaults(func=run_fit)
    p = sub.add_parser("predict", help="forward-step latency of one batch, with a per-unit breakdown")
    p.add_argument("config")
    p.add_argument("--db", required=True)
    p.add_argument("--batch", required=True, help='e.g. "prefill:512x2,decode:32@1024", or @FILE.json')
    p.add_argument("--engine", default=None)
    from dooly.cli.flags import MAX_TP, RECHECK_HELP, ROUTING_HELP, TP_HELP, int_range, routing
    p.add_argument("--tp", type=int_range(1, MAX_TP), default=1,
                   help=TP_HELP + "; the inventory of `dooly sweep --tp N`")
    p.add_argument("--env", default=None, help="environment key (default: the engine's best-covered)")
    p.add_argument("--routing", type=routing, default="balanced", help=ROUTING_HELP)
    p.add_argument("--recheck-host", action="store_true", help=RECHECK_HELP)
    p.add_argument("--json", dest="json_path", type=out_file)
    p.set_defaults(func=run_predict)


def run_fit(args) -> int:
    from dooly.db import Store
    from dooly.db.envs import choose_environment
    from dooly.fit.stored import fit_environment
    with Store.open(args.db, create=False) as store:
        envs = ([choose_environment(store, env_key=args.env, db_path=args.db)] if args.env
                else store.environments())
        fits = [fit_environment(store, e.key) for e in envs]
        units = {u.key: u for u in store.units()}
        from dooly.fit.family_store import fit_env_families
        fams = {e.key: fit_env_families(store, e.key, units) for e in envs}
    rows = [{"key": uk, "env": f.env_key, "op": units[uk].op, "model": m.name,
             "cv_mape_pct": None if m.cv_mape_pct is None else round(m.cv_mape_pct, 2),
             "points": m.points, "fitted": uk in f.refitted}
            for f in fits for uk, m in sorted(f.models.items())]
    families = [{"env": f.env_key, "holdout_mape_pct": f.family.error_pct, "fitted": f.family.refitted}
                for f in fits if f.family is not None]
    _print_fits(rows, families)
    unit_families = _family_rows(fams)
    if args.json_path:
        dump_json(args.json_path, {"units": rows, "gemm_family": families,
                                   "unit_families": unit_families}, "--json", indent=1)
    return 0


def _family_rows(fams: dict) -> list[dict]:
    """One line per environment: its unit families and the units they serve."""
    out = []
    for env, (models, verdicts, fitted) in fams.items():
        served = {k: v.error_pct for k, v in verdicts.items() if v.served}
        out.append({"env": env, "families": len(models), "fitted": len(fitted),
                    "louo_mape_pct": {k: m.louo_mape_pct for k, m in sorted(models.items())},
                    "served": served, "failed_checks": sorted(set(verdicts) - set(served))})
        if models:
            worst = f", largest check error {max(served.values()):.1f}%" if served else ""
            Console().print(f"unit families in {env[:8]}: {len(models)} stored ({len(fitted)} fitted now); "
                            f"{len(served)} units family-served{worst}, "
                            f"{len(verdicts) - len(served)} failed their check points")
    return out


def _print_fits(rows: list[dict], families: list[dict]) -> None:
    new = sum(r["fitted"] for r in rows)
    t = Table(title=f"{len(rows)} (unit, environment) models stored: {new} fitted now, "
                    f"{len(rows) - new} unchanged since the last fit")
    for col in ("unit", "env", "op", "model", "CV MAPE %", "points"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["key"] + ("" if r["fitted"] else " (kept)"), r["env"][:8], r["op"][:32], r["model"],
                  "-" if r["cv_mape_pct"] is None else f"{r['cv_mape_pct']:.2f}", str(r["points"]))
    console = Console()
    console.print(t)
    for fam in families:
        err = fam["holdout_mape_pct"]
        console.print(f"GEMM family for unmeasured shapes in {fam['env'][:8]}: "
                      + ("one shape measured, no held-out error" if err is None
                         else f"{err:.1f}% MAPE on held-out shapes")
                      + ("" if fam["fitted"] else " (kept)"))


def _escape(text: str) -> str:
    """A collective environment's label holds its topology in brackets, which rich would
    read as markup."""
    from rich.markup import escape
    return escape(text)


def _expected_error(pred, store, cfg, batch) -> tuple[float | None, str]:
    """The step's stated error (dooly.uncertainty.expected_step_error): measured on whole
    calibrated steps, the model's own when they are in the pool, else model-out."""
    from dooly.graph.units import inventory_key
    from dooly.uncertainty import expected_step_error, predictor_uncertainty
    return expected_step_error(predictor_uncertainty(pred, store, inventory_key(cfg.hash, pred.tp)), batch)


def run_predict(args) -> int:
    from dooly.cli.batchspec import parse_batch
    from dooly.predict import Predictor, refit_note
    from dooly.config import load_config
    cfg = load_config(args.config)  # the config, then the batch against its length, then the DB
    batch = parse_batch(args.batch, cfg.max_length()[0])
    if args.tp > 1:
        from dooly.parallel import check_tp
        check_tp(cfg, args.tp, args.engine or "vllm")
    from dooly.db import Store
    with Store.open(args.db, create=False) as store:   # one open (and quick check) for both reads
        pred = Predictor.load(args.config, args.db, args.engine, args.env, store=store, tp=args.tp,
                              routing=args.routing)
        if pred.refitted:
            print(refit_note(pred.refitted, args.db), file=sys.stderr)
        from dooly.cli.flags import recheck_host
        recheck_host(pred, args)
        res = pred.predict(batch)
        err_pct, err_source = _expected_error(pred, store, cfg, batch)
    t = Table(title=f"{len(batch)} sequences, {sum(q for q, _ in batch)} tokens: units "
                    f"{res.units_ms:.3f} ms, engine step {res.step_ms:.3f} ms"
                    + (f" ± {err_pct:.1f}%" if err_pct is not None else "")
                    + f" ({pred.env.label()}; engine-step model: {pred.step_model_source}"
                    + (f"; TP={pred.tp}, collectives from {_escape(pred.collective_env.label())}"
                       if pred.collective_env else "") + f"; expected error: {_escape(err_source)})")
    for col in ("unit", "op", "count", "ms", "%"):
        t.add_column(col)
    for key, ms in sorted(res.breakdown.items(), key=lambda kv: -kv[1]):
        note = (f" (family-served, check error {pred.models[key].cv_mape_pct:.1f}%)"
                if pred.fallback.get(key) == "family" else
                f" (GEMM family, ±{pred.models[key].cv_mape_pct:.0f}% on held-out shapes)"
                if key in pred.fallback else "")
        t.add_row(key, pred.units[key].op[:32] + note, str(pred.counts[key]), f"{ms:.3f}",
                  f"{100 * ms / res.units_ms:.1f}" if res.units_ms else "-")
    Console().print(t)
    if args.json_path:
        dump_json(args.json_path, {
            "units_ms": res.units_ms, "engine_ms": res.engine_ms, "step_ms": res.step_ms,
            "breakdown": res.breakdown, "env": pred.env.key, "refitted": pred.refitted,
            "step_model": pred.step_model_source, "tp": pred.tp,
            "expected_error_pct": err_pct, "expected_error_source": err_source,
            "collective_env": pred.collective_env.key if pred.collective_env else None,
            "drift": pred.drift.to_json() if pred.drift else None}, "--json")
    return 0
