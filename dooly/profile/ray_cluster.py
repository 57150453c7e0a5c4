"""Connecting to a Ray cluster and starting the sweep's workers on it: as many
`SweepWorker` actors as the cluster has devices for (a GPU each, or `threads` CPUs
each), every one checked against the environment the driver plans for before it is
given any work. Everything a local cluster starts listens on 127.0.0.1."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dooly.env import Environment
from dooly.errors import DoolyInputError

# how long a worker may take to start (import torch and the engine) and report back
HELLO_S = 180.0
LOCAL_OBJECT_STORE = 200 * 2**20   # measurements are small dicts


@dataclass
class Worker:
    actor: object
    name: str                  # node:pid
    pid: int
    alive: bool = True
    idle: bool = True
    cores: list = field(default_factory=list)


def loopback_only() -> None:
    """Keep a cluster on this host on 127.0.0.1. Ray replaces a loopback address (the
    one it is given for a node, or a cluster's 127.0.0.1:PORT) by the host's first
    network interface unless its single-host mode is on; that mode is read from the
    environment when ray is imported (and by every process a local cluster starts), and
    from its constant afterwards."""
    import os
    import sys
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def _loopback(address: str | None) -> bool:
    if address in (None, "", "local"):
        return True
    if address == "auto":
        return False
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


def connect(address: str | None):
    """(the ray module, whether this call started or joined the cluster: then the
    caller shuts the connection down). `address`: None or "local" starts a local
    cluster; "auto", HOST:PORT or ray://HOST:PORT joins one."""
    if _loopback(address):
        loopback_only()
    try:
        import ray
    except ImportError:
        raise DoolyInputError("--ray", "Ray is not installed (pip install -e '.[ray]', or ./install.sh)") from None
    if ray.is_initialized():  # the caller connected already (a notebook, a test)
        return ray, False
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    try:
        if address in (None, "", "local"):
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE, **quiet)
        else:  # on this host, the driver's node is 127.0.0.1 too
            local = {"_node_ip_address": "127.0.0.1"} if _loopback(address) else {}
            ray.init(address=address, **local, **quiet)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
        raise DoolyInputError("--ray", f"cannot connect to the Ray cluster at {address or 'local'} "
                                       f"({str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__})") from None
    return ray, True


def _spec(engine: str, device: str, backend: str | None, threads: int | None) -> dict:
    """What every worker builds its environment from: the driver's thread count, so
    that all workers (and a plain sweep with the same --threads) share one environment."""
    from dooly.engines import default_threads
    return {"engine": engine, "device_kind": device, "backend": backend, "dtype": "bfloat16",
            "block_size": None, "threads": threads or default_threads(engine, device), "execution": None}


def _planned(spec: dict) -> Environment | None:
    """The environment the sweep is for, as this host names it; None where the driver
    has no such device (then the first worker that reports one sets it)."""
    from dooly.profile.ray_worker import SweepWorker
    if spec["device_kind"] == "cuda":
        import torch
        if not torch.cuda.is_available():
            return None
    return SweepWorker._environment(spec)


def _differences(planned: Environment, info: dict) -> str:
    if info.get("error") or not info.get("env"):
        return f"cannot measure here: {info.get('error') or 'no environment'}"
    have = info["env"]
    want = planned.to_json()
    diff = [f"{k} {have.get(k)!r} here, {v!r} planned" for k, v in want.items() if have.get(k) != v]
    return "; ".join(diff)


def start_workers(ray, engine: str, device: str, backend: str | None, lim, threads: int | None,
                  most: int | None, summary) -> tuple[Environment, list[Worker]]:
    """(the planned environment, the accepted workers, started). Refused workers are
    named in `summary.workers_refused` and killed."""
    from dooly.profile.ray_worker import SweepWorker
    spec = _spec(engine, device, backend, threads)
    planned = _planned(spec)
    res = ray.cluster_resources()
    if device == "cuda":
        n, opts = int(res.get("GPU", 0)), {"num_gpus": 1, "num_cpus": 1}
    else:
        n, opts = int(res.get("CPU", 0) // spec["threads"]), {"num_cpus": spec["threads"]}
    n = min(n, most) if most else n
    if n < 1:
        raise DoolyInputError("--ray", f"the cluster has {res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} "
                                       f"GPUs: no room for one worker ({opts})")
    actor_class = ray.remote(SweepWorker)
    actors = [actor_class.options(max_restarts=0, max_task_retries=0, **opts).remote(
        spec, (lim.max_tokens, lim.max_batch, lim.max_context)) for _ in range(n)]
    hellos = {a.hello.remote(): a for a in actors}
    ready, pending = ray.wait(list(hellos), num_returns=len(hellos), timeout=HELLO_S)
    for ref in pending:
        summary.workers_refused.append(f"a worker that did not start within {HELLO_S:.0f} s")
        ray.kill(hellos[ref])
    pool = []
    for ref in ready:
        actor = hellos[ref]
        try:
            info = ray.get(ref)
        except ray.exceptions.RayError as err:
            summary.workers_refused.append(f"a worker that failed to start: {_last_line(err)}")
            continue
        name = f"{info['node']}:{info['pid']}"
        if planned is None and info.get("env"):
            planned = Environment.from_json(info["env"])
        why = _differences(planned, info) if planned else "no environment to compare with"
        if why:
            summary.workers_refused.append(f"{name} ({info['host']}): environment differs: {why}")
            ray.kill(actor)
            continue
        pool.append(Worker(actor, name, info["pid"]))
    return planned, _start(ray, pool, summary)


def _start(ray, pool: list[Worker], summary) -> list[Worker]:
    started = []
    for w in pool:
        try:
            w.cores = ray.get(w.actor.start.remote())
        except ray.exceptions.RayError as err:
            summary.workers_refused.append(f"{w.name}: {_last_line(err)}")
            ray.kill(w.actor)
            continue
        summary.workers.append(f"{w.name}" + (f" cores {w.cores}" if w.cores else ""))
        started.append(w)
    if not started:
        why = "; ".join(summary.workers_refused[:3]) or "none started"
        raise DoolyInputError("--ray", f"no Ray worker can measure in this environment ({why})")
    return started


def _last_line(err: Exception) -> str:
    """The exception a Ray error wraps, as its traceback's last line says it."""
    lines = [ln.strip() for ln in str(getattr(err, "cause", None) or err).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]
