"""`dooly simulate`: replay a workload through the vLLM V1 scheduler model, with step
times from the latency predictor (or a linear stand-in), and report serving metrics."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from dooly.cli.flags import int_range, out_file, positive_float
from dooly.errors import DoolyInputError


@dataclasses.dataclass(frozen=True)
class LinearStepModel:
    """Stand-in latency model: ms = a + b * tokens + c * sum(context_len) / 1000."""
    a: float
    b: float
    c: float

    def __post_init__(self):
        for name in ("a", "b", "c"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def step_ms(self, batch) -> float:
        tokens = ctx = 0
        for seq in batch:
            tokens += seq.query_len
            ctx += seq.context_len
        return self.a + self.b * tokens + self.c * ctx / 1000.0


def _step_model(text: str) -> LinearStepModel:
    kind, _, rest = text.partition(":")
    try:
        if kind != "linear":
            raise ValueError
        return LinearStepModel(*(float(x) for x in rest.split(",")))
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected linear:A,B,C with A,B,C >= 0, got {text!r}") from None


def _length(text: str):
    from dooly.sim.workload import LengthDist
    try:
        return LengthDist.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register(subparsers) -> None:
    from dooly.sim.scheduler import SchedulerConfig
    from dooly.sim.workload import MAX_REQUESTS

    d = SchedulerConfig()
    p = subparsers.add_parser("simulate", help="simulate vLLM serving of a workload",
                              description=__doc__.splitlines()[0])
    p.add_argument("config", help="model config.json")
    p.add_argument("--db", help="profile database for the latency predictor")
    p.add_argument("--env", help="environment key in --db (default: the best-covered one)")
    p.add_argument("--workload", default="synthetic",
                   help="ShareGPT .json, trace .csv, or 'synthetic' (default)")
    p.add_argument("--rate", type=positive_float, help="requests/s for poisson/gamma arrivals")
    p.add_argument("--num-requests", type=int_range(1, MAX_REQUESTS),
                   help=f"requests to simulate (synthetic default 1000; at most {MAX_REQUESTS:,})")
    p.add_argument("--arrival", choices=("poisson", "gamma", "trace"),
                   help="default: poisson with --rate, else the trace's own times")
    p.add_argument("--cv", type=positive_float, default=1.0,
                   help="gamma inter-arrival coefficient of variation")
    p.add_argument("--seed", type=int_range(0), default=0)
    p.add_argument("--prompt-len", type=_length, default="lognormal:512,0.8",
                   help="synthetic prompt lengths: N | uniform:A,B | lognormal:MEAN,SIGMA")
    p.add_argument("--output-len", type=_length, default="lognormal:128,0.8",
                   help="synthetic output lengths, same forms as --prompt-len")
    p.add_argument("--max-model-len", type=int_range(2),
                   help="vLLM's max_model_len (default: the model's, as vLLM derives it); "
                        "longer prompts are rejected, longer outputs stop there")
    p.add_argument("--max-num-batched-tokens", type=int_range(1),
                   default=d.max_num_batched_tokens)
    p.add_argument("--max-num-seqs", type=int_range(1), default=d.max_num_seqs)
    p.add_argument("--block-size", type=int_range(1), default=d.block_size)
    p.add_argument("--num-blocks", type=int_range(2),
                   help="KV-cache blocks, as vLLM's num_gpu_blocks: block 0 is its placeholder "
                        "(default: unlimited, never preempts)")
    from dooly.cli.flags import MAX_TP, RECHECK_HELP, ROUTING_HELP, TP_HELP, routing
    p.add_argument("--tp", type=int_range(1, MAX_TP), default=1,
                   help=TP_HELP + "; steps from `dooly sweep --tp N`'s shards and collectives")
    p.add_argument("--routing", type=routing, default="balanced", help=ROUTING_HELP)
    p.add_argument("--recheck-host", action="store_true", help=RECHECK_HELP)
    p.add_argument("--kv-cache-gib", type=positive_float, default=None, metavar="GIB",
                   help="KV-cache memory of each device (instead of --num-blocks): blocks as vLLM "
                        "allocates them, N devices holding N times one's under --tp N")
    p.add_argument("--long-prefill-token-threshold", type=int_range(0), default=0)
    p.add_argument("--out", type=Path, help="directory for summary.json, requests.csv, cdf.png")
    p.add_argument("--json", type=out_file, help="write the summary as JSON here")
    p.add_argument("--intervals", type=int_range(0, 1000), default=0, metavar="N",
                   help="also N runs with step times drawn within the predictor's stated error: "
                        "each metric with its 90%% band")
    p.add_argument("--step-model", type=_step_model, metavar="linear:A,B,C",
                   help=argparse.SUPPRESS)  # testing aid: bypasses the profile DB
    p.set_defaults(func=run)


def _latency_model(args):
    if args.step_model is not None:
        return args.step_model.step_ms
    if not args.db:
        raise DoolyInputError(args.config, "no latency model: pass --db PATH", field="--db")
    from dooly.predict import Predictor, refit_note
    pred = Predictor.load(args.config, args.db, env_key=args.env, tp=args.tp, routing=args.routing)
    if pred.refitted:
        print(refit_note(pred.refitted, args.db), file=sys.stderr)
    from dooly.cli.flags import recheck_host
    recheck_host(pred, args)
    if args.kv_cache_gib is not None:
        from dooly.parallel import kv_cache_blocks
        args.num_blocks = kv_cache_blocks(pred.units, pred.counts, args.kv_cache_gib, args.block_size)
        print(f"KV cache: {args.num_blocks} blocks of {args.block_size} tokens ({args.kv_cache_gib:g} GiB "
              f"on each of {args.tp} device{'s' if args.tp > 1 else ''})")
    return pred.step_ms


def _check_tp_flags(args, cfg) -> None:
    if args.tp > 1:
        from dooly.parallel import check_tp
        check_tp(cfg, args.tp)
    if args.kv_cache_gib is not None and args.num_blocks is not None:
        raise DoolyInputError("--kv-cache-gib", "give either --kv-cache-gib or --num-blocks, not both")
    if args.kv_cache_gib is not None and args.step_model is not None:
        raise DoolyInputError("--kv-cache-gib", "sizes the cache from the model's units: needs --db")


def run(args) -> int:
    from dooly.config import load_config
    from dooly.sim.metrics import request_metrics, summarize
    from dooly.sim.report import print_summary
    from dooly.sim.scheduler import SchedulerConfig
    from dooly.sim.simulator import simulate
    from dooly.sim.workload import WorkloadSpec

    cfg = load_config(args.config)  # config and flags first, then the workload, then the DB
    if args.max_model_len is None:
        args.max_model_len = cfg.default_max_model_len()  # vLLM's default
    cfg.check_length("--max-model-len", args.max_model_len)
    _check_tp_flags(args, cfg)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise DoolyInputError(args.out, "exists and is not a directory", "--out")
    arrival = args.arrival or ("poisson" if args.rate is not None else "trace")
    try:
        sched = SchedulerConfig(args.max_num_batched_tokens, args.max_num_seqs,
                                args.block_size, args.num_blocks,
                                args.long_prefill_token_threshold, args.max_model_len)
        spec = WorkloadSpec(args.workload, args.rate, arrival, args.cv, args.seed,
                            args.num_requests, args.max_model_len, args.prompt_len,
                            args.output_len)
    except ValueError as err:
        raise DoolyInputError("dooly simulate", str(err)) from None
    workload = served_workload(spec, args.workload, args.max_model_len)
    step_ms = _latency_model(args)
    if args.kv_cache_gib is not None:  # sized from the model's (shard) attention units
        sched = dataclasses.replace(sched, num_blocks=args.num_blocks)
    try:
        result = simulate(workload.requests, step_ms, sched)
    except ValueError as err:  # a request that can never fit the configured KV cache
        raise DoolyInputError(args.workload, str(err)) from None
    per = [request_metrics(r) for r in result.requests]
    summary = summarize(result, per)
    extra = {"scheduler": dataclasses.asdict(sched), "tp": args.tp,
             "workload": {"source": args.workload, "arrival": arrival, "rate": args.rate,
                          "cv": args.cv, "seed": args.seed},
             "rejected": _rejected_json(workload.rejected),
             "length_capped": workload.length_capped}
    print_summary(summary, title=f"dooly simulate: {Path(args.config).name}")
    if args.intervals:
        from dooly.cli.intervals import simulate_intervals
        extra["intervals"] = simulate_intervals(args, workload.requests, step_ms, sched, summary)
    if workload.rejected:
        print(f"rejected, as vLLM would (HTTP 400), not simulated: {_reasons(workload.rejected)}; "
              f"max_model_len {args.max_model_len}")
    if workload.length_capped:
        print(f"{workload.length_capped} output(s) stop at max_model_len {args.max_model_len}, "
              "as vLLM stops them (finish reason 'length')")
    _write(args, summary, per, extra)
    return 0


def served_workload(spec, path: str, max_model_len):
    """The workload, or one line naming the file when vLLM would reject every request."""
    from dooly.sim.workload import load_workload
    workload = load_workload(spec)
    if not workload.requests:
        raise DoolyInputError(path, f"every request is rejected, as vLLM would: "
                              f"{_reasons(workload.rejected)} (max_model_len {max_model_len})")
    return workload


def _reasons(rejected) -> str:
    from collections import Counter

    from dooly.sim.workload import REJECT_REASONS
    counts = Counter(r.reason for r in rejected)
    first = ", ".join(str(r.rid) for r in sorted(rejected, key=lambda r: r.rid)[:5])
    more = ", ..." if len(rejected) > 5 else ""
    return (", ".join(f"{n} {REJECT_REASONS[k]}" for k, n in counts.most_common())
            + f" (request {first}{more})")


def _rejected_json(rejected, listed: int = 1000) -> dict:
    from collections import Counter
    return {"count": len(rejected), "by_reason": dict(Counter(r.reason for r in rejected)),
            "requests": [dataclasses.asdict(r) for r in rejected[:listed]]}


def _write(args, summary, per, extra) -> None:
    from dooly.sim.report import plot_cdfs, write_csv, write_json
    path = args.out
    try:
        if args.out:
            write_json(summary, args.out / "summary.json", extra)
            write_csv(per, args.out / "requests.csv")
            plot_cdfs(per, args.out / "cdf.png", title=Path(args.config).name)
            print(f"wrote {args.out}/summary.json, requests.csv, cdf.png", file=sys.stderr)
        if args.json:
            path = args.json
            write_json(summary, args.json, extra)
    except OSError as err:
        raise DoolyInputError(path, f"cannot write ({err.strerror or err})") from None
