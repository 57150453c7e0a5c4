"""Vidur's network profile for tensor parallelism: the `all_reduce.csv` Vidur reads from
data/profiling/network/<network_device>/, written from Dooly's all_reduce unit of a
TP=N model (`dooly sweep --tp N`).

Vidur keeps the rows with `num_workers` = its replica's tensor-parallel size,
`devices_per_node` = that size (one host) and `collective` = "all_reduce", and turns each
row's `size` (bytes) into tokens as size / embedding_dim / 2: it assumes 2-byte
activations, as vLLM's bf16 and fp16 are. So one row per token count of Vidur's grid:
size = tokens x n_embd x 2, time = Dooly's prediction of one all_reduce call of
[tokens, n_embd] in ms (min = max = mean = median, std 0, as in mlp.csv). The first
column is the unnamed index Vidur's own files carry."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dooly.interop.vidur_format import STATS, write_vidur_csv

COLUMNS = ("rank", "num_workers", "size", "collective", "devices_per_node", "max_devices_per_node")
BYTES_PER_ELEMENT = 2   # Vidur's own size -> tokens rule


def network_header() -> list[str]:
    return [""] + [f"time_stats.all_reduce.{s}" for s in STATS] + list(COLUMNS)


def all_reduce_unit(pred, n_embd: int) -> str | None:
    """The all_reduce unit that reduces one [T, n_embd] activation (after the row-parallel
    o_proj and down_proj), the most frequent if several."""
    keys = [k for k, u in pred.units.items() if u.op == "vllm.all_reduce" and u.inputs
            and [str(v) if isinstance(v, str) else int(v) for v in u.inputs[0].shape()] == ["T", n_embd]]
    return max(keys, key=lambda k: (pred.counts.get(k, 0), k)) if keys else None


def network_rows(pred, key: str, tokens: list[int], n_embd: int, tp: int) -> tuple[list, int]:
    """(rows, rows whose fit gave <= 0 ms and were written as 0)."""
    model = pred.models[key]
    pts = [{"T": t} for t in tokens]
    if hasattr(model, "predict") and hasattr(model, "driver"):
        y = np.asarray(model.predict(pts), dtype=float).ravel()
    else:
        y = np.array([float(model.predict_one(p)) for p in pts])
    y = np.nan_to_num(y, nan=0.0)
    clamped = int((y <= 0).sum())
    rows = []
    for i, (t, ms) in enumerate(zip(tokens, np.clip(y, 0.0, None))):
        v = round(float(ms), 6)
        rows.append([i] + [0.0 if s == "std" else v for s in STATS]
                    + [0, tp, t * n_embd * BYTES_PER_ELEMENT, "all_reduce", tp, tp])
    return rows, clamped


def write_network(pred, out_dir: Path, tokens: list[int], n_embd: int, tp: int):
    """<out_dir>/all_reduce.csv; (path, rows, unit key, clamped rows), or None when the
    model has no all_reduce unit of [T, n_embd] (TP=1, or not swept with --tp)."""
    key = all_reduce_unit(pred, n_embd)
    if key is None:
        return None
    rows, clamped = network_rows(pred, key, tokens, n_embd, tp)
    path = write_vidur_csv(Path(out_dir) / "all_reduce.csv", network_header(), rows)
    return path, len(rows), key, clamped
