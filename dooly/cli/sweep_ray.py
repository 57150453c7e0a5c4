"""`dooly sweep ... --ray [ADDRESS]`: the flag's check and the run, with one progress
bar over all units (points done, measured/reused/failed, time left)."""
from __future__ import annotations

import re
import sys

_ADDRESS = re.compile(r"^(auto|local|(ray://)?[A-Za-z0-9._\-]+:\d{1,5})$")


def ray_address(text: str) -> str:
    """argparse type of --ray's optional value: "auto", "local", HOST:PORT or
    ray://HOST:PORT ("" when the flag is given alone: start a local cluster)."""
    if text == "" or _ADDRESS.match(text):
        return text
    import argparse
    raise argparse.ArgumentTypeError(
        f"expected auto, local, HOST:PORT or ray://HOST:PORT, got {text[:80]!r} (a config path "
        "after a bare --ray is read as its address: put --ray after the configs)")


def add_flags(p) -> None:
    p.add_argument("--ray", nargs="?", const="", default=None, type=ray_address, metavar="ADDRESS",
                   help="measure on a Ray cluster: auto (a running one), HOST:PORT, or alone to "
                        "start a local one; the DB is written by this process only")
    from dooly.cli.flags import int_range
    p.add_argument("--ray-workers", type=int_range(1, 100000), default=None, metavar="N",
                   help="with --ray: at most N workers (default: one per GPU, or per --threads CPUs)")


def run_ray(args, analysis, lim):
    """The Ray sweep with its progress bar; returns the summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from dooly.profile.ray_sweep import ray_sweep
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), disable=args.no_progress or not sys.stderr.isatty(),
                  transient=False) as prog:
        bar = {}

        def progress(p):
            text = (f"{p.phase} units {p.units_done}/{p.units_total} · ok {p.measured} "
                    f"reused {p.reused} failed {p.failed} · workers {len(p.workers)}")
            if p.phase not in bar:
                bar[p.phase] = prog.add_task(text, total=p.points_total)
            prog.update(bar[p.phase], description=text, completed=p.points_done, total=p.points_total)
        s = ray_sweep(analysis, args.db, args.device, args.backend, lim, args.threads, progress,
                      recheck=False if args.no_recheck else None, address=args.ray or None,
                      workers=args.ray_workers, retry_failed=args.retry_failed)
    for line in s.workers_refused:
        print(f"dooly: refused Ray worker {line}", file=sys.stderr)
    if s.units_unfinished:
        print(f"dooly: every Ray worker was lost; {len(s.units_unfinished)} unit(s) left unmeasured: "
              "run the sweep again to measure them", file=sys.stderr)
    if s.units_collective:
        print(f"dooly: {len(s.units_collective)} collective unit(s) need a process group on one host: "
              "run `dooly sweep` without --ray to measure them", file=sys.stderr)
    print(f"ray: {len(s.workers)} worker(s) ({', '.join(s.workers)}), {len(s.workers_refused)} refused, "
          f"{len(s.workers_lost)} lost")
    return s
