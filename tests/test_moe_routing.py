"""Mixture-of-experts units: timed under a named expert distribution recorded in each
point, fitted and predicted on the points of the distribution asked for."""
from __future__ import annotations

import numpy as np
import pytest

from dooly.env import Measurement
from dooly.profile.grid import GridLimits, point_values
from dooly.profile.sweep_units import grid_for
from dooly.routing import (expert_ids, expert_loads, expert_weights, for_routing, moe_shape,
                           parse_routing, routing_of)
from dooly.symbolic.labels import DimLabel, Label
from dooly.unit import TensorSig, Unit

T = DimLabel("T", Label.REQUEST)


def c(v: int) -> DimLabel:
    return DimLabel(v, Label.CONFIG)


def moe_unit(h=64, i=128, e=8, k=2) -> Unit:
    """vLLM's CPU fused MoE as a capture records it: out, x, w13, w2, top-k weights, ids."""
    ins = (TensorSig((T, c(h)), "bfloat16"), TensorSig((T, c(h)), "bfloat16"),
           TensorSig((c(e), c(2 * i), c(h)), "bfloat16"), TensorSig((c(e), c(h), c(i)), "bfloat16"),
           TensorSig((T, c(k)), "float32"), TensorSig((T, c(k)), "int32"))
    call = [{"t": 0}, {"t": 1}, {"t": 2}, {"t": 3}, None, None, {"t": 4}, {"t": 5}, False, "silu", "vec"]
    return Unit("_C.cpu_fused_moe", ins, (), (("call", call),))


def test_routing_specs_parse_to_one_spelling_and_bad_ones_name_the_field():
    assert parse_routing(" Balanced ") == "balanced"
    assert parse_routing("skew:1.50") == "skew:1.5"
    for bad in ("skew:0", "skew:-1", "skew:x", "zipf", "skew:inf"):
        with pytest.raises(ValueError, match="routing"):
            parse_routing(bad)


def test_each_token_gets_top_k_distinct_experts_the_same_in_every_sweep():
    ids = expert_ids(300, 8, 2)
    assert ids.shape == (300, 2) and ids.dtype == np.int32
    assert (ids[:, 0] != ids[:, 1]).all() and ids.min() >= 0 and ids.max() < 8
    assert (ids == expert_ids(300, 8, 2)).all()


def test_skew_loads_the_first_experts_balanced_spreads_evenly():
    flat = expert_loads(expert_ids(4000, 8, 2), 8)
    skew = expert_loads(expert_ids(4000, 8, 2, "skew:1.5"), 8)
    assert sum(flat) == sum(skew) == 8000
    assert max(flat) / min(flat) < 1.2 and max(skew) / min(skew) > 4
    assert expert_weights("skew:1", 4)[0] == pytest.approx(1 / (1 + 1 / 2 + 1 / 3 + 1 / 4))


def test_moe_shape_reads_experts_and_top_k_from_the_unit():
    assert moe_shape(moe_unit(e=16, k=4)) == (16, 4)


def test_a_moe_units_grid_carries_its_routing_which_shapes_never_see():
    pts = grid_for(moe_unit(), GridLimits(64, 4, 64), "skew:2")
    assert pts and all(p["routing"] == "skew:2" and "T" in p for p in pts)
    assert point_values(pts[0]) == {"T": pts[0]["T"], "B": 1, "Q": pts[0]["T"], "C": 0}


def test_fits_take_the_moe_points_of_the_routing_asked_for_and_every_other_row():
    u = moe_unit()
    units = {u.key: u}
    rows = [Measurement(u.key, "e", {"T": 4, "routing": "balanced"}, 1.0),
            Measurement(u.key, "e", {"T": 4, "routing": "skew:2"}, 2.0),
            Measurement(u.key, "e", {"T": 8}, 3.0),     # before routing was recorded: balanced
            Measurement("linear-x", "e", {"T": 4}, 4.0)]
    assert [m.median_ms for m in for_routing(rows, units)] == [1.0, 3.0, 4.0]
    assert [m.median_ms for m in for_routing(rows, units, "skew:2")] == [2.0, 4.0]
    assert routing_of({"T": 1}) == "balanced"


def test_router_inputs_follow_the_points_routing():
    import torch

    from dooly.profile.runners import random_tensor, routed_inputs
    u = moe_unit()
    ins = [random_tensor(sig, {"T": 64}, "cpu") for sig in u.inputs]
    routed_inputs(u, ins, {"T": 64, "routing": "skew:3"})
    ids, weights = ins[5], ins[4]
    assert ids.min() >= 0 and ids.max() < 8 and (ids[:, 0] != ids[:, 1]).all()
    assert torch.bincount(ids.flatten().long(), minlength=8)[0] > 40   # skewed onto expert 0
    assert torch.allclose(weights.sum(-1), torch.ones(64)) and (weights > 0).all()


def grouped_unit(h=32, n=48, e=8) -> Unit:
    """transformers' MoE experts as its grouped_mm path records them: rows sorted by expert
    [T*k, h], the experts' weights [E, h, n], where each expert's rows end [E]."""
    rows = DimLabel("2*T", Label.REQUEST)
    ins = (TensorSig((rows, c(h)), "bfloat16"), TensorSig((c(e), c(h), c(n)), "bfloat16"),
           TensorSig((c(e),), "int32"))
    return Unit("_grouped_mm", ins, (TensorSig((rows, c(n)), "bfloat16"),))


@pytest.mark.parametrize("cold", [False, True])
def test_a_grouped_expert_gemm_is_swept_under_the_points_routing(cold):
    """Its offsets once came from random ints (and the sweep refused the op outright):
    every point of Mixtral's and DeepSeek-V2's experts failed on the transformers engine."""
    import torch

    from dooly.profile.buildable import why_unbuildable
    from dooly.profile.runners import StatelessRunner
    from dooly.routing import group_offsets
    u = grouped_unit()
    assert why_unbuildable(u) is None
    grid = grid_for(u, GridLimits(8, 2, 16), "skew:2")
    assert grid and all(p["routing"] == "skew:2" for p in grid)
    out = StatelessRunner(u, "transformers", cold=cold).prepare({"T": 16, "routing": "skew:2"})()
    assert out.shape == (32, 48) and torch.isfinite(out.float()).all()
    offs = group_offsets(32, 8, "skew:2")
    assert offs[-1] == 32 and (np.diff(offs) >= 0).all() and offs[0] > 32 / 8   # expert 0 the busiest


def test_a_routers_integer_histogram_runs_on_cpu_as_transformers_runs_it():
    """Captured on meta tensors, transformers' MoE router counts expert ids with an integer
    histc (its path off the CPU); torch's CPU kernel has none, and every point of the
    router regions of Mixtral and DeepSeek-V2 failed on the transformers engine."""
    import torch

    from dooly.profile.runners import region_fn
    ids = TensorSig((DimLabel("2*T", Label.REQUEST),), "int32")
    rows = [{"op": "histc", "kind": "call_function", "target": "torch.ops.aten.histc.default",
             "args": [{"in": 0}, 8, 0, 7], "kwargs": {}}]
    graph = {"nodes": rows, "num_inputs": 1, "outputs": [0], "input_shapes": [ids.to_json()]}
    unit = Unit("fused", (ids,), (TensorSig((c(8),), "int32"),), graph=graph, graph_hash="histc")
    x = torch.tensor([0, 3, 3, 7, 7, 7], dtype=torch.int32)
    (out,) = region_fn(unit)(x)
    assert out.tolist() == [1, 0, 0, 2, 0, 0, 0, 3]


@pytest.mark.vllm
def test_the_engines_fused_moe_runs_at_a_routed_point():
    pytest.importorskip("vllm")
    from dooly.engines import set_vllm_environ
    set_vllm_environ()
    import vllm._custom_ops  # noqa: F401  registers torch.ops._C
    from dooly.profile.runners import StatelessRunner
    run = StatelessRunner(moe_unit(), "vllm").prepare({"T": 16, "routing": "skew:1"})
    run()   # expert ids out of range, or AMX without the kernel's permission, would crash here


def test_a_prediction_uses_the_moe_points_of_its_routing_and_asks_for_a_sweep_without_them(tmp_path):
    from conftest import config
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.env import Environment
    from dooly.errors import MissingDataError
    from dooly.predict import Predictor
    cfg = config("HuggingFaceTB__SmolLM2-135M-Instruct")   # any config: the inventory is set by hand
    db, u = str(tmp_path / "m.db"), moe_unit()
    env = Environment("cpu0", "cpu", "vllm", "0.32", "CPU_ATTN", "bfloat16")
    with Store.open(db) as s:
        s.add_environment(env)
        s.add_unit(u)
        s.set_inventory(load_config(cfg).hash, "vllm", "moe", {u.key: 2})
        for t in (1, 2, 4, 8, 16, 32):
            s.add_measurement(Measurement(u.key, env.key, {"T": t, "routing": "balanced"}, 1.0 + t))
            s.add_measurement(Measurement(u.key, env.key, {"T": t, "routing": "skew:2"}, 2.0 + 2 * t))
    flat = Predictor.load(cfg, db, "vllm").predict([(8, 0)]).units_ms
    skew = Predictor.load(cfg, db, "vllm", routing="skew:2").predict([(8, 0)]).units_ms
    assert flat == pytest.approx(2 * 9.0, rel=0.05) and skew == pytest.approx(2 * 18.0, rel=0.05)
    with pytest.raises(MissingDataError, match="--routing skew:1"):
        Predictor.load(cfg, db, "vllm", routing="skew:1")


@pytest.mark.parametrize("cmd", ["sweep", "predict", "simulate"])
def test_a_bad_routing_flag_is_one_line_naming_it(cmd, tmp_path, capsys):
    from conftest import config
    from dooly.cli import main
    args = [cmd, config("HuggingFaceTB__SmolLM2-135M-Instruct"), "--db", str(tmp_path / "x.db"),
            "--routing", "zipf"] + (["--batch", "decode:1@8"] if cmd == "predict" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--routing" in err[-1] and not (tmp_path / "x.db").exists()
