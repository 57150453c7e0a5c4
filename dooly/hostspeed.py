"""The host's speed, read on a fixed reference workload while a sweep, a calibration or a
real engine run goes on. On a shared host (a VM beside other tenants) the same kernel
runs at different speeds at different times (clock, memory bandwidth and cache taken by
neighbours the guest cannot see), so a sweep taken at one time and engine steps timed
at another can disagree although both were timed correctly. A probe taken beside each
says which host state each was taken in: `bench/sweep_agreement.py` compares sweeps
with and without that factor, `bench/accuracy_batch.py` prints it for the sweep and the
real runs. Two parts: a compute-bound bf16 GEMM and a memory-bound add over a span
larger than the last-level cache, each the median of a short burst."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

# the reference shapes: fixed forever, so that readings of every release compare
GEMM_SHAPE = (128, 1024, 1024)    # [M, K] x [N, K]
STREAM_ELEMS = 8 << 20            # fp32: 32 MiB per operand


@dataclass(frozen=True)
class Reading:
    timestamp: float
    gemm_ms: float
    stream_ms: float

    def __post_init__(self):
        for name in ("gemm_ms", "stream_ms"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)!r}")


class HostProbe:
    """Reads the reference workload at most every `every_s` seconds (`maybe`); each
    reading is the median of `repeats` calls per part, ~15 ms in all on a 2-core CPU."""

    def __init__(self, every_s: float = 20.0, repeats: int = 7):
        import torch
        self.every_s, self.repeats = every_s, repeats
        m, k, n = GEMM_SHAPE
        gen = torch.Generator().manual_seed(0)
        self._a = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        self._w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
        self._x = torch.randn(STREAM_ELEMS, generator=gen)
        self._y = torch.randn(STREAM_ELEMS, generator=gen)
        # written in place: a fresh 32 MiB result would be mmapped and page-faulted on
        # every call or not, as the allocator's history decides (readings 3x apart)
        self._z = torch.empty(STREAM_ELEMS)
        self._last = float("-inf")

    def _median_ms(self, fn) -> float:
        fn()
        samples = []
        for _ in range(self.repeats):
            t0 = time.perf_counter_ns()
            fn()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        return statistics.median(samples)

    def read(self, mark: bool = True) -> Reading:
        """`mark=False`: a reading that does not put off the next `maybe` one."""
        import torch
        import torch.nn.functional as F
        if mark:
            self._last = time.monotonic()
        gemm = self._median_ms(lambda: F.linear(self._a, self._w))
        stream = self._median_ms(lambda: torch.add(self._x, self._y, out=self._z))
        return Reading(time.time(), gemm, stream)

    def maybe(self) -> Reading | None:
        """A reading when `every_s` has passed since the last one, else None."""
        return self.read() if time.monotonic() - self._last >= self.every_s else None


PARTS = ("gemm_ms", "stream_ms")


def _median(readings: list[Reading], part: str) -> float:
    return statistics.median(getattr(r, part) for r in readings)


def stored_readings(store, env_key: str, source: str = "sweep") -> list[Reading]:
    """The readings the DB holds for an environment, taken by `source` (sweep, calibrate)."""
    return [Reading(t, g, s) for t, g, s, _ in store.host_probes(env_key, source=source)]


def host_factor(readings: list[Reading], reference: list[Reading]) -> float:
    """How much slower the host ran during `readings` than during `reference`: the ratio
    of their median GEMM and stream times, averaged (1.0: the same host state)."""
    if not readings or not reference:
        return 1.0
    return statistics.fmean(_median(readings, f) / _median(reference, f) for f in PARTS)


# beyond this ratio (either way) of the reference GEMM, a reading is not the host the
# environment's points were taken on, though the environment key (CPU name, threads,
# engine) is the same: on 2026-12-06 a fresh 2-core AMD EPYC VM ran the reference GEMM in
# 0.32-0.42 ms where the DB's sweep of the same key had 0.72 ms (its two vCPUs a core each, the
# earlier VM's nearer one core's worth), and its re-timed TP=1 units at 0.44-0.71x their
# stored times. The same host drifts too (1.4-2x within an hour on the Xeon VM of 2026-12-04).
# The stream part does not decide: on one VM within an hour it read 0.89-3.25 ms, and the two
# VMs above read it alike (1.5 against 1.7 ms, medians).
OTHER_HOST = 1.5


def stored_change(store, env_key: str, readings: list[Reading]) -> dict[str, float] | None:
    """Each part's ratio of `readings` to the environment's stored sweep readings (median
    over each), when the GEMM's lies beyond OTHER_HOST either way; None when it lies within
    or nothing was stored to compare with."""
    stored = stored_readings(store, env_key)
    if not stored or not readings:
        return None
    ratio = {f.removesuffix("_ms"): _median(readings, f) / _median(stored, f) for f in PARTS}
    return None if 1 / OTHER_HOST <= ratio["gemm"] <= OTHER_HOST else ratio


def change_warning(env_key: str, db: str, change: dict[str, float], what: str) -> str:
    """One line for stderr: `what` (a clause) on a host unlike the one the environment's
    points were swept on."""
    parts = ", ".join(f"{k} {v:.2f}x" for k, v in change.items())
    return (f"dooly: {db}: this host runs the reference workload at {parts} the times of the "
            f"DB's sweep of environment {env_key}: {what}; sweep into a new DB on this host, or "
            f"predict with --recheck-host")
