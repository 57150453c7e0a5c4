"""Search speed: `dooly search` over N candidates (max_num_batched_tokens x max_num_seqs),
P rate probes each, no error bands, in worker processes. Prints the seconds the search
took (target: under 60 s for 100 candidates x 10 probes).

    python bench/search_speed.py [--candidates 100] [--probes 10] [--requests 200]
        [--jobs N] [--db PATH --config CONFIG.json] [--json PATH]

Without --db, step times come from a linear model shaped like a 7B model on one GPU
(bench/sim_speed.py's) and the SLOs are ttft_p90=1s,tpot_p90=40ms over 0.05:100 req/s;
with --db, from the predictor of CONFIG in that DB, under --slo over --rate-range. Besides
the wall time it prints the CPU time of this process and its workers: on a host other
jobs share, CPU seconds / workers is what the wall time would be with the cores free."""
from __future__ import annotations

import json
import os
import resource
import time
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # a checkout runs its benches without an install
from dooly.cli import OneLineParser  # noqa: E402

from dooly.search import DbSource, SearchSpec, search  # noqa: E402
from dooly.sim.steps import LinearSource  # noqa: E402
from dooly.sim.candidates import make_candidates  # noqa: E402
from dooly.sim.slo import parse_slos  # noqa: E402
from dooly.sim.workload import LengthDist, WorkloadSpec, build_workload  # noqa: E402

SMOL = ROOT / "fixtures" / "configs" / "HuggingFaceTB__SmolLM2-135M-Instruct.json"
TOKENS = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
SEQS = (4, 8, 16, 24, 32, 48, 64, 96, 128, 256)


def grid(n: int) -> dict:
    """About n candidates: the first values of each knob, as square as the lists allow."""
    side = max(1, round(n ** 0.5))
    return {"max_num_batched_tokens": TOKENS[:side], "max_num_seqs": SEQS[:max(1, -(-n // side))]}


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its finished children (the workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--db", help="latency DB: step times from its predictor")
    ap.add_argument("--config", default=str(SMOL))
    ap.add_argument("--slo", default=None, help="default: ttft_p90=1s,tpot_p90=40ms (stand-in), "
                    "ttft_p90=20s,tpot_p90=1s (--db)")
    ap.add_argument("--rate-range", default=None, help="LO:HI; default 0.05:100 (stand-in), 0.01:5 (--db)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    slo = args.slo or ("ttft_p90=20s,tpot_p90=1s" if args.db else "ttft_p90=1s,tpot_p90=40ms")
    lo, hi = map(float, (args.rate_range or ("0.01:5" if args.db else "0.05:100")).split(":"))
    reqs = build_workload(WorkloadSpec(rate=1.0, num_requests=args.requests, seed=args.seed,
                                       prompt=LengthDist("lognormal", 512, 0.8),
                                       output=LengthDist("lognormal", 128, 0.8)))
    cands = make_candidates([(args.config, "bench/model")], grid(args.candidates), {})
    env = None
    if args.db:
        from dooly.db import Store
        from dooly.db.envs import choose_environment
        with Store.open(args.db, create=False) as store:
            env = choose_environment(store, None, None, args.db).key
        cands = [c.__class__(c.config, c.model, env, c.settings, c.varied) for c in cands]
    source = DbSource(args.db) if args.db else LinearSource(6.0, 0.03, 0.4)
    spec = SearchSpec(tuple(reqs), parse_slos(slo), lo, hi, args.probes, draws=0)
    t0, cpu0 = time.perf_counter(), _cpu_s()
    result = search(source, cands, spec, jobs=args.jobs)
    secs, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    probes = [p for r in result.ranked for p in r.goodput.probes]
    out = {"candidates": len(cands), "probes": len(probes), "cut_probes": sum(p.cut for p in probes),
           "requests_per_probe": len(reqs), "jobs": args.jobs, "seconds": round(secs, 2),
           "cpu_seconds": round(cpu, 2), "cpu_seconds_per_job": round(cpu / args.jobs, 2),
           "probes_per_s": round(len(probes) / secs, 2), "step_model": "db" if args.db else "linear",
           "winner": result.winner.candidate.label, "winner_goodput_rps": round(result.winner.goodput.rate, 4),
           "target_s": 60.0, "within_target": secs < 60.0}
    print(f"searched {out['candidates']} candidates, {out['probes']} probes ({out['cut_probes']} cut "
          f"once an SLO was sure to be missed) of {len(reqs)} requests each, {args.jobs} workers, "
          f"{out['step_model']} step model: {secs:.1f} s ({out['probes_per_s']:.1f} probes/s), "
          f"{cpu:.1f} CPU s ({cpu / args.jobs:.1f} per worker); target < 60 s; winner "
          f"{out['winner']} at {out['winner_goodput_rps']} req/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
