"""The accuracy benches' own logic on hand-made runs (no vLLM): which steps each set
scores, the real-vs-real noise floor, the leave-one-out figures, the winner verdict."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ab, e2e, win = _load("accuracy_batch"), _load("accuracy_e2e"), _load("winner_inversion")


class _Pred:
    """Predicts every step 10% over its real time (units: half of it)."""
    step_model_source = "pool(3 models)"

    class _P:
        def __init__(self, ms):
            self.step_ms, self.units_ms = ms, ms / 2

    def __init__(self, truth):
        self.truth = truth

    def predict(self, batch):
        return self._P(1.1 * self.truth(batch))

    def step_ms(self, batch):
        return 1.1 * self.truth(batch)


def _truth(batch):
    return 5.0 + sum(q for q, _ in batch) * 0.1 + len(batch)


def _run(scale):
    steps = []
    for set_name, batch in (("prefill", [(128, 0)]), ("decode", [(1, 100)] * 4), ("mixed", [(64, 0), (1, 50)]),
                            ("decode", [(1, 10), (16, 0)])):   # the last one is no decode step
        ms = scale * _truth(batch)
        steps.append({"set": [set_name, "x", 0], "batch": [list(b) for b in batch], "ms": ms,
                      "forward_ms": ms / 2})
    return {"steps": steps}


def test_sets_score_only_their_own_steps():
    assert ab.keep("prefill", [(128, 0), (64, 0)]) and not ab.keep("prefill", [(128, 0), (1, 130)])
    assert ab.keep("decode", [(1, 128)] * 4) and not ab.keep("decode", [(1, 128), (16, 0)])
    assert ab.keep("mixed", [(256, 512), (1, 300)]) and not ab.keep("mixed", [(256, 0)])


def test_leave_one_out_figures_with_their_noise_floor():
    runs = [_run(1.0), _run(1.02)]
    fig = ab.score("m", runs, _Pred(_truth))
    for s in ab.SETS:
        # 10% over the first run, 10/1.02 over the second
        assert fig[f"mape_{s}_pct"] == pytest.approx(100 * (0.1 + (1.1 / 1.02 - 1)) / 2)
        assert fig[f"noise_{s}_pct"] == pytest.approx(100 * 0.02 / 1.01)
    assert fig["n_decode"] == 2   # one decode step per run; the mixed one left out


def test_repeats_of_a_batch_in_one_run_are_scored_by_their_median_step():
    run = _run(1.0)
    # two more passes: one slowed 3x by a burst from another tenant, one 2% slow
    run["steps"] += [dict(s, ms=s["ms"] * 3.0) for s in _run(1.0)["steps"]]
    run["steps"] += [dict(s, ms=s["ms"] * 1.02) for s in _run(1.0)["steps"]]
    fig = ab.score("m", [run, _run(1.0)], _Pred(_truth))
    for s in ab.SETS:
        assert fig[f"mape_{s}_pct"] == pytest.approx(100 * (0.1 + (1.1 / 1.02 - 1)) / 2)
        assert fig[f"noise_{s}_pct"] == pytest.approx(100 * 0.02 / 1.01)
    assert fig["n_decode"] == 2   # one per batch per run, not one per repeat
    # an even count keeps the faster middle step, whole (its other fields with it)
    two = [{"set": ["decode", "x", r], "batch": [[1, 5]], "ms": ms, "forward_ms": f}
           for r, (ms, f) in enumerate([(10.0, 4.0), (12.0, 7.0)])]
    assert ab.representative(two) == [two[0]]


def test_items_stay_inside_the_sweep_limits():
    for quick in (False, True):
        tok, batch, ctx = ab.LIMITS["quick" if quick else "full"]
        for it in ab.items(quick):
            assert len(it["lens"]) <= batch and max(it["lens"]) <= max(tok, ctx)
            assert max(l + m for l, m in zip(it["lens"], it["max_tokens"])) <= ctx + max(it["max_tokens"])


def test_e2e_percentile_errors_against_each_real_run():
    reqs = e2e.workload(str(e2e.DEFAULT_TRACE), 12, 1.0, 0)
    assert all(32 <= r.prompt_len <= 512 and 8 <= r.output_len <= 64 for r in reqs)
    times = {str(r.rid): [r.arrival_s + 0.1 + 0.02 * i for i in range(r.output_len)] for r in reqs}
    lat = e2e.real_latencies(reqs, times)
    assert lat["ttft"] == pytest.approx([100.0] * len(reqs)) and lat["tpot"] == pytest.approx([20.0] * len(reqs))
    with pytest.raises(RuntimeError, match="tokens seen"):
        e2e.real_latencies(reqs, {**times, str(reqs[0].rid): [0.5]})


def test_winner_is_decided_in_one_place():
    confs = [(2048, 64), (64, 64)]
    wls = [("rate1", None), ("rate4", None)]
    lat = lambda v: {"e2e": [v] * 5}  # noqa: E731
    real = {(2048, 64, "rate1"): lat(10), (64, 64, "rate1"): lat(12),
            (2048, 64, "rate4"): lat(30), (64, 64, "rate4"): lat(20)}
    sim = dict(real)
    sim[(64, 64, "rate4")] = lat(40)
    v = win.verdict(confs, wls, real, sim, "mean_e2e")
    assert v["rate1.same_winner"] and not v["rate4.same_winner"]
    assert v["real_inversion"] and not v["sim_inversion"] and not v["same_winner_all_loads"]
    assert v["rate1.real_margin_pct"] == pytest.approx(20.0)


def test_loads_are_explicit_per_model_or_left_to_the_simulator():
    rates = e2e.parse_rates("smollm2=0.05:0.2,qwen0.5b=0.03", ["smollm2", "qwen0.5b", "llama3.2-1b"])
    assert rates == {"smollm2": (0.05, 0.2), "qwen0.5b": (0.03, 0.03), "llama3.2-1b": None}
    assert e2e.LOADS["low"] < 1.0 < e2e.LOADS["high"]


def test_real_engine_serves_inside_the_sweep_limits():
    assert e2e.serving(ab.LIMITS["quick"]) == {"budget": 512, "max_num_seqs": 32}
    assert e2e.serving(ab.LIMITS["full"]) == {"budget": 1024, "max_num_seqs": 64}


class _Parts:
    def __init__(self, ms):
        self.breakdown, self.engine_ms = {"unit": ms}, 0.0


class _BandPred:
    """2 ms per step plus 10 us per token, all of it one unit."""
    def predict(self, pairs):
        return _Parts(2.0 + 0.01 * sum(q for q, _ in pairs))

    def step_ms(self, batch):
        return self.predict([(s[0], s[1]) for s in batch]).breakdown["unit"]


def test_real_percentiles_are_checked_against_the_drawn_bands():
    from dooly.sim.intervals import Uncertainty
    reqs = e2e.workload(str(e2e.DEFAULT_TRACE), 10, 2.0, 0)
    settings = {"max_num_batched_tokens": 512, "max_num_seqs": 32, "block_size": 16}
    sim, _ = e2e.sim_latencies(reqs, _BandPred(), settings)
    truth = {f"{m}_{p}_real_ms": e2e.pct(sim[m])[p] for m in ("ttft", "tpot") for p in e2e.PCTS}
    exact = Uncertainty((("unit", 0.0),), 0.0, "none")
    assert e2e.band_coverage(reqs, _BandPred(), settings, truth, exact, 5, 0)["band_coverage_pct"] == 100.0
    slow = {k: 2 * v for k, v in truth.items()}   # the real engine twice as slow: outside
    assert e2e.band_coverage(reqs, _BandPred(), settings, slow, exact, 5, 0)["band_coverage_pct"] == 0.0
    wide = e2e.band_coverage(reqs, _BandPred(), settings, truth, Uncertainty((("unit", 20.0),), 5.0), 40, 0)
    assert wide["ttft_p50_band_lo_ms"] < truth["ttft_p50_real_ms"] < wide["ttft_p50_band_hi_ms"]


def test_raw_runs_of_one_model_or_job_never_drop_the_others(tmp_path):
    import json
    save_raw = ab.save_raw
    raw = tmp_path / "runs.raw.json"
    save_raw(raw, "qwen0.5b@tp1:steps", {"runs": [1]})
    save_raw(raw, "qwen0.5b@tp2:steps", {"runs": [2]})
    save_raw(raw, "qwen0.5b@tp1:steps", {"runs": [1, 3]})
    assert json.loads(raw.read_text()) == {"qwen0.5b@tp1:steps": {"runs": [1, 3]},
                                           "qwen0.5b@tp2:steps": {"runs": [2]}}
    assert [p.name for p in tmp_path.iterdir()] == ["runs.raw.json"]   # no temporary left


def test_scheduler_check_leaves_no_error_when_step_times_are_known():
    """A 'real' run made by the simulator itself with step times on the check's own line:
    the scheduler alone must reproduce it, step for step."""
    from dooly.sim import simulate
    reqs = e2e.workload(str(e2e.DEFAULT_TRACE), 12, 3.0, 0)
    settings = {"max_num_batched_tokens": 512, "max_num_seqs": 32, "block_size": 16}
    steps = []

    def truth(batch):
        ms = 3.0 + 0.05 * sum(b[0] for b in batch) + 0.5 * len(batch)
        steps.append({"batch": [[b[0], b[1]] for b in batch], "ms": ms})
        return ms
    res = simulate(reqs, truth, e2e.sched_config(settings))
    run = {"steps": steps, "settings": settings,
           "token_times": {str(r.rid): list(r.token_times) for r in res.requests}}
    check = e2e.scheduler_check(reqs, [run])
    assert check["sched_steps"] == res.num_steps
    assert check["sched_ttft_mape_pct"] < 0.5 and check["sched_tpot_mape_pct"] < 0.5


def test_a_replay_scales_by_the_drift_saved_with_the_real_runs_not_one_measured_now(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace
    raw = tmp_path / "r.raw.json"
    drift = {"tokens": [1, 512], "factors": [0.8, 0.9], "points": 6}
    raw.write_text(json.dumps({"qwen0.5b": {"items": [], "runs": [{"steps": []}], "drift": drift}}))
    monkeypatch.setattr(ab, "fresh_drift", lambda *a, **k: pytest.fail("re-timed now in a replay"))
    monkeypatch.setattr(ab, "_DRIFTS", {})
    args = SimpleNamespace(real_from=str(raw), recheck_host=True)
    assert ab.real_runs(["qwen0.5b"], [], args, log=lambda *_: None) == {"qwen0.5b": [{"steps": []}]}
    pred = SimpleNamespace(tp=1, drift=None)
    assert ab.recheck(pred, "db", "qwen0.5b", True, "cfg") == {"qwen0.5b.drift_T1": 0.8, "qwen0.5b.drift_T512": 0.9}
    assert pred.drift.at(512) == pytest.approx(0.9)


def test_real_runs_are_retimed_before_and_after_and_scaled_by_the_geometric_mean(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace
    from dooly.engines import vllm_probe
    from dooly.profile.drift import Drift
    order = []
    monkeypatch.setattr(vllm_probe, "run_child", lambda job: order.append("run") or {"steps": [1]})
    drifts = iter([Drift((1, 512), (0.5, 0.5), 6), Drift((1, 512), (2.0, 1.0), 6)])
    monkeypatch.setattr(ab, "fresh_drift", lambda *a, **k: order.append("drift") or next(drifts))
    monkeypatch.setattr(ab, "_DRIFTS", {})
    raw = tmp_path / "r.raw.json"
    args = SimpleNamespace(real_from=None, raw=str(raw), resume=False, real_runs=2, repeats=1, recheck_host=True,
                           db="db")
    ab.real_runs(["qwen0.5b"], [], args, log=lambda *_: None)
    assert order == ["drift", "run", "run", "drift"]
    saved = json.loads(raw.read_text())["qwen0.5b"]
    assert saved["drift_before"]["factors"] == [0.5, 0.5] and saved["drift"]["factors"] == [2.0, 1.0]
    assert ab._DRIFTS["qwen0.5b"].factors == pytest.approx((1.0, 0.5 ** 0.5))
    order.clear()   # resumed with every run saved: nothing is re-timed or run again
    ab.real_runs(["qwen0.5b"], [], SimpleNamespace(**{**vars(args), "resume": True}), log=lambda *_: None)
    assert order == []


def test_band_coverage_is_given_over_every_real_percentile_beside_the_worst_model():
    result = {}
    for n, inside in (("a", [True] * 6), ("b", [True] * 5 + [False])):
        for ld in ("low", "high"):
            result[f"{n}.{ld}.band_coverage_pct"] = 100.0 * sum(inside) / 6
            result[f"{n}.{ld}.band_width_pct"] = 40.0
            for i, (m, p) in enumerate((m, p) for m in ("ttft", "tpot") for p in e2e.PCTS):
                result[f"{n}.{ld}.{m}_{p}_in_band"] = inside[i] if ld == "low" else True
    e2e.worst(result, ["a", "b"], ["low", "high"])
    assert result["band_coverage_pct"] == pytest.approx(500 / 6)
    assert result["low.band_coverage_all_pct"] == pytest.approx(100 * 11 / 12)
    assert result["high.band_coverage_all_pct"] == 100.0
    assert result["band_coverage_all_pct"] == pytest.approx(100 * 23 / 24)


def test_a_search_replay_judges_the_saved_rounds_by_the_slos_saved_with_them(tmp_path, monkeypatch, capsys):
    import json
    from types import SimpleNamespace
    sc = _load("search_check")
    monkeypatch.setattr(sc, "auto_slos", lambda *a: sc._slos("ttft_p90=120ms,tpot_p90=9.5ms"))
    raw_path = tmp_path / "s.raw.json"
    live = SimpleNamespace(slo="auto", real_from=None, raw=str(raw_path))
    first = sc.run_slos("smollm2", [], None, (2048, 64), live, {})
    assert json.loads(raw_path.read_text())["smollm2.slos"] == "ttft_p90=120ms,tpot_p90=9.5ms"
    # the predictor changed since: its auto SLOs would differ, the replay keeps the saved ones
    monkeypatch.setattr(sc, "auto_slos", lambda *a: pytest.fail("auto SLOs recomputed in a replay"))
    replay = SimpleNamespace(slo="auto", real_from=str(raw_path), raw=None)
    assert sc.run_slos("smollm2", [], None, (2048, 64), replay, json.loads(raw_path.read_text())) == first
    with pytest.raises(SystemExit) as stop:   # a raw file without the field: one line, exit 2
        sc.run_slos("qwen0.5b", [], None, (2048, 64), replay, {})
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err == [f"{raw_path}: no SLOs saved for qwen0.5b (field qwen0.5b.slos); give --slo"]


def test_tp_batches_are_retimed_at_both_ends_and_a_replay_scales_by_what_they_saved(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace
    from dooly.engines import vllm_tp_probe
    from dooly.profile.drift import Drift
    tp = _load("accuracy_tp")
    batch = sys.modules["accuracy_batch"]   # the copy accuracy_tp reads its drifts from
    order, tps = [], []
    drifts = iter([Drift((1, 512), (0.5, 0.5), 6), Drift((1, 512), (2.0, 1.0), 6)])
    monkeypatch.setattr(vllm_tp_probe, "run_child", lambda job: order.append("run") or {"steps": [1]})
    monkeypatch.setattr(batch, "fresh_drift", lambda c, db, t=1: order.append("drift") or tps.append(t) or next(drifts))
    monkeypatch.setattr(batch, "_DRIFTS", {})
    raw, job = tmp_path / "tp.raw.json", {"mode": "steps", "items": []}
    args = SimpleNamespace(real_from=None, raw=str(raw), resume=False, real_runs=2, recheck_host=True, db="db",
                           serve_only=False)
    tp.real("qwen0.5b", 2, job, args, log=lambda *_: None)
    assert order == ["drift", "run", "run", "drift"] and tps == [2, 2]   # the TP=2 shards re-timed
    assert batch._DRIFTS["qwen0.5b.tp2"].factors == pytest.approx((1.0, 0.5 ** 0.5))

    monkeypatch.setattr(batch, "fresh_drift", lambda *a, **k: pytest.fail("a replay re-timed the host"))
    monkeypatch.setattr(batch, "_DRIFTS", {})
    replay = SimpleNamespace(**{**vars(args), "real_from": str(raw)})
    assert tp.real("qwen0.5b", 2, job, replay) == [{"steps": [1]}] * 2
    pred = SimpleNamespace(tp=2, drift=None)
    figs = batch.recheck(pred, "db", "qwen0.5b.tp2", True, "cfg")
    assert figs["qwen0.5b.tp2.drift_T1"] == pytest.approx(1.0) and json.loads(raw.read_text())["qwen0.5b@tp2:steps"]["drift"]


def test_a_replay_made_on_another_host_scores_the_db_environment_and_measures_nothing(tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    import dooly.cli
    from dooly.db import Store
    from dooly.engines import environment
    here = environment("vllm", "cpu")
    there = replace(here, device_name="another CPU")
    db = str(tmp_path / "x.db")
    with Store.open(db) as store:
        store.add_environment(there)
    calls = []
    monkeypatch.setattr(dooly.cli, "main", lambda argv: calls.append(argv[0]) or 0)
    monkeypatch.setattr(ab, "_SCORED_ENV", {})
    with pytest.raises(SystemExit) as exit_:   # nothing calibrated: no vLLM run instead
        ab.prepare_db(["smollm2"], db, ab.LIMITS["quick"], log=lambda *_: None, replay=True)
    assert exit_.value.code == 2 and f"{db}: calibrations:" in capsys.readouterr().err
    assert calls == ["fit"]
    assert ab.bench_env().key == there.key != here.key
    with Store.open(db) as store:
        store.add_environment(replace(here, device_name="a third CPU"))
    monkeypatch.setattr(ab, "_SCORED_ENV", {})
    with pytest.raises(SystemExit) as exit_:
        ab.use_db_env(db)
    assert exit_.value.code == 2 and f"{db}: environments:" in capsys.readouterr().err


def test_a_held_out_model_outside_the_pool_is_swept_but_never_calibrated(tmp_path, monkeypatch, capsys):
    """--pool: the scored model's own engine runs never reach the step model it is predicted
    with; the pool models are swept and calibrated, the held-out one swept only."""
    import dooly.cli
    import dooly.profile.calibrate
    calls = []
    monkeypatch.setattr(dooly.cli, "main", lambda argv: calls.append(argv[:2] if argv[0] == "sweep" else argv) or 0)
    monkeypatch.setattr(dooly.profile.calibrate, "calibrated_models", lambda store, env: set())
    monkeypatch.setattr(ab, "_SCORED_ENV", {})
    db = str(tmp_path / "x.db")
    ab.prepare_db(["gemma3-1b"], db, ab.LIMITS["quick"], log=lambda *_: None, pool=["smollm2", "qwen0.5b"])
    swept = [Path(c).name for verb, c in (x for x in calls if x[0] == "sweep")]
    assert swept == [ab.MODELS[n].name for n in ("gemma3-1b", "smollm2", "qwen0.5b")]
    calibrate = next(x for x in calls if x[0] == "calibrate")
    assert [Path(c).name for c in calibrate[1:-2]] == [ab.MODELS[n].name for n in ("smollm2", "qwen0.5b")]
    args, names = ab.parse(["--models", "gemma3-1b", "--pool", "smollm2,qwen0.5b"])
    assert names == ["gemma3-1b"] and args.pool == ["smollm2", "qwen0.5b"]
    assert ab.protocol(args.pool) == "held-out from pool smollm2,qwen0.5b"
    with pytest.raises(SystemExit) as exit_:
        ab.parse(["--models", "gemma3-1b", "--pool", "nosuch"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "--pool" in err


def test_a_candidate_the_time_budget_left_unserved_is_left_out_of_the_ranking(monkeypatch, capsys):
    """A candidate with no real round has no real goodput (not a goodput of 0): the rank
    correlation and the winners are over the candidates real vLLM served."""
    from types import SimpleNamespace as NS
    sc = _load("search_check")
    ranked = [NS(candidate={"max_num_batched_tokens": b, "max_num_seqs": s}, goodput=NS(rate=g), band=(0.9 * g, 1.1 * g))
              for b, s, g in ((2048, 8, 3.0), (256, 8, 2.0), (256, 64, 1.0))]
    real = {(2048, 8): (2.0, 1), (256, 8): (2.9, 2), (256, 64): (0.0, 0)}
    monkeypatch.setattr(sc, "load_model", lambda *a: (None, NS(step_pct=5.0, step_source="stated", mean_unit_pct=1.0)))
    monkeypatch.setattr(sc, "host_drift", lambda *a: {})
    monkeypatch.setattr(sc, "workload", lambda *a: [])
    monkeypatch.setattr(sc, "run_slos", lambda *a: [])
    monkeypatch.setattr(sc, "sim_search", lambda *a: NS(ranked=ranked))
    monkeypatch.setattr(sc, "real_goodput", lambda name, c, *a, **k: {
        "real_goodput_rps": real[c][0], "real_fail_rps": None, "real_rounds": real[c][1]})
    out = {}
    sc.check_model("smollm2", [(2048, 8)], NS(db="db", env=None, trace="t", requests=1, seed=0, sim_only=False,
                                     rate_lo=0.01, repeat=False), {}, out)
    assert "b256s64: sim 1 req/s [0.9-1.1], not served" in capsys.readouterr().out
    assert out["smollm2.served_candidates"] == 2 and out["smollm2.real_winner"] == "b256s8"
    assert out["smollm2.rank_correlation"] == pytest.approx(-1.0)
    assert out["smollm2.sim_winner"] == "b2048s8" and not out["smollm2.same_winner"]


def test_the_tp_serving_check_simulates_dooly_s_own_kv_blocks_and_saves_a_small_kv_in_the_job(monkeypatch):
    """A KV-bound winner check: the engine's serving job carries the fraction of a GiB it
    was given, and the simulation runs on the blocks Dooly sized from the units, not on the
    count the engine reported."""
    from types import SimpleNamespace
    tp = _load("accuracy_tp")
    seen = []
    import numpy as np
    res = SimpleNamespace(num_steps=3, step_num_tokens=np.array([64, 1, 1]), num_preemptions=0)
    monkeypatch.setattr(tp, "sim_latencies", lambda reqs, pred, st: seen.append(st) or ({"ttft": [1.0], "tpot": []}, res))
    monkeypatch.setattr(tp, "real_latencies", lambda reqs, times: {"ttft": [1.0], "tpot": []})
    req = SimpleNamespace(rid=0, arrival_s=0.0, prompt_len=64, output_len=1)
    runs = [{"settings": {"num_gpu_blocks": 99, "block_size": 128},
             "results": [{"token_times": [], "steps": [{"batch": [[64, 0]]}, {"batch": [[1, 64]]}]}]}]
    fig = tp.score_serve({"high": [req]}, runs, None, kv_blocks=7)
    assert seen[0]["num_gpu_blocks"] == 7 and seen[0]["block_size"] == 128
    # the schedule apart from the step times: the engine's steps and tokens beside Dooly's
    assert (fig["high.steps_real"], fig["high.tokens_real"], fig["high.steps_sim"], fig["high.tokens_sim"]) == (2, 65, 3, 66)
    small = tp.serve_job({"high": [req]}, SimpleNamespace(kv_gib=0.0125, max_model_len=512))
    assert (small["kv_gib"], small["max_model_len"]) == (0.0125, 512)
    assert "kv_gib" not in tp.serve_job({"high": [req]}, SimpleNamespace(**tp.DEFAULTS))   # old runs replay


def test_a_one_model_tp_run_is_model_out_when_the_db_holds_other_models(tmp_path, monkeypatch):
    """The pool a model is predicted from is decided by the DB, not by --models: a run of one
    model on a DB that holds another model's calibration leaves its own steps out."""
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.engines import environment
    from dooly.fit.step_features import STRUCTURE
    from dooly.fit.step_pool import record_steps
    tp = _load("accuracy_tp")
    batch = sys.modules["accuracy_batch"]   # the copy accuracy_tp reads its environment from
    monkeypatch.setattr(batch, "_SCORED_ENV", {})
    db, env = str(tmp_path / "p.db"), environment("vllm", "cpu")
    steps = [{"batch": [[1, 64 + i]], "ms": 10.0 + i} for i in range(3)]
    with Store.open(db) as store:
        record_steps(store, env, steps, dict.fromkeys(STRUCTURE, 1), load_config(tp.MODELS["qwen0.5b"]).hash)
    assert not tp.others_calibrated("qwen0.5b", db, 1)   # its own steps only: in-sample, said so
    with Store.open(db) as store:
        record_steps(store, env, steps, dict.fromkeys(STRUCTURE, 2), load_config(tp.MODELS["smollm2"]).hash)
    assert tp.others_calibrated("qwen0.5b", db, 1) and tp.others_calibrated("smollm2", db, 1)


def test_the_step_spread_compares_the_same_decode_steps_of_the_two_benches(tmp_path, capsys):
    import json
    sp = _load("step_spread")
    step = lambda n, ms: {"batch": [[1, 100]] * n, "ms": ms}   # noqa: E731
    batch = {"m": {"runs": [{"steps": [step(1, 10.0)] * 3 + [step(2, 20.0)] * 3 + [
        {"batch": [[64, 0]], "ms": 500.0}]}]}}
    serving = {"m": {"runs": [{"results": [{"steps": [step(1, 12.0)] * 5 + [step(2, 20.0)] * 2},
                                           {"steps": [step(1, 99.0)] * 5}]}]}}
    (tmp_path / "x9.raw.json").write_text(json.dumps(batch))
    (tmp_path / "x9e2e.raw.json").write_text(json.dumps(serving))
    out = tmp_path / "o.json"
    assert sp.main([str(tmp_path / "x9e2e.raw.json"), "--json", str(out)]) == 0
    fig = json.loads(out.read_text())
    # the low load only (the high one's steps are another engine state); too few 2-seq steps
    assert fig["b1_median_ratio"] == 1.2 and "b2_median_ratio" not in fig and fig["pairs"] == 1
    assert sp.main([str(tmp_path / "x8e2e.raw.json")]) == 2
    assert "x8e2e.raw.json: no such saved run" in capsys.readouterr().err
    (tmp_path / "x7e2e.raw.json").write_text(json.dumps({"m": {"runs": [{"results": []}]}}))
    (tmp_path / "x7.raw.json").write_text(json.dumps(batch))
    assert sp.main([str(tmp_path / "x7e2e.raw.json")]) == 2   # a file of another shape: one line
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "x7e2e.raw.json: not a serving run" in err
