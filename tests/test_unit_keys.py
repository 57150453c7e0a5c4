"""Unit keys depend on what a unit is, never on node names, the order models are
analysed in, the registry or the process; the DB refuses a second, different unit
under a stored key."""
import json
import os
import sqlite3
import subprocess
import sys
import warnings

import networkx as nx
import pytest
import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

from conftest import ROOT, config
from dooly.analyze import analyze
from dooly.config import ModelConfig
from dooly.db import Store
from dooly.errors import DoolyInputError
from dooly.graph.canon import labelled_dag
from dooly.graph.capture import Captured
from dooly.graph.label_pass import label_pass
from dooly.graph.normalize import normalize_pass
from dooly.graph.regions import RegionRegistry, region_pass
from dooly.graph.units import build_inventory
from dooly.profile.runners import region_fn
from dooly.symbolic.symbols import T
from dooly.unit import Unit

aten = torch.ops.aten
HAND = ModelConfig("hand.json", {"architectures": ["Hand"], "model_type": "hand"}, "Hand", "hand")


class _Graph:
    """A hand-built fx graph of pointwise ops over [T, cols] inputs, T dynamic."""

    def __init__(self):
        self.mode = FakeTensorMode(shape_env=ShapeEnv())
        self.g = torch.fx.Graph()
        self.syms: dict = {}

    def input(self, name, shape, dtype=torch.float32):
        dyn = [DimDynamic.DYNAMIC] + [DimDynamic.STATIC] * (len(shape) - 1)
        ctx = StatelessSymbolicContext(dynamic_sizes=dyn if shape[0] == "T" else
                                       [DimDynamic.STATIC] * len(shape))
        real = torch.empty([5 if d == "T" else d for d in shape], dtype=dtype)
        node = self.g.placeholder(name)
        node.meta["val"] = self.mode.from_tensor(real, symbolic_context=ctx)
        if shape[0] == "T":
            self.syms.update((s, T) for s in node.meta["val"].shape[0].node.expr.free_symbols)
        return node

    def op(self, target, *args, name=None):
        with self.mode:
            val = target(*[a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args])
        node = self.g.call_function(target, tuple(args), name=name)
        node.meta["val"] = val
        return node

    def fused(self, *outs) -> list:
        self.g.output(outs)
        gm = torch.fx.GraphModule(torch.nn.Module(), self.g)
        gm = region_pass(label_pass(normalize_pass(gm), self.syms))
        inv = build_inventory(Captured("transformers", HAND, gm), self.syms, RegionRegistry())
        return [e.unit for e in inv.entries.values() if e.unit.op == "fused"]


def _gated(swap: bool):
    """silu(g) * (u * w); with swap, other names, inputs declared in the other order
    and the two independent products built in the other order: the same region."""
    b = _Graph()
    if not swap:
        g = b.input("g", ["T", 64], torch.bfloat16)
        u, w = b.input("u", ["T", 64]), b.input("w", [64])
        act = b.op(aten.silu.default, g)
        scaled = b.op(aten.mul.Tensor, u, w)
    else:
        w, u = b.input("weight", [64]), b.input("up", ["T", 64])
        g = b.input("gate", ["T", 64], torch.bfloat16)
        scaled = b.op(aten.mul.Tensor, u, w, name="first")
        act = b.op(aten.silu.default, g, name="second")
    return b.fused(b.op(aten.mul.Tensor, act, scaled))


def test_isomorphic_regions_with_other_names_and_order_share_a_key():
    (a,), (b,) = _gated(False), _gated(True)
    assert a.key == b.key
    assert a.graph == b.graph and a.inputs == b.inputs  # stored in one canonical order


def test_canonical_region_still_computes_the_region():
    (unit,) = _gated(True)
    gen = torch.Generator().manual_seed(0)
    by_dtype = {"bfloat16": torch.randn(7, 64, generator=gen).bfloat16(),
                "float32": torch.randn(7, 64, generator=gen)}
    w = torch.randn(64, generator=gen)
    args = [w if len(s.dims) == 1 else by_dtype[s.dtype] for s in unit.inputs]
    (out,) = region_fn(unit)(*args)
    expect = aten.silu(by_dtype["bfloat16"]) * (by_dtype["float32"] * w)
    torch.testing.assert_close(out, expect)


def _cyclic(step: int):
    """exp of four [T, 64] inputs, then four addcmul ops, op k reading exps k, k+1 and
    k+step: every node of a kind looks alike to colour refinement (the WL hash) for
    step 2 and step 3, yet the two regions are not isomorphic."""
    b = _Graph()
    xs = [b.op(aten.exp.default, b.input(f"x{i}", ["T", 64])) for i in range(4)]
    return b.fused(*[b.op(aten.addcmul.default, xs[k], xs[(k + 1) % 4], xs[(k + step) % 4])
                     for k in range(4)])


def _nx(unit) -> nx.DiGraph:
    labels, edges = labelled_dag(unit.graph, [t.to_json() for t in unit.inputs])
    g = nx.DiGraph()
    g.add_nodes_from((i, {"label": lab}) for i, lab in enumerate(labels))
    g.add_edges_from((u, v, {"pos": str(s)}) for u, v, s in edges)
    return g


def _key_in_process(unit, seed: str) -> str:
    code = ("import json, sys; from dooly.graph.canon import canonical_region; "
            "d = json.load(sys.stdin); print(canonical_region(d['graph'], d['inputs']).key)")
    env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
    blob = json.dumps({"graph": unit.graph, "inputs": [t.to_json() for t in unit.inputs]})
    return subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True,
                          text=True, check=True, cwd=ROOT, env=env).stdout.strip()


def test_regions_one_wl_hash_apart_get_different_keys_in_separate_processes():
    (a,), (b,) = _cyclic(2), _cyclic(3)
    ga, gb = _nx(a), _nx(b)
    with warnings.catch_warnings():  # networkx notes its 3.5 digraph-hash change
        warnings.simplefilter("ignore")
        wl = [nx.weisfeiler_lehman_graph_hash(g, node_attr="label", edge_attr="pos",
                                              iterations=3) for g in (ga, gb)]
    assert wl[0] == wl[1]  # the old bucket: one key for both
    match = {"node_match": lambda x, y: x["label"] == y["label"],
             "edge_match": lambda x, y: x["pos"] == y["pos"]}
    assert not nx.is_isomorphic(ga, gb, **match)
    ka, kb = _key_in_process(a, "1"), _key_in_process(b, "2")
    assert ka != kb and a.key != b.key
    assert ka == a.graph_hash == _key_in_process(a, "3")  # any process, any hash seed


@pytest.mark.slow
def test_analyze_order_does_not_change_keys():
    models = [config("HuggingFaceTB__SmolLM2-135M-Instruct"), config("Qwen__Qwen2.5-0.5B")]
    ab = analyze(models, "transformers", fields=False).inventories
    ba = analyze(models[::-1], "transformers", fields=False).inventories[::-1]
    for x, y in zip(ab, ba):
        assert sorted(x.entries) == sorted(y.entries)
        assert any(e.unit.op == "fused" for e in x.entries.values())
        assert all(x.entries[k].unit.graph == y.entries[k].unit.graph for k in x.entries)


def test_stored_key_with_another_graph_is_an_error(tmp_path):
    (a,), (b,) = _cyclic(2), _cyclic(3)
    forged = Unit(op="fused", inputs=a.inputs, outputs=a.outputs, graph=b.graph,
                     graph_hash=a.graph_hash)
    assert forged.key == a.key
    db = tmp_path / "dooly.db"
    with Store.open(db) as s:
        s.add_unit(a)
        with pytest.raises(DoolyInputError, match=a.key) as err:
            s.add_unit(forged)
        assert str(db) in str(err.value)
        assert s.get_unit(a.key).graph == a.graph  # the stored graph stays
    with sqlite3.connect(db) as c:  # another whole unit under the key
        c.execute("UPDATE units SET signature_json = ? WHERE unit_key = ?",
                  (json.dumps(b.to_json()), a.key))
    with Store.open(db) as s, pytest.raises(DoolyInputError, match=a.key):
        s.add_unit(a)


def test_stored_copy_differing_in_key_irrelevant_text_is_accepted(tmp_path):
    (a,) = _gated(False)
    db = tmp_path / "dooly.db"
    with Store.open(db) as s:
        s.add_unit(a)
    # an older writer: other JSON key order, the two independent rows in the other order
    old = a.to_json()
    rows = old["graph"]["nodes"]
    assert sorted(r["op"] for r in rows[:2]) == ["mul", "silu"]  # the independent two
    assert all(set(x) == {"ref"} for x in rows[2]["args"])      # the product of both
    swapped = [{"ref": 1 - x["ref"]} for x in rows[2]["args"]]
    old["graph"]["nodes"] = [rows[1], rows[0], dict(rows[2], args=swapped)]
    text = json.dumps(dict(reversed(list(old.items()))))
    with sqlite3.connect(db) as c:
        c.execute("UPDATE units SET signature_json = ? WHERE unit_key = ?", (text, a.key))
    with Store.open(db) as s:
        s.add_unit(a)
        assert len(s.units()) == 1


def test_a_routers_tensor_methods_rebuild_and_code_does_not():
    """DeepSeek's grouped top-k router and its rotary use max, bool, scatter_ and
    repeat_interleave: plain tensor methods the stored region may name; anything else is
    refused, never looked up."""
    from dooly.unit import Unit
    from dooly.unit import TensorSig as Sig
    from dooly.symbolic.labels import DimLabel as D, Label as L
    nodes = [{"op": "repeat_interleave", "kind": "call_method", "target": "repeat_interleave",
              "args": [{"in": 0}, 2], "kwargs": {"dim": -1}},
             {"op": "max", "kind": "call_method", "target": "max", "args": [{"ref": 0}, -1], "kwargs": {}},
             {"op": "getitem", "kind": "call_function", "target": "operator.getitem",
              "args": [{"ref": 1}, 0], "kwargs": {}},
             {"op": "bool", "kind": "call_method", "target": "bool", "args": [{"ref": 2}], "kwargs": {}}]
    sig = Sig((D("T", L.REQUEST), D(4, L.CONFIG)), "float32")
    graph = {"nodes": nodes, "num_inputs": 1, "outputs": [3], "input_shapes": [sig.to_json()]}
    unit = Unit("fused", (sig,), (Sig((D("T", L.REQUEST),), "bool"),), graph=graph, graph_hash="router")
    x = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    (out,) = region_fn(unit)(x)
    assert out.tolist() == [True, False]
    nodes[3]["target"] = "__reduce__"
    with pytest.raises(ValueError, match="not allowed"):
        region_fn(unit)
