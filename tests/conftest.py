"""The shared conformance fixtures: every test that takes ``store`` runs on each backend.

Backends: ``sqlite-file`` (a fresh file per test), ``sqlite-memory``, ``postgresql`` (psycopg 3),
``postgresql-psycopg2``, ``mariadb`` (PyMySQL, from ``KVSTORE_TEST_MARIADB_URL``: unset is a
visible skip, an error under ``CI=true``) and ``mariadb-mariadbconnector`` (the same server
through MariaDB Connector/Python), and in GALERA_MODULES ``galera`` (a 3-node MariaDB Galera
cluster on loopback, with ``KVSTORE_TEST_GALERA=1``; see GALERA below); for the async API
(``abackend``/``astore``), aiosqlite, asyncpg, psycopg 3 in async mode and asyncmy (MariaDB).
In ASYNC_CONTRACT_MODULES (tests/test_kv.py, tests/test_ttl.py, tests/test_indexes.py,
tests/test_transactions.py, tests/test_len.py, tests/test_scans.py, tests/test_blobs.py, and
the collections' tests/test_dict.py, tests/test_list.py, tests/test_set.py) the ``store`` and
``kv`` fixtures also run on those four, as async stores (and async collections) behind
tests/_async_adapter.py's sync face: about 3.5 minutes more on a 2-core machine for the first
five, and 1 minute for the other five (688 tests).
PostgreSQL comes from ``KVSTORE_TEST_POSTGRES_URL``; when it is unset, a testcontainers
PostgreSQL is started if Docker works, and otherwise the PostgreSQL tests are skipped with a
visible reason (except under ``CI=true``, where that is an error). A URL that is set but
unreachable is always an error. Each PostgreSQL test gets its own namespace and removes it
afterwards; nothing else in the database is touched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from _async_adapter import SyncOverAsync

import kvstore
import kvstore.models
from kvstore.decorators import HMACDecorator, PrefixDecorator, URLEncodeKeysDecorator

# "postgresql" runs on psycopg 3, "postgresql-psycopg2" on the same server through psycopg2
# (SQLAlchemy's default PostgreSQL driver, and what most existing applications use).
BACKENDS = ["sqlite-file", "sqlite-memory", "postgresql", "postgresql-psycopg2"]
# Backends where several connections (threads, processes) see one database.
SHARED_BACKENDS = ["sqlite-file", "postgresql", "postgresql-psycopg2"]
# "mariadb" runs on PyMySQL against KVSTORE_TEST_MARIADB_URL (a MariaDB >= 10.6 database that
# the tests may create kvstore's tables in): unset, its tests are skipped with the reason (an
# error under CI=true); set but unreachable, an error.
MARIADB_URL = os.environ.get("KVSTORE_TEST_MARIADB_URL")
BACKENDS.append("mariadb")
SHARED_BACKENDS.append("mariadb")
# "mariadb-mariadbconnector" (issue 14): the same server through MariaDB Connector/Python (the
# `mariadb` module over libmariadb: `?` parameters, the binary protocol); without the module
# its tests are skipped with the reason (an error under CI=true).
BACKENDS.append("mariadb-mariadbconnector")
SHARED_BACKENDS.append("mariadb-mariadbconnector")
# Backends that are a second driver to a server another backend already covers: a test of the
# server's query plans and costs, not of the driver, says so with
# ``@pytest.mark.driver_variant_exclude(reason=...)`` and is not collected for them.
DRIVER_VARIANTS = {"postgresql-psycopg2", "mariadb-mariadbconnector"}
# "galera" (issue 15): a three-node MariaDB Galera cluster on loopback (tests/clusters.py),
# started once per session by the first test that needs it and torn down at session end. It
# runs only in GALERA_MODULES and only with KVSTORE_TEST_GALERA=1 (the cluster takes ~12 s and
# the modules ~4 minutes on a 2-core machine); without it the tests are skipped with the reason
# (an error under CI=true). Each test's stores go to one node, the next test's to the next one;
# a second store of the test (``backend.connect()`` again, ``other``) goes to the following
# node, so writes through one node are read through another. Every connection runs
# ``SET SESSION wsrep_sync_wait = 1`` (causal reads). A test that cannot apply to Galera says
# so with ``@pytest.mark.galera_exclude(reason=...)`` and is not collected for it.
GALERA = os.environ.get("KVSTORE_TEST_GALERA") == "1"
GALERA_MODULES = {
    "test_kv",
    "test_transactions",
    "test_ttl",
    "test_indexes",
    "test_dict",
    "test_list",
    "test_set",
    "test_len",
    "test_scans",
    "test_blobs",
    "test_cache",
    "test_concurrency",
    "test_cli",
    "test_robustness",
    "test_transfer",
    "test_decorators",
    "test_client_contract",
}

# The KeyValueStore implementations the key-value contract runs on (the ``kv`` fixture), each
# over every backend: the store itself, a transaction of it, and the key- or value-mapping
# decorators over it. (ReadOnlyDecorator refuses writes: tests/test_kv.py runs the read half
# of the contract on it.)
KV_KINDS = ["store", "transaction", "prefix", "urlencode", "hmac"]
KV_PREFIX = "pfx-"
KV_HMAC_SECRET = b"the key-value contract's secret"


#: Test files whose ``backend``-based fixtures (``store``, ``kv``) also run through the async
#: API: kvstore.connect_async on each asyncio driver, driven through tests/_async_adapter.py's
#: sync face. A test there that cannot apply to it says so with ``async_exclude(reason=...)``
#: and is not collected for those backends.
ASYNC_CONTRACT_MODULES = {
    "test_kv",
    "test_ttl",
    "test_indexes",
    "test_transactions",
    "test_len",
    "test_dict",
    "test_list",
    "test_set",
    "test_scans",
    "test_blobs",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "async_exclude(reason): in ASYNC_CONTRACT_MODULES, do not run this test on the async "
        "API's backends (the reason says why it does not apply there)",
    )
    config.addinivalue_line(
        "markers",
        "kv_only(*kinds, reason): run a test that takes `kv` only on these kinds of "
        f"KeyValueStore (of {', '.join(KV_KINDS)})",
    )
    config.addinivalue_line(
        "markers",
        "kv_exclude(*kinds, reason): run a test that takes `kv` on every kind of "
        "KeyValueStore but these (the reason says why the contract differs there)",
    )
    config.addinivalue_line(
        "markers",
        "driver_variant_exclude(reason): do not run this test on DRIVER_VARIANTS (a second "
        "driver to a server another backend covers): it tests the server, not the driver",
    )
    config.addinivalue_line(
        "markers",
        "galera_exclude(reason): in GALERA_MODULES, do not run this test on the galera "
        "backend (the reason says why it does not apply to a multi-primary cluster)",
    )


def _galera_applies(metafunc: pytest.Metafunc) -> bool:
    if metafunc.module.__name__ not in GALERA_MODULES:
        return False
    mark = metafunc.definition.get_closest_marker("galera_exclude")
    if mark is not None and not mark.kwargs.get("reason"):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: galera_exclude needs reason=")
    return mark is None


def _driver_variants_apply(metafunc: pytest.Metafunc) -> bool:
    mark = metafunc.definition.get_closest_marker("driver_variant_exclude")
    if mark is not None and not mark.kwargs.get("reason"):
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: driver_variant_exclude needs reason="
        )
    return mark is None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``kv_kind`` (behind the ``kv`` fixture) by the test's kv_only/kv_exclude
    markers: a kind a test does not apply to is never collected, rather than skipped (under
    CI=true a skip is a failure)."""
    if "backend" in metafunc.fixturenames and not _parametrized(metafunc, "backend"):
        # a module may run on fewer backends, saying why (KVSTORE_BACKENDS)
        names = list(getattr(metafunc.module, "KVSTORE_BACKENDS", BACKENDS))
        if not _driver_variants_apply(metafunc):
            names = [n for n in names if n not in DRIVER_VARIANTS]
        mark = metafunc.definition.get_closest_marker("async_exclude")
        if metafunc.module.__name__ in ASYNC_CONTRACT_MODULES and mark is None:
            names += ASYNC_DRIVERS
        elif mark is not None and not mark.kwargs.get("reason"):
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: async_exclude needs reason=")
        if not hasattr(metafunc.module, "KVSTORE_BACKENDS") and _galera_applies(metafunc):
            names.append("galera")
        metafunc.parametrize("backend", names, indirect=True)
    if "shared_backend" in metafunc.fixturenames and not _parametrized(metafunc, "shared_backend"):
        shared = list(SHARED_BACKENDS)
        if not _driver_variants_apply(metafunc):
            shared = [n for n in shared if n not in DRIVER_VARIANTS]
        if _galera_applies(metafunc):
            shared.append("galera")
        metafunc.parametrize("shared_backend", shared, indirect=True)
    if "kv_kind" not in metafunc.fixturenames:
        return
    kinds = list(KV_KINDS)
    for mark in metafunc.definition.iter_markers():
        if mark.name not in ("kv_only", "kv_exclude"):
            continue
        unknown = set(mark.args) - set(KV_KINDS)
        if unknown or not mark.args or not mark.kwargs.get("reason"):
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: @pytest.mark.{mark.name} takes kinds of "
                f"{KV_KINDS} and a reason=, got {mark.args} {mark.kwargs}"
            )
        if mark.name == "kv_only":
            kinds = [k for k in kinds if k in mark.args]
        else:
            kinds = [k for k in kinds if k not in mark.args]
    metafunc.parametrize("kv_kind", kinds)


def _parametrized(metafunc: pytest.Metafunc, name: str) -> bool:
    """Whether the test parametrizes ``name`` itself (``@pytest.mark.parametrize(...,
    indirect=True)``, to pick some backends)."""
    return any(
        name in (m.args[0] if isinstance(m.args[0], list | tuple) else m.args[0].split(","))
        for m in metafunc.definition.iter_markers("parametrize")
    )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = os.environ.get("KVSTORE_TEST_POSTGRES_URL")
    if url:
        engine = sa.create_engine(_psycopg(url))
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:  # set but unreachable: an error, never a skip
            pytest.fail(
                f"KVSTORE_TEST_POSTGRES_URL={url!r} is set but unreachable: {exc}", pytrace=False
            )
        finally:
            engine.dispose()
        yield _psycopg(url)
        return
    container = None
    try:
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver="psycopg")
        container.start()
    except Exception as exc:
        reason = f"PostgreSQL tests need KVSTORE_TEST_POSTGRES_URL or a working Docker ({exc.__class__.__name__})"
        if os.environ.get("CI"):
            pytest.fail(reason + " - under CI=true this is an error", pytrace=False)
        pytest.skip(reason)
    try:
        yield container.get_connection_url()
    finally:
        container.stop()


def _psycopg(url: str) -> str:
    u = sa.make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url, pool_size=10)
    kvstore.connect(engine).close()  # create the tables once
    yield engine
    engine.dispose()


def _with_driver(url: str, driver: str) -> str:
    return (
        sa.make_url(url)
        .set(drivername=f"postgresql+{driver}")
        .render_as_string(hide_password=False)
    )


@pytest.fixture(scope="session")
def pg2_url(pg_url: str) -> str:
    """The test PostgreSQL server, through psycopg2."""
    return _with_driver(pg_url, "psycopg2")


@pytest.fixture(scope="session")
def pg2_engine(pg2_url: str, pg_engine: sa.Engine) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg2_url, pool_size=10)
    yield engine
    engine.dispose()


@dataclass
class Backend:
    """How a test can reach the database of its backend from elsewhere (threads, processes)."""

    name: str
    url: str
    namespace: str
    engine: sa.Engine | None

    @property
    def shared(self) -> bool:
        return self.name != "sqlite-memory"

    def connect(self, **kw: Any) -> kvstore.Store:
        kw.setdefault("namespace", self.namespace)
        if self.engine is not None and not kw.pop("own_engine", False):
            return kvstore.connect(self.engine, **kw)
        kw.pop("own_engine", None)
        return kvstore.connect(self.url, **kw)


def _cleanup_pg(engine: sa.Engine, namespace: str) -> None:
    t = kvstore.models.tables()
    # Namespaces are random per test, so everything starting with one is this test's own:
    # derived collection namespaces ("<ns>/d/x") and any "<ns>-other" a test made.
    like = namespace + "%"
    with engine.begin() as conn:
        for ns_cond in (t.entries.c.namespace == namespace, t.entries.c.namespace.like(like)):
            conn.execute(t.entries.delete().where(ns_cond))
        for tab in (t.indexes, t.lists, t.namespaces):
            conn.execute(
                tab.delete().where(sa.or_(tab.c.namespace == namespace, tab.c.namespace.like(like)))
            )


@pytest.fixture(scope="session")
def maria_url() -> str:
    """KVSTORE_TEST_MARIADB_URL, checked once: unset is a skip (an error under CI=true), set
    but unreachable an error."""
    if not MARIADB_URL:
        reason = "MariaDB tests need KVSTORE_TEST_MARIADB_URL (e.g. mariadb+pymysql://root@127.0.0.1/test)"
        if os.environ.get("CI"):
            pytest.fail(reason + " - under CI=true this is an error", pytrace=False)
        pytest.skip(reason)
    url = _pymysql(MARIADB_URL)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        pytest.fail(
            f"KVSTORE_TEST_MARIADB_URL={MARIADB_URL!r} is set but unreachable: {exc}", pytrace=False
        )
    finally:
        engine.dispose()
    return url


def _pymysql(url: str) -> str:
    u = sa.make_url(url)
    if u.drivername in ("mysql", "mariadb"):
        u = u.set(drivername=f"{u.drivername}+pymysql")
    if "charset" not in u.query:
        u = u.update_query_dict({"charset": "utf8mb4"})
    return u.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def maria_engine(maria_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(maria_url, pool_size=10)
    kvstore.connect(engine).close()  # create the tables once
    yield engine
    engine.dispose()


def _maria_driver(url: str, driver: str) -> str:
    """The test MariaDB server's URL through another driver: PyMySQL's charset argument is
    kept only where the driver takes one (Connector/Python speaks utf8mb4 always)."""
    u = sa.make_url(url).set(drivername=f"mariadb+{driver}")
    if driver == "mariadbconnector":
        u = u.difference_update_query(["charset"])
    return u.render_as_string(hide_password=False)


def _require_module(module: str, what: str) -> None:
    """Skip (an error under CI=true) when a driver module is not installed."""
    try:
        __import__(module)
    except ImportError as exc:
        reason = f"{what} tests need the {module!r} module ({exc})"
        if os.environ.get("CI"):
            pytest.fail(reason + " - under CI=true this is an error", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def mdbc_url(maria_url: str) -> str:
    """The test MariaDB server, through MariaDB Connector/Python."""
    _require_module(
        "mariadb", "MariaDB Connector/Python (pip install mariadb; needs libmariadb-dev)"
    )
    return _maria_driver(maria_url, "mariadbconnector")


@pytest.fixture(scope="session")
def mdbc_engine(mdbc_url: str, maria_engine: sa.Engine) -> Iterator[sa.Engine]:
    engine = sa.create_engine(mdbc_url, pool_size=10)
    yield engine
    engine.dispose()


class GaleraNodes:
    """The session's Galera cluster and one engine per node (causal reads on every
    connection); ``next_node()`` hands the nodes out in turn."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        # mariadb+pymysql, as the mariadb backend (dialect_name "mariadb")
        self.urls = [
            _pymysql(sa.make_url(u).set(drivername="mariadb+pymysql").render_as_string(False))
            for u in cluster.urls
        ]
        self.engines = [
            sa.create_engine(
                u,
                pool_size=10,
                connect_args={"init_command": "SET SESSION wsrep_sync_wait = 1"},
            )
            for u in self.urls
        ]
        self._turn = 0

    def next_node(self) -> int:
        self._turn += 1
        return self._turn % len(self.engines)

    def close(self) -> None:
        for e in self.engines:
            e.dispose()


@pytest.fixture(scope="session")
def galera_nodes() -> Iterator[GaleraNodes]:
    """A three-node Galera cluster for the session (KVSTORE_TEST_GALERA=1): unset is a skip
    (an error under CI=true); missing binaries a skip the same way; a cluster that fails to
    start an error. Torn down at session end (and by tests/clusters.py's atexit hook)."""
    if not GALERA:
        reason = "Galera tests need KVSTORE_TEST_GALERA=1 (a 3-node cluster on loopback, ~12 s)"
        if os.environ.get("CI"):
            pytest.fail(reason + " - under CI=true this is an error", pytrace=False)
        pytest.skip(reason)
    import clusters

    try:
        cluster = clusters.GaleraCluster(nodes=3)
    except clusters.ClusterUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} - under CI=true this is an error", pytrace=False)
        pytest.skip(str(exc))
    with cluster:
        nodes = GaleraNodes(cluster)
        try:
            kvstore.connect(nodes.engines[0]).close()  # the tables, on every node
            cluster.wait_synced()
            yield nodes
        finally:
            nodes.close()


@dataclass
class GaleraBackend(Backend):
    """The test's stores on node ``node`` of the cluster; each further ``connect()`` on the
    next node."""

    nodes: GaleraNodes | None = None
    node: int = 0
    _connects: int = 0

    def connect(self, **kw: Any) -> kvstore.Store:
        assert self.nodes is not None
        i = (self.node + self._connects) % len(self.nodes.engines)
        self._connects += 1
        kw.setdefault("namespace", self.namespace)
        if not kw.pop("own_engine", False):
            return kvstore.connect(self.nodes.engines[i], **kw)
        opts = kw.setdefault("engine_options", {})
        opts.setdefault("connect_args", {"init_command": "SET SESSION wsrep_sync_wait = 1"})
        return kvstore.connect(self.nodes.urls[i], **kw)


@dataclass
class AsyncContractBackend(Backend):
    """A backend whose stores are async stores (kvstore.connect_async on ``async_url``) behind
    the sync face of tests/_async_adapter.py; ``url`` and ``engine`` reach the same database
    through the sync API, as another process would."""

    async_url: str = ""

    def connect(self, **kw: Any) -> Any:
        kw.setdefault("namespace", self.namespace)
        kw.pop("own_engine", None)
        return SyncOverAsync.connect(self.async_url, **kw)


def _make_backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    namespace = "t" + uuid.uuid4().hex[:12]
    if name in ASYNC_DRIVERS:
        if name == "aiosqlite":
            path = tmp_path / "kv.db"
            yield AsyncContractBackend(
                name, f"sqlite:///{path}", namespace, None, f"sqlite+aiosqlite:///{path}"
            )
            return
        if name == "asyncmy":
            engine = request.getfixturevalue("maria_engine")
            url = request.getfixturevalue("maria_url")
            async_url = request.getfixturevalue("asyncmy_url")
        else:
            engine = request.getfixturevalue("pg_engine")
            url = request.getfixturevalue("pg_url")
            async_url = _with_driver(url, "asyncpg") if name == "asyncpg" else url
        try:
            yield AsyncContractBackend(name, url, namespace, engine, async_url)
        finally:
            _cleanup_pg(engine, namespace)
        return
    if name == "galera":
        nodes: GaleraNodes = request.getfixturevalue("galera_nodes")
        i = nodes.next_node()
        engine = nodes.engines[i]
        try:
            yield GaleraBackend(name, nodes.urls[i], namespace, engine, nodes, i)
        finally:
            _cleanup_pg(engine, namespace)
        return
    if name in ("mariadb", "mariadb-mariadbconnector"):
        connector = name == "mariadb-mariadbconnector"
        engine = request.getfixturevalue("mdbc_engine" if connector else "maria_engine")
        url = request.getfixturevalue("mdbc_url" if connector else "maria_url")
        try:
            yield Backend(name, url, namespace, engine)
        finally:
            _cleanup_pg(engine, namespace)
    elif name == "sqlite-file":
        yield Backend(name, f"sqlite:///{tmp_path / 'kv.db'}", namespace, None)
    elif name == "sqlite-memory":
        yield Backend(name, "sqlite://", namespace, None)
    else:
        psycopg2 = name == "postgresql-psycopg2"
        engine: sa.Engine = request.getfixturevalue("pg2_engine" if psycopg2 else "pg_engine")
        url = request.getfixturevalue("pg2_url" if psycopg2 else "pg_url")
        try:
            yield Backend(name, url, namespace, engine)
        finally:
            _cleanup_pg(engine, namespace)


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The backend of the test (parametrized in pytest_generate_tests: BACKENDS, and in
    ASYNC_CONTRACT_MODULES the async drivers too)."""
    yield from _make_backend(request.param, request, tmp_path)


@pytest.fixture
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A backend that several connections, threads and processes can share (parametrized in
    pytest_generate_tests: SHARED_BACKENDS, and galera in GALERA_MODULES)."""
    yield from _make_backend(request.param, request, tmp_path)


@pytest.fixture
def store(backend: Backend) -> Iterator[kvstore.Store]:
    s = backend.connect()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def kv(kv_kind: str, store: kvstore.Store) -> Iterator[kvstore.KeyValueStore]:
    """A KeyValueStore of kind ``kv_kind`` (see KV_KINDS) over the backend's store, empty.

    ``transaction`` is the Transaction of ``store.transaction()``, committed at teardown.
    """
    if kv_kind == "transaction":
        with store.transaction() as tx:
            yield tx
        return
    if kv_kind == "store":
        yield store
    elif kv_kind == "prefix":
        yield PrefixDecorator(KV_PREFIX, store)
    elif kv_kind == "urlencode":
        yield URLEncodeKeysDecorator(store)
    elif kv_kind == "hmac":
        yield HMACDecorator(KV_HMAC_SECRET, store)
    else:  # pragma: no cover - pytest_generate_tests only passes KV_KINDS
        raise AssertionError(kv_kind)


@pytest.fixture
def shared_store(shared_backend: Backend) -> Iterator[kvstore.Store]:
    s = shared_backend.connect()
    try:
        yield s
    finally:
        s.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a skipped test is a failure: CI must exercise every backend."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and session.exitstatus == 0:
        session.exitstatus = 1
        if reporter is not None:
            reporter.write_line(
                f"CI=true: {len(skipped)} test(s) skipped; skips are failures in CI", red=True
            )


# -- the async API (kvstore.connect_async) ------------------------------------------------------
#: the asyncio drivers the async API runs on: its own tests (tests/test_async.py), the cache's,
#: and the key-value contract through tests/_async_adapter.py
ASYNC_DRIVERS = ["aiosqlite", "asyncpg", "psycopg-async", "asyncmy"]


@pytest.fixture(scope="session")
def asyncmy_url(maria_url: str) -> str:
    """The test MariaDB server, through asyncmy (for kvstore.connect_async)."""
    _require_module("asyncmy", "asyncmy (pip install asyncmy)")
    return _maria_driver(maria_url, "asyncmy")


@dataclass
class AsyncBackend:
    driver: str
    url: str  # for connect_async
    sync_url: str  # the same database for kvstore.connect
    namespace: str

    async def connect(self, **kw: Any) -> kvstore.AsyncStore:
        kw.setdefault("namespace", self.namespace)
        return await kvstore.connect_async(self.url, **kw)

    def connect_sync(self, **kw: Any) -> kvstore.Store:
        kw.setdefault("namespace", self.namespace)
        return kvstore.connect(self.sync_url, **kw)


@pytest.fixture(params=ASYNC_DRIVERS)
def abackend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AsyncBackend]:
    namespace = "a" + uuid.uuid4().hex[:12]
    if request.param == "aiosqlite":
        path = tmp_path / "kv.db"
        yield AsyncBackend(
            request.param, f"sqlite+aiosqlite:///{path}", f"sqlite:///{path}", namespace
        )
        return
    if request.param == "asyncmy":
        maria_engine: sa.Engine = request.getfixturevalue("maria_engine")
        sync_url: str = request.getfixturevalue("maria_url")
        try:
            yield AsyncBackend(
                request.param, request.getfixturevalue("asyncmy_url"), sync_url, namespace
            )
        finally:
            _cleanup_pg(maria_engine, namespace)
        return
    pg_url: str = request.getfixturevalue("pg_url")
    pg_engine: sa.Engine = request.getfixturevalue("pg_engine")
    url = _with_driver(pg_url, "asyncpg") if request.param == "asyncpg" else pg_url
    try:
        yield AsyncBackend(request.param, url, pg_url, namespace)
    finally:
        _cleanup_pg(pg_engine, namespace)


@pytest_asyncio.fixture
async def astore(abackend: AsyncBackend) -> AsyncIterator[kvstore.AsyncStore]:
    store = await abackend.connect()
    try:
        yield store
    finally:
        await store.close()
