"""``kvstore.cached``: memoise a function's results in a kvstore :class:`~kvstore.Store`.

What vlermv's ``cache`` and diskcache's ``memoize`` give, plus what they lack:

* **Stable keys.** A call's key is the SHA-256 of a canonical JSON encoding of its arguments,
  bound to the function's signature with defaults applied, so ``f(1, b=2)``, ``f(1, 2)`` and
  ``f(1)`` (when ``b=2`` is the default) share one entry, in every process and on every Python
  version. ``hash()`` is never used: it is salted per process for ``str`` and ``bytes``.
  Arguments without a stable encoding raise ``TypeError`` unless ``key=`` derives the key.
* **One computation per missing key**, across threads and processes (diskcache's ``memoize``
  lets every concurrent caller compute): the first caller takes a lock entry by
  compare-and-set; the others poll until the result appears or the lock expires.
* **A namespace per function** (``<namespace>/c/<name>``), so ``cache_clear()`` removes exactly
  that function's results and the user's own key listing never shows cache entries.
* ``None`` is a result like any other (a cached ``None`` is a hit), results go through a
  serializer (``"auto"`` by default: ``bytes`` stored as they are, anything else as JSON;
  ``"pickle"`` only when asked), methods and ``async def`` functions work.
* **Async stores.** Given a :class:`kvstore.AsyncStore`, an ``async def`` function's store calls
  run the same code as a sync store's through SQLAlchemy's greenlet bridge (as every
  ``AsyncStore`` method does), so the event loop keeps running while the database works.
* **Late binding.** ``cached`` takes the store, or a function of no arguments that returns it,
  called at the decorated function's first use (once, under a lock), so a module can decorate
  at import time before the application has opened its store; ``f.bind(store)`` replaces the
  store later (tests swap in their own).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import math
import reprlib
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, ParamSpec, Self, TypeAlias, TypeVar, cast, overload

from ._backend import facade
from ._bridge import spawn
from ._entries import clear_namespace, delete_if_checksum
from ._retry import LOCK_POLL
from ._validate import NOT_SET, TTL, ttl_to_seconds
from .aio import AsyncStore
from .base import KeyValueStore
from .errors import ConflictError
from .serializers import BY_NAME, JSON, get_serializer
from .store import Store

__all__ = ["AsyncCachedFunction", "CachedFunction", "StoreSource", "cached"]

P = ParamSpec("P")
R = TypeVar("R")

#: What ``cached`` and ``bind`` take: a store, or a function of no arguments returning one (an
#: AsyncStore only for an ``async def`` function)
StoreSource: TypeAlias = Store | AsyncStore | Callable[[], Store | AsyncStore]

#: seconds a computation may hold its lock before a waiting caller takes over
DEFAULT_LOCK_TIMEOUT = 60.0
_NAME_MAX = 120  # what Store._derived accepts
_KEY_FORMAT = "kvstore.cached/1:"  # hashed in front of the encoding, so a new format gets new keys
# The first byte of a stored bytes result under "auto". JSON text as json.dumps writes it
# starts with one of {["-0123456789tfn, never "B", so one byte tells the two apart and JSON
# results need no tag at all: they stay byte-identical to what "json" stores.
_BYTES_TAG = b"B"

_NO_LOCK = b""  # the "token" of a call made inside a transaction, which takes no lock
# A lock is deleted only if it still holds our token (_entries.delete_if_checksum): a
# computation that outlived its lock must not release the lock of the caller that took over.


# -- result encoding -----------------------------------------------------------------------------
class _Auto:
    """``cached``'s default result encoding: ``bytes`` as they are, anything else as JSON.

    A bytes result (an HTTP body, a thumbnail) is stored as ``b"B"`` followed by the raw bytes
    (no base64: a 1 MiB body takes 1 MiB + 1 byte, chunked like any large value). Every other
    result is the exact JSON text the ``"json"`` serializer writes, untagged, because:

    * entries stored with ``"json"`` (the default before ``"auto"``) are still hits, so an
      upgrade does not empty every cache and the key format needs no new version;
    * switching a function between ``"json"`` and ``"auto"`` keeps its JSON entries;
    * a version that only knows JSON fails to decode a ``b"B"`` entry, which its lookup treats
      as a miss (recompute and overwrite): mixed versions cost misses, never wrong results.

    Only a whole result can be bytes: bytes inside a list or dict stay a ``TypeError``, since
    any in-band JSON marker for them (``{"$bytes": ...}``) could also be a real result.
    """

    name = "auto"

    def dumps(self, obj: Any) -> bytes:
        if isinstance(obj, bytes | bytearray | memoryview):
            # bytearray and memoryview come back as bytes, as a tuple comes back as a list
            return _BYTES_TAG + bytes(obj)
        try:
            return JSON.dumps(obj)
        except TypeError as exc:
            raise TypeError(
                f"{exc} (the default serializer stores JSON values, or bytes as a whole "
                "result; pass serializer= to store other types)"
            ) from None

    def loads(self, data: bytes) -> Any:
        if data[:1] == _BYTES_TAG:
            return bytes(data[1:])
        # Anything else is JSON, ours or a "json" entry; garbage raises, and is a miss.
        return JSON.loads(data)

    def __repr__(self) -> str:
        return "<kvstore.cached serializer 'auto'>"


_AUTO = _Auto()  # the default serializer of cached() (serializer="auto")


def _result_serializer(spec: Any) -> Any:
    # "auto" is cached()'s own name: the serializers shared with the collections keep their
    # meaning ("json" stays JSON-only). Every other spec, a custom serializer object in
    # particular, is used exactly as get_serializer() gives it.
    if isinstance(spec, str) and spec == "auto":
        return _AUTO
    try:
        return get_serializer(spec)
    except ValueError:
        names = ", ".join(repr(n) for n in ["auto", *sorted(BY_NAME)])
        raise ValueError(
            f"unknown serializer {spec!r}; cached() takes one of {names} or an object with "
            "dumps/loads"
        ) from None


# -- key derivation ------------------------------------------------------------------------------
class _Unencodable(TypeError):
    def __init__(self, path: str, value: object) -> None:
        super().__init__(path)
        self.path = path
        self.value = value


def _canon(value: object, path: str) -> Any:
    """The canonical JSON form of one argument.

    Scalars stay JSON scalars; every container becomes a ``[tag, items]`` array, so no scalar is
    ever an array and a tuple never collides with a list of the same items (they are unequal
    in Python too). Dicts and sets are sorted by the encoding of their elements, so equal
    containers give equal keys whatever their insertion order. Types that compare equal across
    kinds (``1``, ``1.0``, ``True``) still get distinct keys: an extra miss, never a wrong hit.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum member is its value, as it compares
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return ["float", repr(float(value))]  # strict JSON has no NaN or Infinity
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return ["bytes", bytes(value).hex()]
    if isinstance(value, list):
        return ["list", [_canon(v, f"{path}[{i}]") for i, v in enumerate(value)]]
    if isinstance(value, tuple):
        return ["tuple", [_canon(v, f"{path}[{i}]") for i, v in enumerate(value)]]
    if isinstance(value, dict):
        pairs = [
            [_canon(k, f"{path} key {k!r}"), _canon(v, f"{path}[{k!r}]")] for k, v in value.items()
        ]
        return ["dict", sorted(pairs, key=lambda p: _dump(p[0]))]
    if isinstance(value, set | frozenset):
        items = [_canon(v, f"{path} element") for v in value]
        return ["set", sorted(items, key=_dump)]
    raise _Unencodable(path, value)


def _dump(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _hash(doc: Any) -> str:
    return hashlib.sha256((_KEY_FORMAT + _dump(doc)).encode("ascii")).hexdigest()


def _default_name(func: Callable[..., Any]) -> str:
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if not isinstance(qualname, str):
        raise TypeError(f"cannot name the cache of {func!r}: pass name= to cached()")
    if qualname.endswith("<lambda>"):
        # every lambda of a module would share one cache
        raise ValueError(
            "a lambda has no name of its own to key its cache by: pass name= to cached()"
        )
    name = f"{getattr(func, '__module__', None) or '?'}.{qualname}"
    if len(name) > _NAME_MAX:
        # deterministic, so every process still derives the same namespace
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        name = f"{name[: _NAME_MAX - 17]}~{digest}"
    return name


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"cache name must be str, not {type(name).__name__}")
    if not 0 < len(name) <= _NAME_MAX or "\x00" in name:
        raise ValueError(f"cache name must be 1-{_NAME_MAX} characters without NUL, got {name!r}")
    return name


def _check_lock_timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"lock_timeout must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"lock_timeout must be a positive, finite number of seconds, got {value!r}"
        )
    return float(value)


class _Core:
    """Everything a cached function and its bound methods share (immutable once built)."""

    def __init__(
        self,
        func: Callable[..., Any],
        store: Store | AsyncStore,
        ttl_secs: TTL,
        key: Callable[..., str] | None,
        serializer: Any,
        name: str,
        lock_timeout: float,
    ) -> None:
        self.func = func
        #: the async store given, whose sync store the operations below run on (in the
        #: greenlet bridge: see AsyncCachedFunction._run); None for a sync store
        self.aio: AsyncStore | None = None
        if isinstance(store, AsyncStore):
            self.aio, store = store, store.sync
        self.parent = store
        self.ttl_secs = ttl_secs
        self.key_func = key
        self.serializer = serializer
        self.name = name
        self.lock_timeout = lock_timeout
        self.results: Store = facade(store.scope.derived("c", name))
        self.locks: Store = facade(store.scope.derived("cl", name))
        self.sig: inspect.Signature | None
        try:
            self.sig = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins have none: fall back to args/kwargs
            self.sig = None

    # -- keys -----------------------------------------------------------------------------------
    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self.key_func is not None:
            out = self.key_func(*args, **kwargs)
            if not isinstance(out, str):
                raise TypeError(
                    f"the key= function of cached {self.name} returned {type(out).__name__}, not str"
                )
            return self.results.scope.key(out)
        try:
            return _hash(self._encode(args, kwargs))
        except _Unencodable as exc:
            raise TypeError(
                f"cannot derive a cache key for {self.name}(): argument {exc.path} is "
                f"{type(exc.value).__name__}, which has no stable encoding (cache keys take None, "
                "bool, int, float, str, bytes and lists, tuples, dicts and sets of them); pass "
                "key= to cached() to derive the key yourself"
            ) from None

    def _encode(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.sig is None:
            return [
                [_canon(a, f"#{i}") for i, a in enumerate(args)],
                sorted([k, _canon(v, repr(k))] for k, v in kwargs.items()),
            ]
        # Raises the TypeError the call itself would (missing or unexpected argument).
        bound = self.sig.bind(*args, **kwargs)
        bound.apply_defaults()
        positional: list[Any] = []
        keyword: list[list[Any]] = []
        for p in self.sig.parameters.values():
            value = bound.arguments[p.name]
            if p.kind is p.VAR_POSITIONAL:
                positional += [_canon(v, f"*{p.name}[{i}]") for i, v in enumerate(value)]
            elif p.kind is p.VAR_KEYWORD:
                keyword += [[k, _canon(v, repr(k))] for k, v in value.items()]
            elif p.kind is p.KEYWORD_ONLY:
                keyword.append([p.name, _canon(value, repr(p.name))])
            else:
                positional.append(_canon(value, repr(p.name)))
        keyword.sort()
        return [positional, keyword]

    # -- store operations (synchronous; the async wrapper runs them off the event loop, or in the
    # -- greenlet bridge for an async store) ---------------------------------------------------
    def lookup(self, key: str) -> tuple[bool, Any]:
        try:
            data = self.results.get(key)
        except KeyError:
            return False, None
        try:
            return True, self.serializer.loads(data)
        except Exception:
            # Written by another serializer or an older version of the function: a cache
            # must recover by recomputing, not fail every call until someone clears it.
            return False, None

    def encode_result(self, result: Any) -> bytes:
        try:
            data: bytes = self.serializer.dumps(result)
        except TypeError as exc:
            hint = ""
            if self.serializer is JSON and isinstance(result, bytes | bytearray | memoryview):
                # "json" was asked for by name, so it stays JSON-only (its entries stay JSON
                # text for other readers); say what does store bytes.
                hint = "; serializer='json' stores JSON only: the default, 'auto', stores bytes"
            raise TypeError(
                f"cached {self.name}() returned a value it cannot store: {exc}{hint}"
            ) from exc
        return data

    def save(self, key: str, result: Any) -> Any:
        """Store ``result`` and return it as a hit would (decoded from the stored bytes)."""
        data = self.encode_result(result)
        ttl = self.ttl_secs if self.ttl_secs is not None else self.parent.default_ttl_secs
        self.results.put(key, data, ttl)
        # A miss returns what later hits will return (with JSON, a tuple comes back as a list
        # either way; with "auto", a bytearray as bytes), rather than the original object the
        # first caller alone would see.
        return self.serializer.loads(data)

    def try_lock(self, key: str) -> bytes | None:
        """Our lock token, or ``None`` when another caller holds the lock."""
        if not self.autocommit():
            # Inside a transaction the lock would stay invisible to other connections until
            # commit, and waiting would be worse than useless on SQLite: this transaction holds
            # the write lock the computing caller needs to store its result.
            return _NO_LOCK
        if key in self.locks:  # a read first: polling must not queue on SQLite's write lock
            return None
        token = secrets.token_hex(16).encode("ascii")
        try:
            self.locks.put(key, token, self.lock_timeout, expected_version=0)
        except ConflictError:
            return None
        return token

    def unlock(self, key: str, token: bytes) -> None:
        if token == _NO_LOCK:
            return
        delete_if_checksum(self.locks.scope, key, hashlib.sha256(token).hexdigest())

    def invalidate(self, key: str) -> None:
        self.results.delete(key)

    def clear(self) -> None:
        # One statement for the whole namespace, not a delete per key. Locks stay: removing
        # the lock of a computation in flight would let a second caller start the same work.
        clear_namespace(self.results.scope)

    def autocommit(self) -> bool:
        """Whether each store call commits on its own: not inside a transaction (of this
        thread, or of a Connection or Session the store was given)."""
        return not self.results.scope.in_transaction


def _check_source(source: object, what: str) -> StoreSource:
    """``source`` if ``cached``/``bind`` can keep results through it: a Store, or a callable
    that can be called with no arguments (a store factory). Anything else is a TypeError."""
    if isinstance(source, Store | AsyncStore):
        return source
    if isinstance(source, KeyValueStore) or not callable(source):
        # a store decorator is a KeyValueStore but has no namespaces to derive the cache's
        raise TypeError(
            f"{what} keeps results in a kvstore.Store (from kvstore.connect) or AsyncStore "
            "(from kvstore.connect_async), or takes a function of no arguments returning one, "
            f"not {type(source).__name__}"
        )
    try:
        inspect.signature(source).bind()
    except ValueError:  # no signature to read (some builtins): trust it, checked at first use
        pass
    except TypeError:
        # from cached(), most likely @kvstore.cached without parentheses
        hint = (
            ": to cache it, use @kvstore.cached(store), with parentheses"
            if what == "cached()"
            else ""
        )
        raise TypeError(
            f"{what} takes the store, or a function of no arguments returning it, but "
            f"{getattr(source, '__qualname__', type(source).__name__)} takes arguments{hint}"
        ) from None
    return cast(StoreSource, source)


def _describe(obj: object) -> str:
    return "None" if obj is None else f"{type(obj).__name__} {reprlib.repr(obj)}"


class _Binding:
    """The store a cached function (and every method bound from it) keeps its results in, as
    the :class:`_Core` over it: built at once from a Store, or at first use from a store
    factory, which is then called once (under a lock, so concurrent first calls wait for it)
    and its store kept until :meth:`bind` replaces it."""

    def __init__(
        self,
        func: Callable[..., Any],
        name: str,
        make: Callable[[Store | AsyncStore], _Core],
        source: Any,
        is_async: bool,
    ) -> None:
        self.func = func
        self.name = name
        self.is_async = is_async
        self._make = make
        # reentrant, so that a factory that calls its own cached function gets an error
        # rather than a deadlock
        self._lock = threading.RLock()
        self._resolving = False
        self._core: _Core | None = None
        self._factory: Callable[[], Any] | None = None
        self._set(source)

    def _set(self, source: StoreSource) -> None:
        if isinstance(source, Store | AsyncStore):
            self._core, self._factory = self._make(self._usable(source)), None
        else:
            self._core, self._factory = None, source

    def _usable(self, store: Store | AsyncStore) -> Store | AsyncStore:
        if isinstance(store, AsyncStore) and not self.is_async:
            # a sync function cannot await the store's calls, and running them on the event
            # loop's thread outside the greenlet bridge fails in the driver
            raise TypeError(
                f"cached {self.name}() is a plain function: an AsyncStore caches async def "
                "functions; keep a plain function's results in a kvstore.Store (kvstore.connect)"
            )
        return store

    def bind(self, source: StoreSource) -> None:
        with self._lock:
            self._set(source)

    @property
    def current(self) -> _Core | None:
        """The core if the store is known, without calling a factory."""
        return self._core

    def core(self) -> _Core:
        core = self._core
        if core is not None:
            return core
        with self._lock:
            if self._core is None:
                if self._resolving:
                    raise RuntimeError(
                        f"the store factory of cached {self.name}() uses {self.name} itself, "
                        "before it has returned a store"
                    )
                factory = self._factory
                assert factory is not None
                self._resolving = True
                try:
                    store = factory()
                finally:
                    self._resolving = False
                if not isinstance(store, Store | AsyncStore):
                    raise TypeError(
                        f"the store factory of cached {self.name}() returned {_describe(store)}: "
                        "cached() keeps results in a kvstore.Store (from kvstore.connect)"
                        + (" or AsyncStore (from kvstore.connect_async)" if self.is_async else "")
                    )
                self._core = self._make(self._usable(store))
            return self._core


_UNBOUND: Any = object()


class _CachedBase(Generic[P, R]):
    # set by functools.update_wrapper; declared for type checkers
    __wrapped__: Callable[..., Any]
    __name__: str
    __qualname__: str

    def __init__(self, binding: _Binding, instance: Any = _UNBOUND) -> None:
        self._binding = binding
        self._instance = instance
        functools.update_wrapper(cast(Any, self), binding.func)

    def _args(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return args if self._instance is _UNBOUND else (self._instance, *args)

    @property
    def _core(self) -> _Core:
        # the core over the current store, resolving a factory (tests/_sql.py reads the
        # cache's name and lock store through it)
        return self._binding.core()

    def bind(self, store: StoreSource) -> None:
        """Keep this function's results in ``store`` from now on: a Store, or a function of no
        arguments returning one (called at the next use, once). Calls already running finish
        on the store they started with. The results in the previous store stay there.

        Methods bound from the function share it, so ``obj.method.bind(s)`` rebinds the
        method for every instance."""
        self._binding.bind(_check_source(store, "bind()"))

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The key under which the result of this call is (or would be) stored."""
        return self._binding.core().key(self._args(args), kwargs)

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> Any: ...
    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # A method: bind the instance, so obj.method.refresh(x) works as obj.method(x) does
        # (attributes of a plain function wrapper would be reached unbound).
        if instance is None or self._instance is not _UNBOUND:
            return self
        return type(self)(self._binding, instance)

    def __repr__(self) -> str:
        # never calls a store factory: showing the function must not open a database
        bound = "" if self._instance is _UNBOUND else f" bound to {self._instance!r}"
        core = self._binding.current
        where = "(store not resolved yet)" if core is None else repr(core.results.namespace_name)
        return f"<kvstore.cached {self._binding.name}{bound} in {where}>"


class CachedFunction(_CachedBase[P, R]):
    """A function whose results are kept in a store (returned by :func:`cached`)."""

    @property
    def store(self) -> Store:
        """The store holding this function's results, keyed by :meth:`cache_key`: a private
        namespace derived from the store given to ``cached`` (``<namespace>/c/<name>``)."""
        return self._binding.core().results

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Forget the result of this call (no error when none is stored)."""
        core = self._binding.core()
        core.invalidate(core.key(self._args(args), kwargs))

    def cache_clear(self) -> None:
        """Forget every result of this function, and nothing else."""
        self._binding.core().clear()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        core = self._binding.core()
        full = self._args(args)
        key = core.key(full, kwargs)
        found, value = core.lookup(key)
        if found:
            return value  # type: ignore[no-any-return]
        waits = 0
        while (token := core.try_lock(key)) is None:
            time.sleep(LOCK_POLL.delay(waits))
            waits += 1
            found, value = core.lookup(key)
            if found:
                return value  # type: ignore[no-any-return]
        try:
            # The winner of the lock may still find a result: stored between our miss and our
            # lock by a caller that has just released its own.
            found, value = core.lookup(key)
            if found:
                return value  # type: ignore[no-any-return]
            return core.save(key, core.func(*full, **kwargs))  # type: ignore[no-any-return]
        finally:
            core.unlock(key, token)

    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function now, store its result (replacing any) and return it."""
        core = self._binding.core()
        full = self._args(args)
        key = core.key(full, kwargs)
        return core.save(key, core.func(*full, **kwargs))  # type: ignore[no-any-return]


class AsyncCachedFunction(_CachedBase[P, R]):
    """An ``async def`` function whose results are kept in a store (see :func:`cached`).

    Calling it (and :meth:`refresh`) returns a coroutine. On an :class:`kvstore.AsyncStore`, the
    store calls run in SQLAlchemy's greenlet bridge, as the async store's own methods do. On a
    sync :class:`kvstore.Store` they run in a worker thread (``asyncio.to_thread``) so the
    event loop keeps serving other tasks, except inside a transaction or on a store bound to
    the caller's Connection or Session, where they must stay on the calling thread. Waiting
    for another caller's computation uses ``asyncio.sleep``.

    :meth:`invalidate` and :meth:`cache_clear` return an awaitable: on an async store the work
    happens when it is awaited; on a sync store it is done before they return (so a plain call
    works, as it always has, and awaiting the result does nothing more).
    """

    def __init__(self, binding: _Binding, instance: Any = _UNBOUND) -> None:
        super().__init__(binding, instance)
        mark = getattr(inspect, "markcoroutinefunction", None)  # Python 3.12+
        if mark is not None:
            mark(self)
        else:  # Python 3.11: asyncio.iscoroutinefunction() honours this marker (so does AsyncMock)
            self._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)

    async def _run(self, core: _Core, fn: Callable[..., Any], *args: Any) -> Any:
        if core.aio is not None:
            # In this task, so that a call inside the task's `async with store.transaction()`
            # joins it (as the async store's own calls do); the driver's waits go back to the
            # event loop.
            return await spawn(fn, *args)
        # A worker thread would escape this thread's open transaction, or share the caller's
        # Connection or Session unsafely: then the (short) store call runs here.
        if core.autocommit():
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        # A store factory runs here, in the event loop's thread, at the first call: it should
        # return a store that exists rather than connect to a database.
        core = self._binding.core()
        full = self._args(args)
        key = core.key(full, kwargs)
        found, value = await self._run(core, core.lookup, key)
        if found:
            return value  # type: ignore[no-any-return]
        waits = 0
        while (token := await self._run(core, core.try_lock, key)) is None:
            await asyncio.sleep(LOCK_POLL.delay(waits))
            waits += 1
            found, value = await self._run(core, core.lookup, key)
            if found:
                return value  # type: ignore[no-any-return]
        try:
            found, value = await self._run(core, core.lookup, key)
            if found:
                return value  # type: ignore[no-any-return]
            result = await core.func(*full, **kwargs)
            return await self._run(core, core.save, key, result)  # type: ignore[no-any-return]
        finally:
            # Even when the task is cancelled here, the worker thread finishes the delete.
            await self._run(core, core.unlock, key, token)

    async def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await the function now, store its result (replacing any) and return it."""
        core = self._binding.core()
        full = self._args(args)
        key = core.key(full, kwargs)
        result = await core.func(*full, **kwargs)
        return await self._run(core, core.save, key, result)  # type: ignore[no-any-return]

    @property
    def store(self) -> Store | AsyncStore:
        """The store holding this function's results, keyed by :meth:`cache_key` (a private
        namespace, ``<namespace>/c/<name>``): an AsyncStore when ``cached`` was given one."""
        core = self._binding.core()
        return core.results if core.aio is None else AsyncStore(core.results)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[None]:
        """Forget the result of this call (no error when none is stored); await it on an
        async store."""
        core = self._binding.core()
        return self._now_or_awaited(core, core.invalidate, core.key(self._args(args), kwargs))

    def cache_clear(self) -> Awaitable[None]:
        """Forget every result of this function, and nothing else; await it on an async
        store."""
        core = self._binding.core()
        return self._now_or_awaited(core, core.clear)

    def _now_or_awaited(self, core: _Core, fn: Callable[..., None], *args: Any) -> Awaitable[None]:
        if core.aio is not None:
            return spawn(fn, *args)
        # A sync store: done now, as these calls always were (plain calls, not awaited).
        fn(*args)
        return _DONE


class _Done:
    """An awaitable with nothing left to do."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator: awaiting it finishes at once


_DONE = _Done()


_NO_FUNC: Any = object()


class _Decorator:
    def __init__(
        self,
        store: StoreSource,
        ttl_secs: TTL,
        key: Any,
        serializer: Any,
        name: str | None,
        lock_timeout: float,
    ) -> None:
        self._store = store
        self._ttl_secs = ttl_secs
        self._key = key
        self._serializer = serializer
        self._name = name
        self._lock_timeout = lock_timeout

    @overload
    def __call__(self, func: Callable[P, Coroutine[Any, Any, R]]) -> AsyncCachedFunction[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, func: Callable[P, R]) -> CachedFunction[P, R]: ...
    def __call__(self, func: Callable[..., Any] = _NO_FUNC) -> Any:
        if func is _NO_FUNC:
            # what @kvstore.cached without parentheses above a function of no arguments gives:
            # the function was taken for a store factory, and this decorator is what is left
            raise TypeError(
                "this is a decorator made by kvstore.cached(), called without a function: if "
                "it decorated a function without parentheses (@kvstore.cached), write "
                "@kvstore.cached(store)"
            )
        if isinstance(func, staticmethod | classmethod):
            raise TypeError(f"put @{type(func).__name__} above @kvstore.cached(...), not below it")
        if not callable(func):
            raise TypeError(f"cached() decorates a function, not {type(func).__name__}")
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                "cached() cannot store a generator; cache a function that returns a list instead"
            )
        name = self._name if self._name is not None else _default_name(func)

        def make(store: Store | AsyncStore) -> _Core:  # the options are fixed: read them later
            return _Core(
                func, store, self._ttl_secs, self._key, self._serializer, name, self._lock_timeout
            )

        # an object whose __call__ is async def is an async function too
        is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
            type(func).__call__
        )
        binding = _Binding(func, name, make, self._store, is_async)
        return AsyncCachedFunction(binding) if is_async else CachedFunction(binding)


def cached(
    store: StoreSource,
    ttl_secs: TTL = None,
    *,
    key: Callable[..., str] | None = None,
    serializer: Any = "auto",
    name: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> _Decorator:
    """Keep the results of the decorated function in ``store``.

    ``store`` is a :class:`kvstore.Store` (or, for an ``async def`` function, a
    :class:`kvstore.AsyncStore`), or a function of no arguments that returns one (a store
    factory): it is called at the decorated function's first use (a call, or any of its
    helpers), once, with concurrent first callers waiting for it, and the store it returns is
    kept; a factory that raises is called again at the next use, one that returns anything
    but a Store raises ``TypeError`` there. ``f.bind(store)`` replaces either later.

    ``ttl_secs`` is how long a result stays (``None``: the store's ``default_ttl_secs``,
    forever unless set). ``key`` derives the key of a call from its arguments when the
    default derivation cannot encode them (it gets the same arguments, ``self`` included for a
    method, and returns a str). ``serializer`` encodes results: ``"auto"`` (the default:
    ``bytes`` stored raw, anything else as JSON), ``"json"`` (JSON only: every entry is JSON
    text), ``"pickle"``, ``"marshal"``, ``"raw"``, or an object with ``dumps``/``loads``,
    which gets every result unchanged. ``name`` identifies the function's cache (default
    ``"<module>.<qualname>"``): functions with one name share entries. ``lock_timeout`` is how long (seconds) one computation may keep concurrent callers
    of the same arguments waiting before one of them computes too.

    Every argument is checked here, before anything is decorated.
    """
    store = _check_source(store, "cached()")
    ttl_to_seconds(ttl_secs, NOT_SET)  # ValueError for a bad TTL, now rather than at the first miss
    if key is not None and not callable(key):
        raise TypeError(f"key= must be a function returning str, not {type(key).__name__}")
    return _Decorator(
        store,
        ttl_secs,
        key,
        _result_serializer(serializer),
        None if name is None else _check_name(name),
        _check_lock_timeout(lock_timeout),
    )
