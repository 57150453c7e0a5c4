"""Prediction latency of the batch API after warm-up (a 256-sequence batch).

    python bench/predict_speed.py --config CONFIG --db PATH [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--seqs", type=int, default=256)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    from dooly.predict import Predictor
    t0 = time.perf_counter()
    p = Predictor.load(args.config, args.db)
    load_s = time.perf_counter() - t0
    rng = random.Random(0)
    batches = [[(1, rng.randint(16, 2048)) for _ in range(args.seqs - 1)] + [(rng.randint(16, 512), 0)]
               for _ in range(200)]
    for b in batches[:20]:
        p.predict(b)
    times = []
    for b in batches:
        t = time.perf_counter_ns()
        p.predict(b)
        times.append((time.perf_counter_ns() - t) / 1e6)
    res = {"seqs": args.seqs, "load_s": round(load_s, 2), "predict_median_ms": round(statistics.median(times), 4),
           "predict_p90_ms": round(sorted(times)[int(0.9 * len(times))], 4)}
    print(f"{args.seqs}-sequence batch: median {res['predict_median_ms']} ms, p90 {res['predict_p90_ms']} ms "
          f"per prediction (load + fit {res['load_s']} s)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
