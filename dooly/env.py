"""Environment and Measurement: what a latency is measured on, and one measured point;
with the facts of a device every room shares: bytes per element of a dtype, and the cache
a cold measurement must overflow."""
from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field

DEVICE_KINDS = ("cpu", "cuda")
EXECUTIONS = ("eager", "compiled", "cudagraph", "imported")
CACHE_STATES = ("cold", "cold-weights", "warm")
# dtype spellings that are not torch attribute names (vLLM's KV-cache dtypes)
_DTYPE_ALIASES = {"fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


_ITEMSIZES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float64": 8,
              "double": 8, "int8": 1, "uint8": 1, "bool": 1, "int16": 2, "short": 2,
              "int32": 4, "int": 4, "int64": 8, "long": 8, "float8_e4m3fn": 1, "float8_e5m2": 1}


@functools.lru_cache(maxsize=64)
def itemsize(dtype: str) -> int:
    """Bytes per element of a dtype named as torch names it ("bfloat16", "torch.half"),
    from torch.dtype.itemsize."""
    name = str(dtype).removeprefix("torch.")
    if name in _ITEMSIZES:   # the common ones without importing torch (a cached analysis)
        return _ITEMSIZES[name]
    import torch  # here, so that importing the environment types stays cheap
    dt = getattr(torch, _DTYPE_ALIASES.get(name, name), None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"dtype: no itemsize known for {dtype!r}")
    return dt.itemsize


@functools.lru_cache(maxsize=None)
def cache_bytes(device: str) -> int:
    """The last-level cache a cold timing must overflow: the CPU's L3, the GPU's L2."""
    import torch
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return int(getattr(props, "L2_cache_size", 0)) or 64 * 2**20
    try:
        text = open("/sys/devices/system/cpu/cpu0/cache/index3/size").read().strip()
        return int(text[:-1]) * {"K": 2**10, "M": 2**20}.get(text[-1], 1)
    except (OSError, ValueError):
        return 32 * 2**20


# How many last-level caches a cold rotation spans. A CPU's L3 need not evict in LRU
# order (AMD Zen's is a victim cache of the cores' L2s): on a 32 MiB-L3 Zen 4 VM, timed
# with the sweep's runners, Llama-3.2-1B's 64 MiB gate_up weight re-read on every call (one
# set spans twice the cache) took 0.72x the time it took rotated with a second copy, and its
# 32 MiB down_proj 0.81x over two copies against four; over four caches' span the rotation
# reads as a real forward does, which streams every other layer's weights in between. The
# CUDA timer's L2 flush writes twice the L2.
SPAN_CACHES = {"cpu": 4, "cuda": 2}


def cold_span(device: str) -> int:
    """Bytes a cold rotation spans on this device (`SPAN_CACHES` last-level caches)."""
    return SPAN_CACHES.get(device.split(":")[0], 2) * cache_bytes(device)


def copies_to_span(nbytes: int, device: str, most: int) -> int:
    """How many distinct sets of `nbytes` a cold timing loop cycles through (weights, KV
    blocks; at most `most`) so that together they span `cold_span(device)`: a set is
    never still cached when its turn comes again."""
    return max(1, min(most, -(-cold_span(device) // max(1, nbytes))))


@dataclass(frozen=True)
class Environment:
    device_name: str
    device_kind: str
    engine: str
    engine_version: str
    backend: str
    dtype: str
    kv_dtype: str = "auto"
    block_size: int = 16
    torch_version: str = ""
    execution: str = "eager"
    threads: int = 0
    # "cold": each timed call reads weights and KV-cache blocks not left in cache by the
    # last call (a real forward streams every layer's weights and every sequence's KV),
    # with cache-hot activations; "cold-weights" (DBs from before): the weights only;
    # "warm": the same inputs on every call
    cache: str = "cold"

    def __post_init__(self):
        if self.device_kind not in DEVICE_KINDS:
            raise ValueError(f"device_kind: expected one of {DEVICE_KINDS}, got {self.device_kind!r}")
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution: expected one of {EXECUTIONS}, got {self.execution!r}")
        if self.cache not in CACHE_STATES:
            raise ValueError(f"cache: expected one of {CACHE_STATES}, got {self.cache!r}")
        if not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ValueError(f"block_size: expected a positive int, got {self.block_size!r}")
        for name in ("device_name", "engine", "dtype"):
            if not getattr(self, name):
                raise ValueError(f"{name}: must not be empty")

    @property
    def key(self) -> str:
        fields = asdict(self)
        if fields["cache"] == "warm":  # environments written before the field keep their key
            del fields["cache"]
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "Environment":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in obj.items() if k in known})

    def label(self) -> str:
        return f"{self.device_name}/{self.engine}-{self.engine_version}/{self.backend}/{self.dtype}"


# what a point may hold: a DB row is data, so a value the fits would turn into a number
# some other way ("2**1000", 1.5, true) is refused when the row is read
_POINT_FORMS = {"seqs": "a list of [query, context] counts", "graph": "a text label",
                "routing": "a text label"}


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62


def point_problem(point) -> str | None:
    """What is wrong with a measurement's request point, or None (a DB row's is read as data)."""
    if not isinstance(point, dict):
        return "expected a dict of request values"
    for name, value in point.items():
        if not isinstance(name, str) or not _point_value_ok(name, value):
            return (f"{str(name)[:20]!r} must be {_POINT_FORMS.get(name, 'a count')}, "
                    f"got {repr(value)[:40]}")
    return None


def _point_value_ok(name, value) -> bool:
    if name == "seqs":
        return isinstance(value, list) and all(
            isinstance(s, list) and len(s) == 2 and all(_count(x) for x in s) for s in value)
    if name in ("graph", "routing"):   # a CUDA graph size, a MoE distribution (dooly.routing)
        return isinstance(value, str)
    return _count(value)


@dataclass(frozen=True)
class Measurement:
    """Latencies in milliseconds at one request point, e.g. {"T": 128} or
    {"seqs": [[512, 512], [1, 1024]]} for an attention batch of (query, context)."""

    unit_key: str
    env_key: str
    point: dict
    median_ms: float = 0.0
    p10_ms: float = 0.0
    p90_ms: float = 0.0
    mean_ms: float = 0.0
    std_ms: float = 0.0
    samples: int = 0
    outliers: int = 0
    status: str = "ok"
    reason: str = ""
    timestamp: float = field(default_factory=time.time)

    def __post_init__(self):
        if self.status not in ("ok", "failed"):
            raise ValueError(f"status: expected 'ok' or 'failed', got {self.status!r}")
        problem = point_problem(self.point)
        if problem:
            raise ValueError(f"point: {problem}")
        if self.status == "ok" and not self.median_ms >= 0:
            raise ValueError(f"median_ms: expected a non-negative latency, got {self.median_ms!r}")

    @property
    def point_json(self) -> str:
        return json.dumps(self.point, sort_keys=True, separators=(",", ":"))


def host_cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
