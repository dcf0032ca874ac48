"""Secondary indexes as values: the order-preserving encoding of index values, extractors,
what a namespace's indexes are (:class:`NamespaceIndexes`), and query filters.

An index maps each value to zero, one or several *index values* (``str``, ``int``, ``float``,
``bool`` or timezone-aware ``datetime``). Index values are stored in one binary column in an
order-preserving encoding: a type tag (bool < number < str < datetime) followed by bytes that
compare, byte by byte, the way the values compare in Python. One B-tree on
``(index_id, ivalue, key)`` therefore answers equality, ranges, prefixes and ``IN`` for every
type, on every dialect, with no per-type columns (the rejected alternative: one nullable
column per type, which needs one B-tree per type and a query per type for ``in_`` lists that
mix them). This module runs no SQL: :mod:`kvstore._entries` does.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._schema import from_micros
from ._validate import NOT_SET

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

IndexValue = str | int | float | bool | dt.datetime


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


def callable_name(fn: Callable[..., Any]) -> str:
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


class Row(dict[str, Any]):
    """One index entry to insert: the driver's parameters, plus the extractor's own value
    (``3.0`` stays a float in a UniqueViolation, where decoding would say ``3``)."""

    __slots__ = ("value",)
    value: Any


@dataclass
class NamespaceIndexes:
    namespace: str
    generation: int
    specs: list[IndexSpec]  # the ones this process can maintain
    undeclared: list[str]
    by_name: dict[str, IndexSpec]

    def rows_for(self, key: str, value: Callable[[], bytes]) -> list[dict[str, Any]]:
        """Index entries for ``key`` holding ``value``; raises before anything is written."""
        data = value()
        rows: list[dict[str, Any]] = []
        for spec in self.specs:
            for enc, original in extract(spec, data).items():
                row = Row(
                    ns=self.namespace,
                    index_id=spec.id,
                    ivalue=enc,
                    uvalue=enc if spec.unique else None,
                    key=key,
                )
                row.value = original
                rows.append(row)
        return rows


def extract(spec: IndexSpec, data: bytes) -> dict[bytes, Any]:
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


# -- management ---------------------------------------------------------------------------------
def info_of(spec: IndexSpec) -> IndexInfo:
    return IndexInfo(spec.name, spec.kind, spec.definition, spec.unique, spec.extractor is not None)


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"index names are str, not {type(name).__name__}")
    if _NAME_RE.fullmatch(name) is None:
        raise ValueError(
            f"index names are 1-200 letters, digits, '_', '.', '-' or ':', got {name!r}"
        )
    return name


def check_progress(progress: object) -> None:
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable(done, total) or None, not {progress!r}")


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
TOP = b"\xff"  # above every encoded value (tags are 0x01-0x04)


@dataclass
class Filter:
    kind: str  # "eq", "in", "range" or "none" (matches nothing)
    values: list[bytes]  # eq: the value; in: sorted, distinct
    lo: bytes = b""
    lo_inc: bool = False
    hi: bytes = TOP
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

    def beyond(self, pos: bytes, desc: bool) -> Filter:
        """The same filter, narrowed to values strictly after ``pos`` in the query's order."""
        if self.kind in ("eq", "in"):
            rest = [v for v in self.values if (v < pos if desc else v > pos)]
            return Filter("in", rest) if rest else Filter("none", [])
        if self.kind == "none":
            return self
        if desc:
            if pos <= self.hi:
                return Filter("range", [], self.lo, self.lo_inc, pos, False)._checked()
            return self
        if pos >= self.lo:
            return Filter("range", [], pos, False, self.hi, self.hi_inc)._checked()
        return self

    def _checked(self) -> Filter:
        empty = self.lo > self.hi or (self.lo == self.hi and not (self.lo_inc and self.hi_inc))
        return Filter("none", []) if empty else self

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


def parse_filter(value: Any, query: dict[str, Any]) -> Filter:
    """Validate a query's arguments into a :class:`Filter` (before any database work)."""
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
        return Filter("eq", [encode_value(value)])
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
            return Filter("none", [])
        return Filter("eq", encoded) if len(encoded) == 1 else Filter("in", encoded)
    if not given:
        raise TypeError("an index query needs a value, a range (gt/ge/lt/le), prefix= or in_=")
    types: set[bytes] = set()
    lo: tuple[bytes, bool] = (b"", False)
    hi: tuple[bytes, bool] = (TOP, False)
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
    return Filter("range", [], lo[0], lo[1], hi[0], hi[1])._checked()
