"""`analyze`: config(s) -> captured graph -> labels -> canonical units -> inventories,
plus the reuse summary across models. The Python API behind `dooly analyze`."""
from __future__ import annotations

from dataclasses import dataclass, field

from dooly.config import ModelConfig, load_config
from dooly.engines import capture, check_engine, default_engine
from dooly.graph.label_pass import label_pass
from dooly.graph.normalize import normalize_pass
from dooly.graph.regions import RegionRegistry, region_pass
from dooly.graph.units import Inventory, build_inventory

def _labelled(cfg: ModelConfig, engine: str):
    cap, sym_map, extra = capture(cfg, engine)
    return cap, sym_map, extra, label_pass(normalize_pass(cap.gm), sym_map)


def analyze_config(cfg: ModelConfig, engine: str, registry: RegionRegistry,
                   fields: bool = True) -> Inventory:
    cap, sym_map, extra, gm = _labelled(cfg, engine)
    if fields:
        # a second capture at perturbed config values names each constant's fields
        from dooly.graph.label_pass import fields_pass
        from dooly.symbolic.perturb import FieldMatcher, perturbed
        try:
            pcfg = ModelConfig(cfg.path, perturbed(cfg.raw), cfg.architecture, cfg.model_type)
            pgm = _labelled(pcfg, engine)[3]
            gm = fields_pass(gm, pgm, FieldMatcher(cfg.raw))
        except Exception as err:  # the dims keep their values; only the field names are lost
            cap.notes.append(f"config fields unknown: perturbed capture failed ({type(err).__name__})")
    gm = region_pass(gm)
    return build_inventory(cap, sym_map, registry, extra)


@dataclass
class Analysis:
    engine: str
    inventories: list[Inventory] = field(default_factory=list)

    def shared_keys(self) -> set[str]:
        seen: dict[str, int] = {}
        for inv in self.inventories:
            for k in inv.entries:
                seen[k] = seen.get(k, 0) + 1
        return {k for k, n in seen.items() if n > 1}


def analyze(paths: list[str], engine: str | None = None, fields: bool = True) -> Analysis:
    engine = check_engine(engine or default_engine())
    cfgs = [load_config(p) for p in paths]  # validate every file before any capture
    registry = RegionRegistry()
    return Analysis(engine, [analyze_config(c, engine, registry, fields) for c in cfgs])


def reuse_summary(analysis: Analysis, hw_name: str = "h100", lim=None) -> dict:
    """Profiling cost if each model is profiled on its own vs once per unique unit."""
    from dooly.profile.cost import get_hardware, profiling_cost
    from dooly.profile.grid import GridLimits
    hw, lim = get_hardware(hw_name), lim or GridLimits()
    cost: dict[str, float] = {}
    independent = 0.0
    total = 0
    for inv in analysis.inventories:
        for key, entry in inv.entries.items():
            if key not in cost:
                cost[key] = profiling_cost(entry.unit, hw, lim)[1]
            independent += cost[key]
            total += 1
    dedup = sum(cost.values())
    return {"hardware": hw_name, "independent_cost_s": round(independent, 3),
            "dedup_cost_s": round(dedup, 3),
            "reduction_pct": round(100.0 * (1 - dedup / independent), 2) if independent else 0.0,
            "unique_units": len(cost), "total_units": total}


def to_json(analysis: Analysis, reuse: dict) -> dict:
    models = []
    for inv in analysis.inventories:
        units = []
        for key, e in inv.entries.items():
            u = e.unit
            units.append({"key": key, "op": u.op, "count": e.count, "stateful": u.stateful,
                          "driver": u.driver,
                          "dims": [d.to_json() for t in u.inputs + u.outputs for d in t.dims],
                          "inputs": [t.to_json() for t in u.inputs],
                          "outputs": [t.to_json() for t in u.outputs],
                          "attrs": u.attr, "where": sorted(e.where)})
        models.append({"config": inv.config_path, "model": inv.model,
                       "architecture": inv.architecture, "config_hash": inv.config_hash,
                       "units": units, "notes": inv.notes})
    return {"engine": analysis.engine, "models": models, "reuse": reuse}
