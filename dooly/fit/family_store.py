"""Family models and check verdicts in the DB's fits table, as data.

Rows: "family:<family_key>" holds a FittedFamily (dooly.fit.families) with the
fingerprint of its members' measurements; "check:<unit_key>" holds a CheckVerdict
(dooly.fit.checks). The verdict row is also what marks a unit as measured at its check
points only (`check_only`): such a unit is judged against its family, never trained
into it; once it is swept in full (its check failed) it has points beyond its checks
and becomes a member. `dooly fit` stores both (`fit_env_families`); the sweep and the
predictor read them back (`load_families`, `served_models`) and fit anew only what is
stale; a verdict is judged again on the current family and check points whenever it is
used. `store` is a dooly.db Store (duck-typed: this room does not import dooly.db)."""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from dooly.env import Measurement
from dooly.fit.checks import CHECK_PREFIX, DEFAULT_TOLERANCE_PCT, CheckVerdict, ServedModel, judge
from dooly.fit.families import FAMILY_PREFIX, FittedFamily, family_data, select_family
from dooly.graph.family import family_key
from dooly.unit import Unit


def _key(point: dict) -> str:
    return json.dumps(point, sort_keys=True, separators=(",", ":"))


def _by_unit(measurements: Iterable[Measurement]) -> dict[str, list]:
    out: dict[str, list] = {}
    for m in measurements:
        out.setdefault(m.unit_key, []).append(m)
    return out


def stored_verdicts(store, env_key: str) -> dict[str, CheckVerdict]:
    out = {}
    for key, row in store.fits(env_key).items():
        if key.startswith(CHECK_PREFIX):
            try:
                out[key[len(CHECK_PREFIX):]] = CheckVerdict.from_json(row["model"])
            except (KeyError, TypeError, ValueError):
                continue
    return out


def check_only(stored: Mapping[str, CheckVerdict], by_unit: Mapping[str, list]) -> set[str]:
    """The units whose ok points are all check points of their stored verdict."""
    out = set()
    for key, v in stored.items():
        ok = {_key(m.point) for m in by_unit.get(key, []) if m.status == "ok"}
        if ok and ok <= {_key(p) for p in v.points}:
            out.add(key)
    return out


def _stored_families(store, env_key: str) -> dict[str, FittedFamily]:
    out = {}
    for key, row in store.fits(env_key).items():
        if key.startswith(FAMILY_PREFIX):
            try:
                fam = FittedFamily.from_json(row["model"])
            except (KeyError, TypeError, ValueError):
                continue  # another version's model: fitted anew
            if fam.fingerprint == row["fingerprint"]:
                out[fam.family_key] = fam
    return out


def load_families(store, env_key: str, units: Mapping[str, Unit] | None = None,
                  measurements: Iterable[Measurement] | None = None,
                  wanted: Iterable[str] | None = None, exclude: Iterable[str] = ()
                  ) -> tuple[dict[str, FittedFamily], list[str]]:
    """({family_key: model}, family keys fitted anew): every family of `env_key` with a
    swept member (only the `wanted` family keys when given; never trained on the units
    in `exclude`), stored where still fresh."""
    units = dict(units) if units is not None else {u.key: u for u in store.units()}
    meas = [m for m in (measurements if measurements is not None
                        else store.measurements(env_key=env_key)) if m.env_key == env_key]
    if wanted is not None:
        keep = set(wanted)
        units = {k: u for k, u in units.items() if family_key(u) in keep}
    exclude = check_only(stored_verdicts(store, env_key), _by_unit(meas)) | set(exclude)
    stored = _stored_families(store, env_key)
    out, fitted = {}, []
    for (fkey, _), data in family_data(units, meas, exclude).items():
        old = stored.get(fkey)
        if old is not None and old.fingerprint == data.fingerprint:
            out[fkey] = old
        else:
            out[fkey] = select_family(data)
            fitted.append(fkey)
    return out, sorted(fitted)


def family_record(fam: FittedFamily) -> dict:
    return {"unit_key": FAMILY_PREFIX + fam.family_key, "env_key": fam.env_key,
            "fingerprint": fam.fingerprint, "model": fam.to_json()}


def verdict_record(v: CheckVerdict) -> dict:
    return {"unit_key": CHECK_PREFIX + v.unit_key, "env_key": v.env_key,
            "fingerprint": v.fingerprint(), "model": v.to_json()}


def _judged_family(v: CheckVerdict, families: Mapping[str, FittedFamily]):
    try:
        return v.family() or families.get(v.family_key)
    except (KeyError, TypeError, ValueError):  # another version's model: today's family judges
        return families.get(v.family_key)


def verdicts(units: Mapping[str, Unit], by_unit: Mapping[str, list],
             families: Mapping[str, FittedFamily], stored: Mapping[str, CheckVerdict]
             ) -> dict[str, CheckVerdict]:
    """Every check-only unit of `units` judged again on its ok check points as they are
    now, by the family model its verdict was judged on (today's family, `families`, for
    a verdict that kept none), at the tolerances and shares it was checked at."""
    out = {}
    for key in check_only(stored, by_unit) & set(units):
        fam = _judged_family(stored[key], families)
        if fam is None or key in fam.members:
            continue
        rows = [m for m in by_unit[key] if m.status == "ok"]
        old = stored[key]
        shares = dict(zip(map(_key, old.points), old.shares)) if old.shares else None
        out[key] = judge(units[key], fam, rows, old.tolerance_pct, shares, old.step_tolerance_pct)
    return out


def served_models(store, env_key: str, units: Mapping[str, Unit],
                  measurements: Iterable[Measurement]) -> tuple[dict[str, ServedModel], list[str]]:
    """({unit_key: ServedModel} of the units of `units` their family serves in `env_key`,
    judged now; family keys fitted anew). Every swept member of a family in the DB trains
    it, not only `units`'."""
    by_unit = _by_unit(m for m in measurements if m.env_key == env_key)
    stored = stored_verdicts(store, env_key)
    checked = check_only(stored, by_unit) & set(units)
    families, fitted = {}, []
    if any(not stored[k].family_json for k in checked):  # verdicts that kept no model
        families, fitted = load_families(store, env_key, wanted={family_key(units[k]) for k in checked})
    found = verdicts({k: units[k] for k in checked}, by_unit, families, stored)
    return {k: ServedModel(units[k], _judged_family(v, families), v)
            for k, v in found.items() if v.served}, fitted


def fit_env_families(store, env_key: str, units: Mapping[str, Unit] | None = None,
                     measurements: Iterable[Measurement] | None = None):
    """What `dooly fit` runs: every family of `env_key` fitted (stored ones kept while
    fresh) and every check verdict judged again; stores what changed. Returns
    (families, verdicts, family keys fitted now)."""
    units = dict(units) if units is not None else {u.key: u for u in store.units()}
    meas = list(measurements) if measurements is not None else store.measurements(env_key=env_key)
    families, fitted = load_families(store, env_key, units, meas)
    old = stored_verdicts(store, env_key)
    found = verdicts(units, _by_unit(m for m in meas if m.env_key == env_key), families, old)
    records = [family_record(families[k]) for k in fitted]
    records += [verdict_record(v) for k, v in found.items() if old[k].fingerprint() != v.fingerprint()]
    if records:
        store.put_fits(records)
    return families, found, fitted


__all__ = ["DEFAULT_TOLERANCE_PCT", "check_only", "family_record", "fit_env_families",
           "load_families", "served_models", "stored_verdicts", "verdict_record", "verdicts"]
