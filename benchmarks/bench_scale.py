"""Scale benchmark: kvstore against the raw driver and the peers, per operation and per size.

    python benchmarks/bench_scale.py --quick                  # smoke run, SQLite only, < 1 min
    python benchmarks/bench_scale.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
    python benchmarks/bench_scale.py --full --postgres URL --json before.json   # adds 1M keys
    python benchmarks/bench_scale.py --synchronous NORMAL    # SQLite durability (default FULL)
    python benchmarks/bench_scale.py --postgres URL --mariadb mariadb+pymysql://root@127.0.0.1/test

One process, one run. Every system does the same work on its own storage:

* ``kvstore (SQLite)``: ``kvstore.connect("sqlite:///file")`` (WAL, ``synchronous`` as given);
* ``sqlite3 raw``: the stdlib driver on its own file, WAL, same ``synchronous``, a rowid table
  with ``PRIMARY KEY (namespace, key)`` like kvstore's, and the best plain statement per job:
  an autocommitted upsert per ``put``, ``executemany`` in one ``BEGIN IMMEDIATE`` transaction
  for ``put_many``, ``IN (...)`` in chunks of 10,000 for ``get_many``, a primary-key range scan
  ``namespace = ? AND key >= ? AND key < ?`` for ``keys(prefix)``, one streamed
  ``SELECT key ... ORDER BY key`` to iterate, ``SELECT COUNT(*)`` for ``len`` and an index skip
  scan (``LIMIT 1`` per common prefix) for ``iter_prefixes``. It has no TTL, so its reads carry
  no expiry filter (kvstore's do: that is part of what the ratio measures);
* ``diskcache.Cache`` (default eviction policy) and ``diskcache.Index``, with
  ``sqlite_synchronous`` matching; they have no bulk or prefix calls, so ``put_many`` is a loop
  of ``set`` inside ``transact()``, ``get_many`` a loop of ``get``, and ``keys(prefix)`` /
  ``iter_prefixes`` a full scan that filters in Python (marked ``scan`` in the tables);
* ``sqlitedict`` (WAL, raw bytes codec, a blocking ``commit()`` after each ``put`` and after
  ``update()`` for ``put_many``; its own ``synchronous=OFF`` is raised to the others' setting);
* with ``--mariadb``: ``kvstore (MariaDB)`` (PyMySQL) on tables of its own and ``pymysql
  raw``: autocommit, PyMySQL's multi-row ``executemany`` in one transaction for ``put_many``,
  ``IN`` lists of 1,000 keys for ``get_many``, ``ANALYZE TABLE`` after each bulk load;
* with ``--postgres``: ``kvstore (PostgreSQL)`` on tables of its own (a per-run
  ``table_prefix``, dropped at the end) and ``psycopg raw``: psycopg 3, autocommit, prepared
  statements (``prepare=True``), binary results for values, ``= ANY(%s)`` for ``get_many``,
  ``executemany`` in one transaction for ``put_many``. Both tables get ``VACUUM ANALYZE``
  (untimed) after each round's bulk load, as autovacuum would in a steady state.

Workload (default sizes; ``--quick`` shrinks them): 5,000 single ``put`` and ``get`` of
100-byte values; ``put_many`` and ``get_many`` of 50,000 keys in one call; ``keys(prefix)``
matching 1% of them; ``len()``; iterating all keys; ``iter_prefixes("_")`` (100 common
prefixes); a batch-size sweep of ``put_many``/``get_many`` (1k/10k/100k keys per call, 100k
keys in all per size) with the peak memory of one call (tracemalloc, and RSS growth); and with
``--big`` (default with ``--full``) a 1,000,000-key dataset for ``len``, ``keys(prefix)``,
iteration and ``iter_prefixes``, to show how the cost grows. Writes are inserts of new keys
(each dataset is emptied, untimed, before it is rewritten).

Systems are interleaved: each round runs one operation on every system (in an order rotated
each round) before the next operation, so drift on this shared machine hits all of them; a
figure is the median over the rounds. ``vs raw`` and ``vs diskcache`` are kvstore's time over
the raw driver's (same dialect) and over ``diskcache.Cache``'s: 2.00x means kvstore takes twice
as long. Targets (the performance issue's) are checked on every kvstore row: ratio vs raw
<= 1.5x for put, get, put_many, get_many, keys(prefix), iterate and iter_prefixes, and on
SQLite ``len`` within 2x of diskcache's ``len``.

Uses kvstore's public API only. Not a test: numbers depend on the machine; run it on demand.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kvstore

Pairs = Sequence[tuple[str, bytes]]
DELIM = "_"
GROUPS = 100  # keys fall in 100 groups "g00_" .. "g99_": one prefix is 1% of the keys
PREFIX = "g42_"
#: len() calls timed together per round
LEN_CALLS = 20
RAW_IN_CHUNK = 10_000  # get_many chunk for raw sqlite3 (below SQLITE_MAX_VARIABLE_NUMBER)

# op -> (reference role, max ratio); len has a per-dialect rule (see target_for)
TARGETS: dict[str, tuple[str, float]] = {
    "put": ("raw", 1.5),
    "get": ("raw", 1.5),
    "put_many": ("raw", 1.5),
    "get_many": ("raw", 1.5),
    "keys(prefix)": ("raw", 1.5),
    "iterate": ("raw", 1.5),
    "iter_prefixes": ("raw", 1.5),
}


def target_for(op: str, dialect: str) -> tuple[str, float] | None:
    if op == "len":
        return ("diskcache", 2.0) if dialect == "sqlite" else None
    return TARGETS.get(op)


def key_of(i: int) -> str:
    return f"g{i % GROUPS:02d}{DELIM}{i:09d}"


def prefix_upper(prefix: str) -> str:
    """The smallest string above every string starting with ``prefix`` (ASCII keys)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def make_values(start: int, n: int, salt: bytes) -> list[bytes]:
    """``n`` distinct 100-byte values (a fresh salt per round: SQLite skips the fsync of a
    commit that rewrites identical bytes, which would flatter whoever rewrites most)."""
    return [i.to_bytes(8, "big") + salt for i in range(start, start + n)]


def now_us() -> int:
    return time.time_ns() // 1000


# -- memory ----------------------------------------------------------------------------------
def _libc_trim() -> Callable[[], None]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return lambda: libc.malloc_trim(0)
    except OSError:
        return lambda: None


malloc_trim = _libc_trim()


def _proc_status(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_memory(fn: Callable[[], Any]) -> tuple[int, int | None]:
    """(tracemalloc peak above the baseline, RSS high-water growth) of one call, in bytes.

    Two separate calls, so tracemalloc's own bookkeeping stays out of the RSS figure. The
    result of ``fn`` (e.g. get_many's dict) is part of the peak: it is the same for everyone.
    """
    gc.collect()
    malloc_trim()
    rss_delta: int | None = None
    before = _proc_status("VmRSS")
    if before is not None and _reset_hwm():
        out = fn()
        hwm = _proc_status("VmHWM")
        rss_delta = None if hwm is None else max(0, hwm - before)
        del out
    gc.collect()
    malloc_trim()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
        del out
    finally:
        tracemalloc.stop()
    return peak, rss_delta


# -- systems ---------------------------------------------------------------------------------
class System:
    name = ""
    dialect = "sqlite"
    role = "peer"  # "kvstore", "raw" or "peer"
    #: operations this system has no native call for (emulated with a full scan)
    scans: frozenset[str] = frozenset()

    def clear(self, ds: str) -> None: ...
    def put(self, ds: str, pairs: Pairs) -> None: ...
    def get(self, ds: str, keys: Sequence[str]) -> int: ...
    def put_many(self, ds: str, pairs: Pairs) -> None: ...
    def get_many(self, ds: str, keys: Sequence[str]) -> dict[str, bytes]: ...
    def keys_prefix(self, ds: str, prefix: str) -> list[str]: ...
    def length(self, ds: str) -> int: ...
    def iterate(self, ds: str) -> int: ...
    def iter_prefixes(self, ds: str, delimiter: str) -> list[str]: ...
    def after_load(self) -> None: ...
    def close(self) -> None: ...


class KvstoreSys(System):
    role = "kvstore"

    def __init__(
        self,
        url: str,
        dialect: str,
        sync: str,
        table_prefix: str,
        maint: PgMaintenance | MariaMaintenance | None = None,
    ) -> None:
        self.dialect = dialect
        self.maint = maint
        self.name = {"sqlite": "kvstore (SQLite)", "mariadb": "kvstore (MariaDB)"}.get(
            dialect, "kvstore (PostgreSQL)"
        )
        if dialect == "sqlite":
            self.root = kvstore.connect(url, sqlite_synchronous=sync)
        else:
            self.root = kvstore.connect(url, table_prefix=table_prefix)
        self.stores: dict[str, kvstore.Store] = {}

    def s(self, ds: str) -> kvstore.Store:
        store = self.stores.get(ds)
        if store is None:
            store = self.stores[ds] = self.root.namespace(f"bench_{ds}")
        return store

    def clear(self, ds: str) -> None:
        s = self.s(ds)
        keys = s.keys()
        for i in range(0, len(keys), 50_000):
            s.delete_many(keys[i : i + 50_000])

    def put(self, ds: str, pairs: Pairs) -> None:
        put = self.s(ds).put
        for k, v in pairs:
            put(k, v)

    def get(self, ds: str, keys: Sequence[str]) -> int:
        get = self.s(ds).get
        for k in keys:
            get(k)
        return len(keys)

    def put_many(self, ds: str, pairs: Pairs) -> None:
        self.s(ds).put_many(pairs)

    def get_many(self, ds: str, keys: Sequence[str]) -> dict[str, bytes]:
        return self.s(ds).get_many(keys)

    def keys_prefix(self, ds: str, prefix: str) -> list[str]:
        return self.s(ds).keys(prefix)

    def length(self, ds: str) -> int:
        return len(self.s(ds))

    def iterate(self, ds: str) -> int:
        n = 0
        for _ in self.s(ds).iter_keys():
            n += 1
        return n

    def iter_prefixes(self, ds: str, delimiter: str) -> list[str]:
        return list(self.s(ds).iter_prefixes(delimiter))

    def after_load(self) -> None:
        if self.maint is not None:
            self.maint.vacuum()

    def close(self) -> None:
        self.root.close()


RAW_SQLITE_DDL = """CREATE TABLE IF NOT EXISTS raw_entries (
  namespace VARCHAR(255) NOT NULL, key VARCHAR NOT NULL, value BLOB,
  version BIGINT NOT NULL, updated_at BIGINT NOT NULL, expires_at BIGINT,
  PRIMARY KEY (namespace, key))"""
RAW_UPSERT = (
    "INSERT INTO {t} (namespace, key, value, version, updated_at) VALUES ({p}, {p}, {p}, 1, {p}) "
    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
    "version = {t}.version + 1, updated_at = excluded.updated_at, expires_at = NULL"
)


class RawSqliteSys(System):
    name = "sqlite3 raw"
    role = "raw"

    def __init__(self, path: Path, sync: str) -> None:
        self.c = sqlite3.connect(path, isolation_level=None)
        self.c.execute("PRAGMA busy_timeout = 30000")
        self.c.execute("PRAGMA journal_mode = WAL")
        self.c.execute(f"PRAGMA synchronous = {sync}")
        self.c.execute(RAW_SQLITE_DDL)
        self.upsert = RAW_UPSERT.format(t="raw_entries", p="?")

    def clear(self, ds: str) -> None:
        self.c.execute("DELETE FROM raw_entries WHERE namespace = ?", (ds,))

    def put(self, ds: str, pairs: Pairs) -> None:
        ex, sql = self.c.execute, self.upsert
        for k, v in pairs:
            ex(sql, (ds, k, v, now_us()))

    def get(self, ds: str, keys: Sequence[str]) -> int:
        ex, sql = self.c.execute, "SELECT value FROM raw_entries WHERE namespace = ? AND key = ?"
        for k in keys:
            ex(sql, (ds, k)).fetchone()
        return len(keys)

    def put_many(self, ds: str, pairs: Pairs) -> None:
        now = now_us()
        self.c.execute("BEGIN IMMEDIATE")
        try:
            self.c.executemany(self.upsert, ((ds, k, v, now) for k, v in pairs))
        except BaseException:
            self.c.execute("ROLLBACK")
            raise
        self.c.execute("COMMIT")

    def get_many(self, ds: str, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for i in range(0, len(keys), RAW_IN_CHUNK):
            part = keys[i : i + RAW_IN_CHUNK]
            marks = ", ".join("?" * len(part))
            sql = f"SELECT key, value FROM raw_entries WHERE namespace = ? AND key IN ({marks})"
            out.update(self.c.execute(sql, (ds, *part)).fetchall())
        return out

    def keys_prefix(self, ds: str, prefix: str) -> list[str]:
        sql = (
            "SELECT key FROM raw_entries WHERE namespace = ? AND key >= ? AND key < ? ORDER BY key"
        )
        return [r[0] for r in self.c.execute(sql, (ds, prefix, prefix_upper(prefix)))]

    def length(self, ds: str) -> int:
        row = self.c.execute("SELECT COUNT(*) FROM raw_entries WHERE namespace = ?", (ds,))
        return int(row.fetchone()[0])

    def iterate(self, ds: str) -> int:
        n = 0
        sql = "SELECT key FROM raw_entries WHERE namespace = ? ORDER BY key"
        for _ in self.c.execute(sql, (ds,)):
            n += 1
        return n

    def iter_prefixes(self, ds: str, delimiter: str) -> list[str]:
        ge = "SELECT key FROM raw_entries WHERE namespace = ? AND key >= ? ORDER BY key LIMIT 1"
        gt = ge.replace(">=", ">")
        return skip_scan(
            lambda sql, lo: self.c.execute(sql, (ds, lo)).fetchone(), ge, gt, delimiter
        )

    def close(self) -> None:
        self.c.close()


def skip_scan(first: Callable[[str, str], Any], ge: str, gt: str, delimiter: str) -> list[str]:
    """minimalkv's iter_prefixes with one index seek per yielded item."""
    out: list[str] = []
    sql, lo = ge, ""
    while True:
        row = first(sql, lo)
        if row is None:
            return out
        key = row[0]
        pos = key.find(delimiter)
        if pos == -1:
            out.append(key)
            sql, lo = gt, key
        else:
            common = key[: pos + len(delimiter)]
            out.append(common)
            sql, lo = ge, prefix_upper(common)


class RawPgSys(System):
    name = "psycopg raw"
    dialect = "postgresql"
    role = "raw"

    def __init__(self, dsn: str, table: str) -> None:
        import psycopg

        self.t = table
        self.c = psycopg.connect(dsn, autocommit=True)
        self.c.execute(
            f"""CREATE TABLE IF NOT EXISTS {table} (
              namespace VARCHAR(255) NOT NULL, key VARCHAR COLLATE "C" NOT NULL, value BYTEA,
              version BIGINT NOT NULL, updated_at BIGINT NOT NULL, expires_at BIGINT,
              PRIMARY KEY (namespace, key))"""
        )
        self.upsert = RAW_UPSERT.format(t=table, p="%s")

    def clear(self, ds: str) -> None:
        self.c.execute(f"DELETE FROM {self.t} WHERE namespace = %s", (ds,))

    def put(self, ds: str, pairs: Pairs) -> None:
        ex, sql = self.c.execute, self.upsert
        for k, v in pairs:
            ex(sql, (ds, k, v, now_us()), prepare=True)

    def get(self, ds: str, keys: Sequence[str]) -> int:
        ex, sql = self.c.execute, f"SELECT value FROM {self.t} WHERE namespace = %s AND key = %s"
        for k in keys:
            ex(sql, (ds, k), prepare=True, binary=True).fetchone()
        return len(keys)

    def put_many(self, ds: str, pairs: Pairs) -> None:
        now = now_us()
        with self.c.transaction(), self.c.cursor() as cur:
            cur.executemany(self.upsert, ((ds, k, v, now) for k, v in pairs))

    def get_many(self, ds: str, keys: Sequence[str]) -> dict[str, bytes]:
        sql = f"SELECT key, value FROM {self.t} WHERE namespace = %s AND key = ANY(%s)"
        rows = self.c.execute(sql, (ds, list(keys)), prepare=True, binary=True).fetchall()
        return dict(rows)

    def keys_prefix(self, ds: str, prefix: str) -> list[str]:
        sql = (
            f"SELECT key FROM {self.t} WHERE namespace = %s AND key >= %s AND key < %s ORDER BY key"
        )
        cur = self.c.execute(sql, (ds, prefix, prefix_upper(prefix)), prepare=True)
        return [r[0] for r in cur]

    def length(self, ds: str) -> int:
        sql = f"SELECT COUNT(*) FROM {self.t} WHERE namespace = %s"
        row = self.c.execute(sql, (ds,), prepare=True).fetchone()
        return int(row[0]) if row else 0

    def iterate(self, ds: str) -> int:
        n = 0
        sql = f"SELECT key FROM {self.t} WHERE namespace = %s ORDER BY key"
        for _ in self.c.execute(sql, (ds,), prepare=True):
            n += 1
        return n

    def iter_prefixes(self, ds: str, delimiter: str) -> list[str]:
        ge = f"SELECT key FROM {self.t} WHERE namespace = %s AND key >= %s ORDER BY key LIMIT 1"
        gt = ge.replace(">=", ">")
        return skip_scan(
            lambda sql, lo: self.c.execute(sql, (ds, lo), prepare=True).fetchone(),
            ge,
            gt,
            delimiter,
        )

    def close(self) -> None:
        self.c.close()


class RawMariaSys(System):
    """PyMySQL on the same server: autocommit, a binary-collated key as kvstore's, multi-row
    ``executemany`` (PyMySQL folds ``INSERT ... VALUES`` into statements of many rows) in one
    transaction for ``put_many``, ``IN`` lists of 1,000 keys for ``get_many``."""

    name = "pymysql raw"
    dialect = "mariadb"
    role = "raw"

    def __init__(self, url: str, table: str) -> None:
        import pymysql
        from sqlalchemy.engine import make_url

        u = make_url(url)
        self.t = table
        self.c = pymysql.connect(
            host=u.host or "127.0.0.1",
            port=u.port or 3306,
            user=u.username or "root",
            password=u.password or "",
            database=u.database,
            autocommit=True,
            charset="utf8mb4",
        )
        self.cur = self.c.cursor()
        self.cur.execute(
            f"""CREATE TABLE IF NOT EXISTS {table} (
              namespace VARCHAR(255) NOT NULL,
              `key` VARCHAR(250) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
              value LONGBLOB, version BIGINT NOT NULL, updated_at BIGINT NOT NULL,
              expires_at BIGINT, PRIMARY KEY (namespace, `key`)) ENGINE=InnoDB"""
        )
        self.upsert = (
            f"INSERT INTO {table} (namespace, `key`, value, version, updated_at) "
            # (only %s in VALUES: PyMySQL folds nothing else into a multi-row statement)
            "VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE value = VALUES(value), "
            "version = version + 1, updated_at = VALUES(updated_at), expires_at = NULL"
        )

    def _all(self, sql: str, args: Any) -> list[Any]:
        self.cur.execute(sql, args)
        return list(self.cur.fetchall())

    def clear(self, ds: str) -> None:
        self.cur.execute(f"DELETE FROM {self.t} WHERE namespace = %s", (ds,))

    def put(self, ds: str, pairs: Pairs) -> None:
        ex, sql = self.cur.execute, self.upsert
        for k, v in pairs:
            ex(sql, (ds, k, v, 1, now_us()))

    def get(self, ds: str, keys: Sequence[str]) -> int:
        ex, sql = (
            self.cur.execute,
            f"SELECT value FROM {self.t} WHERE namespace = %s AND `key` = %s",
        )
        one = self.cur.fetchone
        for k in keys:
            ex(sql, (ds, k))
            one()
        return len(keys)

    def put_many(self, ds: str, pairs: Pairs) -> None:
        now = now_us()
        self.c.begin()
        try:
            self.cur.executemany(self.upsert, [(ds, k, v, 1, now) for k, v in pairs])
        except BaseException:
            self.c.rollback()
            raise
        self.c.commit()

    def get_many(self, ds: str, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for i in range(0, len(keys), 1000):
            part = list(keys[i : i + 1000])
            marks = ", ".join(["%s"] * len(part))
            sql = f"SELECT `key`, value FROM {self.t} WHERE namespace = %s AND `key` IN ({marks})"
            out.update(self._all(sql, (ds, *part)))
        return out

    def keys_prefix(self, ds: str, prefix: str) -> list[str]:
        sql = (
            f"SELECT `key` FROM {self.t} WHERE namespace = %s AND `key` >= %s AND `key` < %s "
            "ORDER BY `key`"
        )
        return [r[0] for r in self._all(sql, (ds, prefix, prefix_upper(prefix)))]

    def length(self, ds: str) -> int:
        rows = self._all(f"SELECT COUNT(*) FROM {self.t} WHERE namespace = %s", (ds,))
        return int(rows[0][0])

    def iterate(self, ds: str) -> int:
        sql = f"SELECT `key` FROM {self.t} WHERE namespace = %s ORDER BY `key`"
        return len(self._all(sql, (ds,)))

    def iter_prefixes(self, ds: str, delimiter: str) -> list[str]:
        ge = (
            f"SELECT `key` FROM {self.t} WHERE namespace = %s AND `key` >= %s "
            "ORDER BY `key` LIMIT 1"
        )
        gt = ge.replace(">=", ">")

        def first(sql: str, lo: str) -> Any:
            self.cur.execute(sql, (ds, lo))
            return self.cur.fetchone()

        return skip_scan(first, ge, gt, delimiter)

    def close(self) -> None:
        self.c.close()


class MariaMaintenance:
    """Untimed housekeeping on the MariaDB tables: ANALYZE TABLE, and the final DROP."""

    def __init__(self, url: str, table_prefix: str, raw_table: str) -> None:
        self.prefix = table_prefix
        self.raw = RawMariaSys(url, raw_table)  # its own connection, for after the others close

    def vacuum(self) -> None:
        for t in (f"{self.prefix}entries", f"{self.prefix}raw"):
            self.raw._all(f"ANALYZE TABLE {t}", ())

    def drop(self) -> None:
        rows = self.raw._all(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name LIKE %s",
            (self.prefix.replace("_", r"\_") + "%",),
        )
        self.raw.cur.execute("SET FOREIGN_KEY_CHECKS = 0")
        for (t,) in rows:
            self.raw.cur.execute(f"DROP TABLE IF EXISTS `{t}`")
        self.raw.cur.execute("SET FOREIGN_KEY_CHECKS = 1")
        self.raw.close()


class DiskcacheSys(System):
    role = "diskcache"
    scans = frozenset({"keys(prefix)", "iter_prefixes"})

    def __init__(self, root: Path, sync: str, index: bool) -> None:
        import diskcache  # type: ignore[import-untyped]

        self.dc = diskcache
        self.root = root
        self.sync = 2 if sync == "FULL" else 1
        self.index = index
        self.name = "diskcache.Index" if index else "diskcache.Cache"
        self.role = "peer" if index else "diskcache"
        self.gen = 0
        self.objs: dict[str, Any] = {}
        self.caches: dict[str, Any] = {}

    def o(self, ds: str) -> Any:
        obj = self.objs.get(ds)
        if obj is None:
            self.gen += 1
            path = self.root / f"{ds}-{self.gen}"
            if self.index:
                cache = self.dc.Cache(
                    str(path), eviction_policy="none", sqlite_synchronous=self.sync
                )
                obj = self.dc.Index.fromcache(cache)
            else:
                cache = obj = self.dc.Cache(str(path), sqlite_synchronous=self.sync)
            self.objs[ds], self.caches[ds] = obj, cache
        return obj

    def clear(self, ds: str) -> None:
        # A fresh directory is the fastest way to empty a cache (Cache.clear() deletes row by row).
        cache = self.caches.pop(ds, None)
        self.objs.pop(ds, None)
        if cache is not None:
            cache.close()
            shutil.rmtree(cache.directory, ignore_errors=True)

    def put(self, ds: str, pairs: Pairs) -> None:
        o = self.o(ds)
        if self.index:
            for k, v in pairs:
                o[k] = v
        else:
            s = o.set
            for k, v in pairs:
                s(k, v)

    def get(self, ds: str, keys: Sequence[str]) -> int:
        o = self.o(ds)
        if self.index:
            for k in keys:
                o[k]
        else:
            g = o.get
            for k in keys:
                g(k)
        return len(keys)

    def put_many(self, ds: str, pairs: Pairs) -> None:
        o = self.o(ds)
        with o.transact():
            self.put(ds, pairs)

    def get_many(self, ds: str, keys: Sequence[str]) -> dict[str, bytes]:
        o = self.o(ds)
        out: dict[str, bytes] = {}
        if self.index:
            for k in keys:
                with contextlib.suppress(KeyError):
                    out[k] = o[k]
        else:
            g, miss = o.get, object()
            for k in keys:
                v = g(k, miss)
                if v is not miss:
                    out[k] = v
        return out

    def keys_prefix(self, ds: str, prefix: str) -> list[str]:
        return sorted(k for k in self.o(ds) if k.startswith(prefix))

    def length(self, ds: str) -> int:
        return len(self.o(ds))

    def iterate(self, ds: str) -> int:
        n = 0
        for _ in self.o(ds):
            n += 1
        return n

    def iter_prefixes(self, ds: str, delimiter: str) -> list[str]:
        return sorted(
            {(k[: p + len(delimiter)] if (p := k.find(delimiter)) != -1 else k) for k in self.o(ds)}
        )

    def close(self) -> None:
        for c in self.caches.values():
            c.close()


class SqlitedictSys(System):
    name = "sqlitedict"
    scans = frozenset({"keys(prefix)", "iter_prefixes"})

    def __init__(self, root: Path, sync: str) -> None:
        from sqlitedict import SqliteDict  # type: ignore[import-untyped]

        self.cls = SqliteDict
        self.root = root
        self.sync = sync
        self.dicts: dict[str, Any] = {}

    def d(self, ds: str) -> Any:
        d = self.dicts.get(ds)
        if d is None:
            ident = lambda x: x  # noqa: E731 - values are bytes already: store them as they are
            d = self.dicts[ds] = self.cls(
                str(self.root / f"sd-{ds}.db"),
                tablename=ds,
                autocommit=False,
                journal_mode="WAL",
                encode=ident,
                decode=ident,
            )
            # sqlitedict sets synchronous=OFF (not durable): give it the others' durability
            d.conn.execute(f"PRAGMA synchronous = {self.sync}")
            d.commit()
        return d

    def clear(self, ds: str) -> None:
        self.d(ds).clear()

    def put(self, ds: str, pairs: Pairs) -> None:
        d = self.d(ds)
        for k, v in pairs:
            d[k] = v
            d.commit()  # blocking: returns once committed

    def get(self, ds: str, keys: Sequence[str]) -> int:
        d = self.d(ds)
        for k in keys:
            d[k]
        return len(keys)

    def put_many(self, ds: str, pairs: Pairs) -> None:
        d = self.d(ds)
        d.update(pairs)  # one transaction (a queued statement per key), one blocking commit
        d.commit()

    def get_many(self, ds: str, keys: Sequence[str]) -> dict[str, bytes]:
        d = self.d(ds)
        out: dict[str, bytes] = {}
        for k in keys:
            with contextlib.suppress(KeyError):
                out[k] = d[k]
        return out

    def keys_prefix(self, ds: str, prefix: str) -> list[str]:
        return sorted(k for k in self.d(ds) if k.startswith(prefix))

    def length(self, ds: str) -> int:
        return len(self.d(ds))

    def iterate(self, ds: str) -> int:
        n = 0
        for _ in self.d(ds):
            n += 1
        return n

    def iter_prefixes(self, ds: str, delimiter: str) -> list[str]:
        return sorted(
            {(k[: p + len(delimiter)] if (p := k.find(delimiter)) != -1 else k) for k in self.d(ds)}
        )

    def close(self) -> None:
        for d in self.dicts.values():
            d.close()


class PgMaintenance:
    """Untimed housekeeping on the PostgreSQL tables: VACUUM ANALYZE, and the final DROP."""

    def __init__(self, dsn: str, table_prefix: str, raw_table: str) -> None:
        import psycopg

        self.c = psycopg.connect(dsn, autocommit=True)
        self.prefix = table_prefix
        self.raw = raw_table

    def vacuum(self) -> None:
        for t in (f"{self.prefix}entries", self.raw):
            self.c.execute(f"VACUUM ANALYZE {t}")

    def drop(self) -> None:
        pattern = self.prefix.replace("_", r"\_") + "%"
        tables = self.c.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename LIKE %s",
            (pattern,),
        ).fetchall()
        for (t,) in tables:
            if t.startswith(self.prefix):
                self.c.execute(f'DROP TABLE IF EXISTS "{t}" CASCADE')
        funcs = self.c.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = current_schema() AND p.proname LIKE %s",
            (pattern,),
        ).fetchall()
        for (f,) in funcs:
            self.c.execute(f"DROP FUNCTION IF EXISTS {f} CASCADE")
        self.c.close()


# -- results ---------------------------------------------------------------------------------
@dataclass
class Row:
    section: str
    op: str
    label: str
    unit: str
    units: int
    system: str
    dialect: str
    role: str
    scan: bool
    samples: list[float] = field(default_factory=list)  # seconds per timed block

    @property
    def per_unit(self) -> float:
        return statistics.median(self.samples) / self.units


class Bench:
    def __init__(self, systems: list[System], rounds: int, quiet: bool = False) -> None:
        self.systems = systems
        self.rounds = rounds
        self.rows: dict[tuple[str, str, str], Row] = {}
        self.order: list[tuple[str, str]] = []  # (section, label) in first-seen order
        self.memory: list[dict[str, Any]] = []
        self.loads: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        self.quiet = quiet

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def rotated(self, r: int) -> list[System]:
        k = r % len(self.systems)
        return self.systems[k:] + self.systems[:k]

    def record(
        self,
        section: str,
        op: str,
        label: str,
        unit: str,
        units: int,
        system: System,
        seconds: float,
    ) -> None:
        key = (section, label, system.name)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = Row(
                section,
                op,
                label,
                unit,
                units,
                system.name,
                system.dialect,
                system.role,
                op in system.scans,
            )
            if (section, label) not in self.order:
                self.order.append((section, label))
        row.samples.append(seconds)

    def time(
        self,
        section: str,
        op: str,
        label: str,
        unit: str,
        units: int,
        system: System,
        fn: Callable[[], Any],
        check: Callable[[Any], bool] | None = None,
    ) -> None:
        gc.collect()
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        if check is not None and not check(out):
            raise AssertionError(f"{system.name} {label}: unexpected result {str(out)[:200]}")
        self.record(section, op, label, unit, units, system, dt)

    # -- phases -------------------------------------------------------------------------------
    def run_main(self, n_single: int, n_bulk: int) -> None:
        single_keys = [key_of(i) for i in range(n_single)]
        bulk_keys = [key_of(i) for i in range(n_bulk)]
        sec = f"{n_bulk:,} keys"
        for r in range(self.rounds):
            self.log(f"round {r + 1}/{self.rounds}: single put/get, bulk, scans on {n_bulk:,} keys")
            salt = os.urandom(92)
            single = list(zip(single_keys, make_values(0, n_single, salt), strict=True))
            bulk = list(zip(bulk_keys, make_values(0, n_bulk, salt), strict=True))
            order = self.rotated(r)
            for s in order:
                s.clear("single")
            for s in order:
                self.time(
                    sec,
                    "put",
                    f"put ({n_single:,} calls)",
                    "key",
                    n_single,
                    s,
                    lambda s=s, p=single: s.put("single", p),
                )
            for s in order:
                self.time(
                    sec,
                    "get",
                    f"get ({n_single:,} calls)",
                    "key",
                    n_single,
                    s,
                    lambda s=s: s.get("single", single_keys),
                )
            for s in order:
                s.clear("bulk")
            for s in order:
                s.after_load()
            for s in order:
                self.time(
                    sec,
                    "put_many",
                    f"put_many (1 call, {n_bulk:,} keys)",
                    "key",
                    n_bulk,
                    s,
                    lambda s=s, p=bulk: s.put_many("bulk", p),
                )
            for s in order:
                s.after_load()
            for s in order:
                self.time(
                    sec,
                    "get_many",
                    f"get_many (1 call, {n_bulk:,} keys)",
                    "key",
                    n_bulk,
                    s,
                    lambda s=s: s.get_many("bulk", bulk_keys),
                    lambda out: len(out) == n_bulk,
                )
            self.scans(sec, order, "bulk", n_bulk)

    def scans(self, sec: str, order: list[System], ds: str, n: int) -> None:
        matching = n // GROUPS
        for s in order:
            self.time(
                sec,
                "keys(prefix)",
                f"keys(prefix) -> {matching:,} keys (1%)",
                "key",
                matching,
                s,
                lambda s=s: s.keys_prefix(ds, PREFIX),
                lambda out: len(out) == matching and out == sorted(out),
            )
        # 20 calls in a row: one call is too short to time alone (a single call measured the
        # first statement preparation on the connection as much as the count)
        for s in order:
            self.time(
                sec,
                "len",
                "len()",
                "call",
                LEN_CALLS,
                s,
                lambda s=s: [s.length(ds) for _ in range(LEN_CALLS)][-1],
                lambda out: out == n,
            )
        for s in order:
            self.time(
                sec,
                "iterate",
                f"iterate all {n:,} keys",
                "key",
                n,
                s,
                lambda s=s: s.iterate(ds),
                lambda out: out == n,
            )
        groups = min(GROUPS, n)
        for s in order:
            self.time(
                sec,
                "iter_prefixes",
                f"iter_prefixes('{DELIM}') -> {groups} prefixes",
                "prefix",
                groups,
                s,
                lambda s=s: s.iter_prefixes(ds, DELIM),
                lambda out: len(out) == groups,
            )

    def run_sweep(self, sizes: list[int], total: int, rounds: int) -> None:
        keys = [key_of(i) for i in range(total)]
        sec = f"batch-size sweep, {total:,} keys per size"
        for r in range(rounds):
            salt = os.urandom(92)
            pairs = list(zip(keys, make_values(0, total, salt), strict=True))
            order = self.rotated(r)
            for size in sizes:
                self.log(f"sweep round {r + 1}/{rounds}: batches of {size:,}")
                pb = [pairs[i : i + size] for i in range(0, total, size)]
                kb = [keys[i : i + size] for i in range(0, total, size)]
                for s in order:
                    s.clear("sweep")
                for s in order:
                    s.after_load()

                def put_all(s: System, pb: list[Pairs] = pb) -> None:
                    for b in pb:
                        s.put_many("sweep", b)

                def get_all(s: System, kb: list[list[str]] = kb) -> int:
                    return sum(len(s.get_many("sweep", b)) for b in kb)

                for s in order:
                    self.time(
                        sec,
                        "put_many",
                        f"put_many, batch {size:,}",
                        "key",
                        total,
                        s,
                        lambda s=s: put_all(s),
                    )
                # as after every other bulk load here: statistics of the rows just written
                # (autovacuum's job within a minute), else PostgreSQL plans for empty tables
                for s in order:
                    s.after_load()
                for s in order:
                    self.time(
                        sec,
                        "get_many",
                        f"get_many, batch {size:,}",
                        "key",
                        total,
                        s,
                        lambda s=s: get_all(s),
                        lambda out: out == total,
                    )
            del pairs

    def run_memory(self, sizes: list[int]) -> None:
        """Peak memory of ONE put_many / get_many call per batch size (untimed pass)."""
        self.log("memory pass (one call per batch size, tracemalloc and RSS)")
        big = max(sizes)
        keys = [key_of(i) for i in range(big)]
        pairs = list(zip(keys, make_values(0, big, os.urandom(92)), strict=True))
        for s in self.systems:
            s.clear("mem")
            for size in sorted(sizes):
                p, k = pairs[:size], keys[:size]
                for op, fn in (
                    ("put_many", lambda s=s, p=p: s.put_many("mem", p)),
                    ("get_many", lambda s=s, k=k: s.get_many("mem", k)),
                ):
                    peak, rss = measure_memory(fn)
                    self.memory.append(
                        dict(
                            system=s.name,
                            dialect=s.dialect,
                            role=s.role,
                            op=op,
                            batch=size,
                            tracemalloc_peak=peak,
                            rss_growth=rss,
                        )
                    )
            s.clear("mem")

    def run_big(self, n: int, batch: int, rounds: int) -> None:
        sec = f"{n:,} keys"
        for s in self.systems:
            self.log(f"loading {n:,} keys into {s.name} (put_many, batches of {batch:,})")
            s.clear("big")
            salt = os.urandom(92)
            t = time.perf_counter()
            for i in range(0, n, batch):
                m = min(batch, n - i)
                s.put_many(
                    "big",
                    list(zip(map(key_of, range(i, i + m)), make_values(i, m, salt), strict=True)),
                )
            dt = time.perf_counter() - t
            self.loads.append(
                dict(
                    system=s.name,
                    dialect=s.dialect,
                    keys=n,
                    batch=batch,
                    seconds=dt,
                    us_per_key=dt / n * 1e6,
                )
            )
        for s in self.systems:
            s.after_load()
        for r in range(rounds):
            self.log(f"round {r + 1}/{rounds}: scans on {n:,} keys")
            self.scans(sec, self.rotated(r), "big", n)

    # -- output -------------------------------------------------------------------------------
    def ref(self, row: Row, role: str) -> Row | None:
        for other in self.rows.values():
            if (other.section, other.label) != (row.section, row.label):
                continue
            if role == "raw" and other.role == "raw" and other.dialect == row.dialect:
                return other
            if role == "diskcache" and other.role == "diskcache":
                return other
        return None

    def verdict(self, row: Row) -> tuple[float | None, float | None, str]:
        raw, dc = self.ref(row, "raw"), self.ref(row, "diskcache")
        vs_raw = row.per_unit / raw.per_unit if raw else None
        vs_dc = row.per_unit / dc.per_unit if dc else None
        tgt = target_for(row.op, row.dialect)
        if tgt is None:
            return vs_raw, vs_dc, ""
        ref_role, limit = tgt
        ratio = vs_raw if ref_role == "raw" else vs_dc
        if ratio is None:
            return vs_raw, vs_dc, f"<= {limit}x {ref_role}: n/a"
        return vs_raw, vs_dc, f"<= {limit}x {ref_role}: {'PASS' if ratio <= limit else 'FAIL'}"

    def show(self) -> list[tuple[str, str, str, str]]:
        verdicts: list[tuple[str, str, str, str]] = []
        current = None
        for section, label in self.order:
            if section != current:
                current = section
                print(f"\n######## {section} ########")
            rows = [r for r in self.rows.values() if (r.section, r.label) == (section, label)]
            rows.sort(
                key=lambda r: (
                    r.dialect != "sqlite",
                    ["kvstore", "raw", "diskcache", "peer"].index(r.role),
                )
            )
            unit = rows[0].unit
            print(f"\n== {label}: µs per {unit} (median of {len(rows[0].samples)}) ==")
            print(
                f"  {'system':<22}{'µs/' + unit:>12}{'per call':>12}{'spread':>9}"
                f"{'vs raw':>9}{'vs dc':>9}  target"
            )
            for r in rows:
                per_call = statistics.median(r.samples)
                spread = (max(r.samples) - min(r.samples)) / per_call if per_call else 0.0
                vs_raw = vs_dc = None
                verdict = ""
                if r.role == "kvstore":
                    vs_raw, vs_dc, verdict = self.verdict(r)
                    if verdict:
                        verdicts.append((section, label, r.system, verdict))
                name = r.system + (" (scan)" if r.scan else "")
                print(
                    f"  {name:<22}{r.per_unit * 1e6:>12.2f}{fmt_call(per_call):>12}"
                    f"{spread * 100:>8.0f}%{fmt_ratio(vs_raw):>9}{fmt_ratio(vs_dc):>9}  {verdict}"
                )
        return verdicts

    def show_memory(self) -> None:
        if not self.memory:
            return
        print("\n######## memory of one call (untimed pass) ########")
        print(
            "tracemalloc peak above the baseline (Python objects only: not SQLite's or "
            "libpq's own buffers), and RSS high-water growth (a separate call); get_many's "
            "peak includes the dict it returns"
        )
        print(f"  {'system':<22}{'op':<10}{'batch':>9}{'peak MiB':>10}{'B/key':>8}{'RSS MiB':>9}")
        for m in self.memory:
            rss = "" if m["rss_growth"] is None else f"{m['rss_growth'] / 2**20:9.1f}"
            print(
                f"  {m['system']:<22}{m['op']:<10}{m['batch']:>9,}"
                f"{m['tracemalloc_peak'] / 2**20:>10.1f}{m['tracemalloc_peak'] / m['batch']:>8.0f}"
                f"{rss:>9}"
            )

    def show_growth(self, small: str, big: str, factor: float) -> None:
        """Time per call on both datasets. keys(prefix) and iterate return ``factor`` times
        more keys on the big one (linear = factor x); len and iter_prefixes return the same
        answer (ideal: 1x, whatever the size)."""
        print(
            f"\n######## growth: {small} -> {big} ({factor:g}x the keys): time per call, "
            "small -> big (ratio) ########"
        )
        print(
            f"keys(prefix) and iterate return {factor:g}x more keys (linear = {factor:g}x); "
            "len and iter_prefixes return the same answer (flat = 1x)"
        )
        ops = ["keys(prefix)", "len", "iterate", "iter_prefixes"]
        print(f"  {'system':<22}" + "".join(f"{op:>28}" for op in ops))
        by = {(r.section, r.op, r.system): r for r in self.rows.values()}
        names = list(dict.fromkeys(r.system for r in self.rows.values() if r.section == big))
        for name in names:
            cells = []
            for op in ops:
                a, b = by.get((small, op, name)), by.get((big, op, name))
                if a is None or b is None:
                    cells.append(f"{'':>28}")
                    continue
                ta, tb = statistics.median(a.samples), statistics.median(b.samples)
                cell = f"{fmt_call(ta)} -> {fmt_call(tb)} ({tb / ta:.1f}x)"
                cells.append(f"{cell:>28}")
            print(f"  {name:<22}" + "".join(cells))

    def to_json(self) -> list[dict[str, Any]]:
        out = []
        for r in self.rows.values():
            vs_raw, vs_dc, verdict = self.verdict(r) if r.role == "kvstore" else (None, None, "")
            out.append(
                dict(
                    section=r.section,
                    op=r.op,
                    label=r.label,
                    unit=r.unit,
                    units=r.units,
                    system=r.system,
                    dialect=r.dialect,
                    role=r.role,
                    scan=r.scan,
                    samples_sec=r.samples,
                    median_us_per_unit=r.per_unit * 1e6,
                    vs_raw=vs_raw,
                    vs_diskcache=vs_dc,
                    target=verdict,
                )
            )
        return out


def fmt_ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def fmt_call(sec: float) -> str:
    if sec >= 1:
        return f"{sec:.2f} s"
    if sec >= 1e-3:
        return f"{sec * 1e3:.1f} ms"
    return f"{sec * 1e6:.0f} µs"


# -- setup -----------------------------------------------------------------------------------
def build_systems(
    tmp: Path, sync: str, pg_url: str | None, peers: bool, tag: str, maria_url: str | None = None
) -> tuple[list[System], list[PgMaintenance | MariaMaintenance]]:
    systems: list[System] = [
        KvstoreSys(f"sqlite:///{tmp / 'kvstore.db'}", "sqlite", sync, ""),
        RawSqliteSys(tmp / "raw.db", sync),
    ]
    if peers:
        try:
            systems.append(DiskcacheSys(tmp / "dc", sync, index=False))
            systems.append(DiskcacheSys(tmp / "dci", sync, index=True))
        except ImportError:
            print("(diskcache not installed: pip install -e '.[bench]')", file=sys.stderr)
        try:
            systems.append(SqlitedictSys(tmp, sync))
        except ImportError:
            print("(sqlitedict not installed: pip install -e '.[bench]')", file=sys.stderr)
    maints: list[PgMaintenance | MariaMaintenance] = []
    if pg_url:
        from sqlalchemy.engine import make_url

        prefix, raw_table = f"kvb{tag}_", f"kvb{tag}_raw"
        dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
        maint = PgMaintenance(dsn, prefix, raw_table)
        maints.append(maint)
        systems += [
            KvstoreSys(pg_url, "postgresql", sync, prefix, maint),
            RawPgSys(dsn, raw_table),
        ]
    if maria_url:
        prefix = f"kvm{tag}_"
        mmaint = MariaMaintenance(maria_url, prefix, f"{prefix}raw")
        maints.append(mmaint)
        systems += [
            KvstoreSys(maria_url, "mariadb", sync, prefix, mmaint),
            RawMariaSys(maria_url, f"{prefix}raw"),
        ]
    return systems, maints


def environment(pg_url: str | None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "kvstore": kvstore.__version__,
        "loadavg_start": os.getloadavg(),
    }
    for mod in ("diskcache", "sqlitedict", "psycopg", "sqlalchemy"):
        with contextlib.suppress(Exception):
            env[mod] = __import__(mod).__version__
    if pg_url:
        with contextlib.suppress(Exception):
            import psycopg
            from sqlalchemy.engine import make_url

            dsn = (
                make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
            )
            with psycopg.connect(dsn) as c:
                env["postgresql"] = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    return env


def main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes: a smoke run in < 1 minute")
    mode.add_argument("--full", action="store_true", help="default sizes plus the 1M-key dataset")
    ap.add_argument(
        "--big",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the large dataset (default: on with --full, off otherwise)",
    )
    ap.add_argument(
        "--big-keys", type=int, default=None, help="size of the large dataset (1,000,000)"
    )
    ap.add_argument(
        "--rounds", type=int, default=None, help="rounds per figure (default 5; 2 quick)"
    )
    ap.add_argument("--big-rounds", type=int, default=3, help="rounds on the large dataset (3)")
    ap.add_argument(
        "--sweep-rounds", type=int, default=None, help="rounds of the batch sweep (3; 1 quick)"
    )
    ap.add_argument(
        "--postgres",
        default=os.environ.get("KVSTORE_TEST_POSTGRES_URL"),
        help="PostgreSQL URL (default $KVSTORE_TEST_POSTGRES_URL; none: SQLite only)",
    )
    ap.add_argument(
        "--mariadb",
        default=None,
        help="MariaDB URL (mariadb+pymysql://...; none: no MariaDB columns)",
    )
    ap.add_argument(
        "--synchronous", default="FULL", choices=["FULL", "NORMAL"], help="SQLite durability"
    )
    ap.add_argument("--no-peers", action="store_true", help="skip diskcache and sqlitedict")
    ap.add_argument(
        "--dir", default=None, help="where to put the SQLite files (default: a temp dir)"
    )
    ap.add_argument("--json", metavar="FILE", help="write every sample and ratio to FILE")
    args = ap.parse_args(argv)

    # single puts/gets, bulk keys, sweep batch sizes, keys per sweep size, rounds, sweep
    # rounds, large dataset
    preset = (
        (200, 2_000, [500, 2_000], 2_000, 2, 1, 20_000)
        if args.quick
        else (5_000, 50_000, [1_000, 10_000, 100_000], 100_000, 5, 3, 1_000_000)
    )
    n_single, n_bulk, sweep, sweep_total, rounds, sweep_rounds, big_n = preset
    rounds = args.rounds or rounds
    sweep_rounds = args.sweep_rounds or sweep_rounds
    big_n = args.big_keys or big_n
    big = args.full if args.big is None else args.big

    tmp = Path(tempfile.mkdtemp(prefix="kvbench-", dir=args.dir))
    env = environment(args.postgres)
    systems, maints = build_systems(
        tmp, args.synchronous, args.postgres, not args.no_peers, str(os.getpid()), args.mariadb
    )
    bench = Bench(systems, rounds)
    print(
        f"kvstore scale benchmark: SQLite synchronous={args.synchronous}, files in {tmp}; "
        f"systems: {', '.join(s.name for s in systems)}",
        file=sys.stderr,
    )
    try:
        bench.run_main(n_single, n_bulk)
        bench.run_sweep(sweep, sweep_total, sweep_rounds)
        bench.run_memory(sweep)
        if big:
            bench.run_big(big_n, 10_000, args.big_rounds)
    finally:
        for s in systems:
            with contextlib.suppress(Exception):
                s.close()
        for maint in maints:
            with contextlib.suppress(Exception):
                maint.drop()
        shutil.rmtree(tmp, ignore_errors=True)
    env["loadavg_end"] = os.getloadavg()
    env["seconds"] = time.perf_counter() - bench.t0

    print(
        f"\nkvstore scale benchmark — SQLite file, WAL, synchronous={args.synchronous}"
        f"{'; PostgreSQL ' + env.get('postgresql', '?') if args.postgres else ''}; "
        f"100-byte values; Python {env['python']}, SQLite {env['sqlite']}, {env['cpus']} CPUs, "
        f"load average {env['loadavg_start'][0]:.1f} -> {env['loadavg_end'][0]:.1f}"
    )
    print(
        "vs raw / vs dc = kvstore's time over the raw driver's (same dialect) / "
        "diskcache.Cache's; (scan) = no such call, emulated by a full scan; "
        "spread = (max - min) / median over the rounds"
    )
    verdicts = bench.show()
    bench.show_memory()
    if bench.loads:
        print(f"\n######## loading {big_n:,} keys (put_many, batches of 10,000; once) ########")
        for ld in bench.loads:
            print(f"  {ld['system']:<22}{ld['us_per_key']:>9.2f} µs/key {ld['seconds']:>8.1f} s")
        bench.show_growth(f"{n_bulk:,} keys", f"{big_n:,} keys", big_n / n_bulk)
    print("\n######## targets (kvstore rows) ########")
    for section, label, system, verdict in verdicts:
        print(
            f"  {verdict.split(': ')[1]:<5} {system:<22}{label:<42}{section:<40}{verdict.split(':')[0]}"
        )
    fails = sum(1 for v in verdicts if v[3].endswith("FAIL"))
    print(f"  {len(verdicts) - fails} PASS, {fails} FAIL")
    print(f"\n{env['seconds']:.0f} s in all")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                dict(
                    config=dict(
                        vars(args),
                        n_single=n_single,
                        n_bulk=n_bulk,
                        sweep=sweep,
                        sweep_total=sweep_total,
                        rounds=rounds,
                        sweep_rounds=sweep_rounds,
                        big=big,
                        big_keys=big_n if big else None,
                    ),
                    environment=env,
                    results=bench.to_json(),
                    memory=bench.memory,
                    loads=bench.loads,
                    targets=[
                        dict(section=s, label=lbl, system=sy, verdict=v)
                        for s, lbl, sy, v in verdicts
                    ],
                ),
                indent=1,
            )
        )
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
