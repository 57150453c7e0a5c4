"""Tensor-parallel accuracy against real vLLM (CPU): Dooly's TP=N prediction of whole engine
steps, and of TTFT/TPOT on Poisson workloads, beside the same figures at TP=1, and the
TP=1 vs TP=N winner at two loads, judged on the real engine.

    python bench/accuracy_tp.py --db out/tp.db --json out/tp.json        # builds what it needs
        [--models qwen0.5b,qwen3-0.6b,llama3.2-1b] [--tp 2] [--quick] [--real-runs 1] [--no-serve]
        [--rates qwen0.5b=0.2:0.8] [--real-from PATH] [--resume]
    python bench/accuracy_tp.py --models qwen0.5b --serve-only --kv-gib 0.01 --max-model-len 512 ...
        # the winner where the KV cache binds (6 blocks at TP=1; N ranks hold N times the blocks)

The DB: every model swept and calibrated at TP=1 as bench/accuracy_batch.py does, then
swept at --tp N (`dooly sweep --tp N`: one rank's shards in the ranks' environment, on a
CPU the host's cores split between the ranks; the collectives timed across N processes
with vLLM's own communicator), fitted, and calibrated at TP=1 in the ranks' environment
(one rank's cores, VLLM_CPU_OMP_THREADS_BIND): that engine-step model stands for a rank's
runner beyond its units. Leave one model out, as at TP=1: a model's own calibration steps
never score it. The real side: vLLM with tensor_parallel_size N, dummy weights, each rank
bound to its own cores (dooly.engines.vllm_tp_probe), the batches of accuracy_batch.py
(prefill, decode, mixed) and, unless --no-serve, accuracy_e2e.py's Poisson workloads at a
low and a high rate for TP=1 and TP=N. A model's attention heads must split N ways
(SmolLM2-135M's 9 heads do not: vLLM refuses it at TP=2).
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runs from a checkout, no install
sys.path.insert(0, str(Path(__file__).resolve().parent))
import flatjson  # noqa: E402
from dooly.cli import OneLineParser  # noqa: E402
from accuracy_batch import (BUDGET, LIMITS, MAX_SEQS, MODELS, ROOT, SETS, bad_input, bench_env,  # noqa: E402
                            bracket_drift, items, keep, mape, model_out_predictor, noise_pct, prepare_db,
                            recheck, save_raw, saved_drift, use_db_env)
from accuracy_e2e import (DEFAULT_TRACE, PCTS, SERVING, as_jobs, capacity, pct,  # noqa: E402
                          real_latencies, sim_latencies, spread_pct, workload)

# three, so that each model's TP=N steps are predicted from a pool of two TP=N calibrations
# (bench/results/2026-12-06c: TP=2 within 8% per set in both runs of three models)
DEFAULT_MODELS = "qwen0.5b,qwen3-0.6b,llama3.2-1b"
# the serving engines' settings unless told (the batches and calibrations always use them)
DEFAULTS = {"kv_gib": 1.0, "max_model_len": 4096}


def prepare_tp(names: list[str], db: str, limits, tp: int, log=print, replay: bool = False) -> None:
    """TP=N sweep and fit of every model, then its real TP=N calibration steps; `replay`
    (--real-from): nothing is measured, the DB must hold every model's TP=N calibration."""
    from dooly.cli import main as dooly
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.engines import default_threads
    from dooly.graph.units import inventory_key
    from dooly.parallel import rank_threads
    from dooly.profile.calibrate import PASSES, calibrated_models, interleaved_passes
    from dooly.profile.calibrate_tp import calibrate_tp
    threads = rank_threads(default_threads("vllm", "cpu"), tp)
    if replay:
        use_db_env(db, threads)
    tok, batch, ctx = limits
    for n in [] if replay else names:
        t0 = time.perf_counter()
        if dooly(["sweep", str(MODELS[n]), "--db", db, "--tp", str(tp), "--max-tokens", str(tok),
                  "--max-batch", str(batch), "--max-context", str(ctx), "--no-progress"]) != 0:
            raise SystemExit(f"sweep --tp {tp} of {n} failed")
        log(f"  swept {n} at TP={tp} in {time.perf_counter() - t0:.0f} s")
    if dooly(["fit", "--db", db]) != 0:
        raise SystemExit("dooly fit failed")
    with Store.open(db) as store:
        done = calibrated_models(store, bench_env(threads).key)
    todo = [n for n in names if inventory_key(load_config(MODELS[n]).hash, tp) not in done]
    if replay and todo:
        bad_input(f"{db}: calibrations: --real-from needs {todo[0]} calibrated at TP={tp}")
    t0 = time.perf_counter()
    # as `dooly calibrate` does: the models' passes interleaved, each batch the median over passes
    run = lambda n, earlier: calibrate_tp(str(MODELS[n]), db, tp, BUDGET, MAX_SEQS, earlier=earlier)  # noqa: E731
    for p, n, r in interleaved_passes([(n, n) for n in todo], PASSES, run):
        log(f"  calibrated {n} at TP={tp} (pass {p} of {PASSES}), ranks on cores {r['bind']}: "
            f"{r['steps']} steps in {time.perf_counter() - t0:.0f} s (env {r['env_key']})")
        t0 = time.perf_counter()


def others_calibrated(name: str, db: str, tp: int) -> bool:
    """Whether the DB holds another model's engine steps at this TP (in the environment the
    bench scores), so that this model can be predicted from a pool without its own: the
    DB decides, not --models, so a one-model run on a DB of several stays model-out."""
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.engines import default_threads
    from dooly.graph.units import inventory_key
    from dooly.parallel import rank_threads
    from dooly.profile.calibrate import calibrated_models
    cfg = load_config(MODELS[name])
    env = bench_env(rank_threads(default_threads("vllm", "cpu"), tp) if tp > 1 else None)
    with Store.open(db) as store:
        pool = calibrated_models(store, env.key)
    return bool(pool - {cfg.hash if tp == 1 else inventory_key(cfg.hash, tp)})


def tp_predictor(name: str, db: str, tp: int, drift: bool = False, out: dict | None = None):
    """The TP=N predictor whose engine-step model never saw this model's steps (its own
    steps when no other model is calibrated); with `drift`, scaled by the host's drift
    since the sweep (--recheck-host), its factors into `out`."""
    from dooly.config import load_config
    from dooly.predict import Predictor
    pooled = others_calibrated(name, db, tp)
    if tp == 1:
        pred = model_out_predictor(name, db, exclude_self=pooled)
    else:
        from dooly.graph.units import inventory_key
        own = inventory_key(load_config(MODELS[name]).hash, tp)   # how the pool names its TP steps
        pred = Predictor.load(str(MODELS[name]), db, "vllm", tp=tp, exclude=[own] if pooled else [],
                              step_model="pool" if pooled else "model")
    factors = recheck(pred, db, f"{name}.tp{tp}", drift, str(MODELS[name]))
    if out is not None:
        out.update(factors)
    return pred


def real(name: str, tp: int, job: dict, args, log=print) -> list[dict]:
    """--real-runs results of one job (saved to --raw as each ends; --resume reuses them).
    With --recheck-host, the batches' host is re-timed right before and right after them
    and saved with them (accuracy_batch.bracket_drift); the serving runs are scaled by that
    too (by their own re-timing with --serve-only), and a replay by what the run saved."""
    from dooly.engines.vllm_tp_probe import run_child
    key = f"{name}@tp{tp}:{job['mode']}"
    src = args.real_from or (args.raw if args.resume else None)
    saved = json.loads(Path(src).read_text()) if src and Path(src).exists() else {}
    entry = saved[key] if saved.get(key, {}).get("job") == job else {"job": job, "runs": []}
    runs = entry["runs"]
    # the host's drift is re-timed around the batches, or around the serving runs when
    # they run alone (--serve-only), and saved with them for a replay
    bracket = job["mode"] == "steps" or args.serve_only
    if args.real_from:
        if not runs:
            raise SystemExit(f"--real-from {args.real_from}: no runs of {key} for this job")
    else:
        def save():
            save_raw(args.raw, key, entry)
        if bracket:
            bracket_drift(entry, name, args, save, before=len(runs) < args.real_runs, tp=tp)
        while len(runs) < args.real_runs:
            t0 = time.perf_counter()
            runs.append(run_child(dict(job, config=str(MODELS[name]), tp=tp)))
            save()
            log(f"[{name}] TP={tp} real {job['mode']} run {len(runs)} in {time.perf_counter() - t0:.0f} s")
        if bracket:
            bracket_drift(entry, name, args, save, tp=tp)
    if bracket:
        saved_drift(name, entry, args, key=f"{name}.tp{tp}")
    return runs if args.real_from else runs[:args.real_runs]   # a replay scores every saved run


def score_steps(runs: list[dict], pred) -> dict:
    """Per set: whole-step MAPE, the units alone, the median predicted/real ratio, and the
    real-vs-real noise (the same batches in the first two runs; None with one run)."""
    steps = [s for r in runs for s in r["steps"] if keep(s["set"][0], s["batch"])]
    fig: dict = {}
    for set_name in SETS:
        rows = [s for s in steps if s["set"][0] == set_name]
        if not rows:
            continue
        preds = [pred.predict(s["batch"]) for s in rows]
        fig[f"mape_{set_name}_pct"] = mape((p.step_ms, s["ms"]) for p, s in zip(preds, rows))
        fig[f"units_only_{set_name}_pct"] = mape((p.units_ms, s["ms"]) for p, s in zip(preds, rows))
        fig[f"ratio_{set_name}"] = statistics.median(p.step_ms / s["ms"] for p, s in zip(preds, rows))
        coll = [sum(ms for k, ms in p.breakdown.items() if pred.units[k].op.startswith("vllm.all_"))
                for p in preds]
        fig[f"collective_share_{set_name}_pct"] = 100 * statistics.median(
            c / p.step_ms for c, p in zip(coll, preds) if p.step_ms > 0)
        fig[f"n_{set_name}"] = len(rows)
        fig[f"noise_{set_name}_pct"] = noise_pct(runs[0], runs[1], set_name) if len(runs) > 1 else None
    return fig


def score_serve(loads: dict, runs: list[dict], pred, kv_blocks: int) -> dict:
    """Per load: real and simulated TTFT/TPOT percentiles and mean E2E (ms). The simulator
    gets the engine's scheduler settings but Dooly's own KV blocks (`kv_blocks`, from the
    units), not the count the engine reports: capacity is part of what it predicts."""
    fig: dict = {}
    settings = dict(runs[0]["settings"], num_gpu_blocks=kv_blocks)
    for i, (ld, reqs) in enumerate(loads.items()):
        sim, res = sim_latencies(reqs, pred, settings)
        reals = [real_latencies(reqs, r["results"][i]["token_times"]) for r in runs]
        # the schedule apart from the step times: steps and tokens computed (recomputes
        # after preemptions included), the engine's (first run) against the simulator's
        real_steps = runs[0]["results"][i].get("steps") or []
        fig[f"{ld}.steps_real"], fig[f"{ld}.steps_sim"] = len(real_steps), res.num_steps
        fig[f"{ld}.tokens_real"] = sum(int(q) for s in real_steps for q, _ in s["batch"])
        fig[f"{ld}.tokens_sim"], fig[f"{ld}.preemptions_sim"] = int(res.step_num_tokens.sum()), res.num_preemptions
        for metric in ("ttft", "tpot"):
            s, rs = pct(sim[metric]), [pct(r[metric]) for r in reals]
            for p in PCTS:
                fig[f"{ld}.{metric}_{p}_real_ms"] = statistics.fmean(r[p] for r in rs)
                fig[f"{ld}.{metric}_{p}_sim_ms"] = s[p]
            # the serving figure: mean |sim/real - 1| over p50, p90, p99
            fig[f"{ld}.{metric}_err_pct"] = statistics.fmean(
                100 * abs(fig[f"{ld}.{metric}_{p}_sim_ms"] / fig[f"{ld}.{metric}_{p}_real_ms"] - 1) for p in PCTS)
            # real vs real, as accuracy_e2e states it: the runs' largest difference per
            # percentile, averaged over p50, p90, p99 (None with one run)
            fig[f"{ld}.{metric}_noise_pct"] = (statistics.fmean(spread_pct(rs, p) for p in PCTS)
                                               if len(rs) > 1 else None)
        outs = [r.output_len for r in reqs]
        e2e = lambda lat: statistics.fmean(t + (o - 1) * d for t, d, o in zip(  # noqa: E731
            lat["ttft"], lat["tpot"] + [0.0] * len(outs), outs))
        per_run = [e2e(r) for r in reals]
        fig[f"{ld}.e2e_mean_real_ms"] = statistics.fmean(per_run)
        fig[f"{ld}.e2e_mean_sim_ms"] = e2e(sim)
        # real vs real: how far apart the runs' mean E2E are (None with one run)
        fig[f"{ld}.e2e_real_spread_pct"] = (100 * (max(per_run) - min(per_run)) / fig[f"{ld}.e2e_mean_real_ms"]
                                            if len(per_run) > 1 else None)
    return fig


def print_steps(name: str, tp: int, figs: dict) -> None:
    print(f"[{name}] per-batch, leave one model out      " + "   ".join(f"TP={t:<28d}" for t in figs))
    for set_name in SETS:
        cells = []
        for t, f in figs.items():
            if f"mape_{set_name}_pct" not in f:
                cells.append(f"{'-':31s}")
                continue
            noise = f.get(f"noise_{set_name}_pct")
            cells.append(f"MAPE {f[f'mape_{set_name}_pct']:5.1f}% units {f[f'units_only_{set_name}_pct']:5.1f}% "
                         f"x{f[f'ratio_{set_name}']:.2f} real-vs-real " + ("-" if noise is None else f"{noise:.1f}%"))
        print(f"  {set_name:8s} " + "   ".join(cells))
    if f"collective_share_decode_pct" in figs.get(tp, {}):
        print(f"  collectives: {figs[tp]['collective_share_decode_pct']:.0f}% of a predicted TP={tp} decode step")


def winner(figs: dict, loads) -> dict:
    """Per load: the TP with the lower mean E2E, on the real engine and in Dooly; the real
    winner is within noise when its margin is under the larger real-vs-real spread of the
    two (the runs' mean E2E apart)."""
    out = {}
    for ld in loads:
        real_w = min(figs, key=lambda t: figs[t][f"{ld}.e2e_mean_real_ms"])
        sim_w = min(figs, key=lambda t: figs[t][f"{ld}.e2e_mean_sim_ms"])
        means = sorted(figs[t][f"{ld}.e2e_mean_real_ms"] for t in figs)
        margin = 100 * (means[-1] - means[0]) / means[0]
        spreads = [figs[t].get(f"{ld}.e2e_real_spread_pct") for t in figs]
        spread = None if None in spreads else max(spreads)
        within = spread is not None and margin < spread
        out[ld] = {"real": real_w, "dooly": sim_w, "agree": real_w == sim_w, "real_margin_pct": margin,
                   "real_spread_pct": spread, "within_noise": within}
        noise = "no repeat run" if spread is None else f"real-vs-real spread {spread:.1f}%" + (
            ": within noise" if within else "")
        print(f"  {ld} load: real vLLM faster at TP={real_w} by {margin:.1f}% ({noise}), Dooly says TP={sim_w} "
              f"({'agrees' if real_w == sim_w else 'DISAGREES'}); mean E2E real / sim: " + ", ".join(
                  f"TP={t} {figs[t][f'{ld}.e2e_mean_real_ms']:.0f} / {figs[t][f'{ld}.e2e_mean_sim_ms']:.0f} ms"
                  for t in figs))
    return out


def saved_rates(name: str, args) -> tuple | None:
    """The low and high rates a saved serving run of this model was given (--real-from, or
    --raw with --resume): a replay serves the saved workloads, whatever capacity the
    simulator predicts now. Each saved workload is the unit-rate one with its arrivals
    divided by the rate."""
    src = args.real_from or (args.raw if args.resume else None)
    saved = json.loads(Path(src).read_text()) if src and Path(src).exists() else {}
    loads = (saved.get(f"{name}@tp1:serve") or {}).get("job", {}).get("workloads") or []
    unit = workload(args.trace, args.num_requests, 1.0, 0)[-1].arrival_s
    last = [w["requests"][-1]["arrival_s"] for w in loads if w.get("requests")]
    if len(last) != 2 or min(last) <= 0:
        return None
    return tuple(float(f"{unit / t:.3g}") for t in last)


def serve_job(loads: dict, args) -> dict:
    """The real serving job: the workloads, and --kv-gib / --max-model-len only when not the
    defaults, so that runs saved before those options existed still replay."""
    job = {"mode": "serve", "budget": SERVING["budget"], "max_num_seqs": SERVING["max_num_seqs"],
           "workloads": [{"name": k, "requests": as_jobs(v)} for k, v in loads.items()]}
    job.update({k: v for k, v in (("kv_gib", args.kv_gib), ("max_model_len", args.max_model_len))
                if v != DEFAULTS[k]})
    return job


def serve(name: str, tp: int, args, result: dict) -> None:
    pred1 = tp_predictor(name, args.db, 1)
    rates = args.rates.get(name) or saved_rates(name, args)
    if rates is None:   # 0.4x and 1.3x the TP=1 capacity the simulator predicts
        cap = capacity(workload(args.trace, args.num_requests, 1.0, 0), pred1)
        rates = (float(f"{0.4 * cap:.3g}"), float(f"{1.3 * cap:.3g}"))
    loads = {ld: workload(args.trace, args.num_requests, r, 0) for ld, r in zip(("low", "high"), rates)}
    job = serve_job(loads, args)
    from dooly.parallel import kv_cache_blocks
    figs = {}
    for t in (1, tp):
        runs = real(name, t, job, args)
        # after the runs, which may have saved the host's drift; after the rates: they name the workload
        p = pred1 if t == 1 else tp_predictor(name, args.db, tp)
        recheck(p, args.db, f"{name}.tp{t}", args.recheck_host, str(MODELS[name]))
        st = runs[0]["settings"]
        # the KV capacity of t devices: Dooly's blocks from the (shard) units, which the
        # simulation uses, against vLLM's
        blocks = kv_cache_blocks(p.units, p.counts, args.kv_gib, st["block_size"])
        figs[t] = score_serve(loads, runs, p, blocks)
        figs[t]["kv_blocks_real"], figs[t]["kv_blocks_dooly"] = st.get("num_gpu_blocks"), blocks
    print(f"[{name}] serving at {rates[0]:g} and {rates[1]:g} req/s ({args.num_requests} requests):")
    for t, f in figs.items():
        print(f"  TP={t}: KV blocks vLLM {f['kv_blocks_real']}, Dooly {f['kv_blocks_dooly']} "
              f"({args.kv_gib:g} GiB per rank); " + "; ".join(f"{ld} TTFT p50 real {f[f'{ld}.ttft_p50_real_ms']:.0f} sim "
                                      f"{f[f'{ld}.ttft_p50_sim_ms']:.0f} ms, TPOT p50 real "
                                      f"{f[f'{ld}.tpot_p50_real_ms']:.1f} sim {f[f'{ld}.tpot_p50_sim_ms']:.1f} ms "
                                      f"(p50/p90/p99 mean error TTFT {f[f'{ld}.ttft_err_pct']:.1f}%, "
                                      f"TPOT {f[f'{ld}.tpot_err_pct']:.1f}%; real-vs-real "
                                      f"{f[f'{ld}.ttft_noise_pct'] or 0:.1f} / {f[f'{ld}.tpot_noise_pct'] or 0:.1f}%; steps real {f[f'{ld}.steps_real']} sim "
                                      f"{f[f'{ld}.steps_sim']}, tokens real {f[f'{ld}.tokens_real']} sim "
                                      f"{f[f'{ld}.tokens_sim']})"
                                      for ld in loads))
        result.update({f"{name}.tp{t}.serve.{k}": v for k, v in f.items()})
    for ld, w in winner(figs, loads).items():
        result.update({f"{name}.winner.{ld}.{k}": v for k, v in w.items()})


def parse_args(argv):
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--db", default=str(ROOT / "out" / "accuracy_tp.db"))
    ap.add_argument("--quick", action="store_true", help="small sweep limits, fewer batches, 20 requests")
    ap.add_argument("--real-runs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1, help="passes over the batches within one real run")
    ap.add_argument("--kv-gib", type=float, default=DEFAULTS["kv_gib"],
                    help="KV cache of each rank in GiB for the serving runs (fractions too: a small one "
                         "makes the KV capacity bind, where N ranks hold N times the blocks of one)")
    ap.add_argument("--max-model-len", type=int, default=DEFAULTS["max_model_len"],
                    help="the serving engines' max_model_len (vLLM wants the KV cache to hold one)")
    ap.add_argument("--no-serve", action="store_true", help="per-batch figures only")
    ap.add_argument("--serve-only", action="store_true", help="serving and the winner only, no batches")
    ap.add_argument("--rates", default="", help="per model low:high req/s, e.g. qwen0.5b=0.2:0.8")
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--num-requests", type=int, default=40)
    ap.add_argument("--real-from", help="replay saved real runs (no vLLM run)")
    ap.add_argument("--raw", help="where real runs are saved (default: beside --json)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--recheck-host", action="store_true",
                    help="scale the predictions by the host's drift since the sweeps, measured now")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    args.names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.names or any(n not in MODELS for n in args.names):
        ap.error(f"--models: choose from {', '.join(MODELS)}")
    from dooly.config import load_config
    from dooly.errors import DoolyInputError
    from dooly.parallel import check_tp
    for n in args.names:
        try:
            check_tp(load_config(MODELS[n]), args.tp)
        except DoolyInputError as err:
            ap.error(f"{n}: {err}")
    if not args.kv_gib > 0 or args.max_model_len < 1:
        bad_input(f"--kv-gib {args.kv_gib:g}, --max-model-len {args.max_model_len}: both must be positive")
    if args.serve_only and args.no_serve:
        bad_input("--serve-only and --no-serve: choose one")
    args.rates = {k.strip(): tuple(float(x) for x in v.split(":")) for k, _, v in
                  (p.partition("=") for p in args.rates.split(",") if p.strip())}
    if args.quick:
        args.num_requests = min(args.num_requests, 20)
    args.raw = args.raw or str(Path(args.json_path or ROOT / "out" / "accuracy_tp.json").with_suffix(".raw.json"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    limits = LIMITS["quick" if args.quick else "full"]
    prepare_db(args.names, args.db, limits, replay=bool(args.real_from))
    prepare_tp(args.names, args.db, limits, args.tp, replay=bool(args.real_from))
    its = items(args.quick)
    result: dict = {"models": ",".join(args.names), "tp": args.tp, "protocol": "leave-one-model-out"}
    for n in args.names:
        if args.serve_only:
            serve(n, args.tp, args, result)
            continue
        job = {"mode": "steps", "budget": BUDGET, "max_num_seqs": MAX_SEQS, "items": its, "repeats": args.repeats}
        figs = {t: score_steps(real(n, t, job, args), tp_predictor(n, args.db, t, args.recheck_host, result))
                for t in (1, args.tp)}
        print_steps(n, args.tp, figs)
        for t, f in figs.items():
            result.update({f"{n}.tp{t}.{k}": v for k, v in f.items()})
        if not args.no_serve:
            serve(n, args.tp, args, result)
    for t in (1, args.tp):
        for s in SETS:
            vals = [result[f"{n}.tp{t}.mape_{s}_pct"] for n in args.names if f"{n}.tp{t}.mape_{s}_pct" in result]
            result[f"tp{t}.mape_{s}_pct"] = max(vals) if vals else None
    if not args.serve_only:
        print("\nworst model per set: " + "; ".join(
            f"TP={t}: " + ", ".join(f"{s} {result[f'tp{t}.mape_{s}_pct']:.1f}%" for s in SETS
                                    if result[f"tp{t}.mape_{s}_pct"] is not None) for t in (1, args.tp))
            + " (first target at TP=2: at most 8% per set)")
    flatjson.write(args.json_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
