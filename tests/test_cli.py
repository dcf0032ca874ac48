"""The ``kvstore`` command line, run in-process with click's CliRunner against a SQLite file and
PostgreSQL (a fresh namespace each), plus a few real subprocesses for exit codes and stderr.

Every result is checked against the database through the library, never against the CLI's own
word. ``KVSTORE_UPDATE_DOCS=1 pytest tests/test_cli.py -k reference`` regenerates the reference
part of ``docs/cli.md`` from ``--help``.
"""

from __future__ import annotations

import base64
import datetime as dt
import doctest
import json
import os
import pty
import re
import select
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

import kvstore
from kvstore.cli import cli, mask_secrets, sqlite_file

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "cli.md"
ALL_BYTES = bytes(range(256))


# -- helpers ---------------------------------------------------------------------------------
class KV:
    """Runs ``kvstore --url URL --namespace NS ...`` in-process."""

    def __init__(self, url: str, namespace: str, table_prefix: str = "kv_") -> None:
        self.url = url
        self.namespace = namespace
        self.table_prefix = table_prefix
        self.runner = CliRunner()

    def __call__(
        self, *args: str, input: bytes | str | None = None, env: dict[str, str | None] | None = None
    ) -> Result:
        argv = ["--url", self.url, "--namespace", self.namespace]
        if self.table_prefix != "kv_":
            argv += ["--table-prefix", self.table_prefix]
        return self.runner.invoke(cli, [*argv, *args], input=input, env=env, prog_name="kvstore")

    def ok(self, *args: str, input: bytes | str | None = None) -> Result:
        result = self(*args, input=input)
        assert result.exit_code == 0, (args, result.exit_code, result.stderr, result.exception)
        return result


def assert_error(result: Result, code: int, *fragments: str) -> str:
    """The command failed with ``code`` and exactly one ``kvstore: error:`` line on stderr."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kvstore: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def kv(shared_backend: Any) -> KV:
    # sqlite-memory is left out: each CLI invocation opens its own database, as a process would.
    return KV(shared_backend.url, shared_backend.namespace)


@pytest.fixture
def lib(shared_backend: Any) -> Iterator[kvstore.Store]:
    """The same namespace through the library, to check what the CLI really did."""
    s = shared_backend.connect()
    try:
        yield s
    finally:
        s.close()


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _utc(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


# -- put / get / rm / ls / stat / incr -----------------------------------------------------
def test_put_and_get_text(kv: KV, lib: kvstore.Store) -> None:
    assert kv.ok("put", "greeting", "hello, wörld").stdout == ""
    assert lib.get("greeting") == "hello, wörld".encode()
    result = kv.ok("get", "greeting")
    assert result.stdout_bytes == "hello, wörld".encode()  # raw bytes, no newline added
    kv.ok("put", "greeting", "")
    assert lib.get("greeting") == b""
    assert kv.ok("get", "greeting").stdout_bytes == b""


def test_get_missing_key_exits_1(kv: KV, lib: kvstore.Store) -> None:
    result = kv("get", "nope")
    assert_error(result, 1, "no such key: 'nope'")
    assert result.stdout_bytes == b""
    lib.put("short-lived", b"x", ttl_secs=0.001)
    time.sleep(0.01)
    assert_error(kv("get", "short-lived"), 1, "no such key")
    assert_error(kv("stat", "nope"), 1, "no such key: 'nope'")


def test_put_from_stdin_is_binary_exact(kv: KV, lib: kvstore.Store) -> None:
    kv.ok("put", "bin", "-", input=ALL_BYTES * 3)
    assert lib.get("bin") == ALL_BYTES * 3
    assert kv.ok("get", "bin").stdout_bytes == ALL_BYTES * 3
    kv.ok("put", "empty", "-", input=b"")
    assert lib.get("empty") == b""
    kv.ok("put", "via-file-dash", "--file", "-", input=b"\x00\x01")
    assert lib.get("via-file-dash") == b"\x00\x01"


def test_put_file_and_get_output_stream_large_values(
    kv: KV, lib: kvstore.Store, tmp_path: Path
) -> None:
    data = os.urandom(1 << 16) * 40 + b"tail"  # 2.5 MiB: several chunks of the default 1 MiB
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    kv.ok("put", "big", "--file", str(src), "--content-type", "application/octet-stream")
    assert lib.get("big") == data
    assert lib.stat("big").content_type == "application/octet-stream"
    dst = tmp_path / "out.bin"
    kv.ok("get", "big", "--output", str(dst))
    assert dst.read_bytes() == data
    assert kv.ok("get", "big").stdout_bytes == data
    # a missing key leaves an existing output file untouched, and no temporary file behind
    dst.write_bytes(b"precious")
    assert_error(kv("get", "nope", "-o", str(dst)), 1, "no such key")
    assert dst.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.bin")] == []


def test_put_options_ttl_content_type_metadata(kv: KV, lib: kvstore.Store) -> None:
    before = dt.datetime.now(dt.UTC)
    kv.ok(
        "put",
        "doc",
        '{"a": 1}',
        "--ttl",
        "120",
        "--content-type",
        "application/json",
        "--metadata",
        '{"owner": "ada", "tags": ["x"]}',
    )
    info = lib.stat("doc")
    assert info.content_type == "application/json"
    assert info.metadata == {"owner": "ada", "tags": ["x"]}
    assert info.expires_at is not None
    assert before + dt.timedelta(seconds=119) < info.expires_at < before + dt.timedelta(seconds=122)
    # replacing without options clears them, as the library's put does
    kv.ok("put", "doc", "plain")
    info = lib.stat("doc")
    assert (info.content_type, info.metadata, info.expires_at) == (None, {}, None)


def test_stat_prints_the_entry_info_as_json(kv: KV, lib: kvstore.Store) -> None:
    lib.put("k", b"\x00abc", ttl_secs=60, metadata={"m": [1, 2]}, content_type="x/y")
    lib.put("k", b"\x00abcd", ttl_secs=60, metadata={"m": [1, 2]}, content_type="x/y")
    shown = json.loads(kv.ok("stat", "k").stdout)
    info = lib.stat("k")
    assert shown == {
        "key": "k",
        "size": 5,
        "version": 2,
        "created_at": info.created_at.isoformat(),
        "updated_at": info.updated_at.isoformat(),
        "expires_at": info.expires_at.isoformat() if info.expires_at else None,
        "content_type": "x/y",
        "metadata": {"m": [1, 2]},
        "checksum": info.checksum,
    }
    assert _utc(shown["updated_at"]) == info.updated_at


def test_put_usage_errors_exit_2_and_write_nothing(
    kv: KV, lib: kvstore.Store, tmp_path: Path
) -> None:
    assert_error(kv("put", "k"), 2, "missing value")
    assert_error(kv("put", "k", "v", "--file", __file__), 2, "not both")
    assert_error(kv("put", "k", "v", "--metadata", "{oops"), 2, "--metadata", "not valid JSON")
    assert_error(kv("put", "k", "v", "--metadata", "[1, 2]"), 2, "must be a JSON object")
    assert_error(kv("put", "k", "v", "--ttl", "-1"), 2, "--ttl")
    assert_error(kv("put", "k", "v", "--ttl", "soon"), 2, "--ttl")
    assert_error(kv("put", "k", "--file", str(tmp_path / "missing.bin")), 2, "does not exist")
    assert_error(kv("put", "a b", "v"), 2, "invalid key 'a b'")
    assert_error(kv("put", "x" * 251, "v"), 2, "at most 250")
    assert_error(kv("put", "k", "v", "--bogus"), 2, "No such option")
    assert_error(kv("frobnicate"), 2, "No such command")
    assert_error(kv("get"), 2, "Missing argument 'KEY'")
    assert lib.keys() == []


def test_invalid_key_is_rejected_before_the_database_is_touched(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    runner = CliRunner()
    for args in (["put", "no/slash", "v"], ["get", "a b"], ["rm", "ok", "é"], ["ls", "bad prefix"]):
        result = runner.invoke(cli, ["--url", f"sqlite:///{db}", *args])
        assert_error(result, 2, "invalid key" if args[0] != "ls" else "no key can start with")
    assert not db.exists()


def test_rm_deletes_and_reports_missing_keys(kv: KV, lib: kvstore.Store) -> None:
    lib.put_many({"a": b"1", "b": b"2", "c": b"3"})
    kv.ok("rm", "a", "b")
    assert lib.keys() == ["c"]
    result = kv("rm", "c", "gone", "also-gone")
    assert_error(result, 1, "no such keys: 'gone', 'also-gone'")
    assert lib.keys() == []  # the existing key was still deleted
    kv.ok("rm", "--force", "gone")
    assert_error(kv("rm"), 2, "Missing argument")
    assert_error(kv("rm", "ok", "not ok"), 2, "invalid key")


def test_ls_lists_keys_sorted_with_prefix(kv: KV, lib: kvstore.Store) -> None:
    keys = ["b", "a", "user-2", "user-10", "user-1", "user_x", "User-3", "us"]
    lib.put_many({k: k.encode() for k in keys})
    lib.put("expired", b"", ttl_secs=0)
    assert kv.ok("ls").stdout.splitlines() == sorted(keys)
    assert kv.ok("ls", "user-").stdout.splitlines() == ["user-1", "user-10", "user-2"]
    assert kv.ok("ls", "user_").stdout.splitlines() == ["user_x"]  # '_' is no wildcard
    assert kv.ok("ls", "zzz").stdout == ""


def test_ls_long_shows_size_version_and_times(kv: KV, lib: kvstore.Store) -> None:
    lib.put("a", b"12345")
    lib.put("a", b"123456")
    lib.put("b", b"", ttl_secs=3600)
    lines = kv.ok("ls", "--long").stdout.splitlines()
    assert len(lines) == 2
    rows = [line.split() for line in lines]
    for row, key in zip(rows, ["a", "b"], strict=True):
        info = lib.stat(key)
        size, version, updated, expires, name = row
        assert name == key
        assert (int(size), int(version)) == (info.size, info.version)
        assert abs(_utc(updated) - info.updated_at) < dt.timedelta(seconds=1)
        if info.expires_at is None:
            assert expires == "-"
        else:
            assert abs(_utc(expires) - info.expires_at) < dt.timedelta(seconds=1)
    assert rows[0][:2] == ["6", "2"]


def test_incr(kv: KV, lib: kvstore.Store) -> None:
    assert kv.ok("incr", "n").stdout == "1\n"
    assert kv.ok("incr", "n", "5").stdout == "6\n"
    assert kv.ok("incr", "n", "-10").stdout == "-4\n"  # a negative delta is not an option
    assert lib.get("n") == b"-4"
    assert kv.ok("incr", "fresh", "2", "--initial", "100").stdout == "102\n"
    lib.put("text", b"not a number")
    assert_error(kv("incr", "text"), 2, "not an integer")
    assert_error(kv("incr", "n", "1.5"), 2, "DELTA")


# -- groups without a command ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("group", "commands"),
    [
        ((), ["db", "dict", "export", "get", "import", "index", "ls", "namespaces", "purge"]),
        (("db",), ["check", "current", "upgrade"]),
        (("index",), ["create", "drop", "find", "list", "rebuild"]),
    ],
)
def test_a_group_without_a_command_prints_its_help(
    group: tuple[str, ...], commands: list[str], tmp_path: Path
) -> None:
    """click's convention: the group's whole help (not one error line) on stderr, status 2."""
    env: dict[str, str | None] = {"KVSTORE_URL": f"sqlite:///{tmp_path / 'never.db'}"}
    result = CliRunner().invoke(cli, list(group), prog_name="kvstore", env=env)
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    help_text = result.stderr
    assert help_text.startswith(f"Usage: {' '.join(('kvstore', *group))} [OPTIONS] COMMAND")
    assert "kvstore: error" not in help_text
    assert help_text == CliRunner().invoke(cli, [*group, "--help"], prog_name="kvstore").stdout
    listed = help_text.split("\nCommands:\n", 1)[1]
    for c in commands:
        assert re.search(rf"^  {re.escape(c)}\s", listed, re.M), (c, listed)
    # options but no command is an ordinary usage error, as click has it
    result = CliRunner().invoke(cli, ["--namespace", "x", *group], prog_name="kvstore", env=env)
    if group:
        assert result.exit_code == 2 and result.stderr.startswith("Usage: ")
    else:
        assert_error(result, 2, "Missing command")
    assert not (tmp_path / "never.db").exists()


def test_purge_deletes_expired_entries_and_says_how_many(kv: KV, lib: kvstore.Store) -> None:
    result = kv.ok("purge")
    assert (result.stdout, result.stderr) == ("", "kvstore: deleted 0 expired entries\n")
    lib.put_many({f"gone-{i}": b"x" for i in range(3)}, ttl_secs=0.001)
    lib.put("stays", b"y", ttl_secs=3600)
    lib.put("forever", b"z")
    other = lib.namespace(lib.namespace_name + "-other")
    other.put("gone-too", b"x", ttl_secs=0.001)
    time.sleep(0.01)
    result = kv.ok("purge")
    assert (result.stdout, result.stderr) == ("", "kvstore: deleted 3 expired entries\n")
    assert sorted(lib.keys()) == ["forever", "stays"]
    assert other.purge_expired() == 1  # another namespace's were left alone
    lib.put("one", b"x", ttl_secs=0.001)
    time.sleep(0.01)
    assert kv.ok("purge").stderr == "kvstore: deleted 1 expired entry\n"


def test_purge_is_a_write_and_creates_the_database(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    assert (
        KV(f"sqlite:///{path}", "default")
        .ok("purge")
        .stderr.endswith("deleted 0 expired entries\n")
    )
    with kvstore.connect(f"sqlite:///{path}", create=False) as s:
        assert s.keys() == []


def test_namespaces_lists_every_namespace_with_counts_and_sizes(
    kv: KV, lib: kvstore.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = lib.namespace_name
    lib.put_many({"a": b"12345", "b": b"", "c": b"x" * 1000})
    lib.put("expired", b"gone", ttl_secs=0.001)
    lib.namespace(ns + "-other").put("k", b"vv")
    lib.dict("my[dict]")["key"] = [1, 2]  # derived namespace; [brackets] are not rich markup
    time.sleep(0.01)
    want = {
        ns: (3, 1005),
        ns + "-other": (1, 2),
        ns + "/d/my[dict]": (1, 5),
    }
    # Whatever --namespace says: every namespace of the tables. PostgreSQL's are shared with
    # other tests, so only these are checked; the rows are the library's, in its order.
    result = kv.ok("namespaces")
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert all(len(row) == 3 for row in rows), rows
    mine = {name: (int(n), int(size)) for name, n, size in rows if name.startswith(ns)}
    assert mine == want
    # the library's rows, in its order (only this test's: others may write meanwhile)
    assert [r[0] for r in rows if r[0].startswith(ns)] == [
        i.name for i in lib.namespaces() if i.name.startswith(ns)
    ]
    doc = json.loads(kv.ok("namespaces", "--json").stdout)
    assert {d["name"]: (d["entries"], d["size"]) for d in doc if d["name"].startswith(ns)} == want
    assert set(doc[0]) == {"name", "entries", "size"}
    # on a terminal: a table
    monkeypatch.setattr("kvstore.cli._stdout_is_terminal", lambda: True)
    table = kv.ok("namespaces").stdout
    assert "NAMESPACE" in table and "ENTRIES" in table and "SIZE" in table
    assert "my[dict]" in table and "1.0 kB" in table and "\t" not in table


def test_namespaces_is_a_read(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    kv = KV(f"sqlite:///{path}", "default")
    assert_error(kv("namespaces"), 2, f"cannot open database {path}: no such file")
    assert not path.exists()
    sqlite3.connect(path).close()
    assert_error(kv("namespaces", "--json"), 1, f"no kvstore tables (table prefix kv_) in {path}")
    kvstore.connect(f"sqlite:///{path}").close()
    assert kv.ok("namespaces").stdout == ""  # tables, but no live entry
    assert json.loads(kv.ok("namespaces", "--json").stdout) == []


def test_namespaces_table_on_a_real_terminal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with kvstore.connect(url) as s:
        s.put("k", b"v" * 2000)
    code, out, err = _run_with_stderr_on_a_terminal(
        ["--url", url, "namespaces"], tmp_path, terminal="stdout"
    )
    assert (code, err) == (0, b"")
    text = out.decode()
    assert "NAMESPACE" in text and "default" in text and "2.0 kB" in text and "\t" not in text
    code, out, err = _run_with_stderr_on_a_terminal(["--url", url, "namespaces"], tmp_path)
    assert (code, out) == (0, b"default\t1\t2000\n")  # stdout is a pipe here


# -- connection, URL, environment, masking ----------------------------------------------------
def test_url_from_environment_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    env_db = tmp_path / "env.db"
    result = runner.invoke(
        cli, ["put", "k", "from-env"], env={"KVSTORE_URL": f"sqlite:///{env_db}"}
    )
    assert result.exit_code == 0, result.stderr
    with kvstore.connect(f"sqlite:///{env_db}") as s:
        assert s.get("k") == b"from-env"
    # no --url and no $KVSTORE_URL: ./kvstore.db, created on first use
    result = runner.invoke(cli, ["put", "k", "default"], env={"KVSTORE_URL": None})
    assert result.exit_code == 0, result.stderr
    with kvstore.connect(f"sqlite:///{tmp_path / 'kvstore.db'}") as s:
        assert s.get("k") == b"default"
    # --url wins over the environment
    other = tmp_path / "other.db"
    kvstore.connect(f"sqlite:///{other}").close()
    result = runner.invoke(
        cli, ["--url", f"sqlite:///{other}", "get", "k"], env={"KVSTORE_URL": f"sqlite:///{env_db}"}
    )
    assert_error(result, 1, "no such key")


def test_namespace_and_table_prefix_options(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ns.db'}"
    KV(url, "one").ok("put", "k", "1")
    KV(url, "two").ok("put", "k", "2")
    KV(url, "one", table_prefix="app_kv_").ok("put", "k", "3")
    assert KV(url, "one").ok("get", "k").stdout == "1"
    assert KV(url, "two").ok("get", "k").stdout == "2"
    assert KV(url, "one", table_prefix="app_kv_").ok("get", "k").stdout == "3"
    with kvstore.connect(url, namespace="one", table_prefix="app_kv_") as s:
        assert s.get("k") == b"3"
    assert_error(KV(url, "bad/ns")("ls"), 2, "namespace")
    assert_error(KV(url, "one", table_prefix="Bad-Prefix")("ls"), 2, "table_prefix")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("garbage", "not a database URL"),
        ("mssql://bob:hunter2@localhost/db", "supports SQLite, PostgreSQL and MariaDB"),
        (
            "mysql://bob:hunter2@127.0.0.1:1/db",
            "cannot open database mysql://bob:***@127.0.0.1:1/db",
        ),
        (
            "postgresql://bob:hunter2@127.0.0.1:1/db",
            "cannot open database postgresql://bob:***@127.0.0.1:1/db",
        ),
        ("postgresql://bob:hunter2@[::1/db", "not a database URL"),
        ("sqlite:////nonexistent-dir/sub/x.db", "cannot open database"),
    ],
)
def test_bad_urls_exit_2_with_masked_password(url: str, fragment: str) -> None:
    runner = CliRunner()
    for args in (["--url", url, "ls"], [f"--url={url}", "get", "k"]):
        line = assert_error(runner.invoke(cli, args), 2, fragment)
        assert "hunter2" not in line
    # the same through $KVSTORE_URL
    line = assert_error(runner.invoke(cli, ["ls"], env={"KVSTORE_URL": url}), 2, fragment)
    assert "hunter2" not in line


def test_url_encoded_and_odd_passwords_are_masked() -> None:
    runner = CliRunner()
    for password in ("p%40ss%3Aword", "we!rd#pw", "a@b"):
        url = f"postgresql://bob:{password}@127.0.0.1:1/db"
        line = assert_error(runner.invoke(cli, ["--url", url, "stat", "k"]), 2)
        for secret in (password, "p@ss:word"):
            assert secret not in line
        assert "***" in line
    assert mask_secrets("x postgresql://u:pw@h/db y", ["pw"]) == "x postgresql://u:***@h/db y"
    assert mask_secrets("password pw was rejected", ["pw"]) == "password *** was rejected"


def test_a_read_that_waited_for_a_lock_is_not_taken_for_missing_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kv = KV(f"sqlite:///{tmp_path / 'kv.db'}", "default")
    kv.ok("put", "k", "v")

    def locked(*args: Any, **kwargs: Any) -> None:
        raise kvstore.LockTimeoutError("gave up waiting for a lock held by another transaction")

    def inspected(*args: Any) -> None:
        raise AssertionError("the tables were inspected")

    monkeypatch.setattr(kvstore.Store, "get_file", locked)
    monkeypatch.setattr("kvstore.cli.missing_tables_message", inspected)
    assert_error(kv("get", "k"), 1, "database error: gave up waiting for a lock")


# -- dict ----------------------------------------------------------------------------------------
def test_dict_get_and_ls_read_a_persistent_dict(kv: KV, lib: kvstore.Store) -> None:
    settings = lib.dict("settings")
    values: dict[str, Any] = {
        "theme": {"dark": True, "accent": "Zürich ☃", "sizes": [1, 2.5, None]},
        "n": 3,
        "a key with spaces\tand a tab": "text",
        "ключ": [],
    }
    settings.update(values)
    lib.namespace(lib.namespace_name + "-other").dict("settings")["elsewhere"] = 1
    for key, value in values.items():
        result = kv.ok("dict", "settings", "get", key)
        assert json.loads(result.stdout) == value
        assert result.stdout.endswith("\n")
    assert kv.ok("dict", "settings", "get", "theme").stdout == (
        json.dumps(values["theme"], indent=2, ensure_ascii=False) + "\n"
    )
    assert kv.ok("dict", "settings", "ls").stdout == "".join(k + "\n" for k in sorted(values))
    listing = kv.ok("dict", "settings", "ls", "--json").stdout
    assert json.loads(listing) == values
    assert listing.splitlines()[1] == '  "a key with spaces\\tand a tab": "text",'  # one per line
    assert_error(kv("dict", "settings", "get", "elsewhere"), 1, "no such key in dict 'settings'")
    # a dict nobody wrote is empty, like a new one in the library
    assert kv.ok("dict", "nothing", "ls").stdout == ""
    assert kv.ok("dict", "nothing", "ls", "--json").stdout == "{}\n"
    assert_error(kv("dict", "nothing", "get", "k"), 1, "no such key in dict 'nothing': 'k'")
    # reading it created nothing (other tests may write elsewhere in a shared database meanwhile)
    assert not [i for i in lib.namespaces() if i.name.startswith(lib.namespace_name + "/d/nothing")]


def test_dict_with_raw_values_and_values_that_are_not_json(kv: KV, lib: kvstore.Store) -> None:
    blobs = lib.dict("blobs", serializer="raw")
    blobs["bin"] = ALL_BYTES
    blobs["text"] = b'{"looks": "like json"}'
    assert kv.ok("dict", "blobs", "get", "bin", "--serializer", "raw").stdout_bytes == ALL_BYTES
    assert kv.ok("dict", "blobs", "ls", "--serializer", "raw").stdout == "bin\ntext\n"
    assert json.loads(kv.ok("dict", "blobs", "get", "text").stdout) == {"looks": "like json"}
    line = assert_error(kv("dict", "blobs", "get", "bin"), 1, "the value of 'bin' in dict 'blobs'")
    assert "is not JSON" in line and "--serializer raw" in line
    result = kv("dict", "blobs", "ls", "--json")
    assert_error(result, 1, "a value in dict 'blobs' is not JSON")
    assert result.stdout == ""  # the first value failed: not even the opening brace
    assert_error(kv("dict", "blobs", "ls", "--json", "--serializer", "raw"), 2, "--json")
    assert_error(kv("dict", "blobs", "get", "k", "--serializer", "pickle"), 2, "'pickle'")


def test_dict_usage(kv: KV) -> None:
    kv.ok("put", "k", "v")  # the database exists: the errors below are about the arguments
    result = kv("dict")
    assert result.exit_code == 2 and result.stderr.startswith("Usage: kvstore dict [OPTIONS] NAME")
    assert_error(kv("dict", "settings"), 2, "Missing command")
    assert_error(kv("dict", "settings", "get"), 2, "Missing argument 'KEY'")
    assert_error(kv("dict", "", "ls"), 2, "collection names")
    usage = kv.ok("dict", "settings", "get", "--help").stdout
    assert usage.startswith("Usage: kvstore dict NAME get [OPTIONS] KEY")


# -- reads never create anything ----------------------------------------------------------------
#: Every command that only reads, with arguments; none of them may create a file or a table.
READS: list[tuple[str, ...]] = [
    ("get", "k"),
    ("get", "k", "--output", "out.bin"),
    ("ls",),
    ("ls", "--long", "p"),
    ("stat", "k"),
    ("export",),
    ("export", "out.jsonl"),
    ("index", "list"),
    ("index", "list", "--json"),
    ("index", "find", "by_x", "1"),
    ("namespaces",),
    ("namespaces", "--json"),
    ("dict", "d", "get", "k"),
    ("dict", "d", "get", "k", "--serializer", "raw"),
    ("dict", "d", "ls"),
    ("dict", "d", "ls", "--json"),
]


def test_reads_never_create_a_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in [*READS, ("db", "current"), ("db", "check")]:
        # the path the user wrote, relative, is the one the error names
        result = runner.invoke(cli, ["--url", "sqlite:///typo.db", *args])
        line = assert_error(result, 2, "cannot open database typo.db: no such file")
        assert "nothing was created" in line and str(tmp_path) not in line
        assert result.stdout == ""
        assert sorted(os.listdir(tmp_path)) == [], args
    # the same through $KVSTORE_URL, an absolute path, and a SQLite URI filename
    result = runner.invoke(cli, ["ls"], env={"KVSTORE_URL": f"sqlite:///{tmp_path}/a/b.db"})
    assert_error(result, 2, f"cannot open database {tmp_path}/a/b.db: no such file")
    result = runner.invoke(cli, ["--url", "sqlite:///file:typo.db?uri=true", "ls"])
    assert_error(result, 2, "cannot open database typo.db: no such file")
    result = runner.invoke(cli, ["--url", "sqlite:///file:typo.db?mode=ro&uri=true", "ls"])
    assert_error(result, 2, "cannot open database")  # SQLite's own refusal: mode=ro
    assert_error(runner.invoke(cli, ["--url", f"sqlite:///{tmp_path}", "ls"]), 2, "a directory")
    assert sorted(os.listdir(tmp_path)) == []
    # a write creates the file and its tables, as ever
    runner.invoke(cli, ["--url", "sqlite:///typo.db", "put", "k", "v"])
    assert runner.invoke(cli, ["--url", "sqlite:///typo.db", "get", "k"]).stdout == "v"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///rel/x.db", "rel/x.db"),
        ("sqlite:////abs/x.db", "/abs/x.db"),
        ("sqlite+pysqlite:///x.db", "x.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("sqlite:///file:x%20y.db?uri=true", "x y.db"),
        ("sqlite:///file:///abs/x.db?uri=true", "/abs/x.db"),
        ("sqlite:///file:x.db?mode=rw&uri=true", None),
        ("sqlite:///file::memory:?uri=true", None),
        ("postgresql://u:p@h/db", None),
        ("garbage", None),
    ],
)
def test_sqlite_file_of_a_url(url: str, path: str | None) -> None:
    assert sqlite_file(url) == path


def _no_tables(url: str, prefix: str) -> bool:
    engine = sa.create_engine(url)
    try:
        return not [t for t in sa.inspect(engine).get_table_names() if t.startswith(prefix)]
    finally:
        engine.dispose()


def test_reads_on_a_database_without_kvstore_tables(
    shared_backend: Any, fresh_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty PostgreSQL database (a table prefix no one used), or a SQLite file of someone
    else's tables: a read says there are no kvstore tables, status 1, and creates none."""
    cwd = tmp_path / "cwd"  # where --output files would land
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    url = shared_backend.url
    path = sqlite_file(url)
    if path is not None:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE app_users (id INTEGER PRIMARY KEY)")
    where = path or url
    kv = KV(url, shared_backend.namespace, table_prefix=fresh_prefix)
    for args in READS:
        result = kv(*args)
        assert_error(
            result,
            1,
            f"no kvstore tables (table prefix {fresh_prefix}) in {where}; run `kvstore db upgrade`",
        )
        assert result.stdout == ""
        assert not os.listdir(cwd)  # no --output file, no temporary file left
    assert _no_tables(url, fresh_prefix)
    assert kv.ok("db", "current").stdout == ""
    assert _no_tables(url, fresh_prefix)
    # a write creates the tables; then the reads work
    kv.ok("put", "k", "v")
    assert kv.ok("get", "k").stdout == "v"
    assert kv.ok("ls").stdout == "k\n"


def test_a_read_names_missing_tables_when_some_are_there(tmp_path: Path) -> None:
    path = tmp_path / "partial.db"
    kvstore.connect(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE kv_entries")
    kv = KV(f"sqlite:///{path}", "default")
    assert_error(kv("ls"), 1, f"kvstore's tables in {path} are incomplete (no kv_entries)")
    # a failure that is not about tables is reported as it is
    path.write_bytes(b"not a database, only bytes" * 100)
    assert_error(kv("ls"), 2, "cannot open database", "file is not a database")


# -- import / export -----------------------------------------------------------------------------
ENTRIES: dict[str, bytes] = {
    "text": "Zürich ☃ line\nbreak".encode(),
    "empty": b"",
    "binary": ALL_BYTES,
    "latin1": "café".encode("latin-1"),  # not UTF-8: must travel as base64
    "json": b'{"n": 1}',
}


def _fill(lib: kvstore.Store) -> None:
    for key, value in ENTRIES.items():
        lib.put(key, value)
    lib.put(
        "meta", b"m", metadata={"owner": "ada", "nested": {"x": [1, 2]}}, content_type="text/plain"
    )
    lib.put("ttl", b"t", ttl_secs=3600)


def test_export_format(kv: KV, lib: kvstore.Store) -> None:
    _fill(lib)
    records = {r["key"]: r for r in _jsonl(kv.ok("export").stdout)}
    assert list(records) == sorted(records)
    assert records["text"] == {"key": "text", "value": "Zürich ☃ line\nbreak"}
    assert records["empty"] == {"key": "empty", "value": ""}
    assert records["binary"] == {"key": "binary", "value_b64": base64.b64encode(ALL_BYTES).decode()}
    assert base64.b64decode(records["latin1"]["value_b64"]) == "café".encode("latin-1")
    assert records["meta"] == {
        "key": "meta",
        "value": "m",
        "content_type": "text/plain",
        "metadata": {"owner": "ada", "nested": {"x": [1, 2]}},
    }
    expires = lib.stat("ttl").expires_at
    assert expires is not None
    assert records["ttl"] == {"key": "ttl", "value": "t", "expires_at": expires.isoformat()}


def test_export_import_round_trip(kv: KV, lib: kvstore.Store, tmp_path: Path) -> None:
    _fill(lib)
    before = {k: lib.stat(k) for k in lib.iter_keys()}
    out = tmp_path / "dump.jsonl"
    kv.ok("export", str(out))
    assert out.read_text("utf-8") == kv.ok("export", "-").stdout
    lib.delete_many(lib.keys())
    result = kv.ok("import", str(out))
    assert result.stderr == f"kvstore: imported {len(before)} entries\n"
    assert lib.keys() == sorted(before)
    values = {**ENTRIES, "meta": b"m", "ttl": b"t"}
    for key, info in before.items():
        assert lib.get(key) == values[key]
        new = lib.stat(key)
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


def test_import_from_stdin_with_ttl_and_expiry(kv: KV, lib: kvstore.Store) -> None:
    now = dt.datetime.now(dt.UTC)
    past = (now - dt.timedelta(hours=1)).isoformat()
    future = (now + dt.timedelta(hours=2)).replace(tzinfo=None).isoformat()  # naive: UTC
    lines = [
        {"key": "a", "value": "1", "ttl_secs": 60},
        {"key": "b", "value_b64": base64.b64encode(b"\xff").decode(), "expires_at": future},
        {"key": "gone", "value": "x", "expires_at": past},
        {"key": "c", "value": "3", "ttl_secs": None, "metadata": None},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    result = kv.ok("import", input=text)
    assert result.stderr == "kvstore: imported 3 entries, skipped 1 already expired\n"
    assert lib.keys() == ["a", "b", "c"]
    assert lib.get("b") == b"\xff"
    a, b, c = (lib.stat(k) for k in "abc")
    assert a.expires_at is not None and abs(
        a.expires_at - (now + dt.timedelta(seconds=60))
    ) < dt.timedelta(seconds=5)
    assert b.expires_at is not None and abs(
        b.expires_at - (now + dt.timedelta(hours=2))
    ) < dt.timedelta(seconds=5)
    assert c.expires_at is None


def test_import_replaces_existing_keys_and_last_line_wins(kv: KV, lib: kvstore.Store) -> None:
    lib.put("k", b"old", metadata={"old": True})
    text = '{"key": "k", "value": "first"}\n{"key": "k", "value": "second"}\n'
    kv.ok("import", "-", input=text)
    assert lib.get("k") == b"second"
    assert lib.stat("k").metadata == {}


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"value": "v"}', "missing 'key'"),
        ('{"key": "a b", "value": "v"}', "invalid key 'a b'"),
        ('{"key": "k"}', "exactly one of 'value'"),
        ('{"key": "k", "value": "v", "value_b64": "AA=="}', "exactly one of 'value'"),
        ('{"key": "k", "value": 5}', "'value' must be a string"),
        ('{"key": "k", "value_b64": "***"}', "not valid base64"),
        ('{"key": "k", "value": "v", "metadata": [1]}', "'metadata' must be a JSON object"),
        ('{"key": "k", "value": "v", "ttl_secs": -1}', "'ttl_secs' must be a non-negative number"),
        ('{"key": "k", "value": "v", "expires_at": "tomorrow"}', "ISO-8601"),
        (
            '{"key": "k", "value": "v", "ttl_secs": 1, "expires_at": "2030-01-01T00:00:00Z"}',
            "not both",
        ),
        ('{"key": "k", "value": "v", "ttl": 5}', "unknown field(s) 'ttl'"),
    ],
)
def test_import_rejects_a_bad_line_naming_it(tmp_path: Path, line: str, fragment: str) -> None:
    # Parsing does not depend on the database: one SQLite file is enough here, and
    # test_import_bad_line_commits_earlier_batches covers the batching on every backend.
    url = f"sqlite:///{tmp_path / 'lines.db'}"
    text = '{"key": "g0", "value": "0"}\n' + line + "\n"
    assert_error(KV(url, "default")("import", input=text), 2, "line 2: ", fragment)
    with kvstore.connect(url) as s:
        assert s.keys() == []


def test_import_bad_line_commits_earlier_batches(kv: KV, lib: kvstore.Store) -> None:
    good = [json.dumps({"key": f"g{i}", "value": str(i)}) for i in range(5)]
    text = "\n".join([*good, "{oops", json.dumps({"key": "after", "value": "x"})]) + "\n"
    # batches of 2: lines 1-4 are committed before the batch holding line 6 fails
    result = kv("import", "--batch-size", "2", input=text)
    assert_error(result, 2, "line 6: not valid JSON", "the 4 entries before line 5 were imported")
    assert lib.keys() == ["g0", "g1", "g2", "g3"]
    lib.delete_many(lib.keys())
    result = kv("import", "--batch-size", "2", "--atomic", input=text)
    assert_error(result, 2, "line 6: not valid JSON", "nothing was imported (--atomic)")
    assert lib.keys() == []


def test_import_rejects_non_utf8_lines(kv: KV, lib: kvstore.Store) -> None:
    assert_error(kv("import", input=b'{"key": "k", "value": "\xff"}\n'), 2, "line 1: not UTF-8")
    assert lib.keys() == []


def test_import_unique_violation_rolls_back_its_batch(kv: KV, lib: kvstore.Store) -> None:
    kv.ok("index", "create", "by_email", "--json-field", "email", "--unique")
    lines = [
        json.dumps({"key": f"u{i}", "value": json.dumps({"email": f"{i}@x"})}) for i in range(4)
    ]
    lines.append(json.dumps({"key": "dup", "value": json.dumps({"email": "1@x"})}))
    lines.append(json.dumps({"key": "u9", "value": json.dumps({"email": "9@x"})}))
    result = kv("import", "--batch-size", "3", input="\n".join(lines))
    assert_error(
        result, 1, "line 5: unique index 'by_email'", "the 3 entries before line 4 were imported"
    )
    assert lib.keys() == ["u0", "u1", "u2"]
    assert lib.find("by_email", "2@x") == ["u2"]


def test_import_atomic_is_all_or_nothing_across_batches(kv: KV, lib: kvstore.Store) -> None:
    kv.ok("index", "create", "by_email", "--json-field", "email", "--unique")
    lines = [
        json.dumps({"key": f"u{i}", "value": json.dumps({"email": f"{i}@x"})}) for i in range(10)
    ]
    lines.append(json.dumps({"key": "dup", "value": json.dumps({"email": "1@x"})}))
    assert_error(
        kv("import", "--atomic", "--batch-size", "3", input="\n".join(lines)),
        1,
        "line 11",
        "--atomic",
    )
    assert lib.keys() == []
    kv.ok("import", "--atomic", "--batch-size", "3", input="\n".join(lines[:-1]))
    assert len(lib.keys()) == 10


def test_export_prefix_and_file_replaced_only_on_success(
    kv: KV, lib: kvstore.Store, tmp_path: Path
) -> None:
    lib.put_many({"user-1": b"a", "user-2": b"b", "other": b"c"})
    assert [r["key"] for r in _jsonl(kv.ok("export", "--prefix", "user-").stdout)] == [
        "user-1",
        "user-2",
    ]
    out = tmp_path / "sub" / "dump.jsonl"
    line = assert_error(kv("export", str(out)), 2, f"cannot write {out}: No such file or directory")
    assert ".tmp" not in line
    out.parent.mkdir()
    kv.ok("export", str(out), "--prefix", "oth")
    assert _jsonl(out.read_text()) == [{"key": "other", "value": "c"}]
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as `> FILE` would make it
    out.chmod(0o640)
    kv.ok("export", str(out))
    assert out.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
    assert_error(kv("export", "--prefix", "bad prefix"), 2, "no key can start with")


def test_output_file_errors_name_the_users_path_never_a_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    kv = KV("sqlite:///kv.db", "default")
    kv.ok("put", "k", "v")
    for args, path in [
        (("get", "k", "--output", "no/such/dir/v.bin"), "no/such/dir/v.bin"),
        (("export", "no/such/dir/dump.jsonl"), "no/such/dir/dump.jsonl"),
        (("get", "k", "-o", "kv.db/v.bin"), "kv.db/v.bin"),  # a file where a directory should be
    ]:
        line = assert_error(kv(*args), 2, f"cannot write {path}: ")
        assert ".tmp" not in line and str(tmp_path) not in line
    # a failure at the end (here, renaming the finished file into place) is named the same way
    # and leaves no temporary file behind

    def refuse(src: str, dst: str) -> None:
        raise OSError(18, "Invalid cross-device link", src, None, dst)

    monkeypatch.setattr("kvstore.cli.os.replace", refuse)
    for args in (("get", "k", "-o", "v.bin"), ("export", "dump.jsonl")):
        line = assert_error(kv(*args), 1, f"cannot write {args[-1]}: Invalid cross-device link")
        assert ".tmp" not in line
    assert sorted(os.listdir(tmp_path)) == ["kv.db"]


def test_progress_bar_never_touches_stdout(kv: KV, lib: kvstore.Store, tmp_path: Path) -> None:
    lib.put_many({f"k{i:05d}": str(i).encode() for i in range(1500)})
    result = kv.ok("export", "--progress")
    records = _jsonl(result.stdout)  # every stdout line is still a JSON record
    assert len(records) == 1500
    assert "exporting" in result.stderr
    # not a terminal and not forced: no bar, even for a large input
    dump = tmp_path / "dump.jsonl"
    dump.write_text(result.stdout)
    lib.delete_many(lib.keys())
    result = kv.ok("import", str(dump))
    assert result.stderr == "kvstore: imported 1500 entries\n"
    lib.delete_many(lib.keys())
    result = kv.ok("import", str(dump), "--progress")
    assert "importing" in result.stderr
    assert result.stdout == ""
    assert len(lib) == 1500


# -- indexes -----------------------------------------------------------------------------------
def _people(lib: kvstore.Store) -> None:
    people = {
        "ada": {"name": "Ada", "email": "ada@example.org", "age": 36, "tags": ["math", "code"]},
        "grace": {"name": "Grace", "email": "grace@example.org", "age": 45, "tags": ["code"]},
        "alan": {"name": "Alan", "email": "alan@example.org", "age": 41, "zip": "01234"},
    }
    for key, doc in people.items():
        lib.put(key, json.dumps(doc).encode())


def test_index_create_list_find_rebuild_drop(kv: KV, lib: kvstore.Store) -> None:
    _people(lib)
    kv.ok("index", "create", "by_email", "--json-field", "email", "--unique")
    kv.ok("index", "create", "by_age", "--json-field", "age")
    kv.ok("index", "create", "by_age", "--json-field", "age")  # same definition: a no-op
    assert_error(kv("index", "create", "by_age", "--json-field", "name"), 1, "already exists")
    infos = {i.name: i for i in lib.indexes()}
    assert (infos["by_email"].kind, infos["by_email"].definition, infos["by_email"].unique) == (
        "json",
        "email",
        True,
    )
    listing = kv.ok("index", "list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "KIND", "DEFINITION", "UNIQUE"]
    assert sorted(line.split() for line in listing[1:]) == [
        ["by_age", "json", "age", "no"],
        ["by_email", "json", "email", "yes"],
    ]
    as_json = json.loads(kv.ok("index", "list", "--json").stdout)
    assert sorted(as_json, key=lambda d: d["name"]) == [
        {"name": "by_age", "kind": "json", "definition": "age", "unique": False, "declared": True},
        {
            "name": "by_email",
            "kind": "json",
            "definition": "email",
            "unique": True,
            "declared": True,
        },
    ]
    assert kv.ok("index", "find", "by_email", "ada@example.org").stdout == "ada\n"
    assert kv.ok("index", "find", "by_age", "45").stdout == "grace\n"
    assert kv.ok("index", "find", "by_age", "--gt", "40").stdout.split() == ["alan", "grace"]
    assert kv.ok(
        "index", "find", "by_age", "--ge", "36", "--lt", "45", "--order", "desc"
    ).stdout.split() == ["alan", "ada"]
    assert kv.ok("index", "find", "by_age", "--gt", "0", "--limit", "1").stdout.split() == ["ada"]
    assert kv.ok("index", "find", "by_age", "--gt", "0", "--after", "ada").stdout.split() == [
        "alan",
        "grace",
    ]
    assert kv.ok("index", "find", "by_email", "--prefix", "a").stdout.split() == ["ada", "alan"]
    # writes through the CLI keep the index current
    kv.ok("put", "linus", '{"email": "linus@example.org", "age": 45}')
    assert lib.find("by_age", 45) == ["grace", "linus"]
    kv.ok("index", "rebuild", "by_age")
    assert kv.ok("index", "find", "by_age", "45").stdout.split() == ["grace", "linus"]
    assert_error(kv("index", "rebuild", "nope"), 1, "no index named 'nope'")


def test_index_drop(kv: KV, lib: kvstore.Store) -> None:
    _people(lib)
    lib.create_index("by_age", kvstore.json_field("age"))
    lib.create_index("by_email", kvstore.json_field("email"))
    kv.ok("index", "drop", "by_age")
    assert [i.name for i in lib.indexes()] == ["by_email"]
    assert lib.find("by_email", "ada@example.org") == ["ada"]  # the other index is untouched
    assert_error(kv("index", "find", "by_age", "45"), 1, "no index named 'by_age'")
    assert_error(kv("index", "drop", "by_age"), 1, "no index named 'by_age'")


def test_index_find_value_typing(kv: KV, lib: kvstore.Store) -> None:
    _people(lib)
    lib.put("zip-int", b'{"zip": 1234}')
    lib.put("zip-str", b'{"zip": "1234"}')
    kv.ok("index", "create", "by_zip", "--json-field", "zip")
    assert kv.ok("index", "find", "by_zip", "1234").stdout.split() == ["zip-int"]
    assert kv.ok("index", "find", "by_zip", '"1234"').stdout.split() == ["zip-str"]
    assert kv.ok("index", "find", "by_zip", "--string", "1234").stdout.split() == ["zip-str"]
    assert kv.ok("index", "find", "by_zip", "01234").stdout.split() == ["alan"]  # not JSON: text
    kv.ok("index", "create", "by_tag", "--json-field", "tags")
    assert kv.ok("index", "find", "by_tag", "code").stdout.split() == ["ada", "grace"]
    assert_error(kv("index", "find", "by_zip", "[1]"), 2, "use --string")
    assert_error(kv("index", "find", "by_zip"), 2, "give VALUE")
    assert_error(kv("index", "find", "by_zip", "1", "--gt", "0"), 2, "not both")
    assert_error(kv("index", "find", "by_zip", "--gt", "0", "--lt", "z"), 2, "one type")


def test_index_cli_errors(kv: KV, lib: kvstore.Store) -> None:
    result = kv("index", "create", "by_x")
    assert_error(result, 2, "--json-field PATH is required", "callable index")
    assert_error(kv("index", "create", "bad name", "--json-field", "x"), 2, "index names")
    assert_error(kv("index", "create", "ok", "--json-field", "a..b"), 2, "dotted path")
    kv.ok("index", "create", "by_email", "--json-field", "email", "--unique")
    kv.ok("put", "a", '{"email": "same"}')
    assert_error(
        kv("put", "b", '{"email": "same"}'), 1, "unique index 'by_email'", "already held by 'a'"
    )
    assert lib.keys() == ["a"]
    assert kv.ok("index", "list").stdout.count("\n") == 2


def test_callable_index_declared_elsewhere_blocks_cli_writes(kv: KV, lib: kvstore.Store) -> None:
    lib.create_index("by_len", _length)
    listing = kv.ok("index", "list").stdout
    assert "callable (not declared here)" in listing and "by_len" in listing
    assert_error(kv("put", "k", "v"), 1, "by_len", "not declared")
    assert_error(kv("index", "rebuild", "by_len"), 1, "by_len")
    assert lib.keys() == []


def _length(value: bytes) -> int:
    return len(value)


# -- db ------------------------------------------------------------------------------------------
@pytest.fixture
def migrations() -> Any:
    return pytest.importorskip(
        "kvstore.migrations",
        reason="kvstore/migrations.py (the `db` commands' library side) is missing",
    )


@pytest.fixture
def fresh_prefix(shared_backend: Any, migrations: Any) -> Iterator[str]:
    """A table prefix no test has used: an empty schema, removed afterwards."""
    prefix = "t" + uuid.uuid4().hex[:10] + "_"
    yield prefix
    migrations.downgrade(shared_backend.url, "base", table_prefix=prefix)


def test_db_upgrade_current_check(shared_backend: Any, fresh_prefix: str, migrations: Any) -> None:
    kv = KV(shared_backend.url, shared_backend.namespace, table_prefix=fresh_prefix)
    path = sqlite_file(shared_backend.url)
    if path is not None and not os.path.exists(path):
        # reading the revision of a SQLite file that is not there creates no file
        assert_error(kv("db", "current"), 2, f"cannot open database {path}: no such file")
        assert_error(kv("db", "check"), 2, f"cannot open database {path}: no such file")
        assert not os.path.exists(path)
        sqlite3.connect(path).close()  # an empty database file
    result = kv("db", "current")
    assert result.exit_code == 0 and result.stdout == ""
    assert "no kvstore migration" in result.stderr
    result = kv("db", "check")
    assert_error(result, 1, "differs from kvstore's models")
    assert result.stdout.splitlines() == migrations.check(
        shared_backend.url, table_prefix=fresh_prefix
    )
    assert f"{fresh_prefix}entries" in result.stdout
    kv.ok("db", "upgrade")
    head = migrations.current(shared_backend.url, table_prefix=fresh_prefix)
    assert head is not None
    assert kv.ok("db", "current").stdout == head + "\n"
    result = kv.ok("db", "check")
    assert result.stdout == ""
    assert migrations.check(shared_backend.url, table_prefix=fresh_prefix) == []
    kv.ok("put", "k", "v")  # the migrated schema is usable
    assert kv.ok("get", "k").stdout == "v"
    assert_error(kv("db", "upgrade", "nonexistent-revision"), 2, "nonexistent-revision")


def test_options_also_follow_the_command(tmp_path: Any, migrations: Any) -> None:
    """API.md spells it `kvstore db upgrade --url URL`: the shared options work after the
    command name too, overriding the global ones."""
    url = f"sqlite:///{tmp_path}/after.db"
    runner = CliRunner()
    up = runner.invoke(cli, ["db", "upgrade", "--url", url, "--table-prefix", "late_"])
    assert up.exit_code == 0, up.output
    assert migrations.current(url, table_prefix="late_") is not None
    put = runner.invoke(
        cli, ["--url", "sqlite:///elsewhere.db", "put", "k", "v", "--url", url, "--namespace", "n2"]
    )
    assert put.exit_code == 0, put.output
    with kvstore.connect(url, namespace="n2") as store:
        assert store.get("k") == b"v"
    assert not (tmp_path / "elsewhere.db").exists()


def test_db_commands_report_bad_urls(migrations: Any) -> None:
    runner = CliRunner()
    for sub in ("upgrade", "current", "check"):
        line = assert_error(
            runner.invoke(cli, ["--url", "postgresql://u:hunter2@127.0.0.1:1/x", "db", sub]),
            2,
            "cannot open database",
        )
        assert "hunter2" not in line
        assert_error(runner.invoke(cli, ["--url", "nope", "db", sub]), 2, "not a database URL")


def test_db_commands_do_not_create_tables(tmp_path: Path, migrations: Any) -> None:
    path = tmp_path / "empty.db"
    url = f"sqlite:///{path}"
    for sub in ("check", "current"):
        assert_error(CliRunner().invoke(cli, ["--url", url, "db", sub]), 2, f"{path}: no such file")
    assert not path.exists()
    sqlite3.connect(path).close()
    assert_error(CliRunner().invoke(cli, ["--url", url, "db", "check"]), 1)
    assert migrations.current(url) is None
    assert migrations.check(url) != []
    assert sa.inspect(sa.create_engine(url)).get_table_names() == []


# -- real processes --------------------------------------------------------------------------------
def _entry_point() -> Path:
    script = Path(sys.executable).with_name("kvstore")
    if not script.exists():
        pytest.skip(f"the kvstore console script is not installed next to {sys.executable}")
    return script


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KVSTORE_URL"}
    env.update(extra)
    return env


def _runner(cmd: list[str], cwd: Path) -> Any:
    def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*cmd, *args], input=stdin, capture_output=True, cwd=cwd, env=_clean_env(), timeout=60
        )

    return run


def test_real_process_exit_codes_and_stderr(tmp_path: Path) -> None:
    run = _runner([sys.executable, "-m", "kvstore"], tmp_path)
    p = run("put", "greeting", "-", stdin=ALL_BYTES)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"", b"")
    assert (tmp_path / "kvstore.db").exists()  # the default URL, created on first use
    p = run("get", "greeting")
    assert (p.returncode, p.stdout, p.stderr) == (0, ALL_BYTES, b"")
    p = run("get", "missing")
    assert (p.returncode, p.stdout, p.stderr) == (
        1,
        b"",
        b"kvstore: error: no such key: 'missing'\n",
    )
    p = run("--url", "postgresql://bob:hunter2@127.0.0.1:1/db", "ls")
    assert p.returncode == 2 and p.stderr.count(b"\n") == 1, p.stderr
    assert b"hunter2" not in p.stderr and b"bob:***@" in p.stderr and b"Traceback" not in p.stderr
    p = run()  # no command: the help, on stderr
    assert (p.returncode, p.stdout) == (2, b"")
    assert p.stderr.startswith(b"Usage: kvstore [OPTIONS] COMMAND") and b"\nCommands:\n" in p.stderr


def test_installed_entry_point(tmp_path: Path) -> None:
    run = _runner([str(_entry_point())], tmp_path)
    p = run("put", "bad key", "v")
    assert (p.returncode, p.stdout) == (2, b"")
    assert p.stderr.startswith(b"kvstore: error: Invalid value for 'KEY': invalid key 'bad key'")
    assert p.stderr.count(b"\n") == 1
    assert not (tmp_path / "kvstore.db").exists()  # refused before the database was opened
    p = run("incr", "n", "-5")
    assert (p.returncode, p.stdout, p.stderr) == (0, b"-5\n", b"")
    p = run("--version")
    assert (p.returncode, p.stdout) == (0, f"kvstore, version {kvstore.__version__}\n".encode())


def test_real_process_piped_output_closed_early(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'many.db'}"
    with kvstore.connect(url) as s:
        s.put_many({f"k{i:05d}": b"x" for i in range(20000)})
    ls = subprocess.Popen(
        [sys.executable, "-m", "kvstore", "--url", url, "ls"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_clean_env(),
    )
    assert ls.stdout is not None and ls.stderr is not None
    assert ls.stdout.readline() == b"k00000\n"
    ls.stdout.close()  # like `kvstore ls | head -1`
    err = ls.stderr.read()
    ls.wait(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err


def _run_with_stderr_on_a_terminal(
    args: Sequence[str], cwd: Path, terminal: str = "stderr"
) -> tuple[int, bytes, bytes]:
    """Run the CLI with stdout to a pipe and stderr to a pseudo-terminal (or the other way
    round, with ``terminal="stdout"``); (status, out, err)."""
    master, slave = pty.openpty()
    on_stdout = terminal == "stdout"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvstore", *args],
        stdout=slave if on_stdout else subprocess.PIPE,
        stderr=subprocess.PIPE if on_stdout else slave,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env=_clean_env(TERM="xterm-256color", COLUMNS="100"),
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # the terminal must be read, or the child blocks writing to it
        while True:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                chunks.append(data)
            elif proc.poll() is not None:
                return

    reader = threading.Thread(target=drain)
    reader.start()
    out, err = proc.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    if on_stdout:
        return proc.returncode, b"".join(chunks), err
    return proc.returncode, out, b"".join(chunks)


def test_progress_bar_appears_on_a_terminal_only_for_large_inputs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    big = tmp_path / "big.jsonl"
    big.write_text(
        "".join(json.dumps({"key": f"k{i:05d}", "value": "v" * 50}) + "\n" for i in range(1500))
    )
    small = tmp_path / "small.jsonl"
    small.write_text('{"key": "s", "value": "v"}\n')
    code, out, err = _run_with_stderr_on_a_terminal(["--url", url, "import", str(small)], tmp_path)
    assert (code, out) == (0, b"")
    assert err.decode().strip() == "kvstore: imported 1 entry"
    code, out, err = _run_with_stderr_on_a_terminal(["--url", url, "import", str(big)], tmp_path)
    assert (code, out) == (0, b"")
    assert b"importing" in err and b"\x1b[" in err  # a live bar was drawn
    assert b"kvstore: imported 1500 entries" in err
    code, out, err = _run_with_stderr_on_a_terminal(["--url", url, "export"], tmp_path)
    assert code == 0
    assert b"exporting" in err
    assert len(_jsonl(out.decode())) == 1501  # stdout carries only the data


def test_the_library_never_imports_the_cli() -> None:
    code = (
        "import sys, kvstore; s = kvstore.connect('sqlite://'); s.put('k', b'v'); s.close();"
        "print(sorted(m for m in sys.modules if m == 'click' or m.startswith(('kvstore.cli', 'rich'))))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), timeout=60
    )
    assert (p.returncode, p.stdout.strip()) == (0, "[]"), p.stderr
    for path in (REPO / "kvstore").rglob("*.py"):
        if path.name not in ("cli.py", "__main__.py"):
            assert not re.search(
                r"^\s*(import|from)\s+(click|rich|kvstore\.cli|\.cli)\b", path.read_text(), re.M
            ), path


# -- docs ------------------------------------------------------------------------------------------
def _commands(
    cmd: click.Command, path: tuple[str, ...] = (), argv: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], tuple[str, ...], click.Command]]:
    """Every command: its names, the arguments that reach it (a group's own arguments as
    their placeholders: `dict NAME get`), and the command."""
    yield path, argv, cmd
    if isinstance(cmd, click.Group):
        own = tuple(
            p.human_readable_name for p in cmd.params if isinstance(p, click.Argument) and path
        )
        for name in sorted(cmd.commands):
            yield from _commands(cmd.commands[name], (*path, name), (*argv, *own, name))


def _help(argv: tuple[str, ...]) -> str:
    result = CliRunner().invoke(
        cli, [*argv, "--help"], prog_name="kvstore", terminal_width=100, env={"KVSTORE_URL": None}
    )
    assert result.exit_code == 0, result.stderr
    return result.stdout


REF_START = "<!-- reference: generated by tests/test_cli.py from --help; do not edit by hand -->"
REF_END = "<!-- end of reference -->"


def reference_markdown() -> str:
    parts = [REF_START, ""]
    for path, argv, _cmd in _commands(cli):
        title = " ".join(("kvstore", *path))
        parts += [f"### `{title}`", "", "```text", _help(argv).rstrip(), "```", ""]
    parts.append(REF_END)
    return "\n".join(parts)


def test_every_command_is_documented() -> None:
    text = DOCS.read_text("utf-8")
    commands = [(" ".join(("kvstore", *path)), " ".join(argv)) for path, argv, _ in _commands(cli)]
    assert len(commands) >= 18  # the tree was walked: group, commands and subcommands
    prose = text.split(REF_START)[0]
    for name, spelled in commands:
        assert f"### `{name}`" in text, f"{name} has no reference entry in docs/cli.md"
        # and the hand-written part mentions every command too, not just the generated one
        assert f"`{spelled}" in prose or name == "kvstore", f"{name} not described in docs/cli.md"


def test_reference_is_current() -> None:
    text = DOCS.read_text("utf-8")
    want = reference_markdown()
    start, end = text.find(REF_START), text.find(REF_END)
    assert start != -1 and end != -1, "docs/cli.md lost its reference markers"
    current = text[start : end + len(REF_END)]
    if current != want and os.environ.get("KVSTORE_UPDATE_DOCS") == "1":
        DOCS.write_text(text[:start] + want + text[end + len(REF_END) :], "utf-8")
        return
    assert current == want, (
        "docs/cli.md is out of date: run KVSTORE_UPDATE_DOCS=1 pytest tests/test_cli.py -k reference"
    )


def _example_blocks(text: str) -> list[list[tuple[str, str]]]:
    """The ```console blocks of docs/cli.md as (command, expected output) pairs."""
    blocks = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        steps: list[tuple[str, str]] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], ""))
            else:
                assert steps, f"output before any command in docs/cli.md: {line!r}"
                cmd, out = steps[-1]
                steps[-1] = (cmd, out + line + "\n")
        blocks.append(steps)
    return blocks


def test_worked_example_in_the_docs_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``$ kvstore ...`` line of the docs' console examples runs, in a scratch directory
    with the default URL, and prints what the docs show (``...`` matches anything). So does
    each ``$ python -c ...`` line (with this interpreter), which sets up what a program would
    have written (a dict, say)."""
    monkeypatch.chdir(tmp_path)
    blocks = _example_blocks(DOCS.read_text("utf-8"))
    assert blocks, "docs/cli.md has no ```console example"
    checker = doctest.OutputChecker()
    runner = CliRunner()
    ran = 0
    for steps in blocks:
        for command, want in steps:
            argv = shlex.split(command)
            if argv[0] == "python":
                p = subprocess.run(
                    [sys.executable, *argv[1:]], capture_output=True, text=True, timeout=60
                )
                assert p.returncode == 0, (command, p.stderr)
                assert checker.check_output(want, p.stdout, doctest.ELLIPSIS), (command, p.stdout)
                continue
            if argv[0] != "kvstore":
                continue  # shell commands around the example (cat, printf) are illustration
            stdin = None
            if "<" in argv:
                at = argv.index("<")
                stdin = (tmp_path / argv[at + 1]).read_bytes()
                argv = argv[:at] + argv[at + 2 :]
            result = runner.invoke(
                cli, argv[1:], input=stdin, prog_name="kvstore", env={"KVSTORE_URL": None}
            )
            got = result.output
            if got and not got.endswith("\n"):
                got += "\n"  # `get` adds no newline; the docs show the prompt on its own line
            assert checker.check_output(want, got, doctest.ELLIPSIS), (
                f"$ {command}\nwant:\n{want}\ngot:\n{got}"
            )
            ran += 1
    assert ran >= 10


def test_db_upgrade_sql_prints_the_migrations_without_touching_the_database(
    shared_backend: Any, fresh_prefix: str, migrations: Any
) -> None:
    kv = KV(shared_backend.url, shared_backend.namespace, table_prefix=fresh_prefix)
    path = sqlite_file(shared_backend.url)
    existed = path is not None and os.path.exists(path)
    sql = kv.ok("db", "upgrade", "--sql").stdout
    assert f"CREATE TABLE {fresh_prefix}entries" in sql
    assert f"CREATE TRIGGER {fresh_prefix}entries" in sql
    assert "Running upgrade 0001 -> 0002" in sql
    # nothing was run: no SQLite file made, no table, no version stamp
    if path is not None and not existed:
        assert not os.path.exists(path)
    assert migrations.current(shared_backend.url, table_prefix=fresh_prefix) is None
    ranged = kv.ok("db", "upgrade", "0001:0002", "--sql").stdout
    assert "Running upgrade 0001 -> 0002" in ranged and "CREATE TABLE" not in ranged


def test_db_downgrade_reverts_and_base_removes_every_table(
    shared_backend: Any, fresh_prefix: str, migrations: Any
) -> None:
    kv = KV(shared_backend.url, shared_backend.namespace, table_prefix=fresh_prefix)
    kv.ok("put", "k", "v")
    kv.ok("db", "downgrade", "0001")
    assert migrations.current(shared_backend.url, table_prefix=fresh_prefix) == "0001"
    kv.ok("db", "upgrade")
    assert kv.ok("get", "k").stdout == "v"  # the data survived the round trip
    offline = kv.ok("db", "downgrade", "0002:0001", "--sql").stdout
    assert "Running downgrade 0002 -> 0001" in offline
    assert_error(kv("db", "downgrade", "0001", "--sql"), 2, "FROM:TO")
    kv.ok("db", "downgrade", "base")
    assert migrations.current(shared_backend.url, table_prefix=fresh_prefix) is None
    engine = sa.create_engine(shared_backend.url)
    try:
        left = [t for t in sa.inspect(engine).get_table_names() if t.startswith(fresh_prefix)]
    finally:
        engine.dispose()
    assert left == []
