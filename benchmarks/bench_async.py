"""The async API against the raw asyncio drivers, in one process and one run.

    python benchmarks/bench_async.py --postgres postgresql://postgres@127.0.0.1/test

For each operation (get, put, get_many of 100 keys, find through a unique JSON index) it times
kvstore's AsyncStore on asyncpg and on aiosqlite, and the same work on the raw driver: asyncpg
with prepared statements on a two-column table (plus an indexed column for find), aiosqlite with
the same SQL. The runs are interleaved (every implementation once per round, rounds repeated)
and the medians reported, with kvstore's time over the raw driver's. Then 100 concurrent tasks
do gets through kvstore's pool of N connections and through an asyncpg pool of N.

SQLite runs in WAL mode with synchronous=NORMAL on both sides, so a put is not one fsync.
Not a test: numbers depend on the machine; run it on demand (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiosqlite
import asyncpg
import sqlalchemy as sa

import kvstore

VALUE = b"v" * 100
RAW_TABLE = "bench_async_raw"


def pg_urls(url: str) -> tuple[str, str]:
    """(kvstore's asyncpg URL, asyncpg's own DSN) for one server."""
    u = sa.make_url(url)
    return (
        u.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False),
        u.set(drivername="postgresql").render_as_string(hide_password=False),
    )


class Impl:
    """One implementation: its operations, each ``await op(i)`` for the i-th call."""

    name: str

    async def get(self, i: int) -> None: ...
    async def put(self, i: int) -> None: ...
    async def get_many(self, i: int) -> None: ...
    async def find(self, i: int) -> None: ...


class KV(Impl):
    def __init__(self, name: str, store: kvstore.AsyncStore, n: int) -> None:
        self.name, self.s, self.n = name, store, n
        # puts go to a namespace without indexes, as the raw table's puts maintain none
        self.puts = store.namespace("bench_async_put")

    @classmethod
    async def make(cls, name: str, url: str, n: int, **kw: Any) -> KV:
        store = await kvstore.connect_async(url, namespace="bench_async", **kw)
        await store.create_index("email", kvstore.json_field("email"), unique=True)
        await store.put_many(
            {f"u{i:06d}": json.dumps({"email": f"e{i}@x"}).encode() for i in range(n)}
        )
        return cls(name, store, n)

    async def get(self, i: int) -> None:
        await self.s.get(f"u{i % self.n:06d}")

    async def put(self, i: int) -> None:
        await self.puts.put(f"p{i % 1000:06d}", VALUE)

    async def get_many(self, i: int) -> None:
        start = (i * 100) % (self.n - 100)
        await self.s.get_many([f"u{j:06d}" for j in range(start, start + 100)])

    async def find(self, i: int) -> None:
        await self.s.find("email", f"e{i % self.n}@x")


class RawPG(Impl):
    name = "raw asyncpg"

    def __init__(self, conn: asyncpg.Connection, n: int) -> None:
        self.c, self.n = conn, n

    @classmethod
    async def make(cls, dsn: str, n: int) -> RawPG:
        c = await asyncpg.connect(dsn)
        await c.execute(f"DROP TABLE IF EXISTS {RAW_TABLE}")
        await c.execute(f"CREATE TABLE {RAW_TABLE} (k text PRIMARY KEY, v bytea, email text UNIQUE)")
        await c.executemany(
            f"INSERT INTO {RAW_TABLE} VALUES ($1, $2, $3)",
            [(f"u{i:06d}", json.dumps({"email": f"e{i}@x"}).encode(), f"e{i}@x") for i in range(n)],
        )
        self = cls(c, n)
        self.g = await c.prepare(f"SELECT v FROM {RAW_TABLE} WHERE k = $1")
        self.p = await c.prepare(
            f"INSERT INTO {RAW_TABLE} (k, v) VALUES ($1, $2) "
            "ON CONFLICT (k) DO UPDATE SET v = excluded.v"
        )
        self.gm = await c.prepare(f"SELECT k, v FROM {RAW_TABLE} WHERE k = ANY($1)")
        self.f = await c.prepare(f"SELECT k FROM {RAW_TABLE} WHERE email = $1")
        return self

    async def get(self, i: int) -> None:
        await self.g.fetchval(f"u{i % self.n:06d}")

    async def put(self, i: int) -> None:
        await self.p.fetch(f"p{i % 1000:06d}", VALUE)

    async def get_many(self, i: int) -> None:
        start = (i * 100) % (self.n - 100)
        await self.gm.fetch([f"u{j:06d}" for j in range(start, start + 100)])

    async def find(self, i: int) -> None:
        await self.f.fetch(f"e{i % self.n}@x")


class RawSQLite(Impl):
    name = "raw aiosqlite"

    def __init__(self, conn: aiosqlite.Connection, n: int) -> None:
        self.c, self.n = conn, n

    @classmethod
    async def make(cls, path: str, n: int) -> RawSQLite:
        c = await aiosqlite.connect(path, isolation_level=None)
        await c.execute("PRAGMA journal_mode=WAL")
        await c.execute("PRAGMA synchronous=NORMAL")
        await c.execute(f"CREATE TABLE {RAW_TABLE} (k text PRIMARY KEY, v blob, email text UNIQUE)")
        await c.execute("BEGIN")
        await c.executemany(
            f"INSERT INTO {RAW_TABLE} VALUES (?, ?, ?)",
            [(f"u{i:06d}", json.dumps({"email": f"e{i}@x"}).encode(), f"e{i}@x") for i in range(n)],
        )
        await c.execute("COMMIT")
        return cls(c, n)

    async def get(self, i: int) -> None:
        async with self.c.execute(f"SELECT v FROM {RAW_TABLE} WHERE k = ?", (f"u{i % self.n:06d}",)) as cur:
            await cur.fetchone()

    async def put(self, i: int) -> None:
        await self.c.execute(
            f"INSERT INTO {RAW_TABLE} (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            (f"p{i % 1000:06d}", VALUE),
        )

    async def get_many(self, i: int) -> None:
        start = (i * 100) % (self.n - 100)
        keys = [f"u{j:06d}" for j in range(start, start + 100)]
        sql = f"SELECT k, v FROM {RAW_TABLE} WHERE k IN ({','.join('?' * len(keys))})"
        async with self.c.execute(sql, keys) as cur:
            await cur.fetchall()

    async def find(self, i: int) -> None:
        async with self.c.execute(f"SELECT k FROM {RAW_TABLE} WHERE email = ?", (f"e{i % self.n}@x",)) as cur:
            await cur.fetchall()


async def per_op(op: Callable[[int], Awaitable[None]], calls: int) -> float:
    t = time.perf_counter()
    for i in range(calls):
        await op(i)
    return (time.perf_counter() - t) / calls


async def concurrent_gets(get: Callable[[int], Awaitable[None]], tasks: int, each: int) -> float:
    """Gets per second with ``tasks`` tasks doing ``each`` gets."""

    async def worker(w: int) -> None:
        for i in range(each):
            await get(w * each + i)

    t = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(tasks)))
    return tasks * each / (time.perf_counter() - t)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--postgres", default=os.environ.get("KVSTORE_TEST_POSTGRES_URL"))
    ap.add_argument("-n", type=int, default=5000, help="entries")
    ap.add_argument("--calls", type=int, default=300, help="calls per operation per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--pool", type=int, default=10)
    args = ap.parse_args()
    if not args.postgres:
        ap.error("--postgres URL (or KVSTORE_TEST_POSTGRES_URL) is needed")
    kv_url, dsn = pg_urls(args.postgres)
    tmp = tempfile.mkdtemp()
    impls: dict[str, list[Impl]] = {
        "PostgreSQL": [await KV.make("kvstore asyncpg", kv_url, args.n), await RawPG.make(dsn, args.n)],
        "SQLite": [
            await KV.make(
                "kvstore aiosqlite",
                f"sqlite+aiosqlite:///{tmp}/kv.db",
                args.n,
                sqlite_synchronous="NORMAL",
            ),
            await RawSQLite.make(f"{tmp}/raw.db", args.n),
        ],
    }
    # Statistics, untimed, as autovacuum's ANALYZE would take them within a minute of the load:
    # before it, PostgreSQL's planner sees fresh tables as nearly empty and reads the whole
    # namespace for get_many (11.5 ms for 100 keys of 5,000, measured, against 0.6 ms after)
    stats = await asyncpg.connect(dsn)
    try:
        await stats.execute("ANALYZE")
    finally:
        await stats.close()
    ops = ["get", "put", "get_many", "find"]
    times: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.rounds):  # interleaved: every implementation once per round
        for db, pair in impls.items():
            for op in ops:
                calls = args.calls // 5 if op == "get_many" else args.calls
                for impl in pair:
                    t = await per_op(getattr(impl, op), calls)
                    times.setdefault((db, op, impl.name), []).append(t)
    print(f"medians of {args.rounds} interleaved rounds, {args.n} entries, 100-byte values\n")
    print(f"| | {' | '.join(op for op in ops)} |")
    print(f"| --- |{' --- |' * len(ops)}")
    for db, (kv, raw) in impls.items():
        row_kv, row_raw = [], []
        for op in ops:
            a = statistics.median(times[(db, op, kv.name)])
            b = statistics.median(times[(db, op, raw.name)])
            row_kv.append(f"{a * 1e6:.0f} µs ({a / b:.2f}×)")  # noqa: RUF001
            row_raw.append(f"{b * 1e6:.0f} µs")
        print(f"| {kv.name} | {' | '.join(row_kv)} |")
        print(f"| {raw.name} | {' | '.join(row_raw)} |")

    # 100 concurrent tasks, pools of N
    pooled = await kvstore.connect_async(
        kv_url,
        namespace="bench_async",
        engine_options={"pool_size": args.pool, "max_overflow": 0},
    )
    pool = await asyncpg.create_pool(dsn, min_size=args.pool, max_size=args.pool)
    g = f"SELECT v FROM {RAW_TABLE} WHERE k = $1"

    async def kv_get(i: int) -> None:
        await pooled.get(f"u{i % args.n:06d}")

    async def raw_get(i: int) -> None:
        async with pool.acquire() as c:
            await c.fetchval(g, f"u{i % args.n:06d}")  # asyncpg caches the prepared statement

    await concurrent_gets(kv_get, 100, 5)  # warm both pools
    await concurrent_gets(raw_get, 100, 5)
    rates: dict[str, list[float]] = {"kv": [], "raw": []}
    for _ in range(5):
        rates["kv"].append(await concurrent_gets(kv_get, 100, 20))
        rates["raw"].append(await concurrent_gets(raw_get, 100, 20))
    kv_rate, raw_rate = statistics.median(rates["kv"]), statistics.median(rates["raw"])
    print(f"\n100 tasks doing gets, pool of {args.pool} (median of 5):")
    print(f"| kvstore asyncpg | {kv_rate:,.0f} gets/s ({raw_rate / kv_rate:.2f}× the time) |")  # noqa: RUF001
    print(f"| raw asyncpg pool | {raw_rate:,.0f} gets/s |")

    await pool.close()
    await pooled.close()
    for kv, _raw in impls.values():
        assert isinstance(kv, KV)
        await kv.s.delete_many(await kv.s.keys())
        await kv.puts.delete_many(await kv.puts.keys())
        await kv.s.drop_index("email")
        await kv.s.close()
    pg_raw = impls["PostgreSQL"][1]
    assert isinstance(pg_raw, RawPG)
    await pg_raw.c.execute(f"DROP TABLE {RAW_TABLE}")
    await pg_raw.c.close()
    sq_raw = impls["SQLite"][1]
    assert isinstance(sq_raw, RawSQLite)
    await sq_raw.c.close()


if __name__ == "__main__":
    asyncio.run(main())
