"""kvstore.transfer, the JSON Lines import/export library the CLI calls, used directly."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json

import pytest

import kvstore
from kvstore import transfer
from kvstore.transfer import BadLine, ImportFailed, export_lines, import_lines

ALL_BYTES = bytes(range(256))
ENTRIES: dict[str, bytes] = {
    "text": "Zürich ☃ line\nbreak".encode(),
    "empty": b"",
    "binary": ALL_BYTES,
    "latin1": "café".encode("latin-1"),  # not UTF-8: travels as base64
}


def _fill(store: kvstore.Store) -> None:
    for key, value in ENTRIES.items():
        store.put(key, value)
    store.put("meta", b"m", metadata={"owner": "ada", "n": [1, 2]}, content_type="text/plain")
    store.put("ttl", b"t", ttl_secs=3600)


def _lines(*docs: object) -> list[str]:
    return [json.dumps(d) + "\n" for d in docs]


def _good(n: int) -> list[str]:
    return _lines(*({"key": f"g{i}", "value": str(i)} for i in range(n)))


def test_round_trip_keeps_values_metadata_content_type_and_ttl(store: kvstore.Store) -> None:
    _fill(store)
    before = {k: store.stat(k) for k in store.iter_keys()}
    dump = list(export_lines(store))
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in dump)
    records = [json.loads(line) for line in dump]
    assert [r["key"] for r in records] == sorted(before)
    by_key = {r["key"]: r for r in records}
    assert by_key["binary"] == {"key": "binary", "value_b64": base64.b64encode(ALL_BYTES).decode()}
    assert by_key["text"]["value"] == "Zürich ☃ line\nbreak"

    store.delete_many(store.keys())
    # the lines of a binary file come back as bytes: both kinds are accepted
    result = import_lines(store, io.BytesIO("".join(dump).encode("utf-8")))
    assert result == transfer.ImportResult(imported=len(before), skipped=0, lines=len(dump))
    assert store.keys() == sorted(before)
    values = {**ENTRIES, "meta": b"m", "ttl": b"t"}
    for key, info in before.items():
        assert store.get(key) == values[key]
        new = store.stat(key)
        assert (new.size, new.checksum, new.metadata, new.content_type) == (
            info.size,
            info.checksum,
            info.metadata,
            info.content_type,
        )
        if info.expires_at is None:
            assert new.expires_at is None
        else:
            assert new.expires_at is not None
            assert abs(new.expires_at - info.expires_at) < dt.timedelta(seconds=1)

    def timeless(lines: list[str]) -> list[dict[str, object]]:
        # expires_at comes back within the milliseconds an import takes, not to the microsecond
        return [{k: v for k, v in json.loads(line).items() if k != "expires_at"} for line in lines]

    assert timeless(list(export_lines(store))) == timeless(dump)
    store.delete_many(store.keys())
    assert import_lines(store, dump).imported == len(before)  # text lines work as bytes do
    assert timeless(list(export_lines(store))) == timeless(dump)


def test_import_skips_blank_lines_and_expired_records_and_last_line_wins(
    store: kvstore.Store,
) -> None:
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    lines = [
        "\ufeff" + json.dumps({"key": "k", "value": "first"}) + "\n",  # a BOM opening the text
        "\n",
        *_lines(
            {"key": "gone", "value": "x", "expires_at": past},
            {"key": "k", "value": "second", "ttl_secs": 60},
        ),
    ]
    result = import_lines(store, lines)
    assert (result.imported, result.skipped, result.lines) == (1, 1, 4)
    assert store.keys() == ["k"]
    assert store.get("k") == b"second"
    assert store.stat("k").expires_at is not None


def test_bad_line_in_an_atomic_import_writes_nothing(store: kvstore.Store) -> None:
    lines = [*_good(5), "{oops\n", *_good(1)]
    with pytest.raises(ImportFailed) as info:
        import_lines(store, lines, batch_size=2, atomic=True)
    err = info.value
    assert (err.line, err.last_line, err.committed, err.resume_line) == (6, 6, 0, 1)
    assert isinstance(err.__cause__, BadLine)
    assert str(err.__cause__).startswith("not valid JSON")
    assert str(err).startswith("line 6: not valid JSON")
    assert str(err).endswith("; nothing was written")
    assert store.keys() == []


def test_bad_line_in_a_batched_import_keeps_the_earlier_batches(store: kvstore.Store) -> None:
    lines = [*_good(5), "[1, 2]\n", *_good(1)]
    # batches of 2: lines 1-4 are committed; line 5 waits in the batch that line 6 stops
    with pytest.raises(ImportFailed) as info:
        import_lines(store, lines, batch_size=2)
    err = info.value
    assert (err.line, err.last_line, err.committed, err.resume_line) == (6, 6, 4, 5)
    assert err.reason == "expected a JSON object, got list"
    assert "the 4 entries were committed before line 5, nothing from there on" in str(err)
    assert store.keys() == ["g0", "g1", "g2", "g3"]


def test_a_line_that_is_not_utf8_is_a_bad_line(store: kvstore.Store) -> None:
    with pytest.raises(ImportFailed) as info:
        import_lines(store, [b'{"key": "a", "value": "1"}\n', b'{"key": "k", "value": "\xff"}\n'])
    err = info.value
    assert err.line == 2 and err.resume_line == 1  # line 1 was never written: no batch was full
    assert isinstance(err.__cause__, BadLine)
    assert isinstance(err.__cause__.__cause__, UnicodeDecodeError)
    assert store.keys() == []


def test_refused_write_names_its_line_and_rolls_back_its_batch(store: kvstore.Store) -> None:
    store.create_index("by_email", kvstore.json_field("email"), unique=True)
    docs = [{"key": f"u{i}", "value": json.dumps({"email": f"{i}@x"})} for i in range(4)]
    docs.append({"key": "dup", "value": json.dumps({"email": "1@x"})})
    docs.append({"key": "u9", "value": json.dumps({"email": "9@x"})})
    with pytest.raises(ImportFailed) as info:
        import_lines(store, _lines(*docs), batch_size=3)
    err = info.value
    assert isinstance(err.__cause__, kvstore.UniqueViolation)
    assert (err.line, err.last_line, err.committed, err.resume_line) == (5, 5, 3, 4)
    assert store.keys() == ["u0", "u1", "u2"]
    assert store.find("by_email", "2@x") == ["u2"]

    store.delete_many(store.keys())
    with pytest.raises(ImportFailed) as info:
        import_lines(store, _lines(*docs), batch_size=3, atomic=True)
    assert (info.value.committed, info.value.resume_line) == (0, 1)
    assert store.keys() == []


def test_progress_is_called_with_increasing_counts(store: kvstore.Store) -> None:
    lines = [*_good(3), "\n", *_good(7)[3:]]
    seen: list[int] = []
    result = import_lines(store, lines, batch_size=2, progress=seen.append)
    assert seen == list(range(1, len(lines) + 1))  # every line read, the blank one too
    assert result.imported == 7

    seen.clear()
    out = list(export_lines(store, progress=seen.append))
    assert seen == list(range(1, len(out) + 1)) and len(out) == 7


def test_export_of_a_prefix(store: kvstore.Store) -> None:
    store.put_many({"user-1": b"a", "user-2": b"b", "other": b"c"})
    lines = list(export_lines(store, "user-"))
    assert [json.loads(line) for line in lines] == [
        {"key": "user-1", "value": "a"},
        {"key": "user-2", "value": "b"},
    ]
    assert list(export_lines(store, "nobody")) == []
    with pytest.raises(kvstore.InvalidKeyError):
        export_lines(store, "bad prefix")  # refused when called, not at the first line


def test_arguments_are_checked(store: kvstore.Store) -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="batch_size"):
            import_lines(store, _good(1), batch_size=bad)  # type: ignore[arg-type]
    assert store.keys() == []


def test_parse_record_and_export_record_are_inverses(store: kvstore.Store) -> None:
    store.put("k", b"\x00\xff", metadata={"a": 1}, content_type="application/octet-stream")
    doc = transfer.export_record("k", store.stat("k"), store.get("k"))
    record = transfer.parse_record(json.dumps(doc), line=7)
    assert record == transfer.Record(
        7, "k", b"\x00\xff", None, {"a": 1}, "application/octet-stream"
    )
    assert transfer.parse_record("   \n") is None
    with pytest.raises(BadLine, match="unknown field"):
        transfer.parse_record('{"key": "k", "value": "v", "ttl": 5}')
