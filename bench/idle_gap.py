"""Does a GEMM run slower when the process idled just before it? A sweep times a unit's
calls back to back; inside the engine the Python between kernels (the scheduler, input
preparation, each attention call) leaves the OpenMP threads idle, and on a VM a vCPU that
halts may come back to a slower core. Times a bf16 `linear` of each shape back to back,
after a busy gap on the calling thread (its OpenMP workers idle), and after a sleep (the
whole process idle), rotating weight copies as a cold sweep does.

    python bench/idle_gap.py [--shapes 1x576x1536,16x576x1536,128x576x1536,1x2048x8192]
                             [--gaps-us 50,300,2000] [--calls 200] [--json PATH]

Prints per shape the median ms per call in each mode; --json: flat `<MxKxN>.<mode>_ms`.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # runs from a checkout, no install
sys.path.insert(0, str(Path(__file__).resolve().parent))
import flatjson  # noqa: E402
from dooly.cli import OneLineParser  # noqa: E402

COPIES = 32


def _spin(us: float) -> None:
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


def median_ms(call, gap, calls: int) -> float:
    """Median ms of `call` over `calls`, each after `gap` (None, ("busy", us) or ("sleep", us))."""
    times = []
    for i in range(calls):
        if gap is not None:
            _spin(gap[1]) if gap[0] == "busy" else time.sleep(gap[1] * 1e-6)
        t = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def shape_row(m: int, k: int, n: int, gaps_us: list[float], calls: int) -> dict[str, float]:
    import torch
    x = torch.randn(m, k, dtype=torch.bfloat16)                                # [T, K]
    ws = [torch.randn(n, k, dtype=torch.bfloat16) for _ in range(COPIES)]      # [N, K] each
    call = lambda i: torch.nn.functional.linear(x, ws[i % COPIES])  # noqa: E731
    median_ms(call, None, 20)   # warm-up: the kernel's first calls pick and pack
    row = {"back_to_back_ms": median_ms(call, None, calls)}
    for us in gaps_us:
        row[f"busy{us:g}us_ms"] = median_ms(call, ("busy", us), calls)
        row[f"sleep{us:g}us_ms"] = median_ms(call, ("sleep", us), calls)
    return row


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1x576x1536,16x576x1536,128x576x1536,1x2048x8192", help="MxKxN,...")
    ap.add_argument("--gaps-us", default="50,300,2000")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        gaps = [float(g) for g in args.gaps_us.split(",")]
        if any(len(s) != 3 or min(s) < 1 for s in shapes) or any(g < 0 for g in gaps) or args.calls < 1:
            raise ValueError
    except ValueError:
        print("--shapes / --gaps-us / --calls: expected MxKxN,... with positive sizes, gaps >= 0, "
              "calls >= 1", file=sys.stderr)
        return 2
    out: dict = {}
    for m, k, n in shapes:
        row = shape_row(m, k, n, gaps, args.calls)
        print(f"{m}x{k}x{n}: " + " | ".join(f"{key[:-3]} {v:.3f}" for key, v in row.items()) + " ms", flush=True)
        out.update({f"{m}x{k}x{n}.{key}": round(v, 4) for key, v in row.items()})
    flatjson.write(args.json_path, out, 4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
