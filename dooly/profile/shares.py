"""A unit's share of its model's units at a check point, from what the DB holds now: the
step tolerance of a check (dooly.fit.checks, `dooly sweep --families --step-tolerance`)
weighs the unit's check error by it.

The share is an upper bound. Its numerator is the unit's own measured check point times
the times a model runs it; its denominator adds the other units of that model, each only
where the DB says what it costs at the point's batch without fitting anything: a one-axis
unit (tokens or sequences) with two or more ok points, read off the log-log line between
them, held flat above its largest point and scaled down in proportion below its smallest
(a latency with a launch floor never falls faster than that). Units it cannot read
(attention batches, units not swept yet) count zero, so a unit judged before the rest of
its model is swept is weighed as most of the step. Over the models that run the unit, the
largest share is kept."""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from dooly.env import Measurement


def batch_of(point: dict) -> tuple[float, float] | None:
    """(tokens, sequences) of the step a check point stands for: {"T": t} one prefill of t
    tokens, {"B": b} b decodes, {"seqs": [[q, c], ...]} that batch; None for another point."""
    if "T" in point:
        return float(point["T"]), 1.0
    if "B" in point:
        return float(point["B"]), float(point["B"])
    if "seqs" in point:
        return float(sum(int(q) for q, _ in point["seqs"])), float(len(point["seqs"]))
    return None


def _curve(rows: Iterable[Measurement]) -> tuple[np.ndarray, np.ndarray] | None:
    """log x and log ms of a one-axis unit's ok points (None: fewer than two)."""
    pts = sorted((float(next(iter(m.point.values()))), m.median_ms) for m in rows
                 if m.status == "ok" and m.median_ms > 0 and len(m.point) == 1
                 and isinstance(next(iter(m.point.values())), (int, float)))
    if len({x for x, _ in pts}) < 2 or pts[0][0] <= 0:
        return None
    return np.log([x for x, _ in pts]), np.log([y for _, y in pts])


def read_at(curve: tuple[np.ndarray, np.ndarray], x: float) -> float:
    """The curve's ms at `x` (see the module doc for beyond its ends)."""
    lx, ly = curve
    if x <= 0:
        return 0.0
    v = math.log(x)
    if v < lx[0]:
        return math.exp(ly[0]) * x / math.exp(lx[0])
    return math.exp(float(np.interp(v, lx, ly)))


def _axis(driver: str, batch: tuple[float, float]) -> float:
    return batch[0] if driver == "tokens" else batch[1]


def _readable(store, env_key: str, key: str) -> tuple[str, tuple] | None:
    """(driver, curve) of a unit the DB can read at any batch, else None."""
    unit = store.get_unit(key)
    if unit is None or unit.driver not in ("tokens", "seqs"):
        return None
    curve = _curve(store.measurements(unit_key=key, env_key=env_key))
    return None if curve is None else (unit.driver, curve)


def check_shares(store, env_key: str, engine: str, unit, rows: Iterable[Measurement]) -> dict[str, float]:
    """point_json -> the unit's share (0, 1] at each of its measured check points `rows`,
    the largest over the DB's inventories (of `engine`) that run the unit (1.0 where no
    inventory names it)."""
    rows = [m for m in rows if m.status == "ok" and m.median_ms > 0]
    models = [inv for inv in (store.inventory(h, engine) for h in store.models(engine)) if unit.key in inv]
    others = {k: _readable(store, env_key, k) for inv in models for k in inv if k != unit.key}
    out: dict[str, float] = {}
    for m in rows:
        batch = batch_of(m.point)
        if batch is None:
            continue
        share = 0.0 if models else 1.0
        for inv in models:
            own = inv[unit.key] * m.median_ms
            rest = sum(n * read_at(others[k][1], _axis(others[k][0], batch))
                       for k, n in inv.items() if k != unit.key and others.get(k) is not None)
            share = max(share, own / (own + rest))
        out[m.point_json] = min(max(share, 1e-9), 1.0)
    return out
