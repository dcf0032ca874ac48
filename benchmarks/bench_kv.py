"""Key-value throughput: kvstore against the raw driver and the peers, in one run.

    python benchmarks/bench_kv.py                       # SQLite only
    python benchmarks/bench_kv.py --postgres postgresql+psycopg://postgres@127.0.0.1/test
    python benchmarks/bench_kv.py --mariadb mariadb+pymysql://root@127.0.0.1/test

For each backend it times put, get, put_many, get_many and key iteration through kvstore, and
the same work through the raw DBAPI driver (sqlite3 / psycopg / PyMySQL) on a connection set up the same
way (autocommit, WAL + synchronous as configured), running:

* ``raw(same SQL)``: kvstore's own statements, so the ratio is kvstore's Python overhead;
* ``raw(minimal)``: a two-column table with the simplest upsert/select, for scale.

Peers (SQLite only, same machine, same durability where they allow it): sqlitedict, diskcache.
Not a test: numbers depend on the machine; run it on demand.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kvstore
from kvstore._entries import SQL, now_us


def timed(fn: Callable[[], Any], n: int, repeat: int = 3) -> float:
    """Best-of-``repeat`` seconds per operation."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best / n


class Values:
    """A different value on every call: SQLite turns a rewrite of identical bytes into a
    commit with nothing to write (no fsync), which would flatter whoever rewrites most."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.n = 0

    def __call__(self) -> bytes:
        self.n += 1
        return self.n.to_bytes(8, "big") + os.urandom(max(self.size - 8, 0))


def fmt(sec: float) -> str:
    return f"{sec * 1e6:9.1f} µs"


class Results:
    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, str, float]] = []

    def add(self, op: str, who: str, sec: float) -> None:
        self.rows.append((op, who, sec))

    def show(self) -> None:
        print(f"\n== {self.title} ==")
        print(f"{'operation':<22}{'implementation':<22}{'per op':>12}{'vs kvstore':>12}")
        ops = list(dict.fromkeys(r[0] for r in self.rows))
        for op in ops:
            mine = next((s for o, w, s in self.rows if o == op and w == "kvstore"), None)
            for o, w, s in self.rows:
                if o != op:
                    continue
                ratio = f"{mine / s:10.2f}x" if mine and w != "kvstore" else ""
                print(f"{o:<22}{w:<22}{fmt(s):>12}{ratio:>12}")
        print("(vs kvstore = kvstore's time / this implementation's time: 2.00x means kvstore takes twice as long)")


def bench_store(store: kvstore.Store, res: Results, n: int, values: Values, who: str = "kvstore") -> None:
    keys = [f"key{i:07d}" for i in range(n)]

    def put() -> None:
        value = values()
        for k in keys:
            store.put(k, value)

    def get() -> None:
        for k in keys:
            store.get(k)

    def put_many() -> None:
        value = values()
        for i in range(0, n, 100):
            store.put_many([(k, value) for k in keys[i : i + 100]])

    def get_many() -> None:
        for i in range(0, n, 100):
            store.get_many(keys[i : i + 100])

    def iterate() -> None:
        for _ in store.iter_keys():
            pass

    res.add("put", who, timed(put, n))
    res.add("get", who, timed(get, n))
    res.add("put_many (per key)", who, timed(put_many, n))
    res.add("get_many (per key)", who, timed(get_many, n))
    res.add("iter_keys (per key)", who, timed(iterate, n))


def bench_raw_same_sql(store: kvstore.Store, dbapi: Any, res: Results, n: int, values: Values, who: str) -> None:
    """The driver executing kvstore's own statements (rendered for this dialect)."""
    ns = store.namespace_name
    put_r, get_r = store.scope.sql(SQL, "upsert"), store.scope.sql(SQL, "get")
    put_sql, get_sql = put_r.sql, get_r.sql
    keys = [f"raw{i:07d}" for i in range(n)]
    now = now_us()
    import hashlib

    value = values()

    def params(k: str) -> Any:
        return put_r.bind({
            "ns": ns, "key": k, "value": value, "blob_id": None, "size": len(value), "now": now,
            "exp": None, "ct": None, "meta": None, "sum": hashlib.sha256(value).hexdigest(), "gen": 0,
        })

    def put() -> None:
        nonlocal value, now
        value, now = values(), now_us()
        for k in keys:
            dbapi.execute(put_sql, params(k))

    def get() -> None:
        for k in keys:
            dbapi.execute(get_sql, get_r.bind({"ns": ns, "key": k, "now": now})).fetchone()

    res.add("put", who, timed(put, n))
    res.add("get", who, timed(get, n))


def bench_raw_minimal(dbapi: Any, res: Results, n: int, values: Values, who: str, ph: str) -> None:
    dbapi.execute("CREATE TABLE IF NOT EXISTS bench_min (k TEXT PRIMARY KEY, v BYTEA)".replace("BYTEA", "BLOB" if ph == "?" else "BYTEA"))
    keys = [f"min{i:07d}" for i in range(n)]
    put_sql = f"INSERT INTO bench_min (k, v) VALUES ({ph}, {ph}) ON CONFLICT (k) DO UPDATE SET v = excluded.v"
    get_sql = f"SELECT v FROM bench_min WHERE k = {ph}"

    def put() -> None:
        value = values()
        for k in keys:
            dbapi.execute(put_sql, (k, value))

    def get() -> None:
        for k in keys:
            dbapi.execute(get_sql, (k,)).fetchone()

    res.add("put", who, timed(put, n))
    res.add("get", who, timed(get, n))
    dbapi.execute("DROP TABLE bench_min")


def bench_listened(url: str, res: Results, n: int, value: Values, **options: Any) -> None:
    """kvstore on an Engine with a cursor listener (as OpenTelemetry or a query counter
    installs): every statement then runs through SQLAlchemy's Connection so the listener
    sees it; compare with the plain ``kvstore`` rows, which take the fast path."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    calls = [0]

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(*_: Any) -> None:
        calls[0] += 1

    store = kvstore.connect(engine, namespace="bench_listened", **options)
    bench_store(store, res, n, value, who="kvstore, listened Engine")
    store.delete_many(store.keys())
    store.close()
    engine.dispose()
    assert calls[0] >= 2 * n, calls


def sqlite_run(n: int, value: Values, synchronous: str) -> None:
    tmp = Path(tempfile.mkdtemp())
    url = f"sqlite:///{tmp / 'kv.db'}"
    res = Results(f"SQLite file (WAL, synchronous={synchronous}), {n} keys, {value.size}-byte values")
    store = kvstore.connect(url, sqlite_synchronous=synchronous)
    bench_store(store, res, n, value)
    bench_listened(url, res, n, value, sqlite_synchronous=synchronous)
    raw = sqlite3.connect(tmp / "kv.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute(f"PRAGMA synchronous={synchronous}")
    bench_raw_same_sql(store, raw, res, n, value, "sqlite3 (same SQL)")
    raw2 = sqlite3.connect(tmp / "min.db", isolation_level=None)
    raw2.execute("PRAGMA journal_mode=WAL")
    raw2.execute(f"PRAGMA synchronous={synchronous}")
    bench_raw_minimal(raw2, res, n, value, "sqlite3 (minimal)", "?")
    peers(tmp, res, n, value, synchronous)
    store.close()
    res.show()


def peers(tmp: Path, res: Results, n: int, values: Values, synchronous: str) -> None:
    keys = [f"peer{i:07d}" for i in range(n)]
    try:
        from sqlitedict import SqliteDict  # type: ignore[import-untyped]

        d = SqliteDict(str(tmp / "sd.db"), autocommit=True)

        def sd_put() -> None:
            value = values()
            for k in keys:
                d[k] = value

        def sd_get() -> None:
            for k in keys:
                d[k]

        res.add("put", "sqlitedict(autocommit)", timed(sd_put, n, repeat=1))
        res.add("get", "sqlitedict(autocommit)", timed(sd_get, n))
        d.close()
    except ImportError:
        print("(sqlitedict not installed: pip install sqlitedict)")
    try:
        import diskcache  # type: ignore[import-untyped]

        c = diskcache.Cache(str(tmp / "dc"), sqlite_synchronous=synchronous.lower() if synchronous != "FULL" else 2)

        def dc_put() -> None:
            value = values()
            for k in keys:
                c.set(k, value)

        def dc_get() -> None:
            for k in keys:
                c.get(k)

        res.add("put", "diskcache.Cache", timed(dc_put, n))
        res.add("get", "diskcache.Cache", timed(dc_get, n))
        c.close()
    except ImportError:
        print("(diskcache not installed: pip install diskcache)")


def pg_run(url: str, n: int, value: Values) -> None:
    import psycopg

    res = Results(f"PostgreSQL, {n} keys, {value.size}-byte values")
    store = kvstore.connect(url, namespace="bench")
    store.delete_many(store.keys())
    bench_store(store, res, n, value)
    bench_listened(url, res, n, value)
    dsn = store.scope.backend.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)  # type: ignore[union-attr]
    raw = psycopg.connect(dsn, autocommit=True)
    bench_raw_same_sql(store, raw, res, n, value, "psycopg (same SQL)")
    bench_raw_minimal(raw, res, n, value, "psycopg (minimal)", "%s")
    store.delete_many(store.keys())
    kvstore._entries.clear_namespace(store.scope)
    store.close()
    res.show()


class _Cursors:
    """A PyMySQL connection that executes like sqlite3's and psycopg's (a cursor per call)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Any = None) -> Any:
        cur = self.conn.cursor()
        cur.execute(sql, params)
        return cur


def maria_run(url: str, n: int, values: Values) -> None:
    import pymysql

    res = Results(f"MariaDB (PyMySQL), {n} keys, {values.size}-byte values")
    store = kvstore.connect(url, namespace="bench")
    store.delete_many(store.keys())
    bench_store(store, res, n, values)
    bench_listened(url, res, n, values)
    u = store.scope.backend.engine.url  # type: ignore[union-attr]
    raw = pymysql.connect(
        host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
        password=u.password or "", database=u.database, charset="utf8mb4", autocommit=True,
        client_flag=pymysql.constants.CLIENT.FOUND_ROWS,
    )
    db = _Cursors(raw)
    bench_raw_same_sql(store, db, res, n, values, "pymysql (same SQL)")
    db.execute("CREATE TABLE IF NOT EXISTS bench_min (k VARCHAR(255) PRIMARY KEY, v LONGBLOB)")
    keys = [f"min{i:07d}" for i in range(n)]
    put_sql = "INSERT INTO bench_min (k, v) VALUES (%s, %s) ON DUPLICATE KEY UPDATE v = VALUES(v)"

    def put() -> None:
        value = values()
        for k in keys:
            db.execute(put_sql, (k, value))

    def get() -> None:
        for k in keys:
            db.execute("SELECT v FROM bench_min WHERE k = %s", (k,)).fetchone()

    res.add("put", "pymysql (minimal)", timed(put, n))
    res.add("get", "pymysql (minimal)", timed(get, n))
    db.execute("DROP TABLE bench_min")
    raw.close()
    kvstore._entries.clear_namespace(store.scope)
    store.close()
    res.show()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="keys per operation (default 2000)")
    ap.add_argument("--size", type=int, default=100, help="value size in bytes (default 100)")
    ap.add_argument("--postgres", default=os.environ.get("KVSTORE_TEST_POSTGRES_URL"), help="PostgreSQL URL")
    ap.add_argument("--mariadb", default=os.environ.get("KVSTORE_TEST_MARIADB_URL"), help="MariaDB URL (mariadb+pymysql://...)")
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"], help="SQLite durability")
    args = ap.parse_args()
    value = Values(args.size)
    sqlite_run(args.n, value, args.synchronous)
    if args.postgres:
        pg_run(args.postgres, args.n, value)
    else:
        print("\n(no PostgreSQL: pass --postgres URL or set KVSTORE_TEST_POSTGRES_URL)")
    if args.mariadb:
        maria_run(args.mariadb, args.n, value)
    else:
        print("\n(no MariaDB: pass --mariadb URL or set KVSTORE_TEST_MARIADB_URL)")
    print(f"\nbest of 3 runs per figure; Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
