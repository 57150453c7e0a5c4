"""GEMM units as rows a GEMM model trains on: which units are one [M, K] x [K, N] product,
their (M expression, K, N) read off the unit's shapes, and one `GemmRow` per measured point
(M evaluated at the point with the bounded request-expression parser, never `sympify`)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from dooly.env import Environment, Measurement
from dooly.symbolic.labels import Label
from dooly.symbolic.symbols import MAX_EXPR_INT, parse_request_expr
from dooly.unit import GEMM_OPS as MATRIX_PRODUCTS, Unit

GEMM_OPS = (MATRIX_PRODUCTS - {"bmm", "baddbmm"}) | {
    "aten.linear.default", "aten.mm.default", "aten.addmm.default", "_C.onednn_mm", "gemm"}
_WEIGHT_KN = {"mm", "addmm", "aten.mm.default", "aten.addmm.default"}  # weight stored [K, N]


@dataclass(frozen=True)
class GemmRow:
    M: int
    K: int
    N: int
    dtype: str
    latency_ms: float
    device: str = ""
    unit_key: str = ""
    group: str = ""      # free label (e.g. the model it came from) for leave-group-out checks

    @property
    def shape(self) -> tuple[int, int]:
        return (self.K, self.N)


def is_gemm(unit: Unit) -> bool:
    return unit.op in GEMM_OPS


def gemm_shape(unit: Unit) -> tuple[str, int, int] | None:
    """(M expression, K, N) of a GEMM unit, or None when it is not one / has no
    request-sized activation. inputs: linear [M, K] x [N, K]; mm [M, K] x [K, N];
    addmm (bias, [M, K], [K, N]); unit.attr["K"]/["N"] fill in what shapes lack."""
    if not is_gemm(unit):
        return None
    act = next((t for t in unit.inputs if len(t.dims) >= 2 and t.dims[0].label is not Label.CONFIG), None)
    if act is None:
        return None
    attr = unit.attr
    K = act.dims[-1].value_or_expr if act.dims[-1].label is Label.CONFIG else attr.get("K")
    weights = [t for t in unit.inputs if t is not act and len(t.dims) == 2
               and all(d.label is Label.CONFIG for d in t.dims)]
    N = None
    if weights:
        a, b = (d.value_or_expr for d in weights[0].dims)
        if unit.op in _WEIGHT_KN:
            N = b if a == K or K is None else a
        else:
            N = a if b == K or K is None else b
        if K is None:
            K = b if unit.op not in _WEIGHT_KN else a
    if N is None and unit.outputs and unit.outputs[0].dims and unit.outputs[0].dims[-1].label is Label.CONFIG:
        N = unit.outputs[0].dims[-1].value_or_expr
    N = attr.get("N", N) if N is None else N
    if K is None or N is None:
        return None
    return str(act.dims[0].value_or_expr), int(K), int(N)


@lru_cache(maxsize=256)
def _expr(text: str):
    # stored dims come from DB files: the bounded AST parser, never sympify (eval)
    return parse_request_expr(text)


def eval_request(expr: str, point: dict) -> int:
    """Value of a request expression ("T", "2*B") at a measured point. A ValueError
    for text that is not a bounded request expression, or a point without its symbols."""
    e = _expr(expr)
    subs = {s: point[str(s)] for s in e.free_symbols if str(s) in point}
    for name, v in subs.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not abs(v) <= MAX_EXPR_INT:
            raise ValueError(f"point: {name} = {v!r} is not a request size")
    v = e.subs(subs)
    if v.free_symbols:
        raise ValueError(f"point: no value for {sorted(map(str, v.free_symbols))} in {point!r}")
    return int(v)


def rows_from_units(units: Iterable[Unit] | Mapping[str, Unit], measurements: Iterable[Measurement],
                    envs: Mapping[str, Environment] | Iterable[Environment] | None = None,
                    group_of: Mapping[str, str] | None = None) -> list[GemmRow]:
    """Training rows from every ok measurement of a GEMM unit. `envs` (by key) gives
    the device name (else the env key stands in); `group_of` maps unit_key -> group."""
    by_key = dict(units) if isinstance(units, Mapping) else {u.key: u for u in units}
    if envs is None:
        env_by_key = {}
    elif isinstance(envs, Mapping):
        env_by_key = dict(envs)
    else:
        env_by_key = {e.key: e for e in envs}
    shapes = {k: gemm_shape(u) for k, u in by_key.items() if is_gemm(u)}
    rows = []
    for m in measurements:
        s = shapes.get(m.unit_key)
        if s is None or m.status != "ok":
            continue
        expr, K, N = s
        unit = by_key[m.unit_key]
        env = env_by_key.get(m.env_key)
        try:
            M = eval_request(expr, m.point)
        except ValueError as err:
            raise ValueError(f"unit {m.unit_key}: {err}") from None
        rows.append(GemmRow(M=M, K=K, N=N, dtype=unit.inputs[0].dtype,
                            latency_ms=float(m.median_ms),
                            device=env.device_name if env else m.env_key, unit_key=m.unit_key,
                            group=(group_of or {}).get(m.unit_key, "")))
    return rows
