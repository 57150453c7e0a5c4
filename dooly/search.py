"""The best serving configuration under SLOs, as an API (what `dooly search` runs).

For every candidate (`dooly.sim.candidates`): the goodput, the highest request rate whose
simulated serving meets every SLO (`dooly.sim.goodput`, bisection over rates on the same
requests), with the figures at that rate. The leaders then get an error band: their
goodput again under `draws` draws of the step times within the predictor's stated error
(`dooly.sim.intervals`, `dooly.uncertainty`), each draw shared by every candidate. The
winner is "within error" when the runner-up's band overlaps its own.

Candidates run in worker processes (spawned): a task carries data only (paths, settings,
requests, SLOs), and each worker loads and keeps the predictors it needs."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

from dooly.errors import DoolyInputError, MissingDataError
from dooly.sim.candidates import Candidate
from dooly.sim.goodput import Goodput, find_goodput, run_probe
from dooly.sim.intervals import DrawnStep, Uncertainty, band, draw_factors
from dooly.sim.scheduler import SchedulerConfig
from dooly.sim.steps import CachedStep

BAND_GUESS = 1.5   # a draw's goodput is first looked for within this factor of the nominal


@dataclass(frozen=True)
class SearchSpec:
    requests: tuple                  # dooly.sim.Request at 1 request/s (lengths fixed)
    slos: tuple                      # dooly.sim.slo.Slo
    rate_lo: float = 0.05
    rate_hi: float = 50.0
    probes: int = 10                 # per goodput bisection
    draws: int = 8                   # error-band draws per leading candidate (0: no bands)
    band_top: int = 3                # how many leaders get a band
    band_probes: int = 7
    seed: int = 0
    base: SchedulerConfig = SchedulerConfig()

    def __post_init__(self):
        if not self.requests or not self.slos:
            raise ValueError("requests, slos: a search needs requests and at least one SLO")
        if not (0 < self.rate_lo < self.rate_hi < math.inf):
            raise ValueError(f"rate_lo, rate_hi: expected 0 < lo < hi, got {self.rate_lo}, {self.rate_hi}")
        for name in ("probes", "band_top", "band_probes"):
            if not 1 <= getattr(self, name) <= 100:
                raise ValueError(f"{name}: expected 1 to 100, got {getattr(self, name)}")
        if not 0 <= self.draws <= 1000:
            raise ValueError(f"draws: expected 0 to 1000, got {self.draws}")


_LOADED: dict = {}   # per worker process: (db, config, env, tp) -> (Predictor, Uncertainty)
_STEPS: dict = {}    # per worker process: (that key, serving, draw, seed) -> CachedStep


@dataclass(frozen=True)
class DbSource:
    """Step times from `dooly.predict.Predictor` over a latency DB."""
    db: str

    def _load(self, cand: Candidate):
        key = (self.db, cand.config, cand.env, cand.devices)
        if key not in _LOADED:
            from dooly.config import load_config
            from dooly.db import Store
            from dooly.graph.units import inventory_key
            from dooly.predict import Predictor
            from dooly.uncertainty import predictor_uncertainty
            with Store.open(self.db, create=False) as store:
                pred = Predictor.load(cand.config, self.db, env_key=cand.env, store=store,
                                      tp=cand.devices)
                # the engine-step pool names a model by its inventory (TP ones apart)
                own = inventory_key(load_config(cand.config).hash, cand.devices)
                _LOADED[key] = (pred, predictor_uncertainty(pred, store, own))
        return _LOADED[key]

    def uncertainty(self, cand: Candidate) -> Uncertainty:
        return self._load(cand)[1]

    def step_fn(self, cand: Candidate, draw: int | None = None, seed: int = 0) -> Callable:
        pred, unc = self._load(cand)
        sched = cand.scheduler(SchedulerConfig())
        serving = (sched.max_num_batched_tokens, sched.max_num_seqs)
        pred.set_serving(*serving)
        key = (self.db, cand.config, cand.env, cand.devices, serving if pred.graphs else None,
               draw, seed)
        if key not in _STEPS:
            if len(_STEPS) > 64:
                _STEPS.clear()
            _STEPS[key] = CachedStep(pred.step_ms if draw is None else
                                     DrawnStep(pred.predict, *draw_factors(unc, draw, seed)))
        return _STEPS[key]


@dataclass(frozen=True)
class CandidateResult:
    candidate: Candidate
    goodput: Goodput
    uncertainty: Uncertainty
    draws: tuple[float, ...] = ()    # the goodput under each draw (leaders only)

    @property
    def per_device(self) -> float:
        return self.goodput.rate / self.candidate.devices

    @property
    def band(self) -> tuple[float, float] | None:
        return band(self.draws) if self.draws else None


def evaluate(source, cand: Candidate, spec: SearchSpec) -> CandidateResult:
    """The candidate's goodput under the nominal prediction."""
    step, sched = source.step_fn(cand), cand.scheduler(spec.base)
    g = find_goodput(lambda r: run_probe(spec.requests, r, step, sched, spec.slos),
                     spec.rate_lo, spec.rate_hi, spec.probes)
    return CandidateResult(cand, g, source.uncertainty(cand))


def evaluate_draw(source, cand: Candidate, spec: SearchSpec, draw: int, nominal: float) -> float:
    """The candidate's goodput under draw number `draw`, looked for near `nominal` first."""
    step, sched = source.step_fn(cand, draw, spec.seed), cand.scheduler(spec.base)
    guess = (nominal / BAND_GUESS, nominal * BAND_GUESS) if nominal > 0 else None
    return find_goodput(lambda r: run_probe(spec.requests, r, step, sched, spec.slos),
                        spec.rate_lo, spec.rate_hi, spec.band_probes, guess).rate


def rank(results) -> list[CandidateResult]:
    """Highest goodput per device first; on a tie, the lower p90 TTFT at goodput."""
    def key(r: CandidateResult):
        at = r.goodput.at_goodput
        ttft = at.stats.get("ttft_p90_ms", math.inf) if at and at.stats else math.inf
        return (-r.per_device, ttft, r.candidate.label)
    return sorted(results, key=key)


@dataclass(frozen=True)
class SearchResult:
    ranked: tuple[CandidateResult, ...]
    within_error: bool | None        # the runner-up's band overlaps the winner's (None: no bands)
    runner_up_wins: float | None     # share of draws where the runner-up's goodput is higher
    output_per_request: float = 0.0  # mean output tokens of the requests (goodput -> tokens/s)

    @property
    def winner(self) -> CandidateResult:
        return self.ranked[0]


def verdict(ranked: list[CandidateResult]) -> tuple[bool | None, float | None]:
    if len(ranked) < 2 or not (ranked[0].draws and ranked[1].draws):
        return None, None
    (w_lo, _), (_, r_hi) = ranked[0].band, ranked[1].band
    pairs = list(zip(ranked[0].draws, ranked[1].draws))
    return r_hi >= w_lo, sum(r > w for w, r in pairs) / len(pairs)


class RelayedInputError(DoolyInputError):
    """An input error met in a worker process, told in the parent word for word."""

    def __init__(self, text: str):
        Exception.__init__(self, text)
        self.path, self.field, self.problem = "", None, text

    def __reduce__(self):
        return RelayedInputError, (str(self),)


def _task(fn, *args):
    try:
        return fn(*args)
    except (DoolyInputError, MissingDataError) as err:
        raise RelayedInputError(str(err)) from None


def run_tasks(tasks: list[tuple], pool=None, on_done: Callable[[], None] | None = None) -> list:
    """[(fn, *args)] in `pool` (a concurrent.futures executor; None: in this process), in order."""
    done = on_done or (lambda: None)
    if pool is None:
        out = []
        for t in tasks:
            out.append(_task(*t))
            done()
        return out
    from concurrent.futures import as_completed
    out = [None] * len(tasks)
    futures = {pool.submit(_task, *t): i for i, t in enumerate(tasks)}
    for f in as_completed(futures):
        out[futures[f]] = f.result()
        done()
    return out


def worker_pool(jobs: int):
    """`jobs` spawned worker processes (each keeps the predictors it loads for the whole
    search), or None for one job."""
    if jobs <= 1:
        return contextlib.nullcontext(None)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))


def search(source, candidates: list[Candidate], spec: SearchSpec, jobs: int = 1,
           progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Every candidate's goodput, bands for the `band_top` leaders, the ranking and verdict.
    `progress(done, total)` is told after each task (candidates, then band draws)."""
    n = len(candidates)
    count = {"done": 0, "total": n + min(spec.band_top, n) * spec.draws}

    def tick():
        count["done"] += 1
        if progress:
            progress(count["done"], count["total"])
    with worker_pool(jobs if count["total"] > 1 else 1) as pool:
        results = rank(run_tasks([(evaluate, source, c, spec) for c in candidates], pool, tick))
        leaders = [i for i, r in enumerate(results[:spec.band_top]) if r.goodput.rate > 0] if spec.draws else []
        tasks = [(evaluate_draw, source, results[i].candidate, spec, d, results[i].goodput.rate)
                 for i in leaders for d in range(spec.draws)]
        count["total"] = n + len(tasks)
        rates = run_tasks(tasks, pool, tick)
    for k, i in enumerate(leaders):
        results[i] = dataclasses.replace(results[i], draws=tuple(rates[k * spec.draws:(k + 1) * spec.draws]))
    within, wins = verdict(results)
    mean_out = sum(r.output_len for r in spec.requests) / len(spec.requests)
    return SearchResult(tuple(results), within, wins, mean_out)
