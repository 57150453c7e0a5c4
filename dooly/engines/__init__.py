"""Engines: the only room that imports vLLM or transformers model code.

Each engine builds its model from a HF config with no weights and hands back a captured
fx graph (`capture`), names the environment its measurements belong to (`environment`),
and supplies the engine's own kernels where a unit must be timed as the engine runs it
(`gemm_call`, `gemm_weight`, `ir_body`, `attention_runner`, and for tensor parallelism its communicator:
`collective_label`, `collective_group`). Everything else in Dooly calls these
functions and never branches on the engine's name. May import: dooly.config, dooly.env,
dooly.hostspeed, dooly.errors, dooly.unit, dooly.graph, dooly.symbolic. Adding an engine is one module
here plus one entry in the tables below."""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Callable

ENGINES = ("vllm", "transformers")

# What vLLM must see before it is imported, in this process or a child's: one process
# (no engine-core subprocess), no AOT compile cache, its logging kept off stdout.
VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_USE_AOT_COMPILE": "0",
            "VLLM_LOGGING_LEVEL": "ERROR", "VLLM_CONFIGURE_LOGGING": "1",
            "VLLM_LOGGING_STREAM": "ext://sys.stderr"}


def vllm_environ(base: dict | None = None) -> dict:
    """`base` (default os.environ) with vLLM's settings; a user's own value wins,
    except the AOT cache, which would replay another model's graph, and the log
    stream: Dooly's stdout carries its tables and JSON."""
    env = dict(os.environ if base is None else base)
    for k, v in VLLM_ENV.items():
        env.setdefault(k, v)
    env["VLLM_USE_AOT_COMPILE"] = "0"
    env["VLLM_LOGGING_STREAM"] = "ext://sys.stderr"
    return env


def library_logging(verbose: bool) -> None:
    """The libraries' own log lines (vLLM, torch, transformers, Python warnings) go to
    stderr, and only when asked (`dooly --verbose`): Dooly reports what matters itself.
    vLLM reads its level from the environment each time it sets up logging, and logs
    through Python's last-resort stderr handler before that (vLLM's "Triton is
    installed, but doesn't include CPU backend"), so both are set; children inherit
    the environment."""
    import logging
    import warnings
    levels = ({"vllm": "INFO", "torch": "WARNING", "transformers": "WARNING"} if verbose
              else dict.fromkeys(("vllm", "torch", "transformers"), "CRITICAL"))
    os.environ["VLLM_LOGGING_LEVEL"] = levels["vllm"]
    os.environ["TRANSFORMERS_VERBOSITY"] = levels["transformers"].lower()  # its INFO dumps configs
    if not verbose:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # read when torch starts
        warnings.simplefilter("ignore")
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def set_vllm_environ() -> None:
    os.environ.update(vllm_environ())


def default_engine() -> str:
    return "vllm" if importlib.util.find_spec("vllm") else "transformers"


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
    return engine


def capture(cfg, engine: str, tp: int = 1, request_dims: bool = True):
    """(Captured, symbol map capture-symbol -> Dooly symbol, units the engine runs
    outside its graph). `tp` > 1: one rank of a tensor-parallel group of that size.
    `request_dims=False`: the request dims may be traced at their example sizes, where
    the engine's trace is faster that way (the perturbed capture, which reads only the
    config dims)."""
    if check_engine(engine) == "vllm":
        from dooly.engines.vllm_capture import capture_vllm
        from dooly.graph.label_pass import capture_symbols
        from dooly.graph.units import logits_units
        from dooly.symbolic.symbols import T
        cap = capture_vllm(cfg, tp=tp) if tp != 1 else capture_vllm(cfg)
        # every dynamic dim in vLLM's graph is the flattened token count
        return cap, {s: T for s in capture_symbols(cap.gm)}, logits_units(cap)
    if tp != 1:
        from dooly.errors import DoolyInputError
        raise DoolyInputError("--tp", f"{tp}: the {engine} engine has no tensor parallelism "
                              "(use --engine vllm)")
    from dooly.engines.hf_capture import capture_hf
    cap, sym_map = capture_hf(cfg, symbolic=request_dims)
    return cap, sym_map, []


def register_ops(engine: str) -> None:
    """Registers the engine's custom ops (torch.ops.vllm_ir.*, torch.ops._C.*) in this
    process (once; later calls cost nothing). vLLM's model code registers them on import;
    a process that reads its units from a DB or the capture cache (a sweep of a cached
    analysis, `dooly predict --recheck-host` re-timing a norm or rotary unit) never imports
    that code, so every runner of an engine's unit calls this first (dooly.profile.runners)."""
    if check_engine(engine) == "vllm":
        set_vllm_environ()
        import vllm._custom_ops  # noqa: F401  (loads vllm._C: torch.ops._C.*)
        import vllm.ir  # noqa: F401


def engine_version(engine: str) -> str:
    if check_engine(engine) == "vllm":
        set_vllm_environ()
        import vllm
        return vllm.__version__
    import transformers
    return transformers.__version__


def default_threads(engine: str, device: str) -> int:
    """The thread count the engine's forward really runs with. vLLM's CPU worker binds
    its OpenMP threads to every core it may use (VLLM_CPU_OMP_THREADS_BIND=auto) and
    then blocks torch.set_num_threads: measured in its worker, 2 on a 2-core host."""
    import torch
    if device == "cpu" and engine == "vllm":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return torch.get_num_threads()


# per engine and device: (attention backend, execution mode, KV block size)
_DEFAULTS = {("vllm", "cpu"): ("CPU_ATTN", "compiled", 128),  # CPU attention: multiples of 32
             ("vllm", "cuda"): ("FLASH_ATTN", "cudagraph", 16),
             ("transformers", "cpu"): ("sdpa", "eager", 16),
             ("transformers", "cuda"): ("sdpa", "eager", 16)}


def environment(engine: str, device: str = "cpu", backend: str | None = None,
                dtype: str = "bfloat16", block_size: int | None = None,
                threads: int | None = None, execution: str | None = None):
    """The one place an Environment for this host is made (sweep, calibrate, benches)."""
    import torch
    from dooly.env import Environment, host_cpu_name
    d_backend, d_exec, d_block = _DEFAULTS[(check_engine(engine), device)]
    name = torch.cuda.get_device_name() if device == "cuda" else host_cpu_name()
    return Environment(device_name=name, device_kind=device, engine=engine,
                       engine_version=engine_version(engine), backend=backend or d_backend,
                       dtype=dtype, block_size=block_size or d_block,
                       torch_version=torch.__version__.split("+")[0],
                       execution=execution or d_exec,
                       threads=threads or default_threads(engine, device))


def gemm_weight(engine: str, device: str, w) -> Callable[..., object]:
    """`linear(x, bias)` with the weight `w` as the engine dispatches it (it may prepack
    the weight once, as it does when it loads a model)."""
    if engine == "vllm" and device == "cpu":
        from dooly.engines.vllm_ops import cpu_linear_of
        return cpu_linear_of(w)
    import torch.nn.functional as F
    return lambda x, bias: F.linear(x, w, bias)


def gemm_call(engine: str, device: str, x, w, bias) -> Callable[[], object]:
    """A GEMM as the engine dispatches it for this shape."""
    linear = gemm_weight(engine, device, w)
    return lambda: linear(x, bias)


def moe_inputs(engine: str, device: str, unit, ins: list) -> list:
    """A fused-MoE unit's inputs as the engine hands them to its kernel (the CPU kernel
    reads expert weights prepacked for its ISA, the unit's last call argument)."""
    call = unit.attr.get("call") or []
    if engine == "vllm" and device == "cpu" and call and call[-1] in ("amx", "vec"):
        from dooly.engines.vllm_ops import cpu_moe_weights
        return cpu_moe_weights(ins, call[-1])
    return ins


def ir_body(engine: str, unit) -> Callable | None:
    """The body the engine lowers an IR op to before compiling, or None."""
    if engine != "vllm" or not unit.op.startswith("vllm_ir."):
        return None
    from dooly.engines.vllm_ops import lowered_ir
    return lowered_ir(unit)


def collective_label(engine: str, device: str) -> str:
    """The communicator the engine's tensor-parallel workers use on this host."""
    if check_engine(engine) != "vllm":
        raise ValueError(f"engine: {engine!r} has no tensor parallelism")
    from dooly.engines.vllm_comm import communicator_label
    return communicator_label(device)


def collective_group(engine: str, rank: int, size: int, init_file: str, device: str):
    """Rank `rank` of a `size`-rank group built by the engine's own code, in a measuring
    process (`.op(name, x, dim)`, `.barrier()`, `.label`, `.close()`)."""
    if check_engine(engine) != "vllm":
        raise ValueError(f"engine: {engine!r} has no tensor parallelism")
    from dooly.engines.vllm_comm import VllmGroup
    return VllmGroup(rank, size, init_file, device)


@functools.cache
def amx_permission() -> None:
    """Linux lets a process use AMX tiles only after it asks (vLLM's CPU worker does):
    without it, the engine's AMX kernels (its fused MoE's "amx" path, its attention and
    MLA kernels on an AMX host) die of SIGILL."""
    import torch
    init = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    if init is not None and torch.cpu._is_amx_tile_supported():
        init()


def attention_runner(engine: str, **kwargs):
    """The engine's stateful attention runner (its own backend, metadata and KV cache)."""
    if engine != "vllm":
        raise ValueError(f"engine: {engine!r} has no stateful attention runner")
    if kwargs.get("kv_lora_rank"):   # multi-head latent attention (dooly.unit.MLA_ATTRS)
        from dooly.engines.vllm_mla import VllmMLARunner
        return VllmMLARunner(**kwargs)
    from dooly.engines.vllm_attention import VllmAttentionRunner
    return VllmAttentionRunner(**kwargs)
