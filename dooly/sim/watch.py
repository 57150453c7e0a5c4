"""`SloWatch`: ends a search probe as soon as some SLO is sure to be missed, whatever the
rest of the run does. Each unfinished request's latency is bounded from below by what has
already elapsed, so the verdict of a cut run equals the full run's; the statistic of the
bounds is a lower bound of the full run's statistic. A request's value is settled once
final and never looked at again, and requests yet to arrive are skipped (the simulator
keeps them in arrival order), so a check costs the requests in flight."""
from __future__ import annotations

import numpy as np

from dooly.sim.slo import Slo, bound, lower_bounds, needed_over, statistic


class _Tracker:
    """Requests over a limit (seconds) and the sum of their values, for one metric."""

    def __init__(self, metric: str, limit_s: float, requests):
        self.metric, self.limit_s = metric, limit_s
        self.open = [i for i, r in enumerate(requests) if metric != "tpot" or r.output_len > 1]
        self.over, self.total = 0, 0.0     # settled requests

    def update(self, states, t: float) -> tuple[int, float]:
        metric, limit = self.metric, self.limit_s
        still, over, total = [], 0, 0.0
        for k, i in enumerate(self.open):
            s = states[i]
            if s.req.arrival_s > t:        # in arrival order: the rest have not arrived
                still += self.open[k:]
                break
            final, v = bound(metric, s, t)
            if final:
                self.over += v > limit
                self.total += v
            else:
                still.append(i)
                over += v > limit
                total += v
        self.open = still
        return self.over + over, (self.total + total) * 1000.0


class _GapTracker:
    """Inter-token gaps over a limit (seconds), counted as tokens appear."""

    def __init__(self, limit_s: float, requests):
        self.limit_s = limit_s
        self.at = [0] * len(requests)
        self.over = [0] * len(requests)

    def update(self, states, t: float) -> tuple[int, float]:
        count, total, limit = 0, 0.0, self.limit_s
        at, over = self.at, self.over
        for i, s in enumerate(states):
            tt = s.token_times
            if not tt:
                continue
            k = at[i]
            while k + 1 < len(tt):
                over[i] += tt[k + 1] - tt[k] > limit
                k += 1
            at[i] = k
            open_gap = s.finish_s is None
            count += over[i] + (open_gap and t - tt[-1] > limit)
            total += ((t if open_gap else tt[-1]) - tt[0]) * 1000.0
        return count, total


class SloWatch:
    """`simulate(..., stop=watch)`: True once some SLO is sure to be missed; then `missed`
    is that SLO and `values` each SLO's lower bound at the cut (ms). A percentile is sure
    once `needed_over` of its values are over the limit; a mean, once their sum is over
    the limit times their number."""

    def __init__(self, slos, requests):
        self.slos = tuple(slos)
        outs = [r.output_len for r in requests]
        self.n = {"ttft": len(outs), "e2e": len(outs), "queue": len(outs),
                  "tpot": sum(o > 1 for o in outs), "itl": sum(o - 1 for o in outs)}
        self.trackers = [(_GapTracker(s.limit_ms / 1000.0, requests) if s.metric == "itl"
                          else _Tracker(s.metric, s.limit_ms / 1000.0, requests)) for s in self.slos]
        self.missed: Slo | None = None
        self.values: dict[str, float] = {}

    def __call__(self, t: float, states) -> bool:
        for slo, tracker in zip(self.slos, self.trackers):
            n = self.n[slo.metric]
            if n == 0:
                continue
            count, total = tracker.update(states, t)
            if total > slo.limit_ms * n if slo.stat == "mean" else count >= needed_over(slo.quantile, n):
                self.missed = slo
                self.values = {s.name: self._bound(s, states, t) for s in self.slos}
                return True
        return False

    def _bound(self, slo: Slo, states, t: float) -> float:
        """The statistic of the per-value lower bounds, nothing known counting as 0."""
        n = self.n[slo.metric]
        if slo.metric == "itl":
            gaps = [b - a for s in states for a, b in zip(s.token_times, s.token_times[1:])]
            gaps += [t - s.token_times[-1] for s in states if s.token_times and s.finish_s is None]
            lows = np.asarray(gaps, dtype=float) * 1000.0
        else:
            lows = lower_bounds(slo.metric, states, t)
        lows = np.concatenate([lows, np.zeros(max(n - lows.size, 0))])[:n]
        return statistic(slo, lows)
