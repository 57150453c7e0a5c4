"""`analyze`: config(s) -> captured graph -> labels -> canonical units -> inventories,
plus the reuse summary across models. The Python API behind `dooly analyze`.

Two classes of failure. Bad input (what `load_config` checks: a missing file, not
JSON, a missing or bad field) stops the run before any capture: one line, nothing
written. A model the engine cannot capture (an architecture it refuses, a type it
does not know, a forward that fails on meta tensors, any error while capturing or
labelling it) is skipped: the other models are analysed and reported, and the skipped
one is listed in `Analysis.failed` with its one-line error."""
from __future__ import annotations

from dataclasses import dataclass, field

from dooly import cache
from dooly.config import ModelConfig, load_config
from dooly.engines import capture, check_engine, default_engine
from dooly.inventory import Inventory

# The capture machinery (torch, the graph passes) is imported on the first capture only,
# so a run served from the capture cache starts in about a second.


def _labelled(cfg: ModelConfig, engine: str, tp: int = 1, request_dims: bool = True):
    from dooly.graph.label_pass import label_pass
    from dooly.graph.normalize import normalize_pass
    cap, sym_map, extra = capture(cfg, engine, tp, request_dims)
    return cap, sym_map, extra, label_pass(normalize_pass(cap.gm), sym_map)


def analyze_config(cfg: ModelConfig, engine: str, registry=None,
                   fields: bool = True, tp: int = 1) -> Inventory:
    """`tp` > 1: the units one rank of a tensor-parallel group of that size runs (its
    shards and collectives); the inventory is stored apart from the TP=1 one."""
    cap, sym_map, extra, gm = _labelled(cfg, engine, tp)
    if fields:
        # a second capture at perturbed config values names each constant's fields
        from dooly.graph.label_pass import fields_pass
        from dooly.symbolic.perturb import FieldMatcher, perturbed
        try:
            pcfg = ModelConfig(cfg.path, perturbed(cfg.raw), cfg.architecture, cfg.model_type)
            pgm = _labelled(pcfg, engine, tp, request_dims=False)[3]
            gm = fields_pass(gm, pgm, FieldMatcher(cfg.raw, tp))
        except Exception as err:  # the dims keep their values; only the field names are lost
            cap.notes.append(f"config fields unknown: perturbed capture failed ({type(err).__name__})")
    from dooly.graph.regions import region_pass
    from dooly.graph.units import build_inventory
    gm = region_pass(gm)
    return build_inventory(cap, sym_map, registry, extra)


@dataclass
class Analysis:
    engine: str
    inventories: list[Inventory] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # [{"config", "error"}], run order
    fields: bool = True   # config fields named (a second, perturbed capture)

    def shared_keys(self) -> set[str]:
        seen: dict[str, int] = {}
        for inv in self.inventories:
            for k in inv.entries:
                seen[k] = seen.get(k, 0) + 1
        return {k for k, n in seen.items() if n > 1}

    def unsweepable(self) -> dict[str, str]:
        """unit key -> why the sweep cannot rebuild it from its data: each of its points
        would fail, and no model that runs it could be predicted."""
        from dooly.profile.buildable import unbuildable
        return unbuildable(self.inventories)


def analyze(paths: list[str], engine: str | None = None, fields: bool = True,
            tp: int = 1, use_cache: bool = True, store=None) -> Analysis:
    """`use_cache`: serve a model captured before (same config, engine and version, Dooly
    version, TP) from the capture cache, and cache each fresh capture (`dooly.cache`);
    `store` (an open `dooly.db.Store`): its copy of the cache is read too (`record_analysis`
    writes it)."""
    engine = check_engine(engine or default_engine())
    cfgs = [load_config(p) for p in paths]  # validate every file before any capture
    if tp != 1:
        from dooly.parallel import check_tp
        for c in cfgs:
            check_tp(c, tp, engine)
    analysis = Analysis(engine, fields=fields)
    for c in cfgs:
        try:
            analysis.inventories.append(_inventory(c, engine, fields, tp, use_cache, store))
        except Exception as err:
            analysis.failed.append({"config": c.path, "error": capture_failure(c, engine, err)})
    return analysis


def _inventory(cfg: ModelConfig, engine: str, fields: bool, tp: int, use_cache: bool,
               store=None) -> Inventory:
    # region keys are exact canonical forms (graph/canon.py), the same in any run, so an
    # inventory cached by one run joins another run's inventories unchanged
    key = cache.capture_key(cfg.hash, engine, tp, fields)
    inv = cache.load(key) if use_cache else None
    if inv is None and use_cache and store is not None:
        inv = cache.load_db(store, key)   # a DB brought from another host
        if inv is not None:
            cache.save(key, inv)
    if inv is None:
        inv = analyze_config(cfg, engine, None, fields, tp)
        cache.save(key, inv)
    inv.config_path, inv.model = cfg.path, cfg.name   # the same config under another name
    return inv


def capture_failure(cfg: ModelConfig, engine: str, err: Exception) -> str:
    """The one line that names a model Dooly skips; re-raises an input error about
    anything but this model's config (a flag, a DB): that one stops the whole run."""
    from dooly.errors import DoolyInputError
    if isinstance(err, DoolyInputError):
        if err.path != cfg.path:
            raise err
        return str(err)
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return str(DoolyInputError(cfg.path, f"the {engine} engine could not capture "
                               f"{cfg.architecture} ({type(err).__name__}: {first})"))


def reuse_summary(analysis: Analysis, hardware="h100", lim=None) -> dict:
    """Profiling cost if each model is profiled on its own vs once per unique unit
    (`hardware`: a name, or a dooly.profile.cost.Hardware such as a recalibrated one)."""
    from dooly.profile.cost import Hardware, get_hardware, profiling_cost
    from dooly.profile.grid import GridLimits
    hw, lim = hardware if isinstance(hardware, Hardware) else get_hardware(hardware), lim or GridLimits()
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
    return {"hardware": hw.name, "independent_cost_s": round(independent, 3),
            "dedup_cost_s": round(dedup, 3),
            "reduction_pct": round(100.0 * (1 - dedup / independent), 2) if independent else 0.0,
            "unique_units": len(cost), "total_units": total,
            "models": len(analysis.inventories),
            "skipped": [f["config"] for f in analysis.failed]}


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
                       "units": units, "notes": inv.notes, "tp": inv.tp})
    return {"engine": analysis.engine, "models": models, "reuse": reuse,
            "failed": list(analysis.failed), "unsweepable": analysis.unsweepable()}
