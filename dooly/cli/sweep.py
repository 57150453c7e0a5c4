"""`dooly sweep`: measure the units of the given models that the DB lacks."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from dooly.cli.batchspec import MAX_SEQS
from dooly.cli.flags import (MAX_THREADS, MAX_TP, ROUTING_HELP, TP_HELP, dump_json, int_range, out_file,
                              percent, routing)
from dooly.errors import DoolyInputError
from dooly.profile.calibrate import PASSES


def register(sub) -> None:
    p = sub.add_parser("sweep", help="measure unseen units over the request grid")
    p.add_argument("configs", nargs="+")
    p.add_argument("--engine", choices=["transformers", "vllm"], default=None)
    p.add_argument("--db", required=True, help="SQLite latency DB (created if missing)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--backend", default=None, help="attention backend (default: the engine's)")
    p.add_argument("--max-tokens", type=int_range(1), default=1024,
                   help="largest token count swept (at most the model's maximum length)")
    p.add_argument("--max-batch", type=int_range(1, MAX_SEQS), default=32)
    p.add_argument("--max-context", type=int_range(1), default=1024,
                   help="longest context swept (at most the model's maximum length)")
    p.add_argument("--threads", type=int_range(1, MAX_THREADS), default=None,
                   help="torch threads (CPU; with --tp N, default: one rank's share of the cores)")
    p.add_argument("--tp", type=int_range(1, MAX_TP), default=1,
                   help=TP_HELP + "; the collectives are timed across N processes on this host")
    p.add_argument("--json", dest="json_path", type=out_file, help="write the summary here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-recheck", action="store_true",
                   help="one timing pass (default on CPU: a second pass keeps each point's faster median)")
    p.add_argument("--families", action="store_true",
                   help="measure only check points of a unit whose family (same computation, other "
                        "config dims) is measured here; the family serves it if they agree")
    p.add_argument("--adaptive", action="store_true",
                   help="sweep one-axis units coarse first, refining only where interpolation misses")
    p.add_argument("--tolerance", type=percent, default=3.0,
                   help="%% a check point or an interpolated point may miss by (default 3)")
    p.add_argument("--step-tolerance", type=percent, default=None, metavar="PCT",
                   help="with --families: also serve a unit whose check errors, each weighed by the "
                        "unit's share of its model's units there, are within PCT%% of the step")
    p.add_argument("--routing", type=routing, default="balanced", help=ROUTING_HELP)
    p.add_argument("--retry-failed", action="store_true",
                   help="measure again the points stored as failed (a resumed sweep skips them), "
                        "e.g. after an upgrade of Dooly or the engine")
    from dooly.cli.sweep_ray import add_flags
    add_flags(p)  # --ray [ADDRESS], --ray-workers N
    p.set_defaults(func=run)
    register_calibrate(sub)


def run(args) -> int:
    from dooly.analyze import analyze
    from dooly.db import Store, postgres
    lim = _checked_limits(args)
    exists = postgres.is_url(args.db) or Path(args.db).exists()   # a new DB is made by the sweep only
    with Store.open(args.db, create=False) if exists else contextlib.nullcontext() as store:
        analysis = analyze(args.configs, args.engine, tp=args.tp, store=store)   # its captures stand in
    from dooly.cli.report import print_failures, unsweepable_lines
    print_failures(analysis.failed)  # a model the engine cannot capture is skipped
    if not analysis.inventories:
        return 2
    for line in unsweepable_lines(analysis):   # the sweep still tries: its failures are recorded
        print(f"dooly: warning: cannot sweep {line}", file=sys.stderr)
    s = _measure(args, analysis, lim)
    out = s.to_json()
    out["failed"] = list(analysis.failed)
    _report(args, s, out, analysis.failed)
    if args.json_path:
        dump_json(args.json_path, out, "--json")
    return 130 if s.interrupted else 2 if analysis.failed else 0


def _checked_limits(args):
    """Every config and flag checked before the DB or an engine is touched; the grid limits."""
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.profile.grid import GridLimits
    if args.step_tolerance is not None and not args.families:
        raise DoolyInputError("--step-tolerance", "it weighs check points: use it with --families")
    for cfg in map(load_config, args.configs):
        cfg.check_length("--max-context", args.max_context)
        cfg.check_length("--max-tokens", args.max_tokens)
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise DoolyInputError("--device", "cuda requested but no CUDA device is available")
    try:
        lim = GridLimits(args.max_tokens, args.max_batch, args.max_context)
    except ValueError as err:
        raise DoolyInputError("command line", str(err)) from None
    Store.ensure_writable(args.db)  # a bad DB is one line now, not after the capture
    if args.tp > 1 and args.device == "cuda":
        _check_devices(args.tp)
    return lim


def _measure(args, analysis, lim):
    """The sweep's summary: measured on Ray (`--ray`) or here, with a bar per unit."""
    if args.ray is not None:
        from dooly.cli.sweep_ray import run_ray
        return run_ray(args, analysis, lim)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from dooly.profile.sweep import sweep
    bars: dict = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), disable=args.no_progress or not sys.stderr.isatty(),
                  transient=False) as prog:
        def progress(unit, done, total):
            if unit.key not in bars:
                bars[unit.key] = prog.add_task(f"{unit.op[:28]:28s} {unit.key[-12:]}", total=total)
            prog.update(bars[unit.key], completed=done)
        return sweep(analysis, args.db, args.device, args.backend, lim, args.threads, progress,
                     recheck=False if args.no_recheck else None, families=args.families,
                     adaptive=args.adaptive, tolerance_pct=args.tolerance, routing=args.routing,
                     step_tolerance_pct=args.step_tolerance, retry_failed=args.retry_failed)


def _report(args, s, out: dict, failed: list) -> None:
    print(f"sweep {'interrupted' if s.interrupted else 'done'}: {out['units_measured']} units measured, "
          f"{out['units_reused']} reused, {out['units_failed']} failed; {out['points_measured']} points "
          f"ok, {out['points_failed']} failed; {out['seconds']:.1f} s, of which the second pass "
          f"{out['recheck_seconds']:.1f} s ({out['points_rechecked_faster']} points faster) (env {s.env_key})")
    if out.get("points_retried"):
        print(f"tried again {out['points_retried']} point(s) stored as failed (--retry-failed)")
    if s.host_change:
        from dooly.hostspeed import change_warning
        what = ("the points this sweep added sit beside another host's (or host state's)" if s.units_measured
                else "its points, reused here, are another host's (or host state's)")
        print(change_warning(s.env_key, args.db, s.host_change, what), file=sys.stderr)
    if failed:
        print(f"skipped {len(failed)} model(s) the engine could not capture (errors on "
              f"stderr): {', '.join(f['config'] for f in failed)}")
    for size, key in s.collective_envs.items():
        print(f"collectives of the {size}-rank group timed across {size} processes on this host "
              f"(env {key})")
    served = getattr(s, "family_served", {})
    if served:
        print(f"{len(served)} units served by their family from check points (largest check error "
              f"{max(served.values()):.1f}%, tolerance {args.tolerance:g}%"
              + (f", or {args.step_tolerance:g}% of the step" if args.step_tolerance is not None else "") + ")")


def _check_devices(tp: int) -> None:
    """On CUDA every rank of the group has its own device."""
    import torch
    if torch.cuda.device_count() < tp:
        raise DoolyInputError("--tp", f"{tp} ranks need {tp} CUDA devices, this host has "
                              f"{torch.cuda.device_count()}")


def register_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="time real engine steps of each model into the environment's "
                       "engine-step pool, for predict and simulate of any model")
    p.add_argument("configs", nargs="+", metavar="config")
    p.add_argument("--db", required=True)
    p.add_argument("--threads", type=int_range(1, MAX_THREADS), default=None)
    # the serving settings to calibrate under: the engine compiles its graph for them
    p.add_argument("--max-num-batched-tokens", type=int_range(1), default=8192)
    p.add_argument("--max-num-seqs", type=int_range(1, MAX_SEQS), default=128)
    p.add_argument("--tp", type=int_range(1, MAX_TP), default=1,
                   help="real engine at tensor-parallel size N, each rank on its share of the cores, "
                        "for the inventory of `dooly sweep --tp N` (CPU)")
    p.add_argument("--passes", type=int_range(1, 20), default=PASSES,
                   help="times each model's workload runs, the models' passes interleaved; each batch "
                        f"keeps the median over passes (default {PASSES}: one pass taken while a shared "
                        "host runs slow is outvoted)")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args) -> int:
    from dooly.config import load_config
    from dooly.hostspeed import change_warning
    from dooly.profile.calibrate import calibrate, interleaved_passes, stored_structure
    cfgs = [load_config(c) for c in args.configs]  # one-line error for a bad config before an engine
    for flag in ("max_num_batched_tokens", "max_num_seqs"):
        if getattr(args, flag) < 1:
            raise DoolyInputError("command line", f"expected a positive count, got {getattr(args, flag)}",
                                  "--" + flag.replace("_", "-"))
    from dooly.db import Store
    Store.ensure_writable(args.db)  # a damaged or read-only DB before the engine run, not after
    if args.tp > 1:
        return _calibrate_tp(cfgs, args)
    with Store.open(args.db) as store:  # every model's inventory before the first engine run
        for cfg in cfgs:
            stored_structure(store, cfg, "vllm")

    def one(cfg, earlier):
        try:
            return calibrate(cfg.path, args.db, args.threads, args.max_num_batched_tokens,
                             args.max_num_seqs, earlier=earlier)
        except RuntimeError as err:  # the real engine refused the model (e.g. an unknown architecture)
            raise DoolyInputError(cfg.path, str(err), "architectures") from None
    for n, cfg, r in interleaved_passes([(c.hash, c) for c in cfgs], args.passes, one):
        print(f"calibrated {cfg.name}{_pass_label(n, args.passes)}: {r['points']} distinct batches from "
              f"{r['steps']} real vLLM steps, {r['quiet_steps']} of them with no other process on their "
              f"cores (worker threads {r['worker_threads']}) into env {r['env_key']}; the pool now holds "
              f"{r['pool_models']} model(s)")
        if r["host_change"]:
            print(change_warning(r["env_key"], args.db, r["host_change"], f"{cfg.name}'s engine steps "
                                 "were timed on another host (or host state) than the units they correct"),
                  file=sys.stderr)
        if r["quiet_steps"] < r["steps"] / 2:
            print(f"dooly: most of {cfg.name}'s steps shared their cores with another process; "
                  "calibrate again on an idle host", file=sys.stderr)
    return 0


def _pass_label(n: int, passes: int) -> str:
    return f" (pass {n} of {passes})" if passes > 1 else ""


def _calibrate_tp(cfgs, args) -> int:
    from dooly.parallel import check_tp
    from dooly.profile.calibrate import interleaved_passes
    from dooly.profile.calibrate_tp import calibrate_tp
    for cfg in cfgs:
        check_tp(cfg, args.tp)

    def one(cfg, earlier):
        try:
            return calibrate_tp(cfg.path, args.db, args.tp, args.max_num_batched_tokens, args.max_num_seqs,
                                earlier=earlier)
        except RuntimeError as err:  # the real engine refused the model or the group
            raise DoolyInputError(cfg.path, str(err), "architectures") from None
    for n, cfg, r in interleaved_passes([(c.hash, c) for c in cfgs], args.passes, one):
        print(f"calibrated {cfg.name} at TP={args.tp}{_pass_label(n, args.passes)} (ranks bound to cores "
              f"{r['bind']}): {r['points']} "
              f"distinct batches from {r['steps']} real vLLM steps into env {r['env_key']}; the pool "
              f"now holds {r['pool_models']} model(s)")
    return 0
