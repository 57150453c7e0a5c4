"""Family models: one latency model per unit family (dooly.graph.family) and environment,
trained across the members' shapes, for every kind of unit (GEMMs, fused pointwise and
norm regions, rotary, sampler and LM head, attention, KV writes).

A row is one measured point of one member: its design (`design`) is [FLOPs, bytes] at
the point (the roofline of dooly.profile.cost) followed by the request's features
(dooly.fit.features) and the config values the family key removed, by name. The model
is chosen among `FamilyRegressor.MODELS` by leave-one-unit-out error: each member in
turn is held out of training and predicted, so the error stated is the error to expect
on a shape the family never saw. Members are the units whose grid was swept: a unit
measured only at its check points is checked against the family, never trained into
it (the caller passes those as `exclude`).

`fit_families(units, measurements)` -> {(family_key, env_key): FittedFamily}, each with
a fingerprint of the rows it was fitted on; `FittedFamily.to_json()` is plain numbers
(stored in the fits table as "family:<family_key>" by dooly.fit.family_store)."""
from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from dooly.env import Measurement
from dooly.fit.family_models import FamilyRegressor, family_estimator_from_json
from dooly.fit.features import features
from dooly.graph.family import config_features, family_key
from dooly.profile.cost import flops_bytes
from dooly.unit import Unit

FAMILY_VERSION = "families-1"
FAMILY_PREFIX = "family:"   # fits-table key of a family model: "family:<family_key>"
# a member needs a curve, not a point; units measured only at their check points are
# told apart by their stored verdict (dooly.fit.family_store.check_only), never trained on
MIN_MEMBER_POINTS = 2
# one member's curve says nothing about how width changes latency: the plain roofline
# (a launch floor plus time per FLOP and per byte) is the assumption that scales
SINGLE_MEMBER_MODEL = "roofline"


def columns(unit: Unit) -> list[str]:
    """The design's column names for this unit's family (equal within a family)."""
    n_req = len(features(unit.driver, _probe(unit)))
    return ["flops", "bytes"] + [f"req{i}" for i in range(n_req)] + sorted(config_features(unit))


def _probe(unit: Unit) -> dict:
    from dooly.profile.grid import GridLimits
    from dooly.profile.grid import points_for
    return points_for(unit.driver, GridLimits(2, 2, 16), unit.request_symbols())[0]


def design(unit: Unit, points: Iterable[dict], cols: list[str] | None = None) -> np.ndarray:
    """One design row per point (see the module doc); `cols` the family's column names."""
    cols = cols or columns(unit)
    cfg = config_features(unit)
    rows = []
    for p in points:
        flops, nbytes = flops_bytes(unit, p)
        req = features(unit.driver, p)
        named = dict(zip((f"req{i}" for i in range(len(req))), req), **cfg)
        # a request feature of 0 (no decode in a prefill batch) is the log's floor, not an error
        rows.append([max(flops, 1.0), max(nbytes, 1.0)] + [max(named.get(c, 1.0), 1.0) for c in cols[2:]])
    return np.asarray(rows, dtype=float).reshape(-1, len(cols))


def mape_pct(y, pred) -> float:
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    return float(np.mean(np.abs(pred - y) / np.maximum(np.abs(y), 1e-12)) * 100.0)


@dataclass
class FamilyData:
    family_key: str
    env_key: str
    columns: list[str]
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray                      # the member unit key of each row
    fingerprint: str = ""

    @property
    def members(self) -> list[str]:
        return sorted(set(self.groups.tolist()))

    @property
    def request_cols(self) -> int:
        return sum(c.startswith("req") for c in self.columns)


@dataclass
class FittedFamily:
    """A family's chosen model in one environment. `louo_mape_pct`: the median over held-out
    members of their median error (None with one member); `by_candidate`: every model's."""
    family_key: str
    env_key: str
    name: str
    estimator: FamilyRegressor
    columns: list[str]
    members: list[str]
    louo_mape_pct: float | None
    fingerprint: str = ""
    by_candidate: dict = field(default_factory=dict)

    def predict(self, unit: Unit, points: Iterable[dict]) -> np.ndarray:
        return np.maximum(self.estimator.predict(design(unit, list(points), self.columns)), 0.0)

    def to_json(self) -> dict:
        return {"kind": "family_model", "version": FAMILY_VERSION, "family_key": self.family_key,
                "env_key": self.env_key, "name": self.name, "estimator": self.estimator.to_json(),
                "columns": list(self.columns), "members": list(self.members),
                "louo_mape_pct": self.louo_mape_pct, "fingerprint": self.fingerprint,
                "by_candidate": dict(self.by_candidate)}

    @classmethod
    def from_json(cls, obj: dict) -> "FittedFamily":
        if obj.get("kind") != "family_model" or obj.get("version") != FAMILY_VERSION:
            raise ValueError(f"kind: expected a {FAMILY_VERSION} family model")
        err = obj.get("louo_mape_pct")
        return cls(str(obj["family_key"]), str(obj["env_key"]), str(obj["name"]),
                   family_estimator_from_json(obj["estimator"]), [str(c) for c in obj["columns"]],
                   [str(m) for m in obj["members"]], None if err is None else float(err),
                   str(obj.get("fingerprint", "")), dict(obj.get("by_candidate") or {}))


def family_data(units: Mapping[str, Unit], measurements: Iterable[Measurement],
                exclude: Iterable[str] = ()) -> dict[tuple[str, str], FamilyData]:
    """Training rows per (family, environment) from the members' ok measurements:
    units with at least MIN_MEMBER_POINTS points, but those in `exclude` (the units
    measured at check points only)."""
    skip = set(exclude)
    by_unit: dict[tuple[str, str], list[Measurement]] = defaultdict(list)
    for m in measurements:
        if m.status == "ok" and m.unit_key in units and m.unit_key not in skip and m.median_ms > 0:
            by_unit[(m.unit_key, m.env_key)].append(m)
    parts: dict[tuple[str, str], list] = defaultdict(list)
    for (ukey, ekey), ms in sorted(by_unit.items()):
        if len(ms) >= MIN_MEMBER_POINTS:
            parts[(family_key(units[ukey]), ekey)].append((units[ukey], ms))
    out = {}
    for (fkey, ekey), members in parts.items():
        cols = columns(members[0][0])
        X = np.vstack([design(u, [m.point for m in ms], cols) for u, ms in members])
        y = np.concatenate([[m.median_ms for m in ms] for _, ms in members])
        groups = np.concatenate([[u.key] * len(ms) for u, ms in members])
        out[(fkey, ekey)] = FamilyData(fkey, ekey, cols, X, y, groups,
                                       _fingerprint(members))
    return out


def _fingerprint(members) -> str:
    rows = sorted((u.key, m.point_json, repr(float(m.median_ms))) for u, ms in members for m in ms)
    blob = json.dumps([FAMILY_VERSION, rows], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def louo_errors(data: FamilyData, model: str) -> dict[str, float]:
    """Per member: the median error (%) over its points of `model` trained on the other
    members only. The median, not the mean: a device's timer resolution (a microsecond
    on a two-microsecond kernel) must not pick the model for the points that matter."""
    out = {}
    for key in data.members:
        held = data.groups == key
        est = FamilyRegressor(model=model, request_cols=data.request_cols).fit(data.X[~held], data.y[~held])
        y = data.y[held]
        out[key] = float(np.median(np.abs(est.predict(data.X[held]) - y) / np.maximum(y, 1e-12)) * 100)
    return out


def select_family(data: FamilyData) -> FittedFamily:
    """The candidate with the lowest leave-one-unit-out error (the median over members, so
    one member running another kernel does not decide for the rest), refitted on every
    member; with one member (nothing to hold out) SINGLE_MEMBER_MODEL."""
    scores: dict[str, float | None] = {}
    if len(data.members) >= 2:
        for name in FamilyRegressor.MODELS:
            try:
                scores[name] = round(float(np.median(list(louo_errors(data, name).values()))), 4)
            except (ValueError, np.linalg.LinAlgError):
                continue
    best = min(scores, key=lambda k: (math.inf if scores[k] is None else scores[k])) if scores \
        else SINGLE_MEMBER_MODEL
    est = FamilyRegressor(model=best, request_cols=data.request_cols).fit(data.X, data.y)
    return FittedFamily(data.family_key, data.env_key, best, est, data.columns, data.members,
                        scores.get(best), data.fingerprint, scores)


def fit_families(units: Mapping[str, Unit], measurements: Iterable[Measurement],
                 previous: Mapping | None = None, exclude: Iterable[str] = ()
                 ) -> dict[tuple[str, str], FittedFamily]:
    """Every (family, environment) with a member; an entry of `previous` with the same
    fingerprint is reused as is."""
    out = {}
    for k, data in sorted(family_data(units, measurements, exclude).items()):
        old = (previous or {}).get(k)
        out[k] = old if old is not None and old.fingerprint == data.fingerprint else select_family(data)
    return out
