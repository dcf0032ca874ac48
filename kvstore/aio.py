"""The async API: :func:`connect_async` and :class:`AsyncStore`, an adapter over the sync store.

There is one implementation of kvstore's rules, the sync one (``kvstore.store`` and the layers
below it). An async store runs each call of it through SQLAlchemy's greenlet bridge
(``sqlalchemy.util.greenlet_spawn``, the mechanism behind ``AsyncConnection.run_sync``; here
``kvstore._bridge.spawn``, the same on reused greenlets): the sync code runs in a greenlet on
the event loop's thread, talks to the database through SQLAlchemy's sync adapter of the
asyncio driver (aiosqlite, asyncpg, psycopg 3's AsyncConnection), and every time the driver
waits for I/O the greenlet switches back to the event loop, which keeps running other tasks. No SQL, retry rule or error mapping is written a
second time here.

What is "per thread" for a sync store (the transaction a ``with store.transaction()`` block
has open, which the store's other calls join) is per asyncio task for an async one
(``kvstore._backend.TaskLocal``), and a retry's backoff sleeps on the event loop
(``kvstore._retry.backoff_sleep``).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import itertools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import IO, Any, BinaryIO, Protocol, TypeAlias, TypeVar, cast

from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    create_async_engine,
)

# await_only is exported by sqlalchemy.util (what SQLAlchemy's sync adapters of the asyncio
# drivers wait with); kvstore._bridge.spawn is its greenlet_spawn, on reused greenlets.
from sqlalchemy.util import await_only

from ._bridge import spawn
from ._dialect import async_engine_url
from ._indexing import IndexInfo
from ._validate import NOT_SET, TTL
from .base import EntryInfo
from .collections import PersistentDict, PersistentSet
from .lists import PersistentList
from .store import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_OPEN_READERS,
    Store,
    Transaction,
    connect_bound,
    make_options,
)

__all__ = [
    "AsyncPersistentDict",
    "AsyncPersistentList",
    "AsyncPersistentSet",
    "AsyncReader",
    "AsyncStore",
    "AsyncTransaction",
    "connect_async",
]

T = TypeVar("T")
_DONE = object()


class AsyncReadable(Protocol):
    """A binary file whose ``read`` is a coroutine (aiofiles, an ``asyncio.StreamReader``)."""

    async def read(self, n: int = -1, /) -> bytes: ...


class AsyncWritable(Protocol):
    """A binary file whose ``write`` is a coroutine (aiofiles, an ``asyncio.StreamWriter``
    wrapper)."""

    async def write(self, data: bytes, /) -> Any: ...


Source: TypeAlias = "str | os.PathLike[str] | IO[bytes] | AsyncReadable"
Destination: TypeAlias = "str | os.PathLike[str] | IO[bytes] | AsyncWritable"

#: keys (or entries) ``iter_keys`` (``iter_stat``, ...) hands over from the sync generator per
#: greenlet switch
_KEY_BATCH = 500
#: entries one greenlet of a large ``put_many`` validates and writes: the Python work between
#: two visits to the event loop (about 5 ms here), where a 100,000-entry call at once would
#: hold the loop for half a second
_PUT_BATCH = 1000


class _AsyncIndexes:
    """The index methods of an async store or dict (docs/indexes.md): each runs its sync
    object's own in the greenlet bridge."""

    _sync: Any

    async def create_index(
        self,
        name: str,
        extractor: Any,
        unique: bool = False,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> IndexInfo:
        return await spawn(self._sync.create_index, name, extractor, unique, progress=progress)

    async def drop_index(self, name: str) -> None:
        await spawn(self._sync.drop_index, name)

    async def rebuild_index(
        self, name: str, *, progress: Callable[[int, int], None] | None = None
    ) -> IndexInfo:
        return await spawn(self._sync.rebuild_index, name, progress=progress)

    async def indexes(self) -> list[IndexInfo]:
        return await spawn(self._sync.indexes)

    async def find(self, index: str, value: Any = NOT_SET, **query: Any) -> list[Any]:
        """The keys whose indexed value matches (a store's keys are str)."""
        return await spawn(self._sync.find, index, value, **query)

    async def find_items(
        self, index: str, value: Any = NOT_SET, **query: Any
    ) -> list[tuple[Any, Any]]:
        return await spawn(self._sync.find_items, index, value, **query)

    async def count(self, index: str, value: Any = NOT_SET, **query: Any) -> int:
        return await spawn(self._sync.count, index, value, **query)


class AsyncStore(_AsyncIndexes):
    """A key-value store with ``async`` methods, over the sync :class:`kvstore.Store` (each
    call runs it in SQLAlchemy's greenlet bridge). Open it with :func:`connect_async`."""

    _sync: Store

    def __init__(self, sync: Store, *, root: bool = False) -> None:
        self._sync = sync
        self._root = root

    @property
    def sync(self) -> Store:
        """The sync store this one runs: usable only inside ``greenlet_spawn`` (or
        ``AsyncConnection.run_sync``), since its connections are the asyncio driver's."""
        return self._sync

    @property
    def namespace_name(self) -> str:
        return self._sync.namespace_name

    @property
    def dialect_name(self) -> str:
        return self._sync.dialect_name

    @property
    def default_ttl_secs(self) -> Any:
        return self._sync.default_ttl_secs

    @default_ttl_secs.setter
    def default_ttl_secs(self, value: Any) -> None:
        self._sync.default_ttl_secs = value

    def namespace(self, name: str) -> AsyncStore:
        """A store on the same tables and connections for another namespace."""
        return AsyncStore(self._sync.namespace(name))

    def __repr__(self) -> str:
        return f"<kvstore.AsyncStore {self._sync!r}>"

    # -- lifecycle -----------------------------------------------------------------------------
    async def close(self) -> None:
        """Release the store's connections (and its engine, if it created it)."""
        if self._root:
            await spawn(self._sync.close)

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reading -------------------------------------------------------------------------------
    async def get(self, key: str) -> bytes:
        """The value of ``key``; ``KeyError`` (``NotFoundError``) when missing or expired."""
        return await spawn(self._sync.get, key)

    async def contains(self, key: str) -> bool:
        return await spawn(self._sync.__contains__, key)

    async def len(self) -> int:
        return await spawn(self._sync.__len__)

    async def stat(self, key: str) -> EntryInfo:
        return await spawn(self._sync.stat, key)

    async def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        return await spawn(self._sync.get_many, keys)  # as given: the sync call refuses a str

    async def keys(self, prefix: str = "") -> list[str]:
        return await spawn(self._sync.keys, prefix)

    async def count_keys(self, prefix: str = "") -> int:
        return await spawn(self._sync.count_keys, prefix)

    async def iter_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Keys starting with ``prefix`` in code-point order, fetched in batches (as the sync
        ``iter_keys``): no connection is held between batches."""
        async for key in _batched(self._sync.iter_keys(prefix)):
            yield key

    async def iter_stat(self, prefix: str = "") -> AsyncIterator[EntryInfo]:
        """:meth:`stat` of every live key starting with ``prefix``, in key order: the sync
        ``iter_stat``'s batches (no connection held between them)."""
        async for info in _batched(self._sync.iter_stat(prefix)):
            yield info

    async def iter_items(self, prefix: str = "") -> AsyncIterator[tuple[str, bytes]]:
        """``(key, value)`` of every live key starting with ``prefix``, in key order."""
        async for item in _batched(self._sync.iter_items(prefix)):
            yield item

    async def iter_entries(self, prefix: str = "") -> AsyncIterator[tuple[EntryInfo, bytes]]:
        """``(stat, value)`` of every live key starting with ``prefix``, in key order, each
        pair read together (the sync ``iter_entries``)."""
        async for entry in _batched(self._sync.iter_entries(prefix)):
            yield entry

    async def open(self, key: str) -> AsyncReader:
        """A readable, seekable reader over the value of ``key`` (the sync ``open()``: a
        large value is streamed chunk by chunk from one snapshot, holding a connection and
        one of ``max_open_readers`` slots until it is closed; use ``async with``)."""
        return AsyncReader(await spawn(self._sync.open, key))

    async def get_file(self, key: str, file: Destination) -> str:
        """Write the value of ``key`` to a path, a binary file object (whose writes happen on
        the loop's thread, as any sync file's) or an async one (``await file.write(b)``)."""
        return await spawn(self._sync.get_file, key, _bridged(file, "write"))

    # -- writing -------------------------------------------------------------------------------
    async def put(
        self,
        key: str,
        data: bytes,
        ttl_secs: TTL = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        expected_version: int | None = None,
    ) -> str:
        return await spawn(
            self._sync.put,
            key,
            data,
            ttl_secs,
            metadata=metadata,
            content_type=content_type,
            expected_version=expected_version,
        )

    async def put_file(
        self,
        key: str,
        file: Source,
        ttl_secs: TTL = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> str:
        """Store a file's contents in chunks: a path, a binary file object, or an async one
        (``await file.read(n)``, e.g. aiofiles), read one chunk at a time."""
        return await spawn(
            self._sync.put_file,
            key,
            _bridged(file, "read"),
            ttl_secs,
            metadata=metadata,
            content_type=content_type,
        )

    async def delete(self, key: str, *, expected_version: int | None = None) -> None:
        await spawn(self._sync.delete, key, expected_version=expected_version)

    async def put_many(
        self,
        items: Mapping[str, bytes] | Iterable[tuple[str, bytes]],
        ttl_secs: TTL = None,
    ) -> list[str]:
        """Write many entries in one transaction: all of them, or none. More than 1,000
        entries are written as the sync ``put_many`` of one batch after another inside that
        transaction (retried as ``run_in_transaction``), so that the event loop runs between
        batches rather than waiting for the Python work of the whole call."""
        # A snapshot of the items, taken at once (another task may change a mapping while this
        # call waits). Of a mapping, its keys and values in two lists rather than a tuple per
        # item: 100,000 new long-lived tuples set off a full garbage collection, which alone
        # holds the event loop for tens of milliseconds.
        if isinstance(items, Mapping):
            if len(items) <= _PUT_BATCH:
                return await spawn(self._sync.put_many, items, ttl_secs)
            keys, values = list(items.keys()), list(items.values())
            total = len(keys)

            def batch(i: int) -> Any:
                j = i + _PUT_BATCH
                return list(zip(keys[i:j], values[i:j], strict=True))

        else:
            pairs: Any = items
            if not isinstance(items, list | tuple | str | bytes):
                with contextlib.suppress(TypeError):  # not iterable: the sync call says so
                    pairs = list(items)
            if not isinstance(pairs, list | tuple) or len(pairs) <= _PUT_BATCH:
                return await spawn(self._sync.put_many, pairs, ttl_secs)
            total = len(pairs)

            def batch(i: int) -> Any:
                return pairs[i : i + _PUT_BATCH]

        async def in_batches(tx: AsyncTransaction) -> list[str]:
            written: list[str] = []
            for i in range(0, total, _PUT_BATCH):
                written += await spawn(tx.sync.put_many, batch(i), ttl_secs)
            return written

        return await self.run_in_transaction(in_batches)

    async def delete_many(self, keys: Iterable[str]) -> None:
        await spawn(self._sync.delete_many, keys)

    async def copy(self, source: str, dest: str) -> str:
        return await spawn(self._sync.copy, source, dest)

    async def move(self, source: str, dest: str) -> str:
        return await spawn(self._sync.move, source, dest)

    async def incr(self, key: str, delta: int = 1, initial: int = 0) -> int:
        return await spawn(self._sync.incr, key, delta, initial)

    async def purge_expired(self) -> int:
        return await spawn(self._sync.purge_expired)

    # -- transactions ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def transaction(self, isolation: str | None = None) -> AsyncIterator[AsyncTransaction]:
        """``async with store.transaction() as tx``: everything written through ``tx`` commits
        when the block ends, or not at all if it raises; nested ones are savepoints. The sync
        transaction's ``with`` block is entered and left in two greenlets on the same thread
        (and task), the only ones that touch its connection besides ``tx``'s calls."""
        cm = self._sync.transaction(isolation)
        tx: Transaction = await spawn(cm.__enter__)
        try:
            yield AsyncTransaction(tx)
        except BaseException as exc:
            if not await spawn(cm.__exit__, type(exc), exc, exc.__traceback__):
                raise
        else:
            await spawn(cm.__exit__, None, None, None)

    async def run_in_transaction(
        self,
        fn: Callable[[AsyncTransaction], Awaitable[T]],
        retries: int = 5,
        isolation: str | None = None,
        backoff: float = 0.02,
    ) -> T:
        """``await fn(tx)`` in a transaction, retried as the sync ``run_in_transaction`` does
        (the same code: the coroutine is awaited from inside its greenlet)."""

        def run(tx: Transaction) -> T:
            return await_only(fn(AsyncTransaction(tx)))

        return await spawn(self._sync.run_in_transaction, run, retries, isolation, backoff)

    # -- collections -----------------------------------------------------------------------------
    def dict(self, name: str, serializer: Any = "json") -> AsyncPersistentDict:
        """The persistent dict ``name`` of this namespace (``store.dict(name)`` of the sync
        API), with async methods."""
        return AsyncPersistentDict(self._sync.dict(name, serializer=serializer))

    def list(self, name: str, serializer: Any = "json") -> AsyncPersistentList:
        return AsyncPersistentList(self._sync.list(name, serializer=serializer))

    def set(self, name: str, serializer: Any = "json") -> AsyncPersistentSet:
        return AsyncPersistentSet(self._sync.set(name, serializer=serializer))


class AsyncReader:
    """What ``await store.open(key)`` returns: the sync reader's ``read``, ``seek``, ``tell``
    and ``close``, awaited (a large value's reads fetch chunks from the database)."""

    def __init__(self, sync: BinaryIO) -> None:
        self._sync = sync

    async def read(self, size: int = -1) -> bytes:
        return await spawn(self._sync.read, size)

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return await spawn(self._sync.seek, offset, whence)

    async def tell(self) -> int:
        return self._sync.tell()

    async def close(self) -> None:
        """Give back the connection (and reader slot) a large value's reader holds."""
        await spawn(self._sync.close)

    @property
    def closed(self) -> bool:
        return self._sync.closed

    async def __aenter__(self) -> AsyncReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncPersistentDict(_AsyncIndexes):
    """A :class:`kvstore.PersistentDict` with async methods (``store.dict(name)``): each runs
    the sync collection's in the greenlet bridge."""

    _sync: PersistentDict[Any, Any]

    def __init__(self, sync: PersistentDict[Any, Any]) -> None:
        self._sync = sync

    @property
    def name(self) -> str:
        return self._sync.name

    @property
    def sync(self) -> PersistentDict[Any, Any]:
        return self._sync

    async def set(self, key: Any, value: Any) -> None:
        await spawn(self._sync.__setitem__, key, value)

    async def get(self, key: Any, default: Any = None) -> Any:
        return await spawn(self._sync.get, key, default)

    async def getitem(self, key: Any) -> Any:
        """The value of ``key``; ``KeyError`` when it is missing."""
        return await spawn(self._sync.__getitem__, key)

    async def delete(self, key: Any) -> None:
        """Remove ``key``; ``KeyError`` when it is missing."""
        await spawn(self._sync.__delitem__, key)

    async def pop(self, key: Any, *default: Any) -> Any:
        return await spawn(self._sync.pop, key, *default)

    async def popitem(self) -> tuple[Any, Any]:
        """Remove and return the last ``(key, value)`` in iteration order; ``KeyError`` when
        the dict is empty."""
        return await spawn(self._sync.popitem)

    async def setdefault(self, key: Any, default: Any = None) -> Any:
        return await spawn(self._sync.setdefault, key, default)

    async def update(self, *args: Any, **kwargs: Any) -> None:
        await spawn(self._sync.update, *args, **kwargs)

    async def set_many(
        self, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]] = (), **kwargs: Any
    ) -> None:
        """Write many keys in one transaction: all of them, or none (``update``, under the
        store API's name)."""
        await spawn(self._sync.set_many, items, **kwargs)

    async def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        # as given: the sync call refuses a str (a list of its characters would be a query)
        return await spawn(self._sync.get_many, keys)

    async def len(self) -> int:
        return await spawn(self._sync.__len__)

    async def contains(self, key: Any) -> bool:
        return await spawn(self._sync.__contains__, key)

    async def keys(self) -> list[Any]:
        return await spawn(_all, self._sync.keys())

    async def values(self) -> list[Any]:
        return await spawn(_all, self._sync.values())

    async def items(self) -> list[tuple[Any, Any]]:
        return await spawn(_all, self._sync.items())

    async def to_dict(self) -> dict[Any, Any]:
        return await spawn(self._sync.copy)

    async def clear(self) -> None:
        await spawn(self._sync.clear)

    def __aiter__(self) -> AsyncIterator[Any]:
        return _iterate(self._sync)

    def __repr__(self) -> str:
        return f"<kvstore.AsyncPersistentDict {self.name!r}>"


class AsyncPersistentList:
    """A :class:`kvstore.PersistentList` with async methods (``store.list(name)``)."""

    def __init__(self, sync: PersistentList[Any]) -> None:
        self._sync = sync

    @property
    def name(self) -> str:
        return self._sync.name

    @property
    def sync(self) -> PersistentList[Any]:
        return self._sync

    async def append(self, value: Any) -> None:
        await spawn(self._sync.append, value)

    async def extend(self, values: Iterable[Any]) -> None:
        await spawn(self._sync.extend, list(values))

    async def insert(self, index: int, value: Any) -> None:
        await spawn(self._sync.insert, index, value)

    async def getitem(self, index: int | slice) -> Any:
        """``l[index]`` (a list for a slice); ``IndexError`` out of range."""
        return await spawn(self._sync.__getitem__, index)

    async def setitem(self, index: int | slice, value: Any) -> None:
        """``l[index] = value``; for a slice, ``value`` is an iterable of items (as for a
        list: the same lengths for an extended slice)."""
        await spawn(self._sync.__setitem__, index, value)

    async def delitem(self, index: int | slice) -> None:
        await spawn(self._sync.__delitem__, index)

    async def pop(self, index: int = -1) -> Any:
        return await spawn(self._sync.pop, index)

    async def remove(self, value: Any) -> None:
        await spawn(self._sync.remove, value)

    async def clear(self) -> None:
        await spawn(self._sync.clear)

    async def len(self) -> int:
        return await spawn(self._sync.__len__)

    async def contains(self, value: Any) -> bool:
        return await spawn(self._sync.__contains__, value)

    async def index(self, value: Any, start: int = 0, stop: int = sys.maxsize) -> int:
        """The position of the first item equal to ``value`` in ``[start:stop]``;
        ``ValueError`` when there is none."""
        return await spawn(self._sync.index, value, start, stop)

    async def count(self, value: Any) -> int:
        return await spawn(self._sync.count, value)

    async def reverse(self) -> None:
        await spawn(self._sync.reverse)

    async def sort(self, *, key: Callable[[Any], Any] | None = None, reverse: bool = False) -> None:
        """Sort in place, stably (the sync ``sort``: ``ValueError`` if the list changed while
        its items were sorted)."""
        await spawn(self._sync.sort, key=key, reverse=reverse)

    async def to_list(self) -> list[Any]:
        return await spawn(self._sync.copy)

    def __aiter__(self) -> AsyncIterator[Any]:
        return _iterate(self._sync)

    def __repr__(self) -> str:
        return f"<kvstore.AsyncPersistentList {self.name!r}>"


class AsyncPersistentSet:
    """A :class:`kvstore.PersistentSet` with async methods (``store.set(name)``)."""

    def __init__(self, sync: PersistentSet[Any]) -> None:
        self._sync = sync

    @property
    def name(self) -> str:
        return self._sync.name

    @property
    def sync(self) -> PersistentSet[Any]:
        return self._sync

    async def add(self, elem: Any) -> None:
        await spawn(self._sync.add, elem)

    async def discard(self, elem: Any) -> None:
        await spawn(self._sync.discard, elem)

    async def remove(self, elem: Any) -> None:
        """Remove ``elem``; ``KeyError`` when it is not a member."""
        await spawn(self._sync.remove, elem)

    async def pop(self) -> Any:
        """Remove and return an element; ``KeyError`` when the set is empty."""
        return await spawn(self._sync.pop)

    async def update(self, *others: Iterable[Any]) -> None:
        await spawn(self._sync.update, *[list(o) for o in others])

    # The in-place updates are one transaction each, as the sync set's; the others are
    # iterated in the greenlet, so a TypeError for one that is not iterable comes from there.
    async def intersection_update(self, *others: Iterable[Any]) -> None:
        await spawn(self._sync.intersection_update, *others)

    async def difference_update(self, *others: Iterable[Any]) -> None:
        await spawn(self._sync.difference_update, *others)

    async def symmetric_difference_update(self, other: Iterable[Any]) -> None:
        await spawn(self._sync.symmetric_difference_update, other)

    async def clear(self) -> None:
        await spawn(self._sync.clear)

    async def contains(self, elem: Any) -> bool:
        return await spawn(self._sync.__contains__, elem)

    async def len(self) -> int:
        return await spawn(self._sync.__len__)

    async def to_set(self) -> set[Any]:
        return await spawn(self._sync.copy)

    # -- new sets (plain built-in ones) and comparisons, with any iterables -------------------
    async def union(self, *others: Iterable[Any]) -> set[Any]:
        return await spawn(self._sync.union, *others)

    async def intersection(self, *others: Iterable[Any]) -> set[Any]:
        """Membership of ``others``' elements is asked in batches, without loading the set."""
        return await spawn(self._sync.intersection, *others)

    async def difference(self, *others: Iterable[Any]) -> set[Any]:
        return await spawn(self._sync.difference, *others)

    async def symmetric_difference(self, other: Iterable[Any]) -> set[Any]:
        return await spawn(self._sync.symmetric_difference, other)

    async def isdisjoint(self, other: Iterable[Any]) -> bool:
        return await spawn(self._sync.isdisjoint, other)

    async def issubset(self, other: Iterable[Any]) -> bool:
        return await spawn(self._sync.issubset, other)

    async def issuperset(self, other: Iterable[Any]) -> bool:
        return await spawn(self._sync.issuperset, other)

    def __aiter__(self) -> AsyncIterator[Any]:
        return _iterate(self._sync)

    def __repr__(self) -> str:
        return f"<kvstore.AsyncPersistentSet {self.name!r}>"


class AsyncTransaction(AsyncStore):
    """An async store bound to one open transaction: valid only inside its ``async with``
    block, and only in the task that opened it."""

    def namespace(self, name: str) -> AsyncTransaction:
        tx = self._sync.namespace(name)
        return AsyncTransaction(tx)

    async def close(self) -> None:
        """Nothing to release: the transaction's ``async with`` block owns its connection."""

    def __repr__(self) -> str:
        return f"<kvstore.AsyncTransaction namespace={self.namespace_name!r}>"


class _AwaitedFile:
    """A sync file over an async one, for the sync store's ``put_file``/``get_file`` running in
    the greenlet bridge: each ``read``/``write`` awaits the async file's on the event loop."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def read(self, n: int = -1) -> Any:
        return await_only(self._file.read(n))

    def write(self, data: bytes) -> Any:
        return await_only(self._file.write(data))


def _bridged(file: Any, method: str) -> Any:
    """``file`` as the sync store reads (``method="read"``) or writes it: an async file object
    wrapped so its coroutine calls are awaited; a path or a sync file as it is."""
    if inspect.iscoroutinefunction(getattr(file, method, None)):
        return cast(IO[bytes], _AwaitedFile(file))
    return file


async def _batched(it: Iterator[T]) -> AsyncIterator[T]:
    """A sync store generator's items, ``_KEY_BATCH`` per greenlet switch."""
    while True:
        batch = await spawn(_take, it, _KEY_BATCH)
        for item in batch:
            yield item
        if len(batch) < _KEY_BATCH:
            return


async def _iterate(sync: Any) -> AsyncIterator[Any]:
    """``iter(sync)`` of a sync collection, item by item in the bridge. The sync iterator reads
    ``batch_size`` items per statement and the next batch only when the caller asks past the
    last one, so a concurrent write shows as docs/lists.md says; taking several items per
    switch reads ahead (after a short batch, the empty one that ends the iteration), and an
    item appended meanwhile is missed. A switch without I/O costs about a microsecond."""
    it = iter(sync)
    while True:
        item = await spawn(next, it, _DONE)
        if item is _DONE:
            return
        yield item


def _take(it: Iterator[T], n: int) -> list[T]:
    return list(itertools.islice(it, n))


def _all(it: Iterable[T]) -> list[T]:
    return list(it)


def _async_engine(url: str, options: dict[str, Any]) -> AsyncEngine:
    """The engine an async store owns for a URL (kvstore._dialect.async_engine_url says which
    driver a URL means)."""
    parsed = async_engine_url(url)
    driver = parsed.get_driver_name()
    try:
        return create_async_engine(parsed, **options)
    except ImportError as exc:
        raise ImportError(
            f"the {driver} driver is not installed ({exc}): pip install {driver}"
        ) from exc


async def connect_async(
    bind: str | AsyncEngine | AsyncConnection | AsyncSession = "sqlite+aiosqlite:///kvstore.db",
    *,
    namespace: str = "default",
    table_prefix: str = "kv_",
    create: bool = True,
    default_ttl_secs: TTL = NOT_SET,
    sqlite_synchronous: str = "FULL",
    busy_timeout: float = 30.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    engine_options: Mapping[str, Any] | None = None,
    max_open_readers: int = DEFAULT_MAX_OPEN_READERS,
    sqlite_wal: bool | None = None,
) -> AsyncStore:
    """Open an async key-value store: ``connect()``'s options, for an asyncio driver.

    ``bind`` is a URL (``sqlite+aiosqlite:///path``, ``postgresql+asyncpg://...``,
    ``postgresql+psycopg://...``; the store creates and owns its ``AsyncEngine``), an
    ``AsyncEngine`` (the store uses its pool), or an ``AsyncConnection``/``AsyncSession``
    (the store joins the caller's transaction and never commits it).
    """
    options = make_options(
        sqlite_synchronous=sqlite_synchronous,
        busy_timeout=busy_timeout,
        chunk_size=chunk_size,
        max_open_readers=max_open_readers,
        sqlite_wal=sqlite_wal,
        engine_options=engine_options,
    )
    owned: AsyncEngine | None = None
    if isinstance(bind, str):
        owned = bind = _async_engine(bind, dict(engine_options or {}))
    sync_bind: Any
    if isinstance(bind, AsyncEngine):
        sync_bind = bind.sync_engine
    elif isinstance(bind, AsyncConnection):
        sync_bind = bind.sync_connection
        if sync_bind is None:
            raise ValueError("the AsyncConnection is not started: use it inside `async with`")
    elif isinstance(bind, AsyncSession):
        sync_bind = bind.sync_session
    else:
        raise TypeError(
            "connect_async() takes a database URL, an AsyncEngine, an AsyncConnection or an "
            f"AsyncSession, not {type(bind).__name__}"
        )
    try:
        sync = await spawn(
            connect_bound,
            sync_bind,
            owns_engine=owned is not None,
            namespace=namespace,
            table_prefix=table_prefix,
            create=create,
            default_ttl_secs=default_ttl_secs,
            options=options,
        )
    except BaseException:
        if owned is not None:
            await owned.dispose()
        raise
    return AsyncStore(sync, root=True)
