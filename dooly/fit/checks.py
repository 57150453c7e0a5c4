"""Check points: whether a family model may stand for a unit it was not trained on.

A unit a family covers is measured at a few check points instead of its whole grid.
The family's prediction there, times one scale factor for the unit (a width the family
runs a few percent slower, say), must match every check point within the tolerance.
The scale is fitted leave-one-out: each check point is judged by the scale of the
others, so no point vouches for itself. A unit that passes is served by the family
(times its scale); one that fails is swept in full and joins the family's training.

A step tolerance (opt-in, `dooly sweep --families --step-tolerance PCT`) weighs each check
error by the unit's share of its model's units at that point (`shares`, an upper bound
from dooly.profile.shares): a unit is also served when every weighted error is within the
step tolerance. A simulator is judged on steps, and a norm that takes 1% of a step may
miss by 10% at the cost of 0.1% of the step (on this CPU at 0.5%, 20 of four models' 54
own units were served and every model's per-set MAPE stayed within 0.6 points of its fully
swept twin; bench/results/2026-12-07b).

`CheckVerdict` is plain data, stored beside the unit in the fits table as
"check:<unit_key>" (dooly.fit.family_store), with the family model it was judged on:
a unit is served by exactly the model that was checked, whatever members join the
family later (they train the model the next units are checked against)."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

CHECK_PREFIX = "check:"
DEFAULT_TOLERANCE_PCT = 3.0
N_CHECKS = 3


def loo_scaled_errors(measured, predicted) -> tuple[float, list[float]]:
    """(scale, error % per point): the scale is the geometric mean of measured/predicted
    over every point; point i's error uses the geometric mean over the others."""
    m, p = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    if len(m) != len(p) or not len(m):
        raise ValueError("measured, predicted: one prediction per measured point expected")
    if (m <= 0).any() or (p <= 0).any():
        return 1.0, [math.inf] * len(m)
    r = np.log(m / p)
    if len(m) == 1:  # nothing to scale by without the point itself
        return 1.0, [float(abs(p[0] - m[0]) / m[0] * 100.0)]
    errs = []
    for i in range(len(m)):
        s = math.exp(float(np.mean(np.delete(r, i))))
        errs.append(float(abs(s * p[i] - m[i]) / m[i] * 100.0))
    return math.exp(float(np.mean(r))), errs


@dataclass(frozen=True)
class CheckVerdict:
    """The outcome of checking one unit against its family in one environment."""
    unit_key: str
    family_key: str
    env_key: str
    points: tuple            # the check points (request dicts)
    measured_ms: tuple
    predicted_ms: tuple      # the family's, before the unit's scale
    tolerance_pct: float
    family_fingerprint: str = ""
    family_json: str = ""    # the FittedFamily judged (its to_json() text)
    shares: tuple = ()       # the unit's share of its model's units at each check point (or none)
    step_tolerance_pct: float | None = None

    def __post_init__(self):
        if not self.unit_key or not self.family_key or not self.env_key:
            raise ValueError("unit_key, family_key, env_key: a verdict names all three")
        if not len(self.points) == len(self.measured_ms) == len(self.predicted_ms) >= 1:
            raise ValueError("points, measured_ms, predicted_ms: one of each per check point")
        if not (isinstance(self.tolerance_pct, (int, float)) and 0 < self.tolerance_pct < 100):
            raise ValueError(f"tolerance_pct: expected a percentage in (0, 100), got {self.tolerance_pct!r}")
        vals = list(self.measured_ms) + list(self.predicted_ms)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in vals):
            raise ValueError("measured_ms, predicted_ms: latencies are finite and >= 0")
        if self.shares and (len(self.shares) != len(self.points) or not all(
                isinstance(v, (int, float)) and 0 < v <= 1 for v in self.shares)):
            raise ValueError("shares: one share in (0, 1] per check point, or none")
        if self.step_tolerance_pct is not None and not (
                isinstance(self.step_tolerance_pct, (int, float)) and 0 < self.step_tolerance_pct < 100):
            raise ValueError(f"step_tolerance_pct: expected a percentage in (0, 100), got {self.step_tolerance_pct!r}")

    def family(self):
        """The family model this verdict was judged on (None for a verdict without one)."""
        from dooly.fit.families import FittedFamily
        return FittedFamily.from_json(json.loads(self.family_json)) if self.family_json else None

    @property
    def scale(self) -> float:
        return loo_scaled_errors(self.measured_ms, self.predicted_ms)[0]

    @property
    def errors_pct(self) -> list[float]:
        return loo_scaled_errors(self.measured_ms, self.predicted_ms)[1]

    @property
    def error_pct(self) -> float:
        """The largest check error: what "family-served within X%" states."""
        return max(self.errors_pct)

    @property
    def step_error_pct(self) -> float | None:
        """The largest check error weighted by the unit's share there (None without shares)."""
        if not self.shares:
            return None
        return max(e * s for e, s in zip(self.errors_pct, self.shares))

    @property
    def served(self) -> bool:
        if self.error_pct <= self.tolerance_pct:
            return True
        weighted = self.step_error_pct
        return weighted is not None and self.step_tolerance_pct is not None and weighted <= self.step_tolerance_pct

    def fingerprint(self) -> str:
        blob = json.dumps([self.points, [repr(float(v)) for v in self.measured_ms],
                           self.family_fingerprint, self.tolerance_pct]
                          + ([[repr(float(v)) for v in self.shares], self.step_tolerance_pct]
                             if self.shares or self.step_tolerance_pct is not None else []), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return {"kind": "check", "unit_key": self.unit_key, "family_key": self.family_key,
                "env_key": self.env_key, "points": [dict(p) for p in self.points],
                "measured_ms": list(self.measured_ms), "predicted_ms": list(self.predicted_ms),
                "tolerance_pct": self.tolerance_pct, "family_fingerprint": self.family_fingerprint,
                "family": json.loads(self.family_json) if self.family_json else None,
                "scale": self.scale, "error_pct": self.error_pct, "served": self.served,
                "shares": list(self.shares), "step_tolerance_pct": self.step_tolerance_pct,
                "step_error_pct": self.step_error_pct}

    @classmethod
    def from_json(cls, obj: dict) -> "CheckVerdict":
        if not isinstance(obj, dict) or obj.get("kind") != "check":
            raise ValueError("kind: expected a stored check verdict")
        return cls(str(obj["unit_key"]), str(obj["family_key"]), str(obj["env_key"]),
                   tuple(dict(p) for p in obj["points"]),
                   tuple(float(v) for v in obj["measured_ms"]),
                   tuple(float(v) for v in obj["predicted_ms"]), float(obj["tolerance_pct"]),
                   str(obj.get("family_fingerprint", "")),
                   json.dumps(obj["family"], sort_keys=True) if obj.get("family") else "",
                   tuple(float(v) for v in obj.get("shares") or ()),
                   None if obj.get("step_tolerance_pct") is None else float(obj["step_tolerance_pct"]))


def judge(unit, family, measurements, tolerance_pct: float = DEFAULT_TOLERANCE_PCT,
          shares: dict | None = None, step_tolerance_pct: float | None = None) -> CheckVerdict:
    """The verdict of `family` (a dooly.fit.families.FittedFamily not trained on this
    unit) on the unit's ok `measurements` at its check points. `shares`: point_json -> the
    unit's share of its model's units there; weighted only when every point has one."""
    rows = [m for m in measurements if m.status == "ok"]
    if not rows:
        raise ValueError(f"measurements: no check point of unit {unit.key} was measured")
    if unit.key in family.members:
        raise ValueError(f"family: {family.family_key} was trained on unit {unit.key} itself")
    pred = family.predict(unit, [m.point for m in rows])
    keys = [m.point_json for m in rows]
    weights = tuple(float(shares[k]) for k in keys) if shares and all(k in shares for k in keys) else ()
    return CheckVerdict(unit.key, family.family_key, rows[0].env_key, tuple(m.point for m in rows),
                        tuple(float(m.median_ms) for m in rows), tuple(float(v) for v in pred),
                        float(tolerance_pct), family.fingerprint,
                        json.dumps(family.to_json(), sort_keys=True), weights,
                        step_tolerance_pct if weights else None)


# a 1-D unit's served curve is tabulated once, 8 knots per octave up to 2**17 requests,
# so a prediction is a bisect (dooly.unit_models.fast_evaluator), not a design matrix per call
_KNOTS = np.unique(np.round(2.0 ** np.arange(0, 17.001, 1 / 8)))


class ServedModel:
    """A family-served unit's model: the family's prediction times the unit's scale
    (what `dooly.predict` calls through `predict_one`, or its knots for 1-D units)."""

    name = "family"

    def __init__(self, unit, family, verdict: CheckVerdict):
        from dooly.fit.estimators import InterpolatingRegressor
        self.unit, self.family, self.verdict = unit, family, verdict
        self.scale = verdict.scale
        self.cv_mape_pct = verdict.error_pct  # stated: the largest check error
        self.estimator = None
        if unit.driver in ("tokens", "seqs"):
            sym = "T" if unit.driver == "tokens" else "B"
            ys = self.scale * family.predict(unit, [{sym: int(x)} for x in _KNOTS])
            self.estimator = InterpolatingRegressor().fit(_KNOTS[:, None], ys)

    def predict_one(self, point: dict) -> float:
        return float(self.scale * self.family.predict(self.unit, [point])[0])
