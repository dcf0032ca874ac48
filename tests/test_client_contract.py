"""What real client code relies on, and hostile input that must be refused up front.

Regressions of issue 9 for the store itself (collections, the cache decorator and indexes have
theirs next to their own tests): a store is always true, TTLs and prefixes are validated whole,
metadata round-trips exactly, reserved table prefixes are refused, readers cannot starve the
store, and a full disk is a kvstore error that is also an ``OSError``.
"""

from __future__ import annotations

import datetime as dt
import errno
import io
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import kvstore
from tests.conftest import Backend


# -- a store is always true ------------------------------------------------------------------
def _decorated(store: kvstore.Store) -> list[kvstore.KeyValueStore]:
    return [
        store,
        kvstore.PrefixDecorator("p-", store),
        kvstore.ReadOnlyDecorator(store),
        kvstore.URLEncodeKeysDecorator(store),
        kvstore.HMACDecorator(b"secret", store),
    ]


def test_an_empty_store_and_its_decorators_are_true(store: kvstore.Store) -> None:
    assert len(store) == 0
    for s in _decorated(store):
        assert bool(s) is True
        # Flask-KVSession's test: "if app and session_kvstore: self.init_app(app)"
        assert (object() and s) is s


def test_truth_of_a_store_costs_no_query(backend: Backend) -> None:
    seen: list[str] = []
    if backend.engine is not None:
        engine = backend.engine
    else:
        engine = sa.create_engine(backend.url, poolclass=sa.pool.StaticPool)
        kvstore.connect(engine).close()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    with engine.connect() as conn:
        s = kvstore.connect(conn, namespace=backend.namespace, create=False)
        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            for d in _decorated(s):
                assert d
            assert seen == []
            s.put("k", b"v")  # the listener does see the statements kvstore runs
            assert seen
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
            conn.rollback()


# -- TTLs past the year 9999 -------------------------------------------------------------------
_FAR = [3e11, 10**12, dt.timedelta(days=3_000_000), 1e308, float("inf"), dt.timedelta.max]


@pytest.mark.parametrize("ttl", _FAR, ids=repr)
def test_ttl_past_year_9999_is_refused_and_writes_nothing(store: kvstore.Store, ttl: Any) -> None:
    with pytest.raises(ValueError, match=r"9999|non-negative"):
        store.put("k", b"v", ttl_secs=ttl)
    with pytest.raises(ValueError):
        store.put_many({"a": b"1", "b": b"2"}, ttl_secs=ttl)
    with pytest.raises(ValueError):
        store.put_file("k", io.BytesIO(b"v"), ttl_secs=ttl)
    assert store.keys() == []


def test_ttl_just_inside_year_9999_reads_back(store: kvstore.Store) -> None:
    limit = dt.datetime(9999, 12, 31, tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)
    store.put("k", b"v", ttl_secs=limit.total_seconds())
    assert store.stat("k").expires_at is not None
    assert store.stat("k").expires_at.year == 9999  # type: ignore[union-attr]


def test_connect_refuses_unbounded_numbers(backend: Backend) -> None:
    for bad in (float("inf"), float("nan"), -1, 1e12, "30"):
        with pytest.raises(ValueError, match="busy_timeout"):
            kvstore.connect(backend.url, busy_timeout=bad)
    with pytest.raises(ValueError, match="9999"):
        kvstore.connect(backend.url, default_ttl_secs=1e308)


# -- prefixes are validated whole ------------------------------------------------------------
BAD_LONG_PREFIX = "x" * 250 + "\x00"


def test_a_long_prefix_is_validated_over_its_whole_length(store: kvstore.Store) -> None:
    store.put("x", b"1")
    calls = [
        lambda s: s.keys(BAD_LONG_PREFIX),
        lambda s: list(s.iter_keys(BAD_LONG_PREFIX)),
        lambda s: list(s.iter_prefixes("-", BAD_LONG_PREFIX)),
    ]
    for s in [store, kvstore.PrefixDecorator("p-", store), kvstore.ReadOnlyDecorator(store)]:
        for call in calls:
            with pytest.raises(ValueError, match="not allowed"):
                call(s)
    # URL-encoded keys take any text: the same prefix is just a prefix there
    assert kvstore.URLEncodeKeysDecorator(store).keys(BAD_LONG_PREFIX) == []


def test_a_prefix_longer_than_any_key_matches_nothing(store: kvstore.Store) -> None:
    store.put("x" * 250, b"1")
    assert store.keys("x" * 250) == ["x" * 250]
    assert store.keys("x" * 251) == []
    assert list(store.iter_prefixes("-", "x" * 300)) == []


# -- metadata --------------------------------------------------------------------------------
def test_deeply_nested_metadata_is_a_value_error(store: kvstore.Store) -> None:
    deep: Any = 1
    for _ in range(10_000):
        deep = {"a": [deep]}
    with pytest.raises(ValueError, match="nested"):
        store.put("k", b"v", metadata=deep)
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(ValueError):
        store.put("k", b"v", metadata=cyclic)
    assert "k" not in store
    shallow: Any = 1
    for _ in range(30):
        shallow = {"a": [shallow]}
    store.put("k", b"v", metadata=shallow)
    assert store.stat("k").metadata == shallow


def test_metadata_numbers_come_back_exactly(store: kvstore.Store) -> None:
    meta = {
        "big_float": 1e16,
        "negative": -6.382684991819165e16,
        "huge": 1e300,
        "tiny": 5e-324,
        "tenth": 0.1,
        "big_int": 2**70,
        "int": 10000000000000000,
        "nested": [1.0, 2.5, {"x": 1e16}],
    }
    store.put("k", b"v", metadata=meta)
    got = store.stat("k").metadata
    assert got == meta
    for name in ("big_float", "negative", "huge", "tiny"):
        assert type(got[name]) is float, name
    assert type(got["big_int"]) is int
    assert type(got["nested"][0]) is float


# -- table prefixes the database reserves ------------------------------------------------------
def test_reserved_table_prefix_is_refused(backend: Backend) -> None:
    # (MariaDB's own tables live in its mysql schema; kvstore keeps clear of the name)
    reserved = {"sqlite": "sqlite_", "postgresql": "pg_", "mariadb": "mysql_", "galera": "mysql_"}[
        backend.name.split("-")[0]
    ]
    with pytest.raises(ValueError, match="reserved"):
        kvstore.connect(backend.url, table_prefix=reserved)
    with pytest.raises(ValueError, match="reserved"):
        kvstore.connect(backend.url, table_prefix=reserved + "kv_")
    if backend.shared:
        with pytest.raises(ValueError, match="reserved"):
            kvstore.migrate(backend.url, table_prefix=reserved)


def test_get_file_refuses_what_is_not_a_file(store: kvstore.Store, tmp_path: Path) -> None:
    store.put("k", b"v")
    for s in (store, kvstore.HMACDecorator(b"k", store)):
        with pytest.raises(TypeError, match="writable binary file"):
            s.get_file("k", 42)  # type: ignore[arg-type]
        with open(tmp_path / "t.txt", "w") as text, pytest.raises(TypeError, match="binary"):
            s.get_file("k", text)  # type: ignore[arg-type]


# -- readers cannot starve the store -----------------------------------------------------------
def test_readers_of_large_values_have_a_bounded_budget(shared_backend: Backend) -> None:
    s = shared_backend.connect(own_engine=True, chunk_size=1024, max_open_readers=3)
    try:
        big = os.urandom(10 * 1024)  # ten chunks: read through a snapshot connection
        small = os.urandom(3 * 1024)  # up to four chunks: read whole, holding nothing
        s.put("big", big)
        s.put("small", small)
        smalls = [s.open("small") for _ in range(20)]
        readers = [s.open("big") for _ in range(3)]
        start = time.monotonic()
        with pytest.raises(kvstore.TooManyReadersError, match="3 open"):
            s.open("big")
        assert time.monotonic() - start < 1.0  # refused at once, not after a pool timeout
        # the rest of the store is not starved
        s.put("other", b"x")
        assert s.get("other") == b"x"
        assert all(r.read() == small for r in smalls)
        assert readers[0].read() == big
        readers[0].close()
        with s.open("big") as again:
            assert again.read() == big
        for r in readers[1:] + smalls:
            r.close()
        # every slot is back
        extra = [s.open("big") for _ in range(3)]
        for r in extra:
            r.close()
    finally:
        s.close()


def test_pool_exhaustion_is_a_kvstore_error(shared_backend: Backend) -> None:
    engine = sa.create_engine(shared_backend.url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        s = kvstore.connect(engine, namespace=shared_backend.namespace, chunk_size=1024)
        s.put("big", os.urandom(10 * 1024))
        reader = s.open("big")  # holds the pool's only connection
        start = time.monotonic()
        with pytest.raises(kvstore.DatabaseError, match="pool") as info:
            s.get("big")
        assert time.monotonic() - start < 5
        assert isinstance(info.value.__cause__, sa.exc.TimeoutError)
        reader.close()
        assert len(s.get("big")) == 10 * 1024
    finally:
        engine.dispose()


# -- a full disk -----------------------------------------------------------------------------
@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A 2 MiB tmpfs, so "disk full" is the real ENOSPC of a real file system. Made directly
    under the temp directory: the PostgreSQL server (another user) must reach it."""
    where = Path(tempfile.mkdtemp(prefix="kvstore-disk-"))
    where.chmod(0o755)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0777", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up: {result.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def _fill(s: kvstore.Store) -> list[str]:
    """Write until the disk is full; return the keys whose writes were acknowledged."""
    done: list[str] = []
    with pytest.raises(kvstore.StorageFullError) as info:
        for i in range(100_000):
            s.put(f"k{i}", os.urandom(2000))
            done.append(f"k{i}")
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert isinstance(err, kvstore.KVStoreError)
    assert err.__cause__ is not None  # chained to the driver's error
    return done


def test_sqlite_full_disk_is_an_oserror_and_loses_nothing(tiny_disk: Path) -> None:
    s = kvstore.connect(f"sqlite:///{tiny_disk / 'kv.db'}")
    try:
        done = _fill(s)
        assert len(done) > 10
        for call in (
            lambda: s.put_file("f", io.BytesIO(os.urandom(500_000))),
            lambda: s.put_many({f"m{i}": os.urandom(2000) for i in range(100)}),
        ):
            with pytest.raises(kvstore.StorageFullError):
                call()
        with pytest.raises(kvstore.StorageFullError), s.transaction() as tx:
            for i in range(200):
                tx.put(f"t{i}", os.urandom(2000))
        # Nothing acknowledged is lost, nothing refused is half there.
        assert s.keys() == sorted(done)
        assert all(len(s.get(k)) == 2000 for k in done)
        # Under WAL even a delete needs room in the log: on a truly full disk it fails the
        # same way (documented), and works again as soon as there is room.
        with sa.create_engine(f"sqlite:///{tiny_disk / 'kv.db'}").connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    finally:
        s.close()
    # space comes back (another file deleted, here the WAL checkpointed into a bigger disk)
    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_disk)], check=True)
    s = kvstore.connect(f"sqlite:///{tiny_disk / 'kv.db'}")
    try:
        s.delete(done[0])
        s.put("after", b"ok")
        assert s.get("after") == b"ok"
        assert len(s) == len(done)
    finally:
        s.close()


def test_postgresql_full_disk_is_an_oserror_and_loses_nothing(tiny_disk: Path, pg_url: str) -> None:
    shutil.chown(tiny_disk, "postgres", "postgres")
    space = "kvfull_" + uuid.uuid4().hex[:8]
    prefix = "f" + uuid.uuid4().hex[:8] + "_"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE TABLESPACE {space} LOCATION '{tiny_disk}'")
    engine = sa.create_engine(pg_url, connect_args={"options": f"-c default_tablespace={space}"})
    try:
        s = kvstore.connect(engine, table_prefix=prefix)
        done = _fill(s)
        assert len(done) > 10
        with pytest.raises(kvstore.StorageFullError):
            s.put_many({f"m{i}": os.urandom(2000) for i in range(300)})
        assert s.keys() == sorted(done)
        s.delete(done[0])  # a delete needs no new space on PostgreSQL
        assert done[0] not in s
        s.close()
    finally:
        engine.dispose()
        with admin.connect() as conn:
            for t in [*kvstore.models.tables(prefix).metadata.tables, f"{prefix}alembic_version"]:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {t} CASCADE")
            for fn in ("entries_deleted", "entries_reblobbed"):
                conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {prefix}{fn}()")
            conn.exec_driver_sql(f"DROP TABLESPACE {space}")
        admin.dispose()
