"""Everything that differs between databases and drivers, in one place.

The rest of kvstore writes one SQL text per statement (``INSERT ... ON CONFLICT`` and
``RETURNING`` exist on both dialects) with ``:name`` parameters and asks this module for the
few things that differ: the statement in the driver's own parameter style, type names, how a
write transaction begins, row locks, connection set-up, engines from URLs, triggers, and what
a driver error means (a unique violation, "try again", a full disk, an unreachable server).
Nothing else checks the dialect or the driver.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import operator
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import DDL, create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import await_only

from ._retry import LOCK_POLL, backoff_sleep
from .errors import (
    DatabaseError,
    DatabaseUnavailableError,
    KVStoreError,
    LockTimeoutError,
    StorageFullError,
    TransactionError,
)

__all__ = [
    "Dialect",
    "Rendered",
    "async_engine_url",
    "engine_from_url",
    "for_name",
    "render",
    "trigger_ddl",
]


#: modules whose exceptions are a driver's (DBAPI) errors
_DRIVER_MODULES = frozenset(
    {
        "sqlite3",
        "_sqlite3",
        "psycopg",
        "psycopg2",
        "psycopg_binary",
        "aiosqlite",
        "asyncpg",
        "pymysql",
        # MariaDB Connector/Python (mariadb+mariadbconnector://) and asyncmy (connect_async)
        "mariadb",
        "asyncmy",
    }
)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A statement in one driver's SQL and parameter style: ``names`` is the order of
    positional parameters, or None when the driver takes them by name."""

    sql: str
    names: tuple[str, ...] | None = None
    #: the positional parameters of a mapping, in C (on every statement's path)
    _take: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        names = self.names
        if names:
            get = operator.itemgetter(*names)
            take = get if len(names) > 1 else lambda params: (get(params),)
            object.__setattr__(self, "_take", take)

    def bind(self, params: Mapping[str, Any] | None) -> Any:
        if params is None:
            return () if self.names is not None else {}
        take = self._take
        if take is not None:
            return take(params)
        if self.names is None:
            return params
        return ()  # positional, with no parameters


#: the parameters every row of an executemany shares, when given apart from the rows
_Common = Mapping[str, Any] | None


def render(sa_dialect: sa.engine.Dialect, text: str) -> Rendered:
    """``text`` (``:name`` parameters) as the driver behind ``sa_dialect`` wants it, compiled
    once by SQLAlchemy, so another DBAPI driver needs no change outside this module."""
    compiled = sa.text(text).compile(dialect=sa_dialect)
    names = compiled.positiontup
    if not sa_dialect.positional and sa_dialect.name == "sqlite" and len(compiled.params) > 16:
        # SQLite finds a :name's slot by a linear search of the statement's names, so
        # binding n named parameters costs n^2 (53 µs a key for get_many in batches of
        # 32,766); "?" slots bind by position. Few parameters stay named: no tuple to build.
        sql, order = _positional(compiled.string)
        return Rendered(sql, order)
    return Rendered(compiled.string, tuple(names) if sa_dialect.positional and names else None)


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=256)
def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """A statement with ``:name`` parameters in ``?`` form, and the names in order (kvstore's
    statements have no ``:`` inside string literals)."""
    names: list[str] = []

    def mark(m: re.Match[str]) -> str:
        names.append(m.group(1))
        return "?"

    return _NAMED.sub(mark, sql), tuple(names)


class Dialect:
    """SQLite's behaviour; :class:`PostgresDialect` overrides what PostgreSQL does otherwise."""

    name = "sqlite"
    #: appended to a SELECT that reads a row it is about to rewrite
    for_update = ""
    #: PostgreSQL needs an explicit lock so index creation and writers serialise (see store)
    lock_entries_for_write: str | None = None
    lock_entries_for_index_build: str | None = None
    #: run after an index build wrote many entries: statistics for the planner (None: the
    #: planner needs none, or gathering them would commit the caller's transaction)
    analyze_index_entries: str | None = None
    isolation_levels: ClassVar[dict[str, str]] = {
        "DEFERRED": "BEGIN DEFERRED",
        "IMMEDIATE": "BEGIN IMMEDIATE",
        "EXCLUSIVE": "BEGIN EXCLUSIVE",
        # SQLite transactions are serializable; accept the portable names too.
        "SERIALIZABLE": "BEGIN IMMEDIATE",
        "REPEATABLE READ": "BEGIN IMMEDIATE",
        "READ COMMITTED": "BEGIN IMMEDIATE",
    }
    # A write transaction must take the write lock up front: a deferred transaction that reads
    # and then writes fails with SQLITE_BUSY_SNAPSHOT when another writer got in between, and
    # the busy timeout cannot help it.
    default_begin = "BEGIN IMMEDIATE"
    read_snapshot_begin = "BEGIN DEFERRED"
    max_params = 900
    #: table names the database keeps for itself
    reserved_prefix = "sqlite_"
    type_names: ClassVar[dict[str, str]] = {
        "bytea": "BLOB",
        "bigint": "INTEGER",
        "text": "TEXT",
        "json": "TEXT",
    }
    #: what starts a transaction on a connection the driver has not begun one on
    driver_begin = "BEGIN"
    #: SQLite's query planner takes a hint that a condition is rarely true
    supports_likelihood = True
    #: ``key = ANY(:keys)`` with a list bound as one array parameter
    supports_any_array = False
    #: a write while the same thread's own application connection holds the database-wide
    #: write lock would wait for itself: watch the app's checkouts to refuse it at once
    watches_app_write_locks = True
    #: whether triggers keep each namespace's row count in the counts table (where COUNT(*)
    #: reads every row); otherwise len() counts the primary key's index
    counts_entries = True
    #: data-modifying statements in WITH (an indexed write as one statement)
    writes_in_ctes = False
    #: a key scan leaves out the expired keys found on the expiry index instead of testing
    #: each row's expiry, so it reads the primary key's index alone (a rowid table's expiry
    #: column is a second B-tree lookup per row)
    scans_keys_by_exclusion = True
    #: iter_prefixes as one recursive statement per page of prefixes, instead of a statement
    #: per prefix: the position of ``{sub}`` in ``{s}`` (1-based, 0 when absent), and the
    #: least key past a plain key ``{k}`` (SQLite: the key and a NUL, since a seek's one
    #: lower bound is its index range; PostgreSQL, whose text holds no NUL: two bounds)
    walks_prefixes_in_sql = True
    position_sql = "instr({s}, {sub})"
    past_plain_key = "key >= (CASE WHEN {found} THEN {skip} ELSE {k} || :nul END)"

    #: the names of the triggers on table ``:table``
    trigger_catalog = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :table"

    #: DDL runs inside a transaction and rolls back with it (MySQL/MariaDB commit instead)
    transactional_ddl = True
    #: an upsert's row count is 1 exactly when it wrote (MySQL counts an update as 2, and
    #: with CLIENT_FOUND_ROWS a row left as it was as 1, so "insert unless live" cannot be
    #: told from its row count there: see kvstore._entries.write_in)
    upsert_rowcount_exact = True
    #: ``UPDATE ... RETURNING`` (MariaDB has it for DELETE and INSERT only)
    supports_update_returning = True
    #: integer division of two integers
    intdiv = "/"
    #: appended to an index build's reads of the entries (see MySQLDialect)
    for_share = ""
    #: the longest collection key, in characters, the key columns' B-trees take (None: the
    #: UTF-8 byte limit alone)
    max_collection_key_chars: int | None = None
    #: statements this dialect says differently, by (Statements owner, name): the few that
    #: no common text can express (see MySQLDialect)
    statement_overrides: ClassVar[dict[tuple[str, str], str]] = {}

    def adapt_sql(self, text: str) -> str:
        """A statement written for every dialect, as this one must be sent (see MySQLDialect)."""
        return text

    def force_index(self, name: str) -> str:
        """A hint after a table name that makes the planner use index ``name`` (see
        MySQLDialect); nothing where the planner needs none."""
        return ""

    def schema_lock(self, conn: Any, name: str) -> contextlib.AbstractContextManager[None]:
        """Serialise processes creating or upgrading kvstore's tables, on a SQLAlchemy
        Connection. Nothing here: SQLite's write transaction and PostgreSQL's transactional
        DDL already make the loser of a race wait for the winner, then see its tables."""
        return contextlib.nullcontext()

    def holds_write_lock(self, dbapi_conn: Any) -> bool:
        """Whether an application's connection certainly holds the database's write lock. In
        the sqlite3 module's legacy transaction mode (SQLAlchemy's default) a transaction is
        begun implicitly only before INSERT/UPDATE/DELETE, so an open one has written and holds
        the lock until it ends. Under an explicit BEGIN nothing tells (it may only have read):
        False, and an ordinary lock wait applies."""
        if getattr(dbapi_conn, "isolation_level", None) is None:
            return False
        # sqlite3.LEGACY_TRANSACTION_CONTROL (Python 3.12+) is -1; not imported, because
        # loading the sqlite3 module costs a PostgreSQL-only process a MiB of RSS
        if getattr(dbapi_conn, "autocommit", -1) != -1:
            return False
        return bool(getattr(dbapi_conn, "in_transaction", False))

    def driver_begin_on(self, conn: Any) -> None:
        """Begin a write transaction at the driver on a SQLAlchemy Connection, unless the
        driver has begun one: pysqlite (before Python 3.12) only BEGINs before DML, so DDL
        would autocommit statement by statement, and a failed migration would leave half a
        schema. The write BEGIN (IMMEDIATE on SQLite) also queues concurrent migrators."""
        if not self.in_driver_transaction(self.dbapi_of(conn.connection)):
            conn.exec_driver_sql(self.default_begin)

    def selective(self, condition: str) -> str:
        """``condition``, marked as rarely true where the planner takes such hints."""
        return f"likelihood({condition}, 0.000001)" if self.supports_likelihood else condition

    def check_table_prefix(self, prefix: str) -> str:
        """Refuse a table prefix whose tables the database would not let kvstore create."""
        if prefix.startswith(self.reserved_prefix):
            raise ValueError(
                f"table_prefix {prefix!r} is reserved by {self.name}: names starting with "
                f"{self.reserved_prefix!r} belong to the database itself"
            )
        return prefix

    def begin_locks_database(self, begin_sql: str) -> bool:
        """Whether a transaction begun so holds the database-wide write lock from the start."""
        return begin_sql != "BEGIN DEFERRED"

    def begin_sql(self, isolation: str | None) -> str:
        if isolation is None:
            return self.default_begin
        level = " ".join(str(isolation).upper().replace("_", " ").split())
        try:
            return self.isolation_levels[level]
        except KeyError:
            raise ValueError(
                f"isolation level {isolation!r} is not offered by {self.name}; "
                f"choose one of {sorted(self.isolation_levels)}"
            ) from None

    # -- connections -------------------------------------------------------------------------
    def prepare_connection(self, dbapi_conn: Any, options: dict[str, Any]) -> None:
        """Run once per DBAPI connection kvstore uses."""
        owned = options.get("owned", True)
        wal = options.get("wal")
        if not owned and not wal:
            # A connection of the application's Engine keeps its settings (busy_timeout,
            # foreign_keys, journal mode, synchronous): changing them would change what the
            # application's own statements do on the connections kvstore happened to use.
            return
        cur = dbapi_conn.cursor()
        try:
            busy_ms = int(options.get("busy_timeout", 30.0) * 1000)
            if owned:
                cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
                cur.execute("PRAGMA foreign_keys = ON")
            if not self.in_driver_transaction(dbapi_conn):
                # WAL lets readers and one writer work at once across processes, and costs
                # one fsync per commit where the rollback journal costs four. It is a setting
                # of the database file: on an application's Engine only when asked for.
                if wal or (owned and wal is None):
                    _switch_to_wal(cur, busy_ms / 1000)
                if owned:
                    sync = options.get("synchronous", "FULL")
                    cur.execute(f"PRAGMA synchronous = {sync}")
        finally:
            cur.close()

    def lock_wait(self, dbapi_conn: Any) -> float:
        """How long the driver itself waits for a lock before failing, in seconds."""
        row = dbapi_conn.execute("PRAGMA busy_timeout").fetchone()
        return float(row[0]) / 1000 if row else 0.0

    #: the DBAPI driver (SQLAlchemy's name for it) this dialect object speaks to
    driver = "pysqlite"
    #: executemany takes the parameters every row shares apart (bound once per statement)
    binds_common = True
    #: an asyncio driver, used through SQLAlchemy's sync adapter inside a greenlet (kvstore.aio)
    is_async = False

    def dbapi_of(self, fairy: Any) -> Any:
        """The DBAPI connection kvstore executes on, from SQLAlchemy's pooled connection: the
        driver's own connection; for an asyncio driver, SQLAlchemy's DBAPI adapter of it."""
        return fairy.driver_connection

    def executor(self, dbapi_conn: Any) -> Callable[..., Any]:
        """``execute(sql, params=None) -> cursor`` on a DBAPI connection, as cheap as the
        driver allows: sqlite3 and psycopg 3 connections execute themselves."""
        return dbapi_conn.execute  # type: ignore[no-any-return]

    def executemany(
        self, dbapi_conn: Any, sql: str, rows: list[Any], common: _Common = None
    ) -> None:
        cur = dbapi_conn.cursor()
        try:
            if self.name != "sqlite":
                cur.executemany(sql, rows)
                return
            for text, args, many in _sqlite_many(sql, rows, common):
                if many:
                    cur.executemany(text, args)
                else:
                    cur.execute(text, args)
        finally:
            cur.close()

    def executemany_on(self, conn: Any, sql: str, rows: list[Any], common: _Common = None) -> None:
        """``executemany`` through a SQLAlchemy Connection (a listened engine, the caller's
        Connection or Session), so its events see the statement."""
        if self.name != "sqlite" or not rows:
            if common is not None:
                rows = [{**common, **row} for row in rows]
            conn.exec_driver_sql(sql, rows)
            return
        for text, args, many in _sqlite_many(sql, rows, common):
            conn.exec_driver_sql(text, args if many else tuple(args))

    def set_autocommit(self, dbapi_conn: Any, on: bool) -> Any:
        """Switch the driver's implicit transactions off (or back); return the old setting."""
        old = dbapi_conn.isolation_level
        dbapi_conn.isolation_level = None if on else ""
        return old

    def restore_autocommit(self, dbapi_conn: Any, old: Any) -> None:
        dbapi_conn.isolation_level = old

    def in_driver_transaction(self, dbapi_conn: Any) -> bool:
        return bool(dbapi_conn.in_transaction)

    def execute_bytes(self, dbapi_conn: Any, sql: str, params: Any) -> Any:
        """Run a statement whose result is mostly bytes (chunks of large values)."""
        return dbapi_conn.execute(sql, params)

    def commit_was_rollback(self, cursor: Any) -> bool:
        """Whether a COMMIT actually rolled back (SQLite raises instead)."""
        return False

    def is_closed(self, dbapi_conn: Any) -> bool:
        """Whether a connection is dead (closed by the server, or broken)."""
        try:
            dbapi_conn.total_changes  # noqa: B018 - raises ProgrammingError once closed
        except Exception:
            return True
        return False

    # -- values ------------------------------------------------------------------------------
    def load_json(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str | bytes | bytearray):
            return json.loads(value)
        return value

    # -- errors ------------------------------------------------------------------------------
    def is_unique_violation(self, exc: BaseException) -> bool:
        orig = _orig(exc)
        return type(orig).__name__ == "IntegrityError" and "UNIQUE constraint failed" in str(orig)

    def is_retryable(self, exc: BaseException) -> bool:
        orig = _orig(exc)
        msg = str(orig)
        return type(orig).__name__ == "OperationalError" and (
            "database is locked" in msg or "database table is locked" in msg or "busy" in msg
        )

    def is_bad_integer(self, exc: BaseException) -> bool:
        return False

    def aborts_transaction(self, exc: BaseException) -> bool:
        """Whether the error has already rolled back the whole transaction, its savepoints
        gone with it (MySQL's deadlock); elsewhere an error leaves them to roll back to."""
        return False

    def is_driver_error(self, exc: BaseException) -> bool:
        """An error of SQLAlchemy's DBAPI family or of a driver module itself."""
        if isinstance(exc, sa_exc.DBAPIError):
            return True
        return type(exc).__module__.split(".")[0] in _DRIVER_MODULES

    def is_unavailable(self, exc: BaseException) -> bool:
        """The database cannot be reached (a file that cannot be opened, here)."""
        return "unable to open database file" in str(_orig(exc))

    def is_lock_timeout(self, exc: BaseException) -> bool:
        return self.is_retryable(exc)

    def lock_message(self, detail: str) -> str:
        return (
            "gave up waiting for the database's write lock: another connection holds it "
            f"({detail}); connect(busy_timeout=...) sets how long to wait. Inside a request "
            "whose own Session has written, use a store bound to that Session"
        )

    def error(self, exc: BaseException, *, connecting: bool = False) -> KVStoreError:
        """The kvstore exception for a driver (or SQLAlchemy) error; raise it ``from exc``."""
        if isinstance(exc, KVStoreError):
            return exc
        orig = _orig(exc)
        detail = f"{type(orig).__name__}: {orig}".strip()
        if self.is_disk_full(exc):
            return StorageFullError(f"the database is out of space: {orig}", orig)
        if self.is_unavailable(exc) or (connecting and type(orig).__name__ == "OperationalError"):
            return DatabaseUnavailableError(f"cannot reach the database: {detail}", orig)
        if self.is_lock_timeout(exc):
            return LockTimeoutError(self.lock_message(detail), orig)
        return DatabaseError(f"the database refused the statement: {detail}", orig)

    def is_disk_full(self, exc: BaseException) -> bool:
        orig = _orig(exc)
        # SQLITE_FULL: the disk, or PRAGMA max_page_count, is full
        return getattr(orig, "sqlite_errorcode", None) == 13 or "database or disk is full" in str(
            orig
        )


class PostgresDialect(Dialect):
    name = "postgresql"
    # psycopg 3: put_many's rows go by COPY (see _PgCopyPlan)
    binds_common = True
    for_update = " FOR UPDATE"
    # Taken first by every multi-statement write: it conflicts with the SHARE lock that
    # create_index/rebuild_index hold while back-filling, so no write can slip between the
    # back-fill's scan and its commit with a stale view of the namespace's indexes.
    lock_entries_for_write = "LOCK TABLE {entries} IN ROW EXCLUSIVE MODE"
    lock_entries_for_index_build = "LOCK TABLE {entries} IN SHARE MODE"
    # Until autovacuum analyzes it (up to a minute later), the planner takes a table that
    # just grew from nothing for empty, and for a count's dedupe probe it may then pick the
    # primary key over the (namespace, index_id, key) index: a scan of the whole index per
    # match, 105 s for 10,000 matches where the right plan takes 70 ms.
    analyze_index_entries = "ANALYZE {index_entries}"
    isolation_levels: ClassVar[dict[str, str]] = {
        "READ COMMITTED": "BEGIN ISOLATION LEVEL READ COMMITTED",
        "REPEATABLE READ": "BEGIN ISOLATION LEVEL REPEATABLE READ",
        "SERIALIZABLE": "BEGIN ISOLATION LEVEL SERIALIZABLE",
    }
    default_begin = "BEGIN"
    read_snapshot_begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    max_params = 5000
    reserved_prefix = "pg_"
    type_names: ClassVar[dict[str, str]] = {
        "bytea": "BYTEA",
        "bigint": "BIGINT",
        "text": "TEXT",
        "json": "JSON",
    }
    supports_likelihood = False
    supports_any_array = True
    watches_app_write_locks = False  # row locks: a write waits only on the same rows
    # an index-only count, and no counter row to serialise a namespace's writers
    counts_entries = False
    writes_in_ctes = True
    scans_keys_by_exclusion = False  # its key scan already runs at the raw driver's speed
    position_sql = "strpos({s}, {sub})"
    # (the B-tree scan starts at the greater of the two lower bounds, known at its start)
    past_plain_key = "key >= (CASE WHEN {found} THEN {skip} ELSE {k} END) AND key > {k}"
    trigger_catalog = (
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(:table) AND NOT tgisinternal"
    )

    def begin_locks_database(self, begin_sql: str) -> bool:
        return False  # row locks only

    def executemany(
        self, dbapi_conn: Any, sql: str, rows: list[Any], common: _Common = None
    ) -> None:
        if common is not None:
            plan = _pg_copy_plan(sql, frozenset(common)) if len(rows) >= _COPY_MIN_ROWS else None
            if plan is not None:
                plan.run(dbapi_conn, rows, common)
                return
            rows = [{**common, **row} for row in rows]
        super().executemany(dbapi_conn, sql, rows)

    def prepare_connection(self, dbapi_conn: Any, options: dict[str, Any]) -> None:
        pass

    def lock_wait(self, dbapi_conn: Any) -> float:
        return 0.0  # lock_timeout is off by default; lock errors come back at once

    def set_autocommit(self, dbapi_conn: Any, on: bool) -> Any:
        old = dbapi_conn.autocommit
        dbapi_conn.autocommit = on
        return old

    def restore_autocommit(self, dbapi_conn: Any, old: Any) -> None:
        dbapi_conn.autocommit = old

    def execute_bytes(self, dbapi_conn: Any, sql: str, params: Any) -> Any:
        # psycopg returns results in text format by default, and bytea's text format is hex:
        # twice the bytes on the wire plus a decode. Binary results move chunks as they are.
        return dbapi_conn.execute(sql, params, binary=True)

    def commit_was_rollback(self, cursor: Any) -> bool:
        return getattr(cursor, "statusmessage", None) == "ROLLBACK"

    def is_closed(self, dbapi_conn: Any) -> bool:
        return bool(dbapi_conn.closed or dbapi_conn.broken)

    def in_driver_transaction(self, dbapi_conn: Any) -> bool:
        return True  # psycopg begins implicitly before any statement, SAVEPOINT included

    def _sqlstate(self, exc: BaseException) -> str | None:
        orig = _orig(exc)
        # psycopg 3 calls it sqlstate, psycopg2 pgcode
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return state if isinstance(state, str) else None

    def is_unique_violation(self, exc: BaseException) -> bool:
        return self._sqlstate(exc) == "23505"

    def is_retryable(self, exc: BaseException) -> bool:
        return self._sqlstate(exc) in ("40001", "40P01", "55P03")

    def is_bad_integer(self, exc: BaseException) -> bool:
        return self._sqlstate(exc) in ("22P02", "22003")

    def is_disk_full(self, exc: BaseException) -> bool:
        return self._sqlstate(exc) in ("53100", "53200")  # disk_full, out_of_memory

    def is_unavailable(self, exc: BaseException) -> bool:
        state = self._sqlstate(exc)
        if state is not None:
            # connection_exception, and the server shutting down (admin/crash shutdown)
            return state.startswith("08") or state in ("57P01", "57P02", "57P03")
        name = type(_orig(exc)).__name__
        return name == "OperationalError" and "connection" in str(_orig(exc)).lower()

    def is_lock_timeout(self, exc: BaseException) -> bool:
        return self._sqlstate(exc) == "55P03"  # lock_not_available (lock_timeout)

    def lock_message(self, detail: str) -> str:
        return f"gave up waiting for a row or table lock held by another transaction ({detail})"


class Psycopg2Dialect(PostgresDialect):
    """PostgreSQL through psycopg2: cursors execute (connections cannot), no binary results,
    and a connection says it is dead through ``closed`` alone."""

    binds_common = False  # (no COPY path: the rows are merged and sent as they are)

    driver = "psycopg2"

    def executor(self, dbapi_conn: Any) -> Callable[..., Any]:
        cursor = dbapi_conn.cursor

        def execute(sql: str, params: Any = None) -> Any:
            cur = cursor()
            cur.execute(sql, params)
            return cur

        return execute

    def executemany(
        self, dbapi_conn: Any, sql: str, rows: list[Any], common: _Common = None
    ) -> None:
        # psycopg2's executemany is a round trip per row; execute_batch sends pages of them
        import psycopg2.extras  # type: ignore[import-untyped, unused-ignore]

        cur = dbapi_conn.cursor()
        try:
            psycopg2.extras.execute_batch(cur, sql, rows, page_size=200)
        finally:
            cur.close()

    def execute_bytes(self, dbapi_conn: Any, sql: str, params: Any) -> Any:
        # psycopg2 hands bytea back as memoryview whatever the wire format
        return self.executor(dbapi_conn)(sql, params)

    def is_closed(self, dbapi_conn: Any) -> bool:
        return bool(dbapi_conn.closed)

    def in_driver_transaction(self, dbapi_conn: Any) -> bool:
        # psycopg2 (not in autocommit) begins implicitly before any statement, like psycopg 3
        return True


class AiosqliteDialect(Dialect):
    """SQLite through aiosqlite, via SQLAlchemy's sync adapter (``AsyncAdapt_aiosqlite_
    connection``), which runs each call on aiosqlite's thread and waits for it in a greenlet
    (see kvstore.aio): the adapter executes and switches ``isolation_level`` as sqlite3 does."""

    driver = "aiosqlite"
    is_async = True
    watches_app_write_locks = False

    def dbapi_of(self, fairy: Any) -> Any:
        return fairy.dbapi_connection

    def executor(self, dbapi_conn: Any) -> Callable[..., Any]:
        # One trip to aiosqlite's thread per statement: execute, fetch every row and close
        # the cursor there, in one function. The adapter's cursor makes a trip for each
        # (create, execute, fetchall, close: four for a get, three for a put), and every trip
        # is a wake-up of that thread and then of the event loop. (aiosqlite's _execute is
        # how its own methods queue work for the thread; SQLAlchemy's adapter uses the same
        # queue to set isolation_level.)
        raw = dbapi_conn.driver_connection
        submit = getattr(raw, "_execute", None)
        if submit is None:  # an aiosqlite without it: the adapter's cursor
            return dbapi_conn.execute  # type: ignore[no-any-return]

        def run(sql: str, params: Any = None) -> Any:
            try:
                return await_only(submit(_sqlite_buffered, raw, sql, params))
            except Exception as exc:
                # the adapter's translation (aiosqlite's "no active connection" ValueError
                # becomes sqlite3's OperationalError); sqlite3's errors pass as they are
                dbapi_conn._handle_exception(exc)
                raise

        return run

    def executemany(
        self, dbapi_conn: Any, sql: str, rows: list[Any], common: _Common = None
    ) -> None:
        raw = dbapi_conn.driver_connection
        submit = getattr(raw, "_execute", None)
        if submit is None:
            super().executemany(dbapi_conn, sql, rows, common)
            return
        try:
            await_only(submit(_sqlite_executemany, raw, list(_sqlite_many(sql, rows, common))))
        except Exception as exc:
            dbapi_conn._handle_exception(exc)
            raise

    def execute_bytes(self, dbapi_conn: Any, sql: str, params: Any) -> Any:
        return self.executor(dbapi_conn)(sql, params)

    def in_driver_transaction(self, dbapi_conn: Any) -> bool:
        # the adapter does not expose it; aiosqlite's connection does
        return bool(dbapi_conn.driver_connection.in_transaction)

    def is_closed(self, dbapi_conn: Any) -> bool:
        # aiosqlite forgets its sqlite3 connection once closed (SQLAlchemy checks the same)
        return getattr(dbapi_conn.driver_connection, "_connection", None) is None


class AsyncpgDialect(PostgresDialect):
    """PostgreSQL through asyncpg, via SQLAlchemy's sync adapter: cursors execute (with
    asyncpg's prepared statements), ``autocommit`` is the adapter's, errors are SQLAlchemy's
    emulated DBAPI errors carrying the SQLSTATE."""

    binds_common = False  # (no COPY path: the rows are merged and sent as they are)

    driver = "asyncpg"
    is_async = True

    def dbapi_of(self, fairy: Any) -> Any:
        return fairy.dbapi_connection

    def executor(self, dbapi_conn: Any) -> Callable[..., Any]:
        execute = dbapi_conn.execute
        raw = dbapi_conn.driver_connection
        # kvstore's statements, prepared once per connection and executed on asyncpg itself:
        # the adapter's cursor (a mutex, a fresh cursor object, its own prepare-cache lookup
        # and row buffering per call) cost as much as the round trip on a primary-key get.
        prepared: dict[str, Any] = {}

        def run(sql: str, params: Any = None) -> Any:
            if params is None:
                if sql == "COMMIT":
                    # The adapter's cursor keeps no status message, and PostgreSQL answers
                    # COMMIT of an aborted transaction with a silent ROLLBACK: asyncpg's own
                    # execute() returns the status (see Conn._check_commit).
                    return _StatusCursor(await_only(raw.execute(sql)))
                return execute(sql, params)  # BEGIN, ROLLBACK, SAVEPOINT ...: no parameters
            try:
                stmt = prepared.get(sql)
                if stmt is None:
                    stmt = prepared[sql] = await_only(raw.prepare(sql))
                rows = await_only(stmt.fetch(*params))
            except Exception as exc:
                prepared.pop(sql, None)  # a statement the server dropped is prepared again
                # the adapter's translation: SQLAlchemy's emulated DBAPI error with the SQLSTATE
                dbapi_conn._handle_exception(exc)
                raise
            return _RecordCursor(rows, stmt)

        return run

    def execute_bytes(self, dbapi_conn: Any, sql: str, params: Any) -> Any:
        return dbapi_conn.execute(sql, params)  # asyncpg moves bytea in binary already

    def is_closed(self, dbapi_conn: Any) -> bool:
        return bool(dbapi_conn.driver_connection.is_closed())

    def is_driver_error(self, exc: BaseException) -> bool:
        # SQLAlchemy's emulated DBAPI errors; asyncpg's connect lets OSError through
        # (connection refused, unknown host, a dropped socket)
        return isinstance(exc, sa_exc.EmulatedDBAPIException | OSError) or super().is_driver_error(
            exc
        )

    def is_unavailable(self, exc: BaseException) -> bool:
        return isinstance(_orig(exc), OSError) or super().is_unavailable(exc)


def _sqlite_buffered(raw: Any, sql: str, params: Any) -> _BufferedCursor:
    """On aiosqlite's thread: one statement on its sqlite3 connection, its rows fetched and
    its cursor closed."""
    conn = raw._conn  # ValueError("no active connection") once closed, as aiosqlite says
    cur = conn.execute(sql) if params is None else conn.execute(sql, params)
    try:
        return _BufferedCursor.of(cur)
    finally:
        cur.close()


def _sqlite_executemany(raw: Any, batches: list[tuple[str, list[Any], bool]]) -> None:
    """On aiosqlite's thread: :func:`_sqlite_many`'s statements on its sqlite3 connection."""
    cur = raw._conn.cursor()
    try:
        for text, args, many in batches:
            if many:
                cur.executemany(text, args)
            else:
                cur.execute(text, args)
    finally:
        cur.close()


#: "INSERT INTO t (columns) VALUES (...) [ON CONFLICT ...]" or "... SELECT ... WHERE guard
#: [ON CONFLICT ...]" in "?" form, with no ORDER BY or LIMIT
_SQLITE_INSERT = re.compile(
    r"(?s)\A(INSERT INTO \S+ \([^()]*\))\s+(?:VALUES \((.*?)\)|SELECT (.*?) WHERE (.*?))"
    r"(\s+ON CONFLICT\b.*)?\Z"
)


#: how many "?" one SQLite statement may hold (SQLITE_MAX_VARIABLE_NUMBER: 32,766 since
#: 3.32, 999 before)
def _row_batches(
    rows: Iterable[Sequence[Any]], max_rows: int, max_bytes: int
) -> Iterator[tuple[int, list[Any]]]:
    """The rows' values flattened, a multi-row statement's worth at a time: ``(rows,
    values)`` of at most ``max_rows`` rows, or of strings and bytes just past ``max_bytes``
    (MySQL: well under max_allowed_packet, 16 MiB by default, with escaping's growth;
    SQLite copies every bound value: 500 values of 256 KiB would be 128 MiB at once)."""
    count, size = 0, 0
    args: list[Any] = []
    for values in rows:
        args += values
        for v in values:
            if type(v) is bytes or type(v) is str:
                size += len(v)
        count += 1
        if count == max_rows or size >= max_bytes:
            yield count, args
            count, size, args = 0, 0, []
    if count:
        yield count, args


@dataclass(frozen=True, slots=True)
class _HoistPlan:
    """An INSERT of many rows whose shared parameters are bound once per statement:
    ``{head} SELECT {outer} FROM (VALUES {row}, {row}, ...) WHERE {guard}{tail}``, the
    outer SELECT naming each row's columns column1, column2, ... as SQLite does."""

    head: str
    outer_names: tuple[str, ...]
    row: str
    row_names: tuple[str, ...]
    guard_names: tuple[str, ...]
    tail: str

    def statements(
        self, rows: list[Any], common: Mapping[str, Any]
    ) -> Iterator[tuple[str, list[Any], bool]]:
        first = [common[n] for n in self.outer_names]
        last = [common[n] for n in self.guard_names]
        names = self.row_names
        take = operator.itemgetter(*names)
        width = len(names)
        per = max(1, min(_SQLITE_BATCH_ROWS, (_SQLITE_MAX_VARS - len(first) - len(last)) // width))
        own = ((take(row),) for row in rows) if width == 1 else map(take, rows)
        for count, args in _row_batches(own, per, _SQLITE_BATCH_BYTES):
            body = ", ".join([self.row] * count)
            yield f"{self.head}{body}{self.tail}", first + args + last, False


def _split_top(exprs: str) -> list[str]:
    """A SELECT list's expressions, split at the commas outside parentheses."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(exprs):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(exprs[start:i].strip())
            start = i + 1
    out.append(exprs[start:].strip())
    return out


@functools.lru_cache(maxsize=64)
def _sqlite_hoist_plan(sql: str, common: frozenset[str]) -> _HoistPlan | None:
    """How to run ``sql`` (``:name`` form) for many rows with the parameters named in
    ``common`` bound once per statement; None when it is not a one-row INSERT whose
    expressions each take only shared or only per-row parameters.

    put_many's upsert binds eight shared parameters and four of a row's own: binding all
    twelve for each row was a third of the statement's time (3.2 against 2.2 µs a row)."""
    m = _SQLITE_INSERT.match(sql)
    if m is None or "'" in sql:
        return None
    head, values, exprs, guard, tail = m.groups()
    tail = tail or ""
    if _NAMED.search(tail) or (exprs is not None and _NOT_ONE_ROW.search(exprs)):
        return None
    if guard is not None and _NOT_ONE_GUARD.search(guard):
        return None
    guard = guard or "1 = 1"  # (an upsert's INSERT ... SELECT needs a WHERE before its ON)
    if any(n not in common for n in _NAMED.findall(guard)):
        return None
    outer: list[str] = []
    per_row: list[str] = []
    for e in _split_top(values or exprs):
        names = _NAMED.findall(e)
        if all(n in common for n in names):
            outer.append(e)
        elif any(n in common for n in names):
            return None
        else:
            per_row.append(e)
            outer.append(f"column{len(per_row)}")
    if not per_row:
        return None
    outer_sql, outer_names = _positional(", ".join(outer))
    row_sql, row_names = _positional("(" + ", ".join(per_row) + ")")
    guard_sql, guard_names = _positional(guard)
    return _HoistPlan(
        f"{head} SELECT {outer_sql} FROM (VALUES ",
        outer_names,
        row_sql,
        row_names,
        guard_names,
        f") WHERE {guard_sql}{tail}",
    )


#: fewer rows than this go by executemany (a COPY's temporary table costs ~1 ms)
_COPY_MIN_ROWS = 200


@dataclass(frozen=True, slots=True)
class _PgCopyPlan:
    """An ``INSERT ... SELECT`` of many rows as a COPY of their own columns into a temporary
    table shaped like the target's, then one ``INSERT ... SELECT`` from it with the shared
    parameters bound once.

    psycopg 3's pipelined executemany of put_many's guarded upsert cost 13 µs a row; this,
    6 to 9 µs, below the raw driver's executemany of a narrower row (8.4). The rows must not
    repeat a conflict target (PostgreSQL refuses to update a row twice in one statement):
    only put_many passes shared parameters, and its keys are distinct."""

    create: str
    copy: str
    row_names: tuple[str, ...]
    insert: str
    drop: str

    def run(self, dbapi_conn: Any, rows: list[Any], common: Mapping[str, Any]) -> None:
        take = operator.itemgetter(*self.row_names)
        one = len(self.row_names) == 1
        with dbapi_conn.cursor() as cur:
            cur.execute(self.create)
            with cur.copy(self.copy) as copy:
                for row in rows:
                    copy.write_row((take(row),) if one else take(row))
            cur.execute(self.insert, common)
            cur.execute(self.drop)


@functools.lru_cache(maxsize=64)
def _pg_copy_plan(sql: str, common: frozenset[str]) -> _PgCopyPlan | None:
    """How to run ``sql`` (``%(name)s`` form) for many rows by COPY; None unless it is
    ``INSERT INTO t (columns) SELECT exprs WHERE guard [ON CONFLICT ...]`` whose exprs are
    each shared or one row parameter (cast or not), and whose guard takes shared ones."""
    m = _PG_INSERT_SELECT.match(sql)
    if m is None or "'" in sql:
        return None
    table, columns, exprs, guard, tail = m.groups()
    tail = tail or ""
    if _PYFORMAT.search(tail) or _NOT_ONE_ROW.search(exprs) or _NOT_ONE_GUARD.search(guard):
        return None
    cols = [c.strip() for c in columns.split(",")]
    parts = _split_top(exprs)
    if len(cols) != len(parts) or any(n not in common for n in _PYFORMAT.findall(guard)):
        return None
    outer: list[str] = []
    own: list[str] = []
    names: list[str] = []
    for col, e in zip(cols, parts, strict=True):
        found = _PYFORMAT.findall(e)
        if all(n in common for n in found):
            outer.append(e)
            continue
        one = _PG_ROW_PARAM.match(e)
        if one is None:
            return None
        outer.append(f"kv_rows.{col}")
        own.append(col)
        names.append(one.group(1))
    if not own:
        return None
    temp = f"kv_rows_{abs(hash((table, tuple(own)))) % 10**12}"
    listed = ", ".join(own)
    return _PgCopyPlan(
        f"CREATE TEMPORARY TABLE {temp} ON COMMIT DROP AS "
        f"SELECT {listed} FROM {table} WITH NO DATA",
        f"COPY {temp} ({listed}) FROM STDIN",
        tuple(names),
        f"INSERT INTO {table} ({columns}) SELECT {', '.join(outer)} FROM {temp} AS kv_rows "
        f"WHERE {guard}{tail}",
        f"DROP TABLE {temp}",
    )


_PG_INSERT_SELECT = re.compile(
    r"(?s)\AINSERT INTO (\S+) \(([^()]*)\)\s+SELECT (.*?) WHERE (.*?)(\s+ON CONFLICT\b.*)?\Z"
)
#: one row's own parameter, as it is or cast
_PG_ROW_PARAM = re.compile(r"\A(?:CAST\()?%\(([A-Za-z_]\w*)\)s(?: AS \w+\))?\Z")


#: what makes "SELECT exprs WHERE guard" other than one row of values, or a condition on it
_NOT_ONE_ROW = re.compile(r"\b(FROM|UNION|WHERE)\b")
_NOT_ONE_GUARD = re.compile(r"\b(ORDER BY|LIMIT|GROUP BY|HAVING|UNION)\b")
_SQLITE_MAX_VARS = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
_SQLITE_BATCH_ROWS = 500
_SQLITE_BATCH_BYTES = 4 << 20


def _sqlite_many(
    sql: str, rows: list[Any], common: _Common = None
) -> Iterator[tuple[str, list[Any], bool]]:
    """``executemany(sql, rows)`` on SQLite as statements to run: ``(text, args, False)`` to
    execute, ``(text, rows, True)`` to executemany (rows in "?" form either way).

    An INSERT of one row per execution becomes one INSERT of up to 500 rows (``VALUES (...),
    (...)``; ``SELECT * FROM (VALUES ...) WHERE guard`` where every row's guard has the same
    parameters, as a put_many's do): a statement per row, with its AFTER INSERT trigger, was
    5.5 µs a row of put_many's 8 (2.4 µs a row as one statement of 500). SQLite runs such a
    statement row by row, so it means what the rows one by one do, a key given twice
    included. Rows given by name are bound by position: sqlite3 looks each :name up in each
    row's dict, half a twelve-column upsert's cost (8.6 against 4.1 µs a row)."""
    if common:
        plan = _sqlite_hoist_plan(sql, frozenset(common))
        if plan is not None:
            yield from plan.statements(rows, common)
            return
        rows = [{**common, **row} for row in rows]
    if rows and type(rows[0]) is dict:
        sql, names = _positional(sql)
        take = operator.itemgetter(*names)
        rows = [take(row) for row in rows] if len(names) > 1 else [(take(r),) for r in rows]
    m = _SQLITE_INSERT.match(sql) if len(rows) > 1 else None
    if m is None or "'" in sql:
        yield sql, rows, True
        return
    head, values, exprs, guard, tail = m.groups()
    tail = tail or ""
    width = (values or exprs).count("?")
    n_guard = 0 if guard is None else guard.count("?")
    if (
        width + n_guard != len(rows[0])  # a "?" in the ON CONFLICT clause
        or (exprs is not None and _NOT_ONE_ROW.search(exprs))
        or (guard is not None and _NOT_ONE_GUARD.search(guard))
    ):
        yield sql, rows, True
        return
    if values is None:
        guard_args = rows[0][width:]
        if any(row[width:] != guard_args for row in rows):
            yield sql, rows, True
            return
        values, guard_sql = exprs, f" WHERE {guard}"
    else:
        guard_args, guard_sql = (), ""
    per = max(1, min(_SQLITE_BATCH_ROWS, (_SQLITE_MAX_VARS - n_guard) // max(width, 1)))
    row_sql = f"({values})"
    for count, args in _row_batches((row[:width] for row in rows), per, _SQLITE_BATCH_BYTES):
        args += guard_args
        body = ", ".join([row_sql] * count)
        if guard_sql:
            yield f"{head} SELECT * FROM (VALUES {body}){guard_sql}{tail}", args, False
        else:
            yield f"{head} VALUES {body}{tail}", args, False


class _Rows:
    """A statement's rows, all on the client already, read as a DBAPI cursor reads them."""

    __slots__ = ("_i", "_rows")

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows
        self._i = 0

    def fetchone(self) -> Any:
        if self._i < len(self._rows):
            self._i += 1
            return self._rows[self._i - 1]
        return None

    def fetchmany(self, size: int = 1) -> list[Any]:
        out = self._rows[self._i : self._i + size]
        self._i += len(out)
        return out

    def fetchall(self) -> list[Any]:
        out = self._rows[self._i :]
        self._i = len(self._rows)
        return out

    def __iter__(self) -> Any:
        return iter(self.fetchall())

    def close(self) -> None:
        pass


class _BufferedCursor(_Rows):
    """A finished statement's outcome (aiosqlite's, read on its thread; Connector/Python's,
    whose cursor is closed at once): its rows, ``rowcount``, ``description``, ``lastrowid``."""

    __slots__ = ("description", "lastrowid", "rowcount")

    def __init__(
        self, rows: list[Any], rowcount: int, description: Any, lastrowid: int | None
    ) -> None:
        super().__init__(rows)
        self.rowcount = rowcount
        self.description = description
        self.lastrowid = lastrowid

    @classmethod
    def of(cls, cur: Any) -> _BufferedCursor:
        """Everything a DBAPI cursor has to give, taken from it (it may be closed after)."""
        description = cur.description
        rows = cur.fetchall() if description is not None else []
        return cls(rows, cur.rowcount, description, cur.lastrowid)


class _RecordCursor(_Rows):
    """The result of one asyncpg prepared statement, read as a DBAPI cursor (as SQLAlchemy's
    adapter presents it: the records, ``rowcount`` from the status message, ``description``)."""

    __slots__ = ("_stmt",)

    def __init__(self, rows: list[Any], stmt: Any) -> None:
        super().__init__(rows)
        # read only when asked (most callers want just the rows), before the connection runs
        # its next statement: the prepared statement is reused, its status is the last run's
        self._stmt = stmt

    @property
    def rowcount(self) -> int:
        match = _ROWCOUNT.match(self._stmt.get_statusmsg() or "")
        return int(match.group(1)) if match else -1

    @property
    def description(self) -> list[tuple[Any, ...]] | None:
        attributes = self._stmt.get_attributes()
        if not attributes:
            return None
        return [(a.name, a.type.oid, None, None, None, None, None) for a in attributes]


_ROWCOUNT = re.compile(r"(?:SELECT|UPDATE|DELETE|INSERT \d+|MERGE) (\d+)")


class _StatusCursor:
    """The result of a statement that returns no rows, with the server's status message."""

    rowcount = -1

    def __init__(self, statusmessage: str) -> None:
        self.statusmessage = statusmessage

    def fetchone(self) -> Any:
        return None

    def fetchall(self) -> list[Any]:
        return []

    def fetchmany(self, size: int = 1) -> list[Any]:
        return []

    def close(self) -> None:
        pass


class PsycopgAsyncDialect(PostgresDialect):
    """PostgreSQL through psycopg 3's AsyncConnection, via SQLAlchemy's sync adapter."""

    binds_common = False  # (no COPY path: the rows are merged and sent as they are)

    driver = "psycopg_async"
    is_async = True

    def dbapi_of(self, fairy: Any) -> Any:
        return fairy.dbapi_connection

    def executor(self, dbapi_conn: Any) -> Callable[..., Any]:
        return dbapi_conn.execute  # type: ignore[no-any-return]

    def execute_bytes(self, dbapi_conn: Any, sql: str, params: Any) -> Any:
        return dbapi_conn.execute(sql, params)  # the adapter's cursors take no binary=

    def commit_was_rollback(self, cursor: Any) -> bool:
        # the adapter's cursor wraps psycopg's AsyncCursor, which has the status message
        inner = getattr(cursor, "_cursor", cursor)
        return getattr(inner, "statusmessage", None) == "ROLLBACK"


# -- MySQL and MariaDB ------------------------------------------------------------------------
# ``key`` is a reserved word there; kvstore's statements name the column bare, so it is quoted
# on the way out (a lower-case identifier only: SQL keywords are written in capitals, and
# ``:key`` parameters are left alone).
_MYSQL_KEY = re.compile(r"(?<![\w:`])key(?![\w`])")
# ``INSERT ... ON CONFLICT (cols) DO UPDATE SET a = excluded.a`` is MySQL's ``ON DUPLICATE KEY
# UPDATE a = VALUES(a)``. MySQL applies the assignments left to right, each seeing the ones
# before: kvstore's upserts assign ``expires_at`` after ``created_at``, which reads the old one.
_MYSQL_ON_CONFLICT = re.compile(r"ON CONFLICT \(([^)]*)\) DO UPDATE SET")
_MYSQL_DO_NOTHING = re.compile(r"ON CONFLICT \((\w+)[^)]*\) DO NOTHING")
_MYSQL_EXCLUDED = re.compile(r"\bexcluded\.(\w+)")
# what the statements' CASTs say for each type: MySQL's CAST knows none of the column types
_MYSQL_CASTS = {"bytea": "BINARY", "bigint": "SIGNED", "text": "CHAR", "json": "CHAR"}
# the server's (and the client library's) error numbers: the first of a PyMySQL or asyncmy
# error's args, a Connector/Python error's ``errno``
_ER_DUP_ENTRY = 1062
_ER_LOCK_WAIT_TIMEOUT = 1205
_ER_LOCK_DEADLOCK = 1213
_ER_OUT_OF_RANGE = (1264, 1366, 1292)
_ER_DISK_FULL = (1021, 1114, 3)
# can't connect, server gone away, lost connection, shutting down, too many connections
_ER_UNAVAILABLE = (2002, 2003, 2005, 2006, 2013, 2055, 1053, 1040, 1927, 4031)


def _mysql_errno(exc: BaseException) -> int | None:
    orig = _orig(exc)
    # Connector/Python keeps only the message in args; its errno is 0 when the client library
    # raised without a server error (an argument it cannot convert, a closed cursor)
    errno = getattr(orig, "errno", None)
    if isinstance(errno, int) and errno:
        return errno
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _mysql_if_expired(assignments: list[tuple[str, str]]) -> str:
    """An ``ON DUPLICATE KEY UPDATE`` that replaces the row only while it has expired: every
    assignment wrapped in ``IF(expired, new, old)``, with ``expires_at`` assigned last so the
    condition still reads the old one."""
    cond = "{e}.expires_at IS NOT NULL AND {e}.expires_at <= VALUES(updated_at)"
    parts = []
    for col, new in assignments:
        parts.append(f"{col} = IF({cond}, {new}, {{e}}.{col})")
    return "ON DUPLICATE KEY UPDATE " + ", ".join(parts)


_MYSQL_REPLACE_IF_EXPIRED = _mysql_if_expired(
    [
        ("value", "VALUES(value)"),
        ("blob_id", "VALUES(blob_id)"),
        ("size", "VALUES(size)"),
        ("version", "{e}.version + 1"),
        ("created_at", "VALUES(created_at)"),
        ("updated_at", "VALUES(updated_at)"),
        ("content_type", "VALUES(content_type)"),
        ("metadata", "VALUES(metadata)"),
        ("checksum", "VALUES(checksum)"),
        ("expires_at", "VALUES(expires_at)"),
    ]
)
_MYSQL_LIVE = "(expires_at IS NULL OR expires_at > :now)"


class MySQLDialect(Dialect):
    """MySQL 8 and MariaDB >= 10.6 through PyMySQL (see docs/mariadb.md).

    The differences from PostgreSQL: no ``ON CONFLICT`` (``ON DUPLICATE KEY UPDATE``, whose
    row count is 2 for an update), no ``UPDATE ... RETURNING``, ``key`` reserved, a
    statement cannot read the table it deletes from (error 1093) nor ``LIMIT`` an ``IN``
    subquery, DDL commits the transaction it runs in, and strings compare by their column's
    collation (kvstore's are ``utf8mb4_nopad_bin``: code points, case and trailing spaces
    significant)."""

    name = "mysql"
    # PyMySQL: put_many's shared parameters go once per statement (see _MySQLHoistPlan)
    binds_common = True
    driver = "pymysql"
    for_update = " FOR UPDATE"
    isolation_levels: ClassVar[dict[str, str]] = {
        "READ COMMITTED": "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION",
        "REPEATABLE READ": "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; START TRANSACTION",
        "SERIALIZABLE": "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION",
    }
    default_begin = "START TRANSACTION"
    read_snapshot_begin = (
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; "
        "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
    )
    max_params = 5000
    reserved_prefix = "mysql_"
    type_names: ClassVar[dict[str, str]] = dict(_MYSQL_CASTS)
    driver_begin = "START TRANSACTION"
    supports_likelihood = False
    trigger_catalog = (
        "SELECT trigger_name FROM information_schema.triggers "
        "WHERE event_object_schema = DATABASE() AND event_object_table = :table"
    )
    transactional_ddl = False
    upsert_rowcount_exact = False
    supports_update_returning = False
    intdiv = "DIV"
    # len() counts the primary key's index (no counter triggers here yet); scans test each
    # row's expiry (InnoDB's clustered primary key holds it: no second lookup to save)
    counts_entries = False
    scans_keys_by_exclusion = False
    walks_prefixes_in_sql = False  # (|| is OR)
    watches_app_write_locks = False  # row locks, as on PostgreSQL
    # An index build reads the entries with shared locks: a locking read sees the newest
    # committed rows, not the snapshot its transaction took at its first read (before it
    # bumped the generation, which writers' guards then wait for), and holds them against
    # writers until the build commits; PostgreSQL's SHARE table lock does both there.
    for_share = " LOCK IN SHARE MODE"
    # 500 characters of utf8mb4 (4 bytes each, as InnoDB counts them) keep the primary keys of
    # the entries (namespace, key) and index entries (index_id, ivalue, key) within its
    # 3072-byte limit
    max_collection_key_chars = 500
    statement_overrides: ClassVar[dict[tuple[str, str], str]] = {
        # "insert unless live": its row count cannot say whether it wrote (see Dialect)
        ("entries", "insert_absent"): "INSERT INTO {e} ("
        "namespace, `key`, value, blob_id, size, version, created_at, updated_at, expires_at, "
        "content_type, metadata, checksum) SELECT CAST(:ns AS CHAR), CAST(:key AS CHAR), "
        "CAST(:value AS BINARY), CAST(:blob_id AS SIGNED), :size, 1, :now, :now, "
        "CAST(:exp AS SIGNED), CAST(:ct AS CHAR), CAST(:meta AS CHAR), :sum "
        + _MYSQL_REPLACE_IF_EXPIRED,
        # error 1093 and no LIMIT in an IN subquery: a DELETE may ORDER BY and LIMIT itself
        # MariaDB reads an IN subquery of a single-table UPDATE/DELETE once per row of the
        # whole table (no semi-join there before 11.1): the key's index entries are reached
        # by a join instead, through the namespace's few indexes and (index_id, key)
        ("entries", "index_entries_delete"): "DELETE ie FROM {ie} ie JOIN {ix} ix "
        "ON ix.namespace = ie.namespace AND ix.id = ie.index_id "
        "WHERE ix.namespace = :ns AND ie.namespace = :ns AND ie.`key` = :key",
        ("entries", "index_entries_rename"): "UPDATE {ie} ie JOIN {ix} ix "
        "ON ix.namespace = ie.namespace AND ix.id = ie.index_id "
        "SET ie.`key` = :dest WHERE ix.namespace = :ns AND ie.namespace = :ns AND ie.`key` = :key",
        ("entries", "purge_batch"): "DELETE FROM {e} WHERE namespace = :ns AND expires_at <= :now "
        "ORDER BY `key` LIMIT :limit",
        # error 1093: the subquery on the same table is read as a derived table, first
        ("entries", "pop_last_inline"): "DELETE FROM {e} WHERE namespace = :ns AND blob_id IS NULL "
        "AND `key` = (SELECT k FROM (SELECT `key` AS k FROM {e} WHERE namespace = :ns AND "
        + _MYSQL_LIVE
        + " ORDER BY `key` DESC LIMIT 1) AS last_key) RETURNING `key`, value",
        ("entries", "pop_first"): "DELETE FROM {e} WHERE namespace = :ns AND `key` = ("
        "SELECT k FROM (SELECT `key` AS k FROM {e} WHERE namespace = :ns AND "
        + _MYSQL_LIVE
        + " ORDER BY `key` LIMIT 1) AS first_key) RETURNING `key`, value",
    }

    def force_index(self, name: str) -> str:
        # Right after a bulk load InnoDB's statistics are stale, and the dedupe subquery of a
        # multi-valued index query (one key's entries) was run on the primary key, which reads
        # every entry of the index per row: 40,000 matches took minutes instead of a second.
        return f" FORCE INDEX ({name})"

    @contextlib.contextmanager
    def schema_lock(self, conn: Any, name: str) -> Iterator[None]:
        # DDL commits as it goes here: without a lock a second process sees half-created
        # tables, takes them for an old schema and "upgrades" them under the first one.
        # GET_LOCK is the server's named lock: held by this session until released.
        # sa.text: compiled for the driver's parameter style (PyMySQL's %s, Connector/Python's ?)
        lock = {"name": name[:64]}
        got = conn.execute(sa.text("SELECT GET_LOCK(:name, 60)"), lock).scalar()
        if got != 1:
            raise TransactionError(f"timed out waiting for the schema lock {name!r}")
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), lock)

    def adapt_sql(self, text: str) -> str:
        text = _MYSQL_ON_CONFLICT.sub("ON DUPLICATE KEY UPDATE", text)
        text = _MYSQL_DO_NOTHING.sub(r"ON DUPLICATE KEY UPDATE \1 = \1", text)
        text = _MYSQL_EXCLUDED.sub(r"VALUES(\1)", text)
        return _MYSQL_KEY.sub("`key`", text)

    def begin_locks_database(self, begin_sql: str) -> bool:
        return False  # row locks only

    def prepare_connection(self, dbapi_conn: Any, options: dict[str, Any]) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("SELECT VERSION()")
            version = str(cur.fetchone()[0])
            if "mariadb" not in version.lower():
                # MySQL has no DELETE ... RETURNING, which kvstore's pops rely on
                raise DatabaseError(
                    f"kvstore works with MariaDB >= 10.6; this server is MySQL {version}, "
                    "which has no DELETE ... RETURNING (see docs/mariadb.md)"
                )
            if not options.get("owned", True):
                return  # an application's engine keeps its session settings
            # No silent truncation or conversion: a value that does not fit is an error.
            cur.execute(
                "SET SESSION sql_mode = 'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,"
                "NO_ZERO_DATE,NO_ZERO_IN_DATE,NO_ENGINE_SUBSTITUTION'"
            )
            wait = max(1, round(options.get("busy_timeout", 30.0)))
            cur.execute(f"SET SESSION innodb_lock_wait_timeout = {wait}")
        finally:
            cur.close()

    def lock_wait(self, dbapi_conn: Any) -> float:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("SELECT @@innodb_lock_wait_timeout")
            return float(cur.fetchone()[0])
        finally:
            cur.close()

    def executor(self, dbapi_conn: Any) -> Callable[..., Any]:
        cursor = dbapi_conn.cursor

        def execute(sql: str, params: Any = None) -> Any:
            cur = cursor()
            if params is None and "; " in sql:
                # SET TRANSACTION ...; START TRANSACTION: one BEGIN string, two statements
                for part in sql.split("; "):
                    cur.execute(part)
                return cur
            cur.execute(sql, params)
            return cur

        return execute

    def execute_bytes(self, dbapi_conn: Any, sql: str, params: Any) -> Any:
        return self.executor(dbapi_conn)(sql, params)

    def executemany(
        self, dbapi_conn: Any, sql: str, rows: list[Any], common: _Common = None
    ) -> None:
        if common is not None:
            plan = _mysql_hoist_plan(sql, frozenset(common)) if len(rows) > 1 else None
            if plan is not None:
                plan.run(dbapi_conn, rows, common, tvc=self.name == "mariadb")
                return
            rows = [{**common, **row} for row in rows]
        if not self._insert_select_many(dbapi_conn, sql, rows):
            super().executemany(dbapi_conn, sql, rows)

    def _insert_select_many(self, dbapi_conn: Any, sql: str, rows: list[Any]) -> bool:
        """Run an ``INSERT ... SELECT`` for many rows as one ``UNION ALL`` of their SELECTs
        per batch; False (nothing run) for any other statement.

        PyMySQL folds only "INSERT ... VALUES" into multi-row statements, and Connector/
        Python's bulk protocol refuses INSERT ... SELECT: kvstore's guarded upserts went a
        round trip per row (87 µs a key for put_many). When every row's guard (the SELECT's
        WHERE) has the same parameters, as a put_many's do, the guard is tested once for the
        batch, over a derived table of the rows: it was half the statement's time per row.
        Otherwise each row keeps its own guard. Either way the statement means what the rows
        one by one do."""
        m = _INSERT_SELECT.match(sql)
        if m is None or len(rows) < 2:
            return False
        head, select, tail = m.group(1), m.group(2), m.group(3) or ""
        if type(rows[0]) is dict:  # PyMySQL: %(name)s
            names = _PYFORMAT.findall(select)
            select = _PYFORMAT.sub("%s", select)
            mark = "%s"
            flat = [[row[n] for n in names] for row in rows]
        else:  # rows in the statement's order: Connector/Python's ?, asyncmy's %s
            marks = [
                mk
                for mk in ("?", "%s")
                if type(rows[0]) is tuple
                and mk not in head + tail
                and select.count(mk) == len(rows[0])
            ]
            if not marks:
                return False
            mark = marks[0]
            flat = [list(row) for row in rows]
        parts = _one_guard(select, mark, flat)
        cur = dbapi_conn.cursor()
        try:

            def send(count: int, args: list[Any]) -> None:
                if parts is None:
                    text = " UNION ALL ".join([select] * count)
                    cur.execute(f"{head} {text}{tail}", args)
                    return
                first, other, guard, guard_args = parts
                if self.name == "mariadb" and mark == "%s" and count > 1:
                    # a table value constructor after the first (named) row: MariaDB parses
                    # and plans it as one query block where a UNION of 500 SELECTs is 500
                    # (11 against 17.5 µs a row of put_many's upsert). Not with "?" (Connector/
                    # Python's server-side prepared statement): there it wrote 10 of 12 rows
                    # in test_keys_are_sorted_in_code_point_order (why, not investigated).
                    row = f"({other[len('SELECT ') :]})"
                    text = f"{first} UNION ALL VALUES {', '.join([row] * (count - 1))}"
                else:
                    text = " UNION ALL ".join([first] + [other] * (count - 1))
                cur.execute(
                    f"{head} SELECT * FROM ({text}) AS kv_rows {guard}{tail}", args + guard_args
                )

            width = len(flat[0]) if parts is None else len(flat[0]) - len(parts[3])
            for count, args in _row_batches(
                (v[:width] for v in flat), _MYSQL_BATCH_ROWS, _MYSQL_BATCH_BYTES
            ):
                send(count, args)
        finally:
            cur.close()
        return True

    def set_autocommit(self, dbapi_conn: Any, on: bool) -> Any:
        old = dbapi_conn.get_autocommit()
        dbapi_conn.autocommit(on)
        return old

    def restore_autocommit(self, dbapi_conn: Any, old: Any) -> None:
        dbapi_conn.autocommit(old)

    def in_driver_transaction(self, dbapi_conn: Any) -> bool:
        # SERVER_STATUS_IN_TRANS, as the server reported it after the last statement
        return bool(dbapi_conn.server_status & 1)

    def driver_begin_on(self, conn: Any) -> None:
        # DDL commits implicitly here: there is no transaction to begin around it
        return

    def is_closed(self, dbapi_conn: Any) -> bool:
        return not dbapi_conn.open

    def is_unique_violation(self, exc: BaseException) -> bool:
        return _mysql_errno(exc) == _ER_DUP_ENTRY

    def is_retryable(self, exc: BaseException) -> bool:
        return _mysql_errno(exc) in (_ER_LOCK_DEADLOCK, _ER_LOCK_WAIT_TIMEOUT)

    def is_lock_timeout(self, exc: BaseException) -> bool:
        return _mysql_errno(exc) == _ER_LOCK_WAIT_TIMEOUT

    def aborts_transaction(self, exc: BaseException) -> bool:
        # InnoDB rolls back the deadlock's victim whole (a lock-wait timeout only the statement)
        return _mysql_errno(exc) == _ER_LOCK_DEADLOCK

    def is_bad_integer(self, exc: BaseException) -> bool:
        return _mysql_errno(exc) in _ER_OUT_OF_RANGE

    def is_disk_full(self, exc: BaseException) -> bool:
        return _mysql_errno(exc) in _ER_DISK_FULL

    def is_unavailable(self, exc: BaseException) -> bool:
        return _mysql_errno(exc) in _ER_UNAVAILABLE or isinstance(_orig(exc), ConnectionError)

    def lock_message(self, detail: str) -> str:
        return (
            f"gave up waiting for a row lock held by another transaction ({detail}); "
            "connect(busy_timeout=...) sets how long kvstore's connections wait "
            "(innodb_lock_wait_timeout)"
        )


#: "INSERT INTO t (columns) SELECT ... [ON DUPLICATE KEY UPDATE ...]" in PyMySQL's style, with
#: no ORDER BY or LIMIT that would bind to a UNION of its SELECTs
_INSERT_SELECT = re.compile(
    r"(?s)\A(INSERT INTO \S+ \([^()]*\))\s+(SELECT\b(?:(?!\bORDER BY\b|\bLIMIT\b).)*?)"
    r"(\s+ON DUPLICATE KEY UPDATE\b.*)?\Z"
)
_PYFORMAT = re.compile(r"%\(([A-Za-z_]\w*)\)s")


def _top_level_where(select: str) -> int:
    """Where a SELECT's own " WHERE " starts (not a subquery's), or -1."""
    depth = 0
    for i, ch in enumerate(select):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and select.startswith(" WHERE ", i):
            return i
    return -1


def _one_guard(
    select: str, mark: str, rows: list[list[Any]]
) -> tuple[str, str, str, list[Any]] | None:
    """For "SELECT a, b, ... WHERE guard" with the guard's parameters equal in every row: the
    first SELECT of a derived table (columns named, as a UNION takes its names from its
    first SELECT), the others, the guard, and the guard's parameters; None otherwise."""
    where = _top_level_where(select)
    if where < 0 or "'" in select:
        return None
    exprs, guard = select[len("SELECT ") : where], select[where + 1 :]
    n_guard = guard.count(mark)
    if n_guard == 0:
        return None
    guard_args = rows[0][-n_guard:]
    if any(row[-n_guard:] != guard_args for row in rows):
        return None
    columns = _split_top(exprs)
    first = "SELECT " + ", ".join(f"{c} AS c{n}" for n, c in enumerate(columns))
    return first, f"SELECT {exprs}", guard, list(guard_args)


_MYSQL_BATCH_ROWS = 500
_MYSQL_BATCH_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class _MySQLHoistPlan:
    """PyMySQL: an ``INSERT ... SELECT`` of many rows with the shared parameters bound once
    per statement, over a derived table of the rows' own columns (c0, c1, ...):
    ``{head} SELECT {outer} FROM ({first} UNION ALL VALUES (...), ...) AS kv_rows WHERE
    {guard}{tail}`` (MariaDB's table value constructor; MySQL's UNION ALL of SELECTs).

    PyMySQL escapes every parameter in Python: put_many's twelve a row were half its time
    (21.5 µs a key); the four of a row's own, 500 rows a statement, ~4 MiB at most."""

    head: str
    outer_names: tuple[str, ...]
    first: str
    row_exprs: str
    row_names: tuple[str, ...]
    tail: str
    guard_names: tuple[str, ...]

    def run(self, dbapi_conn: Any, rows: list[Any], common: Mapping[str, Any], tvc: bool) -> None:
        lead = [common[n] for n in self.outer_names]
        last = [common[n] for n in self.guard_names]
        take = operator.itemgetter(*self.row_names)
        one = len(self.row_names) == 1
        cur = dbapi_conn.cursor()
        try:

            def send(count: int, args: list[Any]) -> None:
                if tvc:
                    more = f" UNION ALL VALUES {', '.join([f'({self.row_exprs})'] * (count - 1))}"
                else:
                    more = f" UNION ALL SELECT {self.row_exprs}" * (count - 1)
                body = self.first + (more if count > 1 else "")
                cur.execute(f"{self.head}{body}{self.tail}", lead + args + last)

            own = ((take(row),) for row in rows) if one else map(take, rows)
            for count, args in _row_batches(own, _MYSQL_BATCH_ROWS, _MYSQL_BATCH_BYTES):
                send(count, args)
        finally:
            cur.close()


@functools.lru_cache(maxsize=64)
def _mysql_hoist_plan(sql: str, common: frozenset[str]) -> _MySQLHoistPlan | None:
    """:class:`_MySQLHoistPlan` for ``sql`` (``%(name)s`` form), or None unless it is a
    one-row ``INSERT ... SELECT exprs WHERE guard`` whose exprs each take only shared or only
    a row's own parameters and whose guard takes shared ones."""
    m = _INSERT_SELECT.match(sql)
    if m is None or "'" in sql:
        return None
    head, select, tail = m.group(1), m.group(2), m.group(3) or ""
    where = _top_level_where(select)
    if where < 0 or _PYFORMAT.search(tail):
        return None
    exprs, guard = select[len("SELECT ") : where], select[where + len(" WHERE ") :]
    if _NOT_ONE_ROW.search(exprs) or any(n not in common for n in _PYFORMAT.findall(guard)):
        return None
    outer: list[str] = []
    own: list[str] = []
    for e in _split_top(exprs):
        names = _PYFORMAT.findall(e)
        if all(n in common for n in names):
            outer.append(e)
        elif any(n in common for n in names):
            return None
        else:
            outer.append(f"kv_rows.c{len(own)}")
            own.append(e)
    if not own:
        return None
    outer_names = tuple(_PYFORMAT.findall(", ".join(outer)))
    row_names = tuple(_PYFORMAT.findall(", ".join(own)))
    first = "SELECT " + ", ".join(f"{_PYFORMAT.sub('%s', e)} AS c{n}" for n, e in enumerate(own))
    return _MySQLHoistPlan(
        f"{head} SELECT {_PYFORMAT.sub('%s', ', '.join(outer))} FROM (",
        outer_names,
        first,
        _PYFORMAT.sub("%s", ", ".join(own)),
        row_names,
        f") AS kv_rows WHERE {_PYFORMAT.sub('%s', guard)}{tail}",
        tuple(_PYFORMAT.findall(guard)),
    )


class MariaDBDialect(MySQLDialect):
    """MariaDB, named so by a ``mariadb+pymysql://`` URL (SQLAlchemy's "mariadb" dialect)."""

    name = "mariadb"


class _ConnectorPython(MySQLDialect):
    """MariaDB Connector/Python (the ``mariadb`` module, over the C client library): ``?``
    parameters (SQLAlchemy renders them), ``autocommit`` a property, the error number in
    ``errno`` (see _mysql_errno), and a connection that raises on any use once closed."""

    binds_common = False  # (positional rows: merged, then _insert_select_many)

    driver = "mariadbconnector"

    def executor(self, dbapi_conn: Any) -> Callable[..., Any]:
        cursor = dbapi_conn.cursor

        def execute(sql: str, params: Any = None) -> Any:
            # A cursor holds its statement's buffers (a 256 KiB chunk's parameter, a result)
            # until close(), and one dropped unclosed lives on in a reference cycle until the
            # garbage collector runs: streaming a 256 MiB value kept all of it. The rows are
            # on the client already (its cursors are buffered), so they are taken and the
            # cursor closed at once.
            cur = cursor()
            try:
                if params is None and "; " in sql:
                    for part in sql.split("; "):  # SET TRANSACTION ...; START TRANSACTION
                        cur.execute(part)
                else:
                    cur.execute(sql, params)
                return _BufferedCursor.of(cur)
            finally:
                cur.close()

        return execute

    def executemany(
        self, dbapi_conn: Any, sql: str, rows: list[Any], common: _Common = None
    ) -> None:
        # Its executemany is the server's bulk protocol, which takes INSERT ... VALUES but not
        # kvstore's INSERT ... SELECT ("not supported in the prepared statement protocol"):
        # those go as UNION ALL batches, anything else one execute per row on one cursor.
        if self._insert_select_many(dbapi_conn, sql, rows):
            return
        cur = dbapi_conn.cursor()
        try:
            for row in rows:
                cur.execute(sql, row)
        finally:
            cur.close()

    def executemany_on(self, conn: Any, sql: str, rows: list[Any], common: _Common = None) -> None:
        # SQLAlchemy's executemany is the driver's too (see executemany)
        for row in rows:
            conn.exec_driver_sql(sql, row)

    def set_autocommit(self, dbapi_conn: Any, on: bool) -> Any:
        old = dbapi_conn.autocommit
        dbapi_conn.autocommit = on
        return old

    def restore_autocommit(self, dbapi_conn: Any, old: Any) -> None:
        dbapi_conn.autocommit = old

    def is_closed(self, dbapi_conn: Any) -> bool:
        try:
            return not dbapi_conn.open
        except Exception:  # ProgrammingError once close() has been called
            return True


class MariaDBConnectorDialect(_ConnectorPython, MariaDBDialect):
    """``mariadb+mariadbconnector://``."""


class MySQLConnectorPythonDialect(_ConnectorPython):
    """``mysql+mariadbconnector://`` (SQLAlchemy's "mysql" dialect, the same driver)."""


class _Asyncmy(MySQLDialect):
    """asyncmy, via SQLAlchemy's sync adapter (kvstore.connect_async): the adapter's cursors
    execute (``%s`` parameters) and buffer the rows, its ``autocommit``/``get_autocommit``
    are PyMySQL's, errors are asyncmy's own classes with PyMySQL's args (errno, message)."""

    binds_common = False  # (positional rows: merged, then _insert_select_many)

    driver = "asyncmy"
    is_async = True

    def dbapi_of(self, fairy: Any) -> Any:
        return fairy.dbapi_connection

    def in_driver_transaction(self, dbapi_conn: Any) -> bool:
        # the adapter does not expose it; asyncmy's connection keeps the server's status
        return bool(dbapi_conn.driver_connection.server_status & 1)

    def is_closed(self, dbapi_conn: Any) -> bool:
        return not dbapi_conn.driver_connection.connected

    def is_unavailable(self, exc: BaseException) -> bool:
        # asyncmy lets OSError through on connect (refused, unknown host) and a dropped socket
        return isinstance(_orig(exc), OSError) or super().is_unavailable(exc)


class AsyncmyMariaDBDialect(_Asyncmy, MariaDBDialect):
    """``mariadb+asyncmy://``."""


class AsyncmyMySQLDialect(_Asyncmy):
    """``mysql+asyncmy://``."""


def _switch_to_wal(cur: Any, timeout: float) -> None:
    """Put a SQLite file in WAL mode (it persists in the file, so once is enough).

    Switching needs a moment of exclusive access and SQLite's busy handler does not wait for
    it: when several connections open a new file at once, all but one get "database is
    locked". Those retry until they see the winner's WAL mode, within the busy timeout.
    """
    deadline = time.monotonic() + min(timeout, 1.0)
    attempt = 0
    while True:
        cur.execute("PRAGMA journal_mode")
        mode = cur.fetchone()[0]
        if mode in ("wal", "memory"):
            return
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as exc:
            if "locked" not in str(exc):
                raise
            if time.monotonic() > deadline:
                # WAL is an optimisation, not a condition of correctness: while another
                # connection holds a transaction (an application's Session on a file it
                # created), keep the current journal and let a later connection switch.
                return
        backoff_sleep(LOCK_POLL, attempt)
        attempt += 1


def _orig(exc: BaseException) -> BaseException:
    # kvstore's DatabaseError and SQLAlchemy's DBAPIError both keep the driver's as ``orig``
    seen = exc
    for _ in range(3):
        inner = getattr(seen, "orig", None)
        if inner is None:
            break
        seen = inner
    return seen


_DIALECTS: dict[str, Dialect] = {
    "sqlite": Dialect(),
    "postgresql": PostgresDialect(),
    "mysql": MySQLDialect(),
    "mariadb": MariaDBDialect(),
}
#: the drivers kvstore speaks to, by (database, SQLAlchemy driver name)
_DRIVERS: dict[tuple[str, str], Dialect] = {
    ("sqlite", "pysqlite"): _DIALECTS["sqlite"],
    ("postgresql", "psycopg"): _DIALECTS["postgresql"],
    ("postgresql", "psycopg2"): Psycopg2Dialect(),
    ("mysql", "pymysql"): _DIALECTS["mysql"],
    ("mariadb", "pymysql"): _DIALECTS["mariadb"],
    ("mysql", "mariadbconnector"): MySQLConnectorPythonDialect(),
    ("mariadb", "mariadbconnector"): MariaDBConnectorDialect(),
}
#: the asyncio drivers kvstore.connect_async speaks to, by (database, SQLAlchemy driver name);
#: SQLAlchemy names psycopg 3's async dialect "psycopg" too, told apart by ``is_async``
_ASYNC_DRIVERS: dict[tuple[str, str], Dialect] = {
    ("sqlite", "aiosqlite"): AiosqliteDialect(),
    ("postgresql", "asyncpg"): AsyncpgDialect(),
    ("postgresql", "psycopg"): PsycopgAsyncDialect(),
    ("postgresql", "psycopg_async"): PsycopgAsyncDialect(),
    ("mysql", "asyncmy"): AsyncmyMySQLDialect(),
    ("mariadb", "asyncmy"): AsyncmyMariaDBDialect(),
}
_ASYNC_INSTALL = {
    "sqlite": "aiosqlite (URL sqlite+aiosqlite:///path)",
    "postgresql": "asyncpg (URL postgresql+asyncpg://...) or psycopg 3 "
    "(URL postgresql+psycopg://...)",
    "mysql": "asyncmy (pip install 'sqlalchemy-kvstore[asyncmy]', URL mysql+asyncmy://... or "
    "mariadb+asyncmy://...)",
    "mariadb": "asyncmy (pip install 'sqlalchemy-kvstore[asyncmy]', URL mariadb+asyncmy://... "
    "or mysql+asyncmy://...)",
}
_INSTALL = {
    "sqlite": "the standard library's sqlite3 (sqlite:///path or sqlite+pysqlite:///path)",
    "postgresql": "psycopg 3 (pip install 'sqlalchemy-kvstore[postgres]', URL "
    "postgresql+psycopg://...) or psycopg2 (pip install psycopg2-binary, URL "
    "postgresql+psycopg2://...)",
    "mysql": "PyMySQL (pip install 'sqlalchemy-kvstore[mysql]', URL mysql+pymysql://... or "
    "mariadb+pymysql://...) or MariaDB Connector/Python (pip install "
    "'sqlalchemy-kvstore[mariadbconnector]', URL mysql+mariadbconnector://...)",
    "mariadb": "PyMySQL (pip install 'sqlalchemy-kvstore[mysql]', URL mariadb+pymysql://... or "
    "mysql+pymysql://...) or MariaDB Connector/Python (pip install "
    "'sqlalchemy-kvstore[mariadbconnector]', URL mariadb+mariadbconnector://...)",
}


def for_name(name: str) -> Dialect:
    """The dialect object of a database's default driver (for what does not depend on it)."""
    try:
        return _DIALECTS[name]
    except KeyError:
        raise ValueError(f"kvstore supports SQLite, PostgreSQL and MariaDB, not {name!r}") from None


def for_engine(engine: Engine) -> Dialect:
    return for_sa_dialect(engine.dialect)


def for_sa_dialect(sa_dialect: sa.engine.Dialect) -> Dialect:
    """The dialect object for a SQLAlchemy dialect and its driver; a driver kvstore cannot use
    is refused with what to use instead."""
    name, driver = sa_dialect.name, sa_dialect.driver
    drivers = _ASYNC_DRIVERS if getattr(sa_dialect, "is_async", False) else _DRIVERS
    try:
        return drivers[(name, driver)]
    except KeyError:
        pass
    for_name(name)  # an unsupported database says so first
    if drivers is _ASYNC_DRIVERS and name not in _ASYNC_INSTALL:
        raise ValueError(
            f"kvstore.connect_async does not work with {name} yet: use kvstore.connect with "
            f"{_INSTALL[name]}"
        )
    if drivers is _ASYNC_DRIVERS:
        raise ValueError(
            f"kvstore.connect_async cannot use the {driver!r} driver for {name}: it works with "
            f"{_ASYNC_INSTALL[name]}"
        )
    raise ValueError(
        f"kvstore cannot use the {driver!r} driver for {name}: it works with {_INSTALL[name]}"
    )


def is_async_driver(backend: str, driver: str) -> bool:
    """Whether a URL's (database, driver) is an asyncio driver kvstore.connect_async takes."""
    return (backend, driver) in _ASYNC_DRIVERS and (backend, driver) != ("postgresql", "psycopg")


def refuse_schema_translation(bind: Any) -> None:
    """kvstore's statements name their tables (``kv_entries``, or your ``table_prefix``) and
    run on the connection's ``search_path``: SQLAlchemy's ``schema_translate_map`` would not
    reach them, so a bind that sets one is refused rather than silently ignored."""
    get = getattr(bind, "get_execution_options", None)
    if get is None and is_session(bind):
        get = getattr(bind.get_bind(), "get_execution_options", None)
    options = get() if callable(get) else {}
    if options.get("schema_translate_map"):
        raise ValueError(
            "kvstore does not follow schema_translate_map (its tables are found on the "
            "connection's search_path); use table_prefix=... to separate kvstore's tables, or "
            "set search_path on the connection (see docs/production.md)"
        )


def key_type() -> sa.String:
    """The key column's type. Code-point order on every dialect: SQLite's default BINARY
    collation already is; on PostgreSQL the "C" collation makes ORDER BY and range scans
    byte-wise, whatever the database's default collation, so a prefix scan is a B-tree range."""
    return (
        sa.String()
        .with_variant(sa.String(collation="C"), "postgresql")
        .with_variant(_mysql_key(), "mysql", "mariadb")
    )


def _mysql_key() -> sa.String:
    """MySQL keys need a length; 500 characters hold the longest collection key (1000 UTF-8
    bytes of up to 500 characters, see MySQLDialect.max_collection_key_chars). Their collation
    is their table's, MYSQL_COLLATION (kvstore._schema), as for every text column: named on
    the column too, reflection would not show it and `kvstore db check` would see a change."""
    return sa.String(500)


#: the collation of kvstore's tables on MariaDB, so of keys and namespaces: code points,
#: case-sensitive, and unlike utf8mb4_bin it does not ignore trailing spaces
MYSQL_COLLATION = "utf8mb4_nopad_bin"


def namespace_type() -> sa.String:
    """The namespace column's type where a foreign key includes it. MySQL/MariaDB check that
    both sides of a foreign key have one collation when the child table is created, before
    table_options_ddl converts the tables: named here, the column has it from the start."""
    return sa.String(255).with_variant(sa.String(255, collation=MYSQL_COLLATION), *_MYSQL_NAMES)


def blob_type() -> sa.LargeBinary:
    """A value's or chunk's column type: MySQL's BLOB holds 64 KiB, LONGBLOB 4 GiB."""
    return sa.LargeBinary().with_variant(sa.LargeBinary(_MYSQL_LONG), "mysql", "mariadb")


#: a length that makes MySQL's TEXT/BLOB its LONG kind (4 GiB), without importing SQLAlchemy's
#: MySQL dialect into every process that imports kvstore (the streaming memory bound counts it)
_MYSQL_LONG = (1 << 32) - 1


def json_type() -> sa.JSON:
    """The metadata column's type: JSON, as text on MySQL/MariaDB (kvstore writes and checks
    the JSON itself)."""
    return sa.JSON().with_variant(sa.Text(_MYSQL_LONG), "mysql", "mariadb")


def ivalue_type() -> sa.LargeBinary:
    """An encoded index value's column type: MySQL indexes no BLOB, a VARBINARY of the
    longest encoding (kvstore._indexing.MAX_ENCODED) it does."""
    return sa.LargeBinary().with_variant(sa.VARBINARY(1024), "mysql", "mariadb")


def is_session(bind: object) -> bool:
    """Whether ``bind`` is an ORM Session (checked by name, so that stores bound to engines
    never import sqlalchemy.orm)."""
    return any(
        c.__name__ == "Session" and c.__module__.startswith("sqlalchemy.orm")
        for c in type(bind).__mro__
    )


def is_memory(engine: Engine) -> bool:
    """Whether an engine opens an in-memory SQLite database (one per connection)."""
    url = engine.url
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _default_pg_driver() -> str:
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return driver
    return "psycopg"  # neither: SQLAlchemy's import error names psycopg, what to install


#: the asyncio driver connect_async uses for a URL that names none
_DEFAULT_ASYNC_DRIVER = {
    "sqlite": "aiosqlite",
    "postgresql": "asyncpg",
    "postgres": "asyncpg",
    "mysql": "asyncmy",
    "mariadb": "asyncmy",
}


def _is_async_sa_driver(url: URL) -> bool:
    """Whether SQLAlchemy's dialect for the URL is an asyncio one (its class only: the driver
    is not imported)."""
    try:
        return bool(getattr(url.get_dialect(), "is_async", False))
    except Exception:  # a driver SQLAlchemy does not know: not one either way
        return False


def async_engine_url(url: str) -> URL:
    """The URL of the engine an async store owns: the database's default asyncio driver when
    the URL names none (aiosqlite, asyncpg, asyncmy); ``postgresql+psycopg`` is psycopg 3 in
    async mode; any other driver is refused with the ones that work."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ValueError(f"not a database URL: {url!r} ({exc})") from None
    backend = parsed.get_backend_name()
    for_name("postgresql" if backend == "postgres" else backend)
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=f"{backend}+{_DEFAULT_ASYNC_DRIVER[backend]}")
    driver = parsed.get_driver_name()
    if driver == "psycopg":
        return parsed.set(drivername="postgresql+psycopg_async")
    if not is_async_driver(parsed.get_backend_name(), driver):
        works = _ASYNC_INSTALL.get(parsed.get_backend_name())
        if works is not None and _is_async_sa_driver(parsed):
            # an asyncio driver kvstore does not speak (aiomysql: docs/mariadb.md says why)
            raise ValueError(
                f"kvstore.connect_async cannot use the {driver!r} driver for "
                f"{parsed.get_backend_name()}: it works with {works}"
            )
        raise ValueError(
            f"kvstore.connect_async needs an asyncio driver, not {driver!r}: use "
            "sqlite+aiosqlite:///path, postgresql+asyncpg://..., postgresql+psycopg://... or "
            "mariadb+asyncmy://... (kvstore.connect opens the sync drivers)"
        )
    if driver == "asyncmy" and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})  # as for PyMySQL, below
    return parsed


def engine_from_url(url: str, options: dict[str, Any]) -> Engine:
    """The engine a store owns for a URL: ``postgresql://`` means psycopg 3; SQLite files
    may be used from any thread, and an in-memory database is one shared connection."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ValueError(f"not a database URL: {url!r} ({exc})") from None
    if parsed.drivername in ("mysql", "mariadb"):
        parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
    if parsed.drivername in ("postgresql", "postgres"):
        # psycopg 3 when it is installed, else psycopg2 (SQLAlchemy's own default)
        parsed = parsed.set(drivername=f"postgresql+{_default_pg_driver()}")
    backend = parsed.get_backend_name()
    for_name(backend)  # refuse unsupported databases with a clear message
    driver = parsed.get_driver_name()
    if is_async_driver(backend, driver):
        raise ValueError(
            f"kvstore.connect cannot use the {driver!r} driver for {backend}: it is an asyncio "
            f"driver, open {parsed.drivername}:// URLs with kvstore.connect_async (await "
            f"kvstore.connect_async(url)); kvstore.connect works with {_INSTALL[backend]}"
        )
    if (backend, driver) not in _DRIVERS:
        raise ValueError(
            f"kvstore cannot use the {driver!r} driver for {backend}: it works with "
            f"{_INSTALL[backend]}"
        )
    if backend == "sqlite":
        connect_args = dict(options.pop("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)
        options["connect_args"] = connect_args
        # sqlite3 takes :name parameters as they are written: no tuple to build per call
        options.setdefault("paramstyle", "named")
        if parsed.database in (None, "", ":memory:"):
            options.setdefault("poolclass", StaticPool)
    # Connector/Python takes no charset argument: it always speaks utf8mb4
    if driver == "pymysql" and "charset" not in parsed.query:
        # utf8mb4: every code point (MySQL's "utf8" is three bytes at most)
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    try:
        return create_engine(parsed, **options)
    except ImportError as exc:
        raise ImportError(
            f"the {driver} driver for {backend} is not installed ({exc}); kvstore works with "
            f"{_INSTALL[backend]}"
        ) from exc


# -- triggers ---------------------------------------------------------------------------------
# Deleting an entry, or pointing it at another blob, must drop the old blob's chunks and the
# entry's index entries in the same transaction, whoever issues the statement (kvstore, the
# application's own SQL, a purge). Triggers do that in the database; foreign-key cascades
# would not, because SQLite enforces them only on connections that enabled them, and a
# replaced blob is an UPDATE, not a DELETE.


def _sqlite_triggers(p: str) -> list[str]:
    return [
        f"""CREATE TRIGGER {p}entries_ad AFTER DELETE ON {p}entries
BEGIN
  DELETE FROM {p}chunks
    WHERE OLD.blob_id IS NOT NULL AND namespace = OLD.namespace AND blob_id = OLD.blob_id;
  DELETE FROM {p}index_entries WHERE namespace = OLD.namespace AND key = OLD.key
    AND index_id IN (SELECT id FROM {p}indexes WHERE namespace = OLD.namespace);
END""",
        f"""CREATE TRIGGER {p}entries_au AFTER UPDATE OF blob_id ON {p}entries
WHEN OLD.blob_id IS NOT NULL AND OLD.blob_id IS NOT NEW.blob_id
BEGIN
  DELETE FROM {p}chunks WHERE namespace = OLD.namespace AND blob_id = OLD.blob_id;
END""",
        # An upsert that updates fires UPDATE triggers, not these: only new rows are counted.
        f"""CREATE TRIGGER {p}entries_count_ai AFTER INSERT ON {p}entries
BEGIN
  INSERT INTO {p}counts (namespace, n) VALUES (NEW.namespace, 1)
    ON CONFLICT (namespace) DO UPDATE SET n = n + 1;
END""",
        f"""CREATE TRIGGER {p}entries_count_ad AFTER DELETE ON {p}entries
BEGIN
  UPDATE {p}counts SET n = n - 1 WHERE namespace = OLD.namespace;
END""",
    ]


def _pg_triggers(p: str) -> list[str]:
    # A delete cleans up once per statement, over all its rows at once (a transition table):
    # deleting 100,000 entries is three set-based statements, not 100,000 trigger calls. A
    # blob replaced by an update is rare and checked per row, in C, by the WHEN condition.
    return [
        f"""CREATE FUNCTION {p}entries_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM {p}chunks c USING old_rows o
    WHERE o.blob_id IS NOT NULL AND c.namespace = o.namespace AND c.blob_id = o.blob_id;
  DELETE FROM {p}index_entries ie USING old_rows o, {p}indexes ix
    WHERE ix.namespace = o.namespace AND ie.namespace = o.namespace AND ie.index_id = ix.id
      AND ie.key = o.key;
  RETURN NULL;
END $$""",
        f"""CREATE TRIGGER {p}entries_deleted AFTER DELETE ON {p}entries
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {p}entries_deleted()""",
        f"""CREATE FUNCTION {p}entries_reblobbed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM {p}chunks WHERE namespace = OLD.namespace AND blob_id = OLD.blob_id;
  RETURN NULL;
END $$""",
        f"""CREATE TRIGGER {p}entries_reblobbed AFTER UPDATE OF blob_id ON {p}entries
FOR EACH ROW WHEN (OLD.blob_id IS NOT NULL AND OLD.blob_id IS DISTINCT FROM NEW.blob_id)
EXECUTE FUNCTION {p}entries_reblobbed()""",
    ]


def _mysql_triggers(p: str) -> list[str]:
    # one trigger per event; a trigger may change other tables (not its own)
    return [
        f"""CREATE TRIGGER {p}entries_ad AFTER DELETE ON {p}entries FOR EACH ROW
BEGIN
  IF OLD.blob_id IS NOT NULL THEN
    DELETE FROM {p}chunks WHERE namespace = OLD.namespace AND blob_id = OLD.blob_id;
  END IF;
  DELETE ie FROM {p}index_entries ie
    JOIN {p}indexes ix ON ix.namespace = ie.namespace AND ix.id = ie.index_id
    WHERE ix.namespace = OLD.namespace AND ie.namespace = OLD.namespace
      AND ie.`key` = OLD.`key`;
END""",
        f"""CREATE TRIGGER {p}entries_au AFTER UPDATE ON {p}entries FOR EACH ROW
BEGIN
  IF OLD.blob_id IS NOT NULL AND NOT (OLD.blob_id <=> NEW.blob_id) THEN
    DELETE FROM {p}chunks WHERE namespace = OLD.namespace AND blob_id = OLD.blob_id;
  END IF;
END""",
    ]


_MYSQL_NAMES = ("mysql", "mariadb")


def trigger_sql(dialect_name: str, prefix: str) -> list[str]:
    """The CREATE statements of kvstore's triggers (used by models and migrations)."""
    if dialect_name in _MYSQL_NAMES:
        return _mysql_triggers(prefix)
    return _pg_triggers(prefix) if dialect_name == "postgresql" else _sqlite_triggers(prefix)


def drop_trigger_sql(dialect_name: str, prefix: str) -> list[str]:
    """The DROP statements for :func:`trigger_sql`'s triggers: the triggers first, then
    (PostgreSQL) their functions, which a dropped table leaves behind."""
    p = prefix
    if dialect_name in _MYSQL_NAMES:
        return [f"DROP TRIGGER IF EXISTS {p}entries_ad", f"DROP TRIGGER IF EXISTS {p}entries_au"]
    if dialect_name == "postgresql":
        return [
            f"DROP TRIGGER IF EXISTS {p}entries_deleted ON {p}entries",
            f"DROP TRIGGER IF EXISTS {p}entries_reblobbed ON {p}entries",
            f"DROP FUNCTION IF EXISTS {p}entries_deleted()",
            f"DROP FUNCTION IF EXISTS {p}entries_reblobbed()",
        ]
    return [
        f"DROP TRIGGER IF EXISTS {p}{name}"
        for name in ("entries_ad", "entries_au", "entries_count_ai", "entries_count_ad")
    ]


#: the info key of a primary key that MySQL/MariaDB spell with other columns
_MYSQL_PK = "kvstore_mysql_columns"


def mysql_primary_key(*columns: str) -> dict[str, Any]:
    """A primary key's ``info`` that makes MySQL/MariaDB create it on ``columns`` instead.

    The index entries' key leads with the namespace everywhere else, but on InnoDB
    (namespace, index_id, ivalue, key) is 4,052 bytes of utf8mb4, over its 3,072-byte limit for
    one index: there it is (index_id, ivalue, key). An index id belongs to one namespace, so a
    namespace's entries are still a few contiguous ranges, and every statement names the
    namespace all the same (MariaDB has no sharding that needs it leading)."""
    return {_MYSQL_PK: columns}


@compiles(sa.PrimaryKeyConstraint, "mysql")
@compiles(sa.PrimaryKeyConstraint, "mariadb")
def _mysql_pk(constraint: sa.PrimaryKeyConstraint, compiler: Any, **kw: Any) -> str:
    columns = constraint.info.get(_MYSQL_PK)
    if columns is None:
        return str(compiler.visit_primary_key_constraint(constraint, **kw))
    prep = compiler.preparer
    name = f"CONSTRAINT {prep.format_constraint(constraint)} " if constraint.name else ""
    return f"{name}PRIMARY KEY ({', '.join(prep.quote(c) for c in columns)})"


def table_options_ddl(table: str) -> list[DDL]:
    """MySQL/MariaDB's options for each of kvstore's tables, given right after it is created
    (still empty): InnoDB (transactions, row locks), utf8mb4, and MYSQL_COLLATION as every
    text column's collation. An ALTER rather than the tables' ``mysql_*`` options, which would
    import SQLAlchemy's MySQL dialect into every process that imports kvstore."""
    sql = f"ALTER TABLE {table} ENGINE=InnoDB, CONVERT TO CHARACTER SET utf8mb4 COLLATE {MYSQL_COLLATION}"
    return [DDL(sql).execute_if(dialect=name) for name in _MYSQL_NAMES]  # type: ignore[no-untyped-call]


def trigger_ddl(prefix: str) -> list[DDL]:
    out = []
    for name in ("sqlite", "postgresql", *_MYSQL_NAMES):
        for stmt in trigger_sql(name, prefix):
            # "%" would be taken for a DBAPI placeholder by SQLAlchemy's DDL compiler
            out.append(DDL(stmt.replace("%", "%%")).execute_if(dialect=name))  # type: ignore[no-untyped-call]
    return out


def drop_trigger_ddl(prefix: str) -> list[DDL]:
    out = []
    for name in ("sqlite", "postgresql", *_MYSQL_NAMES):
        for stmt in drop_trigger_sql(name, prefix):
            out.append(DDL(stmt).execute_if(dialect=name))  # type: ignore[no-untyped-call]
    return out
