"""End-to-end serving accuracy against real vLLM (CPU): TTFT/TPOT percentiles of a Poisson
workload replayed into the real engine vs DoolySim on the same requests.

    python bench/accuracy_e2e.py [--models smollm2,qwen0.5b] [--num-requests 100]
        [--rate smollm2=1.0,qwen0.5b=0.6 | --rate 0.8] [--trace CSV | --trace synthetic]
        [--prompt-clip 32,512] [--output-clip 8,64] [--db out/accuracy.db] [--json PATH]
        [--real-from PATH.raw.json]   # re-simulate against a saved real run
    python bench/accuracy_e2e.py --winner [--winner-model smollm2]
        [--winner-configs 2048x64,256x64] [--winner-rates 1,4] [--winner-metric p90_ttft]

Real side (a child process; Dooly's predictor in the vLLM process breaks vLLM start-up):
offline `LLM` (dummy weights, bf16, prefix caching off, block size 128 as vLLM CPU picks),
then its `llm_engine` (V1 LLMEngine, in-process engine core) is fed by hand: requests whose
scheduled arrival time has passed are added, `engine.step()` runs, and every new output token
is timestamped with the wall clock when step() returns it; when nothing is running the loop
sleeps until the next arrival. TTFT = first token - scheduled arrival, TPOT = (last - first)
/ (n_out - 1). (RequestOutput.metrics is not used: its arrival time is when add_request ran,
which lags the scheduled arrival while a step is in flight.) Each step's batch (q, c per
sequence) and wall time are recorded too, to compare step by step with the predictor.

Simulated side: `dooly.sim.simulate` with the engine's own settings (max_num_batched_tokens,
max_num_seqs, block_size, KV blocks, max_model_len) and `Predictor.step_ms` (the model's
units + the step residual calibrated on real engine steps of a different, short workload by
`dooly calibrate` or bench/accuracy_batch.py, never on this one) from the DB's environment
whose thread count matches the vLLM worker's.

--json: flat; per model "<model>.ttft_p50_err_pct" ...; the top-level "ttft_mape_pct",
"tpot_mape_pct", "ttft_p50_err_pct", ... are the FIRST model's figures; "avg.ttft_mape_pct"
etc. average over models.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = {
    "smollm2": ROOT / "fixtures/configs/HuggingFaceTB__SmolLM2-135M-Instruct.json",
    "qwen0.5b": ROOT / "fixtures/configs/Qwen__Qwen2.5-0.5B.json",
}
DEFAULT_RATE = {"smollm2": 1.0, "qwen0.5b": 0.6}
DEFAULT_TRACE = "/work/shared/reference/traces/splitwise_conv.csv"
MAX_MODEL_LEN = 4096
PAPER = {"ttft": 5.0, "tpot": 8.0}   # paper's claimed end-to-end errors (%)
PCTS = (50, 90, 99)


# ----------------------------------------------------------------------------- child
def _child(job_path: str, out_path: str) -> int:
    """Runs in its own process: one engine (one config), one or more workloads in order."""
    import random
    from vllm import LLM, SamplingParams
    job = json.loads(Path(job_path).read_text())
    d = tempfile.mkdtemp(prefix="dooly_e2e_")
    cfg = json.loads(Path(job["config"]).read_text())
    cfg.pop("quantization_config", None)
    Path(d, "config.json").write_text(json.dumps(cfg))
    llm = LLM(model=d, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
              max_model_len=MAX_MODEL_LEN, max_num_batched_tokens=job["max_num_batched_tokens"],
              max_num_seqs=job["max_num_seqs"], enable_prefix_caching=False,
              gpu_memory_utilization=float(os.environ.get("DOOLY_ACC_MEM_UTIL", "0.4")))
    engine = llm.llm_engine
    vcfg = engine.vllm_config
    core = engine.engine_core.engine_core
    sched = core.scheduler
    import torch
    settings = {
        "max_num_batched_tokens": int(vcfg.scheduler_config.max_num_batched_tokens),
        "max_num_seqs": int(vcfg.scheduler_config.max_num_seqs),
        "block_size": int(vcfg.cache_config.block_size),
        "num_gpu_blocks": vcfg.cache_config.num_gpu_blocks,
        "max_model_len": int(vcfg.model_config.max_model_len),
        "chunked_prefill": bool(getattr(vcfg.scheduler_config, "enable_chunked_prefill", True)),
        "long_prefill_token_threshold": int(getattr(vcfg.scheduler_config,
                                                    "long_prefill_token_threshold", 0) or 0),
        "torch_threads": torch.get_num_threads(),
    }
    # per-step batch from the scheduler's output
    cur = {"batch": None}
    orig_schedule = sched.schedule

    def schedule(*a, **k):
        so = orig_schedule(*a, **k)
        batch = []
        nst = so.num_scheduled_tokens
        for r in so.scheduled_new_reqs:
            batch.append((int(nst[r.req_id]), int(r.num_computed_tokens)))
        cached = so.scheduled_cached_reqs
        for rid, c in zip(cached.req_ids, cached.num_computed_tokens):
            batch.append((int(nst[rid]), int(c)))
        cur["batch"] = batch
        return so
    sched.schedule = schedule
    # time inside the model runner (execute_model + sample_tokens), to split each step
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    runner_t = {"s": 0.0}

    def timed(fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                runner_t["s"] += time.perf_counter() - t
        return wrapper
    CPUModelRunner.execute_model = timed(CPUModelRunner.execute_model)
    CPUModelRunner.sample_tokens = timed(CPUModelRunner.sample_tokens)

    rng = random.Random(1)
    # warm-up (not timed): a prefill, decodes, a chunked prompt
    llm.generate([{"prompt_token_ids": [rng.randint(100, 5000) for _ in range(n)]}
                  for n in (300, 40, 40, job["max_num_batched_tokens"] + 100)],
                 [SamplingParams(max_tokens=4, ignore_eos=True, temperature=0)] * 4,
                 use_tqdm=False)
    results = []
    for wl in job["workloads"]:
        reqs = sorted(wl["requests"], key=lambda r: r["arrival_s"])
        toks = {str(r["rid"]): [rng.randint(100, 5000) for _ in range(r["prompt_len"])] for r in reqs}
        times: dict[str, list[float]] = {str(r["rid"]): [] for r in reqs}
        seen: dict[str, int] = {}
        steps = []
        nxt = 0
        t0 = time.perf_counter()
        while nxt < len(reqs) or engine.has_unfinished_requests():
            now = time.perf_counter() - t0
            while nxt < len(reqs) and reqs[nxt]["arrival_s"] <= now:
                r = reqs[nxt]
                engine.add_request(str(r["rid"]), {"prompt_token_ids": toks[str(r["rid"])]},
                                   SamplingParams(max_tokens=r["output_len"], ignore_eos=True,
                                                  temperature=0))
                nxt += 1
            if not engine.has_unfinished_requests():
                time.sleep(max(0.0, reqs[nxt]["arrival_s"] - (time.perf_counter() - t0)))
                continue
            cur["batch"] = None
            runner_t["s"] = 0.0
            ts = time.perf_counter()
            outs = engine.step()
            te = time.perf_counter()
            if cur["batch"]:
                steps.append({"batch": cur["batch"], "ms": (te - ts) * 1e3, "t_end": te - t0,
                              "runner_ms": runner_t["s"] * 1e3})
            for o in outs:
                n = len(o.outputs[0].token_ids) if o.outputs else 0
                prev = seen.get(o.request_id, 0)
                if n > prev:
                    times[o.request_id].extend([te - t0] * (n - prev))
                    seen[o.request_id] = n
        results.append({"name": wl["name"], "token_times": times, "steps": steps,
                        "wall_s": time.perf_counter() - t0})
    Path(out_path).write_text(json.dumps({"settings": settings, "results": results}))
    return 0


def run_real(config: Path, budget: int, max_seqs: int, workloads: list[tuple[str, list]]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="dooly_e2e_"))
    job = {"config": str(config), "max_num_batched_tokens": budget, "max_num_seqs": max_seqs,
           "workloads": [{"name": n, "requests": [r.__dict__ for r in reqs]} for n, reqs in workloads]}
    (tmp / "job.json").write_text(json.dumps(job))
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_LOGGING_LEVEL="ERROR")
    proc = subprocess.run([sys.executable, __file__, "--_child", str(tmp / "job.json"),
                           "--_out", str(tmp / "out.json")], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], file=sys.stderr)
        raise SystemExit(f"vLLM run failed (rc {proc.returncode})")
    return json.loads((tmp / "out.json").read_text())


# ----------------------------------------------------------------------------- parent
def workload(trace: str, n: int, rate: float, seed: int, pclip, oclip):
    from dooly.sim import LengthDist, Request, WorkloadSpec, build_workload
    if trace == "synthetic":
        spec = WorkloadSpec(source="synthetic", rate=rate, seed=seed, num_requests=n,
                            prompt=LengthDist("lognormal", 256, 0.8), output=LengthDist("uniform", 8, 64))
    else:
        spec = WorkloadSpec(source=trace, rate=rate, arrival="poisson", seed=seed, num_requests=n)
    out = []
    for r in build_workload(spec):
        out.append(Request(r.rid, r.arrival_s, int(np.clip(r.prompt_len, *pclip)),
                           int(np.clip(r.output_len, *oclip))))
    return out


def real_metrics(reqs, token_times: dict) -> dict:
    ttft, tpot, e2e = [], [], []
    for r in reqs:
        t = token_times[str(r.rid)]
        if len(t) != r.output_len:
            raise RuntimeError(f"request {r.rid}: {len(t)} tokens seen, expected {r.output_len}")
        ttft.append((t[0] - r.arrival_s) * 1e3)
        e2e.append((t[-1] - r.arrival_s) * 1e3)
        if r.output_len > 1:
            tpot.append((t[-1] - t[0]) * 1e3 / (r.output_len - 1))
    return {"ttft": ttft, "tpot": tpot, "e2e": e2e}


def sim_metrics(reqs, pred, settings: dict) -> tuple[dict, object]:
    from dooly.sim import SchedulerConfig, simulate
    cfg = SchedulerConfig(max_num_batched_tokens=settings["max_num_batched_tokens"],
                          max_num_seqs=settings["max_num_seqs"], block_size=settings["block_size"],
                          num_blocks=settings.get("num_gpu_blocks"),
                          long_prefill_token_threshold=settings.get("long_prefill_token_threshold", 0),
                          max_model_len=settings.get("max_model_len", MAX_MODEL_LEN))
    res = simulate(reqs, pred.step_ms, cfg)
    ttft, tpot, e2e = [], [], []
    for rec in res.requests:
        ttft.append((rec.first_token_s - rec.arrival_s) * 1e3)
        e2e.append((rec.finish_s - rec.arrival_s) * 1e3)
        if rec.output_len > 1:
            tpot.append((rec.finish_s - rec.first_token_s) * 1e3 / (rec.output_len - 1))
    return {"ttft": ttft, "tpot": tpot, "e2e": e2e}, res


def stats(xs) -> dict:
    a = np.asarray(xs, dtype=float)
    d = {f"p{p}": float(v) for p, v in zip(PCTS, np.percentile(a, PCTS))}
    d["mean"] = float(a.mean())
    return d


def load_predictor(config: Path, db: str, threads: int | None):
    from dooly.db import Store
    from dooly.config import load_config
    from dooly.fit.step_model import engine_step_unit
    from dooly.predict import Predictor
    over_key = engine_step_unit(load_config(config).hash).key
    with Store.open(db, create=False) as store:
        envs = [e for e in store.environments() if e.engine == "vllm"]
        def score(e):
            n_over = len(store.measurements(unit_key=over_key, env_key=e.key))
            return (e.threads == threads, n_over >= 6, n_over)
        env = max(envs, key=score)
        n_over = len(store.measurements(unit_key=over_key, env_key=env.key))
        pred = Predictor.load(str(config), db, "vllm", env_key=env.key, store=store)
    return pred, env, n_over


def step_diag(pred, steps) -> dict:
    """Per engine step of the real run: predicted step_ms vs the wall time of step()."""
    if not steps:
        return {}
    ratios, pre, dec = [], [], []
    for s in steps:
        p = pred.step_ms(s["batch"])
        ratios.append(s["ms"] / p)
        (pre if any(q > 1 for q, _ in s["batch"]) else dec).append((s["ms"], p))
    out = {"steps": len(steps), "median_meas_over_pred": statistics.median(ratios),
           "outside_runner_ms_median": statistics.median(s["ms"] - s.get("runner_ms", s["ms"]) for s in steps),
           "sum_meas_s": sum(s["ms"] for s in steps) / 1e3,
           "sum_pred_s": sum(pred.step_ms(s["batch"]) for s in steps) / 1e3}
    for name, rows in (("prefill_or_mixed", pre), ("decode_only", dec)):
        if rows:
            out[name] = {"n": len(rows), "meas_ms_median": statistics.median(m for m, _ in rows),
                         "pred_ms_median": statistics.median(p for _, p in rows),
                         "mape_pct": 100 * statistics.fmean(abs(p - m) / m for m, p in rows),
                         "sum_meas_over_pred": sum(m for m, _ in rows) / sum(p for _, p in rows)}
    return out


def err(sim, real):
    return 100.0 * abs(sim - real) / real


def parse_rates(text: str | None, names):
    if not text:
        return {n: DEFAULT_RATE.get(n, 1.0) for n in names}
    if "=" not in text:
        return {n: float(text) for n in names}
    d = dict(DEFAULT_RATE)
    for part in text.split(","):
        k, v = part.split("=")
        d[k.strip()] = float(v)
    return {n: d[n] for n in names}


def e2e_main(args) -> dict:
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    rates = parse_rates(args.rate, names)
    pclip = tuple(int(x) for x in args.prompt_clip.split(","))
    oclip = tuple(int(x) for x in args.output_clip.split(","))
    result: dict = {}
    raw: dict = {}
    per_model = []
    saved = json.loads(Path(args.real_from).read_text()) if args.real_from else None
    for name in names:
        cfg = MODELS[name]
        reqs = workload(args.trace, args.num_requests, rates[name], args.seed, pclip, oclip)
        print(f"[{name}] {len(reqs)} requests, Poisson {rates[name]} req/s, prompts "
              f"{statistics.fmean(r.prompt_len for r in reqs):.0f} mean (clip {pclip}), outputs "
              f"{statistics.fmean(r.output_len for r in reqs):.1f} mean (clip {oclip}), last arrival "
              f"{reqs[-1].arrival_s:.1f} s", flush=True)
        t0 = time.perf_counter()
        if saved is not None:   # the real side of an earlier run, same workload
            if saved[name]["requests"] != [r.__dict__ for r in reqs]:
                raise SystemExit(f"--real-from: {name}'s saved workload differs from this one")
            st = saved[name]["settings"]
            res = {"token_times": saved[name]["real_token_times"], "steps": saved[name]["steps"],
                   "wall_s": saved[name].get("wall_s", float("nan"))}
        else:
            child = run_real(cfg, args.max_num_batched_tokens, args.max_num_seqs, [("main", reqs)])
            st, res = child["settings"], child["results"][0]
        print(f"[{name}] real vLLM: {res['wall_s']:.1f} s serving, {time.perf_counter() - t0:.1f} s "
              f"incl. start-up; settings {st}" + (" (replayed from --real-from)" if saved else ""), flush=True)
        real = real_metrics(reqs, res["token_times"])
        pred, env, n_over = load_predictor(cfg, args.db, st["torch_threads"])
        if pred.overhead is None:
            print(f"[{name}] WARNING: no engine calibration in {args.db} for env {env.key} "
                  f"(run `dooly calibrate`); simulating with the model's units only", flush=True)
        ts = time.perf_counter()
        sim, sres = sim_metrics(reqs, pred, st)
        print(f"[{name}] DoolySim: env {env.key} (threads {env.threads}, {n_over} calibration batches), "
              f"{sres.num_steps} steps (real {len(res['steps'])}), {sres.num_preemptions} preemptions, "
              f"{time.perf_counter() - ts:.2f} s", flush=True)
        diag = step_diag(pred, res["steps"])
        rows = {}
        print(f"\n[{name}]  metric         real ms      sim ms    |err| %")
        for metric in ("ttft", "tpot", "e2e"):
            rs, ss = stats(real[metric]), stats(sim[metric])
            for k in ("p50", "p90", "p99", "mean"):
                e = err(ss[k], rs[k])
                rows[f"{metric}_{k}"] = (rs[k], ss[k], e)
                print(f"  {metric.upper():4s} {k:5s}  {rs[k]:11.1f} {ss[k]:11.1f} {e:9.1f}"
                      + ("" if ss[k] >= rs[k] else "  (under)"))
        figs = {}
        for metric in ("ttft", "tpot", "e2e"):
            for k in ("p50", "p90", "p99", "mean"):
                rv, sv, e = rows[f"{metric}_{k}"]
                figs[f"{metric}_{k}_real_ms"] = round(rv, 2)
                figs[f"{metric}_{k}_sim_ms"] = round(sv, 2)
                figs[f"{metric}_{k}_err_pct"] = round(e, 2)
            figs[f"{metric}_mape_pct"] = round(statistics.fmean(rows[f"{metric}_{k}"][2] for k in ("p50", "p90", "p99")), 2)
        print(f"  => TTFT MAPE (p50/p90/p99) {figs['ttft_mape_pct']:.1f}%  (paper: within {PAPER['ttft']:.0f}%)")
        print(f"  => TPOT MAPE (p50/p90/p99) {figs['tpot_mape_pct']:.1f}%  (paper: within {PAPER['tpot']:.0f}%)")
        print(f"  step check on the real run's own batches: median wall/pred {diag.get('median_meas_over_pred', 0):.2f}; "
              f"total wall {diag.get('sum_meas_s', 0):.1f} s vs pred {diag.get('sum_pred_s', 0):.1f} s")
        loop_ms = diag.get("outside_runner_ms_median", 0.0)
        print(f"  engine time per step outside the model runner (scheduler, output processing): "
              f"median {loop_ms:.2f} ms")
        raw[name] = {"requests": [r.__dict__ for r in reqs], "real_token_times": res["token_times"],
                     "wall_s": res["wall_s"],
                     "steps": res["steps"], "settings": st}
        for k in ("prefill_or_mixed", "decode_only"):
            if k in diag:
                d = diag[k]
                print(f"    {k:17s} n={d['n']:4d} wall median {d['meas_ms_median']:8.1f} ms  pred median "
                      f"{d['pred_ms_median']:8.1f} ms  step MAPE {d['mape_pct']:.1f}%  sum wall/pred {d['sum_meas_over_pred']:.2f}")
        print(flush=True)
        figs.update(outside_runner_ms_median=round(loop_ms, 3), rate=rates[name], num_requests=len(reqs), real_serving_s=round(res["wall_s"], 1),
                    real_steps=len(res["steps"]), sim_steps=int(sres.num_steps),
                    step_median_wall_over_pred=round(diag.get("median_meas_over_pred", float("nan")), 3),
                    calibration_batches=n_over, env_threads=env.threads, worker_threads=st["torch_threads"],
                    max_num_batched_tokens=st["max_num_batched_tokens"], max_num_seqs=st["max_num_seqs"],
                    block_size=st["block_size"], num_gpu_blocks=st["num_gpu_blocks"])
        per_model.append(figs)
        for k, v in figs.items():
            result[f"{name}.{k}"] = v
    for k, v in per_model[0].items():   # top level: the first model
        if k.endswith("_pct") or k.endswith("_ms"):
            result[k] = v
    for k in per_model[0]:
        if k.endswith("_pct"):
            result[f"avg.{k}"] = round(statistics.fmean(f[k] for f in per_model), 2)
    result["top_level_model"] = names[0]
    if args.json_path:
        Path(args.json_path).with_suffix(".raw.json").write_text(json.dumps(raw))
    print(f"paper: TTFT within {PAPER['ttft']:.0f}%, TPOT within {PAPER['tpot']:.0f}%;  here: " +
          "; ".join(f"{n} TTFT {f['ttft_mape_pct']:.1f}% TPOT {f['tpot_mape_pct']:.1f}%" for n, f in zip(names, per_model)))
    return result


# ----------------------------------------------------------------------------- winner
def metric_value(m: dict, metric: str) -> float:
    stat, name = metric.split("_", 1)   # e.g. p90_ttft, mean_e2e
    return stats(m[name])[stat]


def winner_main(args) -> dict:
    name = args.winner_model
    cfg = MODELS[name]
    confs = []
    for c in args.winner_configs.split(","):
        b, _, s = c.partition("x")
        confs.append((int(b), int(s or args.max_num_seqs)))
    rates = [float(x) for x in args.winner_rates.split(",")]
    pclip = tuple(int(x) for x in args.prompt_clip.split(","))
    oclip = tuple(int(x) for x in args.output_clip.split(","))
    wls = [(f"rate{r:g}", workload(args.trace, args.winner_requests, r, args.seed, pclip, oclip))
           for r in rates]
    pred = None
    table = {}
    for b, s in confs:
        t0 = time.perf_counter()
        child = run_real(cfg, b, s, wls)
        st = child["settings"]
        if pred is None:
            pred, env, n_over = load_predictor(cfg, args.db, st["torch_threads"])
        print(f"[winner] {name} budget {b} seqs {s}: real runs " +
              ", ".join(f"{r['name']} {r['wall_s']:.1f} s" for r in child["results"]) +
              f" ({time.perf_counter() - t0:.0f} s incl. start-up); KV blocks {st['num_gpu_blocks']}", flush=True)
        for (wname, reqs), res in zip(wls, child["results"]):
            real = real_metrics(reqs, res["token_times"])
            sim, _ = sim_metrics(reqs, pred, st)
            table[(b, s, wname)] = (metric_value(real, args.winner_metric), metric_value(sim, args.winner_metric),
                                    real, sim)
    result = {"model": name, "metric": args.winner_metric, "num_requests": args.winner_requests}
    print(f"\n[winner] {name}, {args.winner_requests} requests per run, metric {args.winner_metric} (ms)")
    print(f"  {'load':9s} {'config':14s} {'real':>10s} {'sim':>10s} {'err%':>7s}")
    agree_all = True
    for rate, (wname, _) in zip(rates, wls):
        for b, s in confs:
            rv, sv, _, _ = table[(b, s, wname)]
            print(f"  {wname:9s} {f'{b}tok/{s}seq':14s} {rv:10.1f} {sv:10.1f} {err(sv, rv):7.1f}")
            tag = f"{wname}.b{b}s{s}"
            result[f"{tag}.real_ms"] = round(rv, 2)
            result[f"{tag}.sim_ms"] = round(sv, 2)
            result[f"{tag}.err_pct"] = round(err(sv, rv), 2)
        real_w = min(confs, key=lambda c: table[(c[0], c[1], wname)][0])
        sim_w = min(confs, key=lambda c: table[(c[0], c[1], wname)][1])
        agree = real_w == sim_w
        agree_all &= agree
        vals_r = sorted(table[(b, s, wname)][0] for b, s in confs)
        vals_s = sorted(table[(b, s, wname)][1] for b, s in confs)
        margin_r = 100 * (vals_r[1] - vals_r[0]) / vals_r[0]
        margin_s = 100 * (vals_s[1] - vals_s[0]) / vals_s[0]
        print(f"  {wname}: real winner {real_w[0]}tok/{real_w[1]}seq (margin {margin_r:.1f}%), sim winner "
              f"{sim_w[0]}tok/{sim_w[1]}seq (margin {margin_s:.1f}%) -> simulator picks the same winner: "
              f"{'yes' if agree else 'no'}")
        result[f"{wname}.rate"] = rate
        result[f"{wname}.real_winner"] = f"b{real_w[0]}s{real_w[1]}"
        result[f"{wname}.sim_winner"] = f"b{sim_w[0]}s{sim_w[1]}"
        result[f"{wname}.same_winner"] = agree
        result[f"{wname}.real_margin_pct"] = round(margin_r, 2)
        result[f"{wname}.sim_margin_pct"] = round(margin_s, 2)
    # the same runs under other metrics (not used for the verdict above)
    others = [m for m in ("p50_ttft", "p90_ttft", "mean_e2e", "p90_tpot") if m != args.winner_metric]
    print("  other metrics on the same runs (real / sim ms; winner real, sim):")
    for wname, _ in wls:
        for m in others:
            vals = {c: (metric_value(table[(c[0], c[1], wname)][2], m),
                        metric_value(table[(c[0], c[1], wname)][3], m)) for c in confs}
            wr = min(confs, key=lambda c: vals[c][0])
            ws = min(confs, key=lambda c: vals[c][1])
            print(f"    {wname:7s} {m:9s} " + "  ".join(f"b{c[0]}: {vals[c][0]:8.1f} / {vals[c][1]:8.1f}" for c in confs)
                  + f"   winner real b{wr[0]}, sim b{ws[0]} ({'same' if wr == ws else 'DIFFERENT'})")
            for c in confs:
                result[f"{wname}.b{c[0]}s{c[1]}.{m}.real_ms"] = round(vals[c][0], 2)
                result[f"{wname}.b{c[0]}s{c[1]}.{m}.sim_ms"] = round(vals[c][1], 2)
            result[f"{wname}.{m}.same_winner"] = wr == ws
    winners_r = {result[f"{w}.real_winner"] for w, _ in wls}
    winners_s = {result[f"{w}.sim_winner"] for w, _ in wls}
    result["real_inversion"] = len(winners_r) > 1
    result["sim_inversion"] = len(winners_s) > 1
    result["same_winner_all_loads"] = agree_all
    print(f"  inversion across loads: real {'yes' if len(winners_r) > 1 else 'no'}, "
          f"sim {'yes' if len(winners_s) > 1 else 'no'}")
    return result


def sim_explore(args) -> None:
    """Simulator only: the metric for each config x rate (to choose an inverting pair)."""
    name = args.winner_model
    pred, env, n_over = load_predictor(MODELS[name], args.db, 2)
    pclip = tuple(int(x) for x in args.prompt_clip.split(","))
    oclip = tuple(int(x) for x in args.output_clip.split(","))
    for rate in [float(x) for x in args.winner_rates.split(",")]:
        reqs = workload(args.trace, args.winner_requests, rate, args.seed, pclip, oclip)
        line = []
        for c in args.winner_configs.split(","):
            b, _, s = c.partition("x")
            st = {"max_num_batched_tokens": int(b), "max_num_seqs": int(s or args.max_num_seqs),
                  "block_size": 128, "num_gpu_blocks": None}
            sim, _ = sim_metrics(reqs, pred, st)
            line.append(f"{c}: p90ttft {metric_value(sim, 'p90_ttft'):8.0f} meane2e {metric_value(sim, 'mean_e2e'):8.0f} "
                        f"p90tpot {metric_value(sim, 'p90_tpot'):6.0f}")
        print(f"rate {rate:5g} | " + " | ".join(line))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,qwen0.5b")
    ap.add_argument("--db", default=str(ROOT / "out/accuracy.db"))
    ap.add_argument("--num-requests", type=int, default=100)
    ap.add_argument("--rate", help="req/s for every model, or per model: smollm2=1.0,qwen0.5b=0.6")
    ap.add_argument("--trace", default=DEFAULT_TRACE, help="trace CSV for lengths, or 'synthetic'")
    ap.add_argument("--prompt-clip", default="32,512")
    ap.add_argument("--output-clip", default="8,64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--winner", action="store_true", help="winner-inversion check instead")
    ap.add_argument("--sim-explore", action="store_true", help="simulator only, winner configs x rates")
    ap.add_argument("--winner-model", default="smollm2")
    ap.add_argument("--winner-configs", default="2048x64,256x64", help="BUDGETxSEQS,...")
    ap.add_argument("--winner-rates", default="1,4")
    ap.add_argument("--winner-requests", type=int, default=60)
    ap.add_argument("--winner-metric", default="p90_ttft", help="p50|p90|p99|mean _ ttft|tpot|e2e")
    ap.add_argument("--real-from", help="a .raw.json an earlier run wrote: simulate against its real "
                    "side instead of running vLLM again (same models, workload and settings)")
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        return _child(args._child, args._out)
    if args.sim_explore:
        sim_explore(args)
        return 0
    result = winner_main(args) if args.winner else e2e_main(args)
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
