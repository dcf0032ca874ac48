"""Secondary indexes on a namespace: creating, dropping and rebuilding them, and finding
and counting the keys whose values match a query.

An index maps each value to zero, one or several *index values* (see :mod:`kvstore._indexing`
for the encoding); its entries live in ``kv_index_entries`` and change in the same
transaction as the value they describe. A multi-valued index can hold several entries for one
key. A query returns each key once, at its *first* matching index value in the requested
order; the SQL says so itself (a look-up of each row's key in the ``(index_id, key)`` B-tree),
so keyset pagination with ``after=`` never returns a key on two pages, and ``count`` counts
exactly what ``find`` returns. Every function takes a :class:`~kvstore._backend.Scope`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ._backend import Scope
from ._conn import Conn
from ._dialect import Rendered
from ._entries import (
    SQL as ENTRY_SQL,
)
from ._entries import (
    count_live,
    count_statement,
    find_statement,
    forget_index_state,
    index_state,
    insert_entries,
    new_id,
    now_us,
    position_statement,
    read_blob,
    refresh_index_state,
)
from ._indexing import (
    MAX_ENCODED,
    MAX_IN,
    Filter,
    IndexInfo,
    IndexSpec,
    JsonField,
    NamespaceIndexes,
    callable_name,
    check_name,
    check_progress,
    decode_value,
    encode_value,
    info_of,
    json_field,
    parse_filter,
)
from ._validate import NOT_SET
from .errors import DatabaseError, IndexDefinitionError, IndexNotDeclaredError, UnknownIndexError

# encode_value, decode_value, JsonField, json_field, IndexInfo and IndexDefinitionError have
# always been importable from here: kvstore.indexes is the public home of the index API.
__all__ = [
    "MAX_ENCODED",
    "MAX_IN",
    "IndexDefinitionError",
    "IndexInfo",
    "JsonField",
    "count_matches",
    "create_index",
    "decode_value",
    "drop_index",
    "encode_value",
    "find_matches",
    "json_field",
    "list_indexes",
    "rebuild_index",
]

_BATCH = 500  # back-fill batch (keys per round trip)
_PAGE = 1000  # rows per query when find() has no limit


def create_index(
    scope: Scope,
    name: str,
    extractor: Any,
    *,
    unique: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> IndexInfo:
    """Create (and back-fill) an index, or declare an existing one with an equal definition."""
    name = check_name(name)
    if not isinstance(unique, bool):
        raise TypeError(f"unique must be a bool, not {type(unique).__name__}")
    check_progress(progress)
    if isinstance(extractor, str):
        extractor = json_field(extractor)
    if isinstance(extractor, JsonField):
        kind, definition = "json", extractor.path
    elif callable(extractor):
        kind, definition = "callable", callable_name(extractor)
        if len(definition) > 1024:
            raise ValueError(f"the callable's qualified name is too long: {definition[:80]!r}...")
    else:
        raise TypeError(
            "an index extractor is kvscope.json_field(path) or a callable, "
            f"not {type(extractor).__name__}"
        )
    b = scope.backend

    def run(conn: Conn) -> IndexInfo:
        _lock_for_build(scope, conn)
        row = conn.execute(
            scope.sql(ENTRY_SQL, "index_def"),
            {"ns": scope.namespace, "name": name},
        ).fetchone()
        if row is not None:
            if (row[1], row[2], bool(row[3])) != (kind, definition, unique):
                raise IndexDefinitionError(
                    f"index {name!r} already exists in namespace {scope.namespace!r} as "
                    f"{row[1]} {row[2]!r} (unique={bool(row[3])}), not {kind} {definition!r} "
                    f"(unique={unique}); drop it first to redefine it"
                )
            return IndexInfo(name, kind, definition, unique, True)
        conn.execute(
            scope.sql(ENTRY_SQL, "index_insert"),
            {
                "ns": scope.namespace,
                "iid": new_id(),
                "name": name,
                "kind": kind,
                "definition": definition,
                "unique": unique,
                "now": now_us(),
            },
        )
        iid = conn.execute(
            scope.sql(ENTRY_SQL, "index_def"), {"ns": scope.namespace, "name": name}
        ).fetchone()[0]
        _bump_generation(scope, conn)
        spec = IndexSpec(int(iid), name, kind, definition, unique, extractor)
        written[0] = _backfill(scope, conn, spec, progress)
        return info_of(spec)

    written = [0]
    try:
        info = scope.atomic(run, write=False)
    finally:
        forget_index_state(scope)
    _analyze_after(scope, written[0])
    if kind == "callable":
        # Only once the definition is known to match: a refused redefinition must not swap
        # the extractor this process maintains the existing index with.
        b.declared[(scope.namespace, name)] = extractor
    return info


#: entries an index build writes before it gathers statistics on the index entries
ANALYZE_AFTER = 1000


def _analyze_after(scope: Scope, written: int) -> None:
    """Statistics on the index entries after a build that wrote many (see the dialect's
    ``analyze_index_entries``). Best effort: the index is built whatever this does, and a
    role that does not own the table gets a warning from the server, not an error."""
    sql = scope.backend.dialect.analyze_index_entries
    if sql is None or written < ANALYZE_AFTER:
        return
    text = sql.format(index_entries=scope.backend.tables.index_entries.name)
    with contextlib.suppress(DatabaseError):
        scope.single(lambda conn: conn.run(text))


def _lock_for_build(scope: Scope, conn: Conn) -> None:
    sql = scope.backend.dialect.lock_entries_for_index_build
    if sql:
        conn.run(sql.format(entries=scope.backend.tables.entries.name))


def _bump_generation(scope: Scope, conn: Conn) -> None:
    conn.execute(scope.sql(ENTRY_SQL, "bump_generation"), {"ns": scope.namespace})


def _backfill(
    scope: Scope, conn: Conn, spec: IndexSpec, progress: Callable[[int, int], None] | None
) -> int:
    """Index every live entry, in key order, ``_BATCH`` keys per round trip; return how
    many entries it read."""
    now = now_us()
    total = count_live(scope, conn)
    done = 0
    after = ""
    state = NamespaceIndexes(scope.namespace, 0, [spec], [], {spec.name: spec})
    while True:
        rows = conn.execute(
            scope.sql(ENTRY_SQL, "backfill_batch"),
            {"ns": scope.namespace, "after": after, "now": now, "limit": _BATCH},
        ).fetchall()
        batch: dict[str, list[dict[str, Any]]] = {}
        for key, value, blob_id, size in rows:
            data = bytes(value) if blob_id is None else read_blob(scope, conn, key, blob_id, size)
            batch[key] = state.rows_for(key, _const(data))
        insert_entries(scope, conn, state, batch)
        done += len(rows)
        if progress is not None:
            progress(done, total)
        if len(rows) < _BATCH:
            return done
        after = rows[-1][0]


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _spec(scope: Scope, name: str, conn: Conn | None = None) -> IndexSpec:
    spec = refresh_index_state(scope, conn).by_name.get(name)
    if spec is None:
        raise UnknownIndexError(scope.namespace, name)
    return spec


def drop_index(scope: Scope, name: str) -> None:
    """Drop an index and its entries; ``KeyError`` (UnknownIndexError) if it does not exist."""
    name = check_name(name)
    b = scope.backend

    def run(conn: Conn) -> None:
        # the same lock as a build: a writer that checked the index generation must not
        # see it change (and its index rows lose their index) before it commits
        _lock_for_build(scope, conn)
        row = conn.execute(
            scope.sql(ENTRY_SQL, "index_def"), {"ns": scope.namespace, "name": name}
        ).fetchone()
        if row is None:
            raise UnknownIndexError(scope.namespace, name)
        ids = {"ns": scope.namespace, "iid": row[0]}
        conn.execute(scope.sql(ENTRY_SQL, "ie_drop"), ids)
        conn.execute(scope.sql(ENTRY_SQL, "index_drop"), ids)
        _bump_generation(scope, conn)

    try:
        scope.atomic(run, write=False)
        b.declared.pop((scope.namespace, name), None)
    finally:
        forget_index_state(scope)


def rebuild_index(
    scope: Scope, name: str, *, progress: Callable[[int, int], None] | None = None
) -> IndexInfo:
    """Recompute every entry of an index from the current values (after the extractor's code
    changed, or entries were edited by hand)."""
    name = check_name(name)
    check_progress(progress)

    def run(conn: Conn) -> IndexInfo:
        _lock_for_build(scope, conn)
        spec = _spec(scope, name, conn)
        if spec.extractor is None:
            raise IndexNotDeclaredError(scope.namespace, [name])
        conn.execute(scope.sql(ENTRY_SQL, "ie_drop"), {"ns": scope.namespace, "iid": spec.id})
        written[0] = _backfill(scope, conn, spec, progress)
        return info_of(spec)

    written = [0]
    info = scope.atomic(run, write=False)
    _analyze_after(scope, written[0])
    return info


def list_indexes(scope: Scope) -> list[IndexInfo]:
    """The namespace's indexes, by name, as the database records them now."""
    state = refresh_index_state(scope)
    return [info_of(s) for s in state.by_name.values()]


# -- queries ---------------------------------------------------------------------------------
@dataclass
class _Find:
    """A validated find() call."""

    scope: Scope
    name: str
    flt: Filter
    desc: bool
    items: bool
    limit: int | None
    after: tuple[bytes, str] | None

    def statements(
        self, pos: tuple[bytes, str] | None
    ) -> Iterator[tuple[Rendered, dict[str, Any]]]:
        """The statements that fetch, in result order, the rows after position ``pos`` (from
        the start when None); run them in turn until a page is full.

        An ``in_`` list runs one equality statement per value: PostgreSQL (before 17) cannot
        read ``ivalue IN (...)`` from a B-tree in index order, so with ORDER BY ... LIMIT it
        walks the whole index and filters; each equality is an exact range on every dialect.
        """
        flt, desc = self.flt, self.desc
        if pos is not None and flt.matches(pos[0]):
            key_op = "<" if desc else ">"
            yield self._stmt(f"i.ivalue = :av AND i.key {key_op} :ak", {"av": pos[0], "ak": pos[1]})
        rest = flt if pos is None else flt.beyond(pos[0], desc)
        if rest.kind == "range":
            yield self._stmt(*rest.render("i", "b_"))
        elif rest.kind in ("eq", "in"):
            for v in reversed(rest.values) if desc else rest.values:
                yield self._stmt("i.ivalue = :b_v", {"b_v": v})

    def _stmt(self, cond: str, params: dict[str, Any]) -> tuple[Rendered, dict[str, Any]]:
        sql, p = find_statement(self.scope, self.flt, cond, params, self.desc, self.items)
        return sql, {**p, "ns": self.scope.namespace, "name": self.name}


def _plan(
    scope: Scope,
    index: str,
    value: Any,
    *,
    items: bool,
    order: str,
    limit: int | None,
    after: Any,
    query: dict[str, Any],
) -> _Find:
    """Validate a find() call, before any database work (except resolving ``after=key``)."""
    name = check_name(index)
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    flt = parse_filter(value, query)
    desc = order == "desc"
    pos = None if after is None else _resolve_after(scope, name, flt, desc, after)
    return _Find(scope, name, flt, desc, items, limit, pos)


def _resolve_after(
    scope: Scope, name: str, flt: Filter, desc: bool, after: Any
) -> tuple[bytes, str]:
    """``after=`` as the (encoded index value, key) position to continue from."""
    if isinstance(after, tuple):
        if len(after) != 2:
            raise TypeError(f"after= takes a key or an (index value, key) pair, got {after!r}")
        value, key = after
        if not isinstance(key, str):
            raise TypeError(f"the key in after=(value, key) must be str, not {type(key).__name__}")
        if "\x00" in key:
            raise ValueError("the key in after=(value, key) cannot contain NUL")
        # A position, not a lookup: the key need not exist, nor be a valid key ("" is the
        # start of ``value``'s run of keys).
        return encode_value(value), key
    if not isinstance(after, str):
        raise TypeError(
            "after= takes the last key of the previous page, or its (index value, key), "
            f"not {type(after).__name__}"
        )
    key = scope.key(after)
    if flt.kind == "none":
        return b"", key  # nothing matches, whatever the position
    # The key's position in this query is its first matching value in this order (_dedupe).
    with scope.connection() as conn:
        rows = conn.execute(*position_statement(scope, name, key)).fetchall()
        values = [v for v in (bytes(r[0]) for r in rows) if flt.matches(v)]
        if not values:
            _check_exists(scope, name, conn)
            raise ValueError(
                f"after={key!r}: that key is not a result of this query (any more); pass "
                "after=(index value, key) to continue past a key that was changed or deleted"
            )
    return max(values) if desc else min(values), key


def _check_exists(scope: Scope, name: str, conn: Conn) -> None:
    """``UnknownIndexError`` unless the index exists: asked of the cached state first (an
    empty result is common, a typo rare), then of the database."""
    if (
        name not in index_state(scope, conn).by_name
        and name not in refresh_index_state(scope, conn).by_name
    ):
        raise UnknownIndexError(scope.namespace, name)


def find_matches(
    scope: Scope,
    index: str,
    value: Any = NOT_SET,
    *,
    items: bool,
    order: str = "asc",
    limit: int | None = None,
    after: Any = None,
    **query: Any,
) -> Iterator[tuple[str, bytes | None]]:
    """Keys (and values) matching a query on index ``index``, ordered by index value then key.

    Arguments are validated (and ``after=key`` resolved) on the call; rows are then fetched a
    page at a time as the iterator is consumed, each page by keyset pagination from the last
    row of the one before.
    """
    plan = _plan(
        scope, index, value, items=items, order=order, limit=limit, after=after, query=query
    )
    return _run_find(plan)


def _run_find(plan: _Find) -> Iterator[tuple[str, bytes | None]]:
    scope = plan.scope
    remaining = plan.limit
    pos = plan.after
    now = now_us()
    # A key that another writer moves forward past the cursor between two pages has been
    # returned already; it is not returned twice in one call.
    seen: set[str] = set()
    first = True
    while remaining is None or remaining > 0:
        page = _PAGE if remaining is None else min(remaining, _PAGE)

        # Each page is its own read (a replica may serve it, see Scope.read), as each of its
        # statements already was: a page never waits on the caller's pace between two yields.
        def fetch(conn: Conn, pos: Any = pos, page: int = page, first: bool = first) -> list[Any]:
            rows: list[Any] = []
            for sql, params in plan.statements(pos):
                more = conn.execute(sql, dict(params, now=now, limit=page - len(rows)))
                rows += more.fetchall()
                if len(rows) >= page:
                    break
            if first and not rows:
                _check_exists(scope, plan.name, conn)  # a typo, or no match?
            return rows

        rows = scope.read(fetch)
        first = False
        for row in rows:
            key = row[0]
            if key in seen:
                continue
            seen.add(key)
            data = None
            if plan.items:
                if row[3] is None:
                    data = bytes(row[2])
                else:
                    data = scope.read(functools.partial(_read_blob, scope, key, row[3], row[4]))
            yield key, data
            if remaining is not None:
                remaining -= 1
        if len(rows) < page:
            return
        pos = (bytes(rows[-1][1]), rows[-1][0])


def _read_blob(scope: Scope, key: str, blob_id: int, size: int, conn: Conn) -> bytes:
    return read_blob(scope, conn, key, blob_id, size)


def count_matches(scope: Scope, index: str, value: Any = NOT_SET, **query: Any) -> int:
    """How many live keys ``find`` would return for the same query (each key once)."""
    name = check_name(index)
    sql, params = count_statement(scope, name, parse_filter(value, query))

    def run(conn: Conn) -> int:
        n = int(conn.execute(sql, dict(params, now=now_us())).fetchone()[0])
        if n == 0:
            _check_exists(scope, name, conn)
        return n

    return scope.read(run)
