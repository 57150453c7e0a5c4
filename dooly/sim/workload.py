"""Workloads for the serving simulator: requests with an arrival time and token lengths,
read from ShareGPT JSON or CSV traces (dooly.sim.trace_files), or drawn synthetically, with
seeded arrivals.

Requests pass vLLM's admission rules before they reach the scheduler (`admit`): vLLM
rejects an empty prompt, max_tokens < 1 and a prompt that leaves no room for one output
token within max_model_len (the server answers 400), and stops an output at
max_model_len. Rejected requests are counted and listed, never simulated."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dooly.errors import DoolyInputError
from dooly.sim.trace_files import MAX_LENGTH, load_sharegpt, load_trace_csv

# Per run: 100,000 requests (128-token outputs, 20 req/s) took 100 s and 1.3 GB here;
# memory grows with every token's time, so 10**9 would never end.
MAX_REQUESTS = 200_000
MAX_SIGMA = 10.0           # lognormal: exp(10) already spans 22,000x
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
        if not 1 <= self.a <= MAX_LENGTH:  # also refuses nan
            raise ValueError(f"a must be from 1 to {MAX_LENGTH}, got {self.a}")
        if self.kind == "uniform" and not self.a <= self.b <= MAX_LENGTH:
            raise ValueError(f"b must be from a to {MAX_LENGTH} for uniform, got {self.b}")
        if self.kind == "lognormal" and not 0 <= self.b <= MAX_SIGMA:
            raise ValueError(f"b (sigma) must be from 0 to {MAX_SIGMA}, got {self.b}")

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
        return np.clip(out, 1, MAX_LENGTH).astype(np.int64)


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
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be finite and > 0, got {self.rate}")
        if not 1e-3 <= self.cv <= 1e3:
            raise ValueError(f"cv must be from 0.001 to 1000, got {self.cv}")
        if self.num_requests is not None and not 1 <= self.num_requests <= MAX_REQUESTS:
            raise ValueError(f"num_requests must be from 1 to {MAX_REQUESTS}, got {self.num_requests}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class Rejected:
    """A request vLLM would refuse (the server answers 400): never simulated."""
    rid: int
    arrival_s: float
    prompt_len: int
    output_len: int
    reason: str          # one of REJECT_REASONS


REJECT_REASONS = {"empty_prompt": "empty prompt",
                  "zero_output": "output length 0 (vLLM's max_tokens must be >= 1)",
                  "prompt_too_long": "prompt >= max_model_len"}


@dataclass(frozen=True)
class Workload:
    requests: list[Request]      # admitted, sorted by arrival
    rejected: list[Rejected]     # sorted by arrival
    length_capped: int = 0       # outputs vLLM stops at max_model_len


def admit(prompt_len: int, output_len: int, max_model_len: int | None) -> tuple[int, str]:
    """vLLM's admission of a request: (the output length it generates, "") or (0, the
    key of REJECT_REASONS). vLLM rejects an empty prompt, max_tokens < 1 (SamplingParams)
    and a prompt of max_model_len tokens or more (its input processor: the prompt plus at
    least one output token must fit); it stops a longer output at max_model_len."""
    limit = max_model_len or MAX_LENGTH
    if prompt_len < 1:
        return 0, "empty_prompt"
    if output_len < 1:
        return 0, "zero_output"
    if prompt_len >= limit:
        return 0, "prompt_too_long"
    return min(output_len, limit - prompt_len), ""


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


def _file_lengths(spec: WorkloadSpec) -> tuple[list[tuple[int, int]], np.ndarray | None]:
    """(prompt, output) per request of a file workload, and its arrival times when the
    spec replays the trace's own clock."""
    path = Path(spec.source)
    cap = spec.num_requests or MAX_REQUESTS + 1
    times = None
    if path.suffix.lower() == ".csv":
        rows = load_trace_csv(path, cap)
        lengths = [(p, d) for _, p, d in rows]
        if rows and spec.arrival == "trace":
            if rows[0][0] is None:
                raise DoolyInputError(path, "no arrival times in this trace; use "
                                      "--arrival poisson|gamma --rate R", field="arrived_at")
            times = np.array([t for t, _, _ in rows], dtype=float)
            times -= times.min()  # the trace's clock starts at its first request
    else:
        if spec.arrival == "trace":
            raise DoolyInputError(path, "ShareGPT files have no arrival times; use "
                                  "--arrival poisson|gamma --rate R", field="arrival")
        lengths = load_sharegpt(path)[:cap]
    if not lengths:
        raise DoolyInputError(path, "no requests in file")
    if len(lengths) > MAX_REQUESTS:
        raise DoolyInputError(path, f"more than {MAX_REQUESTS:,} requests; simulate the first N "
                              f"with --num-requests N (at most {MAX_REQUESTS:,})")
    return lengths, times


def load_workload(spec: WorkloadSpec) -> Workload:
    """The spec's requests, sorted by arrival, split by vLLM's admission rules (`admit`).
    File workloads keep file order and take the first `num_requests`; arrival times are
    drawn for every request, rejected ones included, as a client sends them all."""
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
        lengths, times = _file_lengths(spec)
    if times is None:
        if spec.rate is None:
            raise DoolyInputError(spec.source, f"{spec.arrival} arrivals need a rate",
                                  field="rate")
        times = arrival_times(len(lengths), spec.rate, spec.arrival, spec.cv, rng)
    order = np.argsort(times, kind="stable")
    admitted, rejected, capped = [], [], 0
    for i in order.tolist():  # rid is the position in the source, not in arrival order
        p, o = lengths[i]
        out, why = admit(p, o, spec.max_model_len)
        if why:
            rejected.append(Rejected(i, float(times[i]), p, o, why))
            continue
        capped += out < o
        admitted.append(Request(i, float(times[i]), p, out))
    return Workload(admitted, rejected, capped)


def build_workload(spec: WorkloadSpec) -> list[Request]:
    """The requests vLLM admits, sorted by arrival (`load_workload` also lists the rest)."""
    return load_workload(spec).requests
