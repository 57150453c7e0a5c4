"""Regressors for a unit family, across its members' shapes, storable as JSON data.

Every model reads one family design matrix (`dooly.fit.families.design`): column 0 is
the point's FLOPs, column 1 its bytes (roofline estimates from `dooly.profile.cost`),
the rest are positive sizes (the request's features, the config dims the family key
removed). Fits favour relative error: latencies span orders of magnitude.

  roofline      t = a + b*flops + c*bytes, a, b, c >= 0 (NNLS on relative error): the
                shape a device imposes, which extrapolates sanely to unseen widths;
  loglinear     log t linear in the log of every column (ridge): power laws;
  roofline+log  the roofline times exp(a ridge fit of log(t / roofline) on the log
                columns): the roofline with a bounded efficiency correction;
  work-interp   the members' latencies pooled along one axis, the roofline's work
                w = b*flops + c*bytes, as a monotone curve in log-log space (knots at
                quantiles of w): the launch floor and the bend into the bandwidth- or
                compute-bound line that an additive roofline smooths over.
  roofline+near, work-interp+near
                that model times the members' own residual near the shape asked for: a
                Gaussian kernel over the sizes in octaves (request axes weighted
                NEAR_REQUEST_WEIGHT times, so a point borrows from the same request size
                first), shrunk toward no correction where no member is near. A GEMM's
                efficiency changes from shape to shape with its tiling (which kernel, how
                many waves) and is alike for shapes within an octave; no global curve holds
                that. Model-out on Vidur's A40 data it takes the three GEMMs over 5%
                (6.0-7.0%) to 4.1-5.0% (bench/vidur_fit.py).

Same contract as dooly.fit.estimators: parameters in __init__, `fit` returns self,
learned state ends in `_`, `to_json()` / `family_estimator_from_json(obj)` round-trip
every fitted state as numbers (nothing is pickled or refitted on load)."""
from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

_EPS = 1e-12
# the roofline's columns are rescaled so NNLS sees numbers near 1 (TFLOP, GB)
_FLOPS_SCALE, _BYTES_SCALE = 1e-12, 1e-9


def _floats(a) -> list:
    return [float(v) for v in np.asarray(a, dtype=float).ravel()]


def _logs(X: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(X, dtype=float), _EPS))


# a light, scale-free ridge on the per-FLOP and per-byte terms: on one member a unit's
# constant bytes (its weights) and the launch floor cannot be told apart, and the floor
# is the one that does not grow with another member's width
ROOF_RIDGE = 0.01


def _roofline_fit(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    A = np.column_stack([np.ones(len(y)), X[:, 0] * _FLOPS_SCALE, X[:, 1] * _BYTES_SCALE])
    A = A / np.maximum(y, _EPS)[:, None]
    pen = np.sqrt(ROOF_RIDGE * len(y)) * np.diag([0.0, *np.maximum(A[:, 1:].mean(axis=0), _EPS)])
    coef, _ = nnls(np.vstack([A, pen]), np.concatenate([np.ones(len(y)), np.zeros(3)]))
    if not coef.any():  # degenerate data: the mean latency
        coef = np.array([float(np.mean(y)), 0.0, 0.0])
    return coef


def _roofline(coef: np.ndarray, X: np.ndarray) -> np.ndarray:
    return coef[0] + coef[1] * X[:, 0] * _FLOPS_SCALE + coef[2] * X[:, 1] * _BYTES_SCALE


class _Ridge:
    """Ridge on standardised columns; constant columns drop out (a single member's
    config dims carry no information)."""

    @staticmethod
    def fit(Z: np.ndarray, t: np.ndarray, alpha: float) -> tuple:
        mean, scale = Z.mean(axis=0), Z.std(axis=0)
        scale = np.where(scale > 1e-9, scale, np.inf)  # a constant column: weight 0
        S = (Z - mean) / scale
        coef = np.linalg.solve(S.T @ S + alpha * len(t) * np.eye(S.shape[1]), S.T @ (t - t.mean()))
        return mean, np.where(np.isfinite(scale), scale, 0.0), coef, float(t.mean())

    @staticmethod
    def apply(Z, mean, scale, coef, intercept) -> np.ndarray:
        safe = np.where(scale > 0, scale, 1.0)
        return ((Z - mean) / safe * (scale > 0)) @ coef + intercept


def _work(coef: np.ndarray, X: np.ndarray) -> np.ndarray:
    w = coef[1] * X[:, 0] * _FLOPS_SCALE + coef[2] * X[:, 1] * _BYTES_SCALE
    return np.log(np.maximum(w if coef[1:].any() else X[:, 1] * _BYTES_SCALE, _EPS))


def _knots(lw: np.ndarray, ly: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Median log latency in n quantile bins of log work, made non-decreasing (more
    work never takes less time)."""
    edges = np.unique(np.quantile(lw, np.linspace(0, 1, n + 1)))
    idx = np.clip(np.searchsorted(edges, lw, side="right") - 1, 0, max(len(edges) - 2, 0))
    kx, ky = [], []
    for b in np.unique(idx):
        sel = idx == b
        kx.append(float(np.median(lw[sel])))
        ky.append(float(np.median(ly[sel])))
    kx, ky = np.asarray(kx), np.maximum.accumulate(np.asarray(ky))
    return kx, ky


# the near-shape residual: bandwidth in octaves, the weight of the request axes in the
# distance, and the prior weight of "no correction" (a point at distance 0 weighs 1)
NEAR_BW_OCTAVES = 0.5
NEAR_REQUEST_WEIGHT = 3.0
NEAR_PRIOR = 0.05
_NEAR_CHUNK = 256   # query rows per kernel block: memory stays rows x members' points


def _octaves(X: np.ndarray, request_cols: int) -> np.ndarray:
    L = np.log2(np.maximum(np.asarray(X, dtype=float)[:, 2:], _EPS))
    L[:, :request_cols] *= NEAR_REQUEST_WEIGHT
    return L


def _near(L: np.ndarray, train_L: np.ndarray, train_r: np.ndarray) -> np.ndarray:
    """The kernel-weighted mean residual at each row of L, shrunk toward 0 by NEAR_PRIOR."""
    out = np.zeros(len(L))
    for i in range(0, len(L), _NEAR_CHUNK):
        d2 = ((L[i:i + _NEAR_CHUNK, None, :] - train_L[None]) ** 2).sum(-1)
        w = np.exp(-0.5 * d2 / NEAR_BW_OCTAVES ** 2)
        out[i:i + _NEAR_CHUNK] = (w @ train_r) / (w.sum(axis=1) + NEAR_PRIOR)
    return out


def _interp_loglog(lw: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """Through the knots; flat below the first (the launch floor) and beyond the last
    proportional to the work (log-log slope 1)."""
    if len(kx) == 1:
        return np.full(lw.shape, ky[0]) + np.maximum(lw - kx[0], 0.0)
    out = np.interp(lw, kx, ky)
    hi = lw > kx[-1]
    out[hi] = ky[-1] + (lw[hi] - kx[-1])
    return out


class FamilyRegressor(RegressorMixin, BaseEstimator):
    """One of `MODELS` over the family design matrix (see the module doc)."""

    MODELS = ("roofline", "loglinear", "roofline+log", "work-interp", "roofline+near",
              "work-interp+near")

    def __init__(self, model: str = "roofline+log", alpha: float = 1e-3, knots: int = 24,
                 request_cols: int = 1):
        self.model = model
        self.alpha = alpha
        self.knots = knots
        self.request_cols = request_cols   # the request's columns, after flops and bytes

    def fit(self, X, y):
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        if self.model not in self.MODELS:
            raise ValueError(f"model: expected one of {self.MODELS}, got {self.model!r}")
        if X.ndim != 2 or X.shape[1] < 2 or len(X) != len(y) or not len(y):
            raise ValueError(f"X: expected [flops, bytes, sizes...] rows for {len(y)} latencies")
        self.n_features_in_ = X.shape[1]
        self.roof_ = np.zeros(3)
        target = np.log(np.maximum(y, _EPS))
        if self.model != "loglinear":
            self.roof_ = _roofline_fit(X, y)
            target = target - np.log(np.maximum(_roofline(self.roof_, X), _EPS))
        self.kx_ = self.ky_ = np.zeros(0)
        if self.model.startswith("work-interp"):
            self.kx_, self.ky_ = _knots(_work(self.roof_, X), np.log(np.maximum(y, _EPS)), int(self.knots))
        self.near_x_, self.near_r_ = np.zeros((0, X.shape[1] - 2)), np.zeros(0)
        if self.model.endswith("+near"):
            self.near_x_ = _octaves(X, int(self.request_cols))
            self.near_r_ = np.log(np.maximum(y, _EPS)) - np.log(self._base(X))
        if self.model in ("roofline", "work-interp") or self.model.endswith("+near"):
            self.mean_ = self.scale_ = self.coef_ = np.zeros(X.shape[1])
            self.intercept_ = 0.0
            return self
        self.mean_, self.scale_, self.coef_, self.intercept_ = _Ridge.fit(_logs(X), target, self.alpha)
        return self

    def _base(self, X: np.ndarray) -> np.ndarray:
        """The roofline or work-interp curve a +near model corrects."""
        if self.model.startswith("work-interp"):
            return np.exp(_interp_loglog(_work(self.roof_, X), self.kx_, self.ky_))
        return np.maximum(_roofline(self.roof_, X), _EPS)

    def predict(self, X):
        check_is_fitted(self)
        X = np.asarray(X, dtype=float).reshape(-1, self.n_features_in_)
        if self.model == "loglinear":
            out = np.zeros(len(X))
        else:
            out = np.log(self._base(X))
        if self.model in ("loglinear", "roofline+log"):
            out = out + _Ridge.apply(_logs(X), self.mean_, self.scale_, self.coef_, self.intercept_)
        if self.model.endswith("+near"):
            out = out + _near(_octaves(X, int(self.request_cols)), self.near_x_, self.near_r_)
        return np.exp(out)

    def to_json(self) -> dict:
        check_is_fitted(self)
        return {"kind": "family", "params": self.get_params(deep=False),
                "state": {"n_features_in": int(self.n_features_in_), "roof": _floats(self.roof_),
                          "mean": _floats(self.mean_), "scale": _floats(self.scale_),
                          "coef": _floats(self.coef_), "intercept": float(self.intercept_),
                          "knots_x": _floats(self.kx_), "knots_y": _floats(self.ky_),
                          "near_x": [_floats(r) for r in self.near_x_], "near_r": _floats(self.near_r_)}}


def family_estimator_from_json(obj: dict) -> FamilyRegressor:
    """A fitted FamilyRegressor from `to_json()` data; a ValueError for anything else."""
    if not isinstance(obj, dict) or obj.get("kind") != "family":
        raise ValueError(f"kind: expected 'family', got {obj.get('kind') if isinstance(obj, dict) else obj!r}")
    params = obj.get("params") or {}
    if params.get("model") not in FamilyRegressor.MODELS:
        raise ValueError(f"params.model: expected one of {FamilyRegressor.MODELS}")
    est = FamilyRegressor(model=params["model"], alpha=float(params.get("alpha", 1e-3)),
                          knots=int(params.get("knots", 24)), request_cols=int(params.get("request_cols", 1)))
    st = obj.get("state") or {}
    n = int(st["n_features_in"])
    vecs = {k: np.asarray(st[k], dtype=float) for k in ("mean", "scale", "coef")}
    if any(len(v) != n for v in vecs.values()) or len(st["roof"]) != 3:
        raise ValueError(f"state: vectors of {n} features and 3 roofline coefficients expected")
    if not all(np.isfinite(v).all() for v in vecs.values()):
        raise ValueError("state: coefficients must be finite numbers")
    est.n_features_in_, est.roof_ = n, np.asarray(st["roof"], dtype=float)
    est.mean_, est.scale_, est.coef_ = vecs["mean"], vecs["scale"], vecs["coef"]
    est.intercept_ = float(st["intercept"])
    est.kx_, est.ky_ = (np.asarray(st.get(k, []), dtype=float) for k in ("knots_x", "knots_y"))
    if len(est.kx_) != len(est.ky_) or (params["model"].startswith("work-interp") and not len(est.kx_)):
        raise ValueError("state: a work-interp model needs as many knot latencies as knots")
    near_x = np.asarray(st.get("near_x", []), dtype=float).reshape(-1, n - 2)
    est.near_r_ = np.asarray(st.get("near_r", []), dtype=float)
    if len(near_x) != len(est.near_r_) or (params["model"].endswith("+near") and not len(near_x)) \
            or not (np.isfinite(near_x).all() and np.isfinite(est.near_r_).all()):
        raise ValueError("state: a +near model needs one finite residual per stored point")
    est.near_x_ = near_x
    return est
