"""bench/reuse_bench.py's pass rate and adaptive share: the reduction a measured share of
passing checks buys, and bad values refused before any model is analysed."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import reuse_bench  # noqa: E402

FIG = {"independent_cost_s": 100.0, "families_cost_s": 20.0, "check_savings_s": 40.0}


def test_every_check_passing_is_the_families_figure_and_none_adds_what_checks_save():
    assert reuse_bench.expected_reduction_pct(FIG, 1.0) == 80.0
    assert reuse_bench.expected_reduction_pct(FIG, 0.0) == 40.0
    assert reuse_bench.expected_reduction_pct(FIG, 0.5) == 60.0


@pytest.mark.parametrize("argv", [["--pass-rate", "120"], ["--pass-rate", "-1"],
                                  ["--pass-rate", "50", "--hardware", "cpu", "--calibrate", "x.db"]])
def test_a_bad_pass_rate_exits_2_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as e:
        reuse_bench.main(argv)
    assert e.value.code == 2 and "--pass-rate" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "101", "-5"])
def test_a_bad_adaptive_keep_exits_2_naming_the_flag(value, capsys):
    with pytest.raises(SystemExit) as e:
        reuse_bench.main(["--adaptive-keep", value])
    assert e.value.code == 2 and "--adaptive-keep" in capsys.readouterr().err
