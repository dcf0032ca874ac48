"""Batched reads of entries with their details: iter_stat, iter_items, iter_entries, the
snapshot they can run in, and get_many in one statement on PostgreSQL (issue 12)."""

from __future__ import annotations

import time
from typing import Any

import _sql
import pytest

import kvstore
from kvstore import transfer


def _populate(store: kvstore.Store) -> dict[str, bytes]:
    values = {f"p-{n:04d}": str(n).encode() * (n % 7) for n in range(1200)}
    store.put_many(values)
    big = bytes(range(256)) * 5000  # 1.25 MB: chunked
    store.put("p-big", big, metadata={"kind": "blob"}, content_type="application/x-test")
    values["p-big"] = big
    store.put("q-other", b"not in the prefix")
    store.put("p-gone", b"expired", ttl_secs=0.001)
    time.sleep(0.01)
    return values


def test_iter_entries_items_and_stat_agree_with_get_and_stat(store: kvstore.Store) -> None:
    values = _populate(store)
    entries = list(store.iter_entries("p-"))
    assert [info.key for info, _ in entries] == sorted(values)
    for info, data in entries:
        assert data == values[info.key]
        assert info == store.stat(info.key)
    assert list(store.iter_items("p-")) == sorted(values.items())
    assert list(store.iter_stat("p-")) == [info for info, _ in entries]
    assert [i.key for i in store.iter_stat()] == sorted([*values, "q-other"])
    assert list(store.iter_items("nothing-")) == []
    with pytest.raises(kvstore.InvalidKeyError):
        list(store.iter_stat("bad key"))


@pytest.mark.async_exclude(reason="counts the statements on the sync store's connection")
def test_iter_stat_reads_a_batch_per_statement(store: kvstore.Store) -> None:
    _populate(store)
    with _sql.recorded(store) as rec:
        n = sum(1 for _ in store.iter_stat("p-"))
    assert n == 1201
    scans = [s for s in rec.on(store.tables.entries) if s.verb == "SELECT"]
    assert len(scans) <= 4, [s.sql for s in scans]  # 500 per statement, not one per key


@pytest.mark.async_exclude(reason="counts the statements on the sync store's connection")
def test_get_many_is_one_statement_on_postgresql(store: kvstore.Store) -> None:
    keys = [f"g-{n}" for n in range(3000)]
    store.put_many({k: k.encode() for k in keys[::2]})
    with _sql.recorded(store) as rec:
        got = store.get_many(keys)
    assert got == {k: k.encode() for k in keys[::2]}
    reads = [s for s in rec.on(store.tables.entries) if s.verb == "SELECT"]
    if store.dialect_name == "postgresql":
        assert len(reads) == 1 and "ANY" in reads[0].sql
    elif store.dialect_name == "mariadb":
        assert len(reads) == 1  # one IN (...): MariaDB takes thousands of parameters
    else:
        assert len(reads) >= 3  # SQLite: IN (...) batches within its parameter limit


def test_a_snapshot_does_not_see_later_writes(shared_backend: Any) -> None:
    store = shared_backend.connect()
    other = shared_backend.connect(own_engine=True)
    try:
        store.put_many({"a": b"1", "b": b"1"})
        with store.snapshot() as snap:
            assert snap.get("a") == b"1"  # the snapshot starts here
            other.put("a", b"2")
            other.put("c", b"new")
            other.delete("b")
            assert snap.get("a") == b"1" and snap.get("b") == b"1" and "c" not in snap
            assert [i.key for i in snap.iter_stat()] == ["a", "b"]
        assert store.get("a") == b"2" and "b" not in store and store.get("c") == b"new"
    finally:
        store.close()
        other.close()


def test_export_snapshot_is_one_moment(shared_backend: Any) -> None:
    store = shared_backend.connect()
    other = shared_backend.connect(own_engine=True)
    try:
        store.put_many({f"k{n:03d}": b"old" for n in range(1200)})
        lines = transfer.export_lines(store, snapshot=True)
        first = next(lines)
        # rewritten while the export runs: the export still sees the moment it began
        other.put_many({f"k{n:03d}": b"new" for n in range(1200)})
        rest = list(lines)
        assert len(rest) == 1199
        assert all('"value":"old"' in line for line in [first, *rest])
    finally:
        store.close()
        other.close()
