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

from dooly.errors import DoolyInputError, MissingDataError
from dooly.unit import Unit
from dooly.unit_models import fast_evaluator, models_with_collectives


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
        from dooly.fit.gemm_rows import is_gemm   # dooly.fit loads scikit-learn's ensembles: not at import time
        self._gemm_keys = {key for key in counts if is_gemm(units[key])}   # the step model's prefill term
        for key, count in counts.items():
            d = units[key].driver
            self._by_driver.setdefault(d, []).append((key, fast_evaluator(models[key], d), count))

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
                env = choose_environment(store, engine, env_key, db_path,
                                         needs=lambda e: store.inventory(cfg.hash, e.engine))
                counts = store.inventory(cfg.hash, env.engine)
            else:
                env, counts = _tp_inventory(store, cfg, engine, env_key, db_path, tp)
            if not counts:
                cmd = f"{config_path} --engine {env.engine} --db {db_path}" + (f" --tp {tp}" if tp > 1 else "")
                raise DoolyInputError(db_path, f"no inventory of {cfg.name} for engine {env.engine}"
                                      f"{f' at --tp {tp}' if tp > 1 else ''}: run "
                                      f"`dooly sweep {cmd}` or `dooly analyze {cmd}`")
            units = {k: _stored_unit(store, k, db_path) for k in counts}
            models, fallback, refitted, cenv = models_with_collectives(store, env, units, routing)
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
        models, fallback, _, _ = models_with_collectives(store, env, units)
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


def refit_note(refitted: list[str], db_path: str) -> str:
    """One stderr line for a load that had to fit anew (empty when nothing was)."""
    if not refitted:
        return ""
    return (f"dooly: {len(refitted)} stored fits were missing or stale and were fitted now; "
            f"`dooly fit --db {db_path}` stores them")


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


def _stored_unit(store, key: str, db_path: str) -> Unit:
    unit = store.get_unit(key)
    if unit is None:
        raise DoolyInputError(db_path, f"the inventory names unit {key}, which the DB does not "
                                       "hold: run `dooly sweep` or `dooly analyze --db` again")
    return unit
