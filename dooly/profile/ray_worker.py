"""The Ray side of a distributed sweep: one `SweepWorker` actor per device. It reports
the environment of the host it runs on (the driver refuses it when that differs from
the environment the sweep is for), then measures the points of one unit per call and
yields each measurement as it is taken, as plain data. It never opens the DB: the
driver (`ray_sweep`) is the single writer.

A CPU worker times with `threads` cores of its own: Ray counts them (`num_cpus`), and
the worker takes them for itself, holding an exclusive lock file per core (shared by
every Dooly worker on the host, whatever its Ray node or cluster; the kernel drops
the locks when the process dies) and binding every thread of its process to those
cores, so two timed calls never share a core. A GPU worker holds its GPU through Ray
(`num_gpus=1`, CUDA_VISIBLE_DEVICES)."""
from __future__ import annotations

import dataclasses
import fcntl
import os
import socket
import tempfile
from pathlib import Path

CORE_LOCKS = Path(tempfile.gettempdir()) / f"dooly-cores-{os.getuid()}"


def reserve_cores(n: int) -> tuple[list[int], list]:
    """`n` cores of this process's allowed set that no other Dooly worker on the host
    holds, locked (the open lock files are returned: keep them) and bound to every
    thread of this process. RuntimeError when fewer than `n` are free."""
    CORE_LOCKS.mkdir(parents=True, exist_ok=True)
    cores, files = [], []
    for core in sorted(os.sched_getaffinity(0)):
        f = open(CORE_LOCKS / f"core{core}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        cores.append(core)
        files.append(f)
        if len(cores) == n:
            break
    if len(cores) < n:
        for f in files:
            f.close()
        raise RuntimeError(f"only {len(cores)} of the {n} cores the timing needs are free on "
                           f"{socket.gethostname()} (the others are held by Dooly workers)")
    # every thread, the ones Ray and torch started already included: a thread keeps the
    # affinity it had, and a new one inherits its creator's
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that ended meanwhile
            pass
    return cores, files


class SweepWorker:
    """Wrapped by `ray.remote` in the driver; pickled by reference (this module)."""

    def __init__(self, planned: dict, lim: tuple[int, int, int]):
        from dooly.engines import library_logging, set_vllm_environ
        set_vllm_environ()
        library_logging(False)
        self.planned, self.lim = planned, lim
        self.env, self.error, self.cores, self._locks = None, "", [], []
        try:
            self.env = self._environment(planned)
        except Exception as err:  # no such device or engine here: the driver refuses us
            self.error = f"{type(err).__name__}: {str(err)[:200]}"

    @staticmethod
    def _environment(planned: dict):
        from dooly.engines import environment
        return environment(planned["engine"], planned["device_kind"], planned["backend"],
                           dtype=planned["dtype"], block_size=planned["block_size"],
                           threads=planned["threads"], execution=planned["execution"])

    def hello(self) -> dict:
        """Who and where this worker is, and the environment it would measure in."""
        import ray
        return {"host": socket.gethostname(), "node": ray.util.get_node_ip_address(),
                "pid": os.getpid(), "error": self.error,
                "env": self.env.to_json() if self.env is not None else None}

    def start(self) -> list[int]:
        """Take the cores (CPU) and make the runners; called once the driver accepted us."""
        import torch

        from dooly.profile.grid import GridLimits
        from dooly.profile.sweep_units import Runners
        from dooly.profile.timing import timer_for
        if self.env.device_kind == "cpu":
            self.cores, self._locks = reserve_cores(self.env.threads)
        torch.set_num_threads(self.env.threads)
        self.runners = Runners(self.env, GridLimits(*self.lim))
        self.timer = timer_for(self.env.device_kind)
        return self.cores

    def measure(self, unit_json: dict, points: list[dict]):
        """Each point's measurement as a plain dict, yielded as soon as it is taken (a
        failing point is a failed measurement with its reason, as in `sweep`)."""
        from dooly.db.check import unit_from_row
        from dooly.profile.sweep_units import measure_point
        import json
        # the unit is rebuilt from its data, its dims parsed by the bounded parser
        unit = unit_from_row(unit_json["key"], unit_json["op"], json.dumps(unit_json), strict=True)
        for point in points:
            yield dataclasses.asdict(measure_point(self.runners, self.timer, unit, point, self.env))
