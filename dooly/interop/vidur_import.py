"""Vidur profiling data in and out.

Import: `read_vidur_mlp(csv_path)` turns one of Vidur's `mlp.csv` files
(data/profiling/compute/<device>/<org>/<model>/mlp.csv) into Dooly data: one
Environment, the canonical Units of its ops, one Measurement per (row, op).

  * GEMMs become op "linear" units (attrs bias=False), input [T, K], weight [N, K]:
      attn_pre_proj   [T, n_embd]            x [(n_head + 2*n_kv_head)*head_dim/tp, n_embd]
      attn_post_proj  [T, n_embd/tp]         x [n_embd, n_embd/tp]
      mlp_up_proj     [T, n_embd]            x [n_expanded_embd*(2 if gated else 1)/tp, n_embd]
      mlp_down_proj   [T, n_expanded_embd/tp] x [n_embd, n_expanded_embd/tp]
    (head_dim = n_embd / n_head). Models with the same GEMM shape share a unit.
  * the other ops become "vidur.<op>" units with the shapes they work on
    (emb: token ids [T] + table [vocab/tp, n_embd]; norms and add: [T, n_embd];
    attn_rope: q [T, n_head*head_dim/tp], k [T, n_kv_head*head_dim/tp], positions [T];
    mlp_act: [T, n_expanded_embd*(2 if gated else 1)/tp] -> [T, n_expanded_embd/tp]).
    Vidur's GPT block (vidur/profiling/mlp/mlp_impl.py) times other kernels under the same
    names in a model without post_attention_layernorm (a parallel block, phi-2): its `add`
    sums three tensors (attention, MLP and residual: two kernels) and its input norm may
    be a LayerNorm (a post-attention norm is RMSNorm only); an ungated MLP's `mlp_act` is
    a GELU, a gated one's SiLU-and-mul. Those units carry attrs saying so (`parallel_block`,
    `act`), so they key, and form families, apart from the RMSNorm / two-input add / SiLU
    units they do not share a kernel with.
  * dtype float16 (Vidur profiles fp16); T is a REQUEST dim, the rest CONFIG ints.
  * Measurement point {"T": num_tokens}; median/mean/std straight from the CSV (ms);
    Vidur keeps no percentiles, so p10_ms = its min and p90_ms = its max; samples = 0
    (unknown). Only rows with num_tensor_parallel_workers == tp (default 1).
  * Environment: device from the directory (a100 -> "NVIDIA A100", a40, h100), kind
    cuda, engine "vidur-sarathi", version "vidur", backend "n/a", dtype float16,
    execution "imported".
  * An op whose columns are all absent is one the model lacks (phi-2 has no
    post_attention_layernorm) and is skipped; a partly present op is an error.
  * `import_vidur(root, store)` reads and checks every mlp.csv under root first
    (`read_vidur_dir`: a binary or non-UTF-8 file is a one-line error), then stores
    them (`store_vidur`), so a bad file leaves the store untouched.

Vidur's file layout (its op names, column order and CSV writer) is in
dooly.interop.vidur_format, shared with the exporters.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path

from dooly.env import Environment, Measurement
from dooly.errors import DoolyInputError, quoted
from dooly.interop.vidur_format import (DEVICE_DIRS, DTYPE, MLP_CONFIG_COLUMNS, STATS, VIDUR_MLP_OPS,
                                        time_columns)
from dooly.symbolic.labels import DimLabel, Label
from dooly.unit import TensorSig, Unit, linear_unit


def _T() -> DimLabel:
    return DimLabel("T", Label.REQUEST)


def _c(v: int) -> DimLabel:
    return DimLabel(int(v), Label.CONFIG)


def _sig(*dims, dtype: str = DTYPE) -> TensorSig:
    return TensorSig(tuple(_T() if d == "T" else _c(d) for d in dims), dtype)


def _linear(K: int, N: int) -> Unit:
    return linear_unit(K, N, DTYPE)


def _pointwise(op: str, inputs: tuple, outputs: tuple, attrs: tuple = ()) -> Unit:
    return Unit(op=f"vidur.{op}", inputs=inputs, outputs=outputs, attrs=attrs)


def post_attn_norm(row: Mapping) -> bool:
    """Whether a model's block has a post-attention norm: an mlp.csv row of a model
    without one has no post_attention_layernorm columns; a mapping of config columns
    only (no timings at all) is taken to have one, as Vidur's Llama-style models do."""
    timed = [k for k in row if str(k).startswith("time_stats.")]
    return not timed or any(str(k).startswith("time_stats.post_attention_layernorm.") for k in timed)


def vidur_units(config: Mapping, tp: int = 1, has_post_attn_norm: bool | None = None) -> dict[str, Unit]:
    """Vidur mlp op -> Dooly Unit for one model config (n_head, n_kv_head, n_embd,
    n_expanded_embd, vocab_size, use_gated_mlp) at tensor parallelism `tp`.
    `has_post_attn_norm`: whether the block has a post-attention norm (None: read from
    `config`, which may be a whole mlp.csv row, by `post_attn_norm`)."""
    n_head, n_kv = int(config["n_head"]), int(config["n_kv_head"])
    d, ff, vocab = int(config["n_embd"]), int(config["n_expanded_embd"]), int(config["vocab_size"])
    gated = _bool(config["use_gated_mlp"])
    if has_post_attn_norm is None:
        has_post_attn_norm = post_attn_norm(config)
    parallel = () if has_post_attn_norm else (("parallel_block", True),)
    hd = d // n_head
    up = ff * (2 if gated else 1)
    hidden = _sig("T", d)
    return {
        "emb": _pointwise("emb", (_sig("T", dtype="int64"), _sig(vocab // tp, d)), (hidden,)),
        "input_layernorm": _pointwise("input_layernorm", (hidden, _sig(d)), (hidden,), parallel),
        "attn_pre_proj": _linear(d, (n_head + 2 * n_kv) * hd // tp),
        "attn_rope": _pointwise("attn_rope",
                                (_sig("T", dtype="int64"), _sig("T", n_head * hd // tp),
                                 _sig("T", n_kv * hd // tp)),
                                (_sig("T", n_head * hd // tp), _sig("T", n_kv * hd // tp))),
        "attn_post_proj": _linear(d // tp, d),
        "post_attention_layernorm": _pointwise("post_attention_layernorm", (hidden, _sig(d)), (hidden,)),
        "mlp_up_proj": _linear(d, up // tp),
        "mlp_act": _pointwise("mlp_act", (_sig("T", up // tp),), (_sig("T", ff // tp),),
                              () if gated else (("act", "gelu"),)),
        "mlp_down_proj": _linear(ff // tp, d),
        # a parallel block adds attention, MLP and residual in one timed region
        "add": _pointwise("add", (hidden,) * (3 if parallel else 2), (hidden,), parallel),
    }


def _bool(v) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1", "yes"):
        return True
    if s in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean: {v!r}")


def device_from_path(path: str | os.PathLike) -> str | None:
    for part in reversed(Path(path).resolve().parts):
        if part.lower() in DEVICE_DIRS:
            return DEVICE_DIRS[part.lower()]
    return None


def vidur_environment(device_name: str) -> Environment:
    return Environment(device_name=device_name, device_kind="cuda", engine="vidur-sarathi",
                       engine_version="vidur", backend="n/a", dtype=DTYPE, execution="imported",
                       cache="warm")  # Vidur times repeated calls on the same inputs


def model_name_from_path(path: str | os.PathLike) -> str:
    """"<org>/<model>" from .../<device>/<org>/<model>/mlp.csv."""
    p = Path(path)
    return f"{p.parent.parent.name}/{p.parent.name}"


def read_vidur_mlp(csv_path: str | os.PathLike, tp: int = 1, device_name: str | None = None
                   ) -> tuple[Environment, list[Unit], list[Measurement]]:
    """One Vidur mlp.csv -> (environment, units, measurements); see the module doc.
    Raises DoolyInputError naming the file and column for malformed input."""
    path = Path(csv_path)
    device = device_name or device_from_path(path)
    if not device:
        raise DoolyInputError(path, "cannot tell the device from the path (no directory named "
                                    f"{', '.join(sorted(DEVICE_DIRS))}); pass --device "
                                    f"{'|'.join(sorted(DEVICE_DIRS))}")
    env = vidur_environment(device)
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise DoolyInputError(path, f"cannot read: {e.strerror or e}") from None
    try:
        with f:
            ops, rows = _read_mlp_rows(path, f)
    except (UnicodeDecodeError, csv.Error) as e:  # a binary file, another encoding, NUL bytes
        raise DoolyInputError(path, f"not a UTF-8 CSV file ({e.__class__.__name__}: {e})") from None
    return _mlp_data(path, env, ops, rows, tp)


def _read_mlp_rows(path: Path, f) -> tuple[list[str], list[dict]]:
    """The ops present and the rows of an open mlp.csv; a file whose op
    columns are missing is a one-line error naming the column."""
    reader = csv.DictReader(f)
    header = reader.fieldnames
    if not header:
        raise DoolyInputError(path, "empty file: no header row")
    for col in MLP_CONFIG_COLUMNS:
        if col not in header:
            raise DoolyInputError(path, "missing column", field=col)
    # An op a model lacks has no columns at all (phi-2: no post_attention_layernorm);
    # an op with some of its columns must have all five.
    ops = [op for op in VIDUR_MLP_OPS if any(c in header for c in time_columns([op]))]
    if not ops:
        raise DoolyInputError(path, "missing column", field=time_columns(VIDUR_MLP_OPS[:1])[0])
    for col in time_columns(ops):
        if col not in header:
            raise DoolyInputError(path, "missing column", field=col)
    return ops, list(reader)


def _mlp_data(path: Path, env: Environment, ops: list[str], rows: list[dict], tp: int
              ) -> tuple[Environment, list[Unit], list[Measurement]]:
    stamp = path.stat().st_mtime
    units: dict[str, Unit] = {}
    measurements: list[Measurement] = []
    cache: dict[tuple, dict[str, Unit]] = {}
    for lineno, row in enumerate(rows, start=2):
        def num(col: str, cast=float):
            v = row.get(col)
            try:
                return cast(v) if cast is not bool else _bool(v)
            except (TypeError, ValueError):
                kind = {int: "an integer", float: "a number"}.get(cast, "a boolean")
                raise DoolyInputError(path, f"line {lineno}: not {kind}: {quoted(v)}",
                                      field=col) from None
        workers = num("num_tensor_parallel_workers", int)
        if workers <= 0:
            raise DoolyInputError(path, f"line {lineno}: must be positive, got {workers}",
                                  field="num_tensor_parallel_workers")
        if workers != tp:
            continue
        cfg = tuple(num(c, bool if c == "use_gated_mlp" else int) for c in MLP_CONFIG_COLUMNS[:6])
        for col, v in zip(MLP_CONFIG_COLUMNS[:5], cfg):
            if v <= 0:
                raise DoolyInputError(path, f"line {lineno}: must be positive, got {v}", field=col)
        if cfg not in cache:
            cache[cfg] = vidur_units(dict(zip(MLP_CONFIG_COLUMNS[:6], cfg)), tp,
                                     "post_attention_layernorm" in ops)
        T = num("num_tokens", int)
        if T <= 0:
            raise DoolyInputError(path, f"line {lineno}: num_tokens must be positive, got {T}",
                                  field="num_tokens")
        for op in ops:
            unit = cache[cfg][op]
            units.setdefault(unit.key, unit)
            st = {s: num(f"time_stats.{op}.{s}") for s in STATS}
            if not (math.isfinite(st["median"]) and st["median"] >= 0):
                raise DoolyInputError(path, f"line {lineno}: not a latency (finite, >= 0): "
                                      f"{st['median']!r}", field=f"time_stats.{op}.median")
            measurements.append(Measurement(unit_key=unit.key, env_key=env.key, point={"T": T},
                                            median_ms=st["median"], p10_ms=st["min"], p90_ms=st["max"],
                                            mean_ms=st["mean"], std_ms=st["std"], samples=0,
                                            timestamp=stamp))
    return env, list(units.values()), measurements


def find_vidur_mlp(root: str | os.PathLike) -> list[Path]:
    return sorted(Path(root).rglob("mlp.csv"))


def read_vidur_dir(root: str | os.PathLike, tp: int = 1, device_name: str | None = None
                   ) -> list[tuple[Environment, list[Unit], list[Measurement]]]:
    """Every mlp.csv under `root`, read and checked: one bad file is a one-line error
    before anything is stored."""
    files = find_vidur_mlp(root)
    if not files:
        raise DoolyInputError(root, "no mlp.csv found under this directory")
    return [read_vidur_mlp(p, tp=tp, device_name=device_name) for p in files]


def store_vidur(parsed: list[tuple[Environment, list[Unit], list[Measurement]]], store) -> dict:
    """Write read_vidur_dir's result into a store-like object (duck-typed:
    add_environment(env), add_unit(unit), add_measurement(m)). Returns counts."""
    n_units = n_meas = 0
    seen_env, seen_unit = set(), set()
    for env, units, meas in parsed:
        if env.key not in seen_env:
            store.add_environment(env)
            seen_env.add(env.key)
        for u in units:
            if u.key not in seen_unit:
                store.add_unit(u)
                seen_unit.add(u.key)
                n_units += 1
        for m in meas:
            store.add_measurement(m)
        n_meas += len(meas)
    return {"files": len(parsed), "environments": len(seen_env), "units": n_units, "measurements": n_meas}


def import_vidur(root: str | os.PathLike, store, tp: int = 1, device_name: str | None = None) -> dict:
    """Read every mlp.csv under `root` (all checked first), then store them. Returns counts."""
    return store_vidur(read_vidur_dir(root, tp, device_name), store)
