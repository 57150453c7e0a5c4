"""vLLM's own communicator, for timing collective units: in each of N processes, vLLM's
distributed state is set up as its worker sets it up (`init_worker_distributed_environment`:
the world group, then the tensor-parallel group, whose device communicator the platform
picks: `CpuCommunicator` with its shared-memory all-reduce on CPU, `CudaCommunicator`
with custom all-reduce or PyNCCL on CUDA), and each collective is called on the group
coordinator as the model's layers call it (`tensor_model_parallel_all_reduce` is
`get_tp_group().all_reduce`). Runs only in the measuring processes
(dooly.profile.collectives), never in a capture."""
from __future__ import annotations

import os

from dooly.engines import set_vllm_environ

# vLLM's CPU communicator runs its shared-memory kernels on these architectures only
_SHM_ARCHS = ("X86", "ARM", "POWERPC", "S390X")


def communicator_label(device: str) -> str:
    """The communicator vLLM's workers would use on this host, named before any group
    exists (the environment a collective is stored under carries it)."""
    set_vllm_environ()
    import torch
    from vllm.platforms import current_platform
    cls = str(current_platform.get_device_communicator_cls()).rsplit(".", 1)[-1]
    if device != "cpu":
        return cls
    current_platform.import_kernels()   # the shared-memory ops live in vLLM's CPU kernels
    arch = getattr(current_platform.get_cpu_architecture(), "name", "")
    shm = arch in _SHM_ARCHS and hasattr(torch.ops._C, "init_shm_manager")
    return f"{cls}/{'shm' if shm else 'torch.distributed'}"


class VllmGroup:
    """Rank `rank` of a `size`-rank tensor-parallel group built by vLLM's own code."""

    def __init__(self, rank: int, size: int, init_file: str, device: str):
        set_vllm_environ()
        # vLLM's CPU worker names the shared-memory segment after the init file; every
        # rank must agree on it
        os.environ["VLLM_DIST_IDENT"] = os.path.basename(init_file)
        import torch
        from vllm.config import ParallelConfig, VllmConfig, set_current_vllm_config
        from vllm.distributed import parallel_state as ps
        if device == "cuda":
            torch.cuda.set_device(rank)
            ps.set_custom_all_reduce(True)
        self.device = device
        self._config = VllmConfig(parallel_config=ParallelConfig(tensor_parallel_size=size))
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cpu":
            # the shared-memory collectives live in vLLM's CPU kernels: without them loaded
            # the communicator silently falls back to torch.distributed (as a worker never does)
            from vllm.platforms import current_platform
            current_platform.import_kernels()
        with set_current_vllm_config(self._config):
            ps.init_distributed_environment(size, rank, f"file://{init_file}", rank, backend)
            ps.ensure_model_parallel_initialized(size, 1)
        self.group = ps.get_tp_group()

    @property
    def label(self) -> str:
        """The communicator that really runs (what `communicator_label` predicted)."""
        comm = self.group.device_communicator
        cls = type(comm).__name__
        if self.device != "cpu":
            extra = "custom_ar" if getattr(comm, "ca_comm", None) is not None else ""
            return f"{cls}/{extra}" if extra else cls
        shm = type(getattr(comm, "dist_module", None)).__name__ == "_CPUSHMDistributed"
        return f"{cls}/{'shm' if shm else 'torch.distributed'}"

    def op(self, name: str, x, dim: int = -1):
        """A call of collective `name` on tensor `x`, as the model makes it."""
        g = self.group
        if name == "vllm.all_reduce":
            return lambda: g.all_reduce(x)
        if name == "vllm.all_gather":
            return lambda: g.all_gather(x, dim)
        if name == "vllm.reduce_scatter":
            return lambda: g.reduce_scatter(x, dim)
        raise ValueError(f"op: {name!r} is not a collective vLLM's group runs")

    def barrier(self) -> None:
        import torch.distributed as dist
        dist.barrier(group=self.group.cpu_group)

    def close(self) -> None:
        from vllm.distributed import parallel_state as ps
        ps.destroy_model_parallel()
        ps.destroy_distributed_environment()
