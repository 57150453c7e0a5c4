"""The engine-step pool of one environment: every calibrated model's real steps (stored by
`record_steps` as measurements of the `engine.step` pseudo-unit), and the engine-step model
fitted on them for a target model (`load_step_model`): the pool's models but the excluded
ones, the term set chosen by leave-one-model-out error (`select_terms`), each model's units
predicted from the unit fits at load time."""
from __future__ import annotations

import json
from typing import Callable, Iterable

import numpy as np

from dooly.env import Environment, Measurement
from dooly.fit.step_features import FEATURES, MIN_ROWS, STEP_OP, STRUCTURE, engine_step_unit, structure_terms
from dooly.fit.step_model import EngineStepModel

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
    """steps: {"batch": [[q, c], ...], "ms": the whole engine step, "cpu_ms", "graph" and
    "pass": optional}. With `threads`, only the quiet steps (`quiet_steps`) are kept, unless
    too few distinct batches would remain. They replace the model's earlier calibration in
    this environment; a batch keeps the median over passes of each pass's median (`_step_rows`)."""
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
    """One measurement per batch: the median over passes of each pass's median, so that a
    pass taken while the host ran slow (a shared VM's state moves over minutes, and one pass
    of a model lasts about one) is outvoted by the others, whatever its step count."""
    by_point: dict[str, tuple[dict, dict[int, list[float]]]] = {}
    for s in steps:
        batch = [[int(q), int(c)] for q, c in s["batch"]]
        if batch and float(s["ms"]) > 0:
            point = {"seqs": batch}
            if s.get("graph") and s["graph"] != "none":
                point["graph"] = str(s["graph"])
            passes = by_point.setdefault(json.dumps(point, sort_keys=True), (point, {}))[1]
            passes.setdefault(int(s.get("pass", 0)), []).append(float(s["ms"]))
    rows = []
    for point, passes in by_point.values():
        ms = [v for vs in passes.values() for v in vs]
        mid = float(np.median([np.median(vs) for vs in passes.values()]))
        rows.append(Measurement(unit_key, env_key, point, mid, min(ms), max(ms), float(np.mean(ms)),
                                float(np.std(ms)), len(ms)))
    return rows


# the feature sets a pool of several models chooses from by leave-one-model-out error
# (`select_terms`): terms scaled by the model's structure extrapolate from a few models
# (two Qwens with 24 and 28 layers put SmolLM2's 30-layer decode steps 50% under), the
# structure-free ones only carry the engine's per-step, per-sequence and per-chunk work
# and a prefill's GEMMs slowed in the engine (a share of the model's own GEMM time)
# The units term (the kernels' speed inside the engine) is a candidate only beside the
# structure terms: with one or two models it stands in for per-layer overhead that grows
# with the model (a SmolLM2-only fit put Qwen2.5's decode steps 23% over).
# A model smaller than every pooled one (its units faster at the pool's own batches) gets
# the proportional terms when the structure terms cannot place it: the units term without
# a per-step or per-sequence constant. A constant carried over is off by the same
# milliseconds whatever the model, which is a larger share of a smaller model's step: the
# excess a pool of three larger models put on SmolLM2-135M's decode steps was 3.3-12.1 ms
# where its real steps exceed their units by -0.9 to 3.7 ms (bench/results/2026-12-07c),
# while the excess as a share of the units is alike across the four models (0.1-0.3). A
# share carried over errs by the same share at any size, so for a model within or above the
# pool the constants stay (there the proportional terms did worse: 2026-12-07d). With a
# constant beside the share, the fit extrapolates a line to a small model's units and can go
# below zero (the step+units set: 38% under on one run).
TERM_SETS = {"all": tuple(f[0] for f in FEATURES if f[0] not in ("units", "prefill_gemm")),
             "all+units": tuple(f[0] for f in FEATURES if f[0] != "prefill_gemm"),
             "structure-free": ("step", "seq", "prefill", "prefill_gemm"),
             "proportional": ("units", "prefill", "prefill_gemm")}
STRUCTURE_MODELS = 3


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
    fitted = _fit_rows(rows, units_ms_for, structure, units_ms_for(own_hash) if own_hash else None)
    if fitted is None:
        return None, "none"
    beyond = beyond_pool([r for r in rows if r["model"] in fitted.models_], structure)
    return fitted.bind(structure, graphs), (f"pool({len(fitted.models_)} models, {term_set_name(fitted.terms)} terms"
                                            + (f"; beyond its models in {', '.join(beyond)}" if beyond else "") + ")")


def term_set_name(terms: tuple[str, ...] | None) -> str:
    """The TERM_SETS name of `terms` ("all" for None: every feature allowed)."""
    if terms is None:
        return "all"
    return next((name for name, ts in TERM_SETS.items() if tuple(terms) == ts), ",".join(terms))


def _fit_rows(rows: list[dict], units_ms_for, target: dict | None = None,
              target_units: Callable | None = None) -> EngineStepModel | None:
    """The model fitted on `rows`, each model's units predicted by `units_ms_for` (a model
    it cannot predict is left out), for a model of structure `target` whose units
    `target_units` predicts (select_terms); None with too few usable steps."""
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
    return EngineStepModel(select_terms(usable, target, target_units)).fit(usable)


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
    return not beyond_pool(rows, structure)


# how a structure term reads to a user: its name and the scale structure_terms divides by
_TERM_NAMES = {"layers": ("attention layers", 1), "pieces": ("graph pieces", 1),
               "kv_layers": ("KV width x layers", 1e3), "q_layers": ("query width x layers", 1e3),
               "vocab": ("vocabulary", 1e5)}


def beyond_pool(rows: list[dict], structure: dict | None) -> list[str]:
    """The structure terms of `structure` outside the range the pool's models span, each as
    "name value (pool lo-hi)". The structure-free terms a target beyond the pool gets carry the
    pool's per-step and per-sequence work as it is: a model much smaller or faster than every
    pooled one gets their excess in milliseconds (SmolLM2-135M's one-sequence decode 60% over,
    predicted from three larger models, on 2026-12-06), so the predictor names them."""
    if structure is None or not rows:
        return []
    pool = [structure_terms(st) for st in {r["model"]: r["structure"] for r in rows}.values()]
    out = []
    for k, v in structure_terms(structure).items():
        lo, hi = min(p[k] for p in pool), max(p[k] for p in pool)
        if k in _TERM_NAMES and not lo <= v <= hi:
            name, scale = _TERM_NAMES[k]
            out.append(f"{name} {v * scale:.0f} (pool {lo * scale:.0f}-{hi * scale:.0f})")
    return out


def smaller_than_pool(rows: list[dict], target_units: Callable | None) -> bool:
    """Whether the target's units (`target_units(seqs)` ms) are faster than every pooled
    model's own at that model's calibrated batches (the median ratio below 1 for each)."""
    if target_units is None or not rows:
        return False
    by_model: dict[str, list[float]] = {}
    for r in rows:
        if r["units_ms"] > 0:
            by_model.setdefault(r["model"], []).append(_units_gemm(target_units(r["seqs"]))[0] / r["units_ms"])
    return bool(by_model) and all(float(np.median(v)) < 1.0 for v in by_model.values())


def select_terms(rows: list[dict], target: dict | None = None,
                 target_units: Callable | None = None) -> tuple[str, ...] | None:
    """For a pool of fewer than STRUCTURE_MODELS models (two models cannot say how a term
    grows with layers: each left-out check is then a one-model fit, which has no structure
    terms, so it cannot see the extrapolation either) or a `target` structure outside the
    pool's (inside_pool): the proportional terms for a target smaller than every pooled
    model (`smaller_than_pool`, by `target_units`: seqs -> the target's units' ms; see
    TERM_SETS), else the structure-free ones. Otherwise the TERM_SETS entry with the lowest
    leave-one-model-out error (the proportional set is not a candidate: inside the pool
    the structure terms place a model)."""
    if len({r["model"] for r in rows}) < STRUCTURE_MODELS or not inside_pool(rows, target):
        return TERM_SETS["proportional" if smaller_than_pool(rows, target_units) else "structure-free"]
    scored = [(held_out_error(rows, terms), name) for name, terms in TERM_SETS.items() if name != "proportional"]
    scored = [(e, name) for e, name in scored if e is not None]
    return TERM_SETS[min(scored)[1]] if scored else None
