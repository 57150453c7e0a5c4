"""One unit of a sweep (dooly.profile.sweep): its request grid (`grid_for`), a runnable per
unit rebuilt from data (`Runners`: attention through the engine's own backend, shared by
units of equal attributes), its missing points measured under a lease (`SweepJob.unit`),
the second pass that keeps each point's faster median (`recheck_points`) and the check
points that pass turns (`settle_checks`). `measure_point` records a point that fails as
failed, with its reason, and the sweep goes on."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from dooly.db.leases import LEASE_S, lease_owner
from dooly.engines import attention_runner
from dooly.env import Environment, Measurement
from dooly.profile.grid import GridLimits, points_for
from dooly.unit import MLA_ATTRS, Unit, is_mla


def grid_for(unit: Unit, lim: GridLimits, routing: str = "balanced") -> list[dict]:
    from dooly.routing import is_moe, with_routing
    pts = points_for(unit.driver, lim, unit.request_symbols())
    if is_moe(unit):   # timed under the expert distribution it names (dooly.routing)
        return with_routing(pts, routing)
    if unit.op == "scaled_dot_product_attention":
        # the transformers capture is a prefill without a cache
        pts = [p for p in pts if all(c == 0 for _, c in p["seqs"])]
    return pts


class Runners:
    """One runner per unit; attention runners are shared by units with equal attributes."""

    def __init__(self, env: Environment, lim: GridLimits):
        self.env, self.lim = env, lim
        self._runners: dict = {}  # unit key, or attention attributes -> runner
        self._last = None         # the stateless runner the last point used

    def prepare(self, unit: Unit, point: dict):
        if unit.stateful:
            return self._stateful(unit, point)
        from dooly.profile.runners import StatelessRunner
        runner = self._runners.get(unit.key)
        if runner is None:
            runner = self._runners[unit.key] = StatelessRunner(unit, self.env.engine,
                                                            self.env.device_kind, self.env.execution,
                                                            cold=self.env.cache != "warm")
        if self._last is not None and self._last is not runner:
            self._last.release()   # its cold weight sets span several last-level caches
        self._last = runner
        return runner.prepare(point)

    def _stateful(self, unit: Unit, point: dict):
        a = unit.attr
        # the KV-cache write is token-driven: one sequence of T new tokens
        seqs = [tuple(s) for s in point["seqs"]] if "seqs" in point else [(point["T"], 0)]
        if unit.op == "scaled_dot_product_attention":
            from dooly.profile.runners import random_tensor
            from dooly.profile.grid import point_values
            q, k, v = (random_tensor(s, point_values(point), self.env.device_kind) for s in unit.inputs[:3])
            gqa = bool(a.get("enable_gqa", False))
            return lambda: torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, enable_gqa=gqa)
        key = (a.get("num_heads"), a.get("num_kv_heads"), a.get("head_size"), a.get("sliding_window", 0))
        kw = {"num_heads": key[0], "num_kv_heads": key[1], "head_size": key[2], "sliding_window": key[3] or 0}
        if is_mla(a):   # latent attention: its own layer, keyed by its shapes
            kw = {"num_heads": key[0], **{k: a[k] for k in MLA_ATTRS}}
            key = (key[0],) + tuple(a[k] for k in MLA_ATTRS)
        runner = self._runners.get(key)
        if runner is None:
            runner = self._runners[key] = attention_runner(
                self.env.engine, **kw, dtype=self.env.dtype,
                block_size=self.env.block_size, max_context=self.lim.max_context + self.lim.max_tokens,
                max_batch=max(self.lim.max_batch, 4), cold_kv=self.env.cache == "cold")
        parts = runner.prepare_parts(seqs)
        return parts["kv_update" if "kv_cache" in unit.op else "attention"]


@dataclass
class SweepJob:
    store: object
    env: Environment
    lim: GridLimits
    runners: Runners
    timer: object
    summary: object         # dooly.profile.sweep.SweepSummary: what this sweep did so far
    progress: object = None
    policy: object = None   # check points and adaptive grids (dooly.profile.checkpoints)
    probe: object = None    # dooly.hostspeed.HostProbe: the host state beside the points
    routing: str = "balanced"

    def host(self, force: bool = False) -> None:
        if self.probe is None:
            return
        r = self.probe.read() if force else self.probe.maybe()
        if r is not None:
            self.store.add_host_probe(self.env.key, r.timestamp, r.gemm_ms, r.stream_ms, "sweep")

    def todo(self, key: str, unit: Unit) -> list[dict]:
        if self.policy is not None:
            return self.policy.todo(key, unit, grid_for(unit, self.lim, self.routing))
        return [p for p in grid_for(unit, self.lim, self.routing)
                if not self.store.has_point(key, self.env.key, p)]

    def unit(self, key: str, unit: Unit, waited: bool = False) -> bool:
        """Measure the unit's missing points under a lease. True when none is left
        missing; False when another live sweeper holds the unit (come back later)."""
        s, store, env = self.summary, self.store, self.env
        if not self.todo(key, unit):
            (s.units_by_others if waited else s.units_reused).append(key)
            return True
        owner = lease_owner()
        if not store.claim(key, env.key, owner):
            return False
        try:
            todo = self.todo(key, unit)  # another sweeper may have finished it meanwhile
            if not todo:
                (s.units_by_others if waited else s.units_reused).append(key)
                return True
            if key not in s.units_measured:  # back after a lapsed lease: counted once
                s.units_measured.append(key)
            t_unit, renewed = time.perf_counter(), time.monotonic()
            total = len(grid_for(unit, self.lim, self.routing)) if self.policy is not None else len(todo)
            i = -1
            while todo:  # a policy's next points depend on what was just measured
                point, todo, i = todo[0], todo[1:], i + 1
                if time.monotonic() - renewed > LEASE_S / 4:
                    if not store.renew(key, env.key, owner):
                        return False  # our lease lapsed and was taken over: theirs now
                    renewed = time.monotonic()
                self.host()
                m = measure_point(self.runners, self.timer, unit, point, env)
                store.add_measurement(m)
                s.points_failed += m.status == "failed"
                s.points_measured += m.status == "ok"
                if self.progress:
                    self.progress(unit, i + 1, max(total, i + 1))
                if self.policy is not None:
                    todo = self.todo(key, unit)
            s.unit_seconds[key] = time.perf_counter() - t_unit
            if key not in store.units_measured(env.key):
                s.units_failed.append(key)
            return True
        finally:
            store.release(key, env.key, owner)


def recheck_points(job: SweepJob, units: list[Unit]) -> None:
    """A second pass over every point just measured, minutes after the first: another
    process on a shared host only ever slows a point down, and it does so in bursts that
    can cover a run of neighbouring points, so each point keeps the faster of its two
    medians. Interrupting this pass loses nothing: the first pass's rows stand."""
    store, env, summary = job.store, job.env, job.summary
    t0 = time.perf_counter()
    for unit in units:
        for m in store.measurements(unit_key=unit.key, env_key=env.key):
            job.host()
            again = measure_point(job.runners, job.timer, unit, m.point, env)
            if again.status == "ok" and again.median_ms < m.median_ms:
                store.add_measurement(again)
                summary.points_rechecked_faster += 1
    summary.recheck_seconds += time.perf_counter() - t0


def settle_checks(job: SweepJob, units: dict[str, Unit]) -> None:
    """The second pass re-times check points too, after the first pass judged their
    family on them. A verdict its faster points turn (the family now misses one by more
    than the tolerance) sweeps the unit in full here, and that unit's points get their
    second pass: the sweep never leaves a unit measured at its check points only with a
    failed check, and `dooly fit`, which judges on the points as they are, agrees."""
    policy = job.policy
    if policy is None or not policy.families:
        return
    turned = [k for k in job.summary.units_measured if k in units and k in policy.verdicts
              and policy.verdicts[k].served and job.todo(k, units[k])]
    for key in turned:
        job.unit(key, units[key])
    if turned:
        recheck_points(job, [units[k] for k in turned])


def measure_point(runners: Runners, timer, unit: Unit, point: dict, env: Environment) -> Measurement:
    try:
        fn = runners.prepare(unit, point)
        st = timer(fn)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # OOM, unsupported shape, kernel error: record and go on
        return Measurement(unit.key, env.key, point, status="failed",
                           reason=f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
    return Measurement(unit.key, env.key, point, st.median_ms, st.p10_ms, st.p90_ms, st.mean_ms,
                       st.std_ms, st.samples, st.outliers)
