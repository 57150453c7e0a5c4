"""Search candidates: a model, an environment and serving settings, one combination of
the values `--vary KNOB=V1,V2` lists; and the `vllm serve` command line that deploys one.

Each knob maps to the `vllm serve` flag that sets it (SERVE_FLAGS); `--vary` takes those
the simulator models (KNOBS). A knob a user may name that it does not model yet is refused
with what is missing (NOT_MODELLED); modelling one is adding it to KNOBS. A candidate's
`tp` is its device count (goodput is ranked per device) and is passed to the predictor it
loads (`dooly.search`)."""
from __future__ import annotations

import dataclasses
import itertools
import shlex
from dataclasses import dataclass

from dooly.sim.scheduler import SchedulerConfig

# knob -> the `vllm serve` flag that sets it
SERVE_FLAGS = {
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "max_num_seqs": "--max-num-seqs",
    "long_prefill_token_threshold": "--long-prefill-token-threshold",
    "block_size": "--block-size",
    "num_blocks": "--num-gpu-blocks-override",
    "max_model_len": "--max-model-len",
    "env": "--attention-backend",   # an environment of the DB: its attention backend
    "tp": "--tensor-parallel-size",
}
# what `--vary` takes (a knob leaves NOT_MODELLED by being listed here)
KNOBS = ("max_num_batched_tokens", "max_num_seqs", "long_prefill_token_threshold",
         "block_size", "num_blocks", "env",
         "tp")   # the predictor's shard units and collectives (`dooly sweep --tp N`)
NOT_MODELLED = {k: v for k, v in {
    "tp": "tensor parallelism", "pp": "pipeline parallelism", "dp": "data parallelism",
    "quantization": "quantization", "dtype": "dtype", "kv_cache_dtype": "KV-cache dtype",
    "max_model_len": "a max_model_len per candidate (the workload is admitted once)",
}.items() if k not in KNOBS}
ALIASES = {"tensor_parallel_size": "tp", "pipeline_parallel_size": "pp",
           "data_parallel_size": "dp", "num_gpu_blocks_override": "num_blocks"}
LABELS = {"max_num_batched_tokens": "tokens", "max_num_seqs": "seqs", "block_size": "block",
          "long_prefill_token_threshold": "long_prefill", "num_blocks": "kv_blocks",
          "max_model_len": "max_len", "env": "env", "tp": "tp"}
SCHEDULER_KNOBS = tuple(f.name for f in dataclasses.fields(SchedulerConfig))
MAX_VALUE = 1 << 30
MAX_TP = 512   # dooly.parallel's bound
MAX_CANDIDATES = 10_000


def _int(knob: str, text: str) -> int:
    lo = {"long_prefill_token_threshold": 0, "num_blocks": 2}.get(knob, 1)   # vLLM's block 0 holds no KV
    hi = MAX_TP if knob == "tp" else MAX_VALUE
    digits = text.lstrip("+")
    if not (digits.isdigit() and len(digits) <= 10 and lo <= int(digits) <= hi):
        raise ValueError(f"{knob}: expected integers from {lo} to {hi:,}, got {text!r}")
    return int(digits)


def parse_vary(specs) -> dict[str, tuple]:
    """['max_num_seqs=64,256', 'env=KEY1,KEY2'] -> {knob: values}; ValueError names the spec."""
    out: dict[str, tuple] = {}
    for spec in specs:
        name, eq, rest = spec.partition("=")
        knob = name.strip().lower().replace("-", "_")
        knob = ALIASES.get(knob, knob)
        if not eq or not knob:
            raise ValueError(f"{spec!r}: expected KNOB=V1,V2,...")
        if knob in NOT_MODELLED:
            raise ValueError(f"{spec!r}: {knob} ({NOT_MODELLED[knob]}) is not modelled yet")
        if knob not in KNOBS:
            raise ValueError(f"{spec!r}: unknown knob {knob!r} (modelled: {', '.join(KNOBS)})")
        if knob in out:
            raise ValueError(f"{spec!r}: {knob} is varied twice")
        texts = [v.strip() for v in rest.split(",")]
        if not all(texts):
            raise ValueError(f"{spec!r}: an empty value")
        values = tuple(texts) if knob == "env" else tuple(_int(knob, v) for v in texts)
        if len(set(values)) < len(values):
            raise ValueError(f"{spec!r}: a value is listed twice")
        out[knob] = values
    return out


@dataclass(frozen=True)
class Candidate:
    config: str                                  # the model's config.json
    model: str                                   # its name (what `vllm serve` is given)
    env: str | None                              # environment key (None: the DB's default)
    settings: tuple[tuple[str, object], ...]     # every knob that is set, varied or fixed
    varied: tuple[str, ...] = ()                 # the knobs that differ between candidates

    def __post_init__(self):
        for knob, _ in self.settings:
            if knob not in SERVE_FLAGS:
                raise ValueError(f"settings: unknown knob {knob!r}")

    def get(self, knob: str, default=None):
        return dict(self.settings).get(knob, default)

    @property
    def devices(self) -> int:
        return int(self.get("tp", 1))

    @property
    def label(self) -> str:
        parts = [self.model.rsplit("/", 1)[-1]]
        parts += [f"{LABELS.get(k, k)}={self.get(k)}" for k in self.varied if k != "env"]
        if "env" in self.varied:
            parts.append(f"env={str(self.env)[:8]}")
        return " ".join(parts)

    def scheduler(self, base: SchedulerConfig) -> SchedulerConfig:
        return dataclasses.replace(base, **{k: v for k, v in self.settings if k in SCHEDULER_KNOBS})


def make_candidates(models: list[tuple[str, str]], varied: dict[str, tuple], fixed: dict,
                    env: str | None = None) -> list[Candidate]:
    """Every combination: models [(config path, name)] x the varied knobs' values; `fixed`
    holds the settings given once (knob -> value)."""
    names = [k for k in varied if k != "env"]
    combos = list(itertools.product(*(varied[k] for k in names))) or [()]
    envs = varied.get("env", (env,))
    total = len(models) * len(combos) * len(envs)
    if total > MAX_CANDIDATES:
        raise ValueError(f"{total:,} candidates; at most {MAX_CANDIDATES:,}")
    out = []
    for (config, name), e, combo in itertools.product(models, envs, combos):
        settings = {k: v for k, v in fixed.items() if k not in varied}
        settings.update(zip(names, combo))
        out.append(Candidate(config, name, e, tuple(sorted(settings.items())),
                             tuple(varied)))
    return out


def deploy_flags(cand: Candidate, shown, backend: str | None = None) -> list[str]:
    """The `vllm serve` flags of the knobs in `shown` (varied or given), in SERVE_FLAGS
    order; `env` is given as its attention `backend`."""
    flags = []
    for knob, flag in SERVE_FLAGS.items():
        value = backend if knob == "env" else cand.get(knob)
        if knob in shown and value is not None:
            flags += [flag, str(value)]
    return flags


def deploy_script(model: str, flags: list[str], comments: list[str]) -> str:
    """A bash script that runs `vllm serve` for the model (MODEL overrides its path) with
    these flags; extra arguments pass through."""
    lines = ["#!/usr/bin/env bash"] + [f"# {c}" for c in comments]
    lines += ["set -euo pipefail", f"MODEL=\"${{MODEL:-{model}}}\""]
    pairs = [" ".join(shlex.quote(f) for f in flags[i:i + 2]) for i in range(0, len(flags), 2)]
    lines.append(" \\\n    ".join(['exec vllm serve "$MODEL"', *pairs, '"$@"']))
    return "\n".join(lines) + "\n"
