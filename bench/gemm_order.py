"""Whether a decode step's GEMMs run as fast in forward order as timed alone. The sweep times
each GEMM unit alone, rotating its weight through copies that span several last-level caches
(`dooly.env.SPAN_CACHES`); a real forward runs every layer's QKV, output, gate/up and down
projections in turn, each over its own weights. This bench times both on this host, through
the engine's GEMM (vLLM's CPU dispatch), interleaved over trials so that the host's drift
touches both alike:

    python bench/gemm_order.py [--config fixtures/configs/meta-llama__Llama-3.2-1B-Instruct.json]
                               [--layers N] [--tokens 1,8] [--trials 3] [--json PATH]

A decoder config gives the four weights (bf16); --layers defaults to the model's. Prints per
weight and token count the median ms per call alone and in forward order, and their ratio;
--json: flat `<name>.T<tokens>.{alone,forward}_ms`.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
import flatjson  # noqa: E402
from dooly.cli import OneLineParser  # noqa: E402

DEFAULT_CONFIG = ROOT / "fixtures" / "configs" / "meta-llama__Llama-3.2-1B-Instruct.json"
ORDER = ("qkv", "o", "gate_up", "down")


def layer_weights(raw: dict, path: str) -> dict[str, tuple[int, int]]:
    """name -> (K, N) of one decoder layer's projections (a gated MLP), from the config's
    dims as the Vidur exporter reads them (a missing one: DoolyInputError naming it)."""
    from dooly.interop.vidur_ops import model_dims
    d = model_dims(raw, path)
    q, kv = d.n_head * d.head_dim, d.n_kv_head * d.head_dim
    return {"qkv": (d.n_embd, q + 2 * kv), "o": (q, d.n_embd), "gate_up": (d.n_embd, 2 * d.n_expanded_embd),
            "down": (d.n_expanded_embd, d.n_embd)}


def forward_order(engine: str, shapes: dict, layers: int, t: int, calls: int) -> dict[str, float]:
    """Median ms per call of each weight, every layer's four GEMMs run in turn over its own
    weights, `calls` times through the whole stack after one warm pass."""
    import torch
    from dooly.engines import gemm_call
    stack = [{n: gemm_call(engine, "cpu", torch.randn(t, k, dtype=torch.bfloat16),
                           torch.randn(nn, k, dtype=torch.bfloat16), None) for n, (k, nn) in shapes.items()}
             for _ in range(layers)]
    got: dict[str, list[float]] = {n: [] for n in shapes}
    for rep in range(calls + 1):
        for layer in stack:
            for n in ORDER:
                t0 = time.perf_counter_ns()
                layer[n]()
                if rep:
                    got[n].append((time.perf_counter_ns() - t0) / 1e6)
    return {n: statistics.median(v) for n, v in got.items()}


def alone(engine: str, shapes: dict, t: int) -> dict[str, float]:
    """Median ms per call of each weight as the sweep times it (its runner, cold rotation)."""
    from dooly.engines import environment
    from dooly.profile.grid import GridLimits
    from dooly.profile.sweep_units import Runners
    from dooly.profile.timing import time_cpu
    from dooly.unit import linear_unit
    runners = Runners(environment(engine, "cpu", None), GridLimits())
    return {n: time_cpu(runners.prepare(linear_unit(k, nn, "bfloat16"), {"T": t})).median_ms
            for n, (k, nn) in shapes.items()}


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--layers", type=int, help="decoder layers in the stack (default: the model's)")
    ap.add_argument("--tokens", default="1,8")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--engine", default="vllm", choices=("vllm", "transformers"))
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args(argv)
    from dooly.config import load_config
    from dooly.errors import DoolyInputError
    try:
        raw = load_config(str(a.config)).raw
        shapes = layer_weights(raw, str(a.config))
        tokens = [int(t) for t in a.tokens.split(",")]
    except DoolyInputError as e:
        print(e, file=sys.stderr)
        return 2
    except ValueError:
        print(f"gemm_order: --tokens {a.tokens!r}: expected positive integers", file=sys.stderr)
        return 2
    layers = a.layers if a.layers is not None else int(raw.get("num_hidden_layers") or 1)
    if min(tokens) < 1 or layers < 1 or a.trials < 1:
        print("gemm_order: --tokens, --layers and --trials must be positive", file=sys.stderr)
        return 2
    import torch
    from dooly.engines import environment
    torch.set_num_threads(environment(a.engine, "cpu", None).threads)
    got: dict = {}
    for _ in range(a.trials):
        for t in tokens:
            for kind, ms in (("alone", alone(a.engine, shapes, t)),
                             ("forward", forward_order(a.engine, shapes, layers, t, 5))):
                for n, v in ms.items():
                    got.setdefault((n, t, kind), []).append(v)
    print(f"{a.config.name}: {layers} layers; median ms per call over {a.trials} trials")
    out: dict = {"layers": layers}
    for t in tokens:
        for n, (k, nn) in shapes.items():
            al, fw = (statistics.median(got[(n, t, kind)]) for kind in ("alone", "forward"))
            print(f"  T={t:<3} {n:8s} {k:6d} x {nn:6d} ({2 * k * nn / 2**20:5.1f} MiB)  alone {al:7.3f}  "
                  f"forward {fw:7.3f}  forward/alone {fw / al:5.2f}")
            out.update({f"{n}.T{t}.alone_ms": al, f"{n}.T{t}.forward_ms": fw})
    flatjson.write(a.json_path, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
