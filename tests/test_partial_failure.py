"""`dooly analyze A B C` / `dooly sweep A B C` where B cannot be captured: A and C are
analysed and reported, B gets one stderr line and is named as skipped, the JSON lists
it under "failed", exit code 2. Bad input files still stop the run before any capture."""
import json

import pytest

from conftest import config
from dooly import analyze as analyze_mod
from dooly.cli import main
from dooly.errors import DoolyInputError
from dooly.graph.units import Inventory

A, C = config("HuggingFaceTB__SmolLM2-135M-Instruct"), config("Qwen__Qwen2.5-0.5B")


def _unknown_type(tmp_path) -> str:
    """Valid sizes, a model type transformers does not know: fails at capture time."""
    p = tmp_path / "unknown.json"
    p.write_text(json.dumps({"architectures": ["FooForCausalLM"], "model_type": "foo_unknown",
                             "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                             "vocab_size": 100}))
    return str(p)


def _empty_inventory(cfg, engine="transformers"):
    return Inventory(cfg.name, cfg.path, cfg.architecture, engine, cfg.hash)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_skips_a_model_it_cannot_capture(tmp_path, capsys):
    b, path = _unknown_type(tmp_path), tmp_path / "a.json"
    code, out, err = _run(capsys, "analyze", A, b, C, "--engine", "transformers",
                          "--json", path, "--hardware", "cpu")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and b in lines[0] and "model_type" in lines[0]
    assert "Traceback" not in err + out
    # A and C reported, the reuse summary covers them and names B as skipped
    assert "SmolLM2-135M-Instruct" in out and "Qwen2.5-0.5B" in out
    assert "Reuse over 2 model(s)" in out and "Skipped 1 model(s)" in out
    assert "unknown.json" in out
    data = json.loads(path.read_text())
    assert [m["config"] for m in data["models"]] == [A, C]
    assert data["failed"] == [{"config": b, "error": lines[0].removeprefix("dooly: error: ")}]
    assert data["reuse"]["models"] == 2 and data["reuse"]["skipped"] == [b]


def test_analyze_with_every_model_failing_writes_nothing(tmp_path, capsys):
    b, path = _unknown_type(tmp_path), tmp_path / "a.json"
    code, out, err = _run(capsys, "analyze", b, b, "--engine", "transformers", "--json", path)
    assert code == 2 and not path.exists() and out == ""
    assert err.count("dooly: error:") == 2 and "Traceback" not in err


def test_bad_input_file_stops_the_run_before_any_capture(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    monkeypatch.setattr(analyze_mod, "analyze_config",
                        lambda *a, **k: pytest.fail("captured before every file was validated"))
    path = tmp_path / "a.json"
    code, out, err = _run(capsys, "analyze", A, bad, C, "--engine", "transformers", "--json", path)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(bad) in lines[0] and "not valid JSON" in lines[0]
    assert out == "" and not path.exists()


def test_capture_errors_become_one_line_naming_the_config(tmp_path, monkeypatch):
    def fake(cfg, *a, **k):
        if cfg.path == C:
            raise RuntimeError("meta tensors cannot run this kernel\nsecond line")
        return _empty_inventory(cfg)
    monkeypatch.setattr(analyze_mod, "analyze_config", fake)
    a = analyze_mod.analyze([A, C], "transformers")
    assert len(a.inventories) == 1
    (f,) = a.failed
    assert f["config"] == C and "\n" not in f["error"] and C in f["error"]
    assert "RuntimeError: meta tensors cannot run this kernel" in f["error"]


def test_an_error_about_a_flag_stops_the_run(monkeypatch):
    """An input error that names anything but the model's config (a flag) is not about
    this model: it stops the run rather than skipping every model."""
    def fake(*a, **k):
        raise DoolyInputError("--tp", "3: no such thing")
    monkeypatch.setattr(analyze_mod, "analyze_config", fake)
    with pytest.raises(DoolyInputError, match="--tp"):
        analyze_mod.analyze([A, C], "transformers")


def test_sweep_skips_a_model_it_cannot_capture(tmp_path, capsys, monkeypatch):
    """The sweep itself is stubbed: only the multi-config handling is under test."""
    b = _unknown_type(tmp_path)
    seen = {}

    def fake_analyze_config(cfg, *a, **k):
        if cfg.path == b:
            raise DoolyInputError(cfg.path, "transformers does not support model_type 'foo'",
                                  "model_type")
        return _empty_inventory(cfg)

    class Summary:
        interrupted, env_key, collective_envs, host_change = False, "env", {}, None

        def to_json(self):
            return {k: 0 for k in ("units_measured", "units_reused", "units_failed", "points_measured",
                                   "points_failed", "points_rechecked_faster", "seconds",
                                   "recheck_seconds")}

    def fake_sweep(analysis, *a, **k):
        seen["models"] = [inv.config_path for inv in analysis.inventories]
        return Summary()

    import dooly.profile.sweep as sweep_mod
    monkeypatch.setattr(analyze_mod, "analyze_config", fake_analyze_config)
    monkeypatch.setattr(sweep_mod, "sweep", fake_sweep)
    path = tmp_path / "s.json"
    code, out, err = _run(capsys, "sweep", A, b, C, "--engine", "transformers",
                          "--db", tmp_path / "db.sqlite", "--json", path, "--no-progress")
    assert code == 2 and seen["models"] == [A, C]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and b in lines[0] and "model_type" in lines[0]
    assert "skipped 1 model(s)" in out and b in out
    assert json.loads(path.read_text())["failed"] == [{"config": b, "error": lines[0][len("dooly: error: "):]}]
