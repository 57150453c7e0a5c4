"""Timers. CPU: perf_counter_ns around each call, fixed thread count, warm-up, median
of repeats taken while no timed thread was preempted. CUDA: the call captured in a CUDA
graph and timed by events around replays, L2 flushed between samples. Samples beyond 3
MADs of the median are rejected and counted."""
from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from dooly.env import cache_bytes


@dataclass(frozen=True)
class Stats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    samples: int
    outliers: int


def summarize(samples_ms: list[float]) -> Stats:
    if not samples_ms:
        raise ValueError("samples_ms: no samples to summarize")
    med = statistics.median(samples_ms)
    mad = statistics.median(abs(x - med) for x in samples_ms) or 1e-9
    kept = [x for x in samples_ms if abs(x - med) <= 3 * 1.4826 * mad] or samples_ms
    kept.sort()
    q = lambda f: kept[min(len(kept) - 1, int(f * (len(kept) - 1) + 0.5))]  # noqa: E731
    return Stats(statistics.median(kept), q(0.1), q(0.9), statistics.fmean(kept),
                 statistics.pstdev(kept), len(kept), len(samples_ms) - len(kept))


def _preemptions() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def time_cpu(fn: Callable[[], object], warmup: int = 2, repeats: int = 9,
             budget_s: float = 2.0) -> Stats:
    """On a host shared with other processes, a sample during which one of the timed
    threads was preempted (another process took its core) is slowed by scheduler time
    slices: every OpenMP region waits for the descheduled thread (measured on a 2-core
    host: a real engine step's small kernels 100x slower at a 50% CPU share). So the median
    is taken over the samples no other process disturbed (the process's involuntary
    context switches did not grow) when at least 3 were taken in the budget. A long call
    under a busy neighbour is never left alone: it then counts the CPU time its threads
    ran, per thread, over the samples preempted least often (a 64x576x3072 GEMM under a
    busy neighbour: 32 ms wall, 16.2 ms CPU per thread; 16.2 ms timed on an idle host),
    scaled by the share of the wall time the call keeps its threads busy when undisturbed."""
    for _ in range(warmup):
        fn()
    threads = max(torch.get_num_threads(), 1)
    taken: list[tuple[int, float, float]] = []   # (preemptions, wall ms, CPU ms per thread)
    start = time.perf_counter()
    while sum(p == 0 for p, _, _ in taken) < repeats and len(taken) < 20 * repeats:
        p0, c0 = _preemptions(), time.process_time_ns()
        t0 = time.perf_counter_ns()
        fn()
        t1 = time.perf_counter_ns()
        taken.append((_preemptions() - p0, (t1 - t0) / 1e6, (time.process_time_ns() - c0) / 1e6 / threads))
        # a slow point needs fewer repeats for a stable median
        if len(taken) >= 3 and time.perf_counter() - start > budget_s:
            break
    clean = [(wall, cpu) for p, wall, cpu in taken if p == 0]
    if len(clean) >= 3:
        kept = [wall for wall, _ in clean]
    else:
        # how busy the call keeps its threads when undisturbed (1: every thread all along)
        busy = min(1.0, max(0.25, statistics.median(cpu / wall for wall, cpu in clean))) if clean else 1.0
        cut = sorted(p for p, _, _ in taken)[min(2, len(taken) - 1)]
        kept = [min(wall, cpu / busy) for p, wall, cpu in taken if p <= cut]
    st = summarize(kept)
    return Stats(st.median_ms, st.p10_ms, st.p90_ms, st.mean_ms, st.std_ms, st.samples,
                 st.outliers + len(taken) - len(kept))


_L2_FLUSH: dict = {}


def time_cuda(fn: Callable[[], object], warmup: int = 3, repeats: int = 20,
              calls_per_replay: int = 5) -> Stats:
    """Median over replays of a CUDA graph holding `calls_per_replay` calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls_per_replay):
            fn()
    if "buf" not in _L2_FLUSH:  # twice the L2, the span every cold timing overflows
        _L2_FLUSH["buf"] = torch.empty(2 * cache_bytes("cuda"), dtype=torch.uint8, device="cuda")
    flush = _L2_FLUSH["buf"]
    samples = []
    for _ in range(repeats):
        flush.zero_()  # the same cold-L2 start for every sample
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / calls_per_replay)
    return summarize(samples)


def timer_for(device: str) -> Callable[..., Stats]:
    return time_cuda if device == "cuda" else time_cpu
