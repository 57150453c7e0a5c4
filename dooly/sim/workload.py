"""Workloads for the serving simulator: requests with an arrival time and token lengths,
read from ShareGPT JSON or CSV traces, or drawn synthetically, with seeded arrivals."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dooly.errors import DoolyInputError

# ShareGPT text is not tokenized here; ~1.3 tokens per whitespace word is the usual
# rule of thumb for BPE tokenizers on English chat text.
TOKENS_PER_WORD = 1.3
ARRIVALS = ("poisson", "gamma", "trace")
LENGTH_KINDS = ("fixed", "uniform", "lognormal")


@dataclass(frozen=True)
class Request:
    rid: int
    arrival_s: float
    prompt_len: int
    output_len: int

    def __post_init__(self):
        if not math.isfinite(self.arrival_s) or self.arrival_s < 0:
            raise ValueError(f"arrival_s must be finite and >= 0, got {self.arrival_s}")
        if self.prompt_len < 1:
            raise ValueError(f"prompt_len must be >= 1, got {self.prompt_len}")
        if self.output_len < 1:
            raise ValueError(f"output_len must be >= 1, got {self.output_len}")


@dataclass(frozen=True)
class LengthDist:
    """Token-length distribution for synthetic requests. `a`, `b` mean: fixed -> a;
    uniform -> integers in [a, b]; lognormal -> mean a, sigma b of the underlying normal."""
    kind: str
    a: float
    b: float = 0.0

    def __post_init__(self):
        if self.kind not in LENGTH_KINDS:
            raise ValueError(f"kind must be one of {LENGTH_KINDS}, got {self.kind!r}")
        if self.a < 1:
            raise ValueError(f"a must be >= 1, got {self.a}")
        if self.kind == "uniform" and self.b < self.a:
            raise ValueError(f"b must be >= a for uniform, got {self.b} < {self.a}")
        if self.kind == "lognormal" and self.b < 0:
            raise ValueError(f"b (sigma) must be >= 0, got {self.b}")

    @classmethod
    def parse(cls, text: str) -> "LengthDist":
        """'512', 'fixed:512', 'uniform:64,1024', 'lognormal:512,0.8'."""
        kind, _, rest = text.partition(":") if ":" in text else ("fixed", "", text)
        nums = [float(x) for x in rest.split(",") if x.strip()]
        if not nums or len(nums) > 2:
            raise ValueError(f"length spec {text!r}: expected KIND:A[,B]")
        b = nums[1] if len(nums) > 1 else (0.5 if kind == "lognormal" else 0.0)
        return cls(kind, nums[0], b)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "fixed":
            out = np.full(n, round(self.a))
        elif self.kind == "uniform":
            out = rng.integers(int(self.a), int(self.b) + 1, size=n)
        else:  # mean-preserving: E[exp(N(mu, s^2))] = exp(mu + s^2/2)
            mu = math.log(self.a) - self.b ** 2 / 2
            out = np.rint(rng.lognormal(mu, self.b, size=n))
        return np.maximum(out, 1).astype(np.int64)


@dataclass(frozen=True)
class WorkloadSpec:
    source: str = "synthetic"           # a .json (ShareGPT) / .csv (trace) file, or "synthetic"
    rate: float | None = None           # requests/s, for poisson/gamma arrivals
    arrival: str = "poisson"
    cv: float = 1.0                     # gamma inter-arrival coefficient of variation
    seed: int = 0
    num_requests: int | None = None
    max_model_len: int | None = None
    prompt: LengthDist = LengthDist("lognormal", 512, 0.8)
    output: LengthDist = LengthDist("lognormal", 128, 0.8)

    def __post_init__(self):
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {ARRIVALS}, got {self.arrival!r}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if not self.cv > 0:
            raise ValueError(f"cv must be > 0, got {self.cv}")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")


def arrival_times(n: int, rate: float, kind: str, cv: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Open-loop arrivals; the first request arrives at t=0, as a benchmark client sends it
    before its first sleep."""
    if kind == "poisson":
        gaps = rng.exponential(1.0 / rate, size=n)
    else:  # gamma with mean 1/rate and the given cv: shape 1/cv^2
        shape = 1.0 / cv ** 2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n)
    return np.concatenate(([0.0], np.cumsum(gaps[:-1])))


def _length(path: Path, raw: object, field: str, where: str) -> int:
    """A token count from a file: a non-negative integer (12 and 12.0 are fine, 12.5 not)."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise DoolyInputError(path, f"{where}: not a number: {raw!r}", field=field) from None
    if isinstance(raw, bool) or not value.is_integer():
        raise DoolyInputError(path, f"{where}: not an integer: {raw!r}", field=field)
    if value < 0:
        raise DoolyInputError(path, f"{where}: negative length {raw!r}", field=field)
    return int(value)


def load_sharegpt(path: str | Path) -> list[tuple[int, int]]:
    """(prompt_len, output_len) per conversation: the first human turn and the reply that
    follows it. Entries with explicit integer `prompt_len`/`output_len` keys use those."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DoolyInputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DoolyInputError(path, f"cannot read: {err}") from None
    except json.JSONDecodeError as err:
        raise DoolyInputError(path, f"invalid JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(data, list):
        raise DoolyInputError(path, "expected a JSON list of conversations")
    out = []
    for i, entry in enumerate(data):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            raise DoolyInputError(path, f"{where}: expected an object")
        if "prompt_len" in entry or "output_len" in entry:
            for key in ("prompt_len", "output_len"):
                if key not in entry:
                    raise DoolyInputError(path, f"{where}: missing", field=key)
            out.append((_length(path, entry["prompt_len"], "prompt_len", where),
                        _length(path, entry["output_len"], "output_len", where)))
            continue
        turns = entry.get("conversations")
        if not isinstance(turns, list):
            raise DoolyInputError(path, f"{where}: missing or not a list", field="conversations")
        texts = []
        for turn in turns:
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise DoolyInputError(path, f"{where}: turn without a string 'value'",
                                      field="conversations")
            texts.append(turn["value"])
        if len(texts) < 2:  # no reply to measure, as vLLM's ShareGPT sampler skips them
            continue
        out.append(tuple(int(len(t.split()) * TOKENS_PER_WORD + 0.5) for t in texts[:2]))
    return out


def load_trace_csv(path: str | Path) -> list[tuple[float | None, int, int]]:
    """(arrived_at or None, prefill, decode) per row; `arrived_at` is optional."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            for col in ("num_prefill_tokens", "num_decode_tokens"):
                if col not in header:
                    raise DoolyInputError(path, f"missing column (header: {header})", field=col)
            timed = "arrived_at" in header
            rows = []
            for line, row in enumerate(reader, start=2):
                where = f"row {line}"
                t = None
                if timed:
                    try:
                        t = float(row["arrived_at"])
                    except (TypeError, ValueError):
                        t = math.nan
                    if not math.isfinite(t) or t < 0:
                        raise DoolyInputError(path, f"{where}: bad time {row['arrived_at']!r}",
                                              field="arrived_at")
                rows.append((t, _length(path, row["num_prefill_tokens"], "num_prefill_tokens",
                                        where),
                             _length(path, row["num_decode_tokens"], "num_decode_tokens", where)))
    except FileNotFoundError:
        raise DoolyInputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DoolyInputError(path, f"cannot read: {err}") from None
    return rows


def build_workload(spec: WorkloadSpec) -> list[Request]:
    """Requests sorted by arrival. File workloads keep file order and take the first
    `num_requests`; lengths are clamped to at least 1 and to `max_model_len`."""
    rng = np.random.default_rng(spec.seed)
    times = None
    if spec.source == "synthetic":
        n = spec.num_requests or 1000
        if spec.arrival == "trace":
            raise DoolyInputError("synthetic", "has no arrival times; use poisson or gamma",
                                  field="arrival")
        lengths = list(zip(spec.prompt.sample(n, rng).tolist(),
                           spec.output.sample(n, rng).tolist()))
    else:
        path = Path(spec.source)
        if path.suffix.lower() == ".csv":
            rows = load_trace_csv(path)[: spec.num_requests]
            lengths = [(p, d) for _, p, d in rows]
            if not rows:
                raise DoolyInputError(path, "no requests in file")
            if spec.arrival == "trace":
                if rows[0][0] is None:
                    raise DoolyInputError(path, "no arrival times in this trace; use "
                                          "--arrival poisson|gamma --rate R", field="arrived_at")
                times = np.array([t for t, _, _ in rows], dtype=float)
                times -= times.min()  # the trace's clock starts at its first request
        else:
            if spec.arrival == "trace":
                raise DoolyInputError(path, "ShareGPT files have no arrival times; use "
                                      "--arrival poisson|gamma --rate R", field="arrival")
            lengths = load_sharegpt(path)[: spec.num_requests]
        if not lengths:
            raise DoolyInputError(path, "no requests in file")
    if times is None:
        if spec.rate is None:
            raise DoolyInputError(spec.source, f"{spec.arrival} arrivals need a rate",
                                  field="rate")
        times = arrival_times(len(lengths), spec.rate, spec.arrival, spec.cv, rng)
    order = np.argsort(times, kind="stable")
    cap = spec.max_model_len
    out = []
    for i in order.tolist():  # rid is the position in the source, not in arrival order
        p, o = max(1, lengths[i][0]), max(1, lengths[i][1])
        if cap is not None:  # leave room for at least one generated token
            p = min(p, cap - 1)
            o = min(o, cap - p)
        out.append(Request(i, float(times[i]), p, o))
    return out
