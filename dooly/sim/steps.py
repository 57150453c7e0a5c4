"""Step-time functions for a search (`dooly.search`): a linear stand-in stating its own
error (tests, benches, `dooly search --step-model`), and a cache of a step model's answers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dooly.sim.candidates import Candidate
from dooly.sim.intervals import Uncertainty, draw_factors


@dataclass(frozen=True)
class LinearSource:
    """A stand-in step model, ms = a + b * tokens + c * sum(context) / 1000, stating
    `error_pct` on whole steps (tests, benches, `--step-model`)."""
    a: float
    b: float
    c: float
    error_pct: float = 0.0

    def uncertainty(self, cand: Candidate) -> Uncertainty:
        return Uncertainty((), self.error_pct, "stated", scope=str(cand.env))

    def step_fn(self, cand: Candidate, draw: int | None = None, seed: int = 0) -> Callable:
        factor = 1.0 if draw is None else draw_factors(self.uncertainty(cand), draw, seed)[1]
        a, b, c = self.a * factor, self.b * factor, self.c * factor

        def step_ms(batch) -> float:
            return a + b * sum(s[0] for s in batch) + c * sum(s[1] for s in batch) / 1000.0
        return step_ms


class CachedStep:
    """A step-time function that remembers the batches it answered. A search replays the
    same requests at several rates and for several candidates, and at low load the same
    batches come back (one decode at a given context). A step's time depends on its batch
    alone, given the serving settings (CUDA graphs pad batches by them): one cache per
    predictor, draw and, on a CUDA-graph host, serving settings."""
    MAX_BATCHES = 500_000

    def __init__(self, fn: Callable):
        self.fn, self.memo = fn, {}

    def __call__(self, batch) -> float:
        key = tuple(batch)
        ms = self.memo.get(key)
        if ms is None:
            if len(self.memo) >= self.MAX_BATCHES:
                self.memo.clear()
            ms = self.memo[key] = self.fn(batch)
        return ms
