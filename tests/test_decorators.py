"""Store decorators (kvstore.decorators) on every backend, alone and stacked."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import _sql
import pytest

import kvstore
from kvstore.decorators import (
    HashDecorator,
    HMACDecorator,
    PrefixDecorator,
    ReadOnlyDecorator,
    StoreDecorator,
    URLEncodeKeysDecorator,
    UUIDDecorator,
)

SECRET = b"correct horse battery staple"
DIGEST = hashlib.sha256().digest_size


def raw_entries(store: kvstore.Store) -> dict[str, tuple[bytes, int]]:
    """Everything the undecorated store holds: key -> (value, version)."""
    return {k: (store.get(k), store.stat(k).version) for k in store.iter_keys()}


class _RawPipe(io.RawIOBase):
    """A readable, non-seekable binary stream (like a pipe or socket)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        chunk = self._buf.read(min(len(b), 700))  # short reads, as pipes give
        b[: len(chunk)] = chunk
        return len(chunk)


def _pipe(data: bytes) -> IO[bytes]:
    return cast(IO[bytes], _RawPipe(data))


# -- PrefixDecorator -------------------------------------------------------------------------------
def test_prefix_maps_keys_and_isolates(store: kvstore.Store) -> None:
    store.put("other", b"o")
    store.put("p", b"a key the prefix starts with, but not under it")
    store.put("q-a", b"q")
    p = PrefixDecorator("p-", store)
    assert p.put("a", b"1") == "a"
    p.put("b-1", b"2")
    p.put("b-2", b"3")
    assert store.get("p-a") == b"1"
    assert p.get("a") == b"1"
    assert p.keys() == ["a", "b-1", "b-2"]
    assert list(p.iter_keys("b-")) == ["b-1", "b-2"]
    assert list(p) == ["a", "b-1", "b-2"]
    assert len(p) == 3
    assert len(store) == 6
    assert "a" in p and "other" not in p and "q-a" not in p
    assert list(p.iter_prefixes("-")) == ["a", "b-"]
    assert list(p.iter_prefixes("-", "b-")) == ["b-1", "b-2"]
    assert p.stat("a").key == "a"
    assert p.get_many(["a", "b-1", "missing", "other"]) == {"a": b"1", "b-1": b"2"}
    with pytest.raises(KeyError) as exc:
        p.get("other")
    assert exc.value.args[0] == "other"  # names the caller's key, not "p-other"


def test_prefix_len_counts_only_live_prefixed_keys(store: kvstore.Store) -> None:
    p = PrefixDecorator("p-", store)
    store.put("p", b"x")
    store.put("p.", b"x")  # sorts right after "p-" range; must not be counted
    store.put("o-a", b"x")
    store.put("p-", b"x")  # would map to the empty key: not one of ours
    assert len(p) == 0
    assert p.keys() == [] and list(p.iter_prefixes("-")) == []
    for i in range(5):
        p.put(f"k{i}", b"v")
    p.put("gone", b"v", ttl_secs=0.01)
    time.sleep(0.03)
    assert len(p) == 5
    assert len(PrefixDecorator("p-k", store)) == 5
    assert len(PrefixDecorator("zz", store)) == 0


def test_prefix_copy_move_and_bulk(store: kvstore.Store) -> None:
    p = PrefixDecorator("p-", store)
    p.put("src", b"v", metadata={"a": 1}, content_type="text/plain")
    assert p.copy("src", "dst") == "dst"
    assert store.get("p-dst") == b"v"
    assert p.stat("dst").metadata == {"a": 1}
    assert p.move("dst", "moved") == "moved"
    assert "dst" not in p and store.get("p-moved") == b"v"
    assert "moved" not in store  # the raw key is not the decorated key
    with pytest.raises(KeyError) as exc:
        p.move("missing", "x")
    assert exc.value.args[0] == "missing"
    assert p.put_many({"m1": b"1", "m2": b"2"}) == ["m1", "m2"]
    assert store.get_many(["p-m1", "p-m2"]) == {"p-m1": b"1", "p-m2": b"2"}
    p.delete_many(["m1", "m2"])
    assert p.keys("m") == ["moved"]
    p.delete("src")
    assert "p-src" not in store
    assert p.incr("n") == 1
    assert p.decr("n", 3) == -2
    assert store.get("p-n") == b"-2"


def test_prefix_files_and_options(store: kvstore.Store, tmp_path: Path) -> None:
    p = PrefixDecorator("p-", store)
    src = tmp_path / "in.bin"
    src.write_bytes(b"file data")
    assert p.put_file("f", str(src), content_type="application/x") == "f"
    assert store.stat("p-f").content_type == "application/x"
    out = tmp_path / "out.bin"
    assert p.get_file("f", out) == "f"
    assert out.read_bytes() == b"file data"
    with p.open("f") as fh:
        fh.seek(5)
        assert fh.read() == b"data"
    # compare-and-set passes through, and the conflict names the caller's key
    v = p.stat("f").version
    p.put("f", b"new", expected_version=v)
    with pytest.raises(kvstore.ConflictError) as exc:
        p.put("f", b"newer", expected_version=v)
    assert exc.value.key == "f"
    with pytest.raises(kvstore.ConflictError):
        p.delete("f", expected_version=v)
    with pytest.raises(kvstore.ConflictError):
        p.put("f", b"x", expected_version=0)
    assert p.get("f") == b"new"


def test_prefix_ttl_passes_through(store: kvstore.Store) -> None:
    p = PrefixDecorator("p-", store)
    assert p.ttl_support is True
    p.put("short", b"x", ttl_secs=0.01)
    p.put("long", b"x", ttl_secs=dt.timedelta(hours=1))
    assert p.stat("long").expires_at is not None
    time.sleep(0.03)
    assert "short" not in p
    with pytest.raises(KeyError):
        p.get("short")
    assert p.purge_expired() == 1
    p.default_ttl_secs = 3600
    assert store.default_ttl_secs == 3600
    p.put("defaulted", b"x")
    assert store.stat("p-defaulted").expires_at is not None
    with pytest.raises(ValueError):
        p.default_ttl_secs = -1
    with pytest.raises(ValueError):
        p.put("x", b"x", ttl_secs="soon")
    assert "p-x" not in store


def test_prefix_validates_keys_before_writing(store: kvstore.Store) -> None:
    p = PrefixDecorator("p-", store)
    for bad in ["", "a b", "a/b", "ü", 5, None, "x" * 249]:
        with pytest.raises(ValueError) as exc:
            p.put(bad, b"v")  # type: ignore[arg-type]
        assert isinstance(exc.value, kvstore.InvalidKeyError)
        assert exc.value.key == bad
    with pytest.raises(ValueError):
        _ = "a b" in p
    with pytest.raises(OSError):
        p.put("ok", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        p.put_many([("a", b"1", b"extra")])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        p.put_many({"good": b"1", "bad key": b"2"})
    assert store.keys() == []
    p.put("x" * 248, b"fits")  # 250 characters with the prefix
    with pytest.raises(ValueError, match="invalid prefix"):
        PrefixDecorator("a b", store)
    with pytest.raises(TypeError):
        PrefixDecorator(b"p", store)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PrefixDecorator("p", {})  # type: ignore[arg-type]


def test_prefix_transaction_rolls_back(store: kvstore.Store) -> None:
    p = PrefixDecorator("p-", store)
    with pytest.raises(RuntimeError), p.transaction() as tx:
        assert isinstance(tx, PrefixDecorator) and tx.prefix == "p-"
        tx.put("a", b"1")
        assert tx.get("a") == b"1"
        raise RuntimeError("boom")
    assert store.keys() == []
    with p.transaction() as tx:
        tx.put("b", b"2")
    assert store.get("p-b") == b"2"


def test_close_and_context_manager_pass_through(backend: Any) -> None:
    with PrefixDecorator("p-", HMACDecorator(SECRET, backend.connect())) as d:
        d.put("a", b"1")
        assert d.get("a") == b"1"
    with pytest.raises(kvstore.KVStoreError, match="closed"):
        d.get("a")


# -- ReadOnlyDecorator -----------------------------------------------------------------------------
WRITES: list[tuple[str, Callable[[kvstore.KeyValueStore], Any]]] = [
    ("put", lambda s: s.put("a", b"new")),
    ("put", lambda s: s.put("a", b"new", expected_version=1)),
    ("put_file", lambda s: s.put_file("a", io.BytesIO(b"new"))),
    ("delete", lambda s: s.delete("a")),
    ("delete", lambda s: s.delete("a", expected_version=1)),
    ("put_many", lambda s: s.put_many({"a": b"new", "z": b"z"})),
    ("delete_many", lambda s: s.delete_many(["a", "b"])),
    ("copy", lambda s: s.copy("a", "c")),
    ("move", lambda s: s.move("a", "c")),
    ("incr", lambda s: s.incr("n")),
    ("decr", lambda s: s.decr("n")),
    ("purge_expired", lambda s: s.purge_expired()),
]


@pytest.mark.parametrize(
    ("name", "write"), WRITES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(WRITES)]
)
def test_read_only_refuses_every_write(
    store: kvstore.Store, name: str, write: Callable[[kvstore.KeyValueStore], Any]
) -> None:
    store.put("a", b"old")
    store.put("b", b"b")
    store.put("n", b"7")
    store.put("expired", b"x", ttl_secs=0.001)
    time.sleep(0.01)
    before = raw_entries(store)
    ro = ReadOnlyDecorator(store)
    with pytest.raises(kvstore.ReadOnlyError, match=rf"\b{name}\(\)") as exc:
        write(ro)
    assert isinstance(exc.value, PermissionError)
    assert raw_entries(store) == before
    assert store.purge_expired() == 1  # the expired entry was still there


def test_read_only_reads_pass_through(store: kvstore.Store, tmp_path: Path) -> None:
    store.put("a", b"1", content_type="text/plain")
    store.put("b-1", b"2")
    ro = ReadOnlyDecorator(store)
    assert ro.get("a") == b"1"
    assert ro.keys() == ["a", "b-1"] and list(ro) == ["a", "b-1"] and len(ro) == 2
    assert list(ro.iter_prefixes("-")) == ["a", "b-"]
    assert "a" in ro and "zz" not in ro
    assert ro.stat("a").content_type == "text/plain"
    assert ro.get_many(["a", "nope"]) == {"a": b"1"}
    with ro.open("a") as fh:
        assert fh.read() == b"1"
    ro.get_file("a", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"1"
    with pytest.raises(KeyError):
        ro.get("nope")
    with pytest.raises(kvstore.ReadOnlyError):
        ro.default_ttl_secs = 5
    assert store.default_ttl_secs == kvstore.NOT_SET
    with ro.transaction() as tx, pytest.raises(kvstore.ReadOnlyError):
        tx.put("c", b"3")
    assert "c" not in store


# -- URLEncodeKeysDecorator ------------------------------------------------------------------------
ODD_KEYS = ["a/b c:ü", "100%", "+", "x y", "日本", "tab\tnew\nline", "~.-_", "a"]


def test_url_encode_any_str_key(store: kvstore.Store) -> None:
    u = URLEncodeKeysDecorator(store)
    for i, key in enumerate(ODD_KEYS):
        assert u.put(key, str(i).encode()) == key
    for i, key in enumerate(ODD_KEYS):
        assert u.get(key) == str(i).encode()
        assert key in u
        assert u.stat(key).key == key
    assert "a%2Fb+c%3A%C3%BC" in store  # minimalkv's quote_plus encoding
    assert u.keys() == sorted(ODD_KEYS)
    assert sorted(u.iter_keys()) == sorted(ODD_KEYS)
    assert len(u) == len(ODD_KEYS)
    assert u.get_many(["x y", "nope", "+"]) == {"x y": b"3", "+": b"2"}
    u.copy("a/b c:ü", "a/copy")
    u.move("a/copy", "a/moved")
    assert u.get("a/moved") == b"0" and "a/copy" not in u
    with pytest.raises(KeyError) as exc:
        u.get("no such/key")
    assert exc.value.args[0] == "no such/key"


def test_url_encode_prefix_scans(store: kvstore.Store) -> None:
    u = URLEncodeKeysDecorator(store)
    for key in ["dir/a", "dir/b/c", "dir/b/d", "dirt", "di", "A/x", "B"]:
        u.put(key, b"")
    assert u.keys("dir/") == ["dir/a", "dir/b/c", "dir/b/d"]
    assert u.keys("dir") == ["dir/a", "dir/b/c", "dir/b/d", "dirt"]
    assert sorted(u.iter_prefixes("/")) == ["A/", "B", "di", "dir/", "dirt"]
    assert sorted(u.iter_prefixes("/", "dir/")) == ["dir/a", "dir/b/"]
    # a delimiter that is also a hex digit of an escape must not split inside "%2F"
    assert sorted(u.iter_prefixes("F")) == ["A/x", "B", "di", "dir/a", "dir/b/c", "dir/b/d", "dirt"]


def test_url_encode_hides_foreign_keys(store: kvstore.Store) -> None:
    store.put("a!b", b"written around the decorator")  # decodes to itself but encodes as a%21b
    store.put("%7E", b"non-canonical escape of ~")
    u = URLEncodeKeysDecorator(store)
    u.put("a!b", b"mine")
    assert u.keys() == ["a!b"]
    assert len(u) == 1
    assert u.get("a!b") == b"mine"
    assert store.get("a!b") == b"written around the decorator"


def test_url_encode_key_validation(store: kvstore.Store) -> None:
    u = URLEncodeKeysDecorator(store)
    for bad in ["", 1, b"bytes", "\ud800", "/" * 84]:  # 84 slashes encode to 252 characters
        with pytest.raises(ValueError):
            u.put(bad, b"v")  # type: ignore[arg-type]
    u.put("/" * 83, b"fits")
    assert store.keys() == ["%2F" * 83]
    with pytest.raises(TypeError):
        u.keys(5)  # type: ignore[arg-type]


# -- HashDecorator / UUIDDecorator -----------------------------------------------------------------
def test_hash_decorator_content_addresses(store: kvstore.Store, tmp_path: Path) -> None:
    h = HashDecorator(store)
    data = b"some content"
    want = hashlib.sha256(data).hexdigest()
    assert h.put(None, data) == want
    assert store.get(want) == data
    assert h.put("explicit", data) == "explicit"
    assert h.get("explicit") == data
    path = tmp_path / "f"
    path.write_bytes(data)
    assert h.put_file(None, str(path)) == want
    seekable = io.BytesIO(b"skip:" + data)
    seekable.seek(5)
    assert h.put_file(None, seekable) == want
    big = os.urandom(3 * (1 << 20) + 17)
    assert h.put_file(None, _pipe(big)) == hashlib.sha256(big).hexdigest()
    assert store.get(hashlib.sha256(big).hexdigest()) == big
    md5 = HashDecorator(store, hashfunc=hashlib.md5, template="md5-{}")
    assert md5.put(None, data, metadata={"m": 1}) == "md5-" + hashlib.md5(data).hexdigest()
    assert store.stat("md5-" + hashlib.md5(data).hexdigest()).metadata == {"m": 1}
    with pytest.raises(OSError):
        h.put(None, "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        h.put_file(None, io.BytesIO(b"x"), ttl_secs=-1)
    with pytest.raises(ValueError):
        HashDecorator(store, template="no field")
    with pytest.raises(ValueError):
        HashDecorator(store, template="bad key {}")
    with pytest.raises(TypeError):
        HashDecorator(store, hashfunc=len)


def test_uuid_decorator(store: kvstore.Store) -> None:
    u = UUIDDecorator(store, template="u-{}")
    k1, k2 = u.put(None, b"1"), u.put(None, b"1")
    assert k1 != k2
    for k in (k1, k2):
        assert k.startswith("u-") and len(k) == 34
        int(k[2:], 16)
    assert store.get(k1) == b"1"
    k3 = u.put_file(None, io.BytesIO(b"file"))
    assert store.get(k3) == b"file"
    assert u.put("given", b"g") == "given"  # an explicit key is used as given
    assert store.get("given") == b"g"
    assert sorted(u.keys()) == sorted([k1, k2, k3, "given"])


# -- HMACDecorator ---------------------------------------------------------------------------------
def test_hmac_round_trip(store: kvstore.Store, tmp_path: Path) -> None:
    h = HMACDecorator(SECRET, store)
    assert h.put("a", b"payload", content_type="text/plain") == "a"
    stored = store.get("a")
    assert len(stored) == len(b"payload") + DIGEST and stored.startswith(b"payload")
    assert h.get("a") == b"payload"
    assert h.stat("a").size == len(b"payload")
    assert h.stat("a").content_type == "text/plain"
    h.put("empty", b"")
    assert h.get("empty") == b""
    with h.open("a") as fh:
        assert fh.read(3) == b"pay"
        assert fh.tell() == 3
        fh.seek(-4, io.SEEK_END)
        assert fh.read() == b"load"
    with pytest.raises(ValueError):
        fh.read()
    h.get_file("a", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"payload"
    h.put_file("f", io.BytesIO(b"from a file"))
    assert h.get("f") == b"from a file"
    assert h.put_many({"m1": b"1", "m2": b"2"}) == ["m1", "m2"]
    assert h.get_many(["m1", "m2", "missing"]) == {"m1": b"1", "m2": b"2"}
    assert h.incr("n") == 1
    assert h.incr("n", 10) == 11
    assert h.decr("n", 2) == 9
    assert h.get("n") == b"9"
    with pytest.raises(KeyError):
        h.get("missing")
    assert "HMACDecorator(<secret>" in repr(h) and SECRET.decode() not in repr(h)


def test_hmac_large_values_stream(backend: Any, tmp_path: Path) -> None:
    store = backend.connect(chunk_size=1024)
    try:
        h = HMACDecorator(SECRET, store)
        data = os.urandom(10_000)
        h.put_file("big", _pipe(data))
        src = tmp_path / "src"
        src.write_bytes(data)
        h.put_file("big2", src)
        assert store.stat("big").size == len(data) + DIGEST
        assert h.get("big") == data == h.get("big2")
        with h.open("big") as fh:
            fh.seek(5000)
            assert fh.read(100) == data[5000:5100]
            fh.seek(0)
            assert fh.read() == data
        sink = io.BytesIO()
        h.get_file("big", sink)
        assert sink.getvalue() == data
        h.put("big3", data)
        assert h.get("big3") == data
        # tamper with one byte in the middle of a chunked value
        raw = bytearray(store.get("big"))
        raw[4321] ^= 1
        store.put("big", bytes(raw))
        with pytest.raises(kvstore.VerificationError):
            h.open("big")
        out = tmp_path / "out"
        out.write_bytes(b"untouched")
        with pytest.raises(kvstore.VerificationError):
            h.get_file("big", out)
        assert out.read_bytes() == b"untouched"  # nothing unverified reaches the destination
    finally:
        store.close()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # MAC changed
        lambda b: bytes([b[0] ^ 1]) + b[1:],  # data changed
        lambda b: b"extra" + b,
        lambda b: b[:5],  # too short to carry a MAC
        lambda b: b"",
    ],
    ids=["mac", "data", "prepended", "truncated", "empty"],
)
def test_hmac_detects_tampering(
    store: kvstore.Store, tmp_path: Path, tamper: Callable[[bytes], bytes]
) -> None:
    h = HMACDecorator(SECRET, store)
    h.put("k", b"the genuine value")
    h.put("ok", b"fine")
    store.put("k", tamper(store.get("k")))
    with pytest.raises(kvstore.VerificationError):
        h.get("k")
    with pytest.raises(kvstore.VerificationError):
        h.open("k")
    with pytest.raises(kvstore.VerificationError):
        h.get_many(["ok", "k"])
    sink = io.BytesIO()
    with pytest.raises(kvstore.VerificationError):
        h.get_file("k", sink)
    assert sink.getvalue() == b""
    with pytest.raises(kvstore.VerificationError):
        h.copy("k", "k2")
    with pytest.raises(kvstore.VerificationError):
        h.move("k", "k2")
    assert "k2" not in store and "k" in store
    assert h.get("ok") == b"fine"


def test_hmac_detects_replay_and_wrong_secret(store: kvstore.Store) -> None:
    h = HMACDecorator(SECRET, store)
    h.put("alice", b"balance=100")
    store.put("bob", store.get("alice"))  # a valid signed value, replayed under another key
    with pytest.raises(kvstore.VerificationError, match="'bob'"):
        h.get("bob")
    store.copy("alice", "carol")
    with pytest.raises(kvstore.VerificationError):
        h.get("carol")
    with pytest.raises(kvstore.VerificationError):
        HMACDecorator(b"another secret", store).get("alice")
    with pytest.raises(kvstore.VerificationError):
        HMACDecorator(SECRET, store, hashfunc=hashlib.sha512).get("alice")
    assert HMACDecorator(SECRET.decode(), store).get("alice") == b"balance=100"


def test_hmac_copy_move_resign_and_keep_attributes(store: kvstore.Store) -> None:
    h = HMACDecorator(SECRET, store)
    h.put("src", b"value", ttl_secs=3600, metadata={"owner": "ada"}, content_type="text/plain")
    assert h.copy("src", "dst") == "dst"
    assert h.get("dst") == b"value" and h.get("src") == b"value"
    info, orig = h.stat("dst"), h.stat("src")
    assert info.metadata == {"owner": "ada"} and info.content_type == "text/plain"
    assert info.expires_at is not None and orig.expires_at is not None
    assert abs((info.expires_at - orig.expires_at).total_seconds()) < 5
    h.put("dst", b"old dst")
    assert h.move("src", "dst") == "dst"
    assert "src" not in h and h.get("dst") == b"value"
    assert h.copy("dst", "dst") == "dst"
    with pytest.raises(KeyError):
        h.copy("missing", "x")
    with pytest.raises(KeyError):
        h.move("missing", "x")
    assert "x" not in store


def test_hmac_incr_keeps_expiry_and_refuses_garbage(store: kvstore.Store) -> None:
    h = HMACDecorator(SECRET, store)
    h.put("n", b"5", ttl_secs=3600, metadata={"k": "v"})
    assert h.incr("n") == 6
    assert h.stat("n").expires_at is not None and h.stat("n").metadata == {"k": "v"}
    h.put("text", b"abc")
    with pytest.raises(ValueError, match="not an integer"):
        h.incr("text")
    store.put("forged", b"99" + b"\0" * DIGEST)
    with pytest.raises(kvstore.VerificationError):
        h.incr("forged")
    with pytest.raises(TypeError):
        h.incr("n", 1.5)  # type: ignore[arg-type]
    assert h.get("n") == b"6"


def test_hmac_incr_is_atomic_across_threads(shared_backend: Any) -> None:
    stores = [shared_backend.connect() for _ in range(2)]
    try:
        errors: list[BaseException] = []

        def work(s: kvstore.Store) -> None:
            h = HMACDecorator(SECRET, s)
            try:
                for _ in range(15):
                    h.incr("counter")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert HMACDecorator(SECRET, stores[0]).get("counter") == b"30"
    finally:
        for s in stores:
            s.close()


def test_hmac_validation(store: kvstore.Store) -> None:
    with pytest.raises(ValueError):
        HMACDecorator(b"", store)
    with pytest.raises(TypeError):
        HMACDecorator(12345, store)  # type: ignore[arg-type]
    h = HMACDecorator(SECRET, store)
    with pytest.raises(ValueError):
        h.put("bad key", b"v")
    with pytest.raises(OSError):
        h.put("k", "str")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        h.put_file("k", io.StringIO("text"))  # type: ignore[arg-type]
    assert store.keys() == []


# -- stacking --------------------------------------------------------------------------------------
def test_prefix_over_hmac_over_store(store: kvstore.Store) -> None:
    users = PrefixDecorator("users-", HMACDecorator(SECRET, store))
    admins = PrefixDecorator("admins-", HMACDecorator(SECRET, store))
    users.put("ada", b"user record")
    admins.put("root", b"admin record")
    assert users.keys() == ["ada"] and admins.keys() == ["root"]
    assert len(users) == 1 and len(store) == 2
    assert store.get("users-ada").startswith(b"user record")
    assert users.get("ada") == b"user record"
    # the MAC covers the full stored key: a value replayed into another prefix is refused
    store.put("admins-ada", store.get("users-ada"))
    with pytest.raises(kvstore.VerificationError):
        admins.get("ada")
    users.copy("ada", "ada2")
    users.move("ada2", "ada3")
    assert users.keys() == ["ada", "ada3"] and users.get("ada3") == b"user record"
    assert users.incr("n") == 1
    raw = bytearray(store.get("users-ada"))
    raw[0] ^= 0xFF
    store.put("users-ada", bytes(raw))
    with pytest.raises(kvstore.VerificationError):
        users.get("ada")
    with users.transaction() as tx:
        tx.put("in-tx", b"x")
    assert users.get("in-tx") == b"x"


def test_read_only_prefix_url_stack(store: kvstore.Store) -> None:
    writable = PrefixDecorator("ns-", URLEncodeKeysDecorator(store))
    writable.put("a/b", b"1")
    writable.put("a/c", b"2")
    view = ReadOnlyDecorator(writable)
    assert view.keys() == ["a/b", "a/c"]
    assert len(view) == 2
    assert list(view.iter_prefixes("/")) == ["a/"]
    assert view.get("a/b") == b"1"
    assert store.keys() == ["ns-a%2Fb", "ns-a%2Fc"]
    with pytest.raises(kvstore.ReadOnlyError):
        view.delete("a/b")


# -- pickling --------------------------------------------------------------------------------------
class DictStore(kvstore.KeyValueStore):
    """A minimal picklable in-memory store (a real Store holds connections, so it is not)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.closed = False

    def get(self, key: str) -> bytes:
        _sql.check_valid_key(self, key)
        return self.data[key]

    def put(self, key: str, data: bytes, ttl_secs: Any = None, **kw: Any) -> str:
        _sql.check_valid_key(self, key)
        self.data[key] = bytes(data)
        return key

    def delete(self, key: str, **kw: Any) -> None:
        self.data.pop(key, None)

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(k for k in self.data if k.startswith(prefix)))

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __len__(self) -> int:
        return len(self.data)

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.get(key))

    def put_file(self, key: str, file: Any, ttl_secs: Any = None, **kw: Any) -> str:
        if isinstance(file, str | os.PathLike):
            with open(file, "rb") as src:
                return self.put(key, src.read())
        return self.put(key, file.read())

    def stat(self, key: str) -> kvstore.EntryInfo:
        now = dt.datetime.now(dt.UTC)
        return kvstore.EntryInfo(key, len(self.get(key)), 1, now, now, None, None)

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"DictStore({len(self.data)} keys)"


def _all_decorators(inner: kvstore.KeyValueStore) -> Mapping[str, StoreDecorator]:
    return {
        "prefix": PrefixDecorator("p-", inner),
        "read-only": ReadOnlyDecorator(inner),
        "url": URLEncodeKeysDecorator(inner),
        "hash": HashDecorator(inner, template="h-{}"),
        "uuid": UUIDDecorator(inner, template="u-{}"),
        "hmac": HMACDecorator(SECRET, inner),
        "stack": PrefixDecorator("s-", HMACDecorator(SECRET, URLEncodeKeysDecorator(inner))),
    }


@pytest.mark.parametrize("name", list(_all_decorators(DictStore())))
def test_pickle_round_trip(name: str) -> None:
    inner = DictStore()
    writer = _all_decorators(inner)[name]
    if not isinstance(writer, ReadOnlyDecorator):
        writer.put("key", b"value")
    else:
        inner.put("key", b"value")
    clone = pickle.loads(pickle.dumps(writer))
    assert type(clone) is type(writer)
    assert repr(clone) == repr(writer)  # same configuration, same amount of data
    assert clone.get("key") == b"value"
    assert clone.keys() == writer.keys()
    assert clone.store is not inner  # the wrapped store travelled with it
    if not isinstance(clone, ReadOnlyDecorator):
        clone.put("other", b"2")
        assert clone.get("other") == b"2"
        assert "other" not in writer  # an independent copy


def test_pickled_hmac_keeps_its_secret() -> None:
    inner = DictStore()
    h = HMACDecorator(SECRET, inner, hashfunc=hashlib.sha512)
    h.put("a", b"1")
    clone = pickle.loads(pickle.dumps(h))
    assert clone.get("a") == b"1"
    clone.store.put("a", b"0" + clone.store.get("a")[1:])
    with pytest.raises(kvstore.VerificationError):
        clone.get("a")
    assert pickle.loads(pickle.dumps(HashDecorator(inner))).hashfunc is hashlib.sha256


def test_decorator_without_transactions_still_copies() -> None:
    inner = DictStore()
    h = HMACDecorator(SECRET, inner)
    h.put("a", b"1")
    h.move("a", "b")
    assert h.keys() == ["b"] and h.get("b") == b"1"
    with pytest.raises(NotImplementedError), h.transaction():
        pass
    with h:
        pass
    assert inner.closed
