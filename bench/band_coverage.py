"""How often the simulator's 90% bands hold the real serving percentiles, pooled over every
saved protocol run. One run's 24 percentiles (four models, two loads, TTFT and TPOT at
p50/p90/p99) say little about a 90% band; eleven runs' 528 do. Each run is replayed
(`bench/accuracy_e2e.py --real-from`: nothing is measured) on a copy of its DB, so the
bands are the repository's code on that run's sweep, calibrations and real runs.

    python bench/band_coverage.py [--runs bench/results/2026-12-04/x4,...] [--draws 40]
                                  [--no-recheck-host] [--json PATH]

A run is a path prefix P: P.db is its DB, Pe2e.raw.json its saved real serving runs; the
models, loads and request count are read from the raw file. Default: the eleven protocol runs
of bench/results (x4, x6-x15). Prints per run and pooled the share of real percentiles
inside their band and the mean band width (as % of the band's middle), and pooled per
metric and load; --json: flat `band_coverage_all_pct`, `band_width_pct`,
`min_run_band_coverage_pct`, `<metric>.<load>.band_coverage_pct`, `<run>.*`.
"""
from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runs from a checkout, no install
sys.path.insert(0, str(Path(__file__).resolve().parent))
import flatjson  # noqa: E402
from dooly.cli import OneLineParser  # noqa: E402
from accuracy_batch import LIMITS, ROOT  # noqa: E402
from accuracy_e2e import serving  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEFAULT_RUNS = ["2026-12-04/x4", "2026-12-04/x6", "2026-12-04/x7", "2026-12-04/x8", "2026-12-05/x9",
                "2026-12-05/x10", "2026-12-05/x11", "2026-12-05b/x12", "2026-12-06/x13", "2026-12-06/x14",
                "2026-12-06b/x15"]
IN_BAND = re.compile(r"^(?P<model>.+)\.(?P<load>low|high)\.(?P<metric>ttft|tpot)_p\d+_in_band$")


class BadRun(Exception):
    """A run this bench cannot replay: one line naming the file and field."""


def read_raw(path: Path) -> dict:
    """A saved e2e raw file, checked for the fields `replay_args` reads."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadRun(f"{path}: not a JSON raw file ({e.__class__.__name__})") from None
    if not isinstance(raw, dict) or not raw:
        raise BadRun(f"{path}: expected an object of models")
    for name, entry in raw.items():
        key = entry.get("key") if isinstance(entry, dict) else None
        loads = key.get("loads") if isinstance(key, dict) else None
        if not isinstance(loads, dict) or not loads or not all(isinstance(v, list) for v in loads.values()):
            raise BadRun(f"{path}: field {name}.key.loads missing or not lists of requests")
        if "serving" not in key or not isinstance(entry.get("runs"), list):
            raise BadRun(f"{path}: field {name}.key.serving or {name}.runs missing")
    return raw


def replay_args(raw: dict) -> list[str]:
    """accuracy_e2e's flags that reproduce the saved run's workload."""
    models = list(raw)
    key = raw[models[0]]["key"]
    loads = list(key["loads"])
    args = ["--models", ",".join(models), "--loads", ",".join(loads),
            "--num-requests", str(len(key["loads"][loads[0]])), "--real-runs", str(len(raw[models[0]]["runs"]))]
    return args + (["--quick"] if key["serving"] == serving(LIMITS["quick"]) else [])


def raw_path(prefix: Path) -> Path:
    return prefix.parent / f"{prefix.name}e2e.raw.json"


def replay(prefix: Path, raw: dict, workdir: Path, draws: int, recheck: bool) -> dict:
    """The replayed run's flat JSON (accuracy_e2e's keys)."""
    db = workdir / f"{prefix.name}.db"
    shutil.copyfile(prefix.with_suffix(".db"), db)   # a replay may record what it fits
    out = workdir / f"{prefix.name}.json"
    cmd = [sys.executable, str(ROOT / "bench" / "accuracy_e2e.py"), *replay_args(raw),
           "--db", str(db), "--json", str(out), "--raw", str(workdir / f"{prefix.name}.raw.json"),
           "--real-from", str(raw_path(prefix)), "--draws", str(draws)] + (["--recheck-host"] if recheck else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise BadRun(f"replay of {prefix} failed: {last}")
    db.unlink()
    return json.loads(out.read_text())


def pool(runs: dict[str, dict]) -> dict:
    """Pooled and per-run coverage and width from the replays' flat keys."""
    result, every, by_cell, widths = {}, [], {}, []
    for name, fig in runs.items():
        inside = [(m, v) for k, v in fig.items() if (m := IN_BAND.match(k))]
        every += [v for _, v in inside]
        for m, v in inside:
            by_cell.setdefault(f"{m['metric']}.{m['load']}", []).append(v)
        result[f"{name}.band_coverage_pct"] = 100.0 * sum(v for _, v in inside) / len(inside)
        result[f"{name}.band_width_pct"] = fig["band_width_pct"]
        result[f"{name}.ttft_mape_pct"], result[f"{name}.tpot_mape_pct"] = fig["ttft_mape_pct"], fig["tpot_mape_pct"]
        widths.append(fig["band_width_pct"])
    result["band_coverage_all_pct"] = 100.0 * sum(every) / len(every)
    result["percentiles"] = len(every)
    result["band_width_pct"] = statistics.fmean(widths)
    result["min_run_band_coverage_pct"] = min(result[f"{n}.band_coverage_pct"] for n in runs)
    for cell, vs in sorted(by_cell.items()):
        result[f"{cell}.band_coverage_pct"] = 100.0 * sum(vs) / len(vs)
    return result


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", help="comma-separated path prefixes (default: the eleven saved protocol runs)")
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--no-recheck-host", action="store_true", help="replay without the saved host drift")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    prefixes = [Path(p) for p in args.runs.split(",")] if args.runs else [RESULTS / r for r in DEFAULT_RUNS]
    missing = [f for p in prefixes for f in (p.with_suffix(".db"), raw_path(p)) if not f.is_file()]
    if missing or args.draws < 2:
        print(f"band_coverage: --runs: no such file {missing[0]}" if missing
              else "band_coverage: --draws must be at least 2", file=sys.stderr)
        return 2
    runs = {}
    try:
        raws = {p: read_raw(raw_path(p)) for p in prefixes}   # every file checked before any replay
        with tempfile.TemporaryDirectory() as tmp:
            for p in prefixes:
                runs[p.name] = fig = replay(p, raws[p], Path(tmp), args.draws, not args.no_recheck_host)
                print(f"{p.name:5s} coverage {fig['band_coverage_all_pct']:5.1f}%  width {fig['band_width_pct']:5.1f}%  "
                      f"(TTFT {fig['ttft_mape_pct']:.1f}%, TPOT {fig['tpot_mape_pct']:.1f}% at worst)", flush=True)
    except BadRun as e:
        print(f"band_coverage: {e}", file=sys.stderr)
        return 2
    result = pool(runs)
    print(f"pooled over {len(runs)} runs: {result['band_coverage_all_pct']:.1f}% of {result['percentiles']} real "
          f"percentiles inside their 90% band (target >= 80%, and under 100%), mean width "
          f"{result['band_width_pct']:.1f}%; worst run {result['min_run_band_coverage_pct']:.0f}%")
    print("  " + ", ".join(f"{c} {result[f'{c}.band_coverage_pct']:.0f}%"
                           for c in ("ttft.low", "tpot.low", "ttft.high", "tpot.high")
                           if f"{c}.band_coverage_pct" in result))
    flatjson.write(args.json_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
