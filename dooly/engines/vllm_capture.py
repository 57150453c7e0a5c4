"""Capture vLLM's own model graph without starting an engine and without weights.

vLLM's model class is built on the meta device inside vLLM's config context (a
one-process distributed init, its default dtype), and its forward is run once: the
`support_torch_compile` wrapper hands Dynamo's graph, with the flattened token count
symbolic, to our backend (named by qualified name in `compilation_config`). The
backend keeps the graph and stops the run, since meta tensors cannot execute vLLM's
CPU kernels."""
from __future__ import annotations

import contextlib
import inspect
import json
import tempfile
from pathlib import Path

import torch

from dooly.config import ModelConfig
from dooly.engines import set_vllm_environ
from dooly.engines.vllm_compat import (REMOTE_CODE_KEYS, all_on_meta, config_class_for,
                                       detours_skipped, dynamo_hooks_removed,
                                       model_class_inspected_here,
                                       transformers_classes_restored)
from dooly.errors import DoolyInputError
from dooly.graph.capture import Captured
from dooly.unit import MLA_ATTRS

BACKEND = "dooly.engines.vllm_capture.capture_backend"
_SLOT: dict = {}
_DIST_READY = False
_GROUPS_FOR: tuple | None = None   # what the live parallel groups were built for


class _CaptureDone(Exception):
    pass


def capture_backend(gm, example_inputs):
    """Dynamo backend vLLM resolves by name: keep the graph, stop execution."""
    _SLOT["gm"] = gm
    raise _CaptureDone()


def _engine_args(cfg: ModelConfig, model_dir: str, layers: int, backend: str | None, tp: int = 1):
    from vllm.engine.arg_utils import EngineArgs
    mpe = int(cfg.raw.get("max_position_embeddings") or 4096)
    # tensor_parallel_size only fills vLLM's parallel config (what its code reads besides the
    # group, e.g. KV heads per rank); the group itself is faked (dooly.engines.vllm_tp)
    return EngineArgs(model=model_dir, load_format="dummy", skip_tokenizer_init=True,
                      hf_overrides={"num_hidden_layers": layers}, tensor_parallel_size=tp,
                      compilation_config={"mode": 2, "backend": backend or BACKEND},
                      max_model_len=min(mpe, 4096), dtype="bfloat16", enforce_eager=False)


def _init_distributed() -> None:
    """One-process distributed state, under the current vLLM config. The parallel groups
    are rebuilt only when this model needs other groups than the last one did: vLLM
    creates the expert-parallel group only for MoE models (and an Engram group where
    the config has one)."""
    global _DIST_READY, _GROUPS_FOR
    from vllm.config import get_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.distributed.parallel_state import (destroy_model_parallel,
                                                 model_parallel_is_initialized)
    vc = get_current_vllm_config()
    needs = (vc.model_config is None or bool(vc.model_config.is_moe),
             repr(getattr(vc, "engram_config", None)))
    if not _DIST_READY:
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"file://{tempfile.mktemp()}")
        _DIST_READY = True
    elif needs == _GROUPS_FOR and model_parallel_is_initialized():
        return
    elif model_parallel_is_initialized():
        destroy_model_parallel()
    initialize_model_parallel(1, 1)
    _GROUPS_FOR = needs


def _attention_attrs(model) -> dict[int, dict]:
    from dooly.graph.capture import _LAYER_RE
    out: dict[int, dict] = {}
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        if kind not in ("Attention", "MLAAttention") or not hasattr(mod, "num_kv_heads"):
            continue
        m = _LAYER_RE.search(name)
        backend = getattr(mod, "attn_backend", None)
        attrs = {"num_heads": int(mod.num_heads), "num_kv_heads": int(mod.num_kv_heads),
                 "head_size": int(mod.head_size),
                 "sliding_window": _window(getattr(mod.impl, "sliding_window", None)),
                 "backend": backend.get_name() if backend is not None else "unknown",
                 "layer_name": getattr(mod, "layer_name", name)}
        if kind == "MLAAttention":   # one latent "KV head" of kv_lora_rank + rope values
            attrs.update({k: int(getattr(mod, k)) for k in MLA_ATTRS})
        out[int(m.group(1)) if m else len(out)] = attrs
    return out


def _window(w) -> int:
    # vLLM stores the window as (left, right) or an int.
    if isinstance(w, (tuple, list)):
        w = int(w[0]) + 1 if w[0] is not None and w[0] >= 0 else 0
    return max(int(w or 0), 0)


def _vllm_config(cfg: ModelConfig, layers: int, tp: int = 1):
    """vLLM's config for this model at `layers` layers; a config vLLM refuses is a
    one-line input error (an unknown architecture names the `architectures` field)."""
    raw = {k: v for k, v in cfg.raw.items() if k not in REMOTE_CODE_KEYS}
    with config_class_for(cfg.model_type), model_class_inspected_here(), detours_skipped(), \
            tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_text(json.dumps(raw))
        try:
            return _engine_args(cfg, tmp, layers, None, tp).create_engine_config()
        except Exception as err:  # vLLM reports unknown architectures as ValueError
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            hit = [ln for ln in lines if "architecture" in ln.lower() or "not supported" in ln.lower()]
            msg = (hit or lines or [type(err).__name__])[0].split(" [type=")[0][:200]
            if hit:
                raise DoolyInputError(cfg.path, f"{cfg.architecture} is not supported by the vllm "
                                      f"engine ({msg})", "architectures") from None
            raise DoolyInputError(cfg.path, f"vLLM rejected the config: {msg}") from None


def _process_meta_weights(model) -> None:
    """On meta weights vLLM's CPU GEMM dispatch picks F.linear: the graph shows a plain
    GEMM; the sweeper runs vLLM's real CPU dispatch per shape."""
    for mod in model.modules():
        method = getattr(mod, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            try:
                method.process_weights_after_loading(mod)
            except (NotImplementedError, RuntimeError):
                # e.g. the CPU MoE weight prepack has no meta kernel; the op stays
                # in the graph with its unpacked shapes
                pass


def _run_forward(model, vc) -> None:
    """One forward on meta tensors; the compile wrapper hands Dynamo's graph to
    `capture_backend`, which leaves it in _SLOT."""
    from vllm.forward_context import set_forward_context
    n = 37  # any size: the token dim is marked dynamic by vLLM
    ids = torch.zeros(n, dtype=torch.long, device="meta")
    pos = torch.zeros(n, dtype=torch.long, device="meta")
    kwargs = {"input_ids": ids, "positions": pos}
    if "intermediate_tensors" in inspect.signature(model.forward).parameters:
        kwargs["intermediate_tensors"] = None  # some classes (InternLM2) give it no default
    with set_forward_context(None, vc, num_tokens=n):
        try:
            model(**kwargs)
        except Exception as err:  # expected: meta tensors cannot run vLLM's kernels
            _SLOT.setdefault("error", err)
        if "gm" not in _SLOT:
            # a model class vLLM does not compile: trace its forward the same way
            torch._dynamo.mark_dynamic(ids, 0)
            torch._dynamo.mark_dynamic(pos, 0)
            traced = torch.compile(model, backend=capture_backend, fullgraph=False, dynamic=True)
            with contextlib.suppress(Exception):
                traced(**kwargs)


def capture_vllm(cfg: ModelConfig, layers: int | None = None, tp: int = 1) -> Captured:
    """`tp`: build the model as rank 0 of a `tp`-rank tensor-parallel group (its shard
    shapes, its collectives as graph nodes; dooly.engines.vllm_tp)."""
    from dooly.engines.vllm_tp import fake_tp_group, parallel_attrs
    set_vllm_environ()
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.utils import initialize_model
    from vllm.utils.torch_utils import set_default_torch_dtype

    full = layers is None
    layers = layers or cfg.traced_layers()
    vc = _vllm_config(cfg, layers, tp)
    torch._dynamo.reset()
    _SLOT.clear()
    with set_current_vllm_config(vc):
        _init_distributed()
        with fake_tp_group(tp), dynamo_hooks_removed(), transformers_classes_restored():
            with set_default_torch_dtype(vc.model_config.dtype), torch.device("meta"):
                model = initialize_model(vc)
            all_on_meta(model)
            _process_meta_weights(model)
            with detours_skipped():   # _vllm_config skipped the config-time ones
                _run_forward(model, vc)
            attention = _attention_attrs(model)
            parallel = parallel_attrs(model, tp)
    if "gm" not in _SLOT:
        err = _SLOT.pop("error", None)
        why = f": {type(err).__name__}: {str(err).splitlines()[0][:150]}" if err else ""
        raise DoolyInputError(cfg.path, f"vLLM produced no graph for {cfg.architecture}{why}",
                              "architectures")
    types = cfg.layer_types()
    mult = cfg.traced_multiplicity() if full else {i: 1 for i in range(layers)}
    return Captured("vllm", cfg, _SLOT.pop("gm"), "step", mult,
                    {i: types[i % len(types)] for i in range(layers)}, attention,
                    str(vc.model_config.dtype).replace("torch.", ""), tp=tp, parallel=parallel)
