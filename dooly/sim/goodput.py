"""Goodput: the highest request rate whose simulated serving meets every SLO, found by
bisection over rates. Every probe replays the same requests (the same lengths, the same
unit-rate arrival gaps scaled by 1/rate), so two rates differ only in load.

`find_goodput(probe, lo, hi)` is the bisection alone, over any `probe(rate) -> Probe`
(a fake in tests); `run_probe` is the simulated one, cut short by `SloWatch` once an SLO
is sure to be missed (what makes probes above the goodput cheap)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from dooly.sim.metrics import request_metrics, summarize
from dooly.sim.scheduler import SchedulerConfig
from dooly.sim.simulator import simulate
from dooly.sim.slo import Slo, most_over, slo_values
from dooly.sim.watch import SloWatch
from dooly.sim.workload import Request

STATUSES = ("ok", "infeasible", "above_range")
REL_TOL = 0.005   # bisection stops when the bracket is this close (0.5%)


@dataclass(frozen=True)
class Probe:
    rate: float
    ok: bool                    # every SLO met
    values: dict                # SLO name -> its statistic (ms); lower bounds when cut
    cut: bool = False           # ended early: `missed` was already sure
    missed: str | None = None   # the SLO furthest over its limit (None when ok)
    stats: dict | None = None   # flat figures of a full run (None when cut)

    def __post_init__(self):
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate: expected a finite number > 0, got {self.rate}")


@dataclass(frozen=True)
class Goodput:
    rate: float                      # the highest rate probed that met every SLO (0: none)
    status: str                      # ok | infeasible (the lowest rate misses) | above_range
    probes: tuple[Probe, ...]
    fail_rate: float | None = None   # the lowest rate probed that missed an SLO
    binding: str | None = None       # the SLO missed at fail_rate (furthest over its limit)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status: expected one of {STATUSES}, got {self.status!r}")
        if not (math.isfinite(self.rate) and self.rate >= 0):
            raise ValueError(f"rate: expected a finite number >= 0, got {self.rate}")

    @property
    def at_goodput(self) -> Probe | None:
        return next((p for p in self.probes if p.ok and p.rate == self.rate), None)


def find_goodput(probe: Callable[[float], Probe], lo: float, hi: float, max_probes: int = 10,
                 guess: tuple[float, float] | None = None) -> Goodput:
    """Bisection in log rate between `lo` and `hi`, assuming a rate that meets the SLOs
    means every lower one does. `hi` is probed first (a pass: "above_range"); `lo` only
    when nothing above it passed (a miss: "infeasible", goodput 0). `guess` (a bracket
    expected to hold the answer, e.g. the nominal goodput's neighbourhood) is tried
    before the whole range. At most `max_probes` probes, one more to confirm `lo`."""
    if not 0 < lo < hi or max_probes < 1:
        raise ValueError(f"rates: expected 0 < lo < hi and max_probes >= 1, got {lo}, {hi}, {max_probes}")
    done: list[Probe] = []

    def run(rate: float) -> bool:
        done.append(probe(rate))
        return done[-1].ok

    a, b, a_known, b_known = lo, hi, False, False   # a passes (once known), b misses
    if guess is not None:
        g_lo, g_hi = max(lo, guess[0]), min(hi, guess[1])
        if lo < g_lo < g_hi < hi:
            if run(g_hi):
                a, a_known = g_hi, True
            else:
                b, b_known = g_hi, True
                if run(g_lo):
                    a, a_known = g_lo, True
                else:
                    b = g_lo
    if not b_known and run(b):
        return Goodput(b, "above_range", tuple(done))
    while len(done) < max_probes and b / a > 1 + REL_TOL:
        mid = math.sqrt(a * b)
        if run(mid):
            a, a_known = mid, True
        else:
            b = mid
    if not a_known and not run(a):   # nothing passed: is even the lowest rate too much?
        b = a
        return Goodput(0.0, "infeasible", tuple(done), b, done[-1].missed)
    missed = next(p for p in done if p.rate == b)
    return Goodput(a, "ok", tuple(done), b, missed.missed)


def at_rate(requests: Sequence[Request], rate: float) -> list[Request]:
    """Requests drawn at 1 request/s, their arrival times scaled to `rate`."""
    return [Request(r.rid, r.arrival_s / rate, r.prompt_len, r.output_len) for r in requests]


def run_probe(requests: Sequence[Request], rate: float, step_fn, sched: SchedulerConfig,
              slos: Sequence[Slo]) -> Probe:
    """One simulated probe of `requests` (at 1 request/s) at `rate`."""
    reqs = at_rate(requests, rate)
    watch = SloWatch(slos, reqs)
    result = simulate(reqs, step_fn, sched, stop=watch)
    if watch.missed is not None:
        return Probe(rate, False, dict(watch.values), True, watch.missed.name)
    per = [request_metrics(r) for r in result.requests]
    values = slo_values(slos, per)
    over = most_over(slos, values)
    return Probe(rate, over is None, values, False, None if over is None else over.name,
                 flat_stats(summarize(result, per)))


def flat_stats(summary) -> dict:
    """The figures a search reports at a rate: p50/p90/p99 of TTFT, TPOT, ITL and E2E
    (ms), and what the finite run served (requests and output tokens per second from the
    first arrival to the last token: below the rate when a queue drains at the end)."""
    out = {"run_requests_per_s": summary.requests_per_s,
           "run_output_tokens_per_s": summary.output_tokens_per_s}
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        for p in ("p50", "p90", "p99"):
            out[f"{name[:-3]}_{p}_ms"] = summary.latency[name][p]
    return out
