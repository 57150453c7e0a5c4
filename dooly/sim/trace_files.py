"""Request lengths from files: ShareGPT JSON (the first human turn and its reply, in words
times TOKENS_PER_WORD, or explicit `prompt_len` / `output_len`) and CSV traces in the
Splitwise / Vidur layout (`num_prefill_tokens`, `num_decode_tokens`, optional
`arrived_at`). A bad row is one DoolyInputError naming the file, the row and the column."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from dooly.errors import DoolyInputError, quoted

# ShareGPT text is not tokenized here; ~1.3 tokens per whitespace word is the usual
# rule of thumb for BPE tokenizers on English chat text.
TOKENS_PER_WORD = 1.3
MAX_LENGTH = 1 << 27       # tokens: config.py's bound on any model's length


def _length(path: Path, raw: object, field: str, where: str) -> int:
    """A token count from a file: a non-negative integer (12 and 12.0 are fine, 12.5 not)."""
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past 1e308
        raise DoolyInputError(path, f"{where}: not a number: {quoted(raw)}", field=field) from None
    if isinstance(raw, bool) or not value.is_integer():
        raise DoolyInputError(path, f"{where}: not an integer: {quoted(raw)}", field=field)
    if value < 0:
        raise DoolyInputError(path, f"{where}: negative length {quoted(raw)}", field=field)
    return int(min(value, 2 * MAX_LENGTH))  # any longer is as impossible a request


def load_sharegpt(path: str | Path) -> list[tuple[int, int]]:
    """(prompt_len, output_len) per conversation: the first human turn and the reply that
    follows it. Entries with explicit integer `prompt_len`/`output_len` keys use those."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DoolyInputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DoolyInputError(path, f"cannot read: {err}") from None
    except json.JSONDecodeError as err:
        raise DoolyInputError(path, f"invalid JSON at line {err.lineno}: {err.msg}") from None
    except (ValueError, RecursionError) as err:  # a 5,000-digit number, deep nesting
        raise DoolyInputError(path, f"invalid JSON: {str(err)[:80]}") from None
    if not isinstance(data, list):
        raise DoolyInputError(path, "expected a JSON list of conversations")
    out = []
    for i, entry in enumerate(data):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            raise DoolyInputError(path, f"{where}: expected an object")
        if "prompt_len" in entry or "output_len" in entry:
            for key in ("prompt_len", "output_len"):
                if key not in entry:
                    raise DoolyInputError(path, f"{where}: missing", field=key)
            out.append((_length(path, entry["prompt_len"], "prompt_len", where),
                        _length(path, entry["output_len"], "output_len", where)))
            continue
        turns = entry.get("conversations")
        if not isinstance(turns, list):
            raise DoolyInputError(path, f"{where}: missing or not a list", field="conversations")
        texts = []
        for turn in turns:
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise DoolyInputError(path, f"{where}: turn without a string 'value'",
                                      field="conversations")
            texts.append(turn["value"])
        if len(texts) < 2:  # no reply to measure, as vLLM's ShareGPT sampler skips them
            continue
        out.append(tuple(int(len(t.split()) * TOKENS_PER_WORD + 0.5) for t in texts[:2]))
    return out


def load_trace_csv(path: str | Path, limit: int | None = None) -> list[tuple[float | None, int, int]]:
    """(arrived_at or None, prefill, decode) per row; `arrived_at` is optional. Reads at
    most `limit` rows."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            for col in ("num_prefill_tokens", "num_decode_tokens"):
                if col not in header:
                    raise DoolyInputError(path, f"missing column (header: {quoted(header)})", field=col)
            timed = "arrived_at" in header
            rows = []
            for line, row in enumerate(reader, start=2):
                if limit is not None and len(rows) >= limit:
                    break
                rows.append(_trace_row(path, row, f"row {line}", timed))
    except FileNotFoundError:
        raise DoolyInputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DoolyInputError(path, f"cannot read: {err}") from None
    return rows


def _trace_row(path: Path, row: dict, where: str, timed: bool) -> tuple[float | None, int, int]:
    t = None
    if timed:
        try:
            t = float(row["arrived_at"])
        except (TypeError, ValueError):
            t = math.nan
        if not math.isfinite(t) or t < 0:
            raise DoolyInputError(path, f"{where}: bad time {quoted(row['arrived_at'])}",
                                  field="arrived_at")
    return (t, _length(path, row["num_prefill_tokens"], "num_prefill_tokens", where),
            _length(path, row["num_decode_tokens"], "num_decode_tokens", where))
