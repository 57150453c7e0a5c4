"""Attach a DimLabel to every dim of every tensor a node produces.

A capture leaves SymInts in `node.meta["val"]`; their SymPy expressions use the
capture's own symbols (`s72`, `batch`, `hidden_size`). `sym_map` renames them to
Dooly's request or config symbols, so two models' labels compare equal."""
from __future__ import annotations

import difflib

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


def _aligned(a: list, b: list) -> list[tuple]:
    """Pairs of nodes that run the same op in the two captures: all of them when their
    op sequences agree; else the runs in which they agree, provided those hold nearly
    every node (a trace at fixed request sizes drops a no-op slice the symbolic trace
    keeps). Graphs that differ more are not paired at all."""
    ops_a = [n.meta["dooly"].get("op") for n in a]
    ops_b = [n.meta["dooly"].get("op") for n in b]
    if ops_a == ops_b:
        return list(zip(a, b))
    blocks = difflib.SequenceMatcher(None, ops_a, ops_b, autojunk=False).get_matching_blocks()
    pairs = [p for i, j, n in blocks for p in zip(a[i:i + n], b[j:j + n])]
    return pairs if len(pairs) >= 0.95 * len(a) else []


def _named(node, fields_of) -> None:
    """Rewrite the node's output sigs, naming each unnamed CONFIG dim by
    `fields_of(output index, dim index, dim)` (a tuple of fields, or empty)."""
    from dooly.symbolic.labels import DimLabel, Label
    sigs = []
    for k, sig in enumerate(node.meta["dooly"]["out"]):
        dims = []
        for i, d in enumerate(sig.dims):
            if d.label is Label.CONFIG and not d.config_fields:
                fields = fields_of(k, i, d)
                d = DimLabel(d.value_or_expr, Label.CONFIG, fields) if fields else d
            dims.append(d)
        sigs.append(TensorSig(tuple(dims), sig.dtype))
    node.meta["dooly"]["out"] = sigs


def _from_inputs(node):
    """Fields by value from the node's inputs' dims (a view or slice keeps its input's
    widths): a value its inputs name in exactly one way."""
    named: dict = {}
    for src in node.all_input_nodes:
        for sig in src.meta.get("dooly", {}).get("out", []):
            for d in sig.dims:
                if d.config_fields:
                    named.setdefault(d.value_or_expr, set()).add(tuple(d.config_fields))
    return lambda k, i, d: next(iter(named[d.value_or_expr])) \
        if len(named.get(d.value_or_expr, ())) == 1 else ()


def fields_pass(gm: torch.fx.GraphModule, perturbed: torch.fx.GraphModule, matcher
                ) -> torch.fx.GraphModule:
    """Name the config fields of constant dims by comparing with a capture of the same
    model at perturbed config values, node by node (`_aligned`). A node without a
    counterpart takes the fields its inputs give the same values (`_from_inputs`)."""
    from dooly.symbolic.labels import Label
    a = [n for n in gm.graph.nodes if n.meta.get("dooly", {}).get("out")]
    b = [n for n in perturbed.graph.nodes if n.meta.get("dooly", {}).get("out")]
    pairs = {id(na): nb for na, nb in _aligned(a, b)}
    if not pairs:
        return gm

    def from_pair(nb):
        def fields_of(k, i, d):
            out = nb.meta["dooly"]["out"]
            db = out[k].dims[i] if k < len(out) and i < len(out[k].dims) else None
            if db is None or db.label is not Label.CONFIG:
                return ()
            return matcher.fields(d.value_or_expr, db.value_or_expr)
        return fields_of

    for na in a:   # graph order: a node's inputs are named before it
        _named(na, from_pair(pairs[id(na)]) if id(na) in pairs else _from_inputs(na))
    return gm
