"""Persistent collections against their peers, in one run.

    python benchmarks/bench_collections.py [-n 2000] [--postgres URL] [--synchronous NORMAL]

dict: ``d[k] = v`` and ``d[k]`` for kvstore's PersistentDict, sqlitedict (autocommit, so each
write is durable like ours), diskcache's Index, shelve, and the raw sqlite3 driver doing the
same upsert/select on a two-column table.
list: ``append``, ``l[i]`` and ``len(l)`` for PersistentList, diskcache's Deque and raw sqlite3.
Every implementation writes to its own fresh file in the same temporary directory; values are
small JSON-able strings. Not a test: run on demand; figures depend on the machine and its disk.
"""

from __future__ import annotations

import argparse
import os
import shelve
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kvstore


def per_op(fn: Callable[[], Any], n: int) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) / n


class Table:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}

    def add(self, who: str, op: str, sec: float) -> None:
        self.rows.setdefault(who, {})[op] = sec

    def show(self, title: str, ops: list[str]) -> None:
        print(f"\n== {title} ==  (µs per operation; in brackets: time relative to kvstore)")
        print(f"{'':28}" + "".join(f"{op:>22}" for op in ops))
        mine = self.rows.get("kvstore", {})
        for who, row in self.rows.items():
            cells = []
            for op in ops:
                if op not in row:
                    cells.append(f"{'-':>22}")
                    continue
                rel = f" ({row[op] / mine[op]:.2f}x)" if op in mine and who != "kvstore" else ""
                cells.append(f"{row[op] * 1e6:>12.1f}{rel:>10}")
            print(f"{who:28}" + "".join(cells))


def bench_dict(tmp: Path, n: int, url: str, synchronous: str, table: Table) -> None:
    keys = [f"key-{i}" for i in range(n)]

    def run(who: str, setitem: Callable[[str, str], Any], getitem: Callable[[str], Any]) -> None:
        table.add(who, "d[k] = v", per_op(lambda: [setitem(k, k * 3) for k in keys], n))
        table.add(who, "d[k]", per_op(lambda: [getitem(k) for k in keys], n))

    store = kvstore.connect(url, namespace="bench", sqlite_synchronous=synchronous)
    d = store.dict("bench-dict")
    d.clear()
    run("kvstore", d.__setitem__, d.__getitem__)
    d.clear()
    store.close()

    raw = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute(f"PRAGMA synchronous={synchronous}")
    raw.execute("CREATE TABLE d (k TEXT PRIMARY KEY, v BLOB)")
    run(
        "sqlite3 (raw driver)",
        lambda k, v: raw.execute("INSERT INTO d VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", (k, v.encode())),
        lambda k: raw.execute("SELECT v FROM d WHERE k = ?", (k,)).fetchone()[0].decode(),
    )
    try:
        from sqlitedict import SqliteDict  # type: ignore[import-untyped]

        sd = SqliteDict(str(tmp / "sd.db"), autocommit=True)
        run("sqlitedict (autocommit)", sd.__setitem__, sd.__getitem__)
        sd.close()
    except ImportError:
        print("(sqlitedict not installed)")
    try:
        import diskcache  # type: ignore[import-untyped]

        # diskcache defaults to synchronous=NORMAL; give it the same durability as the others
        idx = diskcache.Index.fromcache(diskcache.Cache(str(tmp / "dcindex"), sqlite_synchronous=2 if synchronous == "FULL" else 1))
        run("diskcache.Index", idx.__setitem__, idx.__getitem__)
    except ImportError:
        print("(diskcache not installed)")
    with shelve.open(str(tmp / "shelf")) as sh:
        run("shelve (dbm; not durable)", sh.__setitem__, sh.__getitem__)


def bench_list(tmp: Path, n: int, url: str, synchronous: str, table: Table) -> None:
    def run(who: str, append: Callable[[str], Any], getitem: Callable[[int], Any], length: Callable[[], int]) -> None:
        table.add(who, "append", per_op(lambda: [append(f"item-{i}") for i in range(n)], n))
        table.add(who, "l[i]", per_op(lambda: [getitem(i) for i in range(0, n, 7)], len(range(0, n, 7))))
        table.add(who, "l[-1]", per_op(lambda: [getitem(-1) for _ in range(200)], 200))
        table.add(who, "len(l)", per_op(lambda: [length() for _ in range(500)], 500))

    store = kvstore.connect(url, namespace="bench", sqlite_synchronous=synchronous)
    lst = store.list("bench-list")
    lst.clear()
    run("kvstore", lst.append, lst.__getitem__, lst.__len__)
    lst.clear()
    store.close()

    raw = sqlite3.connect(tmp / "rawlist.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute(f"PRAGMA synchronous={synchronous}")
    raw.execute("CREATE TABLE l (pos INTEGER PRIMARY KEY, v BLOB)")

    def raw_get(i: int) -> Any:
        if i < 0:
            return raw.execute("SELECT v FROM l ORDER BY pos DESC LIMIT 1").fetchone()[0]
        return raw.execute("SELECT v FROM l WHERE pos = ?", (i,)).fetchone()[0]

    run(
        "sqlite3 (raw driver)",
        lambda v: raw.execute("INSERT INTO l (pos, v) VALUES ((SELECT COUNT(*) FROM l), ?)", (v.encode(),)),
        raw_get,
        lambda: raw.execute("SELECT COUNT(*) FROM l").fetchone()[0],
    )
    try:
        import diskcache

        dq = diskcache.Deque.fromcache(diskcache.Cache(str(tmp / "dcdeque"), sqlite_synchronous=2 if synchronous == "FULL" else 1))
        run("diskcache.Deque", dq.append, dq.__getitem__, dq.__len__)
    except ImportError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--postgres", default=os.environ.get("KVSTORE_TEST_POSTGRES_URL"))
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    url = f"sqlite:///{tmp / 'kv.db'}"
    t = Table()
    bench_dict(tmp, args.n, url, args.synchronous, t)
    t.show(f"dict, {args.n} keys, SQLite synchronous={args.synchronous}", ["d[k] = v", "d[k]"])
    t = Table()
    bench_list(tmp, args.n, url, args.synchronous, t)
    t.show(f"list, {args.n} items, SQLite synchronous={args.synchronous}", ["append", "l[i]", "l[-1]", "len(l)"])
    if args.postgres:
        t = Table()
        store = kvstore.connect(args.postgres, namespace="bench")
        d = store.dict("bench-dict")
        d.clear()
        keys = [f"key-{i}" for i in range(args.n)]
        t.add("kvstore PostgreSQL", "d[k] = v", per_op(lambda: [d.__setitem__(k, k) for k in keys], args.n))
        t.add("kvstore PostgreSQL", "d[k]", per_op(lambda: [d[k] for k in keys], args.n))
        lst = store.list("bench-list")
        lst.clear()
        t.add("kvstore PostgreSQL", "append", per_op(lambda: [lst.append(i) for i in range(args.n)], args.n))
        t.add("kvstore PostgreSQL", "l[i]", per_op(lambda: [lst[i] for i in range(0, args.n, 7)], len(range(0, args.n, 7))))
        t.add("kvstore PostgreSQL", "len(l)", per_op(lambda: [len(lst) for _ in range(500)], 500))
        d.clear()
        lst.clear()
        store.close()
        t.show("PostgreSQL (network round trip per call)", ["d[k] = v", "d[k]", "append", "l[i]", "len(l)"])


if __name__ == "__main__":
    main()
