"""vLLM V1 scheduling (FCFS, chunked prefill, recompute preemption) over a paged KV cache.

One model covers prefill, decode and recompute: a sequence has `num_tokens` known tokens
(prompt + generated so far) of which `computed` have KV; each step schedules up to
`num_tokens - computed` of them, and a step that brings `computed` to `num_tokens`
samples one new token. Decoding is the case `num_tokens - computed == 1`."""
from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from dooly.sim.workload import Request


@dataclass(frozen=True)
class SchedulerConfig:
    # 8192 tokens is what vLLM 0.32 picks for `vllm serve` on >=70 GiB GPUs (H100/H200)
    # and for the offline LLM class on smaller ones. 256 seqs is vLLM's default on GPUs
    # below 70 GiB (H100/H200 serve gets 1024); pass it explicitly to match a deployment.
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    block_size: int = 16
    # vLLM's num_gpu_blocks; None: the KV cache never runs out (no preemption). Its block 0
    # is a placeholder that never holds KV (BlockPool's null block): num_blocks - 1 do.
    num_blocks: int | None = None
    long_prefill_token_threshold: int = 0  # 0: off, as in vLLM
    max_model_len: int | None = None

    def __post_init__(self):
        for name in ("max_num_batched_tokens", "max_num_seqs", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_blocks is not None and self.num_blocks < 2:
            raise ValueError(f"num_blocks must be >= 2 (one is vLLM's null block), got {self.num_blocks}")
        if self.long_prefill_token_threshold < 0:
            raise ValueError("long_prefill_token_threshold must be >= 0, "
                             f"got {self.long_prefill_token_threshold}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @property
    def usable_blocks(self) -> int | None:
        """The blocks that hold KV (None: unbounded)."""
        return None if self.num_blocks is None else self.num_blocks - 1


class ScheduledSeq(NamedTuple):
    """One sequence in a step. A NamedTuple, not a dataclass: millions are built per run."""
    query_len: int      # tokens computed this step
    context_len: int    # tokens with KV before this step
    emits_token: bool   # this step completes its prefill, or it is decoding


# Skips NamedTuple's Python-level __new__: about twice as fast in the scheduler hot loop.
def _new_seq(fields: tuple[int, int, bool], _new=tuple.__new__) -> ScheduledSeq:
    return _new(ScheduledSeq, fields)


class SeqState:
    """Mutable per-request progress; plain slots because it is touched every step."""
    __slots__ = ("req", "output_len", "num_tokens", "computed", "generated", "blocks",
                 "first_scheduled_s", "token_times", "preemptions", "finish_s")

    def __init__(self, req: Request):
        self.req = req
        self.output_len = req.output_len
        self.num_tokens = req.prompt_len
        self.computed = 0
        self.generated = 0
        self.blocks = 0
        self.first_scheduled_s: float | None = None
        self.token_times: list[float] = []
        self.preemptions = 0
        self.finish_s: float | None = None


class Scheduler:
    def __init__(self, cfg: SchedulerConfig):
        self.cfg = cfg
        self.waiting: deque[SeqState] = deque()
        self.running: list[SeqState] = []   # admission order; the tail is preempted first
        self.capacity = cfg.usable_blocks if cfg.num_blocks is not None else sys.maxsize
        self.free_blocks = self.capacity
        self.num_preemptions = 0
        self.last_num_tokens = 0

    def add(self, seq: SeqState) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def _preempt(self, seq: SeqState) -> None:
        # Recompute preemption: drop all KV; generated tokens stay in num_tokens and are
        # recomputed as prompt when the request is scheduled again.
        self.free_blocks += seq.blocks
        seq.blocks = 0
        seq.computed = 0
        seq.preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def schedule(self, now: float) -> tuple[list[SeqState], list[ScheduledSeq]]:
        """One step's plan: the scheduled sequences and what the model computes for each.
        Hot loop: attributes are cached in locals and decodes skip the prefill caps."""
        cfg = self.cfg
        # vLLM ignores the threshold when only one request could use the step.
        thresh = cfg.long_prefill_token_threshold
        if len(self.running) + len(self.waiting) <= 1:
            thresh = 0
        limit = cfg.max_model_len - 1 if cfg.max_model_len is not None else sys.maxsize
        seqs: list[SeqState] = []
        batch: list[ScheduledSeq] = []
        budget, preempted = self._schedule_running(seqs, batch, thresh, limit)
        # Like vLLM, admit nothing new in a step that had to preempt.
        if not preempted:
            budget = self._admit_waiting(seqs, batch, budget, thresh, limit, now)
        self.last_num_tokens = cfg.max_num_batched_tokens - budget
        return seqs, batch

    def _schedule_running(self, seqs: list, batch: list, thresh: int, limit: int) -> tuple[int, bool]:
        """The running requests' part of a step, in order, preempting from the tail when
        the KV cache is short; (the token budget left, whether anything was preempted)."""
        bs = self.cfg.block_size
        budget = self.cfg.max_num_batched_tokens
        running = self.running
        free = self.free_blocks
        preempted = False
        i, n_run = 0, len(running)
        while i < n_run and budget > 0:
            s = running[i]
            ctx = s.computed
            n = s.num_tokens - ctx
            if n > 1:
                if 0 < thresh < n:
                    n = thresh
                if n > budget:
                    n = budget
            if n > limit - ctx:
                n = limit - ctx
            if n <= 0:
                i += 1
                continue
            need = (ctx + n + bs - 1) // bs - s.blocks
            if need > free:
                victim = None
                self.free_blocks = free
                while need > self.free_blocks:
                    # The tail of `running` was admitted last and is never already
                    # scheduled in this step (i <= tail), so nothing is un-scheduled.
                    victim = running.pop()
                    self._preempt(victim)
                    preempted = True
                    if victim is s:
                        break
                free, n_run = self.free_blocks, len(running)
                if victim is s:
                    break  # s was the tail: nothing behind it is left to schedule
            free -= need
            s.blocks += need
            seqs.append(s)
            batch.append(_new_seq((n, ctx, ctx + n == s.num_tokens)))
            budget -= n
            i += 1
        self.free_blocks = free
        return budget, preempted

    def _admit_waiting(self, seqs: list, batch: list, budget: int, thresh: int, limit: int,
                       now: float) -> int:
        """Admit waiting requests first come, first served while the budget, the sequence
        cap and the KV cache allow; the token budget left."""
        cfg, bs = self.cfg, self.cfg.block_size
        waiting, running = self.waiting, self.running
        free = self.free_blocks
        while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
            s = waiting[0]
            n = s.num_tokens  # waiting requests hold no KV (computed == 0)
            # vLLM admits a request only if its whole prompt fits, not just the first
            # chunk (scheduler_reserve_full_isl, on by default in 0.32); so the chunk
            # fits too. FCFS: the head blocks everyone behind it.
            if (min(n, limit + 1) + bs - 1) // bs > free:
                break
            if 0 < thresh < n:
                n = thresh
            if n > budget:
                n = budget
            need = (n + bs - 1) // bs
            waiting.popleft()
            free -= need
            s.blocks = need
            if s.first_scheduled_s is None:
                s.first_scheduled_s = now
            running.append(s)
            seqs.append(s)
            batch.append(_new_seq((n, 0, n == s.num_tokens)))
            budget -= n
        self.free_blocks = free
        return budget

    def complete(self, seqs: list[SeqState], batch: list[ScheduledSeq],
                 end_s: float) -> list[SeqState]:
        """Apply a finished step at time `end_s`; returns the requests that finished."""
        done = []
        for s, b in zip(seqs, batch):
            s.computed += b[0]
            if b[2]:
                s.generated += 1
                s.token_times.append(end_s)
                if s.generated >= s.output_len:
                    s.finish_s = end_s
                    self.free_blocks += s.blocks
                    s.blocks = 0
                    done.append(s)
                else:
                    s.num_tokens += 1
        if done:
            self.running = [s for s in self.running if s.finish_s is None]
        return done

    def used_blocks(self) -> int:
        return sum(s.blocks for s in self.running)
