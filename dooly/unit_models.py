"""Which model answers for each unit of a prediction: the unit's stored fit (fitted
anew where stale), its family where check points serve it (dooly.fit.family_store), the
environment's GEMM family for a GEMM never measured here, and for collectives the fits of
the collective environment that timed them; `fast_evaluator` turns each into a scalar
function for the predictor's hot loop."""
from __future__ import annotations

import numpy as np

from dooly.errors import MissingDataError
from dooly.unit import COLLECTIVE_OPS, Unit


def models_with_collectives(store, env, units: dict[str, Unit], routing: str = "balanced"):
    """(models, fallback, refitted, collective environment or None): `_load_models` for
    the compute units, the collective environment's fits for the collectives."""
    coll = {k: u for k, u in units.items() if u.op in COLLECTIVE_OPS}
    models, fallback, refitted = _load_models(store, env, {k: u for k, u in units.items()
                                                           if k not in coll}, routing)
    if not coll:
        return models, fallback, refitted, None
    cmodels, crefit, cenv = _collective_models(store, env, coll)
    models.update(cmodels)
    return models, fallback, refitted + crefit, cenv


def fast_evaluator(model, driver: str):
    """A scalar evaluator per unit: the knots of an interpolating fit are evaluated
    in pure Python (a bisect), skipping sklearn's per-call validation; other models
    go through `predict_one`. Keeps a 256-sequence prediction well under a millisecond."""
    import bisect
    est = getattr(model, "estimator", None)
    kx, ky = getattr(est, "knots_x_", None), getattr(est, "knots_y_", None)
    if driver in ("tokens", "seqs") and kx is not None and len(kx) >= 2:
        from dooly.fit.estimators import end_slope
        slope = end_slope(kx, ky)
        kx, ky = [float(v) for v in kx], [float(v) for v in ky]

        def interp(x: float, _point) -> float:  # the estimator's own rule, without sklearn
            if x >= kx[-1]:
                return ky[-1] + slope * (x - kx[-1])
            if x <= kx[0]:
                return ky[0]
            i = bisect.bisect_right(kx, x) - 1
            x0, x1, y0, y1 = kx[i], kx[i + 1], ky[i], ky[i + 1]
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        return interp
    if hasattr(est, "powers_") and hasattr(est, "coef_") and driver in ("tokens", "seqs") \
            and len(est.scale_) == 1:
        # one feature: the same polynomial in pure Python, without numpy's per-call cost
        s0, icpt = float(est.scale_[0]), float(est.intercept_)
        terms = [(float(c), int(p[0])) for c, p in zip(est.coef_, est.powers_)]
        return lambda x, _point: icpt + sum(c * (x / s0) ** p for c, p in terms)
    if hasattr(est, "powers_") and hasattr(est, "coef_"):
        from dooly.fit.estimators import _poly
        from dooly.fit.features import features
        scale, powers, coef, icpt = est.scale_, est.powers_, est.coef_, est.intercept_
        return lambda _x, point: float(np.ravel(_poly(features(driver, point)[None] / scale, powers) @ coef
                                                + icpt)[0])
    return lambda _x, point: float(model.predict_one(point))


class _GemmModel:
    """Adapter: the GEMM family model answering for one unmeasured GEMM unit."""

    def __init__(self, family, k: int, n: int, dtype: str, m_expr: str, error_pct: float | None):
        self.family, self.k, self.n, self.dtype, self.m_expr = family, k, n, dtype, m_expr
        # stated: the family's MAPE on held-out shapes (NaN: a single shape measured)
        self.name = "gemm_family"
        self.cv_mape_pct = float("nan") if error_pct is None else error_pct

    def predict_one(self, point: dict) -> float:
        from dooly.profile.grid import point_values
        from dooly.symbolic.symbols import evaluate
        m = evaluate(self.m_expr, **point_values(point))
        return float(np.asarray(self.family.predict(m, self.k, self.n, self.dtype)).ravel()[0])


def _gemm_fallback(stored, unit: Unit) -> _GemmModel | None:
    """The environment's GEMM family (`dooly.fit.stored.StoredFamily`) standing in for
    an unmeasured GEMM unit; None when the unit is no GEMM or there is no family."""
    from dooly.fit.gemm_rows import gemm_shape
    shape = gemm_shape(unit) if stored is not None else None
    if shape is None:
        return None
    m_expr, k, n = shape
    return _GemmModel(stored.family, k, n, unit.inputs[0].dtype, str(m_expr), stored.error_pct)


def _collective_models(store, env, units: dict[str, Unit]):
    """(models, refitted, environment) of the collective units, from the collective
    environment of `env` that measured them (dooly.parallel.collective_env_for)."""
    from dooly.fit.stored import unit_models
    from dooly.parallel import collective_env_for
    cenv = collective_env_for(store, env, units)
    tp = max(int(u.attr.get("group_size", 1)) for u in units.values())
    hint = f"a collective; run `dooly sweep --tp {tp}` on a host with {tp} ranks"
    if cenv is None:
        raise MissingDataError(next(iter(units)), env.label(), hint)
    meas = [m for k in units for m in store.measurements(unit_key=k, env_key=cenv.key)]
    fits = unit_models(store, cenv.key, units, meas)
    missing = [k for k in units if k not in fits.models]
    if missing:
        raise MissingDataError(missing[0], cenv.label(), hint)
    return dict(fits.models), list(fits.refitted), cenv


def _load_models(store, env, units: dict[str, Unit], routing: str = "balanced"):
    """(models, fallback, refitted): the stored fit of every measured unit, fitted anew
    only where stale or missing; the GEMM family for GEMMs never measured here. MoE
    units are fitted on their points timed under `routing` (dooly.routing)."""
    from dooly.fit.gemm_rows import gemm_shape
    from dooly.fit.stored import FAMILY_KEY, family_rows, load_family, unit_models
    from dooly.routing import for_routing, is_moe
    meas = for_routing([m for k in units for m in store.measurements(unit_key=k, env_key=env.key)],
                       units, routing)
    fits = unit_models(store, env.key, units, meas)
    models, fallback, refitted = dict(fits.models), {}, list(fits.refitted)
    # a unit measured at check points only: its family serves it while they agree
    from dooly.fit.family_store import served_models
    served, fam_fitted = served_models(store, env.key, units, meas)
    for key, model in served.items():
        models[key], fallback[key] = model, "family"
    refitted += [f"family:{k}" for k in fam_fitted]
    missing = [k for k in units if k not in models]
    family = None
    if any(gemm_shape(units[k]) is not None for k in missing):
        # every GEMM measured in the environment trains it, not only this model's
        rows = family_rows(store.units(), store.measurements(env_key=env.key), env.key)
        family = load_family(store, env.key, rows)
        if family is not None and family.refitted:
            refitted.append(FAMILY_KEY)
    for key in missing:
        m = _gemm_fallback(family, units[key])
        if m is None and is_moe(units[key]):
            raise MissingDataError(key, env.label(), f"op {units[key].op} has no points timed under "
                                                      f"routing {routing}; sweep with --routing {routing}")
        if m is None:
            from dooly.profile.plan import unsupported_reason
            why = unsupported_reason(store.measurements(unit_key=key, env_key=env.key, status=None))
            raise MissingDataError(key, env.label(), f"op {units[key].op}; " + (
                f"unsupported on this device, every point failed: {why}; `dooly sweep --retry-failed` "
                "measures it again" if why else "sweep this model first"))
        models[key], fallback[key] = m, "gemm_family"
    return models, fallback, refitted
