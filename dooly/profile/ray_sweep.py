"""Distributed sweeps on Ray (`dooly sweep ... --ray [ADDRESS]`): the driver plans the
missing (unit, point) work for the environment, hands one unit at a time to each
`SweepWorker` actor (`ray_worker`: one device each), and commits every measurement as
it streams back, so the DB has one writer and Ctrl-C or a lost worker loses at most
the points in flight. A rerun measures only what is missing.

Workers report their environment before any work: one whose environment differs from
the one the driver plans for (another CPU or GPU model, another engine or torch
version) is refused and named, never mixed in. The driver claims each unit's lease as
`sweep` does, so Ray sweeps and plain sweeps can fill one DB together. A worker that
dies hands its unit's remaining points to the others (a point that has killed two
workers is stored as failed); a failure inside a worker is a failed point with its
reason. Nothing stored is pickled: units travel as their JSON, measurements as dicts
checked by the driver before they are written."""
from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

from dooly.db.check import measurement_problem
from dooly.db.leases import LEASE_S, lease_owner
from dooly.env import Environment, Measurement
from dooly.profile.grid import GridLimits
from dooly.profile.ray_cluster import Worker, connect, start_workers
from dooly.profile.sweep import POLL_S, SweepSummary
from dooly.profile.sweep_units import grid_for
from dooly.unit import COLLECTIVE_OPS, Unit


@dataclass
class RaySweepSummary(SweepSummary):
    workers: list[str] = field(default_factory=list)          # "host pid N cores [..]"
    workers_refused: list[str] = field(default_factory=list)  # "host pid: why"
    workers_lost: list[str] = field(default_factory=list)
    units_unfinished: list[str] = field(default_factory=list)  # every worker was lost first
    units_collective: list[str] = field(default_factory=list)  # left to a plain `dooly sweep`

    def to_json(self) -> dict:
        return dict(super().to_json(), workers=len(self.workers), workers_refused=self.workers_refused,
                    workers_lost=len(self.workers_lost), units_unfinished=len(self.units_unfinished),
                    units_collective=len(self.units_collective))


@dataclass
class RayProgress:
    """What the progress bar shows, after each committed point."""
    phase: str                 # "measure", or "recheck" for the second pass
    units_total: int
    units_done: int
    points_total: int
    points_done: int
    measured: int
    reused: int
    failed: int
    workers: dict = field(default_factory=dict)  # worker name -> pid, the live ones


@dataclass
class _Task:
    worker: Worker
    key: str
    unit: Unit
    todo: list                 # points not yet returned, in the order the worker takes them


def ray_sweep(analysis, db_path: str, device: str = "cpu", backend: str | None = None,
              lim: GridLimits = GridLimits(), threads: int | None = None, progress=None,
              recheck: bool | None = None, address: str | None = None,
              workers: int | None = None, retry_failed: bool = False) -> RaySweepSummary:
    """`sweep` on a Ray cluster: `address` "auto" (a running cluster), HOST:PORT, or
    None to start a local one. `workers`: at most this many (default: as many as the
    cluster's GPUs, or its CPUs over `threads`). `progress(RayProgress)`. `retry_failed`: as
    `sweep`'s."""
    from dooly.db import Store
    recheck = device == "cpu" if recheck is None else recheck
    Store.ensure_writable(db_path)
    summary = RaySweepSummary("")
    t0 = time.perf_counter()
    ray, ours = connect(address)
    try:
        env, pool = start_workers(ray, analysis.engine, device, backend, lim, threads, workers, summary)
        summary.env_key = env.key
        with Store.open(db_path) as store:
            driver = _Driver(ray, store, env, pool, lim, summary, progress)
            try:
                units = _units(store, env, analysis, summary)
                if retry_failed:
                    summary.points_retried = store.forget_failed(units, env.key)
                driver.run(units)
                if recheck and summary.units_measured:
                    driver.recheck()
            except KeyboardInterrupt:
                summary.interrupted = True
            finally:
                driver.release_all()
    finally:
        if ours:  # stops a local cluster we started; from a joined one, disconnects (our actors end)
            ray.shutdown()
    summary.seconds = time.perf_counter() - t0
    return summary


def _units(store, env: Environment, analysis, summary) -> dict[str, Unit]:
    """The units to measure, recorded in the DB with the inventories as `sweep` records
    them. Collective units need a process group on one host: they are left to `sweep`."""
    from dooly.profile.plan import record_analysis
    store.add_environment(env)
    record_analysis(store, analysis)
    units: dict[str, Unit] = {}
    for inv in analysis.inventories:
        for key, e in inv.entries.items():
            units.setdefault(key, e.unit)
    summary.units_collective = sorted(k for k, u in units.items() if u.op in COLLECTIVE_OPS)
    return {k: u for k, u in units.items() if u.op not in COLLECTIVE_OPS}


class _Driver:
    def __init__(self, ray, store, env, pool: list[Worker], lim, summary, progress):
        self.ray, self.store, self.env, self.pool, self.lim = ray, store, env, pool, lim
        self.s, self.progress, self.owner = summary, progress, lease_owner()
        self.held: set[str] = set()
        self.renewed = time.monotonic()
        self.deaths: Counter = Counter()
        self.bar = RayProgress("measure", 0, 0, 0, 0, 0, 0, 0)

    def todo(self, key: str, unit: Unit) -> list[dict]:
        return [p for p in grid_for(unit, self.lim) if not self.store.has_point(key, self.env.key, p)]

    def run(self, units: dict[str, Unit]) -> None:
        """The first pass: every missing point of every unit, under leases."""
        queue, waiting = deque(), []
        plan = {key: self.todo(key, unit) for key, unit in units.items()}
        self.bar = RayProgress("measure", len(units), 0, sum(map(len, plan.values())), 0, 0, 0, 0,
                               self._live())
        for key, unit in sorted(units.items(), key=lambda kv: -len(plan[kv[0]])):  # long units first
            if not plan[key]:
                self.s.units_reused.append(key)
                self.bar.units_done += 1
                self.bar.reused += 1
            elif self.store.claim(key, self.env.key, self.owner):
                self.held.add(key)
                queue.append(_Task(None, key, unit, plan[key]))
            else:
                waiting.append(key)
        while queue or waiting:
            self._drain(queue, self._commit)
            if not any(w.alive for w in self.pool):
                self.s.units_unfinished = [t.key for t in queue] + waiting
                return
            waiting = self._come_back(waiting, units, queue)

    def _come_back(self, waiting: list[str], units, queue) -> list[str]:
        """Units another live sweeper held: done by it meanwhile, or ours once it lapsed."""
        if not waiting:
            return []
        time.sleep(POLL_S)
        still = []
        for key in waiting:
            todo = self.todo(key, units[key])
            if not todo:
                self.s.units_by_others.append(key)
                self.bar.units_done += 1
            elif self.store.claim(key, self.env.key, self.owner):
                self.held.add(key)
                self.bar.points_total += len(todo)
                queue.append(_Task(None, key, units[key], todo))
            else:
                still.append(key)
        return still

    def _drain(self, queue: deque, commit) -> None:
        """Run the queued tasks on the live workers until none is queued or running."""
        running: dict = {}                      # stream of measurements -> task
        while queue or running:
            for w in self.pool:
                if queue and w.alive and w.idle:
                    task = queue.popleft()
                    task.worker, w.idle = w, False
                    # backpressure 1: a worker measures at most one point ahead of the
                    # driver's commits, so a lost worker or Ctrl-C loses at most two
                    stream = w.actor.measure.options(
                        num_returns="streaming", _generator_backpressure_num_objects=1).remote(
                        task.unit.to_json(), task.todo)
                    running[stream] = task
            if not running:
                return                          # queued work, but every worker is lost
            ready, _ = self.ray.wait(list(running), num_returns=1, timeout=1.0)
            self._renew()
            for stream in ready:
                self._step(stream, running, queue, commit)

    def _step(self, stream, running: dict, queue: deque, commit) -> None:
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError
        task = running[stream]
        try:
            got = self.ray.get(next(stream))
        except StopIteration:
            del running[stream]
            task.worker.idle = True
            self._unit_done(task)
            return
        except (RayActorError, WorkerCrashedError) as err:
            del running[stream]
            self._lost(task, err, queue, commit)
            return
        except RayTaskError as err:             # the worker raised outside a point's timing
            del running[stream]
            task.worker.idle = True
            reason = f"worker {task.worker.name}: {str(err.cause if err.cause else err).splitlines()[0][:160]}"
            for point in task.todo:
                commit(task, Measurement(task.key, self.env.key, point, status="failed", reason=reason))
            task.todo = []
            self._unit_done(task)
            return
        point = task.todo.pop(0)
        commit(task, self._checked(got, task, point))

    def _checked(self, got, task: _Task, point: dict) -> Measurement:
        """The worker's dict as a Measurement, if it is a well-formed one of this point."""
        try:
            m = Measurement(**got)
            row = {c: getattr(m, c) for c in ("unit_key", "env_key", "median_ms", "p10_ms", "p90_ms",
                                              "mean_ms", "std_ms", "samples", "outliers", "status",
                                              "timestamp")}
            problem = measurement_problem(dict(row, point_json=m.point_json), {task.key}, {self.env.key})
            if problem is None and m.point_json != Measurement("", "", point).point_json:
                problem = f"returned point {m.point_json[:60]}"
        except (TypeError, ValueError) as err:
            problem = str(err)[:160]
        if problem is None:
            return m
        return Measurement(task.key, self.env.key, point, status="failed",
                           reason=f"worker {task.worker.name} returned a bad measurement: {problem}")

    def _commit(self, task: _Task, m: Measurement) -> None:
        self.store.add_measurement(m)
        if task.key not in self.s.units_measured:
            self.s.units_measured.append(task.key)
        self.s.points_measured += m.status == "ok"
        self.s.points_failed += m.status == "failed"
        self.bar.points_done += 1
        self.bar.measured += m.status == "ok"
        self.bar.failed += m.status == "failed"
        self._show()

    def _unit_done(self, task: _Task) -> None:
        if task.key in self.held:
            self.store.release(task.key, self.env.key, self.owner)
            self.held.discard(task.key)
        if self.bar.phase == "measure":
            self.bar.units_done += 1
            if task.key not in self.store.units_measured(self.env.key):
                self.s.units_failed.append(task.key)
        self._show()

    def _lost(self, task: _Task, err: Exception, queue: deque, commit) -> None:
        w = task.worker
        w.alive = False
        self.s.workers_lost.append(f"{w.name}: {type(err).__name__}")
        self.deaths[task.key] += 1
        if self.deaths[task.key] >= 2 and task.todo:  # this point keeps killing workers
            point = task.todo.pop(0)
            commit(task, Measurement(task.key, self.env.key, point, status="failed",
                                     reason="the worker process died while measuring it, twice"))
        if task.todo:
            queue.appendleft(_Task(None, task.key, task.unit, task.todo))
        else:
            self._unit_done(task)
        self.bar.workers = self._live()

    def recheck(self) -> None:
        """The second pass `sweep` makes on a CPU: every point measured in this run is
        timed again, on whichever worker is free, and keeps the faster median."""
        t0 = time.perf_counter()
        tasks = deque()
        for key in self.s.units_measured:
            points = [m.point for m in self.store.measurements(unit_key=key, env_key=self.env.key)]
            if points:
                tasks.append(_Task(None, key, self.store.get_unit(key), points))
        self.bar = RayProgress("recheck", len(tasks), 0, sum(len(t.todo) for t in tasks), 0, 0, 0, 0,
                               self._live())
        self._drain(tasks, self._keep_faster)
        self.s.recheck_seconds = time.perf_counter() - t0

    def _keep_faster(self, task: _Task, m: Measurement) -> None:
        self.bar.points_done += 1
        if m.status == "ok":
            rows = self.store.measurements(task.key, self.env.key)
            old = next((r for r in rows if r.point_json == m.point_json), None)
            if old is not None and m.median_ms < old.median_ms:
                self.store.add_measurement(m)
                self.s.points_rechecked_faster += 1
        self._show()

    def _renew(self) -> None:
        if time.monotonic() - self.renewed > LEASE_S / 4:
            for key in list(self.held):
                self.store.renew(key, self.env.key, self.owner)
            self.renewed = time.monotonic()

    def release_all(self) -> None:
        for key in list(self.held):
            self.store.release(key, self.env.key, self.owner)
        self.held.clear()
        for w in self.pool:
            if w.alive:
                self.ray.kill(w.actor)

    def _live(self) -> dict:
        return {w.name: w.pid for w in self.pool if w.alive}

    def _show(self) -> None:
        if self.progress:
            self.progress(self.bar)

