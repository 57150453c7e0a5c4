"""Which environment a command reads its measurements from: the one rule that predict,
simulate, export, fit and analyze --db share, so they never disagree about it."""
from __future__ import annotations

from dooly.env import Environment
from dooly.errors import DoolyInputError


def measured_points(store, env_key: str) -> int:
    return sum(int(r["ok"]) for r in store.summary(env_key=env_key))


def choose_environment(store, engine: str | None = None, env_key: str | None = None,
                       db_path: str | None = None, needs=None) -> Environment:
    """`env_key` when given (it must be in the DB, and run `engine` when that is given);
    else, among the environments of `engine` (any engine when None), the one that measured
    most of `needs` (the unit keys the command reads, or a function of the environment
    that gives them), then the one with the most ok measurements, the first key on a tie.
    Without `needs` a DB that also holds a tensor-parallel sweep (its ranks' environment,
    fewer threads on a CPU, often more points) would hand a TP=1 model the ranks'
    environment, where its own units were never measured. A DB without one is a
    DoolyInputError naming `db_path` (default: the store's own path)."""
    where = db_path or getattr(store, "path", "--db")
    envs = store.environments()
    if env_key:
        match = [e for e in envs if e.key == env_key]
        if not match:
            have = ", ".join(e.key for e in envs[:5]) or "none"
            raise DoolyInputError(where, f"no environment {env_key} in the DB (it has: {have})", "--env")
        if engine and match[0].engine != engine:
            raise DoolyInputError(where, f"environment {env_key} runs engine {match[0].engine}, "
                                         f"not {engine}", "--env")
        return match[0]
    if engine:
        envs = [e for e in envs if e.engine == engine]
    if not envs:
        raise DoolyInputError(where, f"the DB holds no environment for engine {engine or 'any'}: "
                                     "run `dooly sweep` into it first")
    if len(envs) == 1:
        return envs[0]
    return most_covering(store, envs, needs)


def most_covering(store, envs: list[Environment], needs=None) -> Environment:
    """Of `envs`, the one that measured most of `needs` (unit keys, or a function of the
    environment that gives them), then the one with the most ok measurements; the first
    on a tie."""
    def score(e):
        wanted = set(needs(e) if callable(needs) else needs or ())
        return (len(wanted & store.units_measured(e.key)) if wanted else 0, measured_points(store, e.key))
    return max(envs, key=score)  # max keeps the first of equals
