"""Fits stored as data in the DB's `fits` table, each valid while the fingerprint of the
measurements it was fitted on still matches.

`fit_environment` (what `dooly fit` runs) fits every unit measured in an environment and
the GEMM family, and writes only what changed. `unit_models` and `load_family` (what the
predictor runs) read them back and fit anew only what is stale or missing, listing it,
so a prediction after `dooly fit` does no model selection. `store` is a dooly.db Store
(duck-typed: this room does not import dooly.db)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dooly.env import Measurement
from dooly.fit.gemm_family import GemmFamily, rows_fingerprint, shape_holdout_error
from dooly.fit.gemm_rows import GemmRow, rows_from_units
from dooly.fit.select import FittedUnitModel, fit_units
from dooly.unit import Unit

FAMILY_KEY = "family:gemm"   # the fits-table key of an environment's GEMM family
# the roofline alone: fits in milliseconds, is stored by its coefficients, and
# extrapolates sanely to shapes it never saw
FAMILY_MODEL = "roofline"
MIN_FAMILY_ROWS = 8
# whole engine steps (dooly calibrate) are fitted against the units' predictions by
# dooly.fit.step_model, not as a unit of their own
STEP_OP = "engine.step"


@dataclass
class StoredFamily:
    """An environment's GEMM family with its held-out-shape MAPE (None: one shape)."""
    family: GemmFamily
    error_pct: float | None
    fingerprint: str
    refitted: bool = False

    def record(self, env_key: str) -> dict:
        return {"unit_key": FAMILY_KEY, "env_key": env_key, "fingerprint": self.fingerprint,
                "model": {"family": self.family.to_json(), "holdout_mape_pct": self.error_pct,
                          "fingerprint": self.fingerprint}}


@dataclass
class EnvFits:
    """The unit models of one environment; `refitted`: the unit keys fitted anew
    because no stored fit matched their measurements."""
    env_key: str
    models: dict[str, FittedUnitModel] = field(default_factory=dict)
    refitted: list[str] = field(default_factory=list)
    family: StoredFamily | None = None


def _stored_models(store, env_key: str, unit_keys: Iterable[str]) -> dict[tuple[str, str], FittedUnitModel]:
    out = {}
    for key, row in store.fits(env_key, list(unit_keys)).items():
        try:
            model = FittedUnitModel.from_json(row["model"])
        except (KeyError, TypeError, ValueError):
            continue  # unreadable (another dooly version's estimator, say): fitted anew
        if model.fingerprint == row["fingerprint"]:
            out[(key, env_key)] = model
    return out


def unit_models(store, env_key: str, units: Mapping[str, Unit],
                measurements: Iterable[Measurement]) -> EnvFits:
    """A model for every unit of `units` with ok `measurements` in `env_key`: the stored
    fit where its fingerprint matches them, else one selected anew (listed in
    `refitted`). Stored tree models are refitted from the rows, not selected again."""
    previous = _stored_models(store, env_key, units)
    fitted = fit_units(units, [m for m in measurements if m.env_key == env_key], previous)
    models = {ukey: m for (ukey, _), m in fitted.items()}
    refitted = sorted(k for k, m in models.items() if previous.get((k, env_key)) is not m)
    return EnvFits(env_key, models, refitted)


def fit_family(rows: list[GemmRow]) -> StoredFamily | None:
    if len(rows) < MIN_FAMILY_ROWS:
        return None
    fam = GemmFamily(model=FAMILY_MODEL).fit(rows)
    return StoredFamily(fam, shape_holdout_error(rows, **fam.params),
                        rows_fingerprint(rows, fam.params), refitted=True)


def load_family(store, env_key: str, rows: list[GemmRow]) -> StoredFamily | None:
    """The stored GEMM family of `env_key` when fitted on exactly `rows`, else one
    fitted anew (`refitted`); None with too few GEMM rows to fit one."""
    if len(rows) < MIN_FAMILY_ROWS:
        return None
    fp = rows_fingerprint(rows, GemmFamily(model=FAMILY_MODEL).params)
    row = store.fits(env_key, [FAMILY_KEY]).get(FAMILY_KEY)
    if row is not None and row["fingerprint"] == fp:
        try:
            obj = row["model"]
            err = obj.get("holdout_mape_pct")
            return StoredFamily(GemmFamily.from_json(obj["family"], rows),
                                None if err is None else float(err), fp)
        except (KeyError, TypeError, ValueError):
            pass  # unreadable: fitted anew below
    return fit_family(rows)


def family_rows(units: Iterable[Unit] | Mapping[str, Unit], measurements: Iterable[Measurement],
                env_key: str) -> list[GemmRow]:
    """GEMM rows of one environment (the device named by its key)."""
    return rows_from_units(units, [m for m in measurements if m.env_key == env_key])


def fit_environment(store, env_key: str) -> EnvFits:
    """Fit every unit measured in `env_key` and its GEMM family; store the fits whose
    measurements changed (those still fresh are kept as stored)."""
    from dooly.routing import for_routing
    units = {u.key: u for u in store.units() if u.op != STEP_OP}
    # MoE units are stored fitted under the default expert distribution (dooly.routing)
    meas = for_routing(store.measurements(env_key=env_key), units)
    fits = unit_models(store, env_key, units, meas)
    fits.family = load_family(store, env_key, family_rows(units, meas, env_key))
    records = [{"unit_key": k, "env_key": env_key, "fingerprint": fits.models[k].fingerprint,
                "model": fits.models[k].to_json()} for k in fits.refitted]
    if fits.family is not None and fits.family.refitted:
        records.append(fits.family.record(env_key))
    if records:
        store.put_fits(records)
    return fits
