"""The sweep's part for collective units: per group size, the collective environment
(dooly.parallel), the points it lacks, a lease on each unit, one run of the group
(dooly.profile.collectives) for all of them, every point committed."""
from __future__ import annotations

import time

import torch

from dooly.db.leases import LEASE_S, lease_owner
from dooly.env import Environment
from dooly.parallel import collective_environment
from dooly.profile.collectives import collective_units, items_for, measurements, run_group, todo_points
from dooly.profile.grid import GridLimits
from dooly.unit import Unit

COMMS = ("engine", "torch")


def expected_label(comm: str, env: Environment) -> str:
    if comm not in COMMS:
        raise ValueError(f"comm: expected one of {COMMS}, got {comm!r}")
    if comm == "torch":
        return f"torch.distributed/{'nccl' if env.device_kind == 'cuda' else 'gloo'}"
    from dooly.engines import collective_label
    return collective_label(env.engine, env.device_kind)


def _claim(store, group: dict[str, Unit], todo: dict, cenv: Environment, owner: str, summary) -> list[str]:
    mine = []
    for key in group:
        if not todo[key]:
            summary.units_reused.append(key)
        elif store.claim(key, cenv.key, owner):
            mine.append(key)
        else:  # another live sweeper measures it; its points land in the same DB
            summary.units_by_others.append(key)
    return mine


def _renewer(store, keys: list[str], cenv: Environment, owner: str):
    last = [time.monotonic()]

    def renew():
        if time.monotonic() - last[0] > LEASE_S / 4:
            for k in keys:
                store.renew(k, cenv.key, owner)
            last[0] = time.monotonic()
    return renew


def _host_error(size: int, env: Environment) -> str | None:
    if env.device_kind == "cuda" and torch.cuda.device_count() < size:
        return f"a group of {size} ranks needs {size} CUDA devices on this host, it has {torch.cuda.device_count()}"
    return None


def sweep_collectives(store, units: dict[str, Unit], env: Environment, lim: GridLimits, summary,
                      comm: str = "engine", progress=None, retry_failed: bool = False) -> None:
    """Measure the collective units among `units` that the DB lacks, one group run per
    group size; `summary` is the sweep's SweepSummary. `retry_failed`: as `sweep`'s, in
    each group's own environment."""
    for size, group in sorted(collective_units(units).items()):
        label = expected_label(comm, env)
        cenv = collective_environment(env, size, label)
        store.add_environment(cenv)
        if retry_failed:
            summary.points_retried += store.forget_failed(group, cenv.key)
        todo = todo_points(store, group, cenv, lim)
        owner = lease_owner()
        mine = _claim(store, group, todo, cenv, owner, summary)
        if not mine:
            continue
        pairs = [(group[k], p) for k in mine for p in todo[k]]
        t0 = time.perf_counter()
        try:
            err = _host_error(size, env)
            job = {"engine": env.engine, "device": env.device_kind, "threads": env.threads,
                   "comm": comm, "items": items_for(pairs)}
            ran, samples, err = ("", [], err) if err else run_group(
                size, job, _renewer(store, mine, cenv, owner))
            for i, m in enumerate(measurements(pairs, cenv, ran, samples, err, label)):
                store.add_measurement(m)
                summary.points_failed += m.status == "failed"
                summary.points_measured += m.status == "ok"
                if progress:
                    progress(pairs[i][0], i + 1, len(pairs))
        finally:
            for k in mine:
                store.release(k, cenv.key, owner)
        measured = store.units_measured(cenv.key)
        for k in mine:
            summary.units_measured.append(k)
            summary.unit_seconds[k] = (time.perf_counter() - t0) / len(mine)
            if k not in measured:
                summary.units_failed.append(k)
        summary.collective_envs[size] = cenv.key
