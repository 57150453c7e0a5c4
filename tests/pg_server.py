"""A throwaway PostgreSQL server on 127.0.0.1 for the backend tests: initdb into a
temporary folder, started with pg_ctl on a free port, stopped at the end of the session.
`DOOLY_TEST_POSTGRES_URL` (a server's maintenance database, e.g.
postgresql://user@host/postgres) uses a running server instead. Where no server can be
started the tests skip, saying why; `./install.sh` installs the server binaries."""
from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest

USER = "dooly"


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    # Debian and Ubuntu keep the server binaries off PATH
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return hits[-1] if hits else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> dict:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user (the
    Debian package makes one) or `nobody`."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return {"user": pw.pw_uid, "group": pw.pw_gid}
        except KeyError:
            continue
    raise RuntimeError("running as root and there is no postgres or nobody user to run the server as")


class Server:
    def __init__(self):
        initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not (initdb and pg_ctl):
            raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in "
                               "/usr/lib/postgresql/*/bin: run ./install.sh")
        self.pg_ctl, self.ids = pg_ctl, _run_as()
        self.dir = tempfile.mkdtemp(prefix="dooly-pg-")
        if self.ids:
            os.chown(self.dir, self.ids["user"], self.ids["group"])
        self.data, self.port = os.path.join(self.dir, "data"), _free_port()
        self._run([initdb, "-D", self.data, "-U", USER, "--auth=trust", "-E", "UTF8",
                   "--locale=C", "-N"])
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        self._run([pg_ctl, "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"),
                   "-w", "-t", "120", "start"])
        self.base = f"postgresql://{USER}@127.0.0.1:{self.port}"

    def _run(self, cmd: list[str]) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=self.dir,
                              **self.ids)
        if proc.returncode != 0:
            log = os.path.join(self.dir, "log")
            tail = open(log).read()[-500:] if os.path.exists(log) else ""
            raise RuntimeError(f"{os.path.basename(cmd[0])} failed: {(proc.stderr or proc.stdout)[-500:]} {tail}")

    def stop(self) -> None:
        subprocess.run([self.pg_ctl, "-D", self.data, "-m", "immediate", "stop"],
                       capture_output=True, timeout=60, cwd=self.dir, **self.ids)
        shutil.rmtree(self.dir, ignore_errors=True)


def _admin(maintenance_url: str, sql: str) -> None:
    import psycopg
    with psycopg.connect(maintenance_url, autocommit=True, connect_timeout=10) as c:
        c.execute(sql)


@pytest.fixture(scope="session")
def pg_server():
    """The maintenance URL of a PostgreSQL server, or a skip saying why there is none."""
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("PostgreSQL tests skipped: psycopg is not installed (pip install -e '.[postgres]')")
    url = os.environ.get("DOOLY_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    try:
        server = Server()
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"PostgreSQL tests skipped: no server could be started ({err})")
    try:
        yield f"{server.base}/postgres"
    finally:
        server.stop()


@pytest.fixture
def new_pg_db(pg_server):
    """Makes fresh, empty databases on the test server (dropped afterwards)."""
    names = []
    base = pg_server.rsplit("/", 1)[0]

    def make() -> str:
        names.append(f"t_{uuid.uuid4().hex[:12]}")
        _admin(pg_server, f"CREATE DATABASE {names[-1]}")
        return f"{base}/{names[-1]}"
    yield make
    for name in names:
        _admin(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(new_pg_db):
    """A fresh, empty database on the test server."""
    return new_pg_db()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path):
    """A new database on each backend in turn: an SQLite path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "m.db")
    return request.getfixturevalue("pg_url")


def raw_sql(db: str, sql: str, args: tuple = ()) -> list:
    """Run one statement on the database behind Dooly's back (to damage or age it)."""
    if db.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(db, autocommit=True) as c:
            cur = c.execute(sql.replace("?", "%s"), args or None)
            return cur.fetchall() if cur.description else []
    import sqlite3
    c = sqlite3.connect(db, isolation_level=None)
    try:
        cur = c.execute(sql, args)
        return cur.fetchall()
    finally:
        c.close()
