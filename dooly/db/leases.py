"""Leases: how several sweepers (processes, hosts) fill one DB without measuring a unit
twice. A sweeper claims a (unit, environment) before measuring it; the claim names it
(host:pid) and expires unless renewed, so a crashed sweeper's claim lapses; one whose
process is gone from this host lapses at once."""
from __future__ import annotations

import os
import socket
import time

from dooly.db import schema

# a sweeper's claim on a unit lasts this long unless renewed; sweepers renew it when a
# quarter of it is gone
LEASE_S = 120.0


def lease_owner() -> str:
    """This process, as a lease names it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str) -> bool:
    """False only when the owner is a process on this host that no longer exists; a
    claim from another host lives until it expires."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@schema.guarded
class Leases:
    """The `leases` table, for Store (which provides `_conn` and `_write`)."""

    def claim(self, unit_key: str, env_key: str, owner: str | None = None,
              ttl_s: float = LEASE_S) -> bool:
        """Claim a unit for measuring in an environment: True (and the lease is ours
        until `ttl_s` from now) unless another live sweeper holds it."""
        owner = owner or lease_owner()
        now = time.time()
        with self._write() as c:
            row = c.execute("SELECT owner, expires FROM leases WHERE unit_key = ? AND env_key = ?",
                            (unit_key, env_key)).fetchone()
            if row and row[0] != owner and row[1] > now and _owner_alive(row[0]):
                return False
            c.execute("INSERT INTO leases (unit_key, env_key, owner, expires) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (unit_key, env_key) DO UPDATE SET owner = excluded.owner, "
                      "expires = excluded.expires", (unit_key, env_key, owner, now + ttl_s))
        return True

    def renew(self, unit_key: str, env_key: str, owner: str | None = None,
              ttl_s: float = LEASE_S) -> bool:
        """Extend our lease; False when it is no longer ours (it lapsed and another
        sweeper claimed the unit)."""
        cur = self._conn.execute("UPDATE leases SET expires = ? WHERE unit_key = ? AND env_key = ? "
                                 "AND owner = ?", (time.time() + ttl_s, unit_key, env_key,
                                                   owner or lease_owner()))
        return cur.rowcount == 1

    def release(self, unit_key: str, env_key: str, owner: str | None = None) -> None:
        self._conn.execute("DELETE FROM leases WHERE unit_key = ? AND env_key = ? AND owner = ?",
                           (unit_key, env_key, owner or lease_owner()))

    def lease(self, unit_key: str, env_key: str) -> tuple[str, float] | None:
        """(owner, expiry time) of the unit's lease, if any (lapsed ones included)."""
        row = self._conn.execute("SELECT owner, expires FROM leases WHERE unit_key = ? AND "
                                 "env_key = ?", (unit_key, env_key)).fetchone()
        return (row[0], row[1]) if row else None
