"""How much of the last-level cache a cold timing must overflow. A cold sweep rotates a
unit's weight through copies that together span `dooly.env.SPAN_CACHES` last-level caches,
so that no timed call finds its weight still cached, as none does in a real forward (every
other layer's weights are read in between). This bench times bf16 `linear` units with the
sweep's own runners and timer while the rotation spans 1, 2, 4 or 8 caches, interleaved
over trials so that the host's drift touches every span alike.

    python bench/cold_span.py [--shapes 16384x2048,2048x8192,3072x2048] [--tokens 1,2,8]
                              [--spans 2,4,8] [--trials 5] [--engine vllm] [--json PATH]

A shape is NxK (the weight [N, K], Llama-3.2-1B's gate_up, down_proj and QKV by default).
Prints per shape and token count the median ms at each span and its ratio to the widest;
--json: flat `<NxK>.T<tokens>.span<S>_ms`.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import flatjson  # noqa: E402
from dooly.cli import OneLineParser  # noqa: E402


def time_spans(units: dict, tokens: list[int], spans: list[int], trials: int, engine: str) -> dict:
    """{(shape, T, span): median ms over trials}: each trial times every span in turn."""
    import torch
    import dooly.env as env_mod
    from dooly.engines import environment
    from dooly.profile.grid import GridLimits
    from dooly.profile.sweep_units import Runners
    from dooly.profile.timing import time_cpu
    env = environment(engine, "cpu", None)
    torch.set_num_threads(env.threads)
    wide = env_mod.SPAN_CACHES["cpu"]
    got: dict = {}
    try:
        for _ in range(trials):
            for span in spans:
                env_mod.SPAN_CACHES["cpu"] = span
                runners = Runners(env, GridLimits())
                for shape, unit in units.items():
                    for t in tokens:
                        got.setdefault((shape, t, span), []).append(time_cpu(runners.prepare(unit, {"T": t})).median_ms)
                del runners
    finally:
        env_mod.SPAN_CACHES["cpu"] = wide
    return {key: statistics.median(v) for key, v in got.items()}


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="16384x2048,2048x8192,3072x2048", help="NxK,...")
    ap.add_argument("--tokens", default="1,2,8")
    ap.add_argument("--spans", default="2,4,8", help="last-level caches the rotation spans")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--engine", default="vllm", choices=("vllm", "transformers"))
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args(argv)
    try:
        shapes = {s: tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",")}
        tokens = [int(t) for t in a.tokens.split(",")]
        spans = sorted(int(s) for s in a.spans.split(","))
        if any(len(v) != 2 or min(v) < 1 for v in shapes.values()) or min(tokens + spans) < 1:
            raise ValueError
    except ValueError:
        print("cold_span: --shapes NxK,..., --tokens and --spans positive integers", file=sys.stderr)
        return 2
    from dooly.env import cache_bytes
    print(f"last-level cache {cache_bytes('cpu') / 2**20:.0f} MiB; median ms per call over {a.trials} trials")
    from dooly.unit import linear_unit
    units = {s: linear_unit(k, n, "bfloat16") for s, (n, k) in shapes.items()}
    ms = time_spans(units, tokens, spans, a.trials, a.engine)
    result = {"llc_mib": cache_bytes("cpu") / 2**20}
    for shape in shapes:
        for t in tokens:
            ref = ms[(shape, t, spans[-1])]
            cells = "  ".join(f"span {s}: {ms[(shape, t, s)]:.3f} ({ms[(shape, t, s)] / ref:.2f})" for s in spans)
            print(f"{shape:>12} T={t:<4} {cells}")
            result.update({f"{shape}.T{t}.span{s}_ms": ms[(shape, t, s)] for s in spans})
    flatjson.write(a.json_path, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
