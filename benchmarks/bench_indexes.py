"""Secondary index benchmark: lookups against a full scan, and the cost of maintaining indexes.

Run on demand (never in the test suite)::

    .venv/bin/python benchmarks/bench_indexes.py                      # SQLite, 200,000 entries
    .venv/bin/python benchmarks/bench_indexes.py -n 1000000 \\
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test  # and PostgreSQL

For each database it fills a fresh namespace with ``N`` JSON values, indexes them (email,
unique; age; tags, multi-valued), then times

* ``find`` by equality, by a narrow range and by tag, against one full scan of the values in
  Python (``get_many`` in batches, ``json.loads``, compare): the ratio is how many lookups
  fit in the time of one scan;
* ``put`` of a new key with 0, 1 and 3 indexes on the namespace: the ratio is the write
  overhead of maintaining indexes.

The SQLite database is a temporary file unless ``--sqlite URL`` is given; on PostgreSQL the
benchmark's namespaces are deleted afterwards (``--keep`` leaves them).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kvstore


def value(i: int) -> bytes:
    return json.dumps(
        {
            "email": f"user{i}@example.org",
            "age": i % 97,
            "tags": [f"t{i % 101}", f"t{i % 13}"],
            "name": f"User {i}",
        }
    ).encode()


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def fill(store: kvstore.Store, n: int) -> float:
    t = time.perf_counter()
    step = 10_000
    for start in range(0, n, step):
        store.put_many([(f"u{i:08d}", value(i)) for i in range(start, min(n, start + step))])
    return time.perf_counter() - t


def full_scan(store: kvstore.Store, want: Callable[[dict[str, Any]], bool]) -> list[str]:
    """What a store without indexes must do: read every value and test it in Python."""
    out = []
    batch: list[str] = []
    for key in store.iter_keys():
        batch.append(key)
        if len(batch) == 1000:
            out += [k for k, v in store.get_many(batch).items() if want(json.loads(v))]
            batch = []
    out += [k for k, v in store.get_many(batch).items() if want(json.loads(v))]
    return out


def bench_lookups(store: kvstore.Store, n: int, lookups: int) -> None:
    t = time.perf_counter()
    store.create_index("email", kvstore.json_field("email"), unique=True)
    store.create_index("age", kvstore.json_field("age"))
    store.create_index("tags", kvstore.json_field("tags"))
    build = time.perf_counter() - t
    print(f"  create_index x3 (back-fill {n:,} values): {build:.1f} s ({n / build:,.0f} values/s)")
    with store._connection() as conn:  # fresh statistics, as after a day of autovacuum
        for table in (store.tables.entries, store.tables.index_entries, store.tables.indexes):
            conn.execute(f"ANALYZE {table.name}")
    rng = random.Random(1)
    emails = [f"user{rng.randrange(n)}@example.org" for _ in range(lookups)]
    it = iter(emails * 2)

    def by_email() -> None:
        assert len(store.find("email", next(it))) == 1

    eq = timed(by_email, lookups)
    narrow = timed(lambda: store.find("age", ge=40, lt=41, limit=20), lookups)
    tag = timed(lambda: store.find_items("tags", "t7", limit=20), lookups)
    page = timed(
        lambda: store.find("tags", in_=["t7", "t8"], after=("t7", "u00500000"), limit=20), lookups
    )
    t = time.perf_counter()
    target = emails[0]
    scanned = full_scan(store, lambda d: d.get("email") == target)
    scan = time.perf_counter() - t
    assert scanned == store.find("email", target)
    print(
        f"  find email = x        {eq * 1e3:8.3f} ms   (full scan: {scan * 1e3:,.0f} ms, ratio {scan / eq:,.0f}x)"
    )
    print(f"  find age range, 20    {narrow * 1e3:8.3f} ms   (ratio {scan / narrow:,.0f}x)")
    print(f"  find_items tag, 20    {tag * 1e3:8.3f} ms   (ratio {scan / tag:,.0f}x)")
    print(f"  find in_ + after, 20  {page * 1e3:8.3f} ms   (ratio {scan / page:,.0f}x)")


def bench_writes(make: Callable[[], kvstore.Store], puts: int) -> None:
    base = None
    for n_indexes in (0, 1, 3):
        store = make()
        try:
            definitions = [("email", "email", True), ("age", "age", False), ("tags", "tags", False)]
            for name, path, unique in definitions[:n_indexes]:
                store.create_index(name, kvstore.json_field(path), unique=unique)
            for i in range(50):  # warm up connections and statement caches
                store.put(f"w{i:08d}", value(i))
            t = time.perf_counter()
            for i in range(50, 50 + puts):
                store.put(f"w{i:08d}", value(i))
            per = (time.perf_counter() - t) / puts
            base = base or per
            print(
                f"  put, {n_indexes} index(es)      {per * 1e6:8.0f} us   (x{per / base:.2f} of no index)"
            )
        finally:
            cleanup(store)
            store.close()


def cleanup(store: kvstore.Store) -> None:
    for info in store.indexes():
        store.drop_index(info.name)  # by index id, before the entries go row by row
    keys = store.keys()
    for start in range(0, len(keys), 10_000):
        store.delete_many(keys[start : start + 10_000])


def run(label: str, url: str, n: int, lookups: int, puts: int, keep: bool, **options: Any) -> None:
    print(f"{label}: {n:,} entries {options or ''}")
    namespace = "bench" + uuid.uuid4().hex[:8]
    store = kvstore.connect(url, namespace=namespace, **options)
    try:
        took = fill(store, n)
        print(f"  put_many {n:,} values: {took:.1f} s ({n / took:,.0f} values/s)")
        bench_lookups(store, n, lookups)
    finally:
        if not keep:
            cleanup(store)
        store.close()
    counter = iter(range(1_000_000))

    def make() -> kvstore.Store:
        return kvstore.connect(url, namespace=f"{namespace}w{next(counter)}", **options)

    bench_writes(make, puts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200_000, help="entries to index (default 200,000)")
    parser.add_argument("--lookups", type=int, default=200, help="timed queries of each shape")
    parser.add_argument("--puts", type=int, default=500, help="timed puts per index count")
    parser.add_argument("--sqlite", metavar="URL", help="SQLite URL (default: a temporary file)")
    parser.add_argument("--postgres", metavar="URL", help="also run on this PostgreSQL database")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--keep", action="store_true", help="leave the benchmark's data behind")
    parser.add_argument(
        "--sqlite-synchronous",
        default="FULL",
        help="SQLite's synchronous setting (FULL, the default, fsyncs every commit)",
    )
    args = parser.parse_args()
    if args.n < 1000:
        parser.error("-n must be at least 1000")
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            url = args.sqlite or f"sqlite:///{Path(tmp) / 'bench.db'}"
            sync = args.sqlite_synchronous
            run("SQLite", url, args.n, args.lookups, args.puts, args.keep, sqlite_synchronous=sync)
    if args.postgres:
        run("PostgreSQL", args.postgres, args.n, args.lookups, args.puts, args.keep)


if __name__ == "__main__":
    main()
