"""Roofline estimate of what profiling a unit costs: at every grid point, the op's
FLOPs and bytes against the device's peak rate and bandwidth, times the repeats a
sweep takes, plus a fixed per-point overhead (synchronisation, setup)."""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

from dooly.env import itemsize
from dooly.profile.grid import GridLimits, point_values, points_for
from dooly.symbolic.symbols import evaluate
from dooly.unit import GEMM_OPS, TensorSig, Unit


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: float      # dense bf16, FLOP/s
    bandwidth: float       # bytes/s
    launch_s: float        # per-op floor
    point_overhead_s: float
    repeats: int           # warm-up + timed runs per point


HARDWARE = {
    "h100": Hardware("h100", 989e12, 3.35e12, 4e-6, 5e-3, 30),
    "a100": Hardware("a100", 312e12, 2.0e12, 5e-6, 5e-3, 30),
    # a 2-core AVX-512-BF16 host, as the CI machine
    "cpu": Hardware("cpu", 1.5e11, 2.0e10, 1e-5, 2e-3, 12),
}


def numel(sig: TensorSig, values: dict) -> int:
    return prod(max(evaluate(d.value_or_expr, **values), 0) for d in sig.dims)


def nbytes(sig: TensorSig, values: dict) -> int:
    try:
        size = itemsize(sig.dtype)
    except ValueError:
        size = 2  # an estimate: an unknown dtype counts as a 16-bit one
    return numel(sig, values) * size


def gemm_flops(unit: Unit, values: dict) -> float | None:
    """2*M*N*K of a matrix product (times its batch), or None when it has no operands."""
    first = 1 if unit.op in ("addmm", "baddbmm") else 0  # the bias comes first
    if len(unit.inputs) < first + 2:
        return None
    x, w = unit.inputs[first], unit.inputs[first + 1]
    k = max(evaluate(x.dims[-1].value_or_expr, **values), 1)
    batch = max(prod(evaluate(d.value_or_expr, **values) for d in w.dims[:-2]), 1)
    m = numel(x, values) // k           # rows of every batch
    n = numel(w, values) // (k * batch)
    return 2.0 * m * n * k


def flops_bytes(unit: Unit, point: dict) -> tuple[float, float]:
    v = point_values(point)
    io_bytes = sum(nbytes(s, v) for s in unit.inputs + unit.outputs)
    flops = gemm_flops(unit, v) if unit.op in GEMM_OPS else None
    if flops is not None:
        return flops, float(io_bytes)
    if unit.driver == "attention" and "seqs" in point:
        a = unit.attr
        heads, kv, d = a.get("num_heads", 8), a.get("num_kv_heads", 8), a.get("head_size", 128)
        flops = sum(4.0 * heads * d * q * (c + (q + 1) / 2) for q, c in point["seqs"])
        kv_bytes = sum((c + q) * 2 * kv * d * 2 for q, c in point["seqs"])
        return flops, float(kv_bytes + io_bytes)
    if unit.op in ("embedding", "_C.rotary_embedding"):
        # a gather reads only the rows it needs, not the whole table
        io_bytes = sum(nbytes(s, v) for s in unit.outputs + unit.inputs[:1])
        if unit.op == "_C.rotary_embedding":
            io_bytes = 2 * sum(nbytes(s, v) for s in unit.inputs[1:3])
    out = sum(numel(s, v) for s in unit.outputs) or sum(numel(s, v) for s in unit.inputs)
    ops = len((unit.graph or {}).get("nodes", [])) or 1
    return float(out * ops), float(io_bytes)


def point_seconds(unit: Unit, point: dict, hw: Hardware) -> float:
    flops, nbytes = flops_bytes(unit, point)
    return max(flops / hw.peak_flops, nbytes / hw.bandwidth) + hw.launch_s


def profiling_cost(unit: Unit, hw: Hardware, lim: GridLimits = GridLimits()) -> tuple[int, float]:
    """(grid points, estimated seconds) to sweep this unit on `hw`."""
    pts = points_for(unit.driver, lim, unit.request_symbols())
    secs = sum(hw.repeats * point_seconds(unit, p, hw) + hw.point_overhead_s for p in pts)
    return len(pts), secs


def get_hardware(name: str) -> Hardware:
    if name not in HARDWARE:
        raise ValueError(f"hardware: expected one of {sorted(HARDWARE)}, got {name!r}")
    return HARDWARE[name]
