"""Plan: the units of the given models minus what the DB already holds for the
environment, with the estimated cost of what is left."""
from __future__ import annotations

from dooly.profile.cost import get_hardware, profiling_cost
from dooly.errors import DoolyInputError


def plan_against_db(analysis, db_path: str, env_key: str | None, hardware: str) -> dict:
    from dooly.db import Store
    with Store.open(db_path, create=False) as store:
        envs = [e for e in store.environments() if e.engine == analysis.engine]
        if env_key:
            envs = [e for e in envs if e.key == env_key]
            if not envs:
                raise DoolyInputError(db_path, f"no environment {env_key} for engine "
                                      f"{analysis.engine}", "--env")
        measured = set()
        for env in envs[:1] if env_key else envs:
            measured |= store.units_measured(env.key)
    hw = get_hardware(hardware)
    units = {k: e.unit for inv in analysis.inventories for k, e in inv.entries.items()}
    missing = sorted(k for k in units if k not in measured)
    return {"db": db_path, "env": env_key or (envs[0].key if envs else None),
            "measured_units": sorted(k for k in units if k in measured),
            "missing_units": missing,
            "remaining_cost_s": round(sum(profiling_cost(units[k], hw)[1] for k in missing), 3)}
