"""CUDA graphs as vLLM 0.32 captures and pads them (code path for GPU hosts; no GPU here)."""
import pytest

from dooly.fit.cudagraph import FULL, NONE, PIECEWISE, GraphPolicy, default_capture_sizes


def test_default_sizes_follow_vllms_rule():
    sizes = default_capture_sizes(max_num_seqs=256, max_num_batched_tokens=8192)
    assert sizes[:4] == (1, 2, 4, 8) and sizes[-1] == 512
    assert 248 in sizes and 256 in sizes and 264 not in sizes and 272 in sizes
    assert len(sizes) == 3 + 31 + 17


def test_ceiling_follows_max_num_seqs_and_the_token_budget():
    assert default_capture_sizes(max_num_seqs=64)[-1] == 128          # 2 x max_num_seqs
    assert default_capture_sizes(max_num_seqs=100)[-1] == 200
    assert 100 in default_capture_sizes(max_num_seqs=100)               # the widest decode batch
    assert default_capture_sizes(max_num_seqs=256, max_num_batched_tokens=100)[-1] == 100
    assert default_capture_sizes(max_num_seqs=1024, blackwell=True)[-1] == 1024
    # an explicit ceiling off the stride is truncated to the last size below it, as vLLM warns
    assert default_capture_sizes(max_num_seqs=4, max_capture_size=6) == (1, 2, 4)


def test_padding_goes_to_the_next_captured_size():
    g = GraphPolicy.for_serving(256, 8192)
    assert [g.padded(t) for t in (1, 3, 5, 8, 9, 250, 257, 512)] == [1, 4, 8, 8, 16, 256, 272, 512]
    assert g.padded(513) == 513 and g.padded(4000) == 4000   # above the ceiling: no graph, no padding


def test_uniform_decode_replays_a_full_graph_others_piecewise():
    g = GraphPolicy.for_serving(256, 8192)
    assert g.mode([(1, 100)] * 7) == FULL
    assert g.mode([(1, 100)] * 3 + [(40, 0)]) == PIECEWISE
    assert g.mode([(600, 0)]) == NONE


def test_policy_rejects_unsorted_sizes():
    with pytest.raises(ValueError, match="sizes"):
        GraphPolicy((4, 2))
    assert GraphPolicy.from_json(GraphPolicy((1, 2, 8)).to_json()) == GraphPolicy((1, 2, 8))


def _sig(*dims):
    from dooly.symbolic.labels import DimLabel, Label
    from dooly.unit import TensorSig
    return TensorSig(tuple(DimLabel(x, Label.REQUEST) if isinstance(x, str) else DimLabel(x, Label.CONFIG)
                           for x in dims), "bfloat16")


class _Linear:
    """A token-driven unit model: 1 ms per token (so the padding is visible)."""
    def predict_one(self, point):
        return float(point.get("T", point.get("B", 0.0)))


def _predictor(execution):
    from dooly.env import Environment
    from dooly.predict import Predictor
    from dooly.unit import Unit
    env = Environment("gpu0", "cuda", "vllm", "0.32", "FLASH_ATTN", "bfloat16", execution=execution)
    gemm = Unit("linear", (_sig("T", 64), _sig(64, 64)), (_sig("T", 64),))
    head = Unit("linear", (_sig("B", 64), _sig(1000, 64)), (_sig("B", 1000),), attrs=(("role", "lm_head"),))
    p = Predictor({gemm.key: gemm, head.key: head}, {gemm.key: 1, head.key: 1},
                  {gemm.key: _Linear(), head.key: _Linear()}, env)
    return p, gemm.key, head.key


def test_predictor_pads_token_driven_units_on_a_cudagraph_host():
    from dooly.fit.cudagraph import GraphPolicy
    p, gemm, head = _predictor("cudagraph")
    p.graphs = GraphPolicy.for_serving(256, 8192)
    r = p.predict([(1, 100)] * 5)
    assert r.breakdown[gemm] == 8.0      # 5 decode tokens run in the graph captured for 8
    assert r.breakdown[head] == 5.0      # logits: the real sequences only
    assert p.predict([(600, 0)]).breakdown[gemm] == 600.0   # beyond the ceiling: unpadded
    q, gemm2, _ = _predictor("compiled")
    assert q.predict([(1, 100)] * 5).breakdown[gemm2] == 5.0   # no graphs on this host


def test_step_model_makes_no_per_layer_calls_for_a_full_replay():
    from dooly.fit.step_features import FEATURES
    from dooly.fit.step_model import EngineStepModel
    import numpy as np
    m = EngineStepModel()
    m.coef_ = np.array([1.0 if name == "step_layer" else 0.0 for name, _, _ in FEATURES])
    m.models_, m.n_rows_, m.in_sample_mape_pct_ = ["x"], 0, 0.0
    s = {"layers": 10, "attention_full": 10, "attention_sliding": 0, "pieces": 11, "hidden": 64,
         "vocab": 1000, "kv_width": 64, "q_width": 64, "unit_calls": 40}
    bound = m.bind(s, GraphPolicy.for_serving(256, 8192))
    assert bound.predict_one([(1, 10)] * 4) == 0.0                 # FULL: one graph launch
    assert bound.predict_one([(1, 10)] * 4 + [(30, 0)]) == 11.0    # PIECEWISE: a call per piece
