"""Feature vectors for a measured point, per unit driver.

tokens:    [T]                      (point {"T": 128})
seqs:      [B]                      (point {"B": 8})
attention: from a batch of (query, context-before-step) pairs
           (point {"seqs": [[q1, c1], [q2, c2], ...]}):
           [num_tokens = sum q,
            qk_work    = sum q*(c+q)   (score/PV work; causal prefill is ~q*(c+q/2),
                                        a constant factor the fit absorbs),
            kv_read    = sum (c+q)     (KV entries read),
            num_decode = #seqs with q == 1,
            num_prefill= #seqs with q > 1,
            batch_size = #seqs]
none:      []                       (a constant-cost unit)
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_NAMES = {
    "tokens": ("T",),
    "seqs": ("B",),
    "attention": ("num_tokens", "qk_work", "kv_read", "num_decode", "num_prefill", "batch_size"),
    "none": (),
}


def feature_names(driver: str) -> tuple[str, ...]:
    try:
        return _NAMES[driver]
    except KeyError:
        raise ValueError(f"driver: expected one of {tuple(_NAMES)}, got {driver!r}") from None


def _scalar(point: dict, name: str) -> float:
    if name not in point:
        raise ValueError(f"point: a {name}-driven point needs {name!r}, got {point!r}")
    v = float(point[name])
    if not v >= 0:
        raise ValueError(f"point: {name} must be >= 0, got {point[name]!r}")
    return v


def attention_features(seqs: Iterable) -> np.ndarray:
    qc = np.asarray([[float(s[0]), float(s[1])] for s in seqs], dtype=float).reshape(-1, 2)
    if len(qc) == 0:
        return np.zeros(6)
    q, c = qc[:, 0], qc[:, 1]
    if (q < 0).any() or (c < 0).any():
        raise ValueError(f"point: seqs need non-negative (query, context) pairs, got {qc.tolist()!r}")
    return np.array([q.sum(), (q * (c + q)).sum(), (c + q).sum(),
                     float((q == 1).sum()), float((q > 1).sum()), float(len(q))])


def features(driver: str, point: dict) -> np.ndarray:
    """One point's feature vector (float64, length len(feature_names(driver)))."""
    feature_names(driver)
    if driver == "tokens":
        if "T" not in point and "Q" in point:  # padded [B, Q] batch (transformers engine)
            return np.array([_scalar(point, "Q") * float(point.get("B", 1))])
        return np.array([_scalar(point, "T")])
    if driver == "seqs":
        return np.array([_scalar(point, "B")])
    if driver == "attention":
        if "seqs" not in point:
            raise ValueError(f"point: an attention point needs 'seqs' [[q, c], ...], got {point!r}")
        return attention_features(point["seqs"])
    return np.zeros(0)


def feature_matrix(driver: str, points: Iterable[dict]) -> np.ndarray:
    rows = [features(driver, p) for p in points]
    return np.asarray(rows, dtype=float).reshape(len(rows), len(feature_names(driver)))
