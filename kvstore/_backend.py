"""Connections, transactions and the statement cache of one ``connect()``, and the
:class:`Scope` handle through which every layer above runs SQL.

A :class:`Backend` is what all store objects of one ``connect()`` share: the engine (or the
caller's Connection/Session), idle connections, statements rendered for the driver, the
namespaces' index state, and which transaction the current thread has open. A :class:`Scope`
is a backend seen from one namespace, with one key rule, optionally bound to one open
transaction: the repository functions in :mod:`kvstore._entries` and the adapters take a
scope, never a store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from . import _dialect
from ._conn import Conn, ExternalConn, RawConn, SAConn
from ._dialect import Rendered
from ._retry import CONTENTION, backoff_sleep, in_async_greenlet
from ._schema import Tables, tables
from ._validate import (
    check_collection_key,
    check_collection_name,
    check_key,
    check_namespace,
)
from .errors import (
    DatabaseError,
    DatabaseUnavailableError,
    KVStoreError,
    TooManyReadersError,
    TransactionError,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["Backend", "Scope", "Statements", "TxState"]

T = TypeVar("T")

#: idle connections an owned engine's backend keeps checked out, ready for the next call
MAX_IDLE = 8
#: connections a forked child inherited: never used, never closed (see Backend._after_fork)
_INHERITED: list[Any] = []


class _Forks:
    """How many times this process has been forked into (a child increments it): checking
    it on every checkout costs an attribute read, where ``os.getpid()`` is a system call."""

    count = 0

    @classmethod
    def child(cls) -> None:
        cls.count += 1


os.register_at_fork(after_in_child=_Forks.child)


class Statements:
    """A module's SQL, under that module's own names: ``{e}``-style placeholders for table
    names and ``{bytea}``-style ones for type names (see :func:`Backend.render`); values are
    always ``:name`` bound parameters."""

    def __init__(self, owner: str, templates: Mapping[str, str]) -> None:
        self.owner = owner
        self.templates = dict(templates)


# Databases on which this thread has a transaction open, by any store: a write through
# another store (another engine) on the same database would wait for that transaction's own
# locks - until SQLite's busy timeout, or forever on a PostgreSQL row lock.
# (For async stores, "this thread" is the current asyncio task: see TaskLocal.)


class TaskLocal:
    """What ``threading.local`` is to a sync store, per asyncio task for an async one: every
    call of kvstore.aio runs in a greenlet on the event loop's thread, so a thread-local
    transaction would be joined by every other task's calls. Attribute access and
    ``__dict__`` see the current task's namespace (the thread's outside any task)."""

    __slots__ = ("__weakref__", "_by_task", "_outside")

    def __init__(self) -> None:
        object.__setattr__(self, "_by_task", weakref.WeakKeyDictionary())
        object.__setattr__(self, "_outside", threading.local())

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running event loop
            task = None
        if task is None:
            outside: dict[str, Any] = self._outside.__dict__
            return outside
        space: dict[str, Any] | None = self._by_task.get(task)
        if space is None:
            space = self._by_task[task] = {}
        return space

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__[name] = value

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(name) from None


_open_transactions = threading.local()
_open_transactions_async = TaskLocal()


def _open_in_thread(backend: Backend) -> dict[str, int]:
    local = _open_transactions_async if backend.dialect.is_async else _open_transactions
    d: dict[str, int] | None = local.__dict__.get("dbs")
    if d is None:
        d = local.dbs = {}
    return d


# The same transactions counted for the whole process: while none is open on a database, no
# thread's (task's) own count can be above zero, and a write need not look its count up (a
# task-local lookup, on the hot path of every async write). Changed under the lock; read
# without it, as a thread's own increments are always visible to that thread.
_open_anywhere: dict[str, int] = {}
_open_anywhere_lock = threading.Lock()


def _new_open_anywhere_lock() -> None:
    """In a forked child: another thread of the parent may have held the lock at the fork."""
    global _open_anywhere_lock
    _open_anywhere_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_new_open_anywhere_lock)


def _count_open(db_key: str, delta: int) -> None:
    with _open_anywhere_lock:
        n = _open_anywhere.get(db_key, 0) + delta
        if n:
            _open_anywhere[db_key] = n
        else:
            _open_anywhere.pop(db_key, None)


@dataclass
class Options:
    sqlite_synchronous: str = "FULL"
    busy_timeout: float = 30.0
    chunk_size: int = 256 << 10
    max_open_readers: int = 8
    #: WAL on SQLite: None = for engines kvstore creates only, True = also on yours, False = never
    sqlite_wal: bool | None = None
    #: connections an owned engine's backend keeps between calls (0 when the pool must see
    #: every checkout: pool_pre_ping, pool_recycle)
    max_idle: int = 8

    def connection_options(self, owned: bool) -> dict[str, Any]:
        return {
            "synchronous": self.sqlite_synchronous,
            "busy_timeout": self.busy_timeout,
            "wal": self.sqlite_wal,
            "owned": owned,
        }


class Replica:
    """One read replica: its own backend (engine, idle connections, statements), where its
    replay had got to when last asked, and until when it is skipped after a failure."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.replayed = -1
        self.down_until = 0.0


class Replicas:
    """Read routing with read-your-writes (PostgreSQL streaming replication).

    A read may go to a replica only once the replica has replayed past (1) the primary's WAL
    position after this store's last use of the primary, so a caller never reads something
    older than its own last write, and (2) the primary's position of at most ``max_lag``
    seconds ago, so no replica serves data much older than that. Positions are numbers of
    WAL bytes (``pg_lsn - '0/0'``). A replica's replay position is cached and asked again
    only when the cached one is not far enough; when no replica is, the read goes to the
    primary at once (no waiting). A replica that fails is skipped for ``retry_after``
    seconds."""

    PRIMARY_LSN = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
    # a node that is not in recovery (a promoted standby) is as current as it says
    REPLAY_LSN = "SELECT COALESCE(pg_last_wal_replay_lsn(), pg_current_wal_lsn()) - '0/0'::pg_lsn"

    def __init__(self, primary: Backend, replicas: list[Backend], max_lag: float) -> None:
        self.primary = primary
        self.nodes = [Replica(b) for b in replicas]
        self.max_lag = max_lag
        self.retry_after = 5.0
        self._lock = threading.Lock()
        #: primary uses (checkins) so far, and how many the needed position covers
        self.uses = 0
        self._covered = -1
        self._needed = 0
        self._floor = 0
        self._floor_at = -float("inf")
        self._turn = 0

    def used_primary(self) -> None:
        self.uses += 1

    def _primary_lsn(self) -> int:
        conn = self.primary.checkout(counted=False)
        try:
            return int(conn.run(self.PRIMARY_LSN).fetchone()[0])
        finally:
            self.primary.checkin(conn, counted=False)

    def needed(self) -> int:
        """The WAL position a replica must have replayed to serve a read now."""
        uses = self.uses  # read before asking: a use after this is covered next time
        now = time.monotonic()
        if uses != self._covered or now - self._floor_at > self.max_lag / 2:
            lsn = self._primary_lsn()
            with self._lock:
                self._needed = max(self._needed, lsn)
                if uses != self._covered:
                    self._covered = uses
                self._floor, self._floor_at = max(self._floor, lsn), now
        return self._needed

    def pick(self) -> Replica | None:
        """A replica that can serve a read now, or None for the primary."""
        try:
            needed = self.needed()
        except KVStoreError:
            return None  # the primary cannot say: the read goes there and reports it
        now = time.monotonic()
        stale = []
        # round robin: each read starts at the next replica, so caught-up ones share the load
        self._turn = turn = (self._turn + 1) % len(self.nodes)
        for node in self.nodes[turn:] + self.nodes[:turn]:
            if node.down_until > now:
                continue
            if node.replayed >= needed:
                return node
            stale.append(node)
        for node in stale:
            try:
                conn = node.backend.checkout()
                try:
                    node.replayed = int(conn.run(self.REPLAY_LSN).fetchone()[0])
                finally:
                    node.backend.checkin(conn)
            except KVStoreError:
                self.failed(node)
                continue
            if node.replayed >= needed:
                return node
        return None

    def failed(self, node: Replica) -> None:
        node.down_until = time.monotonic() + self.retry_after
        node.replayed = -1

    def close(self) -> None:
        for node in self.nodes:
            node.backend.close()


class AppCheckouts:
    """Which connections of an application's Engine each thread has checked out, from the
    pool's own checkout/checkin events: so that a kvstore write through that Engine, in a
    thread whose ORM Session has already written to the same SQLite file (and so holds its
    write lock until it commits), is refused at once rather than waiting for itself."""

    _by_engine: ClassVar[weakref.WeakKeyDictionary[Engine, AppCheckouts]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.held: dict[int, tuple[int, Any]] = {}

    @classmethod
    def of(cls, engine: Engine) -> AppCheckouts:
        found = cls._by_engine.get(engine)
        if found is None:
            found = cls._by_engine[engine] = cls()
            sa_event.listen(engine, "checkout", found._checkout)
            sa_event.listen(engine, "checkin", found._checkin)
            sa_event.listen(engine, "detach", found._checkin)
        return found

    def _checkout(self, dbapi_conn: Any, record: Any, proxy: Any) -> None:
        self.held[id(record)] = (threading.get_ident(), dbapi_conn)

    def _checkin(self, dbapi_conn: Any, record: Any) -> None:
        self.held.pop(id(record), None)

    def written_in_this_thread(self, dialect: _dialect.Dialect) -> bool:
        me = threading.get_ident()
        # list() copies in one step under the GIL, while other threads check in and out
        return any(
            thread == me and dialect.holds_write_lock(conn)
            for thread, conn in list(self.held.values())
        )


class Backend:
    """What every store object on one ``connect()`` shares: connections, SQL, index state."""

    def __init__(
        self,
        bind: Engine | Connection | Session,
        *,
        owns_engine: bool,
        table_prefix: str,
        options: Options,
    ) -> None:
        self.options = options
        self.chunk_size = options.chunk_size
        self.max_open_readers = options.max_open_readers
        self.readers = threading.BoundedSemaphore(max(options.max_open_readers, 1))
        self.owns_engine = owns_engine
        self._conn_options = options.connection_options(owns_engine)
        self._lock_wait: float | None = None
        self.external: ExternalConn | None = None
        self.engine: Engine | None = None
        if isinstance(bind, Engine):
            self.engine = bind
            sa_dialect = bind.dialect
        elif isinstance(bind, Connection):
            sa_dialect = bind.dialect
        elif _dialect.is_session(bind):
            sa_dialect = bind.get_bind().dialect
        else:
            raise TypeError(
                "connect() takes a database URL, an Engine, a Connection or a Session, "
                f"not {type(bind).__name__}"
            )
        self.dialect = _dialect.for_sa_dialect(sa_dialect)
        self.sa_dialect = sa_dialect
        if self.dialect.is_async and not in_async_greenlet():
            raise ValueError(
                f"kvstore.connect cannot use the {sa_dialect.driver!r} driver: it is an asyncio "
                "driver, open the store with kvstore.connect_async (await "
                "kvstore.connect_async(bind))"
            )
        _dialect.refuse_schema_translation(bind)
        self.tables: Tables = tables(self.dialect.check_table_prefix(table_prefix))
        if self.engine is None:
            self.external = ExternalConn(bind, self.dialect)
        memory = self.engine is not None and _dialect.is_memory(self.engine)
        self.app_checkouts: AppCheckouts | None = None
        if self.engine is not None and not owns_engine and self.dialect.watches_app_write_locks:
            self.app_checkouts = AppCheckouts.of(self.engine)
        # An in-memory SQLite database exists once per connection: everything must share one.
        self._slots = threading.BoundedSemaphore(1) if memory else None
        self.single_connection = memory or self.external is not None
        self._idle: list[Conn] = []
        # The idle connections and the pool's own together never exceed the pool's pool_size:
        # the server sees no more connections than SQLAlchemy's pool alone would keep open,
        # and the pool's overflow connections are closed when a call returns.
        pool = self.engine.pool if self.engine is not None else None
        size, checkedin = getattr(pool, "size", None), getattr(pool, "checkedin", None)
        self._pool_size: Callable[[], int] = size if callable(size) else lambda: MAX_IDLE
        self._checkedin: Callable[[], int] = checkedin if callable(checkedin) else lambda: 0
        # a pool's size is fixed when it is made (a disposed engine's new pool copies it)
        self._idle_limit = min(self.options.max_idle, self._pool_size())
        # Asking the pool takes its lock: on the hot path, ask only once a connection has
        # gone back into it since it was last seen empty (its checkin event says so).
        self._pool_may_hold = False
        if owns_engine and self.engine is not None:
            sa_event.listen(self.engine, "checkin", self._pool_took_one)
        self._lock = threading.Lock()
        self._forks = _Forks.count
        self.local: threading.local | TaskLocal = (
            TaskLocal() if self.dialect.is_async else threading.local()
        )
        self.closed = False
        #: read replicas (PostgreSQL), set by connect(replicas=...)
        self.replicas: Replicas | None = None
        self._rendered: dict[tuple[str, str], Rendered] = {}
        t = self.tables
        self._fmt = {
            "e": t.entries.name,
            "c": t.chunks.name,
            "n": t.namespaces.name,
            "ix": t.indexes.name,
            "ie": t.index_entries.name,
            "l": t.lists.name,
            "li": t.list_items.name,
            "cnt": t.counts.name,
            # the index entries' (namespace, index_id, key) index, for a planner that must
            # be told
            "ie_by_key": self.dialect.force_index(
                next(
                    str(ix.name)
                    for ix in t.index_entries.indexes
                    if [c.name for c in ix.columns] == ["namespace", "index_id", "key"]
                )
            ),
            "entries": t.entries.name,
            "for_update": self.dialect.for_update,
            "intdiv": self.dialect.intdiv,
            "for_share": self.dialect.for_share,
            **self.dialect.type_names,
        }
        #: index state per namespace (see kvstore._indexing.NamespaceIndexes)
        self.index_state: dict[str, Any] = {}
        #: Python-callable extractors declared in this process, by (namespace, index name)
        self.declared: dict[tuple[str, str], Callable[[bytes], Any]] = {}
        self.reopen: dict[str, Any] | None = None
        # which database this is, to spot two stores on one database in one transaction
        self.db_key = (
            None
            if self.engine is None or memory
            else self.engine.url.render_as_string(hide_password=True)
        )

    def _pool_took_one(self, dbapi_conn: Any, record: Any) -> None:
        self._pool_may_hold = True

    def _pool_idle(self) -> int:
        if not self._pool_may_hold:
            return 0
        # cleared before asking: a checkin racing with us sets it again after
        self._pool_may_hold = False
        n = self._checkedin()
        if n:
            self._pool_may_hold = True
        return n

    # -- statements --------------------------------------------------------------------------
    def render(self, statements: Statements, name: str, template: str | None = None) -> Rendered:
        """A named statement of ``statements`` in the driver's own SQL and parameter style,
        rendered once per backend. ``template`` gives the text of a statement built at run
        time (its name must then say everything that varies)."""
        cache_key = (statements.owner, name)
        try:
            return self._rendered[cache_key]
        except KeyError:
            text = template if template is not None else statements.templates[name]
            d = self.dialect
            text = d.statement_overrides.get(cache_key, text)
            out = self._rendered[cache_key] = _dialect.render(
                self.sa_dialect, d.adapt_sql(text.format(**self._fmt))
            )
            return out

    def format(self, text: str) -> str:
        """Table and type names filled into a statement run as it is (no parameters)."""
        return self.dialect.adapt_sql(text.format(**self._fmt))

    # -- connections ---------------------------------------------------------------------------
    def checkout(self, counted: bool = True) -> Conn:
        if self.external is not None:
            return self.external
        if self.closed:
            raise KVStoreError("this store is closed")
        # an async store must not block the event loop's thread waiting: it fails at once
        wait = 0 if self.dialect.is_async else 60
        if self._slots is not None and not self._slots.acquire(timeout=wait):
            raise TransactionError(
                "timed out waiting for the in-memory database's only connection; is "
                "another thread holding a transaction or an open() reader?"
            )
        engine = self.engine
        assert engine is not None
        if self._forks != _Forks.count:
            self._after_fork(engine)
        watched = _watched(engine)
        # list.pop/append are atomic under the GIL: the idle list needs no lock of its own.
        if not watched:
            try:
                return self._idle.pop()
            except IndexError:
                pass
        try:
            if watched:
                # Someone listens to this engine's statements (echo, the sqlalchemy.engine
                # logger, cursor events: tracing, query counters): run through SQLAlchemy's
                # Connection so they see ours too. The fast path skips that overhead.
                return SAConn(engine.connect(), self.dialect, self._conn_options)
            return RawConn(
                engine.raw_connection(), self.dialect, self._conn_options, engine.raw_connection
            )
        except sa_exc.TimeoutError as exc:
            if self._slots is not None:
                self._slots.release()
            raise DatabaseError(
                f"no database connection became free in time: the engine's pool is exhausted "
                f"({exc}); open() readers of large values, long transactions and other users "
                "of the same Engine hold them",
                exc,
            ) from exc
        except Exception as exc:
            # engine.raw_connection() raises the driver's own errors, connect() SQLAlchemy's
            if self._slots is not None:
                self._slots.release()
            if isinstance(exc, KVStoreError) or not self.dialect.is_driver_error(exc):
                raise
            raise self.dialect.error(exc, connecting=True) from exc
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def checkin(self, conn: Conn, counted: bool = True) -> None:
        if conn is self.external:
            return
        if counted and self.replicas is not None:
            # after the call (and its commit): a read that follows must see it
            self.replicas.used_primary()
        if conn.in_tx:
            conn.rollback()
        try:
            dead = conn.closed
        except Exception:
            dead = True
        if not conn.broken and dead:
            conn.broken = True  # the server dropped it: invalidate rather than reuse
        # Idle connections stay checked out of the engine's pool: fine for an engine the store
        # owns, but a caller's Engine would run short, and an in-memory database's only
        # connection must go back with the driver's autocommit setting restored.
        if (
            isinstance(conn, RawConn)
            and not conn.broken
            and not self.closed
            and self.owns_engine
            and self._slots is None
        ):
            if len(self._idle) + self._pool_idle() < self._idle_limit:
                self._idle.append(conn)
            else:
                conn.close()
                # The pool took it back; if its connections and ours now outnumber its
                # pool_size, hand it ours too: past pool_size it closes them.
                while self._idle and len(self._idle) + self._pool_idle() > self._pool_size():
                    try:
                        self._idle.pop().close()
                    except IndexError:
                        break
        else:
            conn.close()
        if self._slots is not None:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        if self.replicas is not None:
            self.replicas.close()
        if self.owns_engine and self.engine is not None:
            self.engine.dispose()

    def _after_fork(self, engine: Engine) -> None:
        """In a child process (gunicorn --preload, Celery prefork, multiprocessing): the
        connections inherited from the parent share its sockets, so none may be used, nor
        closed (closing sends the server a goodbye on the parent's session). They are kept
        referenced and forgotten, and the engine's pool starts afresh (SQLAlchemy's recipe,
        ``Engine.dispose(close=False)``)."""
        with self._lock:
            if self._forks == _Forks.count:
                return
            _INHERITED.extend(self._idle)
            self._idle = []
            engine.dispose(close=False)
            self._forks = _Forks.count

    def lock_wait(self, conn: Conn) -> float:
        """How long one statement may wait for a lock: kvstore's busy_timeout on an engine it
        made, the connection's own on the application's (read once)."""
        if self._lock_wait is None:
            if self.owns_engine:
                self._lock_wait = self.options.busy_timeout
            else:
                try:
                    self._lock_wait = conn.lock_wait()
                except Exception:
                    self._lock_wait = self.options.busy_timeout
        return self._lock_wait

    def active(self) -> Conn | None:
        """The connection of the transaction this thread has open on this backend."""
        conn: Conn | None = self.local.__dict__.get("conn")
        return conn

    def describe(self) -> str:
        if self.engine is not None:
            return self.engine.url.render_as_string(hide_password=True)
        return "external connection"


def _watched(engine: Engine) -> bool:
    """Whether anything observes this engine's statements. Asked at every checkout (a
    listener added later is honoured), so the common answer, no, must be cheap: SQLAlchemy
    flags an engine that has any event listener at all (``_has_events``, the flag it checks
    itself before dispatching)."""
    if getattr(engine, "_has_events", True) and (
        engine.dispatch.before_cursor_execute or engine.dispatch.after_cursor_execute
    ):
        return True
    # the engine's logger is its echo=True logger, or "sqlalchemy.engine.Engine": either way
    # what SQLAlchemy itself asks before logging a statement
    return bool(engine.logger.isEnabledFor(logging.INFO))


def transaction_owner(is_async: bool) -> tuple[int, int]:
    """Who may use a transaction opened now: its thread, and for the async API (whose calls
    all run in the event loop's thread) its asyncio task too. Two tasks taking turns on one
    transaction would interleave their statements on its connection, as two threads would."""
    if not is_async:
        return threading.get_ident(), 0
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop
        task = None
    return threading.get_ident(), 0 if task is None else id(task)


@dataclass
class TxState:
    """One open transaction (or savepoint) as the stores bound to it see it."""

    conn: Conn
    owner: tuple[int, int] = field(default_factory=lambda: (threading.get_ident(), 0))
    parent: TxState | None = None
    closed: bool = False

    def ended(self) -> bool:
        tx: TxState | None = self
        while tx is not None:
            if tx.closed:
                return True
            tx = tx.parent
        return False


@dataclass(frozen=True)
class Scope:
    """A backend seen from one namespace, with one key rule, optionally bound to one
    transaction: the handle the repository functions and the adapters work through."""

    backend: Backend
    namespace: str
    key_rule: Callable[[object], str] = check_key
    tx: TxState | None = None

    # -- derived scopes ------------------------------------------------------------------------
    def with_namespace(self, name: str) -> Scope:
        """The same backend (and transaction) for another namespace, store key rule."""
        return Scope(self.backend, check_namespace(name), check_key, self._child_tx())

    def derived(
        self, kind: str, name: str, key_rule: Callable[[object], str] | None = None
    ) -> Scope:
        """The scope behind a collection: its own namespace ``<namespace>/<kind>/<name>``
        (unreachable through :meth:`with_namespace`, whose names cannot contain ``/``), the
        same tables, connections, transaction and indexes, and the collection key rule (or
        ``key_rule``: a collection that checks its encoded keys itself passes
        :func:`kvstore._validate.checked_key`, so each key is checked once)."""
        check_collection_name(name)
        if key_rule is None:
            key_rule = functools.partial(
                check_collection_key, max_chars=self.backend.dialect.max_collection_key_chars
            )
        return Scope(self.backend, f"{self.namespace}/{kind}/{name}", key_rule, self._child_tx())

    def _child_tx(self) -> TxState | None:
        if self.tx is None:
            return None
        return TxState(self.tx.conn, self.tx.owner, self.tx)

    @property
    def in_transaction(self) -> bool:
        """Whether calls on this scope join a transaction rather than commit on their own:
        it is bound to one, this thread has one open on the backend, or the backend is the
        caller's Connection/Session."""
        b = self.backend
        return self.tx is not None or b.external is not None or b.active() is not None

    def key(self, key: object) -> str:
        return self.key_rule(key)

    def sql(self, statements: Statements, name: str, template: str | None = None) -> Rendered:
        return self.backend.render(statements, name, template)

    # -- connections ---------------------------------------------------------------------------
    def acquire(self) -> tuple[Conn, bool]:
        """The connection to use, and whether to give it back afterwards."""
        tx = self.tx
        if tx is not None:
            if tx.ended():
                raise TransactionError(
                    "this transaction has ended; use it only inside its with block"
                )
            if transaction_owner(self.backend.dialect.is_async) != tx.owner:
                raise TransactionError(
                    "a transaction can only be used by the thread (the asyncio task, for an "
                    "async store) that opened it"
                )
            return tx.conn, False
        b = self.backend
        active = b.local.__dict__.get("conn")  # b.active(), inlined: this is the hot path
        if active is not None:
            return active, False
        return b.checkout(), True

    def read(self, fn: Callable[[Conn], T]) -> T:
        """Run a read: on a replica's connection when the store has replicas and one has
        caught up (see :class:`Replicas`), outside any transaction; otherwise on
        :meth:`connection`'s. A replica that cannot be reached is skipped for a while and
        the read runs again on the primary (reads are idempotent)."""
        b = self.backend
        router = b.replicas
        if router is not None and self.tx is None and b.local.__dict__.get("conn") is None:
            node = router.pick()
            if node is not None:
                try:
                    conn = node.backend.checkout()
                    try:
                        return fn(conn)
                    finally:
                        node.backend.checkin(conn)
                except DatabaseUnavailableError:
                    router.failed(node)
            # a read on the primary is no write a later read must wait for: not counted
            conn = b.checkout()
            try:
                return fn(conn)
            finally:
                b.checkin(conn, counted=False)
        with self.connection() as conn:
            return fn(conn)

    def release(self, conn: Conn, release: bool) -> None:
        if release:
            self.backend.checkin(conn)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Conn]:
        conn, release = self.acquire()
        try:
            yield conn
        finally:
            if release:
                self.backend.checkin(conn)

    @contextlib.contextmanager
    def atomic_block(self, conn: Conn, *, write: bool = True) -> Iterator[None]:
        """Make a block on ``conn`` atomic: a transaction, or a savepoint inside one. A write
        block on PostgreSQL first takes the entries table's write lock (see _dialect)."""
        d = self.backend.dialect
        with conn.atomic():
            if write and d.lock_entries_for_write:
                conn.run(d.lock_entries_for_write.format(entries=self.backend.tables.entries.name))
            yield

    def atomic(self, fn: Callable[[Conn], T], *, write: bool = True) -> T:
        """Run ``fn`` in one transaction (a savepoint inside an open one), retrying on lock
        contention (see :meth:`_give_up`) when we own the transaction."""
        self.check_not_mixing()
        attempt = 0
        start = time.monotonic()
        while True:
            with self.connection() as conn:
                owned = not conn.in_tx
                try:
                    with self.atomic_block(conn, write=write):
                        return fn(conn)
                except Exception as exc:
                    attempt += 1
                    if not owned or self._give_up(conn, exc, attempt, start):
                        raise
            backoff_sleep(CONTENTION, attempt - 1)

    def single(self, fn: Callable[[Conn], T]) -> T:
        """Run one autocommitted statement (or, inside a transaction, just run it), retrying
        on lock contention as :meth:`atomic` does: SQLite's busy handler alone gives up after
        ``busy_timeout`` even where trying again would succeed."""
        self.check_not_mixing()
        attempt = 0
        start = time.monotonic()
        while True:
            # self.connection(), inlined: this is the hot path of every write
            conn, release = self.acquire()
            try:
                return fn(conn)
            except Exception as exc:
                attempt += 1
                if conn.in_tx or self._give_up(conn, exc, attempt, start):
                    raise
            finally:
                if release:
                    self.backend.checkin(conn)
            backoff_sleep(CONTENTION, attempt - 1)

    def _give_up(self, conn: Conn, exc: BaseException, attempt: int, start: float) -> bool:
        """Whether a failed attempt is final. Lock contention, deadlocks and serialization
        failures are retried under the CONTENTION policy, but only while the call has waited
        less than one lock wait (at least a second): a call never waits much longer than the
        busy timeout it was given, however often the lock slips away."""
        if attempt >= CONTENTION.attempts or not self.backend.dialect.is_retryable(exc):
            return True
        budget = max(self.backend.lock_wait(conn), 1.0)
        return time.monotonic() - start >= budget

    def check_not_mixing(self) -> None:
        b = self.backend
        if b.db_key is None or self.tx is not None:
            return
        if b.app_checkouts is None and not _open_anywhere.get(b.db_key):
            return  # neither check below can fail
        if b.active() is not None:
            return
        self.check_app_not_writing()
        if _open_in_thread(b).get(b.db_key):
            raise TransactionError(
                "this thread has a transaction open on this database through another store "
                "(another engine), holding its write lock; write through that transaction's "
                "store, or commit first - this write would wait for that lock"
            )

    def check_app_not_writing(self) -> None:
        app = self.backend.app_checkouts
        if app is not None and app.written_in_this_thread(self.backend.dialect):
            raise TransactionError(
                "this thread's own Session (or Connection) on this Engine has written to the "
                "SQLite database and holds its write lock until it commits, so a write through "
                "a store bound to the Engine would wait for it forever: bind the store to that "
                "Session (kvstore.connect(session)) to write in its transaction, or commit first"
            )

    # -- transactions --------------------------------------------------------------------------
    def transaction(self, isolation: str | None = None) -> contextlib.AbstractContextManager[Scope]:
        """A scope bound to a new transaction (a savepoint when one is open already)."""
        # an unknown level is a ValueError, always
        return self._transaction(self.backend.dialect.begin_sql(isolation), isolation)

    def snapshot(self) -> contextlib.AbstractContextManager[Scope]:
        """A scope bound to a new read-only transaction that sees one snapshot of the
        database (SQLite: a deferred transaction, which takes no write lock; PostgreSQL:
        REPEATABLE READ READ ONLY). Inside an open transaction it is a savepoint of it."""
        return self._transaction(self.backend.dialect.read_snapshot_begin, None)

    @contextlib.contextmanager
    def _transaction(self, begin_sql: str, isolation: str | None) -> Iterator[Scope]:
        b = self.backend
        if self.tx is not None:
            self.acquire()  # ended / wrong thread
            if isolation is not None:
                raise TransactionError(
                    "the isolation level can only be set on the outermost transaction"
                )
            yield from self._savepoint(self.tx.conn, self.tx)
            return
        active = b.active()
        if active is not None or b.external is not None:
            if isolation is not None and active is not None:
                raise TransactionError(
                    "the isolation level can only be set on the outermost transaction"
                )
            if isolation is not None:
                raise TransactionError(
                    "this store joins the transaction of its Connection/Session, which has "
                    "already begun: set the isolation level on that connection instead"
                )
            conn = active if active is not None else b.external
            assert conn is not None
            yield from self._savepoint(conn, None)
            return
        if b.db_key is not None and b.dialect.begin_locks_database(begin_sql):
            self.check_app_not_writing()
        conn = b.checkout()
        state = TxState(conn, transaction_owner(b.dialect.is_async))
        locks_db = False
        try:
            conn.begin(begin_sql)
            b.local.conn = conn
            # Only a transaction that holds the whole database's write lock (SQLite's
            # IMMEDIATE/EXCLUSIVE) is certain to block another engine's write; PostgreSQL's row
            # locks block only writes to the same rows, so refusing all would refuse valid ones.
            db_key = b.db_key
            locks_db = db_key is not None and b.dialect.begin_locks_database(begin_sql)
            if db_key is not None and locks_db:
                _open_in_thread(b)[db_key] = _open_in_thread(b).get(db_key, 0) + 1
                _count_open(db_key, 1)
            try:
                yield Scope(b, self.namespace, self.key_rule, state)
            except BaseException:
                conn.rollback()
                raise
            conn.commit_or_rollback()
        finally:
            state.closed = True
            if locks_db and b.db_key is not None:
                _open_in_thread(b)[b.db_key] -= 1
                _count_open(b.db_key, -1)
            b.local.conn = None
            b.checkin(conn)

    def _savepoint(self, conn: Conn, parent: TxState | None) -> Iterator[Scope]:
        owner = transaction_owner(self.backend.dialect.is_async)
        state = TxState(conn, owner, parent)
        try:
            with conn.savepoint():
                yield Scope(self.backend, self.namespace, self.key_rule, state)
        finally:
            state.closed = True


def reader_slot(backend: Backend) -> None:
    """Take one of the backend's ``open()`` reader slots, or refuse at once."""
    if backend.max_open_readers == 0 or not backend.readers.acquire(blocking=False):
        raise TooManyReadersError(
            f"{backend.max_open_readers} open() readers of large values are already open on "
            "this store, each holding a connection; close some (use them as context "
            "managers), or connect(max_open_readers=...) allows more"
        )


# -- the public facade, as the layers below it see it ------------------------------------------
# kvstore.store defines Store over a Scope and installs it here at import, so that collections
# and lists (which the store imports) can hand out stores, and open one from a URL, without
# importing kvstore.store: the import graph stays one way down.
_facade: Callable[[Scope], Any] | None = None
_connect: Callable[..., Any] | None = None


def install_facade(facade: Callable[[Scope], Any], connect: Callable[..., Any]) -> None:
    global _facade, _connect
    _facade, _connect = facade, connect


def facade(scope: Scope) -> Any:
    """The public store object over ``scope`` (a Transaction when it is bound to one)."""
    assert _facade is not None, "kvstore.store installs the facade at import"
    return _facade(scope)


def open_store(bind: Any, **options: Any) -> Any:
    """``kvstore.connect(bind, **options)``."""
    assert _connect is not None, "kvstore.store installs connect at import"
    return _connect(bind, **options)


def scope_of(obj: object) -> Scope | None:
    """The scope of a store object (None for anything else)."""
    scope = getattr(obj, "scope", None)
    return scope if isinstance(scope, Scope) else None
