"""Environment and Measurement: what a latency is measured on, and one measured point."""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field

DEVICE_KINDS = ("cpu", "cuda")
EXECUTIONS = ("eager", "compiled", "cudagraph", "imported")
CACHE_STATES = ("cold", "cold-weights", "warm")


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
        if not isinstance(self.point, dict):
            raise ValueError("point: expected a dict of request values")
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
