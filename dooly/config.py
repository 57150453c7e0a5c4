"""Reading a HF `config.json`: validation with one-line errors, and the layer pattern
(one period of `layer_types` is traced, then multiplied by each type's count)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from dooly.errors import DoolyInputError, read_json


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
        return int(self.raw.get("num_hidden_layers", 1))

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
    for field in ("hidden_size", "num_hidden_layers", "vocab_size"):
        value = raw.get(field)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise DoolyInputError(path, f"expected a positive integer, got {value!r}", field)
    return ModelConfig(str(path), raw, archs[0], raw["model_type"])
