"""DB: the measurement database, an SQLite file or a PostgreSQL database
(`postgresql://...`, `postgres`: psycopg behind sqlite3's interface, same schema and
migrations); `parquet` exports and imports it as Parquet files. `Store.open(path)` is the only entry point
callers need: environments, units, measurements, inventories and fitted models, all
stored as data (JSON), never as code; `check` reads every row back the way a command
would (`dooly db check`, `db merge`), `merge` copies whole databases in (checked, one
transaction) and exports them as JSON, `records` keeps what a DB holds beside the
measurements (inventories, captures, host probes, fits), and the `leases` table lets
sweepers share the work. May import: dooly.env, dooly.errors, dooly.files, dooly.unit, dooly.symbolic, and the optional
psycopg and pyarrow (only where a URL or Parquet is asked for)."""
from dooly.db.schema import SCHEMA_VERSION
from dooly.db.store import Store, point_json

__all__ = ["SCHEMA_VERSION", "Store", "point_json"]
