import pytest
import sympy
import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

from dooly.graph.label_pass import label_pass
from dooly.graph.normalize import normalize_pass
from dooly.symbolic.labels import DimLabel, Label, label_dim
from dooly.symbolic.symbols import T, SymKind, evaluate, make_symbol, parse_request_expr


def test_request_dim_labeled_request():
    assert label_dim(T) == DimLabel("T", Label.REQUEST)


def test_config_symbol_labeled_config_with_its_field():
    h = make_symbol(SymKind.CONFIG, "hidden_size")
    lab = label_dim(h, {h: 4096})
    assert lab == DimLabel(4096, Label.CONFIG, ("hidden_size",))


def test_product_of_request_and_config_labeled_mixed():
    heads = make_symbol(SymKind.CONFIG, "num_attention_heads")
    lab = label_dim(T * heads, {heads: 32})
    assert lab.label is Label.MIXED and lab.value_or_expr == "32*T"
    assert lab.config_fields == ("num_attention_heads",)


def test_request_dims_simplify_as_positive_integer_counts():
    # request symbols are positive integers, so forms a capture leaves unsimplified
    # reduce to the plain dim and share its key
    assert label_dim(sympy.Max(T, 1)) == DimLabel("T", Label.REQUEST)
    assert label_dim(sympy.ceiling(2 * T) / 2) == DimLabel("T", Label.REQUEST)
    assert label_dim(sympy.Min(T, 0)) == DimLabel(0, Label.CONFIG)


def test_stored_expression_is_parsed_not_evaluated():
    assert evaluate("2*T", T=8) == 16
    with pytest.raises(ValueError):
        parse_request_expr("__import__('os').system('true')")


def test_dim_label_rejects_non_int_config():
    with pytest.raises(ValueError, match="value_or_expr"):
        DimLabel("T", Label.CONFIG)


def _hand_built_graph():
    """x[T, 64] -> linear(w[32, 64]) -> relu, with T dynamic and 64 static."""
    env = ShapeEnv()
    mode = FakeTensorMode(shape_env=env)
    ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC])
    x = mode.from_tensor(torch.empty(5, 64), symbolic_context=ctx)
    w = mode.from_tensor(torch.empty(32, 64), static_shapes=True)
    g = torch.fx.Graph()
    px, pw = g.placeholder("x"), g.placeholder("w")
    px.meta["val"], pw.meta["val"] = x, w
    with mode:
        y = torch.ops.aten.linear.default(x, w)
        z = torch.ops.aten.relu.default(y)
    lin = g.call_function(torch.ops.aten.linear.default, (px, pw))
    lin.meta["val"] = y
    relu = g.call_function(torch.ops.aten.relu.default, (lin,))
    relu.meta["val"] = z
    g.output(relu)
    sym = next(iter(x.shape[0].node.expr.free_symbols))
    return torch.fx.GraphModule(torch.nn.Module(), g), sym


def test_label_pass_labels_every_dim_of_hand_built_graph():
    gm, sym = _hand_built_graph()
    gm = label_pass(normalize_pass(gm), {sym: T})
    nodes = {n.name: n for n in gm.graph.nodes}
    out = nodes["linear_default"].meta["dooly"]["out"][0]
    assert [d.label for d in out.dims] == [Label.REQUEST, Label.CONFIG]
    assert out.shape() == ["T", 32]
    assert nodes["linear_default"].meta["dooly"]["role"] == "anchor"
    assert nodes["relu_default"].meta["dooly"]["role"] == "compute"
