"""Smoke test of bench/accuracy_batch.py's step classification and MAPE (no vLLM run)."""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "accuracy_batch", Path(__file__).resolve().parents[1] / "bench" / "accuracy_batch.py")
ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ab)


def test_keep_classifies_steps():
    assert ab.keep("prefill", [(128, 0), (64, 0)])
    assert not ab.keep("prefill", [(128, 0), (1, 130)])
    assert ab.keep("decode", [(1, 128)] * 4)
    assert not ab.keep("decode", [(1, 128), (16, 0)])
    assert ab.keep("mixed", [(256, 512), (1, 300)])
    assert not ab.keep("mixed", [(256, 0)])


def test_mape():
    assert ab.mape([]) is None
    assert abs(ab.mape([{"ms": 10.0, "pred_ms": 11.0}, {"ms": 20.0, "pred_ms": 18.0}]) - 10.0) < 1e-9


def test_help_runs():
    import pytest
    with pytest.raises(SystemExit) as e:
        ab.main(["--help"])
    assert e.value.code == 0
