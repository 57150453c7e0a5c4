"""What every engine's capture returns: one fx graph of one layer period with the
request dims symbolic, and what is needed to scale it to the full model."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch.fx

from dooly.config import ModelConfig

_LAYER_RE = re.compile(r"layers(?:\[|\.|_modules_)(\d+)")


@dataclass
class Captured:
    engine: str
    config: ModelConfig
    gm: torch.fx.GraphModule
    phase: str = "step"                 # vllm: one flattened step; hf: "prefill" / "decode"
    # per traced layer index: how many layers of the full model it stands for
    multiplicity: dict[int, int] = field(default_factory=dict)
    layer_types: dict[int, str] = field(default_factory=dict)
    # attention attributes per traced layer (heads, kv heads, head size, window, backend)
    attention: dict[int, dict] = field(default_factory=dict)
    dtype: str = "bfloat16"
    notes: list[str] = field(default_factory=list)
    # tensor parallelism: the group size the model was built for (one rank's shards) and
    # what its collectives record (group_size, communicator, vocab_rows of the LM head)
    tp: int = 1
    parallel: dict = field(default_factory=dict)


def layer_index(node: torch.fx.Node) -> int | None:
    """The decoder layer a node belongs to, from the module stack Dynamo/make_fx record."""
    stack = node.meta.get("nn_module_stack") or {}
    for key, value in reversed(list(stack.items())):
        path = value[0] if isinstance(value, tuple) else str(value)
        for text in (path, key):
            m = _LAYER_RE.search(str(text))
            if m:
                return int(m.group(1))
    return None
