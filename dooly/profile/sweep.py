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

from dooly.engines import environment
from dooly.env import Environment
from dooly.profile.grid import GridLimits
from dooly.profile.plan import record_analysis
from dooly.profile.sweep_units import Runners, SweepJob, recheck_points, settle_checks
from dooly.profile.timing import timer_for
from dooly.unit import COLLECTIVE_OPS, Unit


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
    points_retried: int = 0   # failed points dropped to be measured again (retry_failed)

    def to_json(self) -> dict:
        return {"env_key": self.env_key, "units_measured": len(self.units_measured),
                "units_reused": len(self.units_reused), "units_failed": len(self.units_failed),
                "units_by_others": len(self.units_by_others),
                "points_measured": self.points_measured, "points_failed": self.points_failed,
                "points_retried": self.points_retried,
                "points_rechecked_faster": self.points_rechecked_faster,
                "seconds": round(self.seconds, 2), "recheck_seconds": round(self.recheck_seconds, 2),
                "interrupted": self.interrupted,
                "collective_envs": {str(k): v for k, v in self.collective_envs.items()},
                "units_family_served": len(self.family_served), "host_change": self.host_change}


def sweep(analysis, db_path: str, device: str = "cpu", backend: str | None = None,
          lim: GridLimits = GridLimits(), threads: int | None = None, progress=None,
          recheck: bool | None = None, comm: str = "engine", families: bool = False,
          adaptive: bool = False, tolerance_pct: float = 3.0, routing: str = "balanced",
          step_tolerance_pct: float | None = None, retry_failed: bool = False) -> SweepSummary:
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
    (dooly.routing: "balanced" or "skew:S"), recorded in each of their points.
    `retry_failed`: points stored as failed are measured again (by default a resumed
    sweep skips them, as it skips the points it has)."""
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
        if retry_failed:   # collective units: in their group's environment (_run)
            summary.points_retried = store.forget_failed(units, env.key)
        policy = None
        if families or adaptive:
            from dooly.profile.checkpoints import SweepPolicy
            policy = SweepPolicy(store, env.key, tolerance_pct, families, adaptive,
                                 step_tolerance_pct=step_tolerance_pct, engine=env.engine)
        from dooly.hostspeed import HostProbe, stored_change
        probe = HostProbe() if device == "cpu" else None
        if probe is not None:   # before this sweep's own readings join the stored ones
            summary.host_change = stored_change(store, env.key, [probe.read(mark=False) for _ in range(3)])
        job = SweepJob(store, env, lim, Runners(env, lim), timer_for(device), summary, progress, policy, probe,
                   routing)
        try:
            _run(job, units, coll, comm, recheck, retry_failed)
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


def _run(job: SweepJob, units: dict, coll: dict, comm: str, recheck: bool,
         retry_failed: bool = False) -> None:
    waiting = [key for key, unit in units.items() if not job.unit(key, unit)]
    while waiting:  # units other sweepers held: theirs to finish, or ours once lapsed
        time.sleep(POLL_S)
        waiting = [key for key in waiting if not job.unit(key, units[key], waited=True)]
    if coll:
        from dooly.profile.collective_sweep import sweep_collectives
        sweep_collectives(job.store, coll, job.env, job.lim, job.summary, comm, job.progress, retry_failed)
    if recheck:
        recheck_points(job, [units[k] for k in job.summary.units_measured if k in units])
        settle_checks(job, units)
    if job.summary.units_measured:
        job.host(force=True)


# how often a sweeper left with only units others hold looks at them again
POLL_S = 1.0
