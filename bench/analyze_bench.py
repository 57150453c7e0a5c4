"""Seconds per model and peak memory of `analyze`, per engine, in a warm process.

    python bench/analyze_bench.py [--engine vllm|transformers] [--configs DIR] [--json PATH]

Imports are timed separately; the first model of each engine also pays one-time
tracing warm-up, so the warm figure is the median over the remaining models. Peak
memory is the process's peak RSS after all models (an upper bound for each)."""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--configs", default=str(ROOT.parent / "shared" / "configs"))
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    from dooly.analyze import analyze_config
    from dooly.config import load_config
    from dooly.graph.regions import RegionRegistry
    if args.engine == "vllm":
        from dooly.engines.vllm_capture import vllm_env
        vllm_env()
        import vllm  # noqa: F401
    else:
        import transformers  # noqa: F401
    import_s = time.perf_counter() - t0
    paths = sorted(Path(args.configs).glob("*.json"))[: args.limit or None]
    times, failed = {}, {}
    for p in paths:
        t = time.perf_counter()
        try:
            analyze_config(load_config(p), args.engine, RegionRegistry())
            times[p.stem] = time.perf_counter() - t
            print(f"{p.stem:55s} {times[p.stem]:6.2f} s", flush=True)
        except Exception as err:  # report and go on: the bench covers every config
            failed[p.stem] = f"{type(err).__name__}: {str(err)[:120]}"
            print(f"{p.stem:55s} FAILED {failed[p.stem]}", flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    warm = list(times.values())[1:] or list(times.values())
    res = {"engine": args.engine, "models": len(paths), "failed": len(failed),
           "import_s": round(import_s, 2),
           "first_model_s": round(next(iter(times.values()), 0.0), 2),
           "warm_median_s": round(statistics.median(warm), 2) if warm else 0.0,
           "warm_max_s": round(max(warm), 2) if warm else 0.0, "peak_rss_mb": round(peak_mb)}
    print(f"engine {args.engine}: imports {res['import_s']} s, first model {res['first_model_s']} s, "
          f"warm median {res['warm_median_s']} s / max {res['warm_max_s']} s per model, "
          f"peak RSS {res['peak_rss_mb']} MB, {len(failed)} failed of {len(paths)}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(res))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
