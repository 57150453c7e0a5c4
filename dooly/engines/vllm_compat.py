"""What a capture changes around vLLM so that any published config captures: a model
type only its repository's code defines gets a config class from its JSON alone (no
code from anywhere runs), the Transformers modeling backend's weights stay on meta,
the transformers classes vLLM decorates are put back after the capture, and vLLM
inspects the model class in this process rather than in a fresh one."""
from __future__ import annotations

import contextlib

import torch

# keys that would make transformers or vLLM import Python code the config names (from
# the model's hub repository or files beside it): Dooly never runs a config's code
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")


@contextlib.contextmanager
def config_class_for(model_type: str):
    """A model type only its repository's own code defines (InternLM2, Baichuan,
    MiniCPM, DeepSeek-V1...): vLLM's own config class when it ships one (vLLM
    registers those itself), else, while vLLM reads the config, a plain
    PretrainedConfig that keeps the JSON's fields as attributes, which vLLM's model
    class for the architecture reads. Unregistered after: transformers' own engine
    must still answer that it does not know the type."""
    from transformers import AutoConfig, PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from vllm.transformers_utils.config import _CONFIG_REGISTRY
    if model_type in CONFIG_MAPPING or model_type in _CONFIG_REGISTRY:
        yield
        return
    def __init__(self, tie_word_embeddings=True, **kwargs):
        # transformers 4 gave every config this default, so a config.json it saved
        # leaves it out when true (MiniCPM); transformers 5's base class has none
        PretrainedConfig.__init__(self, tie_word_embeddings=tie_word_embeddings, **kwargs)
    generic = type(f"DoolyConfig_{model_type}", (PretrainedConfig,),
                   {"model_type": model_type, "__init__": __init__})
    AutoConfig.register(model_type, generic, exist_ok=True)
    try:
        yield
    finally:
        CONFIG_MAPPING._extra_content.pop(model_type, None)


def all_on_meta(model) -> None:
    """vLLM's Transformers modeling backend (Olmo, Olmo-2, Olmo-3 and other types vLLM
    has no own class for) materialises each parameter still on meta with an explicit
    `device=device_config.device` (`init_parameters`), which the meta device context
    does not override: its norm weights land on the CPU, and the first fused rms_norm
    fails on fake tensors ("Tensor on device cpu is not on the expected device meta").
    Weights are all meta in a capture, so move those back (no data is read)."""
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and p.device.type != "meta":
                meta = torch.nn.Parameter(p.data.to("meta"), requires_grad=False)
                meta.__dict__.update(p.__dict__)  # e.g. vLLM's weight_loader
                mod._parameters[name] = meta


@contextlib.contextmanager
def transformers_classes_restored():
    """vLLM's Transformers modeling backend decorates the transformers class it builds
    (e.g. Olmo2Model) for torch.compile in place: new bases and an __init__ that needs
    a current vLLM config. Left so, the transformers engine could no longer build that
    class in this process; each class vLLM decorates during the capture is put back."""
    from vllm.compilation import decorators
    original, saved = decorators._support_torch_compile, []

    def recording(cls, *args, **kwargs):
        if cls.__module__.startswith("transformers."):  # vLLM's own classes stay decorated
            saved.append((cls, cls.__bases__, dict(cls.__dict__)))
        return original(cls, *args, **kwargs)
    decorators._support_torch_compile = recording
    try:
        yield
    finally:
        decorators._support_torch_compile = original
        for cls, bases, attrs in reversed(saved):
            cls.__bases__ = bases
            for key in [k for k in cls.__dict__ if k not in attrs]:
                delattr(cls, key)
            for key, value in attrs.items():
                if cls.__dict__.get(key) is not value:
                    setattr(cls, key, value)


@contextlib.contextmanager
def dynamo_hooks_removed():
    """Each model vLLM wraps for torch.compile registers a Dynamo bytecode hook (a bound
    method of the model) that every later compile in the process calls. Left after a
    capture, the hook keeps the meta model alive, and once its transformers class is put
    back (`transformers_classes_restored`) it fails every later compile with "'Olmo2Model'
    object has no attribute 'original_code_object'" (a sweep's fused units, after an
    OLMo-2 capture). The hooks a capture registered are removed when it ends."""
    from torch._dynamo import convert_frame
    hooks = convert_frame._bytecode_hooks
    before = set(hooks)
    try:
        yield
    finally:
        for key in [k for k in hooks if k not in before]:
            hooks.pop(key, None)


@contextlib.contextmanager
def model_class_inspected_here():
    """On a cold cache (a fresh machine, or a new vLLM version) vLLM inspects a model
    class it has not seen in a fresh Python process, so that the parent never touches
    CUDA: a second vLLM import, 5-10 s of a user's first `dooly analyze` on this CPU.
    A capture imports that class in this process next anyway (to build it on meta
    tensors, which touches no device), so the inspection runs here. vLLM still caches
    what it found. A vLLM without the hook is left as it is."""
    from vllm.model_executor.models import registry
    original = getattr(registry, "_run_in_subprocess", None)
    if original is None:
        yield
        return
    registry._run_in_subprocess = lambda fn: fn()
    try:
        yield
    finally:
        registry._run_in_subprocess = original


@contextlib.contextmanager
def detours_skipped():
    """What vLLM and Dynamo do around a capture that buys Dooly nothing. Dynamo names
    the function of each traced line for a debug log even when that log is off,
    tokenizing every source file it passes through (vLLM's model and layer files: about
    0.3 s of a process's first capture on this 2-core host); the name goes only into
    that log. vLLM's engine arguments import Ray (0.1 s) to ask whether Ray is running
    or this is a Ray actor, which neither can be in a process that never imported Ray.
    And vLLM retries a config it cannot parse after 2 s, for a hub cache being
    refreshed; Dooly wrote that file itself a moment before, so the first error is the
    answer. A hook this torch or vLLM lacks is left alone; all are put back after."""
    import sys

    from torch._dynamo import symbolic_convert
    from vllm.engine import arg_utils
    from vllm.transformers_utils import config as hf_config
    saved = []

    def swap(mod, name, new) -> None:
        if hasattr(mod, name):
            saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, new)

    swap(symbolic_convert, "get_funcname", lambda filename, lineno: None)
    for name in ("is_ray_initialized", "is_in_ray_actor"):
        check = getattr(arg_utils, name, None)
        swap(arg_utils, name, lambda check=check: "ray" in sys.modules and check())
    swap(hf_config, "with_retry", lambda func, log_msg, **kwargs: func())
    try:
        yield
    finally:
        for mod, name, original in saved:
            setattr(mod, name, original)
