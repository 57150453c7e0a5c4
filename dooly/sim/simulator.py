"""Discrete-event loop: arrivals join the scheduler, each engine step lasts what the step
model says for its batch, and tokens appear at the end of their step."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from dooly.sim.scheduler import ScheduledSeq, Scheduler, SchedulerConfig, SeqState
from dooly.sim.workload import Request

StepTimeFn = Callable[[list[ScheduledSeq]], float]
STOP_EVERY = 32   # steps between two questions to simulate's `stop`


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request; times are simulated seconds."""
    rid: int
    arrival_s: float
    prompt_len: int
    output_len: int
    first_scheduled_s: float
    token_times: tuple[float, ...]
    num_preemptions: int

    @property
    def first_token_s(self) -> float:
        return self.token_times[0]

    @property
    def finish_s(self) -> float:
        return self.token_times[-1]


@dataclass(frozen=True)
class SimResult:
    requests: list[RequestRecord]
    step_end_s: np.ndarray        # per step: simulated time when it ended
    step_ms: np.ndarray           # per step: the whole engine step
    step_num_seqs: np.ndarray
    step_num_tokens: np.ndarray
    num_preemptions: int
    config: SchedulerConfig
    info: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.step_ms)


def _check_fits(requests: Sequence[Request], cfg: SchedulerConfig) -> None:
    # A request that cannot hold its whole KV alone would preempt itself forever.
    for r in requests:
        total = r.prompt_len + r.output_len
        if cfg.max_model_len is not None and total > cfg.max_model_len:
            raise ValueError(f"request {r.rid}: prompt_len + output_len = {total} exceeds "
                             f"max_model_len {cfg.max_model_len}")
        if cfg.num_blocks is not None and cfg.blocks_for(total - 1) > cfg.usable_blocks:
            raise ValueError(f"request {r.rid}: {total} tokens need "
                             f"{cfg.blocks_for(total - 1)} KV blocks, num_blocks is "
                             f"{cfg.num_blocks} (one of them vLLM's null block)")


def simulate(requests: Sequence[Request], step_time_fn: StepTimeFn,
             sched_cfg: SchedulerConfig | None = None,
             stop: Callable[[float, list[SeqState]], bool] | None = None) -> SimResult:
    """Run `requests` to completion. `step_time_fn(batch)` returns a whole engine step's
    milliseconds (e.g. `Predictor.step_ms`). `stop(t, states)`, asked every STOP_EVERY
    steps, may end the run early (a search probe whose verdict is already sure); the
    result's `info["stopped_s"]` then says when, and unfinished requests have fewer tokens."""
    cfg = sched_cfg or SchedulerConfig()
    _check_fits(requests, cfg)
    pending = sorted(requests, key=lambda r: r.arrival_s)
    states = [SeqState(r) for r in pending]
    sched = Scheduler(cfg)
    ends, durations, nseqs, ntoks = [], [], [], []
    t, nxt, total = 0.0, 0, len(states)
    info: dict = {}
    while nxt < total or sched.has_work():
        while nxt < total and pending[nxt].arrival_s <= t:
            sched.add(states[nxt])
            nxt += 1
        if not sched.has_work():
            t = pending[nxt].arrival_s  # idle engine: skip to the next arrival
            continue
        seqs, batch = sched.schedule(t)
        if not batch:
            if nxt < total:
                t = pending[nxt].arrival_s
                continue
            raise RuntimeError(f"scheduler stalled with {len(sched.waiting)} waiting and "
                               f"{len(sched.running)} running requests")
        if stop is not None and len(ends) % STOP_EVERY == 0 and ends and stop(t, states):
            info["stopped_s"] = t
            break
        ms = float(step_time_fn(batch))
        if not ms >= 0:
            raise ValueError(f"step time must be >= 0 ms, got {ms} for a batch of "
                             f"{len(batch)} sequences")
        t += ms / 1000.0
        sched.complete(seqs, batch, t)
        ends.append(t)
        durations.append(ms)
        nseqs.append(len(batch))
        ntoks.append(sched.last_num_tokens)
    records = [RequestRecord(s.req.rid, s.req.arrival_s, s.req.prompt_len, s.req.output_len,
                             s.first_scheduled_s, tuple(s.token_times), s.preemptions)
               for s in states]
    records.sort(key=lambda r: r.rid)
    return SimResult(records, np.asarray(ends), np.asarray(durations),
                     np.asarray(nseqs, dtype=np.int64), np.asarray(ntoks, dtype=np.int64),
                     sched.num_preemptions, cfg, info)
