"""Measurement database: `Store.open(path)` is the only entry point callers need."""
from dooly.db.schema import SCHEMA_VERSION
from dooly.db.store import SQLiteStore, Store, point_json

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "Store", "point_json"]
