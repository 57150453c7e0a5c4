"""bench/reuse_bench.py's pass rate and adaptive share: the reduction a measured share of
passing checks buys, and bad values refused before any model is analysed."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import reuse_bench  # noqa: E402

FIG = {"independent_cost_s": 100.0, "families_cost_s": 20.0, "check_savings_s": 40.0}


def test_every_check_passing_is_the_families_figure_and_none_adds_what_checks_save():
    assert reuse_bench.expected_reduction_pct(FIG, 1.0) == 80.0
    assert reuse_bench.expected_reduction_pct(FIG, 0.0) == 40.0
    assert reuse_bench.expected_reduction_pct(FIG, 0.5) == 60.0


@pytest.mark.parametrize("argv", [["--pass-rate", "120"], ["--pass-rate", "-1"],
                                  ["--pass-rate", "50", "--hardware", "cpu", "--calibrate", "x.db"]])
def test_a_bad_pass_rate_exits_2_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as e:
        reuse_bench.main(argv)
    assert e.value.code == 2 and "--pass-rate" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "101", "-5"])
def test_a_bad_adaptive_keep_exits_2_naming_the_flag(value, capsys):
    with pytest.raises(SystemExit) as e:
        reuse_bench.main(["--adaptive-keep", value])
    assert e.value.code == 2 and "--adaptive-keep" in capsys.readouterr().err


def test_a_kind_measured_apart_counts_at_its_own_rate_and_the_rest_at_the_pooled_one():
    fig = dict(FIG, check_savings_by_op={"linear": 30.0, "fused": 10.0})
    # GEMMs never pass, pointwise always: 30 s of savings lost, not half of 40
    by_kind = {"gemm": (0, 4), "pointwise": (4, 4)}
    assert reuse_bench.expected_reduction_pct(fig, 0.5, by_kind) == 50.0
    # a kind the rates do not measure stays at the pooled rate
    assert reuse_bench.expected_reduction_pct(fig, 0.5, {"gemm": (0, 4)}) == 45.0
    assert reuse_bench.expected_reduction_pct(fig, 0.5, None) == 60.0


def test_ops_of_both_engines_and_vidur_map_to_one_kind_of_work():
    kinds = {op: reuse_bench.kind_of(op) for op in (
        "linear", "attn_pre_proj", "mlp_down_proj", "_grouped_mm", "_C.cpu_fused_moe",
        "vllm.unified_attention_with_output", "scaled_dot_product_attention",
        "vllm.unified_kv_cache_update", "post_attention_layernorm", "vllm_ir.rms_norm",
        "attn_rope", "_C.rotary_embedding", "emb", "embedding", "mlp_act", "fused", "vllm.all_reduce")}
    assert kinds == {"linear": "gemm", "attn_pre_proj": "gemm", "mlp_down_proj": "gemm",
                     "_grouped_mm": "moe", "_C.cpu_fused_moe": "moe",
                     "vllm.unified_attention_with_output": "attention",
                     "scaled_dot_product_attention": "attention",
                     "vllm.unified_kv_cache_update": "kv_write", "post_attention_layernorm": "norm",
                     "vllm_ir.rms_norm": "norm", "attn_rope": "rotary", "_C.rotary_embedding": "rotary",
                     "emb": "embedding", "embedding": "embedding", "mlp_act": "pointwise",
                     "fused": "pointwise", "vllm.all_reduce": "collective"}


def test_pass_rates_are_read_per_kind_from_a_family_bench_json(tmp_path):
    path = tmp_path / "fam.json"
    path.write_text('{"family.linear.checks_passed": "1/19", "family.vllm_ir.rms_norm.checks_passed": "4/4",'
                    ' "family.vllm_ir.fused_add_rms_norm.maybe_inplace.checks_passed": "3/4",'
                    ' "family.linear.median_pct": 7.2}')
    pooled, by_kind = reuse_bench.rates_from_json(path)
    assert by_kind == {"gemm": (1, 19), "norm": (7, 8)} and pooled == 8 / 27


@pytest.mark.parametrize("text", [None, "{}", "not json"])
def test_a_bad_pass_rates_file_exits_2_naming_the_flag_and_file(text, tmp_path, capsys):
    path = tmp_path / "rates.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit) as e:
        reuse_bench.main(["--pass-rates", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--pass-rates" in err and "rates.json" in err
