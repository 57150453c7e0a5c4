"""What `dooly search` prints and writes: the ranked table and verdict (stdout), the JSON,
and under --out the charts, the probes and `deploy.sh` with the winner's `vllm serve`."""
from __future__ import annotations

import sys
from pathlib import Path

from dooly.errors import DoolyInputError


def report(args, result, slos, backends: dict, rejected: int, secs: float) -> None:
    from rich.console import Console

    from dooly.sim import search_report as sr
    table = sr.rows(result)
    n = len(table)
    probes = sum(len(r.goodput.probes) for r in result.ranked)
    title = (f"dooly search: {n} candidate(s) under " + ", ".join(f"{s.name} <= {s.limit_ms:g} ms" for s in slos))
    console = Console()
    if not console.is_terminal:   # a file or pipe gets the whole table, not 80 columns
        console = Console(width=160)
    console.print(sr.ranking_table(table, title))
    print(sr.verdict_line(table, slos))
    if rejected:
        print(f"{rejected} request(s) rejected, as vLLM would (HTTP 400), not simulated")
    print(f"dooly: {n} candidates, {probes} nominal probes and {sum(len(r.draws) for r in result.ranked)} "
          f"band draws in {secs:.1f} s ({args.jobs} worker(s))", file=sys.stderr)
    meta = {"slos": {s.name: s.limit_ms for s in slos}, "winner": table[0]["candidate"],
            "within_error": result.within_error, "binding_slo": table[0]["binding_slo"],
            "rate_range": list(args.rate_range), "probes_per_candidate": args.probes,
            "draws": args.intervals, "workload": {"source": args.workload, "arrival": args.arrival,
                                                   "requests": args.num_requests, "seed": args.seed},
            "rejected": rejected}
    path = args.json
    try:
        if args.json:
            sr.write_json(table, meta, args.json)
        if args.out:
            path = args.out
            _write_out(args, result, table, meta, slos, backends)
    except OSError as err:
        raise DoolyInputError(path, f"cannot write ({err.strerror or err})") from None


def _write_out(args, result, table, meta, slos, backends) -> None:
    from dooly.sim import search_report as sr
    out = Path(args.out)
    sr.write_json(table, meta, out / "search.json")
    sr.write_probes_csv(result, slos, out / "probes.csv")
    sr.plot_pareto(table, out / "pareto.png")
    sr.plot_curves(result, slos, out / "curves.png")
    script = out / "deploy.sh"
    script.write_text(deploy_text(args, result, table, slos, backends))
    script.chmod(0o755)
    print(f"wrote {out}/search.json, probes.csv, pareto.png, curves.png, deploy.sh", file=sys.stderr)


def deploy_text(args, result, table, slos, backends) -> str:
    from dooly.sim.candidates import deploy_flags, deploy_script
    from dooly.sim.search_report import verdict_line
    win = result.winner.candidate
    given = {k for k in ("max_num_batched_tokens", "max_num_seqs", "block_size", "num_blocks",
                         "long_prefill_token_threshold") if getattr(args, k) is not None}
    if getattr(args, "max_model_len_given", False):
        given.add("max_model_len")
    flags = deploy_flags(win, set(win.varied) | given, backends.get(win.env))
    row = table[0]
    band = (f", 90% band {row['goodput_band_lo']:.3g}-{row['goodput_band_hi']:.3g}"
            if row["goodput_band_lo"] is not None else "")
    comments = [f"dooly search winner: {win.label}",
                f"goodput {row['goodput_rps']:.3g} req/s{band} under "
                + ", ".join(f"{s.name} <= {s.limit_ms:g} ms" for s in slos),
                verdict_line(table, slos),
                (f"environment {win.env} ({backends.get(win.env)}) of {args.db}" if args.db and
                 not args.step_model else "step times from a stand-in model, not a DB")
                + f"; workload {args.workload}, {args.num_requests} requests, seed {args.seed}",
                "MODEL=/path/to/weights ./deploy.sh serves a local copy; extra arguments go to vllm serve"]
    return deploy_script(win.model, flags, comments)
