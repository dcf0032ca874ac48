"""``len()`` of stores, dicts and sets is exact after every kind of write, respects TTL before
and after a purge, and stays exact under concurrent writers (issue 12: on SQLite it reads a
counter kept by triggers, on PostgreSQL two index-only counts).

Each check compares ``len()`` with the keys actually listed, so a counter that drifts fails."""

from __future__ import annotations

import io
import random
import threading
import time
from typing import Any

import _sql
import pytest

import kvstore


def _exact(store: Any) -> int:
    n = len(store)
    assert n == len(list(store.iter_keys())), "len() disagrees with the keys listed"
    return n


def test_len_follows_every_kind_of_write(store: kvstore.Store) -> None:
    assert _exact(store) == 0
    store.put("a", b"1")
    store.put("a", b"2")  # an overwrite is no new entry
    assert _exact(store) == 1
    store.put_many({f"m{i}": b"v" for i in range(50)})
    store.put_many({f"m{i}": b"w" for i in range(25, 75)})  # half of them overwrite
    assert _exact(store) == 76
    store.copy("a", "b")
    store.copy("a", "b")  # onto an existing key
    store.move("b", "c")
    assert _exact(store) == 77
    store.incr("n")
    store.incr("n")
    store.put("big", b"x" * 600_000)  # a blob in chunks
    store.put_file("file", io.BytesIO(b"y" * 300_000))
    assert _exact(store) == 80
    store.delete("a")
    store.delete("never-there")
    store.delete_many([f"m{i}" for i in range(60)] + ["missing"])
    assert _exact(store) == 19
    version = store.stat("c").version
    with pytest.raises(kvstore.ConflictError):
        store.delete("c", expected_version=version + 1)
    store.delete("c", expected_version=version)
    assert _exact(store) == 18


def test_a_failed_batch_and_a_rolled_back_transaction_leave_len_as_it_was(
    store: kvstore.Store,
) -> None:
    store.put_many({f"k{i}": b"v" for i in range(10)})
    with pytest.raises(TypeError):
        store.put_many([("ok", b"v"), ("bad", 42)])  # type: ignore[list-item]
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.put_many({f"t{i}": b"v" for i in range(10)})
        tx.delete("k0")
        assert len(tx) == 19
        raise RuntimeError("roll back")
    assert _exact(store) == 10
    with store.transaction() as tx:
        tx.put("t", b"v")
        with pytest.raises(RuntimeError), tx.transaction() as sp:  # a savepoint
            sp.delete("k1")
            sp.put("u", b"v")
            raise RuntimeError("roll back the savepoint")
        assert len(tx) == 11
    assert _exact(store) == 11


def test_expired_entries_are_never_counted_before_or_after_a_purge(store: kvstore.Store) -> None:
    store.put_many({f"live{i}": b"v" for i in range(5)})
    store.put_many({f"short{i}": b"v" for i in range(7)}, ttl_secs=0.2)
    store.put("long", b"v", ttl_secs=3600)
    assert _exact(store) == 13
    time.sleep(0.3)
    assert _exact(store) == 6
    store.put("short0", b"again")  # an expired entry written again counts again
    assert _exact(store) == 7
    assert store.purge_expired() == 6
    assert _exact(store) == 7
    store.put("short1", b"v", ttl_secs=0.2)
    time.sleep(0.3)
    store.put("short1", b"v")  # overwritten after it expired, before any purge
    assert _exact(store) == 8


def test_collections_and_namespaces_count_only_their_own(store: kvstore.Store) -> None:
    d = store.dict("d")
    s = store.set("s")
    d.update({f"k{i}": i for i in range(30)})
    s.update(range(12))
    store.put("plain", b"v")
    other = store.namespace("len-other")
    try:
        other.put_many({f"o{i}": b"v" for i in range(4)})
        assert (len(d), len(s), _exact(store), _exact(other)) == (30, 12, 1, 4)
        del d["k0"]
        d.pop("k1")
        d.popitem()
        d.setdefault("new", 1)
        s.discard(0)
        s.pop()
        s -= {5, 6}
        assert len(d) == 28 and len(d) == len(list(d))
        assert len(s) == 8 and len(s) == len(list(s))
        d.clear()
        s.clear()
        assert (len(d), len(s), _exact(store), _exact(other)) == (0, 0, 1, 4)
    finally:
        other.delete_many(other.keys())


def test_len_is_exact_under_concurrent_writers(shared_backend: Any) -> None:
    """Eight threads put and delete overlapping keys at once; afterwards len() is the number
    of keys there are."""
    store = shared_backend.connect()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            key = f"k{rng.randrange(40)}"
            if rng.random() < 0.6:
                store.put(key, b"v")
            else:
                store.delete(key)
            if rng.random() < 0.1:
                store.put_many({f"k{rng.randrange(40)}": b"b" for _ in range(5)})

    errors: list[BaseException] = []

    def run(seed: int) -> None:
        try:
            work(seed)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _exact(store) == len(set(store.keys()))
    store.close()


@pytest.mark.async_exclude(
    reason="writes rows with its own SQL through the sync store's connection (tests/_sql.py)"
)
def test_an_applications_own_sql_keeps_len_exact(store: kvstore.Store) -> None:
    """The counter is kept by triggers in the database, so rows an application deletes with
    its own SQL are counted too."""
    store.put_many({f"k{i}": b"v" for i in range(6)})
    assert (
        _sql.execute(store, "DELETE FROM {entries} WHERE namespace = :ns AND key IN ('k0', 'k1')")
        == 2
    )
    assert _exact(store) == 4
