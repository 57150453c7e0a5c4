"""What reuse saves in a real sweep: model A (default SmolLM2-135M), the same sweep again
(nothing to measure), then model B (default Qwen2.5-0.5B) into the same DB (only units A
lacked), compared with B swept into an empty DB.

    python bench/sweep_bench.py [--first CONFIG] [--second CONFIG] [--engine vllm]
        [--max-tokens 256 --max-batch 16 --max-context 512] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dooly.engines import ENGINES, default_engine  # noqa: E402
from dooly.profile.grid import GridLimits  # noqa: E402
from dooly.analyze import analyze
from dooly.profile.sweep import sweep  # noqa: E402

CONFIGS = ROOT / "fixtures" / "configs"


def run_sweeps(first: Path, second: Path, engine: str, lim: GridLimits, out: dict) -> dict:
    """The four sweeps; their figures go into `out`, their summaries come back by name."""
    summaries = {}
    with tempfile.TemporaryDirectory() as tmp:
        shared, alone = f"{tmp}/shared.db", f"{tmp}/alone.db"
        runs = [("first", first, shared), ("first_again", first, shared),
                ("second_after_first", second, shared), ("second_alone", second, alone)]
        for name, cfg, db in runs:
            s = summaries[name] = sweep(analyze([str(cfg)], engine), db, lim=lim)
            out[f"{name}.units_measured"] = len(s.units_measured)
            out[f"{name}.units_reused"] = len(s.units_reused)
            out[f"{name}.points_measured"] = s.points_measured
            out[f"{name}.seconds"] = round(s.seconds, 2)
            print(f"{name:20s} measured {len(s.units_measured):3d} units ({s.points_measured} points), "
                  f"reused {len(s.units_reused):3d}, failed {len(s.units_failed)}; {s.seconds:6.1f} s",
                  flush=True)
    return summaries


def savings(summaries: dict, out: dict) -> None:
    """The second model's saving: the share of its stand-alone sweep time spent on units
    the first model already had (wall-clock differences between the two runs are mostly
    noise on a shared host), and the share of its units reused."""
    alone = summaries["second_alone"].unit_seconds
    reused = set(summaries["second_after_first"].units_reused)
    total = sum(alone.values())
    out["second_saving_pct"] = round(100 * sum(alone.get(k, 0) for k in reused) / total, 1) if total else 0.0
    out["second_units_saving_pct"] = round(100 * out["second_after_first.units_reused"] /
                                           max(1, out["second_alone.units_measured"]), 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=Path, default=CONFIGS / "HuggingFaceTB__SmolLM2-135M-Instruct.json")
    ap.add_argument("--second", type=Path, default=CONFIGS / "Qwen__Qwen2.5-0.5B.json")
    ap.add_argument("--engine", choices=ENGINES, default=None,
                    help="default: vllm when installed, else transformers")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-context", type=int, default=512)
    ap.add_argument("--json", type=Path, help="write the figures as one flat JSON object here")
    args = ap.parse_args(argv)
    engine = args.engine or default_engine()
    lim = GridLimits(args.max_tokens, args.max_batch, args.max_context)
    out: dict = {"engine": engine, "first": args.first.stem, "second": args.second.stem}
    summaries = run_sweeps(args.first, args.second, engine, lim, out)
    savings(summaries, out)
    print(f"{args.second.stem} after {args.first.stem}: {out['second_units_saving_pct']}% of its "
          f"units reused, {out['second_saving_pct']}% of its sweep time saved "
          f"({out['second_after_first.seconds']} s after, {out['second_alone.seconds']} s alone)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
