"""Workload loaders, arrivals, clamping, and the one-line errors for malformed files,
both from the API and through `dooly simulate`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import config
from dooly.cli import main
from dooly.errors import DoolyInputError
from dooly.sim.workload import (LengthDist, WorkloadSpec, arrival_times, build_workload,
                                load_sharegpt, load_trace_csv, load_workload)

TRACES = Path(__file__).resolve().parent.parent / "fixtures" / "traces"
STEP = ["--step-model", "linear:1,0.01,0.1"]
CFG = config("HuggingFaceTB__SmolLM2-135M-Instruct")  # max_position_embeddings 8192


def sharegpt(tmp_path, entries, name="sg.json"):
    path = tmp_path / name
    path.write_text(json.dumps(entries))
    return path


def conv(human, gpt):
    return {"conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}


def test_sharegpt_lengths(tmp_path):
    path = sharegpt(tmp_path, [conv("one two three four five six seven eight nine ten", "a b"),
                               {"conversations": [{"from": "human", "value": "alone"}]},
                               {"prompt_len": 100, "output_len": 7}])
    assert load_sharegpt(path) == [(13, 3), (100, 7)]  # 10*1.3=13, 2*1.3=2.6->3; 1 turn skipped


def test_trace_csv_with_and_without_arrivals(tmp_path):
    timed = tmp_path / "t.csv"
    timed.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.5,10,3\n0.1,20,4\n")
    untimed = tmp_path / "u.csv"
    untimed.write_text("num_prefill_tokens,num_decode_tokens,extra\n10,3,x\n20,4.0,y\n")
    assert load_trace_csv(timed) == [(0.5, 10, 3), (0.1, 20, 4)]
    assert load_trace_csv(untimed) == [(None, 10, 3), (None, 20, 4)]
    reqs = build_workload(WorkloadSpec(str(timed), arrival="trace"))
    assert [(r.rid, r.arrival_s) for r in reqs] == [(1, 0.0), (0, pytest.approx(0.4))]
    reqs = build_workload(WorkloadSpec(str(untimed), rate=2.0, seed=1))
    assert [r.prompt_len for r in reqs] == [10, 20] and reqs[0].arrival_s == 0.0
    with pytest.raises(DoolyInputError, match="arrived_at"):
        build_workload(WorkloadSpec(str(untimed), arrival="trace"))


def test_fixture_traces_load_in_file_order():
    paths = sorted(TRACES.glob("*.csv"))
    assert len(paths) == 3
    for path in paths:
        rows = load_trace_csv(path)
        assert len(rows) == 500 and all(p > 0 and d > 0 for _, p, d in rows)
        timed = "splitwise" in path.name
        assert all((t is not None) == timed for t, _, _ in rows)
        w = load_workload(WorkloadSpec(str(path), rate=5.0, num_requests=50, max_model_len=4096))
        assert all(r.prompt_len + r.output_len <= 4096 for r in w.requests)
        # The first 50 rows, each request carrying its own row's lengths: a prompt of
        # max_model_len or more is rejected, as vLLM rejects it; a longer output stops there.
        assert sorted(r.rid for r in w.requests + w.rejected) == list(range(50))
        for r in w.requests:
            p = rows[r.rid][1]
            assert (r.prompt_len, r.output_len) == (p, min(rows[r.rid][2], 4096 - p))
        assert all(rows[r.rid][1] >= 4096 and r.reason == "prompt_too_long" for r in w.rejected)


def test_max_model_len_rejects_long_prompts_caps_outputs_and_num_requests_caps(tmp_path):
    path = sharegpt(tmp_path, [{"prompt_len": 5000, "output_len": 300},
                               {"prompt_len": 2000, "output_len": 300}] * 3)
    w = load_workload(WorkloadSpec(str(path), rate=1.0, num_requests=3, max_model_len=2048))
    assert [(r.rid, r.reason) for r in w.rejected] == [(0, "prompt_too_long"), (2, "prompt_too_long")]
    assert [(r.rid, r.prompt_len, r.output_len) for r in w.requests] == [(1, 2000, 48)]
    assert w.length_capped == 1
    assert len(build_workload(WorkloadSpec(str(path), rate=1.0))) == 6  # no max_model_len given


def test_synthetic_lengths_and_seed():
    spec = WorkloadSpec(rate=10.0, num_requests=2000, seed=5,
                        prompt=LengthDist.parse("uniform:10,20"), output=LengthDist.parse("7"))
    a, b = build_workload(spec), build_workload(spec)
    assert a == b
    assert {r.output_len for r in a} == {7}
    assert min(r.prompt_len for r in a) == 10 and max(r.prompt_len for r in a) == 20
    c = build_workload(WorkloadSpec(rate=10.0, num_requests=2000, seed=6))
    assert [r.arrival_s for r in c] != [r.arrival_s for r in a]
    lens = LengthDist("lognormal", 512, 0.8).sample(20000, np.random.default_rng(0))
    assert abs(lens.mean() / 512 - 1) < 0.05


@pytest.mark.parametrize("kind,cv", [("poisson", 1.0), ("gamma", 3.0), ("gamma", 0.5)])
def test_arrival_rate_and_cv(kind, cv):
    t = arrival_times(50000, 20.0, kind, cv, np.random.default_rng(0))
    gaps = np.diff(t)
    assert t[0] == 0.0 and np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(1 / 20.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_length_dist_validation():
    with pytest.raises(ValueError, match="kind"):
        LengthDist("zipf", 10)
    with pytest.raises(ValueError, match="b must be"):
        LengthDist("uniform", 10, 5)


BAD_FILES = [
    ("missing.json", None, "file not found", None),
    ("bad.json", "[{\"conversations\": ", "invalid JSON", None),
    ("notlist.json", "{\"a\": 1}", "JSON list", None),
    ("noconv.json", json.dumps([conv("a", "b"), {"foo": 1}]), "entry 1", "conversations"),
    ("neg.json", json.dumps([{"prompt_len": -3, "output_len": 4}]), "negative", "prompt_len"),
    ("frac.json", json.dumps([{"prompt_len": 3, "output_len": 2.5}]), "not an integer",
     "output_len"),
    ("nocol.csv", "arrived_at,num_prefill_tokens\n0,10\n", "missing column",
     "num_decode_tokens"),
    ("negrow.csv", "num_prefill_tokens,num_decode_tokens\n10,3\n10,-2\n", "row 3",
     "num_decode_tokens"),
    ("text.csv", "num_prefill_tokens,num_decode_tokens\nten,3\n", "row 2", "num_prefill_tokens"),
    ("empty.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n", "no requests", None),
    ("empty.json", "[]", "no requests", None),
    ("time.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\nsoon,1,1\n", "row 2",
     "arrived_at"),
]


@pytest.mark.parametrize("name,text,problem,field", BAD_FILES)
def test_malformed_files_raise_naming_file_and_field(tmp_path, name, text, problem, field):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(DoolyInputError) as info:
        build_workload(WorkloadSpec(str(path), rate=1.0))
    msg = str(info.value)
    assert str(path) in msg and problem in msg
    if field:
        assert info.value.field == field and field in msg


@pytest.mark.parametrize("name,text,problem,field", BAD_FILES)
def test_cli_malformed_file_is_one_line_exit_2(tmp_path, capsys, name, text, problem, field):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    rc = main(["simulate", CFG, "--workload", str(path), "--rate", "2", *STEP])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("dooly: error: ")
    assert str(path) in err and problem in err and (field is None or field in err)


def test_cli_runs_and_writes_outputs(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n"
                     + "".join(f"{i * 0.05},{100 + i},{5 + i % 7}\n" for i in range(40)))
    out, js = tmp_path / "out", tmp_path / "s.json"
    rc = main(["simulate", CFG, "--workload", str(trace), "--num-blocks", "64",
               "--max-num-seqs", "16", "--out", str(out), "--json", str(js), *STEP])
    assert rc == 0
    data = json.loads(js.read_text())
    assert data["num_requests"] == 40 and data["workload"]["arrival"] == "trace"
    assert data["scheduler"]["num_blocks"] == 64 and data["ttft_ms"]["p50"] > 0
    assert (out / "cdf.png").stat().st_size > 1000
    assert len((out / "requests.csv").read_text().splitlines()) == 41
    assert "ttft_ms" in capsys.readouterr().out


def test_cli_synthetic_and_kv_too_small(tmp_path, capsys):
    assert main(["simulate", CFG, "--rate", "50", "--num-requests", "100",
                 "--seed", "1", *STEP]) == 0
    capsys.readouterr()
    rc = main(["simulate", CFG, "--rate", "5", "--num-requests", "20",
               "--prompt-len", "4000", "--num-blocks", "8", *STEP])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "num_blocks" in err


def test_cli_without_latency_model_is_clear(capsys):
    rc = main(["simulate", CFG, "--rate", "5", "--num-requests", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--db" in err
