"""The one execution layer: a rendered statement and its parameters become a database call.

:class:`RawConn` is a DBAPI connection kvstore owns (the store was given a URL or an Engine).
It runs in the driver's autocommit mode, so a single-statement call is one round trip with no
BEGIN/COMMIT around it, and executes pre-rendered SQL straight on the driver: SQLAlchemy's
per-call overhead (pool checkout, compilation cache lookup, result processing) is several times
the cost of a primary-key lookup on SQLite. Multi-statement calls open an explicit transaction.

:class:`SAConn` is the same through SQLAlchemy's ``Connection``, taken when someone watches the
engine (``echo``, the ``sqlalchemy.engine`` logger, cursor events), so they see every statement.

:class:`ExternalConn` is the caller's SQLAlchemy ``Connection`` (or ``Session``). kvstore joins
its transaction, never commits or rolls it back, and makes its own multi-statement calls atomic
with savepoints.

Every driver error leaves this module as a :class:`kvstore.DatabaseError` (or one of its
subclasses) chained to the driver's exception, whatever the store is bound to.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from ._dialect import Dialect, Rendered
from .errors import KVStoreError, TransactionError

_savepoint_ids = itertools.count(1)

# Errors are translated in an ``except`` clause at each call: a ``try`` costs nothing until it
# raises, where a context manager per statement would tax the hot path.


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> Sequence[Any]: ...
    def fetchmany(self, size: int = ...) -> Sequence[Any]: ...


class Conn:
    dialect: Dialect
    #: True while a transaction (ours or the caller's) is open on this connection
    in_tx: bool = False
    broken: bool = False

    def execute(self, stmt: Rendered, params: Any = None) -> Cursor:
        raise NotImplementedError

    def execute_bytes(self, stmt: Rendered, params: Any = None) -> Cursor:
        """Like :meth:`execute`, for statements returning large binary columns."""
        return self.execute(stmt, params)

    def executemany(
        self, stmt: Rendered, params: Sequence[Any], common: Mapping[str, Any] | None = None
    ) -> None:
        """Run ``stmt`` once per mapping in ``params``; ``common`` holds the parameters every
        row shares (a dialect may bind them once per batch instead of once per row)."""
        raise NotImplementedError

    def _rows(
        self, stmt: Rendered, params: Sequence[Any], common: Mapping[str, Any] | None
    ) -> tuple[list[Any], Mapping[str, Any] | None]:
        """The rows to hand the dialect, and what is left of ``common`` for it to bind."""
        if common is None:
            return [stmt.bind(p) for p in params], None
        if self.dialect.binds_common and stmt.names is None:
            return list(params), common
        return [stmt.bind({**common, **p}) for p in params], None

    def run(self, sql: str) -> Cursor:
        """A statement without parameters (BEGIN, SAVEPOINT, LOCK TABLE ...)."""
        raise NotImplementedError

    def begin(self, begin_sql: str) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False

    def lock_wait(self) -> float:
        """How long the driver waits for a lock on this connection before failing."""
        return 0.0

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        name = f"kv_sp{next(_savepoint_ids)}"
        self.run(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException as exc:
            # a broken connection is discarded, its transaction with it; after a deadlock
            # InnoDB has rolled back the whole transaction, savepoints and all, and the
            # deadlock (retryable) is the error to report
            if not self.broken and not self.dialect.aborts_transaction(exc):
                self.run(f"ROLLBACK TO SAVEPOINT {name}")
                self.run(f"RELEASE SAVEPOINT {name}")
            raise
        self.run(f"RELEASE SAVEPOINT {name}")

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

    def _check_commit(self, cur: Any) -> None:
        if self.dialect.commit_was_rollback(cur):
            # PostgreSQL answers COMMIT of a transaction aborted by an earlier (caught) error
            # with a silent ROLLBACK: the caller must not believe its writes were kept.
            raise TransactionError(
                "the transaction was rolled back: a statement in it failed earlier (an "
                "exception caught inside the block), so PostgreSQL refused to commit it"
            )


class _OwnedConn(Conn):
    """What RawConn and SAConn share: a connection kvstore checked out of an engine's pool,
    in the driver's autocommit mode, with transactions of its own."""

    dbapi: Any
    _old_autocommit: Any

    def _send(self, sql: str) -> None:
        """Send a statement as it is, untranslated errors (ROLLBACK)."""
        raise NotImplementedError

    def _release(self, invalidate: bool) -> None:
        """Give the connection back to its pool (invalidated: discarded)."""
        raise NotImplementedError

    def begin(self, begin_sql: str) -> None:
        self.run(begin_sql)  # on RawConn a dead connection is replaced here, before anything
        self.in_tx = True

    #: the database rolled the transaction back by itself (see :meth:`_failed`)
    aborted = False

    def _failed(self, exc: BaseException) -> KVStoreError:
        """The kvstore error for a failed statement. After a deadlock InnoDB has rolled the
        whole transaction back and the connection is in autocommit mode again: what the caller
        runs next (if it caught the error) must not be committed statement by statement, so a
        new transaction is begun for it, and COMMIT refuses it."""
        if self.in_tx and not self.aborted and self.dialect.aborts_transaction(exc):
            self.aborted = True
            with contextlib.suppress(Exception):
                self._send(self.dialect.default_begin)
        return self.dialect.error(exc)

    def commit(self) -> None:
        if self.aborted:
            self.rollback()
            raise TransactionError(
                "the transaction was rolled back by the database (a deadlock: an error caught "
                "inside the block), so it cannot be committed; run it again"
            )
        cur = self.run("COMMIT")
        self.in_tx = False
        self._check_commit(cur)

    def rollback(self) -> None:
        self.in_tx = False
        self.aborted = False
        if self.broken:
            # Discarded when given back, and closing it ends its transaction. An interrupted
            # connection may still be busy with the statement it was running: sending it
            # anything now could wait forever (asyncpg, after a cancelled executemany).
            return
        try:
            self._send("ROLLBACK")
        except Exception:
            # A connection that cannot even roll back is discarded rather than reused.
            self.broken = True

    def close(self) -> None:
        try:
            if self.in_tx:
                self.rollback()
            if not self.broken:
                self.dialect.restore_autocommit(self.dbapi, self._old_autocommit)
        except Exception:
            self.broken = True
        self._release(self.broken)


class RawConn(_OwnedConn):
    """A pooled DBAPI connection in autocommit mode, owned by one store backend."""

    def __init__(
        self,
        proxied: Any,
        dialect: Dialect,
        options: dict[str, Any],
        reconnect: Callable[[], Any] | None = None,
    ) -> None:
        self.dialect = dialect
        self._options = options
        self._reconnect = reconnect
        self._attach(proxied)
        self.in_tx = False
        self.broken = False

    def _attach(self, proxied: Any) -> None:
        self.proxied = proxied  # SQLAlchemy's pool proxy: returning it gives it back to the pool
        self.dbapi = self.dialect.dbapi_of(proxied)
        dialect = self.dialect
        self._exec = dialect.executor(self.dbapi)
        info = proxied.info
        try:
            if not info.get("kvstore_prepared"):
                dialect.prepare_connection(self.dbapi, self._options)
                info["kvstore_prepared"] = True
            self._old_autocommit = dialect.set_autocommit(self.dbapi, True)
        except BaseException as exc:
            # (an async task cancelled while a fresh connection is set up, too: never leaked)
            proxied.invalidate()
            if not isinstance(exc, Exception):
                raise
            raise dialect.error(exc) from exc

    # A statement interrupted by a BaseException that is not an error (an
    # asyncio task cancelled while an async driver works, KeyboardInterrupt) may or may not
    # have run, and the driver may still be busy with it: the connection is discarded when it
    # is given back, never reused in an unknown state (a BEGIN that did run, say).

    def execute(self, stmt: Rendered, params: Any = None) -> Cursor:
        try:
            cur: Cursor = self._exec(stmt.sql, stmt.bind(params))
        except Exception as exc:
            if not self._replace_dead(exc):
                raise self._failed(exc) from exc
            try:  # once, on the fresh connection
                cur = self._exec(stmt.sql, stmt.bind(params))
            except Exception as again:
                raise self._failed(again) from again
        except BaseException:
            self.broken = True  # interrupted: see above
            raise
        return cur

    def _replace_dead(self, exc: BaseException) -> bool:
        """After a restart or a terminated session, the connection the store kept (or the
        pool handed out) is dead. Outside a transaction each statement stands alone and a
        dead connection executed none of it, so it runs once more on a fresh connection;
        inside one, the transaction is lost and the error stands."""
        if self.in_tx or self._reconnect is None or not self.dialect.is_unavailable(exc):
            return False
        with contextlib.suppress(Exception):  # already unusable: the pool forgets it anyway
            self.proxied.invalidate()
        try:
            self._attach(self._reconnect())
        except Exception:
            self.broken = True
            return False
        return True

    def execute_bytes(self, stmt: Rendered, params: Any = None) -> Cursor:
        try:
            cur: Cursor = self.dialect.execute_bytes(self.dbapi, stmt.sql, stmt.bind(params))
        except Exception as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self.broken = True
            raise
        return cur

    def executemany(
        self, stmt: Rendered, params: Sequence[Any], common: Mapping[str, Any] | None = None
    ) -> None:
        if not params:
            return
        try:
            rows, left = self._rows(stmt, params, common)
            self.dialect.executemany(self.dbapi, stmt.sql, rows, left)
        except Exception as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self.broken = True
            raise

    def lock_wait(self) -> float:
        return self.dialect.lock_wait(self.dbapi)

    def run(self, sql: str) -> Cursor:
        try:
            cur: Cursor = self._exec(sql)
        except Exception as exc:
            if not self._replace_dead(exc):
                raise self._failed(exc) from exc
            try:
                cur = self._exec(sql)
            except Exception as again:
                raise self._failed(again) from again
        except BaseException:
            self.broken = True  # interrupted: see above
            raise
        return cur

    @property
    def closed(self) -> bool:
        return bool(self.dialect.is_closed(self.dbapi))

    def _send(self, sql: str) -> None:
        self._exec(sql)

    def _release(self, invalidate: bool) -> None:
        if invalidate and self.proxied.is_valid:
            self.proxied.invalidate()
        self.proxied.close()


class SAConn(_OwnedConn):
    """An owned connection run through SQLAlchemy's ``Connection``, so that the engine's
    logging and cursor events see every statement; same autocommit rules as RawConn."""

    def __init__(self, sa_conn: Any, dialect: Dialect, options: dict[str, Any]) -> None:
        self.sa = sa_conn
        self.dialect = dialect
        try:
            fairy = sa_conn.connection
            self.dbapi = dialect.dbapi_of(fairy)
            if not fairy.info.get("kvstore_prepared"):
                dialect.prepare_connection(self.dbapi, options)
                fairy.info["kvstore_prepared"] = True
            self._old_autocommit = dialect.set_autocommit(self.dbapi, True)
        except BaseException as exc:
            sa_conn.invalidate()
            sa_conn.close()
            if not isinstance(exc, Exception):
                raise
            raise dialect.error(exc) from exc
        self.in_tx = False
        self.broken = False

    def execute(self, stmt: Rendered, params: Any = None) -> Cursor:
        try:
            cur: Cursor = self.sa.exec_driver_sql(stmt.sql, stmt.bind(params))
        except Exception as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self.broken = True  # interrupted: see RawConn
            raise
        return cur

    def executemany(
        self, stmt: Rendered, params: Sequence[Any], common: Mapping[str, Any] | None = None
    ) -> None:
        if not params:
            return
        try:
            rows, left = self._rows(stmt, params, common)
            self.dialect.executemany_on(self.sa, stmt.sql, rows, left)
        except Exception as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self.broken = True
            raise

    def run(self, sql: str) -> Cursor:
        try:
            cur: Cursor = self.sa.exec_driver_sql(sql)
        except Exception as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self.broken = True  # interrupted: see RawConn
            raise
        return cur

    @property
    def closed(self) -> bool:
        return bool(self.sa.closed or self.sa.invalidated or self.dialect.is_closed(self.dbapi))

    def _send(self, sql: str) -> None:
        self.sa.exec_driver_sql(sql)

    def _release(self, invalidate: bool) -> None:
        if invalidate:
            self.sa.invalidate()
        self.sa.close()


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
        dbapi = self.dialect.dbapi_of(conn.connection)
        if not self.dialect.in_driver_transaction(dbapi):
            conn.exec_driver_sql(self.dialect.driver_begin)
        return conn

    def execute(self, stmt: Rendered, params: Any = None) -> Cursor:
        try:
            cur: Cursor = self._connection().exec_driver_sql(stmt.sql, stmt.bind(params))
        except KVStoreError:
            raise
        except Exception as exc:
            raise self.dialect.error(exc) from exc
        return cur

    def executemany(
        self, stmt: Rendered, params: Sequence[Any], common: Mapping[str, Any] | None = None
    ) -> None:
        if params:
            try:
                rows, left = self._rows(stmt, params, common)
                self.dialect.executemany_on(self._connection(), stmt.sql, rows, left)
            except KVStoreError:
                raise
            except Exception as exc:
                raise self.dialect.error(exc) from exc

    def run(self, sql: str) -> Cursor:
        try:
            cur: Cursor = self._connection().exec_driver_sql(sql)
        except KVStoreError:
            raise
        except Exception as exc:
            raise self.dialect.error(exc) from exc
        return cur

    def begin(self, begin_sql: str) -> None:  # pragma: no cover - in_tx is always True
        raise AssertionError("an external connection is always inside the caller's transaction")

    commit = rollback = begin  # type: ignore[assignment]
