"""Export Dooly predictions as Vidur profiling CSVs (`mlp.csv`, `attention.csv`), so a
Dooly DB can stand in for Vidur's GPU profiling (data/profiling/compute/<dev>/<model>/).

    from dooly.interop.vidur_export import export_vidur
    res = export_vidur("config.json", "latency.db", "out/")   # -> VidurExport

What is written
  * mlp.csv: `dooly.interop.vidur_format.mlp_header()` verbatim; one row per num_tokens of Vidur's
    grid (`vidur_token_grid`: [1,2,4] + 8..1016 s8, 1024..2048 s16, 2048..4096 s32, ...,
    capped at max_tokens), num_tensor_parallel_workers = 1. Rows ascending in num_tokens
    (Vidur writes them descending; it reads them order-free).
  * attention.csv: `dooly.interop.vidur_format.attention_header()` verbatim. Rows on Vidur's attention
    grid (`vidur_attention_grid`): chunked prefill (batch 1, chunk in Vidur's chunk grid
    64..max_model_len, kv_cache_size = 0, chunk, 2*chunk, ... with chunk+kv <= max_model_len),
    full prefill (batch 1, length in Vidur's sequence grid, kv 0), and decode
    (prefill_chunk_size 0, kv_cache_size in Vidur's sequence grid 32..<max_model_len, batch
    1..16 step 1 then 24..max_batch_size step 8 -- coarser than Vidur's step 1; Vidur fits a
    regression on [batch_size, kv_cache_size] so the coarse grid only thins its training set).
    block_size is written as given (default 16, Vidur's scheduler default: Vidur keeps only
    rows whose block_size equals its replica scheduler's); attention_backend as
    "AttentionBackend.<Dooly backend>" (Vidur does not filter on it).
  * Times in milliseconds (Dooly's unit). min = max = mean = median = the prediction and
    std = 0: a prediction carries no spread (the unit's CV MAPE is a fit error, not run-to-run
    variation, and for some units it is large enough to make a fake spread misleading).

Which unit stands for which Vidur op: `dooly.interop.vidur_ops`; Vidur's grids:
`dooly.interop.vidur_grid`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dooly.errors import DoolyInputError
from dooly.interop.vidur_grid import vidur_attention_grid, vidur_token_grid
from dooly.interop.vidur_format import (STATS, VIDUR_ATTENTION_OPS, VIDUR_MLP_OPS, attention_header, mlp_header,
                                        write_vidur_csv)
from dooly.interop.vidur_ops import ModelDims, OpSource, map_units, model_dims

DEFAULT_BLOCK_SIZE = 16


# ---------------------------------------------------------------- predictions

def _predict_many(model, points: list[dict]) -> np.ndarray:
    if not points:
        return np.zeros(0)
    if hasattr(model, "predict") and hasattr(model, "driver"):
        y = np.asarray(model.predict(points), dtype=float).ravel()
    else:
        y = np.array([float(model.predict_one(p)) for p in points])
    return np.nan_to_num(y, nan=0.0)


def _stats(op: str, ms: float) -> dict:
    v = round(float(ms), 6)
    return {f"time_stats.{op}.{s}": (0.0 if s == "std" else v) for s in STATS}


@dataclass
class VidurExport:
    mlp_path: Path
    attention_path: Path
    mlp_rows: int
    attention_rows: int
    dims: ModelDims
    sources: dict[str, OpSource]
    env_label: str = ""
    unexported: list[str] = field(default_factory=list)   # Dooly units Vidur has no column for
    extrapolated: dict[str, str] = field(default_factory=dict)  # op -> "grid to X, measured to Y"
    clamped: dict[str, int] = field(default_factory=dict)       # op -> rows whose fit gave <= 0 (written 0)
    refitted: list[str] = field(default_factory=list)  # stored fits missing or stale, fitted at load
    network_path: Path | None = None   # all_reduce.csv, under --tp N
    network_rows: int = 0

    def zero_ops(self) -> list[OpSource]:
        return [s for s in self.sources.values() if s.unit_key is None]


def _extrapolation_note(model, points: list[dict], what: str) -> str | None:
    """How far a grid reaches past what the unit's fit saw, or None."""
    if not hasattr(model, "extrapolates") or not points:
        return None
    n = sum(bool(model.extrapolates(pt)) for pt in points)
    if not n:
        return None
    x_max = list(getattr(model, "x_max", []) or [])
    seen = f" (measured up to {what} = {float(x_max[0]):g})" if len(x_max) == 1 else ""
    return f"{n} of {len(points)} rows outside the measured range{seen}"


class _Columns:
    """Predictions for one CSV's columns, with what they needed: rows a fit drove to 0 or
    below (Vidur gets 0 there, as Predictor.predict does; a fit can reach 0 outside its
    data and some estimators clip at 0 themselves), and grids past the measured range."""

    def __init__(self, models: Mapping):
        self.models = models
        self.notes: dict[str, str] = {}
        self.clamped: dict[str, int] = {}

    def predict(self, op: str, key: str, points: list[dict], what: str) -> np.ndarray:
        y = _predict_many(self.models[key], points)
        if (y <= 0).any():
            self.clamped[op] = self.clamped.get(op, 0) + int((y <= 0).sum())
        n = _extrapolation_note(self.models[key], points, what)
        if n:
            self.notes[op] = n
        return np.clip(y, 0.0, None)


def _mlp_rows(src: dict, dims: ModelDims, cols: _Columns, max_tokens: int) -> list[dict]:
    grid = vidur_token_grid(max_tokens)
    pts = [{"T": t} for t in grid]
    vals = {op: np.zeros(len(grid)) if src[op].unit_key is None
            else cols.predict(op, src[op].unit_key, pts, "T") for op in VIDUR_MLP_OPS}
    cfg_cols = {"n_head": dims.n_head, "n_kv_head": dims.n_kv_head, "n_embd": dims.n_embd,
                "n_expanded_embd": dims.n_expanded_embd, "vocab_size": dims.vocab_size,
                "use_gated_mlp": dims.use_gated_mlp, "num_tensor_parallel_workers": dims.tp}
    rows = []
    for i, t in enumerate(grid):
        row = {}
        for op in VIDUR_MLP_OPS:
            row.update(_stats(op, vals[op][i]))
        row.update(cfg_cols, num_tokens=t)
        rows.append(row)
    return rows


def _attention_values(src: dict, agrid: list, cols: _Columns) -> dict[str, np.ndarray]:
    """Per attention op, its prediction on every grid row: attention on the batch of
    (query, kv) pairs, the KV write at T = chunk (prefill) / batch (decode)."""
    attn_pts = [{"seqs": [[c, kv]]} if pre else {"seqs": [[1, kv]] * b} for c, kv, b, pre in agrid]
    kv_pts = [{"T": c if pre else b} for c, kv, b, pre in agrid]
    is_pre = np.array([r[3] for r in agrid], dtype=bool)
    vals: dict[str, np.ndarray] = {}
    for op in VIDUR_ATTENTION_OPS:
        k = src[op].unit_key
        if k is None:
            vals[op] = np.zeros(len(agrid))
        elif op == "attn_kv_cache_save":
            vals[op] = cols.predict(op, k, kv_pts, "T")
        else:
            sel = is_pre if op == "attn_prefill" else ~is_pre
            v = np.zeros(len(agrid))
            v[sel] = cols.predict(op, k, [pt for pt, s in zip(attn_pts, sel) if s], "")
            vals[op] = v
    return vals


def _attention_rows(p, src: dict, dims: ModelDims, cols: _Columns, max_model_len: int,
                    max_batch_size: int, block_size: int) -> list[dict]:
    agrid = vidur_attention_grid(max_model_len, max_batch_size)
    vals = _attention_values(src, agrid, cols)
    akey = src["attn_decode"].unit_key
    backend = (p.units[akey].attr.get("backend") if akey else None) or getattr(p.env, "backend", "") or "unknown"
    rows = []
    for i, (c, kv, b, pre) in enumerate(agrid):
        row = {}
        for op in VIDUR_ATTENTION_OPS:
            # attn_prefill only on prefill rows, attn_decode only on decode rows (as Vidur)
            ms = vals[op][i]
            if (op == "attn_prefill" and not pre) or (op == "attn_decode" and pre):
                ms = 0.0
            row.update(_stats(op, ms))
        row.update(n_embd=dims.n_embd, n_q_head=dims.n_head, n_kv_head=dims.n_kv_head,
                   block_size=block_size, num_tensor_parallel_workers=dims.tp, max_model_len=max_model_len,
                   batch_size=b, prefill_chunk_size=c, kv_cache_size=kv, is_prefill=pre,
                   attention_backend=f"AttentionBackend.{str(backend).upper()}")
        rows.append(row)
    return rows


def _checked_out_dir(out: str, **limits: tuple[int, int]) -> Path:
    """The output folder, after checking every integer option against its floor."""
    for name, (v, lo) in limits.items():
        if not isinstance(v, int) or v < lo:
            raise DoolyInputError(name, f"expected an integer >= {lo}, got {v!r}")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise DoolyInputError(out_dir, "exists and is not a directory", "--out")
    return out_dir


def export_vidur(config: str, db: str, out: str, max_tokens: int = 4096, max_model_len: int = 4096,
                 engine: str | None = None, env: str | None = None, max_batch_size: int = 128,
                 block_size: int = DEFAULT_BLOCK_SIZE, predictor=None,
                 progress: Callable[[str], None] | None = None, tp: int = 1) -> VidurExport:
    """Write <out>/mlp.csv and <out>/attention.csv for `config` from the DB `db`; with
    `tp` > 1 (a `dooly sweep --tp N` inventory) the rows are num_tensor_parallel_workers = N
    and <out>/all_reduce.csv is Vidur's network profile (dooly.interop.vidur_network)."""
    out_dir = _checked_out_dir(out, **{
        "--max-tokens": (max_tokens, 1), "--max-model-len": (max_model_len, 64),
        "--max-batch-size": (max_batch_size, 1), "--block-size": (block_size, 1)})
    from dooly.config import load_config
    cfg = load_config(config)
    dims = model_dims(cfg.raw, cfg.path)
    dims.tp = tp
    if predictor is None:
        if not Path(db).is_file():
            raise DoolyInputError(db, "file not found", "--db")
        from dooly.predict import Predictor
        predictor = Predictor.load(config, db, engine, env, tp=tp)
    p = predictor
    src = map_units(p, dims)
    mapped = {s.unit_key for s in src.values() if s.unit_key}
    if not mapped:
        raise DoolyInputError(db, f"no unit of {cfg.name} in environment {p.env.label()} maps to a "
                                  "Vidur op (export needs a vLLM-engine sweep: dooly sweep --engine vllm)")
    cols = _Columns(p.models)
    mlp_rows = _mlp_rows(src, dims, cols, max_tokens)
    mlp_path = write_vidur_csv(out_dir / "mlp.csv", mlp_header(), mlp_rows)
    if progress:
        progress(f"mlp.csv: {len(mlp_rows)} rows")
    attn_rows = _attention_rows(p, src, dims, cols, max_model_len, max_batch_size, block_size)
    attn_path = write_vidur_csv(out_dir / "attention.csv", attention_header(), attn_rows)
    if progress:
        progress(f"attention.csv: {len(attn_rows)} rows")
    network = None
    if tp > 1:
        from dooly.interop.vidur_network import write_network
        network = write_network(p, out_dir, vidur_token_grid(max_tokens), dims.n_embd, tp)
        if network:
            mapped.add(network[2])
            if network[3]:
                cols.clamped["all_reduce"] = network[3]
    unexported = sorted(f"{k} ({u.op}{', ' + u.attr['role'] if u.attr.get('role') else ''})"
                        for k, u in p.units.items() if k not in mapped)
    return VidurExport(mlp_path, attn_path, len(mlp_rows), len(attn_rows), dims, src,
                       p.env.label(), unexported, cols.notes, cols.clamped,
                       list(getattr(p, "refitted", [])),
                       network[0] if network else None, network[1] if network else 0)
