"""Fake tensor parallelism for a capture: vLLM's model built as rank 0 of an N-rank
tensor-parallel group, in one process, with no communication.

vLLM's model code reads the group it is sharded for from its tensor-parallel
`GroupCoordinator` (`get_tensor_model_parallel_world_size()` is `get_tp_group().world_size`,
the rank is its `rank_in_group`). The capture initialises a real one-process group and then
makes that coordinator say it has N ranks: every parallel layer (QKV / merged column /
row-parallel linears, vocab-parallel embedding and LM head, attention heads) is built at
rank 0's shard sizes. Its collectives are routed through vLLM's own custom ops
(`use_custom_op_call`, as vLLM does on CUDA): Dynamo records `vllm.all_reduce(x,
group_name=...)` as one graph node with the fake implementation vLLM registers (an empty
tensor of the output's shape), so each collective becomes a unit and nothing is sent.
The group is put back as it was when the capture ends."""
from __future__ import annotations

import contextlib

# the coordinator fields that say how many ranks there are and how collectives dispatch
_FIELDS = ("world_size", "ranks", "group_ranks", "use_custom_op_call")


@contextlib.contextmanager
def fake_tp_group(size: int):
    """The current tensor-parallel group, seen as rank 0 of `size` ranks."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size: expected a positive group size, got {size!r}")
    from vllm.distributed import parallel_state as ps
    group = ps.get_tp_group()
    saved = {k: getattr(group, k) for k in _FIELDS if hasattr(group, k)}
    if size > 1:
        group.world_size = size
        group.ranks = list(range(size))
        group.group_ranks = [list(range(size))]
        group.use_custom_op_call = True
    try:
        yield group
    finally:
        for k, v in saved.items():
            setattr(group, k, v)


def communicator_name() -> str:
    """The device communicator class vLLM's platform runs collectives with here
    (CpuCommunicator, CudaCommunicator...): a collective unit's kernel depends on it."""
    from vllm.platforms import current_platform
    return str(current_platform.get_device_communicator_cls()).rsplit(".", 1)[-1]


def vocab_rows(model) -> int | None:
    """Rows of the LM head one rank holds (the vocabulary shard, padded as vLLM pads it),
    or None when the model has no `lm_head` weight."""
    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    shape = getattr(weight, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) == 2 else None


def parallel_attrs(model, size: int) -> dict:
    """What a capture at group size `size` records for its collective units."""
    if size <= 1:
        return {}
    out = {"group_size": size, "communicator": communicator_name()}
    rows = vocab_rows(model)
    if rows:
        out["vocab_rows"] = rows
    return out
