"""What the sweep measures of a unit: its check points when a family covers it, else its
grid, adaptively where the grid is one request axis.

`SweepPolicy.todo(key, unit, grid)` is asked again after every point measured and
answers from the DB alone, so an interrupted sweep resumes where it stopped:

  1. a unit measured beyond its check points has been swept: it is finished when its
     grid is (`full_todo`);
  2. else, when the unit's family has a model trained on other members in this
     environment, its `check_points` are measured first; once they are, the family is
     judged on them (dooly.fit.checks): within the tolerance the unit is family-served
     and done, with its verdict stored beside it (fits row "check:<unit_key>");
     beyond, it is swept in full and becomes a member, training the family;
  3. else it is swept in full.

A full sweep of a one-axis unit (tokens, sequences) is adaptive (dooly.profile.grid.
adaptive_todo): coarse first, then refined where the straight line between neighbours
misses the point between them by more than the tolerance. Attention batches and padded
[B, Q] grids are swept whole."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from dooly.db import point_json as point_key
from dooly.fit.checks import DEFAULT_TOLERANCE_PCT, N_CHECKS, CheckVerdict, judge
from dooly.fit.family_store import load_families, stored_verdicts, verdict_record
from dooly.graph.family import family_key
from dooly.profile.cost import flops_bytes
from dooly.profile.grid import adaptive_todo

# where the check points sit along the grid: low, middle, high (the top of the range is
# where a long prefill spends its time, the bottom where decode steps do, so both are
# checked). One request axis: fractions of the range in log scale, as the grids are
# spaced (a dense linear grid, Vidur's, would otherwise put all three checks above a
# tenth of the largest request and none where decode batches live); other grids
# (attention batches, mixes of shapes): fractions of the grid ordered by work.
CHECK_FRACTIONS = (0.1, 0.5, 0.9)


def work_order(unit, grid: list[dict]) -> list[dict]:
    """The grid by the work its points carry (one-axis grids: by the request value)."""
    if all(len(p) == 1 and not isinstance(next(iter(p.values())), list) for p in grid):
        return sorted(grid, key=lambda p: float(next(iter(p.values()))))
    return sorted(grid, key=lambda p: (sum(flops_bytes(unit, p)), point_key(p)))


def check_points(unit, grid: list[dict], n: int = N_CHECKS) -> list[dict]:
    """`n` points of the grid spread over its range (CHECK_FRACTIONS for n == 3)."""
    pts = work_order(unit, grid)
    if len(pts) <= n:
        return pts
    fracs = CHECK_FRACTIONS if n == len(CHECK_FRACTIONS) else \
        [(i + 0.5) / n for i in range(n)]
    if not (one_axis(pts) and float(next(iter(pts[0].values()))) > 0):
        return [pts[i] for i in sorted({round(f * (len(pts) - 1)) for f in fracs})]
    pos = [math.log(float(next(iter(p.values())))) for p in pts]
    return [pts[i] for i in _nearest_distinct(pos, [pos[0] + f * (pos[-1] - pos[0]) for f in fracs])]


def _nearest_distinct(pos: list[float], targets: list[float]) -> list[int]:
    """For each target in order the index of the nearest position not taken yet (the lower
    one on a tie), so a short grid still yields one point per target."""
    taken: list[int] = []
    for t in targets:
        free = [i for i in range(len(pos)) if i not in taken]
        taken.append(min(free, key=lambda i: (abs(pos[i] - t), i)))
    return sorted(taken)


def heaviest_first(units: dict, lim) -> dict:
    """The units by their work at the grid's largest request, heaviest first: a step
    tolerance weighs a check by the unit's share of its model, read from the units measured
    before it (dooly.profile.shares), so the GEMMs that make most of a step go first."""
    ref = {"tokens": {"T": lim.max_tokens}, "seqs": {"B": lim.max_batch},
           "attention": {"seqs": [[lim.max_tokens, 0]]}}

    def work(unit) -> float:
        try:
            flops, nbytes = flops_bytes(unit, ref[unit.driver])
        except (KeyError, ValueError, TypeError, ZeroDivisionError):  # no such request: last
            return 0.0
        return flops / 1e12 + nbytes / 1e10   # about a CPU's FLOPs per byte
    return dict(sorted(units.items(), key=lambda kv: -work(kv[1])))


def one_axis(grid: list[dict]) -> bool:
    return bool(grid) and all(len(p) == 1 and isinstance(next(iter(p.values())), (int, float))
                              for p in grid)


def full_todo(grid: list[dict], done: dict, tolerance_pct: float, adaptive: bool) -> list[dict]:
    """Grid points still to measure for a full sweep; `done`: point key -> ok latency
    or None (failed)."""
    if adaptive and one_axis(grid):
        pts = sorted(grid, key=lambda p: float(next(iter(p.values()))))
        xs = [float(next(iter(p.values()))) for p in pts]
        measured = {i: done[point_key(p)] for i, p in enumerate(pts) if point_key(p) in done}
        return [pts[i] for i in adaptive_todo(xs, measured, tolerance_pct)]
    return [p for p in grid if point_key(p) not in done]


@dataclass
class SweepPolicy:
    """Check points and adaptive grids for one sweep of one environment."""
    store: object
    env_key: str
    tolerance_pct: float = DEFAULT_TOLERANCE_PCT
    families: bool = True
    adaptive: bool = True
    step_tolerance_pct: float | None = None       # dooly.fit.checks: errors weighed by the unit's share
    engine: str = ""                               # whose inventories the shares read
    verdicts: dict = field(default_factory=dict)   # unit key -> CheckVerdict judged here
    _models: dict = field(default_factory=dict)    # family key -> FittedFamily or None
    _stored: dict | None = None                    # the DB's verdicts, read once

    def __post_init__(self):
        if not (isinstance(self.tolerance_pct, (int, float)) and 0 < self.tolerance_pct < 100):
            raise ValueError(f"tolerance_pct: expected a percentage in (0, 100), got {self.tolerance_pct!r}")
        if self.step_tolerance_pct is not None and not (
                isinstance(self.step_tolerance_pct, (int, float)) and 0 < self.step_tolerance_pct < 100):
            raise ValueError(f"step_tolerance_pct: expected a percentage in (0, 100), got {self.step_tolerance_pct!r}")

    def stored(self, key: str):
        """The unit's stored verdict (read once per sweep: asked after every point)."""
        if self._stored is None:
            self._stored = stored_verdicts(self.store, self.env_key)
        return self._stored.get(key)

    def family(self, unit):
        """The unit's family model trained on the other swept members here, or None."""
        fkey = family_key(unit)
        fam = self._models.get(fkey)
        if fkey not in self._models or (fam is not None and unit.key in fam.members):
            models, _ = load_families(self.store, self.env_key, wanted=[fkey], exclude=[unit.key])
            self._models[fkey] = fam = models.get(fkey)
        return fam

    def todo(self, key: str, unit, grid: list[dict]) -> list[dict]:
        rows = self.store.measurements(unit_key=key, env_key=self.env_key, status=None)
        done = {point_key(m.point): (m.median_ms if m.status == "ok" else None) for m in rows}
        old = self.stored(key) if self.families else None
        checks = list(old.points) if old is not None else check_points(unit, grid)
        if self.families and self._unswept(key, checks, done):
            verdict = self._check(key, unit, checks, rows, old)
            if isinstance(verdict, list):
                return verdict            # check points still to measure
            if verdict is not None and verdict.served:
                return []
        todo = full_todo(grid, done, self.tolerance_pct, self.adaptive)
        if not todo:
            self._models.pop(family_key(unit), None)  # a new member: the family is refitted
        return todo

    def _unswept(self, key: str, checks: list[dict], done: dict) -> bool:
        """Nothing measured beyond the unit's check points (those of this grid, or of the
        verdict stored when it was checked)."""
        ok = {k for k, v in done.items() if v is not None}
        stored = self.stored(key)
        allowed = {point_key(p) for p in checks} | {point_key(p) for p in (stored.points if stored else ())}
        return ok <= allowed

    def _check(self, key: str, unit, checks: list[dict], rows, old) -> "CheckVerdict | list | None":
        """The check points still missing, the verdict once none is, or None when no
        family covers the unit (or none of its check points would run). A unit checked
        before (`old`, its stored verdict) is judged by the family model of that verdict:
        what was checked."""
        fam = (old.family() if old is not None and old.family_json else None) or self.family(unit)
        if fam is None:
            return None
        ok = {point_key(m.point): m for m in rows if m.status == "ok"}
        failed = {point_key(m.point) for m in rows if m.status == "failed"}
        missing = [p for p in checks if point_key(p) not in ok and point_key(p) not in failed]
        if missing:
            return missing
        have = [ok[point_key(p)] for p in checks if point_key(p) in ok]
        if not have:
            return None
        shares, step = self._weights(unit, have, old)
        verdict = judge(unit, fam, have, self.tolerance_pct if old is None else old.tolerance_pct, shares, step)
        if self.verdicts.get(key) != verdict:
            if old is None or old.fingerprint() != verdict.fingerprint():
                self.store.put_fits([verdict_record(verdict)])
                self._stored[key] = verdict
            self.verdicts[key] = verdict
        return verdict

    def _weights(self, unit, have, old) -> tuple[dict | None, float | None]:
        """(point_json -> share, step tolerance) to judge with: a stored verdict's own (what
        was checked), else the unit's shares now when this sweep has a step tolerance."""
        if old is not None:
            return (dict(zip(map(point_key, old.points), old.shares)) if old.shares else None,
                    old.step_tolerance_pct)
        if self.step_tolerance_pct is None:
            return None, None
        from dooly.profile.shares import check_shares
        return check_shares(self.store, self.env_key, self.engine, unit, have), self.step_tolerance_pct
