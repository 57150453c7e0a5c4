"""`dooly search`: SLO and --vary specs, goodput by bisection, probes cut once an SLO is
sure to be missed, ranking, the within-error verdict, the binding SLO, and what the
command writes (flat JSON per candidate, deploy.sh, charts). Step times come from a
linear stand-in or a fake; no vLLM, no DB unless a test builds a tiny one."""
from __future__ import annotations

import json
import math
import stat

import numpy as np
import pytest

from bad_input import run_bad
from conftest import config
from dooly.cli import main
from dooly.search import CandidateResult, SearchSpec, rank, search, verdict
from dooly.sim.candidates import Candidate, deploy_flags, deploy_script, make_candidates, parse_vary
from dooly.sim.goodput import Goodput, Probe, at_rate, find_goodput, run_probe
from dooly.sim.intervals import Uncertainty
from dooly.sim.metrics import request_metrics
from dooly.sim.scheduler import SchedulerConfig
from dooly.sim.simulator import simulate
from dooly.sim.slo import parse_slos, slo_values
from dooly.sim.steps import LinearSource
from dooly.sim.workload import LengthDist, WorkloadSpec, build_workload

SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")
STEP = ["--step-model", "linear:5,0.02,0.5"]


def requests(n=60, seed=0):
    """Requests at 1 request/s: what a search scales to each rate."""
    return tuple(build_workload(WorkloadSpec(rate=1.0, num_requests=n, seed=seed,
                                             prompt=LengthDist("lognormal", 256, 0.6),
                                             output=LengthDist("lognormal", 48, 0.6))))


def linear(batch):
    return 5.0 + 0.02 * sum(s[0] for s in batch) + 0.5 * sum(s[1] for s in batch) / 1000


# -- specs ----------------------------------------------------------------------------------
def test_slo_spec_reads_seconds_milliseconds_and_statistics():
    slos = parse_slos("ttft_p90=2s, tpot_p99.9=80ms,e2e_mean=1500")
    assert [(s.name, s.limit_ms) for s in slos] == [("ttft_p90", 2000.0), ("tpot_p99.9", 80.0),
                                                    ("e2e_mean", 1500.0)]
    assert slos[1].quantile == 99.9


@pytest.mark.parametrize("text", ["ttft=2s", "ttft_p90", "ttft_p90=abc", "ttft_p90=0ms",
                                  "ttft_p0=1s", "ttft_p101=1s", "goodput_p90=1s", "ttft_p90=2h",
                                  "ttft_p90=1s,ttft_p90=2s", "ttft_p90=-1s", "ttft_p90=nan"])
def test_bad_slo_spec_is_a_value_error_naming_the_part(text):
    with pytest.raises(ValueError, match="ttft|goodput"):
        parse_slos(text)


def test_vary_reads_knobs_in_either_spelling():
    v = parse_vary(["max-num-batched-tokens=512,2048", "max_num_seqs=64", "env=a1,b2",
                    "num_gpu_blocks_override=100"])
    assert v == {"max_num_batched_tokens": (512, 2048), "max_num_seqs": (64,), "env": ("a1", "b2"),
                 "num_blocks": (100,)}


@pytest.mark.parametrize("spec,says", [("pp=2", "not modelled yet"), ("dtype=fp8", "not modelled yet"),
                                       ("tp=0", "from 1"),
                                       ("frobs=1", "unknown knob"), ("max_num_seqs", "KNOB=V1"),
                                       ("max_num_seqs=0", "from 1"), ("num_blocks=1", "from 2"),
                                       ("max_num_seqs=8,,16", "empty"),
                                       ("max_num_seqs=8,8", "twice"), ("max_num_seqs=x", "integers"),
                                       ("max_num_seqs=" + "9" * 40, "integers")])
def test_bad_vary_is_a_value_error_saying_why(spec, says):
    with pytest.raises(ValueError, match=says):
        parse_vary([spec])


def test_candidates_are_every_combination_with_the_varied_knobs_in_their_label():
    cands = make_candidates([("a.json", "org/A"), ("b.json", "org/B")],
                            {"max_num_seqs": (8, 64), "max_num_batched_tokens": (512,)},
                            {"block_size": 16, "max_num_seqs": 4}, env="e1")
    assert len(cands) == 4
    assert {c.get("max_num_seqs") for c in cands} == {8, 64}   # varied beats fixed
    assert all(c.get("block_size") == 16 and c.env == "e1" for c in cands)
    assert cands[0].label == "A seqs=8 tokens=512"
    assert cands[0].scheduler(SchedulerConfig()).max_num_seqs == 8
    with pytest.raises(ValueError, match="at most"):
        make_candidates([("a", "A")], {"max_num_seqs": tuple(range(1, 200)),
                                       "max_num_batched_tokens": tuple(range(1, 200))}, {})


@pytest.mark.parametrize("flags,names", [
    (["--slo", "ttft_p90=soon"], ("--slo", "ttft_p90=soon")),
    (["--slo", "ttft_p90=1s", "--vary", "pp=1,2"], ("--vary", "pp", "not modelled yet")),
    (["--slo", "ttft_p90=1s", "--vary", "tp=1,7"], ("--vary", "tp=7", "attention heads")),
    (["--slo", "ttft_p90=1s", "--vary", "colour=red"], ("--vary", "colour")),
    (["--slo", "ttft_p90=1s", "--vary", "max_num_seqs=0"], ("--vary", "max_num_seqs")),
    (["--slo", "ttft_p90=1s", "--rate-range", "5:1"], ("--rate-range",)),
    (["--slo", "ttft_p90=1s", "--rate-range", "nan:1"], ("--rate-range",)),
    (["--slo", "ttft_p90=1s", "--slo", "ttft_p90=2s"], ("--slo", "twice")),
    (["--slo", "ttft_p90=1s", "--num-blocks", "2"], ("--num-blocks", "KV blocks")),
    (["--slo", "ttft_p90=1s", "--jobs", "0"], ("--jobs",)),
    ([], ("--slo",)),
])
def test_bad_search_input_is_one_line_naming_the_flag(tmp_path, capsys, flags, names):
    run_bad(capsys, ["search", SMOL, *STEP, "--num-requests", "5", *flags], names, tmp_path)


def test_search_without_a_latency_model_names_db(tmp_path, capsys):
    run_bad(capsys, ["search", SMOL, "--slo", "ttft_p90=1s"], ("--db",), tmp_path)


def test_environment_the_db_lacks_names_the_flag(tmp_path, capsys):
    from dooly.db import Store
    from dooly.env import Environment
    db = tmp_path / "e.db"
    with Store.open(str(db)) as s:
        s.add_environment(Environment("cpu0", "cpu", "vllm", "0.32", "CPU_ATTN", "bfloat16"))
    base = ["search", SMOL, "--db", db, "--slo", "ttft_p90=1s"]
    run_bad(capsys, base + ["--vary", "env=nope,other"], ("--vary", "nope"), tmp_path)
    run_bad(capsys, base + ["--env", "nope"], ("--env", "nope"), tmp_path)
    run_bad(capsys, base, ("--env", "no inventory", "SmolLM2"), tmp_path)   # env there, model not


def test_a_tp_size_the_db_has_no_shards_for_names_the_flag(tmp_path, capsys):
    from test_step_model import _sig
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.env import Environment
    from dooly.unit import Unit
    db = tmp_path / "t.db"
    unit = Unit("linear", (_sig("T", 64), _sig(128, 64)), (_sig("T", 128),))
    with Store.open(str(db)) as s:
        s.add_environment(Environment("cpu0", "cpu", "vllm", "0.32", "CPU_ATTN", "bfloat16"))
        s.add_unit(unit)
        s.set_inventory(load_config(SMOL).hash, "vllm", "smol", {unit.key: 30})
    run_bad(capsys, ["search", SMOL, "--db", db, "--slo", "ttft_p90=1s", "--vary", "tp=1,3"],
            ("--vary", "at tp 3", "--tp 3"), tmp_path)


def test_tensor_parallel_candidates_are_ranked_per_device(tmp_path, capsys):
    js = tmp_path / "s.json"
    assert main(["search", SMOL, *STEP, "--slo", "ttft_p90=300ms", "--vary", "tp=1,3",
                 "--num-requests", "30", "--prompt-len", "128", "--output-len", "16", "--probes", "6",
                 "--intervals", "0", "--jobs", "1", "--json", str(js), "--out", str(tmp_path / "o")]) == 0
    rows = json.loads(js.read_text())["candidates"]
    assert [(r["tp"], r["devices"]) for r in rows] == [(1, 1), (3, 3)]   # the stand-in ignores tp
    assert rows[1]["goodput_rps_per_device"] == pytest.approx(rows[1]["goodput_rps"] / 3)
    assert "--tensor-parallel-size 1" in (tmp_path / "o" / "deploy.sh").read_text()


# -- bisection ------------------------------------------------------------------------------
def fake_probe(threshold, binding="ttft_p90"):
    def probe(rate):
        ok = rate <= threshold
        return Probe(rate, ok, {binding: rate}, missed=None if ok else binding)
    return probe


@pytest.mark.parametrize("threshold", [0.07, 0.9, 3.7, 41.0])
def test_bisection_finds_the_highest_passing_rate(threshold):
    g = find_goodput(fake_probe(threshold), 0.05, 50.0, max_probes=14)
    assert g.status == "ok" and g.rate <= threshold and g.fail_rate > threshold
    assert g.rate == pytest.approx(threshold, rel=0.01)
    assert g.binding == "ttft_p90" and len(g.probes) <= 14
    assert g.at_goodput.rate == g.rate


def test_bisection_says_when_the_range_is_too_low_or_too_high():
    top = find_goodput(fake_probe(99.0), 0.05, 50.0)
    assert (top.status, top.rate, len(top.probes)) == ("above_range", 50.0, 1)
    none = find_goodput(fake_probe(0.01, "tpot_p90"), 0.05, 50.0, max_probes=6)
    assert (none.status, none.rate, none.binding) == ("infeasible", 0.0, "tpot_p90")
    assert len(none.probes) == 7 and none.probes[-1].rate == 0.05   # the lowest rate, confirmed


def test_a_guess_bracket_is_tried_first_and_left_when_wrong():
    seen = []

    def probe(rate):
        seen.append(rate)
        return fake_probe(3.0)(rate)
    g = find_goodput(probe, 0.05, 50.0, max_probes=8, guess=(2.0, 4.5))
    assert seen[:2] == [4.5, 2.0] and g.rate == pytest.approx(3.0, rel=0.02)
    far = find_goodput(fake_probe(20.0), 0.05, 50.0, max_probes=12, guess=(2.0, 4.5))
    assert far.rate == pytest.approx(20.0, rel=0.02)


def test_every_probe_replays_the_same_lengths_at_scaled_arrivals():
    reqs = requests(20)
    fast = at_rate(reqs, 4.0)
    assert [(r.prompt_len, r.output_len) for r in fast] == [(r.prompt_len, r.output_len) for r in reqs]
    assert [r.arrival_s for r in fast] == pytest.approx([r.arrival_s / 4 for r in reqs])


@pytest.mark.parametrize("rate", [0.5, 4.0, 12.0, 40.0])
def test_a_cut_probe_gives_the_full_runs_verdict_and_lower_bounds(rate):
    slos = parse_slos("ttft_p90=400ms,tpot_p90=60ms,itl_p99=200ms,e2e_mean=5s")
    sched = SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=16)
    reqs = requests(80)
    probe = run_probe(reqs, rate, linear, sched, slos)
    full = [request_metrics(r) for r in simulate(at_rate(reqs, rate), linear, sched).requests]
    values = slo_values(slos, full)
    assert probe.ok == all(s.met(values[s.name]) for s in slos)
    if probe.cut:
        assert not probe.ok and probe.stats is None
        missed = next(s for s in slos if s.name == probe.missed)
        assert values[missed.name] > missed.limit_ms
        for s in slos:
            assert probe.values[s.name] <= values[s.name] + 1e-6
    else:
        assert probe.values == pytest.approx(values)


def test_overloaded_probes_are_cut():
    slos = parse_slos("ttft_p90=400ms")
    probe = run_probe(requests(80), 40.0, linear, SchedulerConfig(max_num_seqs=4), slos)
    assert probe.cut and probe.missed == "ttft_p90"


# -- ranking and verdict ----------------------------------------------------------------------
def result(label, rate, draws=(), ttft=100.0, tp=1):
    cand = Candidate(f"{label}.json", f"org/{label}", "e", (("tp", tp),) if tp > 1 else ())
    probe = Probe(rate, True, {}, stats={"ttft_p90_ms": ttft}) if rate else None
    return CandidateResult(cand, Goodput(rate, "ok", (probe,) if probe else ()), Uncertainty(),
                           tuple(draws))


def test_ranking_is_goodput_per_device_then_lower_ttft():
    ranked = rank([result("a", 2.0), result("b", 3.0, tp=2), result("c", 2.0, ttft=50.0),
                   result("d", 0.0), result("e", 2.5)])
    assert [r.candidate.model for r in ranked] == ["org/e", "org/c", "org/a", "org/b", "org/d"]


def test_winner_is_within_error_when_the_runner_ups_band_overlaps():
    close = [result("w", 10.0, draws=np.linspace(9, 11, 9)), result("r", 9.5, draws=np.linspace(8.6, 10.4, 9))]
    within, wins = verdict(close)
    assert within is True and 0 <= wins < 0.5
    apart = [result("w", 10.0, draws=np.linspace(9.5, 10.5, 9)), result("r", 5.0, draws=np.linspace(4.5, 5.5, 9))]
    assert verdict(apart) == (False, 0.0)
    assert verdict([result("w", 10.0), result("r", 9.0)]) == (None, None)   # no bands drawn


def test_the_binding_slo_is_the_one_missed_just_above_goodput():
    reqs = requests(60)
    cand = make_candidates([(SMOL, "org/m")], {}, {"max_num_seqs": 16})
    for slo_text, binds in (("ttft_p90=5s,tpot_p90=6.5ms", "tpot_p90"),
                            ("ttft_p90=300ms,tpot_p90=500ms", "ttft_p90")):
        spec = SearchSpec(reqs, parse_slos(slo_text), 0.05, 200.0, probes=10, draws=0)
        out = search(LinearSource(5, 0.02, 0.5), cand, spec)
        assert out.winner.goodput.status == "ok" and out.winner.goodput.binding == binds


def test_search_ranks_candidates_and_bands_the_leaders():
    cands = make_candidates([(SMOL, "org/m")], {"max_num_seqs": (2, 32)}, {})
    spec = SearchSpec(requests(60), parse_slos("ttft_p90=100ms"), 0.05, 200.0, probes=8, draws=4, band_top=2)
    out = search(LinearSource(5, 0.02, 0.5, error_pct=10.0), cands, spec)
    assert [r.candidate.get("max_num_seqs") for r in out.ranked] == [32, 2]
    assert all(len(r.draws) == 4 for r in out.ranked)
    assert out.winner.goodput.status == "ok"
    lo, hi = out.winner.band
    assert lo < hi and out.within_error is not None


# -- what the command writes ------------------------------------------------------------------
def test_search_command_writes_flat_json_deploy_script_and_charts(tmp_path, capsys):
    out, js = tmp_path / "out", tmp_path / "s.json"
    rc = main(["search", SMOL, *STEP[:1], "linear:5,0.02,0.5,8", "--slo", "ttft_p90=1s,tpot_p90=40ms",
               "--vary", "max_num_seqs=2,32", "--vary", "max_num_batched_tokens=256,2048",
               "--max-model-len", "4096", "--num-requests", "40", "--prompt-len", "lognormal:256,0.6",
               "--output-len", "lognormal:32,0.6", "--probes", "6", "--intervals", "3",
               "--band-top", "2", "--jobs", "1", "--out", str(out), "--json", str(js)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "winner:" in text and "binds" in text
    data = json.loads(js.read_text())
    assert data == json.loads((out / "search.json").read_text())
    rows = data["candidates"]
    assert len(rows) == 4 and [r["rank"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert not any(isinstance(v, (dict, list)) for v in r.values())
        assert {"goodput_rps", "goodput_rps_per_device", "binding_slo", "ttft_p90_ms",
                "output_tokens_per_s", "max_num_seqs", "max_num_batched_tokens"} <= set(r)
    assert rows[0]["winner"] and rows[0]["within_error"] in (True, False)
    assert rows[0]["goodput_band_lo"] is not None and rows[-1]["goodput_band_lo"] is None
    deploy = (out / "deploy.sh").read_text()
    win = rows[0]
    assert deploy.startswith("#!/usr/bin/env bash") and "HuggingFaceTB/SmolLM2-135M-Instruct" in deploy
    assert f"--max-num-seqs {win['max_num_seqs']}" in deploy
    assert f"--max-num-batched-tokens {win['max_num_batched_tokens']}" in deploy
    assert "--max-model-len 4096" in deploy and "--block-size" not in deploy   # only what was set
    assert (out / "deploy.sh").stat().st_mode & stat.S_IXUSR
    for name in ("pareto.png", "curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "probes.csv").read_text().startswith("candidate,rate_rps,ok,cut,missed,ttft_p90_ms")


def test_deploy_script_quotes_and_passes_extra_arguments():
    cand = Candidate("c.json", "org/m", "e1", (("max_num_seqs", 8), ("num_blocks", 100)), ("max_num_seqs",))
    flags = deploy_flags(cand, {"max_num_seqs", "num_blocks", "env"}, backend="FLASH_ATTN")
    assert flags == ["--max-num-seqs", "8", "--num-gpu-blocks-override", "100",
                     "--attention-backend", "FLASH_ATTN"]
    text = deploy_script("org/m it's", flags, ["note"])
    assert "# note" in text and 'exec vllm serve "$MODEL"' in text and text.rstrip().endswith('"$@"')


def test_worker_processes_find_the_same_goodputs():
    cands = make_candidates([(SMOL, "org/m")], {"max_num_seqs": (2, 32)}, {})
    spec = SearchSpec(requests(40), parse_slos("ttft_p90=1s"), 0.05, 200.0, probes=6, draws=0)
    one = search(LinearSource(5, 0.02, 0.5), cands, spec, jobs=1)
    two = search(LinearSource(5, 0.02, 0.5), cands, spec, jobs=2)
    assert [r.goodput.rate for r in one.ranked] == [r.goodput.rate for r in two.ranked]
    assert not math.isnan(one.winner.goodput.rate)


def test_search_over_a_db_uses_the_predictor_and_its_errors_and_writes_nothing_there(tmp_path, capsys):
    from bad_input import snapshot
    from test_intervals import _pool_db
    db, _ = _pool_db(tmp_path)
    before = snapshot(tmp_path)
    js = tmp_path / "out" / "s.json"
    rc = main(["search", SMOL, "--db", db, "--slo", "ttft_p90=300ms", "--vary", "max_num_seqs=4,32",
               "--num-requests", "30", "--prompt-len", "96", "--output-len", "12", "--probes", "5",
               "--intervals", "2", "--band-top", "2",
               "--jobs", "1", "--json", str(js)])
    assert rc == 0
    rows = json.loads(js.read_text())["candidates"]
    assert {r["step_error_source"] for r in rows} == {"its own 30 calibrated steps"}
    assert all(r["env"] and r["unit_error_pct"] > 0 and r["goodput_rps"] > 0 for r in rows)
    js.unlink()
    js.parent.rmdir()
    assert snapshot(tmp_path) == before


def test_a_cached_step_model_answers_each_batch_once_and_alike():
    from dooly.sim.scheduler import ScheduledSeq
    from dooly.sim.steps import CachedStep
    calls = []

    def step(batch):
        calls.append(batch)
        return linear(batch)
    cached = CachedStep(step)
    a, b = [ScheduledSeq(1, 300, True)], [ScheduledSeq(1, 300, True), ScheduledSeq(64, 0, False)]
    assert [cached(x) for x in (a, b, list(a), b)] == [linear(a), linear(b), linear(a), linear(b)]
    assert len(calls) == 2
