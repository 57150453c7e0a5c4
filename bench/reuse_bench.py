"""Profiling-cost reduction from dedup over the 12-model benchmark set, per engine.

    python bench/reuse_bench.py [--engines vllm,transformers] [--hardware h100] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAPER_REDUCTION_PCT = 56.4


def model_list(list_file: Path) -> list[Path]:
    names = [ln.strip() for ln in list_file.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    return [list_file.parent.parent / "configs" / n for n in names]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", default=str(ROOT.parent / "shared" / "benchmarks" / "reuse12.txt"))
    ap.add_argument("--engines", default="vllm,transformers")
    ap.add_argument("--hardware", default="h100")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    from dooly.analyze import analyze, reuse_summary
    paths = [str(p) for p in model_list(Path(args.list))]
    out: dict = {}
    for engine in args.engines.split(","):
        t0 = time.perf_counter()
        r = reuse_summary(analyze(paths, engine), args.hardware)
        secs = time.perf_counter() - t0
        out[engine] = {"reduction_pct": r["reduction_pct"], "unique_units": r["unique_units"],
                       "total_units": r["total_units"], "independent_cost_s": r["independent_cost_s"],
                       "dedup_cost_s": r["dedup_cost_s"], "analyze_seconds": round(secs, 2)}
        print(f"{engine:13s} reduction {r['reduction_pct']:5.1f}% (paper: {PAPER_REDUCTION_PCT}%)  "
              f"unique {r['unique_units']} of {r['total_units']} units  "
              f"cost {r['independent_cost_s']:.1f} s -> {r['dedup_cost_s']:.1f} s on {args.hardware}  "
              f"[{len(paths)} models, {secs:.1f} s]", flush=True)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
