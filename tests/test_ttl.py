"""Time to live: minimalkv's TimeToLiveMixin semantics, plus timedelta and purge."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

import kvstore

SHORT = 0.3


def _expire(store: kvstore.Store, key: str) -> None:
    store.put(key, b"gone soon", ttl_secs=SHORT)
    time.sleep(SHORT + 0.1)


def test_expired_entries_are_invisible_everywhere(store: kvstore.Store) -> None:
    store.put("live", b"1")
    _expire(store, "dead")
    with pytest.raises(KeyError):
        store.get("dead")
    assert "dead" not in store
    assert store.keys() == ["live"]
    assert list(store.iter_keys()) == ["live"]
    assert len(store) == 1
    assert store.get_many(["dead", "live"]) == {"live": b"1"}
    with pytest.raises(KeyError):
        store.stat("dead")
    with pytest.raises(KeyError):
        store.open("dead")
    with pytest.raises(KeyError):
        store.copy("dead", "x")
    with pytest.raises(KeyError):
        store.move("dead", "x")
    assert list(store.iter_prefixes("-")) == ["live"]


def test_expired_key_behaves_as_missing_for_writes(store: kvstore.Store) -> None:
    _expire(store, "k")
    store.put("k", b"new", expected_version=0)  # "must not exist": an expired entry does not
    assert store.get("k") == b"new"
    _expire(store, "n")
    store.put("n", b"41", ttl_secs=SHORT)
    time.sleep(SHORT + 0.1)
    assert store.incr("n") == 1  # starts again at initial
    _expire(store, "c")
    created = store.stat("k").created_at
    store.put("c", b"fresh")
    assert store.stat("c").created_at >= created


def test_ttl_arguments(store: kvstore.Store) -> None:
    store.put("a", b"", 100)  # positional, as in minimalkv
    store.put("b", b"", ttl_secs=dt.timedelta(minutes=5))
    store.put("c", b"", ttl_secs=kvstore.FOREVER)
    store.put("d", b"", ttl_secs=kvstore.NOT_SET)
    store.put("e", b"", ttl_secs=2.5)
    now = dt.datetime.now(dt.UTC)
    ea = store.stat("a").expires_at
    eb = store.stat("b").expires_at
    assert ea is not None and 95 < (ea - now).total_seconds() <= 100.5
    assert eb is not None and 295 < (eb - now).total_seconds() <= 300.5
    assert store.stat("c").expires_at is None
    assert store.stat("d").expires_at is None


@pytest.mark.parametrize("bad", [-1, -0.5, "soon", [1], float("nan"), True])
def test_bad_ttl_is_a_valueerror_and_writes_nothing(store: kvstore.Store, bad: Any) -> None:
    with pytest.raises(ValueError, match="ttl_secs"):
        store.put("k", b"v", ttl_secs=bad)
    with pytest.raises(ValueError):
        store.put_many([("k", b"v")], ttl_secs=bad)
    assert "k" not in store


def test_default_ttl_secs(backend: Any) -> None:
    with backend.connect(default_ttl_secs=SHORT) as s:
        assert s.default_ttl_secs == SHORT
        s.put("a", b"1")
        s.put("b", b"2", ttl_secs=kvstore.FOREVER)
        time.sleep(SHORT + 0.1)
        assert s.keys() == ["b"]
    with pytest.raises(ValueError):
        kvstore.connect("sqlite://", default_ttl_secs=-3)


def test_ttl_zero_expires_at_once(store: kvstore.Store) -> None:
    store.put("k", b"v", ttl_secs=0)
    assert "k" not in store


def test_purge_expired_removes_only_expired(store: kvstore.Store) -> None:
    store.put_many([(f"x{i}", b"v") for i in range(25)], ttl_secs=SHORT)
    store.put("keep", b"v")
    store.put("later", b"v", ttl_secs=3600)
    time.sleep(SHORT + 0.1)
    assert store.purge_expired() == 25
    assert store.purge_expired() == 0
    assert store.keys() == ["keep", "later"]


def test_purge_expired_stays_in_its_namespace(store: kvstore.Store) -> None:
    other = store.namespace(store.namespace_name + "-o")
    try:
        other.put("o", b"", ttl_secs=SHORT)
        store.put("s", b"", ttl_secs=SHORT)
        time.sleep(SHORT + 0.1)
        assert store.purge_expired() == 1
        assert other.purge_expired() == 1
    finally:
        other.delete_many(other.keys())


def test_ttl_on_large_values_and_files(store: kvstore.Store, tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"z" * 5000)
    store.put_file("f", str(path), ttl_secs=SHORT)
    assert store.stat("f").expires_at is not None
    time.sleep(SHORT + 0.1)
    assert "f" not in store
