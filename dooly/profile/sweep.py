"""`sweep`: measure only what the DB lacks for this environment. Every measurement is
committed as it is taken, so an interrupted sweep resumes where it stopped; a point
that fails is stored as failed with its reason and the sweep goes on.

Several sweepers (processes, hosts) may fill one DB at once: each claims a unit (a
lease row: host:pid and an expiry it renews while measuring) before measuring it, skips
units another live sweeper holds, and comes back to them at the end: by then their
points exist, or the other sweeper's lease has lapsed and this one measures them."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from dooly.db.leases import LEASE_S, lease_owner
from dooly.engines import attention_runner, environment
from dooly.env import Environment, Measurement
from dooly.profile.grid import GridLimits, points_for
from dooly.profile.plan import record_analysis
from dooly.profile.timing import timer_for
from dooly.unit import COLLECTIVE_OPS, MLA_ATTRS, Unit, is_mla


@dataclass
class SweepSummary:
    env_key: str
    units_measured: list[str] = field(default_factory=list)
    units_reused: list[str] = field(default_factory=list)
    units_failed: list[str] = field(default_factory=list)
    units_by_others: list[str] = field(default_factory=list)  # measured by another sweeper meanwhile
    points_measured: int = 0
    points_failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    unit_seconds: dict[str, float] = field(default_factory=dict)
    points_rechecked_faster: int = 0
    recheck_seconds: float = 0.0
    collective_envs: dict[int, str] = field(default_factory=dict)  # group size -> env key
    family_served: dict[str, float] = field(default_factory=dict)  # unit key -> check error %
    host_change: dict[str, float] | None = None   # dooly.hostspeed.stored_change at the start

    def to_json(self) -> dict:
        return {"env_key": self.env_key, "units_measured": len(self.units_measured),
                "units_reused": len(self.units_reused), "units_failed": len(self.units_failed),
                "units_by_others": len(self.units_by_others),
                "points_measured": self.points_measured, "points_failed": self.points_failed,
                "points_rechecked_faster": self.points_rechecked_faster,
                "seconds": round(self.seconds, 2), "recheck_seconds": round(self.recheck_seconds, 2),
                "interrupted": self.interrupted,
                "collective_envs": {str(k): v for k, v in self.collective_envs.items()},
                "units_family_served": len(self.family_served), "host_change": self.host_change}


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


def sweep(analysis, db_path: str, device: str = "cpu", backend: str | None = None,
          lim: GridLimits = GridLimits(), threads: int | None = None, progress=None,
          recheck: bool | None = None, comm: str = "engine", families: bool = False,
          adaptive: bool = False, tolerance_pct: float = 3.0, routing: str = "balanced",
          step_tolerance_pct: float | None = None) -> SweepSummary:
    """Measure every unit of the analysed models (`analysis.engine`, `.inventories`: what
    `dooly.analyze.analyze` returns) that the DB lacks for this environment.
    `progress(unit, done, total)` is called after each point. `recheck` (default: on a
    CPU, which shares its cores with whatever else runs) times every new point again
    after the first pass and keeps the faster median. Collective units (a tensor-parallel
    analysis) are timed across a real group of processes (dooly.profile.collective_sweep;
    `comm`: "engine" for the engine's communicator, "torch" for plain torch.distributed).
    `families`: a unit whose family covers it is measured at check points and served by
    the family when they agree within `tolerance_pct` (or, with `step_tolerance_pct`, when
    each check error weighed by the unit's share of its model is within it; dooly.fit.checks);
    `adaptive`: a one-axis unit swept
    in full is refined only where interpolation misses (dooly.profile.checkpoints).
    `routing`: the expert distribution mixture-of-experts units are timed under
    (dooly.routing: "balanced" or "skew:S"), recorded in each of their points."""
    recheck = device == "cpu" if recheck is None else recheck
    from dooly.db import Store
    Store.ensure_writable(db_path)
    env = _sweep_environment(analysis, device, backend, threads)
    torch.set_num_threads(env.threads)
    summary = SweepSummary(env.key)
    t0 = time.perf_counter()
    with Store.open(db_path) as store:
        store.add_environment(env)
        record_analysis(store, analysis)
        units, coll = _units_of(analysis, lim, heaviest=step_tolerance_pct is not None)
        policy = None
        if families or adaptive:
            from dooly.profile.checkpoints import SweepPolicy
            policy = SweepPolicy(store, env.key, tolerance_pct, families, adaptive,
                                 step_tolerance_pct=step_tolerance_pct, engine=env.engine)
        from dooly.hostspeed import HostProbe, stored_change
        probe = HostProbe() if device == "cpu" else None
        if probe is not None:   # before this sweep's own readings join the stored ones
            summary.host_change = stored_change(store, env.key, [probe.read(mark=False) for _ in range(3)])
        job = _Job(store, env, lim, Runners(env, lim), timer_for(device), summary, progress, policy, probe,
                   routing)
        try:
            _run(job, units, coll, comm, recheck)
        except KeyboardInterrupt:
            summary.interrupted = True
        if policy is not None:
            summary.family_served = {k: round(v.error_pct, 3) for k, v in policy.verdicts.items() if v.served}
    summary.seconds = time.perf_counter() - t0
    return summary


def _sweep_environment(analysis, device: str, backend: str | None, threads: int | None) -> Environment:
    tp = max([getattr(inv, "tp", 1) for inv in analysis.inventories] or [1])
    if tp > 1 and threads is None and device == "cpu":
        # a TP model's ranks share this host's cores: each computes with its share
        from dooly.engines import default_threads
        from dooly.parallel import rank_threads
        threads = rank_threads(default_threads(analysis.engine, device), tp)
    return environment(analysis.engine, device, backend, threads=threads)


def _units_of(analysis, lim: GridLimits, heaviest: bool) -> tuple[dict, dict]:
    """(units to time alone, collective units) of the analysed models; `heaviest`: the
    units ordered heaviest first (a step tolerance serves light units by their shares)."""
    units: dict[str, Unit] = {}
    for inv in analysis.inventories:
        for key, e in inv.entries.items():
            units.setdefault(key, e.unit)
    coll = {k: u for k, u in units.items() if u.op in COLLECTIVE_OPS}
    units = {k: u for k, u in units.items() if k not in coll}
    if heaviest:
        from dooly.profile.checkpoints import heaviest_first
        units = heaviest_first(units, lim)
    return units, coll


def _run(job: "_Job", units: dict, coll: dict, comm: str, recheck: bool) -> None:
    waiting = [key for key, unit in units.items() if not job.unit(key, unit)]
    while waiting:  # units other sweepers held: theirs to finish, or ours once lapsed
        time.sleep(POLL_S)
        waiting = [key for key in waiting if not job.unit(key, units[key], waited=True)]
    if coll:
        from dooly.profile.collective_sweep import sweep_collectives
        sweep_collectives(job.store, coll, job.env, job.lim, job.summary, comm, job.progress)
    if recheck:
        _recheck(job, [units[k] for k in job.summary.units_measured if k in units])
        _settle_checks(job, units)
    if job.summary.units_measured:
        job.host(force=True)


# how often a sweeper left with only units others hold looks at them again
POLL_S = 1.0


@dataclass
class _Job:
    store: object
    env: Environment
    lim: GridLimits
    runners: Runners
    timer: object
    summary: SweepSummary
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
                m = _measure(self.runners, self.timer, unit, point, env)
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


def _recheck(job: _Job, units: list[Unit]) -> None:
    """A second pass over every point just measured, minutes after the first: another
    process on a shared host only ever slows a point down, and it does so in bursts that
    can cover a run of neighbouring points, so each point keeps the faster of its two
    medians. Interrupting this pass loses nothing: the first pass's rows stand."""
    store, env, summary = job.store, job.env, job.summary
    t0 = time.perf_counter()
    for unit in units:
        for m in store.measurements(unit_key=unit.key, env_key=env.key):
            job.host()
            again = _measure(job.runners, job.timer, unit, m.point, env)
            if again.status == "ok" and again.median_ms < m.median_ms:
                store.add_measurement(again)
                summary.points_rechecked_faster += 1
    summary.recheck_seconds += time.perf_counter() - t0


def _settle_checks(job: _Job, units: dict[str, Unit]) -> None:
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
        _recheck(job, [units[k] for k in turned])


def _measure(runners: Runners, timer, unit: Unit, point: dict, env: Environment) -> Measurement:
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
