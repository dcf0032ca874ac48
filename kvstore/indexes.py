"""Secondary indexes: look entries up by what their values contain, not only by key.

An index maps each value to zero, one or several *index values* (``str``, ``int``, ``float``,
``bool`` or timezone-aware ``datetime``). Index entries live in ``kv_index_entries`` and change
in the same transaction as the value they describe.

Index values are stored in one binary column in an order-preserving encoding: a type tag
(bool < number < str < datetime) followed by bytes that compare, byte by byte, the way the
values compare in Python. One B-tree on ``(index_id, ivalue, key)`` therefore answers equality,
ranges, prefixes and ``IN`` for every type, on every dialect, with no per-type columns (the
rejected alternative: one nullable column per type, which needs one B-tree per type and a
query per type for ``in_`` lists that mix them).

A multi-valued index can hold several entries for one key. A query returns each key once, at
its *first* matching index value in the requested order; the SQL says so itself (a look-up
of each row's key in the ``(index_id, key)`` B-tree), so keyset pagination with ``after=``
never returns a key on two pages, and ``count`` counts exactly what ``find`` returns.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._keys import NOT_SET
from ._schema import from_micros
from .errors import IndexNotDeclaredError, KVStoreError, UniqueViolation, UnknownIndexError

if TYPE_CHECKING:
    from ._conn import Conn
    from .store import Store

__all__ = [
    "IndexDefinitionError",
    "IndexInfo",
    "JsonField",
    "decode_value",
    "encode_value",
    "json_field",
]

_TAG_BOOL, _TAG_NUM, _TAG_STR, _TAG_DT = b"\x01", b"\x02", b"\x03", b"\x04"
#: PostgreSQL's B-tree refuses entries past ~2.7 kB, and an entry also holds its key (up to
#: 1,000 bytes for collections): stay well inside.
MAX_ENCODED = 1024
#: values an ``in_=`` list may hold: each is a bound parameter, and SQLite allows 999 per
#: statement on older builds
MAX_IN = 500
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-:]{1,200}")
_INT64 = 1 << 63
_BATCH = 500  # back-fill batch (keys per round trip)
_PAGE = 1000  # rows per query when find() has no limit
_INDEX_DEF = (
    "SELECT id, kind, definition, is_unique FROM {ix} WHERE namespace = :ns AND name = :name"
)

IndexValue = str | int | float | bool | dt.datetime


class IndexDefinitionError(KVStoreError, ValueError):
    """``create_index`` named an existing index with a different definition."""


# -- encoding -------------------------------------------------------------------------------
def _sortable_int64(n: int) -> bytes:
    return struct.pack(">Q", n + _INT64)


def encode_value(value: object) -> bytes:
    """The order-preserving binary form of one index value.

    Numbers compare by value whatever their type (``1 == 1.0``, as in Python), ``bool`` is its
    own type (``True`` is not ``1`` here, as in JSON), and types order bool < number < str <
    datetime. ``TypeError`` for any other type or a naive datetime, ``ValueError`` for NaN, an
    int outside 64 bits, or a string longer than :data:`MAX_ENCODED` bytes of UTF-8.
    """
    if isinstance(value, bool):
        return _TAG_BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, int | float):
        if isinstance(value, float) and math.isnan(value):
            raise ValueError("NaN cannot be an index value (it is not ordered)")
        if isinstance(value, int) and not -_INT64 <= value < _INT64:
            raise ValueError(f"integer index values must fit in 64 bits, got {value}")
        f = float(value) + 0.0  # folds -0.0 into 0.0
        bits = struct.unpack(">Q", struct.pack(">d", f))[0]
        # IEEE 754 doubles sort as integers once negatives are inverted and positives get the
        # sign bit set.
        bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | (1 << 63)
        # Ints past 2**53 are not exact as doubles: the remainder keeps them ordered and
        # distinct, and is 0 for every float, so 3 and 3.0 encode the same.
        rest = value - int(f) if isinstance(value, int) else 0
        return _TAG_NUM + struct.pack(">Q", bits) + _sortable_int64(rest)
    if isinstance(value, str):
        out = _TAG_STR + value.encode("utf-8", "surrogatepass")
        if len(out) > MAX_ENCODED:
            raise ValueError(
                f"index value too long: {len(out) - 1} bytes of UTF-8, at most {MAX_ENCODED - 1}"
            )
        return out
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise TypeError(f"datetime index values must be timezone-aware, got {value!r}")
        micros = (value - _EPOCH) // dt.timedelta(microseconds=1)
        return _TAG_DT + _sortable_int64(micros)
    raise TypeError(
        f"index values are str, int, float, bool or datetime, not {type(value).__name__}"
    )


def decode_value(data: bytes) -> IndexValue:
    """Inverse of :func:`encode_value`, up to number type: an integral number that fits in
    64 bits comes back as ``int`` (``3.0`` and ``3`` are one index value), any other number as
    ``float``; datetimes come back in UTC."""
    data = bytes(data)
    tag, body = data[:1], data[1:]
    if tag == _TAG_BOOL:
        return body == b"\x01"
    if tag == _TAG_STR:
        return body.decode("utf-8", "surrogatepass")
    if tag == _TAG_DT:
        return from_micros(struct.unpack(">Q", body)[0] - _INT64)
    if tag != _TAG_NUM or len(body) != 16:
        raise ValueError(f"not an encoded index value: {data!r}")
    bits = struct.unpack(">Q", body[:8])[0]
    bits = bits ^ (1 << 63) if bits >> 63 else bits ^ 0xFFFFFFFFFFFFFFFF
    f: float = struct.unpack(">d", struct.pack(">Q", bits))[0]
    rest: int = struct.unpack(">Q", body[8:16])[0] - _INT64
    if math.isfinite(f) and f.is_integer():
        n = int(f) + rest
        if -_INT64 <= n < _INT64:
            return n
    return f


def _type_of(encoded: bytes) -> bytes:
    return encoded[:1]


# -- extractors -------------------------------------------------------------------------------
@dataclass(frozen=True)
class JsonField:
    """Index the value at a dotted path in a JSON value (``"address.city"``, ``"tags"``).

    Values that are not JSON, lack the path, or hold ``null``, an object or a nested list
    there, are not indexed; a JSON list at the path gives one index entry per scalar element.
    A digit step indexes into a list (``"items.0.sku"``). Recorded in the database, so every
    process (and the CLI) maintains it.
    """

    path: str

    def __call__(self, value: bytes) -> Any:
        try:
            doc = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            return None
        for step in self.path.split("."):
            if isinstance(doc, dict):
                doc = doc.get(step)
            elif isinstance(doc, list) and step.isdigit() and int(step) < len(doc):
                doc = doc[int(step)]
            else:
                return None
        if isinstance(doc, list):
            return [v for v in doc if _json_scalar(v)]
        return doc if _json_scalar(doc) else None


def _json_scalar(v: object) -> bool:
    # json.loads accepts NaN and Infinity; NaN has no place in an order, so it is not indexed
    if isinstance(v, float):
        return not math.isnan(v)
    return isinstance(v, str | int)  # bool is an int


def json_field(path: str) -> JsonField:
    """An index extractor for the field at ``path`` (dots separate levels) of JSON values."""
    if not isinstance(path, str):
        raise TypeError(f"json_field takes a dotted path str, not {type(path).__name__}")
    if not path or len(path) > 1000 or any(not p for p in path.split(".")):
        raise ValueError(f"json_field takes a dotted path like 'user.email', got {path!r}")
    return JsonField(path)


def _callable_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


# -- per-namespace state ------------------------------------------------------------------------
@dataclass
class IndexSpec:
    id: int
    name: str
    kind: str
    definition: str
    unique: bool
    extractor: Callable[[bytes], Any] | None


@dataclass(frozen=True)
class IndexInfo:
    """What :meth:`Store.indexes` says about one index."""

    name: str
    kind: str  # "json" or "callable"
    definition: str  # the JSON path, or the callable's qualified name
    unique: bool
    declared: bool  # False for a callable index this process has not declared


class _Row(dict[str, Any]):
    """One index entry to insert: the driver's parameters, plus the extractor's own value
    (``3.0`` stays a float in a UniqueViolation, where decoding would say ``3``)."""

    __slots__ = ("value",)
    value: Any


@dataclass
class NamespaceIndexes:
    generation: int
    specs: list[IndexSpec]  # the ones this process can maintain
    undeclared: list[str]
    by_name: dict[str, IndexSpec]

    def rows_for(self, key: str, value: Callable[[], bytes]) -> list[dict[str, Any]]:
        """Index entries for ``key`` holding ``value``; raises before anything is written."""
        data = value()
        rows: list[dict[str, Any]] = []
        for spec in self.specs:
            for enc, original in _extract(spec, data).items():
                row = _Row(
                    index_id=spec.id, ivalue=enc, uvalue=enc if spec.unique else None, key=key
                )
                row.value = original
                rows.append(row)
        return rows

    def unique_violation(
        self, store: Store, conn: Conn, key: str, rows: list[dict[str, Any]] | None
    ) -> UniqueViolation:
        """The error for a write of ``rows`` to ``key`` that hit the unique constraint (for a
        copy, ``rows`` is None and ``key`` the destination): which index, which value, and
        which key holds it."""
        b = store._b
        if rows is None:
            # A copy: its entries failed to insert, but the copied value is already in place
            # under ``key`` (same transaction), so the extractors say what it holds. A callable
            # index this process has not declared cannot be asked; it reports no holder.
            row = conn.execute(
                b.sql("get"), {"ns": store._ns, "key": key, "now": _now()}
            ).fetchone()
            rows = []
            if row is not None:
                data = (
                    bytes(row[0]) if row[1] is None else store._read_blob(conn, key, row[1], row[2])
                )
                rows = self.rows_for(key, _const(data))
        names = {s.id: s.name for s in self.by_name.values()}
        for row in rows:
            if row.get("uvalue") is None:
                continue
            other = conn.execute(
                b.sql(
                    "ie_holder",
                    "SELECT key FROM {ie} WHERE index_id = :iid AND uvalue = :uv AND key <> :key",
                ),
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

    def expired_holders(
        self, store: Store, conn: Conn, key: str, rows: list[dict[str, Any]]
    ) -> list[str]:
        """Keys that block a unique value but have expired (their entries linger until purged)."""
        b = store._b
        out = []
        for row in rows:
            if row.get("uvalue") is None:
                continue
            hit = conn.execute(
                b.sql(
                    "ie_expired_holder",
                    "SELECT i.key FROM {ie} i JOIN {e} e ON e.namespace = :ns AND e.key = i.key "
                    "WHERE i.index_id = :iid AND i.uvalue = :uv AND i.key <> :key "
                    "AND e.expires_at IS NOT NULL AND e.expires_at <= :now",
                ),
                {
                    "ns": store._ns,
                    "iid": row["index_id"],
                    "uv": row["uvalue"],
                    "key": key,
                    "now": _now(),
                },
            ).fetchone()
            if hit is not None:
                out.append(hit[0])
        return out


def insert_entries(
    store: Store, conn: Conn, state: NamespaceIndexes, rows_by_key: dict[str, list[dict[str, Any]]]
) -> None:
    """Insert the index entries of many keys in a few statements (back-fill, ``put_many``).

    Rows go in multi-row ``INSERT ... VALUES`` statements: executemany costs a driver round
    trip (or a pipeline step) per row, several times slower on PostgreSQL. A unique violation sends the batch back to
    :meth:`Store._insert_index_rows` key by key, which frees values held by expired entries
    and names the key that holds a live one; the rejected alternative, a savepoint per key
    from the start, costs three round trips a key.
    """
    rows = [r for rs in rows_by_key.values() for r in rs]
    if not rows:
        return
    b = store._b
    # 80 rows keep the statement under 4 kB, which psycopg caches parsed
    per = min(80, b.dialect.max_params // 4)
    full = len(rows) - len(rows) % per
    try:
        with conn.savepoint():
            if full:
                marks = ", ".join(f"(:i{n}, :v{n}, :u{n}, :k{n})" for n in range(per))
                sql = b.sql(
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
                conn.executemany(b.sql("index_entry_insert"), rows[full:])
        return
    except Exception as exc:
        if not b.dialect.is_unique_violation(exc):
            raise
    for key, key_rows in rows_by_key.items():
        store._insert_index_rows(conn, state, key, key_rows)


def _now() -> int:
    from .store import _now_us

    return _now_us()


def _extract(spec: IndexSpec, data: bytes) -> dict[bytes, Any]:
    """The distinct encoded index values of one value (a tag listed twice is one entry)."""
    assert spec.extractor is not None
    got = spec.extractor(data)
    if got is None:
        return {}
    values: Iterable[Any] = got if isinstance(got, list | tuple | set | frozenset) else [got]
    out: dict[bytes, Any] = {}
    for v in values:
        if v is None:
            continue
        try:
            enc = encode_value(v)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"index {spec.name!r}: {exc}") from None
        out.setdefault(enc, v)
    return out


def load_state(store: Store, conn: Conn) -> NamespaceIndexes:
    b = store._b
    row = conn.execute(b.sql("generation"), {"ns": store._ns}).fetchone()
    generation = 0 if row is None else int(row[0])
    rows = conn.execute(
        b.sql(
            "index_defs",
            "SELECT id, name, kind, definition, is_unique FROM {ix} WHERE namespace = :ns "
            "ORDER BY name",
        ),
        {"ns": store._ns},
    ).fetchall()
    specs: list[IndexSpec] = []
    undeclared: list[str] = []
    by_name: dict[str, IndexSpec] = {}
    for iid, name, kind, definition, unique in rows:
        extractor: Callable[[bytes], Any] | None
        extractor = JsonField(definition) if kind == "json" else b.declared.get((store._ns, name))
        spec = IndexSpec(int(iid), name, kind, definition, bool(unique), extractor)
        by_name[name] = spec
        if extractor is None:
            undeclared.append(name)
        else:
            specs.append(spec)
    return NamespaceIndexes(generation, specs, undeclared, by_name)


# -- management ---------------------------------------------------------------------------------
def _info(spec: IndexSpec) -> IndexInfo:
    return IndexInfo(spec.name, spec.kind, spec.definition, spec.unique, spec.extractor is not None)


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"index names are str, not {type(name).__name__}")
    if _NAME_RE.fullmatch(name) is None:
        raise ValueError(
            f"index names are 1-200 letters, digits, '_', '.', '-' or ':', got {name!r}"
        )
    return name


def _check_progress(progress: object) -> None:
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable(done, total) or None, not {progress!r}")


def create_index(
    store: Store,
    name: str,
    extractor: Any,
    *,
    unique: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> IndexInfo:
    """Create (and back-fill) an index, or declare an existing one with an equal definition."""
    name = _check_name(name)
    if not isinstance(unique, bool):
        raise TypeError(f"unique must be a bool, not {type(unique).__name__}")
    _check_progress(progress)
    if isinstance(extractor, str):
        extractor = json_field(extractor)
    if isinstance(extractor, JsonField):
        kind, definition = "json", extractor.path
    elif callable(extractor):
        kind, definition = "callable", _callable_name(extractor)
        if len(definition) > 1024:
            raise ValueError(f"the callable's qualified name is too long: {definition[:80]!r}...")
    else:
        raise TypeError(
            "an index extractor is kvstore.json_field(path) or a callable, "
            f"not {type(extractor).__name__}"
        )
    b = store._b

    def run(conn: Conn) -> IndexInfo:
        _lock_for_build(store, conn)
        row = conn.execute(
            b.sql("index_def", _INDEX_DEF),
            {"ns": store._ns, "name": name},
        ).fetchone()
        if row is not None:
            if (row[1], row[2], bool(row[3])) != (kind, definition, unique):
                raise IndexDefinitionError(
                    f"index {name!r} already exists in namespace {store._ns!r} as "
                    f"{row[1]} {row[2]!r} (unique={bool(row[3])}), not {kind} {definition!r} "
                    f"(unique={unique}); drop it first to redefine it"
                )
            return IndexInfo(name, kind, definition, unique, True)
        conn.execute(
            b.sql(
                "index_insert",
                "INSERT INTO {ix} (namespace, name, kind, definition, is_unique, created_at) "
                "VALUES (:ns, :name, :kind, :definition, :unique, :now)",
            ),
            {
                "ns": store._ns,
                "name": name,
                "kind": kind,
                "definition": definition,
                "unique": unique,
                "now": _now(),
            },
        )
        iid = conn.execute(
            b.sql("index_def", _INDEX_DEF), {"ns": store._ns, "name": name}
        ).fetchone()[0]
        _bump_generation(store, conn)
        spec = IndexSpec(int(iid), name, kind, definition, unique, extractor)
        _backfill(store, conn, spec, progress)
        return _info(spec)

    try:
        info = store._run_atomic(run, write=False)
    finally:
        b.index_state.pop(store._ns, None)
    if kind == "callable":
        # Only once the definition is known to match: a refused redefinition must not swap
        # the extractor this process maintains the existing index with.
        b.declared[(store._ns, name)] = extractor
    return info


def _lock_for_build(store: Store, conn: Conn) -> None:
    sql = store._b.dialect.lock_entries_for_index_build
    if sql:
        conn.execute(sql.format(entries=store._b.tables.entries.name))


def _bump_generation(store: Store, conn: Conn) -> None:
    conn.execute(
        store._b.sql(
            "bump_generation",
            "INSERT INTO {n} (namespace, index_generation) VALUES (:ns, 1) "
            "ON CONFLICT (namespace) DO UPDATE SET index_generation = {n}.index_generation + 1",
        ),
        {"ns": store._ns},
    )


def _backfill(
    store: Store, conn: Conn, spec: IndexSpec, progress: Callable[[int, int], None] | None
) -> None:
    """Index every live entry, in key order, ``_BATCH`` keys per round trip."""
    b = store._b
    now = _now()
    total = int(conn.execute(b.sql("count"), {"ns": store._ns, "now": now}).fetchone()[0])
    done = 0
    after = ""
    state = NamespaceIndexes(0, [spec], [], {spec.name: spec})
    while True:
        rows = conn.execute(
            b.sql(
                "backfill_batch",
                "SELECT key, value, blob_id, size FROM {e} WHERE namespace = :ns AND key > :after "
                "AND (expires_at IS NULL OR expires_at > :now) ORDER BY key LIMIT :limit",
            ),
            {"ns": store._ns, "after": after, "now": now, "limit": _BATCH},
        ).fetchall()
        batch: dict[str, list[dict[str, Any]]] = {}
        for key, value, blob_id, size in rows:
            data = bytes(value) if blob_id is None else store._read_blob(conn, key, blob_id, size)
            batch[key] = state.rows_for(key, _const(data))
        insert_entries(store, conn, state, batch)
        done += len(rows)
        if progress is not None:
            progress(done, total)
        if len(rows) < _BATCH:
            return
        after = rows[-1][0]


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _spec(store: Store, name: str, conn: Conn | None = None) -> IndexSpec:
    spec = store._refresh_index_state(conn).by_name.get(name)
    if spec is None:
        raise UnknownIndexError(store._ns, name)
    return spec


def drop_index(store: Store, name: str) -> None:
    """Drop an index and its entries; ``KeyError`` (UnknownIndexError) if it does not exist."""
    name = _check_name(name)
    b = store._b

    def run(conn: Conn) -> None:
        # the same lock as a build: a writer that checked the index generation must not
        # see it change (and its index rows lose their index) before it commits
        _lock_for_build(store, conn)
        row = conn.execute(
            b.sql("index_def", _INDEX_DEF), {"ns": store._ns, "name": name}
        ).fetchone()
        if row is None:
            raise UnknownIndexError(store._ns, name)
        conn.execute(b.sql("ie_drop", "DELETE FROM {ie} WHERE index_id = :iid"), {"iid": row[0]})
        conn.execute(b.sql("index_drop", "DELETE FROM {ix} WHERE id = :iid"), {"iid": row[0]})
        _bump_generation(store, conn)

    try:
        store._run_atomic(run, write=False)
        b.declared.pop((store._ns, name), None)
    finally:
        b.index_state.pop(store._ns, None)


def rebuild_index(
    store: Store, name: str, *, progress: Callable[[int, int], None] | None = None
) -> IndexInfo:
    """Recompute every entry of an index from the current values (after the extractor's code
    changed, or entries were edited by hand)."""
    name = _check_name(name)
    _check_progress(progress)
    b = store._b

    def run(conn: Conn) -> IndexInfo:
        _lock_for_build(store, conn)
        spec = _spec(store, name, conn)
        if spec.extractor is None:
            raise IndexNotDeclaredError(store._ns, [name])
        conn.execute(b.sql("ie_drop", "DELETE FROM {ie} WHERE index_id = :iid"), {"iid": spec.id})
        _backfill(store, conn, spec, progress)
        return _info(spec)

    return store._run_atomic(run, write=False)


def list_indexes(store: Store) -> list[IndexInfo]:
    """The namespace's indexes, by name, as the database records them now."""
    state = store._refresh_index_state()
    return [_info(s) for s in state.by_name.values()]


# -- queries ------------------------------------------------------------------------------------
#
# A query is a _Filter: one value, a sorted list of values (``in_``), or one range with a
# single lower and a single upper bound (gt/ge/lt/le/prefix and the type's own limits folded
# together in Python, so the SQL carries exactly one bound per side and every planner picks
# the B-tree range; given several bounds on one column SQLite uses one and filters with the
# others, not always the tightest).
#
# Keyset pagination from a position (index value V, key K) runs as two statements, each an
# exact B-tree range: "at" (ivalue = V AND key > K) and "beyond" (the filter narrowed to values
# past V). The rejected alternative, one statement with a row-value bound (ivalue, key) > (V, K),
# is an index bound on PostgreSQL but not reliably on SQLite, and never combined with ``IN``:
# paging deep into a popular value would re-read every earlier key of it on every page.

_QUERY_ARGS = ("gt", "ge", "lt", "le", "prefix", "in_")
_TOP = b"\xff"  # above every encoded value (tags are 0x01-0x04)


@dataclass
class _Filter:
    kind: str  # "eq", "in", "range" or "none" (matches nothing)
    values: list[bytes]  # eq: the value; in: sorted, distinct
    lo: bytes = b""
    lo_inc: bool = False
    hi: bytes = _TOP
    hi_inc: bool = False

    @property
    def multi(self) -> bool:
        """Can one key match at several of its index values?"""
        return self.kind == "range" or (self.kind == "in" and len(self.values) > 1)

    def matches(self, enc: bytes) -> bool:
        if self.kind == "eq" or self.kind == "in":
            return enc in self.values
        if self.kind == "range":
            return (enc > self.lo or (self.lo_inc and enc == self.lo)) and (
                enc < self.hi or (self.hi_inc and enc == self.hi)
            )
        return False

    def beyond(self, pos: bytes, desc: bool) -> _Filter:
        """The same filter, narrowed to values strictly after ``pos`` in the query's order."""
        if self.kind in ("eq", "in"):
            rest = [v for v in self.values if (v < pos if desc else v > pos)]
            return _Filter("in", rest) if rest else _Filter("none", [])
        if self.kind == "none":
            return self
        if desc:
            if pos <= self.hi:
                return _Filter("range", [], self.lo, self.lo_inc, pos, False)._checked()
            return self
        if pos >= self.lo:
            return _Filter("range", [], pos, False, self.hi, self.hi_inc)._checked()
        return self

    def _checked(self) -> _Filter:
        empty = self.lo > self.hi or (self.lo == self.hi and not (self.lo_inc and self.hi_inc))
        return _Filter("none", []) if empty else self

    def render(self, alias: str, p: str) -> tuple[str, dict[str, Any]]:
        """SQL conditions on ``alias``.ivalue and their parameters (names prefixed ``p``)."""
        col = f"{alias}.ivalue"
        if self.kind == "eq":
            return f"{col} = :{p}v", {f"{p}v": self.values[0]}
        if self.kind == "in":
            # Padded to a power of two by repeating the last value, so lists of any length
            # share a handful of statement texts (and PostgreSQL prepared plans).
            n = 1 << (len(self.values) - 1).bit_length()
            padded = self.values + [self.values[-1]] * (n - len(self.values))
            marks = ", ".join(f":{p}in{j}" for j in range(n))
            return f"{col} IN ({marks})", {f"{p}in{j}": v for j, v in enumerate(padded)}
        if self.kind == "range":
            lo_op = ">=" if self.lo_inc else ">"
            hi_op = "<=" if self.hi_inc else "<"
            return (
                f"{col} {lo_op} :{p}lo AND {col} {hi_op} :{p}hi",
                {f"{p}lo": self.lo, f"{p}hi": self.hi},
            )
        return "1 = 0", {}


def _tighter(a: tuple[bytes, bool], b: tuple[bytes, bool], lower: bool) -> tuple[bytes, bool]:
    """The tighter of two (bound, inclusive) pairs; at a tie the exclusive one."""
    if a[0] == b[0]:
        return (a[0], a[1] and b[1])
    return max(a, b) if lower else min(a, b)


def _filter(value: Any, query: dict[str, Any]) -> _Filter:
    """Validate a query's arguments into a :class:`_Filter` (before any database work)."""
    unknown = set(query) - set(_QUERY_ARGS)
    if unknown:
        raise TypeError(
            f"unexpected argument(s) {sorted(unknown)}: an index query takes a value, or "
            f"{', '.join(a + '=' for a in _QUERY_ARGS)}"
        )
    given = {k: v for k, v in query.items() if v is not None}
    if value is not NOT_SET:
        if given:
            raise TypeError(f"an index query takes a value or {sorted(given)}, not both")
        if value is None:
            raise TypeError("None is never an index value (values that give None are not indexed)")
        return _Filter("eq", [encode_value(value)])
    if "in_" in given:
        if len(given) > 1:
            raise TypeError("in_= cannot be combined with a range or prefix=")
        values = given["in_"]
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):
            raise TypeError(f"in_ takes a list of index values, not {type(values).__name__}")
        encoded = sorted({encode_value(v) for v in values})
        if len(encoded) > MAX_IN:
            raise ValueError(f"in_ takes at most {MAX_IN} distinct values, got {len(encoded)}")
        if not encoded:
            return _Filter("none", [])
        return _Filter("eq", encoded) if len(encoded) == 1 else _Filter("in", encoded)
    if not given:
        raise TypeError("an index query needs a value, a range (gt/ge/lt/le), prefix= or in_=")
    types: set[bytes] = set()
    lo: tuple[bytes, bool] = (b"", False)
    hi: tuple[bytes, bool] = (_TOP, False)
    if "prefix" in given:
        prefix = given["prefix"]
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be str, not {type(prefix).__name__}")
        enc = encode_value(prefix)
        types.add(_TAG_STR)
        # UTF-8 never contains 0xFF, so [enc, enc + FF) is exactly "starts with prefix": a
        # B-tree range, where LIKE would need escaping for "%" and "_" and a collation fit.
        lo = _tighter(lo, (enc, True), lower=True)
        hi = _tighter(hi, (enc + b"\xff", False), lower=False)
    for arg, lower, inclusive in (
        ("gt", True, False),
        ("ge", True, True),
        ("lt", False, False),
        ("le", False, True),
    ):
        if arg in given:
            enc = encode_value(given[arg])
            types.add(_type_of(enc))
            if lower:
                lo = _tighter(lo, (enc, inclusive), lower=True)
            else:
                hi = _tighter(hi, (enc, inclusive), lower=False)
    if len(types) > 1:
        raise TypeError(
            "range bounds and prefix= must be of one type (numbers with numbers, str with str)"
        )
    # A bound on one side stays within its type (gt=30 never returns strings): the type tag
    # alone sorts before every other value of the type (it is the empty string's encoding, so
    # the bound includes it), the next tag after them.
    tag = types.pop()
    lo = _tighter(lo, (tag, True), lower=True)
    hi = _tighter(hi, (bytes([tag[0] + 1]), False), lower=False)
    return _Filter("range", [], lo[0], lo[1], hi[0], hi[1])._checked()


_INDEX_ID = "i.index_id = (SELECT id FROM {ix} WHERE namespace = :ns AND name = :name)"
# The entry's columns and liveness are read by correlated scalar subqueries on its primary key,
# not by a JOIN: PostgreSQL never turns a scalar subquery into a join, so each result row costs
# one index probe whatever the planner estimates. With a JOIN it hash-joins a sequential scan
# of the whole entries table (every namespace) as soon as a range looks large. The conditions
# are written as IS NOT NULL and <=, whose default selectivities (0.995, 1/3) keep the row
# estimate realistic; "= 1" or IS NULL (0.005 each) make a LIMIT look useless to the planner,
# which then sorts the whole range instead of reading it in index order.
_ENTRY = "(SELECT e.{col} FROM {{e}} e WHERE e.namespace = :ns AND e.key = i.key)"
_LIVE = (
    "(SELECT 1 FROM {e} e WHERE e.namespace = :ns AND e.key = i.key "
    "AND (e.expires_at IS NULL OR e.expires_at > :now)) IS NOT NULL"
)


def _key_is(store: Store, alias: str, key: str) -> str:
    """``alias.key = key``, flagged as selective to SQLite's planner (see _dedupe); on SQLite
    only, as PostgreSQL has no likelihood()."""
    cond = f"{alias}.key = {key}"
    return f"likelihood({cond}, 0.000001)" if store._b.dialect.name == "sqlite" else cond


def _dedupe(store: Store, flt: _Filter, desc: bool) -> tuple[str, dict[str, Any]]:
    """Each key once, at its first matching value in the requested order: this entry is the
    key's first matching one. A correlated scalar subquery, for the same reason as _LIVE (the
    rejected alternative, GROUP BY key, reads the whole range before returning a row).

    The subquery must read the key's own entries through the (index_id, key) B-tree, a few
    rows; read through the primary key it scans the whole matching range once per result row,
    quadratic in the matches (a count of 16,000 took 22 s on SQLite, 17 s on PostgreSQL
    before its first ANALYZE). So its WHERE names only
    index_id and key, and the filter is applied in the ORDER BY expression, where no planner
    can turn it into a range on (index_id, ivalue) nor read it in primary-key order: with
    ``j.ivalue`` bounds in the WHERE and ``ORDER BY j.ivalue`` (the rejected form) the
    primary key is ordered and covering, and SQLite takes it. Entries outside the filter sort
    after every matching one (``_TOP`` ascending, ``b""`` descending: no NULL, whose place in
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
    op, direction, past = (">=", "DESC", b"") if desc else ("<=", "ASC", _TOP)
    return (
        f" AND i.ivalue {op} (SELECT CASE WHEN {cond} THEN j.ivalue ELSE :past END AS first "
        f"FROM {{ie}} j WHERE j.index_id = i.index_id AND {_key_is(store, 'j', 'i.key')} "
        f"ORDER BY first {direction} LIMIT 1)",
        {**params, "past": past},
    )


def _statement(
    store: Store, flt: _Filter, cond: str, params: dict[str, Any], desc: bool, items: bool
) -> tuple[str, dict[str, Any]]:
    """A find statement: ``cond`` (already rendered) plus the index, liveness and dedupe."""
    dedupe, dparams = _dedupe(store, flt, desc)
    direction = "DESC" if desc else "ASC"
    cols = "i.key, i.ivalue"
    if items:
        cols += ", " + ", ".join(_ENTRY.format(col=c) for c in ("value", "blob_id", "size"))
    text = (
        f"SELECT {cols} FROM {{ie}} i WHERE {_INDEX_ID} AND {cond}{dedupe} AND {_LIVE} "
        f"ORDER BY i.ivalue {direction}, i.key {direction} LIMIT :limit"
    )
    return store._b.sql("ix:" + text, text), {**dparams, **params}


@dataclass
class _Find:
    """A validated find() call."""

    store: Store
    name: str
    flt: _Filter
    desc: bool
    items: bool
    limit: int | None
    after: tuple[bytes, str] | None

    def statements(self, pos: tuple[bytes, str] | None) -> Iterator[tuple[str, dict[str, Any]]]:
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

    def _stmt(self, cond: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        sql, p = _statement(self.store, self.flt, cond, params, self.desc, self.items)
        return sql, {**p, "ns": self.store._ns, "name": self.name}


def _plan(
    store: Store,
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
    name = _check_name(index)
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    flt = _filter(value, query)
    desc = order == "desc"
    pos = None if after is None else _resolve_after(store, name, flt, desc, after)
    return _Find(store, name, flt, desc, items, limit, pos)


def _resolve_after(
    store: Store, name: str, flt: _Filter, desc: bool, after: Any
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
    key = store._key(after)
    if flt.kind == "none":
        return b"", key  # nothing matches, whatever the position
    # The key's position in this query is its first matching value in this order (_dedupe).
    with store._connection() as conn:
        rows = conn.execute(*_position_statement(store, name, key)).fetchall()
        values = [v for v in (bytes(r[0]) for r in rows) if flt.matches(v)]
        if not values:
            _check_exists(store, name, conn)
            raise ValueError(
                f"after={key!r}: that key is not a result of this query (any more); pass "
                "after=(index value, key) to continue past a key that was changed or deleted"
            )
    return max(values) if desc else min(values), key


def _position_statement(store: Store, name: str, key: str) -> tuple[str, dict[str, Any]]:
    """All of ``key``'s entries in the index, for ``after=key``; the caller filters them. With
    the filter in the WHERE (the rejected form, ``... ORDER BY i.ivalue LIMIT 1``) SQLite reads
    the primary-key range up to the key instead, on every page, so a walk by ``after=key``
    pages was quadratic in the range; the key's own entries are few (see _dedupe)."""
    text = f"SELECT i.ivalue FROM {{ie}} i WHERE {_INDEX_ID} AND {_key_is(store, 'i', ':akey')}"
    return store._b.sql("ix:" + text, text), {"ns": store._ns, "name": name, "akey": key}


def _check_exists(store: Store, name: str, conn: Conn) -> None:
    """``UnknownIndexError`` unless the index exists: asked of the cached state first (an
    empty result is common, a typo rare), then of the database."""
    if (
        name not in store._index_state(conn).by_name
        and name not in store._refresh_index_state(conn).by_name
    ):
        raise UnknownIndexError(store._ns, name)


def find(
    store: Store,
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
        store, index, value, items=items, order=order, limit=limit, after=after, query=query
    )
    return _run_find(plan)


def _run_find(plan: _Find) -> Iterator[tuple[str, bytes | None]]:
    store = plan.store
    remaining = plan.limit
    pos = plan.after
    now = _now()
    # A key that another writer moves forward past the cursor between two pages has been
    # returned already; it is not returned twice in one call.
    seen: set[str] = set()
    with store._connection() as conn:
        first = True
        while remaining is None or remaining > 0:
            page = _PAGE if remaining is None else min(remaining, _PAGE)
            rows: list[Any] = []
            for sql, params in plan.statements(pos):
                more = conn.execute(sql, dict(params, now=now, limit=page - len(rows)))
                rows += more.fetchall()
                if len(rows) >= page:
                    break
            if first and not rows:
                _check_exists(store, plan.name, conn)  # a typo, or no match?
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
                        data = store._read_blob(conn, key, row[3], row[4])
                yield key, data
                if remaining is not None:
                    remaining -= 1
            if len(rows) < page:
                return
            pos = (bytes(rows[-1][1]), rows[-1][0])


def _count_statement(store: Store, name: str, flt: _Filter) -> tuple[str, dict[str, Any]]:
    """The count statement: find's conditions, dedupe included, so it counts exactly the keys
    find returns. The rejected alternative, ``COUNT(DISTINCT i.key)``, counts the same keys
    without the per-row probe but sorts them all, and is a second text to keep in step."""
    cond, params = flt.render("i", "")
    dedupe, dparams = _dedupe(store, flt, False)
    text = f"SELECT COUNT(*) FROM {{ie}} i WHERE {_INDEX_ID} AND {cond}{dedupe} AND {_LIVE}"
    return store._b.sql("ix:" + text, text), {**params, **dparams, "ns": store._ns, "name": name}


def count(store: Store, index: str, value: Any = NOT_SET, **query: Any) -> int:
    """How many live keys ``find`` would return for the same query (each key once)."""
    name = _check_name(index)
    sql, params = _count_statement(store, name, _filter(value, query))
    with store._connection() as conn:
        n = int(conn.execute(sql, dict(params, now=_now())).fetchone()[0])
        if n == 0:
            _check_exists(store, name, conn)
    return n
