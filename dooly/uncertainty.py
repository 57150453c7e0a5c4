"""What a `Predictor`'s step time may be off by, as data (`dooly.sim.intervals.Uncertainty`)
that the simulator draws from (`dooly simulate --intervals`, `dooly search`'s bands).

- a unit: its fit's cross-validated MAPE (`dooly.fit.select`), or the GEMM family's
  held-out-shape MAPE where the family answers for an unmeasured GEMM; a fit with too
  few points to cross-validate counts as UNKNOWN_ERROR_PCT;
- the whole step, from the engine-step model's pool (`dooly calibrate`): for a model
  whose own steps are in the pool, the MAPE of its predicted whole steps (units plus
  engine, as `Prediction.step_ms`) against them; for any other model, the model-out
  error: each calibrated model left out in turn, the step model fitted on the others'
  steps and scored on the left-out model's, the mean over models. A pool of one model
  has no model-out check: its in-sample error stands in (said in `step_source`). No
  engine-step model: none.
"""
from __future__ import annotations

import math

import numpy as np

from dooly.sim.intervals import UNKNOWN_ERROR_PCT, Uncertainty


def unit_error_pct(model) -> float:
    pct = getattr(model, "cv_mape_pct", None)
    return float(pct) if pct is not None and math.isfinite(float(pct)) else UNKNOWN_ERROR_PCT


def predictor_uncertainty(pred, store=None, config_hash: str | None = None) -> Uncertainty:
    """`pred`: a loaded `dooly.predict.Predictor` of the model whose config hash is
    `config_hash`; `store`: its DB (an open `dooly.db.Store`), for the step errors."""
    units = tuple((k, unit_error_pct(pred.models[k])) for k in sorted(pred.counts))
    step_pct, source = step_model_error(pred, store, config_hash)
    return Uncertainty(units, step_pct, source, scope=pred.env.key)


def step_model_error(pred, store, config_hash: str | None = None) -> tuple[float, str]:
    es = pred.engine_step
    if es is None:
        return 0.0, "none: no engine-step model"
    fitted = es.model
    insample = (float(fitted.in_sample_mape_pct_), "in-sample: one calibrated model")
    if store is None:
        return insample
    if config_hash in fitted.models_:
        own = own_step_error(store, pred, config_hash)
        if own is not None:
            return own
    if len(fitted.models_) < 2:
        return insample
    errs = model_out_errors(store, pred, list(fitted.models_))
    if not errs:
        return insample
    return float(np.mean(list(errs.values()))), f"model-out over {len(errs)} calibrated models"


def own_step_error(store, pred, config_hash: str) -> tuple[float, str] | None:
    """MAPE of the model's own calibrated steps as `pred` predicts them."""
    from dooly.fit.step_model import pool_rows
    rows = [r for r in pool_rows(store, pred.env.key) if r["model"] == config_hash]
    if not rows:
        return None
    errs = [abs(pred.predict(r["seqs"]).step_ms - r["step_ms"]) / r["step_ms"] for r in rows]
    return 100.0 * float(np.mean(errs)), f"its own {len(rows)} calibrated steps"


def model_out_errors(store, pred, models: list[str]) -> dict[str, float]:
    """Config hash -> MAPE (%) of whole steps of that model, predicted with an engine-step
    model fitted on the other models' steps only."""
    from dooly.fit.step_model import MIN_ROWS, EngineStepModel, model_structure, pool_rows, select_terms
    from dooly.predict import _units_only
    env = pred.env
    units_of: dict = {}

    def units_pred(h):
        if h not in units_of:
            units_of[h] = _units_only(store, env, h, pred.graphs)
        return units_of[h]

    def structure_of(h):
        p = units_pred(h)
        return None if p is None else model_structure(None, p.counts, p.units)

    rows = []
    for r in pool_rows(store, env.key, structure_of):
        p = units_pred(r["model"]) if r["model"] in models else None
        if p is not None:
            units, gemm = p.units_and_gemm_ms(r["seqs"])
            rows.append(dict(r, units_ms=units, gemm_ms=gemm))
    out = {}
    for h in models:
        train = [r for r in rows if r["model"] != h]
        test = [r for r in rows if r["model"] == h]
        if len(train) < MIN_ROWS or not test:
            continue
        model = EngineStepModel(select_terms(train, test[0]["structure"])).fit(train)
        errs = [abs(max(r["units_ms"] + model.predict_one(r["seqs"], r["structure"], r.get("graph"), r["units_ms"],
                                                          r["gemm_ms"]),
                        0.5 * r["units_ms"]) - r["step_ms"]) / r["step_ms"] for r in test]
        out[h] = 100.0 * float(np.mean(errs))
    return out
