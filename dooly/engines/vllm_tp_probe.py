"""Probing the real engine at tensor-parallel size N (the TP validation's real side).

At N > 1 vLLM's model runner lives in N worker processes (its `mp` executor), so the
per-step recorder of dooly.engines.vllm_probe, which reads each batch inside the runner,
sees nothing from the engine's process. Here the batch is read where the engine core
makes it: `Scheduler.schedule`'s output, in the engine's process (the engine core runs
in-process, VLLM_ENABLE_V1_MULTIPROCESSING=0), and each step is timed around
`LLMEngine.step`, which waits for every rank. On a CPU host each rank is bound to its own
cores (VLLM_CPU_OMP_THREADS_BIND "0|1" on two cores: vLLM's automatic binding wants one
NUMA node per rank) and gets the job's "kv_gib" of KV cache (vLLM's kv_cache_memory_bytes,
which each rank reads as its own; VLLM_CPU_KVCACHE_SPACE takes whole GiB only, too coarse for
a KV-bound check on small models, and would override it, so the child never gets it).

A child job is JSON data: {"mode": "steps" | "serve", "tp", "bind", "kv_gib", "config",
"budget", "max_num_seqs", ...} with the fields of vllm_probe's and vllm_serve's jobs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dooly.engines import vllm_environ


def bind_list(tp: int, cpus: list[int] | None = None) -> str:
    """vLLM's VLLM_CPU_OMP_THREADS_BIND for `tp` ranks: this process's CPUs split into
    `tp` contiguous runs, one per rank ("0|1" for two ranks on two cores)."""
    cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if tp < 1 or len(cpus) < tp:
        raise ValueError(f"tp: {tp} ranks need at least {tp} CPUs, this process may use {len(cpus)}")
    per = len(cpus) // tp
    return "|".join(",".join(str(c) for c in cpus[r * per:(r + 1) * per]) for r in range(tp))


class SchedulerSteps:
    """Each engine step's batch (from the scheduler's output) and wall time; the same
    interface vllm_probe.run_items and vllm_serve.replay use (recording, label, steps)."""

    def __init__(self):
        self.recording = False
        self.label = None
        self.steps: list[dict] = []
        self.threads_seen: set[int] = set()
        self._batch = None

    def install(self) -> None:
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.engine.llm_engine import LLMEngine

        from dooly.engines.vllm_probe import scheduled_batch
        rec, orig_schedule, orig_step = self, Scheduler.schedule, LLMEngine.step

        def schedule(self, *a, **k):
            so = orig_schedule(self, *a, **k)
            if so.total_num_scheduled_tokens:
                rec._batch = scheduled_batch(so)
            return so

        def step(self, *a, **k):
            rec._batch = None
            t0 = time.perf_counter()
            out = orig_step(self, *a, **k)
            if rec._batch is not None and rec.recording:
                rec.steps.append({"batch": rec._batch, "ms": (time.perf_counter() - t0) * 1e3,
                                  "set": rec.label, "recorded": True})
            return out
        Scheduler.schedule = schedule
        LLMEngine.step = step


def start_llm(config: Path, tp: int, budget: int, max_num_seqs: int, max_model_len: int = 4096,
              kv_gib: float = 1.0):
    from vllm import LLM

    from dooly.engines.vllm_probe import model_dir
    extra = {"distributed_executor_backend": "mp"} if tp > 1 else {}
    return LLM(model=model_dir(config), load_format="dummy", skip_tokenizer_init=True,
               dtype="bfloat16", max_model_len=max_model_len, max_num_batched_tokens=budget,
               max_num_seqs=max_num_seqs, enable_prefix_caching=False, tensor_parallel_size=tp,
               kv_cache_memory_bytes=kv_cache_bytes(kv_gib), **extra)


def run_job(job: dict) -> dict:
    """Child side: one engine at job["tp"], then the job's batch items or workloads."""
    from dooly.engines.vllm_probe import generate, prompts, run_items
    from dooly.engines.vllm_serve import engine_settings, replay
    rec = SchedulerSteps()
    rec.install()
    tp = int(job.get("tp", 1))
    llm = start_llm(Path(job["config"]), tp, int(job.get("budget", 8192)), int(job.get("max_num_seqs", 128)),
                    int(job.get("max_model_len", 4096)), float(job.get("kv_gib", 1.0)))
    out = {"tp": tp, "settings": engine_settings(llm), "bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND")}
    if job["mode"] == "steps":
        out["steps"] = run_items(llm, rec, job["items"], int(job.get("repeats", 1)))
        return out
    import random
    longest = int(job.get("max_model_len", 4096)) - 8   # a KV-bound job's engine takes no longer prompt
    generate(llm, prompts([min(n, longest) for n in (300, 40, 40, int(job["budget"]) + 100)], 1), [4] * 4)  # warm-up
    rng = random.Random(1)
    out["results"] = [dict(replay(llm, rec, wl["requests"], rng), name=wl["name"]) for wl in job["workloads"]]
    return out


def kv_cache_bytes(kv_gib) -> int:
    """vLLM's kv_cache_memory_bytes for `kv_gib` GiB per rank (any fraction)."""
    b = int(float(kv_gib) * (1 << 30))
    if b <= 0:
        raise ValueError(f"kv_gib: {kv_gib} GiB holds no KV cache")
    return b


def run_child(job: dict, timeout: float = 7200) -> dict:
    """`python -m dooly.engines.vllm_tp_probe JOB OUT` with the rank binding and KV space
    of the job in its environment; its JSON result."""
    tmp = Path(tempfile.mkdtemp(prefix="dooly_tp_probe_"))
    (tmp / "job.json").write_text(json.dumps(job))
    out = tmp / "result.json"
    env = vllm_environ()
    tp = int(job.get("tp", 1))
    env["VLLM_CPU_OMP_THREADS_BIND"] = job.get("bind") or (bind_list(tp) if tp > 1 else "auto")
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)   # it would override the job's kv_gib
    proc = subprocess.run([sys.executable, "-m", "dooly.engines.vllm_tp_probe", str(tmp / "job.json"), str(out)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = [ln for ln in lines if "Error" in ln and "http" not in ln] or lines[-1:] or ["no output"]
        raise RuntimeError(f"vLLM at tp={tp} failed (rc {proc.returncode}): {why[-1][:300]}")
    return json.loads(out.read_text())


if __name__ == "__main__":
    job_path, out_path = sys.argv[1:3]
    Path(out_path).write_text(json.dumps(run_job(json.loads(Path(job_path).read_text()))))
