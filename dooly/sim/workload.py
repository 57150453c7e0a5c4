"""Workloads for the serving simulator: requests with an arrival time and token lengths,
read from ShareGPT JSON or CSV traces, or drawn synthetically, with seeded arrivals.

Requests pass vLLM's admission rules before they reach the scheduler (`admit`): vLLM
rejects an empty prompt, max_tokens < 1 and a prompt that leaves no room for one output
token within max_model_len (the server answers 400), and stops an output at
max_model_len. Rejected requests are counted and listed, never simulated."""
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
# Per run: 100,000 requests (128-token outputs, 20 req/s) took 100 s and 1.3 GB here;
# memory grows with every token's time, so 10**9 would never end.
MAX_REQUESTS = 200_000
MAX_LENGTH = 1 << 27       # tokens: config.py's bound on any model's length
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


def _length(path: Path, raw: object, field: str, where: str) -> int:
    """A token count from a file: a non-negative integer (12 and 12.0 are fine, 12.5 not)."""
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past 1e308
        raise DoolyInputError(path, f"{where}: not a number: {_short(raw)}", field=field) from None
    if isinstance(raw, bool) or not value.is_integer():
        raise DoolyInputError(path, f"{where}: not an integer: {_short(raw)}", field=field)
    if value < 0:
        raise DoolyInputError(path, f"{where}: negative length {_short(raw)}", field=field)
    return int(min(value, 2 * MAX_LENGTH))  # any longer is as impossible a request


def _short(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


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
    except (ValueError, RecursionError) as err:  # a 5,000-digit number, deep nesting
        raise DoolyInputError(path, f"invalid JSON: {str(err)[:80]}") from None
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


def load_trace_csv(path: str | Path, limit: int | None = None) -> list[tuple[float | None, int, int]]:
    """(arrived_at or None, prefill, decode) per row; `arrived_at` is optional. Reads at
    most `limit` rows."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            for col in ("num_prefill_tokens", "num_decode_tokens"):
                if col not in header:
                    raise DoolyInputError(path, f"missing column (header: {_short(header)})", field=col)
            timed = "arrived_at" in header
            rows = []
            for line, row in enumerate(reader, start=2):
                if limit is not None and len(rows) >= limit:
                    break
                rows.append(_trace_row(path, row, f"row {line}", timed))
    except FileNotFoundError:
        raise DoolyInputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DoolyInputError(path, f"cannot read: {err}") from None
    return rows


def _trace_row(path: Path, row: dict, where: str, timed: bool) -> tuple[float | None, int, int]:
    t = None
    if timed:
        try:
            t = float(row["arrived_at"])
        except (TypeError, ValueError):
            t = math.nan
        if not math.isfinite(t) or t < 0:
            raise DoolyInputError(path, f"{where}: bad time {_short(row['arrived_at'])}",
                                  field="arrived_at")
    return (t, _length(path, row["num_prefill_tokens"], "num_prefill_tokens", where),
            _length(path, row["num_decode_tokens"], "num_decode_tokens", where))


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
