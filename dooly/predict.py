"""Batch latency for simulator authors: load a model's inventory and the fits stored in
a latency DB (`dooly fit`), then `predict(batch)` for any batch of (query length,
context length) sequences: the units' milliseconds with a per-unit breakdown, and the
calibrated rest of the engine step.

    from dooly.predict import Predictor
    p = Predictor.load("config.json", "latency.db")
    r = p.predict([(512, 0), (1, 1024), (1, 2048)])   # one prefill, two decodes
    r.units_ms, r.engine_ms, r.step_ms, r.breakdown     # breakdown: {unit_key: ms}
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dooly.errors import DoolyInputError, MissingDataError
from dooly.unit import COLLECTIVE_OPS, Unit


@dataclass
class Prediction:
    units_ms: float                                              # the model's units alone
    breakdown: dict[str, float] = field(default_factory=dict)   # unit key -> ms (count included)
    engine_ms: float = 0.0   # calibrated rest of the engine step (may be negative)

    @property
    def step_ms(self) -> float:
        """A whole engine step: units plus engine, the engine's correction never taking
        more than half the units' time away (what `Predictor.step_ms` returns)."""
        return max(self.units_ms + self.engine_ms, 0.5 * self.units_ms)


class Predictor:
    """`refitted`: the unit keys (and "family:gemm") whose stored fit was missing or
    stale at load, so were fitted anew; `dooly fit` stores them."""
    step_model_source = "none"   # which engine-step model the load found (dooly.fit.step_model)
    tp = 1                       # tensor-parallel size: the units are one rank's, with collectives
    collective_env = None        # where the collectives were measured (dooly.parallel), when tp > 1
    graphs = None                # captured CUDA-graph sizes, on a cudagraph host (dooly.fit.cudagraph)
    drift = None                 # the host's drift since the sweep (dooly.profile.drift.Drift)

    def __init__(self, units: dict[str, Unit], counts: dict[str, int], models: dict, env,
                 fallback: dict[str, str] | None = None, engine_step=None,
                 refitted: list[str] | None = None):
        self.units, self.counts, self.models, self.env = units, counts, models, env
        self.fallback = fallback or {}
        self.engine_step = engine_step  # fitted step model, when the engine was calibrated
        self.refitted = list(refitted or [])
        self._by_driver: dict[str, list[tuple[str, object, int]]] = {}
        from dooly.fit.gemm_family import is_gemm   # scikit-learn's ensembles: not at import time
        self._gemm_keys = {key for key in counts if is_gemm(units[key])}   # the step model's prefill term
        for key, count in counts.items():
            d = units[key].driver
            self._by_driver.setdefault(d, []).append((key, _fast(models[key], d), count))

    @classmethod
    def load(cls, config_path: str, db_path: str, engine: str | None = None,
             env_key: str | None = None, store=None, step_model: str = "pool",
             exclude=(), tp: int = 1, routing: str = "balanced") -> "Predictor":
        """`routing`: the expert distribution a mixture-of-experts model's MoE units are
        predicted under (dooly.routing; their points timed under it). `tp` > 1: the model's tensor-parallel inventory (`dooly sweep --tp N`): one rank's
        shard units in the environment that measured most of them (or `env_key`), plus its
        collectives from that environment's collective environment."""
        from dooly.config import load_config
        from dooly.db import Store
        from dooly.db.envs import choose_environment
        cfg = load_config(config_path)
        own = store is None
        store = store or Store.open(db_path, create=False)
        try:
            if tp == 1:
                env = choose_environment(store, engine, env_key, db_path)
                counts = store.inventory(cfg.hash, env.engine)
            else:
                env, counts = _tp_inventory(store, cfg, engine, env_key, db_path, tp)
            if not counts:
                cmd = f"{config_path} --engine {env.engine} --db {db_path}" + (f" --tp {tp}" if tp > 1 else "")
                raise DoolyInputError(db_path, f"no inventory of {cfg.name} for engine {env.engine}"
                                      f"{f' at --tp {tp}' if tp > 1 else ''}: run "
                                      f"`dooly sweep {cmd}` or `dooly analyze {cmd}`")
            units = {k: _stored_unit(store, k, db_path) for k in counts}
            models, fallback, refitted, cenv = _models_with_collectives(store, env, units, routing)
            pred = cls(units, counts, models, env, fallback, refitted=refitted)
            pred.tp, pred.collective_env = tp, cenv
            pred.engine_step = pred._load_engine_step(store, env, cfg, step_model, exclude)
        finally:
            if own:
                store.close()
        return pred

    def _load_engine_step(self, store, env, cfg, prefer: str = "pool", exclude=()):
        """The engine's step time beyond the units: the environment's engine-step model
        (dooly.fit.step_model), fitted on the steps `dooly calibrate` stored for every
        calibrated model but those in `exclude` (config hashes), each model's units
        predicted from its own inventory, applied to this model's structure; with
        prefer="model" this model's own steps when it was calibrated; "none": no model.
        Sets `step_model_source` and `structure`; on a CUDA-graph host, `graphs`."""
        from dooly.fit.step_features import model_structure
        from dooly.fit.step_pool import load_step_model
        if env.execution == "cudagraph" and self.graphs is None:
            from dooly.fit.cudagraph import GraphPolicy
            self.graphs = GraphPolicy.for_serving()   # vLLM's defaults; set_serving() to change
        # the engine-step pool names a model by its inventory key (`dooly calibrate --tp N`
        # stores TP steps under the TP inventory's)
        from dooly.graph.units import inventory_key
        others: dict = {inventory_key(cfg.hash, self.tp): self}

        def other(h):
            if h not in others:
                others[h] = _units_only(store, env, h, self.graphs)
            return others[h]

        def units_ms_for(h):
            p = other(h)
            return None if p is None else p.units_and_gemm_ms

        def structure_of(h):
            p = other(h)
            return None if p is None else model_structure(None, p.counts, p.units)

        self.structure = model_structure(cfg, self.counts, self.units)
        model, self.step_model_source = load_step_model(store, env, _own(cfg, self.tp), self.structure,
                                                        units_ms_for, exclude, prefer, structure_of,
                                                        self.graphs)
        return model

    def recheck_host(self, db_path: str, log=None):
        """Time a few of this model's stored points again on this host now and scale every
        prediction by the drift they show (dooly.profile.drift); the environment must be
        this host's. Returns the Drift (None: no token-driven points to re-time)."""
        from dooly.db import Store
        from dooly.env import host_cpu_name
        from dooly.profile.drift import measure_drift
        here = host_cpu_name() if self.env.device_kind == "cpu" else None
        if self.env.device_kind != "cpu" or self.env.device_name != here:
            raise DoolyInputError("--recheck-host", f"environment {self.env.label()} is not this host's "
                                  f"({here or 'a CPU'}): its points can only be re-timed where they were measured")
        with Store.open(db_path, create=False) as store:
            self.drift = measure_drift(store, self.env, self.units, self.counts, log)
        return self.drift

    def set_serving(self, max_num_batched_tokens: int, max_num_seqs: int) -> None:
        """On a CUDA-graph host: the capture sizes vLLM derives from these serving settings."""
        if self.env.execution == "cudagraph":
            from dooly.fit.cudagraph import GraphPolicy
            self.graphs = GraphPolicy.for_serving(max_num_seqs, max_num_batched_tokens)
            if self.engine_step is not None:
                self.engine_step.graphs = self.graphs

    def predict(self, batch: list[tuple[int, int]]) -> Prediction:
        if not batch:
            return Prediction(0.0)
        seqs = [[int(q), int(c)] for q, c in batch]
        t = float(sum(q for q, _ in seqs))
        if self.graphs is not None:   # a captured graph runs at its padded token count
            t = float(self.graphs.padded(int(t)))
        points = {"tokens": {"T": t}, "seqs": {"B": float(len(seqs))}, "attention": {"seqs": seqs},
                  "none": {}}
        out: dict[str, float] = {}
        scale = self.drift.scale(t) if self.drift is not None else 1.0
        for driver, entries in self._by_driver.items():
            point = points[driver]
            x = t if driver == "tokens" else float(len(seqs))
            for key, fn, count in entries:
                out[key] = scale * count * max(fn(x, point), 0.0)
        units = float(sum(out.values()))
        engine = self.engine_step.predict_one(seqs, units, self.gemm_ms(out)) if self.engine_step else 0.0
        return Prediction(units, out, engine)

    def gemm_ms(self, breakdown: dict[str, float]) -> float:
        """The GEMM units' share of a prediction's breakdown (the step model's prefill term)."""
        return float(sum(v for k, v in breakdown.items() if k in self._gemm_keys))

    def units_and_gemm_ms(self, seqs) -> tuple[float, float]:
        """A batch's units alone and their GEMMs, as the engine-step pool is fitted on."""
        pr = self.predict(seqs)
        return pr.units_ms, self.gemm_ms(pr.breakdown)

    def step_ms(self, batch) -> float:
        """Simulator hook: a step's list of scheduled sequences (query_len, context_len):
        the model's units plus the calibrated rest of the engine step (`Prediction.step_ms`)."""
        pairs = [(s.query_len, s.context_len) if hasattr(s, "query_len") else tuple(s) for s in batch]
        return self.predict(pairs).step_ms


def _units_only(store, env, config_hash: str, graphs=None) -> "Predictor | None":
    """The units of another model the DB holds an inventory of (for the engine-step pool),
    or None when some unit of it cannot be predicted in `env`."""
    counts = store.inventory(config_hash, env.engine)
    units = {k: store.get_unit(k) for k in counts}
    if not counts or any(u is None for u in units.values()):
        return None
    try:
        models, fallback, _, _ = _models_with_collectives(store, env, units)
    except MissingDataError:
        return None
    pred = Predictor(units, counts, models, env, fallback)
    pred.graphs = graphs
    return pred


def _own(cfg, tp: int):
    """The model as the engine-step pool names it: by its inventory key."""
    if tp == 1:
        return cfg
    from types import SimpleNamespace

    from dooly.graph.units import inventory_key
    return SimpleNamespace(hash=inventory_key(cfg.hash, tp), raw=cfg.raw, path=cfg.path, name=cfg.name)


def _models_with_collectives(store, env, units: dict[str, Unit], routing: str = "balanced"):
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


def refit_note(refitted: list[str], db_path: str) -> str:
    """One stderr line for a load that had to fit anew (empty when nothing was)."""
    if not refitted:
        return ""
    return (f"dooly: {len(refitted)} stored fits were missing or stale and were fitted now; "
            f"`dooly fit --db {db_path}` stores them")


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
    from dooly.fit.gemm_family import gemm_shape
    shape = gemm_shape(unit) if stored is not None else None
    if shape is None:
        return None
    m_expr, k, n = shape
    return _GemmModel(stored.family, k, n, unit.inputs[0].dtype, str(m_expr), stored.error_pct)


def _tp_inventory(store, cfg, engine: str | None, env_key: str | None, db_path: str, tp: int):
    """(environment, counts) of a tensor-parallel inventory."""
    from dooly.db.envs import choose_environment
    from dooly.graph.units import inventory_key
    from dooly.parallel import tp_environment
    engine = engine or "vllm"   # the one engine with tensor parallelism
    counts = store.inventory(inventory_key(cfg.hash, tp), engine)
    if env_key or not counts:
        return choose_environment(store, engine, env_key, db_path), counts
    units = {k: _stored_unit(store, k, db_path) for k in counts}
    return tp_environment(store, engine, units, db_path), counts


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


def _stored_unit(store, key: str, db_path: str) -> Unit:
    unit = store.get_unit(key)
    if unit is None:
        raise DoolyInputError(db_path, f"the inventory names unit {key}, which the DB does not "
                                       "hold: run `dooly sweep` or `dooly analyze --db` again")
    return unit


def _load_models(store, env, units: dict[str, Unit], routing: str = "balanced"):
    """(models, fallback, refitted): the stored fit of every measured unit, fitted anew
    only where stale or missing; the GEMM family for GEMMs never measured here. MoE
    units are fitted on their points timed under `routing` (dooly.routing)."""
    from dooly.fit.gemm_family import gemm_shape
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
                f"unsupported on this device, every point failed: {why}" if why else "sweep this model first"))
        models[key], fallback[key] = m, "gemm_family"
    return models, fallback, refitted
