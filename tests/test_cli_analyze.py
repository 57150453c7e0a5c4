import json

import pytest

from conftest import config, needs_vllm
from dooly.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_json_has_documented_schema(tmp_path, capsys):
    path = tmp_path / "a.json"
    code, out, _ = _run(capsys, "analyze", config("HuggingFaceTB__SmolLM2-135M-Instruct"),
                        config("Qwen__Qwen2.5-0.5B"), "--engine", "transformers",
                        "--json", str(path), "--hardware", "cpu")
    assert code == 0 and "Reuse" in out
    data = json.loads(path.read_text())
    assert data["engine"] == "transformers"
    assert {"independent_cost_s", "dedup_cost_s", "reduction_pct", "unique_units",
            "total_units"} <= set(data["reuse"])
    m = data["models"][0]
    assert {"config", "architecture", "units"} <= set(m)
    u = m["units"][0]
    assert {"key", "op", "count", "dims", "stateful"} <= set(u)
    assert {"value_or_expr", "label", "config_fields"} <= set(u["dims"][0])
    assert data["reuse"]["unique_units"] <= data["reuse"]["total_units"]


def _bad(tmp_path, text):
    p = tmp_path / "config.json"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text,needle", [
    (None, "file not found"),
    ("{not json", "not valid JSON"),
    ('{"model_type": "llama"}', "architectures"),
    ('{"architectures": ["LlamaForCausalLM"]}', "model_type"),
    ('{"architectures": ["FooForCausalLM"], "model_type": "foo_unknown", "hidden_size": 64, '
     '"num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 100}', "model_type"),
    ('{"architectures": ["FooForCausalLM"], "model_type": "foo_unknown"}', "hidden_size"),
    ('[1, 2]', "JSON object"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, text, needle):
    path = str(tmp_path / "missing.json") if text is None else _bad(tmp_path, text)
    code, _, err = _run(capsys, "analyze", path, "--engine", "transformers")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and needle in lines[0]
    assert "Traceback" not in err


@needs_vllm
def test_vllm_unknown_architecture_is_one_line_exit_2(tmp_path, capsys):
    path = _bad(tmp_path, json.dumps({"architectures": ["FooBarForCausalLM"], "model_type": "llama",
                                      "hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 100,
                                      "num_attention_heads": 4, "intermediate_size": 128}))
    code, _, err = _run(capsys, "analyze", path, "--engine", "vllm")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and path in lines[0] and "architectures" in lines[0]


def test_the_command_exits_fast_but_runs_exit_handlers_and_keeps_its_code(tmp_path):
    """`dooly` skips Python's module teardown, not the exit handlers (temporary files,
    logging) nor the flushed output nor the exit code."""
    import subprocess
    import sys
    marker, bad = tmp_path / "handler-ran", tmp_path / "bad.json"
    bad.write_text("{}")
    code = ("import atexit, sys; from dooly.cli import run; "
            f"atexit.register(lambda: open({str(marker)!r}, 'w').write('x')); "
            f"sys.argv = ['dooly', 'analyze', {str(bad)!r}]; print('before', end=''); run()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == "before"
    assert "architectures" in proc.stderr and marker.read_text() == "x"
