"""Winner inversion: does DoolySim pick the same better configuration as real vLLM (CPU)
at a low and a high load? Thin entry point for `bench/accuracy_e2e.py --winner`.

    python bench/winner_inversion.py [--winner-model smollm2]
        [--winner-configs 2048x64,256x64] [--winner-rates 1,4] [--winner-requests 60]
        [--winner-metric p90_ttft] [--db out/accuracy.db] [--json PATH]
    python bench/winner_inversion.py --sim-explore --winner-configs 2048x64,512x64,256x64,128x64 \
        --winner-rates 0.5,1,2,4      # simulator only, to choose an inverting pair

Default pair: SmolLM2-135M with max_num_batched_tokens 2048 vs 256 (max_num_seqs 64), 60
requests (splitwise_conv lengths, prompts clipped 32..512, outputs 8..64, Poisson, seed 0) at
1 and 4 req/s; the metric is p90 TTFT. Each configuration is one vLLM child process that serves
both loads in turn. --json writes flat figures ("rate1.same_winner", "rate4.b256s64.real_ms",
"same_winner_all_loads", ...).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_e2e  # noqa: E402


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--sim-explore" not in argv and "--winner" not in argv:
        argv.insert(0, "--winner")
    return accuracy_e2e.main(argv)


if __name__ == "__main__":
    sys.exit(main())
