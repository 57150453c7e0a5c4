"""Plan: the units of the given models minus what the DB already holds for the
environment, with the estimated cost of what is left. Planning against a DB also
records each model's units and inventory in it, so `predict` can find the model
before (or without) a sweep of it."""
from __future__ import annotations

from dooly.profile.cost import get_hardware, profiling_cost


def record_analysis(store, analysis) -> None:
    """Each model's units and inventory (unit -> count) into the DB, as `sweep` does."""
    for inv in analysis.inventories:
        for e in inv.entries.values():
            store.add_unit(e.unit)
        store.set_inventory(inv.config_hash, inv.engine, inv.model, inv.counts())


def plan_against_db(analysis, db_path: str, env_key: str | None, hardware: str) -> dict:
    """The plan for the environment `choose_environment` picks (none yet: every unit is
    missing). The DB must exist; a bad `--env` changes nothing in it."""
    from dooly.db import Store
    from dooly.db.envs import choose_environment
    hw = get_hardware(hardware)
    with Store.open(db_path, create=False) as store:
        env = None
        if env_key or store.find_environment(engine=analysis.engine):
            env = choose_environment(store, analysis.engine, env_key, db_path)
        record_analysis(store, analysis)
        measured = store.units_measured(env.key) if env else set()
    units = {k: e.unit for inv in analysis.inventories for k, e in inv.entries.items()}
    missing = sorted(k for k in units if k not in measured)
    return {"db": db_path, "env": env.key if env else None,
            "measured_units": sorted(k for k in units if k in measured),
            "missing_units": missing,
            "remaining_cost_s": round(sum(profiling_cost(units[k], hw)[1] for k in missing), 3)}
