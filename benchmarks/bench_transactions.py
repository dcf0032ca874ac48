"""Transaction throughput: kvstore against the raw driver, for 1-key and 10-key transactions.

    python benchmarks/bench_transactions.py                       # SQLite only
    python benchmarks/bench_transactions.py --postgres postgresql+psycopg://postgres@127.0.0.1/test

Each figure is committed transactions per second, each transaction writing ``k`` keys with
fresh values (``with store.transaction() as tx: tx.put(...)`` x k). Against it:

* ``raw (same SQL)``: the DBAPI driver (sqlite3 / psycopg) on a connection set up like
  kvstore's (autocommit, WAL and the same ``synchronous``), running BEGIN, kvstore's own
  upsert statement k times, COMMIT. The ratio is what kvstore costs over doing the same writes
  by hand.
* ``raw (kvstore's statements)``: the driver replaying, verbatim, every statement kvstore
  sent for one such transaction (savepoints and guards included). Its gap to kvstore is
  kvstore's Python overhead; its gap to ``raw (same SQL)`` is the cost of the extra statements.

SQLite runs at ``synchronous=FULL`` (the default: an fsync per commit) and ``NORMAL``.
Not a test: numbers depend on the machine, its disk and its load; run it on demand.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kvstore
from kvstore.store import _now_us

KEYS = 1000  # keys written in rotation, so every transaction updates existing rows


class Values:
    """A different value on every call, so no write is a no-op."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.n = 0

    def __call__(self) -> bytes:
        self.n += 1
        return self.n.to_bytes(8, "big") + os.urandom(max(self.size - 8, 0))


def rate(fn: Callable[[int], None], seconds: float, repeat: int) -> float:
    """Best-of-``repeat`` transactions per second, each run lasting about ``seconds``."""
    fn(0)  # warm up: connections, statement caches
    best = 0.0
    i = 1
    for _ in range(repeat):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            fn(i)
            i += 1
            n += 1
            if n % 5 == 0 and time.perf_counter() >= deadline:
                break
        best = max(best, n / (time.perf_counter() - start))
    return best


def kvstore_tx(store: kvstore.Store, k: int, values: Values) -> Callable[[int], None]:
    def run(i: int) -> None:
        value = values()
        with store.transaction() as tx:
            for j in range(k):
                tx.put(f"key{(i * k + j) % KEYS:05d}", value)

    return run


def upsert_params(store: kvstore.Store, key: str, value: bytes) -> dict[str, Any]:
    return {
        "ns": store.namespace_name,
        "key": key,
        "value": value,
        "blob_id": None,
        "size": len(value),
        "now": _now_us(),
        "exp": None,
        "ct": None,
        "meta": None,
        "sum": hashlib.sha256(value).hexdigest(),
        "gen": 0,
    }


def raw_same_sql(
    store: kvstore.Store, dbapi: Any, begin: str, k: int, values: Values
) -> Callable[[int], None]:
    """BEGIN, kvstore's upsert k times, COMMIT, on the bare driver."""
    sql = store._b.sql("upsert")

    def run(i: int) -> None:
        value = values()
        dbapi.execute(begin)
        for j in range(k):
            dbapi.execute(sql, upsert_params(store, f"raw{(i * k + j) % KEYS:05d}", value))
        dbapi.execute("COMMIT")

    return run


def record_statements(store: kvstore.Store, k: int) -> list[tuple[str, Any]]:
    """Every statement kvstore sends inside one k-key transaction, in order."""
    sent: list[tuple[str, Any]] = []
    with store.transaction() as tx:
        conn = tx._conn
        real = conn.execute

        def spy(sql: str, params: Any = ()) -> Any:
            sent.append((sql, params))
            return real(sql, params)

        conn.execute = spy  # type: ignore[method-assign]
        try:
            for j in range(k):
                tx.put(f"rec{j:05d}", b"x")
        finally:
            del conn.execute
    return sent


def raw_replay(
    store: kvstore.Store, dbapi: Any, begin: str, k: int, values: Values
) -> Callable[[int], None]:
    """The bare driver replaying kvstore's own statement sequence, with fresh values."""
    sent = record_statements(store, k)
    ns = store.namespace_name

    def run(i: int) -> None:
        value = values()
        dbapi.execute(begin)
        j = 0
        for sql, params in sent:
            if isinstance(params, dict) and "value" in params:
                key = f"rep{(i * k + j) % KEYS:05d}"
                j += 1
                params = dict(upsert_params(store, key, value), gen=params["gen"], ns=ns)
            dbapi.execute(sql, params)
        dbapi.execute("COMMIT")

    return run


def report(title: str, rows: list[tuple[int, float, float, float]]) -> None:
    print(f"\n== {title} ==")
    head = f"{'keys/tx':>8}{'kvstore tx/s':>15}{'raw same SQL':>15}{'ratio':>8}"
    print(head + f"{'raw kvstore stmts':>20}{'ratio':>8}")
    for k, mine, raw, replay in rows:
        print(
            f"{k:>8}{mine:>15.0f}{raw:>15.0f}{raw / mine:>7.2f}x{replay:>20.0f}{replay / mine:>7.2f}x"
        )
    print("(ratio = raw tx/s / kvstore tx/s: 2.00x means the bare driver commits twice as many)")


def sqlite_run(synchronous: str, seconds: float, repeat: int, values: Values) -> None:
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "kv.db"
    store = kvstore.connect(f"sqlite:///{path}", sqlite_synchronous=synchronous)
    store.put("warm", b"up")  # opens a prepared connection: the file is now in WAL mode
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA busy_timeout = 30000")
    raw.execute(f"PRAGMA synchronous = {synchronous}")
    rows = []
    for k in (1, 10):
        mine = rate(kvstore_tx(store, k, values), seconds, repeat)
        plain = rate(raw_same_sql(store, raw, "BEGIN IMMEDIATE", k, values), seconds, repeat)
        replay = rate(raw_replay(store, raw, "BEGIN IMMEDIATE", k, values), seconds, repeat)
        rows.append((k, mine, plain, replay))
    raw.close()
    store.close()
    report(f"SQLite file (WAL, synchronous={synchronous}), {values.size}-byte values", rows)


def pg_run(url: str, seconds: float, repeat: int, values: Values) -> None:
    import psycopg

    ns = "bench-tx-" + uuid.uuid4().hex[:8]
    store = kvstore.connect(url, namespace=ns)
    engine_url = store._b.engine.url  # type: ignore[union-attr]
    dsn = engine_url.set(drivername="postgresql").render_as_string(hide_password=False)
    raw = psycopg.connect(dsn, autocommit=True)
    rows = []
    try:
        for k in (1, 10):
            mine = rate(kvstore_tx(store, k, values), seconds, repeat)
            plain = rate(raw_same_sql(store, raw, "BEGIN", k, values), seconds, repeat)
            replay = rate(raw_replay(store, raw, "BEGIN", k, values), seconds, repeat)
            rows.append((k, mine, plain, replay))
    finally:
        raw.close()
        store.delete_many(store.keys())
        store.close()
    report(f"PostgreSQL, {values.size}-byte values", rows)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--postgres", default=None, help="PostgreSQL URL (default: SQLite only)")
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one run (default 1)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure, best kept (default 3)")
    ap.add_argument("--size", type=int, default=100, help="value size in bytes (default 100)")
    ap.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = ap.parse_args()
    values = Values(args.size)
    for synchronous in () if args.no_sqlite else ("FULL", "NORMAL"):
        sqlite_run(synchronous, args.seconds, args.repeat, values)
    if args.postgres:
        pg_run(args.postgres, args.seconds, args.repeat, values)
    else:
        print("\n(no PostgreSQL: pass --postgres URL)")
    print(
        f"\nbest of {args.repeat} runs of {args.seconds}s per figure; Python {sys.version.split()[0]}"
    )


if __name__ == "__main__":
    main()
