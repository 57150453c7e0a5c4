"""Batch-latency accuracy against real vLLM (CPU): per engine step, the model execution
time measured inside the worker vs `Predictor.predict(batch).total_ms`.

    python bench/accuracy_batch.py [--models smollm2,qwen0.5b] [--db out/accuracy.db]
        [--max-tokens 2048 --max-batch 64 --max-context 2048] [--quick] [--json PATH]

Per model: sweep into the DB (reused when already swept), start vLLM in-process
(dummy weights, bf16, prefix caching off), wrap the CPU model runner's
`execute_model` + `sample_tokens` (model forward + logits + greedy sampler) with
perf_counter, and record each step's batch from the scheduler output as
(num_scheduled_tokens, num_computed_tokens before the step). A warm-up generate
runs first and is not recorded. Sets:
  prefill  1-4 sequences, 32-2048 tokens, max_tokens=1, steps with only prefills (c=0)
  decode   1-64 sequences at context 128-2048, steps where every sequence has q=1
  mixed    decodes running while a long prompt is chunk-prefilled under a small token
           budget; steps holding both a chunk (q>1) and decodes (q=1)
Transfer: Qwen2.5-0.5B predicted from units measured while sweeping other models
(SmolLM2 + Qwen2.5-1.5B); when those do not cover every unit it needs, the coverage is
reported instead of a MAPE.
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

from dooly.engines.vllm_probe import StepRecorder, generate, prompts, start_llm

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "smollm2": ROOT / "fixtures/configs/HuggingFaceTB__SmolLM2-135M-Instruct.json",
    "qwen0.5b": ROOT / "fixtures/configs/Qwen__Qwen2.5-0.5B.json",
}
TRANSFER_TARGET = "qwen0.5b"
TRANSFER_SOURCES = [ROOT / "fixtures/configs/HuggingFaceTB__SmolLM2-135M-Instruct.json",
                    Path("/work/shared/configs/Qwen__Qwen2.5-1.5B.json")]

# (label, prompt lengths, max_tokens); sizes kept small: a 2-core CPU prefills ~1-5 ms/token
PREFILL = [("1x32", [32], 1), ("1x128", [128], 1), ("1x512", [512], 1), ("1x2048", [2048], 1),
           ("2x256", [256] * 2, 1), ("4x128", [128] * 4, 1)]
DECODE = [("1@128", [128], 8), ("8@256", [256] * 8, 6), ("32@128", [128] * 32, 5),
          ("64@128", [128] * 64, 4), ("2@2048", [2048] * 2, 6)]
# (label, decode prompt lengths, decode max_tokens, long prompt, token budget)
MIXED = [("4dec@256+1536/256", [256] * 4, 20, 1536, 256),
         ("16dec@128+1024/384", [128] * 16, 10, 1024, 384)]
QUICK = {"prefill": PREFILL[:5], "decode": DECODE[:4], "mixed": MIXED[:1]}


def keep(set_name, batch):
    if set_name == "prefill":
        return all(q > 1 and c == 0 for q, c in batch)
    if set_name == "decode":
        return all(q == 1 for q, _ in batch)
    return any(q > 1 for q, _ in batch) and any(q == 1 for q, _ in batch)


def measure_model(config: Path, sets: dict, rec: StepRecorder, repeats: int) -> list[dict]:
    big_budget = 8192
    llm = start_llm(config, big_budget)
    sched = llm.llm_engine.engine_core.engine_core.scheduler

    def gen(plist, max_tokens_list):
        generate(llm, plist, max_tokens_list)

    # warm-up (not recorded): a prefill, decodes, and a chunked mixed batch
    rec.recording = False
    gen(prompts([300, 40, 40], 0), [4, 4, 4])
    sched.max_num_scheduled_tokens = 128
    gen(prompts([64, 64, 700], 1), [8, 8, 1])
    sched.max_num_scheduled_tokens = big_budget
    rec.steps.clear()
    rec.recording = True
    seed = 10
    for rep in range(repeats):   # prefill gives one step per run: repeat it
        for label, lens, mt in sets["prefill"]:
            rec.label = ("prefill", label)
            seed += 1
            gen(prompts(lens, seed), [mt] * len(lens))
    if True:
        for label, lens, mt in sets["decode"]:
            rec.label = ("decode", label)
            seed += 1
            gen(prompts(lens, seed), [mt] * len(lens))
        for label, dec, mt, long_len, budget in sets["mixed"]:
            rec.label = ("mixed", label)
            seed += 1
            sched.max_num_scheduled_tokens = budget
            gen(prompts(dec + [long_len], seed), [mt] * len(dec) + [1])
            sched.max_num_scheduled_tokens = big_budget
    rec.recording = False
    steps = [s for s in rec.steps if keep(s["set"][0], s["batch"])]
    rec.steps.clear()
    llm = None  # free the engine before the next model
    import gc
    gc.collect()
    return steps


def mape(rows):
    return 100.0 * statistics.fmean(abs(r["pred_ms"] - r["ms"]) / r["ms"] for r in rows) if rows else None


def transfer_coverage(target: Path, sources: list[Path], engine="vllm"):
    from dooly.analyze import analyze
    paths = [str(target)] + [str(s) for s in sources if s.exists()]
    an = analyze(paths, engine)
    need = set(an.inventories[0].entries)
    have = set().union(*(set(inv.entries) for inv in an.inventories[1:])) if len(an.inventories) > 1 else set()
    return need, need & have, [s for s in sources if s.exists()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,qwen0.5b")
    ap.add_argument("--db", default=str(ROOT / "out/accuracy.db"))
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-context", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2, help="each configuration runs this many times")
    ap.add_argument("--quick", action="store_true", help="fewer configurations, one repeat")
    ap.add_argument("--no-transfer", action="store_true")
    ap.add_argument("--json", dest="json_path")
    ap.add_argument("--_measure", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    sets = QUICK if args.quick else {"prefill": PREFILL, "decode": DECODE, "mixed": MIXED}
    repeats = 1 if args.quick else args.repeats
    if args._measure:   # child process: vLLM only (dooly's sweep/capture in the same process breaks vLLM init)
        rec = StepRecorder()
        rec.install()
        steps = measure_model(MODELS[args._measure], sets, rec, repeats)
        Path(args._out).write_text(json.dumps({"steps": steps, "threads": sorted(rec.threads_seen)}))
        return 0
    from dooly.profile.grid import GridLimits
    from dooly.db import Store
    from dooly.config import load_config
    from dooly.fit.step_model import record_steps
    from dooly.predict import Predictor
    from dooly.profile.sweep import sweep

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for n in names:
        if n not in MODELS:
            ap.error(f"--models: unknown {n!r}; choose from {', '.join(MODELS)}")
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    lim = GridLimits(args.max_tokens, args.max_batch, args.max_context)
    result: dict = {}
    all_rows: list[dict] = []
    sweep_threads = None
    for name in names:
        cfg = MODELS[name]
        t0 = time.perf_counter()
        out_path = Path(tempfile.mkdtemp(prefix="dooly_acc_")) / "steps.json"
        cmd = [sys.executable, __file__, "--_measure", name, "--_out", str(out_path),
               "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-6000:], file=sys.stderr)
            raise SystemExit(f"[{name}] vLLM measurement failed (rc {proc.returncode})")
        child = json.loads(out_path.read_text())
        steps, threads = child["steps"], child["threads"]
        for st in steps:
            st["set"] = tuple(st["set"])
            st["batch"] = [tuple(b) for b in st["batch"]]
        print(f"[{name}] vLLM: {len(steps)} steps kept in {time.perf_counter() - t0:.1f} s (incl. engine init); "
              f"worker torch threads {threads}", flush=True)
        # the sweep's default thread count follows vLLM's CPU worker binding
        s = sweep([str(cfg)], args.db, "vllm", lim=lim)
        print(f"[{name}] sweep threads={s.env_key}: {len(s.units_measured)} measured, "
              f"{len(s.units_reused)} reused, {s.points_measured} points, {s.seconds:.1f} s", flush=True)
        for st in steps:  # compare the model's execution (forward, logits, sampler) with the units
            st["step_ms"], st["ms"] = st["ms"], st["forward_ms"]
        with Store.open(args.db) as store:
            pred = Predictor.load(str(cfg), args.db, "vllm", env_key=s.env_key, store=store)
            # calibrate the engine step beyond the units (what `dooly calibrate` stores)
            n_over = record_steps(store, pred.env, [dict(st, ms=st["step_ms"]) for st in steps],
                                  load_config(cfg).hash)
            pred_step = Predictor.load(str(cfg), args.db, "vllm", env_key=s.env_key, store=store)
        sweep_threads = pred.env.threads
        print(f"[{name}] recorded {n_over} whole engine steps (calibration of the step beyond the units)", flush=True)
        for st in steps:
            r = pred.predict(st["batch"])
            st.update(model=name, pred_ms=r.total_ms, breakdown=r.breakdown,
                      pred_step_ms=r.total_ms + pred_step.predict(st["batch"]).overhead_ms)
        all_rows += steps
        step_err = [abs(st["pred_step_ms"] - st["step_ms"]) / st["step_ms"] for st in steps]
        result[f"{name}.mape_step_with_overhead_pct"] = round(100 * statistics.fmean(step_err), 2)
        print(f"[{name}] whole step (units + overhead fitted on these steps, in-sample): "
              f"MAPE {100 * statistics.fmean(step_err):.1f}%", flush=True)
        for set_name in ("prefill", "decode", "mixed"):
            rows = [r for r in steps if r["set"][0] == set_name]
            m = mape(rows)
            result[f"{name}.mape_{set_name}_pct"] = None if m is None else round(m, 2)
            if rows:
                bias = statistics.fmean(r["pred_ms"] - r["ms"] for r in rows)
                ratio = statistics.median(r["ms"] / r["pred_ms"] for r in rows)
                print(f"[{name}] {set_name:8s} MAPE {m:6.1f}%  n={len(rows):3d}  "
                      f"mean(pred-meas) {bias:+8.2f} ms  median meas/pred {ratio:.2f}")
                for lbl in dict.fromkeys(r["set"][1] for r in rows):
                    sub = [r for r in rows if r["set"][1] == lbl]
                    print(f"      {lbl:22s} n={len(sub):2d} meas {statistics.median(r['ms'] for r in sub):8.2f} ms"
                          f"  pred {statistics.median(r['pred_ms'] for r in sub):8.2f} ms"
                          f"  (sample phase {statistics.median(r['sample_ms'] for r in sub):.2f} ms)")
        result[f"{name}.threads_worker"] = threads
        result[f"{name}.threads_sweep"] = sweep_threads

    for set_name in ("prefill", "decode", "mixed"):
        m = mape([r for r in all_rows if r["set"][0] == set_name])
        result[f"mape_{set_name}_pct"] = None if m is None else round(m, 2)
    print("\nMAPE over models: " + ", ".join(f"{k} {result[f'mape_{k}_pct']}%" for k in ("prefill", "decode", "mixed")))

    worst = sorted(all_rows, key=lambda r: abs(r["pred_ms"] - r["ms"]) / r["ms"], reverse=True)[:5]
    print("5 worst steps:")
    for r in worst:
        b = r["batch"]
        desc = f"{len(b)} seqs, T={sum(q for q, _ in b)}, max c={max(c for _, c in b)}"
        print(f"  {r['model']:8s} {r['set'][0]:7s} {r['set'][1]:20s} {desc:32s} meas {r['ms']:8.2f} ms "
              f"pred {r['pred_ms']:8.2f} ms  err {100 * (r['pred_ms'] - r['ms']) / r['ms']:+6.1f}%")

    result["mape_transfer_pct"] = None
    if not args.no_transfer:
        need, covered, srcs = transfer_coverage(MODELS[TRANSFER_TARGET], TRANSFER_SOURCES)
        result["transfer_units_needed"] = len(need)
        result["transfer_units_covered"] = len(covered)
        src_names = ", ".join(s.stem for s in srcs)
        if covered == need:
            print(f"transfer: all {len(need)} units covered by {src_names}; sweep those models into a "
                  f"separate DB to get a MAPE (not done here)")
        else:
            print(f"transfer: not covered ({len(covered)} of {len(need)} units) by {src_names}")
            missing = sorted(need - covered)
            print("  missing: " + "; ".join(k[:60] for k in missing[:8]) + (" ..." if len(missing) > 8 else ""))

    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=1))
        steps_path = Path(args.json_path).with_suffix(".steps.json")
        steps_path.write_text(json.dumps([{k: v for k, v in r.items()} for r in all_rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
