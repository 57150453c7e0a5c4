"""Attention units timed three ways for the four models' attention configs: every KV block
cold (the sweep's rule until now), the step's new tokens in blocks that stay put (hot, the
new rule), and every block warm."""
import os, sys, json, itertools
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))

def old_cold(r, seqs):
    import torch
    from vllm.utils.torch_utils import _encode_layer_name
    seqs2, T, meta, sm, q, k, v, out = r._batch(seqs)
    _, attend = r._ops(_encode_layer_name(r.layer_name), q, k, v, out)
    n = r._copies(seqs)
    metas = [(meta, sm)] if n == 1 else [r._batch(seqs, next(r._variants))[2:4] for _ in range(n)]
    nxt = itertools.cycle(metas).__next__
    def attention():
        m, s = nxt()
        with torch.inference_mode(), r._ctx(T, m, s):
            attend()
        return out
    return attention

def main():
    import torch
    torch.set_num_threads(2)
    from dooly.engines import attention_runner
    from dooly.profile.timing import timer_for
    timer = timer_for("cpu")
    cfgs = {"smollm2": (9, 3, 64), "qwen0.5b": (14, 2, 64), "qwen3": (16, 8, 128), "llama1b": (32, 8, 64)}
    batches = {"p512": [(512, 0)], "p2x256": [(256, 0), (256, 0)], "p128": [(128, 0)],
               "mixed": [(1, 256)] * 4 + [(256, 768)], "d8@256": [(1, 256)] * 8, "d1@128": [(1, 128)]}
    out = {}
    for rep in range(2):
        for name, (h, kv, d) in cfgs.items():
            rc = attention_runner("vllm", num_heads=h, num_kv_heads=kv, head_size=d, sliding_window=0,
                                  dtype="bfloat16", block_size=128, max_context=2048, max_batch=32, cold_kv=True)
            rw = attention_runner("vllm", num_heads=h, num_kv_heads=kv, head_size=d, sliding_window=0,
                                  dtype="bfloat16", block_size=128, max_context=2048, max_batch=32, cold_kv=False)
            for bn, seqs in batches.items():
                for kind, fn in (("old", old_cold(rc, seqs)), ("new", rc.prepare_parts(seqs)["attention"]),
                                 ("warm", rw.prepare_parts(seqs)["attention"])):
                    out.setdefault(f"{name}.{bn}", {}).setdefault(kind, []).append(timer(fn).median_ms)
            del rc, rw
    for k in out:
        o = out[k]
        med = {kk: sorted(v)[len(v) // 2] if len(v) % 2 else sum(v) / len(v) for kk, v in o.items()}
        print(f"{k:18s} old {med['old']:8.3f}  new {med['new']:8.3f} ({med['new']/med['old']:.3f})  warm {med['warm']:8.3f} ({med['warm']/med['old']:.3f})")
    json.dump(out, open(sys.argv[1] if len(sys.argv) > 1 else "coldkv.raw.json", "w"))

if __name__ == "__main__":
    main()
