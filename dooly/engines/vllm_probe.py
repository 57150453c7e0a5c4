"""Probing the real engine: per-step timings from inside vLLM's CPU worker.

`StepRecorder` wraps the engine: `LLMEngine.step` is the whole step a simulated step
stands for (scheduling, the model runner, output processing); `execute_model` +
`sample_tokens` the runner's part; `_model_forward`, `compute_logits` and `_sample` the
model's own execution, what Dooly's units cover. Each step's batch is read from the
scheduler output as (tokens scheduled, tokens computed before the step) per request. vLLM runs in a child process: Dooly's
meta-device capture in the same process breaks vLLM's start-up."""
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


class StepRecorder:
    def __init__(self):
        self.recording = False
        self.label = None
        self.steps: list[dict] = []
        self.threads_seen: set[int] = set()
        self._pending = None
        self._forward_s = 0.0

    def _timed(self, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self._forward_s += time.perf_counter() - t0
        return wrapper

    def install(self) -> None:
        import torch
        from vllm.v1.worker import gpu_model_runner as gmr
        from vllm.v1.engine.llm_engine import LLMEngine
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
        rec = self
        orig_step = LLMEngine.step
        orig_exec, orig_sample = gmr.GPUModelRunner.execute_model, gmr.GPUModelRunner.sample_tokens
        orig_forward = gmr.GPUModelRunner._model_forward

        def execute_model(self, so, *a, **k):
            if so.total_num_scheduled_tokens == 0:
                return orig_exec(self, so, *a, **k)
            nst = so.num_scheduled_tokens
            batch = [(int(nst[r.req_id]), int(r.num_computed_tokens)) for r in so.scheduled_new_reqs]
            cached = so.scheduled_cached_reqs
            batch += [(int(nst[rid]), int(c)) for rid, c in zip(cached.req_ids, cached.num_computed_tokens)]
            rec.threads_seen.add(torch.get_num_threads())
            rec._forward_s = 0.0
            t0 = time.perf_counter()
            out = orig_exec(self, so, *a, **k)
            rec._pending = {"batch": batch, "exec_ms": (time.perf_counter() - t0) * 1e3,
                            "sample_ms": 0.0, "set": rec.label, "recorded": rec.recording}
            return out

        def sample_tokens(self, *a, **k):
            t0 = time.perf_counter()
            out = orig_sample(self, *a, **k)
            if rec._pending is not None:
                rec._pending["sample_ms"] = (time.perf_counter() - t0) * 1e3
            return out

        def step(self, *a, **k):
            rec._pending = None
            t0 = time.perf_counter()
            out = orig_step(self, *a, **k)
            if rec._pending is not None:
                rec._finish((time.perf_counter() - t0) * 1e3)
            return out

        def _model_forward(self, *a, **k):
            if not getattr(self.model, "_dooly_timed", False):
                self.model.compute_logits = rec._timed(self.model.compute_logits)
                self.model._dooly_timed = True
            return rec._timed(orig_forward)(self, *a, **k)

        CPUModelRunner.execute_model = execute_model
        CPUModelRunner.sample_tokens = sample_tokens
        CPUModelRunner._model_forward = _model_forward
        CPUModelRunner._sample = self._timed(gmr.GPUModelRunner._sample)
        LLMEngine.step = step

    def _finish(self, step_ms: float) -> None:
        p, self._pending = self._pending, None
        if p["recorded"]:
            p["runner_ms"] = p["exec_ms"] + p["sample_ms"]
            p["ms"] = step_ms
            p["forward_ms"] = self._forward_s * 1e3
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


def start_llm(config: Path, budget: int = 8192, max_num_seqs: int = 128):
    from vllm import LLM
    return LLM(model=model_dir(config), load_format="dummy", skip_tokenizer_init=True,
               dtype="bfloat16", max_model_len=4096, max_num_batched_tokens=budget,
               max_num_seqs=max_num_seqs, enable_prefix_caching=False,
               gpu_memory_utilization=float(os.environ.get("DOOLY_PROBE_MEM_UTIL", "0.4")))


def generate(llm, plist, max_tokens_list) -> None:
    from vllm import SamplingParams
    sps = [SamplingParams(max_tokens=m, ignore_eos=True, temperature=0) for m in max_tokens_list]
    llm.generate(plist, sps, use_tqdm=False)


def calibration_steps(config: Path, budget: int = 8192, max_num_seqs: int = 128) -> dict:
    """A short mixed workload (prefills, decodes from 1 to 32 sequences, chunked prefill
    with decodes): the steps the step residual is fitted on. Runs vLLM in this process."""
    rec = StepRecorder()
    rec.install()
    llm = start_llm(config, budget, max_num_seqs)
    sched = llm.llm_engine.engine_core.engine_core.scheduler
    generate(llm, prompts([300, 40, 40], 0), [4, 4, 4])  # warm-up, not recorded
    rec.recording = True
    seed = 1
    for lens, out in (([64], 1), ([512], 1), ([128] * 4, 1), ([128], 12), ([256] * 3, 10),
                      ([128] * 8, 8), ([64] * 32, 4), ([1024] * 2, 4)):
        seed += 1
        generate(llm, prompts(lens, seed), [out] * len(lens))
    sched.max_num_scheduled_tokens = 256
    generate(llm, prompts([128] * 8 + [1024], 99), [12] * 8 + [1])
    sched.max_num_scheduled_tokens = budget
    # the small decode batches again, a minute later: they set the per-step terms, and
    # one pass can fall in a burst of another process's work (same batches: their
    # median is kept)
    for lens, out in (([128], 12), ([256] * 3, 10), ([128] * 8, 8)):
        seed += 1
        generate(llm, prompts(lens, seed), [out] * len(lens))
    return {"steps": rec.steps, "threads": sorted(rec.threads_seen)}


def run_child(module_args: list[str], timeout: float = 900) -> dict:
    """Run `python -m dooly.engines.vllm_probe ARGS` and return its JSON result."""
    out = Path(tempfile.mkdtemp(prefix="dooly_probe_")) / "result.json"
    env = vllm_environ()
    proc = subprocess.run([sys.executable, "-m", "dooly.engines.vllm_probe", *module_args, str(out)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0 or not out.exists():
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        # the most telling line: an architecture complaint, else the last error raised
        why = ([ln for ln in lines if "architecture" in ln.lower() and "not supported" in ln.lower()]
               or [ln for ln in lines if "Error" in ln and "http" not in ln] or lines[-1:] or ["no output"])
        raise RuntimeError(f"vLLM could not run the model (rc {proc.returncode}): {why[-1][:200]}")
    return json.loads(out.read_text())


if __name__ == "__main__":
    mode, cfg, budget, seqs, out_path = sys.argv[1:6]
    if mode != "calibrate":
        raise SystemExit(f"unknown probe mode {mode!r}")
    Path(out_path).write_text(json.dumps(calibration_steps(Path(cfg), int(budget), int(seqs))))
