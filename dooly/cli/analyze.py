"""`dooly analyze`: what a model runs, what the config fixes, what the request sets,
and how much profiling other models already cover."""
from __future__ import annotations

import contextlib
import time

from dooly.cli.flags import MAX_TP, TP_HELP, dump_json, int_range, out_file


def register(sub) -> None:
    p = sub.add_parser("analyze", help="units, dimension labels and reuse of model configs")
    p.add_argument("configs", nargs="+", help="HF config.json files")
    p.add_argument("--engine", choices=["transformers", "vllm"], default=None,
                   help="default: vllm when installed, else transformers")
    p.add_argument("--json", dest="json_path", type=out_file, help="write the analysis as JSON here")
    p.add_argument("--hardware", choices=["h100", "a100", "cpu"], default="h100",
                   help="device for the profiling-cost estimate")
    p.add_argument("--db", help="an existing latency DB: record the models' inventories in it, "
                                "mark units already measured and the cost left")
    p.add_argument("--env", help="environment key in --db (default: the engine's best-covered)")
    p.add_argument("--quiet", action="store_true", help="no per-model tables")
    p.add_argument("--tp", type=int_range(1, MAX_TP), default=1, help=TP_HELP)
    p.add_argument("--no-cache", action="store_true",
                   help="capture again even when the capture cache holds this model "
                        "($XDG_CACHE_HOME/dooly/captures)")
    p.set_defaults(func=run)


def run(args) -> int:
    from dooly.analyze import analyze, reuse_summary, to_json
    from dooly.cli.report import print_analysis, print_failures
    t0 = time.perf_counter()
    # a missing, empty or damaged --db fails before the capture (it is never created); its
    # copies of earlier captures stand in for a capture
    from dooly.db import Store
    with Store.open(args.db, create=False) if args.db else contextlib.nullcontext() as store:
        analysis = analyze(args.configs, args.engine, tp=args.tp, use_cache=not args.no_cache, store=store)
    print_failures(analysis.failed)  # a model the engine cannot capture is skipped
    if not analysis.inventories:
        return 2  # nothing analysed: nothing written, as for one bad config
    reuse = reuse_summary(analysis, args.hardware)
    plan = None
    if args.db:
        from dooly.profile.plan import plan_against_db
        plan = plan_against_db(analysis, args.db, args.env, args.hardware)
    out = to_json(analysis, reuse)
    if plan is not None:
        out["plan"] = plan
    if args.json_path:
        dump_json(args.json_path, out, "--json", indent=1, default=str)
    print_analysis(analysis, reuse, plan, quiet=args.quiet, seconds=time.perf_counter() - t0)
    return 2 if analysis.failed else 0
