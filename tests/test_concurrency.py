"""Concurrency: threads sharing one store, and processes sharing one database.

Processes are real (``spawn``: nothing inherited but the arguments), reconnect with
``kvstore.connect(url, namespace=...)``, and start each race together through a barrier kept
in the database itself. Every test is bounded in time, and every wait has a timeout, so a
deadlock fails the test instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import random
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.pool import Pool
from typing import Any

import pytest

import kvstore
from kvstore import ConflictError

pytestmark = pytest.mark.timeout(60)

PROCS = 3
WAIT = 40  # seconds any one wait may take before the test fails

# A read-only transaction that sees one snapshot and does not block writers.
SNAPSHOT_LEVEL = {"sqlite-file": "DEFERRED", "postgresql": "REPEATABLE READ"}
SNAPSHOT_LEVEL["postgresql-psycopg2"] = SNAPSHOT_LEVEL["postgresql"]
SNAPSHOT_LEVEL["mariadb"] = "REPEATABLE READ"  # InnoDB: one snapshot, no locks
SNAPSHOT_LEVEL["mariadb-mariadbconnector"] = SNAPSHOT_LEVEL["mariadb"]
SNAPSHOT_LEVEL["galera"] = SNAPSHOT_LEVEL["mariadb"]


# -- worker side (module level, so that spawned processes can import them) --------------------
def _barrier(s: kvstore.Store, name: str, parties: int, timeout: float = 20) -> None:
    """Wait until ``parties`` callers reached ``name``: a barrier kept in the database, so it
    needs nothing shared between processes but the database."""
    s.incr(name)
    deadline = time.monotonic() + timeout
    while int(s.get(name)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {name!r}: only {int(s.get(name))} of {parties} arrived")
        time.sleep(0.002)


def incr_worker(url: str, ns: str, parties: int, times: int) -> None:
    with kvstore.connect(url, namespace=ns) as s:
        _barrier(s, "start", parties)
        for _ in range(times):
            s.incr("counter")
        for _ in range(times):
            s.incr("fresh", -2, initial=1000)


def rmw_worker(url: str, ns: str, parties: int, times: int, level: str) -> int:
    """Read-modify-write with plain get/put, made safe by run_in_transaction."""

    def bump(tx: kvstore.Transaction) -> None:
        tx.put("balance", str(int(tx.get("balance")) + 1).encode())

    attempts = 0

    def counted(tx: kvstore.Transaction) -> None:
        nonlocal attempts
        attempts += 1
        bump(tx)

    with kvstore.connect(url, namespace=ns) as s:
        _barrier(s, "start", parties)
        for _ in range(times):
            s.run_in_transaction(counted, retries=100, isolation=level, backoff=0.002)
    return attempts


def disjoint_worker(url: str, ns: str, parties: int, wid: int, rounds: int) -> list[str]:
    """Write keys no other worker writes, through every write path; return them."""
    written: list[str] = []
    with kvstore.connect(url, namespace=ns, chunk_size=1024) as s:
        _barrier(s, "start", parties)
        for r in range(rounds):
            base = f"w{wid}-r{r}"
            s.put(f"{base}-put", f"{wid}/{r}".encode())
            s.put_many({f"{base}-many{i}": f"{wid}/{r}/{i}".encode() for i in range(3)})
            with s.transaction() as tx:
                for i in range(3):
                    tx.put(f"{base}-tx{i}", f"{wid}/{r}/tx{i}".encode())
            s.put_file(f"{base}-blob", io.BytesIO(bytes([wid]) * 2500))
            s.put(f"{base}-tmp", b"x")
            s.move(f"{base}-tmp", f"{base}-moved")
            written += [f"{base}-put", f"{base}-blob", f"{base}-moved"]
            written += [f"{base}-many{i}" for i in range(3)] + [f"{base}-tx{i}" for i in range(3)]
    return written


def cas_worker(url: str, ns: str, parties: int, wid: int, rounds: int) -> list[int]:
    """Each round, everyone tries to move "slot" from version r to r + 1; return the rounds
    this worker won."""
    won: list[int] = []
    with kvstore.connect(url, namespace=ns) as s:
        for r in range(rounds):
            _barrier(s, f"round-{r}", parties)
            try:
                s.put("slot", f"{wid}:{r}".encode(), expected_version=r)
                won.append(r)
            except ConflictError:
                pass
            # and a second race each round: create-if-missing on a fresh key
            with contextlib.suppress(ConflictError):
                s.put(f"once-{r}", str(wid).encode(), expected_version=0)
    return won


def storm_worker(url: str, ns: str, parties: int, wid: int, ops: int) -> int:
    """Single-operation calls on shared keys, interleaved with short write transactions
    elsewhere: none may fail with "database is locked" (or anything else unexpected)."""
    rng = random.Random(wid)
    done = 0
    with kvstore.connect(url, namespace=ns) as s:
        _barrier(s, "start", parties)
        for i in range(ops):
            key = f"k{rng.randrange(5)}"
            op = rng.randrange(9)
            if op == 0:
                s.put(key, b"v" * rng.randrange(100))
            elif op == 1:
                s.delete(key)
            elif op == 2:
                s.put_many({key: b"m", f"k{rng.randrange(5)}": b"n"})
            elif op == 3:
                s.delete_many([key, f"k{rng.randrange(5)}"])
            elif op == 4:
                s.incr(f"n{rng.randrange(2)}")
            elif op == 5:
                with contextlib.suppress(ConflictError):
                    s.put(key, b"cas", expected_version=rng.randrange(3))
            elif op == 6:
                with contextlib.suppress(KeyError):
                    s.get(key)
            elif op == 7:
                s.keys()
            elif wid == 0 and i % 10 == 0:
                with s.transaction() as tx:  # hold the write lock a little while
                    tx.put("held", str(i).encode())
                    time.sleep(0.05)
            else:
                s.purge_expired()
            done += 1
    return done


def write_worker(url: str, ns: str, items: dict[str, bytes], delete: list[str]) -> float:
    """Write (and delete) some keys; return how long it took."""
    with kvstore.connect(url, namespace=ns, chunk_size=1024) as s:
        start = time.monotonic()
        for k, v in items.items():
            s.put(k, v)
        for k in delete:
            s.delete(k)
        return time.monotonic() - start


def opposite_order_worker(url: str, ns: str, parties: int, wid: int, rounds: int) -> None:
    """Many-key writes whose keys other workers take in the opposite order: a deadlock on
    PostgreSQL, which kvstore must retry rather than report."""
    keys = [f"k{i:02d}" for i in range(20)]
    if wid % 2:
        keys.reverse()
    with kvstore.connect(url, namespace=ns) as s:
        _barrier(s, "start", parties)
        for r in range(rounds):
            s.put_many([(k, f"{wid}:{r}".encode()) for k in keys])


# -- parent side -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    """Spawned worker processes, started once for the module (spawning costs an interpreter
    start and the imports, about a second each)."""
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Pool(PROCS)
    try:
        yield p
    finally:
        p.terminate()
        p.join()


def run_all(pool: Pool, fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``fn(*a)`` for each ``a`` in the pool at once; re-raise a worker's exception."""
    assert len(args) <= PROCS  # each task waits at a barrier: one per worker process
    results = [pool.apply_async(fn, a) for a in args]
    return [r.get(timeout=WAIT) for r in results]


@pytest.fixture
def url_ns(shared_backend: Any) -> tuple[str, str]:
    return shared_backend.url, shared_backend.namespace


# -- processes ---------------------------------------------------------------------------------
def test_processes_incrementing_one_counter_lose_nothing(
    pool: Pool, shared_store: kvstore.Store, url_ns: tuple[str, str]
) -> None:
    times = 40
    run_all(pool, incr_worker, [(*url_ns, PROCS, times)] * PROCS)
    assert shared_store.get("counter") == str(PROCS * times).encode()
    assert shared_store.stat("counter").version == PROCS * times
    # "fresh" was created by a race: exactly one creator started it at ``initial``
    assert shared_store.get("fresh") == str(1000 - 2 * PROCS * times).encode()


def test_processes_read_modify_write_in_run_in_transaction_lose_nothing(
    pool: Pool, shared_backend: Any, shared_store: kvstore.Store, url_ns: tuple[str, str]
) -> None:
    times = 15
    shared_store.put("balance", b"0")
    level = "SERIALIZABLE"
    attempts = run_all(pool, rmw_worker, [(*url_ns, PROCS, times, level)] * PROCS)
    assert shared_store.get("balance") == str(PROCS * times).encode()
    assert sum(attempts) >= PROCS * times


def test_processes_writing_disjoint_keys_lose_none(
    pool: Pool, shared_store: kvstore.Store, url_ns: tuple[str, str]
) -> None:
    rounds = 5
    written = run_all(
        pool, disjoint_worker, [(*url_ns, PROCS, wid, rounds) for wid in range(PROCS)]
    )
    expected = sorted(k for keys in written for k in keys)
    assert len(expected) == PROCS * rounds * 9
    got = shared_store.keys()
    got.remove("start")
    assert got == expected
    for wid in range(PROCS):
        assert shared_store.get(f"w{wid}-r0-blob") == bytes([wid]) * 2500
        assert shared_store.get(f"w{wid}-r4-tx2") == f"{wid}/4/tx2".encode()


def test_compare_and_set_races_have_exactly_one_winner(
    pool: Pool, shared_store: kvstore.Store, url_ns: tuple[str, str]
) -> None:
    rounds = 6
    won = run_all(pool, cas_worker, [(*url_ns, PROCS, wid, rounds) for wid in range(PROCS)])
    winners = sorted(r for rs in won for r in rs)
    assert winners == list(range(rounds))  # every round won, and by one worker only
    last = next(wid for wid, rs in enumerate(won) if rounds - 1 in rs)
    assert shared_store.get("slot") == f"{last}:{rounds - 1}".encode()
    assert shared_store.stat("slot").version == rounds
    for r in range(rounds):
        assert shared_store.stat(f"once-{r}").version == 1  # created once, never overwritten


def test_single_operations_never_fail_under_contention(
    pool: Pool, shared_store: kvstore.Store, url_ns: tuple[str, str]
) -> None:
    ops = 150
    done = run_all(pool, storm_worker, [(*url_ns, PROCS, wid, ops) for wid in range(PROCS)])
    assert done == [ops] * PROCS


def test_many_key_writes_in_opposite_orders_do_not_fail(
    pool: Pool, shared_store: kvstore.Store, url_ns: tuple[str, str]
) -> None:
    rounds = 6
    run_all(pool, opposite_order_worker, [(*url_ns, PROCS, wid, rounds) for wid in range(PROCS)])
    values = set(shared_store.get_many([f"k{i:02d}" for i in range(20)]).values())
    assert len(values) == 1  # each put_many is atomic: the last one wrote all 20 keys
    assert values.pop().endswith(f":{rounds - 1}".encode())


def test_open_reader_does_not_block_a_writer_in_another_process(
    pool: Pool, shared_backend: Any, url_ns: tuple[str, str]
) -> None:
    s = shared_backend.connect(chunk_size=1024)
    try:
        old = bytes(range(256)) * 12  # 3 chunks
        s.put("big", old)
        s.put("small", b"s")
        with s.open("big") as f:
            head = f.read(1500)
            new = {"big": b"N" * 3000, "other": b"o"}
            elapsed = run_all(pool, write_worker, [(*url_ns, new, ["small"])])[0]
            assert elapsed < 10, f"the writer waited {elapsed:.1f}s for the reader"
            assert s.get("big") == new["big"]
            assert head + f.read() == old  # the reader still reads its snapshot
        assert s.get("big") == new["big"]
        assert "small" not in s
    finally:
        s.close()


def test_read_transaction_does_not_block_a_writer_in_another_process(
    pool: Pool, shared_backend: Any, shared_store: kvstore.Store, url_ns: tuple[str, str]
) -> None:
    shared_store.put_many({"a": b"1", "b": b"2"})
    level = SNAPSHOT_LEVEL[shared_backend.name]
    with shared_store.transaction(isolation=level) as tx:
        assert tx.get_many(["a", "b"]) == {"a": b"1", "b": b"2"}
        elapsed = run_all(pool, write_worker, [(*url_ns, {"a": b"10", "c": b"3"}, ["b"])])[0]
        assert elapsed < 10, f"the writer waited {elapsed:.1f}s for the reader"
        assert tx.get_many(["a", "b", "c"]) == {"a": b"1", "b": b"2"}  # its snapshot
    assert shared_store.get_many(["a", "b", "c"]) == {"a": b"10", "c": b"3"}


def test_writer_waits_for_a_write_transaction_then_succeeds(
    pool: Pool, shared_store: kvstore.Store, url_ns: tuple[str, str]
) -> None:
    # On SQLite the other process waits for the write lock (busy timeout); on PostgreSQL it
    # writes another row at once. Either way it must succeed, and our work stays atomic.
    with shared_store.transaction() as tx:
        tx.put("mine", b"1")
        pending = pool.apply_async(write_worker, (*url_ns, {"theirs": b"2"}, []))
        time.sleep(0.3)
        tx.put("mine2", b"1")
    pending.get(timeout=WAIT)
    assert shared_store.keys() == ["mine", "mine2", "theirs"]


# -- threads -----------------------------------------------------------------------------------
def run_threads(target: Callable[[int], Any], n: int = 4) -> list[Any]:
    """Run ``target(i)`` in ``n`` threads, started together; re-raise the first failure."""
    barrier = threading.Barrier(n, timeout=20)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads), "a thread is stuck (deadlock?)"
    if errors:
        raise errors[0]
    return results


def test_threads_sharing_a_store_incrementing_lose_nothing(store: kvstore.Store) -> None:
    run_threads(lambda i: [store.incr("n") for _ in range(25)])
    assert store.get("n") == b"100"


def test_threads_in_transactions_lose_nothing(store: kvstore.Store) -> None:
    store.put("balance", b"0")

    def work(i: int) -> None:
        for r in range(10):

            def bump(tx: kvstore.Transaction, r: int = r) -> None:
                tx.put("balance", str(int(tx.get("balance")) + 1).encode())
                tx.put(f"t{i}-{r}", b"x")

            store.run_in_transaction(bump, retries=100, isolation="SERIALIZABLE", backoff=0.002)

    run_threads(work)
    assert store.get("balance") == b"40"
    assert len(store) == 41


def test_threads_compare_and_set_have_one_winner(store: kvstore.Store) -> None:
    for r in range(5):

        def attempt(i: int, r: int = r) -> bool:
            try:
                store.put("slot", f"{i}".encode(), expected_version=r)
                return True
            except ConflictError:
                return False

        assert sorted(run_threads(attempt)) == [False, False, False, True]
    assert store.stat("slot").version == 5


def test_a_thread_writing_while_another_holds_a_transaction(store: kvstore.Store) -> None:
    # SQLite (file): the plain write waits for the write lock; sqlite-memory: for the single
    # connection; PostgreSQL: it goes ahead. None of them deadlocks, and both commit.
    def other() -> None:
        store.put("theirs", b"2")

    with store.transaction() as tx:
        tx.put("mine", b"1")
        t = threading.Thread(target=other, daemon=True)
        t.start()
        time.sleep(0.2)
    t.join(WAIT)
    assert not t.is_alive()
    assert store.keys() == ["mine", "theirs"]


@pytest.mark.parametrize(
    "op",
    [
        "put",
        "delete",
        "purge_expired",
        "incr",
        "put_many",
        "delete_many",
        "compare_and_set",
        "move",
    ],
)
@pytest.mark.parametrize("shared_backend", ["sqlite-file"], indirect=True)
def test_database_is_locked_is_retried_past_a_short_busy_timeout(
    shared_backend: Any, shared_store: kvstore.Store, op: str
) -> None:
    """A writer that holds the lock longer than the busy timeout: every single-operation call
    retries (as ``_run_atomic`` does) rather than letting "database is locked" escape."""
    impatient = shared_backend.connect(busy_timeout=0.02)
    calls: dict[str, Callable[[], Any]] = {
        "put": lambda: impatient.put("k", b"v"),
        "delete": lambda: impatient.delete("x"),
        "purge_expired": impatient.purge_expired,
        "incr": lambda: impatient.incr("n"),
        "put_many": lambda: impatient.put_many({"k": b"v"}),
        "delete_many": lambda: impatient.delete_many(["x"]),
        "compare_and_set": lambda: impatient.put("k", b"v", expected_version=0),
        "move": lambda: impatient.move("x", "y"),
    }
    try:
        shared_store.put("x", b"1")
        impatient.keys()  # connect before the lock is taken
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            with shared_store.transaction() as tx:
                tx.put("held", b"1")
                holding.set()
                release.wait(10)

        t = threading.Thread(target=hold, daemon=True)
        t.start()
        assert holding.wait(10)
        threading.Timer(0.15, release.set).start()
        calls[op]()
        t.join(10)
    finally:
        release.set()
        impatient.close()
