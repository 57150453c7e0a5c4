"""Fused regions: connected pointwise/reduction ops between anchors, as an engine
compiler (Inductor) would fuse them. Each region is kept as plain data (ops, args,
shapes) so a sweeper can rebuild and run it, and is keyed by a hash of its canonical
form (graph/canon.py): isomorphic regions share a key in any model, order or run."""
from __future__ import annotations

import operator

import torch
import torch.fx

from dooly.graph.canon import CanonicalRegion, canonical_region
from dooly.graph.label_pass import dim_expr
from dooly.symbolic.labels import canonical


def _role(n: torch.fx.Node) -> str:
    return n.meta.get("dooly", {}).get("role", "input")


def _view_root(n: torch.fx.Node, seen: set) -> list[torch.fx.Node]:
    """Non-view producers reached from n through view ops."""
    if _role(n) != "view" or n in seen:
        return [n]
    seen.add(n)
    out = []
    for a in n.all_input_nodes:
        out += _view_root(a, seen)
    return out


def region_pass(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Union compute nodes that touch each other directly or through views. Regions
    never cross a decoder-layer boundary: the residual stream would otherwise chain
    every layer's adds and norms into one region."""
    from dooly.graph.capture import layer_index
    parent: dict = {}

    def find(x):
        while parent[x] is not x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    compute = [n for n in gm.graph.nodes if _role(n) == "compute"]
    for n in compute:
        parent[n] = n
    for n in compute:
        for a in n.all_input_nodes:
            for root in _view_root(a, set()):
                if root in parent and layer_index(root) == layer_index(n):
                    parent[find(root)] = find(n)
    ids: dict = {}
    for n in compute:
        n.meta["dooly"]["region"] = ids.setdefault(find(n), len(ids))
    return gm


def regions(gm: torch.fx.GraphModule) -> dict[int, list[torch.fx.Node]]:
    out: dict[int, list[torch.fx.Node]] = {}
    for n in gm.graph.nodes:
        r = n.meta.get("dooly", {}).get("region")
        if r is not None:
            out.setdefault(r, []).append(n)
    return out


def _target_name(node: torch.fx.Node) -> str:
    t = node.target
    if node.op == "call_method":
        return str(t)
    if isinstance(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return "torch.ops." + str(t)
    mod = getattr(t, "__module__", None) or ""
    if t in (operator.mul, operator.add, operator.sub, operator.truediv, operator.getitem,
             operator.neg, operator.pow):
        return "operator." + t.__name__
    if mod.startswith("torch") or mod == "builtins" or mod.startswith("torch._C"):
        for prefix in ("torch.nn.functional", "torch"):
            obj = eval_name(prefix + "." + t.__name__, strict=False)
            if obj is t:
                return prefix + "." + t.__name__
    return f"{mod}.{getattr(t, '__name__', str(t))}"


def eval_name(name: str, strict: bool = True):
    """Resolve an allowed dotted name by attribute lookup (never `eval`)."""
    # operator's C functions name their module `_operator` (operator.ge.__module__): the
    # same functions, so the same root (a TP rank's vocabulary mask compares and ands ids)
    roots = {"torch": torch, "operator": operator, "_operator": operator}
    head, *rest = name.split(".")
    if head not in roots:
        if strict:
            raise ValueError(f"op target {name!r} is not an allowed torch/operator name")
        return None
    obj = roots[head]
    for part in rest:
        obj = getattr(obj, part, None)
        if obj is None:
            if strict:
                raise ValueError(f"op target {name!r} does not exist in this torch")
            return None
    return obj


def _encode(arg, ids: dict, inputs: dict):
    if isinstance(arg, torch.fx.Node):
        if arg in ids:
            return {"ref": ids[arg]}
        val = arg.meta.get("val", arg.meta.get("example_value"))
        if isinstance(val, (torch.SymInt, int)) and not isinstance(val, bool):
            return {"sym": str(dim_expr(val))}  # a size from outside: store its expression
        return {"in": inputs.setdefault(arg, len(inputs))}
    if isinstance(arg, torch.SymInt):
        return {"sym": str(dim_expr(arg))}
    if isinstance(arg, slice):
        return {"slice": [_encode(x, ids, inputs) for x in (arg.start, arg.stop, arg.step)]}
    if arg is Ellipsis:
        return {"ellipsis": True}
    if isinstance(arg, torch.device):
        return {"device": True}  # wherever the unit is run
    if isinstance(arg, torch.layout):
        return {"layout": str(arg).replace("torch.", "")}
    if isinstance(arg, torch.dtype):
        return {"dtype": str(arg).replace("torch.", "")}
    if isinstance(arg, tuple):
        return {"tuple": [_encode(x, ids, inputs) for x in arg]}
    if isinstance(arg, list):
        return [_encode(x, ids, inputs) for x in arg]
    if isinstance(arg, dict):
        return {"dict": {k: _encode(v, ids, inputs) for k, v in arg.items()}}
    if arg is None or isinstance(arg, (bool, int, float, str)):
        return arg
    return {"repr": str(arg)}


def region_data(nodes: list[torch.fx.Node], sym_map: dict) -> tuple[dict, list, list]:
    """Data form of a region: its nodes (views feeding it included), its external
    inputs and the nodes whose values leave it."""
    members = set(nodes)
    for n in nodes:  # pull in the view chains between members and external inputs
        stack = list(n.all_input_nodes)
        while stack:
            a = stack.pop()
            if _role(a) == "view" and a not in members and a.op != "placeholder":
                members.add(a)
                stack += a.all_input_nodes
    order = [n for n in nodes[0].graph.nodes if n in members]
    ids: dict = {}
    inputs: dict = {}
    rows = []
    for n in order:
        args = _encode(tuple(n.args), ids, inputs)["tuple"]
        kwargs = {k: _encode(v, ids, inputs) for k, v in n.kwargs.items()}
        ids[n] = len(rows)
        rows.append({"op": n.meta["dooly"]["op"], "kind": n.op, "target": _target_name(n),
                     "args": args, "kwargs": kwargs})
    outputs = [n for n in order if n.meta["dooly"].get("role") == "compute"
               and any(u not in members for u in n.users)]
    data = {"nodes": rows, "num_inputs": len(inputs), "outputs": [ids[n] for n in outputs]}
    # symbolic args are stored in Dooly's symbols, e.g. view(T, 9, 64)
    _rename_syms(data, sym_map)
    ext = sorted(inputs, key=inputs.get)
    return data, ext, outputs


def _rename_syms(obj, sym_map: dict) -> None:
    import sympy
    if isinstance(obj, dict):
        if "sym" in obj and isinstance(obj["sym"], str):
            # sympify is safe here: obj["sym"] was just written by _encode from a live
            # capture's SymInt (str of a SymPy expression), never read from a file
            expr = sympy.sympify(obj["sym"], locals={str(k): k for k in sym_map})
            obj["sym"] = canonical(expr.xreplace(sym_map))
            return
        for v in obj.values():
            _rename_syms(v, sym_map)
    elif isinstance(obj, list):
        for v in obj:
            _rename_syms(v, sym_map)


class RegionRegistry:
    """Canonical regions of one run. A key is a pure function of the region's canonical
    form; the registry only guards the run against two forms that share a (truncated)
    hash, which would otherwise merge two different regions into one unit."""

    def __init__(self):
        self._forms: dict[str, str] = {}

    def canonical(self, data: dict, in_labels: list) -> CanonicalRegion:
        canon = canonical_region(data, in_labels)
        if self._forms.setdefault(canon.key, canon.form) != canon.form:
            raise ValueError(f"graph_hash: two different regions hash to {canon.key}")
        return canon

    def key(self, data: dict, in_labels: list) -> str:
        return self.canonical(data, in_labels).key
