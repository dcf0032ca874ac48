"""Secondary indexes: look entries up by what their values contain, not only by key.

An index maps each value to zero, one or several *index values* (``str``, ``int``, ``float``,
``bool`` or timezone-aware ``datetime``). Index entries live in ``kv_index_entries`` and change
in the same transaction as the value they describe.

Index values are stored in one binary column in an order-preserving encoding: a type tag
(bool < number < str < datetime) followed by bytes that compare, byte by byte, the way the
values compare in Python. One B-tree on ``(index_id, ivalue, key)`` therefore answers equality,
ranges, prefixes and ``IN`` for every type, on every dialect, with no per-type columns.
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

from ._keys import NOT_SET, check_key
from .errors import KVStoreError, UniqueViolation, UnknownIndexError
from ._schema import from_micros

if TYPE_CHECKING:
    from ._conn import Conn
    from .store import Store

__all__ = ["IndexInfo", "JsonField", "decode_value", "encode_value", "json_field"]

_TAG_BOOL, _TAG_NUM, _TAG_STR, _TAG_DT = b"\x01", b"\x02", b"\x03", b"\x04"
_MAX_ENCODED = 1024  # PostgreSQL's B-tree refuses entries past ~2.7 kB; stay well inside
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-:]{1,200}")
_BATCH = 500

IndexValue = str | int | float | bool | dt.datetime


# -- encoding -------------------------------------------------------------------------------------
def _sortable_int64(n: int) -> bytes:
    return struct.pack(">Q", n + (1 << 63))


def encode_value(value: object) -> bytes:
    """The order-preserving binary form of one index value."""
    if isinstance(value, bool):
        return _TAG_BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, int | float):
        if isinstance(value, float) and math.isnan(value):
            raise ValueError("NaN cannot be an index value (it is not ordered)")
        if isinstance(value, int) and not -(1 << 63) <= value < (1 << 63):
            raise ValueError(f"integer index values must fit in 64 bits, got {value}")
        f = float(value) + 0.0  # folds -0.0 into 0.0
        bits = struct.unpack(">Q", struct.pack(">d", f))[0]
        bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | (1 << 63)
        # Large ints are not exact as doubles: the remainder keeps them ordered and distinct.
        rest = value - int(f) if isinstance(value, int) and not math.isinf(f) else 0
        return _TAG_NUM + struct.pack(">Q", bits) + _sortable_int64(rest)
    if isinstance(value, str):
        out = _TAG_STR + value.encode("utf-8", "surrogatepass")
    elif isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise TypeError(f"datetime index values must be timezone-aware, got {value!r}")
        micros = (value - _EPOCH) // dt.timedelta(microseconds=1)
        return _TAG_DT + _sortable_int64(micros)
    else:
        raise TypeError(
            f"index values must be str, int, float, bool or datetime, not {type(value).__name__}"
        )
    if len(out) > _MAX_ENCODED:
        raise ValueError(f"index value too long ({len(out)} bytes encoded, at most {_MAX_ENCODED})")
    return out


def decode_value(data: bytes) -> IndexValue:
    """Inverse of :func:`encode_value` (ints that round-trip through a double come back as
    ``int`` only when they were stored as such)."""
    tag, body = data[:1], data[1:]
    if tag == _TAG_BOOL:
        return body == b"\x01"
    if tag == _TAG_STR:
        return body.decode("utf-8", "surrogatepass")
    if tag == _TAG_DT:
        return from_micros(struct.unpack(">Q", body)[0] - (1 << 63))
    bits = struct.unpack(">Q", body[:8])[0]
    bits = bits ^ (1 << 63) if bits >> 63 else bits ^ 0xFFFFFFFFFFFFFFFF
    f = struct.unpack(">d", struct.pack(">Q", bits))[0]
    rest = struct.unpack(">Q", body[8:16])[0] - (1 << 63)
    if math.isfinite(f) and f.is_integer():
        return int(f) + rest
    return f


def _type_bounds(value: object) -> tuple[bytes, bytes]:
    tag = encode_value(value)[:1]
    return tag, bytes([tag[0] + 1])


# -- extractors -------------------------------------------------------------------------------
@dataclass(frozen=True)
class JsonField:
    """Index the value at a dotted path in a JSON value (``"address.city"``, ``"tags"``).

    Values that are not JSON, or lack the path, are not indexed; a JSON list at the path gives
    one index entry per element. Recorded in the database, so every process maintains it.
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
            return [v for v in doc if isinstance(v, str | int | float) and not _bad_float(v)]
        if isinstance(doc, str | int | float) and not _bad_float(doc):
            return doc
        return None


def _bad_float(v: object) -> bool:
    return isinstance(v, float) and math.isnan(v)


def json_field(path: str) -> JsonField:
    """An index extractor for the field at ``path`` (dots separate levels) of JSON values."""
    if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
        raise ValueError(f"json_field takes a dotted path like 'user.email', got {path!r}")
    return JsonField(path)


def _callable_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


# -- per-namespace state ------------------------------------------------------------------------------
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
            assert spec.extractor is not None
            for enc in _extract(spec, data):
                rows.append(
                    {"index_id": spec.id, "ivalue": enc, "uvalue": enc if spec.unique else None, "key": key}
                )
        return rows

    def unique_violation(self, store: Store, conn: Conn, key: str, rows: list[dict[str, Any]] | None) -> UniqueViolation:
        b = store._b
        if rows is None:  # a copy: look at what the source holds
            rows = [
                {"index_id": r[0], "uvalue": r[1]}
                for r in conn.execute(
                    b.sql("ie_of_key", "SELECT index_id, uvalue FROM {ie} WHERE key = :key AND uvalue IS NOT NULL"),
                    {"key": key},
                ).fetchall()
            ]
        names = {s.id: s.name for s in self.by_name.values()}
        for row in rows:
            if row.get("uvalue") is None:
                continue
            other = conn.execute(
                b.sql("ie_holder", "SELECT key FROM {ie} WHERE index_id = :iid AND uvalue = :uv AND key <> :key"),
                {"iid": row["index_id"], "uv": row["uvalue"], "key": key},
            ).fetchone()
            if other is not None:
                return UniqueViolation(names.get(row["index_id"], "?"), decode_value(bytes(row["uvalue"])), key, other[0])
        return UniqueViolation("?", None, key, None)

    def expired_holders(self, store: Store, conn: Conn, key: str, rows: list[dict[str, Any]]) -> list[str]:
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
                {"ns": store._ns, "iid": row["index_id"], "uv": row["uvalue"], "key": key, "now": _now()},
            ).fetchone()
            if hit is not None:
                out.append(hit[0])
        return out


def _now() -> int:
    from .store import _now_us

    return _now_us()


def _extract(spec: IndexSpec, data: bytes) -> list[bytes]:
    assert spec.extractor is not None
    got = spec.extractor(data)
    if got is None:
        return []
    values: Iterable[Any] = got if isinstance(got, list | tuple | set | frozenset) else [got]
    out: dict[bytes, None] = {}
    for v in values:
        if v is None:
            continue
        try:
            out[encode_value(v)] = None
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"index {spec.name!r}: {exc}") from None
    return list(out)


def load_state(store: Store, conn: Conn) -> NamespaceIndexes:
    b = store._b
    row = conn.execute(b.sql("generation"), {"ns": store._ns}).fetchone()
    generation = 0 if row is None else int(row[0])
    rows = conn.execute(
        b.sql("index_defs", "SELECT id, name, kind, definition, is_unique FROM {ix} WHERE namespace = :ns ORDER BY name"),
        {"ns": store._ns},
    ).fetchall()
    specs, undeclared, by_name = [], [], {}
    for iid, name, kind, definition, unique in rows:
        extractor: Callable[[bytes], Any] | None
        extractor = JsonField(definition) if kind == "json" else b.declared.get((store._ns, name))
        spec = IndexSpec(int(iid), name, kind, definition, bool(unique), extractor)
        by_name[name] = spec
        (specs if extractor is not None else undeclared).append(spec if extractor else name)
    return NamespaceIndexes(generation, specs, undeclared, by_name)  # type: ignore[arg-type]


# -- management ---------------------------------------------------------------------------------------
def _info(spec: IndexSpec) -> IndexInfo:
    return IndexInfo(spec.name, spec.kind, spec.definition, spec.unique, spec.extractor is not None)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ValueError(
            f"index names are 1-200 letters, digits, '_', '.', '-' or ':', got {name!r}"
        )
    return name


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
    if isinstance(extractor, str):
        extractor = json_field(extractor)
    if isinstance(extractor, JsonField):
        kind, definition = "json", extractor.path
    elif callable(extractor):
        kind, definition = "callable", _callable_name(extractor)
    else:
        raise TypeError(
            f"an index extractor is kvstore.json_field(path) or a callable, not {type(extractor).__name__}"
        )
    b = store._b
    from .store import _now_us

    def run(conn: Conn) -> IndexInfo:
        _lock_for_build(store, conn)
        row = conn.execute(
            b.sql("index_def", "SELECT id, kind, definition, is_unique FROM {ix} WHERE namespace = :ns AND name = :name"),
            {"ns": store._ns, "name": name},
        ).fetchone()
        if row is not None:
            if (row[1], row[2], bool(row[3])) != (kind, definition, unique):
                raise KVStoreError(
                    f"index {name!r} already exists in namespace {store._ns!r} as "
                    f"{row[1]} {row[2]!r} (unique={bool(row[3])}); drop it first to redefine it"
                )
            if kind == "callable":
                b.declared[(store._ns, name)] = extractor
            return IndexInfo(name, kind, definition, unique, True)
        conn.execute(
            b.sql(
                "index_insert",
                "INSERT INTO {ix} (namespace, name, kind, definition, is_unique, created_at) "
                "VALUES (:ns, :name, :kind, :definition, :unique, :now)",
            ),
            {"ns": store._ns, "name": name, "kind": kind, "definition": definition, "unique": unique, "now": _now_us()},
        )
        iid = conn.execute(b.sql("index_def"), {"ns": store._ns, "name": name}).fetchone()[0]
        _bump_generation(store, conn)
        spec = IndexSpec(int(iid), name, kind, definition, unique, extractor)
        _backfill(store, conn, spec, progress)
        if kind == "callable":
            b.declared[(store._ns, name)] = extractor
        return _info(spec)

    try:
        return store._run_atomic(run, write=False)
    finally:
        b.index_state.pop(store._ns, None)


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


def _backfill(store: Store, conn: Conn, spec: IndexSpec, progress: Callable[[int, int], None] | None) -> None:
    from .store import _now_us

    b = store._b
    now = _now_us()
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
        for key, value, blob_id, size in rows:
            data = bytes(value) if blob_id is None else store._read_blob(conn, key, blob_id, size)
            entries = state.rows_for(key, lambda data=data: data)
            store._insert_index_rows(conn, state, key, entries)
        done += len(rows)
        if progress is not None:
            progress(done, total)
        if len(rows) < _BATCH:
            return
        after = rows[-1][0]


def _spec(store: Store, name: str, conn: Conn | None = None) -> IndexSpec:
    state = store._index_state()
    spec = state.by_name.get(name)
    if spec is None:
        state = store._refresh_index_state(conn)
        spec = state.by_name.get(name)
    if spec is None:
        raise UnknownIndexError(store._ns, name)
    return spec


def drop_index(store: Store, name: str) -> None:
    """Drop an index and its entries; ``KeyError`` (UnknownIndexError) if it does not exist."""
    name = _check_name(name)
    b = store._b

    def run(conn: Conn) -> None:
        row = conn.execute(b.sql("index_def"), {"ns": store._ns, "name": name}).fetchone()
        if row is None:
            raise UnknownIndexError(store._ns, name)
        conn.execute(b.sql("ie_drop", "DELETE FROM {ie} WHERE index_id = :iid"), {"iid": row[0]})
        conn.execute(b.sql("index_drop", "DELETE FROM {ix} WHERE id = :iid"), {"iid": row[0]})
        _bump_generation(store, conn)

    try:
        store._run_atomic(run)
    finally:
        b.declared.pop((store._ns, name), None)
        b.index_state.pop(store._ns, None)


def rebuild_index(store: Store, name: str, *, progress: Callable[[int, int], None] | None = None) -> IndexInfo:
    """Recompute every entry of an index from the current values."""
    name = _check_name(name)
    b = store._b

    def run(conn: Conn) -> IndexInfo:
        _lock_for_build(store, conn)
        spec = _spec(store, name, conn)
        if spec.extractor is None:
            raise KVStoreError(f"index {name!r} is a callable index this process has not declared")
        conn.execute(b.sql("ie_drop", "DELETE FROM {ie} WHERE index_id = :iid"), {"iid": spec.id})
        _backfill(store, conn, spec, progress)
        return _info(spec)

    store._refresh_index_state()
    return store._run_atomic(run, write=False)


def list_indexes(store: Store) -> list[IndexInfo]:
    state = store._refresh_index_state()
    return [_info(s) for s in state.by_name.values()]


# -- queries ------------------------------------------------------------------------------------
def _conditions(value: Any, query: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    allowed = {"gt", "ge", "lt", "le", "prefix", "in_"}
    unknown = set(query) - allowed
    if unknown:
        raise TypeError(f"find() got unexpected argument(s) {sorted(unknown)}; use value, {sorted(allowed)}")
    conds: list[str] = []
    params: dict[str, Any] = {}
    given = [k for k in ("gt", "ge", "lt", "le") if query.get(k) is not None]
    if value is not NOT_SET:
        if given or query.get("prefix") is not None or query.get("in_") is not None:
            raise TypeError("find() takes either a value or range/prefix/in_ arguments, not both")
        conds.append("i.ivalue = :v")
        params["v"] = encode_value(value)
        return conds, params
    if query.get("in_") is not None:
        if given or query.get("prefix") is not None:
            raise TypeError("find() takes in_ alone, without range or prefix arguments")
        values = list(dict.fromkeys(encode_value(v) for v in query["in_"]))
        if not values:
            conds.append("1 = 0")
        else:
            marks = ", ".join(f":in{j}" for j in range(len(values)))
            conds.append(f"i.ivalue IN ({marks})")
            params.update({f"in{j}": v for j, v in enumerate(values)})
        return conds, params
    if query.get("prefix") is not None:
        prefix = query["prefix"]
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be str, not {type(prefix).__name__}")
        lo = encode_value(prefix)
        # UTF-8 never contains 0xFF, so [lo, lo + FF) is exactly "starts with prefix".
        conds += ["i.ivalue >= :plo", "i.ivalue < :phi"]
        params.update(plo=lo, phi=lo + b"\xff")
    tags = set()
    for op, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if query.get(op) is not None:
            bound = query[op]
            lo_tag, hi_tag = _type_bounds(bound)
            tags.add(lo_tag)
            conds.append(f"i.ivalue {sym} :{op}")
            params[op] = encode_value(bound)
    if len(tags) > 1:
        raise TypeError("range bounds must be of one type (compare numbers with numbers, str with str)")
    if tags:
        # a bound on one side only still stays within its type: gt=30 never returns strings
        lo_tag = tags.pop()
        conds += ["i.ivalue > :tlo", "i.ivalue < :thi"]
        params.update(tlo=lo_tag, thi=bytes([lo_tag[0] + 1]))
    if not conds:
        raise TypeError("find() needs a value, a range (gt/ge/lt/le), prefix= or in_=")
    return conds, params


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

    A key matches at most once per call, at its first matching index value in the requested
    order (a multi-valued index can hold several for one key).
    """
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    from .store import _now_us

    b = store._b
    spec = _spec(store, _check_name(index))
    conds, params = _conditions(value, query)
    desc = order == "desc"
    cmp = "<" if desc else ">"
    if after is not None:
        av, ak = _resolve_after(store, spec, after, conds, params, desc)
        conds.append(f"(i.ivalue {cmp} :av OR (i.ivalue = :av AND i.key {cmp} :ak))")
        params.update(av=av, ak=ak)
    direction = "DESC" if desc else "ASC"
    cols = "i.key, i.ivalue" + (", e.value, e.blob_id, e.size" if items else "")
    sql_text = (
        f"SELECT {cols} FROM {{ie}} i JOIN {{e}} e ON e.namespace = :ns AND e.key = i.key "
        f"WHERE i.index_id = :iid AND {' AND '.join(conds)} "
        "AND (e.expires_at IS NULL OR e.expires_at > :now) "
        f"ORDER BY i.ivalue {direction}, i.key {direction} LIMIT :limit"
    )
    sql = b.sql(f"find:{hash(sql_text)}", sql_text)
    params.update(ns=store._ns, iid=spec.id, now=_now_us())
    want = limit if limit is not None else float("inf")
    if want == 0:
        return
    seen: set[str] = set()
    batch = min(int(want) * 2 if limit is not None else 1000, 1000) or 1
    page_params = dict(params)
    with store._connection() as conn:
        while True:
            page_params["limit"] = batch
            rows = conn.execute(sql, page_params).fetchall()
            for row in rows:
                key = row[0]
                if key in seen:
                    continue
                seen.add(key)
                data = None
                if items:
                    data = bytes(row[2]) if row[3] is None else store._read_blob(conn, key, row[3], row[4])
                yield key, data
                if len(seen) >= want:
                    return
            if len(rows) < batch:
                return
            # continue after the last row of this page (keyset pagination)
            last_v, last_k = bytes(rows[-1][1]), rows[-1][0]
            if "av" not in page_params:
                page_sql_text = sql_text.replace(
                    "AND (e.expires_at",
                    f"AND (i.ivalue {cmp} :av OR (i.ivalue = :av AND i.key {cmp} :ak)) AND (e.expires_at",
                    1,
                )
                sql = b.sql(f"find:{hash(page_sql_text)}", page_sql_text)
            page_params.update(av=last_v, ak=last_k)


def _resolve_after(
    store: Store, spec: IndexSpec, after: Any, conds: list[str], params: dict[str, Any], desc: bool
) -> tuple[bytes, str]:
    if isinstance(after, tuple) and len(after) == 2:
        return encode_value(after[0]), check_key(after[1]) if isinstance(after[1], str) else after[1]
    if not isinstance(after, str):
        raise TypeError("after= takes the last key of the previous page, or its (index value, key)")
    agg = "MAX" if desc else "MIN"
    sql_text = (
        f"SELECT {agg}(i.ivalue) FROM {{ie}} i WHERE i.index_id = :iid AND i.key = :akey AND "
        + " AND ".join(conds)
    )
    with store._connection() as conn:
        row = conn.execute(store._b.sql(f"after:{hash(sql_text)}", sql_text), dict(params, iid=spec.id, akey=after)).fetchone()
    if row is None or row[0] is None:
        raise ValueError(f"after={after!r} is not a result of this query")
    return bytes(row[0]), after


def count(store: Store, index: str, value: Any = NOT_SET, **query: Any) -> int:
    """How many distinct live keys match (same arguments as find, without paging)."""
    from .store import _now_us

    b = store._b
    spec = _spec(store, _check_name(index))
    conds, params = _conditions(value, query)
    sql_text = (
        "SELECT COUNT(DISTINCT i.key) FROM {ie} i JOIN {e} e ON e.namespace = :ns AND e.key = i.key "
        f"WHERE i.index_id = :iid AND {' AND '.join(conds)} "
        "AND (e.expires_at IS NULL OR e.expires_at > :now)"
    )
    params.update(ns=store._ns, iid=spec.id, now=_now_us())
    with store._connection() as conn:
        return int(conn.execute(b.sql(f"count:{hash(sql_text)}", sql_text), params).fetchone()[0])
