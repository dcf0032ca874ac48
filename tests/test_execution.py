"""The execution layer as the SQLAlchemy ecosystem sees it: statements visible to a listening
Engine (cursor events, echo, the sqlalchemy.engine logger), one error type whatever the store
is bound to, and an unreachable server reported at once."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

import kvstore


def _engine(url: str, **kw: Any) -> sa.Engine:
    return sa.create_engine(url, **kw)


# MariaDB through both its drivers: the listened path and the caller's Connection/Session
# execute through SQLAlchemy, whose executemany is the driver's own (Connector/Python's bulk
# protocol refuses kvstore's INSERT ... SELECT)
@pytest.fixture(params=["sqlite", "postgresql", "mariadb", "mariadb-mariadbconnector"])
def engine_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'exec.db'}"
    fixture = {"mariadb": "maria_url", "mariadb-mariadbconnector": "mdbc_url"}
    url: str = request.getfixturevalue(fixture.get(request.param, "pg_url"))
    return url


def test_cursor_listeners_see_every_statement(engine_url: str) -> None:
    engine = _engine(engine_url)
    seen: list[str] = []
    after: list[str] = []
    try:
        store = kvstore.connect(engine, namespace="exec-listen")
        store.put("warm", b"0")  # schema work done before listening
        event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        event.listen(engine, "after_cursor_execute", lambda *a: after.append(a[2]))
        store.put("k", b"v")
        assert store.get("k") == b"v"
        assert "k" in store
        store.create_index("by_x", kvstore.json_field("x"))
        store.put("j", b'{"x": 1}')
        assert store.find("by_x", 1) == ["j"]
        with store.transaction() as tx:
            tx.put("t", b"1")
        store.delete("k")
        text = "\n".join(seen)
        assert "INSERT INTO kv_entries" in text
        assert "SELECT value, blob_id, size FROM kv_entries" in text
        assert "kv_index_entries" in text  # find() and the index upkeep
        assert "DELETE FROM kv_entries" in text
        assert len(after) == len(seen)
        # the data went where the statements said
        assert store.get("t") == b"1" and "k" not in store
    finally:
        store.delete_many(["j", "t", "warm"])
        store.drop_index("by_x")
        store.close()
        engine.dispose()


def test_a_listener_added_later_is_honoured_and_removing_it_restores_the_fast_path(
    engine_url: str,
) -> None:
    engine = _engine(engine_url)
    store = kvstore.connect(engine, namespace="exec-later")
    try:
        store.put("a", b"1")
        seen: list[str] = []

        def listener(*a: Any) -> None:
            seen.append(a[2])

        event.listen(engine, "before_cursor_execute", listener)
        store.get("a")
        assert any("kv_entries" in s for s in seen)
        event.remove(engine, "before_cursor_execute", listener)
        n = len(seen)
        store.get("a")
        assert len(seen) == n
    finally:
        store.delete("a")
        store.close()
        engine.dispose()


def test_echo_logs_kvstore_statements(engine_url: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = _engine(engine_url, echo=True)
    store = kvstore.connect(engine, namespace="exec-echo")
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
            store.put("e", b"1")
            assert store.get("e") == b"1"
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "INSERT INTO kv_entries" in logged
        assert "SELECT value, blob_id, size FROM kv_entries" in logged
    finally:
        store.delete("e")
        store.close()
        engine.dispose()


def test_the_sqlalchemy_engine_logger_sees_statements_of_a_url_store(
    engine_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = kvstore.connect(engine_url, namespace="exec-logger")
    try:
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
            store.put("l", b"1")
        assert any("INSERT INTO kv_entries" in r.getMessage() for r in caplog.records)
    finally:
        store.delete("l")
        store.close()


def _bad_statement_error(store: kvstore.Store) -> BaseException:
    # a value the database refuses: a BIGINT version out of range in a raw-ish path is hard
    # to reach through the API, so use a table prefix whose tables do not exist
    try:
        store.get("anything")
    except BaseException as exc:
        return exc
    raise AssertionError("no error")


def test_one_error_type_whatever_the_store_is_bound_to(engine_url: str) -> None:
    """A database failure is a kvstore.DatabaseError chained to the driver's exception for a
    store on a URL, an Engine, a Connection and a Session alike."""
    engine = _engine(engine_url)
    prefix = "kvexec_missing_"
    kinds: dict[str, BaseException] = {}
    try:
        s = kvstore.connect(engine_url, table_prefix=prefix, create=False)
        kinds["url"] = _bad_statement_error(s)
        s.close()
        s = kvstore.connect(engine, table_prefix=prefix, create=False)
        kinds["engine"] = _bad_statement_error(s)
        with engine.connect() as conn:
            s = kvstore.connect(conn, table_prefix=prefix, create=False)
            kinds["connection"] = _bad_statement_error(s)
        with Session(engine) as session:
            s = kvstore.connect(session, table_prefix=prefix, create=False)
            kinds["session"] = _bad_statement_error(s)
    finally:
        engine.dispose()
    types = {k: type(v) for k, v in kinds.items()}
    assert len(set(types.values())) == 1, types
    for exc in kinds.values():
        assert isinstance(exc, kvstore.DatabaseError)
        assert exc.__cause__ is not None
        assert exc.orig is not None
        # the driver's own exception, not SQLAlchemy's wrapper of it
        assert not isinstance(exc.orig, sa.exc.SQLAlchemyError)
        assert "kvexec_missing_entries" in str(exc)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:1/nowhere",
        "sqlite:////nonexistent-dir/sub/x.db",
        "mariadb+pymysql://root@127.0.0.1:1/nowhere",
        "mariadb+mariadbconnector://root@127.0.0.1:1/nowhere",
    ],
)
def test_an_unreachable_database_fails_at_once(url: str) -> None:
    start = time.monotonic()
    with pytest.raises(kvstore.DatabaseUnavailableError) as info:
        kvstore.connect(url)
    assert time.monotonic() - start < 1.0
    assert isinstance(info.value, ConnectionError)
    assert info.value.__cause__ is not None


def test_a_lock_timeout_is_a_lock_timeout_error(tmp_path: Any) -> None:
    path = tmp_path / "locked.db"
    a = kvstore.connect(f"sqlite:///{path}", busy_timeout=0.05)
    b = kvstore.connect(f"sqlite:///{path}", busy_timeout=0.05)
    try:
        errors: list[BaseException] = []

        def other_writer() -> None:
            try:
                b.put("y", b"2")
            except BaseException as exc:
                errors.append(exc)

        with a.transaction() as tx:
            tx.put("x", b"1")
            t = threading.Thread(target=other_writer)
            t.start()
            t.join(30)
        assert len(errors) == 1 and isinstance(errors[0], kvstore.LockTimeoutError), errors
        assert isinstance(errors[0], TimeoutError)
        assert "y" not in b
        assert b.get("x") == b"1"
    finally:
        a.close()
        b.close()
