"""End-to-end serving accuracy against real vLLM (CPU), leave one model out: TTFT/TPOT
percentiles of Poisson workloads replayed into the real engine vs DoolySim on the same
requests, each model simulated with the engine-step model fitted on the OTHER models only.

    python bench/accuracy_e2e.py --db NEW.db --json out/e2e.json        # builds what it needs
        [--models smollm2,qwen0.5b,qwen3-0.6b,llama3.2-1b] [--loads low,high]
        [--rates smollm2=1:4,qwen0.5b=0.6:2] [--trace fixtures/traces/splitwise_conv.csv]
        [--num-requests 100] [--real-runs 2] [--real-from PATH] [--resume] [--quick] [--pool MODELS]

Workload: the first --num-requests rows of the Splitwise conversation trace (lengths only;
prompts clipped to 32-256 tokens, outputs to 8-32), Poisson arrivals at each model's "low"
rate (the real engine keeps up) and "high" rate (queues build up): by default 0.4x and
1.3x the capacity the simulator predicts for the model (the workload's requests all
arriving at once), unless --rates names them; the rates are saved with the real runs. The real side
(dooly.engines.vllm_serve) is one engine per run serving every load in turn; it runs
--real-runs times, and the real-vs-real difference of each percentile is printed beside
the sim-vs-real error. The DB is built as bench/accuracy_batch.py builds it. Errors are
|sim - real| / real per percentile (averaged over the real runs); MAPE is the mean over
p50/p90/p99. --json: flat `ttft_mape_pct` and `tpot_mape_pct` (the worst over models and
loads), `<load>.ttft_mape_pct`, `<model>.<load>.*` and `noise_*` keys.
The real engine serves inside the sweep's limits (its token budget and sequence cap never
above the swept tokens and batch: 1024/64, --quick 512/32). Error bands (--draws N, as
`dooly simulate --intervals`): the simulation is run again N times with step times drawn
within the predictor's stated errors, and each real percentile is checked against its
90% band; `band_coverage_pct` is the share of TTFT/TPOT p50/p90/p99 inside their bands.
Beside each load it prints the scheduler alone (`sched_*` keys): the workload simulated
with step times fitted on the real run's own steps (in-sample by design), so a reader can
tell the scheduler's error from the step times'; and the real step time over the
predicted both as the median step and summed over the steps (TTFT follows the long ones).
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
from accuracy_batch import (DEFAULT_MODELS, LIMITS, MODELS, POOL_HELP, ROOT, bracket_drift,  # noqa: E402
                            model_out_predictor, pool_names, prepare_db, protocol, recheck, save_raw,
                            saved_drift)

DEFAULT_TRACE = ROOT / "fixtures" / "traces" / "splitwise_conv.csv"
# the two loads, as a fraction of the serving capacity the simulator predicts for the model
# (its requests all arriving at once): "low" leaves the real engine idle between requests
# even if the prediction is 2x off, "high" builds queues
LOADS = {"low": 0.4, "high": 1.3}
PCTS = ("p50", "p90", "p99")
SERVING = {"budget": 2048, "max_num_seqs": 64}


def serving(limits: tuple[int, int, int]) -> dict:
    """The real engine's settings inside the sweep's (tokens, batch, context) limits: no
    step holds more tokens or sequences than the units were swept at."""
    tok, batch, _ = limits
    return {"budget": min(SERVING["budget"], tok), "max_num_seqs": min(SERVING["max_num_seqs"], batch)}


def workload(trace: str, n: int, rate: float, seed: int, pclip=(32, 256), oclip=(8, 32)):
    from dooly.sim import Request, WorkloadSpec, build_workload
    spec = WorkloadSpec(source=str(trace), rate=rate, arrival="poisson", seed=seed, num_requests=n)
    clip = lambda v, lo_hi: int(min(max(v, lo_hi[0]), lo_hi[1]))  # noqa: E731
    return [Request(r.rid, r.arrival_s, clip(r.prompt_len, pclip), clip(r.output_len, oclip))
            for r in build_workload(spec)]


def as_jobs(reqs) -> list[dict]:
    return [{"rid": r.rid, "arrival_s": r.arrival_s, "prompt_len": r.prompt_len, "output_len": r.output_len}
            for r in reqs]


def real_latencies(reqs, token_times: dict) -> dict:
    """ms per request from token timestamps (s): TTFT from the scheduled arrival, TPOT."""
    ttft, tpot = [], []
    for r in reqs:
        t = token_times[str(r.rid)]
        if len(t) != r.output_len:
            raise RuntimeError(f"request {r.rid}: {len(t)} tokens seen, expected {r.output_len}")
        ttft.append((t[0] - r.arrival_s) * 1e3)
        if r.output_len > 1:
            tpot.append((t[-1] - t[0]) * 1e3 / (r.output_len - 1))
    return {"ttft": ttft, "tpot": tpot}


def sim_latencies(reqs, pred, settings: dict) -> tuple[dict, object]:
    from dooly.sim import request_metrics, simulate
    res = simulate(reqs, pred.step_ms, sched_config(settings))
    per = [request_metrics(r) for r in res.requests]
    return {"ttft": [m.ttft_ms for m in per], "tpot": [m.tpot_ms for m in per if m.output_len > 1]}, res


def pct(values) -> dict:
    from dooly.sim.metrics import stats
    return stats(values)


def err_pct(sim: float, real: float) -> float:
    return 100.0 * abs(sim - real) / real


def saved_rates(args, name) -> tuple | None:
    """The rates a saved real run of this model served (--real-from, or --raw with --resume)."""
    path = args.real_from or (args.raw if args.resume else None)
    if not path or not Path(path).exists():
        return None
    r = json.loads(Path(path).read_text()).get(name, {}).get("rates")
    return tuple(r) if r else None


def serve_real(name, loads, rates, args, log=print) -> dict:
    """{"runs": [{"settings", "results": [per load]}]}, saved to args.raw after each run."""
    from dooly.engines.vllm_probe import run_child
    key = {"loads": {k: as_jobs(v) for k, v in loads.items()}, "serving": args.serving}
    if args.real_from:
        saved = json.loads(Path(args.real_from).read_text()).get(name)
        if saved is None or saved["key"] != key:
            raise SystemExit(f"--real-from {args.real_from}: no saved runs of {name} with this workload")
        saved_drift(name, saved, args)
        return saved
    raw = Path(args.raw)
    allsaved = json.loads(raw.read_text()) if args.resume and raw.exists() else {}
    entry = allsaved.get(name, {}) if allsaved.get(name, {}).get("key") == key else {"key": key, "runs": []}
    entry["rates"], runs = list(rates), entry["runs"]
    bracket_drift(entry, name, args, lambda: save_raw(raw, name, entry), before=len(runs) < args.real_runs)
    while len(runs) < args.real_runs:
        t0 = time.perf_counter()
        res = run_child({"mode": "serve", "config": str(MODELS[name]), **args.serving,
                         "workloads": [{"name": k, "requests": v} for k, v in key["loads"].items()]})
        runs.append(dict(res, started=time.strftime("%H:%M:%S")))
        save_raw(raw, name, entry)
        log(f"[{name}] real run {len(runs)}: " + ", ".join(f"{r['name']} {r['wall_s']:.0f} s" for r in res["results"])
            + f" ({time.perf_counter() - t0:.0f} s with start-up)")
    bracket_drift(entry, name, args, lambda: save_raw(raw, name, entry))
    saved_drift(name, entry, args)
    return {"key": key, "runs": runs[:args.real_runs]}


def sched_config(settings: dict):
    from dooly.sim import SchedulerConfig
    return SchedulerConfig(max_num_batched_tokens=settings["max_num_batched_tokens"],
                           max_num_seqs=settings["max_num_seqs"], block_size=settings["block_size"],
                           num_blocks=settings.get("num_gpu_blocks"),
                           long_prefill_token_threshold=settings.get("long_prefill_token_threshold", 0),
                           max_model_len=settings.get("max_model_len", 4096))


def band_coverage(reqs, pred, settings: dict, fig: dict, unc, draws: int, seed: int) -> dict:
    """Each real percentile (the mean over the real runs) against the 90% band of `draws`
    simulations with step times drawn within the predictor's stated errors."""
    from dooly.sim.intervals import run_draws, summary_bands
    bands = summary_bands(run_draws(reqs, pred.predict, unc, sched_config(settings), draws, seed))
    out, inside, width = {}, [], []
    for metric in ("ttft", "tpot"):
        for p in PCTS:
            lo, hi = bands[f"{metric}_ms"][p]["lo"], bands[f"{metric}_ms"][p]["hi"]
            real = fig[f"{metric}_{p}_real_ms"]
            out[f"{metric}_{p}_band_lo_ms"], out[f"{metric}_{p}_band_hi_ms"] = lo, hi
            inside.append(lo <= real <= hi)
            out[f"{metric}_{p}_in_band"] = inside[-1]
            width.append(200.0 * (hi - lo) / (hi + lo) if hi + lo > 0 else 0.0)
    # a band so wide it always covers says nothing: its width beside the coverage
    out["band_coverage_pct"] = 100.0 * sum(inside) / len(inside)
    out["band_width_pct"] = statistics.fmean(width)
    out["band_step_error_pct"], out["band_step_error_source"] = unc.step_pct, unc.step_source
    out.update(unc.kind_fields("band_step_error"))
    return out


def _step_features(batch) -> list[float]:
    # per step: tokens, sequences, prefill chunks, context read and attention work
    return [1.0, sum(b[0] for b in batch), len(batch), sum(1 for b in batch if b[0] > 1),
            sum(b[0] + b[1] for b in batch), sum(b[0] * (b[0] + b[1]) for b in batch) / 1e3]


def scheduler_check(reqs, real_runs: list[dict]) -> dict:
    """The simulator's scheduler alone: the workload simulated with step times fitted on
    the real run's own steps (a least-squares line in `_step_features`; in-sample by
    design). What is left against the real
    percentiles is the scheduler's error, not the step times'."""
    import numpy as np
    errs: dict[str, list[float]] = {"ttft": [], "tpot": []}
    for run in real_runs:
        coef = np.linalg.lstsq(np.array([_step_features(s["batch"]) for s in run["steps"]]),
                               np.array([s["ms"] for s in run["steps"]]), rcond=None)[0]
        sim, res = sim_latencies(reqs, Oracle(coef), run["settings"])
        real = real_latencies(reqs, run["token_times"])
        for metric in errs:
            s, r = pct(sim[metric]), pct(real[metric])
            errs[metric].append(statistics.fmean(err_pct(s[p], r[p]) for p in PCTS))
    return {"sched_ttft_mape_pct": statistics.fmean(errs["ttft"]),
            "sched_tpot_mape_pct": statistics.fmean(errs["tpot"]), "sched_steps": res.num_steps}


class Oracle:
    """Step times from a fitted line, in the shape sim_latencies asks of a predictor."""
    def __init__(self, coef):
        self.coef = coef

    def step_ms(self, batch) -> float:
        return max(float(sum(c * f for c, f in zip(self.coef, _step_features(batch)))), 0.1)


def spread_pct(runs: list[dict], p: str) -> float | None:
    """Real vs real at one percentile: the largest difference between any two runs' values
    (`err_pct` of one against the other); None with one run."""
    if len(runs) < 2:
        return None
    return max(err_pct(a[p], b[p]) for i, a in enumerate(runs) for b in runs[i + 1:])


def score_load(reqs, real_runs: list[dict], pred) -> dict:
    """One model at one load: sim vs each real run, and real vs real."""
    settings = real_runs[0]["settings"]
    sim, sres = sim_latencies(reqs, pred, settings)
    reals = [real_latencies(reqs, r["token_times"]) for r in real_runs]
    fig = {"sim_steps": sres.num_steps, "real_steps": statistics.fmean(len(r["steps"]) for r in real_runs)}
    for metric in ("ttft", "tpot"):
        s = pct(sim[metric])
        rs = [pct(r[metric]) for r in reals]
        for p in PCTS:
            fig[f"{metric}_{p}_real_ms"] = statistics.fmean(r[p] for r in rs)
            fig[f"{metric}_{p}_sim_ms"] = s[p]
            fig[f"{metric}_{p}_err_pct"] = statistics.fmean(err_pct(s[p], r[p]) for r in rs)
            fig[f"{metric}_{p}_noise_pct"] = spread_pct(rs, p)
        fig[f"{metric}_mape_pct"] = statistics.fmean(fig[f"{metric}_{p}_err_pct"] for p in PCTS)
        noise = [fig[f"{metric}_{p}_noise_pct"] for p in PCTS]
        fig[f"noise_{metric}_mape_pct"] = statistics.fmean(noise) if None not in noise else None
    steps = [s for r in real_runs for s in r["steps"]]
    pred_ms = [pred.step_ms(s["batch"]) for s in steps]
    fig["step_median_real_over_pred"] = statistics.median(s["ms"] / p for s, p in zip(steps, pred_ms))
    # TTFT follows the long steps: the real time over the predicted, summed over the steps
    fig["step_time_real_over_pred"] = sum(s["ms"] for s in steps) / sum(pred_ms)
    fig.update(scheduler_check(reqs, real_runs))
    # how much of their time the real steps' threads had a CPU (1: no other process ran)
    threads = max(real_runs[0]["settings"].get("torch_threads") or 1, 1)
    shares = [s["cpu_ms"] / (threads * s["ms"]) for s in steps if s.get("cpu_ms") is not None and s["ms"] > 0]
    fig["cpu_share_median"] = statistics.median(shares) if shares else None
    return fig


def print_load(name, load, rate, fig) -> None:
    share = fig.get("cpu_share_median")
    print(f"[{name}] {load} load ({rate:g} req/s): {fig['real_steps']:.0f} real steps, {fig['sim_steps']} simulated; "
          f"real/pred step median {fig['step_median_real_over_pred']:.2f}, summed time "
          f"{fig['step_time_real_over_pred']:.2f}; real steps had a CPU "
          f"{'-' if share is None else f'{100 * share:.0f}%'} of their threads' time (median)")
    print(f"  {'':5s} {'pct':4s} {'real ms':>10s} {'sim ms':>10s} {'|err| %':>8s} {'real-vs-real %':>15s}")
    for metric in ("ttft", "tpot"):
        for p in PCTS:
            n = fig[f"{metric}_{p}_noise_pct"]
            print(f"  {metric.upper():5s} {p:4s} {fig[f'{metric}_{p}_real_ms']:10.1f} {fig[f'{metric}_{p}_sim_ms']:10.1f} "
                  f"{fig[f'{metric}_{p}_err_pct']:8.1f} {'-' if n is None else f'{n:.1f}':>15s}")
    print(f"  => TTFT MAPE {fig['ttft_mape_pct']:.1f}% (noise {fig['noise_ttft_mape_pct'] or 0:.1f}%), "
          f"TPOT MAPE {fig['tpot_mape_pct']:.1f}% (noise {fig['noise_tpot_mape_pct'] or 0:.1f}%)")
    print(f"  => scheduler alone (step times fitted on the real run's own steps, in-sample): TTFT "
          f"{fig['sched_ttft_mape_pct']:.1f}%, TPOT {fig['sched_tpot_mape_pct']:.1f}%, {fig['sched_steps']} steps")
    if "band_coverage_pct" in fig:
        print(f"  => {fig['band_coverage_pct']:.0f}% of the real percentiles inside their 90% band (mean width "
              f"{fig['band_width_pct']:.0f}% of its middle; step error "
              f"{fig['band_step_error_pct']:.1f}%" + "".join(
                  f", {k} {fig[f'band_step_error_{k}_pct']:.1f}%" for k in ("prefill", "decode", "mixed")
                  if f"band_step_error_{k}_pct" in fig)
              + f", {fig['band_step_error_source']}): " + ", ".join(
                  f"{m.upper()} {p} [{fig[f'{m}_{p}_band_lo_ms']:.0f}-{fig[f'{m}_{p}_band_hi_ms']:.0f}]"
                  + ("" if fig[f"{m}_{p}_in_band"] else " out") for m in ("ttft", "tpot") for p in PCTS))


def capacity(reqs, pred, serve: dict | None = None) -> float:
    """Requests per second the simulator serves when every request arrives at once, under
    `serve` (default SERVING)."""
    from dooly.sim import Request
    serve = serve or SERVING
    burst = [Request(r.rid, 0.0, r.prompt_len, r.output_len) for r in reqs]
    settings = {"max_num_batched_tokens": serve["budget"], "max_num_seqs": serve["max_num_seqs"],
                "block_size": pred.env.block_size, "num_gpu_blocks": None}
    _, res = sim_latencies(burst, pred, settings)
    return len(reqs) / max(r.finish_s for r in res.requests)


def parse_rates(text: str | None, names) -> dict:
    """Explicit low:high req/s per model (e.g. smollm2=0.05:0.2); the others: None (auto)."""
    rates: dict = {}
    for part in (text or "").split(","):
        if part.strip():
            k, _, v = part.partition("=")
            lo, _, hi = v.partition(":")
            rates[k.strip()] = (float(lo), float(hi or lo))
    return {n: rates.get(n) for n in names}


def score_model(n: str, loads: list[str], rates: dict, args) -> dict:
    """One model: its loads (explicit, saved, or from the simulated capacity), its real
    runs, and the figures of its model-out simulation at each load."""
    pred = model_out_predictor(n, args.db)
    pred.set_serving(args.serving["budget"], args.serving["max_num_seqs"])   # CUDA-graph sizes, on a GPU host
    if rates[n] is None:
        rates[n] = saved_rates(args, n)
    if rates[n] is None:
        cap = capacity(workload(args.trace, args.num_requests, 1.0, args.seed), pred, args.serving)
        rates[n] = tuple(float(f"{LOADS[ld] * cap:.3g}") for ld in ("low", "high"))
    rate = {ld: rates[n][("low", "high").index(ld)] for ld in loads}
    wl = {ld: workload(args.trace, args.num_requests, rate[ld], args.seed) for ld in loads}
    print(f"[{n}] engine-step model: {pred.step_model_source}; loads " + ", ".join(
        f"{ld} {rate[ld]:g} req/s (last arrival {wl[ld][-1].arrival_s:.0f} s)" for ld in loads), flush=True)
    saved = serve_real(n, wl, rates[n], args)
    # after the rates (they name the workload) and the real runs (re-timed around them and
    # saved with them; runs saved without it are re-timed now)
    drift = recheck(pred, args.db, n, args.recheck_host, str(MODELS[n]))
    out = {f"{n}.step_model_source": pred.step_model_source, **drift}
    unc = uncertainty(n, pred, args.db) if args.draws else None
    for i, ld in enumerate(loads):
        runs = [dict(r["results"][i], settings=r["settings"]) for r in saved["runs"]]
        fig = score_load(wl[ld], runs, pred)
        if unc is not None:
            fig.update(band_coverage(wl[ld], pred, runs[0]["settings"], fig, unc, args.draws, args.seed))
        print_load(n, ld, rate[ld], fig)
        out.update({f"{n}.{ld}.{k}": v for k, v in fig.items()}, **{f"{n}.{ld}.rate": rate[ld]})
    return out


def uncertainty(name: str, pred, db: str):
    """What the model-out predictor says it may be off by (`dooly.uncertainty`)."""
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.uncertainty import predictor_uncertainty
    with Store.open(db, create=False) as store:
        return predictor_uncertainty(pred, store, load_config(MODELS[name]).hash)


def worst(result: dict, names, loads) -> None:
    """The flat keys: per load, and over loads, the worst model (the lowest band coverage);
    beside it the share of every real percentile inside its band, per load and over loads
    (`band_coverage_all_pct`: how often a band covers, the issue's "80% of the time")."""
    cov = [result[f"{n}.{ld}.band_coverage_pct"] for n in names for ld in loads
           if f"{n}.{ld}.band_coverage_pct" in result]
    if cov:
        result["band_coverage_pct"] = min(cov)
        inside = {ld: [result[k] for n in names for m in ("ttft", "tpot") for p in PCTS
                       if (k := f"{n}.{ld}.{m}_{p}_in_band") in result] for ld in loads}
        every = [v for vs in inside.values() for v in vs]
        for key, vs in [(f"{ld}.band_coverage_all_pct", inside[ld]) for ld in loads] \
                + [("band_coverage_all_pct", every)]:
            if vs:
                result[key] = 100.0 * sum(vs) / len(vs)
        result["band_width_pct"] = statistics.fmean(result[f"{n}.{ld}.band_width_pct"] for n in names
                                                    for ld in loads if f"{n}.{ld}.band_width_pct" in result)
    for key in ("ttft_mape_pct", "tpot_mape_pct", "noise_ttft_mape_pct", "noise_tpot_mape_pct"):
        for ld in loads:
            vals = [result[f"{n}.{ld}.{key}"] for n in names if result.get(f"{n}.{ld}.{key}") is not None]
            result[f"{ld}.{key}"] = max(vals) if vals else None
        vals = [result[f"{ld}.{key}"] for ld in loads if result[f"{ld}.{key}"] is not None]
        result[key] = max(vals) if vals else None


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--db", default=str(ROOT / "out" / "accuracy.db"))
    ap.add_argument("--loads", help="which of each model's two rates to serve (default low,high; --quick low)")
    ap.add_argument("--rates", help="per model low:high req/s, e.g. smollm2=0.05:0.2 (default: "
                    "0.4x and 1.3x the capacity the simulator predicts)")
    ap.add_argument("--trace", default=str(DEFAULT_TRACE), help="trace CSV for the request lengths")
    ap.add_argument("--num-requests", type=int, help="requests per load (default 60, --quick 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real-runs", type=int, default=2)
    ap.add_argument("--real-from", help="replay the real runs saved in this raw file (no vLLM run)")
    ap.add_argument("--raw", help="where real runs are saved (default: beside --json)")
    ap.add_argument("--resume", action="store_true", help="reuse complete real runs found in --raw")
    ap.add_argument("--recheck-host", action="store_true",
                    help="scale each model's predictions by the host's drift since the sweep, measured now")
    ap.add_argument("--quick", action="store_true", help="smoke run: small sweep, 20 requests, low load")
    ap.add_argument("--draws", type=int, default=40, help="simulations with drawn errors for the 90%% "
                    "bands (0: no bands)")
    ap.add_argument("--pool", metavar="MODELS", help=POOL_HELP)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    args.pool = pool_names(args.pool, ap.error)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names or any(n not in MODELS for n in names):
        ap.error(f"--models: choose from {', '.join(MODELS)}")
    loads = [x.strip() for x in (args.loads or ("low" if args.quick else "low,high")).split(",") if x.strip()]
    args.num_requests = args.num_requests or (20 if args.quick else 60)
    if not loads or any(x not in ("low", "high") for x in loads) or args.real_runs < 1:
        ap.error("--loads: low and/or high; --real-runs >= 1")
    if args.num_requests < 1 or args.draws < 0:
        ap.error("--num-requests must be at least 1 and --draws at least 0")
    limits = LIMITS["quick" if args.quick else "full"]
    args.serving = serving(limits)
    if not Path(args.trace).is_file():
        ap.error(f"--trace: no such file {args.trace}")
    args.raw = args.raw or str(Path(args.json_path or ROOT / "out" / "accuracy_e2e.json").with_suffix(".raw.json"))
    rates = parse_rates(args.rates, names)
    prepare_db(names, args.db, limits, replay=bool(args.real_from), pool=args.pool)
    result: dict = {"models": names, "protocol": protocol(args.pool), "real_runs": args.real_runs}
    for n in names:
        result.update(score_model(n, loads, rates, args))
    worst(result, names, loads)
    print(f"\n{result['protocol']}, worst model and load: TTFT {result['ttft_mape_pct']:.1f}% (real-vs-real "
          f"{result['noise_ttft_mape_pct'] or 0:.1f}%), TPOT {result['tpot_mape_pct']:.1f}% (real-vs-real "
          f"{result['noise_tpot_mape_pct'] or 0:.1f}%); paper: TTFT 5%, TPOT 8%")
    if "band_coverage_pct" in result:
        print(f"90% bands: {result['band_coverage_all_pct']:.0f}% of all real percentiles inside them ("
              + ", ".join(f"{ld} load {result[f'{ld}.band_coverage_all_pct']:.0f}%" for ld in loads
                          if f"{ld}.band_coverage_all_pct" in result)
              + f"; target >= 80%), at worst {result['band_coverage_pct']:.0f}% of one model's at one load; "
              f"mean band width {result['band_width_pct']:.0f}%")
    flatjson.write(args.json_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
