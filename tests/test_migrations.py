"""kvstore's shipped Alembic migrations, run on SQLite (a file) and PostgreSQL.

Each PostgreSQL test works under its own table prefix (``m`` + 8 hex digits + ``_``) and drops
whatever it created; the test that needs a real ``alembic_version`` of a host application gets
its own PostgreSQL schema instead. Nothing else in the database is touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _sql
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import kvstore
from conftest import BACKENDS
from kvstore import migrations
from kvstore.migrations import HEAD
from kvstore.models import tables

REPO = Path(__file__).resolve().parent.parent

# Every object a prefix owns, as one catalog query per backend: tables, indexes, sequences,
# triggers and (PostgreSQL) trigger functions.
_CATALOG = {
    "sqlite-file": "SELECT name FROM sqlite_master WHERE substr(name, 1, length(:p)) = :p",
    "postgresql": """
        SELECT relname FROM pg_class
         WHERE relnamespace = current_schema()::regnamespace AND left(relname, length(:p)) = :p
        UNION ALL SELECT tgname FROM pg_trigger WHERE left(tgname, length(:p)) = :p
        UNION ALL SELECT proname FROM pg_proc
         WHERE pronamespace = current_schema()::regnamespace AND left(proname, length(:p)) = :p
    """,
}
_CATALOG["mariadb"] = """
    SELECT table_name FROM information_schema.tables
     WHERE table_schema = DATABASE() AND left(table_name, length(:p)) = :p
    UNION ALL SELECT trigger_name FROM information_schema.triggers
     WHERE trigger_schema = DATABASE() AND left(trigger_name, length(:p)) = :p
"""
_TRIGGERS = {
    "mariadb": "SELECT trigger_name FROM information_schema.triggers "
    "WHERE event_object_schema = DATABASE() AND event_object_table = :t",
    "sqlite-file": "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t",
    "postgresql": "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(:t) AND NOT tgisinternal",
}
# the same server through Connector/Python
_CATALOG["mariadb-mariadbconnector"] = _CATALOG["mariadb"]
_TRIGGERS["mariadb-mariadbconnector"] = _TRIGGERS["mariadb"]


@dataclass
class DB:
    """One empty kvstore schema to migrate: a fresh SQLite file, or a fresh PostgreSQL prefix."""

    name: str
    url: str
    engine: sa.Engine
    prefix: str
    _prefixes: list[str] = field(default_factory=list)

    def new_prefix(self) -> str:
        """Another prefix, cleaned up after the test like the first."""
        p = f"m{uuid.uuid4().hex[:8]}_"
        self._prefixes.append(p)
        return p

    def objects(self, prefix: str | None = None) -> set[str]:
        with self.engine.connect() as conn:
            return {
                r[0]
                for r in conn.execute(sa.text(_CATALOG[self.name]), {"p": prefix or self.prefix})
            }

    def triggers(self, prefix: str | None = None) -> set[str]:
        entries = tables(prefix or self.prefix).entries.name
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.text(_TRIGGERS[self.name]), {"t": entries})}

    def drop_everything(self) -> None:
        dialect = self.engine.dialect.name
        for p in self._prefixes:
            with self.engine.begin() as conn:
                if sa.inspect(conn).has_table(f"{p}entries"):
                    for stmt in _sql.drop_trigger_sql(dialect, p):
                        conn.exec_driver_sql(stmt)
                # referencing tables first (MariaDB ignores CASCADE)
                names = [t.name for t in reversed(tables(p).metadata.sorted_tables)]
                for t in [*names, migrations.version_table(p)]:
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {t} CASCADE")
                # PostgreSQL's trigger functions outlive a table dropped without its triggers
                # (entries_cleanup: revisions 0001 and 0002)
                if dialect == "postgresql":
                    for stmt in _sql.drop_trigger_sql(dialect, p):
                        if stmt.startswith("DROP FUNCTION"):
                            conn.exec_driver_sql(stmt)
                    conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {p}entries_cleanup()")


# MariaDB as the shared suite has it (tests/conftest.py), through PyMySQL and Connector/Python
_MARIADB = [b for b in BACKENDS if b.startswith("mariadb")]
DB_BACKENDS = ["sqlite-file", "postgresql", *_MARIADB]


@pytest.fixture(params=DB_BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DB]:
    if request.param == "sqlite-file":
        url = f"sqlite:///{tmp_path / 'm.db'}"
        engine = sa.create_engine(url, poolclass=NullPool)
        # The default prefix on SQLite (a fresh file each test); unique ones on PostgreSQL.
        yield DB(request.param, url, engine, "kv_")
        engine.dispose()
        return
    fixture = {"mariadb": "maria_url", "mariadb-mariadbconnector": "mdbc_url"}
    url = request.getfixturevalue(fixture.get(request.param, "pg_url"))
    engine = sa.create_engine(url, poolclass=NullPool)
    d = DB(request.param, url, engine, "")
    d.prefix = d.new_prefix()
    try:
        yield d
    finally:
        d.drop_everything()
        engine.dispose()


def _count_statements(engine: sa.Engine) -> Callable[[], list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    return lambda: seen


def _kvstore_tables(prefix: str) -> set[str]:
    return {*tables(prefix).metadata.tables, migrations.version_table(prefix)}


# -- the scripts ------------------------------------------------------------------------------
def test_head_constant_matches_the_scripts() -> None:
    assert migrations.heads() == [HEAD]
    script = ScriptDirectory(str(migrations.script_location()))
    assert script.get_revision(migrations.BASELINE) is not None
    assert (migrations.script_location() / "env.py").is_file()
    assert not (migrations.script_location() / "__init__.py").exists()  # would shadow alembic


# -- upgrade / downgrade ----------------------------------------------------------------------
def test_upgrade_from_empty_creates_exactly_the_models(db: DB) -> None:
    assert migrations.current(db.engine, table_prefix=db.prefix) is None
    migrations.upgrade(db.engine, table_prefix=db.prefix)
    assert migrations.current(db.url, table_prefix=db.prefix) == HEAD
    names = set(sa.inspect(db.engine).get_table_names())
    assert {n for n in names if n.startswith(db.prefix)} == _kvstore_tables(db.prefix)
    assert migrations.check(db.engine, table_prefix=db.prefix) == []
    assert db.triggers()  # the triggers are part of the migration
    migrations.upgrade(db.engine, table_prefix=db.prefix)  # at head: nothing to do
    assert migrations.current(db.engine, table_prefix=db.prefix) == HEAD


def test_downgrade_to_base_leaves_nothing_then_upgrade_again(db: DB) -> None:
    migrations.upgrade(db.url, table_prefix=db.prefix)
    assert db.objects() >= _kvstore_tables(db.prefix)
    migrations.downgrade(db.url, "base", table_prefix=db.prefix)
    assert db.objects() == set()  # no table, index, sequence, trigger or function
    assert migrations.current(db.engine, table_prefix=db.prefix) is None
    migrations.upgrade(db.url, "head", table_prefix=db.prefix)
    assert migrations.check(db.engine, table_prefix=db.prefix) == []


def test_0002_upgrades_a_populated_0001_database_in_place(db: DB) -> None:
    migrations.upgrade(db.url, "0001", table_prefix=db.prefix)
    # 0001's PostgreSQL column is jsonb: a row written then keeps what jsonb made of it
    with db.engine.begin() as conn:
        key = "`key`" if db.name in _MARIADB else "key"  # a reserved word there
        conn.execute(
            sa.text(
                f"INSERT INTO {db.prefix}entries (namespace, {key}, value, size, version, "
                "created_at, updated_at, metadata, checksum) "
                "VALUES ('default', 'old', :v, 1, 1, 0, 0, :m, '')"
            ),
            {"v": b"x", "m": '{"n": 1.5, "s": "text"}'},
        )
    migrations.upgrade(db.url, table_prefix=db.prefix)
    assert migrations.check(db.engine, table_prefix=db.prefix) == []
    store = kvstore.connect(db.url, table_prefix=db.prefix, create=False)
    try:
        assert store.stat("old").metadata == {"n": 1.5, "s": "text"}
        store.put("new", b"y", metadata={"big": 1e16, "neg": -6.382684991819165e16})
        assert store.stat("new").metadata == {"big": 1e16, "neg": -6.382684991819165e16}
        assert type(store.stat("new").metadata["big"]) is float
    finally:
        store.close()
    migrations.downgrade(db.url, "0001", table_prefix=db.prefix)
    assert migrations.current(db.url, table_prefix=db.prefix) == "0001"
    migrations.upgrade(db.url, table_prefix=db.prefix)
    with kvstore.connect(db.url, table_prefix=db.prefix, create=False) as again:
        assert again.keys() == ["new", "old"]
        assert again.stat("old").metadata == {"n": 1.5, "s": "text"}


def _by_len(value: bytes) -> int:
    return len(value)


def test_0003_counts_and_cleans_up_a_populated_database_across_downgrade_and_upgrade(
    db: DB,
) -> None:
    """Data, indexes, lists, blobs and TTLs written at head survive a downgrade to 0001 and
    the upgrade back; rows changed while at 0001 (no counter, old triggers) are counted by
    0003's back-fill, and its triggers clean up chunks and index entries afterwards."""
    migrations.upgrade(db.url, table_prefix=db.prefix)
    t = tables(db.prefix)
    with kvstore.connect(db.url, table_prefix=db.prefix, create=False, chunk_size=1024) as s:
        s.create_index("by_len", _by_len)
        s.put_many({f"k{i}": b"x" * i for i in range(1, 21)})
        s.put("big", os.urandom(5000))
        s.put("gone-soon", b"t", ttl_secs=0.05)
        s.put("later", b"t", ttl_secs=3600)
        s.list("l").extend([1, 2, 3])
        s.dict("d").update(a=1, b=2)
    migrations.downgrade(db.url, "0001", table_prefix=db.prefix)
    assert "counts" not in {n.removeprefix(db.prefix) for n in db.objects()}
    with db.engine.begin() as conn:  # at 0001: the old triggers clean up, nothing counts
        e = t.entries.c
        conn.execute(sa.delete(t.entries).where(e.key.in_(["k1", "big"])))
        conn.execute(
            sa.insert(t.entries).values(
                namespace="default",
                key="raw",
                value=b"r",
                size=1,
                version=1,
                created_at=0,
                updated_at=0,
                checksum="",
            )
        )
        assert conn.execute(sa.select(sa.func.count()).select_from(t.chunks)).scalar_one() == 0
    migrations.upgrade(db.url, table_prefix=db.prefix)
    assert migrations.check(db.engine, table_prefix=db.prefix) == []
    time.sleep(0.1)
    with kvstore.connect(db.url, table_prefix=db.prefix, create=False) as s:
        s.create_index("by_len", _by_len)  # declares the callable in this store
        assert len(s) == 20 + 1  # k2..k20, later, raw; gone-soon has expired
        assert "gone-soon" not in s.keys() and len(s.keys()) == len(s)  # noqa: SIM118
        assert s.find("by_len", 5) == ["k5"]
        assert list(s.list("l")) == [1, 2, 3] and dict(s.dict("d")) == {"a": 1, "b": 2}
        s.put("big2", os.urandom(5000))
        s.delete_many(["k5", "big2", "raw"])
        assert s.find("by_len", 5) == [] and len(s) == 19  # k2..k20 but k5, later
        assert s.purge_expired() == 1 and len(s) == 19
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.chunks)).scalar_one() == 0
        ie = conn.execute(sa.select(sa.func.count()).select_from(t.index_entries)).scalar_one()
        assert ie == 19  # k2..k20 but k5, and later (dicts and lists are other namespaces)
    migrations.downgrade(db.url, "0002", table_prefix=db.prefix)
    migrations.upgrade(db.url, table_prefix=db.prefix)
    with kvstore.connect(db.url, table_prefix=db.prefix, create=False) as s:
        assert len(s) == 19 and len(s.dict("d")) == 2


def test_0004_rekeys_a_populated_database_by_namespace_across_downgrade_and_upgrade(
    db: DB,
) -> None:
    """0004 rebuilds the chunk, index, index-entry, list and list-item tables with the
    namespace leading their keys: everything written before it (two namespaces, a unique and
    a callable index, lists, a dict, a chunked blob, TTLs) reads back the same after the
    downgrade to 0003 and the upgrade again, and the upgraded triggers clean up."""
    migrations.upgrade(db.url, table_prefix=db.prefix)
    t = tables(db.prefix)
    big = os.urandom(5000)

    def fill(s: kvstore.Store) -> None:
        s.create_index("by_len", _by_len)
        s.create_index("email", kvstore.json_field("email"), unique=True)
        s.put_many({f"k{i}": b"x" * i for i in range(1, 11)})
        s.put("u1", b'{"email": "a@x"}')
        s.put("big", big)
        s.put("later", b"t", ttl_secs=3600)
        s.list("l").extend([1, 2, 3])
        s.dict("d").update(a=1, b=2)

    def check(s: kvstore.Store, other: str) -> None:
        s.create_index("by_len", _by_len)  # declares the callable in this store
        assert s.find("by_len", 5) == ["k5"] and s.find("email", "a@x") == ["u1"]
        assert s.get("big") == big and s.stat("later").expires_at is not None
        assert list(s.list("l")) == [1, 2, 3] and dict(s.dict("d")) == {"a": 1, "b": 2}
        assert len(s) == 13
        with pytest.raises(kvstore.UniqueViolation):
            s.put("u2", b'{"email": "a@x"}')
        assert list(s.list(other)) == ["o"]

    opts: dict[str, Any] = {"table_prefix": db.prefix, "create": False, "chunk_size": 1024}
    for ns, other in (("one", "two-l"), ("two", "one-l")):
        with kvstore.connect(db.url, namespace=ns, **opts) as s:
            fill(s)
            s.list(other).append("o")
    migrations.downgrade(db.url, "0003", table_prefix=db.prefix)
    assert migrations.current(db.url, table_prefix=db.prefix) == "0003"
    with db.engine.begin() as conn:  # 0003's shape: no namespace in the child tables
        cols = {c["name"] for c in sa.inspect(conn).get_columns(t.chunks.name)}
        assert "namespace" not in cols
        # an id auto-assigned at 0003 does not collide with the ids the downgrade kept
        conn.execute(
            sa.text(f"INSERT INTO {t.lists.name} (namespace, name, length) VALUES ('x', 'y', 0)")
        )
        n_lists = conn.execute(sa.text(f"SELECT COUNT(*) FROM {t.lists.name}")).scalar_one()
        assert n_lists == 2 * 2 + 1  # "l" and the other list in each namespace, and "y"
    migrations.upgrade(db.url, table_prefix=db.prefix)
    assert migrations.check(db.engine, table_prefix=db.prefix) == []
    for ns, other in (("one", "two-l"), ("two", "one-l")):
        with kvstore.connect(db.url, namespace=ns, **opts) as s:
            check(s, other)
    chunk_namespaces = f"SELECT DISTINCT namespace FROM {t.chunks.name} ORDER BY namespace"
    with db.engine.connect() as conn:
        assert [r[0] for r in conn.execute(sa.text(chunk_namespaces))] == ["one", "two"]
    with kvstore.connect(db.url, namespace="one", **opts) as s:
        s.delete_many(["big", "u1", "k5"])
        s.list("l").clear()
        assert s.find("email", "a@x") == [] and s.find("by_len", 5) == []
    with db.engine.connect() as conn:
        assert [r[0] for r in conn.execute(sa.text(chunk_namespaces))] == ["two"]
    migrations.downgrade(db.url, "0003", table_prefix=db.prefix)
    migrations.upgrade(db.url, table_prefix=db.prefix)
    with kvstore.connect(db.url, namespace="two", **opts) as s:
        check(s, "one-l")


def test_migrated_triggers_delete_chunks_with_their_entry(db: DB) -> None:
    migrations.upgrade(db.engine, table_prefix=db.prefix)
    chunks = tables(db.prefix).chunks
    with kvstore.connect(db.engine, table_prefix=db.prefix, create=False, chunk_size=1024) as store:
        store.put("big", os.urandom(5000))
        with db.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(chunks)).scalar_one() >= 5
        assert len(store.get("big")) == 5000
        store.delete("big")
        with db.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(chunks)).scalar_one() == 0


def test_two_prefixes_migrate_independently(db: DB) -> None:
    other = db.new_prefix()
    migrations.upgrade(db.engine, table_prefix=db.prefix)
    assert migrations.current(db.engine, table_prefix=other) is None
    migrations.upgrade(db.engine, table_prefix=other)
    migrations.downgrade(db.engine, "base", table_prefix=other)
    assert db.objects(other) == set()
    assert migrations.check(db.engine, table_prefix=db.prefix) == []


def _refuses_ddl_on_callers_connection(db: DB, run: Callable[[Any], None]) -> bool:
    """On MariaDB, where DDL commits the open transaction, schema work on the caller's
    Connection or Session is refused (and nothing is created); whether that was checked."""
    if db.name not in _MARIADB:
        return False
    with db.engine.connect() as conn, pytest.raises(kvstore.TransactionError, match="DDL"):
        run(conn)
    with Session(db.engine) as session, pytest.raises(kvstore.TransactionError, match="DDL"):
        run(session)
    assert db.objects() == set()
    return True


def test_upgrade_in_the_callers_transaction(db: DB) -> None:
    # With a Connection, kvstore never commits: a rollback undoes the migration (on SQLite too,
    # whose driver would otherwise autocommit DDL).
    if _refuses_ddl_on_callers_connection(
        db, lambda bind: migrations.upgrade(bind, table_prefix=db.prefix)
    ):
        return
    with db.engine.connect() as conn:
        migrations.upgrade(conn, table_prefix=db.prefix)
        assert migrations.current(conn, table_prefix=db.prefix) == HEAD
        conn.rollback()
    assert db.objects() == set()
    with Session(db.engine) as session:
        migrations.upgrade(session, table_prefix=db.prefix)
        session.commit()
    assert migrations.current(db.engine, table_prefix=db.prefix) == HEAD


def test_upgrade_adopts_tables_made_without_a_stamp(db: DB) -> None:
    # Tables from a create_all() (an older connect(create=True)) carry no version: upgrade()
    # takes them as BASELINE instead of failing on "table already exists".
    tables(db.prefix).metadata.create_all(db.engine)
    assert migrations.current(db.engine, table_prefix=db.prefix) is None
    migrations.upgrade(db.engine, table_prefix=db.prefix)
    assert migrations.current(db.engine, table_prefix=db.prefix) == HEAD
    assert migrations.check(db.engine, table_prefix=db.prefix) == []


def test_bad_input_is_refused_before_anything_is_written(db: DB) -> None:
    with pytest.raises(ValueError, match="no-such-revision"):
        migrations.upgrade(db.engine, "no-such-revision", table_prefix=db.prefix)
    assert db.objects() == set()
    with pytest.raises(ValueError, match="table_prefix"):
        migrations.upgrade(db.engine, table_prefix="Bad-Prefix")
    with pytest.raises(TypeError):
        migrations.downgrade(db.engine, None, table_prefix=db.prefix)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        migrations.upgrade(42, table_prefix=db.prefix)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mssql"):
        migrations.upgrade("mssql://u@h/db", table_prefix=db.prefix)
    with pytest.raises(ValueError, match="not a database URL"):
        migrations.current("not a url", table_prefix=db.prefix)
    assert db.objects() == set()


# -- check ------------------------------------------------------------------------------------
def test_check_reports_what_is_missing(db: DB) -> None:
    problems = migrations.check(db.engine, table_prefix=db.prefix)
    assert any("do not exist" in p for p in problems)
    assert any(migrations.version_table(db.prefix) in p for p in problems)

    migrations.upgrade(db.engine, table_prefix=db.prefix)
    t = tables(db.prefix)
    with db.engine.begin() as conn:
        for stmt in _sql.drop_trigger_sql(db.engine.dialect.name, db.prefix):
            conn.exec_driver_sql(stmt)
        conn.exec_driver_sql(f"DROP TABLE {t.list_items.name}")
        on = f" ON {t.entries.name}" if db.name in _MARIADB else ""
        conn.exec_driver_sql(f"DROP INDEX ix_{db.prefix}entries_expiry{on}")
        conn.exec_driver_sql(
            f"CREATE INDEX ix_{db.prefix}entries_expiry ON {t.entries.name} (namespace, expires_at)"
        )
    problems = migrations.check(db.engine, table_prefix=db.prefix)
    assert f"table {t.list_items.name} is missing" in problems
    assert any(p.startswith("trigger ") and "is missing" in p for p in problems)
    if db.name not in _MARIADB:  # which has no partial indexes: the expiry index covers every row
        assert any(f"ix_{db.prefix}entries_expiry" in p and "partial" in p for p in problems)
    assert not any(HEAD in p for p in problems)  # the stamp itself is fine


def test_check_reports_a_missing_or_empty_stamp(db: DB) -> None:
    tables(db.prefix).metadata.create_all(db.engine)
    assert migrations.check(db.engine, table_prefix=db.prefix) == [
        f"version table {migrations.version_table(db.prefix)} is missing: the schema is not "
        "stamped by kvstore's migrations"
    ]
    migrations.upgrade(db.engine, table_prefix=db.prefix)
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM {migrations.version_table(db.prefix)}")
    assert [p for p in migrations.check(db.engine, table_prefix=db.prefix) if "is empty" in p]


def test_check_ignores_other_tables_in_the_database(db: DB) -> None:
    migrations.upgrade(db.engine, table_prefix=db.prefix)
    other = db.new_prefix()
    migrations.upgrade(db.engine, table_prefix=other)  # someone else's tables, prefix or not
    assert migrations.check(db.engine, table_prefix=db.prefix) == []


# -- ensure_schema ----------------------------------------------------------------------------
def test_ensure_schema_on_empty_creates_and_stamps(db: DB) -> None:
    migrations.ensure_schema(db.engine, table_prefix=db.prefix)
    assert migrations.current(db.engine, table_prefix=db.prefix) == HEAD
    assert migrations.check(db.engine, table_prefix=db.prefix) == []


def test_ensure_schema_at_head_is_one_query(db: DB) -> None:
    migrations.ensure_schema(db.engine, table_prefix=db.prefix)
    statements = _count_statements(db.engine)
    migrations.ensure_schema(db.engine, table_prefix=db.prefix)
    assert len(statements()) == 1
    assert "SELECT" in statements()[0]
    # In the caller's transaction: whether the version table exists, then what it says.
    with db.engine.begin() as conn:
        before = len(statements())
        migrations.ensure_schema(conn, table_prefix=db.prefix)
        assert len(statements()) - before <= 2


def test_ensure_schema_at_head_does_not_import_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrations.ensure_schema(sa.create_engine(url, poolclass=NullPool))
    code = textwrap.dedent(f"""
        import sys
        import sqlalchemy as sa
        from kvstore import migrations
        migrations.ensure_schema(sa.create_engine({url!r}))
        print(sorted(m for m in sys.modules if m == "alembic" or m.startswith("alembic.")))
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_ensure_schema_adopts_unstamped_and_fills_an_empty_stamp(db: DB) -> None:
    tables(db.prefix).metadata.create_all(db.engine)
    migrations.ensure_schema(db.engine, table_prefix=db.prefix)
    assert migrations.current(db.engine, table_prefix=db.prefix) == HEAD
    # `alembic downgrade base` keeps an empty version table: ensure_schema starts over from it
    migrations.downgrade(db.engine, "base", table_prefix=db.prefix)
    sa.Table(
        migrations.version_table(db.prefix),
        sa.MetaData(),
        sa.Column("version_num", sa.String(32), primary_key=True),
    ).create(db.engine)
    migrations.ensure_schema(db.engine, table_prefix=db.prefix)
    assert migrations.check(db.engine, table_prefix=db.prefix) == []


def test_ensure_schema_joins_the_callers_transaction(db: DB) -> None:
    if _refuses_ddl_on_callers_connection(
        db, lambda bind: migrations.ensure_schema(bind, table_prefix=db.prefix)
    ):
        return
    with db.engine.connect() as conn:
        migrations.ensure_schema(conn, table_prefix=db.prefix)
        assert migrations.current(conn, table_prefix=db.prefix) == HEAD
        conn.rollback()
    assert db.objects() == set()
    with Session(db.engine) as session:
        migrations.ensure_schema(session, table_prefix=db.prefix)
        session.commit()
    assert migrations.check(db.engine, table_prefix=db.prefix) == []
    with pytest.raises(TypeError, match="str"):
        migrations.ensure_schema(db.url, table_prefix=db.prefix)  # type: ignore[arg-type]


def _race(n: int, work: Callable[[], None]) -> list[BaseException]:
    barrier = threading.Barrier(n, timeout=30)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            work()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads), "ensure_schema hung"
    return errors


@pytest.mark.timeout(120)
@pytest.mark.parametrize("via", ["engine", "connection"])
def test_ensure_schema_concurrent_callers_all_succeed(db: DB, via: str) -> None:
    # Separate engines, so every caller has its own connection, as separate processes would.
    if via == "connection" and _refuses_ddl_on_callers_connection(
        db, lambda bind: migrations.ensure_schema(bind, table_prefix=db.prefix)
    ):
        return
    for _ in range(3):
        prefix = db.new_prefix()

        def work(prefix: str = prefix) -> None:
            engine = sa.create_engine(db.url, poolclass=NullPool)
            try:
                if via == "engine":
                    migrations.ensure_schema(engine, table_prefix=prefix)
                else:
                    with engine.begin() as conn:
                        migrations.ensure_schema(conn, table_prefix=prefix)
            finally:
                engine.dispose()

        assert _race(4, work) == []
        assert migrations.current(db.engine, table_prefix=prefix) == HEAD
        assert migrations.check(db.engine, table_prefix=prefix) == []


@pytest.mark.timeout(120)
def test_ensure_schema_concurrent_on_unstamped_tables(db: DB) -> None:
    # The upgrade path (adopt, then run Alembic) raced by four callers.
    tables(db.prefix).metadata.create_all(db.engine)

    def work() -> None:
        engine = sa.create_engine(db.url, poolclass=NullPool)
        try:
            migrations.ensure_schema(engine, table_prefix=db.prefix)
        finally:
            engine.dispose()

    assert _race(4, work) == []
    assert migrations.current(db.engine, table_prefix=db.prefix) == HEAD
    assert migrations.check(db.engine, table_prefix=db.prefix) == []


@pytest.mark.timeout(120)
def test_upgrades_in_threads_of_one_process(db: DB) -> None:
    # Alembic's module-level proxies are shared by every thread: kvstore serialises its runs.
    prefixes = [db.prefix, *(db.new_prefix() for _ in range(3))]
    todo = list(prefixes)
    lock = threading.Lock()

    def work() -> None:
        with lock:
            prefix = todo.pop()
        migrations.upgrade(db.url, table_prefix=prefix)

    assert _race(4, work) == []
    for prefix in prefixes:
        assert migrations.check(db.engine, table_prefix=prefix) == []


def test_connect_create_leaves_the_store_at_head(db: DB) -> None:
    with kvstore.connect(db.url, table_prefix=db.prefix) as store:
        store.put("k", b"v")
    assert migrations.current(db.engine, table_prefix=db.prefix) == HEAD
    assert migrations.check(db.engine, table_prefix=db.prefix) == []


# -- the alembic command line -----------------------------------------------------------------
def _alembic(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KVSTORE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_alembic_command_line_from_the_repo_root(db: DB) -> None:
    x = ["-x", f"url={db.url}", "-x", f"table_prefix={db.prefix}"]
    done = _alembic(*x, "upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert migrations.current(db.engine, table_prefix=db.prefix) == HEAD
    assert migrations.check(db.engine, table_prefix=db.prefix) == []
    done = _alembic(*x, "downgrade", "base")
    assert done.returncode == 0, done.stderr
    # Alembic itself keeps its (now empty) version table; everything else is gone.
    assert (
        db.objects()
        - {migrations.version_table(db.prefix), f"{migrations.version_table(db.prefix)}_pkc"}
        == set()
    )
    assert migrations.current(db.engine, table_prefix=db.prefix) is None


def test_alembic_offline_sql_touches_no_database(tmp_path: Path) -> None:
    target = tmp_path / "never.db"
    done = _alembic(
        "-x", f"url=sqlite:///{target}", "-x", "table_prefix=off_", "upgrade", "head", "--sql"
    )
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE off_entries" in done.stdout
    assert "CREATE TRIGGER off_entries_ad" in done.stdout
    assert "INSERT INTO off_alembic_version" in done.stdout
    assert not target.exists()


# -- living next to the host application's own Alembic ---------------------------------------
_HOST_ENV = """
import sqlalchemy as sa
from alembic import context

import kvstore
import kvstore.models
from kvstore import migrations

config = context.config
host = sa.MetaData()
sa.Table("users", host, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(50)))

PREFIXES = ("kv_", "inner_")  # the second is migrated from inside the app's migration
KVSTORE_TABLES = frozenset().union(*(migrations.table_names(p) for p in PREFIXES))
VERSION_TABLES = {migrations.version_table(p) for p in PREFIXES}


def skip_kvstore(name, type_, parent_names):
    return type_ != "table" or name not in KVSTORE_TABLES


def skip_kvstore_version_tables(name, type_, parent_names):
    return type_ != "table" or name not in VERSION_TABLES


variant = config.attributes["variant"]
target, include_name = {
    "filtered": (host, skip_kvstore),
    "with-kvstore-metadata": (
        [host, *(kvstore.models.tables(p).metadata for p in PREFIXES)],
        skip_kvstore_version_tables,
    ),
    "no-filter": (host, None),
}[variant]

connection = config.attributes["connection"]
migrations.upgrade(connection)  # kvstore's own migrations, in the app's transaction
context.configure(connection=connection, target_metadata=target, include_name=include_name)
with context.begin_transaction():
    context.run_migrations()
"""

_HOST_REVISION = """
import sqlalchemy as sa
from alembic import op

from kvstore import migrations

revision = "host0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    # kvstore.migrate() from inside a migration: op must still work afterwards
    migrations.upgrade(op.get_bind(), table_prefix="inner_")
    op.create_table("users", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(50)))


def downgrade():
    op.drop_table("users")
"""


@pytest.fixture(params=["sqlite-file", "postgresql"])
def host_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A database of its own (a PostgreSQL schema), where a real ``alembic_version`` can live."""
    if request.param == "sqlite-file":
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'host.db'}", poolclass=NullPool)
        yield engine
        engine.dispose()
        return
    url = request.getfixturevalue("pg_url")
    schema = f"h{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = sa.create_engine(
        url, poolclass=NullPool, connect_args={"options": f"-csearch_path={schema}"}
    )
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def _host_config(tmp_path: Path, conn: sa.Connection, variant: str) -> Any:
    from alembic.config import Config

    (tmp_path / "host_migrations" / "versions").mkdir(parents=True, exist_ok=True)
    (tmp_path / "host_migrations" / "env.py").write_text(_HOST_ENV)
    (tmp_path / "host_migrations" / "versions" / "host0001.py").write_text(_HOST_REVISION)
    cfg = Config()
    cfg.set_main_option("script_location", str(tmp_path / "host_migrations"))
    cfg.attributes.update(connection=conn, variant=variant)
    return cfg


def test_host_alembic_version_is_untouched_and_autogenerate_ignores_kvstore(
    host_engine: sa.Engine, tmp_path: Path
) -> None:
    from alembic import command
    from alembic.util import AutogenerateDiffsDetected

    with host_engine.begin() as conn:
        command.upgrade(_host_config(tmp_path, conn, "filtered"), "head")
    with host_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [
            "host0001"
        ]
        assert conn.exec_driver_sql(
            "SELECT version_num FROM kv_alembic_version"
        ).scalars().all() == [HEAD]
    assert migrations.check(host_engine) == []  # the app's "users" table is not kvstore's concern
    assert migrations.check(host_engine, table_prefix="inner_") == []
    assert "users" in sa.inspect(host_engine).get_table_names()

    # kvstore's own migrations, again and back, never touch the app's version table
    migrations.downgrade(host_engine, "base")
    migrations.upgrade(host_engine)
    with host_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [
            "host0001"
        ]

    # The app's autogenerate: clean with kvstore's tables filtered out, or known through
    # kvstore.models.metadata; without either, it would drop them.
    for variant in ("filtered", "with-kvstore-metadata"):
        with host_engine.connect() as conn:
            command.check(_host_config(tmp_path, conn, variant))
    with (
        host_engine.connect() as conn,
        pytest.raises(AutogenerateDiffsDetected, match="kv_entries"),
    ):
        command.check(_host_config(tmp_path, conn, "no-filter"))


def test_the_shipped_migrations_are_frozen_and_the_newest_matches_the_live_triggers() -> None:
    """Revisions carry their own trigger SQL: they import nothing of kvstore, and the newest
    one that sets triggers (0004) creates what the live catalogue creates today (a change
    there needs a new revision)."""
    import ast
    import importlib.util
    from pathlib import Path

    from kvstore import _dialect

    versions = Path(__file__).resolve().parents[1] / "alembic" / "versions"
    revs = {}
    for name in (
        "0001_initial.py",
        "0003_counts_statement_triggers.py",
        "0004_namespace_leading_keys.py",
    ):
        path = versions / name
        tree = ast.parse(path.read_text())
        imported = {
            (n.module or "") if isinstance(n, ast.ImportFrom) else a.name
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
        }
        assert not any(m == "kvstore" or m.startswith("kvstore.") for m in imported), imported
        spec = importlib.util.spec_from_file_location(f"kvstore_rev_{name[:4]}", path)
        assert spec is not None and spec.loader is not None
        rev = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(rev)
        revs[name[:4]] = rev
    for dialect in ("sqlite", "postgresql", "mysql", "mariadb"):
        assert revs["0004"].triggers(dialect, "kv_") == _dialect.trigger_sql(dialect, "kv_")
        assert revs["0004"]._drop_triggers(dialect, "kv_") == [
            s for s in _dialect.drop_trigger_sql(dialect, "kv_") if "entries_count" not in s
        ]
    # 0004's downgrade puts back the cleanup triggers 0003 left: PostgreSQL's own, 0001's else
    made_0001 = revs["0001"]._triggers("mariadb", "kv_")
    assert revs["0004"]._triggers_0003("mariadb", "kv_") == revs["0003"].triggers(
        "mariadb", "kv_", made_0001
    )
    assert revs["0004"]._triggers_0003("postgresql", "kv_") == revs["0003"].triggers(
        "postgresql", "kv_"
    )
    sqlite_0003 = revs["0003"].triggers("sqlite", "kv_")
    assert revs["0004"]._triggers_0003("sqlite", "kv_") == sqlite_0003[:2]
    for dialect in ("mysql", "mariadb"):
        assert revs["0001"]._drop_triggers(dialect, "kv_") == _dialect.drop_trigger_sql(
            dialect, "kv_"
        )
    # 0003 keeps SQLite's two 0001 triggers as they were and puts back PostgreSQL's on downgrade
    assert revs["0003"].triggers("sqlite", "kv_")[:2] == revs["0001"]._triggers("sqlite", "kv_")
    assert revs["0003"]._pg_0001_triggers("kv_") == revs["0001"]._triggers("postgresql", "kv_")
