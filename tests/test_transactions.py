"""Transactions: all-or-nothing writes, savepoints, isolation levels, retries, misuse, and a
store bound to an application's own Connection or Session.

Single-connection behaviour runs on every backend (``store``); visibility to other
connections and threads runs where several connections share one database (``shared_*``).
Where only one dialect offers a behaviour, the test narrows ``shared_backend`` to it by
indirect parametrisation rather than skipping, so CI (where a skip is a failure) runs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import _sql
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

import kvstore
from conftest import SHARED_BACKENDS
from kvstore import ConflictError, TransactionError, UniqueViolation

pytestmark = pytest.mark.timeout(60)

# Every level name the issue lists, and which of them each dialect offers. SQLite has one
# writer at a time, so its transactions are serialisable whatever they are called: it accepts
# the portable names as well as its own BEGIN modes.
ALL_LEVELS = [
    "SERIALIZABLE",
    "REPEATABLE READ",
    "READ COMMITTED",
    "DEFERRED",
    "IMMEDIATE",
    "EXCLUSIVE",
]
OFFERED = {
    "sqlite-file": set(ALL_LEVELS),
    "sqlite-memory": set(ALL_LEVELS),
    "postgresql": {"SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED"},
}
OFFERED["postgresql-psycopg2"] = OFFERED["postgresql"]
OFFERED["mariadb"] = OFFERED["postgresql"]
# A level under which "read a key, then write it" fails when another transaction wrote the
# key after we read it (instead of silently losing that write).
CONFLICT_LEVEL = {"sqlite-file": "DEFERRED", "postgresql": "SERIALIZABLE"}
CONFLICT_LEVEL["postgresql-psycopg2"] = CONFLICT_LEVEL["postgresql"]
# A level for a read-only transaction: a stable snapshot that does not block writers.
SNAPSHOT_LEVEL = {"sqlite-file": "DEFERRED", "postgresql": "REPEATABLE READ"}
SNAPSHOT_LEVEL["postgresql-psycopg2"] = SNAPSHOT_LEVEL["postgresql"]
# InnoDB: SERIALIZABLE reads take shared locks, so two read-then-write transactions deadlock
# (1213, retried); REPEATABLE READ reads one snapshot without locking
CONFLICT_LEVEL["mariadb"] = "SERIALIZABLE"
SNAPSHOT_LEVEL["mariadb"] = "REPEATABLE READ"
# Galera nodes are MariaDB servers, and Connector/Python speaks to the same server
for _table in (OFFERED, CONFLICT_LEVEL, SNAPSHOT_LEVEL):
    _table["galera"] = _table["mariadb-mariadbconnector"] = _table["mariadb"]
# the async API's backends (ASYNC_CONTRACT_MODULES) are those servers through asyncio drivers
OFFERED["aiosqlite"] = OFFERED["sqlite-file"]
OFFERED["asyncpg"] = OFFERED["psycopg-async"] = OFFERED["postgresql"]
OFFERED["asyncmy"] = OFFERED["mariadb"]


class Boom(Exception):
    pass


def in_thread(fn: Callable[[], Any], timeout: float = 30) -> Any:
    """Run ``fn`` in another thread; return its result or re-raise its exception."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"thread did not finish within {timeout}s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.fixture
def elsewhere(store: kvstore.Store) -> Iterator[kvstore.Store]:
    """The same store in a second namespace of this test's own (removed afterwards, as the
    conftest removes only the test's namespace)."""
    s = store.namespace("x" + store.namespace_name)
    try:
        yield s
    finally:
        s.delete_many(s.keys())


@pytest.fixture
def other(shared_backend: Any) -> Iterator[kvstore.Store]:
    """A second, independent connection to the same namespace."""
    s = shared_backend.connect()
    try:
        yield s
    finally:
        s.close()


# -- commit and rollback ---------------------------------------------------------------------
def test_commit_applies_every_write(store: kvstore.Store) -> None:
    store.put("old", b"x")
    store.put("moved", b"m")
    with store.transaction() as tx:
        n = tx.incr("orders")
        tx.put(f"order-{n}", b"payload", metadata={"by": "ada"}, content_type="text/plain")
        tx.put_many({"a": b"1", "b": b"2"})
        tx.delete("old")
        tx.copy("a", "a2")
        tx.move("moved", "moved2")
    assert store.get("orders") == b"1"
    assert store.get("order-1") == b"payload"
    assert store.stat("order-1").metadata == {"by": "ada"}
    assert store.get_many(["a", "b", "a2", "moved2"]) == {
        "a": b"1",
        "b": b"2",
        "a2": b"1",
        "moved2": b"m",
    }
    assert "old" not in store
    assert "moved" not in store


@pytest.mark.async_exclude(
    reason="checks the sync API's Transaction type (AsyncTransaction: tests/test_async.py)"
)
def test_block_value_is_the_transaction(store: kvstore.Store) -> None:
    with store.transaction() as tx:
        assert isinstance(tx, kvstore.Transaction)
        assert isinstance(tx, kvstore.KeyValueStore)
        assert tx.namespace_name == store.namespace_name


def test_exception_rolls_back_values_metadata_counters_and_deletes(store: kvstore.Store) -> None:
    store.put("a", b"before", metadata={"v": 1}, content_type="text/plain")
    store.incr("counter", 5)
    store.put("doomed", b"still here")
    before = {k: store.stat(k) for k in store}
    error = Boom("stop")
    with pytest.raises(Boom) as info, store.transaction() as tx:
        tx.put("a", b"after", metadata={"v": 2}, content_type="application/json")
        assert tx.incr("counter", 10) == 15
        tx.delete("doomed")
        tx.put("new", b"n")
        tx.put_many([("m1", b"1"), ("m2", b"2")])
        tx.move("a", "a-moved")
        raise error
    assert info.value is error  # the very exception, not a wrapper
    assert sorted(store.keys()) == sorted(before)
    for key, stat in before.items():
        assert store.stat(key) == stat  # value, version, metadata, timestamps: all unchanged
    assert store.get("a") == b"before"
    assert store.get("counter") == b"5"
    assert store.get("doomed") == b"still here"


def test_rollback_removes_index_entries(store: kvstore.Store) -> None:
    store.create_index("by_email", kvstore.json_field("email"), unique=True)
    store.put("u1", b'{"email": "ada@example.org"}')
    with pytest.raises(Boom), store.transaction() as tx:
        tx.put("u1", b'{"email": "grace@example.org"}')
        tx.put("u2", b'{"email": "ada@example.org"}')  # frees nothing yet: u1 moved off it
        assert tx.find("by_email", "grace@example.org") == ["u1"]
        assert tx.find("by_email", "ada@example.org") == ["u2"]
        raise Boom
    assert store.find("by_email", "ada@example.org") == ["u1"]
    assert store.find("by_email", "grace@example.org") == []
    # the unique index still holds after the rollback: nothing half-written lingers
    with pytest.raises(UniqueViolation):
        store.put("u3", b'{"email": "ada@example.org"}')


def _blob_id(s: kvstore.Store, key: str) -> int | None:
    found = _sql.rows(
        s, "SELECT blob_id FROM {entries} WHERE namespace = :ns AND key = :key", key=key
    )
    return None if not found else found[0][0]


def _chunk_count(s: kvstore.Store, blob_id: int) -> int:
    return int(_sql.value(s, "SELECT COUNT(*) FROM {chunks} WHERE blob_id = :blob", blob=blob_id))


@pytest.mark.async_exclude(
    reason="reads the chunk table through the sync store's connection (tests/_sql.py)"
)
def test_rollback_removes_blob_chunks(backend: Any) -> None:
    s = backend.connect(chunk_size=1024)
    try:
        old = bytes(range(256)) * 20  # 5 chunks
        s.put("big", old)
        old_blob = _blob_id(s, "big")
        assert old_blob is not None
        new = b"n" * 3000
        with pytest.raises(Boom), s.transaction() as tx:
            tx.put("big", new)
            tx.put("big2", new)
            new_blobs = [_blob_id(tx, "big"), _blob_id(tx, "big2")]
            assert None not in new_blobs
            assert all(_chunk_count(tx, b) == 3 for b in new_blobs if b is not None)
            assert tx.get("big") == new
            raise Boom
        assert all(_chunk_count(s, b) == 0 for b in new_blobs if b is not None)
        assert _chunk_count(s, old_blob) == 5
        assert s.get("big") == old
        assert "big2" not in s
    finally:
        s.close()


@pytest.mark.async_exclude(
    reason="the async API's collections have coroutine methods this sync face does not wrap (tests/test_async.py rolls them back)"
)
def test_collections_roll_back_with_the_transaction(store: kvstore.Store) -> None:
    d, lst, st = store.dict("settings"), store.list("events"), store.set("seen")
    d["theme"] = "dark"
    lst.append("boot")
    st.add("x")
    with pytest.raises(Boom), store.transaction() as tx:
        tx.dict("settings")["theme"] = "light"
        tx.dict("settings")["new"] = 1
        tx.list("events").append("login")
        tx.set("seen").add("y")
        tx.put("k", b"v")
        assert dict(tx.dict("settings")) == {"theme": "light", "new": 1}
        assert list(tx.list("events")) == ["boot", "login"]
        raise Boom
    assert dict(d) == {"theme": "dark"}
    assert list(lst) == ["boot"]
    assert set(st) == {"x"}
    assert "k" not in store
    with store.transaction() as tx:
        tx.dict("settings")["theme"] = "light"
        tx.list("events").append("login")
        tx.set("seen").add("y")
    assert d["theme"] == "light"
    assert list(lst) == ["boot", "login"]
    assert set(st) == {"x", "y"}


def test_base_exception_rolls_back_too(store: kvstore.Store) -> None:
    with pytest.raises(KeyboardInterrupt), store.transaction() as tx:
        tx.put("k", b"v")
        raise KeyboardInterrupt
    assert "k" not in store
    store.put("after", b"ok")  # the connection went back to the pool in a usable state
    assert store.get("after") == b"ok"


def test_store_error_inside_rolls_back_earlier_writes(store: kvstore.Store) -> None:
    store.put("k", b"v1")
    with pytest.raises(ConflictError), store.transaction() as tx:
        tx.put("a", b"1")
        tx.put("k", b"v2", expected_version=7)
    assert "a" not in store
    assert store.get("k") == b"v1"


def test_caught_store_error_leaves_the_transaction_usable(store: kvstore.Store) -> None:
    # Each operation inside a transaction is its own savepoint: on PostgreSQL a failed
    # statement would otherwise abort the whole transaction.
    store.put("k", b"v1")
    store.put("text", b"not a number")
    with store.transaction() as tx:
        tx.put("a", b"1")
        with pytest.raises(ConflictError):
            tx.put("k", b"v2", expected_version=7)
        with pytest.raises(ValueError):
            tx.incr("text")
        tx.put("b", b"2")
    assert store.get_many(["a", "b", "k"]) == {"a": b"1", "b": b"2", "k": b"v1"}


def _namespace_rows(s: kvstore.Store) -> list[list[tuple[Any, ...]]]:
    """Every row any kvstore table holds for the store's namespace."""
    with _sql.connection(s) as conn:
        return [
            conn.rows("SELECT * FROM {namespaces} WHERE namespace = :ns"),
            conn.rows("SELECT * FROM {entries} WHERE namespace = :ns ORDER BY key"),
            conn.rows("SELECT * FROM {indexes} WHERE namespace = :ns ORDER BY name"),
            conn.rows("SELECT * FROM {lists} WHERE namespace = :ns ORDER BY name"),
        ]


@pytest.mark.async_exclude(
    reason="reads the tables through the sync store's connection (tests/_sql.py)"
)
def test_empty_transaction_commits_nothing(store: kvstore.Store) -> None:
    store.put("k", b"v")  # a namespace in use, not a fresh one
    before = _namespace_rows(store)
    with _sql.recorded(store) as rec, store.transaction():
        pass
    assert rec.writes() == [], rec.sql
    assert _namespace_rows(store) == before
    # the recording sees this store's writes: an empty one is not empty for lack of eyes
    with _sql.recorded(store) as rec, store.transaction() as tx:
        tx.put("k2", b"v")
    assert rec.writes() != []


# -- visibility --------------------------------------------------------------------------------
def test_reads_see_the_transactions_own_writes(store: kvstore.Store) -> None:
    store.put("gone", b"x")
    with store.transaction() as tx:
        tx.put("a", b"1", metadata={"m": True})
        tx.put("b", b"2")
        tx.delete("gone")
        assert tx.get("a") == b"1"
        assert "a" in tx and "gone" not in tx
        assert tx.keys() == ["a", "b"]
        assert list(tx.iter_keys()) == ["a", "b"]
        assert len(tx) == 2
        assert tx.stat("a").metadata == {"m": True}
        assert tx.get_many(["a", "b", "gone"]) == {"a": b"1", "b": b"2"}
        with tx.open("b") as f:
            assert f.read() == b"2"
        assert tx.incr("n") == 1
        assert tx.incr("n") == 2


def test_other_connections_see_nothing_until_commit(
    shared_store: kvstore.Store, other: kvstore.Store
) -> None:
    shared_store.put("k", b"old")
    with shared_store.transaction() as tx:
        tx.put("k", b"new")
        tx.put("fresh", b"1")
        tx.incr("n")
        assert other.get("k") == b"old"
        assert "fresh" not in other
        assert other.keys() == ["k"]
        # and another thread of the same store is another connection too
        assert in_thread(lambda: shared_store.get("k")) == b"old"
    assert other.get("k") == b"new"
    assert other.keys() == ["fresh", "k", "n"]


def test_rolled_back_writes_are_never_visible(
    shared_store: kvstore.Store, other: kvstore.Store
) -> None:
    with pytest.raises(Boom), shared_store.transaction() as tx:
        tx.put("k", b"v")
        raise Boom
    assert other.keys() == []


# -- what joins a transaction ------------------------------------------------------------------
def test_plain_store_calls_in_the_same_thread_join_the_transaction(
    store: kvstore.Store, elsewhere: kvstore.Store
) -> None:
    # On SQLite a second connection would wait for the transaction's write lock: joining is
    # what keeps this from deadlocking (and on sqlite-memory there is no second connection).
    with pytest.raises(Boom), store.transaction() as tx:
        tx.put("via-tx", b"1")
        store.put("via-store", b"2")
        store.namespace(elsewhere.namespace_name).put("other-ns", b"3")
        store.incr("counter")
        assert store.get("via-tx") == b"1"  # the store reads the transaction's writes
        assert tx.get("via-store") == b"2"
        raise Boom
    assert store.keys() == []
    assert elsewhere.keys() == []


def test_plain_store_calls_after_the_block_are_their_own(store: kvstore.Store) -> None:
    with store.transaction() as tx:
        tx.put("a", b"1")
    store.put("b", b"2")  # autocommitted, not part of a finished transaction
    with pytest.raises(Boom), store.transaction():
        raise Boom
    assert store.keys() == ["a", "b"]


def test_other_threads_do_not_join(shared_store: kvstore.Store, other: kvstore.Store) -> None:
    # Another thread's plain call runs on its own connection: it commits on its own (after
    # ours, on SQLite, where it waits for the write lock) and survives our rollback.
    started = threading.Event()

    def writer() -> None:
        started.set()
        shared_store.put("from-thread", b"t")

    t = threading.Thread(target=writer, daemon=True)
    with pytest.raises(Boom), shared_store.transaction() as tx:
        tx.put("mine", b"m")
        t.start()
        assert started.wait(10)
        time.sleep(0.1)
        raise Boom
    t.join(30)
    assert not t.is_alive()
    assert other.keys() == ["from-thread"]


# -- nesting -----------------------------------------------------------------------------------
def test_failed_inner_block_rolls_back_alone(store: kvstore.Store) -> None:
    with store.transaction() as tx:
        tx.put("outer-before", b"1")
        with pytest.raises(Boom), tx.transaction() as inner:
            inner.put("inner", b"2")
            inner.put("outer-before", b"overwritten")
            tx.put("outer-via-parent", b"3")  # the parent writes into the savepoint too
            raise Boom
        assert tx.get("outer-before") == b"1"
        assert "inner" not in tx
        tx.put("outer-after", b"4")
    assert store.keys() == ["outer-after", "outer-before"]


def test_store_transaction_inside_a_transaction_is_a_savepoint(store: kvstore.Store) -> None:
    with store.transaction() as tx:
        tx.put("a", b"1")
        with pytest.raises(Boom), store.transaction() as inner:
            inner.put("b", b"2")
            raise Boom
        with store.transaction() as inner:
            inner.put("c", b"3")
    assert store.keys() == ["a", "c"]


def test_successful_inner_block_still_rolls_back_with_the_outer(store: kvstore.Store) -> None:
    with pytest.raises(Boom), store.transaction() as tx:
        with tx.transaction() as inner:
            inner.put("inner", b"1")
        assert tx.get("inner") == b"1"
        raise Boom
    assert store.keys() == []


def test_deep_nesting(store: kvstore.Store) -> None:
    with store.transaction() as t1:
        t1.put("l1", b"1")
        with t1.transaction() as t2:
            t2.put("l2", b"2")
            with pytest.raises(Boom), t2.transaction() as t3:
                t3.put("l3", b"3")
                with t3.transaction() as t4:
                    t4.put("l4", b"4")
                raise Boom
            t2.put("l2b", b"2b")
    assert store.keys() == ["l1", "l2", "l2b"]


def test_caught_error_inside_inner_block_keeps_outer_state(store: kvstore.Store) -> None:
    store.create_index("by_email", kvstore.json_field("email"), unique=True)
    store.put("u1", b'{"email": "a@x"}')
    with store.transaction() as tx:
        tx.put("u2", b'{"email": "b@x"}')
        with pytest.raises(UniqueViolation), tx.transaction() as inner:
            inner.put("u3", b'{"email": "c@x"}')
            inner.put("u4", b'{"email": "a@x"}')
        assert tx.find("by_email", "c@x") == []
    assert store.keys() == ["u1", "u2"]
    assert store.find("by_email", "b@x") == ["u2"]


# -- isolation levels --------------------------------------------------------------------------
@pytest.mark.parametrize("level", ALL_LEVELS)
def test_isolation_levels_the_dialect_offers(
    backend: Any, store: kvstore.Store, level: str
) -> None:
    if level in OFFERED[backend.name]:
        with store.transaction(isolation=level) as tx:
            tx.put("k", level.encode())
            assert tx.get("k") == level.encode()
        assert store.get("k") == level.encode()
        # spelling is forgiving: case, underscores and spacing
        with store.transaction(isolation=level.lower().replace(" ", "_")) as tx:
            tx.incr("n")
        assert store.get("n") == b"1"
    else:
        with (
            pytest.raises(ValueError, match="not offered") as info,
            store.transaction(isolation=level),
        ):
            pass
        for offered in OFFERED[backend.name]:
            assert offered in str(info.value)


def test_unknown_isolation_level_is_a_value_error_naming_the_choices(
    backend: Any, store: kvstore.Store
) -> None:
    for bad in ["bogus", "", "READ UNCOMMITTED"]:
        with pytest.raises(ValueError) as info, store.transaction(isolation=bad):
            pytest.fail("the block must not run")
        assert repr(bad) in str(info.value)
        for offered in OFFERED[backend.name]:
            assert offered in str(info.value)
    store.put("k", b"v")  # nothing was left open
    assert store.get("k") == b"v"


def test_isolation_on_a_nested_transaction_is_an_error(store: kvstore.Store) -> None:
    with store.transaction() as tx:
        tx.put("a", b"1")
        with (
            pytest.raises(TransactionError, match="outermost"),
            tx.transaction(isolation="SERIALIZABLE"),
        ):
            pytest.fail("the block must not run")
        with (
            pytest.raises(TransactionError, match="outermost"),
            store.transaction(isolation="SERIALIZABLE"),
        ):
            pytest.fail("the block must not run")
        tx.put("b", b"2")  # the outer transaction is still usable
    assert store.keys() == ["a", "b"]


def test_unknown_isolation_level_inside_a_transaction_is_still_a_value_error(
    store: kvstore.Store,
) -> None:
    with store.transaction(), pytest.raises(ValueError), store.transaction(isolation="bogus"):
        pass


@pytest.mark.parametrize("shared_backend", ["sqlite-file", "postgresql"], indirect=True)
def test_snapshot_level_reads_a_stable_snapshot(
    shared_backend: Any, shared_store: kvstore.Store, other: kvstore.Store
) -> None:
    shared_store.put("k", b"v1")
    with shared_store.transaction(isolation=SNAPSHOT_LEVEL[shared_backend.name]) as tx:
        assert tx.get("k") == b"v1"
        other.put("k", b"v2")  # a writer is not blocked by this read-only transaction
        other.put("new", b"x")
        assert tx.get("k") == b"v1"
        assert tx.keys() == ["k"]
    assert shared_store.get("k") == b"v2"


@pytest.mark.parametrize("shared_backend", ["postgresql"], indirect=True)
def test_read_committed_sees_commits_made_during_the_transaction(
    shared_store: kvstore.Store, other: kvstore.Store
) -> None:
    shared_store.put("k", b"v1")
    with shared_store.transaction(isolation="READ COMMITTED") as tx:
        assert tx.get("k") == b"v1"
        other.put("k", b"v2")
        assert tx.get("k") == b"v2"


@pytest.mark.parametrize("shared_backend", ["postgresql"], indirect=True)
def test_serializable_refuses_a_write_skew(shared_store: kvstore.Store) -> None:
    # Two transactions each read both keys and write one: only SERIALIZABLE notices that
    # no serial order gives this result; the later commit fails with a retryable error.
    shared_store.put_many({"x": b"0", "y": b"0"})
    barrier = threading.Barrier(2, timeout=20)
    outcomes: list[str] = []

    def worker(write: str) -> None:
        try:
            with shared_store.transaction(isolation="SERIALIZABLE") as tx:
                tx.get("x"), tx.get("y")
                barrier.wait()
                tx.put(write, b"1")
                barrier.wait()
            outcomes.append("committed")
        except Exception as exc:
            assert _sql.is_retryable(shared_store, exc), exc
            outcomes.append("retryable")

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in "xy"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert sorted(outcomes) == ["committed", "retryable"]


@pytest.mark.parametrize("shared_backend", ["sqlite-file"], indirect=True)
def test_sqlite_default_transaction_holds_the_write_lock(
    shared_store: kvstore.Store, shared_backend: Any
) -> None:
    # The default (IMMEDIATE) takes the write lock at BEGIN, so a read-then-write transaction
    # never fails half-way with SQLITE_BUSY_SNAPSHOT. A writer elsewhere waits for it.
    impatient = shared_backend.connect(busy_timeout=0.05)
    try:
        with (
            shared_store.transaction(),
            pytest.raises(Exception, match="locked"),
            impatient.transaction(),
        ):
            pass
        with impatient.transaction() as tx:
            tx.put("k", b"v")
        assert shared_store.get("k") == b"v"
    finally:
        impatient.close()


# -- run_in_transaction ------------------------------------------------------------------------
def test_run_in_transaction_returns_and_commits(store: kvstore.Store) -> None:
    def transfer(tx: kvstore.Transaction) -> int:
        tx.put("from", b"90")
        tx.put("to", b"10")
        return 42

    assert store.run_in_transaction(transfer) == 42
    assert store.get_many(["from", "to"]) == {"from": b"90", "to": b"10"}


def test_run_in_transaction_does_not_retry_other_errors(store: kvstore.Store) -> None:
    calls = []

    def fn(tx: kvstore.Transaction) -> None:
        calls.append(1)
        tx.put("k", b"v")
        raise Boom

    with pytest.raises(Boom):
        store.run_in_transaction(fn, retries=5)
    assert calls == [1]
    assert "k" not in store


def test_run_in_transaction_rejects_bad_retries(store: kvstore.Store) -> None:
    bads: list[Any] = [-1, 1.5, "3", True, None]
    for bad in bads:
        with pytest.raises(ValueError, match="retries"):
            store.run_in_transaction(lambda tx: tx.put("k", b"v"), retries=bad)
    assert "k" not in store


def test_run_in_transaction_rejects_bad_backoff(store: kvstore.Store) -> None:
    bads: list[Any] = [-0.1, "fast"]
    for bad in bads:
        with pytest.raises((ValueError, TypeError), match="backoff"):
            store.run_in_transaction(lambda tx: tx.put("k", b"v"), backoff=bad)
    assert "k" not in store


def _conflicting(
    s: kvstore.Store, spoiler: kvstore.Store, conflicts: int, calls: list[int]
) -> Callable[[kvstore.Transaction], int]:
    """A read-modify-write whose first ``conflicts`` attempts lose a race: between our read
    and our write, another connection commits a write to the same key."""

    def fn(tx: kvstore.Transaction) -> int:
        calls.append(1)
        n = int(tx.get("balance"))
        if len(calls) <= conflicts:
            in_thread(lambda: spoiler.incr("balance", 100))
        tx.put("balance", str(n + 1).encode())
        return n + 1

    return fn


@pytest.mark.parametrize("shared_backend", ["sqlite-file", "postgresql"], indirect=True)
def test_run_in_transaction_retries_a_lost_race(
    shared_backend: Any, shared_store: kvstore.Store, other: kvstore.Store
) -> None:
    shared_store.put("balance", b"0")
    calls: list[int] = []
    fn = _conflicting(shared_store, other, 2, calls)
    result = shared_store.run_in_transaction(
        fn, retries=5, isolation=CONFLICT_LEVEL[shared_backend.name], backoff=0.001
    )
    assert len(calls) == 3
    assert result == 201  # read after both spoilers committed: no update was lost
    assert shared_store.get("balance") == b"201"


@pytest.mark.parametrize("shared_backend", ["sqlite-file", "postgresql"], indirect=True)
def test_run_in_transaction_gives_up_with_transaction_error(
    shared_backend: Any, shared_store: kvstore.Store, other: kvstore.Store
) -> None:
    shared_store.put("balance", b"0")
    calls: list[int] = []
    fn = _conflicting(shared_store, other, 100, calls)
    with pytest.raises(TransactionError, match="3 attempts") as info:
        shared_store.run_in_transaction(
            fn, retries=2, isolation=CONFLICT_LEVEL[shared_backend.name], backoff=0.001
        )
    assert isinstance(info.value, kvstore.KVStoreError)
    assert len(calls) == 3
    cause = info.value.__cause__
    assert cause is not None and _sql.is_retryable(shared_store, cause)
    assert shared_store.get("balance") == b"300"  # only the spoilers' writes landed


@pytest.mark.parametrize("shared_backend", ["sqlite-file"], indirect=True)
def test_run_in_transaction_retries_database_is_locked(
    shared_backend: Any, shared_store: kvstore.Store
) -> None:
    impatient = shared_backend.connect(busy_timeout=0.01)
    calls: list[int] = []
    try:
        release = threading.Event()
        holding = threading.Event()

        def hold() -> None:
            with shared_store.transaction() as tx:
                tx.put("held", b"1")
                holding.set()
                release.wait(20)

        t = threading.Thread(target=hold, daemon=True)
        t.start()
        assert holding.wait(10)

        def fn(tx: kvstore.Transaction) -> None:
            calls.append(1)
            tx.put("k", b"v")

        with pytest.raises(TransactionError, match="locked") as info:
            impatient.run_in_transaction(fn, retries=3, backoff=0.001)
        assert "locked" in str(info.value.__cause__)
        assert calls == []  # BEGIN IMMEDIATE itself waited for the lock, then gave up

        threading.Timer(0.1, release.set).start()
        impatient.run_in_transaction(fn, retries=20, backoff=0.05)
        t.join(20)
        assert calls == [1]
        assert shared_store.get_many(["held", "k"]) == {"held": b"1", "k": b"v"}
    finally:
        release.set()
        impatient.close()


def test_run_in_transaction_inside_a_transaction_is_a_savepoint(store: kvstore.Store) -> None:
    calls = []

    def fn(tx: kvstore.Transaction) -> None:
        calls.append(1)
        tx.put("inner", b"1")
        raise Boom

    with store.transaction() as tx:
        tx.put("outer", b"1")
        with pytest.raises(Boom):
            store.run_in_transaction(fn, retries=5)
    assert calls == [1]  # the outer transaction owns the retry decision
    assert store.keys() == ["outer"]


# -- misuse ------------------------------------------------------------------------------------
USES: dict[str, Callable[[kvstore.Store], Any]] = {
    "get": lambda tx: tx.get("k"),
    "put": lambda tx: tx.put("k", b"v"),
    "delete": lambda tx: tx.delete("k"),
    "contains": lambda tx: "k" in tx,
    "len": lambda tx: len(tx),
    "keys": lambda tx: tx.keys(),
    "incr": lambda tx: tx.incr("n"),
    "put_many": lambda tx: tx.put_many({"a": b"1"}),
    "stat": lambda tx: tx.stat("k"),
    "open": lambda tx: tx.open("k"),
    "transaction": lambda tx: tx.transaction().__enter__(),
}


def test_using_a_transaction_after_its_block_is_an_error(store: kvstore.Store) -> None:
    with store.transaction() as tx:
        tx.put("k", b"v")
    for use in USES.values():
        with pytest.raises(TransactionError, match="ended"):
            use(tx)
    store.put("k", b"after")  # and nothing was disturbed
    assert store.keys() == ["k"]


def test_using_a_rolled_back_transaction_is_an_error(store: kvstore.Store) -> None:
    with pytest.raises(Boom), store.transaction() as tx:
        raise Boom
    for use in ["get", "put", "keys"]:
        with pytest.raises(TransactionError, match="ended"):
            USES[use](tx)
    assert store.keys() == []


def test_using_an_inner_transaction_after_its_block_is_an_error(store: kvstore.Store) -> None:
    with store.transaction() as tx:
        with tx.transaction() as inner:
            inner.put("a", b"1")
        with pytest.raises(TransactionError, match="ended"):
            inner.put("b", b"2")
        tx.put("c", b"3")
    assert store.keys() == ["a", "c"]


def test_a_namespace_of_a_transaction_ends_with_it(
    store: kvstore.Store, elsewhere: kvstore.Store
) -> None:
    with store.transaction() as tx:
        there = tx.namespace(elsewhere.namespace_name)
        there.put("a", b"1")
        assert there.get("a") == b"1"
    with pytest.raises(TransactionError, match="ended"):
        there.put("b", b"2")
    assert elsewhere.keys() == ["a"]


def test_a_namespace_of_a_transaction_joins_it(
    store: kvstore.Store, elsewhere: kvstore.Store
) -> None:
    with pytest.raises(Boom), store.transaction() as tx:
        tx.namespace(elsewhere.namespace_name).put("a", b"1")
        raise Boom
    assert elsewhere.keys() == []


@pytest.mark.async_exclude(
    reason="the async API's collections have coroutine methods this sync face does not wrap"
)
def test_collection_of_a_transaction_ends_with_it(store: kvstore.Store) -> None:
    with store.transaction() as tx:
        d = tx.dict("d")
        d["a"] = 1
    with pytest.raises(TransactionError, match="ended"):
        d["b"] = 2
    assert dict(store.dict("d")) == {"a": 1}


def test_using_a_transaction_from_another_thread_is_an_error(store: kvstore.Store) -> None:
    with store.transaction() as tx:
        tx.put("k", b"v")
        for use in USES.values():
            with pytest.raises(TransactionError, match="thread"):
                in_thread(lambda use=use: use(tx), timeout=10)  # type: ignore[misc]
        tx.put("k2", b"v2")  # still fine in its own thread
    assert store.keys() == ["k", "k2"]


# -- durability settings -----------------------------------------------------------------------
def _pragma(s: kvstore.Store, name: str) -> Any:
    return _sql.value(s, f"PRAGMA {name}")


@pytest.mark.parametrize(
    ("option", "expected"),
    [({}, 2), ({"sqlite_synchronous": "NORMAL"}, 1), ({"sqlite_synchronous": "full"}, 2)],
)
def test_sqlite_is_wal_and_synchronous_full_by_default(
    tmp_path: Any, option: dict[str, str], expected: int
) -> None:
    s = kvstore.connect(f"sqlite:///{tmp_path / 'd.db'}", **option)  # type: ignore[arg-type]
    try:
        s.put("k", b"v")
        assert _pragma(s, "journal_mode") == "wal"
        assert _pragma(s, "synchronous") == expected
        with s.transaction() as tx:  # transactions run on the same configured connections
            assert _pragma(tx, "synchronous") == expected
    finally:
        s.close()


def test_bad_sqlite_synchronous_is_a_value_error(tmp_path: Any) -> None:
    for bad in ["SOMETIMES", "", "fast"]:
        with pytest.raises(ValueError, match="sqlite_synchronous"):
            kvstore.connect(f"sqlite:///{tmp_path / 'd.db'}", sqlite_synchronous=bad)
    assert not (tmp_path / "d.db").exists()


# -- a store bound to the application's Connection or Session --------------------------------
class _App:
    """An application's engine and one ORM model, in a table of its own per test."""

    def __init__(self, engine: sa.Engine, namespace: str) -> None:
        class Base(DeclarativeBase):
            metadata = sa.MetaData()

        class Order(Base):
            __tablename__ = f"app_orders_{namespace}"
            id: Mapped[int] = mapped_column(primary_key=True)
            item: Mapped[str] = mapped_column(sa.String(50))

        self.engine = engine
        self.namespace = namespace
        self.metadata = Base.metadata
        self.Order = Order
        self.metadata.create_all(engine)
        # kvstore's tables exist before any request, as after a deployment's migrations: a
        # store bound to a transaction that rolls back would otherwise lose them with it.
        kvstore.connect(engine).close()

    def orders(self) -> list[str]:
        with Session(self.engine) as s:
            return sorted(o.item for o in s.query(self.Order))

    def kv_keys(self) -> list[str]:
        with Session(self.engine) as s:
            keys = kvstore.connect(s, namespace=self.namespace).keys()
            s.rollback()
            return keys


@pytest.fixture
def app(backend: Any) -> Iterator[_App]:
    own = backend.engine is None
    if own:
        kw: dict[str, Any] = {"poolclass": StaticPool} if not backend.shared else {}
        engine = sa.create_engine(backend.url, connect_args={"check_same_thread": False}, **kw)
    else:
        engine = backend.engine
    a = _App(engine, backend.namespace)
    try:
        yield a
    finally:
        a.metadata.drop_all(engine)
        if own:
            engine.dispose()


def test_session_commit_commits_orm_rows_and_kv_entries_together(app: _App) -> None:
    with Session(app.engine) as session:
        kv = kvstore.connect(session, namespace=app.namespace)
        session.add(app.Order(id=1, item="book"))
        kv.put("order-1", b"paid")
        kv.put_many({"a": b"1", "b": b"2"})
        assert kv.incr("orders") == 1
        with kv.transaction() as tx:
            tx.put("audit-1", b"created")
        assert kv.get("order-1") == b"paid"  # reads see the session's own writes
        session.commit()
    assert app.orders() == ["book"]
    assert app.kv_keys() == ["a", "audit-1", "b", "order-1", "orders"]


def test_session_rollback_discards_both(app: _App) -> None:
    with Session(app.engine) as session:
        kv = kvstore.connect(session, namespace=app.namespace)
        session.add(app.Order(id=1, item="book"))
        session.flush()
        kv.put("order-1", b"paid")
        kv.incr("orders")
        with kv.transaction() as tx:
            tx.put("audit-1", b"created")
        kv.run_in_transaction(lambda tx: tx.put("audit-2", b"x"))
        session.rollback()
    assert app.orders() == []
    assert app.kv_keys() == []


def test_core_connection_commit_and_rollback(app: _App) -> None:
    # Tables created inside the caller's transaction go with its rollback (as on PostgreSQL):
    # create them up front, as docs/existing-app.md recommends.
    kvstore.connect(app.engine, namespace=app.namespace).close()
    with app.engine.connect() as conn:
        kv = kvstore.connect(conn, namespace=app.namespace)
        conn.execute(sa.insert(app.Order).values(id=1, item="lost"))
        kv.put("lost", b"x")
        conn.rollback()
        conn.execute(sa.insert(app.Order).values(id=2, item="kept"))
        kv.put("kept", b"y")
        conn.commit()
    assert app.orders() == ["kept"]
    assert app.kv_keys() == ["kept"]


def test_session_never_commits_on_its_own(app: _App) -> None:
    with Session(app.engine) as session:
        kv = kvstore.connect(session, namespace=app.namespace)
        kv.put("a", b"1")
        kv.put_many({"b": b"2"})
        kv.copy("a", "c")
        kv.delete("b")
        with kv.transaction() as tx:
            tx.incr("n")
            with tx.transaction() as inner:
                inner.put("d", b"4")
        session.add(app.Order(id=1, item="book"))
        assert kv.keys() == ["a", "c", "d", "n"]
        # the session is left open: nothing may reach the database
    assert app.kv_keys() == []
    assert app.orders() == []


def test_failed_kv_call_leaves_the_callers_transaction_usable(app: _App) -> None:
    with Session(app.engine) as session:
        kv = kvstore.connect(session, namespace=app.namespace)
        kv.create_index("by_email", kvstore.json_field("email"), unique=True)
        session.add(app.Order(id=1, item="book"))
        kv.put("u1", b'{"email": "a@x"}')
        kv.put("text", b"not a number")
        with pytest.raises(ConflictError):
            kv.put("u1", b"{}", expected_version=9)
        with pytest.raises(UniqueViolation):
            kv.put("u2", b'{"email": "a@x"}')
        with pytest.raises(ValueError):
            kv.incr("text")
        with pytest.raises(Boom), kv.transaction() as tx:
            tx.put("in-savepoint", b"x")
            raise Boom
        session.add(app.Order(id=2, item="pen"))
        session.commit()
    assert app.orders() == ["book", "pen"]
    assert app.kv_keys() == ["text", "u1"]


def test_kv_savepoint_inside_the_callers_transaction(app: _App) -> None:
    with Session(app.engine) as session:
        kv = kvstore.connect(session, namespace=app.namespace)
        session.add(app.Order(id=1, item="book"))
        with pytest.raises(Boom), kv.transaction() as tx:
            tx.put("x", b"1")
            raise Boom
        with kv.transaction() as tx:
            tx.put("y", b"2")
        session.commit()
    assert app.orders() == ["book"]
    assert app.kv_keys() == ["y"]


def test_external_run_in_transaction_runs_once(app: _App) -> None:
    with Session(app.engine) as session:
        kv = kvstore.connect(session, namespace=app.namespace)
        calls = []

        def fn(tx: kvstore.Transaction) -> None:
            calls.append(1)
            tx.put("k", b"v")
            raise Boom

        with pytest.raises(Boom):
            kv.run_in_transaction(fn, retries=5)
        assert calls == [1]
        assert kv.keys() == []
        session.commit()


@pytest.mark.parametrize("level", ["SERIALIZABLE", "bogus"])
def test_external_isolation_is_refused(app: _App, level: str) -> None:
    with Session(app.engine) as session:
        kv = kvstore.connect(session, namespace=app.namespace)
        with pytest.raises((TransactionError, ValueError)), kv.transaction(isolation=level):
            pass


def test_external_writes_are_invisible_to_others_until_commit(
    shared_backend: Any, other: kvstore.Store
) -> None:
    engine = shared_backend.engine or sa.create_engine(shared_backend.url)
    assert other.keys() == []  # the other store opens its connection (SQLite: WAL) first
    try:
        with Session(engine) as session:
            kv = kvstore.connect(session, namespace=shared_backend.namespace)
            kv.put("k", b"v")
            with kv.transaction() as tx:
                tx.put("k2", b"v2")
            assert other.keys() == []
            session.commit()
        assert other.keys() == ["k", "k2"]
    finally:
        if shared_backend.engine is None:
            engine.dispose()


@pytest.mark.parametrize("shared_backend", ["sqlite-file"], indirect=True)
def test_a_url_store_can_read_while_the_app_writes_to_a_fresh_file(shared_backend: Any) -> None:
    engine = sa.create_engine(shared_backend.url)
    try:
        with Session(engine) as session:  # the app creates kvstore's tables in its own way
            kvstore.connect(session, namespace=shared_backend.namespace)
            session.commit()
        with Session(engine) as session:
            kv = kvstore.connect(session, namespace=shared_backend.namespace, create=False)
            kv.put("k", b"v")
            reader = shared_backend.connect(busy_timeout=0.2)
            try:
                assert reader.keys() == []
            finally:
                reader.close()
            session.commit()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite-file",
        pytest.param(
            "sqlite-memory",
        ),
        "postgresql",
    ],
    indirect=True,
)
def test_an_engine_store_leaves_the_apps_sessions_transactional(app: _App) -> None:
    kv = kvstore.connect(app.engine, namespace=app.namespace)
    try:
        kv.put("k", b"v")
        with Session(app.engine) as session:
            session.add(app.Order(id=1, item="book"))
            session.flush()
            session.rollback()
        assert app.orders() == []
        assert kv.keys() == ["k"]
    finally:
        kv.close()


def test_an_engine_store_gives_idle_connections_back_to_the_apps_pool(shared_backend: Any) -> None:
    engine = sa.create_engine(shared_backend.url, pool_size=3, max_overflow=0, pool_timeout=5)
    kv = kvstore.connect(engine, namespace=shared_backend.namespace)
    try:

        def work() -> None:
            for _ in range(20):
                kv.incr("n")

        threads = [threading.Thread(target=work, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert kv.get("n") == b"60"
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        kv.close()
        engine.dispose()


# Servers whose deadlock detector picks a victim (SQLite has one writer at a time: no deadlock);
# on Galera the two stores are on two nodes and certification picks the loser at its COMMIT.
_DEADLOCKING = [
    b for b in SHARED_BACKENDS if b in ("postgresql", "mariadb", "mariadb-mariadbconnector")
] + ["galera"]


@pytest.mark.parametrize("shared_backend", _DEADLOCKING, indirect=True)
def test_a_deadlock_victim_caught_inside_the_block_cannot_commit(shared_backend: Any) -> None:
    """Two transactions lock two keys in opposite orders: the database rolls one back. If the
    block catches that error and goes on, nothing it wrote may be committed (MariaDB has then
    left the transaction and would autocommit each further statement)."""
    a, b = shared_backend.connect(), shared_backend.connect()
    try:
        a.put("x", b"0")
        a.put("y", b"0")
        barrier = threading.Barrier(2, timeout=20)
        outcomes: dict[str, BaseException | None] = {}

        def work(store: kvstore.Store, first: str, second: str, name: str) -> None:
            try:
                with store.transaction() as tx:
                    tx.put(first, name.encode())
                    barrier.wait()
                    try:
                        tx.put(second, name.encode())
                    except kvstore.DatabaseError:
                        tx.put("after-" + name, b"must not stay")  # caught: the block goes on
                outcomes[name] = None
            except BaseException as exc:
                outcomes[name] = exc

        threads = [
            threading.Thread(target=work, args=(a, "x", "y", "a")),
            threading.Thread(target=work, args=(b, "y", "x", "b")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        failed = [n for n, exc in outcomes.items() if exc is not None]
        assert len(failed) == 1, outcomes
        # PostgreSQL refuses the next statement; MariaDB runs it, and refuses the COMMIT
        assert isinstance(outcomes[failed[0]], TransactionError | kvstore.DatabaseError), outcomes
        assert f"after-{failed[0]}" not in a
        winner = "b" if failed[0] == "a" else "a"
        assert a.get("x") == a.get("y") == winner.encode()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    "shared_backend", [b for b in SHARED_BACKENDS if b.startswith("mariadb")], indirect=True
)
def test_a_row_lock_wait_past_busy_timeout_is_a_lock_timeout_error(shared_backend: Any) -> None:
    """InnoDB's lock-wait timeout (1205) through either MariaDB driver is a LockTimeoutError
    chained to the driver's error, after busy_timeout (innodb_lock_wait_timeout), and the row
    keeps the holder's value."""
    a = shared_backend.connect()
    b = shared_backend.connect(busy_timeout=1, own_engine=True)  # its own connections' setting
    try:
        a.put("k", b"0")
        with a.transaction() as held:
            held.put("k", b"1")  # the row lock is held until this block ends
            start = time.monotonic()
            with pytest.raises(kvstore.LockTimeoutError) as info, b.transaction() as tx:
                tx.put("k", b"2")
            waited = time.monotonic() - start
            assert 0.9 < waited < 10, waited
            assert isinstance(info.value, TimeoutError) and info.value.orig is not None
            assert "innodb_lock_wait_timeout" in str(info.value)
        assert b.get("k") == b"1"
    finally:
        a.close()
        b.close()
