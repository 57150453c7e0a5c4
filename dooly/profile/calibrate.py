"""`calibrate`: whole engine steps timed on the real engine, added to the environment's
engine-step pool (`dooly.fit.step_model`): calibrating a second or third model improves
every model's prediction, calibrated or not. The pooled model is fitted when a predictor
loads (its validity depends on every pooled model's unit fits), not stored."""
from __future__ import annotations

from dooly.errors import DoolyInputError

# passes per model of `dooly calibrate` (--passes): the models' passes interleave, so a
# model's passes are minutes apart when several models are calibrated together
PASSES = 3


def stored_structure(store, cfg, engine: str) -> dict:
    """The model's structure from the inventory the DB holds (`dooly sweep` and `dooly
    analyze --db` store it)."""
    from dooly.fit.step_features import model_structure
    counts = store.inventory(cfg.hash, engine)
    units = {k: store.get_unit(k) for k in counts}
    if not counts or any(u is None for u in units.values()):
        raise DoolyInputError(store.path, f"no inventory of {cfg.name} for engine {engine}: run "
                                          f"`dooly sweep {cfg.path} --db {store.path}` or "
                                          f"`dooly analyze {cfg.path} --db {store.path}` first")
    return model_structure(cfg, counts, units)


def calibrate(config: str, db_path: str, threads: int | None = None, budget: int = 8192,
              max_num_seqs: int = 128, items: list[dict] | None = None,
              earlier: list[dict] = ()) -> dict:
    """Time real engine steps of one model under these serving settings (the engine
    compiles its graph for them) and store them in the DB as that model's share of the
    pool, for the environment a default `dooly sweep` of this engine uses. `items`
    (dooly.engines.vllm_probe.item) replaces the default calibration workload. `earlier`:
    this model's steps from the earlier passes of one command (the "tagged_steps" of the
    last pass's result): the DB then holds each batch's median over the passes (`tag_pass`)."""
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.engines import environment
    from dooly.engines.vllm_probe import calibration_items, run_child
    from dooly.fit.step_pool import quiet_steps, record_steps
    cfg = load_config(config)
    env = environment("vllm", "cpu", threads=threads)
    with Store.open(db_path) as store:
        structure = stored_structure(store, cfg, env.engine)
    res = run_child({"mode": "steps", "config": str(config), "budget": budget,
                     "max_num_seqs": max_num_seqs, "items": items or calibration_items()})
    threads = max(res["threads"] or [env.threads])
    steps = tag_pass(earlier, res["steps"])
    from dooly.hostspeed import Reading, stored_change
    with Store.open(db_path) as store:
        change = stored_change(store, env.key, [Reading(*r) for r in res.get("host", [])])
        n = record_steps(store, env, steps, structure, cfg.hash, threads)
        for ts, gemm_ms, stream_ms in res.get("host", []):
            store.add_host_probe(env.key, ts, gemm_ms, stream_ms, "calibrate")
        pooled = calibrated_models(store, env.key)
    return {"env_key": env.key, "steps": len(res["steps"]), "tagged_steps": steps, "points": n,
            "quiet_steps": len(quiet_steps(res["steps"], threads)),
            "worker_threads": res["threads"], "worker": res.get("worker", {}),
            "pool_models": len(pooled), "host_change": change}


def tag_pass(earlier: list[dict], new: list[dict]) -> list[dict]:
    """`earlier` (steps tagged with their pass) and `new`, tagged as the next pass.

    One pass of a model lasts a minute or two, and a shared host's speed moves over
    minutes: on the AMD VM of 2026-12-06 every model's calibration of one run (`x16`) ran
    slow against its real runs (SmolLM2-135M's one-sequence decode 1.3x), and the model-out
    prediction carried that to the other models (SmolLM2's decode 60.9% over). Two more
    passes 80 minutes later and the median of the three took that run's worst per-batch
    decode to 22.7% and its serving TTFT / TPOT from 31.8 / 48.2% to 10.2 / 16.8%
    (`bench/results/2026-12-06f/README.md`)."""
    following = 1 + max((int(s.get("pass", 0)) for s in earlier), default=-1)
    return [*earlier, *(dict(s, **{"pass": following}) for s in new)]


def interleaved_passes(jobs: list[tuple[str, object]], passes: int, run):
    """(pass number, job, result) of `run(job, earlier)` for every (key, job) of `jobs`,
    `passes` times, the jobs interleaved: every model's first pass, then every model's
    second, so one model's passes lie minutes apart (a shared host's speed moves over
    minutes) and an interrupted run has stored every model's first pass before any model's
    second. `earlier`: the "tagged_steps" of that key's previous pass (`tag_pass`)."""
    earlier: dict[str, list[dict]] = {}
    for n in range(1, passes + 1):
        for key, job in jobs:
            r = run(job, earlier.get(key, []))
            earlier[key] = r["tagged_steps"]
            yield n, job, r


def calibrated_models(store, env_key: str) -> set[str]:
    """Config hashes of the models whose engine steps the DB holds in this environment."""
    from dooly.fit.step_features import STEP_OP
    return {u.attr.get("model", u.key) for u in store.units()
            if u.op == STEP_OP and store.measurements(unit_key=u.key, env_key=env_key)}
