"""Prediction latency of the batch API after warm-up (a 256-sequence batch).

    python bench/predict_speed.py [--config CONFIG] [--db PATH] [--seqs 256] [--json PATH]

--config defaults to the repository's SmolLM2-135M config. Without --db, the config is
first swept on a small grid (--max-tokens/--max-batch/--max-context) into a temporary DB
and fitted there (`dooly fit`), so the bench runs from a bare checkout. Each prediction is
one decode batch of seqs-1 sequences at random contexts plus one prefill."""
from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dooly.cli import OneLineParser  # noqa: E402

from dooly.sim.metrics import stats  # noqa: E402


def swept_db(config: Path, folder: str, lim) -> str:
    """A DB holding `config`'s units on this host, swept and fitted."""
    from dooly.cli import main as dooly
    from dooly.analyze import analyze
    from dooly.profile.sweep import sweep
    db = f"{folder}/predict_speed.db"
    t0 = time.perf_counter()
    s = sweep(analyze([str(config)]), db, lim=lim)
    if dooly(["fit", "--db", db]) != 0:
        raise SystemExit("dooly fit failed")
    print(f"swept {len(s.units_measured)} units ({s.points_measured} points) into {db} and "
          f"fitted them in {time.perf_counter() - t0:.1f} s", flush=True)
    return db


def time_predictions(p, seqs: int, n: int = 200) -> list[float]:
    """Milliseconds per `p.predict` over n random batches, after 20 warm-up calls."""
    rng = random.Random(0)
    batches = [[(1, rng.randint(16, 2048)) for _ in range(seqs - 1)] + [(rng.randint(16, 512), 0)]
               for _ in range(n)]
    for b in batches[:20]:
        p.predict(b)
    times = []
    for b in batches:
        t = time.perf_counter_ns()
        p.predict(b)
        times.append((time.perf_counter_ns() - t) / 1e6)
    return times


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path,
                    default=ROOT / "fixtures" / "configs" / "HuggingFaceTB__SmolLM2-135M-Instruct.json")
    ap.add_argument("--db", help="a swept DB (default: sweep --config into a temporary one)")
    ap.add_argument("--seqs", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--max-context", type=int, default=256)
    ap.add_argument("--json", type=Path, help="write the figures as one flat JSON object here")
    args = ap.parse_args(argv)
    from dooly.predict import Predictor
    from dooly.profile.grid import GridLimits
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or swept_db(args.config, tmp, GridLimits(args.max_tokens, args.max_batch,
                                                              args.max_context))
        t0 = time.perf_counter()
        p = Predictor.load(str(args.config), db)
        load_s = time.perf_counter() - t0
        s = stats(time_predictions(p, args.seqs))
    res = {"seqs": args.seqs, "load_s": round(load_s, 3), "predict_median_ms": round(s["p50"], 4),
           "predict_p90_ms": round(s["p90"], 4), "predict_p99_ms": round(s["p99"], 4)}
    print(f"{args.seqs}-sequence batch: median {res['predict_median_ms']} ms, p90 "
          f"{res['predict_p90_ms']} ms, p99 {res['predict_p99_ms']} ms per prediction "
          f"(Predictor.load {res['load_s']} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
