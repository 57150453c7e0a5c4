"""Tensor parallelism outside the capture: which group sizes a model takes, how many threads
one rank has on a CPU, where a TP model's measurements live, and the KV-cache capacity of
N devices.

A TP=N model's compute units are one rank's shards, measured like any unit in the host's
environment (on a CPU each rank gets its share of the cores, so that environment has fewer
threads). Its collective units are measured across N real processes and stored under a
*collective environment*: the host's environment with the group's topology in its device
name ("<device> [tp2: 1 host x 2 ranks]") and the communicator that ran them as its
backend. Topology is part of the environment, not of the unit: one all_reduce unit is
timed once per topology it runs on. Imports: dooly.config, dooly.env, dooly.errors,
dooly.unit, and dooly.db.envs (the default environment rule)."""
from __future__ import annotations

import dataclasses

from dooly.config import ModelConfig
from dooly.env import Environment, itemsize
from dooly.errors import DoolyInputError
from dooly.unit import COLLECTIVE_OPS, Unit, is_mla

MAX_TP = 512   # far above any single serving group; keeps a typo from spawning thousands


def _heads(cfg: ModelConfig) -> tuple[int, int]:
    src = cfg.raw.get("text_config") if isinstance(cfg.raw.get("text_config"), dict) \
        and "num_attention_heads" not in cfg.raw else cfg.raw
    heads = int(src.get("num_attention_heads") or src.get("n_head") or 1)
    return heads, int(src.get("num_key_value_heads") or heads)


def check_tp(cfg: ModelConfig, tp: int, engine: str = "vllm") -> None:
    """The group sizes vLLM accepts for this model: the attention heads split evenly, and
    the KV heads either split evenly or are replicated (tp a multiple of them)."""
    if not isinstance(tp, int) or isinstance(tp, bool) or not 1 <= tp <= MAX_TP:
        raise DoolyInputError("--tp", f"expected an integer from 1 to {MAX_TP}, got {tp!r}")
    if tp > 1 and engine != "vllm":
        raise DoolyInputError("--tp", f"{tp}: the {engine} engine has no tensor parallelism "
                              "(use --engine vllm)")
    heads, kv = _heads(cfg)
    if heads % tp:
        raise DoolyInputError("--tp", f"{tp} does not divide the {heads} attention heads "
                              f"(num_attention_heads in {cfg.path})")
    if kv % tp and tp % kv:
        raise DoolyInputError("--tp", f"{tp} neither divides nor is a multiple of the {kv} KV "
                              f"heads (num_key_value_heads in {cfg.path})")


def rank_threads(host_threads: int, tp: int) -> int:
    """Threads one rank computes with when `tp` ranks share a CPU host's cores (vLLM's CPU
    workers bind each rank to its own cores)."""
    return max(1, int(host_threads) // max(1, int(tp)))


# -- collective environments --------------------------------------------------------------

def topology(group_size: int, hosts: int = 1) -> str:
    if group_size < 1 or hosts < 1 or group_size % hosts:
        raise ValueError(f"topology: {group_size} ranks do not spread evenly over {hosts} hosts")
    return f"tp{group_size}: {hosts} host{'s' if hosts > 1 else ''} x {group_size // hosts} ranks"


def collective_environment(base: Environment, group_size: int, communicator: str,
                           hosts: int = 1) -> Environment:
    """Where a group's collectives are stored: the ranks' environment (device, engine,
    dtype, threads per rank) with the topology and the communicator."""
    return dataclasses.replace(base, device_name=f"{base.device_name} [{topology(group_size, hosts)}]",
                               backend=communicator, execution="eager", cache="warm")


def is_collective_env(env: Environment) -> bool:
    return env.device_name.endswith("]") and " [tp" in env.device_name


def _related(env: Environment, base: Environment) -> bool:
    return (is_collective_env(env) and env.device_name.startswith(base.device_name + " [tp")
            and (env.engine, env.engine_version, env.dtype, env.device_kind) ==
            (base.engine, base.engine_version, base.dtype, base.device_kind))


def collective_env_for(store, base: Environment, keys) -> Environment | None:
    """The collective environment of `base` that measured most of the collective units
    `keys` (None when none did)."""
    keys = set(keys)
    best, covered = None, 0
    for env in store.environments():
        if _related(env, base):
            n = len(keys & store.units_measured(env.key))
            if n > covered:
                best, covered = env, n
    return best


def tp_environment(store, engine: str | None, units: dict[str, Unit], db_path: str) -> Environment:
    """The compute environment of a TP model when none is named: among the engine's
    non-collective environments, the one that measured most of its shard units (on a CPU
    the ranks' thread count differs from a TP=1 sweep's), then the most measurements."""
    from dooly.db.envs import choose_environment, most_covering
    envs = [e for e in store.environments() if not is_collective_env(e)
            and (engine is None or e.engine == engine)]
    if not envs:
        return choose_environment(store, engine, None, db_path)
    return most_covering(store, envs, {k for k, u in units.items() if u.op not in COLLECTIVE_OPS})


# -- KV-cache capacity ----------------------------------------------------------------------

def kv_bytes_per_token(units: dict[str, Unit], counts: dict[str, int]) -> int:
    """KV-cache bytes one rank stores per token: K and V of every attention layer at the
    rank's KV heads (an inventory's attention units carry the shard's head counts); a
    latent-attention (MLA) layer stores one latent vector, K and V in one."""
    total = 0
    for key, n in counts.items():
        u = units[key]
        a = u.attr
        if u.stateful and "attention" in u.op and "kv_cache" not in u.op and a.get("num_kv_heads"):
            dtype = u.inputs[1].dtype if len(u.inputs) > 1 else u.inputs[0].dtype
            per_head = 1 if is_mla(a) else 2
            total += int(n) * per_head * int(a["num_kv_heads"]) * int(a["head_size"]) * itemsize(dtype)
    return total


def kv_cache_blocks(units: dict[str, Unit], counts: dict[str, int], gib_per_device: float,
                    block_size: int) -> int:
    """KV blocks vLLM allocates with `gib_per_device` of KV memory on every device of the
    group: each device holds its shard of every block, so N devices hold N times the
    blocks of one when the KV heads split (replicated KV heads gain nothing)."""
    per_token = kv_bytes_per_token(units, counts)
    if per_token <= 0:
        raise DoolyInputError("--kv-cache-gib", "the model's inventory has no attention units "
                              "to size a KV cache from")
    blocks = int(gib_per_device * 2**30 // (per_token * block_size))
    if blocks < 2:   # vLLM's block 0 is a placeholder: one block holds no KV
        raise DoolyInputError("--kv-cache-gib", f"{gib_per_device} GiB holds fewer than two blocks of "
                              f"{block_size} tokens ({per_token} bytes per token per device)")
    return blocks
