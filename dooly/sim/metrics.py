"""Serving metrics from a simulation: per-request latencies and their aggregate
percentiles, throughput, batch-size statistics. Latencies are reported in ms."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dooly.sim.simulator import RequestRecord, SimResult

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queue_ms")


@dataclass(frozen=True)
class RequestMetrics:
    rid: int
    prompt_len: int
    output_len: int
    ttft_ms: float
    tpot_ms: float        # NaN for single-token outputs: there is no inter-token time
    e2e_ms: float
    queue_ms: float       # arrival -> first scheduled
    num_preemptions: int
    itl_ms: tuple[float, ...]

    def __post_init__(self):
        if self.ttft_ms < 0 or self.e2e_ms < self.ttft_ms:
            raise ValueError(f"request {self.rid}: ttft_ms/e2e_ms inconsistent "
                             f"({self.ttft_ms}, {self.e2e_ms})")


def request_metrics(rec: RequestRecord) -> RequestMetrics:
    times = rec.token_times
    first, last = times[0], times[-1]
    n = rec.output_len
    tpot = (last - first) * 1000.0 / (n - 1) if n > 1 else math.nan
    itl = tuple((b - a) * 1000.0 for a, b in zip(times, times[1:]))
    return RequestMetrics(rec.rid, rec.prompt_len, n, (first - rec.arrival_s) * 1000.0, tpot,
                          (last - rec.arrival_s) * 1000.0,
                          (rec.first_scheduled_s - rec.arrival_s) * 1000.0,
                          rec.num_preemptions, itl)


def stats(values) -> dict[str, float]:
    """p50/p90/p99/mean/max of the finite values; NaN everywhere when there are none."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {**{f"p{p}": math.nan for p in PERCENTILES}, "mean": math.nan, "max": math.nan}
    out = {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES))}
    out["mean"] = float(arr.mean())
    out["max"] = float(arr.max())
    return out


@dataclass(frozen=True)
class Summary:
    num_requests: int
    duration_s: float              # first arrival -> last token
    output_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    num_steps: int
    num_preemptions: int
    latency: dict                  # name -> stats(), names in LATENCIES
    batch_seqs: dict               # stats() of sequences per step
    batch_tokens: dict             # stats() of scheduled tokens per step

    def __post_init__(self):
        if self.num_requests < 0 or self.duration_s < 0:
            raise ValueError("num_requests and duration_s must be >= 0")

    def to_dict(self) -> dict:
        return {
            "num_requests": self.num_requests, "duration_s": self.duration_s,
            "output_tokens": self.output_tokens,
            "output_tokens_per_s": self.output_tokens_per_s,
            "requests_per_s": self.requests_per_s, "num_steps": self.num_steps,
            "num_preemptions": self.num_preemptions,
            **{name: dict(vals) for name, vals in self.latency.items()},
            "batch_seqs": dict(self.batch_seqs), "batch_tokens": dict(self.batch_tokens),
        }


def summarize(result: SimResult, per_request: list[RequestMetrics] | None = None) -> Summary:
    per = per_request if per_request is not None else [request_metrics(r) for r in result.requests]
    if result.requests:
        start = min(r.arrival_s for r in result.requests)
        duration = max(r.finish_s for r in result.requests) - start
    else:
        duration = 0.0
    out_tokens = sum(r.output_len for r in result.requests)
    rate = (lambda x: x / duration if duration > 0 else math.nan)
    itl = np.fromiter((v for m in per for v in m.itl_ms), dtype=float)
    latency = {
        "ttft_ms": stats([m.ttft_ms for m in per]),
        "tpot_ms": stats([m.tpot_ms for m in per]),
        "itl_ms": stats(itl),
        "e2e_ms": stats([m.e2e_ms for m in per]),
        "queue_ms": stats([m.queue_ms for m in per]),
    }
    return Summary(len(per), duration, out_tokens, rate(out_tokens), rate(len(per)),
                   result.num_steps, result.num_preemptions, latency,
                   stats(result.step_num_seqs), stats(result.step_num_tokens))
