"""The SQL key-value store: connection handling, the key-value API and transactions."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import IO, TYPE_CHECKING, Any, BinaryIO, TypeVar

from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from . import _dialect
from ._conn import Conn, ExternalConn, RawConn
from ._keys import NOT_SET, TTL, check_key, check_prefix, ttl_to_seconds
from ._schema import Tables, check_table_prefix, from_micros, tables
from .base import EntryInfo, KeyValueStore, SizedRawReader, read_source
from .errors import (
    ConflictError,
    DatabaseError,
    IndexNotDeclaredError,
    InvalidValueError,
    KVStoreError,
    NotFoundError,
    TooManyReadersError,
    TransactionError,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .collections import PersistentDict, PersistentSet
    from .indexes import IndexInfo, NamespaceIndexes
    from .lists import PersistentList

__all__ = ["Store", "Transaction", "connect"]

T = TypeVar("T")

# 256 KiB: large enough that per-statement overhead is noise, small enough that the driver
# buffers (libpq keeps its largest message buffer) and allocator slack stay a few MiB.
DEFAULT_CHUNK_SIZE = 256 << 10
_BATCH = 1000
_MAX_BIGINT = 1 << 63
#: values of at most this many chunks are read whole by open(), holding no connection
SMALL_READ_CHUNKS = 4
DEFAULT_MAX_OPEN_READERS = 8
_NAMESPACE_MAX = 100
#: SQLite's busy_timeout is a 32-bit count of milliseconds
_MAX_BUSY_TIMEOUT = (2**31 - 1) // 1000

_LIVE = "(expires_at IS NULL OR expires_at > :now)"
_GUARD = "COALESCE((SELECT index_generation FROM {n} WHERE namespace = :ns), 0) = :gen"
_COLUMNS = (
    "namespace, key, value, blob_id, size, version, created_at, updated_at, expires_at, "
    "content_type, metadata, checksum"
)
_NEW_ROW = (
    "CAST(:ns AS {text}), CAST(:key AS {text}), CAST(:value AS {bytea}), CAST(:blob_id AS {bigint}), :size, 1, :now, :now, "
    "CAST(:exp AS {bigint}), CAST(:ct AS {text}), CAST(:meta AS {json}), :sum"
)
_ON_CONFLICT = """ON CONFLICT (namespace, key) DO UPDATE SET
  value = excluded.value, blob_id = excluded.blob_id, size = excluded.size,
  version = {e}.version + 1,
  created_at = CASE WHEN {e}.expires_at IS NOT NULL AND {e}.expires_at <= excluded.updated_at
                    THEN excluded.created_at ELSE {e}.created_at END,
  updated_at = excluded.updated_at, expires_at = excluded.expires_at,
  content_type = excluded.content_type, metadata = excluded.metadata,
  checksum = excluded.checksum"""

# Every statement kvstore runs, written once for both dialects. ``{e}`` and friends are table
# names, ``{bytea}`` and friends type names (see _dialect); values are always bound parameters.
_SQL: dict[str, str] = {
    "get": f"SELECT value, blob_id, size FROM {{e}} WHERE namespace = :ns AND key = :key AND {_LIVE}",
    "has": f"SELECT 1 FROM {{e}} WHERE namespace = :ns AND key = :key AND {_LIVE}",
    "chunks": "SELECT data FROM {c} WHERE blob_id = :blob ORDER BY n",
    "chunk": "SELECT data FROM {c} WHERE blob_id = :blob AND n = :n",
    "put_chunk": "INSERT INTO {c} (blob_id, n, data) VALUES (:blob, :n, :data)",
    "copy_chunks": "INSERT INTO {c} (blob_id, n, data) SELECT :new, n, data FROM {c} WHERE blob_id = :old",
    # guarded upsert: writes nothing when the namespace's index set changed since we looked
    "upsert": f"INSERT INTO {{e}} ({_COLUMNS}) SELECT {_NEW_ROW} WHERE {_GUARD} {_ON_CONFLICT}",
    "insert_new": f"INSERT INTO {{e}} ({_COLUMNS}) SELECT {_NEW_ROW} WHERE {_GUARD} {_ON_CONFLICT}"
    " WHERE {e}.expires_at IS NOT NULL AND {e}.expires_at <= excluded.updated_at",
    "update_cas": """UPDATE {e} SET value = CAST(:value AS {bytea}), blob_id = CAST(:blob_id AS {bigint}),
  size = :size, version = version + 1, updated_at = :now, expires_at = CAST(:exp AS {bigint}),
  content_type = CAST(:ct AS {text}), metadata = CAST(:meta AS {json}), checksum = :sum
  WHERE namespace = :ns AND key = :key AND version = :ev AND """
    + _LIVE
    + " AND "
    + _GUARD,
    "version": f"SELECT version FROM {{e}} WHERE namespace = :ns AND key = :key AND {_LIVE}",
    "generation": "SELECT index_generation FROM {n} WHERE namespace = :ns",
    "delete": "DELETE FROM {e} WHERE namespace = :ns AND key = :key",
    "delete_cas": f"DELETE FROM {{e}} WHERE namespace = :ns AND key = :key AND version = :ev AND {_LIVE}",
    "count": f"SELECT COUNT(*) FROM {{e}} WHERE namespace = :ns AND {_LIVE}",
    "stat": f"""SELECT key, size, version, created_at, updated_at, expires_at, content_type,
  metadata, checksum FROM {{e}} WHERE namespace = :ns AND key = :key AND {_LIVE}""",
    "lock_row": f"""SELECT value, blob_id, version, expires_at, size, metadata, content_type
  FROM {{e}} WHERE namespace = :ns AND key = :key AND {_LIVE}""",
    "purge_batch": """DELETE FROM {e} WHERE namespace = :ns AND key IN (
  SELECT key FROM {e} WHERE namespace = :ns AND expires_at <= :now ORDER BY key LIMIT :limit)""",
    "copy_entry": f"""INSERT INTO {{e}} ({_COLUMNS})
  SELECT namespace, :dest, value, CAST(:new_blob AS {{bigint}}), size, 1, :now, :now, expires_at,
         content_type, metadata, checksum
  FROM {{e}} WHERE namespace = :ns AND key = :key AND {_LIVE} {_ON_CONFLICT}""",
    "rename": "UPDATE {e} SET key = :dest, version = :version, updated_at = :now "
    "WHERE namespace = :ns AND key = :key",
    "index_entries_delete": "DELETE FROM {ie} WHERE key = :key AND index_id IN "
    "(SELECT id FROM {ix} WHERE namespace = :ns)",
    "index_entries_copy": "INSERT INTO {ie} (index_id, ivalue, uvalue, key) "
    "SELECT index_id, ivalue, uvalue, :dest FROM {ie} WHERE key = :key AND index_id IN "
    "(SELECT id FROM {ix} WHERE namespace = :ns)",
    "index_entries_rename": "UPDATE {ie} SET key = :dest WHERE key = :key AND index_id IN "
    "(SELECT id FROM {ix} WHERE namespace = :ns)",
    "index_entry_insert": "INSERT INTO {ie} (index_id, ivalue, uvalue, key) "
    "VALUES (:index_id, :ivalue, :uvalue, :key)",
}


# Databases on which this thread has a transaction open, by any store: a write through
# another store (another engine) on the same database would wait for that transaction's own
# locks - until SQLite's busy timeout, or forever on a PostgreSQL row lock.
_open_transactions = threading.local()


def _open_in_thread() -> dict[str, int]:
    d: dict[str, int] | None = _open_transactions.__dict__.get("dbs")
    if d is None:
        d = _open_transactions.dbs = {}
    return d


class _Retry(Exception):
    """Internal: run the operation's transaction again."""


def _now_us() -> int:
    return time.time_ns() // 1000


class _Backend:
    """What every store object on one ``connect()`` shares: connections, SQL, index state."""

    def __init__(
        self,
        bind: Engine | Connection | Session,
        *,
        owns_engine: bool,
        table_prefix: str,
        sqlite_synchronous: str,
        busy_timeout: float,
        chunk_size: int,
        max_open_readers: int = DEFAULT_MAX_OPEN_READERS,
    ) -> None:
        self.tables: Tables = tables(check_table_prefix(table_prefix))
        self.max_open_readers = max_open_readers
        self.readers = threading.BoundedSemaphore(max_open_readers)
        self.owns_engine = owns_engine
        self.chunk_size = chunk_size
        self.options = {"synchronous": sqlite_synchronous, "busy_timeout": busy_timeout}
        self.external: ExternalConn | None = None
        self.engine: Engine | None = None
        if isinstance(bind, Engine):
            self.engine = bind
            self.dialect = _dialect.for_engine(bind)
        elif isinstance(bind, Connection):
            self.dialect = _dialect.for_name(bind.dialect.name)
            self.external = ExternalConn(bind, self.dialect)
        elif _is_session(bind):
            self.dialect = _dialect.for_name(bind.get_bind().dialect.name)
            self.external = ExternalConn(bind, self.dialect)
        else:
            raise TypeError(
                "connect() takes a database URL, an Engine, a Connection or a Session, "
                f"not {type(bind).__name__}"
            )
        self.dialect.check_table_prefix(self.tables.prefix)
        memory = self.engine is not None and _is_memory(self.engine)
        # An in-memory SQLite database exists once per connection: everything must share one.
        self._slots = threading.BoundedSemaphore(1) if memory else None
        self.single_connection = memory or self.external is not None
        self._idle: list[RawConn] = []
        self._lock = threading.Lock()
        self.local = threading.local()
        self.closed = False
        self._sql: dict[str, str] = {}
        t = self.tables
        types = self._type_names()
        self._fmt = {
            "e": t.entries.name,
            "c": t.chunks.name,
            "n": t.namespaces.name,
            "ix": t.indexes.name,
            "ie": t.index_entries.name,
            "l": t.lists.name,
            "li": t.list_items.name,
            "entries": t.entries.name,
            **types,
        }
        # index state, per namespace: see indexes.NamespaceIndexes
        self.index_state: dict[str, NamespaceIndexes] = {}
        self.reopen: dict[str, Any] | None = None
        # which database this is, to spot two stores on one database in one transaction
        self.db_key = (
            None
            if self.engine is None or memory
            else self.engine.url.render_as_string(hide_password=True)
        )
        self.declared: dict[tuple[str, str], Callable[[bytes], Any]] = {}

    def _type_names(self) -> dict[str, str]:
        if self.dialect.name == "postgresql":
            return {"bytea": "BYTEA", "bigint": "BIGINT", "text": "TEXT", "json": "JSON"}
        return {"bytea": "BLOB", "bigint": "INTEGER", "text": "TEXT", "json": "TEXT"}

    def sql(self, name: str, template: str | None = None) -> str:
        """Driver-ready SQL for a named statement, rendered once per backend."""
        try:
            return self._sql[name]
        except KeyError:
            text = (template if template is not None else _SQL[name]).format(**self._fmt)
            out = self._sql[name] = self.dialect.sql(text)
            return out

    # -- connections ---------------------------------------------------------------------------
    def checkout(self) -> Conn:
        if self.external is not None:
            return self.external
        if self.closed:
            raise KVStoreError("this store is closed")
        if self._slots is not None and not self._slots.acquire(timeout=60):
            raise TransactionError(
                "timed out waiting for the in-memory database's only connection; is "
                "another thread holding a transaction or an open() reader?"
            )
        # list.pop/append are atomic under the GIL: the idle list needs no lock of its own.
        try:
            return self._idle.pop()
        except IndexError:
            pass
        assert self.engine is not None
        try:
            return RawConn(self.engine.raw_connection(), self.dialect, self.options)
        except sa_exc.TimeoutError as exc:
            if self._slots is not None:
                self._slots.release()
            raise DatabaseError(
                f"no database connection became free in time: the engine's pool is exhausted "
                f"({exc}); open() readers of large values, long transactions and other users "
                "of the same Engine hold them",
                exc,
            ) from exc
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def checkin(self, conn: Conn) -> None:
        if conn is self.external:
            return
        assert isinstance(conn, RawConn)
        if conn.in_tx:
            conn.rollback()
        if not conn.broken and conn.closed:
            conn.broken = True  # the server dropped it: invalidate rather than reuse
        # Idle connections stay checked out of the engine's pool: fine for an engine the store
        # owns, but a caller's Engine would run short, and an in-memory database's only
        # connection must go back with the driver's autocommit setting restored.
        if (
            not conn.broken
            and not self.closed
            and self.owns_engine
            and self._slots is None
            and len(self._idle) < 8
        ):
            self._idle.append(conn)
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
        if self.owns_engine and self.engine is not None:
            self.engine.dispose()


def _is_session(bind: object) -> bool:
    # Checked by name so that stores bound to engines never import sqlalchemy.orm.
    return any(
        c.__name__ == "Session" and c.__module__.startswith("sqlalchemy.orm")
        for c in type(bind).__mro__
    )


def _is_memory(engine: Engine) -> bool:
    url = engine.url
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


class Store(KeyValueStore):
    """A key-value store in SQL tables, for one namespace. Create it with :func:`connect`."""

    #: validates a key at the public boundary; collections swap in their own rule
    _key = staticmethod(check_key)

    def __init__(self, backend: _Backend, namespace: str, *, root: bool = False) -> None:
        self._b = backend
        self._ns = namespace
        self._root = root
        self.default_ttl_secs = NOT_SET

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def namespace_name(self) -> str:
        return self._ns

    @property
    def dialect_name(self) -> str:
        return self._b.dialect.name

    @property
    def tables(self) -> Tables:
        return self._b.tables

    def __reduce__(self) -> tuple[Any, ...]:
        """A store opened from a URL pickles as "connect to that URL again" (for
        multiprocessing, and decorators that wrap it); its data stays in the database."""
        reopen = self._b.reopen
        if reopen is None or type(self) is not Store:
            raise TypeError(
                "only a store opened from a URL can be pickled (it reconnects when "
                "unpickled); one bound to an Engine, Connection, Session or transaction cannot"
            )
        return (_reconnect, (reopen, self._ns, self.default_ttl_secs))

    def namespace(self, name: str) -> Store:
        """A store on the same tables and connection for another namespace."""
        store = Store(self._b, _check_namespace(name))
        store.default_ttl_secs = self.default_ttl_secs
        return store

    def _derived(self, kind: str, name: str) -> Store:
        """The store behind a collection: its own namespace ``<namespace>/<kind>/<name>``
        (unreachable through :meth:`namespace`, whose names cannot contain ``/``), the same
        tables, connections, transactions and indexes, and the collection key rule."""
        if not isinstance(name, str) or not name or len(name) > 120 or "\x00" in name:
            raise ValueError(f"collection names are 1-120 characters without NUL, got {name!r}")
        store = _CollectionStore(self._b, f"{self._ns}/{kind}/{name}")
        if isinstance(self, Transaction):
            return store._bind_transaction(self)
        return store

    def _acquire(self) -> tuple[Conn, bool]:
        """The connection to use, and whether to give it back afterwards."""
        active = self._b.local.__dict__.get("conn")
        if active is not None:
            return active, False
        return self._b.checkout(), True

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Conn]:
        conn, release = self._acquire()
        try:
            yield conn
        finally:
            if release:
                self._b.checkin(conn)

    @contextlib.contextmanager
    def _atomic(self, conn: Conn, *, write: bool = True) -> Iterator[None]:
        d = self._b.dialect
        with conn.atomic():
            if write and d.lock_entries_for_write:
                conn.execute(d.lock_entries_for_write.format(entries=self._b.tables.entries.name))
            yield

    def _run_atomic(self, fn: Callable[[Conn], T], *, write: bool = True) -> T:
        """Run ``fn`` in one transaction (a savepoint inside an open one), retrying on lock
        contention when we own the transaction."""
        self._check_not_mixing()
        attempt = 0
        while True:
            with self._connection() as conn:
                owned = not conn.in_tx
                try:
                    with self._atomic(conn, write=write):
                        return fn(conn)
                except Exception as exc:
                    if owned and attempt < 8 and self._b.dialect.is_retryable(exc):
                        attempt += 1
                        time.sleep(min(0.5, 0.01 * 2**attempt) * random.random())
                        continue
                    raise

    def _check_not_mixing(self) -> None:
        b = self._b
        if b.db_key is None or b.local.__dict__.get("conn") is not None:
            return
        if _open_in_thread().get(b.db_key):
            raise TransactionError(
                "this thread has a transaction open on this database through another store "
                "(another engine), holding its write lock; write through that transaction's "
                "store, or commit first - this write would wait for that lock"
            )

    def _run_single(self, fn: Callable[[Conn], T]) -> T:
        """Run one autocommitted statement (or, inside a transaction, just run it), retrying on
        lock contention as :meth:`_run_atomic` does: SQLite's busy handler alone gives up
        after ``busy_timeout``."""
        self._check_not_mixing()
        attempt = 0
        while True:
            with self._connection() as conn:
                try:
                    return fn(conn)
                except Exception as exc:
                    if conn.in_tx or attempt >= 8 or not self._b.dialect.is_retryable(exc):
                        raise
            attempt += 1
            time.sleep(min(0.5, 0.01 * 2**attempt) * random.random())

    def close(self) -> None:
        """Release the store's connections (and its engine, if it created it)."""
        if self._root:
            self._b.close()

    def __enter__(self) -> Store:
        return self

    def __repr__(self) -> str:
        where = (
            self._b.engine.url.render_as_string(hide_password=True)
            if self._b.engine
            else "external connection"
        )
        return f"<kvstore.Store {where} namespace={self._ns!r}>"

    # -- reading -------------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        """Return the value of ``key``; ``KeyError`` when it is missing or expired."""
        key = self._key(key)
        b = self._b
        params = {"ns": self._ns, "key": key, "now": _now_us()}
        conn, release = self._acquire()
        try:
            row = conn.execute(b.sql("get"), params).fetchone()
            if row is None:
                raise NotFoundError(key)
            if row[1] is None:
                return bytes(row[0])
            return self._read_blob(conn, key, row[1], row[2])
        finally:
            if release:
                b.checkin(conn)

    def _read_blob(self, conn: Conn, key: str, blob_id: int, size: int) -> bytes:
        rows = conn.execute_bytes(self._b.sql("chunks"), {"blob": blob_id}).fetchall()
        data = b"".join(bytes(r[0]) for r in rows)
        if len(data) != size:
            # Blob ids are never reused, so a short read means the value was replaced (and its
            # chunks deleted) between our two statements: read the new value instead.
            return self.get(key)
        return data

    def __contains__(self, key: object) -> bool:
        key = self._key(key)
        with self._connection() as conn:
            params = {"ns": self._ns, "key": key, "now": _now_us()}
            return conn.execute(self._b.sql("has"), params).fetchone() is not None

    def __len__(self) -> int:
        with self._connection() as conn:
            row = conn.execute(self._b.sql("count"), {"ns": self._ns, "now": _now_us()}).fetchone()
            return int(row[0])

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix`` in code-point order, fetched in batches by key range
        (keyset pagination), so memory stays flat and no connection is held between batches."""
        check_prefix(prefix)
        after: str | None = None
        while True:
            batch = self._key_batch(prefix, after, _BATCH)
            yield from batch
            if len(batch) < _BATCH:
                return
            after = batch[-1]

    def _key_batch(
        self, prefix: str, after: str | None, limit: int, inclusive: bool = False
    ) -> list[str]:
        hi = _prefix_upper(prefix) if prefix else None
        conds = ["namespace = :ns", _LIVE]
        params: dict[str, Any] = {"ns": self._ns, "now": _now_us(), "limit": limit}
        if after is not None:
            conds.append("key >= :after" if inclusive else "key > :after")
            params["after"] = after
        if prefix:
            conds.append("key >= :lo")
            params["lo"] = prefix
        if hi is not None:
            conds.append("key < :hi")
            params["hi"] = hi
        name = f"keys:{after is not None}:{inclusive}:{bool(prefix)}:{hi is not None}"
        sql = self._b.sql(
            name, "SELECT key FROM {e} WHERE " + " AND ".join(conds) + " ORDER BY key LIMIT :limit"
        )
        with self._connection() as conn:
            return [r[0] for r in conn.execute(sql, params).fetchall()]

    def keys(self, prefix: str = "") -> list[str]:
        """All live keys starting with ``prefix`` (exact, case-sensitive), sorted."""
        return list(self.iter_keys(prefix))

    def iter_prefixes(self, delimiter: str, prefix: str = "") -> Iterator[str]:
        """minimalkv's ``iter_prefixes``, as a skip scan: after yielding a common prefix the
        next query starts past every key that shares it, so a namespace of many keys under
        few prefixes costs a few index seeks, not a scan."""
        check_prefix(prefix)
        if not isinstance(delimiter, str) or not delimiter:
            raise ValueError("delimiter must be a non-empty string")
        after: str | None = None
        inclusive = False
        while True:
            batch = self._key_batch(prefix, after, 100, inclusive)
            skip_to: str | None = None
            for key in batch:
                pos = key.find(delimiter, len(prefix))
                if pos == -1:
                    yield key
                    continue
                common = key[: pos + len(delimiter)]
                yield common
                skip_to = _prefix_upper(common)
                break
            if skip_to is not None:
                after, inclusive = skip_to, True
            elif len(batch) < 100:
                return
            else:
                after, inclusive = batch[-1], False

    def stat(self, key: str) -> EntryInfo:
        key = self._key(key)
        with self._connection() as conn:
            params = {"ns": self._ns, "key": key, "now": _now_us()}
            row = conn.execute(self._b.sql("stat"), params).fetchone()
        if row is None:
            raise NotFoundError(key)
        return EntryInfo(
            key=row[0],
            size=int(row[1]),
            version=int(row[2]),
            created_at=from_micros(row[3]),
            updated_at=from_micros(row[4]),
            expires_at=None if row[5] is None else from_micros(row[5]),
            content_type=row[6],
            metadata=self._b.dialect.load_json(row[7]) or {},
            checksum=row[8],
        )

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Values of the given keys that exist, in one query per batch of keys."""
        wanted = list(dict.fromkeys(self._key(k) for k in _iterable(keys, "keys")))
        out: dict[str, bytes] = {}
        step = self._b.dialect.max_params - 10
        with self._connection() as conn:
            for i in range(0, len(wanted), step):
                part = wanted[i : i + step]
                marks = ", ".join(f":k{j}" for j in range(len(part)))
                sql = self._b.sql(
                    f"get_many:{len(part)}",
                    f"SELECT key, value, blob_id, size FROM {{e}} WHERE namespace = :ns AND {_LIVE}"
                    f" AND key IN ({marks})",
                )
                params: dict[str, Any] = {f"k{j}": k for j, k in enumerate(part)}
                params.update(ns=self._ns, now=_now_us())
                for key, value, blob_id, size in conn.execute(sql, params).fetchall():
                    out[key] = (
                        bytes(value)
                        if blob_id is None
                        else self._read_blob(conn, key, blob_id, size)
                    )
        return {k: out[k] for k in wanted if k in out}

    def open(self, key: str) -> BinaryIO:
        """A readable, seekable binary file over the value of ``key``, streamed from the
        database chunk by chunk. Large values are read from one snapshot: replacing the value
        while the file is open does not change what it reads.

        A value of up to :data:`SMALL_READ_CHUNKS` chunks is read whole and holds nothing.
        A larger one holds a connection (its snapshot) until the file is closed, and at most
        ``max_open_readers`` such files may be open per ``connect()``: one more is refused at
        once with :class:`TooManyReadersError`, so readers can never starve the store's
        other calls of connections.
        """
        key = self._key(key)
        b = self._b
        conn, release = self._acquire()
        try:
            params = {"ns": self._ns, "key": key, "now": _now_us()}
            row = conn.execute(b.sql("get"), params).fetchone()
            if row is None:
                raise NotFoundError(key)
            if row[1] is None:
                return _ValueReader(bytes(row[0]))
            if not release or b.single_connection or row[2] <= SMALL_READ_CHUNKS * b.chunk_size:
                # Small, or no connection to spare for a snapshot: read it whole (a value is
                # replaced atomically, so this is consistent too).
                return _ValueReader(self._read_blob(conn, key, row[1], row[2]))
            if not b.readers.acquire(blocking=False):
                raise TooManyReadersError(
                    f"{b.max_open_readers} open() readers of large values are already open on "
                    "this store, each holding a connection; close some (use them as context "
                    "managers), or connect(max_open_readers=...) allows more"
                )
            try:
                conn.begin(b.dialect.read_snapshot_begin)
                row = conn.execute(b.sql("get"), params).fetchone()
                if row is None:
                    raise NotFoundError(key)
                if row[1] is None:
                    return _ValueReader(bytes(row[0]))
                raw = _BlobRaw(self, conn, key, row[1], row[2])
            except BaseException:
                b.readers.release()
                raise
            release = False  # the reader gives the connection (and its slot) back when closed
            return io.BufferedReader(raw, buffer_size=min(b.chunk_size, 1 << 16))
        finally:
            if release:
                b.checkin(conn)

    # -- writing -------------------------------------------------------------------------------
    def put(
        self,
        key: str,
        data: bytes,
        ttl_secs: TTL = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        expected_version: int | None = None,
    ) -> str:
        """Store ``data`` under ``key`` (one upsert statement) and return the key.

        ``expected_version`` makes it a compare-and-set: ``0`` means "must not exist", ``n``
        means "must be at version n", else :class:`ConflictError` and nothing is written.
        """
        key = self._key(key)
        data = _check_value(key, data)
        fields = self._fields(ttl_secs, metadata, content_type)
        ev = _check_version(expected_version)
        if len(data) > self._b.chunk_size:
            self._put_stream(key, io.BytesIO(data), fields, ev)
            return key
        fields.update(
            value=data, blob_id=None, size=len(data), sum=hashlib.sha256(data).hexdigest()
        )
        self._write(key, fields, ev, lambda: data)
        return key

    def _fields(self, ttl_secs: Any, metadata: Any, content_type: Any) -> dict[str, Any]:
        ttl = ttl_to_seconds(ttl_secs, self.default_ttl_secs)
        now = _now_us()
        exp = None if ttl is None else now + int(ttl * 1_000_000)
        return {
            "now": now,
            "exp": exp,
            "meta": _check_metadata(metadata),
            "ct": _check_content_type(content_type),
        }

    def _write(
        self,
        key: str,
        fields: dict[str, Any],
        expected_version: int | None,
        value: Callable[[], bytes],
        conn: Conn | None = None,
    ) -> None:
        """Write one entry, keeping the namespace's indexes in step.

        The common case (no indexes) is a single guarded statement, inside a transaction or
        not: it writes only if the namespace's index generation is still the one we know, so
        another process's ``create_index`` can never be missed, and being one statement it
        needs no savepoint. Otherwise the write, its compare-and-set check and its index
        entries run in one transaction (or savepoint).
        """
        b = self._b
        params = dict(fields, ns=self._ns, key=key)
        if conn is None and expected_version is None:
            state = self._index_state()
            if not state.specs and not state.undeclared:

                def fast(c: Conn) -> bool:
                    params["gen"] = state.generation
                    return bool(c.execute(b.sql("upsert"), params).rowcount == 1)

                if self._run_single(fast):
                    return
                self._refresh_index_state()
        if conn is not None:
            self._write_in(conn, key, params, expected_version, value)
            return
        # write=False: the guarded statement takes the table lock itself (see _write_in)
        self._run_atomic(
            lambda c: self._write_in(c, key, params, expected_version, value), write=False
        )

    def _write_in(
        self,
        conn: Conn,
        key: str,
        params: dict[str, Any],
        expected_version: int | None,
        value: Callable[[], bytes],
    ) -> None:
        """Write one entry and its index entries on ``conn``, inside a transaction.

        The guarded statement is the first of the transaction to touch the entries table: on
        PostgreSQL it takes the table's write lock, which conflicts with an index build's, and
        it checks the index generation in the same statement, so neither a LOCK nor a
        generation query is needed here. When it writes nothing, either the namespace's
        indexes changed (refresh and write again) or the compare-and-set failed.
        """
        b = self._b
        state = self._index_state(conn)  # cached; loaded on this connection if not yet
        for _ in range(5):
            if state.undeclared:
                raise IndexNotDeclaredError(self._ns, state.undeclared)
            rows = state.rows_for(key, value) if state.specs else []
            params["gen"] = state.generation
            if expected_version is None:
                n = conn.execute(b.sql("upsert"), params).rowcount
            elif expected_version == 0:
                n = conn.execute(b.sql("insert_new"), params).rowcount
            else:
                n = conn.execute(b.sql("update_cas"), dict(params, ev=expected_version)).rowcount
            if n == 1:
                break
            fresh = self._refresh_index_state(conn)
            if fresh.generation == state.generation and expected_version is not None:
                raise ConflictError(key, expected_version, self._version(conn, key))
            state = fresh
        else:
            raise TransactionError(f"the indexes of namespace {self._ns!r} kept changing")
        if state.specs:
            conn.execute(b.sql("index_entries_delete"), {"ns": self._ns, "key": key})
            self._insert_index_rows(conn, state, key, rows)

    def _insert_index_rows(
        self, conn: Conn, state: NamespaceIndexes, key: str, rows: list[dict[str, Any]]
    ) -> None:
        if not rows:
            return
        if all(r["uvalue"] is None for r in rows):
            # (index_id, ivalue, key) cannot collide: the key's old entries are gone and the
            # rows are distinct, so no savepoint (two round trips) is needed
            conn.executemany(self._b.sql("index_entry_insert"), rows)
            return
        for attempt in range(2):
            try:
                with conn.savepoint():
                    conn.executemany(self._b.sql("index_entry_insert"), rows)
                return
            except Exception as exc:
                if not self._b.dialect.is_unique_violation(exc):
                    raise
                # An expired entry keeps its index entries until it is purged; it must not
                # hold a unique value against a live one, so purge it and try again.
                expired = state.expired_holders(self, conn, key, rows) if attempt == 0 else []
                for holder in expired:
                    conn.execute(self._b.sql("delete"), {"ns": self._ns, "key": holder})
                if not expired:
                    raise state.unique_violation(self, conn, key, rows) from None

    def _version(self, conn: Conn, key: str) -> int:
        row = conn.execute(
            self._b.sql("version"), {"ns": self._ns, "key": key, "now": _now_us()}
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _index_state(self, conn: Conn | None = None, check: bool = False) -> NamespaceIndexes:
        """The namespace's indexes as this process knows them; with ``check``, confirmed
        against the database inside the caller's transaction."""
        state = self._b.index_state.get(self._ns)
        if state is None or check:
            if check and state is not None and conn is not None:
                row = conn.execute(self._b.sql("generation"), {"ns": self._ns}).fetchone()
                if (0 if row is None else int(row[0])) == state.generation:
                    return state
            state = self._refresh_index_state(conn)
        return state

    def _refresh_index_state(self, conn: Conn | None = None) -> NamespaceIndexes:
        from .indexes import load_state

        if conn is None:
            with self._connection() as c:
                state = load_state(self, c)
        else:
            state = load_state(self, conn)
        self._b.index_state[self._ns] = state
        return state

    def put_file(
        self,
        key: str,
        file: str | os.PathLike[str] | IO[bytes],
        ttl_secs: TTL = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> str:
        """Store a file's contents, streamed in chunks: memory stays flat whatever its size."""
        key = self._key(key)
        fields = self._fields(ttl_secs, metadata, content_type)
        src, own = read_source(file)
        try:
            self._put_stream(key, src, fields, None)
        finally:
            if own:
                src.close()
        return key

    def _put_stream(
        self, key: str, src: IO[bytes], fields: dict[str, Any], expected_version: int | None
    ) -> None:
        b = self._b
        size = b.chunk_size
        first = _read_exactly(src, size + 1)
        if len(first) <= size:  # small: one inline statement, like put()
            fields.update(
                value=first, blob_id=None, size=len(first), sum=hashlib.sha256(first).hexdigest()
            )
            self._write(key, fields, expected_version, lambda: first)
            return

        def chunks() -> Iterator[bytes]:
            buf, rest = first[:size], first[size:]
            while buf:
                yield buf
                buf = rest + _read_exactly(src, size - len(rest))
                rest = b""

        def write(conn: Conn) -> None:
            blob_id, total, checksum = self._insert_chunks(conn, chunks())
            fields.update(value=None, blob_id=blob_id, size=total, sum=checksum)
            params = dict(fields, ns=self._ns, key=key)
            # Index extractors see the whole value: only namespaces with indexes pay for it.
            self._write_in(
                conn,
                key,
                params,
                expected_version,
                lambda: self._read_blob(conn, key, blob_id, total),
            )

        if not _seekable(src):
            # A stream cannot be replayed, so no retry: run it once.
            with self._connection() as conn, self._atomic(conn, write=False):
                write(conn)
            return
        start = src.tell() - len(first)

        def attempt(conn: Conn) -> None:
            nonlocal first
            src.seek(start)
            first = _read_exactly(src, size + 1)
            write(conn)

        self._run_atomic(attempt, write=False)

    def delete(self, key: str, *, expected_version: int | None = None) -> None:
        """Delete ``key`` (no error when it is missing); its chunks and index entries go with it
        in the same statement, by trigger."""
        key = self._key(key)
        ev = _check_version(expected_version)
        if ev is None:
            self._run_single(
                lambda conn: conn.execute(self._b.sql("delete"), {"ns": self._ns, "key": key})
            )
            return
        if ev == 0:
            with self._connection() as conn:
                actual = self._version(conn, key)
            if actual:
                raise ConflictError(key, 0, actual)
            return

        def cas(conn: Conn) -> None:
            params = {"ns": self._ns, "key": key, "ev": ev, "now": _now_us()}
            if conn.execute(self._b.sql("delete_cas"), params).rowcount != 1:
                raise ConflictError(key, ev, self._version(conn, key))

        self._run_atomic(cas)

    def put_many(
        self,
        items: Mapping[str, bytes] | Iterable[tuple[str, bytes]],
        ttl_secs: TTL = None,
    ) -> list[str]:
        """Write many entries in one transaction: all of them, or (on any error) none."""
        pairs = list(items.items() if isinstance(items, Mapping) else _iterable(items, "items"))
        checked: list[tuple[str, bytes]] = []
        for pair in pairs:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise TypeError(f"put_many takes (key, value) pairs, got {pair!r}")
            key = self._key(pair[0])
            checked.append((key, _check_value(key, pair[1])))
        fields = self._fields(ttl_secs, None, None)
        if not checked:
            return []
        # A key given twice keeps its last value (as dict.update does), whatever the sizes:
        # large and small values are written in separate passes below.
        unique = list(dict(checked).items())

        def write(conn: Conn) -> None:
            state = self._index_state(conn, check=True)
            if state.undeclared:
                raise IndexNotDeclaredError(self._ns, state.undeclared)
            big = [(k, v) for k, v in unique if len(v) > self._b.chunk_size]
            small = [(k, v) for k, v in unique if len(v) <= self._b.chunk_size]
            rows = []
            for k, v in small:
                rows.append(
                    dict(
                        fields,
                        ns=self._ns,
                        key=k,
                        value=v,
                        blob_id=None,
                        size=len(v),
                        sum=hashlib.sha256(v).hexdigest(),
                        gen=state.generation,
                    )
                )
            index_rows = {k: state.rows_for(k, _const(v)) for k, v in small} if state.specs else {}
            conn.executemany(self._b.sql("upsert"), rows)
            for k, v in big:
                self._put_stream_in(conn, k, v, fields)
            if state.specs:
                from .indexes import insert_entries

                for k in index_rows:
                    conn.execute(self._b.sql("index_entries_delete"), {"ns": self._ns, "key": k})
                insert_entries(self, conn, state, index_rows)

        self._run_atomic(write)
        return [k for k, _ in checked]

    def _insert_chunks(self, conn: Conn, chunks: Iterable[bytes]) -> tuple[int, int, str]:
        """Store a large value's chunks under a new blob id; (blob id, size, SHA-256 hex).

        Every chunk but the last must be exactly chunk_size: readers find byte i in chunk
        i // chunk_size without an offset table."""
        blob_id = secrets.randbits(62) + 1
        digest = hashlib.sha256()
        total = 0
        sql = self._b.sql("put_chunk")
        for n, buf in enumerate(chunks):
            digest.update(buf)
            total += len(buf)
            conn.execute(sql, {"blob": blob_id, "n": n, "data": buf})
        return blob_id, total, digest.hexdigest()

    def _put_stream_in(self, conn: Conn, key: str, data: bytes, fields: dict[str, Any]) -> None:
        size = self._b.chunk_size
        view = memoryview(data)
        blob_id, total, checksum = self._insert_chunks(
            conn, (bytes(view[i : i + size]) for i in range(0, len(data), size))
        )
        params = dict(
            fields, ns=self._ns, key=key, value=None, blob_id=blob_id, size=total, sum=checksum
        )
        self._write_in(conn, key, params, None, lambda: data)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete many keys in one transaction."""
        wanted = list(dict.fromkeys(self._key(k) for k in _iterable(keys, "keys")))
        if not wanted:
            return
        step = self._b.dialect.max_params - 10

        def run(conn: Conn) -> None:
            for i in range(0, len(wanted), step):
                part = wanted[i : i + step]
                marks = ", ".join(f":k{j}" for j in range(len(part)))
                sql = self._b.sql(
                    f"delete_many:{len(part)}",
                    f"DELETE FROM {{e}} WHERE namespace = :ns AND key IN ({marks})",
                )
                params: dict[str, Any] = {f"k{j}": k for j, k in enumerate(part)}
                params["ns"] = self._ns
                conn.execute(sql, params)

        self._run_atomic(run)

    def copy(self, source: str, dest: str) -> str:
        """Copy ``source`` to ``dest`` (value, metadata, content type, expiry) atomically."""
        source, dest = self._key(source), self._key(dest)
        if source == dest:
            if source not in self:
                raise NotFoundError(source)
            return dest

        def run(conn: Conn) -> None:
            b = self._b
            params = {"ns": self._ns, "key": source, "now": _now_us()}
            row = self._lock_row(conn, source, required=True)
            new_blob = None
            if row[1] is not None:
                new_blob = secrets.randbits(62) + 1
                conn.execute(b.sql("copy_chunks"), {"new": new_blob, "old": row[1]})
            conn.execute(b.sql("copy_entry"), dict(params, dest=dest, new_blob=new_blob))
            self._copy_index_entries(conn, source, dest, "index_entries_copy")

        self._run_atomic(run)
        return dest

    def _copy_index_entries(self, conn: Conn, source: str, dest: str, how: str) -> None:
        # The value is the same, so its index entries are too: copy them rather than running
        # the extractors, which also keeps indexes this process has not declared exact.
        state = self._index_state(conn, check=True)
        if not state.specs and not state.undeclared:
            return
        b = self._b
        conn.execute(b.sql("index_entries_delete"), {"ns": self._ns, "key": dest})
        try:
            with conn.savepoint():
                conn.execute(b.sql(how), {"ns": self._ns, "key": source, "dest": dest})
        except Exception as exc:
            if not b.dialect.is_unique_violation(exc):
                raise
            raise state.unique_violation(self, conn, dest, None) from None

    def _lock_row(self, conn: Conn, key: str, *, required: bool = False) -> Any:
        """The live row of ``key``, locked until the transaction ends (SQLite's write
        transactions are exclusive already); ``None`` or NotFoundError when missing."""
        b = self._b
        params = {"ns": self._ns, "key": key, "now": _now_us()}
        row = conn.execute(b.sql("lock_row") + b.dialect.for_update, params).fetchone()
        if row is None and required:
            raise NotFoundError(key)
        return row

    def move(self, source: str, dest: str) -> str:
        """Rename ``source`` to ``dest`` atomically (replacing ``dest``)."""
        source, dest = self._key(source), self._key(dest)
        if source == dest:
            if source not in self:
                raise NotFoundError(source)
            return dest

        def run(conn: Conn) -> None:
            b = self._b
            now = _now_us()
            params = {"ns": self._ns, "key": source, "now": now}
            row = self._lock_row(conn, source, required=True)
            # dest's version keeps rising even though the row is new, so a compare-and-set
            # holder of dest's old version cannot mistake the moved value for the one it saw.
            dest_row = self._lock_row(conn, dest)
            version = max(int(row[2]), int(dest_row[2]) if dest_row else 0) + 1
            conn.execute(b.sql("delete"), {"ns": self._ns, "key": dest})
            try:
                conn.execute(b.sql("rename"), dict(params, dest=dest, version=version))
            except Exception as exc:
                # Another transaction created dest after our DELETE (a missing row cannot be
                # locked in advance): roll back and move again, now seeing its dest.
                if b.dialect.is_unique_violation(exc):
                    raise _Retry from None
                raise
            conn.execute(
                b.sql("index_entries_rename"), {"ns": self._ns, "key": source, "dest": dest}
            )

        for _ in range(10):
            try:
                self._run_atomic(run)
                return dest
            except _Retry:
                continue
        raise TransactionError(f"move to {dest!r} kept racing with concurrent writers")

    def incr(self, key: str, delta: int = 1, initial: int = 0) -> int:
        """Add ``delta`` to the integer stored at ``key`` and return the result, atomically.
        A missing (or expired) key starts at ``initial``. Values are ASCII decimal bytes."""
        key = self._key(key)
        for name, v in (("delta", delta), ("initial", initial)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"incr {name} must be an int, not {type(v).__name__}")
        for _ in range(20):
            try:
                return self._run_atomic(
                    lambda conn: self._incr_in(conn, key, delta, initial), write=False
                )
            except ConflictError:
                continue  # another writer created the key first: add to its value instead
        raise TransactionError(f"incr of {key!r} kept conflicting with concurrent writers")

    def _incr_in(self, conn: Conn, key: str, delta: int, initial: int) -> int:
        b = self._b
        row = self._lock_row(conn, key)
        if row is None:
            new = initial + delta
            fields = self._fields(None, None, None)
        else:
            raw = bytes(row[0]) if row[1] is None else self._read_blob(conn, key, row[1], row[4])
            try:
                new = int(raw.decode("ascii").strip()) + delta
            except (UnicodeDecodeError, ValueError):
                raise ValueError(f"value of {key!r} is not an integer: {raw[:40]!r}") from None
            # an increment keeps the entry's expiry, metadata and content type
            meta = b.dialect.load_json(row[5])
            fields = {
                "now": _now_us(),
                "exp": row[3],
                "meta": None if meta is None else json.dumps(meta),
                "ct": row[6],
            }
        data = str(new).encode("ascii")
        fields.update(
            value=data, blob_id=None, size=len(data), sum=hashlib.sha256(data).hexdigest()
        )
        params = dict(fields, ns=self._ns, key=key)
        self._write_in(conn, key, params, 0 if row is None else None, lambda: data)
        return new

    def purge_expired(self) -> int:
        """Delete expired entries of this namespace in bounded batches; return how many."""
        total = 0
        while True:
            params = {"ns": self._ns, "now": _now_us(), "limit": _BATCH}
            n = self._run_single(partial(self._purge_batch, params=params))
            total += max(n, 0)
            if n < _BATCH:
                return total

    def _purge_batch(self, conn: Conn, params: dict[str, Any]) -> int:
        return int(conn.execute(self._b.sql("purge_batch"), params).rowcount)

    # -- transactions ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, isolation: str | None = None) -> Iterator[Transaction]:
        """A transaction with the whole store API; nested ones are savepoints."""
        b = self._b
        begin_sql = b.dialect.begin_sql(isolation)  # an unknown level is a ValueError, always
        active = b.local.__dict__.get("conn")
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
            tx = Transaction(self, conn)
            try:
                with conn.savepoint():
                    yield tx
            finally:
                tx._closed = True
            return
        conn = b.checkout()
        tx = Transaction(self, conn)
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
                _open_in_thread()[db_key] = _open_in_thread().get(db_key, 0) + 1
            try:
                yield tx
            except BaseException:
                conn.rollback()
                raise
            conn.commit_or_rollback()
        finally:
            tx._closed = True
            if locks_db and b.db_key is not None:
                _open_in_thread()[b.db_key] -= 1
            b.local.conn = None
            b.checkin(conn)

    def run_in_transaction(
        self,
        fn: Callable[[Transaction], T],
        retries: int = 5,
        isolation: str | None = None,
        backoff: float = 0.02,
    ) -> T:
        """Call ``fn(tx)`` in a transaction, retrying on serialization failures, deadlocks and
        "database is locked" with jittered exponential backoff."""
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, got {retries!r}")
        if (
            isinstance(backoff, bool)
            or not isinstance(backoff, int | float)
            or not 0 <= backoff < float("inf")
        ):
            raise ValueError(f"backoff must be a non-negative number of seconds, got {backoff!r}")
        if self._b.local.__dict__.get("conn") is not None or self._b.external is not None:
            with self.transaction() as tx:  # nested: the outer transaction decides
                return fn(tx)
        last: BaseException | None = None
        for attempt in range(retries + 1):
            try:
                with self.transaction(isolation) as tx:
                    return fn(tx)
            except Exception as exc:
                if not self._b.dialect.is_retryable(exc):
                    raise
                last = exc
                time.sleep(backoff * (2**attempt) * random.random())
        raise TransactionError(f"transaction failed after {retries + 1} attempts: {last}") from last

    # -- indexes (see kvstore.indexes) ---------------------------------------------------------
    def create_index(
        self,
        name: str,
        extractor: Any,
        unique: bool = False,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> IndexInfo:
        from .indexes import create_index

        return create_index(self, name, extractor, unique=unique, progress=progress)

    def drop_index(self, name: str) -> None:
        from .indexes import drop_index

        drop_index(self, name)

    def rebuild_index(
        self, name: str, *, progress: Callable[[int, int], None] | None = None
    ) -> IndexInfo:
        from .indexes import rebuild_index

        return rebuild_index(self, name, progress=progress)

    def indexes(self) -> list[IndexInfo]:
        from .indexes import list_indexes

        return list_indexes(self)

    def find(self, index: str, value: Any = NOT_SET, **query: Any) -> list[str]:
        """Keys whose index value matches (see :mod:`kvstore.indexes` for the arguments)."""
        from .indexes import find

        return [k for k, _ in find(self, index, value, items=False, **query)]

    def find_items(self, index: str, value: Any = NOT_SET, **query: Any) -> list[tuple[str, bytes]]:
        from .indexes import find

        return [(k, v or b"") for k, v in find(self, index, value, items=True, **query)]

    def count(self, index: str, value: Any = NOT_SET, **query: Any) -> int:
        from .indexes import count

        return count(self, index, value, **query)

    # -- collections (see kvstore.collections) -------------------------------------------------
    def dict(self, name: str, serializer: Any = "json") -> PersistentDict:
        from .collections import PersistentDict

        return PersistentDict(self, name, serializer=serializer)

    def list(self, name: str, serializer: Any = "json") -> PersistentList:
        from .lists import PersistentList

        return PersistentList(self, name, serializer=serializer)

    def set(self, name: str, serializer: Any = "json") -> PersistentSet:
        from .collections import PersistentSet

        return PersistentSet(self, name, serializer=serializer)


class Transaction(Store):
    """A store bound to one open transaction; valid only inside its ``with`` block and only
    in the thread that opened it."""

    def __init__(self, parent: Store, conn: Conn) -> None:
        super().__init__(parent._b, parent._ns)
        self.default_ttl_secs = parent.default_ttl_secs
        self._conn = conn
        self._closed = False
        self._thread = threading.get_ident()
        self._key = parent._key
        self._parent_tx: Transaction | None = parent if isinstance(parent, Transaction) else None

    def _acquire(self) -> tuple[Conn, bool]:
        if self._ended():
            raise TransactionError("this transaction has ended; use it only inside its with block")
        if threading.get_ident() != self._thread:
            raise TransactionError("a transaction can only be used by the thread that opened it")
        return self._conn, False

    def namespace(self, name: str) -> Transaction:
        tx = Transaction(Store(self._b, _check_namespace(name)), self._conn)
        tx._thread = self._thread
        tx._parent_tx = self
        return tx

    def _ended(self) -> bool:
        tx: Transaction | None = self
        while tx is not None:
            if tx._closed:
                return True
            tx = tx._parent_tx
        return False

    @contextlib.contextmanager
    def transaction(self, isolation: str | None = None) -> Iterator[Transaction]:
        self._acquire()
        if isolation is not None:
            self._b.dialect.begin_sql(isolation)  # an unknown level is a ValueError, always
            raise TransactionError(
                "the isolation level can only be set on the outermost transaction"
            )
        tx = Transaction(self, self._conn)
        try:
            with self._conn.savepoint():
                yield tx
        finally:
            tx._closed = True

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<kvstore.Transaction namespace={self._ns!r}>"


def check_collection_key(key: object) -> str:
    """Collection keys are any str that SQL text can hold (no NUL, valid UTF-8), up to
    1,000 UTF-8 bytes so the primary-key B-tree accepts them on PostgreSQL."""
    if not isinstance(key, str):
        raise TypeError(f"collection keys are str here, not {type(key).__name__}")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"key {key!r} is not valid Unicode text (lone surrogate)") from None
    if "\x00" in key:
        raise ValueError(f"key {key!r} contains NUL, which SQL text columns cannot store")
    if size > 1000:
        raise ValueError(f"key is too long: {size} UTF-8 bytes, at most 1000")
    return key


class _CollectionStore(Store):
    """A store over a collection's derived namespace, with collection key rules."""

    _key = staticmethod(check_collection_key)
    _tx: Transaction | None = None

    def _bind_transaction(self, tx: Transaction) -> Store:
        bound = Transaction(self, tx._conn)
        bound._thread = tx._thread
        bound._key = staticmethod(check_collection_key)
        bound._parent_tx = tx
        return bound


class _ValueReader(io.BytesIO):
    """A small value as a read-only file, with a real file's seek errors."""

    def writable(self) -> bool:
        return False

    def write(self, b: Any) -> int:
        raise io.UnsupportedOperation("not writable")

    def writelines(self, lines: Any) -> None:
        raise io.UnsupportedOperation("not writable")

    def truncate(self, size: int | None = None) -> int:
        raise io.UnsupportedOperation("not writable")

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset, whence = self.tell() + offset, io.SEEK_SET
        elif whence == io.SEEK_END:
            offset, whence = len(self.getbuffer()) + offset, io.SEEK_SET
        if whence == io.SEEK_SET and offset < 0:
            raise OSError(22, "Invalid argument: negative seek position")
        return super().seek(offset, whence)


class _BlobRaw(SizedRawReader):
    """Raw reader over a chunked value, on a connection holding a read snapshot."""

    def __init__(self, store: Store, conn: Conn, key: str, blob_id: int, size: int) -> None:
        super().__init__(size)
        self._store = store
        self._conn: Conn | None = conn
        self._key = key
        self._blob = blob_id
        self._chunk_no = -1
        self._chunk = b""

    def readinto(self, buf: Any) -> int:
        self._check()
        if self._pos >= self._size:
            return 0
        size = self._store._b.chunk_size
        n, off = divmod(self._pos, size)
        if n != self._chunk_no:
            assert self._conn is not None
            row = self._conn.execute_bytes(
                self._store._b.sql("chunk"), {"blob": self._blob, "n": n}
            ).fetchone()
            if row is None:
                raise KVStoreError(f"value of {self._key!r} changed while it was being read")
            self._chunk, self._chunk_no = bytes(row[0]), n
        piece = self._chunk[off : off + len(buf)]
        buf[: len(piece)] = piece
        self._pos += len(piece)
        return len(piece)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                if conn.in_tx:
                    conn.rollback()
            finally:
                self._store._b.checkin(conn)
                self._store._b.readers.release()
        super().close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# -- helpers ---------------------------------------------------------------------------------
def _prefix_upper(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (code points),
    so a prefix match is the index range [prefix, upper) and needs no LIKE escaping."""
    chars = list(prefix)
    while chars:
        last = ord(chars[-1])
        if last < 0x10FFFF:
            chars[-1] = chr(last + 1)
            return "".join(chars)
        chars.pop()
    return None


def _seekable(src: IO[bytes]) -> bool:
    # Anything with read() is a source; only a seekable one can be replayed on retry.
    try:
        return bool(src.seekable()) and src.tell() >= 0
    except (AttributeError, OSError, ValueError):
        return False


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _check_value(key: str, data: object) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise InvalidValueError(key, data)


def _check_version(v: object) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _MAX_BIGINT:
        raise ValueError(f"expected_version must be a non-negative 64-bit int, got {v!r}")
    return v


#: nesting levels metadata may have: deeper documents are refused up front (json.dumps and a
#: recursive walk would hit Python's recursion limit instead)
MAX_METADATA_DEPTH = 64


def _check_metadata(metadata: object) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
    for k in metadata:
        if not isinstance(k, str):
            raise TypeError(f"metadata keys must be str, got {k!r}")
    _check_text_in(metadata, "metadata")
    try:
        text = json.dumps(dict(metadata), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    return text


def _check_text_in(obj: Any, what: str) -> None:
    """Refuse strings SQL text cannot hold (NUL, lone surrogates) and nesting deeper than
    :data:`MAX_METADATA_DEPTH`, walking the document without recursion."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError(f"{what} cannot contain NUL characters: {item!r}")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"{what} must be valid Unicode (no lone surrogates): {item!r}"
                ) from None
        elif isinstance(item, Mapping | list | tuple):
            if depth >= MAX_METADATA_DEPTH:
                raise ValueError(f"{what} is nested more than {MAX_METADATA_DEPTH} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, Mapping) else item
            stack.extend((c, depth + 1) for c in children)


def _check_content_type(ct: object) -> str | None:
    if ct is None:
        return None
    if not isinstance(ct, str) or len(ct) > 255:
        raise ValueError(f"content_type must be a str of at most 255 characters, got {ct!r}")
    _check_text_in(ct, "content_type")
    return ct


def _check_namespace(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"namespace must be a non-empty str, got {name!r}")
    if len(name) > _NAMESPACE_MAX or "/" in name:
        raise ValueError(
            f"invalid namespace {name!r}: namespaces use the key alphabet and are at most "
            f"{_NAMESPACE_MAX} characters"
        )
    check_key(name)
    return name


def _iterable(obj: Any, what: str) -> Iterable[Any]:
    if isinstance(obj, str | bytes):
        raise TypeError(f"{what} must be an iterable of keys, not a single {type(obj).__name__}")
    try:
        iter(obj)
    except TypeError:
        raise TypeError(f"{what} must be iterable, not {type(obj).__name__}") from None
    return obj  # type: ignore[no-any-return]


def _read_exactly(src: IO[bytes], n: int) -> bytes:
    """Read up to ``n`` bytes, looping over short reads (pipes, sockets)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        buf = src.read(n - got)
        if not buf:
            break
        if not isinstance(buf, bytes | bytearray | memoryview):
            raise TypeError(f"expected a binary file, read returned {type(buf).__name__}")
        parts.append(bytes(buf))
        got += len(buf)
    return parts[0] if len(parts) == 1 else b"".join(parts)


# -- connect ---------------------------------------------------------------------------------
def connect(
    bind: str | Engine | Connection | Session = "sqlite:///kvstore.db",
    *,
    namespace: str = "default",
    table_prefix: str = "kv_",
    create: bool = True,
    default_ttl_secs: TTL = NOT_SET,
    sqlite_synchronous: str = "FULL",
    busy_timeout: float = 30.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    engine_options: Mapping[str, Any] | None = None,
    max_open_readers: int = DEFAULT_MAX_OPEN_READERS,
) -> Store:
    """Open a key-value store.

    ``bind`` is a database URL (the store creates and owns its engine), an ``Engine`` (the
    store uses its pool), or a ``Connection``/``Session`` (the store joins the caller's
    transaction and never commits it). See ``docs/getting-started.md``.
    """
    namespace = _check_namespace(namespace)
    sync = _dialect.check_synchronous(sqlite_synchronous)
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or not 1024 <= chunk_size <= 1 << 28
    ):
        raise ValueError(f"chunk_size must be an int between 1 KiB and 256 MiB, got {chunk_size!r}")
    if (
        isinstance(busy_timeout, bool)
        or not isinstance(busy_timeout, int | float)
        or not 0 <= busy_timeout <= _MAX_BUSY_TIMEOUT
    ):
        raise ValueError(
            f"busy_timeout must be a number of seconds between 0 and {_MAX_BUSY_TIMEOUT}, "
            f"got {busy_timeout!r}"
        )
    if (
        isinstance(max_open_readers, bool)
        or not isinstance(max_open_readers, int)
        or not 0 <= max_open_readers <= 10_000
    ):
        raise ValueError(
            f"max_open_readers must be an int from 0 to 10000, got {max_open_readers!r}"
        )
    owns = isinstance(bind, str)
    bind_url = bind if isinstance(bind, str) else None
    if isinstance(bind, str):
        bind = _engine_from_url(bind, dict(engine_options or {}))
    ttl_to_seconds(default_ttl_secs, NOT_SET)  # validate early
    backend = _Backend(
        bind,
        owns_engine=owns,
        table_prefix=table_prefix,
        sqlite_synchronous=sync,
        busy_timeout=float(busy_timeout),
        chunk_size=chunk_size,
        max_open_readers=max_open_readers,
    )
    try:
        if create:
            _create_tables(backend, bind)
    except BaseException:
        backend.close()
        raise
    if owns:
        # What a pickled store reconnects with (the URL was the caller's own, password
        # included); stores on an Engine/Connection/Session cannot be pickled.
        backend.reopen = dict(
            bind=bind_url,
            table_prefix=table_prefix,
            sqlite_synchronous=sync,
            busy_timeout=busy_timeout,
            chunk_size=chunk_size,
            max_open_readers=max_open_readers,
            engine_options=dict(engine_options or {}),
        )
    store = Store(backend, namespace, root=True)
    store.default_ttl_secs = default_ttl_secs
    return store


def _reconnect(reopen: dict[str, Any], namespace: str, default_ttl_secs: Any) -> Store:
    return connect(
        reopen["bind"],
        namespace=namespace,
        default_ttl_secs=default_ttl_secs,
        **{k: v for k, v in reopen.items() if k != "bind"},
    )


def _engine_from_url(url: str, options: dict[str, Any]) -> Engine:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ValueError(f"not a database URL: {url!r} ({exc})") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    _dialect.for_name(backend)  # refuse unsupported databases with a clear message
    if backend == "sqlite":
        connect_args = dict(options.pop("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)
        options["connect_args"] = connect_args
        if parsed.database in (None, "", ":memory:"):
            options.setdefault("poolclass", StaticPool)
    engine = create_engine(parsed, **options)
    return engine


def _create_tables(backend: _Backend, bind: Engine | Connection | Session) -> None:
    # Creates missing tables and stamps them at the migrations' head (so `kvstore db upgrade`
    # later finds them), or does one SELECT when they are there; it imports no Alembic
    # unless the schema needs work.
    from .migrations import ensure_schema

    ensure_schema(bind, table_prefix=backend.tables.prefix)
