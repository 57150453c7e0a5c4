"""Time vLLM's real attention and KV-cache write for any batch, through vLLM's own setup.

`VllmAttentionRunner` builds, without an engine, what vLLM's CPU model runner builds for
one attention layer:

* the `VllmConfig` from a tiny synthetic Llama `config.json` (`EngineArgs(...,
  load_format="dummy").create_engine_config()`), in one process (`_init_distributed`);
* one real `Attention` layer (vllm/model_executor/layers/attention/attention.py), made
  the way `LlamaAttention` makes it, under `set_current_vllm_config`: vLLM's backend
  selector picks the backend (CPU_ATTN on a CPU build) and the layer registers itself
  in `compilation_config.static_forward_context`;
* its KV-cache spec as `GPUModelRunner.get_kv_cache_spec` makes it
  (`layer.get_kv_cache_spec` + `customize_attention_spec`), a `KVCacheConfig` from
  `get_kv_cache_configs` (vllm/v1/core/kv_cache_utils.py) for a memory budget, and the
  allocation as `GPUModelRunner.initialize_kv_cache` does it: `AttentionGroup`,
  `prepare_kernel_block_sizes`, `AttentionGroup.create_metadata_builders`,
  `allocate_kv_cache`, `bind_kv_cache` + `map_kv_caches_to_kernel_blocks`
  (vllm/v1/worker/utils.py);
* per batch, a `CommonAttentionMetadata` (vllm/v1/attention/backend.py) as
  `GPUModelRunner._prepare_inputs` fills it (query_start_loc, seq_lens = context +
  query, block table, slot mapping, positions) and the backend builder's `build`.

A step runs `torch.ops.vllm.unified_kv_cache_update` then
`torch.ops.vllm.unified_attention_with_output` inside `set_forward_context` with the
metadata and the per-layer slot mapping, exactly the two calls `Attention.forward`
makes; they find the layer, its bound KV cache and the metadata in the forward context.

Batch order: the runner reorders a batch only when its metadata builders ask for it
(`builder.reorder_batch_threshold`, `GPUModelRunner._may_reorder_batch` ->
`reorder_batch_to_split_decodes_and_prefills`: requests with query_len <= threshold
first). CPU_ATTN's builder leaves the threshold at None (its kernel takes mixed batches
in any order), so on CPU the batch runs in the given order. For a backend with a
threshold, `prepare` applies vLLM's rule itself: decodes (query_len <= threshold)
first, then the rest, each group keeping its given order (see `order_batch`).
"""
from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Callable

import torch

from dooly.engines import amx_permission, set_vllm_environ
from dooly.engines.vllm_capture import _init_distributed
from dooly.engines.vllm_compat import model_class_inspected_here
from dooly.env import cold_span, copies_to_span

LAYER_NAME = "model.layers.0.self_attn.attn"
MAX_KV_BYTES = 2 << 30  # cap on the KV cache allocation
MAX_KV_COPIES = 128     # block sets per batch for cold-KV timing (metadata is built for each)


def order_batch(seqs: list[tuple[int, int]], threshold: int | None) -> list[tuple[int, int]]:
    """vLLM's runner order for a batch: unchanged when the backend sets no reorder
    threshold, else decodes (query_len <= threshold) first, then the others."""
    seqs = [(int(q), int(c)) for q, c in seqs]
    if threshold is None:
        return seqs
    return [s for s in seqs if s[0] <= threshold] + [s for s in seqs if s[0] > threshold]


class VllmAttentionRunner:
    """One real vLLM attention layer with a bound KV cache; `prepare(seqs)` gives a
    callable running one step for that batch.

    block_size None takes vLLM's own choice for the platform (128 on CPU: see
    vllm/platforms/cpu.py check_and_update_config). CPU_ATTN kernels take only
    multiples of 32 (`get_supported_kernel_block_sizes`), so vLLM itself rejects 16
    there (ValueError from `select_common_block_size`)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_size: int,
                 sliding_window: int = 0, dtype: str = "bfloat16", block_size: int | None = None,
                 max_context: int = 4096, max_batch: int = 256, kv_cache_dtype: str = "auto",
                 seed: int = 0, cold_kv: bool = False):
        set_vllm_environ()
        amx_permission()
        from vllm.config import set_current_vllm_config

        self.num_heads, self.num_kv_heads, self.head_size = num_heads, num_kv_heads, head_size
        self.sliding_window = int(sliding_window or 0)
        self.max_context, self.max_batch = int(max_context), int(max_batch)
        self._gen = torch.Generator().manual_seed(seed)
        self._seed = seed
        self.cold_kv = cold_kv
        self._variants = itertools.count(1)   # block draws of cold timings (0: the warm one)
        vc = self._engine_config(dtype, block_size, kv_cache_dtype)
        self.vllm_config = vc
        self.dtype = vc.model_config.dtype
        self.device = torch.device("cpu")
        with set_current_vllm_config(vc):
            _init_distributed()
            backend = self._make_layer(vc)
            group = self._bind_kv_cache(vc, backend)
        self.kv_cache = self.layer.kv_cache
        # Block ids the block table addresses (kernel blocks when vLLM splits them).
        self.block_size = group.kernel_block_size or self.spec.block_size
        self.num_blocks = int(self.kv_cache.shape[0])
        self._fill_kv_cache()

    def _engine_config(self, dtype: str, block_size: int | None, kv_cache_dtype: str):
        """vLLM's config for a one-layer Llama with this layer's heads (no weights)."""
        from vllm.engine.arg_utils import EngineArgs
        heads, size = self.num_heads, self.head_size
        hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": heads * size, "head_dim": size,
              "num_attention_heads": heads, "num_key_value_heads": self.num_kv_heads,
              "intermediate_size": 4 * heads * size, "num_hidden_layers": 1,
              "vocab_size": 256, "max_position_embeddings": self.max_context,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": dtype,
              "tie_word_embeddings": False}
        if self.sliding_window > 0:
            hf["sliding_window"] = self.sliding_window
        kw = {"block_size": block_size} if block_size else {}
        with model_class_inspected_here(), tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "config.json").write_text(json.dumps(hf))
            return EngineArgs(model=tmp, load_format="dummy", skip_tokenizer_init=True,
                              hf_overrides={"num_hidden_layers": 1},
                              max_model_len=self.max_context, dtype=dtype,
                              kv_cache_dtype=kv_cache_dtype, enforce_eager=True,
                              **kw).create_engine_config()

    def _make_layer(self, vc):
        """The Attention layer as LlamaAttention builds it (per-layer window passed
        explicitly), its KV-cache spec, and the KV-cache layout resolved as
        EngineCore._initialize_kv_caches does it (worker.get_supported_kv_cache_layouts ->
        resolve_kv_cache_layout) and recorded as worker.set_kv_cache_layout records it.
        Returns the layer's backend."""
        from vllm.model_executor.layers.attention import Attention
        from vllm.utils.torch_utils import set_default_torch_dtype
        from vllm.v1.worker.utils import customize_attention_spec
        with set_default_torch_dtype(self.dtype):
            self.layer = Attention(self.num_heads, self.head_size, self.head_size ** -0.5,
                                   num_kv_heads=self.num_kv_heads, cache_config=vc.cache_config,
                                   quant_config=None,
                                   per_layer_sliding_window=self.sliding_window or None,
                                   prefix=LAYER_NAME)
        self.layer_name = self.layer.layer_name
        backend = self.layer.get_attn_backend()
        self.spec = customize_attention_spec(backend, self.layer.get_kv_cache_spec(vc))
        self._record_layout(vc)
        return backend

    def _record_layout(self, vc) -> None:
        from vllm.distributed.kv_transfer.kv_connector.utils import get_current_attn_backends
        from vllm.v1.attention.backends.utils import (get_supported_kv_cache_layouts,
                                                      record_kv_cache_layout,
                                                      resolve_kv_cache_layout)
        layouts = [lay.name for lay in get_supported_kv_cache_layouts(
            get_current_attn_backends(vc, [self.layer_name]))]
        layout = resolve_kv_cache_layout(vc, [layouts], [self.spec])
        record_kv_cache_layout(vc.cache_config, layout.name)

    def _kv_budget(self) -> int:
        """Bytes for max_batch sequences of max_context tokens, capped (at least one
        max_model_len request); with cold KV, room for twice the block sets a cold
        rotation spans, so that its random sets seldom share a block."""
        spec = self.spec
        per_seq = -(-self.max_context // spec.block_size) + 1
        want = max(self.max_batch * per_seq, per_seq) * spec.page_size_bytes
        mem = max(min(want, MAX_KV_BYTES), per_seq * spec.page_size_bytes)
        if self.cold_kv:
            mem = max(mem, min(2 * cold_span(self.device.type), MAX_KV_BYTES))
        return mem

    def _bind_kv_cache(self, vc, backend):
        """Allocate and bind the layer's KV cache as GPUModelRunner.initialize_kv_cache
        does; returns the attention group (its metadata builder is `self.builder`)."""
        from vllm.v1.core.kv_cache_utils import get_kv_cache_configs
        from vllm.v1.worker.utils import (AttentionGroup, allocate_kv_cache, bind_kv_cache,
                                          map_kv_caches_to_kernel_blocks,
                                          prepare_kernel_block_sizes)
        kv_cfg = get_kv_cache_configs(vc, [{self.layer_name: self.spec}], [self._kv_budget()])[0]
        self.kv_cache_config = kv_cfg
        group = AttentionGroup(backend, [self.layer_name], self.spec, 0)
        kernel_sizes = prepare_kernel_block_sizes(kv_cfg, [[group]])
        group.create_metadata_builders(vc, self.device, kernel_sizes[0])
        self.group = group
        self.builder = group.get_metadata_builder()
        kv_caches = allocate_kv_cache(kv_cfg, self.device,
                                      vc.cache_config.get_resolved_kv_cache_layout(),
                                      kernel_sizes)
        self._runner_kv_caches: list[torch.Tensor] = []
        bind_kv_cache(kv_caches, vc.compilation_config.static_forward_context,
                      self._runner_kv_caches, 1, kv_cache_groups=kv_cfg.kv_cache_groups,
                      layer_kv_caches=map_kv_caches_to_kernel_blocks(kv_caches, [group]))
        return group

    def _fill_kv_cache(self) -> None:
        """Random values, so attention reads non-trivial data; chunked, so the float32
        temporary stays small for a large cache."""
        with torch.no_grad():
            for lo in range(0, self.num_blocks, 64):
                part = self.kv_cache[lo:lo + 64]
                part.copy_(torch.randn(part.shape, generator=self._gen).to(part.dtype))

    @property
    def backend_name(self) -> str:
        return self.layer.get_attn_backend().get_name()

    @property
    def reorder_batch_threshold(self) -> int | None:
        return self.builder.reorder_batch_threshold

    # ------------------------------------------------------------------ batches
    def _batch(self, seqs, variant: int = 0):
        from vllm.v1.attention.backend import CommonAttentionMetadata

        seqs = order_batch(seqs, self.reorder_batch_threshold)
        if not seqs or any(q < 1 or c < 0 for q, c in seqs):
            raise ValueError(f"bad batch {seqs}: need query_len >= 1, context >= 0")
        bs = self.block_size
        q_lens = [q for q, _ in seqs]
        s_lens = [q + c for q, c in seqs]
        n_blk = [-(-s // bs) for s in s_lens]
        if sum(n_blk) > self.num_blocks - 1:
            raise ValueError(f"batch needs {sum(n_blk)} blocks, cache has {self.num_blocks}")
        # Distinct random block ids per sequence (block 0 is vLLM's null block).
        g = torch.Generator().manual_seed(self._seed + 1 + 7919 * variant)
        ids = (torch.randperm(self.num_blocks - 1, generator=g)[:sum(n_blk)] + 1).tolist()
        width = max(n_blk)
        block_table = torch.zeros(len(seqs), width, dtype=torch.int32)
        slots, positions = [], []
        at = 0
        for i, ((q, c), nb) in enumerate(zip(seqs, n_blk)):
            row = ids[at:at + nb]
            at += nb
            block_table[i, :nb] = torch.tensor(row, dtype=torch.int32)
            pos = torch.arange(c, c + q)
            positions.append(pos)
            slots.append(torch.tensor(row, dtype=torch.int64)[pos // bs] * bs + pos % bs)
        T = sum(q_lens)
        qsl = torch.zeros(len(seqs) + 1, dtype=torch.int32)
        qsl[1:] = torch.cumsum(torch.tensor(q_lens, dtype=torch.int32), 0)
        seq_lens = torch.tensor(s_lens, dtype=torch.int32)
        slot_mapping = torch.cat(slots)
        cm = CommonAttentionMetadata(
            query_start_loc=qsl, query_start_loc_cpu=qsl.clone(), seq_lens=seq_lens,
            num_reqs=len(seqs), num_actual_tokens=T, max_query_len=max(q_lens),
            max_seq_len=max(s_lens), block_table_tensor=block_table,
            slot_mapping=slot_mapping, causal=True, positions=torch.cat(positions),
            seq_lens_cpu_upper_bound=seq_lens.clone(),
            is_prefilling=torch.tensor([c == 0 and q > 1 for q, c in seqs]))
        with self._config():
            meta = self.builder.build(common_prefix_len=0, common_attn_metadata=cm)
        return (seqs, T, meta, slot_mapping) + self._inputs(T, g)

    def _inputs(self, T: int, g: torch.Generator) -> tuple:
        """The op's tensors (q, k, v, out) for T tokens."""
        H, K, D = self.num_heads, self.num_kv_heads, self.head_size
        q = torch.randn(T, H, D, generator=g).to(self.dtype)
        k = torch.randn(T, K, D, generator=g).to(self.dtype)
        v = torch.randn(T, K, D, generator=g).to(self.dtype)
        out = torch.empty(T, H, D, dtype=self.dtype)
        return q, k, v, out

    def _ops(self, name: str, q, k, v, out):
        """(kv_update, attention(dep)): the two custom ops `Attention.forward` calls."""
        ops = torch.ops.vllm

        def kv_update():
            return ops.unified_kv_cache_update(k, v, name)

        def attention(dep=None):
            ops.unified_attention_with_output(q, k, v, out, name, kv_cache_dummy_dep=dep)

        return kv_update, attention

    def _config(self):
        from vllm.config import set_current_vllm_config
        return set_current_vllm_config(self.vllm_config)

    def _ctx(self, T, meta, slot_mapping):
        from vllm.forward_context import set_forward_context
        return set_forward_context({self.layer_name: meta}, self.vllm_config, num_tokens=T,
                                   slot_mapping={self.layer_name: slot_mapping})

    def prepare_parts(self, seqs: list[tuple[int, int]]) -> dict[str, Callable[[], None]]:
        """{"kv_update": fn, "attention": fn, "step": fn} for this batch; `step` is the
        two in order, as `Attention.forward` runs them. Each fn returns the output
        buffer (attention/step) or None (kv_update)."""
        from vllm.utils.torch_utils import _encode_layer_name

        seqs, T, meta, slot_mapping, q, k, v, out = self._batch(seqs)
        write, attend = self._ops(_encode_layer_name(self.layer_name), q, k, v, out)
        # cold KV: each call reads its own random blocks (the activations stay shared),
        # drawn afresh for every batch: blocks an earlier point's calls read may still be
        # in the cache
        n = self._copies(seqs)
        metas = [(meta, slot_mapping)] if n == 1 else [
            self._batch(seqs, next(self._variants))[2:4] for _ in range(n)]
        nxt = itertools.cycle(metas).__next__

        def kv_update():
            m, sm = nxt()
            with torch.inference_mode(), self._ctx(T, m, sm):
                write()

        def attention():
            m, sm = nxt()
            with torch.inference_mode(), self._ctx(T, m, sm):
                attend()
            return out

        def step():
            m, sm = nxt()
            with torch.inference_mode(), self._ctx(T, m, sm):
                attend(write())
            return out

        batch = {"seqs": seqs, "metadata": meta, "slot_mapping": slot_mapping,
                 "q": q, "k": k, "v": v, "output": out}  # seqs: the order actually run
        for fn in (kv_update, attention, step):
            fn.batch = batch
        return {"kv_update": kv_update, "attention": attention, "step": step}

    def _copies(self, seqs) -> int:
        """Block sets to rotate through so the KV a call reads spans the last-level
        caches `copies_to_span` asks for over a rotation (1 when the KV is warm by choice)."""
        if not self.cold_kv:
            return 1
        per_token = self.kv_cache[0].numel() * self.kv_cache.element_size() // self.block_size
        return copies_to_span(sum(q + c for q, c in seqs) * per_token, self.device.type, MAX_KV_COPIES)

    def prepare(self, seqs: list[tuple[int, int]]) -> Callable[[], torch.Tensor]:
        """One step of this layer's attention for the batch: KV-cache write, then
        attention. `seqs` is [(query_len, context_len_before_step)]."""
        return self.prepare_parts(seqs)["step"]
