"""Error bars: step times drawn within what the predictor says it gets wrong.

A step is the sum of units (each with its stated error: cross-validated MAPE, or the GEMM
family's held-out MAPE where the family answers for it) and the engine-step model (with
its error on whole steps of models it was not fitted on, per step kind where stated). An
error is systematic, not noise: a unit predicted 5% fast is 5% fast in every step. So one
draw fixes one factor per unit and one for the whole step (one per step kind where the
errors are stated per kind), for the whole run, and the run is simulated again;
the spread of a metric over draws is its band. A stated mean absolute error E becomes a
normal error of sigma E * sqrt(pi/2) (a normal's mean absolute value is sigma *
sqrt(2/pi)). Draws are keyed by the environment, the unit and the draw number, so draw i
gives a unit the same factor in every candidate of a search: candidates that share
units share their errors, as they would on the real engine."""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

SIGMA_PER_MAE = math.sqrt(math.pi / 2)
UNKNOWN_ERROR_PCT = 10.0   # a unit fitted on too few points to cross-validate
MIN_FACTOR = 0.2           # a draw never makes a part five times faster
BAND_PCT = 90
STEP_PART = "engine.step"
STEP_KINDS = ("prefill", "decode", "mixed")


@dataclass(frozen=True)
class Uncertainty:
    """What a prediction may be off by, in percent: per unit, and for the whole step."""
    unit_pct: tuple[tuple[str, float], ...] = ()
    step_pct: float = 0.0
    step_source: str = "none"    # how step_pct was found (model-out, in-sample, none)
    scope: str = ""              # the environment: draws of two environments are independent
    kind_pct: tuple[tuple[str, float], ...] = ()   # per step kind (STEP_KINDS); empty: step_pct for all

    def __post_init__(self):
        for key, pct in self.unit_pct + ((STEP_PART, self.step_pct),) + self.kind_pct:
            if not (math.isfinite(pct) and 0 <= pct <= 1000):
                raise ValueError(f"unit_pct: error of {key} must be from 0 to 1000 %, got {pct}")
        for kind, _ in self.kind_pct:
            if kind not in STEP_KINDS:
                raise ValueError(f"kind_pct: step kind must be one of {', '.join(STEP_KINDS)}, got {kind!r}")

    def kind_fields(self, prefix: str = "step_error") -> dict[str, float]:
        """{"<prefix>_<kind>_pct": error} for each kind stated, as the JSON outputs carry them."""
        return {f"{prefix}_{k}_pct": p for k, p in self.kind_pct}

    @property
    def mean_unit_pct(self) -> float:
        return float(np.mean([p for _, p in self.unit_pct])) if self.unit_pct else 0.0


def _factor(scope: str, key: str, pct: float, draw: int, seed: int) -> float:
    if pct <= 0:
        return 1.0
    rng = np.random.default_rng([seed, draw, zlib.crc32(f"{scope}/{key}".encode())])
    return max(1.0 + rng.normal(0.0, pct / 100.0 * SIGMA_PER_MAE), MIN_FACTOR)


def step_kind(batch) -> str:
    """A step's kind by its sequences' query lengths: all one token (decode), none (prefill)
    or both (mixed)."""
    ones = sum(1 for s in batch if s[0] == 1)
    return "decode" if ones == len(batch) else "prefill" if ones == 0 else "mixed"


def draw_factors(unc: Uncertainty, draw: int, seed: int = 0):
    """(unit key -> factor, whole-step factor) of draw number `draw`; the step's factor is
    {kind: factor} when `unc` states errors per step kind (a kind it has no error for, as
    one the calibrated steps never ran, takes the whole step's)."""
    units = {k: _factor(unc.scope, k, p, draw, seed) for k, p in unc.unit_pct}
    whole = _factor(unc.scope, STEP_PART, unc.step_pct, draw, seed)
    if not unc.kind_pct:
        return units, whole
    stated = dict(unc.kind_pct)
    return units, {k: _factor(unc.scope, f"{STEP_PART}.{k}", stated[k], draw, seed) if k in stated else whole
                   for k in STEP_KINDS}


class DrawnStep:
    """A step-time function under one draw. `predict(pairs)` answers like
    `dooly.predict.Predictor.predict` (`.breakdown` per unit, `.engine_ms`); the step is
    the predictor's own rule (units plus engine, the engine never taking more than half
    the units away) with each unit scaled by its factor, then the whole by the step's
    (a float, or {step kind: factor} as `draw_factors` gives it)."""

    def __init__(self, predict: Callable, unit_factors: dict[str, float], step_factor):
        self.predict, self.factors, self.step_factor = predict, dict(unit_factors), step_factor

    def __call__(self, batch) -> float:
        r = self.predict([(s[0], s[1]) for s in batch])
        f = self.factors
        units = sum(f.get(k, 1.0) * ms for k, ms in r.breakdown.items())
        sf = self.step_factor
        sf = sf.get(step_kind(batch), 1.0) if isinstance(sf, dict) else sf
        return max(units + r.engine_ms, 0.5 * units) * sf


def band(values, pct: float = BAND_PCT) -> tuple[float, float]:
    """The central `pct`% of the finite values: (low, high); NaNs when there are none."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    tail = (100 - pct) / 2
    lo, hi = np.percentile(arr, [tail, 100 - tail])
    return float(lo), float(hi)


BAND_STATS = ("p50", "p90", "p99", "mean")
BAND_LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queue_ms")


def _lohi(values) -> dict[str, float]:
    lo, hi = band(values)
    return {"lo": lo, "hi": hi}


def summary_bands(summaries) -> dict:
    """Bands over the draws' Summaries: {"ttft_ms": {"p50": {"lo", "hi"}, ...}, ...,
    "output_tokens_per_s": {"lo", "hi"}, "requests_per_s": ..., "duration_s": ...}."""
    out: dict = {name: {s: _lohi([x.latency[name][s] for x in summaries]) for s in BAND_STATS}
                 for name in BAND_LATENCIES}
    for name in ("output_tokens_per_s", "requests_per_s", "duration_s"):
        out[name] = _lohi([getattr(x, name) for x in summaries])
    return out


def run_draws(requests, predict: Callable, unc: Uncertainty, sched, draws: int,
              seed: int = 0) -> list:
    """The Summary of `draws` runs of `requests`, each under its own draw."""
    from dooly.sim.metrics import summarize
    from dooly.sim.simulator import simulate
    out = []
    for i in range(draws):
        units, step = draw_factors(unc, i, seed)
        out.append(summarize(simulate(requests, DrawnStep(predict, units, step), sched)))
    return out


def bands_table(summary, bands: dict, unc: Uncertainty, draws: int, title: str = ""):
    """A rich table: each latency's p50/p90/p99 with its band, and what the band is made of."""
    from rich.table import Table

    table = Table(title=title or f"{BAND_PCT}% bands over {draws} draws")
    table.add_column("metric")
    for col in ("p50", "p90", "p99", "mean"):
        table.add_column(col, justify="right")
    for name in BAND_LATENCIES:
        table.add_row(name, *(_cell(summary.latency[name][s], bands[name][s]) for s in BAND_STATS))
    tok = bands["output_tokens_per_s"]
    table.caption = (f"output tok/s {_cell(summary.output_tokens_per_s, tok)}; errors drawn: "
                     f"{len(unc.unit_pct)} units (mean {unc.mean_unit_pct:.1f}%), engine step "
                     f"{unc.step_pct:.1f}%{_kinds(unc)} ({unc.step_source}); one draw per run, not per step")
    return table


def _kinds(unc: Uncertainty) -> str:
    return (" (" + ", ".join(f"{k} {p:.1f}%" for k, p in unc.kind_pct) + ")") if unc.kind_pct else ""


def _cell(value: float, lohi: dict) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    lo, hi = lohi["lo"], lohi["hi"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{value:,.1f}"
    return f"{value:,.1f} [{lo:,.1f}-{hi:,.1f}]"
