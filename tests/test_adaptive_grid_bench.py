"""bench/adaptive_grid.py: what an adaptive grid costs against the fixed one, in the cost
model's seconds (the figure bench/reuse_bench.py --adaptive-keep takes)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import adaptive_grid  # noqa: E402
from dooly.profile.cost import get_hardware  # noqa: E402


def test_a_straight_curve_keeps_few_points_and_fewer_seconds():
    xs = list(range(1, 2049))
    ys = [0.01 + 0.002 * x for x in xs]          # launch floor, then linear in tokens
    r = adaptive_grid.compare({"line": (xs, ys)}, get_hardware("a100"))
    assert r["adaptive_3.points"] < r["fixed_points"]
    assert 0 < r["adaptive_3.cost_ratio"] < 1


def test_seconds_count_every_pass_and_the_per_point_overhead():
    hw = get_hardware("cpu")
    assert adaptive_grid.seconds([1000.0], hw) == pytest.approx(hw.passes * hw.repeats + hw.point_overhead_s)


def test_an_unknown_hardware_is_one_line_and_exit_2(capsys):
    assert adaptive_grid.main(["--hardware", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--hardware" in err[0] and "tpu" in err[0]
