"""Reading a HF `config.json`: validation with one-line errors, and the layer pattern
(one period of `layer_types` is traced, then multiplied by each type's count)."""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from dooly.errors import DoolyInputError, quoted, read_json


@dataclass(frozen=True)
class ModelConfig:
    path: str
    raw: dict
    architecture: str
    model_type: str

    @property
    def name(self) -> str:
        return self.raw.get("_name_or_path") or Path(self.path).stem.replace("__", "/")

    @property
    def num_layers(self) -> int:
        _, value = _lookup(_size_source(self.raw)[0], "num_hidden_layers")
        return int(value or 1)

    def max_length(self) -> tuple[int, str]:
        """The longest sequence the engine takes for this model and the field that says
        so, derived as vLLM derives its max_model_len limit: the smallest length field
        present, times the RoPE factor of the scaling types whose length field does not
        already include it; 2048 (vLLM's assumption) when the config gives none."""
        src = _size_source(self.raw)[0]
        found = [(v, k) for k in LENGTH_FIELDS if _positive_int(v := src.get(k))]
        n, key = min(found) if found else (2048, "max_position_embeddings")
        rope = src.get("rope_scaling") or src.get("rope_parameters")
        if isinstance(rope, dict) and "gemma3" not in self.model_type:
            factor = rope.get("factor")
            if rope.get("rope_type", rope.get("type")) not in _PRESCALED_ROPE and _number(factor):
                n = int(n * max(factor, 1.0))
        return n, key

    def default_max_model_len(self) -> int:
        """vLLM's max_model_len when none is given: the limit above, except that LongRoPE
        models start at their original (unscaled) length."""
        src = _size_source(self.raw)[0]
        rope = src.get("rope_scaling") or src.get("rope_parameters")
        if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) == "longrope":
            original = src.get("original_max_position_embeddings")
            if _positive_int(original):
                return min(original, self.max_length()[0])
        return self.max_length()[0]

    def check_length(self, flag: str, value: int) -> None:
        """A request-side length (a flag, a batch's sequence) the model cannot take is
        input the user can fix: one line naming both numbers."""
        limit, key = self.max_length()
        if value > limit:
            raise DoolyInputError(flag, f"{value} is beyond the model's maximum length {limit} "
                                  f"({key} in {self.path})")

    @property
    def hash(self) -> str:
        blob = json.dumps(self.raw, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def layer_types(self) -> list[str]:
        """Type of every layer, e.g. 'sliding_attention' / 'full_attention'."""
        n, raw = self.num_layers, self.raw
        types = raw.get("layer_types")
        if isinstance(types, list) and len(types) >= n:
            return [str(t) for t in types[:n]]
        pattern = raw.get("sliding_window_pattern")
        if self.model_type == "gemma2":
            # Gemma-2 alternates sliding (even) and full (odd) layers.
            return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
        if isinstance(pattern, int) and pattern > 1:
            return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                    for i in range(n)]
        window = raw.get("sliding_window")
        if isinstance(window, int) and window > 0 and raw.get("use_sliding_window") is not False:
            return ["sliding_attention"] * n  # e.g. Mistral-7B-v0.1: every layer windowed
        return ["full_attention"] * n

    def sliding_window(self, layer_type: str) -> int:
        window = self.raw.get("sliding_window")
        if layer_type == "sliding_attention" and isinstance(window, int):
            return window
        return 0

    def period(self) -> int:
        """Smallest p such that the layer types repeat with period p."""
        types = self.layer_types()
        for p in range(1, len(types) + 1):
            if all(types[i] == types[i % p] for i in range(len(types))):
                return p
        return len(types)

    def layer_multiplicity(self) -> dict[int, int]:
        """For each layer index in the traced period: how many layers of the full model
        it stands for (layers with the same type at the same phase)."""
        types, p = self.layer_types(), self.period()
        return {i: sum(1 for j in range(i, len(types), p)) for i in range(p)}

    def traced_layers(self) -> int:
        """Two periods: the first layer often runs other ops (vLLM's layer 0 has no
        residual yet, so its norm is a plain rms_norm), so period one counts once and
        period two stands for all later periods."""
        return min(self.num_layers, 2 * self.period())

    def traced_multiplicity(self) -> dict[int, int]:
        n, p = self.traced_layers(), self.period()
        if n < 2 * p:
            return {i: 1 for i in range(n)}
        per = self.layer_multiplicity()
        return {**{i: 1 for i in range(p)}, **{p + i: per[i] - 1 for i in range(p)}}


# Size fields: (name, the names older HF configs give it, required, upper bound). The
# bounds are far above any published model and low enough that the layer list, the
# meta-device capture and a request grid built from them fit in memory.
SIZE_FIELDS = (
    ("hidden_size", ("n_embd", "d_model"), True, 1 << 20),
    ("num_hidden_layers", ("n_layer", "n_layers", "num_layers"), True, 1024),
    ("num_attention_heads", ("n_head", "n_heads", "num_heads"), True, 1 << 16),
    ("vocab_size", ("padded_vocab_size",), True, 1 << 24),  # ChatGLM: padded_vocab_size
    ("intermediate_size", ("n_inner", "ffn_dim", "ffn_hidden_size"), False, 1 << 22),
    ("num_key_value_heads", ("num_kv_heads", "n_head_kv"), False, 1 << 16),
    ("head_dim", ("kv_channels",), False, 1 << 16),
    ("max_position_embeddings", ("n_positions",), False, 1 << 27),
    ("sliding_window", (), False, 1 << 27),
    ("num_local_experts", ("num_experts", "n_routed_experts"), False, 1 << 16),
    ("num_experts_per_tok", (), False, 1 << 16),
    ("moe_intermediate_size", (), False, 1 << 22),
)
# vLLM's order of fields that may bound the sequence length (it takes the smallest)
LENGTH_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                 "model_max_length", "max_target_positions", "max_sequence_length",
                 "max_seq_length", "seq_len")
# RoPE types whose max_position_embeddings is already the scaled length
_PRESCALED_ROPE = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
_BOOL_KEY = re.compile(r"^(use_|tie_|is_)|_bias$")


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _size_source(raw: dict) -> tuple[dict, str]:
    """Where the sizes live: the config itself, or a multimodal config's text_config."""
    text = raw.get("text_config")
    if isinstance(text, dict) and _lookup(raw, "hidden_size")[0] is None:
        return text, "text_config."
    return raw, ""


def _lookup(src: dict, name: str) -> tuple[str | None, object]:
    aliases = next((a for n, a, _, _ in SIZE_FIELDS if n == name), ())
    for key in (name, *aliases):
        if src.get(key) is not None:
            return key, src[key]
    return None, None


def check_values(path: Path, raw: dict) -> None:
    """Numbers are finite everywhere (JSON readers accept NaN and Infinity) and flags
    such as tie_word_embeddings are true or false."""
    stack: list[tuple[str, object]] = [("", raw)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise DoolyInputError(path, f"expected a finite number, got {value}", where)
        if isinstance(value, dict):
            for key, v in value.items():
                if where in ("", "text_config") and _BOOL_KEY.search(key) and v is not None \
                        and not isinstance(v, bool):
                    raise DoolyInputError(path, f"expected true or false, got {quoted(v)}",
                                          f"{where}.{key}".lstrip("."))
                stack.append((f"{where}.{key}".lstrip("."), v))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))


def check_sizes(path: Path, raw: dict) -> None:
    """Every size a capture reads is a positive int within SIZE_FIELDS' bounds, heads
    divide the hidden size (unless head_dim is given) and KV heads divide heads."""
    src, prefix = _size_source(raw)
    vals: dict[str, tuple[str, int]] = {}
    for name, _, required, bound in SIZE_FIELDS:
        key, value = _lookup(src, name)
        if key is None:
            if required:
                raise DoolyInputError(path, "missing (a positive integer)", prefix + name)
            continue
        if not _positive_int(value):
            raise DoolyInputError(path, f"expected a positive integer, got {quoted(value)}",
                                  prefix + key)
        if value > bound:
            raise DoolyInputError(path, f"{value} is beyond any model (at most {bound})", prefix + key)
        vals[name] = (prefix + key, value)
    (hk, hidden), (ak, heads) = vals["hidden_size"], vals["num_attention_heads"]
    if "head_dim" not in vals and hidden % heads:
        raise DoolyInputError(path, f"{heads} heads do not divide {hk} {hidden} (and no "
                              "head_dim is given)", ak)
    if "num_key_value_heads" in vals and heads % vals["num_key_value_heads"][1]:
        kk, kv = vals["num_key_value_heads"]
        raise DoolyInputError(path, f"{kv} KV heads do not divide {ak} {heads}", kk)
    if "num_experts_per_tok" in vals and "num_local_experts" in vals \
            and vals["num_experts_per_tok"][1] > vals["num_local_experts"][1]:
        raise DoolyInputError(path, f"more than the {vals['num_local_experts'][1]} experts",
                              vals["num_experts_per_tok"][0])
    for key in ("rope_scaling", "rope_parameters"):
        rope = src.get(key)
        if isinstance(rope, dict) and rope.get("factor") is not None and not _number(rope["factor"]):
            raise DoolyInputError(path, f"expected a positive number, got {quoted(rope['factor'])}",
                                  f"{prefix}{key}.factor")


def load_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    if not path.exists():
        raise DoolyInputError(path, "file not found")
    if path.is_dir():
        path = path / "config.json"
        if not path.exists():
            raise DoolyInputError(path, "file not found")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DoolyInputError(path, "expected a JSON object (a HF config.json)")
    archs = raw.get("architectures")
    if not archs or not isinstance(archs, list) or not isinstance(archs[0], str):
        raise DoolyInputError(path, "missing or empty (a list of model class names)", "architectures")
    if not isinstance(raw.get("model_type"), str):
        raise DoolyInputError(path, "missing (e.g. \"llama\")", "model_type")
    check_values(path, raw)
    check_sizes(path, raw)
    return ModelConfig(str(path), raw, archs[0], raw["model_type"])
