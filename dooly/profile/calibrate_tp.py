"""`calibrate --tp N`: whole engine steps of the real engine at tensor-parallel size N
(dooly.engines.vllm_tp_probe: one process per rank, each bound to its share of the cores),
stored in the ranks' environment under the model's TP inventory key. The engine-step pool
(dooly.fit.step_model) then fits step - (shard units + collectives) for TP models, which
covers what a TP step adds beyond its units: the engine handing each step to N workers
and waiting for all of them."""
from __future__ import annotations

from dooly.errors import DoolyInputError


def calibrate_tp(config: str, db_path: str, tp: int, budget: int = 8192, max_num_seqs: int = 128,
                 items: list[dict] | None = None, kv_gib: float = 1.0, earlier: list[dict] = ()) -> dict:
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.engines import default_threads, environment
    from dooly.engines.vllm_probe import calibration_items
    from dooly.engines.vllm_tp_probe import run_child
    from dooly.fit.step_features import model_structure
    from dooly.fit.step_pool import record_steps
    from dooly.graph.units import inventory_key
    from dooly.parallel import rank_threads
    from dooly.profile.calibrate import calibrated_models, tag_pass
    cfg = load_config(config)
    key = inventory_key(cfg.hash, tp)
    # the environment `dooly sweep --tp N` measured the shards in
    env = environment("vllm", "cpu", threads=rank_threads(default_threads("vllm", "cpu"), tp))
    with Store.open(db_path) as store:
        counts = store.inventory(key, "vllm")
        units = {k: store.get_unit(k) for k in counts}
        if not counts or any(u is None for u in units.values()):
            raise DoolyInputError(store.path, f"no TP={tp} inventory of {cfg.name}: run `dooly sweep "
                                              f"{cfg.path} --tp {tp} --db {store.path}` first")
        structure = model_structure(cfg, counts, units)
    res = run_child({"mode": "steps", "tp": tp, "config": str(config), "budget": budget,
                     "max_num_seqs": max_num_seqs, "items": items or calibration_items(),
                     "kv_gib": kv_gib})
    with Store.open(db_path) as store:
        # no per-step CPU time here (the ranks are other processes): every step counts
        steps = tag_pass(earlier, res["steps"])
        n = record_steps(store, env, steps, structure, key)
        pooled = calibrated_models(store, env.key)
    return {"env_key": env.key, "steps": len(res["steps"]), "tagged_steps": steps, "points": n,
            "pool_models": len(pooled),
            "bind": res.get("bind"), "settings": res.get("settings", {})}
