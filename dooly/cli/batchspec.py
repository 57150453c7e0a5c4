"""Batch descriptions for `dooly predict`: "prefill:512x2,decode:32@1024" or "@FILE.json".

prefill:Q[xN][@C]  N sequences (default 1) of Q new tokens over C cached (default 0)
decode:N@C         N sequences of one new token over C cached tokens
@FILE.json         [[q, c], ...] or {"seqs": [[q, c], ...]}

A spec is never looked up as a path: only `@` names a file. A batch holds at most
MAX_SEQS sequences and no sequence is longer (q + c) than `max_len`, the model's maximum
length when the caller knows the model; the counts are checked before anything is
expanded, so `prefill:16x1000000000` is refused at once."""
from __future__ import annotations

import re
from pathlib import Path

from dooly.errors import DoolyInputError, quoted, read_json

MAX_SEQS = 65536             # sequences in one batch: far above any engine's max_num_seqs
MAX_LEN = 1 << 27            # a sequence's length when no model is given (config.py's bound)
MAX_FILE_BYTES = 16 << 20    # a batch file of MAX_SEQS pairs is ~1 MB
_ITEM = re.compile(r"^(prefill|decode):(\d+)(?:x(\d+))?(?:@(\d+))?$")


def parse_batch(text: str, max_len: int | None = None) -> list[tuple[int, int]]:
    """[(query_len, context_len), ...] from a spec or `@file`, or a DoolyInputError."""
    if text.startswith("@"):
        return _from_file(Path(text[1:]), max_len or MAX_LEN)
    limit = max_len or MAX_LEN
    counts: list[tuple[int, int, int]] = []  # (n, q, c), expanded once all are checked
    total = 0
    for item in filter(None, (s.strip() for s in text.split(","))):
        n, q, c = _item(item)
        total += n
        if total > MAX_SEQS:
            raise DoolyInputError("--batch", f"more than {MAX_SEQS:,} sequences in one batch")
        if q + c > limit:
            raise DoolyInputError("--batch", f"{quoted(item, 60)}: a sequence of {q + c:,} tokens "
                                  f"(query + context) is beyond the model's maximum length {limit:,}")
        counts.append((n, q, c))
    if not counts:
        raise DoolyInputError("--batch", "a batch needs at least one sequence (e.g. prefill:512x2,"
                              "decode:32@1024, or @FILE.json)")
    return [(q, c) for n, q, c in counts for _ in range(n)]


def _item(item: str) -> tuple[int, int, int]:
    m = _ITEM.match(item)
    if not m:
        raise DoolyInputError("--batch", f"cannot parse {quoted(item, 60)} (expected prefill:Q[xN][@C], "
                              "decode:N@C or @FILE.json)")
    if any(g is not None and len(g) > 18 for g in m.groups()[1:]):
        raise DoolyInputError("--batch", f"{quoted(item, 60)}: a number with more than 18 digits")
    kind, a, n, c = m.group(1), int(m.group(2)), m.group(3), int(m.group(4) or 0)
    if kind == "decode":
        if n:
            raise DoolyInputError("--batch", f"{quoted(item, 60)}: decode takes N@C, not x")
        n, q = a, 1
    else:
        n, q = int(n or 1), a
    if n < 1 or q < 1:
        raise DoolyInputError("--batch", f"{quoted(item, 60)}: needs at least one sequence with "
                              "query length >= 1")
    return n, q, c


def _from_file(path: Path, limit: int) -> list[tuple[int, int]]:
    if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
        raise DoolyInputError(path, f"larger than {MAX_FILE_BYTES >> 20} MB: not a batch file")
    data = read_json(path)
    seqs = data.get("seqs") if isinstance(data, dict) else data
    if not isinstance(seqs, list) or not seqs:
        raise DoolyInputError(path, "expected a non-empty list of [query, context] pairs", "seqs")
    if len(seqs) > MAX_SEQS:
        raise DoolyInputError(path, f"{len(seqs):,} sequences: more than {MAX_SEQS:,} in one batch",
                              "seqs")
    out = []
    for i, s in enumerate(seqs):
        if (not isinstance(s, (list, tuple)) or len(s) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in s)
                or s[0] < 1 or s[1] < 0):
            raise DoolyInputError(path, f"item {i} must be [query>=1, context>=0] integers, "
                                  f"got {quoted(s, 60)}", "seqs")
        if s[0] + s[1] > limit:
            raise DoolyInputError(path, f"item {i}: a sequence of {s[0] + s[1]:,} tokens is beyond "
                                  f"the model's maximum length {limit:,}", "seqs")
        out.append((s[0], s[1]))
    return out
