"""Collective units (all_reduce, all_gather...) timed across a real group of N processes
on this host, with the communicator the engine uses (vLLM's own group coordinator:
dooly.engines.vllm_comm), or plain torch.distributed (`comm="torch"`: gloo on CPU, NCCL
on CUDA).

Each rank runs the same list of (collective, shape) items in the same order. A sample is
a burst of back-to-back calls entered together after a barrier, divided by the burst
length; its time is the slowest rank's (the group is done when its last rank is). As the
CPU timer does, a sample during which another process took a rank's core (its
involuntary context switches grew) is left out when at least 3 samples were not. The
list is timed twice, minutes apart on a busy host, and each point keeps the faster
median, as the sweep's second pass does. Results come back as data through a queue;
the measurements are stored under the collective environment of the group
(dooly.parallel.collective_environment): the host's environment plus topology and
communicator."""
from __future__ import annotations

import os
import queue as queue_mod
import tempfile
import time

import torch

from dooly.env import Environment, Measurement
from dooly.profile.grid import GridLimits, point_values, points_for
from dooly.profile.timing import Stats, _preemptions, summarize
from dooly.unit import COLLECTIVE_OPS, Unit

WARMUP, REPEATS, BURST, ROUNDS = 3, 9, 4, 2
START_S = 300.0   # a rank that has not answered by then (importing vLLM, joining) failed


class TorchGroup:
    """Plain torch.distributed (gloo on CPU, NCCL on CUDA): collectives as a framework
    without vLLM's communicators would run them."""

    def __init__(self, rank: int, size: int, init_file: str, device: str):
        import torch.distributed as dist
        self.device, self.dist = device, dist
        if device == "cuda":
            torch.cuda.set_device(rank)
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                init_method=f"file://{init_file}", rank=rank, world_size=size)
        self.size = size
        self.label = f"torch.distributed/{dist.get_backend()}"

    def op(self, name: str, x, dim: int = -1):
        dist, n = self.dist, self.size
        if name == "vllm.all_reduce":
            return lambda: dist.all_reduce(x)
        if name == "vllm.all_gather":
            out = torch.empty((x.shape[0] * n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
            return lambda: dist.all_gather_into_tensor(out, x)
        if name == "vllm.reduce_scatter":
            out = torch.empty((x.shape[0] // n,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
            return lambda: dist.reduce_scatter_tensor(out, x)
        raise ValueError(f"op: {name!r} is not a collective")

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
        self.dist.destroy_process_group()


def open_group(comm: str, engine: str, rank: int, size: int, init_file: str, device: str):
    if comm == "torch":
        return TorchGroup(rank, size, init_file, device)
    from dooly.engines import collective_group
    return collective_group(engine, rank, size, init_file, device)


def _time_item(group, item: dict, device: str) -> list[list[float]]:
    """[[ms per call, preemptions], ...] of one rank."""
    dt = getattr(torch, item["dtype"])
    x = torch.randn(item["shape"], dtype=torch.float32, device=device).to(dt)
    fn = group.op(item["op"], x, item.get("dim", -1))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(WARMUP):
        fn()
    sync()
    out = []
    for _ in range(REPEATS):
        group.barrier()
        p0, t0 = _preemptions(), time.perf_counter()
        for _ in range(BURST):
            fn()
        sync()
        out.append([(time.perf_counter() - t0) * 1e3 / BURST, float(_preemptions() - p0)])
    return out


def measure_rank(rank: int, size: int, init_file: str, job: dict) -> tuple[str, list]:
    """One rank's part, in its own process: open the group (every rank names the same
    `init_file`, a path all of them see), time every item ROUNDS times; (communicator
    label, samples[round][item] in ms). Ranks on several hosts each run this with their
    global rank; `merge_ranks` then combines what they return."""
    import warnings
    warnings.simplefilter("ignore")   # torch's deprecation notes on every all_gather call
    torch.set_num_threads(int(job["threads"]))
    group = open_group(job["comm"], job["engine"], rank, size, init_file, job["device"])
    try:
        samples = [[_time_item(group, it, job["device"]) for it in job["items"]]
                   for _ in range(ROUNDS)]
        return group.label, samples
    finally:
        try:
            group.close()
        except Exception:  # the group is gone with the process anyway
            pass


def _worker(rank: int, size: int, init_file: str, job: dict, results) -> None:
    """A spawned rank: `measure_rank`, then (rank, label, samples, error) on the queue."""
    try:
        label, samples = measure_rank(rank, size, init_file, job)
        results.put((rank, label, samples, None))
    except Exception as err:  # reported by the parent as one failed point per item
        results.put((rank, None, None, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"))


def run_group(size: int, job: dict, wait=None) -> tuple[str, list, str | None]:
    """Spawn `size` ranks running `job`; (communicator label, samples[round][item] with
    each sample the slowest rank's, error). `wait()` is called while the ranks run."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")   # a fresh interpreter: no vLLM or Dynamo state inherited
    results = ctx.Queue()
    fd, init_file = tempfile.mkstemp(prefix="dooly_tp_")
    os.close(fd)
    os.unlink(init_file)   # torch's file store creates it; a stale one would hang the join
    procs = [ctx.Process(target=_worker, args=(r, size, init_file, job, results), daemon=True)
             for r in range(size)]
    for p in procs:
        p.start()
    got, deadline = {}, time.monotonic() + START_S + 60.0 * len(job["items"])
    try:
        while len(got) < size and time.monotonic() < deadline:
            try:
                rank, label, samples, err = results.get(timeout=5.0)
                got[rank] = (label, samples, err)
            except queue_mod.Empty:
                if wait:
                    wait()
                if any(p.exitcode not in (None, 0) for p in procs) and len(got) < size:
                    break
    finally:
        for p in procs:
            p.join(timeout=10.0)
            if p.is_alive():
                p.kill()
    return merge_ranks(size, got)


def merge_ranks(size: int, got: dict) -> tuple[str, list, str | None]:
    """got: rank -> (label, samples, error). (label, samples[round][item] with each
    sample [the slowest rank's ms, the ranks' preemptions], first error)."""
    errors = [e for _, _, e in got.values() if e]
    if errors or len(got) < size:
        return "", [], errors[0] if errors else f"{size - len(got)} of {size} ranks never answered"
    labels = {lab for lab, _, _ in got.values()}
    runs = [s for _, s, _ in got.values()]
    merged = [[[[max(r[rd][i][k][0] for r in runs), sum(r[rd][i][k][1] for r in runs)]
                for k in range(len(runs[0][rd][i]))]
               for i in range(len(runs[0][rd]))] for rd in range(len(runs[0]))]
    return "|".join(sorted(labels)), merged, None


def items_for(todo: list[tuple[Unit, dict]]) -> list[dict]:
    """The data a rank needs for each (unit, point): op, the input's shape at the point,
    dtype and dim. Shapes are ints by now: nothing symbolic crosses into the ranks."""
    from dooly.profile.runners import shape_at
    out = []
    for unit, point in todo:
        out.append({"op": unit.op, "shape": shape_at(unit.inputs[0], point_values(point)),
                    "dtype": unit.inputs[0].dtype, "dim": int(unit.attr.get("dim", -1))})
    return out


def measurements(todo: list[tuple[Unit, dict]], env: Environment, label: str, samples: list,
                 error: str | None, expected: str) -> list[Measurement]:
    """One Measurement per (unit, point): the faster of the rounds' medians; every point
    failed when a rank failed or another communicator ran than the environment names."""
    if error is None and label != expected:
        error = f"the group ran communicator {label}, not {expected} (the environment's)"
    out = []
    for i, (unit, point) in enumerate(todo):
        if error is not None:
            out.append(Measurement(unit.key, env.key, point, status="failed", reason=error[:300]))
            continue
        st = min((_stats(samples[rd][i]) for rd in range(len(samples))), key=lambda s: s.median_ms)
        out.append(Measurement(unit.key, env.key, point, st.median_ms, st.p10_ms, st.p90_ms,
                               st.mean_ms, st.std_ms, st.samples, st.outliers))
    return out


def _stats(pairs: list) -> Stats:
    """Over the samples no rank was preempted in, when there are 3; the others count
    as outliers."""
    clean = [ms for ms, pre in pairs if pre == 0]
    kept = clean if len(clean) >= 3 else [ms for ms, _ in pairs]
    st = summarize(kept)
    return Stats(st.median_ms, st.p10_ms, st.p90_ms, st.mean_ms, st.std_ms, st.samples,
                 st.outliers + len(pairs) - len(kept))


def collective_units(units: dict[str, Unit]) -> dict[int, dict[str, Unit]]:
    """Collective units by group size."""
    out: dict[int, dict[str, Unit]] = {}
    for key, u in units.items():
        if u.op in COLLECTIVE_OPS:
            out.setdefault(int(u.attr.get("group_size", 1)), {})[key] = u
    return out


def todo_points(store, units: dict[str, Unit], env: Environment, lim: GridLimits) -> dict[str, list]:
    return {k: [p for p in points_for(u.driver, lim, u.request_symbols())
                if not store.has_point(k, env.key, p)] for k, u in units.items()}
