"""The same engine step in the two accuracy benches, minutes apart: how far this host moves.

Each protocol run saves the real steps of `bench/accuracy_batch.py` (xN.raw.json) and, ten
to thirty minutes later, of `bench/accuracy_e2e.py` (xNe2e.raw.json), on the same engine,
models and host. Both hold one- and two-sequence decode steps (a weight-streaming step whose
context adds little). Per run and model, this prints the median real time of those steps
in serving over the same in the batch bench: a ratio away from 1.0 is the host between the
two minutes, not a model error, and no prediction made before both runs can be closer to
both than that spread.

    python bench/step_spread.py [SERVING_RAW.json ...] [--json PATH]

Default: every `bench/results/*/x*e2e.raw.json` with its batch run beside it. --json: flat
`b<B>_median_ratio`, `b<B>_p10_ratio`, `b<B>_p90_ratio`, `b<B>_within_10pct_share`, `pairs`.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # runs from a checkout, no install
sys.path.insert(0, str(Path(__file__).resolve().parent))
import flatjson  # noqa: E402
from dooly.cli import OneLineParser  # noqa: E402

SEQS = (1, 2)
MIN_STEPS = 3


def decode_ms(steps: list[dict], seqs: int) -> list[float]:
    """Times of the steps that decode exactly `seqs` sequences (one token each)."""
    return [s["ms"] for s in steps if len(s["batch"]) == seqs and all(q == 1 for q, _ in s["batch"])]


def pair_ratios(serving: dict, batch: dict) -> list[tuple[str, int, float]]:
    """(model, sequences, serving median / batch median) for each model both runs hold."""
    out = []
    for model, saved in serving.items():
        if model not in batch or "runs" not in saved:
            continue
        for seqs in SEQS:
            # each serving run's first load (the low one by default: the engine runs 1-3 sequences)
            sv = [ms for run in saved["runs"] for ms in decode_ms(run["results"][0]["steps"], seqs)]
            bt = [ms for run in batch[model]["runs"] for ms in decode_ms(run["steps"], seqs)]
            if len(sv) >= MIN_STEPS and len(bt) >= MIN_STEPS:
                out.append((model, seqs, statistics.median(sv) / statistics.median(bt)))
    return out


def batch_raw(serving_raw: Path) -> Path:
    return serving_raw.with_name(serving_raw.name.replace("e2e.raw.json", ".raw.json"))


def load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"{path}: cannot read a saved run ({str(err)[:100]})", file=sys.stderr)
        raise SystemExit(2) from None


def summary(rows: list[tuple[str, str, int, float]]) -> dict:
    out: dict = {"pairs": len(rows)}
    for seqs in SEQS:
        r = sorted(x[3] for x in rows if x[2] == seqs)
        if not r:
            continue
        q = statistics.quantiles(r, n=10) if len(r) > 1 else [r[0]] * 9
        out.update({f"b{seqs}_median_ratio": round(statistics.median(r), 3), f"b{seqs}_p10_ratio": round(q[0], 3),
                    f"b{seqs}_p90_ratio": round(q[-1], 3), f"b{seqs}_pairs": len(r),
                    f"b{seqs}_within_10pct_share": round(sum(abs(x - 1) <= 0.10 for x in r) / len(r), 3)})
    return out


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("serving", nargs="*", help="accuracy_e2e raw files (default: every saved protocol run)")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    files = [Path(p) for p in args.serving] or sorted(ROOT.glob("bench/results/*/x*e2e.raw.json"))
    rows = []
    for f in files:
        b = batch_raw(f)
        if not f.is_file() or not b.is_file():
            if args.serving:   # named: both must be there
                print(f"{f if not f.is_file() else b}: no such saved run", file=sys.stderr)
                return 2
            continue
        run = f"{f.parent.name}/{f.name[:-len('e2e.raw.json')]}"
        try:
            rows += [(run, m, s, r) for m, s, r in pair_ratios(load(f), load(b))]
        except (KeyError, TypeError, IndexError, AttributeError) as err:
            print(f"{f}: not a serving run saved beside its batch run {b.name} (field {err})", file=sys.stderr)
            return 2
    for run, model, seqs, r in rows:
        print(f"{run:24s} {model:12s} {seqs} seq  serving / batch {r:5.2f}")
    out = summary(rows)
    for seqs in SEQS:
        if f"b{seqs}_pairs" in out:
            print(f"{seqs}-sequence decode steps, serving over batch bench, {out[f'b{seqs}_pairs']} run-models: "
                  f"median {out[f'b{seqs}_median_ratio']:.2f}, p10-p90 {out[f'b{seqs}_p10_ratio']:.2f}-"
                  f"{out[f'b{seqs}_p90_ratio']:.2f}, within 10% in {100 * out[f'b{seqs}_within_10pct_share']:.0f}%")
    flatjson.write(args.json_path, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
