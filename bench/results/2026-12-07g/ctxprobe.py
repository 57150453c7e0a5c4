"""Ad hoc probe (not part of Dooly): one attention layer of VllmAttentionRunner timed with
its forward context entered on every call, as the sweep times it, against the same two ops
run inside one context, as the engine runs a layer. Run from the repository root:
`python bench/results/2026-12-07g/ctxprobe.py 16,8,128` (query heads, KV heads, head size)."""
import os, time, statistics, sys
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
import torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from dooly.engines.vllm_attention import VllmAttentionRunner
from vllm.utils.torch_utils import _encode_layer_name

def med(fn, n=60):
    for _ in range(5): fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e6

heads = [int(x) for x in sys.argv[1].split(',')]
r = VllmAttentionRunner(heads[0], heads[1], heads[2], max_context=2048, max_batch=64)
for seqs in ([(1, 128)], [(1, 256)] * 8, [(1, 64)] * 32, [(512, 0)], [(256, 0)] * 2):
    parts = r.prepare_parts(seqs)
    b = parts["step"].batch
    write, attend = r._ops(_encode_layer_name(r.layer_name), b["q"], b["k"], b["v"], b["output"])
    T = sum(q for q, _ in b["seqs"])
    def inner():
        attend(write())
    def whole():
        with torch.inference_mode(), r._ctx(T, b["metadata"], b["slot_mapping"]):
            attend(write())
    def ctx_only():
        with torch.inference_mode(), r._ctx(T, b["metadata"], b["slot_mapping"]):
            pass
    with torch.inference_mode(), r._ctx(T, b["metadata"], b["slot_mapping"]):
        t_in = med(inner)
    t_whole = med(whole); t_ctx = med(ctx_only)
    print(f"{str(seqs[:1])+'x'+str(len(seqs)):22s} step-in-ctx {t_in:8.1f}us  step+ctx {t_whole:8.1f}us  ctx-only {t_ctx:6.1f}us  ratio {t_in/t_whole:.3f}")
