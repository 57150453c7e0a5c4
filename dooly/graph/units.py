"""Turn a labelled, region-annotated graph into canonical units and a model
inventory: unit key -> (unit, count per forward step)."""
from __future__ import annotations

import torch.fx

from dooly.graph.capture import Captured, layer_index
from dooly.graph.normalize import ATTENTION_OPS, KV_WRITE_OPS
from dooly.graph.regions import RegionRegistry, region_data, regions
from dooly.inventory import Entry, Inventory, inventory_key  # noqa: F401  (re-exported)
from dooly.symbolic.labels import DimLabel, Label
from dooly.unit import COLLECTIVE_OPS, GEMM_OPS, TensorSig, Unit


def _sigs(args, *, tensors_only=True) -> list[TensorSig]:
    out = []
    for a in args:
        if isinstance(a, torch.fx.Node):
            out += a.meta.get("dooly", {}).get("out", [])[:1]
        elif isinstance(a, (list, tuple)):
            out += _sigs(a)
    return out


def _count(cap: Captured, node: torch.fx.Node) -> tuple[int, int | None]:
    layer = layer_index(node)
    if layer is None:
        return 1, None
    return cap.multiplicity.get(layer, 1), layer


# A gather's cost depends on the rows it reads, not on the table's length: the table
# length is left out of the key (a canonical length is swept), so models with other
# vocabularies or context limits share the unit.
TABLE_ROWS = {"embedding": (1, 32768), "_C.rotary_embedding": (3, 8192)}


FLOAT_ARG = 1e-6


def _normalize_table(op: str, inputs: tuple) -> tuple:
    if op not in TABLE_ROWS:
        return inputs
    idx, rows = TABLE_ROWS[op]
    if idx >= len(inputs) or not inputs[idx].dims:
        return inputs
    t = inputs[idx]
    first = DimLabel(rows, Label.CONFIG, ("table_rows",))
    return inputs[:idx] + (TensorSig((first,) + t.dims[1:], t.dtype),) + inputs[idx + 1:]


def _anchor_unit(cap: Captured, node: torch.fx.Node) -> Unit:
    info = node.meta["dooly"]
    op = info["op"]
    inputs = tuple(_sigs(node.args) + _sigs(list(node.kwargs.values())))
    outputs = tuple(info.get("out", []))
    attrs: dict = {}
    stateful = False
    if op in GEMM_OPS and op == "linear":
        attrs["bias"] = len(node.args) > 2 and node.args[2] is not None
    if op in COLLECTIVE_OPS:
        attrs.update(_collective_attrs(cap, node))
    if op in ATTENTION_OPS or op in KV_WRITE_OPS:
        stateful = True
        layer = layer_index(node)
        attrs.update({k: v for k, v in cap.attention.get(layer, {}).items() if k != "layer_name"})
        attrs["layer_type"] = cap.layer_types.get(layer, "full_attention")
        # the out-buffer and the cache handle carry no request information
        inputs = tuple(t for t in inputs[:3])
    if op == "embedding" and cap.engine == "transformers":
        inputs = (inputs[1], inputs[0]) + inputs[2:]  # aten.embedding(weight, ids) -> (ids, weight)
    inputs = _normalize_table(op, inputs)
    if op.startswith("_C.") or op.startswith("vllm_ir."):
        # how to call the engine's op again: tensor inputs by index, literals as they are
        call, k = [], 0
        for a in node.args:
            if isinstance(a, torch.fx.Node):
                call.append({"t": k})
                k += len(a.meta.get("dooly", {}).get("out", [])[:1])
            elif isinstance(a, float):
                # float scalars (a norm's eps) do not change the kernel's work: keep them
                # out of the key so models differing only in eps share the unit
                call.append(FLOAT_ARG)
            elif a is None or isinstance(a, (int, bool, str)):
                call.append(a)
            else:
                call.append({"repr": str(a)})
        attrs["call"] = call
    if op == "scaled_dot_product_attention":
        stateful = True
        attrs.update({k: v for k, v in node.kwargs.items() if isinstance(v, (int, float, bool))})
        layer = layer_index(node)
        attrs["layer_type"] = cap.layer_types.get(layer, "full_attention")
        # at run time a sliding layer masks beyond the window; the kernel differs
        attrs["sliding_window"] = cap.config.sliding_window(attrs["layer_type"])
    return Unit(op=op, inputs=inputs, outputs=outputs, attrs=tuple(sorted(attrs.items())),
                stateful=stateful)


def _collective_attrs(cap: Captured, node: torch.fx.Node) -> dict:
    """A collective's kernel depends on its group and communicator, and for gathers and
    scatters on the dim (vLLM's ops take (tensor, dim, world_size, group_name=...))."""
    out = {k: cap.parallel[k] for k in ("group_size", "communicator") if k in cap.parallel}
    if node.meta["dooly"]["op"] != "vllm.all_reduce" and len(node.args) > 1 \
            and isinstance(node.args[1], int):
        out["dim"] = int(node.args[1])
    return out


def _tsig(shape: list, dtype: str) -> TensorSig:
    """shape items: a request symbol name, or (value, config field)."""
    dims = tuple(DimLabel(d, Label.REQUEST) if isinstance(d, str) else DimLabel(int(d[0]), Label.CONFIG, (d[1],))
                 for d in shape)
    return TensorSig(dims, dtype)


def logits_units(cap: Captured) -> list[Unit]:
    """vLLM computes logits outside the compiled graph, only for the last token of each
    sequence: LM head [B, hidden] x [vocab, hidden], then sampling over [B, vocab]."""
    raw = cap.config.raw
    hidden = (int(raw.get("hidden_size") or raw.get("d_model")), "hidden_size")
    vocab = (int(raw.get("vocab_size") or raw.get("padded_vocab_size")), "vocab_size")  # ChatGLM
    dt = cap.dtype
    # under tensor parallelism each rank holds a vocabulary shard of the LM head, and the
    # logits are all-gathered along the vocabulary before sampling (vLLM's LogitsProcessor)
    rows = (int(cap.parallel.get("vocab_rows") or -(-vocab[0] // cap.tp)), "vocab_size") \
        if cap.tp > 1 else vocab
    head = Unit(op="linear", inputs=(_tsig(["B", hidden], dt), _tsig([rows, hidden], dt)),
                outputs=(_tsig(["B", rows], dt),), attrs=(("bias", False), ("role", "lm_head")))
    sample = Unit(op="sampler", inputs=(_tsig(["B", vocab], dt),),
                  outputs=(_tsig(["B"], "int64"),), attrs=(("mode", "greedy"),))
    if cap.tp == 1:
        return [head, sample]
    gathered = (rows[0] * cap.tp, "vocab_size")
    attrs = {k: cap.parallel[k] for k in ("group_size", "communicator") if k in cap.parallel}
    gather = Unit(op="vllm.all_gather", inputs=(_tsig(["B", rows], dt),),
                  outputs=(_tsig(["B", gathered], dt),), attrs=tuple(sorted(dict(attrs, dim=-1).items())))
    return [head, gather, sample]


def build_inventory(cap: Captured, sym_map: dict, registry: RegionRegistry | None = None,
                    extra_units: list[Unit] = ()) -> Inventory:
    registry = registry or RegionRegistry()
    cfg = cap.config
    inv = Inventory(cfg.name, cfg.path, cfg.architecture, cap.engine, cfg.hash, notes=list(cap.notes),
                    tp=cap.tp)
    gm = cap.gm
    for node in gm.graph.nodes:
        info = node.meta.get("dooly", {})
        if info.get("role") != "anchor":
            continue
        count, layer = _count(cap, node)
        unit = _anchor_unit(cap, node)
        inv.add(unit, count, f"{'model' if layer is None else f'layer{layer}'}:{info['op']}")
    for rid, nodes in regions(gm).items():
        data, ext, outs = region_data(nodes, sym_map)
        in_sigs = [s for n in ext for s in n.meta.get("dooly", {}).get("out", [])[:1]]
        out_sigs = [s for n in outs for s in n.meta["dooly"].get("out", [])[:1]]
        if len(in_sigs) != len(ext) or len(out_sigs) != len(outs):
            raise ValueError(f"graph: region {rid} has an input or output without a tensor "
                             f"signature")
        # rows, inputs and outputs in canonical order: isomorphic regions make one unit
        canon = registry.canonical(data, [s.to_json() for s in in_sigs])
        in_sigs = [in_sigs[k] for k in canon.in_perm]
        out_sigs = [out_sigs[k] for k in canon.out_perm]
        count, layer = _count(cap, nodes[0])
        unit = Unit(op="fused", inputs=tuple(in_sigs), outputs=tuple(out_sigs),
                    graph=dict(canon.data, input_shapes=[s.to_json() for s in in_sigs]),
                    graph_hash=canon.key)
        ops = "+".join(sorted({r["op"] for r in data["nodes"] if r["op"] not in ("getitem", "view")}))
        inv.add(unit, count, f"{'model' if layer is None else f'layer{layer}'}:{ops}")
    for unit in extra_units:
        inv.add(unit, 1, unit.attr.get("role", unit.op))
    return inv
