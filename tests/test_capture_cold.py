"""A user's first `dooly analyze` on a fresh machine: vLLM has not inspected the model
class yet (its model-info cache is empty). Dooly has it inspected in this process, which
builds that class next anyway, instead of in a second Python that imports vLLM again."""
from conftest import config, needs_vllm
from dooly.config import load_config


@needs_vllm
def test_cold_model_info_is_inspected_without_a_subprocess(monkeypatch):
    from vllm.model_executor.models import registry

    from dooly.engines.vllm_capture import _vllm_config

    def no_subprocess(fn):
        raise AssertionError("vLLM started a subprocess to inspect the model class")

    monkeypatch.setattr(registry, "_run_in_subprocess", no_subprocess)
    monkeypatch.setattr(registry._LazyRegisteredModel, "_load_modelinfo_from_cache",
                        lambda self, module_hash: None)
    registry._try_inspect_model_cls.cache_clear()   # what earlier tests inspected
    try:
        vc = _vllm_config(load_config(config("HuggingFaceTB__SmolLM2-135M-Instruct")), 1)
    finally:
        registry._try_inspect_model_cls.cache_clear()
    assert vc.model_config.architecture == "LlamaForCausalLM"
    assert registry._run_in_subprocess is no_subprocess   # vLLM's own hook is put back


_FIRST_CAPTURE = """
import sys
from torch._dynamo import funcname_cache, symbolic_convert
from vllm.engine import arg_utils
from dooly.config import load_config
from dooly.engines.vllm_capture import capture_vllm
hooks = (symbolic_convert.get_funcname, arg_utils.is_ray_initialized, arg_utils.is_in_ray_actor)
capture_vllm(load_config(sys.argv[1]), 1)
print("ray" in sys.modules, len(funcname_cache.cache),
      hooks == (symbolic_convert.get_funcname, arg_utils.is_ray_initialized,
                arg_utils.is_in_ray_actor))
"""


@needs_vllm
def test_a_first_capture_imports_no_ray_and_tokenizes_no_source_for_log_names():
    import subprocess
    import sys
    # a fresh process: an earlier test may have imported Ray or filled Dynamo's cache
    out = subprocess.run([sys.executable, "-c", _FIRST_CAPTURE,
                          config("HuggingFaceTB__SmolLM2-135M-Instruct")],
                         capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split()[-3:] == ["False", "0", "True"]   # hooks put back


@needs_vllm
def test_parallel_groups_are_rebuilt_only_for_a_model_that_needs_other_groups(monkeypatch):
    import vllm.distributed
    from vllm.distributed import parallel_state

    from dooly.engines.vllm_capture import capture_vllm
    builds = []
    real = vllm.distributed.initialize_model_parallel
    monkeypatch.setattr(vllm.distributed, "initialize_model_parallel",
                        lambda *a, **k: builds.append(1) or real(*a, **k))
    capture_vllm(load_config(config("HuggingFaceTB__SmolLM2-135M-Instruct")), 1)
    builds.clear()
    capture_vllm(load_config(config("Qwen__Qwen2.5-0.5B")), 1)
    assert builds == []                       # dense after dense: the same groups
    capture_vllm(load_config(config("mistralai__Mixtral-8x7B-Instruct-v0.1-2L")), 1)
    assert builds == [1] and parallel_state._EP is not None   # MoE: an expert group too
