"""Search check: does `dooly search` rank serving configurations as real vLLM (CPU) does?
For each model, the simulated search (engine-step model fitted on the OTHER models only,
error bands from the predictor's stated errors) over max_num_batched_tokens x
max_num_seqs; then real vLLM's goodput of each candidate at the same SLOs, found in a few
rounds, each round one engine start serving a few rates inside the bracket left by the
last (a k-ary bisection with bounded real time).

    python bench/search_check.py --db out/acc.db [--models smollm2,qwen0.5b]
        [--configs 2048x64,256x64,2048x8,256x8] [--slo auto|ttft_p90=2s,tpot_p90=150ms]
        [--requests 40] [--rounds 2] [--rates-per-round 3] [--intervals 8]
        [--time-budget-s 7200] [--no-prepare] [--env KEY] [--sim-only]
        [--real-from PATH] [--resume] [--repeat] [--recheck-host] [--json PATH]

Workload: accuracy_e2e's (the Splitwise conversation trace's first --requests rows, prompts
clipped to 32-256 tokens, outputs to 8-32, Poisson arrivals), the same lengths at every
rate. --slo auto: per model, ttft_p90 three times and tpot_p90 twice the simulated values
of the first configuration at a third of its simulated capacity (stated in the output).
Prints per candidate the simulated goodput with its 90% band and the real goodput with its
bracket; per model the Spearman rank correlation of the two, and whether the real winner
is the simulated winner or tied with it within error (its simulated band overlaps the
simulated winner's). --json: flat keys (`<model>.<config>.sim_goodput_rps`,
`<model>.rank_correlation`, `<model>.same_winner`, `<model>.tied_within_error`, ...);
the real rounds are saved to `<json>.raw.json` after each engine run, with the SLOs they
are judged by (--real-from replays them by those SLOs, whatever the predictor says now).
The DB is built as bench/accuracy_batch.py builds it unless --no-prepare.
--repeat: each candidate's final bracket (the highest rate met, the lowest missed) served
again in one more engine start after its rounds: how far the SLO statistics moved, how many
verdicts flipped, and whether the real winner is settled (the runner-up missed at a rate
the winner met, and neither flipped).
--recheck-host: the simulated side scaled by the host's drift since the sweep, measured
once per model in a fresh `dooly predict --recheck-host` (bench/accuracy_batch.py's rule)
and saved with the real rounds (a replay uses the saved one).
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runs from a checkout, no install
sys.path.insert(0, str(Path(__file__).resolve().parent))
import flatjson  # noqa: E402
from dooly.cli import OneLineParser  # noqa: E402
from accuracy_batch import LIMITS, MODELS, ROOT, bench_env, prepare_db, recheck, save_raw, use_db_env  # noqa: E402
from accuracy_e2e import DEFAULT_TRACE, as_jobs, capacity, real_latencies, workload  # noqa: E402


class PredictorSource:
    """`dooly.search`'s step-time source over one predictor already loaded (in-process)."""

    def __init__(self, pred, unc, base):
        self.pred, self.unc, self._base = pred, unc, base

    def uncertainty(self, cand):
        return self.unc

    def step_fn(self, cand, draw=None, seed=0):
        from dooly.sim.intervals import DrawnStep, draw_factors
        sched = cand.scheduler(self._base)
        self.pred.set_serving(sched.max_num_batched_tokens, sched.max_num_seqs)
        return self.pred.step_ms if draw is None else DrawnStep(self.pred.predict, *draw_factors(self.unc, draw, seed))


def load_model(name: str, db: str, env_key: str | None):
    """The model-out predictor (its own calibration steps left out) and its uncertainty."""
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.predict import Predictor
    from dooly.uncertainty import predictor_uncertainty
    if env_key is None:
        env_key = bench_env().key
    own = load_config(MODELS[name]).hash
    pred = Predictor.load(str(MODELS[name]), db, "vllm", env_key=env_key, exclude=[own])
    with Store.open(db, create=False) as store:
        return pred, predictor_uncertainty(pred, store, own)


def host_drift(name, pred, args, raw: dict) -> dict:
    """--recheck-host: the drift measured now, saved beside the real rounds (the SLOs and
    brackets depend on it), so that --real-from and --resume reuse it, not a new one."""
    from dooly.profile.drift import Drift
    key = f"{name}.drift"
    known = Drift.from_json(raw[key]) if key in raw else None
    out = recheck(pred, args.db, name, args.recheck_host, str(MODELS[name]), known)
    if args.recheck_host and key not in raw and pred.drift is not None:
        raw[key] = pred.drift.to_json()
        if args.raw:
            save_raw(args.raw, key, raw[key])
    return out


def run_slos(name, reqs, pred, conf, args, raw: dict):
    """The SLOs the real rounds were judged by, saved beside them (`<model>.slos`): auto
    SLOs come from the simulation, so a replay by a changed predictor would otherwise judge
    the saved rounds by other limits (and ask for repeats of rates never served)."""
    from dooly.sim.slo import parse_slos
    key = f"{name}.slos"
    if key in raw and args.slo == "auto":
        return parse_slos(raw[key])
    if args.real_from and args.slo == "auto":
        print(f"{args.real_from}: no SLOs saved for {name} (field {key}); give --slo", file=sys.stderr)
        raise SystemExit(2)
    slos = auto_slos(reqs, pred, conf, args.slo)
    raw[key] = ",".join(f"{s.name}={s.limit_ms:.6g}ms" for s in slos)
    if args.raw:
        save_raw(args.raw, key, raw[key])
    return slos


def auto_slos(reqs, pred, conf, text: str):
    """--slo as given, or (auto) from the simulated latencies of `conf` at 1/3 capacity."""
    from dooly.sim import SchedulerConfig, simulate
    from dooly.sim.goodput import at_rate
    from dooly.sim.metrics import summarize
    from dooly.sim.slo import parse_slos
    if text != "auto":
        return parse_slos(text)
    rate = capacity(reqs, pred) / 3
    sched = SchedulerConfig(conf[0], conf[1], pred.env.block_size, max_model_len=4096)
    pred.set_serving(*conf)
    s = summarize(simulate(at_rate(reqs, rate), pred.step_ms, sched))
    ttft, tpot = 3 * s.latency["ttft_ms"]["p90"], 2 * s.latency["tpot_ms"]["p90"]
    return parse_slos(f"ttft_p90={ttft:.0f}ms,tpot_p90={tpot:.1f}ms")


def sim_search(name, pred, unc, confs, reqs, slos, args):
    from dooly.search import SearchSpec, search
    from dooly.sim import SchedulerConfig
    from dooly.sim.candidates import make_candidates
    cands = make_candidates([(str(MODELS[name]), name)], {"max_num_batched_tokens": tuple(dict.fromkeys(b for b, _ in confs)),
                                                          "max_num_seqs": tuple(dict.fromkeys(s for _, s in confs))}, {})
    cands = [c for c in cands if (c.get("max_num_batched_tokens"), c.get("max_num_seqs")) in confs]
    base = SchedulerConfig(block_size=pred.env.block_size, max_model_len=4096)
    source = PredictorSource(pred, unc, base)
    spec = SearchSpec(tuple(reqs), slos, args.rate_lo, args.rate_hi, args.probes, args.intervals,
                      band_top=len(cands), seed=args.seed, base=base)
    return search(source, cands, spec, jobs=1)


def real_values(reqs, token_times, slos) -> dict:
    from dooly.sim.slo import statistic
    import numpy as np
    lat = real_latencies(reqs, token_times)
    return {s.name: statistic(s, np.asarray(lat[s.metric], dtype=float)) for s in slos}


def serve(name, conf, unit_reqs, rates) -> list[dict]:
    """One engine start serving each rate's workload in turn: the token times of each."""
    from dooly.engines.vllm_probe import run_child
    from dooly.sim.goodput import at_rate
    loads = [{"name": f"rate{x:g}", "requests": as_jobs(at_rate(unit_reqs, x))} for x in rates]
    res = run_child({"mode": "serve", "config": str(MODELS[name]), "budget": conf[0],
                     "max_num_seqs": conf[1], "workloads": loads})
    return [x["token_times"] for x in res["results"]]


def real_goodput(name, conf, unit_reqs, slos, guess, args, raw: dict, log=print) -> dict:
    """Rounds of one engine start each, serving `rates_per_round` rates spread inside the
    bracket; the next round's bracket is the highest rate met and the lowest missed (or,
    when every rate passed or every one missed, the bracket moved up or down). With
    --repeat, the final bracket's rates are served again (`real_repeat`)."""
    from dooly.sim.goodput import at_rate
    key = f"{name}.b{conf[0]}s{conf[1]}"
    (lo, hi), passed, failed, rounds = guess, 0.0, math.inf, raw.setdefault(key, [])
    seen: dict[float, dict] = {}
    for r in range(args.rounds):
        if len(rounds) <= r and time.perf_counter() - args.t0 > args.time_budget_s:
            log(f"[search-check] {key}: time budget spent after {r} round(s)")
            break
        k = args.rates_per_round
        rates = [float(f"{lo * (hi / lo) ** ((i + 1) / (k + 1)):.4g}") for i in range(k)]
        if len(rounds) <= r:   # not saved: serve it
            if args.real_from:
                raise SystemExit(f"--real-from {args.real_from}: no round {r + 1} saved for {key}")
            t = time.perf_counter()
            rounds.append({"rates": rates, "token_times": serve(name, conf, unit_reqs, rates)})
            log(f"[search-check] {key} round {r + 1}: rates {rates} in {time.perf_counter() - t:.0f} s")
            if args.raw:
                save_raw(args.raw, key, rounds)
        for x, tt in zip(rounds[r]["rates"], rounds[r]["token_times"]):
            seen[x] = values = real_values(at_rate(unit_reqs, x), tt, slos)
            if all(s.met(values[s.name]) for s in slos):
                passed = max(passed, x)
            else:
                failed = min(failed, x)
        width = hi / lo
        lo, hi = (passed if passed > 0 else lo / width), (failed if failed < math.inf else hi * width)
    out = {"real_goodput_rps": passed, "real_fail_rps": None if failed == math.inf else failed,
           "real_rounds": min(len(rounds), args.rounds)}
    if args.repeat and out["real_rounds"]:
        out.update(real_repeat(name, conf, unit_reqs, slos, [x for x in (passed, failed) if x in seen],
                               seen, args, raw, log))
    return out


def real_repeat(name, conf, unit_reqs, slos, rates, first: dict, args, raw: dict, log=print) -> dict:
    """Real vs real: the final bracket's rates served again in one more engine start, after
    the rounds; how far each SLO statistic moved (percent of the two runs' mean) and how
    many pass/miss verdicts flipped. A goodput is only as settled as that."""
    from dooly.sim.goodput import at_rate
    if not rates:
        return {}
    key = f"{name}.b{conf[0]}s{conf[1]}"
    rkey = f"{key}.repeat"
    saved = raw.get(rkey)
    if not saved or saved["rates"] != rates:
        if args.real_from:
            raise SystemExit(f"--real-from {args.real_from}: no repeat saved for {key}")
        t = time.perf_counter()
        saved = raw[rkey] = {"rates": rates, "token_times": serve(name, conf, unit_reqs, rates)}
        log(f"[search-check] {key} repeat: rates {rates} in {time.perf_counter() - t:.0f} s")
        if args.raw:
            save_raw(args.raw, rkey, saved)
    moves, flips = [], 0
    for x, tt in zip(saved["rates"], saved["token_times"]):
        again, before = real_values(at_rate(unit_reqs, x), tt, slos), first[x]
        moves += [100 * abs(again[s.name] - before[s.name]) / ((again[s.name] + before[s.name]) / 2) for s in slos]
        flips += all(s.met(before[s.name]) for s in slos) != all(s.met(again[s.name]) for s in slos)
    return {"repeat_spread_pct": statistics.fmean(moves), "repeat_flips": flips, "repeat_rates": len(rates)}


def spearman(a: list[float], b: list[float]) -> float:
    import numpy as np
    from scipy.stats import spearmanr
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b)[0])


def check_model(name, confs, args, raw, out) -> None:
    pred, unc = load_model(name, args.db, args.env)
    out.update(host_drift(name, pred, args, raw))
    reqs = workload(args.trace, args.requests, 1.0, args.seed)
    slos = run_slos(name, reqs, pred, confs[0], args, raw)
    res = sim_search(name, pred, unc, confs, reqs, slos, args)
    print(f"[search-check] {name}: SLOs " + ", ".join(f"{s.name} <= {s.limit_ms:g} ms" for s in slos)
          + f"; step error {unc.step_pct:.1f}% ({unc.step_source}), units {unc.mean_unit_pct:.1f}%")
    sims, reals, details, served = [], [], [], []
    for r in res.ranked:
        c = (r.candidate.get("max_num_batched_tokens"), r.candidate.get("max_num_seqs"))
        tag = f"{name}.b{c[0]}s{c[1]}"
        lo, hi = r.band or (r.goodput.rate, r.goodput.rate)
        out.update({f"{tag}.sim_goodput_rps": r.goodput.rate, f"{tag}.sim_band_lo": lo, f"{tag}.sim_band_hi": hi})
        line = f"  b{c[0]}s{c[1]}: sim {r.goodput.rate:.3g} req/s [{lo:.3g}-{hi:.3g}]"
        if not args.sim_only:
            g = max(r.goodput.rate, args.rate_lo)
            real = real_goodput(name, c, reqs, slos, (min(lo, g) / 2, max(hi, g) * 2), args, raw)
            out.update({f"{tag}.{k}": v for k, v in real.items()})
            if not real["real_rounds"]:   # the time budget ran out first: no real goodput to rank
                print(line + ", not served (time budget; --resume serves it)", flush=True)
                continue
            line += f", real {real['real_goodput_rps']:.3g} req/s (misses at {real['real_fail_rps']})"
            if "repeat_spread_pct" in real:
                line += (f"; served again: SLO statistics moved {real['repeat_spread_pct']:.0f}%, "
                         f"{real['repeat_flips']} of {real['repeat_rates']} verdicts flipped")
            sims.append(r.goodput.rate)
            reals.append(real["real_goodput_rps"])
            details.append(real)
            served.append(r)
        print(line, flush=True)
    if args.sim_only or not served:
        return
    tags = [f"b{r.candidate.get('max_num_batched_tokens')}s{r.candidate.get('max_num_seqs')}" for r in served]
    out[f"{name}.served_candidates"] = len(served)
    real_best = max(range(len(reals)), key=reals.__getitem__)
    w_lo = served[0].band[0] if served[0].band else sims[0]
    rb_hi = served[real_best].band[1] if served[real_best].band else sims[real_best]
    out.update({f"{name}.rank_correlation": spearman(sims, reals), f"{name}.sim_winner": tags[0],
                f"{name}.real_winner": tags[real_best], f"{name}.same_winner": real_best == 0,
                f"{name}.tied_within_error": real_best == 0 or rb_hi >= w_lo})
    print(f"  rank correlation {out[f'{name}.rank_correlation']:.2f}; real winner {tags[real_best]}, "
          f"simulated winner {tags[0]}: " + ("same" if real_best == 0 else "tied within error"
                                             if out[f"{name}.tied_within_error"] else "DIFFERENT"))
    if args.repeat:
        out.update(real_settled(name, tags, details, real_best))


def real_settled(name, tags, details: list[dict], best: int) -> dict:
    """Whether the real ranking's top is settled: the runner-up missed at a rate the winner
    met, and no verdict of either flipped when served again."""
    order = sorted(range(len(details)), key=lambda i: -details[i]["real_goodput_rps"])
    second = details[order[1]] if len(order) > 1 else None
    won = details[best]
    settled = second is not None and second["real_fail_rps"] is not None and \
        won["real_goodput_rps"] >= second["real_fail_rps"] and \
        not won.get("repeat_flips") and not second.get("repeat_flips")
    spreads = [d["repeat_spread_pct"] for d in details if "repeat_spread_pct" in d]
    spread = statistics.fmean(spreads) if spreads else None
    flips = sum(d.get("repeat_flips", 0) for d in details)
    print(f"  real vs real: SLO statistics moved {spread if spread is not None else float('nan'):.0f}% "
          f"on average when served again, {flips} verdict(s) flipped; real winner "
          + ("settled" if settled else f"NOT settled against {tags[order[1]] if second else '-'}"))
    return {f"{name}.real_repeat_spread_pct": spread,
            f"{name}.real_repeat_flips": flips, f"{name}.real_winner_settled": settled}


def _slos(text: str):
    from dooly.sim.slo import parse_slos
    return parse_slos(text)


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=str(ROOT / "out" / "accuracy.db"))
    ap.add_argument("--models", default="smollm2,qwen0.5b")
    ap.add_argument("--configs", default="2048x64,256x64,2048x8,256x8", help="BUDGETxSEQS,...")
    ap.add_argument("--slo", default="auto")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--rate-range", default="0.01:20")
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--intervals", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rates-per-round", type=int, default=3)
    ap.add_argument("--time-budget-s", type=float, default=7200.0, help="no new real round after this")
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--env", help="environment key of --db (default: this host's vLLM CPU one)")
    ap.add_argument("--no-prepare", action="store_true", help="use --db as it is (no sweep, fit, calibrate)")
    ap.add_argument("--quick", action="store_true", help="small sweep limits for a fresh DB")
    ap.add_argument("--sim-only", action="store_true", help="the simulated search alone, no real engine")
    ap.add_argument("--real-from", help="a .raw.json an earlier run wrote (no vLLM run)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the real rounds an interrupted run saved beside --json, serve the rest")
    ap.add_argument("--repeat", action="store_true",
                    help="serve each candidate's final bracket again: the real-vs-real noise")
    ap.add_argument("--recheck-host", action="store_true",
                    help="scale the predictions by the host's drift since the sweep, measured now")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    confs = [(int(b), int(s)) for b, _, s in (c.partition("x") for c in args.configs.split(","))]
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if len(confs) < 4 or any(n not in MODELS for n in names):
        ap.error(f"--configs: at least four; --models: from {', '.join(MODELS)}")
    if args.slo != "auto" and any(s.metric not in ("ttft", "tpot") for s in _slos(args.slo)):
        ap.error("--slo: the real side measures ttft and tpot only")
    args.rate_lo, args.rate_hi = map(float, args.rate_range.split(":"))
    args.raw = str(Path(args.json_path).with_suffix(".raw.json")) if args.json_path and not args.real_from else None
    src = args.real_from or (args.raw if args.resume else None)
    raw = json.loads(Path(src).read_text()) if src and Path(src).exists() else {}
    if args.real_from:
        use_db_env(args.db)
    elif not args.no_prepare:
        prepare_db(names, args.db, LIMITS["quick" if args.quick else "full"])
    args.t0 = time.perf_counter()
    out: dict = {"models": ",".join(names), "configs": args.configs, "requests": args.requests,
                 "slo": args.slo, "rounds": args.rounds, "rates_per_round": args.rates_per_round}
    for name in names:
        check_model(name, confs, args, raw, out)
    out["seconds"] = round(time.perf_counter() - args.t0, 1)
    flatjson.write(args.json_path, out, 4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
