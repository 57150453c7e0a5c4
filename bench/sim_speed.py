"""Simulator speed: 10,000 synthetic requests through the vLLM V1 scheduler model with a
linear step-time model. Prints simulated requests per wall-clock second.

    python bench/sim_speed.py [--requests N] [--rate R] [--num-blocks B] [--json PATH]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # runs from a checkout
from dooly.cli import OneLineParser  # noqa: E402

from dooly.sim import LengthDist, SchedulerConfig, WorkloadSpec, build_workload, simulate  # noqa: E402


def step_ms(batch) -> float:
    # Shaped like a 7B model on one GPU: fixed launch cost, per-token GEMM, attention reads.
    tokens = ctx = 0
    for seq in batch:
        tokens += seq.query_len
        ctx += seq.context_len
    return 6.0 + 0.03 * tokens + 0.4 * ctx / 1000.0


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--num-blocks", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    reqs = build_workload(WorkloadSpec(rate=args.rate, num_requests=args.requests,
                                       seed=args.seed, prompt=LengthDist("lognormal", 512, 0.8),
                                       output=LengthDist("lognormal", 128, 0.8)))
    cfg = SchedulerConfig(num_blocks=args.num_blocks)
    t0 = time.perf_counter()
    res = simulate(reqs, step_ms, cfg)
    secs = time.perf_counter() - t0
    out = {"requests": len(reqs), "sim_seconds": round(secs, 4),
           "requests_per_s": round(len(reqs) / secs, 1), "steps": res.num_steps,
           "steps_per_s": round(res.num_steps / secs, 1),
           "output_tokens": int(sum(r.output_len for r in reqs)),
           "preemptions": res.num_preemptions}
    print(f"simulated {out['requests']} requests ({out['steps']} steps, "
          f"{out['output_tokens']} output tokens) in {secs:.2f} s: "
          f"{out['requests_per_s']:,.0f} requests/s, {out['steps_per_s']:,.0f} steps/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
