"""Files a command reads besides configs and DBs: `dooly simulate`'s traces and ShareGPT
files, and the Vidur CSVs `dooly db import-vidur` reads. A bad one is one stderr line
naming the file (and the field), exit 2, nothing written; requests vLLM would refuse are
reported as rejected, not simulated. Any text gives requests or a one-line error,
quickly (Hypothesis)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bad_input import run_bad, run_bad_process
from conftest import ROOT, config
from dooly.cli import main
from dooly.errors import DoolyInputError
from dooly.sim.trace_files import load_sharegpt, load_trace_csv
from dooly.sim.workload import LengthDist, WorkloadSpec, load_workload

SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")  # max_position_embeddings 8192
STEP = ["--step-model", "linear:1,0.01,0.1"]
VIDUR = ROOT / "fixtures" / "vidur" / "a100" / "meta-llama" / "Llama-2-7b-hf" / "mlp.csv"
HEAD = "num_prefill_tokens,num_decode_tokens\n"

FILES = [  # (file name, content, what the line names besides the file)
    ("binary.csv", bytes(range(256)) * 8, ("cannot read",)),
    ("latin1.csv", (HEAD + "10,3\n").encode() + "caf\xe9,1\n".encode("latin-1"), ("cannot read",)),
    ("nul.csv", (HEAD + "10\x00,3\n").encode(), ("row 2", "num_prefill_tokens")),
    ("huge_field.csv", (HEAD + "1" * 200_000 + ",3\n").encode(), ("cannot read",)),
    ("digits.csv", (HEAD + "9" * 5000 + ",3\n").encode(), ("row 2", "num_prefill_tokens")),
    ("nan.csv", (HEAD + "nan,3\n").encode(), ("row 2", "num_prefill_tokens")),
    ("inf.csv", (HEAD + "10,1e400\n").encode(), ("row 2", "num_decode_tokens")),
    ("short_row.csv", (HEAD + "10\n").encode(), ("row 2", "num_decode_tokens")),
    ("newline_header.csv", b'"num_prefill\ntokens",x\n1,2\n', ("num_prefill_tokens",)),
    ("neg_time.csv", b"arrived_at," + HEAD.encode() + b"-1,10,3\n", ("arrived_at",)),
    ("nan_time.csv", b"arrived_at," + HEAD.encode() + b"nan,10,3\n", ("arrived_at",)),
    ("all_too_long.csv", (HEAD + "9000,3\n8192,1\n").encode(), ("every request is rejected", "8192")),
    ("all_zero.csv", (HEAD + "0,3\n10,0\n").encode(), ("every request is rejected",)),
    ("binary.json", bytes(range(256)) * 8, ("cannot read",)),
    ("deep.json", b"[" * 100_000, ("invalid JSON",)),
    ("digits.json", b'[{"prompt_len": ' + b"9" * 5000 + b', "output_len": 1}]', ("invalid JSON",)),
    ("big_int.json", b'[{"prompt_len": 1' + b"0" * 400 + b', "output_len": 1}]', ("prompt_len",)),
    ("list_len.json", b'[{"prompt_len": [1], "output_len": 1}]', ("prompt_len",)),
    ("bool_len.json", b'[{"prompt_len": true, "output_len": 1}]', ("prompt_len",)),
    ("inf_len.json", b'[{"prompt_len": Infinity, "output_len": 1}]', ("prompt_len",)),
    ("turn.json", b'[{"conversations": [{"value": 3}, {"value": "b"}]}]', ("conversations",)),
    ("a_dir", "dir", ("cannot read",)),
    ("missing.csv", None, ("file not found",)),
]


def _argv(tmp_path, workload, *flags) -> list:
    return ["simulate", SMOL, "--db", tmp_path / "none.db", "--workload", workload, "--rate", "2",
            "--json", tmp_path / "s.json", *flags]


def _make(tmp_path, name, content) -> Path:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("name,content,names", FILES, ids=[f[0] for f in FILES])
def test_bad_workload_file_is_one_line_naming_it(tmp_path, capsys, name, content, names):
    path = _make(tmp_path, name, content)
    run_bad(capsys, _argv(tmp_path, path), (str(path),) + names, tmp_path)


@pytest.mark.parametrize("argv_tail,names", [
    (["--arrival", "trace"], ("arrival",)),                          # ShareGPT has no clock
    (["--max-model-len", "9000"], ("--max-model-len", "8192")),
])
def test_bad_workload_settings(tmp_path, capsys, argv_tail, names):
    path = _make(tmp_path, "ok.json", b'[{"prompt_len": 10, "output_len": 2}]')
    run_bad(capsys, _argv(tmp_path, path, *argv_tail), names, tmp_path)


def test_bad_workload_in_a_fresh_process(tmp_path):
    path = _make(tmp_path, "binary.csv", bytes(range(256)) * 8)
    run_bad_process(_argv(tmp_path, path), (str(path), "cannot read"), tmp_path)


def test_requests_vllm_refuses_are_rejected_and_listed(tmp_path, capsys):
    """A prompt of max_model_len or more (the issue's 100M-token prompt would have been
    12,215 steps), an empty prompt and a zero output are rejected as vLLM rejects them;
    an output past max_model_len stops there."""
    trace = tmp_path / "t.csv"
    trace.write_text(HEAD + "100,10\n100000000,5\n0,5\n10,0\n8000,500\n8192,1\n")
    js = tmp_path / "s.json"
    assert main(["simulate", SMOL, "--workload", str(trace), "--rate", "5", "--json", str(js), *STEP]) == 0
    out = capsys.readouterr().out
    assert "rejected, as vLLM would" in out and "max_model_len 8192" in out
    data = json.loads(js.read_text())
    assert data["num_requests"] == 2 and data["length_capped"] == 1
    assert data["scheduler"]["max_model_len"] == 8192           # the model's, as vLLM derives it
    rej = data["rejected"]
    assert rej["count"] == 4 and rej["by_reason"] == {"prompt_too_long": 2, "empty_prompt": 1,
                                                      "zero_output": 1}
    assert sorted(r["rid"] for r in rej["requests"]) == [1, 2, 3, 5]
    assert data["num_steps"] < 1000
    w = load_workload(WorkloadSpec(str(trace), rate=5.0, max_model_len=8192))
    assert [(r.rid, r.prompt_len, r.output_len) for r in w.requests] == [(0, 100, 10), (4, 8000, 192)]


def _vidur_dir(tmp_path, content: bytes | None, device: str = "a100") -> Path:
    path = tmp_path / "profiles" / device / "org" / "model" / "mlp.csv"
    path.parent.mkdir(parents=True)
    if content is None:
        shutil.copy(VIDUR, path)
    else:
        path.write_bytes(content)
    return path


VIDUR_CASES = [  # (content, device directory, what the line names)
    (bytes(range(256)) * 8, "a100", ("not a UTF-8 CSV",)),
    ("n_head,caf\xe9\n".encode("latin-1"), "a100", ("not a UTF-8 CSV",)),
    (b"n_head\x00,x\n1,2\n", "a100", ("missing column",)),
    (None, "unknown_gpu", ("--device",)),
    ("tp0", "a100", ("num_tensor_parallel_workers", "line 2", "must be positive")),
    ("n_head=abc", "a100", ("'n_head'", "line 2", "not an integer", "'abc'")),
]


def _vidur_with(col_value: str) -> bytes:
    """The fixture CSV with one cell of its first row replaced ("tp0": no workers)."""
    col, value = ("num_tensor_parallel_workers", "0") if col_value == "tp0" else col_value.split("=")
    head, first, *rest = VIDUR.read_text().splitlines()
    cells = first.split(",")
    cells[head.split(",").index(col)] = value
    return "\n".join([head, ",".join(cells), *rest]).encode() + b"\n"


@pytest.mark.parametrize("content,device,names", VIDUR_CASES,
                         ids=["binary", "latin1", "nul", "no_device", "no_workers", "text_heads"])
def test_bad_vidur_csv_is_one_line_and_creates_no_db(tmp_path, capsys, content, device, names):
    if isinstance(content, str):
        content = _vidur_with(content)
    path = _vidur_dir(tmp_path, content, device)
    line = run_bad(capsys, ["db", "import-vidur", tmp_path / "profiles", "--db", tmp_path / "v.db"],
                   (str(path),) + names, tmp_path)
    assert "Traceback" not in line


def test_vidur_device_flag_imports_a_path_without_a_device(tmp_path, capsys):
    _vidur_dir(tmp_path, None, "unknown_gpu")
    rc = main(["db", "import-vidur", str(tmp_path / "profiles"), "--db", str(tmp_path / "v.db"),
               "--device", "h100"])
    assert rc == 0 and "measurements:" in capsys.readouterr().out


def _one_line(err: Exception) -> None:
    assert str(err) and "\n" not in str(err)


SLOW_OK = settings(deadline=1000, max_examples=150,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SLOW_OK
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode)
       | st.lists(st.lists(st.sampled_from(["1", "0", "-2", "x", "1e400", "nan", "", "2.5", '"3"']),
                           min_size=2, max_size=3).map(",".join), max_size=6)
       .map(lambda rows: ("arrived_at," + HEAD + "\n".join(rows)).encode()))
def test_any_trace_text_is_rows_or_one_line_error(tmp_path, content):
    path = tmp_path / "any.csv"
    path.write_bytes(content)
    try:
        rows = load_trace_csv(path)
    except DoolyInputError as err:
        _one_line(err)
        assert str(path) in str(err)
    else:
        assert all(p >= 0 and d >= 0 and (t is None or t >= 0) for t, p, d in rows)



def test_a_long_bad_value_is_quoted_short_in_its_line(tmp_path):
    path = tmp_path / "long.csv"
    path.write_bytes((HEAD + "x" * 5000 + ",3\n").encode())
    with pytest.raises(DoolyInputError) as err:
        load_trace_csv(path)
    _one_line(err.value)
    assert "'xxxxxxxxxx" in str(err.value) and "..." in str(err.value)
    assert len(str(err.value)) < len(str(path)) + 120   # 40 characters of the value, not 5000

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=4)
                     | st.dictionaries(st.sampled_from(["prompt_len", "output_len", "conversations",
                                                        "value", "from"]), kids, max_size=3),
                     max_leaves=20)


@SLOW_OK
@given(st.binary(max_size=400) | _JSON.map(lambda v: json.dumps(v).encode()))
def test_any_sharegpt_text_is_lengths_or_one_line_error(tmp_path, content):
    path = tmp_path / "any.json"
    path.write_bytes(content)
    try:
        pairs = load_sharegpt(path)
    except DoolyInputError as err:
        _one_line(err)
        assert str(path) in str(err)
    else:
        assert all(isinstance(p, int) and p >= 0 and o >= 0 for p, o in pairs)


@settings(deadline=500, max_examples=300)
@given(st.text(max_size=60) | st.builds("{}:{},{}".format, st.sampled_from(["fixed", "uniform", "lognormal"]),
                                          st.floats(), st.floats()))
def test_any_length_spec_is_a_distribution_or_one_line_error(text):
    import numpy as np
    try:
        dist = LengthDist.parse(text)
    except ValueError as err:
        _one_line(err)
    else:
        lens = dist.sample(50, np.random.default_rng(0))
        assert lens.min() >= 1
