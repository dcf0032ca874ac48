"""A test-only sync face for an AsyncStore, so the shared key-value contract runs through the
async API (conftest's ``aiosqlite``, ``asyncpg`` and ``psycopg-async`` backends).

``SyncOverAsync`` presents the sync ``Store`` surface and runs every call as the AsyncStore's
coroutine on a private event loop thread. Each calling thread gets one long-lived task on that
loop which runs all of its calls, one at a time, so what is per thread for a sync store is per
task for the async one, as the async API means it: the calls a thread makes inside
``with store.transaction()`` join it. A sync callback that the async store awaits
(``run_in_transaction(fn)``) is run back in the calling thread, while that thread's task keeps
serving the callback's own calls.

Methods the async API does not have (``iter_prefixes``, ``decr``, ...) run the async store's
``sync`` store in the greenlet bridge: the sync code over the asyncio driver, as the AsyncStore's
own methods do.

``store.dict()``, ``list()`` and ``set()`` give the same kind of face over the async
collections (``_DictFace``, ``_ListFace``, ``_SetFace``): each operation awaits the async
collection's coroutine (``d[k] = v`` is ``await d.set(k, v)``, ``len(s)`` ``await s.len()``,
iteration ``async for``, ``a | b`` on sets ``await a.union(b)``). Only what the async
collections have no coroutine for (``repr``, ``reversed``, a list's ``*``, a set's reflected
``-``, attributes such as ``batch_size``) runs the sync collection (``.sync``) in the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import inspect
import io
import queue
import sys
import threading
import types
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    MutableSequence,
    MutableSet,
    ValuesView,
)
from collections.abc import Set as AbstractSet
from typing import Any

from sqlalchemy.util import await_only, greenlet_spawn

import kvstore
from kvstore.base import KeyValueStore


class Loop:
    """An event loop in a daemon thread, and one serving task per calling thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._local = threading.local()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cancel_workers(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _cancel_workers(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _worker(self) -> _Worker:
        worker = getattr(self._local, "worker", None)
        if worker is None:
            worker = self._local.worker = _Worker(self.loop)
        return worker

    def call(self, make: Callable[[], Any]) -> Any:
        """``await make()`` in this thread's task, and its result (or exception) here. Called
        from the loop's own thread, it is sync code in the async store's greenlet bridge (a
        reader of this adapter handed to the store's put_file, say): awaited right there."""
        if threading.current_thread() is self._thread:
            return await_only(make())
        return self._worker().call(make)

    async def callback(self, fn: Callable[..., Any], *args: Any) -> Any:
        """From inside a calling thread's task: run ``fn(*args)`` in that thread (which is
        waiting for the task), serving the calls it makes meanwhile; its result."""
        return await _CURRENT.get().callback(fn, *args)


#: the worker whose task is running (set inside each worker's task)
_CURRENT: contextvars.ContextVar[_Worker] = contextvars.ContextVar("_CURRENT")


class _Worker:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.replies: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
        self.requests: asyncio.Queue[Any] = asyncio.run_coroutine_threadsafe(
            self._make_queue(), loop
        ).result()
        asyncio.run_coroutine_threadsafe(self._main(), loop)

    async def _main(self) -> None:
        _CURRENT.set(self)
        await self._serve(None)

    async def _make_queue(self) -> asyncio.Queue[Any]:
        return asyncio.Queue()

    async def _serve(self, until: object) -> Any:
        while True:
            kind, payload, token = await self.requests.get()
            if kind == "done":
                assert token is until, "callbacks finish in order"
                outcome, value = payload
                if outcome == "error":
                    raise value
                return value
            try:
                result = await payload()
            except BaseException as exc:  # handed to the calling thread
                # without this frame: unittest's assertRaises clears the frames of the
                # traceback it catches, and clearing this suspended one would close the task
                if exc.__traceback__ is not None and exc.__traceback__.tb_frame is sys._getframe():
                    exc.__traceback__ = exc.__traceback__.tb_next
                self.replies.put(("error", exc, None))
            else:
                self.replies.put(("result", result, None))

    def _wait(self) -> Any:
        while True:
            kind, value, extra = self.replies.get()
            if kind == "result":
                return value
            if kind == "error":
                raise value
            fn, args, token = value, extra[0], extra[1]  # "callback"
            try:
                out: tuple[str, Any] = ("ok", fn(*args))
            except BaseException as exc:
                out = ("error", exc)
            self.loop.call_soon_threadsafe(self.requests.put_nowait, ("done", out, token))

    def call(self, make: Callable[[], Any]) -> Any:
        self.loop.call_soon_threadsafe(self.requests.put_nowait, ("call", make, None))
        return self._wait()

    async def callback(self, fn: Callable[..., Any], *args: Any) -> Any:
        token = object()
        self.replies.put(("callback", fn, (args, token)))
        return await self._serve(token)


def _run_whole(fn: Callable[..., Any], args: Any, kw: Any) -> Any:
    """``fn(*args, **kw)``, a generator's items as a list: they are read in the bridge."""
    out = fn(*args, **kw)
    return iter(list(out)) if isinstance(out, types.GeneratorType) else out


async def _all(ait: Any) -> list[Any]:
    return [x async for x in ait]


def _wrap(value: Any, loop: Loop) -> Any:
    if isinstance(value, kvstore.AsyncStore):  # AsyncTransaction too
        return SyncOverAsync(value, loop)
    if isinstance(value, kvstore.AsyncReader):
        return _Reader(value, loop)
    if isinstance(value, kvstore.AsyncPersistentDict):
        return _DictFace(value, loop)
    if isinstance(value, kvstore.AsyncPersistentList):
        return _ListFace(value, loop)
    if isinstance(value, kvstore.AsyncPersistentSet):
        return _SetFace(value, loop)
    return value


class SyncOverAsync(KeyValueStore):
    """The sync Store surface over an AsyncStore (see the module docstring)."""

    def __init__(self, aio: kvstore.AsyncStore, loop: Loop, *, owns_loop: bool = False) -> None:
        self.aio = aio
        self._loop = loop
        self._owns_loop = owns_loop

    @classmethod
    def connect(cls, url: str, **kw: Any) -> SyncOverAsync:
        loop = Loop()
        try:
            aio = asyncio.run_coroutine_threadsafe(
                kvstore.connect_async(url, **kw), loop.loop
            ).result()
        except BaseException:
            loop.close()
            raise
        return cls(aio, loop, owns_loop=True)

    def _call(self, make: Callable[[], Any]) -> Any:
        return _wrap(self._loop.call(make), self._loop)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self.aio, name, None)
        if attr is None:
            # not in the async API: the sync store's method, in the greenlet bridge
            sync_attr = getattr(self.aio.sync, name)
            if not callable(sync_attr):
                return sync_attr
            return lambda *a, **k: self._call(lambda: greenlet_spawn(_run_whole, sync_attr, a, k))
        if inspect.isasyncgenfunction(attr):  # iter_stat, iter_items, ...: read whole, as above
            return lambda *a, **k: iter(self._call(lambda: _all(attr(*a, **k))))
        if not callable(attr) or not asyncio.iscoroutinefunction(attr):
            return (
                attr if not callable(attr) else (lambda *a, **k: _wrap(attr(*a, **k), self._loop))
            )
        return lambda *a, **k: self._call(lambda: attr(*a, **k))

    # the properties a Store has (and __getattr__ would not see as settable)
    @property
    def default_ttl_secs(self) -> Any:
        return self.aio.default_ttl_secs

    @default_ttl_secs.setter
    def default_ttl_secs(self, value: Any) -> None:
        self.aio.default_ttl_secs = value

    @property
    def namespace_name(self) -> str:
        return self.aio.namespace_name

    @property
    def dialect_name(self) -> str:
        return self.aio.dialect_name

    def namespace(self, name: str) -> SyncOverAsync:
        return SyncOverAsync(self.aio.namespace(name), self._loop)

    # -- KeyValueStore's abstract surface ---------------------------------------------------------
    def get(self, key: str) -> bytes:
        return self._call(lambda: self.aio.get(key))  # type: ignore[no-any-return]

    def put(self, key: str, data: bytes, ttl_secs: Any = None, **kw: Any) -> str:
        return self._call(lambda: self.aio.put(key, data, ttl_secs, **kw))  # type: ignore[no-any-return]

    def delete(self, key: str, *, expected_version: int | None = None) -> None:
        self._call(lambda: self.aio.delete(key, expected_version=expected_version))

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        async def collect() -> list[str]:
            return [k async for k in self.aio.iter_keys(prefix)]

        return iter(self._call(collect))

    def __contains__(self, key: object) -> bool:
        return self._call(lambda: self.aio.contains(key))  # type: ignore[arg-type, no-any-return]

    def __len__(self) -> int:
        return self._call(self.aio.len)  # type: ignore[no-any-return]

    def open(self, key: str) -> Any:
        return self._call(lambda: self.aio.open(key))

    def put_file(self, key: str, file: Any, ttl_secs: Any = None, **kw: Any) -> str:
        return self._call(lambda: self.aio.put_file(key, file, ttl_secs, **kw))  # type: ignore[no-any-return]

    def stat(self, key: str) -> Any:
        return self._call(lambda: self.aio.stat(key))

    def keys(self, prefix: str = "") -> list[str]:
        return self._call(lambda: self.aio.keys(prefix))  # type: ignore[no-any-return]

    def get_file(self, key: str, file: Any) -> str:
        return self._call(lambda: self.aio.get_file(key, file))  # type: ignore[no-any-return]

    # -- transactions ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, isolation: str | None = None) -> Iterator[SyncOverAsync]:
        cm = self.aio.transaction(isolation)
        tx = self._call(cm.__aenter__)
        try:
            yield tx
        except BaseException as exc:
            err = exc  # the name `exc` is unbound after the handler; the lambda runs first
            if not self._loop.call(lambda: cm.__aexit__(type(err), err, err.__traceback__)):
                raise
        else:
            self._loop.call(lambda: cm.__aexit__(None, None, None))

    def run_in_transaction(self, fn: Callable[[Any], Any], *args: Any, **kw: Any) -> Any:
        loop = self._loop

        async def afn(atx: kvstore.AsyncTransaction) -> Any:
            return await loop.callback(fn, SyncOverAsync(atx, loop))

        return self._call(lambda: self.aio.run_in_transaction(afn, *args, **kw))

    def close(self) -> None:
        try:
            self._loop.call(self.aio.close)
        finally:
            if self._owns_loop:
                self._loop.close()

    def __enter__(self) -> SyncOverAsync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SyncOverAsync {self.aio!r}>"


def _forwarder(name: str) -> Any:
    def forward(self: SyncOverAsync, *args: Any, **kw: Any) -> Any:
        return self.__getattr__(name)(*args, **kw)

    forward.__name__ = name
    return forward


# KeyValueStore's own methods (incr, copy, get_many, ... with their generic or "not supported"
# bodies) would hide the async store's from __getattr__: forward each to it.
for _name in dir(KeyValueStore):
    public = not _name.startswith("_") and _name not in SyncOverAsync.__dict__
    if public and callable(getattr(KeyValueStore, _name)):
        setattr(SyncOverAsync, _name, _forwarder(_name))


class _Reader(io.RawIOBase):
    """The sync reader over an AsyncReader."""

    def __init__(self, aio: kvstore.AsyncReader, loop: Loop) -> None:
        self._aio = aio
        self._loop = loop

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._loop.call(lambda: self._aio.read(size))  # type: ignore[no-any-return]

    def readinto(self, buffer: Any) -> int:
        # the async reader has read() alone: readinto (and readline, iteration) on top of it
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._loop.call(lambda: self._aio.seek(offset, whence))  # type: ignore[no-any-return]

    def tell(self) -> int:
        return self._loop.call(self._aio.tell)  # type: ignore[no-any-return]

    def close(self) -> None:
        if not self.closed:
            self._loop.call(self._aio.close)
        super().close()


# -- the collections ---------------------------------------------------------------------------
def white_box(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn(obj)`` for a sync store or collection; for a face (a SyncOverAsync, or a collection
    face), ``fn`` of the sync object under the async one, run in the greenlet bridge on the
    face's loop: tests/_sql.py's reads of kvstore's tables, on the async driver's connection."""
    if isinstance(obj, SyncOverAsync | _Face):
        sync = obj.aio.sync
        return obj._loop.call(lambda: greenlet_spawn(fn, sync))
    return fn(obj)


def _plain(value: Any) -> Any:
    """A face handed to another collection's method as the plain snapshot an async caller
    would pass (``await other.to_set()``): the async methods take plain iterables."""
    return value.copy() if isinstance(value, _Face) else value


class _Face:
    """What the three faces share: awaiting the async collection's coroutines, and the sync
    collection in the bridge for what they lack."""

    aio: Any
    _loop: Loop

    def __init__(self, aio: Any, loop: Loop) -> None:
        object.__setattr__(self, "aio", aio)
        object.__setattr__(self, "_loop", loop)

    def _await(self, name: str, *args: Any, **kw: Any) -> Any:
        """``await aio.<name>(*args, **kw)``: the async API's method, which must exist."""
        method = getattr(self.aio, name)
        assert asyncio.iscoroutinefunction(method), name
        args = tuple(_plain(a) for a in args)
        return _wrap(self._loop.call(lambda: method(*args, **kw)), self._loop)

    def _iterate(self) -> Iterator[Any]:
        """``async for``, one item per call: as lazy as the sync iterator (a test may write
        between two ``next()``), the async iterator reading a batch when it needs one."""
        ait = aiter(self.aio)
        while True:
            try:
                item = self._loop.call(lambda: anext(ait))
            except StopAsyncIteration:
                return
            yield item

    def _bridged(self, name: str, *args: Any, **kw: Any) -> Any:
        """The sync collection's ``name`` in the greenlet bridge, for what the async API has no
        coroutine for."""
        fn = getattr(self.aio.sync, name)
        args = tuple(_plain(a) for a in args)
        return self._loop.call(lambda: greenlet_spawn(_run_whole, fn, args, kw))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self.aio, name, None)
        if attr is not None:
            if asyncio.iscoroutinefunction(attr):
                return lambda *a, **k: self._await(name, *a, **k)
            if not callable(attr):  # name
                return attr
        sync_attr = getattr(self.aio.sync, name)  # store, serializer, key_serializer, ...
        if not callable(sync_attr):
            return sync_attr
        return lambda *a, **k: self._bridged(name, *a, **k)

    def __setattr__(self, name: str, value: Any) -> None:
        # batch_size: the async iteration drives the sync collection's iterator, which reads it
        setattr(self.aio.sync, name, value)

    def __repr__(self) -> str:
        return self._bridged("__repr__")  # type: ignore[no-any-return]

    def __reduce__(self) -> Any:
        return self._bridged("__reduce__")

    def __copy__(self) -> Any:
        return self.copy()  # type: ignore[attr-defined]

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return copy.deepcopy(self.copy(), memo)  # type: ignore[attr-defined]

    def copy(self) -> Any:
        raise NotImplementedError


class _DictFace(_Face, MutableMapping[Any, Any]):
    """The sync PersistentDict surface over an AsyncPersistentDict."""

    __hash__ = None  # type: ignore[assignment]

    def __getitem__(self, key: Any) -> Any:
        return self._await("getitem", key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._await("set", key, value)

    def __delitem__(self, key: Any) -> None:
        self._await("delete", key)

    def __len__(self) -> int:
        return self._await("len")  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def __contains__(self, key: object) -> bool:
        return self._await("contains", key)  # type: ignore[no-any-return]

    def __reversed__(self) -> Iterator[Any]:
        return iter(self._bridged("__reversed__"))

    def get(self, key: Any, default: Any = None) -> Any:
        return self._await("get", key, default)

    def pop(self, key: Any, *default: Any) -> Any:
        return self._await("pop", key, *default)

    def popitem(self) -> tuple[Any, Any]:
        return self._await("popitem")  # type: ignore[no-any-return]

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return self._await("setdefault", key, default)

    def update(self, *args: Any, **kw: Any) -> None:
        self._await("update", *args, **kw)

    def clear(self) -> None:
        self._await("clear")

    def keys(self) -> KeysView[Any]:
        return _Keys(self)

    def values(self) -> ValuesView[Any]:
        return _Values(self)

    def items(self) -> ItemsView[Any, Any]:
        return _Items(self)

    def copy(self) -> dict[Any, Any]:
        return self._await("to_dict")  # type: ignore[no-any-return]

    # the sync dict's comparisons and operators, on the async API's snapshot
    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.copy() == dict(other.items())

    def __or__(self, other: Any) -> Any:
        if not isinstance(other, Mapping):
            return NotImplemented
        out = self.copy()
        out.update(other.items())
        return out

    def __ror__(self, other: Any) -> Any:
        if not isinstance(other, Mapping):
            return NotImplemented
        out = dict(other.items())
        out.update(self.copy())
        return out

    def __ior__(self, other: Any) -> _DictFace:
        self.update(other)
        return self


class _Keys(KeysView[Any]):
    _mapping: _DictFace

    def __iter__(self) -> Iterator[Any]:
        return iter(self._mapping._await("keys"))

    def __reversed__(self) -> Iterator[Any]:
        return reversed(list(self))


class _Values(ValuesView[Any]):
    _mapping: _DictFace

    def __iter__(self) -> Iterator[Any]:
        return iter(self._mapping._await("values"))

    def __reversed__(self) -> Iterator[Any]:
        return reversed(list(self))


class _Items(ItemsView[Any, Any]):
    _mapping: _DictFace

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return iter(self._mapping._await("items"))

    def __reversed__(self) -> Iterator[tuple[Any, Any]]:
        return reversed(list(self))


class _ListFace(_Face, MutableSequence[Any]):
    """The sync PersistentList surface over an AsyncPersistentList."""

    __hash__ = None  # type: ignore[assignment]

    def __getitem__(self, index: Any) -> Any:
        return self._await("getitem", index)

    def __setitem__(self, index: Any, value: Any) -> None:
        self._await("setitem", index, value)

    def __delitem__(self, index: Any) -> None:
        self._await("delitem", index)

    def __len__(self) -> int:
        return self._await("len")  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def __contains__(self, value: object) -> bool:
        return self._await("contains", value)  # type: ignore[no-any-return]

    def __reversed__(self) -> Iterator[Any]:
        return iter(self._bridged("__reversed__"))

    def insert(self, index: Any, value: Any) -> None:
        self._await("insert", index, value)

    def append(self, value: Any) -> None:
        self._await("append", value)

    def extend(self, values: Iterable[Any]) -> None:
        self._await("extend", values)

    def pop(self, index: Any = -1) -> Any:
        return self._await("pop", index)

    def remove(self, value: Any) -> None:
        self._await("remove", value)

    def clear(self) -> None:
        self._await("clear")

    def index(self, value: Any, *bounds: Any) -> int:
        return self._await("index", value, *bounds)  # type: ignore[no-any-return]

    def count(self, value: Any) -> int:
        return self._await("count", value)  # type: ignore[no-any-return]

    def reverse(self) -> None:
        self._await("reverse")

    def sort(self, *args: Any, **kw: Any) -> None:
        self._await("sort", *args, **kw)

    def copy(self) -> list[Any]:
        return self._await("to_list")  # type: ignore[no-any-return]

    def __iadd__(self, values: Iterable[Any]) -> _ListFace:
        self.extend(values)
        return self

    # the sync list's comparisons and concatenation, on the async API's snapshot
    def _other(self, other: object) -> list[Any] | None:
        if isinstance(other, _ListFace):
            return other.copy()
        return other if isinstance(other, list) else None

    def __eq__(self, other: object) -> bool:
        o = self._other(other)
        return NotImplemented if o is None else self.copy() == o

    def __lt__(self, other: object) -> bool:
        o = self._other(other)
        return NotImplemented if o is None else self.copy() < o

    def __le__(self, other: object) -> bool:
        o = self._other(other)
        return NotImplemented if o is None else self.copy() <= o

    def __gt__(self, other: object) -> bool:
        o = self._other(other)
        return NotImplemented if o is None else self.copy() > o

    def __ge__(self, other: object) -> bool:
        o = self._other(other)
        return NotImplemented if o is None else self.copy() >= o

    def __add__(self, other: Any) -> Any:
        o = self._other(other)
        return NotImplemented if o is None else self.copy() + o

    def __radd__(self, other: Any) -> Any:
        return other + self.copy() if isinstance(other, list) else NotImplemented

    # repetition has no coroutine: the sync list's (and its list-like errors)
    def __mul__(self, n: Any) -> Any:
        return self._bridged("__mul__", n)

    def __rmul__(self, n: Any) -> Any:
        return self._bridged("__rmul__", n)

    def __imul__(self, n: Any) -> Any:
        if self._bridged("__imul__", n) is NotImplemented:
            return NotImplemented
        return self


class _SetFace(_Face, MutableSet[Any]):
    """The sync PersistentSet surface over an AsyncPersistentSet."""

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> set[Any]:
        return set(it)

    def __contains__(self, elem: object) -> bool:
        return self._await("contains", elem)  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def __len__(self) -> int:
        return self._await("len")  # type: ignore[no-any-return]

    def add(self, elem: Any) -> None:
        self._await("add", elem)

    def discard(self, elem: Any) -> None:
        self._await("discard", elem)

    def remove(self, elem: Any) -> None:
        self._await("remove", elem)

    def pop(self) -> Any:
        return self._await("pop")

    def clear(self) -> None:
        self._await("clear")

    def copy(self) -> set[Any]:
        return self._await("to_set")  # type: ignore[no-any-return]

    def update(self, *others: Iterable[Any]) -> None:
        self._await("update", *others)

    def intersection_update(self, *others: Iterable[Any]) -> None:
        self._await("intersection_update", *others)

    def difference_update(self, *others: Iterable[Any]) -> None:
        self._await("difference_update", *others)

    def symmetric_difference_update(self, other: Iterable[Any]) -> None:
        self._await("symmetric_difference_update", other)

    def union(self, *others: Iterable[Any]) -> set[Any]:
        return self._await("union", *others)  # type: ignore[no-any-return]

    def intersection(self, *others: Iterable[Any]) -> set[Any]:
        return self._await("intersection", *others)  # type: ignore[no-any-return]

    def difference(self, *others: Iterable[Any]) -> set[Any]:
        return self._await("difference", *others)  # type: ignore[no-any-return]

    def symmetric_difference(self, other: Iterable[Any]) -> set[Any]:
        return self._await("symmetric_difference", other)  # type: ignore[no-any-return]

    def isdisjoint(self, other: Iterable[Any]) -> bool:
        return self._await("isdisjoint", other)  # type: ignore[no-any-return]

    def issubset(self, other: Iterable[Any]) -> bool:
        return self._await("issubset", other)  # type: ignore[no-any-return]

    def issuperset(self, other: Iterable[Any]) -> bool:
        return self._await("issuperset", other)  # type: ignore[no-any-return]

    # The sync set's operators: sets only (NotImplemented otherwise), each one async method.
    # The reflected |, - and ^ keep the left operand's elements where equal ones differ (1 and
    # True): no async method does that, so they are the sync set's, in the bridge.
    def __ior__(self, other: Any) -> Any:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        self.update(other)
        return self

    def __iand__(self, other: Any) -> Any:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        self.intersection_update(other)
        return self

    def __isub__(self, other: Any) -> Any:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        self.difference_update(other)
        return self

    def __ixor__(self, other: Any) -> Any:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        self.symmetric_difference_update(other)
        return self

    def __or__(self, other: Any) -> Any:
        return self.union(other) if isinstance(other, AbstractSet) else NotImplemented

    def __and__(self, other: Any) -> Any:
        return self.intersection(other) if isinstance(other, AbstractSet) else NotImplemented

    __rand__ = __and__

    def __sub__(self, other: Any) -> Any:
        return self.difference(other) if isinstance(other, AbstractSet) else NotImplemented

    def __xor__(self, other: Any) -> Any:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return self.symmetric_difference(other)

    def __ror__(self, other: Any) -> Any:
        return self._bridged("__ror__", other)

    def __rsub__(self, other: Any) -> Any:
        return self._bridged("__rsub__", other)

    def __rxor__(self, other: Any) -> Any:
        return self._bridged("__rxor__", other)

    def __le__(self, other: Any) -> bool:
        return self.issubset(other) if isinstance(other, AbstractSet) else NotImplemented

    def __lt__(self, other: Any) -> bool:
        if not isinstance(other, AbstractSet):
            return NotImplemented
        return len(self) < len(other) and self.issubset(other)

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
