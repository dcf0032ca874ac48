"""The greenlet bridge of the async API: :func:`spawn`, SQLAlchemy's ``greenlet_spawn`` with
worker greenlets kept for the next call instead of a new greenlet per call.

``await spawn(fn, *args, **kwargs)`` runs the sync ``fn`` in a greenlet on the event loop's
thread; every ``await_only(awaitable)`` in it (SQLAlchemy's sync adapters of the asyncio
drivers, kvstore's own executors) switches back to the caller, which awaits the awaitable and
switches its result, or its exception, back in. That is ``greenlet_spawn`` exactly: the same
greenlet class marker (so ``await_only`` and ``in_greenlet`` see a bridge greenlet), the
caller's contextvars context, an exception of ``fn`` raised to the caller, and an exception of
an awaited awaitable (a cancellation, too) thrown into ``fn`` at its ``await_only``, so that
the sync code's ``except``/``finally`` clauses run (a connection interrupted mid-statement is
discarded, see kvstore._conn) before it reaches the caller.

What differs is the cost: a greenlet's first switch sets up a new frame stack, several
microseconds, a third of the bridge's cost per call. Here a greenlet that has finished its
call waits, idle, for the next one (at most ``MAX_IDLE`` per thread), and a call takes an
idle one when there is one.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet  # type: ignore[import-untyped]

__all__ = ["MAX_IDLE", "spawn"]

T = TypeVar("T")

#: idle worker greenlets kept per thread (one per call that runs at once, up to this many)
MAX_IDLE = 64


class _Call:
    """One call handed to a worker: what to run, and (filled in by the worker) how it ended."""

    __slots__ = ("args", "fn", "kwargs", "ok", "value")

    def __init__(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.ok = False
        self.value: Any = None


#: what a worker switches to its caller when its call has ended (an await_only switches the
#: awaitable it waits for)
_DONE = object()


class _Worker(greenlet):  # type: ignore[misc]
    """A bridge greenlet: ``await_only`` and ``in_greenlet`` check this class attribute."""

    __sqlalchemy_greenlet_provider__ = True


def _work(call: _Call) -> None:
    """A worker's life: run a call, report how it ended, wait for the next. An idle worker
    that is garbage-collected gets ``GreenletExit`` at its ``switch`` and ends."""
    parent = getcurrent().parent
    while True:
        try:
            call.value = call.fn(*call.args, **call.kwargs)
            call.ok = True
        except GreenletExit:
            # (garbage-collected in the middle of a call, or thrown in from an awaited call)
            # it ends the worker, as it ends greenlet_spawn's greenlet; see spawn
            raise
        except BaseException as exc:  # the caller raises it, as greenlet_spawn's would
            call.value = exc
        del call  # nothing of a call stays referenced by an idle worker
        call = parent.switch(_DONE)


_local = threading.local()


def _idle() -> list[_Worker]:
    try:
        idle: list[_Worker] = _local.idle
    except AttributeError:
        idle = _local.idle = []
    return idle


async def spawn(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``await sqlalchemy.util.greenlet_spawn(fn, *args, **kwargs)``, on a reused greenlet."""
    current = getcurrent()
    idle = _idle()
    worker: _Worker | None = idle.pop() if idle else None
    if worker is None or worker.parent is not current:
        # (an event loop run inside another greenlet: a worker of this thread's loop
        # switches back to the wrong one, so this call gets a new one)
        worker = _Worker(_work, current)
    # the caller's context, as greenlet_spawn gives it (contextvars set in fn are the task's)
    worker.gr_context = current.gr_context
    call = _Call(fn, args, kwargs)
    result = worker.switch(call)
    while result is not _DONE and not worker.dead:
        try:
            value = await result  # an await_only in fn: the awaitable it waits for
        except BaseException:
            # into fn at its await_only, so that its except/finally clauses run
            result = worker.throw(*sys.exc_info())
        else:
            result = worker.switch(value)
    if worker.dead:
        # ended by GreenletExit: greenlet_spawn returns what its dead greenlet returned
        return result  # type: ignore[no-any-return]
    worker.gr_context = None  # an idle worker keeps no task's context alive
    if len(idle) < MAX_IDLE:
        idle.append(worker)
    if call.ok:
        return call.value  # type: ignore[no-any-return]
    exc: BaseException = call.value
    context = exc.__context__
    try:
        raise exc
    finally:
        # Raising it here chains it to the exception the caller is handling, if any; an
        # exception greenlet_spawn passes on from its greenlet is not chained again.
        exc.__context__ = context
        del exc, call
