"""What the engine-step model (dooly.fit.step_model) sees of a model and a batch: the
model's structure from its inventory (`model_structure`; never its name), the batch and
structure terms whose products are the features, and the pseudo-unit `engine.step` that a
calibrated model's steps are stored under. A feature is `batch_term(seqs) *
structure_term(model)`, so one fit over many models' steps applies to a model it never saw."""
from __future__ import annotations

import numpy as np

from dooly.fit.cudagraph import FULL
from dooly.unit import Unit, is_mla

STEP_OP = "engine.step"
STRUCTURE = ("layers", "attention_full", "attention_sliding", "pieces", "hidden", "vocab",
             "kv_width", "q_width", "unit_calls")
# (feature name, batch term, structure term): see batch_terms and structure_terms
FEATURES = (
    ("step", "one", "one"),                       # scheduler, output processing, input prep
    ("step_layer", "eager", "pieces"),            # per layer: op dispatch, the graph's Python
    ("seq", "seqs", "one"),                       # per-request bookkeeping, sampling
    ("seq_layer", "seqs", "layers"),              # per-request metadata in every attention call
    ("prefill", "prefills", "one"),               # a chunk's input and metadata preparation
    ("prefill_layer", "prefills", "layers"),
    ("decode_kv", "decode_ctx", "kv_layers"),     # KV read by decodes beyond the attention unit
    ("chunk_attn", "chunk_qc", "q_layers"),       # a chunk's attention over its context, likewise
    ("seq_vocab", "seqs", "vocab"),               # logits and sampler beyond their units
    ("units", "units", "one"),                    # the same kernels slower (or faster) in the engine
    ("prefill_gemm", "prefill_gemm", "one"),      # a prefill's GEMMs, slower in the engine still
)
MIN_ROWS = len(FEATURES) + 1


def model_structure(cfg, inventory_counts: dict[str, int], units: dict[str, Unit]) -> dict[str, int]:
    """The structure terms of a model from its config (may be None) and inventory: layers,
    attention layers by kind, pieces (vLLM's graph split at every attention op on GPU; one
    graph with an attention op per layer on CPU: layers + 1 either way), hidden size,
    vocabulary, KV and query width per layer, unit calls per step."""
    att = {"full": 0, "sliding": 0}
    kv_width = q_width = vocab = hidden = calls = 0
    for key, n in inventory_counts.items():
        u = units[key]
        a = u.attr
        if u.stateful and "attention" in u.op and "kv_cache" not in u.op:
            kind = "sliding" if (a.get("sliding_window") or "sliding" in str(a.get("layer_type", ""))) else "full"
            att[kind] += int(n)
            heads, kv_heads, size = a.get("num_heads"), a.get("num_kv_heads"), a.get("head_size")
            # an MLA query head is nope + rope wide; its cache head is the latent
            q_size = int(a["qk_nope_head_dim"]) + int(a["qk_rope_head_dim"]) if is_mla(a) else size
            if heads and kv_heads and size:
                kv_width, q_width = max(kv_width, int(kv_heads) * int(size)), max(q_width, int(heads) * int(q_size))
        elif a.get("role") == "lm_head" or u.op == "sampler":
            dims = [d.value_or_expr for t in u.inputs for d in t.dims if isinstance(d.value_or_expr, int)]
            vocab = max([vocab] + dims)
            if a.get("role") == "lm_head":
                hidden = min(d for d in dims) if dims else hidden
        else:
            calls += int(n)
    raw = getattr(cfg, "raw", None) or {}
    layers = int(raw.get("num_hidden_layers") or (att["full"] + att["sliding"]))
    n_att = att["full"] + att["sliding"]
    return {"layers": layers, "attention_full": att["full"], "attention_sliding": att["sliding"],
            "pieces": n_att + 1, "hidden": int(raw.get("hidden_size") or hidden),
            "vocab": int(raw.get("vocab_size") or vocab), "kv_width": kv_width, "q_width": q_width,
            "unit_calls": calls}


def structure_terms(s: dict) -> dict[str, float]:
    layers = float(s["attention_full"] + s["attention_sliding"]) or float(s["layers"])
    return {"one": 1.0, "layers": layers, "pieces": float(s["pieces"]),
            "kv_layers": layers * s["kv_width"] / 1e3, "q_layers": layers * s["q_width"] / 1e3,
            "vocab": s["vocab"] / 1e5}


def batch_terms(seqs, graph: str | None = None, units_ms: float = 0.0, gemm_ms: float = 0.0) -> dict[str, float]:
    """`graph`: how the engine ran the step's forward (dooly.fit.cudagraph): a FULL graph
    replay makes no per-layer Python calls. `units_ms`: the step's units, predicted."""
    dec = [int(c) for q, c in seqs if int(q) == 1]
    chunks = [(int(q), int(c)) for q, c in seqs if int(q) > 1]
    return {"one": 1.0, "eager": 0.0 if graph == FULL else 1.0, "seqs": float(len(seqs)),
            "prefills": float(len(chunks)), "decode_ctx": sum(dec) / 1e4,
            "chunk_qc": sum(q * (c + (q + 1) / 2) for q, c in chunks) / 1e6, "units": units_ms / 100.0,
            "prefill_gemm": gemm_ms / 100.0 * sum(q for q, _ in chunks) / max(sum(int(q) for q, _ in seqs), 1)}


def features(seqs, structure: dict, graph: str | None = None, units_ms: float = 0.0,
             gemm_ms: float = 0.0) -> np.ndarray:
    b, s = batch_terms(seqs, graph, units_ms, gemm_ms), structure_terms(structure)
    return np.array([b[bt] * s[st] for _, bt, st in FEATURES])


def engine_step_unit(structure: dict, config_hash: str) -> Unit:
    """The pseudo-unit a calibrated model's steps are stored under: its attributes are the
    model's structure; `model` (the config hash) is provenance, so a recalibration replaces
    that model's steps only, and it enters no feature."""
    attrs = {k: int(structure[k]) for k in STRUCTURE}
    attrs.update(driver="attention", model=config_hash)
    return Unit(op=STEP_OP, inputs=(), outputs=(), attrs=tuple(sorted(attrs.items())))
