"""A model's inventory: unit key -> (unit, count per forward step, where it runs).

Plain data over `Unit` (no torch), so a stored or cached inventory is read back without
importing the capture machinery: `to_json` and `from_json` round-trip every field."""
from __future__ import annotations

from dataclasses import dataclass, field

from dooly.unit import Unit


@dataclass
class Entry:
    unit: Unit
    count: int = 0
    where: set = field(default_factory=set)   # module paths / roles, for display


def inventory_key(config_hash: str, tp: int = 1) -> str:
    """The DB's name for a model's inventory: its config hash, and the tensor-parallel size
    when it is over 1 (a TP=2 inventory lists one rank's shards and the collectives; it
    never replaces the TP=1 one)."""
    return config_hash if tp == 1 else f"{config_hash}@tp{tp}"


@dataclass
class Inventory:
    model: str
    config_path: str
    architecture: str
    engine: str
    config_hash: str
    entries: dict[str, Entry] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tp: int = 1   # tensor-parallel size: the units are one rank's

    @property
    def key(self) -> str:
        return inventory_key(self.config_hash, self.tp)

    def add(self, unit: Unit, count: int, where: str = "") -> None:
        e = self.entries.setdefault(unit.key, Entry(unit))
        e.count += count
        if where:
            e.where.add(where)

    def counts(self) -> dict[str, int]:
        return {k: e.count for k, e in self.entries.items()}

    def to_json(self) -> dict:
        return {"config": self.config_path, "model": self.model, "architecture": self.architecture,
                "engine": self.engine, "config_hash": self.config_hash,
                "units": [dict(e.unit.to_json(), count=e.count,
                               dims=[d.to_json() for t in e.unit.inputs for d in t.dims],
                               where=sorted(e.where)) for e in self.entries.values()],
                "notes": self.notes, "tp": self.tp}

    @classmethod
    def from_json(cls, obj: dict) -> "Inventory":
        """The inverse of `to_json`; a unit whose stored key is not the key its fields
        give (data written by another Dooly, or edited) is refused."""
        inv = cls(str(obj["model"]), str(obj["config"]), str(obj["architecture"]),
                  str(obj["engine"]), str(obj["config_hash"]),
                  notes=[str(n) for n in obj.get("notes", [])], tp=int(obj.get("tp", 1)))
        for u in obj["units"]:
            unit = Unit.from_json(u)
            if u.get("key") not in (None, unit.key):
                raise ValueError(f"units: stored key {u.get('key')} is not {unit.key}")
            inv.entries[unit.key] = Entry(unit, int(u["count"]), set(u.get("where", [])))
        return inv
