"""What a DB keeps beside the measurements: each model's inventory (unit -> calls per
step), the captures `dooly.cache` copies in, the host-speed probes
(`dooly.profile.hostspeed`) and the fitted models, stored as JSON data. A mixin of
`dooly.db.store.Store`, whose connection (`_conn`), `_write()` and `_rows()` it uses."""
from __future__ import annotations

import json
import time

from dooly.errors import DoolyInputError


class Records:
    # -- inventories --------------------------------------------------------------
    def set_inventory(self, config_hash: str, engine: str, model_name: str,
                      counts: dict[str, int]) -> None:
        """Replace the whole inventory of (config_hash, engine)."""
        with self._write() as c:
            c.execute("DELETE FROM inventories WHERE config_hash = ? AND engine = ?",
                      (config_hash, engine))
            c.executemany("INSERT INTO inventories VALUES (?, ?, ?, ?, ?)",
                          [(config_hash, engine, model_name, k, int(n))
                           for k, n in counts.items()])

    def inventory(self, config_hash: str, engine: str) -> dict[str, int]:
        return {r[0]: r[1] for r in self._conn.execute(
            "SELECT unit_key, count FROM inventories WHERE config_hash = ? AND engine = ? "
            "ORDER BY unit_key", (config_hash, engine))}

    def models(self, engine: str) -> dict[str, str]:
        """Config hash -> model name of every model with an inventory for `engine`."""
        return {r[0]: r[1] for r in self._conn.execute(
            "SELECT DISTINCT config_hash, model_name FROM inventories WHERE engine = ? "
            "ORDER BY model_name, config_hash", (engine,))}

    # -- captured inventories (dooly.cache) ----------------------------------------
    def put_capture(self, key: str, config_hash: str, engine: str, inventory_json: str) -> None:
        with self._write() as c:
            c.execute("INSERT INTO captures (capture_key, config_hash, engine, inventory_json, timestamp) "
                      "VALUES (?, ?, ?, ?, ?) ON CONFLICT (capture_key) DO UPDATE SET "
                      "inventory_json = excluded.inventory_json, timestamp = excluded.timestamp",
                      (key, config_hash, engine, inventory_json, time.time()))

    def capture(self, key: str) -> str | None:
        """The stored inventory JSON text of a capture key (never executed: parsed as JSON)."""
        row = self._conn.execute("SELECT inventory_json FROM captures WHERE capture_key = ?",
                                 (key,)).fetchone()
        return None if row is None else row[0]

    # -- host speed (dooly.profile.hostspeed) --------------------------------------
    def add_host_probe(self, env_key: str, timestamp: float, gemm_ms: float, stream_ms: float,
                       source: str) -> None:
        with self._write() as c:
            c.execute("INSERT INTO host_probes (env_key, timestamp, gemm_ms, stream_ms, source) "
                      "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                      (env_key, timestamp, gemm_ms, stream_ms, source))

    def host_probes(self, env_key: str | None = None, source: str | None = None) -> list[tuple]:
        """(timestamp, gemm_ms, stream_ms, source) in time order."""
        sql, args = "SELECT timestamp, gemm_ms, stream_ms, source FROM host_probes WHERE 1 = 1", []
        if env_key is not None:
            sql, args = sql + " AND env_key = ?", args + [env_key]
        if source is not None:
            sql, args = sql + " AND source = ?", args + [source]
        return [tuple(r) for r in self._conn.execute(sql + " ORDER BY timestamp", args)]

    # -- fits ---------------------------------------------------------------------
    def put_fits(self, fits: list[dict]) -> None:
        """Store fitted models as data, each {"unit_key", "env_key", "fingerprint",
        "model": JSON-able dict}, replacing the earlier fit of the same (unit, environment);
        all in one transaction. A fit is valid while its fingerprint matches the rows."""
        now = time.time()
        rows = []
        for f in fits:
            for name in ("unit_key", "env_key", "fingerprint", "model"):
                if not f.get(name):
                    raise ValueError(f"{name}: every fit needs one (got {sorted(f)})")
            rows.append((f["unit_key"], f["env_key"], f["fingerprint"],
                         json.dumps(f["model"], sort_keys=True), now))
        with self._write() as c:
            c.executemany("INSERT INTO fits (unit_key, env_key, fingerprint, model_json, timestamp) "
                          "VALUES (?, ?, ?, ?, ?) ON CONFLICT (unit_key, env_key) DO UPDATE SET "
                          "fingerprint = excluded.fingerprint, model_json = excluded.model_json, "
                          "timestamp = excluded.timestamp", rows)

    def fits(self, env_key: str, unit_keys=None) -> dict[str, dict]:
        """unit_key -> {"fingerprint", "model", "timestamp"} of the fits stored for
        `env_key` (only `unit_keys` when given)."""
        rows = self._rows("SELECT unit_key, fingerprint, model_json, timestamp FROM fits "
                          "WHERE env_key = ? ORDER BY unit_key", (env_key,))
        wanted = None if unit_keys is None else set(unit_keys)
        out = {}
        for r in rows:
            if wanted is not None and r["unit_key"] not in wanted:
                continue
            try:
                model = json.loads(r["model_json"])
            except json.JSONDecodeError as err:
                raise DoolyInputError(self.path, f"stored fit of {r['unit_key']} is not JSON ({err})",
                                      "fits.model_json") from None
            out[r["unit_key"]] = {"fingerprint": r["fingerprint"], "model": model,
                                  "timestamp": r["timestamp"]}
        return out
