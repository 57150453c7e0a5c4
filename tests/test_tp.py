"""Tensor parallelism: one rank's shards from a one-process fake group, collectives as
units, TP kept out of compute units' keys, collectives timed across real processes, and
what predict / simulate / export read from a TP inventory."""
import csv
import json

import pytest

from conftest import config, needs_vllm
from dooly.cli import main
from dooly.env import Environment
from dooly.graph.units import inventory_key
from dooly.symbolic.labels import DimLabel, Label
from dooly.unit import TensorSig, Unit

LLAMA = config("meta-llama__Llama-3.1-8B")
SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")   # 9 heads: no TP=2 in vLLM


def _inventory(path: str, tp: int):
    """(inventory, embedding table shape in the graph): analyze_config without the
    perturbed capture, keeping the capture's graph to read the embedding's weight."""
    from dooly.config import load_config
    from dooly.engines import capture
    from dooly.graph.label_pass import label_pass
    from dooly.graph.normalize import normalize_pass
    from dooly.graph.regions import RegionRegistry, region_pass
    from dooly.graph.units import build_inventory
    cap, sym_map, extra = capture(load_config(path), "vllm", tp)
    gm = label_pass(normalize_pass(cap.gm), sym_map)
    table = next(tuple(n.args[1].meta["example_value"].shape) for n in gm.graph.nodes
                 if n.meta["dooly"]["op"] == "embedding")
    return build_inventory(cap, sym_map, RegionRegistry(), extra), table


def _shapes(inv, op: str) -> dict:
    return {tuple(tuple(t.shape()) for t in e.unit.inputs[:2]): e for e in inv.entries.values()
            if e.unit.op == op}


@pytest.fixture(scope="module")
def llama_tp2():
    return _inventory(LLAMA, 2)


@needs_vllm
def test_llama_tp2_builds_rank0_shards(llama_tp2):
    inv, table = llama_tp2
    assert inv.tp == 2 and inv.key == inventory_key(inv.config_hash, 2) != inv.config_hash
    gemms = {k: e.count for k, e in _shapes(inv, "linear").items()}
    assert gemms[(("T", 4096), (3072, 4096))] == 32      # QKV: (32 + 2*8) * 128 / 2
    assert gemms[(("T", 2048), (4096, 2048))] == 32      # o_proj, row-parallel
    assert gemms[(("T", 4096), (14336, 4096))] == 32     # gate_up: 2 * 14336 / 2
    assert gemms[(("T", 7168), (4096, 7168))] == 32      # down, row-parallel
    assert gemms[(("B", 4096), (64128, 4096))] == 1      # vocab-parallel LM head
    assert table == (64128, 4096)                        # vocab-parallel embedding shard
    (attn,) = [e.unit for e in inv.entries.values() if e.unit.op == "vllm.unified_attention_with_output"]
    assert (attn.attr["num_heads"], attn.attr["num_kv_heads"], attn.attr["head_size"]) == (16, 4, 128)
    assert attn.inputs[0].shape() == ["T", 16, 128] and attn.inputs[1].shape() == ["T", 4, 128]


@needs_vllm
def test_llama_tp2_collectives_are_units_with_counts(llama_tp2):
    inv, _ = llama_tp2
    (ar,) = _shapes(inv, "vllm.all_reduce").values()
    # after the vocab-parallel embedding, then o_proj and down_proj in each of 32 layers
    assert ar.count == 1 + 2 * 32
    assert ar.unit.inputs[0].shape() == ["T", 4096] and ar.unit.driver == "tokens"
    assert ar.unit.attr["group_size"] == 2 and ar.unit.attr["communicator"].endswith("Communicator")
    (ag,) = _shapes(inv, "vllm.all_gather").values()
    assert ag.count == 1 and ag.unit.driver == "seqs" and ag.unit.attr["dim"] == -1
    assert ag.unit.inputs[0].shape() == ["B", 64128] and ag.unit.outputs[0].shape() == ["B", 128256]
    (sampler,) = _shapes(inv, "sampler").values()
    assert sampler.unit.inputs[0].shape() == ["B", 128256]   # samples the gathered vocabulary


@needs_vllm
def test_tp2_shard_is_the_tp1_unit_of_a_model_with_those_dims(llama_tp2, tmp_path):
    inv, _ = llama_tp2
    raw = json.loads(open(LLAMA).read())
    raw.update(num_attention_heads=16, num_key_value_heads=4, intermediate_size=7168,
               head_dim=128, _name_or_path="half-llama")
    half = tmp_path / "half-llama.json"
    half.write_text(json.dumps(raw))
    tp1, _ = _inventory(str(half), 1)
    assert tp1.tp == 1 and tp1.key == tp1.config_hash
    shared = set(inv.entries) & set(tp1.entries)
    ops = sorted(inv.entries[k].unit.op for k in shared)
    assert ops.count("linear") == 4                       # QKV, o_proj, gate_up, down
    assert "vllm.unified_attention_with_output" in ops and "vllm.unified_kv_cache_update" in ops
    assert not any(o.startswith("vllm.all_") for o in ops)  # TP=1 runs no collective


@needs_vllm
@pytest.mark.slow
def test_llama_tp8_shards():
    inv, table = _inventory(LLAMA, 8)
    gemms = {k: e.count for k, e in _shapes(inv, "linear").items()}
    assert gemms[(("T", 4096), (768, 4096))] == 32       # (32/8 + 2*8/8) * 128
    assert gemms[(("T", 512), (4096, 512))] == 32
    assert gemms[(("T", 4096), (3584, 4096))] == 32
    assert gemms[(("T", 1792), (4096, 1792))] == 32
    assert gemms[(("B", 4096), (16032, 4096))] == 1
    assert table == (16032, 4096)
    (attn,) = [e.unit for e in inv.entries.values() if e.unit.op == "vllm.unified_attention_with_output"]
    assert (attn.attr["num_heads"], attn.attr["num_kv_heads"]) == (4, 1)
    (ar,) = _shapes(inv, "vllm.all_reduce").values()
    assert ar.count == 65 and ar.unit.attr["group_size"] == 8


@pytest.mark.parametrize("flags, names", [
    (["analyze", SMOL, "--engine", "vllm", "--tp", "2"], ("--tp", "9 attention heads")),
    (["analyze", LLAMA, "--engine", "transformers", "--tp", "2"], ("--tp", "transformers")),
    (["analyze", LLAMA, "--tp", "0"], ("--tp",)),
    (["simulate", LLAMA, "--tp", "3", "--step-model", "linear:1,0,0"], ("--tp", "32 attention heads")),
])
def test_bad_tp_is_one_line_exit_2(flags, names, capsys):
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for name in names:
        assert name in err


def _attention(kv: int, n: int = 32) -> tuple[dict, dict]:
    sig = TensorSig((DimLabel("T", Label.REQUEST), DimLabel(kv, Label.CONFIG), DimLabel(128, Label.CONFIG)),
                    "bfloat16")
    u = Unit(op="vllm.unified_attention_with_output", inputs=(sig, sig, sig), outputs=(),
             attrs=(("head_size", 128), ("num_kv_heads", kv)), stateful=True)
    return {u.key: u}, {u.key: n}


def test_kv_cache_of_n_devices():
    from dooly.parallel import kv_bytes_per_token, kv_cache_blocks
    one, two = _attention(8), _attention(4)
    assert kv_bytes_per_token(*one) == 32 * 2 * 8 * 128 * 2
    assert kv_cache_blocks(*two, 1.0, 16) == 2 * kv_cache_blocks(*one, 1.0, 16)


def _collective(op: str, width: int, size: int = 2) -> Unit:
    sig = TensorSig((DimLabel("T", Label.REQUEST), DimLabel(width, Label.CONFIG)), "bfloat16")
    return Unit(op=op, inputs=(sig,), outputs=(sig,),
                attrs=(("communicator", "test"), ("group_size", size)))


BASE = Environment(device_name="test-host", device_kind="cpu", engine="vllm", engine_version="0",
                   backend="CPU_ATTN", dtype="bfloat16", threads=1)


def test_collective_environment_records_topology():
    from dooly.parallel import collective_environment, is_collective_env, topology
    env = collective_environment(BASE, 4, "torch.distributed/gloo", hosts=2)
    assert env.device_name == "test-host [tp4: 2 hosts x 2 ranks]" and env.backend == "torch.distributed/gloo"
    assert is_collective_env(env) and not is_collective_env(BASE) and env.key != BASE.key
    with pytest.raises(ValueError):
        topology(3, 2)


@pytest.mark.slow   # two fresh interpreters importing torch: ~30 s on a busy 2-core host
def test_gloo_collectives_across_two_processes(tmp_path):
    """Two real processes, plain torch.distributed (gloo), tiny sizes: every point is
    stored ok under the group's collective environment, which predict then finds."""
    from dooly.db import Store
    from dooly.parallel import collective_env_for
    from dooly.profile.collective_sweep import sweep_collectives
    from dooly.profile.grid import GridLimits
    from dooly.profile.sweep import SweepSummary
    units = {u.key: u for u in (_collective("vllm.all_reduce", 64), _collective("vllm.all_gather", 32))}
    summary = SweepSummary(BASE.key)
    with Store.open(str(tmp_path / "c.db")) as store:
        store.add_environment(BASE)
        for u in units.values():
            store.add_unit(u)
        sweep_collectives(store, units, BASE, GridLimits(max_tokens=4, max_batch=2, max_context=16),
                          summary, comm="torch")
        cenv = collective_env_for(store, BASE, units)
        rows = store.measurements(env_key=cenv.key)
    assert cenv.device_name == "test-host [tp2: 1 host x 2 ranks]"
    assert cenv.backend == "torch.distributed/gloo" and summary.collective_envs == {2: cenv.key}
    assert sorted(summary.units_measured) == sorted(units) and not summary.units_failed
    assert {json.dumps(m.point) for m in rows} >= {'{"T": 1}', '{"T": 4}'}
    assert all(m.status == "ok" and m.median_ms > 0 for m in rows)
    # a point that failed is measured again under --retry-failed, in the group's environment
    from dataclasses import replace
    again = SweepSummary(BASE.key)
    with Store.open(str(tmp_path / "c.db")) as store:
        store.add_measurement(replace(rows[0], status="failed", reason="gloo timed out (simulated)"))
        sweep_collectives(store, units, BASE, GridLimits(max_tokens=4, max_batch=2, max_context=16),
                          again, comm="torch", retry_failed=True)
        assert all(m.status == "ok" for m in store.measurements(env_key=cenv.key, status=None))
    assert again.points_retried == 1


def test_group_samples_take_the_slowest_rank_and_skip_preempted_ones():
    from dooly.profile.collectives import measurements, merge_ranks
    a = [[[[1.0, 0], [5.0, 0], [1.2, 0], [1.1, 0]]]]   # rank 0: [round][item][sample] = [ms, preempted]
    b = [[[[2.0, 0], [1.0, 1], [1.3, 0], [1.0, 0]]]]
    label, merged, err = merge_ranks(2, {0: ("L", a, None), 1: ("L", b, None)})
    assert err is None and label == "L"
    assert merged[0][0] == [[2.0, 0], [5.0, 1], [1.3, 0], [1.1, 0]]
    unit = _collective("vllm.all_reduce", 8)
    (m,) = measurements([(unit, {"T": 1})], BASE, "L", merged, None, "L")
    assert m.status == "ok" and m.median_ms == pytest.approx(1.3) and m.outliers >= 1
    (bad,) = measurements([(unit, {"T": 1})], BASE, "other", merged, None, "L")
    assert bad.status == "failed" and "communicator other" in bad.reason
    assert merge_ranks(2, {0: ("L", a, None)})[2] == "1 of 2 ranks never answered"


def test_vidur_network_csv(tmp_path):
    from dooly.interop.vidur_network import network_header, write_network

    class Model:
        def predict_one(self, point):
            return 0.01 + 0.001 * point["T"]

    class Pred:
        units = {u.key: u for u in (_collective("vllm.all_reduce", 64), _collective("vllm.all_reduce", 32))}
        counts = dict.fromkeys(units, 1)
        models = dict.fromkeys(units, Model())

    path, n, key, clamped = write_network(Pred(), tmp_path, [1, 2, 8], 64, 2)
    assert Pred.units[key].inputs[0].shape() == ["T", 64] and n == 3 and clamped == 0
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == network_header() and rows[0][0] == ""
    row = dict(zip(rows[0], rows[3]))
    assert row["size"] == str(8 * 64 * 2) and row["num_workers"] == row["devices_per_node"] == "2"
    assert row["collective"] == "all_reduce" and float(row["time_stats.all_reduce.median"]) == pytest.approx(0.018)


requires_two_gpus = pytest.mark.skipif(
    not __import__("torch").cuda.is_available() or __import__("torch").cuda.device_count() < 2,
    reason="needs 2 CUDA devices")


@requires_two_gpus
@pytest.mark.parametrize("comm", ["torch", "engine"])
def test_cuda_collectives_nccl_and_custom_allreduce(comm):
    """NCCL (torch) and vLLM's CudaCommunicator (custom all-reduce / PyNCCL) across 2 GPUs."""
    from dooly.profile.collectives import run_group
    items = [{"op": "vllm.all_reduce", "shape": [t, 4096], "dtype": "bfloat16", "dim": -1} for t in (1, 64)]
    items.append({"op": "vllm.all_gather", "shape": [4, 1024], "dtype": "bfloat16", "dim": -1})
    label, samples, err = run_group(2, {"engine": "vllm", "device": "cuda", "threads": 1, "comm": comm,
                                        "items": items})
    assert err is None, err
    assert label.startswith("torch.distributed/nccl" if comm == "torch" else "CudaCommunicator")
    assert all(ms > 0 for rd in samples for it in rd for ms, _ in it)


@needs_vllm
@pytest.mark.slow
def test_sweep_predict_simulate_export_at_tp2(tmp_path, capsys):
    """A 2-layer model derived from a fixture, end to end at --tp 2 on this host: shards in
    the ranks' environment, collectives across 2 processes with vLLM's own communicator,
    then predict, simulate with 2 devices' KV cache, and Vidur's CSVs with all_reduce.csv."""
    from dooly.predict import Predictor
    raw = json.loads(open(config("meta-llama__Llama-3.2-1B-Instruct")).read())
    raw.update(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
               head_dim=32, num_hidden_layers=2, vocab_size=1024, tie_word_embeddings=False,
               bos_token_id=1, eos_token_id=2, _name_or_path="tiny-tp")
    cfg, db = tmp_path / "tiny.json", str(tmp_path / "t.db")
    cfg.write_text(json.dumps(raw))
    assert main(["sweep", str(cfg), "--db", db, "--tp", "2", "--max-tokens", "16", "--max-batch", "4",
                 "--max-context", "64", "--no-progress", "--no-recheck"]) == 0
    assert "collectives of the 2-rank group" in capsys.readouterr().out
    p = Predictor.load(str(cfg), db, tp=2)
    assert p.tp == 2 and p.env.threads >= 1 and "[tp2: 1 host x 2 ranks]" in p.collective_env.device_name
    r = p.predict([(8, 0), (1, 32)])
    ar = [k for k in r.breakdown if p.units[k].op == "vllm.all_reduce"]
    assert len(ar) == 1 and p.counts[ar[0]] == 5 and r.breakdown[ar[0]] > 0
    assert main(["simulate", str(cfg), "--db", db, "--tp", "2", "--kv-cache-gib", "0.001", "--rate", "5",
                 "--num-requests", "10", "--prompt-len", "16", "--output-len", "4"]) == 0
    assert "KV cache: 262 blocks of 16 tokens" in capsys.readouterr().out  # 2 layers x 2 x 1 x 32 x 2 B
    out = tmp_path / "vidur"
    assert main(["export", "vidur", str(cfg), "--db", db, "--out", str(out), "--tp", "2",
                 "--max-tokens", "64", "--max-model-len", "128"]) == 0
    with open(out / "mlp.csv", newline="") as f:
        assert {row["num_tensor_parallel_workers"] for row in csv.DictReader(f)} == {"2"}
    with open(out / "all_reduce.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["num_workers"] for r in rows} == {"2"} and rows[0]["size"] == str(1 * 128 * 2)


def test_a_rank_gets_a_fraction_of_a_gib_of_kv_cache_and_no_legacy_override(monkeypatch):
    import subprocess
    from pathlib import Path

    from dooly.engines import vllm_tp_probe
    seen = {}

    def fake_run(cmd, env, **kw):
        seen["env"], seen["job"] = env, json.loads(Path(cmd[-2]).read_text())
        Path(cmd[-1]).write_text("{}")
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(vllm_tp_probe.subprocess, "run", fake_run)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    vllm_tp_probe.run_child({"mode": "serve", "tp": 2, "kv_gib": 0.0125})
    # VLLM_CPU_KVCACHE_SPACE takes whole GiB and overrides kv_cache_memory_bytes: dropped
    assert "VLLM_CPU_KVCACHE_SPACE" not in seen["env"] and seen["job"]["kv_gib"] == 0.0125
    assert vllm_tp_probe.kv_cache_bytes(0.0125) == 13421772
    with pytest.raises(ValueError, match="kv_gib"):
        vllm_tp_probe.kv_cache_bytes(0)
