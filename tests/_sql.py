"""The one place where tests reach into kvstore's internals or run SQL on kvstore's tables.

White-box tests (row counts, stored bytes, query plans, statement counts) go through these
helpers; everything else in ``tests/`` uses kvstore's public API. When kvstore's internals
change (issue 10 splits ``store.py`` into a repository layer) this module is the only test
code that has to follow.

SQL given to :func:`rows`, :func:`value`, :func:`execute` and :func:`explain` is written once
for both dialects, as kvstore writes its own:

- ``{entries}``, ``{chunks}``, ``{namespaces}``, ``{indexes}``, ``{index_entries}``,
  ``{lists}`` and ``{list_items}`` are the store's tables (with its table prefix);
- ``:name`` placeholders take the keyword arguments; ``:ns`` defaults to the store's
  namespace (:attr:`kvstore.Store.namespace_name`) and ``:now`` to the current time in
  kvstore's unit (microseconds since the epoch, as ``expires_at`` holds it).

Statements run on the connection the store itself would use: inside a transaction, the
transaction's, so they see its uncommitted writes. A store decorator stands for the store it
wraps (innermost first).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

import kvstore
from kvstore import _conn, _dialect
from kvstore.store import DEFAULT_CHUNK_SIZE as _DEFAULT_CHUNK_SIZE

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "Connection",
    "Recording",
    "Statement",
    "cache_locks",
    "cache_name",
    "check_valid_key",
    "collection_key_chars",
    "collection_store",
    "connection",
    "drop_trigger_sql",
    "engine",
    "execute",
    "explain",
    "is_retryable",
    "recorded",
    "render",
    "rows",
    "value",
]

#: values larger than this many bytes are stored in chunks, unless connect(chunk_size=...)
DEFAULT_CHUNK_SIZE: int = _DEFAULT_CHUNK_SIZE

_PARAM = r"(?<![:\w]):{}\b"
_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE|MERGE|CREATE|DROP|ALTER|TRUNCATE)\b")


# -- reaching the store's plumbing ------------------------------------------------------------
def _unwrap(store: kvstore.KeyValueStore) -> kvstore.Store:
    while isinstance(store, kvstore.StoreDecorator):
        store = store.store
    if not isinstance(store, kvstore.Store):
        raise TypeError(f"expected a kvstore Store (or decorators over one), not {store!r}")
    return store


def _backend(store: kvstore.KeyValueStore) -> Any:
    return _unwrap(store).scope.backend


def engine(store: kvstore.KeyValueStore) -> sa.Engine | None:
    """The Engine a store runs on (``None`` for one bound to a Connection or Session)."""
    e: sa.Engine | None = _backend(store).engine
    return e


def is_retryable(store: kvstore.KeyValueStore, exc: BaseException) -> bool:
    """Whether the store's dialect counts ``exc`` as "try the transaction again"."""
    return bool(_backend(store).dialect.is_retryable(exc))


def collection_key_chars(store: kvstore.KeyValueStore) -> int | None:
    """The longest collection key in characters the store's database takes (MariaDB's key
    B-trees count 4 bytes a character), or None where only the UTF-8 byte limit applies."""
    n: int | None = _backend(store).dialect.max_collection_key_chars
    return n


def check_valid_key(store: kvstore.KeyValueStore, key: object) -> None:
    """minimalkv's key-check hook (``_check_valid_key``) of any KeyValueStore."""
    store._check_valid_key(key)


def collection_store(coll: Any) -> kvstore.Store:
    """The store a collection's rows live in: the derived namespace of a PersistentDict or
    PersistentSet (``<namespace>/d/<name>``, ``<namespace>/s/<name>``), or for a
    PersistentList the store whose namespace owns its header row."""
    if isinstance(coll, kvstore.PersistentList):
        return coll.store
    if isinstance(coll, kvstore.PersistentDict | kvstore.PersistentSet):
        s: kvstore.Store = coll._s
        return s
    raise TypeError(f"not a kvstore collection: {coll!r}")


def cache_name(fn: Any) -> str:
    """The name a ``@cached`` function is stored under."""
    name: str = fn._core.name
    return name


def cache_locks(fn: Any) -> kvstore.Store:
    """The store of a ``@cached`` function's computation locks (its results are ``fn.store``)."""
    locks: kvstore.Store = fn._core.locks
    return locks


def drop_trigger_sql(dialect_name: str, table_prefix: str) -> list[str]:
    """The statements that drop kvstore's triggers (and PostgreSQL's trigger function) for a
    table prefix: to take a schema apart the way a half-finished migration would leave it."""
    return list(_dialect.drop_trigger_sql(dialect_name, table_prefix))


# -- running SQL -----------------------------------------------------------------------------
def _table_names(store: kvstore.Store) -> dict[str, str]:
    t = store.tables
    return {
        "entries": t.entries.name,
        "chunks": t.chunks.name,
        "namespaces": t.namespaces.name,
        "indexes": t.indexes.name,
        "index_entries": t.index_entries.name,
        "lists": t.lists.name,
        "list_items": t.list_items.name,
    }


def _now_us() -> int:
    return time.time_ns() // 1000


def _bind(
    store: kvstore.Store, sql: str, params: dict[str, Any]
) -> tuple[_dialect.Rendered, dict[str, Any]]:
    text = sql.format_map(_table_names(store))
    defaults: dict[str, Callable[[], Any]] = {"ns": lambda: store.namespace_name, "now": _now_us}
    for name, default in defaults.items():
        if name not in params and re.search(_PARAM.format(name), text):
            params = {**params, name: default()}
    b = _backend(store)
    # as kvstore sends its own statements (MySQL quotes the reserved word key, say)
    return _dialect.render(b.sa_dialect, b.dialect.adapt_sql(text)), params


def render(store: kvstore.KeyValueStore, sql: str) -> str:
    """``sql`` with the store's table names and the driver's placeholders, as it would run."""
    return _bind(_unwrap(store), sql, {})[0].sql


def _explain_prefix(store: kvstore.Store) -> str:
    return "EXPLAIN QUERY PLAN " if store.dialect_name == "sqlite" else "EXPLAIN "


class Connection:
    """One connection of a store (see :func:`connection`); the module's functions, bound."""

    def __init__(self, store: kvstore.Store, conn: Any) -> None:
        self._store = store
        self._conn = conn

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        text, p = _bind(self._store, sql, params)
        return [tuple(r) for r in self._conn.execute(text, p).fetchall()]

    def value(self, sql: str, **params: Any) -> Any:
        found = self.rows(sql, **params)
        if len(found) != 1:
            raise LookupError(f"expected one row, got {len(found)}: {sql}")
        return found[0][0]

    def execute(self, sql: str, **params: Any) -> int:
        text, p = _bind(self._store, sql, params)
        return int(self._conn.execute(text, p).rowcount)

    def explain(self, sql: str | Statement, **params: Any) -> str:
        if isinstance(sql, Statement):
            if params:
                raise TypeError("a recorded statement is explained with its own parameters")
            text = _dialect.Rendered(_explain_prefix(self._store) + sql.sql)
            p = sql.params[0] if sql.many else sql.params
        else:
            rendered, p = _bind(self._store, _explain_prefix(self._store) + sql, params)
            text = rendered
        plan = self._conn.execute(text, p).fetchall()
        if self._store.dialect_name in ("mysql", "mariadb"):
            # a table of (id, select_type, table, type, possible_keys, key, key_len, ref, rows,
            # Extra): one line per table read, with how (type) and through which index
            return "\n".join(f"{r[2]} type={r[3]} key={r[5]} ref={r[7]} {r[9]}" for r in plan)
        return "\n".join(str(r[-1]) for r in plan)


@contextlib.contextmanager
def connection(store: kvstore.KeyValueStore) -> Iterator[Connection]:
    """The connection the store would use for its next call, held for the block: inside a
    transaction the transaction's, otherwise one from its pool (given back afterwards)."""
    s = _unwrap(store)
    with s.scope.connection() as conn:
        yield Connection(s, conn)


def rows(store: kvstore.KeyValueStore, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Every row ``sql`` returns, as tuples."""
    with connection(store) as c:
        return c.rows(sql, **params)


def value(store: kvstore.KeyValueStore, sql: str, **params: Any) -> Any:
    """The single value of a statement that returns one row (``SELECT COUNT(*) ...``)."""
    with connection(store) as c:
        return c.value(sql, **params)


def execute(store: kvstore.KeyValueStore, sql: str, **params: Any) -> int:
    """Run a statement that returns no rows; its row count."""
    with connection(store) as c:
        return c.execute(sql, **params)


def explain(store: kvstore.KeyValueStore, sql: str | Statement, **params: Any) -> str:
    """The database's query plan, one line per plan row: SQLite's ``EXPLAIN QUERY PLAN``
    details, PostgreSQL's ``EXPLAIN`` text. ``sql`` is written as for :func:`rows`, or is a
    :class:`Statement` that :func:`recorded` caught (explained with its own parameters)."""
    with connection(store) as c:
        return c.explain(sql, **params)


# -- recording the statements a store runs ----------------------------------------------------
@dataclass
class Statement:
    """One statement as the store sent it to the driver."""

    sql: str
    params: Any
    #: executemany(): ``params`` is the list of parameter sets
    many: bool = False
    #: rows the store fetched from its result; None where that is not counted (statements
    #: that went through SQLAlchemy's Connection rather than the DBAPI connection)
    rows: int | None = 0

    @property
    def verb(self) -> str:
        """The statement's first keyword: ``SELECT``, ``INSERT``, ``BEGIN``, ``SAVEPOINT``, ..."""
        return self.sql.lstrip().split(None, 1)[0].upper() if self.sql.strip() else ""

    @property
    def is_write(self) -> bool:
        """Whether the statement can change data or schema (``SELECT ... FOR UPDATE`` only
        locks, so it is not)."""
        return bool(_WRITE.search(self.sql.replace("FOR UPDATE", "")))

    def replace(self, **params: Any) -> Statement:
        """The same statement with some parameters changed (to explain it with them)."""
        if self.many or not isinstance(self.params, dict):
            raise TypeError("only a statement with named parameters can be changed")
        return Statement(self.sql, {**self.params, **params}, rows=self.rows)

    def names(self, table: str) -> bool:
        return re.search(rf"\b{re.escape(table)}\b", self.sql) is not None


@dataclass
class Recording:
    """What :func:`recorded` saw, in the order the statements were sent."""

    statements: list[Statement] = field(default_factory=list)

    def __iter__(self) -> Iterator[Statement]:
        return iter(list(self.statements))

    def __len__(self) -> int:
        return len(self.statements)

    @property
    def sql(self) -> list[str]:
        return [s.sql for s in self.statements]

    def writes(self) -> list[Statement]:
        """The statements that can change data or schema."""
        return [s for s in self.statements if s.is_write]

    def on(self, table: str | sa.Table) -> list[Statement]:
        """The statements naming ``table`` (a Table, or its name)."""
        name = table if isinstance(table, str) else table.name
        return [s for s in self.statements if s.names(name)]

    def rows_fetched(self, statements: Sequence[Statement] | None = None) -> int:
        """How many result rows the store fetched, over ``statements`` (default: all)."""
        chosen = self.statements if statements is None else statements
        uncounted = [s.sql for s in chosen if s.rows is None]
        if uncounted:
            raise AssertionError(f"rows are not counted for these statements: {uncounted}")
        return sum(s.rows or 0 for s in chosen)


class _CountingCursor:
    """A DBAPI cursor that counts the rows fetched from it into its :class:`Statement`."""

    def __init__(self, cursor: Any, statement: Statement) -> None:
        self._cursor = cursor
        self._statement = statement

    def _count(self, n: int) -> None:
        self._statement.rows = (self._statement.rows or 0) + n

    def fetchone(self) -> Any:
        row = self._cursor.fetchone()
        if row is not None:
            self._count(1)
        return row

    def fetchall(self) -> Any:
        found = self._cursor.fetchall()
        self._count(len(found))
        return found

    def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        found = self._cursor.fetchmany(*args, **kwargs)
        self._count(len(found))
        return found

    def __iter__(self) -> Iterator[Any]:
        for row in self._cursor:
            self._count(1)
            yield row

    def __enter__(self) -> _CountingCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cursor.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@dataclass
class _Active:
    recording: Recording
    engine: sa.Engine | None


_active: list[_Active] = []
_patch_lock = threading.Lock()
_originals: dict[str, Any] = {}
_inherited: dict[str, bool] = {}


def _for(raw: Any) -> list[Recording]:
    # A DBAPI connection belongs to the engine whose pool handed it out.
    pool = raw.proxied._pool
    return [a.recording for a in list(_active) if a.engine is not None and a.engine.pool is pool]


def _note(raw: Any, statement: Statement) -> bool:
    recordings = _for(raw)
    for r in recordings:
        r.statements.append(statement)
    return bool(recordings)


def _patched() -> dict[str, Callable[..., Any]]:
    orig = _originals

    def execute(self: Any, stmt: Any, params: Any = None) -> Any:
        statement = Statement(stmt.sql, stmt.bind(params))
        seen = _note(self, statement)
        cur = orig["execute"](self, stmt, params)
        return _CountingCursor(cur, statement) if seen else cur

    def execute_bytes(self: Any, stmt: Any, params: Any = None) -> Any:
        statement = Statement(stmt.sql, stmt.bind(params))
        seen = _note(self, statement)
        cur = orig["execute_bytes"](self, stmt, params)
        return _CountingCursor(cur, statement) if seen else cur

    def executemany(self: Any, stmt: Any, params: Sequence[Any], common: Any = None) -> None:
        rows = [stmt.bind(p if common is None else {**common, **p}) for p in params]
        _note(self, Statement(stmt.sql, rows, many=True))
        orig["executemany"](self, stmt, params, common)

    def run(self: Any, sql: str) -> Any:
        _note(self, Statement(sql, ()))
        return orig["run"](self, sql)

    def rollback(self: Any) -> None:
        _note(self, Statement("ROLLBACK", ()))
        orig["rollback"](self)

    return {
        "execute": execute,
        "execute_bytes": execute_bytes,
        "executemany": executemany,
        "run": run,
        "rollback": rollback,
    }


def _install() -> None:
    # kvstore runs its own connections on the DBAPI connection (kvstore._conn.RawConn), past
    # SQLAlchemy's events while nobody listens (a listener would switch it to SQLAlchemy's
    # Connection): its methods are wrapped while a recording is active.
    raw = _conn.RawConn
    for name in ("execute", "execute_bytes", "executemany", "run", "rollback"):
        # the method as RawConn has it, its own or inherited (rollback comes from _OwnedConn)
        _originals[name] = getattr(raw, name)
        _inherited[name] = name not in raw.__dict__
    for name, fn in _patched().items():
        setattr(raw, name, fn)


def _uninstall() -> None:
    for name, fn in _originals.items():
        if _inherited[name]:
            delattr(_conn.RawConn, name)
        else:
            setattr(_conn.RawConn, name, fn)
    _originals.clear()
    _inherited.clear()


def _sa_target(store: kvstore.Store) -> sa.Engine:
    """The Engine whose SQLAlchemy Connections carry the store's statements."""
    b = store.scope.backend
    if b.engine is not None:
        e: sa.Engine = b.engine
        return e
    bind = b.external.bind
    if hasattr(bind, "get_bind"):  # a Session
        bind = bind.get_bind()
    return bind if isinstance(bind, sa.Engine) else bind.engine


@contextlib.contextmanager
def recorded(store: kvstore.KeyValueStore) -> Iterator[Recording]:
    """Record every statement the store (any store on its engine) sends while the block runs,
    from any thread, with the rows fetched from each (see :class:`Statement`).

    Statements through SQLAlchemy (a store bound to a Connection or Session, schema work) are
    caught with a ``before_cursor_execute`` event on the engine; the statements kvstore runs
    on its own DBAPI connections, by wrapping those connections' methods.
    """
    s = _unwrap(store)
    recording = Recording()
    target = _sa_target(s)

    def on_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        recording.statements.append(Statement(statement, parameters, many=many, rows=None))

    engine_bound = s.scope.backend.engine is not None
    entry = _Active(recording, s.scope.backend.engine)
    with _patch_lock:
        if not _active:
            _install()
        _active.append(entry)
    # A store on an engine runs on RawConn (wrapped above); listening on its engine would
    # switch it to SQLAlchemy's Connection and change what is recorded. A store on the
    # caller's Connection or Session runs through SQLAlchemy: its engine's event sees it.
    if not engine_bound:
        event.listen(target, "before_cursor_execute", on_execute)
    try:
        yield recording
    finally:
        if not engine_bound:
            event.remove(target, "before_cursor_execute", on_execute)
        with _patch_lock:
            _active.remove(entry)
            if not _active:
                _uninstall()
