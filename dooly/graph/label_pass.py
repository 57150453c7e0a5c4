"""Attach a DimLabel to every dim of every tensor a node produces.

A capture leaves SymInts in `node.meta["val"]`; their SymPy expressions use the
capture's own symbols (`s72`, `batch`, `hidden_size`). `sym_map` renames them to
Dooly's request or config symbols, so two models' labels compare equal."""
from __future__ import annotations

import sympy
import torch
import torch.fx

from dooly.symbolic.labels import label_dim
from dooly.unit import TensorSig


def dim_expr(d) -> sympy.Expr:
    if isinstance(d, torch.SymInt):
        # a SymInt of the live capture: its expr is already SymPy, never text from a file
        return sympy.sympify(d.node.expr)
    return sympy.Integer(int(d))


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def tensor_sig(t, sym_map: dict) -> TensorSig:
    dims = tuple(label_dim(dim_expr(d).xreplace(sym_map)) for d in t.shape)
    return TensorSig(dims, _dtype_name(t.dtype))


def sigs_of(val, sym_map: dict) -> list[TensorSig]:
    if isinstance(val, torch.Tensor):
        return [tensor_sig(val, sym_map)]
    if isinstance(val, (tuple, list)):
        return [tensor_sig(v, sym_map) for v in val if isinstance(v, torch.Tensor)]
    return []


def label_pass(gm: torch.fx.GraphModule, sym_map: dict) -> torch.fx.GraphModule:
    """sym_map: capture symbol -> Dooly symbol (or expression)."""
    for node in gm.graph.nodes:
        val = node.meta.get("val", node.meta.get("example_value"))
        node.meta.setdefault("dooly", {})["out"] = sigs_of(val, sym_map)
    return gm


def capture_symbols(gm: torch.fx.GraphModule) -> set[sympy.Symbol]:
    syms: set[sympy.Symbol] = set()
    for node in gm.graph.nodes:
        val = node.meta.get("val", node.meta.get("example_value"))
        vals = val if isinstance(val, (tuple, list)) else [val]
        for v in vals:
            if isinstance(v, torch.Tensor):
                for d in v.shape:
                    syms |= dim_expr(d).free_symbols
            elif isinstance(v, torch.SymInt):
                syms |= dim_expr(v).free_symbols
    return syms


def fields_pass(gm: torch.fx.GraphModule, perturbed: torch.fx.GraphModule, matcher
                ) -> torch.fx.GraphModule:
    """Name the config fields of constant dims by comparing with a capture of the same
    model at perturbed config values (node by node: the graphs must align)."""
    from dooly.symbolic.labels import DimLabel, Label
    a = [n for n in gm.graph.nodes if n.meta.get("dooly", {}).get("out")]
    b = [n for n in perturbed.graph.nodes if n.meta.get("dooly", {}).get("out")]
    if [n.meta["dooly"].get("op") for n in a] != [n.meta["dooly"].get("op") for n in b]:
        return gm
    for na, nb in zip(a, b):
        sigs = []
        for sa, sb in zip(na.meta["dooly"]["out"], nb.meta["dooly"]["out"]):
            dims = []
            for da, db in zip(sa.dims, sb.dims):
                if da.label is Label.CONFIG and db.label is Label.CONFIG and not da.config_fields:
                    fields = matcher.fields(da.value_or_expr, db.value_or_expr)
                    da = DimLabel(da.value_or_expr, Label.CONFIG, fields) if fields else da
                dims.append(da)
            sigs.append(TensorSig(tuple(dims), sa.dtype))
        na.meta["dooly"]["out"] = sigs + na.meta["dooly"]["out"][len(sigs):]
    return gm
