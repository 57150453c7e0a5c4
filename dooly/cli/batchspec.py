"""Batch descriptions for `dooly predict`: "prefill:512x2,decode:32@1024" or a JSON file.

prefill:Q[xN][@C]  N sequences (default 1) of Q new tokens over C cached (default 0)
decode:N@C         N sequences of one new token over C cached tokens
JSON file:         [[q, c], ...] or {"seqs": [[q, c], ...]}"""
from __future__ import annotations

import re
from pathlib import Path

from dooly.errors import DoolyInputError, read_json

_ITEM = re.compile(r"^(prefill|decode):(\d+)(?:x(\d+))?(?:@(\d+))?$")


def parse_batch(text: str) -> list[tuple[int, int]]:
    path = Path(text)
    if text.endswith(".json") or path.is_file():
        return _from_file(path)
    seqs: list[tuple[int, int]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = _ITEM.match(item)
        if not m:
            raise DoolyInputError("--batch", f"cannot parse {item!r} (expected prefill:Q[xN][@C] "
                                  "or decode:N@C)")
        kind, a, n, c = m.group(1), int(m.group(2)), m.group(3), int(m.group(4) or 0)
        if kind == "prefill":
            seqs += [(a, c)] * int(n or 1)
        else:
            if n:
                raise DoolyInputError("--batch", f"{item!r}: decode takes N@C, not x")
            seqs += [(1, c)] * a
    if not seqs or any(q < 1 for q, _ in seqs):
        raise DoolyInputError("--batch", "a batch needs at least one sequence with query length >= 1")
    return seqs


def _from_file(path: Path) -> list[tuple[int, int]]:
    data = read_json(path)
    seqs = data.get("seqs") if isinstance(data, dict) else data
    if not isinstance(seqs, list) or not seqs:
        raise DoolyInputError(path, "expected a non-empty list of [query, context] pairs", "seqs")
    out = []
    for i, s in enumerate(seqs):
        if (not isinstance(s, (list, tuple)) or len(s) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in s)
                or s[0] < 1 or s[1] < 0):
            raise DoolyInputError(path, f"item {i} must be [query>=1, context>=0] integers, got {s!r}",
                                  "seqs")
        out.append((s[0], s[1]))
    return out
