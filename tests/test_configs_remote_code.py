"""A model type only its hub repository's code defines (InternLM2 here): Dooly builds
the config from the JSON alone and never runs the code its `auto_map` names, even with
`trust_remote_code: true` in the file and the modules right beside it."""
import json
from pathlib import Path

import pytest

from conftest import config, needs_vllm
from dooly.analyze import analyze

INTERNLM2 = config("internlm__internlm2_5-7b-chat")
_TRAP = """from pathlib import Path
Path({marker!r}).write_text("imported")
raise RuntimeError("remote code was executed")
"""


def _booby_trapped(tmp_path: Path) -> tuple[str, Path]:
    """The InternLM2 config with an auto_map onto modules beside it that leave a marker
    file and raise when imported."""
    marker = tmp_path / "EXECUTED"
    raw = json.loads(Path(INTERNLM2).read_text())
    raw["auto_map"] = {"AutoConfig": "trap_config.TrapConfig",
                       "AutoModelForCausalLM": "trap_model.TrapModel",
                       "AutoModel": "trap_model.TrapModel"}
    raw["trust_remote_code"] = True
    model = tmp_path / "model"
    model.mkdir()
    for name in ("trap_config", "trap_model"):
        (model / f"{name}.py").write_text(_TRAP.format(marker=str(marker)))
    (model / "config.json").write_text(json.dumps(raw))
    return str(model / "config.json"), marker


def test_transformers_engine_runs_no_remote_code(tmp_path):
    """transformers has no `internlm2`: the model is skipped with its one line."""
    path, marker = _booby_trapped(tmp_path)
    a = analyze([path], "transformers", fields=False)
    assert not marker.exists()
    assert not a.inventories and "model_type" in a.failed[0]["error"]


@needs_vllm
@pytest.mark.slow
def test_vllm_engine_captures_remote_code_type_without_running_it(tmp_path):
    path, marker = _booby_trapped(tmp_path)
    a = analyze([path], "vllm", fields=False)
    assert not marker.exists()
    assert not a.failed, a.failed
    (inv,) = a.inventories
    assert inv.architecture == "InternLM2ForCausalLM"
    attn = [e for e in inv.entries.values() if e.unit.op.startswith("vllm.unified_attention")]
    assert len(attn) == 1 and attn[0].count == 32
    assert attn[0].unit.attr["num_kv_heads"] == 8 and attn[0].unit.attr["num_heads"] == 32


def test_chatglm_style_size_fields_are_read(tmp_path):
    """ChatGLM's remote config names its sizes its own way (vLLM ships a config class
    for it): padded_vocab_size, num_layers, ffn_hidden_size, kv_channels."""
    from dooly.config import load_config
    from dooly.errors import DoolyInputError
    raw = {"architectures": ["ChatGLMModel"], "model_type": "chatglm", "hidden_size": 4096,
           "num_layers": 28, "num_attention_heads": 32, "padded_vocab_size": 65024,
           "ffn_hidden_size": 13696, "kv_channels": 128, "multi_query_group_num": 2,
           "seq_length": 8192, "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig"}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    cfg = load_config(path)
    assert cfg.num_layers == 28 and cfg.max_length() == (8192, "seq_length")
    path.write_text(json.dumps(dict(raw, kv_channels=0)))
    with pytest.raises(DoolyInputError, match="kv_channels"):
        load_config(path)
