"""Naming config fields from a second capture at perturbed config values
(dooly.graph.label_pass.fields_pass), on graphs built by hand. The perturbed capture may
be traced at fixed request sizes, which drops a no-op slice the symbolic trace keeps."""
import torch
import torch.fx

from dooly.graph.label_pass import fields_pass
from dooly.symbolic.labels import DimLabel, Label
from dooly.symbolic.perturb import FieldMatcher, perturbed
from dooly.unit import TensorSig

RAW = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4, "vocab_size": 1000}
P = perturbed(RAW)


def _dim(d) -> DimLabel:
    return DimLabel(d, Label.REQUEST) if isinstance(d, str) else DimLabel(d, Label.CONFIG)


def _graph(ops) -> torch.fx.GraphModule:
    """A chain of nodes, each with the op name and output dims given."""
    g = torch.fx.Graph()
    prev = g.placeholder("x")
    for op, dims in ops:
        prev = g.call_function(torch.relu, (prev,))
        prev.meta["dooly"] = {"op": op, "out": [TensorSig(tuple(_dim(d) for d in dims), "bfloat16")]}
    g.output(prev)
    return torch.fx.GraphModule(torch.nn.Module(), g)


def _layers(n: int, t, hidden: int, inter: int) -> list:
    return [(op, [t, w]) for _ in range(n) for op, w in
            (("linear", inter), ("silu", inter), ("linear", hidden))]


def _fields(gm) -> list:
    return [[d.config_fields for d in n.meta["dooly"]["out"][0].dims]
            for n in gm.graph.nodes if n.meta.get("dooly")]


def test_a_node_the_perturbed_trace_dropped_takes_its_inputs_fields():
    orig = _graph(_layers(20, "T", 64, 256) + [("slice", ["T", 64]), ("slice", ["T", 64])])
    pert = _graph(_layers(20, 3, P["hidden_size"], P["intermediate_size"]) + [("slice", [3, P["hidden_size"]])])
    got = _fields(fields_pass(orig, pert, FieldMatcher(RAW)))
    assert got[:3] == [[(), ("intermediate_size",)], [(), ("intermediate_size",)], [(), ("hidden_size",)]]
    assert got[-2:] == [[(), ("hidden_size",)], [(), ("hidden_size",)]]   # the unpaired one too
    assert all(f[1] for f in got)


def test_graphs_that_differ_more_than_a_node_or_two_name_nothing():
    orig = _graph(_layers(20, "T", 64, 256))
    pert = _graph([op for i, op in enumerate(_layers(20, 3, P["hidden_size"], P["intermediate_size"]))
                   if i % 3])
    assert not any(f[1] for f in _fields(fields_pass(orig, pert, FieldMatcher(RAW))))
