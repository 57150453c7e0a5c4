"""bench/sweep_agreement.py: two sweeps of the same points compared point by point."""
import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "sweep_agreement", Path(__file__).resolve().parents[1] / "bench" / "sweep_agreement.py")
agree = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(agree)


def test_two_sweeps_are_compared_on_their_common_points_only():
    a = {("u", "e", f"p{i}"): 1.0 for i in range(10)}
    b = {("u", "e", f"p{i}"): (1.02 if i < 8 else 1.2) for i in range(10)}
    b[("u", "e", "only-b")] = 5.0
    fig = agree.compare(a, b)
    assert fig["points"] == 10
    assert fig["spread_median_pct"] == pytest.approx(2.0)
    assert fig["within_5_pct"] == pytest.approx(80.0) and fig["within_10_pct"] == pytest.approx(80.0)
    assert fig["bias_pct"] == pytest.approx(2.0)
    assert fig["total_ratio_pct"] == pytest.approx(100 * (8 * 1.02 + 2 * 1.2) / 10 - 100)


def test_sweeps_with_nothing_in_common_are_not_compared():
    assert agree.compare({("u", "e", "p"): 1.0}, {("v", "e", "p"): 1.0}) is None


def test_the_host_factor_takes_a_uniformly_slower_host_out_of_the_spread():
    a = {("u", "e", f"p{i}"): 1.0 + i for i in range(6)}
    b = {k: 1.1 * v for k, v in a.items()}     # every point 10% slower: the host, not the units
    fig = agree.adjusted(a, b, 1.1)
    assert agree.compare(a, b)["spread_median_pct"] == pytest.approx(10.0)
    assert fig["adjusted_spread_median_pct"] == pytest.approx(0.0, abs=1e-9)
    assert fig["adjusted_bias_pct"] == pytest.approx(0.0, abs=1e-9)
