"""A flag of the wrong type or out of range is one stderr line naming the flag, exit 2,
never silently a default and never argparse's usage block; lengths beyond the model's
max_position_embeddings name both numbers. `--verbose` alone lets library logs out."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bad_input import ROOT, run_bad, run_bad_process
from conftest import config, needs_vllm
from dooly.cli import main

SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")  # max_position_embeddings 8192
STEP = ["--step-model", "linear:1,0.01,0.1"]


def _argv(tmp_path, command: str, *flags) -> list:
    db, out = tmp_path / "new.db", tmp_path / "out"
    base = {"sweep": ["sweep", SMOL, "--db", db, "--engine", "transformers"],
            "simulate": ["simulate", SMOL, "--rate", "1", "--num-requests", "3", *STEP],
            "export": ["export", "vidur", SMOL, "--db", db, "--out", out],
            "calibrate": ["calibrate", SMOL, "--db", db],
            "predict": ["predict", SMOL, "--db", db],
            "analyze": ["analyze", SMOL, "--engine", "transformers"],
            "import": ["db", "import-vidur", tmp_path, "--db", db],
            "": []}[command]
    return base + list(flags)


# (command, flags, what the line names)
CASES = [
    ("sweep", ["--max-tokens", "abc"], ("--max-tokens", "abc")),
    ("sweep", ["--max-tokens", "9" * 5000], ("--max-tokens",)),
    ("sweep", ["--threads", "0"], ("--threads", "'0'")),
    ("sweep", ["--threads", "-3"], ("--threads",)),
    ("sweep", ["--threads", "1000000"], ("--threads",)),
    ("sweep", ["--max-batch", "0"], ("--max-batch",)),
    ("sweep", ["--max-batch", str(10 ** 9)], ("--max-batch", "65,536")),
    ("sweep", ["--max-context", "200000"], ("--max-context", "200000", "8192")),
    ("sweep", ["--max-tokens", "9000"], ("--max-tokens", "9000", "8192")),
    ("sweep", ["--max-context", "1.5"], ("--max-context",)),
    ("sweep", ["--device", "tpu"], ("--device",)),
    ("sweep", ["--engine", "tensorrt"], ("--engine",)),
    ("sweep", ["--bogus"], ("--bogus",)),
    ("simulate", ["--rate", "nan"], ("--rate", "nan")),
    ("simulate", ["--rate", "inf"], ("--rate", "inf")),
    ("simulate", ["--rate", "-1"], ("--rate",)),
    ("simulate", ["--rate", "0"], ("--rate",)),
    ("simulate", ["--rate", "abc"], ("--rate",)),
    ("simulate", ["--num-requests", str(10 ** 9)], ("--num-requests", "200,000")),
    ("simulate", ["--num-requests", "0"], ("--num-requests",)),
    ("simulate", ["--max-model-len", "100000"], ("--max-model-len", "100000", "8192")),
    ("simulate", ["--max-model-len", "1"], ("--max-model-len",)),
    ("simulate", ["--seed", "-1"], ("--seed",)),
    ("simulate", ["--cv", "0"], ("--cv",)),
    ("simulate", ["--cv", "nan"], ("--cv",)),
    ("simulate", ["--cv", "1e9"], ("cv",)),
    ("simulate", ["--prompt-len", "nan"], ("--prompt-len",)),
    ("simulate", ["--prompt-len", "lognormal:1e300,5"], ("--prompt-len",)),
    ("simulate", ["--prompt-len", "lognormal:512,1e200"], ("--prompt-len",)),
    ("simulate", ["--prompt-len", "uniform:5,1"], ("--prompt-len",)),
    ("simulate", ["--prompt-len", "zipf:3"], ("--prompt-len",)),
    ("simulate", ["--output-len", "0"], ("--output-len",)),
    ("simulate", ["--long-prefill-token-threshold", "-1"], ("--long-prefill-token-threshold",)),
    ("simulate", ["--block-size", "0"], ("--block-size",)),
    ("simulate", ["--max-num-seqs", "0"], ("--max-num-seqs",)),
    ("simulate", ["--num-blocks", "x"], ("--num-blocks",)),
    ("simulate", ["--num-blocks", "1"], ("--num-blocks",)),   # vLLM's block 0 holds no KV
    ("simulate", ["--arrival", "zipf"], ("--arrival",)),
    ("simulate", ["--step-model", "linear:a"], ("--step-model",)),
    ("export", ["--max-model-len", "10"], ("--max-model-len",)),
    ("export", ["--max-model-len", "100000"], ("--max-model-len", "100000", "8192")),
    ("export", ["--max-tokens", "9000"], ("--max-tokens", "9000", "8192")),
    ("export", ["--max-batch-size", "0"], ("--max-batch-size",)),
    ("export", ["--block-size", "0"], ("--block-size",)),
    ("calibrate", ["--threads", "0"], ("--threads",)),
    ("calibrate", ["--max-num-seqs", "0"], ("--max-num-seqs",)),
    ("calibrate", ["--passes", "0"], ("--passes",)),
    ("calibrate", ["--max-num-batched-tokens", "abc"], ("--max-num-batched-tokens",)),
    ("predict", [], ("--batch",)),
    ("analyze", ["--hardware", "tpu"], ("--hardware",)),
    ("import", ["--tp", "0"], ("--tp",)),
    ("import", ["--device", "tpu"], ("--device",)),
    ("", ["frobnicate"], ("frobnicate",)),
    ("", [], ("command",)),
]


@pytest.mark.parametrize("command,flags,names", CASES,
                         ids=[f"{c}{' '.join(f)[:30]}" for c, f, _ in CASES])
def test_bad_flag_is_one_line_naming_it(tmp_path, capsys, command, flags, names):
    run_bad(capsys, _argv(tmp_path, command, *flags), names, tmp_path)


@pytest.mark.parametrize("command,flags,names", [CASES[0], CASES[2], CASES[13], CASES[18]])
def test_bad_flag_in_a_fresh_process(tmp_path, command, flags, names):
    run_bad_process(_argv(tmp_path, command, *flags), names, tmp_path)


def test_simulate_refuses_to_write_over_a_file_or_into_a_directory(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    run_bad(capsys, _argv(tmp_path, "simulate", "--out", afile), ("--out", str(afile)), tmp_path)
    run_bad(capsys, _argv(tmp_path, "simulate", "--json", tmp_path), ("--json",), tmp_path)


@pytest.mark.parametrize("command", ["sweep", "predict", "analyze", "fit"])
def test_an_output_file_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, command):
    # checked when the flags are read: a sweep of an hour must not end on an unwritable path
    argv = _argv(tmp_path, command) if command != "fit" else ["fit", "--db", tmp_path / "new.db"]
    if command == "predict":
        argv += ["--batch", "prefill:8"]
    run_bad(capsys, [*argv, "--json", tmp_path], ("--json", "a folder"), tmp_path)
    (tmp_path / "afile").write_text("keep")
    run_bad(capsys, [*argv, "--json", tmp_path / "afile" / "out.json"], ("--json", "not a folder"), tmp_path)


def test_db_export_names_an_out_path_it_cannot_write(tmp_path, capsys):
    from dooly.db import Store
    db = tmp_path / "a.db"
    Store.open(db).close()
    (tmp_path / "afile").write_text("keep")
    for out, words in ((tmp_path, "a folder"), (tmp_path / "afile" / "x.json", "not a folder")):
        run_bad(capsys, ["db", "export", "--db", db, "--out", out], ("--out", words), tmp_path)
    assert main(["db", "export", "--db", str(db), "--out", str(tmp_path / "new" / "x.json")]) == 0
    assert json.loads((tmp_path / "new" / "x.json").read_text())["schema_version"]


def test_verbose_is_accepted_before_and_after_the_command(tmp_path, capsys):
    for argv in (["--verbose", *_argv(tmp_path, "simulate")], _argv(tmp_path, "simulate", "-v")):
        assert main([str(a) for a in argv]) == 0
    assert "ttft_ms" in capsys.readouterr().out


@needs_vllm
@pytest.mark.slow
def test_normal_path_prints_no_library_noise_and_verbose_shows_it(tmp_path):
    def run(*extra):
        return subprocess.run([sys.executable, "-m", "dooly.cli", *extra, "analyze", SMOL, "--quiet", "--no-cache"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
    quiet = run()
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "Reuse over 1 model" in quiet.stdout and "WARNING" not in quiet.stdout
    loud = run("--verbose")
    assert loud.returncode == 0 and "INFO" in loud.stderr and "Triton" in loud.stderr
    assert "INFO" not in loud.stdout and "WARNING" not in loud.stdout  # never on stdout
