"""Adaptive grids: coarse first, refined where the line between neighbours misses the point
between them by more than the tolerance; a pure function of the measurements."""
from __future__ import annotations

import numpy as np
import pytest

from dooly.profile.checkpoints import full_todo, one_axis
from dooly.profile.grid import adaptive_points, adaptive_todo, octave_grid

GRID = [{"T": t} for t in octave_grid(1, 2048)]


def chosen(fn, tol=3.0) -> list[int]:
    return sorted(GRID[i]["T"] for i in adaptive_points(GRID, fn, tol))


def interp_error(fn, ts) -> float:
    xs = np.array([p["T"] for p in GRID], float)
    ys = np.array([fn(p) for p in GRID])
    pred = np.interp(xs, ts, [fn({"T": t}) for t in ts])
    return float(np.max(np.abs(pred - ys) / ys) * 100)


def test_a_straight_line_needs_the_coarse_grid_and_one_check_per_span():
    line = lambda p: 0.05 + 0.001 * p["T"]  # noqa: E731
    ts = chosen(line)
    assert ts[0] == 1 and ts[-1] == 2048 and len(ts) < len(GRID) * 0.6
    assert interp_error(line, ts) < 1e-9


def test_a_bend_is_refined_until_interpolation_is_within_tolerance():
    knee = lambda p: 0.01 + 0.001 * max(p["T"] - 40, 0)  # noqa: E731  a launch floor, then a line
    ts = chosen(knee, tol=1.0)
    assert 32 in ts or 48 in ts                  # points put where the curve bends
    assert len(ts) < len(GRID)
    assert interp_error(knee, ts) <= 2 * 1.0     # between refined neighbours: about the tolerance


def test_resumed_from_any_prefix_it_ends_on_the_same_points():
    fn = lambda p: 0.02 + 0.0005 * p["T"] ** 1.2  # noqa: E731
    xs = [p["T"] for p in GRID]
    full = adaptive_points(GRID, fn, 2.0)
    order = list(full)
    for cut in (0, 3, len(order) // 2, len(order)):
        got = {i: full[i] for i in order[:cut]}
        while todo := adaptive_todo(xs, got, 2.0):
            got[todo[0]] = fn(GRID[todo[0]])
        assert sorted(got) == sorted(full)


def test_failed_points_are_not_asked_again_and_refine_nothing():
    calls = []

    def flaky(p):
        calls.append(p["T"])
        return None if p["T"] == 24 else 0.01 * p["T"]
    got = adaptive_points(GRID, flaky, 3.0)
    assert calls.count(24) == 1 and got[[p["T"] for p in GRID].index(24)] is None


def test_full_todo_is_adaptive_only_for_one_axis_grids():
    assert one_axis(GRID) and not one_axis([{"seqs": [[1, 16]]}]) and not one_axis([{"B": 1, "Q": 2}])
    assert full_todo(GRID, {}, 3.0, adaptive=False) == GRID
    first = full_todo(GRID, {}, 3.0, adaptive=True)
    assert 0 < len(first) < len(GRID)
    batches = [{"seqs": [[q, 0]]} for q in (16, 32)]
    assert full_todo(batches, {}, 3.0, adaptive=True) == batches


def test_tolerance_must_be_positive():
    with pytest.raises(ValueError, match="tol_pct"):
        adaptive_todo([1, 2, 3], {}, 0.0)
