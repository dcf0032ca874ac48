"""Read replicas with read-your-writes (issue 15), on a real primary and two hot standbys
streaming from it (tests/clusters.py). A lagging replica is made by pausing its replay.

How a test tells where a read went: a key written to the primary by *another* store (not a
write of the store under test, so it owes it no read-your-writes) is invisible on a replica
whose replay is paused, and visible on the primary.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from clusters import PgCluster

import kvstore

pytest_plugins = ["clusters"]

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def ns() -> str:
    return "rep-" + uuid.uuid4().hex[:10]


@pytest.fixture
def cluster(pg_cluster: PgCluster) -> Iterator[PgCluster]:
    kvstore.connect(pg_cluster.primary.url).close()  # the tables, replicated to the standbys
    pg_cluster.wait_for_replay()
    yield pg_cluster
    for standby in pg_cluster.standbys:  # leave the module's cluster as it was
        if standby.is_running() and standby.is_replay_paused():
            standby.resume_replay()


def _other_writer(cluster: PgCluster, ns: str) -> kvstore.Store:
    return kvstore.connect(cluster.primary.url, namespace=ns, create=False)


def test_reads_go_to_a_replica_that_has_caught_up(cluster: PgCluster, ns: str) -> None:
    a, b = cluster.standbys
    store = kvstore.connect(
        cluster.primary.url,
        namespace=ns,
        replicas=[a.url, b.url],
        max_replica_lag=60,  # this test is about routing, not the lag limit
        create=False,
    )
    other = _other_writer(cluster, ns)
    try:
        store.create_index("by_tag", kvstore.json_field("tag"))
        cluster.wait_for_replay()
        store.get_many(["warm-up"])
        for standby in (a, b):
            standby.pause_replay()
        other.put("theirs", b'{"tag": "t"}')  # not this store's write: a replica may miss it
        other.list("their-list").extend([1, 2])
        other.dict("their-dict")["k"] = 1
        assert "theirs" not in store
        assert store.get_many(["theirs"]) == {}
        assert store.keys() == [] and len(store) == 0
        with pytest.raises(KeyError):
            store.get("theirs")
        # index queries are reads too
        assert store.find("by_tag", "t") == [] and store.count("by_tag", "t") == 0
        assert list(store.find_items("by_tag", "t")) == []
        assert other.find("by_tag", "t") == ["theirs"]  # (the primary has it)
        theirs = store.list("their-list")
        assert len(theirs) == 0 and list(theirs) == [] and theirs[0:2] == []
        assert list(reversed(theirs)) == [] and "k" not in store.dict("their-dict")
        with pytest.raises(IndexError):
            theirs[0]
    finally:
        for standby in (a, b):
            standby.resume_replay()
        store.close()
        other.close()


def test_a_callers_own_write_is_always_read_back(cluster: PgCluster, ns: str) -> None:
    """Read-your-writes: with both replicas' replay paused, the store's own writes are read
    from the primary; once a replica has replayed them, reads go back to it."""
    a, b = cluster.standbys
    store = kvstore.connect(
        cluster.primary.url, namespace=ns, replicas=[a.url, b.url], max_replica_lag=60, create=False
    )
    other = _other_writer(cluster, ns)
    try:
        for standby in (a, b):
            standby.pause_replay()
        for i in range(5):
            store.put(f"mine{i}", str(i).encode())
            assert store.get(f"mine{i}") == str(i).encode()
            assert f"mine{i}" in store
        store.delete("mine0")
        assert "mine0" not in store and len(store) == 4
        assert store.get_many(["mine1", "mine2"]) == {"mine1": b"1", "mine2": b"2"}
        assert store.count_keys("mine") == 4 and store.stat("mine3").size == 1
        other.put("theirs", b"x")
        assert store.get("theirs") == b"x"  # the primary serves it: no replica caught up
        a.resume_replay()
        a.wait_for_replay()
        a.pause_replay()
        other.put("later", b"y")
        # a has replayed this store's writes (and 'theirs'), not 'later': reads go to a
        assert store.get("theirs") == b"x" and store.get("mine4") == b"4"
        assert "later" not in store
        store.put("mine5", b"5")  # a new write of its own: the primary again, 'later' too
        assert store.get("mine5") == b"5" and "later" in store
    finally:
        for standby in (a, b):
            standby.resume_replay()
        store.close()
        other.close()


def test_reads_in_a_transaction_stay_on_the_primary(cluster: PgCluster, ns: str) -> None:
    a, b = cluster.standbys
    store = kvstore.connect(
        cluster.primary.url, namespace=ns, replicas=[a.url, b.url], create=False
    )
    other = _other_writer(cluster, ns)
    try:
        for standby in (a, b):
            standby.pause_replay()
        other.put("theirs", b"1")
        with store.transaction() as tx:
            assert tx.get("theirs") == b"1"
            tx.put("mine", b"2")
            assert tx.get("mine") == b"2" and len(tx) == 2
    finally:
        for standby in (a, b):
            standby.resume_replay()
        store.close()
        other.close()


def test_a_replica_lagging_beyond_the_limit_is_skipped(cluster: PgCluster, ns: str) -> None:
    a = cluster.standbys[0]
    store = kvstore.connect(
        cluster.primary.url, namespace=ns, replicas=[a.url], max_replica_lag=0.5, create=False
    )
    other = _other_writer(cluster, ns)
    try:
        len(store)
        a.pause_replay()
        other.put("theirs", b"1")
        assert "theirs" not in store  # within the lag limit, the replica may serve it
        time.sleep(0.6)
        assert "theirs" in store  # the replica is now too far behind: the primary answers
    finally:
        a.resume_replay()
        store.close()
        other.close()


def test_a_replica_that_is_down_is_skipped(make_pg_cluster: object, ns: str) -> None:
    cluster = make_pg_cluster(standbys=1)  # type: ignore[operator]
    kvstore.connect(cluster.primary.url).close()
    cluster.wait_for_replay()
    (standby,) = cluster.standbys
    store = kvstore.connect(cluster.primary.url, namespace=ns, replicas=[standby.url], create=False)
    try:
        store.put("k", b"v")
        standby.wait_for_replay()
        assert store.get("k") == b"v"
        standby.stop(mode="immediate")
        start = time.monotonic()
        for _ in range(20):
            assert store.get("k") == b"v"
            assert store.keys() == ["k"]
        assert time.monotonic() - start < 10
    finally:
        store.close()


def test_replicas_are_refused_where_they_cannot_work(tmp_path: object, pg_url: str) -> None:
    with pytest.raises(ValueError, match="PostgreSQL streaming replication"):
        kvstore.connect(f"sqlite:///{tmp_path}/x.db", replicas=[pg_url])
    with pytest.raises(TypeError, match="replicas must be a list"):
        kvstore.connect(pg_url, replicas=pg_url)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a replica is a URL or an Engine"):
        kvstore.connect(pg_url, replicas=[42])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_replica_lag"):
        kvstore.connect(pg_url, replicas=[pg_url], max_replica_lag=0)


# -- failover -------------------------------------------------------------------------------
def test_a_multi_host_url_survives_failover_and_keeps_every_acknowledged_write(
    make_pg_cluster: object, ns: str
) -> None:
    """Synchronous replication to the standby; the store's URL names both servers with
    ``target_session_attrs=read-write``. The primary is stopped mid-run and the standby
    promoted: calls in between fail fast with a kvstore error, then the same store carries on
    against the new primary, and every write it acknowledged is there."""
    cluster = make_pg_cluster(  # type: ignore[operator]
        standbys=1, synchronous_standby_names="standby1"
    )
    old, new = cluster.primary, cluster.standbys[0]
    url = (
        f"postgresql+psycopg://postgres@/postgres?host=127.0.0.1:{old.port}"
        f"&host=127.0.0.1:{new.port}&target_session_attrs=read-write&connect_timeout=2"
    )
    store = kvstore.connect(url, namespace=ns)
    try:
        acked = []
        for i in range(50):
            store.put(f"k{i}", str(i).encode())
            acked.append(f"k{i}")
        old.stop(mode="immediate")
        failures, gap_start = 0, time.monotonic()
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(kvstore.DatabaseError):
                store.put("during", b"x")  # no read-write server: fails, and fast
            assert time.monotonic() - start < 5
            failures += 1
        new.promote()
        while True:  # the first call that succeeds ends the gap
            try:
                store.put("after", b"1")
                break
            except kvstore.DatabaseError:
                assert time.monotonic() - gap_start < 30
                time.sleep(0.1)
        gap = time.monotonic() - gap_start
        assert failures == 3 and gap < 30
        print(f"failover gap (primary stopped to first write on the new one): {gap:.2f} s")
        assert store.get_many(acked) == {k: k[1:].encode() for k in acked}
        assert store.get("after") == b"1" and len(store) == 51
        store.put("k0", b"again")
        assert store.get("k0") == b"again"
    finally:
        store.close()
