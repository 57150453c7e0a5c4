"""Pick and fit one latency model per (unit, environment).

`select_model(X, y, driver)` cross-validates the candidates that suit the driver
(leave-one-out under 10 points, else shuffled 5-fold), picks the lowest CV MAPE
(ties go to the earlier, simpler candidate) and refits it on all the data.

`fit_units(units, measurements, previous)` does that for every (unit_key, env_key)
with ok measurements, keyed by a fingerprint of the measurement rows: an entry of
`previous` whose fingerprint matches is reused as is, so only units whose data
changed are refitted. `dooly.fit.stored` passes the fits stored in the DB as
`previous`, so a prediction after `dooly fit` selects no model.

Fitted models are stored as JSON data (never pickle): `FittedUnitModel.to_json()` /
`FittedUnitModel.from_json(obj, measurements=None)`. Tree ensembles keep only their
parameters; `from_json` refits them from the unit's measurements (pass them), which is
fast for the few hundred points a unit has.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import KFold, LeaveOneOut

from dooly.env import Measurement
from dooly.fit.estimators import (ConstantRegressor, InterpolatingRegressor, IsotonicInterp,
                                  LogTargetTrees, PolyLinear, estimator_from_json, needs_refit)
from dooly.fit.features import feature_matrix, feature_names, features
from dooly.unit import Unit

# Bump when candidates or features change: old fingerprints then no longer match.
FIT_VERSION = "fit-1"
LOO_BELOW = 10
KFOLDS = 5


def candidates(driver: str, n_points: int) -> list[tuple[str, object]]:
    """(name, unfitted estimator) to try for a unit with `n_points` measurements."""
    feature_names(driver)
    if n_points <= 1 or driver == "none":
        return [("constant", ConstantRegressor())]
    if driver in ("tokens", "seqs"):
        out = [("interp", InterpolatingRegressor()), ("isotonic", IsotonicInterp()),
               ("poly1", PolyLinear(degree=1))]
        if n_points >= 4:
            out.append(("poly2", PolyLinear(degree=2)))
        if n_points >= 8:
            out.append(("poly3", PolyLinear(degree=3)))
        return out
    # attention: several features
    out = [("linear", PolyLinear(degree=1, positive=True))]
    if n_points >= 40:
        out.append(("poly2", PolyLinear(degree=2, positive=True)))
    if n_points >= 10:
        out += [("gbr_log", LogTargetTrees("gbr", n_estimators=300, max_depth=3, learning_rate=0.05)),
                ("rf_log", LogTargetTrees("rf", n_estimators=200, max_depth=None))]
    return out


def mape_pct(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    return float(np.mean(np.abs(y_pred - y_true) / np.maximum(np.abs(y_true), 1e-9)) * 100.0)


def cv_predictions(estimator, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold predictions: leave-one-out under LOO_BELOW points, else KFOLDS-fold."""
    n = len(y)
    splitter = LeaveOneOut() if n < LOO_BELOW else KFold(KFOLDS, shuffle=True, random_state=0)
    pred = np.empty(n)
    for train, test in splitter.split(X):
        pred[test] = clone(estimator).fit(X[train], y[train]).predict(X[test])
    return pred


@dataclass
class FittedUnitModel:
    """The chosen model for one unit in one environment. `points`: how many
    measurements it was fitted on; `cv_mape_pct`: its cross-validated MAPE (None when
    there was a single point); `x_min`/`x_max`: the feature range seen in training."""

    name: str
    estimator: object
    cv_mape_pct: float | None
    points: int
    driver: str = "tokens"
    fingerprint: str = ""
    unit_key: str = ""
    env_key: str = ""
    cv_by_candidate: dict = field(default_factory=dict)
    x_min: list = field(default_factory=list)
    x_max: list = field(default_factory=list)

    def predict(self, points: Iterable[dict]) -> np.ndarray:
        if needs_refit(self.estimator):
            raise ValueError(f"estimator: the {self.name} model of unit {self.unit_key} must be "
                             "refitted from its measurements (FittedUnitModel.from_json(obj, measurements))")
        return self.estimator.predict(feature_matrix(self.driver, list(points)))

    def predict_one(self, point: dict) -> float:
        return float(self.predict([point])[0])

    def extrapolates(self, point: dict) -> bool:
        x = features(self.driver, point)
        return bool(len(self.x_min) and ((x < np.asarray(self.x_min)) | (x > np.asarray(self.x_max))).any())

    def to_json(self) -> dict:
        return {"name": self.name, "estimator": self.estimator.to_json(),
                "cv_mape_pct": self.cv_mape_pct, "points": self.points, "driver": self.driver,
                "fingerprint": self.fingerprint, "unit_key": self.unit_key, "env_key": self.env_key,
                "cv_by_candidate": self.cv_by_candidate, "x_min": self.x_min, "x_max": self.x_max,
                "fit_version": FIT_VERSION}

    @classmethod
    def from_json(cls, obj: dict, measurements: Iterable[Measurement] | None = None) -> "FittedUnitModel":
        """Rebuild; tree models are refitted from `measurements` (the unit's ok rows in
        that environment) -- without them they stay unfitted and `predict` raises."""
        est = estimator_from_json(obj["estimator"])
        driver = obj.get("driver", "tokens")
        if needs_refit(est) and measurements is not None:
            X, y = training_data(driver, measurements)
            est.fit(X, y)
        return cls(name=obj["name"], estimator=est, cv_mape_pct=obj.get("cv_mape_pct"),
                   points=int(obj.get("points", 0)), driver=driver,
                   fingerprint=obj.get("fingerprint", ""), unit_key=obj.get("unit_key", ""),
                   env_key=obj.get("env_key", ""), cv_by_candidate=dict(obj.get("cv_by_candidate", {})),
                   x_min=list(obj.get("x_min", [])), x_max=list(obj.get("x_max", [])))


# A (unit, env) fit result carries its data fingerprint; the names are interchangeable.


def select_model(X, y, driver: str, candidate_list: list | None = None) -> FittedUnitModel:
    """Cross-validate the driver's candidates on (X, y), refit the best on all data."""
    X = np.asarray(X, dtype=float).reshape(len(y), -1)
    y = np.asarray(y, dtype=float)
    if len(y) == 0:
        raise ValueError("y: no measurements to fit")
    cands = candidate_list if candidate_list is not None else candidates(driver, len(y))
    scores: dict[str, float] = {}
    best = None
    for name, est in cands:
        if len(y) < 2:
            score = math.nan
        else:
            try:
                score = mape_pct(y, cv_predictions(est, X, y))
            except (ValueError, np.linalg.LinAlgError):
                continue
        scores[name] = score
        if best is None or (not math.isnan(score) and (math.isnan(best[2]) or score < best[2] - 1e-12)):
            best = (name, est, score)
    if best is None:
        raise ValueError(f"candidates: none could be fitted on {len(y)} points")
    name, est, score = best
    model = clone(est).fit(X, y)
    return FittedUnitModel(name=name, estimator=model,
                           cv_mape_pct=None if math.isnan(score) else round(score, 6),
                           points=len(y), driver=driver,
                           cv_by_candidate={k: (None if math.isnan(v) else round(v, 6))
                                            for k, v in scores.items()},
                           x_min=X.min(axis=0).tolist() if X.shape[1] else [],
                           x_max=X.max(axis=0).tolist() if X.shape[1] else [])


def training_data(driver: str, measurements: Iterable[Measurement]) -> tuple[np.ndarray, np.ndarray]:
    rows = [m for m in measurements if m.status == "ok"]
    X = feature_matrix(driver, [m.point for m in rows])
    y = np.array([m.median_ms for m in rows], dtype=float)
    return X, y


def fingerprint(driver: str, measurements: Iterable[Measurement]) -> str:
    """Hash of the rows a fit uses (point and latencies; not timestamps)."""
    rows = sorted((m.point_json, repr(float(m.median_ms)), repr(float(m.p10_ms)), repr(float(m.p90_ms)),
                   repr(float(m.mean_ms)), repr(float(m.std_ms)), int(m.samples))
                  for m in measurements if m.status == "ok")
    blob = json.dumps([FIT_VERSION, driver, rows], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fit_units(units: Iterable[Unit] | Mapping[str, Unit], measurements: Iterable[Measurement],
              previous: Mapping | None = None) -> dict[tuple[str, str], FittedUnitModel]:
    """Fit every (unit_key, env_key) that has ok measurements among `units`.
    Entries of `previous` with the same fingerprint are reused (the same object)."""
    by_key = dict(units) if isinstance(units, Mapping) else {u.key: u for u in units}
    groups: dict[tuple[str, str], list[Measurement]] = defaultdict(list)
    for m in measurements:
        if m.status == "ok" and m.unit_key in by_key:
            groups[(m.unit_key, m.env_key)].append(m)
    previous = previous or {}
    out: dict[tuple[str, str], FittedUnitModel] = {}
    for (ukey, ekey), rows in sorted(groups.items()):
        driver = by_key[ukey].driver
        fp = fingerprint(driver, rows)
        old = previous.get((ukey, ekey))
        if old is not None and old.fingerprint == fp:
            if needs_refit(old.estimator):  # a tree model loaded from JSON: same choice, refit
                old.estimator.fit(*training_data(driver, rows))
            out[(ukey, ekey)] = old
            continue
        X, y = training_data(driver, rows)
        model = select_model(X, y, driver)
        model.fingerprint, model.unit_key, model.env_key = fp, ukey, ekey
        out[(ukey, ekey)] = model
    return out


def models_to_json(models: Mapping[tuple[str, str], FittedUnitModel]) -> list[dict]:
    return [m.to_json() for _, m in sorted(models.items())]


def models_from_json(objs: Iterable[dict], measurements: Iterable[Measurement] | None = None
                     ) -> dict[tuple[str, str], FittedUnitModel]:
    """Inverse of models_to_json; trees are refitted from `measurements` when given."""
    grouped: dict[tuple[str, str], list[Measurement]] = defaultdict(list)
    for m in measurements or ():
        grouped[(m.unit_key, m.env_key)].append(m)
    out = {}
    for obj in objs:
        key = (obj.get("unit_key", ""), obj.get("env_key", ""))
        out[key] = FittedUnitModel.from_json(obj, grouped.get(key) if measurements is not None else None)
    return out
