"""Vidur's profiling grids (its profiling/utils and attention input rules, re-stated):
the num_tokens rows of mlp.csv and the (chunk, kv, batch) rows of attention.csv an
export writes, so Vidur finds the rows it would have profiled itself."""
from __future__ import annotations


def vidur_token_grid(max_tokens: int) -> list[int]:
    """Vidur's mlp num_tokens grid (profiling/utils get_num_tokens_to_profile), ascending."""
    space = ([1, 2, 4] + list(range(8, 1024, 8)) + list(range(1024, 2048 + 1, 16))
             + list(range(2048, 4096 + 1, 32)) + list(range(4096, 8192 + 1, 64))
             + list(range(8192, 16384 + 1, 128)) + list(range(16384, 32768 + 1, 256))
             + list(range(32768, 65536 + 1, 512)) + list(range(65536, 131072 + 1, 1024)))
    return sorted({t for t in space if t <= max_tokens})


def _chunk_grid(max_len: int) -> list[int]:
    space = (list(range(64, 128 + 1, 16)) + list(range(128, 1024 + 1, 32))
             + list(range(1024, 4096 + 1, 64)) + list(range(4096, 16384 + 1, 128))
             + list(range(16384, 65536 + 1, 256)))
    return sorted({c for c in space if c <= max_len})


def _seq_grid(max_len: int) -> list[int]:
    space = list(range(0, 1024 + 1, 32)) + list(range(1024, 4096 + 1, 64)) + list(range(4096, 65536 + 1, 256))
    return sorted({s for s in space if s < max_len})


def decode_batch_grid(max_batch_size: int) -> list[int]:
    return [b for b in list(range(1, 17)) + list(range(24, 1024 + 1, 8)) if b <= max_batch_size]


def vidur_attention_grid(max_model_len: int, max_batch_size: int = 128) -> list[tuple[int, int, int, bool]]:
    """(prefill_chunk_size, kv_cache_size, batch_size, is_prefill) rows, Vidur's validity rules
    (prefill: batch 1, chunk > 0, chunk + kv <= max_model_len; decode: chunk 0,
    0 < kv <= max_model_len), duplicates dropped."""
    rows: list[tuple[int, int, int, bool]] = []
    for c in _chunk_grid(max_model_len):
        rows += [(c, i * c, 1, True) for i in range(max_model_len // c) if c + i * c <= max_model_len]
    rows += [(s, 0, 1, True) for s in _seq_grid(max_model_len) if s > 0]
    kvs = [s for s in _seq_grid(max_model_len) if s > 0]
    rows += [(0, kv, b, False) for b in decode_batch_grid(max_batch_size) for kv in kvs]
    seen, out = set(), []
    for r in rows:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out
