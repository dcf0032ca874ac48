"""kvstore.cached: memoisation in a store, on every backend, plus concurrency on the shared ones
(threads, and processes that reconnect from the backend's URL)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import multiprocessing
import random
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import _sql
import pytest
from _sql import DEFAULT_CHUNK_SIZE

import kvstore
from kvstore.cache import cached
from kvstore.decorators import PrefixDecorator
from kvstore.serializers import JSON

SHORT_TTL = 0.2


class Counter:
    """Counts calls from any thread."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self._lock = threading.Lock()

    def add(self, item: Any) -> None:
        with self._lock:
            self.calls.append(item)

    def __len__(self) -> int:
        return len(self.calls)


# -- hits, misses, None, TTL -----------------------------------------------------------------------
def test_computed_once_then_read_from_the_store(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    def square(x: int) -> int:
        seen.add(x)
        return x * x

    assert square(3) == 9
    assert square(3) == 9
    assert square(4) == 16
    assert seen.calls == [3, 4]
    assert len(square.store) == 2
    # the result is in the function's namespace, under the documented key
    assert json.loads(square.store.get(square.cache_key(3))) == 9


def test_results_are_shared_by_every_decorator_with_the_same_name(store: kvstore.Store) -> None:
    seen = Counter()

    def compute(x: int) -> int:
        seen.add(x)
        return x + 1

    first = cached(store, name="shared")(compute)
    second = cached(store.namespace(store.namespace_name), name="shared")(compute)
    other = cached(store, name="other")(compute)
    assert first(1) == 2
    assert second(1) == 2
    assert other(1) == 2
    assert seen.calls == [1, 1]


def test_none_is_a_result_not_a_miss(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    def lookup(name: str) -> dict[str, int] | None:
        seen.add(name)
        return None if name == "nobody" else {"id": 1}

    assert lookup("nobody") is None
    assert lookup("nobody") is None
    assert lookup("ada") == {"id": 1}
    assert lookup("ada") == {"id": 1}
    assert seen.calls == ["nobody", "ada"]


def test_falsy_results_are_hits(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    def f(x: Any) -> Any:
        seen.add(x)
        return x

    values: list[Any] = [0, "", [], {}, False, 0.0]
    for value in values:
        assert f(value) == value
        assert f(value) == value
    assert len(seen) == 6


def test_ttl_expiry(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store, ttl_secs=SHORT_TTL)
    def now(tag: str) -> int:
        seen.add(tag)
        return len(seen)

    assert now("a") == 1
    assert now("a") == 1
    info = now.store.stat(now.cache_key("a"))
    assert info.expires_at is not None
    time.sleep(SHORT_TTL + 0.1)
    assert now("a") == 2
    assert now("a") == 2
    assert len(seen) == 2


def test_ttl_defaults_to_the_store_default(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store, name="with-default")
    def f(x: int) -> int:
        seen.add(x)
        return x

    store.default_ttl_secs = SHORT_TTL
    try:
        f(1)
        assert f.store.stat(f.cache_key(1)).expires_at is not None
        time.sleep(SHORT_TTL + 0.1)
        f(1)
    finally:
        store.default_ttl_secs = kvstore.NOT_SET
    assert len(seen) == 2
    f(2)
    assert f.store.stat(f.cache_key(2)).expires_at is None


def test_no_ttl_means_forever(store: kvstore.Store) -> None:
    @cached(store)
    def f(x: int) -> int:
        return x

    f(1)
    assert f.store.stat(f.cache_key(1)).expires_at is None


# -- refresh, invalidate, cache_clear ------------------------------------------------------------
def test_refresh_recomputes_and_stores(store: kvstore.Store) -> None:
    state = {"value": 1}
    seen = Counter()

    @cached(store)
    def read(key: str) -> int:
        seen.add(key)
        return state["value"]

    assert read("k") == 1
    state["value"] = 2
    assert read("k") == 1  # still cached
    assert read.refresh("k") == 2
    assert read("k") == 2
    assert len(seen) == 2
    assert read.refresh("new") == 2  # refresh of a missing entry stores it
    assert read("new") == 2
    assert len(seen) == 3


def test_refresh_that_raises_keeps_the_old_result(store: kvstore.Store) -> None:
    fail = {"now": False}

    @cached(store)
    def f(x: int) -> int:
        if fail["now"]:
            raise RuntimeError("backend down")
        return x

    assert f(1) == 1
    fail["now"] = True
    with pytest.raises(RuntimeError, match="backend down"):
        f.refresh(1)
    assert f(1) == 1


def test_invalidate_forgets_one_call(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    def f(x: int, y: int = 0) -> int:
        seen.add((x, y))
        return x + y

    f(1)
    f(2)
    f.invalidate(1, y=0)  # same call as f(1): normalised the same way
    f.invalidate(99)  # nothing stored: no error
    assert f(1) == 1
    assert f(2) == 2
    assert seen.calls == [(1, 0), (2, 0), (1, 0)]
    with pytest.raises(TypeError):
        f.invalidate(1, 2, 3)  # type: ignore[call-arg]  # not a valid call of f


def test_cache_clear_removes_exactly_one_functions_entries(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    def one(x: int) -> int:
        seen.add(("one", x))
        return x

    @cached(store)
    def two(x: int) -> int:
        seen.add(("two", x))
        return -x

    store.put("user-key", b"mine")
    other_ns = store.namespace(store.namespace_name + "x")
    # the same name in another namespace
    other_one = cached(other_ns, name=_sql.cache_name(one))(lambda x: x)
    for i in range(3):
        one(i)
        two(i)
    other_one(0)
    # the user's listing shows none of the cache's entries
    assert store.keys() == ["user-key"]
    assert len(store) == 1

    one.cache_clear()
    assert len(one.store) == 0
    assert len(two.store) == 3
    assert len(other_one.store) == 1
    assert store.get("user-key") == b"mine"
    one(0)
    two(0)
    assert seen.calls.count(("one", 0)) == 2
    assert seen.calls.count(("two", 0)) == 1
    other_one.cache_clear()  # the other namespace is not under the fixture's clean-up
    assert len(other_one.store) == 0


# -- keys ---------------------------------------------------------------------------------------------
def test_equivalent_calls_share_one_entry(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    def f(a: int, b: int = 2, *rest: int, c: int = 3, **extra: int) -> int:
        seen.add(1)
        return a + b + c + sum(rest) + sum(extra.values())

    k = f.cache_key(1)
    assert f.cache_key(1, 2) == k
    assert f.cache_key(a=1) == k
    assert f.cache_key(1, b=2) == k
    assert f.cache_key(1, c=3) == k
    assert f.cache_key(b=2, a=1, c=3) == k
    assert f.cache_key(1, 2, 5) != k
    assert f.cache_key(1, c=4) != k
    assert f.cache_key(1, x=1, y=2) == f.cache_key(1, y=2, x=1)
    assert f.cache_key(1, x=1) != f.cache_key(1, y=1)
    f(1)
    f(1, 2)
    f(a=1, c=3)
    assert len(seen) == 1


def test_keys_distinguish_what_python_distinguishes(store: kvstore.Store) -> None:
    @cached(store)
    def f(x: Any) -> Any:
        return None

    distinct = [
        1,
        1.0,
        True,
        "1",
        b"1",
        [1],
        (1,),
        {1},
        {"1": 1},
        None,
        0,
        False,
        -0.0,
        0.0,
        float("nan"),
        float("inf"),
    ]
    keys = [f.cache_key(v) for v in distinct]
    assert len(set(keys)) == len(distinct)
    # equal containers give equal keys whatever their order of construction
    assert f.cache_key({"a": 1, "b": 2}) == f.cache_key({"b": 2, "a": 1})
    assert f.cache_key({3, 1, 2}) == f.cache_key({1, 2, 3}) == f.cache_key(frozenset({2, 3, 1}))
    assert f.cache_key(bytearray(b"x")) == f.cache_key(b"x")
    assert f.cache_key({1: "a", "1": "b"}) == f.cache_key({"1": "b", 1: "a"})
    assert f.cache_key([[1, 2], {"k": (3,)}]) == f.cache_key([[1, 2], {"k": (3,)}])
    # a string that spells a tag is not a container
    assert f.cache_key(["list", []]) != f.cache_key([])


def test_key_derivation_is_the_documented_one(store: kvstore.Store) -> None:
    """The key depends on nothing but the arguments (no hash(), no id(), no process state)."""

    @cached(store)
    def f(a: Any, b: Any = None, *, c: str = "x") -> None:
        return None

    def documented(doc: Any) -> str:
        text = json.dumps(doc, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return hashlib.sha256(("kvstore.cached/1:" + text).encode("ascii")).hexdigest()

    assert f.cache_key("zürich", [1, (2.5,)]) == documented(
        [["zürich", ["list", [1, ["tuple", [2.5]]]]], [["c", "x"]]]
    )
    assert f.cache_key(b"\x00", c="y") == documented([[["bytes", "00"], None], [["c", "y"]]])


def test_unencodable_arguments_raise_type_error(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    def f(x: Any, opts: Any = None) -> int:
        seen.add(x)
        return 1

    with pytest.raises(TypeError, match=r"argument 'x' is object.*key="):
        f(object())
    with pytest.raises(TypeError, match=r"argument 'opts'\['k'\]\[1\] is Counter"):
        f(1, opts={"k": [1, Counter()]})
    with pytest.raises(TypeError, match="key="):
        f.cache_key(1, opts={object(): 1})
    assert seen.calls == []  # refused before the call
    assert len(f.store) == 0


def test_custom_key_function(store: kvstore.Store) -> None:
    seen = Counter()

    class Request:
        def __init__(self, url: str) -> None:
            self.url = url

    @cached(store, key=lambda req, **kw: f"GET {req.url}")
    def get(req: Request, *, verbose: bool = False) -> str:
        seen.add(req.url)
        return req.url.upper()

    assert get(Request("a/b")) == "A/B"
    assert get(Request("a/b"), verbose=True) == "A/B"
    assert get.cache_key(Request("x")) == "GET x"
    assert get.store.keys() == ["GET a/b"]
    assert seen.calls == ["a/b"]

    bad = cached(store, key=lambda x: 42, name="bad")(lambda x: x)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="returned int, not str"):
        bad(1)
    nul = cached(store, key=lambda x: "a\x00b", name="nul")(lambda x: x)
    with pytest.raises(ValueError, match="NUL"):
        nul(1)


def test_wrong_arguments_fail_like_the_function(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    def f(x: int) -> int:
        seen.add(x)
        return x

    with pytest.raises(TypeError, match="missing a required argument"):
        f()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        f(1, y=2)  # type: ignore[call-arg]
    assert seen.calls == []


# -- results and serializers -----------------------------------------------------------------------
def test_json_results_are_returned_as_a_hit_returns_them(store: kvstore.Store) -> None:
    @cached(store)
    def pair(x: int) -> Any:
        return (x, x)

    # a miss returns what later hits return: JSON has no tuples
    assert pair(1) == [1, 1]
    assert pair(1) == [1, 1]


def test_unserializable_result_raises_and_caches_nothing(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store, lock_timeout=30)
    def f(x: int) -> Any:
        seen.add(x)
        return {1, 2} if x else "ok"

    with pytest.raises(TypeError, match="cannot store"):
        f(1)
    assert len(f.store) == 0
    start = time.monotonic()
    with pytest.raises(TypeError):
        f(1)  # the lock was released: no wait for lock_timeout
    assert time.monotonic() - start < 5
    assert len(seen) == 2


def test_pickle_and_custom_serializers(store: kvstore.Store) -> None:
    @cached(store, serializer="pickle")
    def s(x: int) -> set[int]:
        return {x, x + 1}

    assert s(1) == {1, 2}
    assert s(1) == {1, 2}

    class Upper:
        def dumps(self, obj: Any) -> str:
            return str(obj)

        def loads(self, data: bytes) -> Any:
            return data.decode().upper()

    @cached(store, serializer=Upper())
    def t(x: str) -> str:
        return x

    assert t("abc") == "ABC"
    assert t("abc") == "ABC"


def test_an_undecodable_entry_is_a_miss(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    def f(x: int) -> int:
        seen.add(x)
        return x

    for i, junk in enumerate([b"\x80 not json", b"", b'{"truncated', b"J{}"]):
        f.store.put(f.cache_key(i), junk)
        assert f(i) == i
        assert f(i) == i
    assert len(seen) == 4


# -- the default serializer ("auto"): bytes as they are, anything else as JSON -------------------
# Bytes that look like JSON, like the tag, or like nothing at all: each must come back as bytes.
BYTES_RESULTS = [b"", b"\xff\x00", b"B", b"Bxyz", b"null", b'{"json": 1}', bytes(range(256))]

JSON_RESULTS: list[Any] = [
    None,
    True,
    False,
    0,
    -7,
    2**70,
    1.5,
    -0.0,
    "",
    "B",
    "Bytes? no, a str",
    "zürich ✓",
    "null",
    [],
    {},
    [1, "two", None, [3.5, {"k": False}]],
    {"a": {"b": [1, 2, {"c": None}]}, "": "", "list": [[], [[]]]},
]


def _chunks_of(s: kvstore.Store, key: str) -> int:
    """How many chunk rows hold the value of ``key`` (0 when it is stored inline)."""
    sql = (
        "SELECT COUNT(*) FROM {chunks} WHERE blob_id = "
        "(SELECT blob_id FROM {entries} WHERE namespace = :ns AND key = :key)"
    )
    return int(_sql.value(s, sql, key=key))


def test_bytes_results_round_trip_stored_raw(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    def body(i: int) -> bytes:
        seen.add(i)
        return BYTES_RESULTS[i]

    for i, expected in enumerate(BYTES_RESULTS):
        first, second = body(i), body(i)
        assert type(first) is bytes and type(second) is bytes
        assert first == second == expected
        # one tag byte in front of the raw bytes: no base64, no JSON
        assert body.store.get(body.cache_key(i)) == b"B" + expected
    assert len(seen) == len(BYTES_RESULTS)


def test_bytes_like_results_come_back_as_bytes(store: kvstore.Store) -> None:
    class Body(bytes):
        pass

    values: dict[str, Any] = {
        "bytearray": bytearray(b"\x00ba"),
        "memoryview": memoryview(b"mv\xff"),
        "subclass": Body(b"sub"),
    }

    @cached(store)
    def f(kind: str) -> Any:
        return values[kind]

    for kind, value in values.items():
        # a miss returns what a hit returns, as a tuple comes back as a list
        for got in (f(kind), f(kind)):
            assert type(got) is bytes
            assert got == bytes(value)


@pytest.mark.parametrize(
    "size",
    [DEFAULT_CHUNK_SIZE - 1, DEFAULT_CHUNK_SIZE, 3 * DEFAULT_CHUNK_SIZE + 7],
    ids=["tagged-fills-one-chunk", "tag-spills-over", "several-chunks"],
)
def test_large_bytes_results_take_the_chunked_path(store: kvstore.Store, size: int) -> None:
    payload = random.Random(size).randbytes(size)
    seen = Counter()

    @cached(store)
    def thumbnail(n: int) -> bytes:
        seen.add(n)
        return payload

    assert thumbnail(size) == payload
    assert thumbnail(size) == payload
    assert len(seen) == 1
    key = thumbnail.cache_key(size)
    assert thumbnail.store.stat(key).size == size + 1  # the tag is the only overhead
    expected_chunks = 0 if size + 1 <= DEFAULT_CHUNK_SIZE else -(-(size + 1) // DEFAULT_CHUNK_SIZE)
    assert _chunks_of(thumbnail.store, key) == expected_chunks


def test_json_results_round_trip_with_the_default_serializer(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    def f(i: int) -> Any:
        seen.add(i)
        return JSON_RESULTS[i]

    for i, expected in enumerate(JSON_RESULTS):
        for got in (f(i), f(i)):
            assert got == expected
            # True stays bool (not 1), 0 an int, -0.0 keeps its sign
            assert type(got) is type(expected) and repr(got) == repr(expected)
        # byte-identical to what serializer="json" (the default before "auto") stores
        assert f.store.get(f.cache_key(i)) == JSON.dumps(expected)
    assert len(seen) == len(JSON_RESULTS)


def test_tuples_and_dict_keys_come_back_as_json_gives_them(store: kvstore.Store) -> None:
    @cached(store)
    def f(kind: str) -> Any:
        return {"tuple": (1, ("a", None), ()), "keys": {1: "x", 2.5: [("y",)]}}[kind]

    assert f("tuple") == f("tuple") == [1, ["a", None], []]
    assert f("keys") == f("keys") == {"1": "x", "2.5": [["y"]]}


def test_bytes_inside_a_result_raise_and_store_nothing(store: kvstore.Store) -> None:
    @cached(store)
    def f(kind: str) -> Any:
        return {"list": [b"x"], "dict": {"body": b"x"}, "tuple": (b"x", 1)}[kind]

    for kind in ("list", "dict", "tuple"):
        with pytest.raises(TypeError, match=r"cannot store.*bytes as a whole result"):
            f(kind)
    assert len(f.store) == 0


def test_entries_of_the_json_serializer_are_hits(store: kvstore.Store) -> None:
    """Entries written before "auto" was the default (plain JSON) are read as they were."""
    old = cached(store, name="upgrade", serializer="json")(lambda x: {"x": x, "v": "old"})
    assert old(1) == {"x": 1, "v": "old"}
    store_of = old.store
    store_of.put(old.cache_key(2), b'[2,"written by hand",null]')
    seen = Counter()

    @cached(store, name="upgrade")
    def new(x: int) -> Any:
        seen.add(x)
        return b"new"

    assert new(1) == {"x": 1, "v": "old"}
    assert new(2) == [2, "written by hand", None]
    assert seen.calls == []


def test_a_bytes_entry_is_a_miss_for_a_json_only_reader(store: kvstore.Store) -> None:
    """What a version that knows only JSON does with a bytes entry: a miss, never bytes
    misread as JSON (no JSON text starts with the tag)."""
    for data in BYTES_RESULTS:
        with pytest.raises(ValueError):
            JSON.loads(b"B" + data)
    writer = cached(store, name="mixed")(lambda x: b"\xff\x00 body")
    assert writer(1) == b"\xff\x00 body"
    seen = Counter()

    @cached(store, name="mixed", serializer="json")
    def json_only(x: int) -> str:
        seen.add(x)
        return "recomputed"

    assert json_only(1) == "recomputed"
    assert json_only(1) == "recomputed"
    assert len(seen) == 1
    assert writer(1) == "recomputed"  # overwritten with JSON, which "auto" reads


def test_an_explicit_json_serializer_stays_json_only(store: kvstore.Store) -> None:
    @cached(store, serializer="json", lock_timeout=30)
    def f(x: int) -> bytes:
        return b"body"

    with pytest.raises(TypeError, match=r"cannot store.*'auto'"):
        f(1)
    assert len(f.store) == 0
    start = time.monotonic()
    with pytest.raises(TypeError):
        f(1)  # the lock was released
    assert time.monotonic() - start < 5


def test_custom_and_raw_serializers_get_bytes_untouched(store: kvstore.Store) -> None:
    class Reversing:
        def __init__(self) -> None:
            self.dumped: list[Any] = []

        def dumps(self, obj: Any) -> bytes:
            self.dumped.append(obj)
            return bytes(obj)[::-1]

        def loads(self, data: bytes) -> Any:
            return data[::-1]

    rev = Reversing()

    @cached(store, serializer=rev)
    def f(x: int) -> bytes:
        return b"abc"

    assert f(1) == f(1) == b"abc"
    assert rev.dumped == [b"abc"]
    assert f.store.get(f.cache_key(1)) == b"cba"  # no tag: the serializer's bytes as they are

    @cached(store, serializer="raw")
    def g(x: int) -> bytes:
        return b"Braw"

    assert g(1) == g(1) == b"Braw"
    assert g.store.get(g.cache_key(1)) == b"Braw"


def test_refresh_switches_between_bytes_and_json(store: kvstore.Store) -> None:
    state: dict[str, Any] = {"value": b"v1"}
    seen = Counter()

    @cached(store)
    def read(key: str) -> Any:
        seen.add(key)
        return state["value"]

    assert read("k") == b"v1"
    for value in [b"\xff\x00", b"", None, {"now": ["json"]}, "B", b"B", b"v1"]:
        state["value"] = value
        assert read.refresh("k") == value
        got = read("k")
        assert got == value and type(got) is type(value)
    assert len(seen) == 8


def test_bytes_results_inside_a_transaction(store: kvstore.Store) -> None:
    @cached(store)
    def f(x: int) -> bytes:
        return bytes([x]) * 3

    with pytest.raises(RuntimeError), store.transaction():
        assert f(255) == b"\xff\xff\xff"
        assert f(255) == b"\xff\xff\xff"
        raise RuntimeError("roll back")
    assert len(f.store) == 0
    with store.transaction():
        assert f(0) == b"\x00\x00\x00"
    assert f(0) == b"\x00\x00\x00"


def test_async_bytes_and_json_results(store: kvstore.Store) -> None:
    large = random.Random(7).randbytes(DEFAULT_CHUNK_SIZE + 1000)
    values: dict[str, Any] = {
        "empty": b"",
        "binary": b"\xff\x00",
        "large": large,
        "none": None,
        "nested": {"a": [1, {"b": None}], "c": "d"},
    }
    seen = Counter()

    @cached(store)
    async def fetch(name: str) -> Any:
        seen.add(name)
        await asyncio.sleep(0.01)
        return values[name]

    async def main() -> None:
        for name, value in values.items():
            assert await fetch(name) == value
            got = await fetch(name)
            assert got == value and type(got) is type(value)
        values["empty"] = b"\x00refreshed"
        assert await fetch.refresh("empty") == b"\x00refreshed"
        assert await fetch("empty") == b"\x00refreshed"
        fetch.invalidate("large")
        results = await asyncio.gather(*(fetch("large") for _ in range(5)))
        assert results == [large] * 5

    asyncio.run(main())
    assert len(seen) == len(values) + 2  # one refresh, one recompute after invalidate


# -- exceptions and locks ----------------------------------------------------------------------------
def test_exception_propagates_and_releases_the_lock(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store, lock_timeout=30)
    def f(x: int) -> int:
        seen.add(x)
        if len(seen) == 1:
            raise ValueError("first call fails")
        return x

    with pytest.raises(ValueError, match="first call fails"):
        f(5)
    assert len(f.store) == 0
    start = time.monotonic()
    assert f(5) == 5
    assert time.monotonic() - start < 5  # not blocked by a leftover lock
    assert len(seen) == 2
    assert _sql.cache_locks(f).keys() == []  # no lock left behind


def test_a_lock_left_by_a_crashed_caller_expires(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store, lock_timeout=0.3)
    def f(x: int) -> int:
        seen.add(x)
        return x

    # The clock starts before the lock is written: the lock expires 0.3 s after the put, so
    # the call cannot return sooner than that after `start`, however late this thread is
    # scheduled between the put and the call (a start taken after the put made the lower
    # bound flaky under load).
    start = time.monotonic()
    # what a caller that died mid-computation leaves behind
    _sql.cache_locks(f).put(f.cache_key(1), b"dead", ttl_secs=0.3, expected_version=0)
    assert f(1) == 1
    waited = time.monotonic() - start
    assert 0.25 <= waited < 10
    assert len(seen) == 1


# -- wrapper metadata and validation ---------------------------------------------------------------
def test_wraps_metadata(store: kvstore.Store) -> None:
    def fetch(url: str) -> str:
        """Fetch a URL."""
        return url

    wrapped = cached(store)(fetch)
    assert wrapped.__name__ == "fetch"
    assert wrapped.__doc__ == "Fetch a URL."
    assert wrapped.__qualname__ == fetch.__qualname__
    assert wrapped.__module__ == __name__
    assert wrapped.__wrapped__ is fetch
    assert (
        wrapped.store.namespace_name == f"{store.namespace_name}/c/{__name__}.{fetch.__qualname__}"
    )
    assert "fetch" in repr(wrapped)


def test_long_names_are_shortened_deterministically(store: kvstore.Store) -> None:
    def f(x: int) -> int:
        return x

    f.__qualname__ = "q" * 300
    a = cached(store)(f)
    b = cached(store)(f)
    assert a.store.namespace_name == b.store.namespace_name
    assert len(_sql.cache_name(a)) == 120
    assert a(1) == 1


def test_bad_arguments_are_refused_at_decoration(store: kvstore.Store) -> None:
    def f(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="parentheses"):
        cached(f)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"kvstore\.Store"):
        cached({})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl_secs"):
        cached(store, ttl_secs=-1)
    with pytest.raises(ValueError, match="ttl_secs"):
        cached(store, ttl_secs="soon")
    with pytest.raises(ValueError, match=r"unknown serializer 'yaml'.*'auto', 'json'"):
        cached(store, serializer="yaml")
    with pytest.raises(TypeError, match="key="):
        cached(store, key="url")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache name"):
        cached(store, name="")
    with pytest.raises(ValueError, match="cache name"):
        cached(store, name="x" * 121)
    with pytest.raises(TypeError, match="cache name"):
        cached(store, name=3)  # type: ignore[arg-type]
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lock_timeout"):
            cached(store, lock_timeout=bad)
    with pytest.raises(TypeError, match="lock_timeout"):
        cached(store, lock_timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lambda"):
        cached(store)(lambda x: x)

    def gen(n: int) -> Any:
        yield n

    with pytest.raises(TypeError, match="generator"):
        cached(store)(gen)
    with pytest.raises(TypeError, match="above"):
        cached(store)(staticmethod(f))
    assert store.keys() == []


# -- methods --------------------------------------------------------------------------------------
def test_methods_need_a_key_for_self(store: kvstore.Store) -> None:
    class Plain:
        @cached(store)
        def get(self, x: int) -> int:
            return x

    with pytest.raises(TypeError, match=r"argument 'self' is Plain"):
        Plain().get(1)


def test_methods_with_a_key_function(store: kvstore.Store) -> None:
    class Api:
        def __init__(self, region: str) -> None:
            self.region = region
            self.calls: list[str] = []

        @cached(store, key=lambda self, path: f"{self.region}:{path}")
        def fetch(self, path: str) -> str:
            """Fetch a path."""
            self.calls.append(path)
            return f"{self.region}/{path}"

    eu, us, eu2 = Api("eu"), Api("us"), Api("eu")
    assert eu.fetch("a") == "eu/a"
    assert eu.fetch("a") == "eu/a"
    assert us.fetch("a") == "us/a"
    assert eu2.fetch("a") == "eu/a"  # another instance with the same key: a hit
    assert eu.calls == ["a"] and us.calls == ["a"] and eu2.calls == []
    # the helpers are bound too
    assert eu.fetch.cache_key("a") == "eu:a"
    assert Api.fetch.cache_key(eu, "a") == "eu:a"
    assert Api.fetch(eu, "a") == "eu/a"
    assert eu.fetch.refresh("a") == "eu/a"
    assert eu.calls == ["a", "a"]
    us.fetch.invalidate("a")
    assert sorted(Api.fetch.store.keys()) == ["eu:a"]
    assert eu.fetch.__doc__ == "Fetch a path."
    assert "bound" in repr(eu.fetch)


def test_methods_of_encodable_instances(store: kvstore.Store) -> None:
    class Point(tuple[int, int]):
        """A tuple subclass is encoded as its items."""

        @cached(store)
        def norm(self) -> int:
            return abs(self[0]) + abs(self[1])

    assert Point((3, -4)).norm() == 7
    assert Point((3, -4)).norm.cache_key() == Point((3, -4)).norm.cache_key()
    assert len(Point.norm.store) == 1


# -- async ------------------------------------------------------------------------------------------
def test_async_functions(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    async def fetch(url: str) -> str | None:
        seen.add(url)
        await asyncio.sleep(0.01)
        return None if url == "none" else url.upper()

    assert asyncio.iscoroutinefunction(fetch)

    async def main() -> None:
        assert await fetch("a") == "A"
        assert await fetch("a") == "A"
        assert await fetch("none") is None
        assert await fetch("none") is None
        assert await fetch.refresh("a") == "A"
        fetch.invalidate("none")
        assert await fetch("none") is None
        # concurrent callers of one missing key: one computation
        results = await asyncio.gather(*(fetch("b") for _ in range(6)))
        assert results == ["B"] * 6

    asyncio.run(main())
    assert seen.calls == ["a", "none", "a", "none", "b"]
    fetch.cache_clear()
    assert len(fetch.store) == 0


def test_async_exceptions_release_the_lock(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store, lock_timeout=30)
    async def f(x: int) -> int:
        seen.add(x)
        if len(seen) == 1:
            raise LookupError("nope")
        return x

    async def main() -> None:
        with pytest.raises(LookupError):
            await f(1)
        assert await asyncio.wait_for(f(1), timeout=5) == 1

    asyncio.run(main())
    assert len(seen) == 2


def test_async_methods(store: kvstore.Store) -> None:
    class Service:
        def __init__(self, name: str) -> None:
            self.name = name

        @cached(store, key=lambda self, x: f"{self.name}-{x}")
        async def get(self, x: int) -> int:
            return x * 2

    s = Service("svc")

    async def main() -> tuple[int, int]:
        return await s.get(2), await s.get.refresh(2)

    assert asyncio.run(main()) == (4, 4)
    assert Service.get.store.keys() == ["svc-2"]


# -- transactions --------------------------------------------------------------------------------
def test_entries_written_in_a_transaction_roll_back_with_it(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store)
    def f(x: int) -> int:
        seen.add(x)
        return x

    with pytest.raises(RuntimeError), store.transaction():
        assert f(1) == 1
        assert f(1) == 1  # visible inside the transaction
        raise RuntimeError("roll back")
    assert len(f.store) == 0
    with store.transaction():
        f(2)
    assert f.store.keys() == [f.cache_key(2)]
    assert seen.calls == [1, 2]


def test_inside_a_transaction_calls_do_not_wait_for_locks(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store, lock_timeout=30)
    def f(x: int) -> int:
        seen.add(x)
        return x

    locks = _sql.cache_locks(f)
    locks.put(f.cache_key(1), b"held elsewhere", ttl_secs=30, expected_version=0)
    start = time.monotonic()
    with store.transaction():
        assert f(1) == 1
    assert time.monotonic() - start < 5
    assert f(1) == 1  # stored by the transaction
    assert len(seen) == 1
    assert locks.keys() == [f.cache_key(1)]  # the other caller's lock is not ours to remove


# -- the store: a factory called at first use, and bind() ------------------------------------------
class Factory:
    """A store factory that counts its calls (from any thread) and returns ``result``."""

    def __init__(self, result: Any, delay: float = 0.0) -> None:
        self.result = result
        self.delay = delay
        self.calls = Counter()

    def __call__(self) -> Any:
        self.calls.add(threading.get_ident())
        if self.delay:
            time.sleep(self.delay)
        return self.result


def test_a_store_factory_is_called_at_first_use_once(store: kvstore.Store) -> None:
    factory = Factory(store)
    seen = Counter()

    @cached(factory, name="factory.square")
    def square(x: int) -> int:
        seen.add(x)
        return x * x

    # decorating, naming and showing the function call no factory
    assert len(factory.calls) == 0
    assert square.__name__ == "square"
    assert "not resolved yet" in repr(square)
    assert len(factory.calls) == 0
    assert square(3) == 9
    assert len(factory.calls) == 1
    assert square(3) == 9
    assert square(4) == 16
    assert square.refresh(4) == 16
    square.invalidate(4)
    assert square.cache_key(3) == cached(store, name="factory.square")(
        square.__wrapped__
    ).cache_key(3)
    assert len(factory.calls) == 1  # once, whatever is used after
    assert seen.calls == [3, 4, 4]
    assert square.store.namespace_name == f"{store.namespace_name}/c/factory.square"
    assert repr(square).endswith(f"in '{store.namespace_name}/c/factory.square'>")
    # the results are where cached(store) keeps them: one store, one set of entries
    again = cached(store, name="factory.square")(lambda x: -1)
    assert again(3) == 9


def test_any_helper_is_a_first_use(store: kvstore.Store) -> None:
    for use in (
        lambda f: f.store,
        lambda f: f.cache_key(1),
        lambda f: f.invalidate(1),
        lambda f: f.cache_clear(),
        lambda f: f.refresh(1),
    ):
        factory = Factory(store)
        f = cached(factory, name="factory.helpers")(lambda x: x)
        use(f)
        assert len(factory.calls) == 1
        assert f(1) == 1
        assert len(factory.calls) == 1


def _import_module(path: Any, source: str) -> Any:
    """Import ``source`` as the module ``app_tasks`` from a file, as an application's import
    would (decorators run at import time), without leaving it in sys.modules."""
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location("app_tasks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decorated_at_import_time_with_a_factory_then_bound(
    store: kvstore.Store, tmp_path: Any
) -> None:
    tasks = _import_module(
        tmp_path / "app_tasks.py",
        """
        import kvstore

        STORE = None  # the application sets it when it starts
        calls = []

        @kvstore.cached(lambda: STORE)
        def double(x):
            calls.append(x)
            return 2 * x
        """,
    )
    # called before the application has a store: the factory's None is refused, and the
    # function is not called
    with pytest.raises(
        TypeError, match=r"store factory of cached app_tasks\.double\(\) returned None"
    ):
        tasks.double(1)
    assert tasks.calls == []
    tasks.STORE = store  # the application starts
    assert tasks.double(1) == 2
    assert tasks.double(1) == 2
    assert tasks.calls == [1]
    assert tasks.double.store.namespace_name == f"{store.namespace_name}/c/app_tasks.double"


def test_decorated_at_import_time_then_bound_by_the_app_factory(
    store: kvstore.Store, tmp_path: Any
) -> None:
    tasks = _import_module(
        tmp_path / "app_tasks.py",
        """
        import kvstore

        calls = []

        def _no_store():
            raise RuntimeError("init_app() has not run")

        @kvstore.cached(_no_store)
        def double(x):
            calls.append(x)
            return 2 * x

        def init_app(store):
            double.bind(store)
        """,
    )
    # a factory that raises is not remembered: its error reaches the caller at each use
    for _ in range(2):
        with pytest.raises(RuntimeError, match="init_app"):
            tasks.double(1)
    assert tasks.calls == []
    tasks.init_app(store)
    assert tasks.double(1) == 2
    assert tasks.double(1) == 2
    assert tasks.calls == [1]


def test_bind_swaps_the_store_for_a_test(store: kvstore.Store) -> None:
    seen = Counter()

    @cached(store, name="swap.f")
    def f(x: int) -> int:
        seen.add(x)
        return x + 1

    assert f(1) == 2
    test_store = store.namespace(store.namespace_name + "-swap")
    f.bind(test_store)  # a test swaps in its own store
    assert f.store.namespace_name == f"{test_store.namespace_name}/c/swap.f"
    assert f(1) == 2  # a miss there: computed again
    assert seen.calls == [1, 1]
    assert len(f.store) == 1
    f.cache_clear()  # clears the test store's entries only
    f.bind(store)  # and puts the application's back
    assert f(1) == 2
    assert seen.calls == [1, 1]  # the application's entry was never touched
    # bind takes a factory too: called at the next use, once
    factory = Factory(test_store)
    f.bind(factory)
    assert len(factory.calls) == 0
    assert f(5) == 6
    assert f(5) == 6
    assert len(factory.calls) == 1
    assert seen.calls == [1, 1, 5]
    assert test_store.keys() == []  # cache entries never show in the store's own keys


def test_bind_on_a_method_rebinds_it_for_every_instance(store: kvstore.Store) -> None:
    class Client:
        def __init__(self, region: str) -> None:
            self.region = region

        @cached(lambda: store, key=lambda self, city: f"{self.region}/{city}")
        def forecast(self, city: str) -> str:
            return f"sun in {city}"

    eu, us = Client("eu"), Client("us")
    assert eu.forecast("Paris") == "sun in Paris"
    other = store.namespace(store.namespace_name + "-method")
    us.forecast.bind(other)
    assert eu.forecast.store.namespace_name == us.forecast.store.namespace_name
    assert Client.forecast.store.namespace_name.startswith(other.namespace_name + "/c/")
    assert us.forecast("Rome") == "sun in Rome"
    assert Client.forecast.store.keys() == ["us/Rome"]


def test_async_functions_with_a_factory(store: kvstore.Store) -> None:
    factory = Factory(store)
    seen = Counter()

    @cached(factory, name="factory.price")
    async def price(symbol: str) -> float:
        seen.add(symbol)
        await asyncio.sleep(0.01)
        return 42.0

    assert asyncio.iscoroutinefunction(price)
    assert len(factory.calls) == 0

    async def main() -> list[float]:
        return list(await asyncio.gather(*(price("ACME") for _ in range(3))))

    assert asyncio.run(main()) == [42.0] * 3
    assert asyncio.run(price.refresh("ACME")) == 42.0
    assert len(factory.calls) == 1
    assert seen.calls.count("ACME") == 2  # the gathered calls computed once, refresh again


def test_a_factory_returning_no_store_raises_type_error_at_each_use(store: kvstore.Store) -> None:
    factory = Factory("sqlite://")
    seen = Counter()
    f = cached(factory, name="factory.bad")(seen.add)
    with pytest.raises(
        TypeError,
        match=r"store factory of cached factory\.bad\(\) returned str 'sqlite://': cached\(\) "
        r"keeps results in a kvstore\.Store",
    ):
        f(1)
    with pytest.raises(TypeError, match="returned str"):
        assert f.store is None
    assert len(factory.calls) == 2  # a wrong answer is not remembered
    for wrong, shown in (
        (None, "returned None"),
        (PrefixDecorator("p-", store), "returned PrefixDecorator"),
        (store.dict("d"), "returned PersistentDict"),
    ):
        factory.result = wrong
        with pytest.raises(TypeError, match=shown):
            f(1)
    assert seen.calls == []
    factory.result = store
    f(1)
    assert seen.calls == [1]


def test_a_factory_that_calls_its_own_function_is_an_error(store: kvstore.Store) -> None:
    def factory() -> kvstore.Store:
        f(0)  # the store's own set-up must not need the cache it makes
        return store

    f = cached(factory, name="factory.loop")(lambda x: x)
    with pytest.raises(RuntimeError, match=r"factory of cached factory\.loop\(\) uses"):
        f(1)
    f.bind(store)
    assert f(1) == 1


def test_bad_stores_and_factories_are_refused(store: kvstore.Store) -> None:
    with pytest.raises(TypeError, match=r"takes arguments.*parentheses"):
        cached(lambda s: store)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match=r"kvstore\.Store.*not PrefixDecorator"):
        cached(PrefixDecorator("p-", store))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"kvstore\.Store.*not str"):
        cached("sqlite://")  # type: ignore[arg-type]
    f = cached(store)(len)
    with pytest.raises(TypeError, match=r"bind\(\) keeps results in a kvstore\.Store.*not int"):
        f.bind(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"bind\(\).*takes arguments"):
        f.bind(lambda s: s)  # type: ignore[arg-type]
    assert f("abc") == 3  # still on its store

    # @kvstore.cached without parentheses above a function of no arguments takes it for a
    # store factory; calling what is left says what happened
    @cached  # type: ignore[arg-type]
    def today() -> str:
        return "monday"

    with pytest.raises(TypeError, match="without parentheses"):
        today()  # type: ignore[call-arg]


# -- concurrency: threads --------------------------------------------------------------------------
def _warm_up(store: kvstore.Store) -> None:
    # Work-around (reported to the lead): connect() creates the tables without switching a new
    # SQLite file to WAL; the first raw connections do, and when several race to do it, the
    # losers fail at once with "database is locked". One call first switches the file.
    assert "warm-up" not in store


def _run_threads(n: int, fn: Callable[[], Any]) -> list[Any]:
    barrier = threading.Barrier(n)

    def task() -> Any:
        barrier.wait(timeout=30)
        return fn()

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(task) for _ in range(n)]
        return [f.result(timeout=60) for f in futures]


@pytest.mark.timeout(120)
def test_threads_compute_a_missing_key_once(shared_store: kvstore.Store) -> None:
    seen = Counter()
    _warm_up(shared_store)

    @cached(shared_store, lock_timeout=30)
    def slow(word: str) -> str:
        seen.add(word)
        time.sleep(0.3)
        return word.upper()

    results = _run_threads(8, lambda: slow("hello"))
    assert results == ["HELLO"] * 8
    assert len(seen) == 1


@pytest.mark.timeout(120)
def test_concurrent_first_calls_call_the_factory_once(shared_store: kvstore.Store) -> None:
    seen = Counter()
    _warm_up(shared_store)
    factory = Factory(shared_store, delay=0.2)  # slow: every thread arrives while it runs

    @cached(factory, lock_timeout=30)
    def slow(word: str) -> str:
        seen.add(word)
        time.sleep(0.1)
        return word.upper()

    results = _run_threads(8, lambda: slow("hello"))
    assert results == ["HELLO"] * 8
    assert len(factory.calls) == 1
    assert len(seen) == 1


def test_concurrent_first_uses_resolve_one_store(store: kvstore.Store) -> None:
    # every backend: the threads only resolve the store (cache_key reads no database)
    factory = Factory(store, delay=0.1)
    f = cached(factory, name="factory.threads")(lambda x: x)
    keys = _run_threads(8, lambda: f.cache_key(1))
    assert len(set(keys)) == 1
    assert len(factory.calls) == 1
    stores = _run_threads(4, lambda: f.store)
    assert all(s is stores[0] for s in stores)


@pytest.mark.timeout(120)
def test_waiting_threads_get_a_bytes_result(shared_store: kvstore.Store) -> None:
    seen = Counter()
    _warm_up(shared_store)

    @cached(shared_store, lock_timeout=30)
    def render(name: str) -> bytes:
        seen.add(name)
        time.sleep(0.3)
        return b"\x89PNG\r\n\x1a\n" + name.encode()

    results = _run_threads(4, lambda: render("logo"))
    assert results == [b"\x89PNG\r\n\x1a\nlogo"] * 4
    assert len(seen) == 1


@pytest.mark.timeout(120)
def test_threads_with_their_own_connections(shared_backend: Any) -> None:
    seen = Counter()
    stores = [shared_backend.connect(own_engine=True) for _ in range(4)]
    try:
        _warm_up(stores[0])
        fns = [
            cached(s, name="per-connection", lock_timeout=30)(_slow_counted(seen)) for s in stores
        ]
        it = iter(fns)
        lock = threading.Lock()

        def call() -> int:
            with lock:
                fn = next(it)
            return int(fn(21))

        assert _run_threads(4, call) == [42] * 4
        assert len(seen) == 1
    finally:
        for s in stores:
            s.close()


def _slow_counted(seen: Counter) -> Callable[[int], int]:
    def double(x: int) -> int:
        seen.add(x)
        time.sleep(0.3)
        return 2 * x

    return double


@pytest.mark.timeout(120)
def test_when_the_computation_fails_a_waiting_thread_computes(shared_store: kvstore.Store) -> None:
    seen = Counter()
    _warm_up(shared_store)

    @cached(shared_store, lock_timeout=30)
    def flaky(x: int) -> int:
        seen.add(x)
        time.sleep(0.2)
        if len(seen) == 1:
            raise ConnectionError("first try fails")
        return x

    def call() -> Any:
        try:
            return flaky(7)
        except ConnectionError as exc:
            return exc

    start = time.monotonic()
    results = _run_threads(4, call)
    assert time.monotonic() - start < 10  # waiters took over at once, not after lock_timeout
    assert sum(isinstance(r, ConnectionError) for r in results) == 1
    assert results.count(7) == 3
    assert len(seen) == 2


# -- concurrency: processes ------------------------------------------------------------------------
_PROCESS_STORE: kvstore.Store | None = None


def shout(word: str) -> str:
    """Module level, so spawned processes can import it; counts its calls in the database."""
    assert _PROCESS_STORE is not None
    _PROCESS_STORE.incr("shout-calls")
    time.sleep(0.5)
    return word.upper() + "!"


def _process_main(url: str, namespace: str, barrier: Any, results: Any) -> None:
    global _PROCESS_STORE
    store = kvstore.connect(url, namespace=namespace)
    _PROCESS_STORE = store
    try:
        fn = cached(store, name="tests.shout", lock_timeout=30)(shout)
        barrier.wait(timeout=60)
        results.put(fn("hello"))
    finally:
        store.close()


@pytest.mark.timeout(180)
def test_processes_compute_a_missing_key_once(shared_backend: Any) -> None:
    parent = shared_backend.connect()
    try:
        _warm_up(parent)
    finally:
        parent.close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_main,
            args=(shared_backend.url, shared_backend.namespace, barrier, results),
        )
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    try:
        got = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert [p.exitcode for p in procs] == [0, 0, 0]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert got == ["HELLO!"] * 3
    store = shared_backend.connect()
    try:
        assert store.get("shout-calls") == b"1"
        # this process derives the same key (str hashing differs per process; the key must not)
        here = cached(store, name="tests.shout")(shout)
        assert here("hello") == "HELLO!"
        assert store.get("shout-calls") == b"1"
    finally:
        store.close()
