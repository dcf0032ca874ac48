"""The repository: statements on kvstore's entries, chunks and index entries, as functions
of a :class:`~kvstore._backend.Scope`.

The store facade, the indexes and the collections call these; the SQL text they share
(liveness, the row an insert writes, the upsert's conflict clause) is defined here once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._backend import Scope, Statements
from ._conn import Conn
from ._dialect import MySQLDialect, Rendered
from ._indexing import TOP, Filter, IndexSpec, JsonField, NamespaceIndexes, decode_value
from ._retry import RACE
from ._schema import from_micros
from .base import EntryInfo
from .errors import (
    ConflictError,
    DatabaseError,
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

#: what stat() reads of an entry, in EntryInfo's order
ENTRY_COLUMNS = (
    "key, size, version, created_at, updated_at, expires_at, content_type, metadata, checksum"
)

# The key-value statements, written once for both dialects. ``{e}`` and friends are table
# names, ``{bytea}`` and friends type names (see _dialect); values are always bound parameters.
_TEMPLATES: dict[str, str] = {
    "get": f"SELECT value, blob_id, size FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE}",
    "has": f"SELECT 1 FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE}",
    "chunks": "SELECT data FROM {c} WHERE namespace = :ns AND blob_id = :blob ORDER BY n",
    "chunk": "SELECT data FROM {c} WHERE namespace = :ns AND blob_id = :blob AND n = :n",
    "put_chunk": "INSERT INTO {c} (namespace, blob_id, n, data) VALUES (:ns, :blob, :n, :data)",
    "copy_chunks": "INSERT INTO {c} (namespace, blob_id, n, data) "
    "SELECT namespace, :new, n, data FROM {c} WHERE namespace = :ns AND blob_id = :old",
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
    # insert_new in two statements, where the upsert's row count is not exact (see insert_new)
    "replace_expired": """UPDATE {e} SET value = CAST(:value AS {bytea}),
  blob_id = CAST(:blob_id AS {bigint}), size = :size, version = version + 1, created_at = :now,
  updated_at = :now, expires_at = CAST(:exp AS {bigint}), content_type = CAST(:ct AS {text}),
  metadata = CAST(:meta AS {json}), checksum = :sum
  WHERE namespace = :ns AND key = :key AND expires_at IS NOT NULL AND expires_at <= :now AND """
    + GUARD,
    "insert_plain": f"INSERT INTO {{e}} ({COLUMNS}) SELECT {NEW_ROW} WHERE {GUARD}",
    "version": f"SELECT version FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE}",
    "generation": "SELECT index_generation FROM {n} WHERE namespace = :ns",
    "delete": "DELETE FROM {e} WHERE namespace = :ns AND key = :key",
    "delete_cas": f"DELETE FROM {{e}} WHERE namespace = :ns AND key = :key AND version = :ev AND {LIVE}",
    # len(): every row of the namespace less its expired ones (on the expiry index)
    "count_counted": "SELECT COALESCE((SELECT n FROM {cnt} WHERE namespace = :ns), 0) - "
    "(SELECT COUNT(*) FROM {e} WHERE namespace = :ns AND expires_at <= :now)",
    "count_scanned": "SELECT (SELECT COUNT(*) FROM {e} WHERE namespace = :ns) - "
    "(SELECT COUNT(*) FROM {e} WHERE namespace = :ns AND expires_at <= :now)",
    "stat": f"""SELECT key, size, version, created_at, updated_at, expires_at, content_type,
  metadata, checksum FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE}""",
    "lock_row": f"""SELECT value, blob_id, version, expires_at, size, metadata, content_type
  FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE}{{for_update}}""",
    "purge_batch": """DELETE FROM {e} WHERE namespace = :ns AND key IN (
  SELECT key FROM {e} WHERE namespace = :ns AND expires_at <= :now ORDER BY key LIMIT :limit)""",
    # (the source is aliased: MySQL's ON DUPLICATE KEY UPDATE would find {e} ambiguous)
    "copy_entry": f"""INSERT INTO {{e}} ({COLUMNS})
  SELECT namespace, :dest, value, CAST(:new_blob AS {{bigint}}), size, 1, :now, :now, expires_at,
         content_type, metadata, checksum
  FROM {{e}} src WHERE namespace = :ns AND key = :key AND {LIVE} {ON_CONFLICT}""",
    "rename": "UPDATE {e} SET key = :dest, version = :version, updated_at = :now "
    "WHERE namespace = :ns AND key = :key",
    "index_entries_delete": "DELETE FROM {ie} WHERE namespace = :ns AND key = :key "
    "AND index_id IN (SELECT id FROM {ix} WHERE namespace = :ns)",
    "index_entries_copy": "INSERT INTO {ie} (namespace, index_id, ivalue, uvalue, key) "
    "SELECT namespace, index_id, ivalue, uvalue, :dest FROM {ie} WHERE namespace = :ns "
    "AND key = :key AND index_id IN (SELECT id FROM {ix} WHERE namespace = :ns)",
    "index_entries_rename": "UPDATE {ie} SET key = :dest WHERE namespace = :ns AND key = :key "
    "AND index_id IN (SELECT id FROM {ix} WHERE namespace = :ns)",
    "index_entry_insert": "INSERT INTO {ie} (namespace, index_id, ivalue, uvalue, key) "
    "VALUES (:ns, :index_id, :ivalue, :uvalue, :key)",
    "clear": "DELETE FROM {e} WHERE namespace = :ns",
    "delete_any": "DELETE FROM {e} WHERE namespace = :ns AND key = ANY(:keys)",
    "get_many_any": f"SELECT key, value FROM {{e}} WHERE namespace = :ns AND {LIVE} "
    "AND key = ANY(:keys)",
    "entry_row": f"SELECT {ENTRY_COLUMNS}, value, blob_id FROM {{e}} "
    f"WHERE namespace = :ns AND key = :key AND {LIVE}",
    "namespace_stats": f"SELECT namespace, COUNT(*), COALESCE(SUM(size), 0) FROM {{e}} WHERE {LIVE} "
    "GROUP BY namespace ORDER BY namespace",
    # -- index management
    "index_def": "SELECT id, kind, definition, is_unique FROM {ix} "
    "WHERE namespace = :ns AND name = :name",
    "index_insert": "INSERT INTO {ix} (namespace, id, name, kind, definition, is_unique, "
    "created_at) VALUES (:ns, :iid, :name, :kind, :definition, :unique, :now)",
    "bump_generation": "INSERT INTO {n} (namespace, index_generation) VALUES (:ns, 1) "
    "ON CONFLICT (namespace) DO UPDATE SET index_generation = {n}.index_generation + 1",
    "ie_drop": "DELETE FROM {ie} WHERE namespace = :ns AND index_id = :iid",
    "index_drop": "DELETE FROM {ix} WHERE namespace = :ns AND id = :iid",
    "backfill_batch": "SELECT key, value, blob_id, size FROM {e} WHERE namespace = :ns "
    "AND key > :after AND (expires_at IS NULL OR expires_at > :now) ORDER BY key "
    "LIMIT :limit{for_share}",
    # -- collections
    # ORDER BY key keeps PostgreSQL on the primary key even with a generic plan (psycopg
    # prepares repeated statements): a bare "SELECT 1 ... LIMIT 1" gets a sequential scan
    # there whenever another namespace holds most of the table.
    "any": f"SELECT key FROM {{e}} WHERE namespace = :ns AND {LIVE} ORDER BY key LIMIT 1",
    "all_keys": "SELECT key FROM {e} WHERE namespace = :ns ORDER BY key",
    "delete_live": f"DELETE FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE} "
    "RETURNING key",
    "pop_inline": f"DELETE FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE} "
    "AND blob_id IS NULL RETURNING value",
    "probe_blob": f"SELECT blob_id FROM {{e}} WHERE namespace = :ns AND key = :key AND {LIVE}",
    "take_key": f"SELECT key, value, blob_id, size FROM {{e}} WHERE namespace = :ns "
    f"AND key = :key AND {LIVE} ORDER BY key DESC LIMIT 1{{for_update}}",
    "take_last": f"SELECT key, value, blob_id, size FROM {{e}} WHERE namespace = :ns "
    f"AND {LIVE} ORDER BY key DESC LIMIT 1{{for_update}}",
    "pop_last_inline": "DELETE FROM {e} WHERE namespace = :ns AND blob_id IS NULL AND key = ("
    f"SELECT key FROM {{e}} WHERE namespace = :ns AND {LIVE} "
    "ORDER BY key DESC LIMIT 1) RETURNING key, value",
    "pop_first": "DELETE FROM {e} WHERE namespace = :ns AND key = ("
    f"SELECT key FROM {{e}} WHERE namespace = :ns AND {LIVE} "
    "ORDER BY key LIMIT 1) RETURNING key, value",
    "insert_absent": f"INSERT INTO {{e}} ({COLUMNS}) SELECT {NEW_ROW} WHERE 1 = 1 {ON_CONFLICT}"
    " WHERE {e}.expires_at IS NOT NULL AND {e}.expires_at <= excluded.updated_at",
    "count_prefix": f"SELECT COUNT(*) FROM {{e}} WHERE namespace = :ns AND {LIVE} "
    "AND key >= :lo AND key < :hi",
    "count_from": f"SELECT COUNT(*) FROM {{e}} WHERE namespace = :ns AND {LIVE} AND key >= :lo",
    "delete_if_checksum": "DELETE FROM {e} WHERE namespace = :ns AND key = :key AND checksum = :sum",
    "index_defs": "SELECT id, name, kind, definition, is_unique FROM {ix} WHERE namespace = :ns "
    "ORDER BY name",
    "ie_holder": "SELECT key FROM {ie} WHERE namespace = :ns AND index_id = :iid "
    "AND uvalue = :uv AND key <> :key",
    "ie_expired_holder": "SELECT i.key FROM {ie} i JOIN {e} e ON e.namespace = :ns AND e.key = i.key "
    "WHERE i.namespace = :ns AND i.index_id = :iid AND i.uvalue = :uv AND i.key <> :key "
    "AND e.expires_at IS NOT NULL AND e.expires_at <= :now",
}


for _values, _cols in ((True, "key, value, blob_id"), (False, "key")):
    for _desc, _op, _order in ((False, ">", "ASC"), (True, "<", "DESC")):
        _tag = f"{'v' if _values else 'k'}:{'desc' if _desc else 'asc'}"
        _base = f"SELECT {_cols} FROM {{e}} WHERE namespace = :ns AND {LIVE}"
        _TEMPLATES[f"scan:{_tag}"] = f"{_base} ORDER BY key {_order} LIMIT :limit"
        _TEMPLATES[f"scan_after:{_tag}"] = (
            f"{_base} AND key {_op} :after ORDER BY key {_order} LIMIT :limit"
        )

for _lo, _hi in ((False, False), (True, False), (True, True)):
    for _values in (False, True):
        _cond = (" AND key >= :lo" if _lo else "") + (" AND key < :hi" if _hi else "")
        _cols = ENTRY_COLUMNS + (", value, blob_id" if _values else "")
        _base = f"SELECT {_cols} FROM {{e}} WHERE namespace = :ns AND {LIVE}{_cond}"
        _tag = f"{int(_lo)}{int(_hi)}{int(_values)}"
        _TEMPLATES[f"entries:{_tag}"] = f"{_base} ORDER BY key LIMIT :limit"
        _TEMPLATES[f"entries_after:{_tag}"] = f"{_base} AND key > :after ORDER BY key LIMIT :limit"

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


def new_id() -> int:
    """A new index's or list's id: random, so that no dialect needs to auto-assign one in a
    primary key that leads with the namespace (SQLite assigns only an INTEGER PRIMARY KEY)."""
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
    rows = conn.execute_bytes(
        scope.sql(SQL, "chunks"), {"ns": scope.namespace, "blob": blob_id}
    ).fetchall()
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
        conn.execute(sql, {"ns": scope.namespace, "blob": blob_id, "n": n, "data": buf})
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
    return NamespaceIndexes(ns, generation, specs, undeclared, by_name)


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
                # MySQL counts an upsert that updated as 2 rows
                return bool(c.execute(upsert, params).rowcount > 0)

            if scope.single(fast):
                return
            refresh_index_state(scope)
        elif (
            not state.undeclared
            and scope.backend.dialect.writes_in_ctes
            and not scope.in_transaction
            and _write_indexed_at_once(scope, key, params, state, value)
        ):
            return
    # write=False: the guarded statement takes the table lock itself (see write_in)
    scope.atomic(lambda c: write_in(scope, c, key, params, expected_version, value), write=False)


def _write_indexed_at_once(
    scope: Scope,
    key: str,
    params: dict[str, Any],
    state: NamespaceIndexes,
    value: Callable[[], bytes],
) -> bool:
    """An indexed write as one autocommitted statement (PostgreSQL): the guarded upsert, and,
    only if it wrote, the removal of the key's index entries that no longer hold and the
    insertion of the new ones, in data-modifying CTEs. One round trip instead of a
    transaction of four statements. Entries the key keeps are left alone (the insert skips
    them on the primary key), so nothing collides with itself. False when the generation
    changed or a unique value is taken (nothing was written either way): the caller's
    transaction then refreshes, frees values held by expired entries, or names the holder."""
    rows = state.rows_for(key, value)
    n = len(rows)
    p = dict(params, gen=state.generation)
    for i, row in enumerate(rows):
        p[f"i{i}"], p[f"v{i}"], p[f"u{i}"] = row["index_id"], row["ivalue"], row["uvalue"]
    kept = ", ".join(f"(CAST(:i{i} AS {{bigint}}), CAST(:v{i} AS {{bytea}}))" for i in range(n))
    new = ", ".join(
        f"(CAST(:i{i} AS {{bigint}}), CAST(:v{i} AS {{bytea}}), CAST(:u{i} AS {{bytea}}))"
        for i in range(n)
    )
    text = (
        f"WITH up AS (INSERT INTO {{e}} ({COLUMNS}) SELECT {NEW_ROW} WHERE {GUARD} "
        f"{ON_CONFLICT} RETURNING 1), "
        "gone AS (DELETE FROM {ie} WHERE namespace = :ns AND key = :key "
        "AND index_id IN (SELECT id FROM {ix} WHERE namespace = :ns) "
        "AND EXISTS (SELECT 1 FROM up)"
        + (f" AND (index_id, ivalue) NOT IN (VALUES {kept})" if n else "")
        + ")"
        + (
            ", added AS (INSERT INTO {ie} (namespace, index_id, ivalue, uvalue, key) "
            f"SELECT :ns, r.i, r.v, r.u, :key FROM (VALUES {new}) AS r (i, v, u) "
            "WHERE EXISTS (SELECT 1 FROM up) "
            "ON CONFLICT (namespace, index_id, ivalue, key) DO NOTHING)"
            if n
            else ""
        )
        + " SELECT COUNT(*) FROM up"
    )
    stmt = scope.sql(SQL, f"upsert_indexed_{n}", text)
    d = scope.backend.dialect
    try:
        wrote = scope.single(lambda c: int(c.execute(stmt, p).fetchone()[0]) == 1)
    except DatabaseError as exc:
        if d.is_unique_violation(exc):
            return False
        raise
    if not wrote:
        refresh_index_state(scope)
    return wrote


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
            n = insert_new(scope, conn, params)
        else:
            n = conn.execute(
                scope.sql(SQL, "update_cas"), dict(params, ev=expected_version)
            ).rowcount
        if n > 0:  # (2 for MySQL's upsert that updated)
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


def insert_new(scope: Scope, conn: Conn, params: dict[str, Any]) -> int:
    """Write ``key`` unless it is live (``expected_version=0``); how many rows it wrote.

    One guarded statement where an upsert's row count says whether it wrote. On MySQL it
    cannot (a row left as it was counts as found), so a plain INSERT creates the key or fails
    on the primary key (MySQL undoes only that statement, not the transaction), and then an
    UPDATE replaces the row only if it has expired, re-checked under its row lock. INSERT goes
    first: an UPDATE that finds no row locks the gap where the key would go, and two racers
    holding that gap would deadlock on their INSERTs. A live row is seen by a plain read
    first: every racer that lost the INSERT holds a shared lock on the row, and two of them
    asking to upgrade it for the UPDATE would deadlock as well.
    """
    if scope.backend.dialect.upsert_rowcount_exact:
        return int(conn.execute(scope.sql(SQL, "insert_new"), params).rowcount)
    try:
        return int(conn.execute(scope.sql(SQL, "insert_plain"), params).rowcount)
    except Exception as exc:
        if not scope.backend.dialect.is_unique_violation(exc):
            raise
    if version(scope, conn, params["key"]):
        return 0
    return int(conn.execute(scope.sql(SQL, "replace_expired"), params).rowcount)


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
                marks = ", ".join(f"(:ns, :i{n}, :v{n}, :u{n}, :k{n})" for n in range(per))
                sql = scope.sql(
                    SQL,
                    f"ie_insert_{per}",
                    "INSERT INTO {ie} (namespace, index_id, ivalue, uvalue, key) VALUES " + marks,
                )
                for start in range(0, full, per):
                    params: dict[str, Any] = {"ns": scope.namespace}
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
            {"ns": scope.namespace, "iid": row["index_id"], "uv": row["uvalue"], "key": key},
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


def count_live(scope: Scope, conn: Conn) -> int:
    """The namespace's live entries, exact in the statement's snapshot: the rows triggers
    have counted (SQLite) or the primary key's index holds (PostgreSQL), less the expired
    rows not yet purged, which the expiry index finds without reading the others."""
    name = "count_counted" if scope.backend.dialect.counts_entries else "count_scanned"
    params = {"ns": scope.namespace, "now": now_us()}
    return int(conn.execute(scope.sql(SQL, name), params).fetchone()[0])


def count_keys(scope: Scope, prefix: str) -> int:
    """Live keys starting with ``prefix``: :func:`count_live` for all of them, otherwise one
    COUNT over a primary-key range."""
    if not prefix:
        return scope.read(lambda conn: count_live(scope, conn))
    hi = prefix_upper(prefix)
    name = "count_prefix" if hi is not None else "count_from"
    params = {"ns": scope.namespace, "now": now_us(), "lo": prefix, "hi": hi}
    return scope.read(lambda conn: int(conn.execute(scope.sql(SQL, name), params).fetchone()[0]))


# -- collection primitives (PersistentDict, PersistentSet) -----------------------------------
# A collection is a namespace of entries; these are the atomic operations dict and set need
# beyond the key-value API, each one statement where the dialects allow it.
def _fetch(scope: Scope, name: str, **params: Any) -> list[Any]:
    """Run one statement on the scope's connection (its transaction's, inside one) and fetch
    every row: a RETURNING statement is complete only once it is read to the end."""
    with scope.connection() as conn:
        p = {"ns": scope.namespace, "now": now_us(), **params}
        return list(conn.execute(scope.sql(SQL, name), p).fetchall())


def _fetch_write(scope: Scope, name: str, **params: Any) -> list[Any]:
    """:func:`_fetch` for a writing statement (a ``DELETE ... RETURNING``), retried on
    contention outside a transaction. On MySQL/MariaDB it runs in an explicit transaction: on
    a Galera cluster two nodes deleting the same row both succeed locally and one is aborted
    at commit, and an *autocommitted* statement is then re-run by the server itself
    (``wsrep_retry_autocommit``) after its RETURNING rows were already sent - the client would
    take a row someone else deleted. In a transaction the abort is a deadlock error (1213)
    instead, and scope.atomic runs the statement again."""
    p = {"ns": scope.namespace, **params}

    def run(conn: Conn) -> list[Any]:
        return list(conn.execute(scope.sql(SQL, name), {**p, "now": now_us()}).fetchall())

    if isinstance(scope.backend.dialect, MySQLDialect):
        return scope.atomic(run, write=False)
    return scope.single(run)


def _in_batches(
    scope: Scope, keys: list[str], template: str, name: str
) -> Iterable[tuple[Rendered, dict[str, Any]]]:
    """A statement with ``key IN (...)`` per batch of keys. Batches are padded (by repeating a
    key, which changes nothing) to a power of two, so the statement cache holds a dozen texts
    rather than one per batch length."""
    step = scope.backend.dialect.max_params - 10
    for i in range(0, len(keys), step):
        part = keys[i : i + step]
        size = 1
        while size < len(part):
            size *= 2
        size = min(size, step)
        part = part + [part[-1]] * (size - len(part))
        marks = ", ".join(f":k{j}" for j in range(size))
        sql = scope.sql(SQL, f"{name}:{size}", template.replace("{marks}", marks))
        params: dict[str, Any] = {f"k{j}": k for j, k in enumerate(part)}
        params.update(ns=scope.namespace, now=now_us())
        yield sql, params


def scan(
    scope: Scope, *, values: bool, desc: bool = False, batch: int = 500
) -> Iterator[tuple[str, bytes | None]]:
    """(key, value) rows in key order, a batch per query, continuing after the last key seen
    (keyset pagination; no connection is held between batches, so iteration never blocks
    writers). A concurrent writer can neither make it fail nor make it yield a key twice;
    keys written behind the cursor are not seen, as in a database cursor."""
    tag = f"{'v' if values else 'k'}:{'desc' if desc else 'asc'}"
    first, more = scope.sql(SQL, f"scan:{tag}"), scope.sql(SQL, f"scan_after:{tag}")
    after: str | None = None
    limit = max(1, int(batch))
    while True:
        with scope.connection() as conn:
            params = {"ns": scope.namespace, "now": now_us(), "limit": limit}
            if after is None:
                rows = conn.execute(first, params).fetchall()
            else:
                rows = conn.execute(more, dict(params, after=after)).fetchall()
            out: list[tuple[str, bytes | None]] = []
            for row in rows:
                if not values:
                    out.append((row[0], None))
                elif row[2] is None:
                    out.append((row[0], bytes(row[1])))
                else:  # a chunked value: read it whole (it may be gone by now)
                    data = get_value(scope, conn, row[0])
                    if data is not None:
                        out.append((row[0], data))
        # the connection is back in the pool before the caller sees a row
        yield from out
        if len(rows) < limit:
            return
        after = rows[-1][0]


def present(scope: Scope, keys: Iterable[str]) -> set[str]:
    """Which of ``keys`` exist (live), in one query per batch."""
    wanted = list(dict.fromkeys(keys))
    found: set[str] = set()
    if not wanted:
        return found
    template = f"SELECT key FROM {{e}} WHERE namespace = :ns AND {LIVE} AND key IN ({{marks}})"
    with scope.connection() as conn:
        for sql, params in _in_batches(scope, wanted, template, "present"):
            found.update(r[0] for r in conn.execute(sql, params).fetchall())
    return found


def is_empty(scope: Scope) -> bool:
    return not _fetch(scope, "any")


def delete_live(scope: Scope, key: str) -> bool:
    """Delete ``key`` if it is live; whether it was (one ``DELETE ... RETURNING``)."""
    return bool(_fetch_write(scope, "delete_live", key=key))


def _take_locked(scope: Scope, conn: Conn, key: str | None) -> tuple[str, bytes] | None:
    """Read and delete ``key`` (or, if None, the greatest key) inside a transaction."""
    name = "take_last" if key is None else "take_key"
    p = {"ns": scope.namespace, "now": now_us(), "key": key}
    row = conn.execute(scope.sql(SQL, name), p).fetchone()
    if row is None:
        return None
    k = row[0]
    data = bytes(row[1]) if row[2] is None else read_blob(scope, conn, k, row[2], row[3])
    conn.execute(scope.sql(SQL, "delete"), {"ns": scope.namespace, "key": k})
    return k, data


def pop_value(scope: Scope, key: str) -> bytes | None:
    """Delete ``key`` and return its value (None when it is missing): one
    ``DELETE ... RETURNING`` for an inline value. The delete trigger drops a chunked value's
    chunks before RETURNING could read them, so such a value is read and deleted under a row
    lock in one transaction."""
    rows = _fetch_write(scope, "pop_inline", key=key)
    if rows:
        return bytes(rows[0][0])
    if not _fetch(scope, "probe_blob", key=key):
        return None
    got = scope.atomic(lambda conn: _take_locked(scope, conn, key))
    return None if got is None else got[1]


def pop_last(scope: Scope) -> tuple[str, bytes] | None:
    """Delete the greatest key and return it with its value; None when there is none."""
    while True:
        rows = _fetch_write(scope, "pop_last_inline")
        if rows:
            return rows[0][0], bytes(rows[0][1])
        # Nothing deleted: empty, the last value is chunked, or a concurrent pop took the
        # same key first (PostgreSQL then re-checks the row and skips it).
        got = scope.atomic(lambda conn: _take_locked(scope, conn, None))
        if got is not None:
            return got
        if is_empty(scope):
            return None


def pop_first(scope: Scope) -> tuple[str, bytes | None] | None:
    """Delete the smallest key (its value inline, as set elements are) and return it."""
    while True:
        rows = _fetch_write(scope, "pop_first")
        if rows:
            value = rows[0][1]
            return rows[0][0], None if value is None else bytes(value)
        # nothing deleted: empty, or a concurrent pop took that element first
        if is_empty(scope):
            return None


def _inline_row(scope: Scope, key: str, value: bytes, now: int) -> dict[str, Any]:
    return {
        "ns": scope.namespace,
        "key": key,
        "value": value,
        "blob_id": None,
        "size": len(value),
        "now": now,
        "exp": None,
        "ct": None,
        "meta": None,
        "sum": hashlib.sha256(value).hexdigest(),
    }


def insert_absent(scope: Scope, key: str, value: bytes) -> None:
    """Insert ``key`` unless it is live (the existing row stays): one statement."""
    with scope.connection() as conn:
        insert_absent_in(scope, conn, {key: value})


def insert_absent_in(scope: Scope, conn: Conn, rows: dict[str, bytes]) -> None:
    """Insert-if-absent of many inline values on ``conn``. It is the guarded "insert_new"
    without the index-generation guard: a set's namespace has no indexes (PersistentSet
    offers no create_index), so there is nothing for the guard to protect."""
    now = now_us()
    conn.executemany(
        scope.sql(SQL, "insert_absent"), [_inline_row(scope, k, v, now) for k, v in rows.items()]
    )


def delete_keys_in(scope: Scope, conn: Conn, keys: list[str]) -> None:
    if scope.backend.dialect.supports_any_array:
        # one array parameter per 10,000 keys: one statement, one trigger call, per batch
        stmt = scope.sql(SQL, "delete_any")
        for i in range(0, len(keys), 10_000):
            conn.execute(stmt, {"ns": scope.namespace, "keys": keys[i : i + 10_000]})
        return
    template = "DELETE FROM {e} WHERE namespace = :ns AND key IN ({marks})"
    for sql, params in _in_batches(scope, keys, template, "delete_in"):
        conn.execute(sql, params)


def keep_only(scope: Scope, conn: Conn, keep: set[str]) -> None:
    """Delete every key not in ``keep``, on ``conn`` (inside the caller's transaction)."""
    step = scope.backend.dialect.max_params - 10
    if len(keep) <= step:
        template = "DELETE FROM {e} WHERE namespace = :ns AND key NOT IN ({marks})"
        for sql, params in _in_batches(scope, sorted(keep), template, "keep_only"):
            conn.execute(sql, params)
        return
    # Too many to name in one statement: walk our keys inside the transaction instead.
    rows = conn.execute(scope.sql(SQL, "all_keys"), {"ns": scope.namespace}).fetchall()
    delete_keys_in(scope, conn, [k for (k,) in rows if k not in keep])


def present_locked(scope: Scope, conn: Conn, keys: list[str]) -> set[str]:
    """Which of ``keys`` have a row, locked until the transaction ends."""
    template = "SELECT key FROM {e} WHERE namespace = :ns AND key IN ({marks}){for_update}"
    found: set[str] = set()
    for sql, params in _in_batches(scope, keys, template, "present_locked"):
        found.update(r[0] for r in conn.execute(sql, params).fetchall())
    return found


# -- index queries (find, count, after=key) --------------------------------------------------
_INDEX_ID = "i.namespace = :ns AND i.index_id = (SELECT id FROM {ix} WHERE namespace = :ns AND name = :name)"
# The entry's columns and liveness are read by correlated scalar subqueries on its primary key,
# not by a JOIN: PostgreSQL never turns a scalar subquery into a join, so each result row costs
# one index probe whatever the planner estimates. With a JOIN it hash-joins a sequential scan
# of the whole entries table (every namespace) as soon as a range looks large. The conditions
# are written as IS NOT NULL and <=, whose default selectivities (0.995, 1/3) keep the row
# estimate realistic; "= 1" or IS NULL (0.005 each) make a LIMIT look useless to the planner,
# which then sorts the whole range instead of reading it in index order.
_ENTRY = "(SELECT e.{col} FROM {{e}} e WHERE e.namespace = :ns AND e.key = i.key)"
_IE_LIVE = (
    "(SELECT 1 FROM {e} e WHERE e.namespace = :ns AND e.key = i.key "
    "AND (e.expires_at IS NULL OR e.expires_at > :now)) IS NOT NULL"
)


def _key_is(scope: Scope, alias: str, key: str) -> str:
    """``alias.key = key``, flagged as selective to SQLite's planner (see _dedupe); on SQLite
    only, as PostgreSQL has no likelihood()."""
    cond = f"{alias}.key = {key}"
    return scope.backend.dialect.selective(cond)


def _dedupe(scope: Scope, flt: Filter, desc: bool) -> tuple[str, dict[str, Any]]:
    """Each key once, at its first matching value in the requested order: this entry is the
    key's first matching one. A correlated scalar subquery, for the same reason as _IE_LIVE (the
    rejected alternative, GROUP BY key, reads the whole range before returning a row).

    The subquery must read the key's own entries through the (index_id, key) B-tree, a few
    rows; read through the primary key it scans the whole matching range once per result row,
    quadratic in the matches (a count of 16,000 took 22 s on SQLite, 17 s on PostgreSQL
    before its first ANALYZE). So its WHERE names only
    index_id and key, and the filter is applied in the ORDER BY expression, where no planner
    can turn it into a range on (index_id, ivalue) nor read it in primary-key order: with
    ``j.ivalue`` bounds in the WHERE and ``ORDER BY j.ivalue`` (the rejected form) the
    primary key is ordered and covering, and SQLite takes it. Entries outside the filter sort
    after every matching one (``TOP`` ascending, ``b""`` descending: no NULL, whose place in
    the order differs per dialect). MIN/MAX would say it shorter, but PostgreSQL has no
    min(bytea).

    SQLite without ANALYZE statistics still guesses that ``index_id = ?`` alone finds 10 rows
    and prefers the covering primary key to the (index_id, key) index, which must also read
    the table: likelihood() tells it that the key equality is selective (it is: one key).
    PostgreSQL has no likelihood() and needs none, as its cost model bounds a B-tree scan by
    the leading equalities only.

    ``i.ivalue <= first`` holds exactly when ``i`` is that first entry, as ``i`` itself is
    among the values; ``=`` would say the same with a 0.005 selectivity estimate (see above).
    """
    if not flt.multi:
        return "", {}
    cond, params = flt.render("j", "")
    op, direction, past = (">=", "DESC", b"") if desc else ("<=", "ASC", TOP)
    return (
        f" AND i.ivalue {op} (SELECT CASE WHEN {cond} THEN j.ivalue ELSE :past END AS first "
        f"FROM {{ie}} j{{ie_by_key}} WHERE j.namespace = :ns AND j.index_id = i.index_id AND "
        f"{_key_is(scope, 'j', 'i.key')} "
        f"ORDER BY first {direction} LIMIT 1)",
        {**params, "past": past},
    )


def find_statement(
    scope: Scope, flt: Filter, cond: str, params: dict[str, Any], desc: bool, items: bool
) -> tuple[Rendered, dict[str, Any]]:
    """A find statement: ``cond`` (already rendered) plus the index, liveness and dedupe."""
    dedupe, dparams = _dedupe(scope, flt, desc)
    direction = "DESC" if desc else "ASC"
    cols = "i.key, i.ivalue"
    if items:
        cols += ", " + ", ".join(_ENTRY.format(col=c) for c in ("value", "blob_id", "size"))
    text = (
        f"SELECT {cols} FROM {{ie}} i WHERE {_INDEX_ID} AND {cond}{dedupe} AND {_IE_LIVE} "
        f"ORDER BY i.ivalue {direction}, i.key {direction} LIMIT :limit"
    )
    return scope.sql(SQL, "ix:" + text, text), {**dparams, **params}


def position_statement(scope: Scope, name: str, key: str) -> tuple[Rendered, dict[str, Any]]:
    """All of ``key``'s entries in the index, for ``after=key``; the caller filters them. With
    the filter in the WHERE (the rejected form, ``... ORDER BY i.ivalue LIMIT 1``) SQLite reads
    the primary-key range up to the key instead, on every page, so a walk by ``after=key``
    pages was quadratic in the range; the key's own entries are few (see _dedupe)."""
    text = f"SELECT i.ivalue FROM {{ie}} i WHERE {_INDEX_ID} AND {_key_is(scope, 'i', ':akey')}"
    return scope.sql(SQL, "ix:" + text, text), {"ns": scope.namespace, "name": name, "akey": key}


def count_statement(scope: Scope, name: str, flt: Filter) -> tuple[Rendered, dict[str, Any]]:
    """The count statement: find's conditions, dedupe included, so it counts exactly the keys
    find returns. The rejected alternative, ``COUNT(DISTINCT i.key)``, counts the same keys
    without the per-row probe but sorts them all, and is a second text to keep in step."""
    cond, params = flt.render("i", "")
    dedupe, dparams = _dedupe(scope, flt, False)
    text = f"SELECT COUNT(*) FROM {{ie}} i WHERE {_INDEX_ID} AND {cond}{dedupe} AND {_IE_LIVE}"
    return scope.sql(SQL, "ix:" + text, text), {
        **params,
        **dparams,
        "ns": scope.namespace,
        "name": name,
    }


# -- key scans and batches -------------------------------------------------------------------
def key_batch(
    scope: Scope, prefix: str, after: str | None, limit: int, inclusive: bool = False
) -> list[str]:
    """Up to ``limit`` live keys starting with ``prefix``, in order, after ``after`` (from it,
    with ``inclusive``): a primary-key range [prefix, prefix_upper(prefix)), no LIKE."""
    hi = prefix_upper(prefix) if prefix else None
    # The NOT EXISTS is one probe of the expiry index, evaluated once per statement (it is
    # not correlated): a namespace with nothing expired skips the per-row NOT IN test (12% of
    # a 500-key prefix scan's time), and in one statement, so it is one snapshot.
    live = _SCAN_LIVE if scope.backend.dialect.scans_keys_by_exclusion else LIVE
    conds = ["namespace = :ns", live]
    params: dict[str, Any] = {"ns": scope.namespace, "now": now_us(), "limit": limit}
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
    text = "SELECT key FROM {e} WHERE " + " AND ".join(conds) + " ORDER BY key LIMIT :limit"
    stmt = scope.sql(SQL, name, text)
    return scope.read(lambda conn: [r[0] for r in conn.execute(stmt, params).fetchall()])


def common_prefixes(scope: Scope, prefix: str, delimiter: str) -> Iterator[str]:
    """minimalkv's ``iter_prefixes`` as a skip scan inside the database: each page is one
    recursive statement whose every step seeks the first live key past the common prefix
    of the step before (or past the plain key), so SQLite does in one statement what took
    a statement per prefix (10 against 2.8 µs a prefix, the raw driver's loop 6.5).

    Only where ``walks_prefixes_in_sql`` (SQLite, PostgreSQL), and for a delimiter whose
    last character has a successor."""
    d = scope.backend.dialect
    hi = prefix_upper(prefix) if prefix else None
    # past every key starting with "<...><delimiter>": "<...>" + the delimiter's successor
    dup = delimiter[:-1] + chr(ord(delimiter[-1]) + 1)
    live = _SCAN_LIVE if d.scans_keys_by_exclusion else LIVE
    bound = " AND key < :hi" if hi is not None else ""
    seek = f"SELECT key FROM {{e}} WHERE namespace = :ns AND START{bound} AND {live}"
    first = seek.replace("START", "key >= :start")
    # after a key holding the delimiter (at 1-based position i of what follows the prefix):
    # its first plen + i - 1 characters and the successor; after a plain key: past the key
    i = d.position_sql.format(s="substr(p.k, CAST(:plen AS INTEGER) + 1)", sub=":delim")
    step = seek.replace(
        "START",
        d.past_plain_key.format(
            found=f"{i} > 0",
            skip=f"substr(p.k, 1, CAST(:plen AS INTEGER) + {i} - 1) || :dup",
            k="p.k",
        ),
    )
    text = (
        f"WITH RECURSIVE p(k) AS (SELECT ({first} ORDER BY key LIMIT 1) "
        f"UNION ALL SELECT ({step} ORDER BY key LIMIT 1) FROM p WHERE p.k IS NOT NULL) "
        "SELECT k FROM p WHERE k IS NOT NULL LIMIT :limit"
    )
    stmt = scope.sql(SQL, f"prefixes:{hi is not None}", text)
    params: dict[str, Any] = {
        "ns": scope.namespace,
        "plen": len(prefix),
        "delim": delimiter,
        "dup": dup,
        "start": prefix,
    }
    if ":nul" in d.past_plain_key:
        params["nul"] = "\x00"
    if hi is not None:
        params["hi"] = hi
    limit = 16  # a caller after the first few prefixes pays for few seeks
    repeat: str | None = None  # a page's first key, when it is the previous page's last
    while True:
        params["now"], params["limit"] = now_us(), limit
        keys = scope.read(lambda conn: [r[0] for r in conn.execute(stmt, params).fetchall()])
        for key in keys[1:] if keys and keys[0] == repeat else keys:
            pos = key.find(delimiter, len(prefix))
            yield key if pos == -1 else key[: pos + len(delimiter)]
        if len(keys) < limit:
            return
        last = keys[-1]
        pos = last.find(delimiter, len(prefix))
        repeat = None
        if pos != -1:
            params["start"] = last[:pos] + dup
        elif ":nul" in d.past_plain_key:
            params["start"] = last + "\x00"
        else:  # no NUL in its text: the next page starts at the key itself, and skips it
            params["start"] = repeat = last
        limit = min(limit * 4, 1024)


# a key scan's liveness test on SQLite (see key_batch): one probe of the expiry index per
# statement when nothing is expired, else the expired keys left out
_SCAN_LIVE = (
    "(NOT EXISTS (SELECT 1 FROM {e} WHERE namespace = :ns AND expires_at <= :now)"
    " OR key NOT IN (SELECT key FROM {e} WHERE namespace = :ns AND expires_at <= :now))"
)


def get_many(scope: Scope, keys: list[str]) -> dict[str, bytes]:
    """The live values of ``keys`` (distinct, validated): on PostgreSQL one statement with
    the keys as one array parameter (``= ANY``), elsewhere one query per batch of ``IN``."""
    return scope.read(lambda conn: _get_many_on(scope, conn, keys))


def _get_many_on(scope: Scope, conn: Conn, keys: list[str]) -> dict[str, bytes]:
    # Two columns a row: a chunked value's row (value NULL) is read again, with its chunks,
    # by get_value. PyMySQL parses every column of every row in Python: key, value, blob_id
    # and size were 40% of MariaDB's get_many.
    if scope.backend.dialect.supports_any_array and keys:
        params = {"ns": scope.namespace, "now": now_us(), "keys": keys}
        rows = conn.execute_bytes(scope.sql(SQL, "get_many_any"), params).fetchall()
    else:
        template = (
            f"SELECT key, value FROM {{e}} WHERE namespace = :ns AND {LIVE} AND key IN ({{marks}})"
        )
        rows = []
        for sql, params in _in_batches(scope, keys, template, "get_many"):
            rows += conn.execute(sql, params).fetchall()
    out: dict[str, bytes] = {}
    for key, value in rows:
        if value is not None:
            out[key] = value if type(value) is bytes else bytes(value)
        else:
            chunked = get_value(scope, conn, key)
            if chunked is not None:  # (None: deleted since the first statement)
                out[key] = chunked
    return out


def namespace_stats(scope: Scope) -> list[tuple[str, int, int]]:
    """(namespace, live entries, bytes) of every namespace with a live entry, by name: the
    store's own, other stores', and the derived namespaces of collections and caches."""
    with scope.connection() as conn:
        rows = conn.execute(scope.sql(SQL, "namespace_stats"), {"now": now_us()}).fetchall()
    return [(r[0], int(r[1]), int(r[2])) for r in rows]


# -- entries with their details ----------------------------------------------------------------
def entry_info(scope: Scope, row: Any) -> EntryInfo:
    """An EntryInfo from the first columns of a row (ENTRY_COLUMNS' order)."""
    return EntryInfo(
        key=row[0],
        size=int(row[1]),
        version=int(row[2]),
        created_at=from_micros(row[3]),
        updated_at=from_micros(row[4]),
        expires_at=None if row[5] is None else from_micros(row[5]),
        content_type=row[6],
        metadata=scope.backend.dialect.load_json(row[7]) or {},
        checksum=row[8],
    )


def _entry_value(scope: Scope, conn: Conn, row: Any) -> tuple[EntryInfo, bytes] | None:
    """An entry's details and its value, belonging together. An inline value comes in the
    same row; a chunked one is read after it, and since blob ids are never reused a short
    read means the entry was replaced meanwhile: then its row is read again."""
    for _ in range(RACE.attempts):
        info = entry_info(scope, row)
        if row[10] is None:
            return info, bytes(row[9])
        rows = conn.execute_bytes(
            scope.sql(SQL, "chunks"), {"ns": scope.namespace, "blob": row[10]}
        ).fetchall()
        data = b"".join(bytes(r[0]) for r in rows)
        if len(data) == info.size:
            return info, data
        params = {"ns": scope.namespace, "key": info.key, "now": now_us()}
        row = conn.execute(scope.sql(SQL, "entry_row"), params).fetchone()
        if row is None:
            return None
    raise TransactionError(f"the value of {row[0]!r} kept changing while it was read")


def scan_entries(
    scope: Scope, prefix: str, *, values: bool, batch: int = 500
) -> Iterator[tuple[EntryInfo, bytes | None]]:
    """Live entries whose keys start with ``prefix``, in key order, with their details (and
    values), ``batch`` rows per statement by keyset pagination over the primary-key range; no
    connection is held between batches."""
    hi = prefix_upper(prefix) if prefix else None
    tag = f"{int(bool(prefix))}{int(hi is not None)}{int(values)}"
    first, more = scope.sql(SQL, f"entries:{tag}"), scope.sql(SQL, f"entries_after:{tag}")
    after: str | None = None
    while True:
        params: dict[str, Any] = {"ns": scope.namespace, "now": now_us(), "limit": batch}
        if prefix:
            params["lo"] = prefix
        if hi is not None:
            params["hi"] = hi
        out: list[tuple[EntryInfo, bytes | None]] = []
        with scope.connection() as conn:
            if after is None:
                rows = conn.execute(first, params).fetchall()
            else:
                rows = conn.execute(more, dict(params, after=after)).fetchall()
            for row in rows:
                if not values:
                    out.append((entry_info(scope, row), None))
                    continue
                got = _entry_value(scope, conn, row)
                if got is not None:
                    out.append(got)
        yield from out
        if len(rows) < batch:
            return
        after = rows[-1][0]
