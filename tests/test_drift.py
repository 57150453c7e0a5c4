"""A shared host's speed moves by the hour: the drift since a sweep is measured on the
sweep's own points, re-timed now, and scales predictions by step size."""
import pytest

import dooly.profile.sweep_units as su
import dooly.profile.timing as timing
from dooly.db import Store
from dooly.env import Measurement
from dooly.profile.drift import ANCHOR_UNITS, Drift, anchors, bracket, disagreement, measure_drift
from dooly.profile.timing import Stats
from test_families import ENV, attention, linear


def test_drift_interpolates_in_log_tokens_and_holds_its_ends():
    d = Drift((1, 16, 256), (1.0, 1.1, 1.3))
    assert d.at(1) == d.at(0.5) == 1.0 and d.at(4096) == 1.3
    assert d.at(4) == pytest.approx(1.05)        # halfway between 1 and 16 in log2
    assert d.at(64) == pytest.approx(1.2)
    assert Drift.from_json(d.to_json()) == d


def test_a_one_token_step_is_memory_bound_and_scaled_by_half_its_drift_in_log_scale():
    d = Drift((1, 16, 256), (0.64, 1.1, 1.3))
    assert d.at(1) == pytest.approx(0.64)         # shown as re-timed
    assert d.scale(1) == d.scale(0.5) == pytest.approx(0.8)   # applied: shrunk towards 1.0
    assert d.scale(4) == pytest.approx(0.95) and d.scale(256) == d.at(256) == pytest.approx(1.3)


@pytest.mark.parametrize("tokens,factors,field", [((), (), "factors"), ((1, 8), (1.0,), "factors"),
                                                    ((8, 1), (1.0, 1.0), "tokens"), ((1,), (0.0,), "factors")])
def test_a_bad_drift_names_its_field(tokens, factors, field):
    with pytest.raises(ValueError, match=field):
        Drift(tokens, factors)


def _store(tmp_path, units, ms_of):
    s = Store.open(tmp_path / "d.db")
    s.add_environment(ENV)
    for u in units:
        s.add_unit(u)
        for t in (1, 2, 8, 16, 64, 128, 512, 1024):
            ms = ms_of(u, t)
            s.add_measurement(Measurement(u.key, ENV.key, {"T": t}, ms, ms, ms, ms, 0.0, 9, 0))
    return s


def test_anchors_are_the_heaviest_token_units_near_each_anchor_count(tmp_path):
    big, mid, small, tiny = linear(2048, 16384), linear(2048, 4096), linear(512, 512), linear(64, 64)
    att = attention(8, 2, 64)
    units = {u.key: u for u in (big, mid, small, tiny, att)}
    counts = dict.fromkeys(units, 16)
    with _store(tmp_path, [big, mid, small, tiny], lambda u, t: u.inputs[1].dims[0].value_or_expr * t / 1e6) as s:
        pairs = anchors(s, ENV.key, units, counts)
    chosen = {u.key for u, _ in pairs}
    assert chosen == {big.key, mid.key, small.key} and len(chosen) == ANCHOR_UNITS   # tiny and attention not
    # the stored point nearest each anchor in log2: 256 falls between 128 and 512 (128 wins the tie)
    assert sorted({m.point["T"] for _, m in pairs}) == [1, 16, 64, 128, 1024]
    assert len({(u.key, m.point["T"]) for u, m in pairs}) == len(pairs)


def test_a_window_retimed_at_both_ends_takes_the_geometric_mean_at_the_later_anchors():
    before, after = Drift((1, 64), (0.5, 1.0), 6), Drift((1, 16, 64), (2.0, 1.0, 4.0), 9)
    both = bracket(before, after)
    assert both.tokens == (1, 16, 64) and both.points == 15
    assert both.factors == pytest.approx((1.0, (before.at(16) * 1.0) ** 0.5, 2.0))
    assert disagreement(before, after) == pytest.approx(4.0)
    assert bracket(None, after) is after and bracket(before, None) is before and bracket(None, None) is None


def test_measured_drift_is_the_ratio_now_over_stored_per_anchor(tmp_path, monkeypatch):
    big = linear(2048, 16384)
    slower = {1: 1.0, 16: 1.02, 64: 1.05, 128: 1.1, 512: 1.2, 1024: 1.25}

    class FakeRunners:
        def __init__(self, env, lim):
            pass

        def prepare(self, unit, point):
            return point["T"]
    monkeypatch.setattr(su, "Runners", FakeRunners)
    monkeypatch.setattr(timing, "timer_for", lambda device: lambda t: Stats(t * slower[t], 0, 0, 0, 0, 9, 0))
    with _store(tmp_path, [big], lambda u, t: float(t)) as s:
        d = measure_drift(s, ENV, {big.key: big}, {big.key: 16})
    assert dict(zip(d.tokens, d.factors)) == {t: pytest.approx(slower[t]) for t in d.tokens}
    assert d.points == len(d.tokens)


def test_a_prediction_scales_its_units_by_the_drift_at_its_step_size():
    from dooly.predict import Predictor
    big = linear(2048, 16384)

    class Line:
        def predict_one(self, point):
            return point["T"] / 100.0
    pred = Predictor({big.key: big}, {big.key: 2}, {big.key: Line()}, ENV)
    before = pred.predict([(512, 0)]).units_ms
    pred.drift = Drift((1, 512), (1.0, 1.2))
    assert pred.predict([(512, 0)]).units_ms == pytest.approx(1.2 * before)
    assert pred.predict([(1, 100)]).units_ms == pytest.approx(2 * 0.01)


def test_recheck_host_refuses_another_hosts_environment(tmp_path, capsys):
    from dooly.cli import main
    from conftest import config
    smol = config("HuggingFaceTB__SmolLM2-135M-Instruct")
    from dooly.config import load_config
    big = linear(576, 1536)
    with _store(tmp_path, [big], lambda u, t: float(t)) as s:   # ENV: a device named cpu0
        s.set_inventory(load_config(smol).hash, ENV.engine, "smol", {big.key: 30})
    rc = main(["predict", smol, "--db", str(tmp_path / "d.db"), "--batch", "prefill:64",
               "--engine", ENV.engine, "--recheck-host"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "--recheck-host" in err[-1] and "not this host's" in err[-1]


@pytest.mark.vllm
def test_a_unit_read_from_a_db_runs_its_engine_op_in_a_process_that_never_imported_the_model():
    # what `dooly predict --recheck-host` does: units come from the DB, vLLM's model code
    # (which registers torch.ops.vllm_ir.* and _C.*) is never imported in that process
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    pytest.importorskip("vllm")
    unit = {"op": "vllm_ir.fused_add_rms_norm.maybe_inplace", "stateful": False,
            "inputs": [{"shape": ["T", 64], "dtype": "bfloat16", "labels": ["REQUEST", "CONFIG"]}] * 2
            + [{"shape": [64], "dtype": "bfloat16", "labels": ["CONFIG"]}],
            "outputs": [{"shape": ["T", 64], "dtype": "bfloat16", "labels": ["REQUEST", "CONFIG"]}] * 2,
            "attrs": {"call": [{"t": 0}, {"t": 1}, {"t": 2}, 1e-06, None]}}
    code = ("import json, sys; from dooly.unit import Unit; from dooly.profile.runners import StatelessRunner\n"
            "u = Unit.from_json(json.loads(sys.argv[1]))\n"
            "out = StatelessRunner(u, 'vllm', 'cpu').prepare({'T': 4})()\n"
            "print(tuple(out[0].shape))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(unit)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "(4, 64)"
