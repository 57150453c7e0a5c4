"""The host's drift since a sweep, measured on the sweep's own units.

A shared host (a cloud VM) does not run at one speed: on the 2-core AMX VM this project
is measured on, the same Llama-3.2-1B GEMM units ran 13-20% slower at 512 tokens in the
afternoon than in the morning's sweep, while the same units at one token (memory-bound)
had not moved, and a small reference GEMM (dooly.hostspeed) moved 8%. A sweep is then
right about the host it saw and wrong about the host the engine runs on now, in a way
that depends on the work's size. No fixed probe tracks that; the DB's own points do.

`measure_drift` times again, now, a few points the sweep stored for the model: its
heaviest token-driven units (the GEMMs, mostly) at anchor token counts spread over the
measured range, with the sweep's own runners and timer. `Drift` holds the median
now/stored ratio per anchor and interpolates it in log2(tokens): a prediction for a step
of T tokens scales the units by `Drift.scale(T)` (`Predictor.drift`; one-token steps are
memory-bound and scaled by the square root of their factor only). It is data: stored, shown
and replayed as JSON, never code.

One re-timing reads the host of that minute. To score runs that took several minutes,
`bracket` joins one taken before them and one after."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import cached_property

ANCHOR_TOKENS = (1, 16, 64, 256, 1024)
ANCHOR_UNITS = 3        # the model's heaviest token-driven units re-timed at each anchor
# Steps of this many tokens or fewer stream their weights from memory: their re-timing
# scales a prediction only by its MEMORY_BOUND_WEIGHT power (`Drift.scale`), a shrinkage
# towards 1.0, since it reads the host's memory speed and as much again of noise.
MEMORY_BOUND_TOKENS = 1
MEMORY_BOUND_WEIGHT = 0.5


@dataclass(frozen=True)
class Drift:
    tokens: tuple[int, ...]      # anchor token counts, ascending
    factors: tuple[float, ...]   # now / stored at each anchor (1.0: no drift)
    points: int = 0              # (unit, point) pairs re-timed

    def __post_init__(self):
        if not self.tokens or len(self.tokens) != len(self.factors):
            raise ValueError("factors: need one per anchor token count, and at least one")
        if list(self.tokens) != sorted(set(self.tokens)) or self.tokens[0] < 1:
            raise ValueError(f"tokens: expected distinct ascending counts >= 1, got {self.tokens}")
        if not all(f > 0 and math.isfinite(f) for f in self.factors):
            raise ValueError(f"factors: expected positive finite ratios, got {self.factors}")

    def at(self, tokens: float) -> float:
        """The factor for a step of `tokens` tokens: linear in log2(tokens) between
        anchors, the end anchors' factor beyond them."""
        x = math.log2(max(float(tokens), 1.0))
        xs = [math.log2(t) for t in self.tokens]
        if x <= xs[0]:
            return self.factors[0]
        for (x0, f0), (x1, f1) in zip(zip(xs, self.factors), zip(xs[1:], self.factors[1:])):
            if x <= x1:
                return f0 + (f1 - f0) * (x - x0) / (x1 - x0)
        return self.factors[-1]

    def scale(self, tokens: float) -> float:
        """The factor a prediction for a step of `tokens` tokens is scaled by: `at`, with
        the memory-bound anchors shrunk halfway to 1.0 in log scale (the square root of
        their factor). A one-token step's GEMMs read their weights from memory, at the
        speed of memory and of the caches' and pages' luck: on the AMD host of 2026-12-05
        Llama-3.2-1B's one-token points re-timed at 0.81 and 0.70 of the sweep around its
        real runs and at 1.30 forty minutes later, while inside the engine its one-token
        GEMMs ran at 1.02x the stored units; on 2026-12-07 the same points re-timed at 1.16
        and 1.36 around real one-token steps 1.39x the stored units. Replayed over the
        twenty saved runs x12-x31 (`bench/results/2026-12-07i/README.md`), the worst decode
        set averaged 15.3% held at 1.0, 14.4% fully scaled and 13.6% at the square root;
        the square root, chosen on x12-x21, took x22-x31 from 17.0 to 15.0%."""
        return self._applied.at(tokens)

    @cached_property
    def _applied(self) -> "Drift":
        # built once: `scale` runs for every step a simulation predicts
        applied = tuple(f ** MEMORY_BOUND_WEIGHT if t <= MEMORY_BOUND_TOKENS else f
                        for t, f in zip(self.tokens, self.factors))
        return Drift(self.tokens, applied, self.points)

    def to_json(self) -> dict:
        return {"tokens": list(self.tokens), "factors": list(self.factors), "points": self.points}

    @classmethod
    def from_json(cls, obj: dict) -> "Drift":
        return cls(tuple(int(t) for t in obj["tokens"]), tuple(float(f) for f in obj["factors"]),
                   int(obj.get("points", 0)))


def bracket(before: Drift | None, after: Drift | None) -> Drift | None:
    """The drift over a window re-timed at both ends (before and after a model's real runs):
    the geometric mean of the two, at the later one's anchors. On 2026-12-03 one re-timing
    taken right after Qwen3-0.6B's real runs caught the host in a fast minute and read
    0.36-0.62, and scaling by it took that model's per-set errors from 6-23% to 36-50%."""
    if before is None or after is None:
        return after if before is None else before
    return Drift(after.tokens, tuple(math.sqrt(f * before.at(t)) for t, f in zip(after.tokens, after.factors)),
                 before.points + after.points)


def disagreement(before: Drift, after: Drift) -> float:
    """The largest factor between the two re-timings of a window at any anchor (1.0: they
    agree): how far the host moved while the window's runs went on."""
    return max(max(f / before.at(t), before.at(t) / f) for t, f in zip(after.tokens, after.factors))


def anchors(store, env_key: str, units: dict, counts: dict[str, int]) -> list[tuple]:
    """(unit, stored measurement) pairs to re-time: the ANCHOR_UNITS token-driven units
    with the most stored time per step at their largest point, each at the stored point
    nearest every anchor token count."""
    rows: dict[str, list] = {}
    for key, unit in units.items():
        if unit.driver == "tokens" and not unit.stateful and counts.get(key):
            ms = [m for m in store.measurements(unit_key=key, env_key=env_key) if "T" in m.point]
            if ms:
                rows[key] = sorted(ms, key=lambda m: m.point["T"])
    heavy = sorted(rows, key=lambda k: -counts[k] * rows[k][-1].median_ms)[:ANCHOR_UNITS]
    out = []
    for key in heavy:
        for t in ANCHOR_TOKENS:
            m = min(rows[key], key=lambda m: abs(math.log2(m.point["T"]) - math.log2(t)))
            if (units[key], m) not in out:
                out.append((units[key], m))
    return out


def measure_drift(store, env, units: dict, counts: dict[str, int], log=None) -> Drift | None:
    """Re-time the model's anchor points now (dooly.profile.sweep's runners and timer, in
    this process: `env` must be this host's) and summarize; None without anchors."""
    from dooly.profile.grid import GridLimits
    from dooly.profile.sweep_units import Runners
    from dooly.profile.timing import timer_for
    pairs = anchors(store, env.key, units, counts)
    if not pairs:
        return None
    import torch
    runners, timer = Runners(env, GridLimits()), timer_for(env.device_kind)
    by_t: dict[int, list[float]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(env.threads)   # as the sweep timed them
    try:
        # two passes, each point keeping its faster median: the sweep stored its points
        # that way (its recheck pass), and a single pass reads high against them
        first = [timer(runners.prepare(unit, m.point)).median_ms for unit, m in pairs]
        for (unit, m), a in zip(pairs, first):
            now = min(a, timer(runners.prepare(unit, m.point)).median_ms)
            by_t.setdefault(int(m.point["T"]), []).append(now / m.median_ms)
            if log:
                log(f"  {unit.op} at T={m.point['T']}: stored {m.median_ms:.3f} ms, now {now:.3f} ms")
    finally:
        torch.set_num_threads(threads)
    ts = sorted(by_t)
    return Drift(tuple(ts), tuple(statistics.median(by_t[t]) for t in ts), len(pairs))
