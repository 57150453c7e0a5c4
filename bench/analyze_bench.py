"""Seconds per model and peak memory of `analyze`, per engine, in a warm process and as a
user runs the CLI (one fresh process per model: cold, then served from the capture cache).

    python bench/analyze_bench.py [--engine vllm|transformers] [--configs DIR] [--limit N]
                                  [--cli N] [--json PATH]

Each config in --configs (default: the repository's fixtures/configs) is analysed on its
own, as `dooly analyze CONFIG` does (dooly.analyze.analyze: capture, labels, the perturbed
capture that names config fields, regions, units). Importing the engine is timed
separately; the first model also pays one-time tracing warm-up, so the warm figure is the
median over the remaining models. Peak memory is the process's peak RSS after all models
(an upper bound for each). The warm-process figures never use the capture cache.
--cli N: the first N configs each run as `dooly analyze CONFIG --quiet` in a fresh process
twice, with an empty capture cache ($XDG_CACHE_HOME in a temporary folder) and then with
the one the first run left: cold and cached seconds, imports included, and the peak RSS
of those processes."""
from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dooly.cli import OneLineParser  # noqa: E402

from dooly.engines import ENGINES, default_engine, engine_version  # noqa: E402


def time_models(paths: list[Path], engine: str) -> tuple[dict, dict]:
    """Seconds per model, and the error of each model that failed."""
    from dooly.analyze import analyze
    times, failed = {}, {}
    for p in paths:
        t = time.perf_counter()
        try:
            analyze([str(p)], engine, use_cache=False)
            times[p.stem] = time.perf_counter() - t
            print(f"{p.stem:55s} {times[p.stem]:6.2f} s", flush=True)
        except Exception as err:  # report and go on: the bench covers every config
            failed[p.stem] = f"{type(err).__name__}: {str(err)[:120]}"
            print(f"{p.stem:55s} FAILED {failed[p.stem]}", flush=True)
    return times, failed


def time_cli(paths: list[Path], engine: str) -> dict:
    """Cold and cached seconds of `dooly analyze CONFIG` in a fresh process, per model."""
    import os
    import subprocess
    import tempfile
    out: dict = {"cold": [], "cached": []}
    for p in paths:
        with tempfile.TemporaryDirectory() as cache_home:
            env = dict(os.environ, XDG_CACHE_HOME=cache_home)
            for kind in ("cold", "cached"):
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "dooly.cli", "analyze", str(p), "--quiet",
                                "--engine", engine], env=env, cwd=ROOT, check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                out[kind].append(time.perf_counter() - t)
        print(f"{p.stem:55s} CLI cold {out['cold'][-1]:6.2f} s, cached {out['cached'][-1]:5.2f} s", flush=True)
    return {"cli_models": len(paths),
            "cli_cold_median_s": round(statistics.median(out["cold"]), 2),
            "cli_cached_median_s": round(statistics.median(out["cached"]), 2),
            "cli_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=ENGINES, default=None,
                    help="default: vllm when installed, else transformers")
    ap.add_argument("--configs", type=Path, default=ROOT / "fixtures" / "configs")
    ap.add_argument("--limit", type=int, default=0, help="only the first N configs")
    ap.add_argument("--cli", type=int, default=0, metavar="N",
                    help="also time the first N configs as the CLI runs them, cold and cached")
    ap.add_argument("--json", type=Path, help="write the figures as one flat JSON object here")
    args = ap.parse_args(argv)
    engine = args.engine or default_engine()
    t0 = time.perf_counter()
    engine_version(engine)  # imports the engine
    import_s = time.perf_counter() - t0
    paths = sorted(args.configs.glob("*.json"))[: args.limit or None]
    times, failed = time_models(paths, engine)
    warm = list(times.values())[1:] or list(times.values())
    res = {"engine": engine, "models": len(paths), "failed": len(failed),
           "import_s": round(import_s, 2),
           "first_model_s": round(next(iter(times.values()), 0.0), 2),
           "warm_median_s": round(statistics.median(warm), 2) if warm else 0.0,
           "warm_mean_s": round(statistics.fmean(warm), 2) if warm else 0.0,
           "warm_max_s": round(max(warm), 2) if warm else 0.0,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(f"engine {engine}: imports {res['import_s']} s, first model {res['first_model_s']} s, "
          f"warm median {res['warm_median_s']} s / mean {res['warm_mean_s']} s / max {res['warm_max_s']} s "
          f"per model, "
          f"peak RSS {res['peak_rss_mb']} MB, {len(failed)} failed of {len(paths)}")
    if args.cli:
        res.update(time_cli(paths[: args.cli], engine))
        print(f"CLI, one fresh process per model: cold median {res['cli_cold_median_s']} s, cached "
              f"median {res['cli_cached_median_s']} s, peak RSS {res['cli_peak_rss_mb']} MB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
