"""Persistent lists: a ``MutableSequence`` stored in two SQL tables.

``{l}`` (``kv_lists``) holds one header row per list, ``(namespace, id, name, length)``;
``{li}`` (``kv_list_items``) holds the items at contiguous positions ``0 .. length - 1`` under
the primary key ``(namespace, list_id, pos)``. So ``len(l)`` reads one row, ``l[i]`` is one primary-key
lookup, an append writes two rows, and a slice is one index range scan. Inserting or deleting
in the middle renumbers the items after it, in the database, in the same transaction.

Rejected alternatives: sparse positions (gaps, or fractional keys) would make a middle insert
O(1) but ``l[i]`` a scan or an ``OFFSET``; a linked list (diskcache's ``Deque`` indexes by
walking) makes ``l[i]`` O(n); one JSON array in one row rewrites the whole list on every
append. Contiguous positions keep the operations users call most (``len``, ``l[i]``,
``append``, ``pop()``, slices, iteration) cheap, and say plainly what a middle insert costs.

Every mutating method is one transaction that first locks the list's header row, so writers of
one list (threads, processes) are serialised and never lose or duplicate an item. Reads take
no lock: each read statement sees one committed state. See ``docs/lists.md``.
"""

from __future__ import annotations

import array
import collections
import copy as _copy
import hashlib
import itertools
import operator
import reprlib
import sys
from collections.abc import Callable, Iterable, Iterator, MutableSequence, Sequence
from typing import TYPE_CHECKING, Any, Generic, Self, SupportsIndex, overload

from typing_extensions import TypeVar

from ._backend import Scope, Statements, open_store, scope_of
from ._conn import Conn
from ._dialect import Rendered
from ._entries import new_id
from .errors import KVStoreError
from .serializers import get_serializer

if TYPE_CHECKING:
    pass

__all__ = ["PersistentList"]

# ``PersistentList[T]``: the item type, ``Any`` unless given (PEP 696), so a bare
# ``PersistentList`` is ``PersistentList[Any]``.
T = TypeVar("T", default=Any)
S = TypeVar("S")
R = TypeVar("R")

_MAX = sys.maxsize  # positions are BIGINT: every bound we send fits in 64 bits
_NAME_MAX = 255

_HEAD = "h.namespace = :ns AND h.name = :name"

# Statements, written once for both dialects (``{l}``/``{li}`` are the table names). Reads
# address the header by (namespace, name) through its unique index rather than by a cached
# id: an id cached from a transaction that later rolled back would point at nothing, or (SQLite
# reuses rowids) at another list.
_SQL: dict[str, str] = {
    "len": "SELECT length FROM {l} WHERE namespace = :ns AND name = :name",
    # one round trip for l[i]: the header gives the length (for negative indices and the
    # IndexError), the item comes from the primary key
    "get": "SELECT h.length, i.value FROM {l} h LEFT JOIN {li} i ON i.namespace = h.namespace AND i.list_id = h.id"
    " AND i.pos = CASE WHEN :i < 0 THEN h.length + :i ELSE :i END WHERE " + _HEAD,
    # a slice is one range scan; the length comes back with it so the caller can check that
    # the bounds it computed from an earlier len() still hold in this statement's snapshot
    "slice": "SELECT h.length, i.value FROM {l} h LEFT JOIN {li} i ON i.namespace = h.namespace AND i.list_id = h.id"
    " AND i.pos >= :lo AND i.pos < :hi AND (i.pos - :lo) % :st = 0 WHERE "
    + _HEAD
    + " ORDER BY i.pos",
    "slice_desc": "SELECT h.length, i.value FROM {l} h LEFT JOIN {li} i ON i.namespace = h.namespace AND i.list_id = h.id"
    " AND i.pos >= :lo AND i.pos < :hi AND (i.pos - :lo) % :st = 0 WHERE "
    + _HEAD
    + " ORDER BY i.pos DESC",
    "batch": "SELECT i.pos, i.value FROM {l} h JOIN {li} i ON i.namespace = h.namespace AND i.list_id = h.id WHERE "
    + _HEAD
    + " AND i.pos > :after AND i.pos < :hi ORDER BY i.pos LIMIT :n",
    "batch_desc": "SELECT i.pos, i.value FROM {l} h JOIN {li} i ON i.namespace = h.namespace AND i.list_id = h.id WHERE "
    + _HEAD
    + " AND i.pos < :before ORDER BY i.pos DESC LIMIT :n",
    # -- writes (always inside a transaction that holds the header row) --
    "lock": "SELECT id, length FROM {l} WHERE namespace = :ns AND name = :name",
    "create": "INSERT INTO {l} (namespace, id, name, length) VALUES (:ns, :id, :name, 0)"
    " ON CONFLICT (namespace, name) DO NOTHING",
    # UPDATE ... RETURNING takes the row lock and reserves the new positions in one statement
    "bump": "UPDATE {l} SET length = length + :n WHERE namespace = :ns AND name = :name"
    " RETURNING id, length",
    "bump_plain": "UPDATE {l} SET length = length + :n WHERE namespace = :ns AND name = :name",
    "set_length": "UPDATE {l} SET length = :length WHERE namespace = :ns AND id = :id",
    "insert": "INSERT INTO {li} (namespace, list_id, pos, value) VALUES (:ns, :id, :pos, :value)",
    "update": "UPDATE {li} SET value = :value WHERE namespace = :ns AND list_id = :id AND pos = :pos",
    "all": "SELECT i.value FROM {l} h JOIN {li} i ON i.namespace = h.namespace AND i.list_id = h.id WHERE "
    + _HEAD
    + " ORDER BY i.pos",
    "values": "SELECT value FROM {li} WHERE namespace = :ns AND list_id = :id ORDER BY pos",
    "pop": "DELETE FROM {li} WHERE namespace = :ns AND list_id = :id AND pos = :pos RETURNING value",
    "delete": "DELETE FROM {li} WHERE namespace = :ns AND list_id = :id AND pos >= :lo AND pos < :hi"
    " AND (pos - :lo) % :st = 0",
    "clear": "DELETE FROM {li} WHERE namespace = :ns AND list_id = :id",
    # Renumbering under the primary key (list_id, pos). Both SQLite and PostgreSQL check a
    # primary key row by row as an UPDATE proceeds, in whatever order it visits the rows, so
    # "SET pos = pos + 1" can collide with the neighbour it has not moved yet (and a deferred
    # constraint is not an option for a primary key on SQLite). Every renumbering therefore
    # first moves the rows to distinct negative positions (-new - 1, never used by a live
    # row), then flips them back with "flip": two statements, each touching only moved rows.
    "shift": "UPDATE {li} SET pos = -(pos + :delta) - 1 WHERE namespace = :ns AND list_id = :id AND pos >= :lo",
    # after deleting n positions lo, lo+st, ...: a row above lo moves down by the number of
    # deleted positions below it, min(n, (pos - lo - 1) / st + 1); {intdiv} is integer division
    "compact": "UPDATE {li} SET pos = -(pos - CASE WHEN (pos - :lo - 1) {intdiv} :st + 1 < :n"
    " THEN (pos - :lo - 1) {intdiv} :st + 1 ELSE :n END) - 1 WHERE namespace = :ns AND list_id = :id AND pos > :lo",
    "reverse": "UPDATE {li} SET pos = -(:last - pos) - 1 WHERE namespace = :ns AND list_id = :id AND pos >= 0",
    "move": "UPDATE {li} SET pos = :new WHERE namespace = :ns AND list_id = :id AND pos = :old",
    "flip": "UPDATE {li} SET pos = -pos - 1 WHERE namespace = :ns AND list_id = :id AND pos < 0",
    # l *= n copies the list inside the database, doubling, so n copies cost log2(n) statements
    "repeat": "INSERT INTO {li} (namespace, list_id, pos, value) "
    "SELECT namespace, list_id, pos + :off, value FROM {li}"
    " WHERE namespace = :ns AND list_id = :id AND pos >= 0 AND pos < :k",
}

# the header row is locked before the list is rewritten
_SQL["lock"] += "{for_update}"
SQL = Statements("lists", _SQL)


# The built-in types whose __rmul__ is sequence repetition rather than number multiplication:
# CPython's number protocol never calls it for ``l * x``, and for ``x * l`` it repeats ``x``.
_REPEATABLE = (str, bytes, bytearray, tuple, list, collections.deque, array.array)
_NOT_INDEX = "' object cannot be interpreted as an integer"


def _type_name(obj: object) -> str:
    """``type(obj)``'s name as CPython's own messages print it (its ``tp_name``: ``float``,
    ``decimal.Decimal``, ``array.array``, a Python class's bare name). Python cannot read
    ``tp_name`` directly, but the index protocol's error for the same object prints it."""
    try:
        operator.index(obj)  # type: ignore[arg-type]
    except TypeError as exc:
        text = str(exc)
        if text.startswith("'") and text.endswith(_NOT_INDEX):
            return text[1 : -len(_NOT_INDEX)]
    return type(obj).__name__


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a list name is a str, not {type(name).__name__}")
    if not 0 < len(name) <= _NAME_MAX or "\x00" in name:
        raise ValueError(f"list names are 1-{_NAME_MAX} characters without NUL, got {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"list name {name!r} is not valid Unicode text (lone surrogate)") from None
    return name


def _item_index(index: object) -> int:
    """An int index as ``list.__getitem__`` takes it, with the built-in's TypeError."""
    try:
        i = operator.index(index)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"list indices must be integers or slices, not {type(index).__name__}"
        ) from None
    if not -_MAX - 1 <= i <= _MAX:
        raise IndexError("cannot fit 'int' into an index-sized integer")
    return i


def _slice_index(value: object) -> int:
    """A ``start``/``stop`` argument of ``list.index``: clamped like CPython's ssize_t."""
    try:
        i = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError("slice indices must be integers or have an __index__ method") from None
    return min(max(i, -_MAX - 1), _MAX)


def _progression(r: range) -> tuple[int, int, int, bool]:
    """``(lo, hi, step, descending)``: the positions of ``r`` as an ascending progression
    ``lo, lo + step, ... < hi`` (what the SQL filters on) and the order to return them in."""
    if len(r) == 0:
        return 0, 0, 1, False
    step = abs(r.step) if len(r) > 1 else 1  # a lone position needs no (maybe huge) step
    lo, last = (r[0], r[-1]) if r.step > 0 else (r[-1], r[0])
    return lo, last + 1, step, r.step < 0


def _length_free(s: slice) -> bool:
    """True when ``s`` selects the same positions whatever the list's length
    (``l[a:b]``, ``l[a:b:k]`` with non-negative bounds), so no ``len()`` is needed first."""
    try:
        start = None if s.start is None else operator.index(s.start)
        stop = None if s.stop is None else operator.index(s.stop)
        step = None if s.step is None else operator.index(s.step)
    except TypeError:
        return False  # slice.indices() raises the built-in's error later
    return (
        start is not None
        and stop is not None
        and start >= 0
        and stop >= 0
        and (step is None or step > 0)
    )


class _Digest:
    """A hash of a sequence of values (length-prefixed, so ``[b"ab"]`` differs from
    ``[b"a", b"b"]``): how ``sort`` tells whether the list changed while it sorted."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=32)

    def update(self, values: Iterable[Any]) -> None:
        for v in values:
            data = v if type(v) is bytes else bytes(v)
            self._h.update(len(data).to_bytes(8, "big"))
            self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()


class PersistentList(Generic[T], MutableSequence[T]):
    """A list stored in SQL: ``store.list(name)`` or ``PersistentList(url, name)``.

    A live view: every call reads or writes the database (nothing is cached), a write is
    committed and durable when it returns (or joins the open transaction), and other store
    objects and processes see it at once. It behaves like the built-in ``list``, with its
    exceptions and messages; operators that build a new list (``+``, ``*``, slicing,
    ``copy()``) return plain lists. Values go through ``serializer`` (``"json"`` by default).

    ``store`` is a :class:`kvstore.Store` (or a transaction), or a database URL or Engine
    (anything :func:`kvstore.connect` takes), in which case the list opens its own store with
    ``namespace`` and ``options`` and closes it in :meth:`close` (or at the end of a ``with``
    block).

    It is generic in its item type for type checkers: ``l: PersistentList[int] =
    store.list("scores")`` makes ``l[0]`` an ``int`` and ``l[1:3]`` a ``list[int]``. The
    parameter is a promise the caller makes, not a check made at runtime.
    """

    #: items fetched per statement while iterating or searching
    batch_size: int = 1000

    def __init__(
        self,
        store: Any,
        name: str,
        *,
        serializer: Any = "json",
        namespace: str | None = None,
        **options: Any,
    ) -> None:
        name = _check_name(name)
        ser = get_serializer(serializer)
        if scope_of(store) is not None:
            if options:
                raise TypeError(
                    f"connection options {sorted(options)} only apply when PersistentList opens its "
                    "own store from a URL or Engine"
                )
            self._store = store if namespace is None else store.namespace(namespace)
            self._owns = False
        else:
            if namespace is not None:
                options["namespace"] = namespace
            self._store = open_store(store, **options)
            self._owns = True
        self._name = name
        self._ser = ser
        self._scope: Scope = self._store.scope
        self._ns = self._scope.namespace
        self._p = {"ns": self._ns, "name": name}

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def store(self) -> Any:
        return self._store

    @property
    def namespace(self) -> str:
        return self._scope.namespace

    @property
    def serializer(self) -> Any:
        return self._ser

    def close(self) -> None:
        """Close the store this list opened itself (a no-op for a store you passed in)."""
        if self._owns:
            self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a PersistentList is a live view on a database connection and cannot be pickled; "
            "pickle list(l) for a copy, or its name to reopen it elsewhere"
        )

    def _sql(self, name: str) -> Rendered:
        return self._scope.sql(SQL, name)

    def _dumps(self, value: Any) -> bytes:
        data = self._ser.dumps(value)
        return data if type(data) is bytes else bytes(data)

    def _loads(self, data: Any) -> T:
        value: T = self._ser.loads(data if type(data) is bytes else bytes(data))
        return value

    def _write(self, fn: Callable[[Conn], R]) -> R:
        # write=False: the store's extra PostgreSQL table lock orders *entry* writes against
        # index back-fills; list writes touch neither, and lock their own header row instead.
        return self._scope.atomic(fn, write=False)

    def _lock(self, conn: Conn, *, create: bool) -> tuple[int, int] | None:
        """Lock the header row (``FOR UPDATE`` on PostgreSQL; SQLite's write transaction is
        already exclusive) and return ``(id, length)``; create it first if asked."""
        row = conn.execute(self._sql("lock"), self._p).fetchone()
        if row is None:
            if not create:
                return None
            self._create(conn)
            row = conn.execute(self._sql("lock"), self._p).fetchone()
            if row is None:  # pragma: no cover - the INSERT above or a concurrent one made it
                raise KVStoreError(
                    f"list {self._name!r}: header row vanished while it was being created"
                )
        return int(row[0]), int(row[1])

    def _create(self, conn: Conn) -> None:
        conn.execute(self._sql("create"), {**self._p, "id": new_id()})

    def _bump(self, conn: Conn, n: int) -> tuple[int, int]:
        """Lock the header, add ``n`` to the length, and return ``(id, new length)``."""
        params = {**self._p, "n": n}
        if not self._scope.backend.dialect.supports_update_returning:
            # MariaDB: the UPDATE takes the row lock, and the locked row is read back
            if conn.execute(self._sql("bump_plain"), params).rowcount == 0:
                self._create(conn)
                conn.execute(self._sql("bump_plain"), params)
            row = conn.execute(self._sql("lock"), self._p).fetchone()
            return int(row[0]), int(row[1])
        rows = conn.execute(self._sql("bump"), params).fetchall()
        if not rows:
            self._create(conn)
            rows = conn.execute(self._sql("bump"), params).fetchall()
        return int(rows[0][0]), int(rows[0][1])

    def _set_length(self, conn: Conn, lid: int, length: int) -> None:
        conn.execute(self._sql("set_length"), {"ns": self._ns, "id": lid, "length": length})

    def _shift(self, conn: Conn, lid: int, lo: int, delta: int) -> None:
        """Move every item at position >= ``lo`` by ``delta`` (see the "shift" statement)."""
        conn.execute(self._sql("shift"), {"ns": self._ns, "id": lid, "lo": lo, "delta": delta})
        conn.execute(self._sql("flip"), {"ns": self._ns, "id": lid})

    def _delete_progression(self, conn: Conn, lid: int, length: int, r: range) -> None:
        """Delete the positions of ``r`` and close the gaps."""
        lo, hi, st, _ = _progression(r)
        n = len(r)
        conn.execute(self._sql("delete"), {"ns": self._ns, "id": lid, "lo": lo, "hi": hi, "st": st})
        if length - lo > n:  # some item above lo survives: renumber
            conn.execute(
                self._sql("compact"), {"ns": self._ns, "id": lid, "lo": lo, "st": st, "n": n}
            )
            conn.execute(self._sql("flip"), {"ns": self._ns, "id": lid})
        self._set_length(conn, lid, length - n)

    def _batch(self, after: int, hi: int = _MAX) -> list[tuple[int, Any]]:
        params = {**self._p, "after": after, "hi": hi, "n": self.batch_size}
        rows = self._read("batch", params)
        return [(int(p), v) for p, v in rows]

    def _read(self, name: str, params: dict[str, Any]) -> Sequence[Any]:
        # a read a replica may serve (Scope.read), outside a transaction
        sql = self._sql(name)
        return self._scope.read(lambda conn: conn.execute(sql, params).fetchall())

    def _scan(self, start: int = 0, stop: int = _MAX) -> Iterator[tuple[int, T]]:
        """``(position, value)`` for positions ``start <= pos < stop``, a batch per statement.

        Each batch is one consistent snapshot and the next one starts after the last position
        seen, so a scan behaves like a list iterator over a list that others modify: it never
        fails, it sees appends, and an insert or delete before its position makes it see an
        item again or skip one. No connection is held while the caller's code runs.
        """
        after = start - 1
        while True:
            rows = self._batch(after, stop)
            if not rows:
                return
            for pos, data in rows:
                yield pos, self._loads(data)
            after = rows[-1][0]

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        """O(1): the header row's length column."""
        rows = self._read("len", self._p)
        return int(rows[0][0]) if rows else 0

    @overload
    def __getitem__(self, index: SupportsIndex) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: SupportsIndex | slice) -> T | list[T]:
        if isinstance(index, slice):
            return self._get_slice(index)
        i = _item_index(index)
        rows = self._read("get", {**self._p, "i": i})
        row = rows[0] if rows else None
        if row is None or row[1] is None:
            raise IndexError("list index out of range")
        return self._loads(row[1])

    def _get_slice(self, s: slice) -> list[T]:
        # Optimistic: compute the positions from a length, then read them in one statement
        # that also returns the length it saw; if that differs, the positions were wrong for
        # that snapshot, so recompute and read again. Slices like l[a:b] do not depend on the
        # length at all and cost one statement. (The alternative, len() and the rows inside
        # a read transaction, costs BEGIN and COMMIT round trips on every slice.)
        fixed = _length_free(s)
        length = _MAX if fixed else len(self)
        for _attempt in itertools.count():
            r = range(*s.indices(length))
            lo, hi, st, desc = _progression(r)
            params = {**self._p, "lo": lo, "hi": hi, "st": st}
            rows = self._read("slice_desc" if desc else "slice", params)
            seen = int(rows[0][0]) if rows else 0
            if fixed or seen == length:
                return [self._loads(v) for _, v in rows if v is not None]
            length = seen
        raise AssertionError("unreachable")  # pragma: no cover

    def __iter__(self) -> Iterator[T]:
        """Stream the items, :attr:`batch_size` per statement; see docs/lists.md for what a
        concurrent write does to a running iteration."""
        for _, value in self._scan():
            yield value

    def __reversed__(self) -> Iterator[T]:
        # Like list's reverse iterator, start from the length at the time of the call.
        return self._iter_desc(len(self))

    def _iter_desc(self, before: int) -> Iterator[T]:
        while True:
            rows = self._read("batch_desc", {**self._p, "before": before, "n": self.batch_size})
            if not rows:
                return
            for _, data in rows:
                yield self._loads(data)
            before = int(rows[-1][0])

    def __contains__(self, value: object) -> bool:
        # Python equality, as list does (1 == 1.0 == True; an item's __eq__ decides), so the
        # comparison runs here on deserialised items rather than on stored bytes in SQL.
        return any(item is value or item == value for _, item in self._scan())

    def index(self, value: Any, start: SupportsIndex = 0, stop: SupportsIndex = _MAX) -> int:
        """Position of the first item equal to ``value`` in ``[start:stop]``: O(n) reads."""
        lo, hi = _slice_index(start), _slice_index(stop)
        if lo < 0 or hi < 0:
            length = len(self)
            lo = max(lo + length, 0) if lo < 0 else lo
            hi = max(hi + length, 0) if hi < 0 else hi
        if lo < hi:
            for pos, item in self._scan(lo, hi):
                if item is value or item == value:
                    return pos
        raise ValueError(f"{value!r} is not in list")

    def count(self, value: Any) -> int:
        return sum(1 for _, item in self._scan() if item is value or item == value)

    def copy(self) -> list[T]:
        """A plain ``list`` with the current items (values are copies, not live views)."""
        return list(self)

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> list[T]:
        return _copy.deepcopy(list(self), memo)

    @reprlib.recursive_repr("[...]")
    def __repr__(self) -> str:
        return repr(list(self))

    # -- comparisons and operators -------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, list | PersistentList):
            return NotImplemented
        if len(self) != len(other):
            return False
        return all(a is b or a == b for a, b in zip(self, other, strict=False))

    def _compare(
        self, other: list[Any] | PersistentList[Any], op: Callable[[Any, Any], bool]
    ) -> bool:
        missing = object()
        for a, b in itertools.zip_longest(self, other, fillvalue=missing):
            if a is missing or b is missing:  # one ran out first: the shorter one is less
                return op(a is not missing, b is not missing)
            if not (a is b or a == b):
                return op(a, b)  # whatever the items' comparison returns, as list does
        return op(0, 0)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, list | PersistentList):
            return NotImplemented
        return self._compare(other, operator.lt)

    def __le__(self, other: object) -> bool:
        if not isinstance(other, list | PersistentList):
            return NotImplemented
        return self._compare(other, operator.le)

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, list | PersistentList):
            return NotImplemented
        return self._compare(other, operator.gt)

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, list | PersistentList):
            return NotImplemented
        return self._compare(other, operator.ge)

    __hash__ = None  # type: ignore[assignment]  # mutable, like list

    def __add__(self, other: list[S] | PersistentList[S]) -> list[T | S]:
        out: list[T | S] = list(self)
        if isinstance(other, PersistentList):
            return out + list(other)
        if isinstance(other, list):
            return out + other
        return NotImplemented

    def __radd__(self, other: list[S]) -> list[S | T]:
        out: list[S | T] = list(self)
        if isinstance(other, list):
            return other + out
        return NotImplemented

    # ``l * x`` and ``x * l`` for an ``x`` without ``__index__`` raise what the built-in raises.
    # A list gets that message from its sequence-repeat slot, which CPython tries only after
    # the number protocol (``x.__rmul__``) declined; a class defined in Python has no such
    # slot, so both steps are spelled out here.
    def __mul__(self, n: SupportsIndex) -> list[T]:
        if not hasattr(type(n), "__index__"):
            reflected = getattr(type(n), "__rmul__", None)
            if reflected is not None and not isinstance(n, _REPEATABLE):
                result = reflected(n, self)
                if result is not NotImplemented:
                    return result  # type: ignore[no-any-return]
            raise TypeError(f"can't multiply sequence by non-int of type '{_type_name(n)}'")
        count = operator.index(n)
        return list(self) * count if count > 0 else []

    def __rmul__(self, n: SupportsIndex) -> list[T]:
        if not hasattr(type(n), "__index__"):
            if isinstance(n, _REPEATABLE):
                # "x" * l: Python goes on to repeat the str by l, and words the error itself
                return NotImplemented
            raise TypeError(f"can't multiply sequence by non-int of type '{_type_name(n)}'")
        count = operator.index(n)
        return list(self) * count if count > 0 else []

    # -- writing -------------------------------------------------------------------------------
    def append(self, value: T) -> None:
        """Add ``value`` at the end: two statements, O(1)."""
        data = self._dumps(value)

        def run(conn: Conn) -> None:
            lid, length = self._bump(conn, 1)
            conn.execute(
                self._sql("insert"), {"ns": self._ns, "id": lid, "pos": length - 1, "value": data}
            )

        self._write(run)

    def extend(self, values: Iterable[T]) -> None:
        """Append every item of ``values`` in one transaction: all of them or, when one cannot
        be serialised or the iterable fails, none."""
        items = [self._dumps(v) for v in values]  # read (even from self) before writing
        if not items:
            return

        def run(conn: Conn) -> None:
            lid, length = self._bump(conn, len(items))
            base = length - len(items)
            rows = [
                {"ns": self._ns, "id": lid, "pos": base + j, "value": d}
                for j, d in enumerate(items)
            ]
            conn.executemany(self._sql("insert"), rows)

        self._write(run)

    # In place, these return the list itself, not the plain list that + and * build.
    def __iadd__(self, values: Iterable[T]) -> Self:  # type: ignore[misc]
        self.extend(values)
        return self

    def insert(self, index: SupportsIndex, value: T) -> None:
        """Insert before ``index`` (clamped like ``list.insert``); the items after it move up
        one position, in the database: O(n - index) rows updated."""
        i = operator.index(index)
        data = self._dumps(value)

        def run(conn: Conn) -> None:
            lid, length = self._bump(conn, 1)
            old = length - 1
            pos = min(max(i + old, 0) if i < 0 else i, old)
            if pos < old:
                self._shift(conn, lid, pos, 1)
            conn.execute(
                self._sql("insert"), {"ns": self._ns, "id": lid, "pos": pos, "value": data}
            )

        self._write(run)

    @overload
    def __setitem__(self, index: SupportsIndex, value: T) -> None: ...

    @overload
    def __setitem__(self, index: slice, value: Iterable[T]) -> None: ...

    def __setitem__(self, index: SupportsIndex | slice, value: Any) -> None:
        if isinstance(index, slice):
            self._set_slice(index, value)
            return
        i = _item_index(index)
        data = self._dumps(value)

        def run(conn: Conn) -> None:
            head = self._lock(conn, create=False)
            lid, length = head if head is not None else (0, 0)
            pos = i + length if i < 0 else i
            if not 0 <= pos < length:
                raise IndexError("list assignment index out of range")
            conn.execute(
                self._sql("update"), {"ns": self._ns, "id": lid, "pos": pos, "value": data}
            )

        self._write(run)

    def _set_slice(self, s: slice, values: Any) -> None:
        step = s.indices(0)[2]  # the built-in's TypeError/ValueError for bad slices, up front
        try:
            items = list(values)  # a copy first: l[::-1] = l must read before it writes
        except TypeError:
            what = (
                "can only assign an iterable"
                if step == 1
                else "must assign iterable to extended slice"
            )
            raise TypeError(what) from None
        data = [self._dumps(v) for v in items]

        def run(conn: Conn) -> None:
            head = self._lock(conn, create=bool(data))
            if head is None:  # nothing to replace and nothing to add
                return
            lid, length = head
            start, stop, step = s.indices(length)
            if step != 1:
                r = range(start, stop, step)
                if len(r) != len(data):
                    raise ValueError(
                        f"attempt to assign sequence of size {len(data)} to extended slice of size {len(r)}"
                    )
                rows = [
                    {"ns": self._ns, "id": lid, "pos": p, "value": d}
                    for p, d in zip(r, data, strict=True)
                ]
                conn.executemany(self._sql("update"), rows)
                return
            stop = max(stop, start)  # l[5:2] = x inserts at 5, as list does
            delta = len(data) - (stop - start)
            if stop > start:
                conn.execute(
                    self._sql("delete"),
                    {"ns": self._ns, "id": lid, "lo": start, "hi": stop, "st": 1},
                )
            if delta and stop < length:
                self._shift(conn, lid, stop, delta)
            rows = [
                {"ns": self._ns, "id": lid, "pos": start + j, "value": d}
                for j, d in enumerate(data)
            ]
            conn.executemany(self._sql("insert"), rows)
            if delta:
                self._set_length(conn, lid, length + delta)

        self._write(run)

    def __delitem__(self, index: SupportsIndex | slice) -> None:
        if isinstance(index, slice):
            s = index
            s.indices(0)  # validate before any database work

            def run_slice(conn: Conn) -> None:
                head = self._lock(conn, create=False)
                if head is None:
                    return
                lid, length = head
                r = range(*s.indices(length))
                if len(r):
                    self._delete_progression(conn, lid, length, r)

            self._write(run_slice)
            return
        i = _item_index(index)

        def run(conn: Conn) -> None:
            head = self._lock(conn, create=False)
            lid, length = head if head is not None else (0, 0)
            pos = i + length if i < 0 else i
            if not 0 <= pos < length:
                raise IndexError("list assignment index out of range")
            self._delete_progression(conn, lid, length, range(pos, pos + 1))

        self._write(run)

    def pop(self, index: SupportsIndex = -1) -> T:
        """Remove and return the item at ``index`` (the last by default: O(1); elsewhere the
        items after it move down)."""
        i = operator.index(index)

        def run(conn: Conn) -> T:
            head = self._lock(conn, create=False)
            if head is None or head[1] == 0:
                raise IndexError("pop from empty list")
            lid, length = head
            pos = i + length if i < 0 else i
            if not 0 <= pos < length:
                raise IndexError("pop index out of range")
            row = conn.execute(self._sql("pop"), {"ns": self._ns, "id": lid, "pos": pos}).fetchall()
            value = self._loads(row[0][0])  # inside the transaction: a failure keeps the item
            if pos < length - 1:
                self._shift(conn, lid, pos + 1, -1)
            self._set_length(conn, lid, length - 1)
            return value

        return self._write(run)

    def remove(self, value: T) -> None:
        """Remove the first item equal to ``value``; ``ValueError`` if there is none.

        The search and the removal are one transaction. It runs as a store transaction (not a
        bare one) because items' ``__eq__`` is the caller's code: if that code uses the store
        from this thread, it joins the transaction instead of waiting for the lock we hold.
        """
        self._store.run_in_transaction(lambda tx: self._on(tx)._remove_here(value))

    def _on(self, store: Any) -> PersistentList[T]:
        return PersistentList(store, self._name, serializer=self._ser)

    def _remove_here(self, value: Any) -> None:
        with self._scope.connection() as conn:
            found = self._lock(conn, create=False) is not None
        pos = (
            next((p for p, item in self._scan() if item is value or item == value), None)
            if found
            else None
        )
        if pos is None:
            raise ValueError("list.remove(x): x not in list")

        def run(conn: Conn) -> None:
            # Delete at the position found, even if an item's __eq__ changed the list
            # meanwhile: list.remove does the same.
            head = self._lock(conn, create=False)
            if head is not None and pos < head[1]:
                self._delete_progression(conn, head[0], head[1], range(pos, pos + 1))

        self._write(run)

    def clear(self) -> None:
        """Remove every item (the header row stays, with length 0)."""

        def run(conn: Conn) -> None:
            head = self._lock(conn, create=False)
            if head is not None and head[1]:
                conn.execute(self._sql("clear"), {"ns": self._ns, "id": head[0]})
                self._set_length(conn, head[0], 0)

        self._write(run)

    def reverse(self) -> None:
        """Reverse in place: two UPDATE statements in the database, no data transferred."""

        def run(conn: Conn) -> None:
            head = self._lock(conn, create=False)
            if head is not None and head[1] > 1:
                conn.execute(
                    self._sql("reverse"), {"ns": self._ns, "id": head[0], "last": head[1] - 1}
                )
                conn.execute(self._sql("flip"), {"ns": self._ns, "id": head[0]})

        self._write(run)

    def __imul__(self, n: SupportsIndex) -> Self:
        if not hasattr(type(n), "__index__"):
            # Python falls back to l * n (and n.__rmul__), which raises the built-in's error
            return NotImplemented
        count = operator.index(n)
        if count == 1:
            return self

        def run(conn: Conn) -> None:
            head = self._lock(conn, create=False)
            if head is None or head[1] == 0:
                return
            lid, length = head
            if count <= 0:
                conn.execute(self._sql("clear"), {"ns": self._ns, "id": lid})
                self._set_length(conn, lid, 0)
                return
            total = length * count
            if total > _MAX:
                raise OverflowError("repeated list is too long")
            have = length
            while have < total:
                k = min(have, total - have)
                conn.execute(self._sql("repeat"), {"ns": self._ns, "id": lid, "off": have, "k": k})
                have += k
            self._set_length(conn, lid, total)

        self._write(run)
        return self

    def sort(self, *, key: Callable[[T], Any] | None = None, reverse: bool = False) -> None:
        """Sort in place, stably, like ``list.sort``.

        The items are read in one statement and sorted here, outside any transaction (so a
        slow or re-entrant ``key`` holds no lock); then one transaction checks that the list
        is unchanged and moves the rows to their new positions (values are not rewritten). If
        the list changed meanwhile, nothing is written and ``ValueError('list modified during
        sort')`` is raised, as ``list.sort`` does.
        """
        with self._scope.connection() as conn:  # one statement: one consistent snapshot
            stored = [
                v if type(v) is bytes else bytes(v)
                for (v,) in conn.execute(self._sql("all"), self._p).fetchall()
            ]
        values: list[Any] = [self._loads(v) for v in stored]  # compared as list.sort does
        order = sorted(
            range(len(values)),
            key=values.__getitem__ if key is None else (lambda j: key(values[j])),
            reverse=reverse,
        )
        if not order:
            return
        h = _Digest()
        h.update(stored)
        digest = h.digest()
        del stored
        moves = [{"new": -new - 1, "old": old} for new, old in enumerate(order) if new != old]

        def run(conn: Conn) -> None:
            head = self._lock(conn, create=False)
            if head is None or head[1] != len(order):
                raise ValueError("list modified during sort")
            lid = head[0]
            cur = conn.execute(self._sql("values"), {"ns": self._ns, "id": lid})
            h = _Digest()
            while batch := cur.fetchmany(self.batch_size):
                h.update(v for (v,) in batch)
            if h.digest() != digest:
                raise ValueError("list modified during sort")
            if moves:
                conn.executemany(
                    self._sql("move"), [{**m, "ns": self._ns, "id": lid} for m in moves]
                )
                conn.execute(self._sql("flip"), {"ns": self._ns, "id": lid})

        self._write(run)
