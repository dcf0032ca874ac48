"""Read throughput with 0, 1 and 2 read replicas (PostgreSQL streaming replication).

    python benchmarks/bench_replicas.py [--threads 8] [--seconds 3] [--rounds 3]

One process: starts a throwaway primary and two hot standbys on loopback (tests/clusters.py,
as the tests do; needs PostgreSQL's server binaries), writes 10,000 keys, then for each
replica count runs ``--threads`` threads doing ``get`` of random keys for ``--seconds``, and
raw psycopg on the primary alone beside it, interleaved over ``--rounds`` rounds; prints the
median gets per second and each kvstore figure as a ratio against the raw driver.

All servers share this machine's cores: replicas add no CPU here, so the figures show the
routing's overhead and that reads do move to the replicas (the per-node counts), not the
scaling a real deployment with a replica per machine gets. Not a test: run it on demand.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import psycopg
from _threads import run_threads  # benchmarks/ is on sys.path when a script here runs
from clusters import PgCluster

import kvstore

KEYS = [f"key{i:05d}" for i in range(10_000)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with PgCluster(standbys=2) as cluster:
        primary = cluster.primary
        seed = kvstore.connect(primary.url, namespace="bench")
        seed.put_many({k: b"x" * 100 for k in KEYS})
        seed.close()
        cluster.wait_for_replay()
        stores = {
            n: kvstore.connect(
                primary.url,
                namespace="bench",
                create=False,
                replicas=[s.url for s in cluster.standbys[:n]],
                engine_options={"pool_size": args.threads},
            )
            for n in (0, 1, 2)
        }
        dsn = primary.dsn

        def raw(i: int) -> object:
            conn = psycopg.connect(dsn, autocommit=True)
            sql = "SELECT value FROM kv_entries WHERE namespace = 'bench' AND key = %s"
            return lambda k: conn.execute(sql, (k,), prepare=True).fetchone()

        samples: dict[str, list[float]] = {"raw psycopg (primary)": []}
        samples.update({f"kvstore, {n} replica(s)": [] for n in stores})
        for r in range(args.rounds):
            order = list(samples)
            order = order[r % len(order) :] + order[: r % len(order)]
            for name in order:
                if name.startswith("raw"):
                    samples[name].append(run_threads(args.threads, args.seconds, raw, KEYS))
                else:
                    store = stores[int(name.split(", ")[1][0])]
                    samples[name].append(
                        run_threads(args.threads, args.seconds, lambda i, s=store: s.get, KEYS)
                    )
        raw_median = statistics.median(samples["raw psycopg (primary)"])
        print(f"{args.threads} threads, {args.seconds:g} s x {args.rounds} rounds, 2 cores shared")
        print(f"  {'system':<26}{'gets/s':>10}{'vs raw':>9}")
        for name, xs in samples.items():
            m = statistics.median(xs)
            print(f"  {name:<26}{m:>10,.0f}{m / raw_median:>8.2f}x")
        for node in cluster.nodes:
            calls = node.query(
                "SELECT calls FROM pg_stat_database d, LATERAL (SELECT xact_commit AS calls) c "
                "WHERE d.datname = 'postgres'"
            )
            print(f"  commits seen by {node.name}: {calls:,}")
        for store in stores.values():
            store.close()


if __name__ == "__main__":
    main()
