"""Service-level objectives on simulated serving: `ttft_p90=2s,tpot_p90=80ms`, each a
latency statistic and its limit. A run meets an SLO when the statistic is at most the
limit; percentiles are numpy's (linear interpolation), as `dooly.sim.metrics` reports them.
`bound` and `lower_bounds` say what is already sure of a run in progress
(`dooly.sim.watch`)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

METRICS = ("ttft", "tpot", "itl", "e2e", "queue")
_SLO = re.compile(r"^(ttft|tpot|itl|e2e|queue)_(p\d+(?:\.\d+)?|mean)$")
_VALUE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?\s*(ms|s)?$")
MAX_LIMIT_MS = 1e9   # 11 days: any longer is no latency objective


@dataclass(frozen=True)
class Slo:
    metric: str          # one of METRICS
    stat: str            # "p90", "p99.9", "mean"
    limit_ms: float

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"metric: expected one of {METRICS}, got {self.metric!r}")
        if self.stat != "mean" and not (self.stat.startswith("p") and 0 < self.quantile <= 100):
            raise ValueError(f"stat: expected pQ with 0 < Q <= 100 or mean, got {self.stat!r}")
        if not (math.isfinite(self.limit_ms) and 0 < self.limit_ms <= MAX_LIMIT_MS):
            raise ValueError(f"limit_ms: expected a number from 0 to {MAX_LIMIT_MS:g} ms, "
                             f"got {self.limit_ms}")

    @property
    def name(self) -> str:
        return f"{self.metric}_{self.stat}"

    @property
    def quantile(self) -> float:
        return float(self.stat[1:]) if self.stat != "mean" else math.nan

    def met(self, value: float) -> bool:
        """NaN (no request has this metric, e.g. TPOT of one-token outputs) is met."""
        return not value > self.limit_ms


def parse_slos(text: str) -> tuple[Slo, ...]:
    """'ttft_p90=2s,tpot_p90=80ms' (a bare number is ms). ValueError names the part."""
    out: dict[str, Slo] = {}
    for part in (p.strip() for p in text.split(",")):
        name, eq, value = (x.strip().lower() for x in part.partition("="))
        m, v = _SLO.match(name), _VALUE.match(value)
        if not eq or m is None:
            raise ValueError(f"{part!r}: expected METRIC_STAT=LIMIT with METRIC one of "
                             f"{', '.join(METRICS)} and STAT pQ or mean (ttft_p90=2s)")
        if v is None:
            raise ValueError(f"{part!r}: the limit must be a number with ms or s (80ms, 2s)")
        scale = 1000.0 if v.group(2) == "s" else 1.0
        limit = float(value.removesuffix("ms").removesuffix("s")) * scale
        try:
            slo = Slo(m.group(1), m.group(2), limit)
        except ValueError as err:   # a zero or huge limit, p0, p101
            raise ValueError(f"{part!r}: {err}") from None
        if slo.name in out:
            raise ValueError(f"{part!r}: {slo.name} is given twice")
        out[slo.name] = slo
    return tuple(out.values())


def metric_values(metric: str, per_request) -> np.ndarray:
    """Every finite value of `metric` (ms) over RequestMetrics: one per request, every
    inter-token gap for itl."""
    if metric == "itl":
        vals = [v for m in per_request for v in m.itl_ms]
    else:
        vals = [getattr(m, f"{metric}_ms") for m in per_request]
    arr = np.asarray(vals, dtype=float)
    return arr[np.isfinite(arr)]


def statistic(slo: Slo, values: np.ndarray) -> float:
    if values.size == 0:
        return math.nan
    return float(values.mean()) if slo.stat == "mean" else float(np.percentile(values, slo.quantile))


def slo_values(slos, per_request) -> dict[str, float]:
    """SLO name -> the run's value of its statistic (ms)."""
    cache: dict[str, np.ndarray] = {}
    out = {}
    for slo in slos:
        if slo.metric not in cache:
            cache[slo.metric] = metric_values(slo.metric, per_request)
        out[slo.name] = statistic(slo, cache[slo.metric])
    return out


def most_over(slos, values: dict[str, float]) -> Slo | None:
    """The SLO furthest over its limit (value / limit), or None when every one is met."""
    over = [s for s in slos if not s.met(values.get(s.name, math.nan))]
    return max(over, key=lambda s: values[s.name] / s.limit_ms) if over else None


def needed_over(quantile: float, n: int) -> int:
    """How many of `n` values over a limit make their `quantile` percentile (linear
    interpolation) surely over it: every value from index floor((n-1) q / 100) up."""
    return n - math.floor((n - 1) * quantile / 100.0)


def bound(metric: str, s, t: float) -> tuple[bool, float]:
    """(final, seconds) of one request's `metric` at simulated time `t`: its value once
    known, else a lower bound (time already elapsed; 0 before it arrives). Not for itl."""
    arr, tt = s.req.arrival_s, s.token_times
    if metric == "ttft":
        return (True, tt[0] - arr) if tt else (False, max(t - arr, 0.0))
    if metric == "e2e":
        return (True, tt[-1] - arr) if s.finish_s is not None else (False, max(t - arr, 0.0))
    if metric == "queue":
        fs = s.first_scheduled_s
        return (True, fs - arr) if fs is not None else (False, max(t - arr, 0.0))
    n = s.output_len - 1   # tpot
    if s.finish_s is not None:
        return True, (tt[-1] - tt[0]) / n
    return False, (t - tt[0]) / n if tt else 0.0


def lower_bounds(metric: str, states, t: float) -> np.ndarray:
    """Per request (ms): the final value of `metric` or, unfinished, a lower bound at
    simulated time `t` (tpot: requests of one output token have none). Not for itl."""
    return np.asarray([bound(metric, s, t)[1] * 1000.0 for s in states
                       if metric != "tpot" or s.output_len > 1], dtype=float)
