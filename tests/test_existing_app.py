"""kvstore inside an application that already exists: its driver, its connections' settings,
forked worker processes, and bounded lock waits (issue 11)."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import _sql
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import kvstore

# throwaway PostgreSQL servers to stop and start (tests/clusters.py)
pytest_plugins = ["clusters"]

# -- drivers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, driver",
    [
        ("postgresql+pg8000://u@127.0.0.1/db", "pg8000"),
        ("postgresql+asyncpg://u@127.0.0.1/db", "asyncpg"),
        ("sqlite+aiosqlite:///x.db", "aiosqlite"),
        ("mysql+mysqlconnector://u@127.0.0.1/db", "mysqlconnector"),
        ("mysql+mysqldb://u@127.0.0.1/db", "mysqldb"),
        ("mariadb+aiomysql://u@127.0.0.1/db", "aiomysql"),
    ],
)
def test_a_driver_kvstore_cannot_use_is_refused_naming_it(url: str, driver: str) -> None:
    with pytest.raises(ValueError, match=rf"cannot use the '{driver}' driver") as info:
        kvstore.connect(url)
    message = str(info.value)
    assert "psycopg" in message or "sqlite3" in message or "PyMySQL" in message


def test_an_unsupported_database_is_refused() -> None:
    with pytest.raises(ValueError, match="supports SQLite, PostgreSQL and MariaDB"):
        kvstore.connect("mssql+pyodbc://u@127.0.0.1/db")


def test_postgresql_without_a_driver_means_psycopg_3(pg_url: str) -> None:
    bare = sa.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    store = kvstore.connect(bare, namespace="app-bare-url")
    try:
        store.put("k", b"v")
        assert store.scope.backend.engine is not None
        assert store.scope.backend.engine.dialect.driver == "psycopg"
    finally:
        store.delete("k")
        store.close()


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_an_app_session_on_either_driver_gets_savepoints_and_its_commit(
    pg_url: str, driver: str
) -> None:
    url = sa.make_url(pg_url).set(drivername=f"postgresql+{driver}")
    engine = sa.create_engine(url)
    ns = f"app-session-{driver}"
    try:
        with Session(engine) as session:
            store = kvstore.connect(session, namespace=ns)
            store.put("a", b"1")
            with store.transaction() as tx:
                tx.put("b", b"2")
            with pytest.raises(RuntimeError), store.transaction() as tx:
                tx.put("c", b"3")
                raise RuntimeError("rolled back to the savepoint")
            session.commit()
        after = kvstore.connect(engine, namespace=ns)
        assert after.keys() == ["a", "b"]
        after.delete_many(["a", "b"])
    finally:
        engine.dispose()


def test_bulk_writes_in_an_app_session_commit_and_roll_back_with_it(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """put_many, an indexed put_many, list.extend and set.update through the app's Session
    (the path where kvstore's statements go through SQLAlchemy's Connection): one rollback
    drops them all, one commit keeps them all; on SQLite and on PostgreSQL."""
    urls = [f"sqlite:///{tmp_path}/app.db"]
    if os.environ.get("KVSTORE_TEST_POSTGRES_URL") or os.environ.get("CI") == "true":
        urls.append(request.getfixturevalue("pg_url"))
    for url in urls:
        engine = sa.create_engine(url)
        ns = f"bulk-{os.getpid()}"
        kvstore.connect(engine, namespace=ns).create_index("by_n", kvstore.json_field("n"))
        items = {f"k{i:04d}": f'{{"n": {i % 10}}}'.encode() for i in range(1200)}
        try:
            for commit in (False, True):
                with Session(engine) as session:
                    store = kvstore.connect(session, namespace=ns)
                    store.put_many(items)
                    store.list("log").extend(["x"] * 700)
                    store.set("seen").update(range(600))
                    assert len(store) == 1200 and store.count("by_n", 3) == 120
                    session.commit() if commit else session.rollback()
                after = kvstore.connect(engine, namespace=ns)
                if commit:
                    assert after.get_many(list(items)) == items
                    assert after.count("by_n", 3) == 120
                    assert len(after.list("log")) == 700 and len(after.set("seen")) == 600
                else:
                    assert len(after) == 0 and len(after.list("log")) == 0
                    assert len(after.set("seen")) == 0
                after.close()
        finally:
            with kvstore.connect(engine, namespace=ns) as s:
                s.delete_many(s.keys())
                s.drop_index("by_n")
                s.list("log").clear()
                s.set("seen").clear()
            engine.dispose()


# -- the application's SQLite connections --------------------------------------------------------


def _settings(dbapi: Any) -> tuple[int, int, str]:
    busy = dbapi.execute("PRAGMA busy_timeout").fetchone()[0]
    fks = dbapi.execute("PRAGMA foreign_keys").fetchone()[0]
    journal = dbapi.execute("PRAGMA journal_mode").fetchone()[0]
    return int(busy), int(fks), str(journal)


def test_the_apps_sqlite_connections_keep_their_settings(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 5})
    with engine.begin() as conn:  # the app's own schema: a foreign key it does not enforce
        conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(
            "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id))"
        )
        conn.exec_driver_sql("INSERT INTO child (parent_id) VALUES (42)")  # accepted: FKs off
    store = kvstore.connect(engine)
    store.put("k", b"v")
    assert store.get("k") == b"v"
    with store.transaction() as tx:
        tx.put("t", b"1")
    # every connection of the pool, including those kvstore used
    with engine.connect() as a, engine.connect() as b:
        for conn in (a, b):
            assert _settings(conn.connection.driver_connection) == (5000, 0, "delete")
        a.exec_driver_sql("INSERT INTO child (parent_id) VALUES (43)")  # still accepted
        a.commit()
    store.close()
    engine.dispose()


def test_wal_on_the_apps_sqlite_file_is_offered_not_imposed(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    kvstore.connect(engine).put("k", b"v")
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    engine.dispose()
    engine = sa.create_engine(f"sqlite:///{path}")
    kvstore.connect(engine, sqlite_wal=True).put("k", b"w")
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    engine.dispose()
    with pytest.raises(TypeError, match="sqlite_wal"):
        kvstore.connect(f"sqlite:///{path}", sqlite_wal="yes")  # type: ignore[arg-type]


def test_a_store_kvstore_owns_uses_wal_unless_told_not_to(tmp_path: Path) -> None:
    on = kvstore.connect(f"sqlite:///{tmp_path / 'on.db'}")
    on.put("k", b"v")
    off = kvstore.connect(f"sqlite:///{tmp_path / 'off.db'}", sqlite_wal=False)
    off.put("k", b"v")
    assert sqlite3.connect(tmp_path / "on.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (
        sqlite3.connect(tmp_path / "off.db").execute("PRAGMA journal_mode").fetchone()[0]
        == "delete"
    )
    on.close()
    off.close()


# -- bounded lock waits ------------------------------------------------------------------------


def test_a_write_that_cannot_get_the_lock_fails_after_about_one_busy_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    kvstore.connect(f"sqlite:///{path}").close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another connection holds the write lock throughout
    store = kvstore.connect(f"sqlite:///{path}", busy_timeout=1.5)
    try:
        start = time.monotonic()
        with pytest.raises(kvstore.LockTimeoutError, match="write lock") as info:
            store.put("k", b"v")
        waited = time.monotonic() - start
        assert 1.4 <= waited < 4.0, waited  # one busy timeout (and a retry), not nine
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "k" not in store
    store.close()


def test_an_engine_store_write_while_the_threads_own_session_holds_the_lock_fails_at_once(
    tmp_path: Path,
) -> None:
    """A request's Session has flushed (SQLite's write lock is its own until it commits) and
    code in the same request writes through a store bound to the Engine: refused at once with
    the fix in the message, not after a lock wait. Reads and a session-bound store work."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
    store = kvstore.connect(engine)
    store.put("seen", b"1")
    with Session(engine) as session:
        session.execute(sa.text("SELECT * FROM item")).all()  # only read: no lock
        store.put("read-only-session", b"1")
        session.execute(sa.text("INSERT INTO item (name) VALUES ('a')"))  # now it holds it
        start = time.monotonic()
        for write in (
            lambda: store.put("k", b"v"),
            lambda: store.delete("seen"),
            lambda: store.transaction().__enter__(),
            lambda: store.dict("d").__setitem__("x", 1),
        ):
            with pytest.raises(kvstore.TransactionError, match=r"kvstore\.connect\(session\)"):
                write()
        assert time.monotonic() - start < 1.0
        assert store.get("seen") == b"1"  # reads do not wait for the lock
        kv = kvstore.connect(session)
        kv.put("in-session", b"1")
        session.commit()
    store.put("after-commit", b"1")  # the lock is gone with the commit
    assert sorted(store.keys()) == ["after-commit", "in-session", "read-only-session", "seen"]
    store.close()
    engine.dispose()


# -- prefork servers ---------------------------------------------------------------------------


def _child(url: str, ns: str, i: int, out: Any) -> None:
    try:
        store = _PREFORK_STORE[0]
        for n in range(20):
            store.put(f"w{i}-{n}", str(n).encode())
            assert store.get(f"w{i}-{n}") == str(n).encode()
        store.incr("counter")
        out.put(("ok", i))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))


_PREFORK_STORE: list[kvstore.Store] = []


@pytest.mark.parametrize("which", ["sqlite", "postgresql"])
def test_a_store_opened_before_fork_works_in_the_children_and_the_parent(
    which: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if which == "sqlite":
        url = f"sqlite:///{tmp_path / 'fork.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    ns = f"prefork-{os.getpid()}-{which}"
    store = kvstore.connect(url, namespace=ns)
    store.delete_many(store.keys())
    store.put("before", b"1")  # the parent has live connections now
    _PREFORK_STORE[:] = [store]
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    children = [ctx.Process(target=_child, args=(url, ns, i, out)) for i in range(4)]
    try:
        for c in children:
            c.start()
        results = [out.get(timeout=60) for _ in children]
        for c in children:
            c.join(30)
        assert sorted(results) == [("ok", i) for i in range(4)], results
        # the parent's connections survived its children
        assert store.get("before") == b"1"
        assert store.get("counter") == b"4"
        assert len(store.keys("w")) == 80
    finally:
        for c in children:
            if c.is_alive():
                c.kill()
        store.delete_many(store.keys())
        store.close()
        _PREFORK_STORE.clear()


def test_a_url_store_holds_no_more_server_connections_than_its_pool_would(pg_url: str) -> None:
    """20 threads at once on a URL store: afterwards the server sees at most the pool's
    pool_size connections (what SQLAlchemy's pool alone would keep), not pool_size plus the
    store's own idle ones."""
    app = f"kvstore-conn-count-{os.getpid()}"
    store = kvstore.connect(
        pg_url,
        namespace="app-conn-count",
        engine_options={"pool_size": 3, "connect_args": {"application_name": app}},
    )
    admin = sa.create_engine(pg_url)
    barrier = threading.Barrier(20)

    def work(i: int) -> None:
        barrier.wait()
        for n in range(30):
            store.put(f"k{i}-{n}", b"v")
            assert store.get(f"k{i}-{n}") == b"v"

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with admin.connect() as c:
            held = c.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %(a)s", {"a": app}
            ).scalar_one()
        assert 1 <= held <= 3
        assert store.count_keys() == 600
    finally:
        store.delete_many(store.keys())
        store.close()
        admin.dispose()


# -- restarts ----------------------------------------------------------------------------------


def test_a_dropped_connection_costs_no_failed_call(pg_url: str) -> None:
    """The server ends the store's idle connection (a restart, pg_terminate_backend, an idle
    timeout): the next read and the next write run on a fresh connection without an error."""
    store = kvstore.connect(pg_url, namespace="app-dropped")
    admin = sa.create_engine(pg_url)
    try:
        store.put("k", b"1")
        for call in (lambda: store.get("k") == b"1", lambda: store.put("k", b"2") == "k"):
            pid = _sql.value(store, "SELECT pg_backend_pid()")  # the idle connection it keeps
            with admin.begin() as c:
                c.exec_driver_sql("SELECT pg_terminate_backend(%(p)s)", {"p": pid})
            time.sleep(0.2)  # the backend is gone before the next call
            assert call()
        assert store.get("k") == b"2"
    finally:
        store.delete("k")
        store.close()
        admin.dispose()


def test_a_transaction_whose_connection_dies_raises_and_applies_nothing(pg_url: str) -> None:
    store = kvstore.connect(pg_url, namespace="app-dropped-tx")
    admin = sa.create_engine(pg_url)
    try:
        with pytest.raises(kvstore.DatabaseError), store.transaction() as tx:
            tx.put("a", b"1")
            pid = _sql.value(tx, "SELECT pg_backend_pid()")
            with admin.begin() as c:
                c.exec_driver_sql("SELECT pg_terminate_backend(%(p)s)", {"p": pid})
            tx.put("b", b"2")
        assert store.keys() == []
    finally:
        store.close()
        admin.dispose()


def test_threads_and_processes_share_nothing_by_accident(tmp_path: Path) -> None:
    """Many threads on one store: every call succeeds (connections are per call)."""
    store = kvstore.connect(f"sqlite:///{tmp_path / 'threads.db'}")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for n in range(30):
                store.put(f"t{i}-{n}", b"x")
                store.get(f"t{i}-{n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(store) == 240
    store.close()


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_a_server_restart_costs_no_call_and_downtime_fails_fast(
    make_pg_cluster: Any, driver: str
) -> None:
    """A real PostgreSQL server stops and starts again under a store on a URL and one on the
    application's Engine: while it is down each call fails fast with
    DatabaseUnavailableError; once it is back the next call succeeds."""
    node = make_pg_cluster(standbys=0).primary
    url = node.url.replace("+psycopg", f"+{driver}")
    engine = sa.create_engine(url)
    stores = [kvstore.connect(url, namespace="restart"), kvstore.connect(engine, namespace="e")]
    try:
        for s in stores:
            s.put("k", b"1")
        node.stop("fast")
        for s in stores:
            start = time.monotonic()
            with pytest.raises(kvstore.DatabaseUnavailableError):
                s.get("k")
            assert time.monotonic() - start < 2.0
        node.start()
        for s in stores:
            assert s.get("k") == b"1"
            s.put("k", b"2")
            assert s.get("k") == b"2"
    finally:
        for s in stores:
            s.close()
        engine.dispose()


# -- the application's Alembic, schemas and pool ------------------------------------------------


def test_the_apps_autogenerate_leaves_kvstore_tables_alone(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    kvstore.connect(engine).close()
    app = sa.MetaData()
    sa.Table("orders", app, sa.Column("id", sa.Integer, primary_key=True))
    app.create_all(engine)
    with engine.connect() as conn:
        plain = compare_metadata(MigrationContext.configure(conn), app)
        hooked = compare_metadata(
            MigrationContext.configure(
                conn, opts={"include_name": kvstore.migrations.exclude_kvstore_tables()}
            ),
            app,
        )
    dropped = {d[1].name for d in plain if d[0] == "remove_table"}
    assert "kv_entries" in dropped and "kv_alembic_version" in dropped  # without the hook
    assert hooked == []
    engine.dispose()


def test_schema_translate_map_is_refused_not_ignored(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}").execution_options(
        schema_translate_map={None: "tenant1"}
    )
    with pytest.raises(ValueError, match="schema_translate_map"):
        kvstore.connect(engine)
    with engine.connect() as conn, pytest.raises(ValueError, match="schema_translate_map"):
        kvstore.connect(conn)
    with Session(engine) as session, pytest.raises(ValueError, match="schema_translate_map"):
        kvstore.connect(session)


def test_pool_pre_ping_sees_every_checkout(tmp_path: Path) -> None:
    """With pool_pre_ping (or pool_recycle) kvstore keeps no connection between calls: each
    call checks one out of the engine's pool, which pings it."""
    pings: list[int] = []
    store = kvstore.connect(
        f"sqlite:///{tmp_path / 'ping.db'}", engine_options={"pool_pre_ping": True}
    )
    engine = store.scope.backend.engine
    assert engine is not None
    sa.event.listen(engine.pool, "checkout", lambda *a: pings.append(1))
    for n in range(5):
        store.put(f"k{n}", b"v")
    assert len(pings) >= 5
    store.close()
