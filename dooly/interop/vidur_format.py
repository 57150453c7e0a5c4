"""Vidur's profiling file layout, shared by the importer (dooly.interop.vidur_import) and
the exporters (vidur_export, vidur_network): its op names, the statistics columns per op
(`time_stats.<op>.<stat>`), the config columns, the device directories, and a CSV writer
that checks every row against the header."""
from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

VIDUR_MLP_OPS = ("emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
                 "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
VIDUR_GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
VIDUR_ATTENTION_OPS = ("attn_input_reshape", "attn_decode", "attn_output_reshape", "attn_prefill",
                       "attn_kv_cache_save")
STATS = ("min", "max", "mean", "median", "std")
MLP_CONFIG_COLUMNS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp",
                      "num_tokens", "num_tensor_parallel_workers")
ATTENTION_CONFIG_COLUMNS = ("n_embd", "n_q_head", "n_kv_head", "block_size", "num_tensor_parallel_workers",
                            "max_model_len", "batch_size", "prefill_chunk_size", "kv_cache_size",
                            "is_prefill", "attention_backend")
DEVICE_DIRS = {"a100": "NVIDIA A100", "a40": "NVIDIA A40", "h100": "NVIDIA H100"}
DTYPE = "float16"


def time_columns(ops: Iterable[str]) -> list[str]:
    return [f"time_stats.{op}.{s}" for op in ops for s in STATS]


def mlp_header() -> list[str]:
    return time_columns(VIDUR_MLP_OPS) + list(MLP_CONFIG_COLUMNS)


def attention_header() -> list[str]:
    return time_columns(VIDUR_ATTENTION_OPS) + list(ATTENTION_CONFIG_COLUMNS)


def write_vidur_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable) -> Path:
    """Write rows (dicts keyed by column, missing -> "", or sequences in header order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = list(header)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, row in enumerate(rows):
            if isinstance(row, Mapping):
                unknown = set(row) - set(header)
                if unknown:
                    raise ValueError(f"rows[{i}]: columns not in the header: {sorted(unknown)}")
                w.writerow(["" if row.get(c) is None else row.get(c) for c in header])
            else:
                row = list(row)
                if len(row) != len(header):
                    raise ValueError(f"rows[{i}]: {len(row)} values for {len(header)} columns")
                w.writerow(row)
    return path
