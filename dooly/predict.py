"""Batch latency for simulator authors: load a model's inventory and a latency DB,
fit (or reuse) one regression per unit, then `predict(batch)` for any batch of
(query length, context length) sequences: total milliseconds and a per-unit breakdown.

    from dooly.predict import Predictor
    p = Predictor.load("config.json", "latency.db")
    r = p.predict([(512, 0), (1, 1024), (1, 2048)])   # one prefill, two decodes
    r.total_ms, r.breakdown                              # {unit_key: ms}
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dooly.errors import DoolyInputError, MissingDataError
from dooly.unit import Unit


@dataclass
class Prediction:
    total_ms: float                                               # the model's units
    breakdown: dict[str, float] = field(default_factory=dict)   # unit key -> ms (count included)
    overhead_ms: float = 0.0   # calibrated engine step beyond the units (may be negative)


def _engine_env(store, engine: str | None, env_key: str | None):
    envs = store.environments()
    if env_key:
        match = [e for e in envs if e.key == env_key]
        if not match:
            raise DoolyInputError(env_key, "no such environment in the DB", "--env")
        return match[0]
    if engine:
        envs = [e for e in envs if e.engine == engine]
    if not envs:
        raise DoolyInputError("--db", f"the DB holds no environment for engine {engine or 'any'}")
    # the environment with the most measurements
    return max(envs, key=lambda e: len(store.measurements(env_key=e.key)))


class Predictor:
    def __init__(self, units: dict[str, Unit], counts: dict[str, int], models: dict, env,
                 fallback: dict[str, str] | None = None, overhead=None):
        self.units, self.counts, self.models, self.env = units, counts, models, env
        self.fallback = fallback or {}
        self.overhead = overhead  # fitted StepResidual, when the engine was calibrated
        self._by_driver: dict[str, list[tuple[str, object, int]]] = {}
        for key, count in counts.items():
            d = units[key].driver
            self._by_driver.setdefault(d, []).append((key, _fast(models[key], d), count))

    @classmethod
    def load(cls, config_path: str, db_path: str, engine: str | None = None,
             env_key: str | None = None, store=None) -> "Predictor":
        from dooly.config import load_config
        from dooly.db import Store
        from dooly.fit.select import fit_units
        cfg = load_config(config_path)
        own = store is None
        store = store or Store.open(db_path, create=False)
        try:
            env = _engine_env(store, engine, env_key)
            counts = store.inventory(cfg.hash, env.engine)
            if not counts:  # not swept with this DB: capture the inventory now
                from dooly.analyze import analyze
                inv = analyze([config_path], env.engine).inventories[0]
                counts = inv.counts()
                units = {k: e.unit for k, e in inv.entries.items()}
            else:
                units = {k: store.get_unit(k) for k in counts}
            meas = [m for k in counts for m in store.measurements(unit_key=k, env_key=env.key)]
            fitted = fit_units(units, meas)
            models, fallback = {}, {}
            for key, unit in units.items():
                m = fitted.get((key, env.key))
                if m is None:
                    m = _gemm_fallback(store, env, unit)
                    if m is None:
                        raise MissingDataError(key, env.label(), f"op {unit.op}; sweep this model first")
                    fallback[key] = "gemm_family"
                models[key] = m
            pred = cls(units, counts, models, env, fallback)
            from dooly.fit.step_model import fit_residual
            pred.overhead = fit_residual(store, env.key, cfg.hash,
                                         lambda seqs: pred.predict(seqs).total_ms)
        finally:
            if own:
                store.close()
        return pred

    def predict(self, batch: list[tuple[int, int]]) -> Prediction:
        if not batch:
            return Prediction(0.0)
        seqs = [[int(q), int(c)] for q, c in batch]
        t = float(sum(q for q, _ in seqs))
        points = {"tokens": {"T": t}, "seqs": {"B": float(len(seqs))}, "attention": {"seqs": seqs},
                  "none": {}}
        out: dict[str, float] = {}
        for driver, entries in self._by_driver.items():
            point = points[driver]
            x = t if driver == "tokens" else float(len(seqs))
            for key, fn, count in entries:
                out[key] = count * max(fn(x, point), 0.0)
        over = self.overhead.predict_one(seqs) if self.overhead else 0.0
        return Prediction(float(sum(out.values())), out, over)

    def step_ms(self, batch) -> float:
        """Simulator hook: a step's list of scheduled sequences (query_len, context_len):
        the model's units plus the calibrated rest of the engine step. A correction never
        takes more than half the units' time away."""
        pairs = [(s.query_len, s.context_len) if hasattr(s, "query_len") else tuple(s) for s in batch]
        p = self.predict(pairs)
        return max(p.total_ms + p.overhead_ms, 0.5 * p.total_ms)


def _fast(model, driver: str):
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
    if hasattr(est, "powers_") and hasattr(est, "coef_"):
        from dooly.fit.estimators import _poly
        from dooly.fit.features import features
        scale, powers, coef, icpt = est.scale_, est.powers_, est.coef_, est.intercept_
        return lambda _x, point: float(np.ravel(_poly(features(driver, point)[None] / scale, powers) @ coef
                                                + icpt)[0])
    return lambda _x, point: float(model.predict_one(point))


class _GemmModel:
    """Adapter: the GEMM family model answering for one unmeasured GEMM unit."""

    def __init__(self, family, k: int, n: int, dtype: str, m_expr: str, error_pct: float):
        self.family, self.k, self.n, self.dtype, self.m_expr = family, k, n, dtype, m_expr
        self.name, self.cv_mape_pct = "gemm_family", error_pct  # stated: held-out-shape MAPE

    def predict_one(self, point: dict) -> float:
        from dooly.profile.grid import point_values
        from dooly.symbolic.symbols import evaluate
        m = evaluate(self.m_expr, **point_values(point))
        return float(np.asarray(self.family.predict(m, self.k, self.n, self.dtype)).ravel()[0])


def _gemm_fallback(store, env, unit: Unit):
    from dooly.fit.gemm_family import GemmFamily, gemm_shape, rows_from_units
    shape = gemm_shape(unit)
    if shape is None:
        return None
    rows = rows_from_units(store.units(), store.measurements(env_key=env.key))
    if len(rows) < 8:
        return None
    m_expr, k, n = shape
    # the roofline family fits in milliseconds; its error is stated as the mean MAPE
    # with each measured (K, N) shape held out of training in turn
    shapes = sorted({(r.K, r.N) for r in rows})
    errs = [GemmFamily(model="roofline").holdout_error(rows, [s]) for s in shapes] if len(shapes) > 1 else []
    err = float(np.mean(errs)) if errs else float("nan")
    family = GemmFamily(model="roofline").fit(rows)
    return _GemmModel(family, k, n, unit.inputs[0].dtype, str(m_expr), err)
