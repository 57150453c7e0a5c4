"""Expert routing for mixture-of-experts units. A fused-MoE kernel's time depends on how
many tokens each expert receives (which experts' weights are read, how long each
expert's GEMM is), a request-side input derived from the batch's tokens x top-k and
the router's distribution. The router's choices are not in the config, so a sweep
times the MoE unit under a named distribution and records it in every point:

- "balanced" (the default): every expert equally likely, as a trained router's load
  balancing aims for and as vLLM's dummy weights route;
- "skew:S": a Zipf-like skew, expert e chosen with weight (e + 1) ** -S (S > 0; about
  1 puts a third of the choices of 8 experts on one expert).

Each token takes top-k distinct experts (Gumbel top-k sampling, seeded: one point's
routing is the same in every sweep). A prediction asks for one distribution; a unit is
fitted on the points measured under it (`for_routing`). Used by the sweep (grids, inputs),
the fits and the predictor; imports only dooly.unit."""
from __future__ import annotations

import numpy as np

from dooly.unit import MOE_OPS, Unit

DEFAULT = "balanced"
POINT_KEY = "routing"


def parse_routing(spec: str) -> str:
    """The canonical spelling of a routing spec; ValueError naming `routing` otherwise."""
    s = str(spec).strip().lower()
    if s == DEFAULT:
        return s
    if s.startswith("skew:"):
        try:
            v = float(s[5:])
        except ValueError:
            v = float("nan")
        if v > 0 and np.isfinite(v):
            return f"skew:{v:g}"
    raise ValueError(f"routing: expected 'balanced' or 'skew:S' with S > 0, got {spec!r}")


def expert_weights(routing: str, experts: int) -> np.ndarray:
    """The probability of each expert under the distribution."""
    r = parse_routing(routing)
    if experts < 1:
        raise ValueError(f"experts: expected at least 1, got {experts!r}")
    if r == DEFAULT:
        return np.full(experts, 1.0 / experts)
    w = (np.arange(experts) + 1.0) ** -float(r[5:])
    return w / w.sum()


def expert_ids(tokens: int, experts: int, top_k: int, routing: str = DEFAULT, seed: int = 0) -> np.ndarray:
    """[tokens, top_k] int32: each row top_k distinct experts drawn from the distribution."""
    if not 1 <= top_k <= experts:
        raise ValueError(f"top_k: expected 1 to {experts} experts, got {top_k!r}")
    rng = np.random.default_rng(seed)
    keys = np.log(expert_weights(routing, experts))[None, :] + rng.gumbel(size=(tokens, experts))
    return np.argsort(-keys, axis=1)[:, :top_k].astype(np.int32)


def group_offsets(rows: int, experts: int, routing: str = DEFAULT, seed: int = 0) -> np.ndarray:
    """[experts] int32: where each expert's rows end in a grouped GEMM's input sorted by
    expert, `rows` (tokens x top-k) drawn from the distribution."""
    picks = expert_ids(rows, experts, 1, routing, seed)
    return np.cumsum(np.bincount(picks.ravel(), minlength=experts)).astype(np.int32)


def expert_loads(ids: np.ndarray, experts: int) -> list[int]:
    """Tokens each expert receives, most loaded first."""
    return sorted(np.bincount(np.asarray(ids).ravel(), minlength=experts).tolist(), reverse=True)


def is_moe(unit: Unit) -> bool:
    return unit.op in MOE_OPS


def moe_shape(unit: Unit) -> tuple[int, int]:
    """(experts, top_k) of a fused-MoE unit: the leading dim of its 3-D expert weights
    and the width of its integer [T, top_k] expert-id input."""
    experts = next((int(s.dims[0].value_or_expr) for s in unit.inputs
                    if len(s.dims) == 3 and str(s.dims[0].value_or_expr).isdigit()), None)
    top_k = next((int(s.dims[1].value_or_expr) for s in unit.inputs
                  if s.dtype.startswith("int") and len(s.dims) == 2 and str(s.dims[1].value_or_expr).isdigit()),
                 None)
    if experts is None or top_k is None:
        raise ValueError(f"unit: {unit.key} has no [E, ...] expert weights or [T, k] expert ids")
    return experts, top_k


def with_routing(points: list[dict], routing: str) -> list[dict]:
    """A MoE unit's grid: each point carries the distribution it is timed under."""
    r = parse_routing(routing)
    return [dict(p, **{POINT_KEY: r}) for p in points]


def routing_of(point: dict) -> str:
    return point.get(POINT_KEY, DEFAULT)


def for_routing(measurements, units: dict[str, Unit], routing: str = DEFAULT) -> list:
    """The measurements a prediction under `routing` fits on: every non-MoE row, and the
    MoE rows timed under that distribution."""
    r = parse_routing(routing)
    return [m for m in measurements
            if not (m.unit_key in units and is_moe(units[m.unit_key])) or routing_of(m.point) == r]
