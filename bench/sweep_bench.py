"""What reuse saves in a real sweep: SmolLM2-135M, the same sweep again (nothing to
measure), then Qwen2.5-0.5B into the same DB (only units SmolLM2 lacked), compared
with Qwen2.5-0.5B swept into an empty DB.

    python bench/sweep_bench.py [--engine vllm] [--max-tokens 256 --max-batch 16 --max-context 512] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOL = ROOT / "fixtures/configs/HuggingFaceTB__SmolLM2-135M-Instruct.json"
QWEN = ROOT / "fixtures/configs/Qwen__Qwen2.5-0.5B.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default=None)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-context", type=int, default=512)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    from dooly.analyze import default_engine
    from dooly.profile.grid import GridLimits
    from dooly.profile.sweep import sweep
    engine = args.engine or default_engine()
    lim = GridLimits(args.max_tokens, args.max_batch, args.max_context)
    out: dict = {"engine": engine}
    with tempfile.TemporaryDirectory() as tmp:
        shared, alone = f"{tmp}/shared.db", f"{tmp}/alone.db"
        runs = [("smollm2", SMOL, shared), ("smollm2_again", SMOL, shared),
                ("qwen_after_smollm2", QWEN, shared), ("qwen_alone", QWEN, alone)]
        summaries = {}
        for name, cfg, db in runs:
            s = summaries[name] = sweep([str(cfg)], db, engine, lim=lim)
            out[f"{name}.units_measured"] = len(s.units_measured)
            out[f"{name}.units_reused"] = len(s.units_reused)
            out[f"{name}.points_measured"] = s.points_measured
            out[f"{name}.seconds"] = round(s.seconds, 2)
            print(f"{name:20s} measured {len(s.units_measured):3d} units ({s.points_measured} points), "
                  f"reused {len(s.units_reused):3d}, failed {len(s.units_failed)}; {s.seconds:6.1f} s",
                  flush=True)
    alone_s, after_s = out["qwen_alone.seconds"], out["qwen_after_smollm2.seconds"]
    # saving = the share of Qwen's stand-alone sweep time spent on units SmolLM2 already
    # had (wall-clock differences between the two runs are mostly noise on 2 cores)
    alone = summaries["qwen_alone"].unit_seconds
    reused = set(summaries["qwen_after_smollm2"].units_reused)
    total = sum(alone.values())
    out["qwen_saving_pct"] = round(100 * sum(alone.get(k, 0) for k in reused) / total, 1) if total else 0.0
    out["qwen_units_saving_pct"] = round(100 * out["qwen_after_smollm2.units_reused"] /
                                         max(1, out["qwen_alone.units_measured"]), 1)
    print(f"Qwen2.5-0.5B after SmolLM2: {out['qwen_units_saving_pct']}% of its units reused, "
          f"{out['qwen_saving_pct']}% of its sweep time saved ({after_s} s after SmolLM2, {alone_s} s alone)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
