"""`calibrate`: whole engine steps timed on the real engine, stored as data for the
engine-step model (`dooly.fit.step_model`)."""
from __future__ import annotations


def calibrate(config: str, db_path: str, threads: int | None = None, budget: int = 8192,
              max_num_seqs: int = 128) -> dict:
    """Time whole real engine steps under these serving settings and store them in the
    DB (`engine.step`) for the environment a default `dooly sweep` of this engine uses."""
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.fit.step_model import record_steps
    from dooly.engines import environment
    from dooly.engines.vllm_probe import run_child
    res = run_child(["calibrate", str(config), str(budget), str(max_num_seqs)])
    env = environment("vllm", "cpu", threads=threads)
    with Store.open(db_path) as store:
        n = record_steps(store, env, res["steps"], load_config(config).hash)
    return {"env_key": env.key, "steps": len(res["steps"]), "points": n,
            "worker_threads": res["threads"]}
