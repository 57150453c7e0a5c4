"""Request grids: about two points per octave (dense where latency bends at small
sizes, sparse where it is linear), bounded by the user's limits.

Token-driven units sweep T; per-sequence units sweep B; attention sweeps whole
batches of (query length, context length) pairs: prefill (several sequences, with
and without cached context), decode (batch x context) and mixed chunked-prefill
batches, the shapes vLLM's scheduler produces."""
from __future__ import annotations

from dataclasses import dataclass


def octave_grid(lo: int, hi: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... up to hi (hi itself included)."""
    out, x = [], 1
    while x <= hi:
        for v in (x, x * 3 // 2):
            if lo <= v <= hi and v not in out:
                out.append(v)
        x *= 2
    if hi not in out and hi >= lo:
        out.append(hi)
    return sorted(out)


@dataclass(frozen=True)
class GridLimits:
    max_tokens: int = 2048
    max_batch: int = 64
    max_context: int = 2048

    def __post_init__(self):
        for name in ("max_tokens", "max_batch", "max_context"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def token_points(lim: GridLimits) -> list[dict]:
    return [{"T": t} for t in octave_grid(1, lim.max_tokens)]


def seq_points(lim: GridLimits) -> list[dict]:
    return [{"B": b} for b in octave_grid(1, lim.max_batch)]


def padded_points(lim: GridLimits) -> list[dict]:
    """transformers engine: a padded [B, Q] batch."""
    pts = []
    for b in octave_grid(1, min(lim.max_batch, 16)):
        for q in octave_grid(1, lim.max_tokens):
            if b * q <= lim.max_tokens:
                pts.append({"B": b, "Q": q})
    return pts


def attention_points(lim: GridLimits) -> list[dict]:
    """Each point is a batch: {"seqs": [[query_len, context_len], ...]}."""
    pts: list[list[tuple[int, int]]] = []
    ctx = [c for c in octave_grid(16, lim.max_context) if c >= 16]
    coarse = ctx[::2] + ([ctx[-1]] if ctx and ctx[-1] not in ctx[::2] else [])
    # prefill: n sequences of q tokens, no cached context, and chunks on top of context
    for n in (1, 2, 4):
        for q in octave_grid(16, lim.max_tokens // n):
            if q <= lim.max_context:
                pts.append([(q, 0)] * n)
    for q in (64, 256, 1024):
        for c in coarse:
            if q <= lim.max_tokens and q + c <= lim.max_context:
                pts.append([(q, c)])
    # decode: B sequences of one token each over context c
    for b in octave_grid(1, lim.max_batch):
        for c in coarse:
            pts.append([(1, c)] * b)
    # mixed: a prefill chunk plus decodes, as chunked prefill schedules them
    for q in (128, 512):
        for b in (4, 16):
            for c in coarse[::2]:
                if q + b <= lim.max_tokens and b <= lim.max_batch and q + c <= lim.max_context:
                    pts.append([(q, 0)] + [(1, c)] * b)
    return [{"seqs": [list(s) for s in p]} for p in pts]


def points_for(driver: str, lim: GridLimits, symbols: set[str] | None = None) -> list[dict]:
    if driver == "attention":
        return attention_points(lim)
    if driver == "seqs":
        return seq_points(lim)
    if driver == "tokens":
        if symbols and "T" not in symbols:
            return padded_points(lim)
        return token_points(lim)
    return [{}]


def point_values(point: dict) -> dict:
    """Every request symbol's value at a grid point, so any unit's dims evaluate:
    flattened engines use T (and B), padded engines [B, Q]; attention points are
    batches of (query, context) pairs."""
    if "seqs" in point:
        seqs = point["seqs"]
        return {"T": sum(q for q, _ in seqs), "B": len(seqs), "Q": max(q for q, _ in seqs),
                "C": max(c for _, c in seqs)}
    v = {k: x for k, x in point.items() if k != "routing"}   # a MoE unit's distribution (dooly.routing)
    if "T" in v:
        v.setdefault("B", 1)
        v.setdefault("Q", v["T"])
    elif "Q" in v or "B" in v:
        v.setdefault("B", 1)
        v.setdefault("Q", 1)
        v["T"] = v["B"] * v["Q"]
    else:
        v.update(T=1, B=1, Q=1)
    v.setdefault("C", 0)
    return v


# -- adaptive grids -------------------------------------------------------------------
# A unit swept in full need not be measured at every grid point: where its latency is a
# straight line between two measured points, the points between them add nothing that
# interpolation (what the fitted unit model does) would not give.
COARSE_STEP = 4   # the first pass: every 4th grid point (two octaves apart) and both ends


def adaptive_todo(xs: list[float], measured: dict, tol_pct: float,
                  coarse_step: int = COARSE_STEP) -> list[int]:
    """Indices into the ascending candidates `xs` to measure next, most needed first;
    [] when the curve is resolved. `measured`: index -> latency (None for a point that
    failed: it is never asked for again, and refines nothing).

    Start coarse (every `coarse_step`-th candidate and the last); then, for each span
    between two measured neighbours, the candidate half-way is measured and compared
    with the straight line between them: within `tol_pct`, the span is resolved; beyond,
    both halves are refined in turn. The spans whose parent disagreed most come first.
    A pure function of the measurements, so a resumed sweep picks up where it stopped."""
    if tol_pct <= 0:
        raise ValueError(f"tol_pct: expected a positive tolerance, got {tol_pct!r}")
    n = len(xs)
    coarse = sorted(set(range(0, n, max(1, coarse_step))) | ({n - 1} if n else set()))
    todo = [i for i in coarse if i not in measured]
    if todo:
        return todo
    out: list[tuple[float, int]] = []
    stack = [(a, b, float("inf")) for a, b in zip(coarse, coarse[1:])]
    while stack:
        i, j, parent_err = stack.pop()
        if j - i < 2:
            continue
        m = (i + j) // 2
        if m not in measured:
            out.append((-parent_err, m))
            continue
        yi, yj, ym = measured.get(i), measured.get(j), measured[m]
        if yi is None or yj is None or ym is None or ym <= 0:
            err = float("inf")  # a failed neighbour: nothing to interpolate from
        else:
            line = yi + (yj - yi) * (xs[m] - xs[i]) / (xs[j] - xs[i])
            err = abs(line - ym) / ym * 100.0
        if err > tol_pct:
            stack += [(i, m, err), (m, j, err)]
    return [m for _, m in sorted(out)]


def adaptive_points(points: list[dict], measure, tol_pct: float, key=None,
                    coarse_step: int = COARSE_STEP) -> dict:
    """Run `adaptive_todo` to the end over `points` ordered by `key` (default: the single
    request value of a 1-D point): `measure(point)` -> latency (ms, or None when the point
    failed). Returns {index into the ordered points: latency} of what was measured."""
    key = key or (lambda p: float(next(iter(p.values()))))
    pts = sorted(points, key=key)
    xs = [key(p) for p in pts]
    got: dict = {}
    while True:
        todo = adaptive_todo(xs, got, tol_pct, coarse_step)
        if not todo:
            return {i: got[i] for i in sorted(got)}
        got[todo[0]] = measure(pts[todo[0]])
