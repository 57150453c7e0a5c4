"""Time vLLM's multi-head latent attention (MLA: DeepSeek-V2/V3, Kimi, GLM-4.x-Flash) and
its KV-cache write for any batch, through vLLM's own MLA layer and backend.

MLA caches one latent vector per token and layer (`kv_lora_rank` + `qk_rope_head_dim`
values, one "KV head"), and its layer owns the up-projection `kv_b_proj` that turns the
latent into per-head keys and values: prefill chunks run it (then attention over the
expanded heads), decodes absorb it into the query and read the latent cache directly
(vllm/model_executor/layers/attention/mla_attention.py). Both paths are inside the two
custom ops the model's graph calls, `unified_mla_kv_cache_update` and
`unified_mla_attention_with_output`, so the unit is those two calls, as for standard
attention.

`VllmMLARunner` builds what `DeepseekV2MLAAttention` builds for one layer: `kv_b_proj` (a
ColumnParallelLinear, random weights), the `MLAAttention` layer under the config of a
synthetic one-layer DeepSeek-V2 (vLLM's backend selector picks the device's MLA backend:
AMX_MLA or CPU_MLA on a CPU build, FlashMLA/FlashInfer-MLA/Triton-MLA on GPUs), then
`process_weights_after_loading` as the model loader runs it (the backend packs W_UK and
W_UV from kv_b_proj). The KV cache, metadata and cold-KV rotation are the standard
runner's (`VllmAttentionRunner`): the layer's spec is an MLA spec, everything else is
vLLM's own code path."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from dooly.engines.vllm_attention import LAYER_NAME, VllmAttentionRunner
from dooly.engines.vllm_compat import model_class_inspected_here


class VllmMLARunner(VllmAttentionRunner):
    """One real vLLM MLA layer with a bound latent KV cache; `prepare(seqs)` gives a
    callable running one step (KV write, then attention) for that batch."""

    def __init__(self, num_heads: int, kv_lora_rank: int, qk_nope_head_dim: int,
                 qk_rope_head_dim: int, v_head_dim: int, dtype: str = "bfloat16",
                 block_size: int | None = None, max_context: int = 4096, max_batch: int = 256,
                 seed: int = 0, cold_kv: bool = False):
        for name, v in (("num_heads", num_heads), ("kv_lora_rank", kv_lora_rank),
                        ("qk_nope_head_dim", qk_nope_head_dim), ("qk_rope_head_dim", qk_rope_head_dim),
                        ("v_head_dim", v_head_dim)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.kv_lora_rank, self.qk_nope, self.qk_rope = int(kv_lora_rank), int(qk_nope_head_dim), int(qk_rope_head_dim)
        self.v_head_dim = int(v_head_dim)
        # the cache's one "head": latent and rope part of a token
        super().__init__(num_heads, 1, self.kv_lora_rank + self.qk_rope, dtype=dtype,
                         block_size=block_size, max_context=max_context, max_batch=max_batch,
                         seed=seed, cold_kv=cold_kv)

    def _engine_config(self, dtype: str, block_size: int | None, kv_cache_dtype: str):
        """vLLM's config for a one-layer dense DeepSeek-V2 with this layer's MLA shapes."""
        from vllm.engine.arg_utils import EngineArgs
        heads = self.num_heads
        hidden = heads * self.v_head_dim
        hf = {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
              "hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": 1,
              "num_attention_heads": heads, "num_key_value_heads": heads,
              "q_lora_rank": None, "kv_lora_rank": self.kv_lora_rank,
              "qk_nope_head_dim": self.qk_nope, "qk_rope_head_dim": self.qk_rope,
              "v_head_dim": self.v_head_dim, "first_k_dense_replace": 1,
              "vocab_size": 256, "max_position_embeddings": self.max_context, "rms_norm_eps": 1e-6,
              "rope_theta": 10000.0, "torch_dtype": dtype, "tie_word_embeddings": False}
        kw = {"block_size": block_size} if block_size else {}
        with model_class_inspected_here(), tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "config.json").write_text(json.dumps(hf))
            return EngineArgs(model=tmp, load_format="dummy", skip_tokenizer_init=True,
                              max_model_len=self.max_context, dtype=dtype,
                              kv_cache_dtype=kv_cache_dtype, enforce_eager=True,
                              **kw).create_engine_config()

    def _make_layer(self, vc):
        """kv_b_proj and the MLAAttention layer as DeepseekV2MLAAttention builds them,
        their weights processed as after loading; the layer's KV spec and layout."""
        from vllm.model_executor.layers.attention.mla_attention import MLAAttention
        from vllm.model_executor.layers.linear import ColumnParallelLinear
        from vllm.utils.torch_utils import set_default_torch_dtype
        from vllm.v1.worker.utils import customize_attention_spec
        H, D = self.num_heads, self.qk_nope + self.qk_rope
        with set_default_torch_dtype(self.dtype):
            kv_b_proj = ColumnParallelLinear(self.kv_lora_rank, H * (self.qk_nope + self.v_head_dim),
                                             bias=False, quant_config=None, prefix="model.layers.0.self_attn.kv_b_proj")
            with torch.no_grad():
                kv_b_proj.weight.normal_(0.0, self.kv_lora_rank ** -0.5, generator=self._gen)
            # [H * (nope + v), kv_lora_rank]; a backend may repack it and drop the original
            self.kv_b_weight = kv_b_proj.weight.detach().clone()
            self.layer = MLAAttention(num_heads=H, scale=D ** -0.5, qk_nope_head_dim=self.qk_nope,
                                      qk_rope_head_dim=self.qk_rope, v_head_dim=self.v_head_dim,
                                      q_lora_rank=None, kv_lora_rank=self.kv_lora_rank,
                                      kv_b_proj=kv_b_proj, cache_config=vc.cache_config,
                                      quant_config=None, prefix=LAYER_NAME)
            # as vLLM's loader: every linear's quant method first (on CPU it gives kv_b_proj
            # the GEMM an MLA backend without its own up-projection calls), attention after
            kv_b_proj.quant_method.process_weights_after_loading(kv_b_proj)
            self.layer.process_weights_after_loading(self.dtype)
        self.layer_name = self.layer.layer_name
        backend = self.layer.get_attn_backend()
        self.spec = customize_attention_spec(backend, self.layer.get_kv_cache_spec(vc))
        self._record_layout(vc)
        return backend

    def _inputs(self, T: int, g: torch.Generator) -> tuple:
        """The op's tensors: q [T, H, nope+rope], the normed latent [T, kv_lora_rank],
        the rope key [T, 1, rope]; the output [T, H * v_head_dim]."""
        H = self.num_heads
        q = torch.randn(T, H, self.qk_nope + self.qk_rope, generator=g).to(self.dtype)
        kv_c = torch.randn(T, self.kv_lora_rank, generator=g).to(self.dtype)
        k_pe = torch.randn(T, 1, self.qk_rope, generator=g).to(self.dtype)
        out = torch.empty(T, H * self.v_head_dim, dtype=self.dtype)
        return q, kv_c, k_pe, out

    def _ops(self, name: str, q, k, v, out):
        """(kv_update, attention, both) as MLAAttention.forward calls them; k is the
        latent, v the rope key."""
        ops, layer = torch.ops.vllm, self.layer

        def kv_update():
            return ops.unified_mla_kv_cache_update(k, v, name, layer.kv_cache_dtype, layer._k_scale)

        def attention(dep=None):
            ops.unified_mla_attention_with_output(q, k, v, out, name, kv_cache_dummy_dep=dep)

        return kv_update, attention
