"""One latency model for all GEMMs of a device, across shapes.

Training rows come from every measured GEMM unit: M = the value of the activation's
request dim at the measured point (T or B), K and N from the unit's shapes, the dtype
and the device. The default model (`model="roofline+gbr"`):

  1. a fitted additive roofline  t = a + b*flops + c*bytes  (a, b, c >= 0, relative-error
     NNLS; flops = 2MKN, bytes = (MK + KN + MN) * itemsize), which extrapolates sanely
     to shapes it never saw, then
  2. gradient boosting on log(y / t_roofline) with features log M, log K, log N,
     log flops, log bytes, log(flops/bytes), which learns the efficiency curve (tile
     quantisation, small-M under-utilisation) as a bounded correction.

`model="gbr"` fits boosting on log latency directly; `model="roofline"` only step 1.
One sub-model per device; dtype enters through the itemsize.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

import numpy as np
from scipy.optimize import nnls
from sklearn.ensemble import GradientBoostingRegressor

from dooly.env import itemsize
from dooly.fit.gemm_rows import GemmRow


def _basic(M, K, N, isz):
    M, K, N, isz = (np.asarray(v, dtype=float) for v in np.broadcast_arrays(M, K, N, isz))
    flops = 2.0 * M * K * N
    nbytes = (M * K + K * N + M * N) * isz
    return M, K, N, flops, nbytes


def gemm_features(M, K, N, isz) -> np.ndarray:
    M, K, N, flops, nbytes = _basic(M, K, N, isz)
    return np.column_stack([np.log(M), np.log(K), np.log(N), np.log(flops), np.log(nbytes),
                            np.log(flops / nbytes)])


class _DeviceModel:
    def __init__(self, model, n_estimators, max_depth, learning_rate, random_state):
        self.model = model
        self.gbr = None
        self.coef = np.zeros(3)
        self.kw = dict(n_estimators=n_estimators, max_depth=max_depth, learning_rate=learning_rate,
                       subsample=0.8, random_state=random_state)

    def roofline(self, M, K, N, isz):
        _, _, _, flops, nbytes = _basic(M, K, N, isz)
        return self.coef[0] + self.coef[1] * flops * 1e-12 + self.coef[2] * nbytes * 1e-9

    def fit(self, M, K, N, isz, y):
        logy = np.log(np.maximum(y, 1e-9))
        base = np.zeros_like(logy)
        if self.model in ("roofline", "roofline+gbr"):
            _, _, _, flops, nbytes = _basic(M, K, N, isz)
            A = np.column_stack([np.ones_like(flops), flops * 1e-12, nbytes * 1e-9]) / y[:, None]
            self.coef, _ = nnls(A, np.ones_like(y))
            base = np.log(np.maximum(self.roofline(M, K, N, isz), 1e-9))
        if self.model in ("gbr", "roofline+gbr"):
            self.gbr = GradientBoostingRegressor(**self.kw).fit(gemm_features(M, K, N, isz), logy - base)
        return self

    def predict(self, M, K, N, isz):
        out = np.zeros(np.broadcast(M, K, N, isz).shape, dtype=float).ravel()
        if self.model in ("roofline", "roofline+gbr"):
            out = out + np.log(np.maximum(self.roofline(M, K, N, isz), 1e-9)).ravel()
        if self.gbr is not None:
            out = out + self.gbr.predict(gemm_features(M, K, N, isz))
        return np.exp(out)


class GemmFamily:
    """Latency of any (M, K, N, dtype) GEMM on a device, learned across shapes.

    fit(rows) -> self; predict(M, K, N, dtype="float16", device=None) -> ms (array
    when any argument is an array); holdout_error(rows, holdout_shapes) -> MAPE %.
    Stored as data (`to_json`): the roofline by its coefficients, boosted models by
    their parameters only (refit from the DB's GEMM rows on load)."""

    MODELS = ("roofline+gbr", "gbr", "roofline")

    def __init__(self, model: str = "roofline+gbr", n_estimators: int = 400, max_depth: int = 4,
                 learning_rate: float = 0.05, random_state: int = 0):
        if model not in self.MODELS:
            raise ValueError(f"model: expected one of {self.MODELS}, got {model!r}")
        self.params = dict(model=model, n_estimators=n_estimators, max_depth=max_depth,
                           learning_rate=learning_rate, random_state=random_state)
        self.devices: dict[str, _DeviceModel] = {}

    def fit(self, rows: Iterable[GemmRow]) -> "GemmFamily":
        rows = [r for r in rows if r.latency_ms > 0 and r.M > 0]
        if not rows:
            raise ValueError("rows: no GEMM measurements to fit")
        self.devices = {}
        for dev in sorted({r.device for r in rows}):
            rs = [r for r in rows if r.device == dev]
            cols = [np.array([getattr(r, f) for r in rs], dtype=float) for f in ("M", "K", "N")]
            isz = np.array([itemsize(r.dtype) for r in rs], dtype=float)
            y = np.array([r.latency_ms for r in rs], dtype=float)
            self.devices[dev] = _DeviceModel(**self.params).fit(*cols, isz, y)
        return self

    def predict(self, M, K, N, dtype: str = "float16", device: str | None = None):
        if not self.devices:
            raise ValueError("GemmFamily: fit() it first")
        if device is None:
            if len(self.devices) != 1:
                raise ValueError(f"device: pick one of {sorted(self.devices)}")
            device = next(iter(self.devices))
        if device not in self.devices:
            raise KeyError(f"device: no GEMM data for {device!r}; have {sorted(self.devices)}")
        scalar = all(np.ndim(v) == 0 for v in (M, K, N))
        out = self.devices[device].predict(M, K, N, float(itemsize(dtype)))
        return float(out[0]) if scalar else out

    def predict_rows(self, rows: Iterable[GemmRow]) -> np.ndarray:
        """Predictions for rows (in order), batched per (dtype, device)."""
        rows = list(rows)
        out = np.zeros(len(rows))
        groups: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault((r.dtype, r.device), []).append(i)
        for (dtype, device), idx in groups.items():
            cols = [np.array([getattr(rows[i], f) for i in idx], dtype=float) for f in ("M", "K", "N")]
            out[idx] = self.predict(*cols, dtype=dtype, device=device)
        return out

    def holdout_error(self, rows: Iterable[GemmRow], holdout_shapes: Iterable[tuple[int, int]]) -> float:
        return holdout_error(rows, holdout_shapes, **self.params)

    @property
    def needs_refit(self) -> bool:
        return not self.devices

    def to_json(self) -> dict:
        """Parameters, plus the roofline coefficients of each device when the model is
        the roofline alone; boosted models keep only their parameters (refit on load)."""
        state: dict = {"refit": True}
        if self.params["model"] == "roofline" and self.devices:
            state = {"devices": {d: [float(c) for c in m.coef] for d, m in self.devices.items()}}
        return {"kind": "gemm_family", "params": dict(self.params), "state": state}

    @classmethod
    def from_json(cls, obj: dict, rows: Iterable[GemmRow] | None = None) -> "GemmFamily":
        """Rebuild from `to_json()` data; a model stored by parameters only is fitted on
        `rows` when given, else it comes back unfitted (`needs_refit`)."""
        if obj.get("kind") != "gemm_family":
            raise ValueError(f"kind: expected 'gemm_family', got {obj.get('kind')!r}")
        fam = cls(**obj.get("params", {}))
        devices = (obj.get("state") or {}).get("devices")
        if devices is None:
            return fam.fit(rows) if rows is not None else fam
        for dev, coef in devices.items():
            if len(coef) != 3:
                raise ValueError(f"state.devices.{dev}: expected 3 roofline coefficients, got {len(coef)}")
            fam.devices[dev] = _DeviceModel(**fam.params)
            fam.devices[dev].coef = np.asarray(coef, dtype=float)
        return fam


def holdout_error(rows: Iterable[GemmRow], holdout_shapes: Iterable[tuple[int, int]], **params) -> float:
    """Train on rows whose (K, N) is not held out; MAPE (%) on the held-out rows."""
    rows = [r for r in rows if r.latency_ms > 0 and r.M > 0]
    held = {(int(k), int(n)) for k, n in holdout_shapes}
    train = [r for r in rows if r.shape not in held]
    test = [r for r in rows if r.shape in held]
    if not test:
        raise ValueError(f"holdout_shapes: no rows with (K, N) in {sorted(held)}")
    fam = GemmFamily(**params).fit(train)
    pred = fam.predict_rows(test)
    y = np.array([r.latency_ms for r in test])
    return float(np.mean(np.abs(pred - y) / y) * 100.0)


def shape_holdout_error(rows: Iterable[GemmRow], **params) -> float | None:
    """Mean MAPE (%) with each measured (K, N) shape held out of training in turn: the
    error to expect on a shape never measured. None with fewer than two shapes."""
    rows = [r for r in rows if r.latency_ms > 0 and r.M > 0]
    shapes = sorted({r.shape for r in rows})
    if len(shapes) < 2:
        return None
    return float(np.mean([holdout_error(rows, [s], **params) for s in shapes]))


# Bump when the family's features or fitting change: stored families then go stale.
FAMILY_VERSION = "gemm-family-1"


def rows_fingerprint(rows: Iterable[GemmRow], params: Mapping) -> str:
    """Hash of the training rows and model parameters: a stored family is fresh while
    the DB's GEMM measurements (and the parameters) are what it was fitted on."""
    data = sorted((r.M, r.K, r.N, r.dtype, r.device, repr(float(r.latency_ms))) for r in rows)
    blob = json.dumps([FAMILY_VERSION, dict(sorted(params.items())), data], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
