"""Winner inversion: does DoolySim pick the same better serving configuration as real vLLM
(CPU) at a low and a high load, for a model it predicts with the OTHER models' engine steps?

    python bench/winner_inversion.py --db out/acc.db [--model smollm2]
        [--configs 2048x64,64x64] [--rates 0.4x,1.3x] [--requests 60] [--metric mean_e2e]
        [--real-from PATH] [--json PATH]
    python bench/winner_inversion.py --db out/acc.db --sim-only --configs 2048x64,512x64,64x64 \
        --rates 0.2x,0.5x,1x,2x      # the simulator alone: choose a pair before any real run

Each configuration (max_num_batched_tokens x max_num_seqs) is one real engine serving every
load in turn (dooly.engines.vllm_serve); the workload is accuracy_e2e's (Splitwise lengths,
Poisson arrivals). The metric is a percentile or the mean of ttft, tpot or e2e (ms, lower
wins). The DB is built as bench/accuracy_batch.py builds it. --json: flat figures
("rate1.same_winner", "rate4.b64s64.real_ms", "same_winner_all_loads", ...).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runs from a checkout, no install
sys.path.insert(0, str(Path(__file__).resolve().parent))
import flatjson  # noqa: E402
from dooly.cli import OneLineParser  # noqa: E402
from accuracy_batch import LIMITS, MODELS, ROOT, model_out_predictor, prepare_db  # noqa: E402
from accuracy_e2e import (DEFAULT_TRACE, as_jobs, capacity, pct, real_latencies, sim_latencies,  # noqa: E402
                          workload)


def metric_value(lat: dict, metric: str) -> float:
    stat, name = metric.split("_", 1)   # p90_ttft, mean_e2e
    return pct(lat[name])[stat]


def with_e2e(reqs, lat: dict, token_end) -> dict:
    """Adds per-request end-to-end latency (ms) given each request's last-token time (s)."""
    return dict(lat, e2e=[(token_end(r) - r.arrival_s) * 1e3 for r in reqs])


def real_table(name, confs, wls, args) -> dict:
    """(budget, seqs, load) -> real latencies; one engine per configuration."""
    from dooly.engines.vllm_probe import run_child
    saved = json.loads(Path(args.real_from).read_text()) if args.real_from else {}
    jobs = [[w, as_jobs(r)] for w, r in wls]
    if args.real_from and saved.get("_workloads") != jobs:
        raise SystemExit(f"--real-from {args.real_from}: saved runs served other workloads (rates, requests)")
    out, raw = {}, {"_workloads": jobs}
    for b, s in confs:
        tag = f"b{b}s{s}"
        if args.real_from:
            res = saved[tag]
        else:
            t0 = time.perf_counter()
            res = run_child({"mode": "serve", "config": str(MODELS[name]), "budget": b, "max_num_seqs": s,
                             "workloads": [{"name": w, "requests": as_jobs(r)} for w, r in wls]})
            print(f"[winner] {tag}: " + ", ".join(f"{r['name']} {r['wall_s']:.0f} s" for r in res["results"])
                  + f" ({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
        raw[tag] = res
        for (w, reqs), r in zip(wls, res["results"]):
            tt = r["token_times"]
            out[(b, s, w)] = (with_e2e(reqs, real_latencies(reqs, tt), lambda q: tt[str(q.rid)][-1]), res["settings"])
    if args.json_path and not args.real_from:
        Path(args.json_path).with_suffix(".raw.json").write_text(json.dumps(raw))
    return out


def sim_lat(reqs, pred, settings) -> dict:
    lat, res = sim_latencies(reqs, pred, settings)
    end = {r.rid: r.finish_s for r in res.requests}
    return with_e2e(reqs, lat, lambda q: end[q.rid])


def verdict(confs, wls, real, sim, metric) -> dict:
    """Per load: each side's winner and margin; the one place the winner is decided."""
    out: dict = {}
    winners = {"real": set(), "sim": set()}
    for w, _ in wls:
        for side, table in (("real", real), ("sim", sim)):
            vals = {c: metric_value(table[(c[0], c[1], w)], metric) for c in confs}
            best = min(confs, key=vals.get)
            ranked = sorted(vals.values())
            out[f"{w}.{side}_winner"] = f"b{best[0]}s{best[1]}"
            out[f"{w}.{side}_margin_pct"] = 100 * (ranked[1] - ranked[0]) / ranked[0] if len(ranked) > 1 else 0.0
            winners[side].add(best)
            for c in confs:
                out[f"{w}.b{c[0]}s{c[1]}.{side}_ms"] = vals[c]
        out[f"{w}.same_winner"] = out[f"{w}.real_winner"] == out[f"{w}.sim_winner"]
    out["real_inversion"] = len(winners["real"]) > 1
    out["sim_inversion"] = len(winners["sim"]) > 1
    out["same_winner_all_loads"] = all(out[f"{w}.same_winner"] for w, _ in wls)
    return out


def parse_rates(args, pred) -> list[float]:
    """req/s, each given as is or as a multiple ("0.4x") of the simulated capacity."""
    cap, rates = None, []
    for x in args.rates.split(","):
        if x.strip().endswith("x"):
            cap = cap or capacity(workload(args.trace, args.requests, 1.0, args.seed), pred)
            rates.append(float(f"{float(x.strip()[:-1]) * cap:.3g}"))
        else:
            rates.append(float(x))
    return rates


def sim_settings(pred, b: int, s: int) -> dict:
    return {"max_num_batched_tokens": b, "max_num_seqs": s, "block_size": pred.env.block_size,
            "num_gpu_blocks": None}


def simulate_all(pred, confs, wls, settings_for) -> dict:
    sim = {}
    for b, s in confs:
        pred.set_serving(b, s)   # CUDA-graph sizes, on a GPU host
        sim.update({(b, s, w): sim_lat(reqs, pred, settings_for(b, s, w)) for w, reqs in wls})
    return sim


def print_verdict(result: dict, confs, wls) -> None:
    print(f"[winner] {result['model']} (engine-step model {result['step_model_source']}), metric {result['metric']}")
    for w, _ in wls:
        print(f"  {w}: " + "  ".join(f"b{b}s{s} real {result[f'{w}.b{b}s{s}.real_ms']:.0f} / sim "
                                     f"{result[f'{w}.b{b}s{s}.sim_ms']:.0f} ms" for b, s in confs)
              + f"  -> real winner {result[f'{w}.real_winner']} ({result[f'{w}.real_margin_pct']:.1f}%), sim "
              f"{result[f'{w}.sim_winner']} ({result[f'{w}.sim_margin_pct']:.1f}%): "
              f"{'same' if result[f'{w}.same_winner'] else 'DIFFERENT'}")
    print(f"  inversion: real {result['real_inversion']}, sim {result['sim_inversion']}; "
          f"same winner at every load: {result['same_winner_all_loads']}")


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", choices=list(MODELS))
    ap.add_argument("--db", default=str(ROOT / "out" / "accuracy.db"))
    ap.add_argument("--configs", default="2048x64,64x64", help="BUDGETxSEQS,...")
    ap.add_argument("--rates", default="0.4x,1.3x", help="req/s, or multiples of the capacity the "
                    "simulator predicts (all requests at once, 2048 tokens x 64 sequences): 0.4x,1.3x")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--metric", default="mean_e2e", help="p50|p90|p99|mean _ ttft|tpot|e2e")
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", default=",".join(MODELS), help="models whose calibration steps the "
                    "engine-step model may use (the scored model's own are left out)")
    ap.add_argument("--sim-only", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small sweep limits for a fresh DB")
    ap.add_argument("--real-from", help="a .raw.json an earlier run wrote (no vLLM run)")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    confs = [(int(b), int(s)) for b, _, s in (c.partition("x") for c in args.configs.split(","))]
    stat, _, name = args.metric.partition("_")
    if stat not in ("p50", "p90", "p99", "mean") or name not in ("ttft", "tpot", "e2e") or len(confs) < 2:
        ap.error("--metric: e.g. p90_ttft or mean_e2e; --configs: at least two")
    pool = [m.strip() for m in args.pool.split(",") if m.strip()]
    if any(m not in MODELS for m in pool):
        ap.error(f"--pool: choose from {', '.join(MODELS)}")
    prepare_db(list(dict.fromkeys([args.model] + pool)), args.db, LIMITS["quick" if args.quick else "full"],
               replay=bool(args.real_from))
    pred = model_out_predictor(args.model, args.db)
    wls = [(f"rate{r:g}", workload(args.trace, args.requests, r, args.seed)) for r in parse_rates(args, pred)]
    if args.sim_only:
        sim = simulate_all(pred, confs, wls, lambda b, s, w: sim_settings(pred, b, s))
        for w, _ in wls:
            print(f"{w}: " + " | ".join(f"b{b}s{s} {metric_value(sim[(b, s, w)], args.metric):9.1f}"
                                        for b, s in confs))
        return 0
    real_full = real_table(args.model, confs, wls, args)
    sim = simulate_all(pred, confs, wls, lambda b, s, w: real_full[(b, s, w)][1])
    result = {"model": args.model, "metric": args.metric, "requests": args.requests,
              "step_model_source": pred.step_model_source,
              **verdict(confs, wls, {k: v[0] for k, v in real_full.items()}, sim, args.metric)}
    print_verdict(result, confs, wls)
    flatjson.write(args.json_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
