"""`dooly export vidur`: Vidur's mlp.csv / attention.csv from a Dooly DB."""
import contextlib
import csv
import io

import pytest

from conftest import ROOT, config, needs_vllm
from dooly.cli import main
from dooly.interop.vidur_grid import vidur_attention_grid, vidur_token_grid
from dooly.interop.vidur_format import VIDUR_ATTENTION_OPS, VIDUR_MLP_OPS, attention_header, mlp_header

SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")
VIDUR_MLP = ROOT / "fixtures" / "vidur" / "a100" / "meta-llama" / "Llama-2-7b-hf" / "mlp.csv"


def _read(path):
    with open(path, newline="") as f:
        r = csv.reader(f)
        header = next(r)
        return header, [dict(zip(header, row)) for row in r]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from dooly.profile.grid import GridLimits
    from dooly.analyze import analyze
    from dooly.profile.sweep import sweep
    d = tmp_path_factory.mktemp("vidur_export")
    db, out = str(d / "s.db"), d / "out"
    sweep(analyze([SMOL], "vllm"), db, lim=GridLimits(max_tokens=32, max_batch=4, max_context=128))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["export", "vidur", SMOL, "--db", db, "--out", str(out),
                   "--max-tokens", "64", "--max-model-len", "256"])
    assert rc == 0
    return out, buf.getvalue(), db


def test_token_grid_is_vidurs():
    g = vidur_token_grid(4096)
    assert g[:5] == [1, 2, 4, 8, 16] and g[-1] == 4096
    assert all(b - a == 8 for a, b in zip(g[3:], g[4:]) if b <= 1024)
    assert all(b - a == 32 for a, b in zip(g, g[1:]) if a >= 2048)
    assert vidur_token_grid(64) == [1, 2, 4] + list(range(8, 65, 8))


def test_attention_grid_follows_vidurs_validity_rules():
    rows = vidur_attention_grid(256, max_batch_size=32)
    assert len(rows) == len(set(rows))
    for c, kv, b, pre in rows:
        if pre:
            assert b == 1 and c > 0 and c + kv <= 256
        else:
            assert c == 0 and 0 < kv <= 256 and 1 <= b <= 32
    assert (64, 128, 1, True) in rows and (0, 32, 1, False) in rows and (0, 224, 32, False) in rows


def test_headers_are_vidurs():
    with open(VIDUR_MLP, newline="") as f:
        assert next(csv.reader(f)) == mlp_header()


@pytest.mark.slow  # sweeps SmolLM2 with vLLM first (~1 min)
@needs_vllm
def test_mlp_csv(exported):
    out, _, _ = exported
    header, rows = _read(out / "mlp.csv")
    assert header == mlp_header()
    assert [int(r["num_tokens"]) for r in rows] == vidur_token_grid(64)
    for r in rows:
        assert (int(r["n_embd"]), int(r["n_head"]), int(r["n_kv_head"])) == (576, 9, 3)
        assert (int(r["vocab_size"]), int(r["n_expanded_embd"])) == (49152, 1536)
        assert r["use_gated_mlp"] == "True" and r["num_tensor_parallel_workers"] == "1"
        for op in VIDUR_MLP_OPS:  # a prediction has no spread
            med = float(r[f"time_stats.{op}.median"])
            assert med >= 0 and float(r[f"time_stats.{op}.std"]) == 0
            assert all(float(r[f"time_stats.{op}.{s}"]) == med for s in ("min", "max", "mean"))
        assert float(r["time_stats.add.median"]) == 0  # fused into fused_add_rms_norm
    at8 = next(r for r in rows if r["num_tokens"] == "8")
    for op in ("attn_pre_proj", "mlp_up_proj", "input_layernorm", "mlp_act", "emb", "attn_rope"):
        assert 0 < float(at8[f"time_stats.{op}.median"]) < 1000, op


@pytest.mark.slow  # sweeps SmolLM2 with vLLM first (~1 min)
@needs_vllm
def test_attention_csv(exported):
    out, _, _ = exported
    header, rows = _read(out / "attention.csv")
    assert header == attention_header()
    pre = [r for r in rows if r["is_prefill"] == "True"]
    dec = [r for r in rows if r["is_prefill"] == "False"]
    assert pre and dec and len(pre) + len(dec) == len(rows)
    for r in rows:
        assert (int(r["n_embd"]), int(r["n_q_head"]), int(r["n_kv_head"])) == (576, 9, 3)
        assert (r["block_size"], r["max_model_len"], r["num_tensor_parallel_workers"]) == ("16", "256", "1")
        assert r["attention_backend"].startswith("AttentionBackend.")
        for op in ("attn_input_reshape", "attn_output_reshape"):
            assert float(r[f"time_stats.{op}.median"]) == 0
        for op in VIDUR_ATTENTION_OPS:
            assert float(r[f"time_stats.{op}.std"]) == 0
    for r in pre:
        c, kv = int(r["prefill_chunk_size"]), int(r["kv_cache_size"])
        assert r["batch_size"] == "1" and c > 0 and c + kv <= 256
        assert float(r["time_stats.attn_prefill.median"]) > 0
        assert float(r["time_stats.attn_decode.median"]) == 0
    for r in dec:
        assert r["prefill_chunk_size"] == "0" and int(r["kv_cache_size"]) > 0
        assert 0 < float(r["time_stats.attn_decode.median"]) < 1000
        assert float(r["time_stats.attn_prefill.median"]) == 0
    small = next(r for r in dec if r["batch_size"] == "1" and r["kv_cache_size"] == "32")
    assert float(small["time_stats.attn_kv_cache_save.median"]) > 0


@pytest.mark.slow  # sweeps SmolLM2 with vLLM first (~1 min)
@needs_vllm
def test_cli_reports_mapping_and_zero_ops(exported):
    _, text, _ = exported
    assert "wrote " in text and "mlp.csv" in text and "attention.csv" in text
    assert "add: fused into fused_add_rms_norm, written as 0" in text
    assert "attn_input_reshape: a view in vLLM" in text
    assert "attn_pre_proj: linear-" in text and "lm_head" in text  # mapped, and the LM head left out


@pytest.mark.parametrize("extra", [[], ["--max-tokens", "0"]])
def test_bad_input_exits_2_with_one_line(extra, tmp_path, capsys):
    db = tmp_path / "missing.db" if not extra else None
    if extra:  # an existing (empty) DB, bad limit
        from dooly.db import Store
        db = tmp_path / "e.db"
        Store.open(str(db)).close()
    rc = main(["export", "vidur", SMOL, "--db", str(db), "--out", str(tmp_path / "o")] + extra)
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dooly: error:")
    assert not (tmp_path / "o" / "mlp.csv").exists()
