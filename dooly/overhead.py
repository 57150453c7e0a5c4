"""The engine's per-step work outside the model's units (input preparation, attention
metadata, output copies), measured on real engine steps and stored in the DB as one
pseudo-unit whose points are whole batches, so it is fitted like any attention unit."""
from __future__ import annotations

from dooly.env import Environment, Measurement
from dooly.unit import Unit

def overhead_unit(config_hash: str) -> Unit:
    """One per model: the runner's per-step work grows with the model's layers (per-layer
    attention metadata and KV bindings), so it is not shared across models."""
    return Unit(op="engine.step_overhead", inputs=(), outputs=(),
                attrs=(("driver", "attention"), ("model", config_hash)))


def record_overhead(store, env: Environment, steps: list[dict], config_hash: str) -> int:
    """steps: {"batch": [[q, c], ...], "ms": whole step, "forward_ms": model units}."""
    unit = overhead_unit(config_hash)
    store.add_environment(env)
    store.add_unit(unit)
    n = 0
    for s in steps:
        over = float(s["ms"]) - float(s["forward_ms"])
        if over < 0 or not s["batch"]:
            continue
        point = {"seqs": [[int(q), int(c)] for q, c in s["batch"]]}
        store.add_measurement(Measurement(unit.key, env.key, point, over, over, over,
                                          over, 0.0, 1))
        n += 1
    return n
