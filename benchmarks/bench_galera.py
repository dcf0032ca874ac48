"""Write throughput: one MariaDB server against a three-node Galera cluster (issue 15).

    python benchmarks/bench_galera.py [--threads 4] [--seconds 3] [--rounds 3]
        [--single mariadb+pymysql://root@127.0.0.1:3306/wt_galera]

One process: starts a throwaway 3-node Galera cluster on loopback (tests/clusters.py, imported
by path, as the tests do; torn down at the end, and by its atexit hook on any failure), then for
each target - the single server, the cluster through one node, the cluster spread over its
three nodes (thread i on node i % 3) - runs ``--threads`` threads doing ``put`` of random keys
(of 10,000, 100-byte values) for ``--seconds``, and beside each raw PyMySQL doing the
equivalent autocommitted upsert (``INSERT ... ON DUPLICATE KEY UPDATE``) into a table of its
own. Interleaved over ``--rounds`` rounds; prints the median puts per second, kvstore as a ratio
of raw PyMySQL, and every target as a ratio of the single server.

All servers share this machine's cores, and the cluster's nodes run with
``innodb_flush_log_at_trx_commit=2`` (the single server's own setting is printed): the figures
show Galera's replication and certification cost on one machine, not a real deployment with a
node per machine. Not a test: run it on demand.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import sqlalchemy as sa
from _threads import run_threads  # benchmarks/ is on sys.path when a script here runs

import kvstore

TESTS = Path(__file__).resolve().parents[1] / "tests"
KEYS = [f"key{i:05d}" for i in range(10_000)]
VALUE = b"x" * 100
RAW_TABLE = "bench_galera_raw"


def _clusters() -> Any:
    spec = importlib.util.spec_from_file_location("clusters", TESTS / "clusters.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["clusters"] = module
    spec.loader.exec_module(module)
    return module


def _pymysql_args(url: str) -> dict[str, Any]:
    u = sa.make_url(url)
    return {
        "host": u.host or "127.0.0.1",
        "port": u.port or 3306,
        "user": u.username or "root",
        "password": u.password or "",
        "database": u.database,
        "autocommit": True,
        "charset": "utf8mb4",
    }


def _raw_setup(url: str) -> None:
    c = pymysql.connect(**_pymysql_args(url))
    with c.cursor() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {RAW_TABLE} "
            "(k VARCHAR(255) PRIMARY KEY, v LONGBLOB NOT NULL, updated_at BIGINT NOT NULL)"
        )
        cur.execute(f"DELETE FROM {RAW_TABLE}")
    c.close()


def _raw_drop(url: str) -> None:
    c = pymysql.connect(**_pymysql_args(url))
    with c.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {RAW_TABLE}")
    c.close()


def raw_work(urls: list[str]) -> Callable[[int], Callable[[str], None]]:
    def work(i: int) -> Callable[[str], None]:
        conn = pymysql.connect(**_pymysql_args(urls[i % len(urls)]))
        cur = conn.cursor()
        sql = (
            f"INSERT INTO {RAW_TABLE} (k, v, updated_at) VALUES (%s, %s, %s) "
            "ON DUPLICATE KEY UPDATE v = VALUES(v), updated_at = VALUES(updated_at)"
        )

        def put(key: str) -> None:
            cur.execute(sql, (key, VALUE, time.time_ns() // 1000))

        return put

    return work


def kv_work(stores: list[kvstore.Store]) -> Callable[[int], Callable[[str], None]]:
    def work(i: int) -> Callable[[str], None]:
        store = stores[i % len(stores)]
        return lambda key: store.put(key, VALUE)

    return work


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--single",
        default=os.environ.get(
            "KVSTORE_TEST_MARIADB_URL", "mariadb+pymysql://root@127.0.0.1:3306/wt_galera"
        ),
    )
    args = ap.parse_args()
    clusters = _clusters()
    ns = "bench-galera"
    with clusters.GaleraCluster(nodes=3) as cluster:
        print(f"Galera cluster up in {cluster.startup_seconds or 0:.1f} s", file=sys.stderr)
        node_urls = [
            sa.make_url(u).set(drivername="mariadb+pymysql").render_as_string(False)
            for u in cluster.urls
        ]
        engine = sa.create_engine(args.single)
        with engine.connect() as conn:
            flush = conn.exec_driver_sql("SELECT @@innodb_flush_log_at_trx_commit, @@version").one()
        engine.dispose()
        print(f"single server: {flush[1]}, innodb_flush_log_at_trx_commit={flush[0]}")
        single_store = kvstore.connect(args.single, namespace=ns)
        node_stores = [kvstore.connect(u, namespace=ns) for u in node_urls]
        cluster.wait_synced()
        for s in (single_store, node_stores[0]):
            s.delete_many(list(s.iter_keys()))
        cluster.wait_synced()
        _raw_setup(args.single)
        _raw_setup(node_urls[0])
        cluster.wait_synced()
        targets: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
            "single MariaDB": (kv_work([single_store]), raw_work([args.single])),
            "Galera, 1 node": (kv_work(node_stores[:1]), raw_work(node_urls[:1])),
            "Galera, 3 nodes": (kv_work(node_stores), raw_work(node_urls)),
        }
        results: dict[tuple[str, str], list[float]] = {}
        try:
            for r in range(args.rounds):
                for name, (kv, raw) in targets.items():
                    for kind, work in (("kvstore", kv), ("raw PyMySQL", raw)):
                        rate = run_threads(args.threads, args.seconds, work, KEYS)
                        results.setdefault((name, kind), []).append(rate)
                        print(f"round {r + 1}: {name:16} {kind:12} {rate:8.0f}/s", file=sys.stderr)
        finally:
            for s in (single_store, *node_stores):
                s.delete_many(list(s.iter_keys()))
                s.close()
            _raw_drop(args.single)
            _raw_drop(node_urls[0])
    med = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"\nputs/s, {args.threads} threads, {args.seconds:g} s x {args.rounds} rounds "
        f"(median), {os.cpu_count()} cores shared by every server"
    )
    print(
        f"{'target':16} {'kvstore':>9} {'raw':>9} {'kv/raw':>7} {'kv/single':>10} {'raw/single':>11}"
    )
    for name in targets:
        kv_rate, raw_rate = med[(name, "kvstore")], med[(name, "raw PyMySQL")]
        print(
            f"{name:16} {kv_rate:9.0f} {raw_rate:9.0f} {kv_rate / raw_rate:7.2f} "
            f"{kv_rate / med[('single MariaDB', 'kvstore')]:10.2f} "
            f"{raw_rate / med[('single MariaDB', 'raw PyMySQL')]:11.2f}"
        )


if __name__ == "__main__":
    main()
