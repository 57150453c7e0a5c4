"""A bad config.json is one stderr line naming the file and the field, exit 2, before any
capture, DB or engine, on every command that reads a config; every published config in
fixtures/ still loads."""
from __future__ import annotations

import json

import pytest

from bad_input import run_bad, run_bad_process
from conftest import CONFIGS, config
from dooly.config import load_config

SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")


def _set(**changes):
    def edit(raw: dict) -> dict:
        for k, v in changes.items():
            if v is _DROP:
                raw.pop(k, None)
            else:
                raw[k] = v
        return raw
    return edit


_DROP = object()

# (case, edit of SmolLM2's config or the file's raw text, the field the line names)
CASES = [
    ("no_vocab_size", _set(vocab_size=_DROP), "vocab_size"),
    ("no_layers", _set(num_hidden_layers=_DROP), "num_hidden_layers"),
    ("layers_null", _set(num_hidden_layers=None), "num_hidden_layers"),
    ("layers_float_1e12", _set(num_hidden_layers=1e12), "num_hidden_layers"),
    ("layers_int_1e12", _set(num_hidden_layers=10 ** 12), "num_hidden_layers"),
    ("heads_not_dividing_hidden", _set(num_attention_heads=7, head_dim=_DROP), "num_attention_heads"),
    ("hidden_1e12", _set(hidden_size=1e12), "hidden_size"),
    ("hidden_zero", _set(hidden_size=0), "hidden_size"),
    ("hidden_string", _set(hidden_size="576"), "hidden_size"),
    ("hidden_bool", _set(hidden_size=True), "hidden_size"),
    ("kv_heads_not_dividing_heads", _set(num_key_value_heads=2), "num_key_value_heads"),
    ("vocab_huge", _set(vocab_size=1 << 30), "vocab_size"),
    ("intermediate_negative", _set(intermediate_size=-1), "intermediate_size"),
    ("head_dim_zero", _set(head_dim=0), "head_dim"),
    ("max_positions_zero", _set(max_position_embeddings=0), "max_position_embeddings"),
    ("sliding_window_fraction", _set(sliding_window=1.5), "sliding_window"),
    ("tie_embeddings_string", _set(tie_word_embeddings="yes"), "tie_word_embeddings"),
    ("rope_factor_string", _set(rope_scaling={"rope_type": "linear", "factor": "x"}), "rope_scaling.factor"),
    ("experts_per_token_too_many", _set(num_local_experts=4, num_experts_per_tok=8), "num_experts_per_tok"),
    ("eps_nan", "NaN:rms_norm_eps", "rms_norm_eps"),
    ("rope_theta_infinity", "Infinity:rope_theta", "rope_theta"),
    ("init_range_minus_infinity", "-Infinity:initializer_range", "initializer_range"),
    ("no_architectures", _set(architectures=_DROP), "architectures"),
    ("no_model_type", _set(model_type=_DROP), "model_type"),
    ("truncated_json", b'{"architectures": ["LlamaForCausalLM"], ', None),
    ("deep_nesting", b"[" * 100_000, None),
    ("5000_digit_number", b'{"hidden_size": ' + b"9" * 5000 + b"}", None),
    ("binary", bytes(range(256)) * 8, None),
    ("json_list", b"[1, 2, 3]", None),
    ("empty_file", b"", None),
]


def _write(tmp_path, edit) -> str:
    path = tmp_path / "cfg" / "config.json"
    path.parent.mkdir(exist_ok=True)
    if isinstance(edit, bytes):
        path.write_bytes(edit)
    elif isinstance(edit, str):  # "TOKEN:dotted.field": a JSON literal Python writes as such
        token, field = edit.split(":")
        raw = json.loads(open(SMOL).read())
        *outer, last = field.split(".")
        d = raw
        for k in outer:
            d = d[k]
        d[last] = "@@"
        path.write_text(json.dumps(raw).replace('"@@"', token))
    else:
        path.write_text(json.dumps(edit(json.loads(open(SMOL).read()))))
    return str(path)


def _commands(cfg: str, tmp_path) -> dict[str, list]:
    db, out = tmp_path / "new.db", tmp_path / "out"
    return {"analyze": ["analyze", cfg, "--engine", "transformers"],
            "sweep": ["sweep", cfg, "--db", db, "--engine", "transformers"],
            "predict": ["predict", cfg, "--db", db, "--batch", "prefill:16"],
            "simulate": ["simulate", cfg, "--db", db, "--rate", "1", "--num-requests", "3"],
            "export": ["export", "vidur", cfg, "--db", db, "--out", out],
            "calibrate": ["calibrate", cfg, "--db", db]}


COMMANDS = ("analyze", "sweep", "predict", "simulate", "export", "calibrate")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case,edit,field", CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_one_line_naming_the_field(tmp_path, capsys, command, case, edit, field):
    cfg = _write(tmp_path, edit)
    names = (cfg,) + ((f"field '{field}'",) if field else ())
    run_bad(capsys, _commands(cfg, tmp_path)[command], names, tmp_path)


@pytest.mark.parametrize("case", ["no_vocab_size", "layers_float_1e12", "heads_not_dividing_hidden",
                                  "hidden_1e12"])
def test_bad_config_in_a_fresh_process(tmp_path, case):
    _, edit, field = next(c for c in CASES if c[0] == case)
    cfg = _write(tmp_path, edit)
    run_bad_process(["analyze", cfg], (cfg, f"field '{field}'"), tmp_path)


def test_every_fixture_config_loads_with_its_length():
    paths = sorted(CONFIGS.glob("*.json"))
    assert len(paths) >= 9
    for path in paths:
        cfg = load_config(path)
        n, key = cfg.max_length()
        assert 2048 <= n <= 1 << 20 and key == "max_position_embeddings"
        assert 1 <= cfg.num_layers <= 128


def test_length_follows_vllm_rope_rules(tmp_path):
    raw = json.loads(open(SMOL).read())  # max_position_embeddings 8192
    cases = [({"rope_type": "linear", "factor": 4.0}, 32768, 32768),
             ({"rope_type": "llama3", "factor": 8.0}, 8192, 8192),   # already scaled
             ({"rope_type": "longrope", "factor": 32.0}, 8192, 4096)]
    for rope, limit, default in cases:
        path = tmp_path / "c.json"
        path.write_text(json.dumps({**raw, "rope_scaling": rope, "original_max_position_embeddings": 4096}))
        cfg = load_config(path)
        assert (cfg.max_length()[0], cfg.default_max_model_len()) == (limit, default)


def test_multimodal_text_config_sizes_are_checked(tmp_path):
    raw = json.loads(open(SMOL).read())
    text = {k: raw.pop(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                    "num_key_value_heads", "vocab_size", "intermediate_size")}
    path = tmp_path / "mm.json"
    path.write_text(json.dumps({**raw, "text_config": text}))
    assert load_config(path).num_layers == 30
    path.write_text(json.dumps({**raw, "text_config": {**text, "num_attention_heads": 7, "head_dim": None}}))
    with pytest.raises(Exception, match="text_config.num_attention_heads"):
        load_config(path)
