"""The key-value API (minimalkv-compatible core), on every backend.

The contract runs on ``kv`` (tests/conftest.py): the store, a transaction of it, and the
prefix, URL-encoding and HMAC decorators over it, each on every backend. A test that cannot
hold for some of them says so with ``kv_only``/``kv_exclude`` and a reason; behaviour of the
Store alone (namespaces aside, connecting, pickling, the skip scan) takes ``store``.
ReadOnlyDecorator, which refuses every write, gets the read half of the contract.
"""

from __future__ import annotations

import datetime as dt
import io
import time
import string
from typing import Any

import _sql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvstore
from kvstore import ConflictError, InvalidKeyError, InvalidValueError
from kvstore.decorators import PrefixDecorator, ReadOnlyDecorator, URLEncodeKeysDecorator

KEY_ALPHABET = string.ascii_letters + string.digits + "!\"#$%&'()+,-.<=>?@[\\]^_`{}~"


def room(kv: kvstore.KeyValueStore) -> int:
    """The length of the longest key of plain letters ``kv`` accepts."""
    if isinstance(kv, PrefixDecorator):
        return kvstore.MAX_KEY_LENGTH - len(kv.prefix)
    return kvstore.MAX_KEY_LENGTH


def keys_of(kv: kvstore.KeyValueStore) -> st.SearchStrategy[str]:
    """Keys of every allowed character that ``kv`` accepts, up to the longest."""
    longest = room(kv)
    if isinstance(kv, URLEncodeKeysDecorator):
        longest //= 3  # a punctuation character is stored as "%XX"
    return st.text(alphabet=KEY_ALPHABET, min_size=1, max_size=longest)


def test_put_get_roundtrip(kv: kvstore.KeyValueStore) -> None:
    assert kv.put("a", b"hello") == "a"
    assert kv.get("a") == b"hello"
    kv.put("a", b"again")
    assert kv.get("a") == b"again"


def test_empty_value_is_a_value(kv: kvstore.KeyValueStore) -> None:
    kv.put("empty", b"")
    assert kv.get("empty") == b""
    assert "empty" in kv
    assert kv.keys() == ["empty"]
    assert kv.stat("empty").size == 0


def test_missing_key_raises_keyerror(kv: kvstore.KeyValueStore) -> None:
    with pytest.raises(KeyError) as info:
        kv.get("nope")
    assert info.value.args == ("nope",)
    assert isinstance(info.value, kvstore.KVStoreError)


def test_delete_missing_is_not_an_error(kv: kvstore.KeyValueStore) -> None:
    kv.delete("nope")
    kv.put("k", b"v")
    kv.delete("k")
    assert "k" not in kv
    with pytest.raises(KeyError):
        kv.get("k")


def test_bytes_like_values_are_accepted(kv: kvstore.KeyValueStore) -> None:
    kv.put("ba", bytearray(b"xy"))
    kv.put("mv", memoryview(b"zz"))
    assert kv.get("ba") == b"xy"
    assert kv.get("mv") == b"zz"


@pytest.mark.parametrize("value", ["text", 1, None, [b"x"]])
def test_non_bytes_value_raises_oserror_and_typeerror(
    kv: kvstore.KeyValueStore, value: object
) -> None:
    with pytest.raises(OSError) as info:
        kv.put("k", value)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, InvalidValueError)
    assert "'k'" in str(info.value)
    assert "k" not in kv


@pytest.mark.kv_exclude("urlencode", reason="URL encoding makes any str a valid key")
@pytest.mark.parametrize(
    "key",
    ["", "a b", "a/b", "a:b", "a*b", "ü", "x" * 251, "tab\t", "new\nline"],
)
def test_invalid_keys_raise_valueerror_naming_the_key(kv: kvstore.KeyValueStore, key: str) -> None:
    for call in (
        lambda: kv.put(key, b"v"),
        lambda: kv.get(key),
        lambda: kv.delete(key),
        lambda: key in kv,
        lambda: kv.stat(key),
        lambda: kv.incr(key),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert isinstance(info.value, InvalidKeyError)
        assert repr(key)[:40].strip("'") in str(info.value) or key == ""
    assert len(kv) == 0


@pytest.mark.parametrize("key", [1, b"bytes", None, ("t",)])
def test_non_str_keys_raise_valueerror(kv: kvstore.KeyValueStore, key: object) -> None:
    with pytest.raises(ValueError, match="keys are str"):
        kv.put(key, b"v")  # type: ignore[arg-type]


def test_longest_key_and_every_allowed_character(kv: kvstore.KeyValueStore) -> None:
    long_key = "k" * room(kv)
    kv.put(long_key, b"1")
    assert kv.get(long_key) == b"1"
    kv.put(KEY_ALPHABET, b"2")
    assert kv.get(KEY_ALPHABET) == b"2"
    assert kvstore.VALID_KEY_RE.fullmatch(KEY_ALPHABET)


@pytest.mark.kv_exclude(
    "urlencode", reason="iter_keys() streams in the order of the encoded keys; keys() is sorted"
)
def test_keys_are_sorted_in_code_point_order(kv: kvstore.KeyValueStore) -> None:
    keys = ["b", "B", "a", "A", "_", "~", "0", "a0", "a_", "Z", "{", "["]
    kv.put_many([(k, b"") for k in keys])
    assert kv.keys() == sorted(keys)
    assert list(kv.iter_keys()) == sorted(keys)
    assert list(kv) == sorted(keys)


def test_prefix_match_is_exact_for_like_wildcards(kv: kvstore.KeyValueStore) -> None:
    keys = ["a%b", "a%c", "axb", "a_b", "aXb", "a\\b", "A%b", "a%"]
    kv.put_many([(k, b"") for k in keys])
    assert kv.keys("a%") == ["a%", "a%b", "a%c"]
    assert kv.keys("a_") == ["a_b"]
    assert kv.keys("a\\") == ["a\\b"]
    assert kv.keys("A") == ["A%b"]
    assert kv.keys("a") == sorted(k for k in keys if k.startswith("a"))
    assert kv.keys("zzz") == []
    assert kv.keys("~") == []


def test_iter_keys_streams_past_one_batch(kv: kvstore.KeyValueStore) -> None:
    keys = [f"k{i:05d}" for i in range(2500)]
    kv.put_many([(k, b"x") for k in keys])
    it = kv.iter_keys("k")
    assert next(it) == "k00000"
    assert list(it) == keys[1:]
    assert len(kv) == 2500
    assert kv.keys("k01") == keys[1000:2000]


def _reference_prefixes(keys: list[str], delimiter: str, prefix: str = "") -> list[str]:
    """minimalkv's algorithm, straight from its definition."""
    out: list[str] = []
    for k in sorted(k for k in keys if k.startswith(prefix)):
        pos = k.find(delimiter, len(prefix))
        p = k if pos == -1 else k[: pos + len(delimiter)]
        if p not in out:
            out.append(p)
    return out


def test_iter_prefixes_matches_minimalkv(kv: kvstore.KeyValueStore) -> None:
    keys = ["a", "a_", "b_x_1", "b_x_2", "b_y", "c_", "c__d", "dd", "e_1_2"]
    kv.put_many([(k, b"") for k in keys])
    assert list(kv.iter_prefixes("_")) == ["a", "a_", "b_", "c_", "dd", "e_"]
    assert list(kv.iter_prefixes("_", prefix="b_")) == ["b_x_", "b_y"]
    for delim, prefix in [("__", ""), ("x", "b"), ("_", "c_"), ("_", "zz")]:
        assert list(kv.iter_prefixes(delim, prefix)) == _reference_prefixes(keys, delim, prefix)
    with pytest.raises(ValueError, match="delimiter"):
        list(kv.iter_prefixes(""))


_PREFIX_KEYS = st.lists(st.text(alphabet="ab_~.", min_size=1, max_size=6), max_size=60)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=_PREFIX_KEYS,
    expired=_PREFIX_KEYS,
    delimiter=st.sampled_from(["_", "__", "~", "b", ".a", "\u00e9", "\U0010ffff"]),
    prefix=st.sampled_from(["", "a", "a_", "~", "b_b", "zz"]),
)
def test_iter_prefixes_agrees_with_its_definition(
    store: kvstore.Store, keys: list[str], expired: list[str], delimiter: str, prefix: str
) -> None:
    """Any keys, delimiter and prefix, with expired keys among them, across the pages of a
    walk (SQLite's runs in SQL: 16 prefixes, then 64, ...; "~" is the alphabet's last
    character, the delimiter's successor past it)."""
    store.delete_many(store.keys())
    store.put_many([(k, b"") for k in keys])
    gone = [k for k in expired if k not in set(keys)]
    for k in gone:
        store.put(k, b"", ttl_secs=0)
    many = [f"~{i:03d}_x" for i in range(40)] + [f"a{i:03d}" for i in range(30)]
    store.put_many([(k, b"") for k in many])
    live = sorted(set(keys) | set(many))
    assert list(store.iter_prefixes(delimiter, prefix)) == _reference_prefixes(
        live, delimiter, prefix
    )


@pytest.mark.async_exclude(reason="counts the statements on the sync store's connection")
def test_iter_prefixes_skips_large_groups(store: kvstore.Store) -> None:
    """A skip scan: past each common prefix the next read starts beyond all its keys, so the
    rows fetched are a few per group, not the namespace (a full scan fetches every key)."""
    groups, size = 3, 3000
    store.put_many([(f"dir{d}.file{i:04d}", b"") for d in range(groups) for i in range(size)])
    store.put("zz", b"")
    with _sql.recorded(store) as rec:
        assert list(store.iter_prefixes(".")) == ["dir0.", "dir1.", "dir2.", "zz"]
    reads = [s for s in rec.on(store.tables.entries) if s.verb in ("SELECT", "WITH")]
    assert 0 < len(reads) <= 2 * (groups + 1), rec.sql
    fetched = rec.rows_fetched(reads)
    assert 0 < fetched <= groups * size // 2, fetched


# -- the read half of the contract: on every kind, and on a read-only view ---------------------
BIG = bytes(range(256)) * 1200  # 300 KiB: past the default chunk size, read in chunks
READ_MODEL = {
    "a": b"1",
    "a%b": b"percent",
    "a_b": b"underscore",
    "b_x_1": b"",
    "b_x_2": b"2",
    "b_y": b"y" * 1000,
    "c__d": b"cd",
    "big": BIG,
}


def populate(kv: kvstore.KeyValueStore) -> None:
    kv.put_many([(k, v) for k, v in READ_MODEL.items() if k != "big"])
    kv.put_file("big", io.BytesIO(BIG), metadata={"n": 1}, content_type="application/x-test")


def check_reads(kv: kvstore.KeyValueStore, model: dict[str, bytes]) -> None:
    """Every read of the API, against ``model``: what the store must answer."""
    keys = sorted(model)
    assert kv.keys() == keys and sorted(kv.iter_keys()) == keys and sorted(kv) == keys
    assert len(kv) == len(model) and bool(kv)
    for key, value in model.items():
        assert key in kv
        assert kv.get(key) == value
        info = kv.stat(key)
        assert (info.key, info.size) == (key, len(value))
        with kv.open(key) as f:
            assert f.read() == value
        sink = io.BytesIO()
        assert kv.get_file(key, sink) == key
        assert sink.getvalue() == value
    assert kv.stat("big").metadata == {"n": 1}
    assert kv.stat("big").content_type == "application/x-test"
    assert kv.get_many([*reversed(keys), "missing"]) == {k: model[k] for k in reversed(keys)}
    assert list(kv.get_many([*reversed(keys), "missing"])) == list(reversed(keys))
    for prefix in ["", "a", "a%", "a_", "b_", "b_x_", "c", "zz"]:
        assert kv.keys(prefix) == [k for k in keys if k.startswith(prefix)], prefix
    for delim, prefix in [("_", ""), ("_", "b_"), ("__", ""), ("x", "b"), ("_", "zz")]:
        got = list(kv.iter_prefixes(delim, prefix))
        assert got == _reference_prefixes(keys, delim, prefix), (delim, prefix)
    assert "missing" not in kv
    for read in (kv.get, kv.stat, kv.open):
        with pytest.raises(KeyError) as info:
            read("missing")
        assert info.value.args == ("missing",)
    with pytest.raises(ValueError):
        kv.get("")


def test_reads_follow_the_contract(kv: kvstore.KeyValueStore) -> None:
    populate(kv)
    check_reads(kv, READ_MODEL)


def test_a_read_only_view_reads_the_contract_and_refuses_writes(
    kv: kvstore.KeyValueStore,
) -> None:
    populate(kv)
    before = {k: (kv.get(k), kv.stat(k).version) for k in kv.iter_keys()}
    ro = ReadOnlyDecorator(kv)
    check_reads(ro, READ_MODEL)
    for write in (
        lambda: ro.put("a", b"x"),
        lambda: ro.put("new", b"x"),
        lambda: ro.put_file("new", io.BytesIO(b"x")),
        lambda: ro.put_many({"new": b"x"}),
        lambda: ro.delete("a"),
        lambda: ro.delete_many(["a"]),
        lambda: ro.copy("a", "new"),
        lambda: ro.move("a", "new"),
        lambda: ro.incr("n"),
        lambda: ro.decr("n"),
        lambda: ro.purge_expired(),
    ):
        with pytest.raises(kvstore.ReadOnlyError):
            write()
    assert {k: (kv.get(k), kv.stat(k).version) for k in kv.iter_keys()} == before


def test_len_contains_and_iter(kv: kvstore.KeyValueStore) -> None:
    assert len(kv) == 0
    kv.put("x", b"1")
    kv.put("y", b"2")
    assert len(kv) == 2
    assert "x" in kv and "z" not in kv
    assert sorted(kv) == ["x", "y"]


@pytest.mark.kv_only(
    "store", "transaction", reason="namespaces are the Store's; decorators have none"
)
def test_namespaces_are_isolated(kv: kvstore.Store) -> None:
    other = kv.namespace(kv.namespace_name + "-other")
    try:
        kv.put("k", b"mine")
        other.put("k", b"theirs")
        other.put("only-other", b"")
        assert kv.get("k") == b"mine"
        assert other.get("k") == b"theirs"
        assert kv.keys() == ["k"]
        assert len(other) == 2
        other.delete("k")
        assert kv.get("k") == b"mine"
    finally:
        other.delete_many(other.keys())


@pytest.mark.kv_only(
    "store", "transaction", reason="namespaces are the Store's; decorators have none"
)
@pytest.mark.parametrize("bad", ["", "a/b", "x" * 101, 3])
def test_bad_namespace_names_are_refused(kv: kvstore.Store, bad: object) -> None:
    with pytest.raises(ValueError):
        kv.namespace(bad)  # type: ignore[arg-type]


def test_copy_and_move(kv: kvstore.KeyValueStore) -> None:
    kv.put("src", b"data", metadata={"a": 1}, content_type="text/plain")
    assert kv.copy("src", "dst") == "dst"
    assert kv.get("dst") == b"data"
    info = kv.stat("dst")
    assert info.metadata == {"a": 1} and info.content_type == "text/plain"
    assert kv.get("src") == b"data"
    kv.put("other", b"old")
    assert kv.move("src", "other") == "other"
    assert kv.get("other") == b"data"
    assert "src" not in kv
    with pytest.raises(KeyError):
        kv.copy("src", "x")
    with pytest.raises(KeyError):
        kv.move("src", "x")
    assert "x" not in kv
    assert kv.move("other", "other") == "other"


def test_move_keeps_versions_rising(kv: kvstore.KeyValueStore) -> None:
    kv.put("a", b"1")
    for _ in range(5):
        kv.put("b", b"x")
    before = kv.stat("b").version
    kv.move("a", "b")
    assert kv.stat("b").version > before


@pytest.mark.kv_exclude("hmac", reason="the checksum is of the stored, signed bytes")
def test_stat_and_versions(kv: kvstore.KeyValueStore) -> None:
    kv.put("k", b"abc", metadata={"owner": "ada", "n": [1, 2]}, content_type="text/plain")
    info = kv.stat("k")
    assert info.key == "k" and info.size == 3 and info.version == 1
    assert info.metadata == {"owner": "ada", "n": [1, 2]}
    assert info.content_type == "text/plain"
    assert info.checksum == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert info.created_at.tzinfo is not None and info.created_at.utcoffset() == dt.timedelta(0)
    assert info.expires_at is None
    now = dt.datetime.now(dt.UTC)
    assert abs((now - info.created_at).total_seconds()) < 60
    kv.put("k", b"abcd")
    info2 = kv.stat("k")
    assert info2.version == 2
    assert info2.created_at == info.created_at
    assert info2.updated_at >= info.updated_at
    assert info2.metadata == {} and info2.content_type is None
    with pytest.raises(KeyError):
        kv.stat("missing")


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"metadata": {"x": object()}}, TypeError),
        ({"metadata": ["not", "a", "dict"]}, TypeError),
        ({"metadata": {1: "non-str key"}}, TypeError),
        ({"metadata": {"nan": float("nan")}}, TypeError),
        ({"content_type": 5}, ValueError),
        ({"content_type": "x" * 300}, ValueError),
        ({"expected_version": -1}, ValueError),
        ({"expected_version": "1"}, ValueError),
    ],
)
def test_bad_put_arguments_write_nothing(
    kv: kvstore.KeyValueStore, kwargs: dict[str, object], exc: type
) -> None:
    with pytest.raises(exc):
        kv.put("k", b"v", **kwargs)  # type: ignore[arg-type]
    assert "k" not in kv


def test_compare_and_set(kv: kvstore.KeyValueStore) -> None:
    kv.put("k", b"1", expected_version=0)
    with pytest.raises(ConflictError) as info:
        kv.put("k", b"2", expected_version=0)
    assert (info.value.key, info.value.expected_version, info.value.actual_version) == ("k", 0, 1)
    kv.put("k", b"2", expected_version=1)
    with pytest.raises(ConflictError) as info2:
        kv.put("k", b"3", expected_version=1)
    assert info2.value.actual_version == 2
    assert kv.get("k") == b"2"
    with pytest.raises(ConflictError):
        kv.put("missing", b"x", expected_version=3)
    assert "missing" not in kv
    with pytest.raises(ConflictError):
        kv.delete("k", expected_version=1)
    kv.delete("k", expected_version=2)
    assert "k" not in kv
    kv.delete("k", expected_version=0)  # "must not exist" holds: nothing to do
    kv.put("k", b"again")
    with pytest.raises(ConflictError):
        kv.delete("k", expected_version=0)


def test_incr_decr(kv: kvstore.KeyValueStore) -> None:
    assert kv.incr("n") == 1
    assert kv.incr("n", 5) == 6
    assert kv.decr("n", 2) == 4
    assert kv.get("n") == b"4"
    assert kv.incr("m", 10, initial=100) == 110
    assert kv.decr("d", initial=0) == -1
    kv.put("s", b"not a number")
    with pytest.raises(ValueError, match="not an integer"):
        kv.incr("s")
    assert kv.get("s") == b"not a number"
    with pytest.raises(TypeError):
        kv.incr("n", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        kv.incr("n", True)
    assert kv.get("n") == b"4"


def test_incr_keeps_metadata_and_counts_versions(kv: kvstore.KeyValueStore) -> None:
    kv.put("n", b"7", metadata={"unit": "clicks"}, content_type="text/plain")
    kv.incr("n")
    info = kv.stat("n")
    assert kv.get("n") == b"8"
    assert info.metadata == {"unit": "clicks"} and info.content_type == "text/plain"
    assert info.version == 2


def test_get_many_put_many_delete_many(kv: kvstore.KeyValueStore) -> None:
    assert kv.put_many({"a": b"1", "b": b"2"}) == ["a", "b"]
    assert kv.put_many([("c", b"3")]) == ["c"]
    assert kv.get_many(["c", "missing", "a"]) == {"c": b"3", "a": b"1"}
    assert list(kv.get_many(["c", "a"])) == ["c", "a"]
    kv.delete_many(["a", "missing", "c"])
    assert kv.keys() == ["b"]
    assert kv.put_many([]) == []
    assert kv.get_many([]) == {}


def test_many_operations_scale_past_parameter_limits(kv: kvstore.KeyValueStore) -> None:
    keys = [f"k{i}" for i in range(3000)]
    kv.put_many((k, k.encode()) for k in keys)
    got = kv.get_many(keys)
    assert len(got) == 3000 and got["k2999"] == b"k2999"
    kv.delete_many(keys[:2500])
    assert len(kv) == 500


def test_put_many_across_statement_batches_keeps_each_rows_own_state(
    store: kvstore.Store,
) -> None:
    """1,234 keys, more than one statement's worth on every dialect (SQLite and MariaDB send
    up to 500 rows a statement): new keys start at version 1, a live or expired key's version
    goes on counting, a live one keeps its created_at, an expired one starts it again; len()
    counts each key once."""
    keys = [f"k{i:04d}" for i in range(1234)]
    live = keys[::3]
    expired = [k for k in keys[1::7] if k not in set(live)]
    store.put_many((k, b"old") for k in live)
    for k in expired:
        store.put(k, b"gone", ttl_secs=0)
    before = {k: store.stat(k) for k in live[::50]}
    time.sleep(0.01)
    # bytearray values and a str subclass key take the checked path, not the inline one
    items = [
        (k, bytearray(b"new-" + k.encode()) if i % 5 == 0 else b"new-" + k.encode())
        for i, k in enumerate(keys)
    ]
    items[7] = (_Key(keys[7]), b"new-" + keys[7].encode())
    assert store.put_many(items, ttl_secs=3600) == keys
    assert len(store) == 1234
    got = store.get_many(keys)
    assert got == {k: b"new-" + k.encode() for k in keys}
    live_set, expired_set = set(live), set(expired)
    for k in keys[::13] + live[::50] + expired[:20]:
        info = store.stat(k)
        assert info.version == (2 if k in live_set or k in expired_set else 1), k
        assert info.expires_at is not None and info.size == len(got[k]), k
        if k in before:
            assert info.created_at == before[k].created_at, k
            assert info.updated_at > before[k].updated_at, k
        elif k not in live_set:
            assert info.created_at == info.updated_at, k


class _Key(str):
    pass


def test_bulk_put_many_twice_in_a_transaction_and_in_a_rolled_back_savepoint(
    store: kvstore.Store,
) -> None:
    """Each big put_many (PostgreSQL: a COPY through a temporary table) in one transaction,
    and one in a savepoint that rolls back, which takes its rows with it."""
    first = {f"a{i:04d}": b"1" for i in range(300)}
    second = {f"b{i:04d}": b"2" for i in range(300)}
    with store.transaction() as tx:
        tx.put_many(first)
        tx.put_many(second)
        with pytest.raises(RuntimeError), tx.transaction() as inner:
            inner.put_many({f"c{i:04d}": b"3" for i in range(300)})
            inner.put_many({k: b"changed" for k in first})
            raise RuntimeError("roll the savepoint back")
        tx.put_many({k: b"again" for k in list(second)[:250]})
    assert len(store) == 600 and store.keys("c") == []
    got = store.get_many(list(first) + list(second))
    assert all(got[k] == b"1" for k in first)
    assert [k for k in second if got[k] == b"again"] == list(second)[:250]
    assert store.stat("b0000").version == 2 and store.stat("a0000").version == 1


def test_put_many_of_large_inline_values_writes_every_row(kv: kvstore.KeyValueStore) -> None:
    """6 MiB of 40 KiB values in one call: a dialect that sends rows in batches by size
    (MariaDB's, about 4 MiB a statement) must split and send them all, each with its own."""
    values = {f"v{i:03d}": bytes([i]) * (40 << 10) for i in range(150)}
    kv.put_many(values)
    kv.put_many({k: v[:10] for k, v in values.items() if int(k[1:]) % 2})
    got = kv.get_many(list(values))
    assert len(got) == 150
    for k, v in values.items():
        assert got[k] == (v[:10] if int(k[1:]) % 2 else v), k


def test_put_many_is_all_or_nothing(kv: kvstore.KeyValueStore) -> None:
    bad = "x" * 251  # too long for every kind (under URL encoding "bad key" is a key)
    with pytest.raises(ValueError):
        kv.put_many([("good", b"1"), (bad, b"2")])
    with pytest.raises(OSError):
        kv.put_many([("good", b"1"), ("also-good", "str")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        kv.put_many([("good", b"1", "extra")])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        kv.get_many(["ok", bad])
    with pytest.raises(ValueError):
        kv.delete_many(["ok", bad])
    assert len(kv) == 0
    with pytest.raises(TypeError):
        kv.get_many("abc")


def test_context_manager_and_close(backend: Any) -> None:
    with backend.connect(own_engine=True) as s:
        s.put("k", b"v")
        assert s.get("k") == b"v"
    if backend.shared:
        with backend.connect(own_engine=True) as s2:
            assert s2.get("k") == b"v"
            s2.delete("k")


def test_closed_store_refuses_calls(tmp_path: object) -> None:
    s = kvstore.connect(f"sqlite:///{tmp_path}/c.db")
    s.put("k", b"v")
    s.close()
    with pytest.raises(kvstore.KVStoreError, match="closed"):
        s.get("k")


def test_connect_refuses_bad_arguments(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="table_prefix"):
        kvstore.connect("sqlite://", table_prefix="Bad-Prefix")
    with pytest.raises(ValueError, match="not a database URL"):
        kvstore.connect("no such thing")
    with pytest.raises(ValueError, match="SQLite, PostgreSQL and MariaDB"):
        kvstore.connect("oracle://u@localhost/db")
    with pytest.raises(TypeError, match="URL"):
        kvstore.connect(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        kvstore.connect("sqlite://", sqlite_synchronous="SOMETIMES")
    with pytest.raises(ValueError, match="namespace"):
        kvstore.connect("sqlite://", namespace="")


def test_table_prefix_isolates_stores(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    with kvstore.connect(url) as a, kvstore.connect(url, table_prefix="app_kv_") as b:
        a.put("k", b"a")
        b.put("k", b"b")
        assert a.get("k") == b"a" and b.get("k") == b"b"
        import sqlalchemy as sa

        names = sa.inspect(sa.create_engine(url)).get_table_names()
        assert "app_kv_entries" in names and "kv_entries" in names


def test_is_a_keyvaluestore(kv: kvstore.KeyValueStore) -> None:
    assert isinstance(kv, kvstore.KeyValueStore)
    assert kv.ttl_support is True
    _sql.check_valid_key(kv, "fine")  # minimalkv's hook, which its decorators call
    with pytest.raises(ValueError):
        _sql.check_valid_key(kv, "")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), value=st.binary(max_size=3000))
def test_roundtrip_property(kv: kvstore.KeyValueStore, data: st.DataObject, value: bytes) -> None:
    key = data.draw(keys_of(kv), label="key")
    kv.put(key, value)
    assert kv.get(key) == value
    assert key in kv
    assert key in kv.keys(key)
    assert kv.stat(key).size == len(value)
    kv.delete(key)
    assert key not in kv


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), prefix=st.text(alphabet="ab%_\\", max_size=2))
def test_prefix_scan_property(kv: kvstore.KeyValueStore, data: st.DataObject, prefix: str) -> None:
    keys = data.draw(st.lists(keys_of(kv), max_size=15, unique=True), label="keys")
    kv.delete_many(kv.keys())
    kv.put_many([(k, b"") for k in keys])
    assert kv.keys(prefix) == sorted(k for k in keys if k.startswith(prefix))
    assert len(kv) == len(keys)


def test_url_stores_pickle_as_a_reconnect(tmp_path: Any) -> None:
    import pickle

    url = f"sqlite:///{tmp_path}/p.db"
    with kvstore.connect(url, namespace="pk", table_prefix="pk_", default_ttl_secs=100) as s:
        s.put("a", b"1")
        clone = pickle.loads(pickle.dumps(kvstore.PrefixDecorator("p-", s)))
        clone.put("b", b"2")
        assert s.get("p-b") == b"2"
        inner = clone.store
        assert (inner.namespace_name, inner.tables.prefix, inner.default_ttl_secs) == (
            "pk",
            "pk_",
            100,
        )
        assert inner.get("a") == b"1"
        inner.close()
        with pytest.raises(TypeError, match="opened from a URL"):
            pickle.dumps(kvstore.connect(_sql.engine(s)))
        with s.transaction() as tx, pytest.raises(TypeError):
            pickle.dumps(tx)
