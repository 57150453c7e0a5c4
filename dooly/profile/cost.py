"""Roofline estimate of what profiling a unit costs: at every grid point, the op's
FLOPs and bytes against the device's peak rate and bandwidth, times the repeats a
sweep takes, plus a per-point overhead (runner setup, compiling, synchronisation,
waiting for clean samples). Every point measured is counted, check points included.

GPUs keep an assumed overhead. For `cpu` the overhead is calibrated from the seconds
real sweeps took (`calibrate_cpu`): a DB stamps each measurement as it is committed,
so the gaps between consecutive stamps are what the sweep spent on each point, both
passes (the second pass re-times every point) included."""
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
    point_overhead_s: float  # per point and sweep, every pass included
    repeats: int           # warm-up + timed runs per point and pass
    passes: int = 1        # timing passes over each point (CPU: a second, keeping the faster)
    source: str = "roofline + an assumed per-point overhead"

    def __post_init__(self):
        for f in ("peak_flops", "bandwidth"):
            if not getattr(self, f) > 0:
                raise ValueError(f"{f}: expected a positive rate, got {getattr(self, f)!r}")
        if self.point_overhead_s < 0 or self.launch_s < 0 or self.repeats < 1 or self.passes < 1:
            raise ValueError("point_overhead_s, launch_s >= 0 and repeats, passes >= 1 expected")


# CPU: the rates are a 2-core AVX-512-BF16 host's (the CI machine); the per-point
# overhead is `calibrate_cpu` over the real sweeps of out/h11*.db and out/smoke.db
# (SmolLM2-135M and Qwen2.5-0.5B, vLLM CPU, both passes): 2546 points in 3332 s.
CPU_CALIBRATION = {"points": 2546, "active_s": 3332.1, "point_overhead_s": 1.2863}
HARDWARE = {
    "h100": Hardware("h100", 989e12, 3.35e12, 4e-6, 5e-3, 30),
    "a100": Hardware("a100", 312e12, 2.0e12, 5e-6, 5e-3, 30),
    "cpu": Hardware("cpu", 1.5e11, 2.0e10, 1e-5, CPU_CALIBRATION["point_overhead_s"], 12, passes=2,
                    source="roofline + a per-point overhead calibrated from 2546 points (3332 s) "
                           "of real CPU sweeps"),
}
# what a DB's stamps count as one sweep's time: a longer gap is the host between sweeps
SWEEP_GAP_S = 60.0


def dim_value(v: int | str, values: dict) -> int:
    """A dim's value at a point; a bare request symbol ("T") without SymPy, which keeps
    a family's training design (thousands of points) cheap."""
    if isinstance(v, int):
        return v
    if v in values:
        return int(values[v])
    return evaluate(v, **values)


def numel(sig: TensorSig, values: dict) -> int:
    return prod(max(dim_value(d.value_or_expr, values), 0) for d in sig.dims)


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
    k = max(dim_value(x.dims[-1].value_or_expr, values), 1)
    batch = max(prod(dim_value(d.value_or_expr, values) for d in w.dims[:-2]), 1)
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


def points_cost(unit: Unit, points: list[dict], hw: Hardware) -> float:
    """Estimated seconds to measure these points of the unit on `hw`, every pass."""
    return sum(hw.passes * hw.repeats * point_seconds(unit, p, hw) + hw.point_overhead_s
               for p in points)


def profiling_cost(unit: Unit, hw: Hardware, lim: GridLimits = GridLimits()) -> tuple[int, float]:
    """(grid points, estimated seconds) to sweep this unit on `hw`."""
    pts = points_for(unit.driver, lim, unit.request_symbols())
    return len(pts), points_cost(unit, pts, hw)


def sweep_seconds(stamps: list[float], gap_s: float = SWEEP_GAP_S) -> float:
    """Seconds a DB's sweeps spent: the gaps between consecutive measurement stamps,
    leaving out gaps longer than `gap_s` (the host idle between two sweeps)."""
    ts = sorted(stamps)
    return float(sum(b - a for a, b in zip(ts, ts[1:]) if 0 <= b - a <= gap_s))


def calibrate_cpu(stores: list, hw: Hardware | None = None) -> tuple[Hardware, dict]:
    """`hw` (default: HARDWARE["cpu"]) with its per-point overhead set so that the cost
    model gives the seconds the sweeps recorded in `stores` (dooly.db Stores, opened
    read-only) took: (active seconds - the model's timed runs) / points. Calibration
    rows of whole engine steps are not sweep points and are left out."""
    hw = hw or HARDWARE["cpu"]
    points, active, timed = 0, 0.0, 0.0
    for store in stores:
        units = {u.key: u for u in store.units() if u.op != "engine.step"}
        for env in store.find_environment(device_kind="cpu"):
            rows = [m for m in store.measurements(env_key=env.key, status=None) if m.unit_key in units]
            points += len(rows)
            active += sweep_seconds([m.timestamp for m in rows])
            timed += sum(hw.passes * hw.repeats * point_seconds(units[m.unit_key], m.point, hw)
                         for m in rows)
    if not points:
        raise ValueError("stores: no CPU sweep points to calibrate from")
    overhead = max((active - timed) / points, 0.0)
    out = Hardware(hw.name, hw.peak_flops, hw.bandwidth, hw.launch_s, round(overhead, 4), hw.repeats,
                   hw.passes, f"roofline + a per-point overhead calibrated from {points} points "
                              f"({active:.0f} s) of real sweeps")
    return out, {"points": points, "active_s": round(active, 1), "point_overhead_s": round(overhead, 4)}


def get_hardware(name: str) -> Hardware:
    if name not in HARDWARE:
        raise ValueError(f"hardware: expected one of {sorted(HARDWARE)}, got {name!r}")
    return HARDWARE[name]
