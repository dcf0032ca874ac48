"""kvstore._bridge.spawn behaves as SQLAlchemy's greenlet_spawn, which it replaces (issue 13).

Each case runs on both and compares: results and arguments, exceptions (not chained to the
one the caller handles), contextvars (the task's, shared), nested bridges, an awaitable's
exception thrown in at the ``await_only`` (``GreenletExit`` too), cancellation (the sync
code's ``except`` and ``finally`` run before the caller sees it), tasks interleaving on the
bridge at once. Then what is spawn's own: its workers are reused, an idle one keeps nothing of
its last call, and at most ``MAX_IDLE`` are kept.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from greenlet import GreenletExit
from sqlalchemy.util import await_only, greenlet_spawn
from sqlalchemy.util.concurrency import in_greenlet

from kvstore import _bridge
from kvstore._bridge import spawn

pytestmark = pytest.mark.asyncio

_var: contextvars.ContextVar[str] = contextvars.ContextVar("_var", default="unset")


async def _behaviour(sp: Callable[..., Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["result"] = await sp(lambda a, b=0: a + b, 1, b=2)
    out["in_greenlet"] = await sp(in_greenlet)

    def boom() -> None:
        raise KeyError("k")

    try:
        await sp(boom)
    except KeyError as exc:
        out["error"] = (repr(exc), exc.__context__)
    try:
        try:
            raise ValueError("handled by the caller")
        except ValueError:
            await sp(boom)
    except KeyError as exc:
        out["chained"] = repr(exc.__context__)

    _var.set("task")

    def read_and_set() -> str:
        seen = _var.get()
        _var.set("set in the bridge")
        return seen

    out["contextvar seen"] = await sp(read_and_set)
    out["contextvar after"] = _var.get()

    async def inner() -> Any:
        return await sp(lambda: await_only(asyncio.sleep(0, "slept")))

    out["nested"] = await sp(lambda: await_only(inner()))

    async def fails() -> None:
        raise OSError("io")

    def catches() -> str:
        try:
            await_only(fails())
        except OSError as exc:
            return f"caught {exc}"
        return "not raised"

    out["thrown in"] = await sp(catches)

    async def exits() -> None:
        raise GreenletExit("ends the greenlet")

    # a GreenletExit ends the greenlet, whose last value (the exception) is returned
    out["greenlet exit"] = repr(await sp(lambda: await_only(exits())))

    log: list[str] = []

    def waits() -> None:
        try:
            await_only(asyncio.sleep(10))
        except BaseException as exc:
            log.append(type(exc).__name__)
            raise
        finally:
            log.append("finally")

    task = asyncio.ensure_future(sp(waits))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    out["cancelled"] = log

    async def interleaved(i: int) -> list[int]:
        def three_waits() -> list[int]:
            return [await_only(asyncio.sleep(0.001, i)) for _ in range(3)]

        return await sp(three_waits)  # type: ignore[no-any-return]

    out["interleaved"] = await asyncio.gather(*(interleaved(i) for i in range(5)))

    async def own_context(value: str) -> str:
        _var.set(value)
        return await sp(lambda: (await_only(asyncio.sleep(0.001)), _var.get())[1])  # type: ignore[no-any-return]

    out["per task"] = await asyncio.gather(
        *(asyncio.create_task(own_context(f"t{i}")) for i in range(3))
    )
    return out


async def test_spawn_behaves_as_greenlet_spawn() -> None:
    expected = await asyncio.create_task(_behaviour(greenlet_spawn))
    got = await asyncio.create_task(_behaviour(spawn))
    assert got == expected
    assert got["chained"] == "None"
    assert got["cancelled"] == ["CancelledError", "finally"]
    assert got["greenlet exit"] == "GreenletExit('ends the greenlet')"


async def test_workers_are_reused_and_keep_nothing() -> None:
    class Big:
        pass

    def make() -> Big:
        return Big()

    await spawn(lambda: None)
    idle = _bridge._idle()
    before = list(idle)
    result = await spawn(make)
    ref = weakref.ref(result)
    assert _bridge._idle() == before  # the same worker went back
    del result
    gc.collect()
    assert ref() is None  # the idle worker does not hold the last result

    def raises() -> None:
        raise RuntimeError(Big())

    with pytest.raises(RuntimeError) as info:
        await spawn(raises)
    ref = weakref.ref(info.value.args[0])
    del info
    gc.collect()
    assert ref() is None  # nor the last exception
    assert all(w.gr_context is None for w in _bridge._idle())


async def test_at_most_max_idle_workers_are_kept() -> None:
    release = asyncio.Event()

    def waits() -> None:
        await_only(release.wait())

    tasks = [asyncio.ensure_future(spawn(waits)) for _ in range(_bridge.MAX_IDLE + 10)]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(*tasks)
    assert len(_bridge._idle()) == _bridge.MAX_IDLE
