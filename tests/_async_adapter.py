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
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import queue
import sys
import threading
import types
from collections.abc import Callable, Iterator
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


def _wrap(value: Any, loop: Loop) -> Any:
    if isinstance(value, kvstore.AsyncStore):  # AsyncTransaction too
        return SyncOverAsync(value, loop)
    if isinstance(value, kvstore.AsyncReader):
        return _Reader(value, loop)
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

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._loop.call(lambda: self._aio.seek(offset, whence))  # type: ignore[no-any-return]

    def tell(self) -> int:
        return self._loop.call(self._aio.tell)  # type: ignore[no-any-return]

    def close(self) -> None:
        if not self.closed:
            self._loop.call(self._aio.close)
        super().close()
