"""Latency regressors with the scikit-learn contract, storable as JSON data.

Every estimator here: parameters set in __init__ only, `fit` returns self, learned
state ends in `_`, `predict` before `fit` raises sklearn's NotFittedError, and
`clone`/`get_params` work. Predictions are latencies (ms), clipped at >= 0.

Fits favour relative error (latencies span orders of magnitude): polynomials are
weighted least squares with weights 1/y^2, trees are fitted on log(y).

Storage: `to_json()` -> {"kind", "params", "state"}; `estimator_from_json(obj)` rebuilds.
Interpolators store their knots and polynomials their coefficients, so they come back
fitted. Tree ensembles store only their parameters (`state: {"refit": true}`): they
come back unfitted and are refitted from the measurements in the DB on load (a few
hundred points, milliseconds) -- see `FittedUnitModel.from_json` in dooly.fit.select.
"""
from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LinearRegression
from sklearn.utils.validation import check_is_fitted, validate_data

_EPS = 1e-9


def _floats(a) -> list:
    return [float(v) for v in np.asarray(a, dtype=float).ravel()]


def _merge_duplicates(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None):
    """Sorted unique x with the (weighted) mean y and total weight of each."""
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    ux, inv = np.unique(x, return_inverse=True)
    sw = np.bincount(inv, weights=w)
    sy = np.bincount(inv, weights=w * y)
    return ux, sy / np.where(sw > 0, sw, 1.0), sw


def end_slope(kx, ky, k: int = 4) -> float:
    """Least-squares slope over the last k knots, never negative: latency does not fall
    as work grows, and one noisy end segment must not bend the extrapolation down."""
    kx, ky = np.asarray(kx[-k:], float), np.asarray(ky[-k:], float)
    if len(kx) < 2 or np.ptp(kx) == 0:
        return 0.0
    return max(float(np.polyfit(kx, ky, 1)[0]), 0.0)


def _interp_extrap(xq: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """Piecewise-linear through the knots; flat below the first, and beyond the last
    along the (non-negative) trend of the last knots."""
    xq = np.asarray(xq, dtype=float)
    if len(kx) == 1:
        out = np.full(xq.shape, ky[0], dtype=float)
    else:
        out = np.interp(xq, kx, ky)
        hi = xq > kx[-1]
        out[hi] = ky[-1] + end_slope(kx, ky) * (xq[hi] - kx[-1])
    return np.maximum(out, 0.0)


class _JsonMixin:
    kind = ""

    def _state(self) -> dict:  # fitted state as plain data
        raise NotImplementedError

    def _load_state(self, state: dict) -> None:
        raise NotImplementedError

    def to_json(self) -> dict:
        check_is_fitted(self)
        return {"kind": self.kind, "params": self.get_params(deep=False), "state": self._state()}

    @classmethod
    def from_json(cls, obj: dict):
        est = cls(**obj.get("params", {}))
        state = obj.get("state") or {}
        if not state.get("refit"):
            est._load_state(state)
        return est


class _OneFeature(_JsonMixin, RegressorMixin, BaseEstimator):
    """Shared fit/predict of the 1-D knot models."""

    def _check_1d(self, X):
        if X.shape[1] != 1:
            raise ValueError(f"X: {type(self).__name__} takes one feature, got {X.shape[1]}")

    def _knots_from(self, x, y, w):  # -> (knot_x, knot_y)
        raise NotImplementedError

    def fit(self, X, y, sample_weight=None):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        self._check_1d(X)
        kx, ky = self._knots_from(X[:, 0], y, sample_weight)
        self.knots_x_, self.knots_y_ = np.asarray(kx, float), np.asarray(ky, float)
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return _interp_extrap(X[:, 0], self.knots_x_, self.knots_y_)

    def _state(self):
        return {"knots_x": _floats(self.knots_x_), "knots_y": _floats(self.knots_y_)}

    def _load_state(self, state):
        self.knots_x_ = np.asarray(state["knots_x"], float)
        self.knots_y_ = np.asarray(state["knots_y"], float)
        self.n_features_in_ = 1


class InterpolatingRegressor(_OneFeature):
    """Piecewise-linear interpolation over the one feature: knots at the sorted
    distinct x (duplicate x averaged), linear extrapolation from the end segments,
    predictions clipped at >= 0. Exact at the knots."""

    kind = "interp"

    def _knots_from(self, x, y, w):
        kx, ky, _ = _merge_duplicates(x, y, w)
        return kx, ky


class IsotonicInterp(_OneFeature):
    """Isotonic (non-decreasing) fit, then interpolation between the centroids of
    its constant blocks -- a monotone, noise-robust curve whose end segments (used
    for extrapolation) always have slope >= 0."""

    kind = "isotonic"

    def _knots_from(self, x, y, w):
        ux, uy, uw = _merge_duplicates(x, y, w)
        fitted = IsotonicRegression(increasing=True).fit(ux, uy, sample_weight=uw).predict(ux)
        kx, ky = [], []
        start = 0
        for i in range(1, len(ux) + 1):
            if i == len(ux) or fitted[i] != fitted[start]:
                ww = uw[start:i]
                kx.append(float(np.average(ux[start:i], weights=ww)))
                ky.append(float(fitted[start]))
                start = i
        return kx, ky


def _poly_powers(n_features: int, degree: int) -> np.ndarray:
    rows = []
    for d in range(1, degree + 1):
        for combo in combinations_with_replacement(range(n_features), d):
            p = np.zeros(n_features, dtype=int)
            for j in combo:
                p[j] += 1
            rows.append(p)
    return np.asarray(rows, dtype=int).reshape(-1, n_features)


def _poly(Z: np.ndarray, powers: np.ndarray) -> np.ndarray:
    return np.prod(Z[:, None, :] ** powers[None, :, :], axis=2)


class PolyLinear(_JsonMixin, RegressorMixin, BaseEstimator):
    """Polynomial features (all monomials up to `degree`, no bias column) of the
    inputs scaled by their max, then least squares with weights 1/y^2 (relative
    error) when `relative`; `positive` constrains the coefficients >= 0 (NNLS)."""

    kind = "poly"

    def __init__(self, degree: int = 1, positive: bool = False, relative: bool = True):
        self.degree = degree
        self.positive = positive
        self.relative = relative

    def fit(self, X, y, sample_weight=None):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        if int(self.degree) < 1:
            raise ValueError(f"degree: expected >= 1, got {self.degree!r}")
        scale = np.abs(X).max(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        self.powers_ = _poly_powers(X.shape[1], int(self.degree))
        w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, float)
        if self.relative:
            w = w / np.maximum(np.abs(y), _EPS) ** 2
        lr = LinearRegression(positive=bool(self.positive)).fit(_poly(X / self.scale_, self.powers_), y,
                                                                sample_weight=w)
        self.coef_ = np.asarray(lr.coef_, float).ravel()
        self.intercept_ = float(lr.intercept_)
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return np.maximum(_poly(X / self.scale_, self.powers_) @ self.coef_ + self.intercept_, 0.0)

    def _state(self):
        return {"scale": _floats(self.scale_), "powers": self.powers_.tolist(),
                "coef": _floats(self.coef_), "intercept": self.intercept_}

    def _load_state(self, state):
        self.scale_ = np.asarray(state["scale"], float)
        self.powers_ = np.asarray(state["powers"], int).reshape(-1, len(self.scale_))
        self.coef_ = np.asarray(state["coef"], float)
        self.intercept_ = float(state["intercept"])
        self.n_features_in_ = len(self.scale_)


class ConstantRegressor(_JsonMixin, RegressorMixin, BaseEstimator):
    """The median latency, for units whose cost does not depend on the request."""

    kind = "constant"

    def fit(self, X, y, sample_weight=None):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True,
                             ensure_min_features=0)
        self.value_ = float(np.median(y))
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False, ensure_min_features=0)
        return np.full(X.shape[0], max(self.value_, 0.0))

    def _state(self):
        return {"value": self.value_, "n_features_in": int(self.n_features_in_)}

    def _load_state(self, state):
        self.value_ = float(state["value"])
        self.n_features_in_ = int(state.get("n_features_in", 0))


class LogTargetTrees(_JsonMixin, RegressorMixin, BaseEstimator):
    """GradientBoostingRegressor (`ensemble="gbr"`) or RandomForestRegressor
    (`ensemble="rf"`) fitted on log(latency), predictions exp()'d back: squared error
    in log space is a relative-error fit. Stored as parameters only: refit on load."""

    kind = "trees"

    def __init__(self, ensemble: str = "gbr", n_estimators: int = 200, max_depth: int | None = 3,
                 learning_rate: float = 0.05, min_samples_leaf: int = 1, random_state: int = 0):
        self.ensemble = ensemble
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

    def _make(self):
        if self.ensemble == "gbr":
            return GradientBoostingRegressor(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                             learning_rate=self.learning_rate,
                                             min_samples_leaf=self.min_samples_leaf,
                                             random_state=self.random_state)
        if self.ensemble == "rf":
            return RandomForestRegressor(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                         min_samples_leaf=self.min_samples_leaf,
                                         random_state=self.random_state)
        raise ValueError(f"ensemble: expected 'gbr' or 'rf', got {self.ensemble!r}")

    def fit(self, X, y, sample_weight=None):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        self.model_ = self._make().fit(X, np.log(np.maximum(y, _EPS)), sample_weight=sample_weight)
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return np.exp(self.model_.predict(X))

    def _state(self):
        return {"refit": True}

    def _load_state(self, state):  # never called: refit-on-load
        raise NotImplementedError


ESTIMATORS = {cls.kind: cls for cls in
              (InterpolatingRegressor, IsotonicInterp, PolyLinear, ConstantRegressor, LogTargetTrees)}


def estimator_from_json(obj: dict):
    """Rebuild an estimator from `to_json()` data. Trees come back unfitted
    (`needs_refit(est)` is True): fit them on the unit's measurements."""
    try:
        cls = ESTIMATORS[obj["kind"]]
    except KeyError:
        raise ValueError(f"kind: unknown estimator kind {obj.get('kind')!r}") from None
    return cls.from_json(obj)


def needs_refit(est) -> bool:
    try:
        check_is_fitted(est)
        return False
    except Exception:
        return True
