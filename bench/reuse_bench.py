"""Profiling-cost reduction from dedup over the 12-model benchmark set, per engine.

    python bench/reuse_bench.py [--list FILE] [--configs DIR] [--engines vllm,transformers]
                                [--hardware h100] [--json PATH]

--list names one config file per line (default: fixtures/benchmarks/reuse12.txt, the
public 12-model set); names are looked up in --configs (default: fixtures/configs)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dooly.analyze import analyze, reuse_summary  # noqa: E402

PAPER_REDUCTION_PCT = 56.4
FIGURES = ("reduction_pct", "unique_units", "total_units", "independent_cost_s", "dedup_cost_s")


def model_list(list_file: Path, configs: Path) -> list[Path]:
    names = [ln.strip() for ln in list_file.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    return [configs / n for n in names]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", type=Path, default=ROOT / "fixtures" / "benchmarks" / "reuse12.txt")
    ap.add_argument("--configs", type=Path, default=ROOT / "fixtures" / "configs")
    ap.add_argument("--engines", default="vllm,transformers")
    ap.add_argument("--hardware", default="h100")
    ap.add_argument("--json", type=Path, help="write the figures as one flat JSON object here")
    args = ap.parse_args(argv)
    paths = [str(p) for p in model_list(args.list, args.configs)]
    out: dict = {"models": len(paths), "hardware": args.hardware}
    for engine in args.engines.split(","):
        t0 = time.perf_counter()
        r = reuse_summary(analyze(paths, engine), args.hardware)
        secs = time.perf_counter() - t0
        out.update({f"{engine}.{k}": r[k] for k in FIGURES})
        out[f"{engine}.analyze_seconds"] = round(secs, 2)
        print(f"{engine:13s} reduction {r['reduction_pct']:5.1f}% (paper: {PAPER_REDUCTION_PCT}%)  "
              f"unique {r['unique_units']} of {r['total_units']} units  "
              f"cost {r['independent_cost_s']:.1f} s -> {r['dedup_cost_s']:.1f} s on {args.hardware}  "
              f"[{len(paths)} models, {secs:.1f} s]", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
