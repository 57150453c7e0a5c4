"""`dooly search`: the serving configuration with the highest goodput under SLOs.
Candidates are models x environments x serving settings; the ranking comes with error
bands, the binding SLO and the winner's `vllm serve` command (the API is `dooly.search`)."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from dooly.cli.flags import int_range, out_file, positive_float
from dooly.cli.sim import _length, served_workload
from dooly.errors import DoolyInputError

FIXED = ("max_num_batched_tokens", "max_num_seqs", "block_size", "num_blocks",
         "long_prefill_token_threshold")


def _slos(text: str):
    from dooly.sim.slo import parse_slos
    try:
        return parse_slos(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _rate_range(text: str) -> tuple[float, float]:
    lo, colon, hi = text.partition(":")
    try:
        a, b = positive_float(lo), positive_float(hi)
    except argparse.ArgumentTypeError:
        a = b = 0.0
    if not colon or not 0 < a < b:
        raise argparse.ArgumentTypeError(f"expected LO:HI with 0 < LO < HI req/s, got {text!r}")
    return a, b


def _stand_in(text: str):
    from dooly.sim.steps import LinearSource
    kind, _, rest = text.partition(":")
    try:
        if kind != "linear":
            raise ValueError
        vals = [float(x) for x in rest.split(",")]
        if len(vals) not in (3, 4) or min(vals) < 0:
            raise ValueError
        return LinearSource(*vals)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected linear:A,B,C[,ERROR_PCT] >= 0, got {text!r}") from None


def register(subparsers) -> None:
    from dooly.sim.workload import MAX_REQUESTS
    p = subparsers.add_parser("search", help="best serving configuration under SLOs (goodput), "
                              "with error bands and the deploy command", description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", metavar="config", help="model config.json (several: models compete)")
    p.add_argument("--db", help="profile database for the latency predictor")
    p.add_argument("--env", help="environment key in --db when env is not varied (default: best-covered)")
    p.add_argument("--slo", type=_slos, action="append", required=True,
                   help="METRIC_STAT=LIMIT,...: ttft|tpot|itl|e2e|queue, pQ or mean, ms or s "
                        "(ttft_p90=2s,tpot_p90=80ms); repeatable")
    p.add_argument("--vary", action="append", default=[], metavar="KNOB=V1,V2",
                   help="max_num_batched_tokens, max_num_seqs, long_prefill_token_threshold, "
                        "block_size, num_blocks, env (keys in --db) or tp; repeatable")
    p.add_argument("--rate-range", type=_rate_range, default=(0.05, 50.0), metavar="LO:HI",
                   help="request rates searched, req/s (default 0.05:50)")
    p.add_argument("--probes", type=int_range(2, 100), default=10, help="rates probed per candidate")
    p.add_argument("--intervals", type=int_range(0, 1000), default=8,
                   help="error-band draws for each leading candidate (0: no bands)")
    p.add_argument("--band-top", type=int_range(2, 100), default=3, help="leaders given a band")
    p.add_argument("--jobs", type=int_range(1, 1024), default=os.cpu_count() or 1,
                   help="worker processes (default: one per CPU)")
    p.add_argument("--workload", default="synthetic", help="ShareGPT .json, trace .csv, or 'synthetic'")
    p.add_argument("--num-requests", type=int_range(1, MAX_REQUESTS), default=200,
                   help="requests per probe (default 200)")
    p.add_argument("--arrival", choices=("poisson", "gamma"), default="poisson")
    p.add_argument("--cv", type=positive_float, default=1.0, help="gamma inter-arrival CV")
    p.add_argument("--seed", type=int_range(0), default=0)
    p.add_argument("--prompt-len", type=_length, default="lognormal:512,0.8")
    p.add_argument("--output-len", type=_length, default="lognormal:128,0.8")
    p.add_argument("--max-model-len", type=int_range(2),
                   help="vLLM's max_model_len (default: the smallest of the models')")
    for knob in FIXED:
        p.add_argument("--" + knob.replace("_", "-"), type=int_range(0 if "threshold" in knob else 1),
                       help="fixed for every candidate unless varied (default: dooly simulate's)")
    p.add_argument("--out", type=Path, help="directory for search.json, pareto.png, curves.png, "
                   "probes.csv, deploy.sh")
    p.add_argument("--json", type=out_file, help="write the ranked candidates as JSON here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--step-model", type=_stand_in, help=argparse.SUPPRESS)  # testing aid
    p.set_defaults(func=run)


def _models(args):
    from dooly.config import load_config
    cfgs = [load_config(c) for c in args.configs]
    args.max_model_len_given = args.max_model_len is not None
    if args.max_model_len is None:
        args.max_model_len = min(c.default_max_model_len() for c in cfgs)
    for c in cfgs:
        c.check_length("--max-model-len", args.max_model_len)
    return cfgs


def _workload(args):
    from dooly.sim.workload import WorkloadSpec
    try:
        spec = WorkloadSpec(args.workload, 1.0, args.arrival, args.cv, args.seed, args.num_requests,
                            args.max_model_len, args.prompt_len, args.output_len)
    except ValueError as err:
        raise DoolyInputError("dooly search", str(err)) from None
    return served_workload(spec, args.workload, args.max_model_len)


def _environments(args, cfgs, env_keys, tps) -> dict[str, str]:
    """env key -> attention backend; every (model, environment, tp) checked in the DB."""
    from dooly.db import Store
    from dooly.db.envs import choose_environment
    from dooly.graph.units import inventory_key
    flag = "--vary" if args.varied.get("env") or len(tps) > 1 else "--env"
    out = {}
    with Store.open(args.db, create=False) as store:
        for key in env_keys:
            try:
                env = choose_environment(store, None, key, args.db)
            except DoolyInputError as err:
                raise DoolyInputError(args.db, err.problem, flag) from None
            for cfg in cfgs:
                for tp in tps:
                    if not store.inventory(inventory_key(cfg.hash, tp), env.engine):
                        at = f" at tp {tp}" if tp > 1 else ""
                        raise DoolyInputError(args.db, f"no inventory of {cfg.name}{at} for environment "
                                              f"{env.key} ({env.engine}): run `dooly sweep`"
                                              f"{f' --tp {tp}' if tp > 1 else ''} for it", flag)
            out[env.key] = env.backend
    return out


def _check_tp(cfgs, tps) -> None:
    from dooly.parallel import check_tp
    for cfg in cfgs:
        for tp in tps:
            try:
                check_tp(cfg, tp)
            except DoolyInputError as err:
                raise DoolyInputError("--vary", f"tp={err.problem}") from None


def _candidates(args, cfgs, requests):
    from dooly.sim.candidates import make_candidates, parse_vary
    try:
        args.varied = parse_vary(args.vary)
    except ValueError as err:
        raise DoolyInputError("--vary", str(err)) from None
    fixed = {k: getattr(args, k) for k in FIXED if getattr(args, k) is not None}
    fixed["max_model_len"] = args.max_model_len
    tps = args.varied.get("tp", (1,))
    _check_tp(cfgs, tps)
    backends = {}
    if args.step_model is None:
        if not args.db:
            raise DoolyInputError(args.configs[0], "no latency model: pass --db PATH", "--db")
        backends = _environments(args, cfgs, args.varied.get("env", (args.env,)), tps)
        if "env" not in args.varied:
            args.env = next(iter(backends))
    try:
        cands = make_candidates([(c.path, c.name) for c in cfgs], args.varied, fixed, args.env)
    except ValueError as err:
        raise DoolyInputError("--vary", str(err)) from None
    _check_kv(cands, requests, args)
    return cands, backends


def _check_kv(cands, requests, args) -> None:
    """A request that cannot hold its KV cache alone in a candidate's blocks is bad input."""
    from dooly.sim.scheduler import SchedulerConfig
    longest = max(r.prompt_len + r.output_len for r in requests)
    for c in cands:
        s = c.scheduler(SchedulerConfig())
        if s.num_blocks is not None and s.blocks_for(longest - 1) > s.usable_blocks:
            flag = "--vary" if "num_blocks" in c.varied or "block_size" in c.varied else "--num-blocks"
            raise DoolyInputError(flag, f"{c.label}: the longest request ({longest} tokens) needs "
                                  f"{s.blocks_for(longest - 1)} KV blocks of {s.block_size}, "
                                  f"num_blocks is {s.num_blocks} (one of them vLLM's null block)")


def run(args) -> int:
    from dooly.search import DbSource, SearchSpec
    from dooly.sim.scheduler import SchedulerConfig
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise DoolyInputError(args.out, "exists and is not a directory", "--out")
    cfgs = _models(args)
    wl = _workload(args)
    cands, backends = _candidates(args, cfgs, wl.requests)
    slos = tuple(s for group in args.slo for s in group)
    names = [s.name for s in slos]
    if len(set(names)) < len(names):
        raise DoolyInputError("--slo", f"an SLO is given twice: {', '.join(names)}")
    spec = SearchSpec(tuple(wl.requests), slos, *args.rate_range, args.probes, args.intervals,
                      args.band_top, seed=args.seed,
                      base=SchedulerConfig(max_model_len=args.max_model_len))
    source = args.step_model or DbSource(str(args.db))
    t0 = time.perf_counter()
    result = _run(source, cands, spec, args)
    secs = time.perf_counter() - t0
    from dooly.cli.search_out import report
    report(args, result, slos, backends, len(wl.rejected), secs)
    return 0


def _run(source, cands, spec, args):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from dooly.search import search
    console = Console(stderr=True)
    with Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=args.no_progress or not console.is_terminal,
                  transient=True) as prog:
        task = prog.add_task("search", total=len(cands))

        def progress(done, total):
            prog.update(task, completed=done, total=total)
        return search(source, cands, spec, args.jobs, progress)
