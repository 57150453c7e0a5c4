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
  engine-step model: none. Beside the whole, the same error per step kind (prefill,
  decode, mixed: `dooly.sim.intervals.step_kind`), which the draws use when it is there.
"""
from __future__ import annotations

import math

import numpy as np

from dooly.sim.intervals import STEP_KINDS, UNKNOWN_ERROR_PCT, Uncertainty, step_kind


def unit_error_pct(model) -> float:
    pct = getattr(model, "cv_mape_pct", None)
    return float(pct) if pct is not None and math.isfinite(float(pct)) else UNKNOWN_ERROR_PCT


def predictor_uncertainty(pred, store=None, config_hash: str | None = None) -> Uncertainty:
    """`pred`: a loaded `dooly.predict.Predictor` of the model whose config hash is
    `config_hash`; `store`: its DB (an open `dooly.db.Store`), for the step errors."""
    units = tuple((k, unit_error_pct(pred.models[k])) for k in sorted(pred.counts))
    step_pct, source, kinds = step_model_error(pred, store, config_hash)
    return Uncertainty(units, step_pct, source, scope=pred.env.key, kind_pct=kinds)


def step_model_error(pred, store, config_hash: str | None = None) -> tuple[float, str, tuple]:
    """(MAPE % of whole steps, how it was found, per step kind: ((kind, pct), ...) or ())."""
    es = pred.engine_step
    if es is None:
        return 0.0, "none: no engine-step model", ()
    fitted = es.model
    insample = (float(fitted.in_sample_mape_pct_), "in-sample: one calibrated model", ())
    if store is None:
        return insample
    if config_hash in fitted.models_:
        own = own_step_errors(store, pred, config_hash)
        if own:
            return _summarise({config_hash: own}, f"its own {len(own)} calibrated steps")
    if len(fitted.models_) < 2:
        return insample
    errs = model_out_errors(store, pred, list(fitted.models_))
    if not errs:
        return insample
    return _summarise(errs, f"model-out over {len(errs)} calibrated models")


def _summarise(errs: dict[str, list[tuple[str, float]]], source: str) -> tuple[float, str, tuple]:
    """`errs`: model -> [(step kind, signed relative error)]. The MAPE over all steps and per
    step kind, each the mean over models of that model's MAPE. A serving metric leans on one
    kind (TTFT on prefill steps at low load, TPOT on decode and mixed ones), and the step
    model errs by kind (decode transfers worst), so each kind is drawn with its own error."""
    def mape(values) -> float:
        return 100.0 * float(np.mean([np.mean(np.abs(v)) for v in values]))
    overall = mape([[e for _, e in rows] for rows in errs.values()])
    kinds = []
    for kind in STEP_KINDS:
        per_model = [v for rows in errs.values() if (v := [e for k, e in rows if k == kind])]
        if per_model:
            kinds.append((kind, mape(per_model)))
    return overall, source, tuple(kinds)


def own_step_errors(store, pred, config_hash: str) -> list[tuple[str, float]]:
    """[(step kind, signed relative error)] of the model's own calibrated steps as `pred`
    predicts them."""
    from dooly.fit.step_pool import pool_rows
    rows = [r for r in pool_rows(store, pred.env.key) if r["model"] == config_hash]
    return [(step_kind(r["seqs"]), pred.predict(r["seqs"]).step_ms / r["step_ms"] - 1.0) for r in rows]


def model_out_errors(store, pred, models: list[str]) -> dict[str, list[tuple[str, float]]]:
    """Config hash -> [(step kind, signed relative error)] of whole steps of that model,
    predicted with an engine-step model fitted on the other models' steps only."""
    from dooly.fit.step_features import MIN_ROWS, model_structure
    from dooly.fit.step_model import EngineStepModel
    from dooly.fit.step_pool import pool_rows, select_terms
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
        model = EngineStepModel(select_terms(train, test[0]["structure"], units_pred(h).units_and_gemm_ms)).fit(train)
        out[h] = [(step_kind(r["seqs"]),
                   max(r["units_ms"] + model.predict_one(r["seqs"], r["structure"], r.get("graph"), r["units_ms"],
                                                         r["gemm_ms"]), 0.5 * r["units_ms"]) / r["step_ms"] - 1.0)
                  for r in test]
    return out


def expected_step_error(unc: Uncertainty, batch) -> tuple[float | None, str]:
    """What one step's prediction may be off by, as `dooly predict` states it: the
    stated whole-step MAPE of the batch's kind (prefill, decode or mixed; the whole
    pool's where that kind was never calibrated), and where it comes from. (None, why)
    without an engine-step model: the units alone state no whole-step error."""
    if unc.step_source.startswith("none"):
        return None, "no engine-step model (`dooly calibrate` a model on this environment)"
    kind = step_kind(batch)
    kinds = dict(unc.kind_pct)
    # a model's own calibrated steps were fitted on: say so
    source = ("in-sample, " if unc.step_source.startswith("its own") else "") + unc.step_source
    if kind in kinds:
        return kinds[kind], f"{kind} steps, {source}"
    return unc.step_pct, f"whole steps, {source}"
