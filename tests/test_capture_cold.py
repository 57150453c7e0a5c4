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
