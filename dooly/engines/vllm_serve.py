"""Timed serving on the real engine: requests replayed at their arrival times.

The offline `LLM`'s V1 `LLMEngine` (in-process engine core) is fed by hand: requests
whose arrival time has passed are added, `engine.step()` runs, and every new output
token is stamped with the wall clock when step() returns it; when nothing is running
the loop sleeps until the next arrival. TTFT = first token - scheduled arrival.
(`RequestOutput.metrics` is not used: its arrival is when add_request ran, which lags
the scheduled arrival while a step is in flight.) Every step's batch and its parts are
recorded by `StepRecorder`. Runs inside the probe's child process."""
from __future__ import annotations

import random
import time
from pathlib import Path


def engine_settings(llm) -> dict:
    """The serving settings the simulator must reproduce, as the engine resolved them."""
    import torch
    vcfg = llm.llm_engine.vllm_config
    sc = vcfg.scheduler_config
    return {"max_num_batched_tokens": int(sc.max_num_batched_tokens),
            "max_num_seqs": int(sc.max_num_seqs),
            "block_size": int(vcfg.cache_config.block_size),
            "num_gpu_blocks": vcfg.cache_config.num_gpu_blocks,
            "max_model_len": int(vcfg.model_config.max_model_len),
            "chunked_prefill": bool(getattr(sc, "enable_chunked_prefill", True)),
            "long_prefill_token_threshold": int(getattr(sc, "long_prefill_token_threshold", 0) or 0),
            "torch_threads": torch.get_num_threads()}


def replay(llm, rec, requests: list[dict], rng: random.Random) -> dict:
    """requests: {"rid", "arrival_s", "prompt_len", "output_len"}. Returns each request's
    token times (s from the start), the recorded steps and the serving wall time."""
    from vllm import SamplingParams
    engine = llm.llm_engine
    reqs = sorted(requests, key=lambda r: r["arrival_s"])
    toks = {str(r["rid"]): [rng.randint(100, 5000) for _ in range(r["prompt_len"])] for r in reqs}
    times: dict[str, list[float]] = {str(r["rid"]): [] for r in reqs}
    seen: dict[str, int] = {}
    rec.steps.clear()
    rec.recording = True
    nxt = 0
    t0 = time.perf_counter()
    while nxt < len(reqs) or engine.has_unfinished_requests():
        now = time.perf_counter() - t0
        while nxt < len(reqs) and reqs[nxt]["arrival_s"] <= now:
            r = reqs[nxt]
            engine.add_request(str(r["rid"]), {"prompt_token_ids": toks[str(r["rid"])]},
                               SamplingParams(max_tokens=r["output_len"], ignore_eos=True, temperature=0))
            nxt += 1
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, reqs[nxt]["arrival_s"] - (time.perf_counter() - t0)))
            continue
        outs = engine.step()
        te = time.perf_counter() - t0
        if rec.steps and "t_end" not in rec.steps[-1]:
            rec.steps[-1]["t_end"] = te
        for o in outs:
            n = len(o.outputs[0].token_ids) if o.outputs else 0
            prev = seen.get(o.request_id, 0)
            if n > prev:
                times[o.request_id].extend([te] * (n - prev))
                seen[o.request_id] = n
    rec.recording = False
    steps, rec.steps = rec.steps, []
    return {"token_times": times, "steps": steps, "wall_s": time.perf_counter() - t0}


def serve_job(job: dict) -> dict:
    """One engine (one config and serving settings), then each workload in turn:
    {"config", "budget", "max_num_seqs", "max_model_len", "workloads": [{"name", "requests"}]}."""
    from dooly.engines.vllm_probe import StepRecorder, generate, prompts, start_llm, worker_info
    rec = StepRecorder()
    rec.install()
    llm = start_llm(Path(job["config"]), int(job["budget"]), int(job["max_num_seqs"]),
                    int(job.get("max_model_len", 4096)))
    # warm-up (not recorded): a prefill, decodes, a chunked prompt
    generate(llm, prompts([300, 40, 40, int(job["budget"]) + 100], 1), [4] * 4)
    rng = random.Random(1)
    results = [dict(replay(llm, rec, wl["requests"], rng), name=wl["name"]) for wl in job["workloads"]]
    return {"settings": engine_settings(llm), "results": results, "worker": worker_info()}
