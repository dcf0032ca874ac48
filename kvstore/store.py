"""The public key-value store: `connect()`, `Store` and `Transaction`, a facade over the repository layer."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import IO, TYPE_CHECKING, Any, BinaryIO, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from ._backend import MAX_IDLE, Backend, Options, Replicas, Scope, install_facade, reader_slot
from ._conn import Conn
from ._dialect import engine_from_url
from ._entries import (
    SQL,
    common_prefixes,
    count_keys,
    count_live,
    delete_keys_in,
    entry_info,
    get_many,
    index_state,
    insert_chunks,
    insert_entries,
    key_batch,
    lock_row,
    namespace_stats,
    new_blob_id,
    now_us,
    prefix_upper,
    read_blob,
    scan_entries,
    unique_violation,
    version,
    write,
    write_in,
)
from ._indexing import IndexInfo
from ._retry import RACE, Policy, retry
from ._schema import Tables
from ._validate import (
    MAX_KEY_LENGTH,
    NOT_SET,
    TTL,
    VALID_KEY_RE,
    check_busy_timeout,
    check_chunk_size,
    check_content_type,
    check_int,
    check_iterable,
    check_key,
    check_max_open_readers,
    check_metadata,
    check_namespace,
    check_optional_bool,
    check_prefix,
    check_replica_lag,
    check_retry_args,
    check_synchronous,
    check_value,
    check_version,
    ttl_to_seconds,
)
from .base import EntryInfo, KeyValueStore, NamespaceInfo, SizedRawReader, read_source
from .collections import PersistentDict, PersistentSet
from .errors import (
    ConflictError,
    IndexNotDeclaredError,
    KVStoreError,
    NotFoundError,
    TransactionError,
)
from .indexes import (
    count_matches,
    create_index,
    drop_index,
    find_matches,
    list_indexes,
    rebuild_index,
)
from .lists import PersistentList
from .migrations import ensure_schema

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["Store", "Transaction", "connect"]

T = TypeVar("T")

# 256 KiB: large enough that per-statement overhead is noise, small enough that the driver
# buffers (libpq keeps its largest message buffer) and allocator slack stay a few MiB.
DEFAULT_CHUNK_SIZE = 256 << 10
#: rows put_many builds and sends at a time (its memory per call is bounded by this)
_PUT_MANY_BATCH = 5000
_BATCH = 1000
_MAX_BIGINT = 1 << 63
#: values of at most this many chunks are read whole by open(), holding no connection
SMALL_READ_CHUNKS = 4
DEFAULT_MAX_OPEN_READERS = 8
_NAMESPACE_MAX = 100
#: SQLite's busy_timeout is a 32-bit count of milliseconds
_MAX_BUSY_TIMEOUT = (2**31 - 1) // 1000


class _Retry(Exception):
    """Internal: run the operation's transaction again."""


class Store(KeyValueStore):
    """A key-value store in SQL tables, for one namespace. Create it with :func:`connect`."""

    def __init__(self, scope: Scope, *, root: bool = False) -> None:
        self._scope = scope
        self._b = scope.backend
        self._ns = scope.namespace
        self._key = scope.key_rule
        # the hot path's statement, looked up once (rendered once per backend anyway)
        self._get_sql = scope.sql(SQL, "get")
        self._root = root
        self.default_ttl_secs: Any = NOT_SET

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def scope(self) -> Scope:
        """The handle through which kvstore's own layers (collections, indexes, the cache)
        reach this store's namespace, connections and transaction: see docs/architecture.md."""
        return self._scope

    @property
    def namespace_name(self) -> str:
        """The namespace this store reads and writes."""
        return self._ns

    @property
    def dialect_name(self) -> str:
        """``"sqlite"``, ``"postgresql"``, or ``"mariadb"``/``"mysql"`` (as the URL names it)."""
        return self._b.dialect.name

    @property
    def tables(self) -> Tables:
        """The SQLAlchemy ``Table`` objects of this store's table prefix."""
        return self._b.tables

    def __reduce__(self) -> tuple[Any, ...]:
        """A store opened from a URL pickles as "connect to that URL again" (for
        multiprocessing, and decorators that wrap it); its data stays in the database."""
        reopen = self._b.reopen
        if reopen is None or type(self) is not Store or self._scope.key_rule is not check_key:
            raise TypeError(
                "only a store opened from a URL can be pickled (it reconnects when "
                "unpickled); one bound to an Engine, Connection, Session or transaction cannot"
            )
        return (_reconnect, (reopen, self._ns, self.default_ttl_secs))

    def namespace(self, name: str) -> Store:
        """A store on the same tables and connection for another namespace."""
        store = Store(self._scope.with_namespace(name))
        store.default_ttl_secs = self.default_ttl_secs
        return store

    def _connection(self) -> contextlib.AbstractContextManager[Conn]:
        return self._scope.connection()

    def _run_atomic(self, fn: Callable[[Conn], T], *, write: bool = True) -> T:
        return self._scope.atomic(fn, write=write)

    def _run_single(self, fn: Callable[[Conn], T]) -> T:
        return self._scope.single(fn)

    def _acquire(self) -> tuple[Conn, bool]:
        return self._scope.acquire()

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
        scope = self._scope
        b = self._b
        params = {"ns": self._ns, "key": key, "now": now_us()}
        if b.replicas is not None:
            return scope.read(lambda conn: self._get_on(conn, key, params))
        conn, release = scope.acquire()
        try:
            row = conn.execute(self._get_sql, params).fetchone()
            if row is None:
                raise NotFoundError(key)
            if row[1] is None:
                return bytes(row[0])
            return read_blob(scope, conn, key, row[1], row[2])
        finally:
            if release:
                b.checkin(conn)

    def _get_on(self, conn: Conn, key: str, params: dict[str, Any]) -> bytes:
        row = conn.execute(self._get_sql, params).fetchone()
        if row is None:
            raise NotFoundError(key)
        if row[1] is None:
            return bytes(row[0])
        return read_blob(self._scope, conn, key, row[1], row[2])

    def __contains__(self, key: object) -> bool:
        key = self._key(key)
        params = {"ns": self._ns, "key": key, "now": now_us()}
        has = self._scope.sql(SQL, "has")
        return self._scope.read(lambda conn: conn.execute(has, params).fetchone() is not None)

    def __len__(self) -> int:
        """Live entries: on SQLite a counter kept by triggers, on PostgreSQL an index-only
        count, each less the expired entries not yet purged (see kvstore._entries)."""
        return self._scope.read(lambda conn: count_live(self._scope, conn))

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
        return key_batch(self._scope, prefix, after, limit, inclusive)

    def namespaces(self) -> list[NamespaceInfo]:
        """Every namespace of these tables that holds a live entry, with its entry count and
        value bytes, by name: other stores' too, and collections' and caches' derived ones
        (``<namespace>/d/<name>``). One aggregate over the entries table: it reads every row."""
        return [NamespaceInfo(n, c, b) for n, c, b in namespace_stats(self._scope)]

    def count_keys(self, prefix: str = "") -> int:
        """How many live keys start with ``prefix`` (all of them for ``""``): one COUNT over
        a primary-key range, no keys fetched."""
        return count_keys(self._scope, check_prefix(prefix))

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
        if self._scope.backend.dialect.walks_prefixes_in_sql and delimiter[-1] != "\U0010ffff":
            yield from common_prefixes(self._scope, prefix, delimiter)
            return
        after: str | None = None
        inclusive = False
        # One key is all a seek past a common prefix needs, and usually the next one starts
        # another prefix: fetch one, and more (doubling) only while plain keys come back.
        limit = 1
        while True:
            batch = self._key_batch(prefix, after, limit, inclusive)
            skip_to: str | None = None
            for key in batch:
                pos = key.find(delimiter, len(prefix))
                if pos == -1:
                    yield key
                    continue
                common = key[: pos + len(delimiter)]
                yield common
                skip_to = prefix_upper(common)
                break
            if skip_to is not None:
                after, inclusive, limit = skip_to, True, 1
            elif len(batch) < limit:
                return
            else:
                after, inclusive, limit = batch[-1], False, min(limit * 2, 256)

    def stat(self, key: str) -> EntryInfo:
        """Size, version, timestamps, expiry, content type, metadata and checksum of ``key``
        (``KeyError`` when it is missing or expired), without reading the value."""
        key = self._key(key)
        params = {"ns": self._ns, "key": key, "now": now_us()}
        stmt = self._scope.sql(SQL, "stat")
        row = self._scope.read(lambda conn: conn.execute(stmt, params).fetchone())
        if row is None:
            raise NotFoundError(key)
        return entry_info(self._scope, row)

    def iter_stat(self, prefix: str = "") -> Iterator[EntryInfo]:
        """:meth:`stat` of every live key starting with ``prefix``, in key order, streamed in
        batches (one statement per 500 entries, no connection held in between)."""
        check_prefix(prefix)
        for info, _ in scan_entries(self._scope, prefix, values=False):
            yield info

    def iter_items(self, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        """``(key, value)`` of every live key starting with ``prefix``, in key order, streamed
        in batches (large values are read whole, one at a time)."""
        check_prefix(prefix)
        for info, data in scan_entries(self._scope, prefix, values=True):
            yield info.key, data or b""

    def iter_entries(self, prefix: str = "") -> Iterator[tuple[EntryInfo, bytes]]:
        """``(stat, value)`` of every live key starting with ``prefix``, in key order, each
        pair read together (a value never comes with another version's details). Inside
        :meth:`snapshot`, all of them come from one snapshot."""
        check_prefix(prefix)
        for info, data in scan_entries(self._scope, prefix, values=True):
            yield info, data or b""

    def _keys(self, keys: Iterable[Any]) -> list[str]:
        """Each key checked by this store's rule: check_key's tests inline for a plain str
        key, a call only for the others (a third of get_many's time in Python was the
        call per key)."""
        rule = self._key
        if rule is not check_key:
            return [rule(k) for k in keys]
        fast = VALID_KEY_RE.fullmatch
        return [
            k if type(k) is str and len(k) <= MAX_KEY_LENGTH and fast(k) else rule(k) for k in keys
        ]

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Values of the given keys that exist, in one query per batch of keys."""
        wanted = list(dict.fromkeys(self._keys(check_iterable(keys, "keys"))))
        out = get_many(self._scope, wanted)
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
            params = {"ns": self._ns, "key": key, "now": now_us()}
            row = conn.execute(self._scope.sql(SQL, "get"), params).fetchone()
            if row is None:
                raise NotFoundError(key)
            if row[1] is None:
                return _ValueReader(bytes(row[0]))
            if not release or b.single_connection or row[2] <= SMALL_READ_CHUNKS * b.chunk_size:
                # Small, or no connection to spare for a snapshot: read it whole (a value is
                # replaced atomically, so this is consistent too).
                return _ValueReader(read_blob(self._scope, conn, key, row[1], row[2]))
            reader_slot(b)
            try:
                conn.begin(b.dialect.read_snapshot_begin)
                row = conn.execute(self._scope.sql(SQL, "get"), params).fetchone()
                if row is None:
                    raise NotFoundError(key)
                if row[1] is None:
                    return _ValueReader(bytes(row[0]))
                raw = _BlobRaw(self._scope, conn, key, row[1], row[2])
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
        data = check_value(key, data)
        fields = self._fields(ttl_secs, metadata, content_type)
        ev = check_version(expected_version)
        if len(data) > self._b.chunk_size:
            self._put_stream(key, io.BytesIO(data), fields, ev)
            return key
        fields.update(
            value=data, blob_id=None, size=len(data), sum=hashlib.sha256(data).hexdigest()
        )
        write(self._scope, key, fields, ev, lambda: data)
        return key

    def _fields(self, ttl_secs: Any, metadata: Any, content_type: Any) -> dict[str, Any]:
        ttl = ttl_to_seconds(ttl_secs, self.default_ttl_secs)
        now = now_us()
        exp = None if ttl is None else now + int(ttl * 1_000_000)
        return {
            "now": now,
            "exp": exp,
            "meta": check_metadata(metadata),
            "ct": check_content_type(content_type),
        }

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
            write(self._scope, key, fields, expected_version, lambda: first)
            return

        def chunks() -> Iterator[bytes]:
            buf, rest = first[:size], first[size:]
            while buf:
                yield buf
                buf = rest + _read_exactly(src, size - len(rest))
                rest = b""

        def write_blob(conn: Conn) -> None:
            blob_id, total, checksum = insert_chunks(self._scope, conn, chunks())
            fields.update(value=None, blob_id=blob_id, size=total, sum=checksum)
            params = dict(fields, ns=self._ns, key=key)
            # Index extractors see the whole value: only namespaces with indexes pay for it.
            write_in(
                self._scope,
                conn,
                key,
                params,
                expected_version,
                lambda: read_blob(self._scope, conn, key, blob_id, total),
            )

        if not _seekable(src):
            # A stream cannot be replayed, so no retry: run it once.
            with self._scope.connection() as conn, self._scope.atomic_block(conn, write=False):
                write_blob(conn)
            return
        start = src.tell() - len(first)

        def attempt(conn: Conn) -> None:
            nonlocal first
            src.seek(start)
            first = _read_exactly(src, size + 1)
            write_blob(conn)

        self._run_atomic(attempt, write=False)

    def delete(self, key: str, *, expected_version: int | None = None) -> None:
        """Delete ``key`` (no error when it is missing); its chunks and index entries go with it
        in the same statement, by trigger."""
        key = self._key(key)
        ev = check_version(expected_version)
        if ev is None:
            self._run_single(
                lambda conn: conn.execute(
                    self._scope.sql(SQL, "delete"), {"ns": self._ns, "key": key}
                )
            )
            return
        if ev == 0:
            with self._connection() as conn:
                actual = version(self._scope, conn, key)
            if actual:
                raise ConflictError(key, 0, actual)
            return

        def cas(conn: Conn) -> None:
            params = {"ns": self._ns, "key": key, "ev": ev, "now": now_us()}
            if conn.execute(self._scope.sql(SQL, "delete_cas"), params).rowcount != 1:
                raise ConflictError(key, ev, version(self._scope, conn, key))

        self._run_atomic(cas)

    def put_many(
        self,
        items: Mapping[str, bytes] | Iterable[tuple[str, bytes]],
        ttl_secs: TTL = None,
    ) -> list[str]:
        """Write many entries in one transaction: all of them, or (on any error) none."""
        pairs = items.items() if isinstance(items, Mapping) else check_iterable(items, "items")
        # Everything is checked before anything is written; a key given twice keeps its last
        # value (as dict.update does), whatever the sizes: large and small values are written
        # in separate passes below. What is held per key is the dict and two lists of
        # references (~80 bytes a key), not copies of the rows.
        latest: dict[str, bytes] = {}
        keys: list[str] = []
        rule = self._key
        # check_key's own tests inline for the common case (a str key, bytes value): a call
        # per key was a quarter of put_many's time in Python
        fast = VALID_KEY_RE.fullmatch if rule is check_key else None
        for pair in pairs:
            if (type(pair) is not tuple or len(pair) != 2) and (
                not isinstance(pair, tuple | list) or len(pair) != 2
            ):
                raise TypeError(f"put_many takes (key, value) pairs, got {pair!r}")
            key, value = pair
            if fast is None or type(key) is not str or len(key) > MAX_KEY_LENGTH or not fast(key):
                key = rule(key)
            if type(value) is not bytes:
                value = check_value(key, value)
            latest[key] = value
            keys.append(key)
        fields = self._fields(ttl_secs, None, None)
        if not latest:
            return []
        # In key order: two batches lock their rows in one order, so they never deadlock.
        order = sorted(latest)
        chunk_size = self._b.chunk_size

        def write_all(conn: Conn) -> None:
            state = index_state(self._scope, conn, check=True)
            if state.undeclared:
                raise IndexNotDeclaredError(self._ns, state.undeclared)
            small = [k for k in order if len(latest[k]) <= chunk_size]
            upsert = self._scope.sql(SQL, "upsert")
            # Rows are built and sent _PUT_MANY_BATCH at a time: memory stays flat however
            # many keys one call writes (the whole batch's row dicts were ~950 bytes a key).
            # What every row shares goes apart from them, for a dialect to bind it once.
            common = dict(fields, ns=self._ns, blob_id=None, gen=state.generation)
            sha256 = hashlib.sha256
            for start in range(0, len(small), _PUT_MANY_BATCH):
                rows = [
                    {"key": k, "value": v, "size": len(v), "sum": sha256(v).hexdigest()}
                    for k in small[start : start + _PUT_MANY_BATCH]
                    for v in (latest[k],)
                ]
                conn.executemany(upsert, rows, common)
            for k in order:
                if len(latest[k]) > chunk_size:
                    self._put_stream_in(conn, k, latest[k], fields)
            if state.specs:
                # every old index entry goes before any new one is inserted: a unique value
                # may move from one key of the batch to another
                delete = self._scope.sql(SQL, "index_entries_delete")
                for k in small:
                    conn.execute(delete, {"ns": self._ns, "key": k})
                for start in range(0, len(small), _PUT_MANY_BATCH):
                    part = small[start : start + _PUT_MANY_BATCH]
                    insert_entries(
                        self._scope,
                        conn,
                        state,
                        {k: state.rows_for(k, _const(latest[k])) for k in part},
                    )

        self._run_atomic(write_all)
        return keys

    def _put_stream_in(self, conn: Conn, key: str, data: bytes, fields: dict[str, Any]) -> None:
        size = self._b.chunk_size
        view = memoryview(data)
        blob_id, total, checksum = insert_chunks(
            self._scope, conn, (bytes(view[i : i + size]) for i in range(0, len(data), size))
        )
        params = dict(
            fields, ns=self._ns, key=key, value=None, blob_id=blob_id, size=total, sum=checksum
        )
        write_in(self._scope, conn, key, params, None, lambda: data)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete many keys in one transaction."""
        wanted = sorted({self._key(k) for k in check_iterable(keys, "keys")})  # see put_many
        if not wanted:
            return
        self._scope.atomic(lambda conn: delete_keys_in(self._scope, conn, wanted))

    def copy(self, source: str, dest: str) -> str:
        """Copy ``source`` to ``dest`` (value, metadata, content type, expiry) atomically."""
        source, dest = self._key(source), self._key(dest)
        if source == dest:
            if source not in self:
                raise NotFoundError(source)
            return dest

        def run(conn: Conn) -> None:
            params = {"ns": self._ns, "key": source, "now": now_us()}
            row = lock_row(self._scope, conn, source, required=True)
            new_blob = None
            if row[1] is not None:
                new_blob = new_blob_id()
                conn.execute(
                    self._scope.sql(SQL, "copy_chunks"),
                    {"ns": self._ns, "new": new_blob, "old": row[1]},
                )
            conn.execute(
                self._scope.sql(SQL, "copy_entry"), dict(params, dest=dest, new_blob=new_blob)
            )
            self._copy_index_entries(conn, source, dest, "index_entries_copy")

        self._run_atomic(run)
        return dest

    def _copy_index_entries(self, conn: Conn, source: str, dest: str, how: str) -> None:
        # The value is the same, so its index entries are too: copy them rather than running
        # the extractors, which also keeps indexes this process has not declared exact.
        state = index_state(self._scope, conn, check=True)
        if not state.specs and not state.undeclared:
            return
        b = self._b
        conn.execute(self._scope.sql(SQL, "index_entries_delete"), {"ns": self._ns, "key": dest})
        try:
            with conn.savepoint():
                conn.execute(
                    self._scope.sql(SQL, how), {"ns": self._ns, "key": source, "dest": dest}
                )
        except Exception as exc:
            if not b.dialect.is_unique_violation(exc):
                raise
            raise unique_violation(self._scope, conn, state, dest, None) from None

    def move(self, source: str, dest: str) -> str:
        """Rename ``source`` to ``dest`` atomically (replacing ``dest``)."""
        source, dest = self._key(source), self._key(dest)
        if source == dest:
            if source not in self:
                raise NotFoundError(source)
            return dest

        def run(conn: Conn) -> None:
            b = self._b
            now = now_us()
            params = {"ns": self._ns, "key": source, "now": now}
            row = lock_row(self._scope, conn, source, required=True)
            # dest's version keeps rising even though the row is new, so a compare-and-set
            # holder of dest's old version cannot mistake the moved value for the one it saw.
            dest_row = lock_row(self._scope, conn, dest)
            version = max(int(row[2]), int(dest_row[2]) if dest_row else 0) + 1
            conn.execute(self._scope.sql(SQL, "delete"), {"ns": self._ns, "key": dest})
            try:
                conn.execute(
                    self._scope.sql(SQL, "rename"), dict(params, dest=dest, version=version)
                )
            except Exception as exc:
                # Another transaction created dest after our DELETE (a missing row cannot be
                # locked in advance): roll back and move again, now seeing its dest.
                if b.dialect.is_unique_violation(exc):
                    raise _Retry from None
                raise
            conn.execute(
                self._scope.sql(SQL, "index_entries_rename"),
                {"ns": self._ns, "key": source, "dest": dest},
            )

        retry(
            lambda: self._scope.atomic(run),
            RACE,
            lambda exc: isinstance(exc, _Retry),
            exhausted=lambda _: TransactionError(
                f"move to {dest!r} kept racing with concurrent writers"
            ),
        )
        return dest

    def incr(self, key: str, delta: int = 1, initial: int = 0) -> int:
        """Add ``delta`` to the integer stored at ``key`` and return the result, atomically.
        A missing (or expired) key starts at ``initial``. Values are ASCII decimal bytes."""
        key = self._key(key)
        check_int("incr delta", delta)
        check_int("incr initial", initial)
        # A ConflictError means another writer created the key first: add to its value instead.
        return retry(
            lambda: self._scope.atomic(
                lambda conn: self._incr_in(conn, key, delta, initial), write=False
            ),
            RACE,
            lambda exc: isinstance(exc, ConflictError),
            exhausted=lambda _: TransactionError(
                f"incr of {key!r} kept conflicting with concurrent writers"
            ),
        )

    def _incr_in(self, conn: Conn, key: str, delta: int, initial: int) -> int:
        b = self._b
        row = lock_row(self._scope, conn, key)
        if row is None:
            new = initial + delta
            fields = self._fields(None, None, None)
        else:
            raw = (
                bytes(row[0])
                if row[1] is None
                else read_blob(self._scope, conn, key, row[1], row[4])
            )
            try:
                new = int(raw.decode("ascii").strip()) + delta
            except (UnicodeDecodeError, ValueError):
                raise ValueError(f"value of {key!r} is not an integer: {raw[:40]!r}") from None
            # an increment keeps the entry's expiry, metadata and content type
            meta = b.dialect.load_json(row[5])
            fields = {
                "now": now_us(),
                "exp": row[3],
                "meta": None if meta is None else json.dumps(meta),
                "ct": row[6],
            }
        data = str(new).encode("ascii")
        fields.update(
            value=data, blob_id=None, size=len(data), sum=hashlib.sha256(data).hexdigest()
        )
        params = dict(fields, ns=self._ns, key=key)
        write_in(self._scope, conn, key, params, 0 if row is None else None, lambda: data)
        return new

    def purge_expired(self) -> int:
        """Delete expired entries of this namespace in bounded batches; return how many."""
        total = 0
        while True:
            params = {"ns": self._ns, "now": now_us(), "limit": _BATCH}
            n = self._run_single(partial(self._purge_batch, params=params))
            total += max(n, 0)
            if n < _BATCH:
                return total

    def _purge_batch(self, conn: Conn, params: dict[str, Any]) -> int:
        return int(conn.execute(self._scope.sql(SQL, "purge_batch"), params).rowcount)

    # -- transactions ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, isolation: str | None = None) -> Iterator[Transaction]:
        """A transaction with the whole store API; nested ones are savepoints.

        Everything written through the yielded :class:`Transaction` commits together when the
        block ends, or not at all if it raises. ``isolation`` names the level of the outermost
        transaction (see docs/transactions.md for what each dialect offers)."""
        with self._scope.transaction(isolation) as scope:
            tx = Transaction(scope)
            tx.default_ttl_secs = self.default_ttl_secs
            yield tx

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Transaction]:
        """A read-only transaction over one consistent snapshot of the database, for reads
        that must agree with each other (a backup, a report): on SQLite a deferred
        transaction (it takes no write lock, so writers carry on), on PostgreSQL REPEATABLE
        READ READ ONLY. Writing through it fails (PostgreSQL) or waits for the write lock
        (SQLite): use :meth:`transaction` to write."""
        with self._scope.snapshot() as scope:
            tx = Transaction(scope)
            tx.default_ttl_secs = self.default_ttl_secs
            yield tx

    def run_in_transaction(
        self,
        fn: Callable[[Transaction], T],
        retries: int = 5,
        isolation: str | None = None,
        backoff: float = 0.02,
    ) -> T:
        """Call ``fn(tx)`` in a transaction, retrying on serialization failures, deadlocks and
        "database is locked" with jittered exponential backoff; :class:`TransactionError`
        (chained to the last failure) once ``retries`` more attempts have failed."""
        check_retry_args(retries, backoff)
        if self._scope.in_transaction:
            with self.transaction() as tx:  # nested: the outer transaction decides
                return fn(tx)

        def attempt() -> T:
            with self.transaction(isolation) as tx:
                return fn(tx)

        return retry(
            attempt,
            Policy(attempts=retries + 1, base=backoff, cap=float("inf")),
            self._b.dialect.is_retryable,
            exhausted=lambda last: TransactionError(
                f"transaction failed after {retries + 1} attempts: {last}"
            ),
        )

    # -- indexes (see kvstore.indexes) ---------------------------------------------------------
    def create_index(
        self,
        name: str,
        extractor: Any,
        unique: bool = False,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> IndexInfo:
        """Create an index named ``name`` on this namespace and back-fill it from the live
        entries, in one transaction; ``extractor`` is a JSON path (``json_field``) or a
        callable from a value to index value(s). With an existing, equal definition it only
        declares the index for this process (callable indexes must be declared by every
        process that writes to the namespace)."""
        return create_index(self._scope, name, extractor, unique=unique, progress=progress)

    def drop_index(self, name: str) -> None:
        """Drop the index and its entries (``UnknownIndexError`` if there is none)."""
        drop_index(self._scope, name)

    def rebuild_index(
        self, name: str, *, progress: Callable[[int, int], None] | None = None
    ) -> IndexInfo:
        """Recompute every entry of the index from the current values."""
        return rebuild_index(self._scope, name, progress=progress)

    def indexes(self) -> list[IndexInfo]:
        """The namespace's indexes, by name, as the database records them now."""
        return list_indexes(self._scope)

    def find(self, index: str, value: Any = NOT_SET, **query: Any) -> list[str]:
        """Keys whose index value matches: a value, ``gt/ge/lt/le``, ``prefix=`` or ``in_=``;
        ``order``, ``limit`` and ``after`` page through the results (docs/indexes.md)."""
        return [k for k, _ in find_matches(self._scope, index, value, items=False, **query)]

    def find_items(self, index: str, value: Any = NOT_SET, **query: Any) -> list[tuple[str, bytes]]:
        """Like :meth:`find`, with each key's value: ``[(key, value), ...]``."""
        return [
            (k, v or b"") for k, v in find_matches(self._scope, index, value, items=True, **query)
        ]

    def count(self, index: str, value: Any = NOT_SET, **query: Any) -> int:
        """How many keys :meth:`find` would return for the same query."""
        return count_matches(self._scope, index, value, **query)

    # -- collections (see kvstore.collections and kvstore.lists) --------------------------------
    def dict(self, name: str, serializer: Any = "json") -> PersistentDict:
        """A persistent ``MutableMapping`` named ``name`` in this namespace."""
        return PersistentDict(self, name, serializer=serializer)

    def list(self, name: str, serializer: Any = "json") -> PersistentList:
        """A persistent ``MutableSequence`` named ``name`` in this namespace."""
        return PersistentList(self, name, serializer=serializer)

    def set(self, name: str, serializer: Any = "json") -> PersistentSet:
        """A persistent ``MutableSet`` named ``name`` in this namespace."""
        return PersistentSet(self, name, serializer=serializer)


class Transaction(Store):
    """A store bound to one open transaction; valid only inside its ``with`` block and only
    in the thread that opened it."""

    def namespace(self, name: str) -> Transaction:
        """The same transaction, seen from another namespace."""
        tx = Transaction(self._scope.with_namespace(name))
        tx.default_ttl_secs = self.default_ttl_secs
        return tx

    def close(self) -> None:
        """Nothing to release: the transaction's ``with`` block owns its connection."""

    def __repr__(self) -> str:
        return f"<kvstore.Transaction namespace={self._ns!r}>"


def _facade(scope: Scope) -> Store:
    """The public store object over a scope: a Transaction when it is bound to one."""
    return Transaction(scope) if scope.tx is not None else Store(scope)


install_facade(_facade, lambda bind, **options: connect(bind, **options))


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

    def __init__(self, scope: Scope, conn: Conn, key: str, blob_id: int, size: int) -> None:
        super().__init__(size)
        self._scope = scope
        self._conn: Conn | None = conn
        self._key = key
        self._blob = blob_id
        self._chunk_no = -1
        self._chunk = b""

    def readinto(self, buf: Any) -> int:
        self._check()
        if self._pos >= self._size:
            return 0
        size = self._scope.backend.chunk_size
        n, off = divmod(self._pos, size)
        if n != self._chunk_no:
            assert self._conn is not None
            row = self._conn.execute_bytes(
                self._scope.sql(SQL, "chunk"),
                {"ns": self._scope.namespace, "blob": self._blob, "n": n},
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
                self._scope.backend.checkin(conn)
                self._scope.backend.readers.release()
        super().close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# -- helpers ---------------------------------------------------------------------------------
def _seekable(src: IO[bytes]) -> bool:
    # Anything with read() is a source; only a seekable one can be replayed on retry.
    try:
        return bool(src.seekable()) and src.tell() >= 0
    except (AttributeError, OSError, ValueError):
        return False


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


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
    sqlite_wal: bool | None = None,
    replicas: Iterable[str | Engine] = (),
    max_replica_lag: float = 5.0,
) -> Store:
    """Open a key-value store.

    ``bind`` is a database URL (the store creates and owns its engine), an ``Engine`` (the
    store uses its pool), or a ``Connection``/``Session`` (the store joins the caller's
    transaction and never commits it). See ``docs/getting-started.md``.

    ``replicas`` (PostgreSQL): URLs or Engines of streaming replicas of ``bind``; reads go to
    one that has replayed this store's own writes and is at most ``max_replica_lag`` seconds
    behind, everything else to ``bind`` (docs/scaling.md).
    """
    namespace = check_namespace(namespace)
    replica_binds = _check_replicas(bind, replicas)
    max_replica_lag = check_replica_lag(max_replica_lag)
    options = make_options(
        sqlite_synchronous=sqlite_synchronous,
        busy_timeout=busy_timeout,
        chunk_size=chunk_size,
        max_open_readers=max_open_readers,
        sqlite_wal=sqlite_wal,
        engine_options=engine_options,
    )
    ttl_to_seconds(default_ttl_secs, NOT_SET)  # validate early
    owns = isinstance(bind, str)
    bind_url = bind if isinstance(bind, str) else None
    if isinstance(bind, str):
        bind = engine_from_url(bind, dict(engine_options or {}))
    store = connect_bound(
        bind,
        owns_engine=owns,
        namespace=namespace,
        table_prefix=table_prefix,
        create=create,
        default_ttl_secs=default_ttl_secs,
        options=options,
    )
    if replica_binds:
        _attach_replicas(store, replica_binds, table_prefix, options, max_replica_lag)
    if owns:
        # What a pickled store reconnects with (the URL was the caller's own, password
        # included); stores on an Engine/Connection/Session cannot be pickled.
        store.scope.backend.reopen = dict(
            bind=bind_url,
            table_prefix=table_prefix,
            sqlite_synchronous=options.sqlite_synchronous,
            busy_timeout=busy_timeout,
            chunk_size=chunk_size,
            max_open_readers=max_open_readers,
            sqlite_wal=sqlite_wal,
            engine_options=dict(engine_options or {}),
            **(
                dict(replicas=list(replica_binds), max_replica_lag=max_replica_lag)
                if replica_binds and all(isinstance(r, str) for r in replica_binds)
                else {}
            ),
        )
        if replica_binds and not all(isinstance(r, str) for r in replica_binds):
            store.scope.backend.reopen = None  # an Engine cannot be pickled
    return store


def _check_replicas(bind: object, replicas: object) -> list[str | Engine]:
    if isinstance(replicas, str | bytes) or not isinstance(replicas, Iterable):
        raise TypeError(f"replicas must be a list of URLs or Engines, not {replicas!r}")
    out = list(replicas)
    for r in out:
        if not isinstance(r, str | Engine):
            raise TypeError(f"a replica is a URL or an Engine, not {type(r).__name__}")
    if out and not isinstance(bind, str | Engine):
        raise ValueError(
            "replicas need the primary as a URL or an Engine: a store bound to a Connection "
            "or Session runs every call in the caller's transaction, on the primary"
        )
    return out


def _attach_replicas(
    store: Store,
    binds: list[str | Engine],
    table_prefix: str,
    options: Options,
    max_lag: float,
) -> None:
    primary = store.scope.backend
    nodes: list[Backend] = []
    try:
        if primary.dialect.name != "postgresql":
            raise ValueError(
                "read replicas need PostgreSQL streaming replication; this store is on "
                f"{primary.dialect.name}"
            )
        for r in binds:
            # a replica that does not answer must not hold up reads: they go to the primary
            engine = (
                engine_from_url(r, {"connect_args": {"connect_timeout": 2}})
                if isinstance(r, str)
                else r
            )
            node = Backend(
                engine, owns_engine=isinstance(r, str), table_prefix=table_prefix, options=options
            )
            nodes.append(node)
            if node.dialect.name != "postgresql":
                raise ValueError(f"a replica must be PostgreSQL too, not {node.dialect.name}")
    except BaseException:
        for node in nodes:
            node.close()
        store.close()
        raise
    primary.replicas = Replicas(primary, nodes, max_lag)


def make_options(
    *,
    sqlite_synchronous: str = "FULL",
    busy_timeout: float = 30.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_open_readers: int = DEFAULT_MAX_OPEN_READERS,
    sqlite_wal: bool | None = None,
    engine_options: Mapping[str, Any] | None = None,
) -> Options:
    """``connect()``'s backend options, validated (shared with kvstore.aio)."""
    return Options(
        sqlite_synchronous=check_synchronous(sqlite_synchronous),
        busy_timeout=check_busy_timeout(busy_timeout),
        chunk_size=check_chunk_size(chunk_size),
        max_open_readers=check_max_open_readers(max_open_readers),
        sqlite_wal=check_optional_bool("sqlite_wal", sqlite_wal),
        # A pool that checks connections on checkout or retires them by age must see every
        # checkout: kvstore then keeps none of its own between calls.
        max_idle=0 if {"pool_pre_ping", "pool_recycle"} & set(engine_options or {}) else MAX_IDLE,
    )


def connect_bound(
    bind: Engine | Connection | Session,
    *,
    owns_engine: bool,
    namespace: str,
    table_prefix: str,
    create: bool,
    default_ttl_secs: TTL,
    options: Options,
) -> Store:
    """The store of ``connect()`` on an Engine, Connection or Session, given validated
    options; ``owns_engine`` when the store made the engine (and disposes of it on close).
    kvstore.aio calls it, inside SQLAlchemy's greenlet bridge, on an AsyncEngine's
    ``sync_engine``."""
    namespace = check_namespace(namespace)
    ttl_to_seconds(default_ttl_secs, NOT_SET)
    backend = Backend(bind, owns_engine=owns_engine, table_prefix=table_prefix, options=options)
    try:
        if create:
            _create_tables(backend, bind)
    except BaseException:
        backend.close()
        raise
    store = Store(Scope(backend, namespace), root=True)
    store.default_ttl_secs = default_ttl_secs
    return store


def _reconnect(reopen: dict[str, Any], namespace: str, default_ttl_secs: Any) -> Store:
    return connect(
        reopen["bind"],
        namespace=namespace,
        default_ttl_secs=default_ttl_secs,
        **{k: v for k, v in reopen.items() if k != "bind"},
    )


def _create_tables(backend: Backend, bind: Engine | Connection | Session) -> None:
    # Creates missing tables and stamps them at the migrations' head (so `kvstore db upgrade`
    # later finds them), or does one SELECT when they are there; it imports no Alembic
    # unless the schema needs work.
    try:
        ensure_schema(bind, table_prefix=backend.tables.prefix)
    except sa_exc.DBAPIError as exc:
        raise backend.dialect.error(exc, connecting=True) from exc
    except Exception as exc:
        # asyncpg's connect raises OSError (refused, unknown host) past SQLAlchemy's wrapping
        if isinstance(exc, KVStoreError) or not backend.dialect.is_driver_error(exc):
            raise
        raise backend.dialect.error(exc, connecting=True) from exc
