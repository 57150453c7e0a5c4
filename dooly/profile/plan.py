"""Plan: the units of the given models minus what the DB already holds for the
environment, with the estimated cost of what is left. Planning against a DB also
records each model's units and inventory in it, so `predict` can find the model
before (or without) a sweep of it.

With unit families (`dooly sweep --families`) each unit is one of: measured (swept),
family-served (its check points agree with its family; the check error is shown),
check (a family covers it: only its check points are left to measure) or sweep (its
grid is left). `family_plan` is the order such a sweep follows, and what the reuse
accounting (bench/reuse_bench.py) counts: the first unit of a family that nothing
covers yet is swept in full, every later one costs its check points."""
from __future__ import annotations

from dooly.graph.family import family_key
from dooly.profile.checkpoints import check_points, one_axis
from dooly.profile.cost import Hardware, get_hardware, points_cost, profiling_cost
from dooly.profile.grid import GridLimits, points_for

MODES = ("full", "check")


def family_plan(units: list, covered=frozenset()) -> dict[str, str]:
    """unit key -> "full" or "check", in the order given: a unit whose family is in
    `covered` (a model exists) or has an earlier unit here (swept in full first) is
    checked; otherwise it is swept in full."""
    seen, out = set(covered), {}
    for u in units:
        fkey = family_key(u)
        out[u.key] = "check" if fkey in seen else "full"
        seen.add(fkey)
    return out


def unit_cost(unit, mode: str, hw: Hardware, lim: GridLimits = GridLimits(),
              done=frozenset()) -> tuple[int, float]:
    """(points, seconds) of sweeping the unit in full or measuring its check points on
    `hw`, leaving out the points in `done` (point JSON texts already measured)."""
    from dooly.db import point_json
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    grid = points_for(unit.driver, lim, unit.request_symbols())
    pts = [p for p in (check_points(unit, grid) if mode == "check" else grid) if point_json(p) not in done]
    return len(pts), points_cost(unit, pts, hw)


def record_analysis(store, analysis) -> None:
    """Each model's units and inventory (unit -> count) into the DB, as `sweep` does, and
    the DB's copy of the capture (`dooly.cache`): another host analyses from it."""
    from dooly import cache
    for inv in analysis.inventories:
        for e in inv.entries.values():
            store.add_unit(e.unit)
        store.set_inventory(inv.key, inv.engine, inv.model, inv.counts())
        key = cache.capture_key(inv.config_hash, inv.engine, inv.tp, analysis.fields)
        if store.capture(key) is None:
            cache.save_db(store, key, inv)


def plan_against_db(analysis, db_path: str, env_key: str | None, hardware: str) -> dict:
    """The plan for the environment `choose_environment` picks (none yet: every unit is
    missing). The DB must exist; a bad `--env` changes nothing in it."""
    from dooly.db import Store
    from dooly.db.envs import choose_environment
    hw = get_hardware(hardware)
    with Store.open(db_path, create=False) as store:
        env = None
        units = {k: e.unit for inv in analysis.inventories for k, e in inv.entries.items()}
        if env_key or store.find_environment(engine=analysis.engine):
            env = choose_environment(store, analysis.engine, env_key, db_path, needs=units)
        measured = store.units_measured(env.key) if env else set()
        status = unit_status(store, env.key if env else None, units, hw)
        record_analysis(store, analysis)   # last: a row the reads above refuse changes nothing
    unsweepable = {k: why for k, why in analysis.unsweepable().items() if k not in measured}
    for k, why in unsweepable.items():   # a sweep would store every point as failed
        status[k] = {"status": "unsweepable", "points": 0, "cost_s": 0.0, "check_error_pct": None,
                     "check_step_error_pct": None, "reason": why}
    unsupported = {k: v["reason"] for k, v in status.items() if v["status"] == "unsupported"}
    missing = sorted(k for k in units
                     if k not in measured and k not in unsupported and k not in unsweepable)
    return {"db": db_path, "env": env.key if env else None,
            "measured_units": sorted(k for k in units if k in measured),
            "missing_units": missing, "unsupported_units": unsupported,
            "unsweepable_units": unsweepable,
            "remaining_cost_s": round(sum(profiling_cost(units[k], hw)[1] for k in missing), 3),
            "units": status,
            "check_points": sum(v["points"] for v in status.values() if v["status"] == "check"),
            "remaining_cost_families_s": round(sum(v["cost_s"] for v in status.values()), 3)}


def unit_status(store, env_key: str | None, units: dict, hw: Hardware,
                lim: GridLimits = GridLimits()) -> dict[str, dict]:
    """Per unit, in order: {"status": measured | family-served | check | sweep, "points"
    and "cost_s" left to measure, "check_error_pct" once judged, "check_step_error_pct" where
    the check was weighed by the unit's share of its model} (see the module doc)."""
    from dooly.db import point_json
    from dooly.fit.family_store import check_only, load_families, stored_verdicts, verdicts
    rows: dict[str, list] = {}
    for m in store.measurements(env_key=env_key, status=None) if env_key else []:
        rows.setdefault(m.unit_key, []).append(m)
    stored = stored_verdicts(store, env_key) if env_key else {}
    models = {}
    if rows:
        models, _ = load_families(store, env_key, wanted={family_key(u) for u in units.values()})
    found = verdicts(units, rows, models, stored)
    checked = check_only(stored, rows)
    swept = {k for k in units if k not in checked and any(m.status == "ok" for m in rows.get(k, []))}
    plan = family_plan([u for k, u in units.items() if k not in swept and k not in found], set(models))
    out = {}
    for key, unit in units.items():
        v = found.get(key)
        status = ("measured" if key in swept else "family-served" if v is not None and v.served
                  else "sweep" if v is not None or plan[key] == "full" else "check")
        reason = unsupported_reason(rows.get(key, []))
        if status != "measured" and reason:
            status = "unsupported"   # every point failed here: the device cannot run it
        n, cost = (0, 0.0) if status in ("measured", "family-served", "unsupported") else \
            unit_cost(unit, "full" if status == "sweep" else "check", hw, lim,
                      {point_json(m.point) for m in rows.get(key, [])})
        out[key] = {"status": status, "points": n, "cost_s": round(cost, 4),
                    "check_error_pct": None if v is None else round(v.error_pct, 3),
                    "check_step_error_pct": None if v is None or v.step_error_pct is None
                    else round(v.step_error_pct, 3)}
        if status == "unsupported":
            out[key]["reason"] = reason
    return out


def unsupported_reason(rows: list) -> str | None:
    """Why a unit cannot be measured in an environment: the reason its points failed
    when none succeeded (None when any did, or nothing was tried)."""
    if not rows or any(m.status == "ok" for m in rows):
        return None
    from collections import Counter
    reasons = Counter(m.reason for m in rows if m.reason)
    return reasons.most_common(1)[0][0] if reasons else "every point failed"


def reuse_with_families(inventories, hw: Hardware, lim: GridLimits = GridLimits(),
                        target_pct: float = 75.0, adaptive_keep: float = 1.0) -> dict:
    """Profiling cost of the inventories' models on `hw`, every point counted: each model
    alone (`independent`), each distinct unit once (`dedup`, exact keys), and each unit
    family swept once with its other members checked (`families`: `family_plan` over the
    distinct units in order, as `dooly sweep --families` goes; a check that fails costs
    the unit's whole grid, its check points included). `families_*` assume every check
    passes; `break_even_pass_pct` is the share of checks that must pass for the
    families' reduction to reach `target_pct`; `check_savings_by_op` splits what passing
    checks save by the units' op, so a pass rate measured per kind can be applied.
    `adaptive_keep` (0-1]: the share of a one-axis unit's full grid an adaptive sweep
    measures (bench/adaptive_grid.py measures it); below 1 the `dedup_adaptive_*` figures
    and every full sweep of `families_*` count it (attention batches are swept whole), and
    a failed check's points count toward its adaptive grid; the point counts stay the
    fixed grid's."""
    if not 0 < adaptive_keep <= 1:
        raise ValueError(f"adaptive_keep: expected a share in (0, 1], got {adaptive_keep!r}")
    full: dict[str, tuple[int, float]] = {}
    kept: dict[str, float] = {}       # unit key -> seconds of its full sweep, adaptive where it can be
    units, independent, total = [], 0.0, 0
    for inv in inventories:
        for key, e in inv.entries.items():
            if key not in full:
                full[key] = unit_cost(e.unit, "full", hw, lim)
                axis = one_axis(points_for(e.unit.driver, lim, e.unit.request_symbols()))
                kept[key] = full[key][1] * (adaptive_keep if axis else 1.0)
                units.append(e.unit)
            independent += full[key][1]
            total += 1
    plan = family_plan(units)
    check = {u.key: unit_cost(u, "check", hw, lim) for u in units if plan[u.key] == "check"}
    dedup = sum(c for _, c in full.values())
    fam = sum(kept[k] for k, m in plan.items() if m == "full") + sum(c for _, c in check.values())
    saves = {k: max(kept[k] - check[k][1], 0.0) for k in check}   # what a check saves when it passes
    gain = sum(saves.values())
    by_op: dict[str, float] = {}
    for u in units:
        if u.key in saves:
            by_op[u.op] = by_op.get(u.op, 0.0) + saves[u.key]
    need = fam + gain - (1 - target_pct / 100) * independent   # savings the target asks of checks
    pct = lambda x: round(100.0 * (1 - x / independent), 2) if independent else 0.0  # noqa: E731
    return {"hardware": hw.name, "cost_model": hw.source, "total_units": total,
            "unique_units": len(full), "families": len({family_key(u) for u in units}),
            "checked_units": len(check), "independent_cost_s": round(independent, 3),
            "dedup_cost_s": round(dedup, 3), "dedup_reduction_pct": pct(dedup),
            "adaptive_keep": adaptive_keep,
            "dedup_adaptive_reduction_pct": pct(sum(kept.values())),
            "families_cost_s": round(fam, 3), "families_reduction_pct": pct(fam),
            "dedup_points": sum(n for n, _ in full.values()),
            "families_points": sum(full[k][0] for k, m in plan.items() if m == "full")
            + sum(n for n, _ in check.values()),
            "check_points": sum(n for n, _ in check.values()),
            "check_savings_s": round(gain, 3),
            "check_savings_by_op": {op: round(v, 3) for op, v in sorted(by_op.items())},
            "break_even_pass_pct": (round(100.0 * max(need, 0.0) / gain, 1) if gain > 0 else None)}
