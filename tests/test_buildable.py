"""A unit the sweep cannot rebuild from its data (a fused region calling a tensor method the
interpreter does not list, an op outside the allowed namespaces) is named by `dooly
analyze` and `dooly sweep` before anything runs, with the models that need it; before,
its points silently failed one by one and `dooly predict` refused the model later."""
from __future__ import annotations

import json

import pytest

from conftest import config
from dooly.analyze import Analysis
from dooly.cli import main
from dooly.db import Store
from dooly.graph.units import Entry, Inventory
from dooly.profile.buildable import region_calls, why_unbuildable
from dooly.profile.runners import region_fn
from dooly.symbolic.labels import DimLabel as D, Label as L
from dooly.unit import TensorSig as Sig, Unit
from test_db import linear_unit

SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")
X = Sig((D("T", L.REQUEST), D(4, L.CONFIG)), "float32")   # [T, 4]


def region(method: str, fn: str = "operator.neg") -> Unit:
    """x.<method>(...) then fn(.): a two-row fused region over one [T, 4] input."""
    nodes = [{"op": method, "kind": "call_method", "target": method, "args": [{"in": 0}, 2], "kwargs": {}},
             {"op": "f", "kind": "call_function", "target": fn, "args": [{"ref": 0}], "kwargs": {}}]
    graph = {"nodes": nodes, "num_inputs": 1, "outputs": [1], "input_shapes": [X.to_json()]}
    return Unit("fused", (X,), (X,), graph=graph, graph_hash=f"{method}-{fn}")


def test_a_region_is_refused_for_exactly_what_its_runner_refuses():
    good, bad = region("pow"), region("__reduce__")
    assert why_unbuildable(good) is None
    region_fn(good)   # builds
    why = why_unbuildable(bad)
    assert "'__reduce__' is not allowed" in why
    with pytest.raises(ValueError, match="__reduce__"):
        region_fn(bad)
    assert "does not exist" in why_unbuildable(region("pow", "torch.no_such_function"))
    assert "not an allowed" in why_unbuildable(region("pow", "os.system"))


def test_engine_ops_in_a_region_are_checked_by_namespace_without_loading_the_engine():
    row = {"kind": "call_function", "target": "torch.ops._C.not_registered_here", "args": [], "kwargs": {}}
    assert region_calls([row], resolve_ops=False) == [None]
    with pytest.raises(ValueError, match="namespace"):
        region_calls([dict(row, target="torch.ops.evil.run")], resolve_ops=False)


@pytest.mark.parametrize("op, ok", [("_C.rotary_embedding", True), ("vllm_ir.rms_norm", True),
                                    ("linear", True), ("embedding", True), ("sampler", True),
                                    ("os.system", False), ("builtins", False)])
def test_ops_outside_the_allowed_namespaces_cannot_be_swept(op, ok):
    unit = Unit(op, (X,), (X,))
    assert (why_unbuildable(unit) is None) is ok
    # attention and the KV-cache write run through the engine's backend, whatever their name
    assert why_unbuildable(Unit(op, (X,), (X,), stateful=True)) is None


@pytest.fixture
def two_models(monkeypatch):
    """Two models that share a region the sweep cannot rebuild, and a GEMM it can."""
    import dooly.analyze
    bad, gemm = region("__reduce__"), linear_unit(16)
    invs = [Inventory(m, SMOL, "Tiny", "transformers", m, {bad.key: Entry(bad, 2), gemm.key: Entry(gemm, 1)})
            for m in ("alpha", "beta")]
    monkeypatch.setattr(dooly.analyze, "analyze", lambda *a, **k: Analysis("transformers", invs))
    return bad, gemm


def test_analyze_names_the_unit_and_its_models_and_the_plan_leaves_it_out(two_models, tmp_path, capsys):
    bad, gemm = two_models
    db, out = tmp_path / "a.db", tmp_path / "a.json"
    Store.open(db).close()
    assert main(["analyze", SMOL, "--db", str(db), "--json", str(out), "--hardware", "cpu"]) == 0
    text = " ".join(capsys.readouterr().out.split())   # rich wraps at the terminal's width
    assert "Cannot sweep 1 unit(s)" in text and f"fused ({bad.key}) of alpha, beta" in text
    res = json.loads(out.read_text())
    assert set(res["unsweepable"]) == {bad.key} and "__reduce__" in res["unsweepable"][bad.key]
    plan = res["plan"]
    assert plan["missing_units"] == [gemm.key] and set(plan["unsweepable_units"]) == {bad.key}
    assert plan["units"][bad.key]["status"] == "unsweepable" and plan["units"][bad.key]["cost_s"] == 0


def test_sweep_warns_before_measuring_and_stores_the_failures(two_models, tmp_path, capsys):
    bad, gemm = two_models
    db = tmp_path / "s.db"
    assert main(["sweep", SMOL, "--db", str(db), "--threads", "1", "--no-progress", "--no-recheck",
                 "--max-tokens", "8", "--max-batch", "2", "--max-context", "16"]) == 0
    err = capsys.readouterr().err
    assert f"dooly: warning: cannot sweep fused ({bad.key}) of alpha, beta: graph: tensor method" in err
    with Store.open(db, readonly=True) as s:
        rows = s.measurements(unit_key=bad.key, status=None)
        assert rows and all(m.status == "failed" for m in rows)
        assert s.measurements(unit_key=gemm.key)
