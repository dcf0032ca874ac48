"""The two ways kvstore talks to a database.

:class:`RawConn` is a DBAPI connection kvstore owns (the store was given a URL or an Engine).
It runs in the driver's autocommit mode, so a single-statement call is one round trip with no
BEGIN/COMMIT around it, and executes pre-rendered SQL straight on the driver: SQLAlchemy's
per-call overhead (pool checkout, compilation cache lookup, result processing) is several times
the cost of a primary-key lookup on SQLite. Multi-statement calls open an explicit transaction.

:class:`ExternalConn` is the caller's SQLAlchemy ``Connection`` (or ``Session``). kvstore joins
its transaction, never commits or rolls it back, and makes its own multi-statement calls atomic
with savepoints.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from ._dialect import Dialect
from .errors import StorageFullError

_savepoint_ids = itertools.count(1)


def _full(exc: Exception) -> StorageFullError:
    # A full disk reads the same on every dialect and driver: an OSError with ENOSPC. Checked
    # in an ``except`` clause at each call (a ``try`` costs nothing until it raises; a context
    # manager per statement would tax the hot path).
    return StorageFullError(
        f"the database is out of space: {getattr(exc, 'orig', None) or exc}", exc
    )


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> Sequence[Any]: ...
    def fetchmany(self, size: int = ...) -> Sequence[Any]: ...


class Conn:
    dialect: Dialect
    #: True while a transaction (ours or the caller's) is open on this connection
    in_tx: bool = False

    def execute(self, sql: str, params: Any = ()) -> Cursor:
        raise NotImplementedError

    def execute_bytes(self, sql: str, params: Any = ()) -> Cursor:
        """Like :meth:`execute`, for statements returning large binary columns."""
        return self.execute(sql, params)

    def executemany(self, sql: str, params: Sequence[Any]) -> None:
        raise NotImplementedError

    def begin(self, begin_sql: str) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        name = f"kv_sp{next(_savepoint_ids)}"
        self.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self.execute(f"RELEASE SAVEPOINT {name}")

    @contextlib.contextmanager
    def atomic(self, begin_sql: str | None = None) -> Iterator[None]:
        """Make a block of statements atomic: a transaction, or a savepoint inside one."""
        if self.in_tx:
            with self.savepoint():
                yield
            return
        self.begin(begin_sql or self.dialect.default_begin)
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit_or_rollback()

    def commit_or_rollback(self) -> None:
        """Commit; if that fails, roll back so the connection never goes back to the pool
        with a transaction still open (a failed SQLite COMMIT leaves it open)."""
        try:
            self.commit()
        except BaseException:
            self.rollback()
            raise


class RawConn(Conn):
    """A pooled DBAPI connection in autocommit mode, owned by one store backend."""

    def __init__(self, proxied: Any, dialect: Dialect, options: dict[str, Any]) -> None:
        self.proxied = proxied  # SQLAlchemy's pool proxy: returning it gives it back to the pool
        self.dbapi = proxied.driver_connection
        self.dialect = dialect
        info = proxied.info
        if not info.get("kvstore_prepared"):
            dialect.prepare_connection(self.dbapi, options)
            info["kvstore_prepared"] = True
        self._old_autocommit = dialect.set_autocommit(self.dbapi, True)
        self.in_tx = False
        self.broken = False

    def execute(self, sql: str, params: Any = ()) -> Cursor:
        try:
            cur: Cursor = self.dbapi.execute(sql, params)
        except Exception as exc:
            if self.dialect.is_disk_full(exc):
                raise _full(exc) from exc
            raise
        return cur

    def execute_bytes(self, sql: str, params: Any = ()) -> Cursor:
        cur: Cursor = self.dialect.execute_bytes(self.dbapi, sql, params)
        return cur

    def executemany(self, sql: str, params: Sequence[Any]) -> None:
        cur = self.dbapi.cursor()
        try:
            try:
                cur.executemany(sql, params)
            except Exception as exc:
                if self.dialect.is_disk_full(exc):
                    raise _full(exc) from exc
                raise
        finally:
            cur.close()

    def begin(self, begin_sql: str) -> None:
        self.dbapi.execute(begin_sql)
        self.in_tx = True

    def commit(self) -> None:
        try:
            cur = self.dbapi.execute("COMMIT")
        except Exception as exc:
            if self.dialect.is_disk_full(exc):
                raise _full(exc) from exc
            raise
        self.in_tx = False
        if self.dialect.commit_was_rollback(cur):
            # PostgreSQL answers COMMIT of a transaction aborted by an earlier (caught) error
            # with a silent ROLLBACK: the caller must not believe its writes were kept.
            from .errors import TransactionError

            raise TransactionError(
                "the transaction was rolled back: a statement in it failed earlier (an "
                "exception caught inside the block), so PostgreSQL refused to commit it"
            )

    @property
    def closed(self) -> bool:
        return bool(self.dialect.is_closed(self.dbapi))

    def rollback(self) -> None:
        self.in_tx = False
        try:
            self.dbapi.execute("ROLLBACK")
        except Exception:
            # A connection that cannot even roll back is discarded rather than reused.
            self.broken = True

    def close(self) -> None:
        try:
            if self.in_tx:
                self.rollback()
            self.dialect.restore_autocommit(self.dbapi, self._old_autocommit)
        except Exception:
            self.broken = True
        if self.broken:
            self.proxied.invalidate()
        self.proxied.close()


class ExternalConn(Conn):
    """The caller's SQLAlchemy Connection or Session: joined, never committed."""

    in_tx = True

    def __init__(self, bind: Any, dialect: Dialect) -> None:
        self.bind = bind
        self.dialect = dialect

    def _connection(self) -> Any:
        # A Session may hand out a new Connection after the caller commits; ask every time.
        conn = self.bind.connection() if hasattr(self.bind, "get_bind") else self.bind
        # pysqlite (before Python 3.12) only BEGINs implicitly before DML, so a SAVEPOINT sent
        # first would open, and its RELEASE would commit, a transaction of its own. Begin
        # explicitly so everything kvstore writes waits for the caller's commit.
        dbapi = conn.connection.driver_connection
        if not self.dialect.in_driver_transaction(dbapi):
            conn.exec_driver_sql("BEGIN")
        return conn

    def execute(self, sql: str, params: Any = ()) -> Cursor:
        try:
            cur: Cursor = self._connection().exec_driver_sql(sql, params)
        except Exception as exc:
            if self.dialect.is_disk_full(exc):
                raise _full(exc) from exc
            raise
        return cur

    def executemany(self, sql: str, params: Sequence[Any]) -> None:
        if params:
            try:
                self._connection().exec_driver_sql(sql, list(params))
            except Exception as exc:
                if self.dialect.is_disk_full(exc):
                    raise _full(exc) from exc
                raise

    def begin(self, begin_sql: str) -> None:  # pragma: no cover - in_tx is always True
        raise AssertionError("an external connection is always inside the caller's transaction")

    commit = rollback = begin  # type: ignore[assignment]
