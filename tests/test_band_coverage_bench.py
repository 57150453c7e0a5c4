"""bench/band_coverage.py pools the 90% bands' coverage of real serving percentiles over
saved runs: it replays each run with the workload its raw file holds, and counts every
percentile once."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import band_coverage  # noqa: E402
from accuracy_batch import LIMITS  # noqa: E402
from accuracy_e2e import serving  # noqa: E402


def _raw(n_requests=3, runs=2, quick=True):
    key = {"loads": {"low": [[10, 5]] * n_requests, "high": [[10, 5]] * n_requests},
           "serving": serving(LIMITS["quick" if quick else "full"])}
    return {m: {"key": key, "runs": [{}] * runs} for m in ("smollm2", "qwen0.5b")}


def test_a_replay_serves_the_models_loads_and_requests_the_saved_run_served():
    args = band_coverage.replay_args(_raw())
    assert args == ["--models", "smollm2,qwen0.5b", "--loads", "low,high", "--num-requests", "3",
                    "--real-runs", "2", "--quick"]
    assert "--quick" not in band_coverage.replay_args(_raw(quick=False))


def _fig(inside: dict, width: float) -> dict:
    fig = {f"{k}_in_band": v for k, v in inside.items()}
    return dict(fig, band_width_pct=width, ttft_mape_pct=1.0, tpot_mape_pct=2.0)


def test_coverage_is_pooled_per_percentile_per_run_and_per_metric_and_load():
    a = _fig({"llama3.2-1b.low.ttft_p50": True, "llama3.2-1b.low.ttft_p90": False,
              "llama3.2-1b.high.tpot_p99": True, "smollm2.low.tpot_p50": True}, 40.0)
    b = _fig({"qwen3-0.6b.low.ttft_p50": False, "qwen3-0.6b.high.ttft_p99": True}, 60.0)
    got = band_coverage.pool({"x1": a, "x2": b})
    assert got["percentiles"] == 6 and got["band_coverage_all_pct"] == pytest.approx(400 / 6)
    assert got["x1.band_coverage_pct"] == 75.0 and got["x2.band_coverage_pct"] == 50.0
    assert got["min_run_band_coverage_pct"] == 50.0 and got["band_width_pct"] == 50.0
    assert got["ttft.low.band_coverage_pct"] == pytest.approx(100 / 3) and got["tpot.low.band_coverage_pct"] == 100.0
    assert got["ttft.high.band_coverage_pct"] == 100.0


def test_a_missing_run_is_one_line_naming_the_flag(capsys, tmp_path):
    assert band_coverage.main(["--runs", str(tmp_path / "x1"), "--json", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--runs" in err[0] and "x1.db" in err[0]
    assert not (tmp_path / "o.json").exists()


def test_a_raw_file_without_its_workload_is_one_line_naming_the_field(capsys, tmp_path):
    import json
    (tmp_path / "x1.db").write_bytes(b"")
    raw = _raw()
    del raw["qwen0.5b"]["key"]
    (tmp_path / "x1e2e.raw.json").write_text(json.dumps(raw))
    assert band_coverage.main(["--runs", str(tmp_path / "x1"), "--json", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x1e2e.raw.json" in err[0] and "qwen0.5b.key.loads" in err[0]
    assert not (tmp_path / "o.json").exists()
    (tmp_path / "x1e2e.raw.json").write_text("{not json")
    assert band_coverage.main(["--runs", str(tmp_path / "x1")]) == 2
    assert "not a JSON raw file" in capsys.readouterr().err
