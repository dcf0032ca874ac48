"""The repository: statements on kvstore's entries, chunks and index entries, as functions
of a :class:`~kvstore._backend.Scope`.

The store facade, the indexes and the collections call these; the SQL text they share
(liveness, the row an insert writes, the upsert's conflict clause) is defined here once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._backend import Scope, Statements
from ._conn import Conn
from ._indexing import IndexSpec, JsonField, NamespaceIndexes, decode_value
from .errors import (
    ConflictError,
    IndexNotDeclaredError,
    NotFoundError,
    TransactionError,
    UniqueViolation,
)

__all__ = ["SQL", "now_us", "prefix_upper", "read_blob"]


def now_us() -> int:
    """Now, in the microseconds since the Unix epoch that every timestamp column holds."""
    return time.time_ns() // 1000


LIVE = "(expires_at IS NULL OR expires_at > :now)"
GUARD = "COALESCE((SELECT index_generation FROM {n} WHERE namespace = :ns), 0) = :gen"
COLUMNS = (
    "namespace, key, value, blob_id, size, version, created_at, updated_at, expires_at, "
    "content_type, metadata, checksum"
)
NEW_ROW = (
    "CAST(:ns AS {text}), CAST(:key AS {text}), CAST(:value AS {bytea}), CAST(:blob_id AS {bigint}), :size, 1, :now, :now, "
    "CAST(:exp AS {bigint}), CAST(:ct AS {text}), CAST(:meta AS {json}), :sum"
)
ON_CONFLICT = """ON CONFLICT (namespace, key) DO UPDATE SET
  value = excluded.value, blob_id = excluded.blob_id, size = excluded.size,
  version = {e}.version + 1,
  created_at = CASE WHEN {e}.expires_at IS NOT NULL AND {e}.expires_at <= excluded.updated_at
                    THEN excluded.created_at ELSE {e}.created_at END,
  updated_at = excluded.updated_at, expires_at = excluded.expires_at,
  content_type = excluded.content_type, metadata = excluded.metadata,
  checksum = excluded.checksum"""

# The key-value statements, written once for both dialects. ``{e}`` and friends are table
# names, ``{bytea}`` and friends type names (see _dialect); values are always bound parameters.
_TEMPLATES: dict[str, str] = {
    "get": f"SELECT value, blob_id, size FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE}",
    "has": f"SELECT 1 FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE}",
    "chunks": "SELECT data FROM {c} WHERE blob_id = :blob ORDER BY n",
    "chunk": "SELECT data FROM {c} WHERE blob_id = :blob AND n = :n",
    "put_chunk": "INSERT INTO {c} (blob_id, n, data) VALUES (:blob, :n, :data)",
    "copy_chunks": "INSERT INTO {c} (blob_id, n, data) SELECT :new, n, data FROM {c} WHERE blob_id = :old",
    # guarded upsert: writes nothing when the namespace's index set changed since we looked
    "upsert": f"INSERT INTO {{e}} ({COLUMNS}) SELECT {NEW_ROW} WHERE {GUARD} {ON_CONFLICT}",
    "insert_new": f"INSERT INTO {{e}} ({COLUMNS}) SELECT {NEW_ROW} WHERE {GUARD} {ON_CONFLICT}"
    " WHERE {e}.expires_at IS NOT NULL AND {e}.expires_at <= excluded.updated_at",
    "update_cas": """UPDATE {e} SET value = CAST(:value AS {bytea}), blob_id = CAST(:blob_id AS {bigint}),
  size = :size, version = version + 1, updated_at = :now, expires_at = CAST(:exp AS {bigint}),
  content_type = CAST(:ct AS {text}), metadata = CAST(:meta AS {json}), checksum = :sum
  WHERE namespace = :ns AND key = :key AND version = :ev AND """
    + LIVE
    + " AND "
    + GUARD,
    "version": f"SELECT version FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE}",
    "generation": "SELECT index_generation FROM {n} WHERE namespace = :ns",
    "delete": "DELETE FROM {e} WHERE namespace = :ns AND key = :key",
    "delete_cas": f"DELETE FROM {{e}} WHERE namespace = :ns AND key = :key AND version = :ev AND {LIVE}",
    "count": f"SELECT COUNT(*) FROM {{e}} WHERE namespace = :ns AND {LIVE}",
    "stat": f"""SELECT key, size, version, created_at, updated_at, expires_at, content_type,
  metadata, checksum FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE}""",
    "lock_row": f"""SELECT value, blob_id, version, expires_at, size, metadata, content_type
  FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE}{{for_update}}""",
    "purge_batch": """DELETE FROM {e} WHERE namespace = :ns AND key IN (
  SELECT key FROM {e} WHERE namespace = :ns AND expires_at <= :now ORDER BY key LIMIT :limit)""",
    "copy_entry": f"""INSERT INTO {{e}} ({COLUMNS})
  SELECT namespace, :dest, value, CAST(:new_blob AS {{bigint}}), size, 1, :now, :now, expires_at,
         content_type, metadata, checksum
  FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE} {ON_CONFLICT}""",
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
    "clear": "DELETE FROM {e} WHERE namespace = :ns",
    "count_prefix": f"SELECT COUNT(*) FROM {{e}} WHERE namespace = :ns AND {LIVE} "
    "AND key >= :lo AND key < :hi",
    "count_from": f"SELECT COUNT(*) FROM {{e}} WHERE namespace = :ns AND {LIVE} AND key >= :lo",
    "delete_if_checksum": "DELETE FROM {e} WHERE namespace = :ns AND key = :key AND checksum = :sum",
    "index_defs": "SELECT id, name, kind, definition, is_unique FROM {ix} WHERE namespace = :ns "
    "ORDER BY name",
    "ie_holder": "SELECT key FROM {ie} WHERE index_id = :iid AND uvalue = :uv AND key <> :key",
    "ie_expired_holder": "SELECT i.key FROM {ie} i JOIN {e} e ON e.namespace = :ns AND e.key = i.key "
    "WHERE i.index_id = :iid AND i.uvalue = :uv AND i.key <> :key "
    "AND e.expires_at IS NOT NULL AND e.expires_at <= :now",
}


SQL = Statements("entries", _TEMPLATES)


def prefix_upper(prefix: str) -> str | None:
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


def new_blob_id() -> int:
    # random, never reused: a reader holding a snapshot never sees a mix of two values
    return secrets.randbits(62) + 1


# -- reading ---------------------------------------------------------------------------------
def get_value(scope: Scope, conn: Conn, key: str) -> bytes | None:
    """The live value of ``key`` on ``conn``, or None."""
    params = {"ns": scope.namespace, "key": key, "now": now_us()}
    row = conn.execute(scope.sql(SQL, "get"), params).fetchone()
    if row is None:
        return None
    if row[1] is None:
        return bytes(row[0])
    return read_blob(scope, conn, key, row[1], row[2])


def read_blob(scope: Scope, conn: Conn, key: str, blob_id: int, size: int) -> bytes:
    """A chunked value, whole. Blob ids are never reused, so a short read means the value was
    replaced (and its chunks deleted) between two statements: the new value is read instead
    (and a missing one is ``b""``, as the caller saw it exist)."""
    rows = conn.execute_bytes(scope.sql(SQL, "chunks"), {"blob": blob_id}).fetchall()
    data = b"".join(bytes(r[0]) for r in rows)
    if len(data) != size:
        again = get_value(scope, conn, key)
        if again is None:
            raise NotFoundError(key)
        return again
    return data


def version(scope: Scope, conn: Conn, key: str) -> int:
    params = {"ns": scope.namespace, "key": key, "now": now_us()}
    row = conn.execute(scope.sql(SQL, "version"), params).fetchone()
    return 0 if row is None else int(row[0])


def lock_row(scope: Scope, conn: Conn, key: str, *, required: bool = False) -> Any:
    """The live row of ``key``, locked until the transaction ends (SQLite's write
    transactions are exclusive already); ``None`` or NotFoundError when missing."""
    params = {"ns": scope.namespace, "key": key, "now": now_us()}
    row = conn.execute(scope.sql(SQL, "lock_row"), params).fetchone()
    if row is None and required:
        raise NotFoundError(key)
    return row


def insert_chunks(scope: Scope, conn: Conn, chunks: Iterable[bytes]) -> tuple[int, int, str]:
    """Store a large value's chunks under a new blob id; (blob id, size, SHA-256 hex).

    Every chunk but the last must be exactly chunk_size: readers find byte i in chunk
    i // chunk_size without an offset table."""
    blob_id = new_blob_id()
    digest = hashlib.sha256()
    total = 0
    sql = scope.sql(SQL, "put_chunk")
    for n, buf in enumerate(chunks):
        digest.update(buf)
        total += len(buf)
        conn.execute(sql, {"blob": blob_id, "n": n, "data": buf})
    return blob_id, total, digest.hexdigest()


# -- index state -----------------------------------------------------------------------------
def load_state(scope: Scope, conn: Conn) -> NamespaceIndexes:
    """The namespace's indexes as the database records them, with this process's extractors."""
    b = scope.backend
    ns = scope.namespace
    row = conn.execute(scope.sql(SQL, "generation"), {"ns": ns}).fetchone()
    generation = 0 if row is None else int(row[0])
    rows = conn.execute(scope.sql(SQL, "index_defs"), {"ns": ns}).fetchall()
    specs: list[IndexSpec] = []
    undeclared: list[str] = []
    by_name: dict[str, IndexSpec] = {}
    for iid, name, kind, definition, unique in rows:
        extractor: Callable[[bytes], Any] | None
        extractor = JsonField(definition) if kind == "json" else b.declared.get((ns, name))
        spec = IndexSpec(int(iid), name, kind, definition, bool(unique), extractor)
        by_name[name] = spec
        if extractor is None:
            undeclared.append(name)
        else:
            specs.append(spec)
    return NamespaceIndexes(generation, specs, undeclared, by_name)


def index_state(scope: Scope, conn: Conn | None = None, check: bool = False) -> NamespaceIndexes:
    """The namespace's indexes as this process knows them; with ``check``, confirmed
    against the database inside the caller's transaction."""
    state: NamespaceIndexes | None = scope.backend.index_state.get(scope.namespace)
    if state is None or check:
        if check and state is not None and conn is not None:
            row = conn.execute(scope.sql(SQL, "generation"), {"ns": scope.namespace}).fetchone()
            if (0 if row is None else int(row[0])) == state.generation:
                return state
        state = refresh_index_state(scope, conn)
    return state


def refresh_index_state(scope: Scope, conn: Conn | None = None) -> NamespaceIndexes:
    if conn is None:
        with scope.connection() as c:
            state = load_state(scope, c)
    else:
        state = load_state(scope, conn)
    scope.backend.index_state[scope.namespace] = state
    return state


def forget_index_state(scope: Scope) -> None:
    scope.backend.index_state.pop(scope.namespace, None)


# -- writing ---------------------------------------------------------------------------------
def write(
    scope: Scope,
    key: str,
    fields: dict[str, Any],
    expected_version: int | None,
    value: Callable[[], bytes],
) -> None:
    """Write one entry, keeping the namespace's indexes in step.

    The common case (no indexes) is a single guarded statement, inside a transaction or
    not: it writes only if the namespace's index generation is still the one we know, so
    another process's ``create_index`` can never be missed, and being one statement it
    needs no savepoint. Otherwise the write, its compare-and-set check and its index
    entries run in one transaction (or savepoint).
    """
    params = dict(fields, ns=scope.namespace, key=key)
    if expected_version is None:
        state = index_state(scope)
        if not state.specs and not state.undeclared:
            upsert = scope.sql(SQL, "upsert")

            def fast(c: Conn) -> bool:
                params["gen"] = state.generation
                return bool(c.execute(upsert, params).rowcount == 1)

            if scope.single(fast):
                return
            refresh_index_state(scope)
    # write=False: the guarded statement takes the table lock itself (see write_in)
    scope.atomic(lambda c: write_in(scope, c, key, params, expected_version, value), write=False)


def write_in(
    scope: Scope,
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
    state = index_state(scope, conn)  # cached; loaded on this connection if not yet
    for _ in range(5):
        if state.undeclared:
            raise IndexNotDeclaredError(scope.namespace, state.undeclared)
        rows = state.rows_for(key, value) if state.specs else []
        params["gen"] = state.generation
        if expected_version is None:
            n = conn.execute(scope.sql(SQL, "upsert"), params).rowcount
        elif expected_version == 0:
            n = conn.execute(scope.sql(SQL, "insert_new"), params).rowcount
        else:
            n = conn.execute(
                scope.sql(SQL, "update_cas"), dict(params, ev=expected_version)
            ).rowcount
        if n == 1:
            break
        fresh = refresh_index_state(scope, conn)
        if fresh.generation == state.generation and expected_version is not None:
            raise ConflictError(key, expected_version, version(scope, conn, key))
        state = fresh
    else:
        raise TransactionError(f"the indexes of namespace {scope.namespace!r} kept changing")
    if state.specs:
        conn.execute(scope.sql(SQL, "index_entries_delete"), {"ns": scope.namespace, "key": key})
        insert_index_rows(scope, conn, state, key, rows)


def insert_index_rows(
    scope: Scope, conn: Conn, state: NamespaceIndexes, key: str, rows: list[dict[str, Any]]
) -> None:
    if not rows:
        return
    d = scope.backend.dialect
    if all(r["uvalue"] is None for r in rows):
        # (index_id, ivalue, key) cannot collide: the key's old entries are gone and the
        # rows are distinct, so no savepoint (two round trips) is needed
        conn.executemany(scope.sql(SQL, "index_entry_insert"), rows)
        return
    for attempt in range(2):
        try:
            with conn.savepoint():
                conn.executemany(scope.sql(SQL, "index_entry_insert"), rows)
            return
        except Exception as exc:
            if not d.is_unique_violation(exc):
                raise
            # An expired entry keeps its index entries until it is purged; it must not
            # hold a unique value against a live one, so purge it and try again.
            expired = expired_holders(scope, conn, key, rows) if attempt == 0 else []
            for holder in expired:
                conn.execute(scope.sql(SQL, "delete"), {"ns": scope.namespace, "key": holder})
            if not expired:
                raise unique_violation(scope, conn, state, key, rows) from None


def insert_entries(
    scope: Scope,
    conn: Conn,
    state: NamespaceIndexes,
    rows_by_key: dict[str, list[dict[str, Any]]],
) -> None:
    """Insert the index entries of many keys in a few statements (back-fill, ``put_many``).

    Rows go in multi-row ``INSERT ... VALUES`` statements: executemany costs a driver round
    trip (or a pipeline step) per row, several times slower on PostgreSQL. A unique violation
    sends the batch back to :func:`insert_index_rows` key by key, which frees values held by
    expired entries and names the key that holds a live one; the rejected alternative, a
    savepoint per key from the start, costs three round trips a key.
    """
    rows = [r for rs in rows_by_key.values() for r in rs]
    if not rows:
        return
    d = scope.backend.dialect
    # 80 rows keep the statement under 4 kB, which psycopg caches parsed
    per = min(80, d.max_params // 4)
    full = len(rows) - len(rows) % per
    try:
        with conn.savepoint():
            if full:
                marks = ", ".join(f"(:i{n}, :v{n}, :u{n}, :k{n})" for n in range(per))
                sql = scope.sql(
                    SQL,
                    f"ie_insert_{per}",
                    "INSERT INTO {ie} (index_id, ivalue, uvalue, key) VALUES " + marks,
                )
                for start in range(0, full, per):
                    params: dict[str, Any] = {}
                    for n, row in enumerate(rows[start : start + per]):
                        params[f"i{n}"] = row["index_id"]
                        params[f"v{n}"] = row["ivalue"]
                        params[f"u{n}"] = row["uvalue"]
                        params[f"k{n}"] = row["key"]
                    conn.execute(sql, params)
            if full < len(rows):
                conn.executemany(scope.sql(SQL, "index_entry_insert"), rows[full:])
        return
    except Exception as exc:
        if not d.is_unique_violation(exc):
            raise
    for key, key_rows in rows_by_key.items():
        insert_index_rows(scope, conn, state, key, key_rows)


def unique_violation(
    scope: Scope,
    conn: Conn,
    state: NamespaceIndexes,
    key: str,
    rows: list[dict[str, Any]] | None,
) -> UniqueViolation:
    """The error for a write of ``rows`` to ``key`` that hit the unique constraint (for a
    copy, ``rows`` is None and ``key`` the destination): which index, which value, and
    which key holds it."""
    if rows is None:
        # A copy: its entries failed to insert, but the copied value is already in place
        # under ``key`` (same transaction), so the extractors say what it holds. A callable
        # index this process has not declared cannot be asked; it reports no holder.
        data = get_value(scope, conn, key)
        rows = [] if data is None else state.rows_for(key, lambda: data)
    names = {s.id: s.name for s in state.by_name.values()}
    for row in rows:
        if row.get("uvalue") is None:
            continue
        other = conn.execute(
            scope.sql(SQL, "ie_holder"),
            {"iid": row["index_id"], "uv": row["uvalue"], "key": key},
        ).fetchone()
        if other is not None:
            value = getattr(row, "value", None)
            if value is None:
                value = decode_value(row["uvalue"])
            return UniqueViolation(names.get(row["index_id"], "?"), value, key, other[0])
    # The holder went away between the failed insert and this look-up (it cannot, inside
    # one transaction, but a Connection-bound store runs at the caller's isolation level).
    return UniqueViolation("?", None, key, None)


def expired_holders(scope: Scope, conn: Conn, key: str, rows: list[dict[str, Any]]) -> list[str]:
    """Keys that block a unique value but have expired (their entries linger until purged)."""
    out = []
    for row in rows:
        if row.get("uvalue") is None:
            continue
        hit = conn.execute(
            scope.sql(SQL, "ie_expired_holder"),
            {
                "ns": scope.namespace,
                "iid": row["index_id"],
                "uv": row["uvalue"],
                "key": key,
                "now": now_us(),
            },
        ).fetchone()
        if hit is not None:
            out.append(hit[0])
    return out


# -- whole-namespace and guarded deletes (the cache) -----------------------------------------
def clear_namespace(scope: Scope) -> None:
    """Delete every entry of the namespace in one statement."""
    with scope.connection() as conn:
        conn.execute(scope.sql(SQL, "clear"), {"ns": scope.namespace})


def delete_if_checksum(scope: Scope, key: str, checksum: str) -> bool:
    """Delete ``key`` only while it still holds the value with this SHA-256 (a lock token
    that has not been taken over by someone else); whether it did."""
    params = {"ns": scope.namespace, "key": key, "sum": checksum}
    with scope.connection() as conn:
        return bool(conn.execute(scope.sql(SQL, "delete_if_checksum"), params).rowcount == 1)


def count_keys(scope: Scope, prefix: str) -> int:
    """Live keys starting with ``prefix``: one COUNT over a primary-key range."""
    if not prefix:
        name, params = "count", {"ns": scope.namespace, "now": now_us()}
    else:
        hi = prefix_upper(prefix)
        name = "count_prefix" if hi is not None else "count_from"
        params = {"ns": scope.namespace, "now": now_us(), "lo": prefix, "hi": hi}
    with scope.connection() as conn:
        row = conn.execute(scope.sql(SQL, name), params).fetchone()
    return int(row[0])
