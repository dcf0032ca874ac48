"""``PersistentDict`` and ``PersistentSet``: the store presented as a ``dict`` and a ``set``.

Both are live views on the database, not caches: every call reads or writes the database, a
write is durable when the call returns (or, inside a transaction, when it commits), and other
store objects and processes see it at once. Each lives in the entries table under a derived
namespace (``<namespace>/d/<name>`` for a dict, ``<namespace>/s/<name>`` for a set), so it
shares the store's transactions, connections and indexes.

How keys are stored (see ``docs/collections.md``):

* a dict's keys are encoded by its *key* serializer, not by the value serializer: with
  ``key_serializer="str"`` (the default unless the values are pickle or marshal) keys are ``str``
  stored verbatim as the entry key, so SQL users can read them and iteration is in code-point
  order of the keys; with ``"pickle"`` or ``"marshal"`` (the default for those value
  serializers, which is the storage format dicts have always had with them) or another
  serializer, keys are the URL-safe base64 of the serialized canonical key;
* a set's elements are encoded by its serializer (a set has no values besides its elements):
  JSON text for JSON elements, URL-safe base64 of the serialized canonical element otherwise.

Either way the entry key is the element's identity, so equal elements meet in one row.

Every compound method is one statement or one transaction (diskcache's ``Index`` taught that the
``MutableMapping`` defaults - ``setdefault``, ``pop``, ``popitem`` - are check-then-act races).
"""

from __future__ import annotations

import base64
import copy as _copy
import functools
import io
import json
import marshal
import pickle
import types
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    MutableSet,
    ValuesView,
)
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Generic, Self, overload

from typing_extensions import TypeVar

from . import _entries, serializers
from ._backend import Scope, facade, open_store, scope_of
from ._conn import Conn
from ._indexing import JsonField
from ._validate import NOT_SET, check_collection_key, checked_key
from .errors import ConflictError, NotFoundError

if TYPE_CHECKING:
    from _typeshed import SupportsKeysAndGetItem

    from ._indexing import IndexInfo

__all__ = ["PersistentDict", "PersistentSet"]

# The type parameters: ``PersistentDict[K, V]``, ``PersistentSet[T]``. Each defaults to
# ``Any`` (PEP 696), so a bare ``PersistentDict`` means ``PersistentDict[Any, Any]``, as the
# values of a dict opened without annotations are whatever its serializer gives back.
K = TypeVar("K", default=Any)
V = TypeVar("V", default=Any)
T = TypeVar("T", default=Any)
# method-level type variables
K2 = TypeVar("K2")
V2 = TypeVar("V2")
S = TypeVar("S")

_MISSING: Any = object()
_REPR_ITEMS = 20


# -- key encodings ---------------------------------------------------------------------------
def _canonical(obj: Any) -> Any:
    """Fold what a built-in dict or set treats as one key into one value before encoding:
    ``True``/``1``/``1.0`` (and ``False``/``0``/``-0.0``) are one key, and subclasses of
    ``int``/``float``/``str``/``bytes`` are their base type. Containers are left alone."""
    if isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, int):
        return obj if type(obj) is int else int(obj)
    if isinstance(obj, float):
        if obj.is_integer():
            return int(obj)
        return obj if type(obj) is float else float(obj)
    if isinstance(obj, str) and type(obj) is not str:
        return str(obj)
    if isinstance(obj, bytes) and type(obj) is not bytes:
        return bytes(obj)
    return obj


def _pickle_key(obj: Any) -> bytes:
    # pickle memoises repeated objects, so ("ab", "ab") pickles differently depending on
    # whether both items are the same object; without the memo ("fast" mode) equal keys give
    # equal bytes. Loading needs nothing special.
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    try:
        pickler.dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError, ValueError) as exc:
        raise TypeError(f"cannot pickle {type(obj).__name__}: {exc}") from None
    return buf.getvalue()


def _marshal_key(obj: Any) -> bytes:
    # marshal >= 3 writes back-references that depend on reference counts; version 2 has none,
    # so equal keys give equal bytes.
    try:
        return marshal.dumps(obj, 2)
    except ValueError as exc:
        raise TypeError(f"cannot marshal {type(obj).__name__}: {exc}") from None


def _check_stored_key(text: str, scope: Scope) -> str:
    """The entry key limits (the database's own among them), as a ValueError naming the
    problem (shared by dict and set)."""
    try:
        return check_collection_key(text, scope.backend.dialect.max_collection_key_chars)
    except ValueError as exc:
        raise ValueError(f"cannot store this key: {exc}") from None


#: the ``key_serializer`` of a dict whose keys are ``str`` stored verbatim
_STR_KEYS = "str"


def _key_codec(spec: Any, values: Any) -> tuple[Any, Callable[[Any], bytes] | None]:
    """A dict's key serializer and its bytes encoder (``None``: ``str`` keys stored verbatim).

    The default follows the value serializer only where dicts have always stored keys that way
    (pickle and marshal keys are base64 of their canonical pickle/marshal, and must stay
    readable); everywhere else it is verbatim ``str``, which every value serializer can hold."""
    if spec is None:
        spec = (
            values if values is serializers.PICKLE or values is serializers.MARSHAL else _STR_KEYS
        )
    if isinstance(spec, str) and spec == _STR_KEYS:
        return _STR_KEYS, None
    try:
        ser = serializers.get_serializer(spec)
    except ValueError:
        raise ValueError(
            f"unknown key_serializer {spec!r}; use 'str' (str keys stored verbatim), 'pickle', "
            "'marshal', 'raw' (bytes keys) or an object with dumps/loads"
        ) from None
    if ser is serializers.JSON:
        # JSON gives tuples back as lists, which cannot be keys, and JSON text of a str key
        # would only be a less readable "str"
        raise ValueError(
            "key_serializer='json' is not offered: use 'str' for str keys stored verbatim, or "
            "'pickle' or 'marshal' for other key types"
        )
    if ser is serializers.PICKLE:
        return ser, _pickle_key
    if ser is serializers.MARSHAL:
        return ser, _marshal_key
    return ser, ser.dumps


def _serializer_spec(ser: Any) -> Any:
    """What ``get_serializer`` turns back into ``ser`` after pickling: a built-in by its name
    (an unpickled copy of the instance would not be the built-in, and would be treated as a
    custom serializer), a custom one as the object the caller gave."""
    if isinstance(ser, serializers.Custom):
        return ser.obj
    if any(ser is builtin for builtin in serializers.BY_NAME.values()):
        return ser.name
    return ser


def _reopen(
    cls: type[_Collection], base: Any, name: str, options: dict[str, Any], owns: bool
) -> _Collection:
    """Unpickle a collection: open it again on its (unpickled, so reconnected) parent store."""
    obj = cls(base, name, **options)
    if owns:  # the original closed its own store: so does this one
        obj._owned = base
    return obj


class _Collection:
    """What PersistentDict and PersistentSet share: opening, the derived store, scanning."""

    _kind = ""
    #: rows fetched per query while iterating (keyset pagination: no connection is held
    #: between batches, so iteration never blocks writers)
    batch_size = 500

    def __init__(
        self,
        bind: Any,
        name: str,
        *,
        serializer: Any = "json",
        namespace: str | None = None,
        **connect_options: Any,
    ) -> None:
        self._ser: Any = serializers.get_serializer(serializer)
        self._json = self._ser is serializers.JSON
        if not isinstance(name, str):
            raise TypeError(f"a collection name is a str, not {type(name).__name__}")
        self._owned: Any = None
        if scope_of(bind) is not None:
            if connect_options:
                raise TypeError(
                    f"connect options {sorted(connect_options)} apply only when opening a "
                    "database from a URL or an Engine, not to an existing store"
                )
            base = bind if namespace is None else bind.namespace(namespace)
        else:
            base = self._owned = open_store(
                bind, namespace=namespace or "default", **connect_options
            )
        # The store the collection was opened on, not the derived store behind it: pickling
        # reopens the collection on it (a derived store cannot pickle itself).
        self._base = base
        try:
            # keys reach the derived store encoded and checked (_check_stored_key): once
            self._scope: Scope = base.scope.derived(self._kind, name, checked_key)
            self._s = facade(self._scope)
        except BaseException:
            self.close()
            raise
        self._name = name

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def serializer(self) -> Any:
        return self._ser

    @property
    def store(self) -> Any:
        """The store the collection was opened on: the one it was given (in the namespace it
        was asked for), or the one it opened itself."""
        return self._base

    def close(self) -> None:
        """Close the store this collection opened itself (a no-op for one given a Store)."""
        if self._owned is not None:
            self._owned.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _options(self) -> dict[str, Any]:
        return {"serializer": _serializer_spec(self._ser)}

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as "open collection ``name`` on the parent store again": the parent store
        pickles as a reconnect when it was opened from a URL, and raises its own TypeError
        otherwise (an Engine, a Connection, a Session or a transaction cannot travel)."""
        owns = self._owned is not None
        return (_reopen, (type(self), self._base, self._name, self._options(), owns))

    def _scan(self, *, values: bool, desc: bool = False) -> Iterator[tuple[str, bytes | None]]:
        return _entries.scan(self._scope, values=values, desc=desc, batch=self.batch_size)

    def _present(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` exist, in one query per batch."""
        return _entries.present(self._scope, keys)

    def _is_empty(self) -> bool:
        return _entries.is_empty(self._scope)

    def _clear(self) -> None:
        _entries.clear_namespace(self._scope)

    def __len__(self) -> int:
        """One COUNT over the collection's primary-key range."""
        return len(self._s)

    def __bool__(self) -> bool:
        return not self._is_empty()


# -- PersistentDict ------------------------------------------------------------------------------
class PersistentDict(_Collection, Generic[K, V], MutableMapping[K, V]):
    """A ``dict`` in the database. ``store.dict(name)`` returns one, or open it directly:
    ``PersistentDict("sqlite:///data.db", name="settings")`` (the dict then owns the store it
    opened; close it, or use it as a context manager).

    Values are anything ``serializer`` can encode; reading a value returns a new object each
    time, so mutating it changes nothing stored (``d["k"].append(1)`` is lost: write
    ``d["k"] = ...``). Keys are encoded by ``key_serializer``, whatever the values are:
    ``"str"`` (the default, except with pickle or marshal values) takes ``str`` keys, stored
    verbatim and iterated in code-point order, not insertion order (any other key type is a
    ``TypeError``, never silently converted); ``"pickle"`` and ``"marshal"`` (the defaults for
    those value serializers) take any hashable value they can encode, as does ``"raw"`` for
    ``bytes`` keys or an object with ``dumps``/``loads``.

    It is generic in its key and value types for type checkers: ``d: PersistentDict[str, int]
    = store.dict("scores")`` makes ``d["k"]`` an ``int``. The parameters are promises the
    caller makes, not checks: nothing converts or validates a value against them at runtime.
    """

    _kind = "d"

    def __init__(
        self,
        bind: Any,
        name: str,
        *,
        serializer: Any = "json",
        key_serializer: Any = None,
        namespace: str | None = None,
        **connect_options: Any,
    ) -> None:
        # before opening anything: a bad key serializer must not leave a store open
        self._key_ser, self._key_bytes = _key_codec(
            key_serializer, serializers.get_serializer(serializer)
        )
        super().__init__(bind, name, serializer=serializer, namespace=namespace, **connect_options)

    @property
    def key_serializer(self) -> Any:
        """``"str"`` for str keys stored verbatim, else the serializer that encodes the keys."""
        return self._key_ser

    def _options(self) -> dict[str, Any]:
        key_ser = self._key_ser if self._key_bytes is None else _serializer_spec(self._key_ser)
        return {**super()._options(), "key_serializer": key_ser}

    @overload
    @classmethod
    def fromkeys(
        cls,
        iterable: Iterable[K2],
        value: None = None,
        /,
        *,
        store: Any,
        name: str,
        serializer: Any = "json",
        key_serializer: Any = None,
        namespace: str | None = None,
        **connect_options: Any,
    ) -> PersistentDict[K2, Any | None]: ...
    @overload
    @classmethod
    def fromkeys(
        cls,
        iterable: Iterable[K2],
        value: V2,
        /,
        *,
        store: Any,
        name: str,
        serializer: Any = "json",
        key_serializer: Any = None,
        namespace: str | None = None,
        **connect_options: Any,
    ) -> PersistentDict[K2, V2]: ...
    @classmethod
    def fromkeys(
        cls,
        iterable: Iterable[Any],
        value: Any = None,
        /,
        *,
        store: Any,
        name: str,
        serializer: Any = "json",
        key_serializer: Any = None,
        namespace: str | None = None,
        **connect_options: Any,
    ) -> PersistentDict[Any, Any]:
        """``dict.fromkeys`` for the dict ``name`` on ``store`` (a Store, a transaction, or
        what :func:`kvstore.connect` takes): sets every key of ``iterable`` to ``value`` in one
        transaction (all of them or, on error, none) and returns the dict. Keys already in the
        dict and not in ``iterable`` stay: clear it first for exactly these keys."""
        d = cls(
            store,
            name,
            serializer=serializer,
            key_serializer=key_serializer,
            namespace=namespace,
            **connect_options,
        )
        try:
            data = d._dumps(value)
            rows = {d._encode_key(key): data for key in iterable}
            if rows:
                d._s.put_many(list(rows.items()))
        except BaseException:
            d.close()
            raise
        return d

    # -- keys ----------------------------------------------------------------------------------
    def _encode_key(self, key: Any) -> str:
        """The entry key for ``key``, for a write: TypeError/ValueError if it cannot be one."""
        hash(key)  # unhashable keys fail as they do in a dict
        if self._key_bytes is None:
            if not isinstance(key, str):
                raise TypeError(
                    f"keys of this PersistentDict are str (key_serializer='str'), not "
                    f"{type(key).__name__}; use key_serializer='pickle' or 'marshal' for other keys"
                )
            return _check_stored_key(str(key), self._scope)
        data = self._key_bytes(_canonical(key))
        return _check_stored_key(base64.urlsafe_b64encode(data).decode("ascii"), self._scope)

    def _lookup(self, key: Any) -> str | None:
        """The entry key for ``key``, for a read: ``None`` when no stored key can equal it
        (reading such a key is a miss, as in a dict, not an error)."""
        hash(key)
        try:
            return self._encode_key(key)
        except (TypeError, ValueError):
            return None

    def _decode_key(self, text: str) -> Any:
        if self._key_bytes is None:
            return text
        return self._key_ser.loads(base64.urlsafe_b64decode(text))

    def _dumps(self, value: Any) -> bytes:
        data = self._ser.dumps(value)
        return data if type(data) is bytes else bytes(data)

    # -- the mapping -----------------------------------------------------------------------------
    def __getitem__(self, key: K) -> V:
        k = self._lookup(key)
        if k is None:
            raise KeyError(key)
        try:
            data = self._s.get(k)
        except NotFoundError:
            raise KeyError(key) from None
        return self._loads(data)

    def _loads(self, data: bytes) -> V:
        value: V = self._ser.loads(data)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        k = self._encode_key(key)
        self._s.put(k, self._dumps(value))

    def __delitem__(self, key: K) -> None:
        k = self._lookup(key)
        if k is None or not self._delete_live(k):
            raise KeyError(key)

    def _delete_live(self, k: str) -> bool:
        return _entries.delete_live(self._scope, k)

    def __contains__(self, key: object) -> bool:
        k = self._lookup(key)
        return k is not None and k in self._s

    def __iter__(self) -> Iterator[K]:
        for k, _ in self._scan(values=False):
            yield self._decode_key(k)

    def __reversed__(self) -> Iterator[K]:
        for k, _ in self._scan(values=False, desc=True):
            yield self._decode_key(k)

    def _items(self, desc: bool = False) -> Iterator[tuple[K, V]]:
        loads = self._ser.loads
        for k, v in self._scan(values=True, desc=desc):
            yield self._decode_key(k), loads(v)

    def keys(self) -> KeysView[K]:
        return _DictKeys(self)

    def values(self) -> ValuesView[V]:
        return _DictValues(self)

    def items(self) -> ItemsView[K, V]:
        return _DictItems(self)

    @overload
    def get(self, key: K, default: None = None) -> V | None: ...
    @overload
    def get(self, key: K, default: V) -> V: ...
    @overload
    def get(self, key: K, default: S) -> V | S: ...
    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    @overload
    def pop(self, key: K) -> V: ...
    @overload
    def pop(self, key: K, default: V) -> V: ...
    @overload
    def pop(self, key: K, default: S) -> V | S: ...
    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value, in one ``DELETE ... RETURNING`` statement."""
        k = self._lookup(key)
        data = None if k is None else self._pop_raw(k)
        if data is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return self._ser.loads(data)

    def _pop_raw(self, k: str) -> bytes | None:
        return _entries.pop_value(self._scope, k)

    def popitem(self) -> tuple[K, V]:
        """Remove and return the *last* (key, value) pair in iteration order (the greatest
        key), in one statement; ``KeyError`` when the dict is empty."""
        got = _entries.pop_last(self._scope)
        if got is None:
            raise KeyError("popitem(): dictionary is empty")
        return self._decode_key(got[0]), self._ser.loads(got[1])

    @overload
    def setdefault(self: PersistentDict[K, S | None], key: K, default: None = None) -> S | None: ...
    @overload
    def setdefault(self, key: K, default: V) -> V: ...
    def setdefault(self, key: Any, default: Any = None) -> Any:
        """``d[key]`` if present, else store ``default`` and return it: insert-if-absent then
        read, in one transaction, so two processes racing on a new key agree on its value."""
        k = self._encode_key(key)
        try:
            return self._ser.loads(self._s.get(k))
        except NotFoundError:
            pass
        data = self._dumps(default)
        missing = object()

        def attempt(tx: Any) -> Any:
            try:
                tx.put(k, data, expected_version=0)
                return default
            except ConflictError:
                try:
                    return self._ser.loads(tx.get(k))
                except NotFoundError:
                    return missing  # deleted again in between: try once more

        while True:
            # run_in_transaction: racing inserts of one key can deadlock on InnoDB (each
            # loser holds a shared lock on the winner's row); the victim runs again
            got = self._s.run_in_transaction(attempt)
            if got is not missing:
                return got

    @overload
    def update(self, other: SupportsKeysAndGetItem[K, V], /) -> None: ...
    @overload
    def update(
        self: PersistentDict[str, V], other: SupportsKeysAndGetItem[str, V], /, **kwargs: V
    ) -> None: ...
    @overload
    def update(self, other: Iterable[tuple[K, V]], /) -> None: ...
    @overload
    def update(
        self: PersistentDict[str, V], other: Iterable[tuple[str, V]], /, **kwargs: V
    ) -> None: ...
    @overload
    def update(self: PersistentDict[str, V], /, **kwargs: V) -> None: ...
    # (mypy cannot tell that this accepts the overloads typed on ``self``, as dict's are)
    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
        """Every form ``dict.update`` takes (a mapping, anything with ``keys()``, an iterable
        of pairs, keywords), written in one transaction: all of it or, on error, none."""
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 argument, got {len(args)}")
        pairs: dict[str, bytes] = {}
        if args:
            for key, value in _update_pairs(args[0]):
                pairs[self._encode_key(key)] = self._dumps(value)
        for key, value in kwargs.items():
            pairs[self._encode_key(key)] = self._dumps(value)
        if pairs:
            self._s.put_many(list(pairs.items()))

    def set_many(
        self,
        items: SupportsKeysAndGetItem[K, V] | Iterable[tuple[K, V]] = (),
        **kwargs: V,
    ) -> None:
        """Write many keys in one transaction (``update`` under the store API's name)."""
        self.update(items, **kwargs)

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """The values of those ``keys`` that exist, as a plain dict, in one query per batch."""
        if isinstance(keys, str | bytes):
            raise TypeError(
                f"get_many takes an iterable of keys, not a single {type(keys).__name__}"
            )
        wanted: dict[str, K] = {}
        for key in keys:
            k = self._lookup(key)
            if k is not None:
                wanted.setdefault(k, key)
        found = self._s.get_many(list(wanted))
        return {wanted[k]: self._ser.loads(v) for k, v in found.items()}

    def clear(self) -> None:
        """Remove every key, in one statement."""
        self._clear()

    def copy(self) -> dict[K, V]:
        """A plain ``dict`` snapshot of the contents."""
        return dict(self._items())

    # copy.copy and copy.deepcopy give snapshots too: a copy that wrote through to the same
    # rows would not be a copy
    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[K, V]:
        return _copy.deepcopy(self.copy(), memo)

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.copy() == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __or__(self, other: Mapping[K2, V2]) -> dict[K | K2, V | V2]:
        if not isinstance(other, Mapping):
            return NotImplemented
        out: dict[K | K2, V | V2] = dict(self._items())
        out.update(other.items())
        return out

    def __ror__(self, other: Mapping[K2, V2]) -> dict[K | K2, V | V2]:
        if not isinstance(other, Mapping):
            return NotImplemented
        out: dict[K | K2, V | V2] = dict(other.items())
        out.update(self._items())
        return out

    # like dict's, it takes what update() takes, more than | does
    def __ior__(  # type: ignore[misc]
        self, other: SupportsKeysAndGetItem[K, V] | Iterable[tuple[K, V]]
    ) -> Self:
        self.update(other)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r}, {_repr_dict(self._items())})"

    # -- indexes on values -------------------------------------------------------------------------
    def create_index(
        self,
        name: str,
        extractor: Any,
        unique: bool = False,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> IndexInfo:
        """An index on the dict's values. ``kvstore.json_field(path)`` (or a path string) reads
        the stored JSON; a callable receives the *deserialized* value and returns the index
        value(s). Same rules as :meth:`kvstore.Store.create_index`."""
        if isinstance(extractor, str | JsonField):
            if not self._json:
                raise ValueError(
                    f"json_field indexes read JSON values, but this dict stores values with "
                    f"the {getattr(self._ser, 'name', 'custom')} serializer: index it with a callable"
                )
        elif callable(extractor):
            extractor = _decoding(extractor, self._ser.loads)
        info: IndexInfo = self._s.create_index(name, extractor, unique, progress=progress)
        return info

    def drop_index(self, name: str) -> None:
        self._s.drop_index(name)

    def rebuild_index(
        self, name: str, *, progress: Callable[[int, int], None] | None = None
    ) -> IndexInfo:
        info: IndexInfo = self._s.rebuild_index(name, progress=progress)
        return info

    def indexes(self) -> list[IndexInfo]:
        return list(self._s.indexes())

    def _index_query(self, query: dict[str, Any]) -> dict[str, Any]:
        after = query.get("after")
        if after is not None:
            if isinstance(after, tuple) and len(after) == 2:
                query["after"] = (after[0], self._encode_key(after[1]))
            else:
                query["after"] = self._encode_key(after)
        return query

    def find(self, index: str, value: Any = NOT_SET, **query: Any) -> list[K]:
        """Keys whose value matches (arguments as :meth:`kvstore.Store.find`; ``after=`` takes
        a key of this dict)."""
        keys = self._s.find(index, value, **self._index_query(query))
        return [self._decode_key(k) for k in keys]

    def find_items(self, index: str, value: Any = NOT_SET, **query: Any) -> list[tuple[K, V]]:
        """(key, value) pairs whose value matches, deserialized."""
        items = self._s.find_items(index, value, **self._index_query(query))
        return [(self._decode_key(k), self._loads(v)) for k, v in items]

    def count(self, index: str, value: Any = NOT_SET, **query: Any) -> int:
        """How many keys match (same arguments as :meth:`find`, without paging)."""
        return int(self._s.count(index, value, **query))


def _decoding(fn: Callable[[Any], Any], loads: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """Wrap an extractor so it sees the deserialized value. The wrapper carries ``fn``'s
    module and qualified name, which is what the database records for a callable index, so
    another process declaring the same function matches it."""

    def extractor(data: bytes) -> Any:
        return fn(loads(data))

    functools.update_wrapper(extractor, fn)
    if not hasattr(fn, "__qualname__"):
        extractor.__qualname__ = type(fn).__qualname__
    return extractor


def _update_pairs(other: Any) -> Iterator[tuple[Any, Any]]:
    """(key, value) pairs from what ``dict.update`` accepts, with its errors."""
    if isinstance(other, Mapping):
        yield from other.items()
        return
    if hasattr(other, "keys"):
        for key in other.keys():  # noqa: SIM118 - dict.update calls keys(), as here
            yield key, other[key]
        return
    for i, item in enumerate(other):
        try:
            pair = tuple(item)
        except TypeError:
            raise TypeError(
                f"cannot convert dictionary update sequence element #{i} to a sequence"
            ) from None
        if len(pair) != 2:
            raise ValueError(
                f"dictionary update sequence element #{i} has length {len(pair)}; 2 is required"
            )
        yield pair[0], pair[1]


def _repr_dict(items: Iterator[tuple[Any, Any]]) -> str:
    parts = []
    for i, (k, v) in enumerate(items):
        if i == _REPR_ITEMS:
            parts.append("...")
            break
        parts.append(f"{k!r}: {v!r}")
    return "{" + ", ".join(parts) + "}"


class _View(Generic[K, V]):
    """What the three views share with the built-in's views besides the ABCs."""

    _mapping: PersistentDict[K, V]

    @property
    def mapping(self) -> types.MappingProxyType[K, V]:
        """A read-only proxy of the dict, as a built-in view's ``mapping`` (it reads through to
        the database, like the view)."""
        return types.MappingProxyType(self._mapping)


class _DictKeys(_View[K, V], KeysView[K]):
    _mapping: PersistentDict[K, V]

    def __reversed__(self) -> Iterator[K]:
        return reversed(self._mapping)

    def __repr__(self) -> str:
        return f"{type(self._mapping).__name__}.keys({self._mapping.name!r})"


class _DictValues(_View[K, V], ValuesView[V]):
    _mapping: PersistentDict[K, V]

    def __iter__(self) -> Iterator[V]:
        for _, v in self._mapping._items():
            yield v

    def __reversed__(self) -> Iterator[V]:
        for _, v in self._mapping._items(desc=True):
            yield v

    def __contains__(self, value: object) -> bool:
        # the ABC's version reads the values one key at a time (and fails if a key vanishes)
        return any(v is value or v == value for v in self)

    def __repr__(self) -> str:
        return f"{type(self._mapping).__name__}.values({self._mapping.name!r})"


# The built-in views that CPython's set operations on views treat as sets (sizes compared).
_BUILTIN_SET_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.items()))


class _DictItems(_View[K, V], ItemsView[K, V]):
    """The items view. Membership and the set operators follow CPython's ``dict_items``
    (``Objects/dictobject.c``) step by step, so results *and* errors are the built-in's: the
    ABC's versions unpack any object as a pair (``"ab"`` is the item ``("a", "b")``), and fail
    on ``1`` or ``"a"`` instead of answering False."""

    _mapping: PersistentDict[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        return self._mapping._items()

    def __reversed__(self) -> Iterator[tuple[K, V]]:
        return self._mapping._items(desc=True)

    def __contains__(self, item: object) -> bool:
        # only a 2-tuple (or a tuple subclass) can be an item; its key must be hashable (a
        # TypeError otherwise, as in a dict), its value need not be
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        key, value = item
        try:
            found = self._mapping[key]
        except KeyError:
            return False
        return found is value or bool(found == value)

    def _members(self, other: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
        """Each item of ``other`` and whether it is in the view: ``item in self`` for each in
        turn, but with the keys of ``batch_size`` items looked up in one query. Lazy, so a
        caller that stops at the first member (``isdisjoint``) reads no further, and an error
        (an unhashable key) surfaces only after the items before it, as it would item by item."""
        d = self._mapping
        it = iter(other)
        size = max(1, int(d.batch_size))
        while True:
            chunk: list[tuple[Any, str | None]] = []
            error: BaseException | None = None
            exhausted = True
            for item in it:
                k = None
                if isinstance(item, tuple) and len(item) == 2:
                    try:
                        k = d._lookup(item[0])
                    except Exception as exc:  # an unhashable key: after the items before it
                        error = exc
                        break
                chunk.append((item, k))
                if len(chunk) == size:
                    exhausted = False
                    break
            wanted = [k for k in dict.fromkeys(k for _, k in chunk) if k is not None]
            found = d._s.get_many(wanted) if wanted else {}
            for item, k in chunk:
                data = None if k is None else found.get(k)
                if data is None:
                    yield item, False
                else:
                    value = d._ser.loads(data)
                    yield item, value is item[1] or bool(value == item[1])
            if error is not None:
                raise error
            if exhausted:
                return

    # Set operations return plain sets. As in CPython, the operand that is not a view is
    # iterated as it is (a TypeError if it cannot be), never refused with NotImplemented, and
    # a hash is taken wherever the built-in puts an item into a set, so an unhashable value is
    # the same TypeError at the same places.
    def __and__(self, other: Any) -> set[tuple[K, V]]:
        if type(other) is set and len(self) <= len(other):
            return other.intersection(self)
        if type(other) in _BUILTIN_SET_VIEWS and len(other) > len(self):
            return {item for item in self if item in other}
        return {item for item, member in self._members(other) if member}

    def __rand__(self, other: Iterable[S]) -> set[S]:
        out: set[Any] = self.__and__(other)
        return out

    def __or__(self, other: Iterable[S]) -> set[tuple[K, V] | S]:
        out: set[tuple[K, V] | S] = set(self)
        out.update(other)
        return out

    def __ror__(self, other: Iterable[S]) -> set[tuple[K, V] | S]:
        out: set[tuple[K, V] | S] = set(other)
        out.update(self)
        return out

    def __sub__(self, other: Iterable[Any]) -> set[tuple[K, V]]:
        out = set(self)
        out.difference_update(other)
        return out

    def __rsub__(self, other: Iterable[S]) -> set[S]:
        out = set(other)
        out.difference_update(self)
        return out

    def __xor__(self, other: Iterable[S]) -> set[tuple[K, V] | S]:
        out: set[tuple[K, V] | S] = set(self)
        out.symmetric_difference_update(other)
        return out

    def __rxor__(self, other: Iterable[S]) -> set[tuple[K, V] | S]:
        out: set[tuple[K, V] | S] = set(other)
        out.symmetric_difference_update(self)
        return out

    def isdisjoint(self, other: Iterable[Any]) -> bool:
        if other is self:
            return not self._mapping
        sized = isinstance(other, set | frozenset) or type(other) in _BUILTIN_SET_VIEWS
        if sized and len(other) > len(self):  # type: ignore[arg-type]
            return not any(item in other for item in self)
        return not any(member for _, member in self._members(other))

    def __repr__(self) -> str:
        return f"{type(self._mapping).__name__}.items({self._mapping.name!r})"


# -- PersistentSet -------------------------------------------------------------------------------
class PersistentSet(_Collection, Generic[T], MutableSet[T]):
    """A ``set`` in the database. ``store.set(name)`` returns one, or open it directly like a
    :class:`PersistentDict`.

    Each element is one entry whose key is the element's canonical text, so membership, ``add``
    and ``discard`` are one primary-key statement each. With the ``"json"`` serializer
    elements are ``str``, ``int``, ``float``, ``bool`` or ``None``; numbers that compare equal
    (``1``, ``1.0``, ``True``) are one element, as in a built-in set, which keeps the one added
    first. With another serializer elements are the hashable values it encodes (``bytes`` with
    ``"raw"``): a set has no values besides its elements, so its one serializer is its element
    encoding. Operators return plain ``set`` objects; in-place operators are one transaction
    each.

    It is generic in its element type for type checkers (``PersistentSet[str]``), a promise
    the caller makes, not a check made at runtime.
    """

    _kind = "s"

    def __init__(
        self,
        bind: Any,
        name: str,
        *,
        serializer: Any = "json",
        namespace: str | None = None,
        **connect_options: Any,
    ) -> None:
        super().__init__(bind, name, serializer=serializer, namespace=namespace, **connect_options)
        if self._ser is serializers.PICKLE:
            self._elem_bytes: Callable[[Any], bytes] = _pickle_key
        elif self._ser is serializers.MARSHAL:
            self._elem_bytes = _marshal_key
        else:
            self._elem_bytes = self._ser.dumps

    # -- elements ------------------------------------------------------------------------------
    def _encode(self, elem: Any) -> tuple[str, bytes]:
        """(entry key, stored value) for ``elem``, for a write. The value is empty unless the
        element is not its canonical form (``True`` is stored under ``1``, ``2.0`` under
        ``2``): then it holds the element itself, so the set gives back what was added."""
        hash(elem)
        canon = _canonical(elem)
        if self._json:
            if canon is not None and not isinstance(canon, str | int | float):
                raise TypeError(
                    f"elements of a PersistentSet with the json serializer are str, int, float, "
                    f"bool or None, not {type(elem).__name__}"
                )
            if isinstance(canon, float):
                self._ser.dumps(canon)  # rejects inf and NaN with the serializer's TypeError
            text = json.dumps(canon, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
            # JSON gives back str, int and float anyway: only bool and integral floats differ
            restore = isinstance(elem, bool | float) and type(canon) is int
        else:
            text = base64.urlsafe_b64encode(self._elem_bytes(canon)).decode("ascii")
            restore = type(canon) is not type(elem)
        stash = bytes(self._ser.dumps(elem)) if restore else b""
        return _check_stored_key(text, self._scope), stash

    def _lookup(self, elem: Any) -> str | None:
        hash(elem)
        try:
            return self._encode(elem)[0]
        except (TypeError, ValueError):
            return None

    def _decode(self, text: str, stash: bytes | None) -> T:
        elem: T
        if stash:
            elem = self._ser.loads(stash)
        elif self._json:
            elem = json.loads(text)
        else:
            elem = self._ser.loads(base64.urlsafe_b64decode(text))
        return elem

    def _encode_all(self, iterable: Iterable[Any]) -> dict[str, bytes]:
        """Entry rows for a write, deduplicated keeping the first equal element."""
        rows: dict[str, bytes] = {}
        for elem in iterable:
            k, stash = self._encode(elem)
            rows.setdefault(k, stash)
        return rows

    def _lookup_all(self, iterable: Iterable[Any]) -> set[str]:
        """Entry keys of the elements of ``iterable`` that could be stored (others cannot be
        members); unhashable elements still raise TypeError, as they do for a built-in set."""
        out: set[str] = set()
        for elem in iterable:
            k = self._lookup(elem)
            if k is not None:
                out.add(k)
        return out

    # -- the set -------------------------------------------------------------------------------
    def __contains__(self, elem: object) -> bool:
        k = self._lookup(elem)
        return k is not None and k in self._s

    def __iter__(self) -> Iterator[T]:
        for k, stash in self._scan(values=True):
            yield self._decode(k, stash)

    def add(self, elem: T) -> None:
        """Add ``elem`` (one insert-if-absent statement; an equal element already there stays)."""
        k, stash = self._encode(elem)
        _entries.insert_absent(self._scope, k, stash)

    def discard(self, elem: T) -> None:
        k = self._lookup(elem)
        if k is not None:
            self._s.delete(k)

    def remove(self, elem: T) -> None:
        k = self._lookup(elem)
        if k is None or not _entries.delete_live(self._scope, k):
            raise KeyError(elem)

    def pop(self) -> T:
        """Remove and return an element (the first in iteration order), in one statement."""
        got = _entries.pop_first(self._scope)
        if got is None:
            raise KeyError("pop from an empty set")
        return self._decode(got[0], got[1])

    def clear(self) -> None:
        """Remove every element, in one statement."""
        self._clear()

    def copy(self) -> set[T]:
        """A plain ``set`` snapshot of the contents."""
        return set(self)

    # copy.copy and copy.deepcopy give snapshots too: a copy that wrote through to the same
    # rows would not be a copy
    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> set[T]:
        return _copy.deepcopy(self.copy(), memo)

    @classmethod
    def _from_iterable(cls, it: Iterable[S]) -> set[S]:
        return set(it)

    def __repr__(self) -> str:
        parts = []
        for i, elem in enumerate(self):
            if i == _REPR_ITEMS:
                parts.append("...")
                break
            parts.append(repr(elem))
        body = "{" + ", ".join(parts) + "}" if parts else "set()"
        return f"{type(self).__name__}({self._name!r}, {body})"

    # -- in-place updates: one transaction each -------------------------------------------------
    def update(self, *others: Iterable[T]) -> None:
        rows: dict[str, bytes] = {}
        for other in others:
            for k, v in self._encode_all(other).items():
                rows.setdefault(k, v)
        if rows:
            self._scope.atomic(lambda conn: _entries.insert_absent_in(self._scope, conn, rows))

    def intersection_update(self, *others: Iterable[Any]) -> None:
        if not others:
            return
        keep: set[str] | None = None
        for other in others:
            ks = self._lookup_all(other)
            keep = ks if keep is None else keep & ks
        assert keep is not None
        if not keep:
            self._clear()
            return
        self._scope.atomic(lambda conn: _entries.keep_only(self._scope, conn, keep))

    def difference_update(self, *others: Iterable[Any]) -> None:
        drop: set[str] = set()
        for other in others:
            drop |= self._lookup_all(other)
        if drop:
            keys = sorted(drop)
            self._scope.atomic(lambda conn: _entries.delete_keys_in(self._scope, conn, keys))

    def symmetric_difference_update(self, other: Iterable[T]) -> None:
        rows = self._encode_all(other)
        if not rows:
            return

        def run(conn: Conn) -> None:
            present = _entries.present_locked(self._scope, conn, sorted(rows))
            _entries.delete_keys_in(self._scope, conn, sorted(present))
            _entries.insert_absent_in(
                self._scope, conn, {k: v for k, v in rows.items() if k not in present}
            )

        self._scope.atomic(run)

    def __ior__(self, other: AbstractSet[T]) -> Self:  # type: ignore[misc, override]
        if not isinstance(other, AbstractSet):
            return NotImplemented
        self.update(other)
        return self

    def __iand__(self, other: AbstractSet[Any]) -> Self:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        self.intersection_update(other)
        return self

    def __isub__(self, other: AbstractSet[Any]) -> Self:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        self.difference_update(other)
        return self

    def __ixor__(self, other: AbstractSet[T]) -> Self:  # type: ignore[misc, override]
        if not isinstance(other, AbstractSet):
            return NotImplemented
        self.symmetric_difference_update(other)
        return self

    # -- new sets: plain built-in sets -----------------------------------------------------------
    def _members(self, iterable: Iterable[Any]) -> list[tuple[Any, bool]]:
        """Each element of ``iterable`` (deduplicated) and whether it is a member, in one
        query per batch rather than loading this set."""
        elems: dict[Any, str | None] = {}
        for elem in iterable:
            if elem not in elems:
                elems[elem] = self._lookup(elem)
        present = self._present(k for k in elems.values() if k is not None)
        return [(e, k is not None and k in present) for e, k in elems.items()]

    def union(self, *others: Iterable[S]) -> set[T | S]:
        out: set[T | S] = set(self)
        return out.union(*others)

    def intersection(self, *others: Iterable[Any]) -> set[T]:
        if not others:
            return set(self)
        first, *rest = others
        return {e for e, member in self._members(first) if member}.intersection(*rest)

    def difference(self, *others: Iterable[Any]) -> set[T]:
        return set(self).difference(*others)

    def symmetric_difference(self, other: Iterable[S]) -> set[T | S]:
        out: set[T | S] = set(self)
        return out.symmetric_difference(other)

    def __or__(self, other: AbstractSet[S]) -> set[T | S]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return self.union(other)

    # The reflected operators return what the forward ones do, but are typed loosely: a type
    # checker answers ``a_set | persistent_set`` from ``set.__or__`` and never asks these.
    def __ror__(self, other: Any) -> set[Any]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return set(other).union(self)

    def __and__(self, other: AbstractSet[Any]) -> set[T]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return self.intersection(other)

    def __rand__(self, other: AbstractSet[Any]) -> set[T]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return self.intersection(other)

    def __sub__(self, other: AbstractSet[Any]) -> set[T]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return self.difference(other)

    def __rsub__(self, other: Any) -> set[Any]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return {e for e, member in self._members(other) if not member}

    def __xor__(self, other: AbstractSet[S]) -> set[T | S]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return self.symmetric_difference(other)

    def __rxor__(self, other: Any) -> set[Any]:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return set(other).symmetric_difference(self)

    # -- comparisons -----------------------------------------------------------------------------
    def isdisjoint(self, other: Iterable[Any]) -> bool:
        return not any(member for _, member in self._members(other))

    def issubset(self, other: Iterable[Any]) -> bool:
        return self <= (other if isinstance(other, AbstractSet) else set(other))

    def issuperset(self, other: Iterable[Any]) -> bool:
        return all(member for _, member in self._members(other))

    def __le__(self, other: Any) -> bool:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        if len(self) > len(other):
            return False
        if isinstance(other, PersistentSet):  # batched membership queries, not one per element
            return all(member for _, member in other._members(self))
        return all(elem in other for elem in self)

    def __lt__(self, other: Any) -> bool:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return len(self) < len(other) and self.__le__(other)

    def __ge__(self, other: Any) -> bool:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return len(self) >= len(other) and self.issuperset(other)

    def __gt__(self, other: Any) -> bool:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return len(self) > len(other) and self.issuperset(other)

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return len(self) == len(other) and self.issuperset(other)

    __hash__ = None  # type: ignore[assignment]
