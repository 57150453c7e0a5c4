"""`dooly predict --batch`: a bad spec or batch file is one stderr line naming `--batch` or
the file, exit 2, checked against the model's length before the DB is opened; a spec is
never looked up as a path; absurd counts are refused before anything is expanded. Any
text gives a batch or a one-line error, quickly (Hypothesis)."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bad_input import run_bad, run_bad_process
from conftest import config
from dooly.cli.batchspec import MAX_SEQS, parse_batch
from dooly.errors import DoolyInputError

SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")  # max_position_embeddings 8192

SPECS = [  # (spec, what the line names)
    ("prefill:", ("--batch",)),
    ("decode:4x2@8", ("--batch", "N@C")),
    ("foo:1", ("--batch",)),
    ("prefill:0", ("--batch",)),
    ("decode:0@16", ("--batch",)),
    ("", ("--batch",)),
    (",,,", ("--batch",)),
    ("x" * 5000, ("--batch", "cannot parse")),
    ("prefill:16," * 416 + "prefil:1", ("--batch",)),              # 5,000 characters
    ("prefill:16x1000000000", ("--batch", "65,536")),
    ("prefill:1000000000000x1", ("--batch", "8,192")),
    ("decode:70000@10", ("--batch", "65,536")),
    ("prefill:4x40000,decode:40000@1", ("--batch", "65,536")),
    ("prefill:9000", ("--batch", "9,000", "8,192")),
    ("decode:1@8192", ("--batch", "8,193")),
    ("prefill:64@8190", ("--batch", "8,254")),
    ("prefill:" + "9" * 5000, ("--batch", "18 digits")),
    ("batch.json", ("--batch", "cannot parse")),                    # a path without @ is a spec
    ("@", ("file not found",)),
]

FILES = [  # (file name, content, what the line names besides the file)
    ("missing.json", None, ("file not found",)),
    ("bad.json", b"[[1, 2]", ("not valid JSON",)),
    ("empty.json", b"[]", ("seqs",)),
    ("zero.json", json.dumps({"seqs": [[4, 0], [0, 3]]}).encode(), ("seqs", "item 1")),
    ("neg.json", b"[[1, -1]]", ("seqs",)),
    ("float.json", b"[[1.5, 2]]", ("seqs",)),
    ("bool.json", b"[[true, 1]]", ("seqs",)),
    ("triple.json", b"[[1, 2, 3]]", ("seqs",)),
    ("object.json", b'{"batch": [[1, 2]]}', ("seqs",)),
    ("long.json", b"[[9000, 0]]", ("seqs", "8,192")),
    ("many.json", json.dumps([[1, 0]] * (MAX_SEQS + 1)).encode(), ("seqs", "65,536")),
    ("deep.json", b"[" * 100_000, ("not valid JSON",)),
    ("digits.json", b"[[" + b"9" * 5000 + b", 0]]", ("not valid JSON",)),
    ("binary.json", bytes(range(256)) * 4, ("not valid JSON",)),
]


def _argv(tmp_path, batch: str) -> list:
    return ["predict", SMOL, "--db", tmp_path / "none.db", "--batch", batch]


@pytest.mark.parametrize("spec,names", SPECS, ids=[s[:24] or "empty" for s, _ in SPECS])
def test_bad_spec_is_one_line(tmp_path, capsys, spec, names):
    run_bad(capsys, _argv(tmp_path, spec), names, tmp_path)


@pytest.mark.parametrize("name,content,names", FILES, ids=[f[0] for f in FILES])
def test_bad_batch_file_is_one_line_naming_it(tmp_path, capsys, name, content, names):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    run_bad(capsys, _argv(tmp_path, "@" + str(path)), (str(path),) + names, tmp_path)


def test_a_directory_is_not_a_batch_file(tmp_path, capsys):
    run_bad(capsys, _argv(tmp_path, f"@{tmp_path}"), (str(tmp_path),), tmp_path)


@pytest.mark.parametrize("spec,names", [SPECS[7], SPECS[9], SPECS[10]])
def test_bad_spec_in_a_fresh_process(tmp_path, spec, names):
    run_bad_process(_argv(tmp_path, spec), names, tmp_path)


def test_good_specs_and_files(tmp_path):
    assert parse_batch("prefill:512x2, decode:3@1024") == [(512, 0)] * 2 + [(1, 1024)] * 3
    assert parse_batch("decode:65536@1") == [(1, 1)] * MAX_SEQS
    assert parse_batch("prefill:8000@192", 8192) == [(8000, 192)]
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"seqs": [[4, 0], [1, 30]]}))
    assert parse_batch(f"@{path}", 8192) == [(4, 0), (1, 30)]


def _one_line(err: DoolyInputError) -> None:
    assert "\n" not in str(err) and str(err)


@settings(deadline=500, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300).filter(lambda t: not t.startswith("@")))
def test_any_text_is_a_batch_or_one_line_error(text):
    try:
        batch = parse_batch(text, 8192)
    except DoolyInputError as err:
        _one_line(err)
    else:
        assert 1 <= len(batch) <= MAX_SEQS and all(q >= 1 and c >= 0 and q + c <= 8192 for q, c in batch)


_NUM = st.one_of(st.integers(0, 20), st.integers(0, 10 ** 15).map(str).map(int))
_ITEM = st.builds(lambda kind, a, n, c: f"{kind}:{a}" + (f"x{n}" if n is not None else "")
                  + (f"@{c}" if c is not None else ""),
                  st.sampled_from(["prefill", "decode"]), _NUM, st.none() | _NUM, st.none() | _NUM)


@settings(deadline=500, max_examples=300)
@given(st.lists(_ITEM, min_size=1, max_size=8).map(",".join))
def test_near_valid_specs_never_expand_absurd_counts(text):
    try:
        batch = parse_batch(text, 8192)
    except DoolyInputError as err:
        _one_line(err)
    else:
        assert len(batch) <= MAX_SEQS and all(q + c <= 8192 for q, c in batch)


@settings(deadline=1000, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_any_batch_file_is_a_batch_or_one_line_error(tmp_path, content):
    path = tmp_path / "any.json"
    path.write_bytes(content)
    try:
        batch = parse_batch(f"@{path}", 8192)
    except DoolyInputError as err:
        _one_line(err)
        assert str(path) in str(err)
    else:
        assert batch and all(q + c <= 8192 for q, c in batch)
