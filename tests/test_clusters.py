"""Smoke tests of the cluster fixtures themselves (tests/clusters.py), with raw SQLAlchemy.

They check that the clusters replicate the way later tests will rely on: PostgreSQL streaming
replication (read-your-writes after waiting for replay, a visible lag while replay is paused,
failover by promotion) and Galera (writes visible on every node, a certification conflict
reported as deadlock 1213, the cluster surviving a SIGKILLed node) - and that teardown leaves
neither processes nor directories behind.

Every test carries the ``cluster`` marker (added by the plugin to each test that uses a cluster
fixture). The clusters run with fsync off: no test here claims durability beyond a process
crash (see tests/clusters.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from clusters import GaleraCluster, PgCluster, _alive, _pids_using

pytest_plugins = ["clusters"]

pytestmark = pytest.mark.timeout(180)


def _mysql_errno(exc: sa.exc.DBAPIError) -> int | None:
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


# -- PostgreSQL -----------------------------------------------------------------------------------
def test_pg_write_on_primary_read_on_every_standby(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.primary.engine()
    with primary.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE smoke_rw (k text PRIMARY KEY, v int)")
        conn.exec_driver_sql("INSERT INTO smoke_rw VALUES ('a', 1)")
    for standby in pg_cluster.standbys:
        standby.wait_for_replay()
        with standby.engine().connect() as conn:
            assert conn.exec_driver_sql("SELECT v FROM smoke_rw WHERE k = 'a'").scalar_one() == 1
            assert conn.exec_driver_sql("SELECT pg_is_in_recovery()").scalar_one() is True
    # application_name = node name, as synchronous_standby_names would need it
    with primary.connect() as conn:
        names = conn.exec_driver_sql(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1"
        ).scalars()
        assert list(names) == ["standby1", "standby2"]


def test_pg_standby_refuses_writes(pg_cluster: PgCluster) -> None:
    with (
        pg_cluster.standbys[0].engine().connect() as conn,
        pytest.raises(sa.exc.DBAPIError) as info,
    ):
        conn.exec_driver_sql("CREATE TABLE smoke_nope (x int)")
    assert getattr(info.value.orig, "sqlstate", None) == "25006"  # read_only_sql_transaction


def test_pg_paused_replay_shows_lag(pg_cluster: PgCluster) -> None:
    paused, other = pg_cluster.standbys
    primary = pg_cluster.primary.engine()
    with primary.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE smoke_lag (x int)")
    pg_cluster.wait_for_replay()
    paused.pause_replay()
    try:
        with primary.begin() as conn:
            conn.exec_driver_sql("INSERT INTO smoke_lag VALUES (1)")
        other.wait_for_replay()  # the other standby is not held up
        with other.engine().connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM smoke_lag").scalar_one() == 1
        assert paused.lag_bytes() > 0
        with pytest.raises(TimeoutError, match="replayed past"):
            paused.wait_for_replay(timeout=1)
        with paused.engine().connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM smoke_lag").scalar_one() == 0
    finally:
        paused.resume_replay()
    paused.wait_for_replay()
    assert paused.lag_bytes() == 0
    with paused.engine().connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM smoke_lag").scalar_one() == 1


@pytest.mark.parametrize("how", ["immediate", "kill"])
def test_pg_promote_standby_after_primary_stops(
    make_pg_cluster: Callable[..., PgCluster], how: str
) -> None:
    cluster = make_pg_cluster(standbys=1)
    old, new = cluster.primary, cluster.standbys[0]
    with old.engine().begin() as conn:
        conn.exec_driver_sql("CREATE TABLE smoke_failover (x int)")
        conn.exec_driver_sql("INSERT INTO smoke_failover VALUES (1)")
    new.wait_for_replay()
    old.stop(how)
    assert not old.is_running()
    new.promote()
    assert new.role == "primary" and not new.is_in_recovery()
    with new.engine().begin() as conn:
        conn.exec_driver_sql("INSERT INTO smoke_failover VALUES (2)")
    with new.engine().connect() as conn:
        assert conn.exec_driver_sql("SELECT sum(x) FROM smoke_failover").scalar_one() == 3


def test_pg_synchronous_standby(make_pg_cluster: Callable[..., PgCluster]) -> None:
    cluster = make_pg_cluster(standbys=2, synchronous_standby_names="FIRST 1 (standby1)")
    with cluster.primary.engine().connect() as conn:
        states = dict(
            conn.exec_driver_sql(
                "SELECT application_name, sync_state FROM pg_stat_replication"
            ).all()
        )
    assert states == {"standby1": "sync", "standby2": "async"}


def test_pg_close_leaves_nothing_behind(make_pg_cluster: Callable[..., PgCluster]) -> None:
    cluster = make_pg_cluster(standbys=1)
    pids = [n.pid for n in cluster.nodes]
    cluster.standbys[0].kill()  # a crashed node is cleaned up as well
    base = cluster.base
    cluster.close()
    assert not base.exists()
    assert not any(_alive(p) for p in pids if p is not None)
    assert not _pids_using(base)
    cluster.close()  # idempotent


def test_marker_is_applied(request: pytest.FixtureRequest, pg_cluster: PgCluster) -> None:
    """The plugin marks every test that uses a cluster fixture."""
    assert request.node.get_closest_marker("cluster") is not None
    assert pg_cluster.base.is_dir()


# -- Galera ---------------------------------------------------------------------------------------
def _galera_table(cluster: GaleraCluster, name: str) -> None:
    with cluster.nodes[0].engine().begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE TABLE {name} (id INT PRIMARY KEY, v INT NOT NULL)")
        conn.exec_driver_sql(f"INSERT INTO {name} VALUES (1, 0)")


def test_galera_write_on_node1_read_on_node3(galera_cluster: GaleraCluster) -> None:
    _galera_table(galera_cluster, "smoke_rw")
    with galera_cluster.nodes[0].engine().begin() as conn:
        conn.exec_driver_sql("UPDATE smoke_rw SET v = 42 WHERE id = 1")
    with galera_cluster.nodes[2].engine().connect() as conn:
        # a causal read: wait until node 3 applied everything committed before this point
        conn.exec_driver_sql("SET SESSION wsrep_sync_wait = 1")
        assert conn.exec_driver_sql("SELECT v FROM smoke_rw WHERE id = 1").scalar_one() == 42
        assert conn.exec_driver_sql("SHOW STATUS LIKE 'wsrep_cluster_size'").one()[1] == "3"


def test_galera_conflicting_updates_on_two_nodes_deadlock(galera_cluster: GaleraCluster) -> None:
    """Both nodes update row 1 inside open transactions (each only locks locally, so neither
    blocks); the first to commit wins, the other is aborted by certification / brute force
    and its commit fails with ER_LOCK_DEADLOCK (1213)."""
    _galera_table(galera_cluster, "smoke_conflict")
    n1, n2 = galera_cluster.nodes[0].engine(), galera_cluster.nodes[1].engine()
    with n1.connect() as c1, n2.connect() as c2:
        c1.exec_driver_sql("UPDATE smoke_conflict SET v = 1 WHERE id = 1")
        c2.exec_driver_sql("UPDATE smoke_conflict SET v = 2 WHERE id = 1")
        c1.commit()
        with pytest.raises(sa.exc.DBAPIError) as info:
            c2.exec_driver_sql("SELECT v FROM smoke_conflict WHERE id = 1")
            c2.commit()
        assert _mysql_errno(info.value) == 1213, info.value
        c2.rollback()
    with n2.connect() as conn:
        conn.exec_driver_sql("SET SESSION wsrep_sync_wait = 1")
        assert conn.exec_driver_sql("SELECT v FROM smoke_conflict WHERE id = 1").scalar_one() == 1


def test_galera_concurrent_commits_one_deadlocks(galera_cluster: GaleraCluster) -> None:
    """The same conflict with both commits racing from two threads: exactly one fails."""
    _galera_table(galera_cluster, "smoke_race")
    engines = [galera_cluster.nodes[0].engine(), galera_cluster.nodes[1].engine()]
    barrier = threading.Barrier(2, timeout=20)
    results: list[object] = [None, None]

    def worker(i: int) -> None:
        try:
            with engines[i].connect() as conn:
                conn.exec_driver_sql(f"UPDATE smoke_race SET v = {i + 1} WHERE id = 1")
                barrier.wait()
                conn.commit()
            results[i] = "ok"
        except sa.exc.DBAPIError as exc:
            results[i] = _mysql_errno(exc)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert sorted(results, key=str) == sorted(["ok", 1213], key=str), results


def test_galera_survives_sigkill_of_node2(galera_cluster: GaleraCluster) -> None:
    n1, n2, n3 = galera_cluster.nodes
    _galera_table(galera_cluster, "smoke_kill")
    n2.kill()
    assert not n2.is_running()
    galera_cluster.wait_synced([n1, n3])  # Synced, and each sees a cluster of 2
    with n1.engine().begin() as conn:
        conn.exec_driver_sql("UPDATE smoke_kill SET v = 7 WHERE id = 1")
    with n3.engine().connect() as conn:
        conn.exec_driver_sql("SET SESSION wsrep_sync_wait = 1")
        assert conn.exec_driver_sql("SELECT v FROM smoke_kill WHERE id = 1").scalar_one() == 7
    with pytest.raises(sa.exc.OperationalError):
        sa.create_engine(n2.url, connect_args={"connect_timeout": 2}).connect()
    # restarted, it rejoins and catches up with what it missed
    n2.start()
    galera_cluster.wait_synced()
    with n2.engine().connect() as conn:
        assert conn.exec_driver_sql("SELECT v FROM smoke_kill WHERE id = 1").scalar_one() == 7


def test_galera_close_leaves_nothing_behind(
    make_galera_cluster: Callable[..., GaleraCluster],
) -> None:
    cluster = make_galera_cluster(nodes=1)
    node = cluster.nodes[0]
    assert node.query("SELECT CURRENT_USER()") == "root@127.0.0.1"
    assert node.query("SELECT @@wsrep_on") == 1
    pid = node.proc.pid if node.proc else None
    base = cluster.base
    cluster.close()
    assert not base.exists()
    assert pid is not None and not _alive(pid)
    assert not _pids_using(base)
