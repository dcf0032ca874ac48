"""The key-value API (minimalkv-compatible core), on every backend."""

from __future__ import annotations

import datetime as dt
import string
from typing import Any

import _sql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvstore
from kvstore import ConflictError, InvalidKeyError, InvalidValueError

KEY_ALPHABET = string.ascii_letters + string.digits + "!\"#$%&'()+,-.<=>?@[\\]^_`{}~"


def test_put_get_roundtrip(store: kvstore.Store) -> None:
    assert store.put("a", b"hello") == "a"
    assert store.get("a") == b"hello"
    store.put("a", b"again")
    assert store.get("a") == b"again"


def test_empty_value_is_a_value(store: kvstore.Store) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert "empty" in store
    assert store.keys() == ["empty"]
    assert store.stat("empty").size == 0


def test_missing_key_raises_keyerror(store: kvstore.Store) -> None:
    with pytest.raises(KeyError) as info:
        store.get("nope")
    assert info.value.args == ("nope",)
    assert isinstance(info.value, kvstore.KVStoreError)


def test_delete_missing_is_not_an_error(store: kvstore.Store) -> None:
    store.delete("nope")
    store.put("k", b"v")
    store.delete("k")
    assert "k" not in store
    with pytest.raises(KeyError):
        store.get("k")


def test_bytes_like_values_are_accepted(store: kvstore.Store) -> None:
    store.put("ba", bytearray(b"xy"))
    store.put("mv", memoryview(b"zz"))
    assert store.get("ba") == b"xy"
    assert store.get("mv") == b"zz"


@pytest.mark.parametrize("value", ["text", 1, None, [b"x"]])
def test_non_bytes_value_raises_oserror_and_typeerror(store: kvstore.Store, value: object) -> None:
    with pytest.raises(OSError) as info:
        store.put("k", value)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, InvalidValueError)
    assert "'k'" in str(info.value)
    assert "k" not in store


@pytest.mark.parametrize(
    "key",
    ["", "a b", "a/b", "a:b", "a*b", "ü", "x" * 251, "tab\t", "new\nline"],
)
def test_invalid_keys_raise_valueerror_naming_the_key(store: kvstore.Store, key: str) -> None:
    for call in (
        lambda: store.put(key, b"v"),
        lambda: store.get(key),
        lambda: store.delete(key),
        lambda: key in store,
        lambda: store.stat(key),
        lambda: store.incr(key),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert isinstance(info.value, InvalidKeyError)
        assert repr(key)[:40].strip("'") in str(info.value) or key == ""
    assert len(store) == 0


@pytest.mark.parametrize("key", [1, b"bytes", None, ("t",)])
def test_non_str_keys_raise_valueerror(store: kvstore.Store, key: object) -> None:
    with pytest.raises(ValueError, match="keys are str"):
        store.put(key, b"v")  # type: ignore[arg-type]


def test_longest_key_and_every_allowed_character(store: kvstore.Store) -> None:
    long_key = "k" * 250
    store.put(long_key, b"1")
    assert store.get(long_key) == b"1"
    store.put(KEY_ALPHABET, b"2")
    assert store.get(KEY_ALPHABET) == b"2"
    assert kvstore.VALID_KEY_RE.fullmatch(KEY_ALPHABET)


def test_keys_are_sorted_in_code_point_order(store: kvstore.Store) -> None:
    keys = ["b", "B", "a", "A", "_", "~", "0", "a0", "a_", "Z", "{", "["]
    store.put_many([(k, b"") for k in keys])
    assert store.keys() == sorted(keys)
    assert list(store.iter_keys()) == sorted(keys)
    assert list(store) == sorted(keys)


def test_prefix_match_is_exact_for_like_wildcards(store: kvstore.Store) -> None:
    keys = ["a%b", "a%c", "axb", "a_b", "aXb", "a\\b", "A%b", "a%"]
    store.put_many([(k, b"") for k in keys])
    assert store.keys("a%") == ["a%", "a%b", "a%c"]
    assert store.keys("a_") == ["a_b"]
    assert store.keys("a\\") == ["a\\b"]
    assert store.keys("A") == ["A%b"]
    assert store.keys("a") == sorted(k for k in keys if k.startswith("a"))
    assert store.keys("zzz") == []
    assert store.keys("~") == []


def test_iter_keys_streams_past_one_batch(store: kvstore.Store) -> None:
    keys = [f"k{i:05d}" for i in range(2500)]
    store.put_many([(k, b"x") for k in keys])
    it = store.iter_keys("k")
    assert next(it) == "k00000"
    assert list(it) == keys[1:]
    assert len(store) == 2500
    assert store.keys("k01") == keys[1000:2000]


def _reference_prefixes(keys: list[str], delimiter: str, prefix: str = "") -> list[str]:
    """minimalkv's algorithm, straight from its definition."""
    out: list[str] = []
    for k in sorted(k for k in keys if k.startswith(prefix)):
        pos = k.find(delimiter, len(prefix))
        p = k if pos == -1 else k[: pos + len(delimiter)]
        if p not in out:
            out.append(p)
    return out


def test_iter_prefixes_matches_minimalkv(store: kvstore.Store) -> None:
    keys = ["a", "a_", "b_x_1", "b_x_2", "b_y", "c_", "c__d", "dd", "e_1_2"]
    store.put_many([(k, b"") for k in keys])
    assert list(store.iter_prefixes("_")) == ["a", "a_", "b_", "c_", "dd", "e_"]
    assert list(store.iter_prefixes("_", prefix="b_")) == ["b_x_", "b_y"]
    for delim, prefix in [("__", ""), ("x", "b"), ("_", "c_"), ("_", "zz")]:
        assert list(store.iter_prefixes(delim, prefix)) == _reference_prefixes(keys, delim, prefix)
    with pytest.raises(ValueError, match="delimiter"):
        list(store.iter_prefixes(""))


def test_iter_prefixes_skips_large_groups(store: kvstore.Store) -> None:
    store.put_many([(f"dir{d}.file{i:04d}", b"") for d in range(3) for i in range(300)])
    store.put("zz", b"")
    assert list(store.iter_prefixes(".")) == ["dir0.", "dir1.", "dir2.", "zz"]


def test_len_contains_and_iter(store: kvstore.Store) -> None:
    assert len(store) == 0
    store.put("x", b"1")
    store.put("y", b"2")
    assert len(store) == 2
    assert "x" in store and "z" not in store
    assert sorted(store) == ["x", "y"]


def test_namespaces_are_isolated(store: kvstore.Store) -> None:
    other = store.namespace(store.namespace_name + "-other")
    try:
        store.put("k", b"mine")
        other.put("k", b"theirs")
        other.put("only-other", b"")
        assert store.get("k") == b"mine"
        assert other.get("k") == b"theirs"
        assert store.keys() == ["k"]
        assert len(other) == 2
        other.delete("k")
        assert store.get("k") == b"mine"
    finally:
        other.delete_many(other.keys())


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 101, 3])
def test_bad_namespace_names_are_refused(store: kvstore.Store, bad: object) -> None:
    with pytest.raises(ValueError):
        store.namespace(bad)  # type: ignore[arg-type]


def test_copy_and_move(store: kvstore.Store) -> None:
    store.put("src", b"data", metadata={"a": 1}, content_type="text/plain")
    assert store.copy("src", "dst") == "dst"
    assert store.get("dst") == b"data"
    info = store.stat("dst")
    assert info.metadata == {"a": 1} and info.content_type == "text/plain"
    assert store.get("src") == b"data"
    store.put("other", b"old")
    assert store.move("src", "other") == "other"
    assert store.get("other") == b"data"
    assert "src" not in store
    with pytest.raises(KeyError):
        store.copy("src", "x")
    with pytest.raises(KeyError):
        store.move("src", "x")
    assert "x" not in store
    assert store.move("other", "other") == "other"


def test_move_keeps_versions_rising(store: kvstore.Store) -> None:
    store.put("a", b"1")
    for _ in range(5):
        store.put("b", b"x")
    before = store.stat("b").version
    store.move("a", "b")
    assert store.stat("b").version > before


def test_stat_and_versions(store: kvstore.Store) -> None:
    store.put("k", b"abc", metadata={"owner": "ada", "n": [1, 2]}, content_type="text/plain")
    info = store.stat("k")
    assert info.key == "k" and info.size == 3 and info.version == 1
    assert info.metadata == {"owner": "ada", "n": [1, 2]}
    assert info.content_type == "text/plain"
    assert info.checksum == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert info.created_at.tzinfo is not None and info.created_at.utcoffset() == dt.timedelta(0)
    assert info.expires_at is None
    now = dt.datetime.now(dt.UTC)
    assert abs((now - info.created_at).total_seconds()) < 60
    store.put("k", b"abcd")
    info2 = store.stat("k")
    assert info2.version == 2
    assert info2.created_at == info.created_at
    assert info2.updated_at >= info.updated_at
    assert info2.metadata == {} and info2.content_type is None
    with pytest.raises(KeyError):
        store.stat("missing")


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
    store: kvstore.Store, kwargs: dict[str, object], exc: type
) -> None:
    with pytest.raises(exc):
        store.put("k", b"v", **kwargs)  # type: ignore[arg-type]
    assert "k" not in store


def test_compare_and_set(store: kvstore.Store) -> None:
    store.put("k", b"1", expected_version=0)
    with pytest.raises(ConflictError) as info:
        store.put("k", b"2", expected_version=0)
    assert (info.value.key, info.value.expected_version, info.value.actual_version) == ("k", 0, 1)
    store.put("k", b"2", expected_version=1)
    with pytest.raises(ConflictError) as info2:
        store.put("k", b"3", expected_version=1)
    assert info2.value.actual_version == 2
    assert store.get("k") == b"2"
    with pytest.raises(ConflictError):
        store.put("missing", b"x", expected_version=3)
    assert "missing" not in store
    with pytest.raises(ConflictError):
        store.delete("k", expected_version=1)
    store.delete("k", expected_version=2)
    assert "k" not in store
    store.delete("k", expected_version=0)  # "must not exist" holds: nothing to do
    store.put("k", b"again")
    with pytest.raises(ConflictError):
        store.delete("k", expected_version=0)


def test_incr_decr(store: kvstore.Store) -> None:
    assert store.incr("n") == 1
    assert store.incr("n", 5) == 6
    assert store.decr("n", 2) == 4
    assert store.get("n") == b"4"
    assert store.incr("m", 10, initial=100) == 110
    assert store.decr("d", initial=0) == -1
    store.put("s", b"not a number")
    with pytest.raises(ValueError, match="not an integer"):
        store.incr("s")
    assert store.get("s") == b"not a number"
    with pytest.raises(TypeError):
        store.incr("n", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.incr("n", True)
    assert store.get("n") == b"4"


def test_incr_keeps_metadata_and_counts_versions(store: kvstore.Store) -> None:
    store.put("n", b"7", metadata={"unit": "clicks"}, content_type="text/plain")
    store.incr("n")
    info = store.stat("n")
    assert store.get("n") == b"8"
    assert info.metadata == {"unit": "clicks"} and info.content_type == "text/plain"
    assert info.version == 2


def test_get_many_put_many_delete_many(store: kvstore.Store) -> None:
    assert store.put_many({"a": b"1", "b": b"2"}) == ["a", "b"]
    assert store.put_many([("c", b"3")]) == ["c"]
    assert store.get_many(["c", "missing", "a"]) == {"c": b"3", "a": b"1"}
    assert list(store.get_many(["c", "a"])) == ["c", "a"]
    store.delete_many(["a", "missing", "c"])
    assert store.keys() == ["b"]
    assert store.put_many([]) == []
    assert store.get_many([]) == {}


def test_many_operations_scale_past_parameter_limits(store: kvstore.Store) -> None:
    keys = [f"k{i}" for i in range(3000)]
    store.put_many((k, k.encode()) for k in keys)
    got = store.get_many(keys)
    assert len(got) == 3000 and got["k2999"] == b"k2999"
    store.delete_many(keys[:2500])
    assert len(store) == 500


def test_put_many_is_all_or_nothing(store: kvstore.Store) -> None:
    with pytest.raises(ValueError):
        store.put_many([("good", b"1"), ("bad key", b"2")])
    with pytest.raises(OSError):
        store.put_many([("good", b"1"), ("also-good", "str")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        store.put_many([("good", b"1", "extra")])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        store.get_many(["ok", "bad key"])
    with pytest.raises(ValueError):
        store.delete_many(["ok", "bad key"])
    assert len(store) == 0
    with pytest.raises(TypeError):
        store.get_many("abc")


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
    with pytest.raises(ValueError, match="SQLite and PostgreSQL"):
        kvstore.connect("mysql://u@localhost/db")
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


def test_is_a_keyvaluestore(store: kvstore.Store) -> None:
    assert isinstance(store, kvstore.KeyValueStore)
    assert store.ttl_support is True
    _sql.check_valid_key(store, "fine")
    with pytest.raises(ValueError):
        _sql.check_valid_key(store, "not fine")


keys_st = st.text(alphabet=KEY_ALPHABET, min_size=1, max_size=250)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=keys_st, value=st.binary(max_size=3000))
def test_roundtrip_property(store: kvstore.Store, key: str, value: bytes) -> None:
    store.put(key, value)
    assert store.get(key) == value
    assert key in store
    assert key in store.keys(key)
    assert store.stat(key).size == len(value)
    store.delete(key)
    assert key not in store


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.lists(keys_st, max_size=15, unique=True), prefix=st.text(alphabet="ab%_\\", max_size=2)
)
def test_prefix_scan_property(store: kvstore.Store, keys: list[str], prefix: str) -> None:
    store.delete_many(store.keys())
    store.put_many([(k, b"") for k in keys])
    assert store.keys(prefix) == sorted(k for k in keys if k.startswith(prefix))
    assert len(store) == len(keys)


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
