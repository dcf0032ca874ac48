"""The async API (issue 13): ``kvstore.connect_async`` and ``AsyncStore``, on aiosqlite,
asyncpg and psycopg 3 in async mode.

The async store runs the sync store's code through SQLAlchemy's greenlet bridge, so these
tests check what the bridge must get right: results, errors and transactions are the sync
store's, a transaction belongs to the task that opened it, and the event loop keeps running
while the database works or waits for a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import _sql
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.util import greenlet_spawn

import kvstore
from conftest import AsyncBackend, _with_driver

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[1]


async def test_round_trips(astore: kvstore.AsyncStore) -> None:
    assert await astore.put("a", b"1") == "a"
    assert await astore.get("a") == b"1"
    assert await astore.contains("a")
    with pytest.raises(KeyError):
        await astore.get("missing")
    with pytest.raises(kvstore.NotFoundError):
        await astore.get("missing")
    assert await astore.put_many({"k1": b"x", "k2": b"y", "k3": b"z"}) == ["k1", "k2", "k3"]
    assert await astore.get_many(["k1", "k3", "nope"]) == {"k1": b"x", "k3": b"z"}
    assert await astore.keys("k") == ["k1", "k2", "k3"]
    assert [k async for k in astore.iter_keys("k")] == ["k1", "k2", "k3"]
    assert await astore.count_keys() == 4
    assert await astore.len() == 4
    info = await astore.stat("a")
    assert info.size == 1 and info.version >= 1
    assert await astore.copy("a", "b") == "b"
    assert await astore.move("b", "c") == "c"
    assert await astore.get("c") == b"1" and not await astore.contains("b")
    assert await astore.incr("n") == 1
    assert await astore.incr("n", 5) == 6
    await astore.delete("a")
    await astore.delete_many(["k1", "k2"])
    assert await astore.keys() == ["c", "k3", "n"]
    other = astore.namespace("other")
    await other.put("a", b"elsewhere")
    assert await astore.keys() == ["c", "k3", "n"]
    await other.delete("a")


async def test_iter_keys_pages_through_many_keys(astore: kvstore.AsyncStore) -> None:
    items = {f"key{i:05d}": b"v" for i in range(1300)}  # more than one batch of each layer
    await astore.put_many(items)
    assert [k async for k in astore.iter_keys("key")] == sorted(items)


async def test_a_large_put_many_is_all_or_nothing(astore: kvstore.AsyncStore) -> None:
    """More than one batch of entries (written batch by batch, so the loop runs between them)
    is still one transaction: a bad key in the last batch writes nothing; a key given twice
    keeps its last value; inside a transaction it is rolled back with it."""
    items = [(f"k{i:05d}", b"v") for i in range(2500)]
    with pytest.raises(kvstore.InvalidKeyError):
        await astore.put_many([*items, ("bad\x00key", b"v")])
    assert await astore.count_keys() == 0
    with pytest.raises(TypeError):
        await astore.put_many({**dict(items), "k-last": "not bytes"})  # type: ignore[dict-item]
    assert await astore.count_keys() == 0
    keys = await astore.put_many([*items, ("k00000", b"last")])
    assert keys == [k for k, _ in items] + ["k00000"]
    assert await astore.get("k00000") == b"last"
    assert await astore.count_keys() == 2500
    with pytest.raises(RuntimeError):
        async with astore.transaction() as tx:
            await tx.put_many({f"t{i:05d}": b"v" for i in range(2500)})
            await astore.put_many({f"u{i:05d}": b"v" for i in range(2500)})  # joins it
            raise RuntimeError("roll back")
    assert await astore.count_keys() == 2500
    with pytest.raises(TypeError):
        await astore.put_many(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # a str is not a list of one-letter keys
        await astore.get_many("abc")
    with pytest.raises(TypeError):
        await astore.delete_many("abc")


async def test_large_values_round_trip(astore: kvstore.AsyncStore) -> None:
    big = bytes(range(256)) * 5000  # 1.28 MB: several chunks at the default chunk size
    await astore.put("big", big)
    assert await astore.get("big") == big
    assert (await astore.stat("big")).size == len(big)


async def test_ttl(astore: kvstore.AsyncStore) -> None:
    await astore.put("short", b"v", ttl_secs=0.3)
    await astore.put("long", b"v", ttl_secs=3600)
    assert (await astore.stat("short")).expires_at is not None
    assert await astore.get("short") == b"v"
    await asyncio.sleep(0.4)
    with pytest.raises(KeyError):
        await astore.get("short")
    assert await astore.keys() == ["long"]


async def test_versions_and_conflicts(astore: kvstore.AsyncStore) -> None:
    await astore.put("k", b"1")
    version = (await astore.stat("k")).version
    await astore.put("k", b"2", expected_version=version)
    with pytest.raises(kvstore.ConflictError):
        await astore.put("k", b"3", expected_version=version)
    with pytest.raises(kvstore.ConflictError):
        await astore.delete("k", expected_version=version)
    assert await astore.get("k") == b"2"


async def test_transaction_commits_and_rolls_back(astore: kvstore.AsyncStore) -> None:
    async with astore.transaction() as tx:
        await tx.put("a", b"1")
        await tx.incr("n")
        assert await tx.get("a") == b"1"
    assert await astore.get("a") == b"1"
    with pytest.raises(RuntimeError):
        async with astore.transaction() as tx:
            await tx.put("b", b"2")
            await tx.delete("a")
            raise RuntimeError("boom")
    assert await astore.keys() == ["a", "n"]
    # the task's other calls inside the block join the transaction (as a thread's do)
    with pytest.raises(RuntimeError):
        async with astore.transaction():
            await astore.put("joined", b"1")
            raise RuntimeError("boom")
    assert not await astore.contains("joined")


async def test_nested_transaction_is_a_savepoint(astore: kvstore.AsyncStore) -> None:
    async with astore.transaction() as tx:
        await tx.put("outer", b"1")
        with pytest.raises(RuntimeError):
            async with tx.transaction() as inner:
                await inner.put("inner", b"2")
                raise RuntimeError("undo the inner block only")
        async with tx.transaction() as inner:
            await inner.put("kept", b"3")
    assert await astore.keys() == ["kept", "outer"]


async def test_transaction_ends_with_its_block(astore: kvstore.AsyncStore) -> None:
    async with astore.transaction() as tx:
        await tx.put("a", b"1")
    with pytest.raises(kvstore.TransactionError):
        await tx.put("b", b"2")


async def test_a_caught_database_error_never_loses_a_transaction_silently(
    astore: kvstore.AsyncStore,
) -> None:
    """As for the sync store (tests/test_robustness.py): after a statement fails inside a
    transaction and the error is caught, the transaction commits everything (SQLite, and
    MariaDB, where a failed statement leaves the transaction open) or raises at commit
    (PostgreSQL aborted it), on asyncpg too, whose adapter keeps no status."""
    committed = False
    try:
        async with astore.transaction() as tx:
            await tx.put("a", b"1")
            with pytest.raises(kvstore.DatabaseError):
                await greenlet_spawn(_sql.rows, tx.sync, "SELECT * FROM no_such_table_kvstore")
        committed = True
    except kvstore.TransactionError:
        pass
    assert committed == (astore.dialect_name in ("sqlite", "mariadb", "mysql"))
    assert await astore.keys() == (["a"] if committed else [])


async def test_run_in_transaction(astore: kvstore.AsyncStore) -> None:
    async def work(tx: kvstore.AsyncTransaction) -> int:
        await tx.put("a", b"1")
        return await tx.incr("n", 2)

    assert await astore.run_in_transaction(work) == 2
    assert await astore.get("a") == b"1"

    async def failing(tx: kvstore.AsyncTransaction) -> None:
        await tx.put("b", b"1")
        raise ValueError("no")

    with pytest.raises(ValueError):
        await astore.run_in_transaction(failing)
    assert not await astore.contains("b")


async def test_transactions_belong_to_their_task(astore: kvstore.AsyncStore) -> None:
    """While one task has a transaction open, another task's calls on the same store run on
    their own connection and commit on their own: they do not join (or get rolled back with)
    the first task's transaction."""
    opened = asyncio.Event()
    written = asyncio.Event()

    async def in_transaction() -> None:
        with pytest.raises(RuntimeError):
            async with astore.transaction() as tx:
                await tx.put("mine", b"1")
                opened.set()
                if astore.dialect_name == "postgresql":
                    await written.wait()
                else:
                    # SQLite: the other task's write waits for this one's write lock, in
                    # aiosqlite's thread, while the event loop runs this task on
                    await asyncio.sleep(0.2)
                raise RuntimeError("roll back mine")

    async def other_task() -> None:
        await opened.wait()
        await astore.put("theirs", b"2")
        written.set()

    await asyncio.gather(in_transaction(), other_task())
    assert await astore.keys() == ["theirs"]


# asyncpg itself can hang when a task is cancelled during executemany (a put_many): the task
# never finishes, whatever the caller does (MagicStack/asyncpg#873, reproduced with asyncpg
# alone); a cancelled single statement is tested on it below.
@pytest.mark.parametrize("abackend", ["aiosqlite", "psycopg-async", "asyncmy"], indirect=True)
@pytest.mark.parametrize("delay", [0.001, 0.01, 0.05])
async def test_a_cancelled_put_many_leaves_the_store_usable(
    abackend: AsyncBackend, delay: float
) -> None:
    """A task cancelled while the driver works (a put_many's transaction: BEGIN, executemany,
    COMMIT) writes all or nothing, and the connection it was using is discarded rather than
    handed to the next call in an unknown state (inside a transaction, or still busy)."""
    astore = await abackend.connect()
    try:
        items = {f"k{i:05d}": b"x" * 100 for i in range(20000)}
        task = asyncio.create_task(astore.put_many(items))
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        assert await astore.count_keys("k") in (0, len(items))
        await _still_works(astore)
    finally:
        await astore.close()


async def _still_works(astore: kvstore.AsyncStore) -> None:
    for _ in range(3):  # the next calls (on whatever connection) work
        await astore.put("after", b"1")
        assert await astore.get("after") == b"1"
    async with astore.transaction() as tx:
        await tx.put("tx", b"1")
    assert await astore.get("tx") == b"1"


async def test_a_transaction_belongs_to_the_task_that_opened_it(
    astore: kvstore.AsyncStore,
) -> None:
    """Another task (create_task, gather) using the transaction object is refused before it
    touches the connection; the owner's calls go on, and only they commit."""
    async with astore.transaction() as tx:
        await tx.put("a", b"1")

        async def other() -> None:
            await tx.put("b", b"2")

        with pytest.raises(kvstore.TransactionError, match="task"):
            await asyncio.create_task(other())
        with pytest.raises(kvstore.TransactionError, match="task"):
            await asyncio.gather(tx.get("a"))
        await tx.put("c", b"3")
    assert await astore.keys() == ["a", "c"]


async def test_a_call_cancelled_while_it_waits_for_a_lock(abackend: AsyncBackend) -> None:
    """A statement waiting for another transaction's lock (PostgreSQL's row lock, SQLite's
    write lock in aiosqlite's thread) is cancelled; the lock holder commits, the store works.

    On aiosqlite the cancelled call returns only when SQLite's busy wait in aiosqlite's thread
    ends (sqlite3_interrupt does not cut it short), within busy_timeout: 3 s here, so that the
    test shows the bound without waiting the default 30 s (docs/async.md, Cancellation)."""
    astore = await abackend.connect(busy_timeout=3)
    try:
        holding = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with astore.transaction() as tx:
                await tx.put("k", b"holder")
                holding.set()
                await release.wait()

        hold = asyncio.create_task(holder())
        await holding.wait()
        waiter = asyncio.create_task(astore.put("k", b"waiter"))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        cancelled = time.monotonic()
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(waiter, 30)
        assert time.monotonic() - cancelled < 3 + 5
        release.set()
        await asyncio.wait_for(hold, 30)
        # the waiter's statement was cancelled on PostgreSQL; on SQLite it may have run once
        # the lock came free (aiosqlite's thread finishes what it started)
        assert await astore.get("k") in (b"holder", b"waiter")
        await _still_works(astore)
    finally:
        await astore.close()


@pytest.mark.parametrize("abackend", ["aiosqlite", "psycopg-async", "asyncmy"], indirect=True)
async def test_a_cancelled_transaction_rolls_back(astore: kvstore.AsyncStore) -> None:
    """(Not on asyncpg: the block's put_many is an executemany, see above.)"""
    started = asyncio.Event()

    async def work() -> None:
        async with astore.transaction() as tx:
            await tx.put("first", b"1")
            started.set()
            await tx.put_many({f"k{i:05d}": b"x" for i in range(20000)})
            await asyncio.sleep(10)

    task = asyncio.create_task(work())
    await started.wait()
    await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert await astore.keys() == []
    await astore.put("after", b"1")
    assert await astore.keys() == ["after"]


async def test_indexes(astore: kvstore.AsyncStore) -> None:
    await astore.create_index("email", kvstore.json_field("email"), unique=True)
    await astore.put("u1", b'{"email": "ada@example.com"}')
    await astore.put("u2", b'{"email": "grace@example.com"}')
    assert await astore.find("email", "ada@example.com") == ["u1"]
    assert await astore.find_items("email", prefix="grace") == [
        ("u2", b'{"email": "grace@example.com"}')
    ]
    assert await astore.count("email", gt="a") == 2
    assert [i.name for i in await astore.indexes()] == ["email"]
    with pytest.raises(kvstore.UniqueViolation) as err:
        await astore.put("u3", b'{"email": "ada@example.com"}')
    assert isinstance(err.value, kvstore.KVStoreError)
    await astore.drop_index("email")


async def test_collections(astore: kvstore.AsyncStore) -> None:
    d = astore.dict("settings")
    await d.set("theme", "dark")
    await d.set("size", 12)
    assert await d.get("theme") == "dark"
    assert await d.get("missing", "default") == "default"
    assert await d.getitem("size") == 12
    with pytest.raises(KeyError):
        await d.getitem("missing")
    assert await d.len() == 2 and await d.contains("theme")
    assert sorted([k async for k in d]) == ["size", "theme"]
    assert sorted(await d.items()) == [("size", 12), ("theme", "dark")]
    assert await d.pop("size") == 12
    assert await d.pop("size", None) is None
    await d.delete("theme")
    assert await d.len() == 0

    log = astore.list("log")
    for i in range(3):
        await log.append({"n": i})
    assert await log.getitem(1) == {"n": 1}
    assert await log.getitem(-1) == {"n": 2}
    assert await log.len() == 3
    assert await log.to_list() == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [v async for v in log] == await log.to_list()
    assert await log.pop() == {"n": 2}

    seen = astore.set("seen")
    await seen.add("a")
    await seen.add("b")
    await seen.add("a")
    assert await seen.len() == 2 and await seen.contains("a")
    await seen.discard("a")
    await seen.discard("zzz")
    assert await seen.to_set() == {"b"}
    # collections live in derived namespaces: the store's own keys are untouched
    assert await astore.keys() == []


async def test_collections_join_a_transaction(astore: kvstore.AsyncStore) -> None:
    with pytest.raises(RuntimeError):
        async with astore.transaction() as tx:
            await tx.dict("d").set("k", 1)
            await tx.list("l").append(1)
            raise RuntimeError("roll back")
    assert await astore.dict("d").len() == 0
    assert await astore.list("l").len() == 0


async def test_open_streams_a_large_value(abackend: AsyncBackend) -> None:
    store = await abackend.connect(chunk_size=1024, max_open_readers=1)
    try:
        big = bytes(range(256)) * 64  # 16 chunks: streamed from a snapshot, not read whole
        await store.put("big", big)
        await store.put("big2", big)
        async with await store.open("big") as reader:
            assert await reader.read(10) == big[:10]
            assert await reader.tell() == 10
            await store.put("big", b"replaced")  # the reader keeps its snapshot
            assert await reader.seek(1000) == 1000
            assert await reader.read() == big[1000:]
            with pytest.raises(kvstore.TooManyReadersError):
                await store.open("big2")  # refused at once: the only reader slot is taken
        assert reader.closed
        async with await store.open("big") as reader:
            assert await reader.read() == b"replaced"
        async with await store.open("big2") as reader:  # the slot is free again
            assert await reader.read() == big
        with pytest.raises(KeyError):
            await store.open("missing")
    finally:
        await store.close()


async def test_files(astore: kvstore.AsyncStore, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"file contents" * 1000)
    await astore.put_file("f", src)
    dest = tmp_path / "out.bin"
    await astore.get_file("f", dest)
    assert dest.read_bytes() == src.read_bytes()


async def test_sync_and_async_stores_see_each_other(abackend: AsyncBackend) -> None:
    astore = await abackend.connect()
    sync = abackend.connect_sync()
    try:
        await astore.put("from-async", b"1")
        assert sync.get("from-async") == b"1"
        sync.put("from-sync", b"2")
        assert await astore.get("from-sync") == b"2"
        assert await astore.keys() == sync.keys() == ["from-async", "from-sync"]
    finally:
        sync.close()
        await astore.close()


async def test_database_errors_are_kvstore_errors(abackend: AsyncBackend) -> None:
    # tables that do not exist (create=False under an unused prefix): the driver's error,
    # translated where it happens, as for a sync store
    store = await abackend.connect(table_prefix="nothere_", create=False)
    try:
        with pytest.raises(kvstore.DatabaseError) as err:
            await store.get("k")
        assert err.value.__cause__ is not None
        with pytest.raises(kvstore.DatabaseError):
            async with store.transaction() as tx:
                await tx.put("k", b"v")
    finally:
        await store.close()


async def test_unreachable_database_is_database_unavailable(tmp_path: Path) -> None:
    with pytest.raises(kvstore.DatabaseUnavailableError):
        await kvstore.connect_async(f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/kv.db")
    # aiosqlite stops its thread after a failed open by handing the loop one more result:
    # let it land before the test's event loop closes
    await asyncio.sleep(0.05)


async def test_unreachable_postgres_is_database_unavailable(pg_url: str) -> None:
    for driver in ("asyncpg", "psycopg"):
        url = sa.make_url(_with_driver(pg_url, driver)).set(host="127.0.0.1", port=1)
        with pytest.raises(kvstore.DatabaseUnavailableError):
            await kvstore.connect_async(url.render_as_string(hide_password=False))


async def test_unreachable_mariadb_is_database_unavailable() -> None:
    for url in ("mariadb+asyncmy://root@127.0.0.1:1/nowhere", "mysql://root@127.0.0.1:1/x"):
        with pytest.raises(kvstore.DatabaseUnavailableError):
            await kvstore.connect_async(url)


async def test_an_asyncmy_store_replaces_a_connection_the_server_killed(
    maria_url: str, asyncmy_url: str
) -> None:
    """As tests/test_robustness.py checks for the sync MariaDB drivers: a connection the server
    killed between two calls is found dead and replaced, and the next call succeeds."""
    store = await kvstore.connect_async(asyncmy_url, namespace="a-robust-kill")
    admin = sa.create_engine(maria_url)
    try:
        await store.put("k", b"1")
        for _ in range(2):
            # the connection the store keeps between calls
            cid = await greenlet_spawn(_sql.value, store.sync, "SELECT CONNECTION_ID()")
            with admin.connect() as c:
                c.exec_driver_sql(f"KILL {int(cid)}")
            assert await store.get("k") == b"1"
    finally:
        admin.dispose()
        await store.delete("k")
        await store.close()


async def test_an_async_engine_and_session(abackend: AsyncBackend) -> None:
    url = abackend.url
    if abackend.driver == "psycopg-async":
        url = url.replace("postgresql+psycopg://", "postgresql+psycopg_async://")
    engine = create_async_engine(url)
    try:
        store = await kvstore.connect_async(engine, namespace=abackend.namespace)
        await store.put("k", b"v")
        await store.close()  # leaves the caller's engine usable
        async with AsyncSession(engine) as session:
            joined = await kvstore.connect_async(session, namespace=abackend.namespace)
            await joined.put("in-session", b"1")
            assert await joined.get("in-session") == b"1"
            await session.rollback()  # the caller's transaction decides
            assert not await joined.contains("in-session")
            await joined.put("committed", b"1")
            await session.commit()
        store = await kvstore.connect_async(engine, namespace=abackend.namespace)
        assert await store.keys() == ["committed", "k"]
        await store.close()
    finally:
        await engine.dispose()


async def test_a_listened_engine_sees_every_statement(abackend: AsyncBackend) -> None:
    """A cursor listener on the AsyncEngine (tracing, query counters) sees kvstore's
    statements, through SQLAlchemy's Connection, as on a sync Engine."""
    url = abackend.url
    if abackend.driver == "psycopg-async":
        url = url.replace("postgresql+psycopg://", "postgresql+psycopg_async://")
    engine = create_async_engine(url)
    seen: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    try:
        store = await kvstore.connect_async(engine, namespace=abackend.namespace)
        seen.clear()
        await store.put("a", b"1")
        assert await store.get("a") == b"1"
        assert any("INSERT INTO" in sql for sql in seen)
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.put("b", b"2")
                raise RuntimeError("roll back")
        assert "ROLLBACK" in seen
        assert await store.keys() == ["a"]
        await store.close()
    finally:
        await engine.dispose()


async def test_sync_connect_refuses_async_drivers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="connect_async"):
        kvstore.connect(f"sqlite+aiosqlite:///{tmp_path}/kv.db")
    with pytest.raises(ValueError, match="connect_async"):
        kvstore.connect("postgresql+asyncpg://u@127.0.0.1:1/d")
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/kv.db")
    try:
        with pytest.raises(ValueError, match="connect_async"):
            kvstore.connect(engine.sync_engine)
    finally:
        await engine.dispose()
    with pytest.raises(ValueError, match="asyncio driver"):
        await kvstore.connect_async(f"sqlite+pysqlite:///{tmp_path}/kv.db")
    with pytest.raises(ValueError, match="connect_async"):
        kvstore.connect("mariadb+asyncmy://u@127.0.0.1:1/d")
    with pytest.raises(ValueError, match="asyncio driver"):
        await kvstore.connect_async("mariadb+mariadbconnector://u@127.0.0.1:1/d")


async def test_connect_async_refuses_aiomysql_naming_asyncmy() -> None:
    # aiomysql 0.3 fails on bytes parameters with PyMySQL 1.2 (docs/mariadb.md)
    for url in ("mariadb+aiomysql://u@127.0.0.1:1/d", "mysql+aiomysql://u@127.0.0.1:1/d"):
        with pytest.raises(ValueError, match=r"cannot use the 'aiomysql' driver.*asyncmy"):
            await kvstore.connect_async(url)


# -- the event loop keeps running --------------------------------------------------------------


class Ticker:
    """A task that wakes every few milliseconds and records the longest gap between wakes."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0
        self._stop = False

    async def run(self) -> None:
        last = time.perf_counter()
        while not self._stop:
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    def stop(self) -> None:
        self._stop = True


async def test_event_loop_ticks_during_a_large_put_many(astore: kvstore.AsyncStore) -> None:
    ticker = Ticker()
    tick_task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    for batch in range(4):
        await astore.put_many({f"b{batch}-{i:05d}": b"x" * 512 for i in range(2000)})
    await astore.put("large", b"y" * (3 << 20))  # a chunked value
    elapsed = time.perf_counter() - start
    ticker.stop()
    await tick_task
    assert await astore.count_keys() == 8001
    assert ticker.max_gap < 0.1, (ticker.max_gap, elapsed)
    assert ticker.ticks > 5


@pytest.mark.parametrize("abackend", ["aiosqlite"], indirect=True)
async def test_event_loop_ticks_while_waiting_for_a_sqlite_lock(abackend: AsyncBackend) -> None:
    store = await abackend.connect()
    await store.put("warm", b"up")  # the tables exist and the file is in WAL mode
    path = re.sub(r"^sqlite\+aiosqlite:///", "", abackend.url)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
    release_after = 0.5
    timer = threading.Timer(release_after, holder.execute, ("COMMIT",))
    ticker = Ticker()
    tick_task = asyncio.create_task(ticker.run())
    try:
        timer.start()
        start = time.perf_counter()
        await store.put("k", b"v")  # waits for the lock in aiosqlite's thread
        waited = time.perf_counter() - start
        ticker.stop()
        await tick_task
    finally:
        timer.join()
        holder.close()
        await store.close()
    assert waited >= release_after * 0.8
    assert ticker.max_gap < 0.1, ticker.max_gap
    assert ticker.ticks > 50


class AsyncFile:
    """A file read through ``await f.read(n)`` (as aiofiles and asyncio streams offer): each read
    runs in a worker thread, so it leaves the event loop free."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("rb")

    async def read(self, n: int = -1) -> bytes:
        return await asyncio.to_thread(self._f.read, n)

    def close(self) -> None:
        self._f.close()


#: The longest the event loop may go without running the ticker: 100 ms, not 50. Measured on
#: the 2-core development machine (shared with two other test runs): kvstore's own steps leave
#: gaps of 3-30 ms, but the 100,000-key put_many sets off one full (generation 2) garbage
#: collection of the test process's heap, 35-65 ms by itself, and a gen-2 collection cannot
#: yield to the loop, whoever allocates. 100 ms still fails on any step that blocks: a 64 MiB
#: file read whole, the 100,000 rows built in one greenlet (about 0.5 s) or a lock waited for
#: in the loop's thread take far longer.
MAX_TICK_GAP = 0.1
BIG_FILE = 64 << 20


async def test_the_event_loop_never_blocks(abackend: AsyncBackend, tmp_path: Path) -> None:
    """A ticking task keeps running (gaps below MAX_TICK_GAP, 100 ms: 50 ms is breached by
    Python's own full garbage collection on this machine, see MAX_TICK_GAP) while the store
    writes a 64 MiB file from an async file object and from a sync one, writes 100,000 keys in
    one put_many, and (SQLite) waits for a write lock another connection holds."""
    store = await abackend.connect()
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        block = os.urandom(1 << 20)
        for i in range(BIG_FILE >> 20):
            f.write(bytes([i]) + block[1:])
    await store.put("warm", b"up")  # tables made, SQLite's file in WAL mode
    gaps: dict[str, float] = {}
    try:
        ticker = Ticker()
        tick_task = asyncio.create_task(ticker.run())
        await asyncio.sleep(0.01)

        async def measured(what: str, step: Awaitable[Any]) -> None:
            await asyncio.sleep(0.02)  # the ticker's last wake is after the test's own work
            ticker.max_gap = 0.0
            await step
            gaps[what] = ticker.max_gap

        afile = AsyncFile(src)
        try:
            await measured("put_file(async file)", store.put_file("async-file", afile))
        finally:
            afile.close()
        with src.open("rb") as sync_file:
            await measured("put_file(sync file)", store.put_file("sync-file", sync_file))
        items = {f"k{i:06d}": b"v" * 64 for i in range(100_000)}
        await measured("put_many(100,000)", store.put_many(items))
        if abackend.driver == "aiosqlite":
            path = re.sub(r"^sqlite\+aiosqlite:///", "", abackend.url)
            holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            holder.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
            timer = threading.Timer(0.3, holder.execute, ("COMMIT",))
            timer.start()
            try:
                await measured("put(locked)", store.put("locked", b"v"))
            finally:
                timer.join()
                holder.close()
        ticker.stop()
        await tick_task
        assert (await store.stat("async-file")).size == BIG_FILE
        assert (await store.stat("sync-file")).size == BIG_FILE
        assert (await store.stat("sync-file")).checksum == (await store.stat("async-file")).checksum
        assert await store.count_keys("k") == 100_000
    finally:
        await store.close()
    assert max(gaps.values()) < MAX_TICK_GAP, gaps


# -- docs/async.md ----------------------------------------------------------------------------


def _docs_namespace() -> dict[str, Any]:
    """docs/async.md's examples are plain ``python`` blocks (they need an event loop): their
    definitions, run as written."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "async.md").read_text(), re.S)
    assert len(blocks) >= 2
    namespace: dict[str, Any] = {}
    for block in blocks:
        # dont_inherit: as written, without this file's `from __future__ import annotations`
        # (SQLAlchemy and FastAPI read the example's annotations)
        exec(compile(block, "docs/async.md", "exec", dont_inherit=True), namespace)
    return namespace


@pytest.mark.parametrize("abackend", ["aiosqlite", "asyncpg", "asyncmy"], indirect=True)
async def test_the_fastapi_example(abackend: AsyncBackend) -> None:
    """docs/async.md's FastAPI application, through httpx's AsyncClient: the ORM row and the
    kv entry commit together (and roll back together), the index endpoint finds the entry,
    the cached dependency computes once per plan."""
    namespace = _docs_namespace()
    engine = create_async_engine(abackend.url)
    app = await namespace["create_app"](engine, abackend.namespace)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            r = await client.post("/users", json={"email": "ada@example.com", "plan": "pro"})
            assert r.status_code == 201, r.text
            user_id = r.json()["id"]
            r = await client.get("/users/by-email/ada@example.com")
            assert r.json() == {"email": "ada@example.com", "plan": "pro", "user_id": user_id}
            assert (await client.get("/users/by-email/nobody@example.com")).status_code == 404
            # the same email: the index refuses the entry, and the row is not committed either
            r = await client.post("/users", json={"email": "ada@example.com", "plan": "free"})
            assert r.status_code == 409, r.text
            assert (await client.get("/users/count")).json() == {"rows": 1, "entries": 1}
            for _ in range(3):
                r = await client.get("/limits", params={"plan": "pro"})
                assert r.json() == {"plan": "pro", "max_projects": 10}
            assert (await client.get("/limits?plan=free")).json()["max_projects"] == 1
            assert await app.state.plan_limits.store.len() == 2  # one entry per plan
    finally:
        await app.state.store.close()
        async with engine.begin() as conn:
            await conn.run_sync(namespace["Base"].metadata.drop_all)
        await engine.dispose()


async def test_the_async_docs_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/async.md's examples, run as written."""
    monkeypatch.chdir(tmp_path)
    namespace = _docs_namespace()
    await namespace["main"]()
    store = await kvstore.connect_async("sqlite+aiosqlite:///kv.db")
    try:
        await store.put("alice", b"100")
        await store.put("bob", b"0")
        await namespace["transfer"](store)
        assert await store.get("alice") == b"90"
        assert await store.get("bob") == b"9"
        assert await store.get("carol") == b"1"
        assert await store.get("audit-last") == b"alice->bob"
        await namespace["collections"](store)
        await namespace["cached_quotes"](store)
        await namespace["stream"](store)
        (tmp_path / "upload.bin").write_bytes(b"u" * 3_000_000)
        await namespace["large_writes"](store, str(tmp_path / "upload.bin"))
        assert (await store.stat("upload")).size == 3_000_000
        assert await store.count_keys("row-") == 5_000
    finally:
        await store.close()


async def test_writing_through_another_engine_inside_a_transaction_is_refused(
    tmp_path: Path,
) -> None:
    """Two async stores (two engines) on one SQLite file: inside one task's write-locking
    transaction, a write through the other store in the same task is refused at once (it
    would wait for the task's own lock), as for sync stores in one thread; another task's write
    through it waits for the transaction to commit and then succeeds."""
    url = f"sqlite+aiosqlite:///{tmp_path}/two.db"
    a = await kvstore.connect_async(url)
    b = await kvstore.connect_async(url, busy_timeout=60)
    try:
        await b.put("k", b"0")
        async with a.transaction() as tx:
            await tx.put("k", b"1")
            with pytest.raises(kvstore.TransactionError, match="another store"):
                await b.put("k", b"2")
            other = asyncio.ensure_future(b.put("k", b"3"))  # another task: not refused
            await asyncio.sleep(0.1)
            assert not other.done()  # it waits for the lock
        await other
        assert await a.get("k") == b"3"
        await b.put("k", b"4")  # nothing open any more
    finally:
        await a.close()
        await b.close()
