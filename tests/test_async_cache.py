"""``@kvstore.cached`` over an AsyncStore (issue 13), on aiosqlite, asyncpg and psycopg-async.

The cache's rules are the sync path's (tests/test_cache.py); these tests check that, on an
async store, every store call is awaited in the greenlet bridge with the same results: hits
and misses, one computation for concurrent callers, TTL, refresh, invalidate and cache_clear
(awaited here), factories and bind, transactions, and entries shared with a sync store.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import kvstore
from conftest import AsyncBackend

pytestmark = pytest.mark.asyncio


async def test_hits_misses_and_one_computation(astore: kvstore.AsyncStore) -> None:
    calls: list[str] = []

    @kvstore.cached(astore, name="fetch")
    async def fetch(url: str) -> dict[str, Any]:
        calls.append(url)
        await asyncio.sleep(0.05)
        return {"url": url, "n": len(calls)}

    assert asyncio.iscoroutinefunction(fetch)
    assert await fetch("a") == {"url": "a", "n": 1}
    assert await fetch("a") == {"url": "a", "n": 1}
    # concurrent callers of one missing key: one computes, the others wait for its result
    results = await asyncio.gather(*(fetch("b") for _ in range(6)))
    assert results == [{"url": "b", "n": 2}] * 6
    assert calls == ["a", "b"]
    store = fetch.store
    assert isinstance(store, kvstore.AsyncStore)
    assert store.namespace_name == f"{astore.namespace_name}/c/fetch"
    assert sorted(await store.keys()) == sorted([fetch.cache_key("a"), fetch.cache_key("b")])
    assert await astore.keys() == []  # the cache's namespace is its own


async def test_none_and_bytes_are_results(astore: kvstore.AsyncStore) -> None:
    calls: list[str] = []

    @kvstore.cached(astore, name="lookup")
    async def lookup(name: str) -> bytes | None:
        calls.append(name)
        return None if name == "nobody" else b"\x00body" * 100_000  # several chunks

    assert await lookup("nobody") is None
    assert await lookup("nobody") is None
    assert await lookup("img") == b"\x00body" * 100_000
    assert await lookup("img") == b"\x00body" * 100_000
    assert calls == ["nobody", "img"]


async def test_ttl_refresh_invalidate_and_clear(astore: kvstore.AsyncStore) -> None:
    calls: list[int] = []

    @kvstore.cached(astore, ttl_secs=0.3, name="rate")
    async def rate(x: int) -> int:
        calls.append(x)
        return x * 10 + len(calls)

    assert await rate(1) == 11
    store = rate.store
    assert isinstance(store, kvstore.AsyncStore)
    assert (await store.stat(rate.cache_key(1))).expires_at is not None
    assert await rate(1) == 11
    await asyncio.sleep(0.4)  # expired: computed again
    assert await rate(1) == 12
    assert await rate.refresh(1) == 13  # computes, replaces the entry
    assert await rate(1) == 13
    await rate.invalidate(1)
    assert await rate(1) == 14
    assert await rate(2) == 25
    await rate.cache_clear()
    assert await store.len() == 0
    assert await rate(2) == 26


async def test_exceptions_store_nothing_and_release_the_lock(astore: kvstore.AsyncStore) -> None:
    attempts: list[int] = []

    @kvstore.cached(astore, name="flaky")
    async def flaky(x: int) -> int:
        attempts.append(x)
        await asyncio.sleep(0.02)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return x

    results = await asyncio.gather(flaky(1), flaky(1), return_exceptions=True)
    # whichever task the loop ran first computed and failed; the waiter computed in turn
    assert sum(isinstance(r, RuntimeError) for r in results) == 1 and results.count(1) == 1
    assert await asyncio.wait_for(flaky(1), 5) == 1
    assert attempts == [1, 1]

    @kvstore.cached(astore, name="kept")
    async def kept(x: int) -> int:
        if attempts.append(x) or len(attempts) > 3:
            raise RuntimeError("refresh fails")
        return x

    assert await kept(7) == 7
    with pytest.raises(RuntimeError):
        await kept.refresh(7)
    assert await kept(7) == 7  # the previous entry stayed


async def test_a_factory_and_bind(abackend: AsyncBackend) -> None:
    app: dict[str, kvstore.AsyncStore] = {}

    @kvstore.cached(lambda: app["store"], name="report")
    async def report(day: str) -> dict[str, Any]:
        return {"day": day}

    assert "not resolved" in repr(report)
    first = await abackend.connect()
    other = await abackend.connect(namespace=abackend.namespace + "-other")
    try:
        app["store"] = first
        assert await report("mon") == {"day": "mon"}
        mon = report.store
        assert isinstance(mon, kvstore.AsyncStore)
        assert await mon.keys() == [report.cache_key("mon")]
        report.bind(other)
        assert await report("tue") == {"day": "tue"}
        store = report.store
        assert isinstance(store, kvstore.AsyncStore)
        assert store.namespace_name == f"{abackend.namespace}-other/c/report"
        assert await store.keys() == [report.cache_key("tue")]
    finally:
        await other.close()
        await first.close()


async def test_a_plain_function_refuses_an_async_store(astore: kvstore.AsyncStore) -> None:
    with pytest.raises(TypeError, match="AsyncStore caches async def functions"):

        @kvstore.cached(astore, name="plain")
        def plain(x: int) -> int:
            return x

    @kvstore.cached(lambda: astore, name="late")
    def late(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="AsyncStore caches async def functions"):
        late(1)

    @kvstore.cached(lambda: "not a store", name="bad")
    async def bad(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"returned str 'not a store'.*or AsyncStore"):
        await bad(1)


async def test_inside_a_transaction(astore: kvstore.AsyncStore) -> None:
    """A cached call inside the task's transaction reads and writes through it: its entry
    disappears on rollback, and appears at commit."""
    calls: list[int] = []

    @kvstore.cached(astore, name="in_tx")
    async def square(x: int) -> int:
        calls.append(x)
        return x * x

    with pytest.raises(RuntimeError):
        async with astore.transaction() as tx:
            assert await square(3) == 9
            assert await square(3) == 9
            await tx.put("k", b"v")
            raise RuntimeError("roll back")
    store = square.store
    assert isinstance(store, kvstore.AsyncStore)
    assert await store.len() == 0 and await astore.keys() == []
    async with astore.transaction():
        assert await square(3) == 9
    assert await square(3) == 9
    assert calls == [3, 3]
    assert await store.len() == 1


async def test_sync_and_async_caches_share_entries(abackend: AsyncBackend) -> None:
    astore = await abackend.connect()
    sync = abackend.connect_sync()
    try:

        @kvstore.cached(astore, name="shared")
        async def afetch(x: int) -> list[int]:
            return [x, 1]

        @kvstore.cached(sync, name="shared")
        def fetch(x: int) -> list[int]:
            return [x, 2]

        assert await afetch(5) == [5, 1]
        assert fetch(5) == [5, 1]  # the async call's entry
        assert fetch(6) == [6, 2]
        assert await afetch(6) == [6, 2]
    finally:
        sync.close()
        await astore.close()


async def test_bad_arguments_fail_before_anything_is_stored(astore: kvstore.AsyncStore) -> None:
    @kvstore.cached(astore, name="strict")
    async def strict(x: Any) -> Any:
        return x

    with pytest.raises(TypeError, match="no stable encoding"):
        await strict(object())
    with pytest.raises(TypeError, match="no stable encoding"):
        strict.invalidate(object())  # raised at the call, not when awaited
    with pytest.raises(TypeError, match="cannot store"):
        await strict({1, 2})
    store = strict.store
    assert isinstance(store, kvstore.AsyncStore)
    assert await store.len() == 0
