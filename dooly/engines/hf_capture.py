"""Capture a transformers model's forward from its config alone: the model is built
on the meta device (no weights, no memory) and traced by make_fx with the batch and
sequence dims symbolic. The capture follows what runs at serving time: no padding
mask (sdpa with is_causal), the default rope (same shapes, no data-dependent
branches), the grouped-mm MoE path, logits only for the last token."""
from __future__ import annotations

import contextlib
from unittest import mock

import torch

from dooly.config import ModelConfig
from dooly.errors import DoolyInputError
from dooly.graph.capture import Captured
from dooly.symbolic.symbols import B, Q

_EXAMPLE_B, _EXAMPLE_S = 3, 17  # distinct, so make_fx gives them distinct symbols
_DROP = {"architectures", "model_type", "auto_map", "quantization_config", "torch_dtype", "dtype",
         "transformers_version", "_name_or_path"}


def _hf_config(cfg: ModelConfig, layers: int):
    from transformers import AutoConfig
    raw = {k: v for k, v in cfg.raw.items() if k not in _DROP}
    raw["num_hidden_layers"] = layers
    if isinstance(raw.get("layer_types"), list):
        raw["layer_types"] = raw["layer_types"][:layers]
    for key in ("rope_scaling", "rope_parameters"):
        # default rope: same shapes, no data-dependent branch (dynamic rope reads max(pos))
        if isinstance(raw.get(key), dict):
            theta = raw[key].get("rope_theta", raw.get("rope_theta", 10000.0))
            raw[key] = {"rope_type": "default", "rope_theta": theta} if key == "rope_parameters" else None
    try:
        hf = AutoConfig.for_model(cfg.model_type, **raw)
    except (ValueError, KeyError) as err:
        # an unknown type's message goes on to list every type transformers knows
        why = str(err).splitlines()[0].split(". Should contain")[0][:120]
        hint = " (a type defined only by its repository's code: try --engine vllm)" \
            if "auto_map" in cfg.raw else ""
        raise DoolyInputError(cfg.path, f"transformers does not support model_type "
                              f"{cfg.model_type!r} ({why}){hint}", "model_type") from None
    hf.use_cache = False
    return hf


@contextlib.contextmanager
def _runtime_paths():
    """At run time with no padding sdpa gets is_causal=True and no mask tensor; when
    tracing, transformers builds the [B,1,S,S] mask. Patch the two helpers that decide."""
    from transformers import masking_utils
    patches = []
    if hasattr(masking_utils, "_ignore_causal_mask_sdpa"):
        patches.append(mock.patch.object(masking_utils, "_ignore_causal_mask_sdpa",
                                         lambda *a, **k: True))
    if hasattr(masking_utils, "find_packed_sequence_indices"):
        patches.append(mock.patch.object(masking_utils, "find_packed_sequence_indices",
                                         lambda *a, **k: None))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def _build(cfg: ModelConfig, hf):
    from transformers import AutoModelForCausalLM
    last = None
    for attn in ("sdpa", "eager"):  # Gemma-2 softcapping has no sdpa path
        try:
            with torch.device("meta"):
                kwargs = {"dtype": torch.bfloat16, "attn_implementation": attn}
                if getattr(hf, "num_local_experts", None) or getattr(hf, "n_routed_experts", None):
                    kwargs["experts_implementation"] = "grouped_mm"
                return AutoModelForCausalLM.from_config(hf, **kwargs), attn
        except (ValueError, TypeError) as err:
            last = err
    raise DoolyInputError(cfg.path, f"transformers cannot build {cfg.architecture} "
                          f"({str(last).splitlines()[0][:120]})", "architectures")


def capture_hf(cfg: ModelConfig, layers: int | None = None, symbolic: bool = True
               ) -> tuple[Captured, dict]:
    """`symbolic=False`: batch and sequence traced at their example sizes, as plain ints
    (about six times faster than tracing them as symbols, whose shape arithmetic
    dominates the trace): the same ops and config dims, but for a no-op slice the trace
    may drop (dooly.graph.label_pass.fields_pass pairs the graphs across it)."""
    from torch.fx.experimental.proxy_tensor import make_fx
    full = layers is None
    layers = layers or cfg.traced_layers()
    hf = _hf_config(cfg, layers)
    model, attn = _build(cfg, hf)
    model.eval()

    def forward(ids):
        return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits

    forward._orig_mod = model  # lets make_fx record node.meta["nn_module_stack"]
    ids = torch.zeros(_EXAMPLE_B, _EXAMPLE_S, dtype=torch.long, device="meta")
    try:
        with _runtime_paths(), torch.no_grad():
            gm = make_fx(forward, tracing_mode="symbolic" if symbolic else "fake", pre_dispatch=True,
                         record_module_stack=True, _allow_non_fake_inputs=True)(ids)
    except Exception as err:
        raise DoolyInputError(cfg.path, f"transformers capture of {cfg.architecture} failed "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:160]})",
                              "architectures") from None
    sym_map = {}
    if symbolic:
        ph = next(n for n in gm.graph.nodes if n.op == "placeholder")
        b_sym, s_sym = (d.node.expr for d in ph.meta["val"].shape)
        sym_map = {b_sym: B, s_sym: Q}
    types = cfg.layer_types()
    mult = cfg.traced_multiplicity() if full else {i: 1 for i in range(layers)}
    cap = Captured("transformers", cfg, gm, "prefill", mult,
                   {i: types[i % len(types)] for i in range(layers)}, {}, "bfloat16",
                   [f"attn_implementation={attn}"])
    return cap, sym_map
