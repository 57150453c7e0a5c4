"""The engine's step time beyond the model's units: one model per environment, fitted on
the whole engine steps of every calibrated model and applied to any model.

A unit timed alone misses what the engine spends around it: the scheduler and output
processing, input preparation and attention metadata, per layer the dispatch of the
attention and KV-write ops and the compiled graph's Python around its kernels (measured on
vLLM-CPU by `bench/accuracy_batch.py --breakdown`: 3.7 ms of a 32 ms SmolLM2 decode step),
sampling bookkeeping; and units timed alone pay a call each that the compiled graph does
not (the same step's small kernels, 2.6 ms less than their units). Inside the engine the
same kernels also run at another speed than alone (the weights and activations of the
neighbouring ops in the caches, the compiled graph's own kernels for fused regions): on an
AMX host the units of a SmolLM2 prefill were 20% under its forward, Qwen2.5-0.5B's 14%, so
one term is proportional to the units' own time. That time depends on the engine and
the host (the environment), on the model's structure (layers, attention layers, vocabulary,
KV width) and on the batch; not on the model's name. `dooly calibrate` stores each real
`LLMEngine.step` as a measurement of the pseudo-unit `engine.step` whose attributes are the
model's structure (`model_structure`; the config hash rides along as provenance only and
enters no feature), its point the batch. `EngineStepModel` fits

    residual(step) = step - units = sum_k coef_k * batch_term_k(seqs) * structure_term_k

over the pool of every calibrated model's steps (one batch term is `units` itself), each model's `units` predicted from its own
inventory and the stored unit fits at load time (so the correction always matches the unit
fits it corrects). The loss is Huber on relative error (decode steps are milliseconds, long
prefills seconds, and one step slowed by another process must not pull the line); each model
weighs the same. The one per-token term is `prefill_gemm`: the step's GEMM units times its
share of prefill tokens. A prefill's GEMMs run longer inside the engine than alone (on
vLLM-CPU the real steps of 128 tokens or more ran 1.15-1.36x their prediction in every bench,
in-sample too, while decode steps and a MoE model's expert kernels did not), so the share is
learned from every calibrated model's steps; with it, the model-out serving replay of
`bench/results/2026-12-02/e2e1` went from TTFT 46% / TPOT 30% (worst model and load) to
18% / 12%."""
from __future__ import annotations

import json
from typing import Callable, Iterable

import numpy as np

from dooly.env import Environment, Measurement
from dooly.fit.cudagraph import FULL
from dooly.unit import Unit, is_mla

STEP_OP = "engine.step"
STRUCTURE = ("layers", "attention_full", "attention_sliding", "pieces", "hidden", "vocab",
             "kv_width", "q_width", "unit_calls")
# (feature name, batch term, structure term): see batch_terms and structure_terms
FEATURES = (
    ("step", "one", "one"),                       # scheduler, output processing, input prep
    ("step_layer", "eager", "pieces"),            # per layer: op dispatch, the graph's Python
    ("seq", "seqs", "one"),                       # per-request bookkeeping, sampling
    ("seq_layer", "seqs", "layers"),              # per-request metadata in every attention call
    ("prefill", "prefills", "one"),               # a chunk's input and metadata preparation
    ("prefill_layer", "prefills", "layers"),
    ("decode_kv", "decode_ctx", "kv_layers"),     # KV read by decodes beyond the attention unit
    ("chunk_attn", "chunk_qc", "q_layers"),       # a chunk's attention over its context, likewise
    ("seq_vocab", "seqs", "vocab"),               # logits and sampler beyond their units
    ("units", "units", "one"),                    # the same kernels slower (or faster) in the engine
    ("prefill_gemm", "prefill_gemm", "one"),      # a prefill's GEMMs, slower in the engine still
)
MIN_ROWS = len(FEATURES) + 1


def model_structure(cfg, inventory_counts: dict[str, int], units: dict[str, Unit]) -> dict[str, int]:
    """The structure terms of a model from its config (may be None) and inventory: layers,
    attention layers by kind, pieces (vLLM's graph split at every attention op on GPU; one
    graph with an attention op per layer on CPU: layers + 1 either way), hidden size,
    vocabulary, KV and query width per layer, unit calls per step."""
    att = {"full": 0, "sliding": 0}
    kv_width = q_width = vocab = hidden = calls = 0
    for key, n in inventory_counts.items():
        u = units[key]
        a = u.attr
        if u.stateful and "attention" in u.op and "kv_cache" not in u.op:
            kind = "sliding" if (a.get("sliding_window") or "sliding" in str(a.get("layer_type", ""))) else "full"
            att[kind] += int(n)
            heads, kv_heads, size = a.get("num_heads"), a.get("num_kv_heads"), a.get("head_size")
            # an MLA query head is nope + rope wide; its cache head is the latent
            q_size = int(a["qk_nope_head_dim"]) + int(a["qk_rope_head_dim"]) if is_mla(a) else size
            if heads and kv_heads and size:
                kv_width, q_width = max(kv_width, int(kv_heads) * int(size)), max(q_width, int(heads) * int(q_size))
        elif a.get("role") == "lm_head" or u.op == "sampler":
            dims = [d.value_or_expr for t in u.inputs for d in t.dims if isinstance(d.value_or_expr, int)]
            vocab = max([vocab] + dims)
            if a.get("role") == "lm_head":
                hidden = min(d for d in dims) if dims else hidden
        else:
            calls += int(n)
    raw = getattr(cfg, "raw", None) or {}
    layers = int(raw.get("num_hidden_layers") or (att["full"] + att["sliding"]))
    n_att = att["full"] + att["sliding"]
    return {"layers": layers, "attention_full": att["full"], "attention_sliding": att["sliding"],
            "pieces": n_att + 1, "hidden": int(raw.get("hidden_size") or hidden),
            "vocab": int(raw.get("vocab_size") or vocab), "kv_width": kv_width, "q_width": q_width,
            "unit_calls": calls}


def structure_terms(s: dict) -> dict[str, float]:
    layers = float(s["attention_full"] + s["attention_sliding"]) or float(s["layers"])
    return {"one": 1.0, "layers": layers, "pieces": float(s["pieces"]),
            "kv_layers": layers * s["kv_width"] / 1e3, "q_layers": layers * s["q_width"] / 1e3,
            "vocab": s["vocab"] / 1e5}


def batch_terms(seqs, graph: str | None = None, units_ms: float = 0.0, gemm_ms: float = 0.0) -> dict[str, float]:
    """`graph`: how the engine ran the step's forward (dooly.fit.cudagraph): a FULL graph
    replay makes no per-layer Python calls. `units_ms`: the step's units, predicted."""
    dec = [int(c) for q, c in seqs if int(q) == 1]
    chunks = [(int(q), int(c)) for q, c in seqs if int(q) > 1]
    return {"one": 1.0, "eager": 0.0 if graph == FULL else 1.0, "seqs": float(len(seqs)),
            "prefills": float(len(chunks)), "decode_ctx": sum(dec) / 1e4,
            "chunk_qc": sum(q * (c + (q + 1) / 2) for q, c in chunks) / 1e6, "units": units_ms / 100.0,
            "prefill_gemm": gemm_ms / 100.0 * sum(q for q, _ in chunks) / max(sum(int(q) for q, _ in seqs), 1)}


def features(seqs, structure: dict, graph: str | None = None, units_ms: float = 0.0,
             gemm_ms: float = 0.0) -> np.ndarray:
    b, s = batch_terms(seqs, graph, units_ms, gemm_ms), structure_terms(structure)
    return np.array([b[bt] * s[st] for _, bt, st in FEATURES])


def engine_step_unit(structure: dict, config_hash: str) -> Unit:
    """The pseudo-unit a calibrated model's steps are stored under: its attributes are the
    model's structure; `model` (the config hash) is provenance, so a recalibration replaces
    that model's steps only, and it enters no feature."""
    attrs = {k: int(structure[k]) for k in STRUCTURE}
    attrs.update(driver="attention", model=config_hash)
    return Unit(op=STEP_OP, inputs=(), outputs=(), attrs=tuple(sorted(attrs.items())))


QUIET_SHARE = 0.8   # a step whose threads ran less of its time shared the host's cores


def quiet_steps(steps: list[dict], threads: int) -> list[dict]:
    """The steps that ran with their threads on a CPU (`cpu_ms` >= QUIET_SHARE x threads x
    wall): units are timed with no thread preempted (dooly.profile.timing), so the engine's
    own work must be fitted on steps that were not slowed by another process either (on a
    2-core host a preempted step's small kernels run 100x slower). Steps recorded without
    `cpu_ms` count as quiet."""
    return [s for s in steps if s.get("cpu_ms") is None
            or float(s["cpu_ms"]) >= QUIET_SHARE * max(threads, 1) * float(s["ms"])]


def record_steps(store, env: Environment, steps: list[dict], structure: dict, config_hash: str,
                 threads: int | None = None) -> int:
    """steps: {"batch": [[q, c], ...], "ms": the whole engine step, "cpu_ms" and "graph":
    optional}. With `threads`, only the quiet steps (`quiet_steps`) are kept, unless too
    few distinct batches would remain. They replace the model's earlier calibration in
    this environment; repeated batches keep their median."""
    unit = engine_step_unit(structure, config_hash)
    store.add_environment(env)
    store.add_unit(unit)
    quiet = quiet_steps(steps, threads) if threads else steps
    rows = _step_rows(unit.key, env.key, quiet)
    if len(rows) < MIN_ROWS:
        rows = _step_rows(unit.key, env.key, steps)
    # the model's earlier steps, under this structure's key or an older one
    old = [u.key for u in store.units() if u.op == STEP_OP and u.attr.get("model") == config_hash]
    for key in old:
        if key != unit.key:
            store.replace_measurements(key, env.key, [])
    store.replace_measurements(unit.key, env.key, rows)
    return len(rows)


def _step_rows(unit_key: str, env_key: str, steps: list[dict]) -> list[Measurement]:
    by_point: dict[str, tuple[dict, list[float]]] = {}
    for s in steps:
        batch = [[int(q), int(c)] for q, c in s["batch"]]
        if batch and float(s["ms"]) > 0:
            point = {"seqs": batch}
            if s.get("graph") and s["graph"] != "none":
                point["graph"] = str(s["graph"])
            by_point.setdefault(json.dumps(point, sort_keys=True), (point, []))[1].append(float(s["ms"]))
    return [Measurement(unit_key, env_key, point, float(np.median(ms)), min(ms), max(ms),
                        float(np.mean(ms)), float(np.std(ms)), len(ms))
            for point, ms in by_point.values()]


# the feature sets a pool of several models chooses from by leave-one-model-out error
# (`select_terms`): terms scaled by the model's structure extrapolate from a few models
# (two Qwens with 24 and 28 layers put SmolLM2's 30-layer decode steps 50% under), the
# structure-free ones only carry the engine's per-step, per-sequence and per-chunk work
# and a prefill's GEMMs slowed in the engine (a share of the model's own GEMM time)
# The units term (the kernels' speed inside the engine) is a candidate only beside the
# structure terms: with one or two models it stands in for per-layer overhead that grows
# with the model (a SmolLM2-only fit put Qwen2.5's decode steps 23% over).
TERM_SETS = {"all": tuple(f[0] for f in FEATURES if f[0] not in ("units", "prefill_gemm")),
             "all+units": tuple(f[0] for f in FEATURES if f[0] != "prefill_gemm"),
             "structure-free": ("step", "seq", "prefill", "prefill_gemm")}
STRUCTURE_MODELS = 3


class EngineStepModel:
    """residual = step - units, linear in FEATURES (scikit-learn contract). `terms`: the
    feature names it may use (default all)."""

    def __init__(self, terms: tuple[str, ...] | None = None):
        self.terms = terms

    def fit(self, rows: list[dict]) -> "EngineStepModel":
        """rows: {"seqs", "structure", "step_ms", "units_ms", "model" (weighting group),
        "graph" (optional)}. Each model's rows weigh the same in total."""
        if len(rows) < MIN_ROWS:
            raise ValueError(f"rows: need at least {MIN_ROWS} steps, got {len(rows)}")
        from sklearn.linear_model import HuberRegressor
        step = np.array([r["step_ms"] for r in rows], dtype=float)
        x = np.array([features(r["seqs"], r["structure"], r.get("graph"), r["units_ms"], r.get("gemm_ms", 0.0))
                      for r in rows]) / step[:, None]
        y = (step - np.array([r["units_ms"] for r in rows], dtype=float)) / step
        groups = [r.get("model", "") for r in rows]
        per = {g: groups.count(g) for g in set(groups)}
        w = np.array([1.0 / per[g] for g in groups])
        scale = np.abs(x).max(axis=0)
        if self.terms is not None:
            # a term outside the set must not crowd out one inside it (`_independent`)
            scale[[f[0] not in self.terms for f in FEATURES]] = 0.0
        keep = _independent(x, scale)
        reg = HuberRegressor(fit_intercept=False, alpha=1e-4, max_iter=5000)
        reg.fit(x[:, keep] / scale[keep], y, sample_weight=w * len(w) / w.sum())
        self.coef_ = np.zeros(len(FEATURES))
        self.coef_[keep] = reg.coef_ / scale[keep]
        self.models_ = sorted(per)
        self.n_rows_ = len(rows)
        self.in_sample_mape_pct_ = float(100 * np.mean(np.abs(x @ self.coef_ - y)))
        return self

    def predict_one(self, seqs, structure: dict, graph: str | None = None, units_ms: float = 0.0,
                    gemm_ms: float = 0.0) -> float:
        return float(features(seqs, structure, graph, units_ms, gemm_ms) @ self.coef_)

    def bind(self, structure: dict, graphs=None) -> "BoundStepModel":
        return BoundStepModel(self, structure, graphs)

    def to_json(self) -> dict:
        return {"kind": "engine_step", "features": [list(f) for f in FEATURES], "terms": self.terms,
                "coef": [float(c) for c in self.coef_], "models": list(self.models_),
                "n_rows": self.n_rows_, "in_sample_mape_pct": self.in_sample_mape_pct_}

    @classmethod
    def from_json(cls, obj: dict) -> "EngineStepModel":
        if obj.get("kind") != "engine_step" or [tuple(f) for f in obj.get("features", [])] != list(FEATURES):
            raise ValueError("features: a stored engine-step model with other features")
        m = cls(tuple(str(t) for t in obj["terms"]) if obj.get("terms") else None)
        m.coef_ = np.array([float(c) for c in obj["coef"]])
        m.models_, m.n_rows_ = list(obj["models"]), int(obj["n_rows"])
        m.in_sample_mape_pct_ = float(obj["in_sample_mape_pct"])
        return m


def _independent(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Columns kept in FEATURES order, each only if it is not (nearly) a combination of the
    kept ones: a term the calibration never varied apart from another (one model alone
    cannot tell per-step from per-layer) gets no weight rather than an arbitrary one."""
    keep = np.zeros(x.shape[1], dtype=bool)
    cols = []
    for j in range(x.shape[1]):
        if scale[j] <= 0:
            continue
        trial = np.column_stack(cols + [x[:, j] / scale[j]])
        sv = np.linalg.svd(trial, compute_uv=False)
        if sv[-1] > 1e-6 * sv[0]:
            cols.append(x[:, j] / scale[j])
            keep[j] = True
    return keep


class BoundStepModel:
    """A fitted model applied to one model's structure: the structure terms folded into
    per-batch-term weights, so a prediction is a few multiplications (the simulator calls
    it every step). `graphs` (a dooly.fit.cudagraph.GraphPolicy) marks FULL replays."""

    def __init__(self, model: EngineStepModel, structure: dict, graphs=None):
        self.model, self.structure, self.graphs = model, dict(structure), graphs
        s = structure_terms(structure)
        self.weights: dict[str, float] = {}
        for (_, bt, st), c in zip(FEATURES, model.coef_):
            self.weights[bt] = self.weights.get(bt, 0.0) + float(c) * s[st]

    def predict_one(self, seqs, units_ms: float = 0.0, gemm_ms: float = 0.0) -> float:
        graph = self.graphs.mode(seqs) if self.graphs is not None else None
        b = batch_terms(seqs, graph, units_ms, gemm_ms)
        return sum(w * b[k] for k, w in self.weights.items())


# -- the pool: every calibrated model's steps in one environment ---------------------------
def pool_rows(store, env_key: str, structure_of: Callable[[str], dict | None] | None = None) -> list[dict]:
    """Every stored engine step of `env_key`: {"model": config hash, "structure", "seqs",
    "step_ms", "graph"}. Steps stored before structure attributes existed get theirs from
    `structure_of(config_hash)` (None: left out)."""
    rows = []
    for u in store.units():
        if u.op != STEP_OP:
            continue
        a = u.attr
        structure = {k: int(a[k]) for k in STRUCTURE} if all(k in a for k in STRUCTURE) else None
        if structure is None and structure_of is not None:
            structure = structure_of(a.get("model", ""))
        if structure is None:
            continue
        for m in store.measurements(unit_key=u.key, env_key=env_key):
            rows.append({"model": a.get("model", u.key), "structure": structure,
                         "seqs": m.point["seqs"], "graph": m.point.get("graph"), "step_ms": m.median_ms})
    return rows


def load_step_model(store, env, cfg, structure: dict, units_ms_for: Callable[[str], Callable | None],
                    exclude: Iterable[str] = (), prefer: str = "pool", structure_of=None, graphs=None):
    """(BoundStepModel or None, source). `prefer`: "pool" (every calibrated model's steps
    but those in `exclude`, a list of config hashes), "model" (this model's own steps only,
    when it was calibrated; else the pool) or "none". `units_ms_for(config_hash)` gives a
    function seqs -> the units' ms of that model (or the pair: units' ms, their GEMMs' ms),
    or None when it cannot be predicted here. source: "pool(N models, NAME terms)" (NAME: the
    TERM_SETS entry it chose), "model" or "none"."""
    if prefer not in ("pool", "model", "none"):
        raise ValueError(f"prefer: expected pool, model or none, got {prefer!r}")
    if prefer == "none":
        return None, "none"
    excluded = set(exclude)
    rows = [r for r in pool_rows(store, env.key, structure_of) if r["model"] not in excluded]
    own_hash = getattr(cfg, "hash", None)
    if prefer == "model":
        own = [r for r in rows if r["model"] == own_hash]
        fitted = _fit_rows(own, units_ms_for)
        if fitted is not None:
            return fitted.bind(structure, graphs), "model"
    fitted = _fit_rows(rows, units_ms_for, structure)
    if fitted is None:
        return None, "none"
    return fitted.bind(structure, graphs), f"pool({len(fitted.models_)} models, {term_set_name(fitted.terms)} terms)"


def term_set_name(terms: tuple[str, ...] | None) -> str:
    """The TERM_SETS name of `terms` ("all" for None: every feature allowed)."""
    if terms is None:
        return "all"
    return next((name for name, ts in TERM_SETS.items() if tuple(terms) == ts), ",".join(terms))


def _fit_rows(rows: list[dict], units_ms_for, target: dict | None = None) -> EngineStepModel | None:
    """The model fitted on `rows`, each model's units predicted by `units_ms_for` (a model
    it cannot predict is left out), for a model of structure `target` (select_terms); None
    with too few usable steps."""
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    usable = []
    for h, rs in by_model.items():
        fn = units_ms_for(h)
        if fn is not None:
            for r in rs:
                units, gemm = _units_gemm(fn(r["seqs"]))
                usable.append(dict(r, units_ms=units, gemm_ms=gemm))
    if len(usable) < MIN_ROWS:
        return None
    return EngineStepModel(select_terms(usable, target)).fit(usable)


def _units_gemm(v) -> tuple[float, float]:
    """A units_ms_for answer: the units' ms, or (units' ms, their GEMMs' ms)."""
    return (float(v[0]), float(v[1])) if isinstance(v, tuple) else (float(v), 0.0)


def held_out_error(rows: list[dict], terms: tuple[str, ...] | None) -> float | None:
    """Mean over models of the MAPE of a model's whole steps predicted by a model fitted
    on the other models' steps only (None: fewer than two models)."""
    models = sorted({r["model"] for r in rows})
    errs = []
    for h in models:
        train = [r for r in rows if r["model"] != h]
        if len(train) < MIN_ROWS:
            continue
        m = EngineStepModel(terms).fit(train)
        errs.append(np.mean([abs(max(r["units_ms"] + m.predict_one(r["seqs"], r["structure"], r.get("graph"),
                                                                    r["units_ms"], r.get("gemm_ms", 0.0)),
                                     0.5 * r["units_ms"]) - r["step_ms"]) / r["step_ms"]
                             for r in rows if r["model"] == h]))
    return float(np.mean(errs)) if errs else None


def inside_pool(rows: list[dict], structure: dict | None) -> bool:
    """Whether every structure term of `structure` (layers, pieces, KV and query width per
    layer, vocabulary) lies within the range the pool's models span. A term fitted across a
    few models interpolates between them; beyond them it extrapolates a line through
    model-to-model differences it cannot tell apart (on 2026-12-03 a pool of three put
    SmolLM2's 30 layers past its 16-28 and took half its units off every step)."""
    if structure is None:
        return True
    pool = [structure_terms(st) for st in {r["model"]: r["structure"] for r in rows}.values()]
    target = structure_terms(structure)
    return all(min(p[k] for p in pool) <= v <= max(p[k] for p in pool) for k, v in target.items())


def select_terms(rows: list[dict], target: dict | None = None) -> tuple[str, ...] | None:
    """Structure-free terms for a pool of fewer than STRUCTURE_MODELS models (two models
    cannot say how a term grows with layers: each left-out check is then a one-model fit,
    which has no structure terms, so it cannot see the extrapolation either) or for a
    `target` structure outside the pool's (inside_pool); otherwise the TERM_SETS entry with
    the lowest leave-one-model-out error."""
    if len({r["model"] for r in rows}) < STRUCTURE_MODELS or not inside_pool(rows, target):
        return TERM_SETS["structure-free"]
    scored = [(held_out_error(rows, terms), name) for name, terms in TERM_SETS.items()]
    scored = [(e, name) for e, name in scored if e is not None]
    return TERM_SETS[min(scored)[1]] if scored else None
