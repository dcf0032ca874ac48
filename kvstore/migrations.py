"""kvstore's schema migrations: the shipped Alembic scripts, run from Python.

``upgrade(bind)`` (exported as ``kvstore.migrate``) brings kvstore's tables to the newest
revision; ``downgrade``, ``current``, ``heads`` and ``check`` complete the set, and the
``kvstore db`` command line is a thin client of these functions. ``connect(create=True)`` calls
:func:`ensure_schema`, which creates a fresh schema directly (and stamps it) rather than
replaying every revision.

Every function takes a table prefix (default ``kv_``) and records the revision in
``<prefix>alembic_version``: kvstore never reads or writes the host application's own
``alembic_version``, and two kvstore schemas with different prefixes migrate independently.

``bind`` is a database URL (a private engine is created and disposed of), an ``Engine`` (the
work is one transaction, committed on return), or a ``Connection``/``Session``: then the work
joins the caller's transaction and is committed (or rolled back) by the caller, exactly like
``connect(connection)``.

Alembic is imported only when a function needs it: ``import kvstore`` and the common
``connect()`` on an up-to-date database never pay for it (about 0.1 s).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import io
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import _dialect
from ._retry import SCHEMA_RACE, backoff_sleep
from ._schema import DEFAULT_TABLE_PREFIX, check_table_prefix, tables
from .errors import KVStoreError, TransactionError

if TYPE_CHECKING:
    from typing import TypeAlias

    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.orm import Session

    Bind: TypeAlias = str | Engine | Connection | Session

__all__ = [
    "BASELINE",
    "HEAD",
    "begin",
    "check",
    "context_options",
    "current",
    "downgrade",
    "ensure_schema",
    "exclude_kvstore_tables",
    "heads",
    "migration_sql",
    "script_location",
    "table_names",
    "upgrade",
    "version_table",
]

#: The newest revision. Kept as a constant so that ``connect()`` on an up-to-date database
#: compares one row with it instead of importing Alembic and parsing every script; a test
#: checks it against the scripts, so it cannot drift.
HEAD = "0004"
#: The revision that tables created before kvstore shipped migrations (``create=True`` with
#: no version table) are adopted at, so ``upgrade`` continues from there instead of failing
#: on "table already exists".
BASELINE = "0001"

_ATTEMPTS = 6


def version_table(table_prefix: str = DEFAULT_TABLE_PREFIX) -> str:
    """The name of the table that records the revision of kvstore's schema for a prefix."""
    return f"{check_table_prefix(table_prefix)}alembic_version"


def table_names(table_prefix: str = DEFAULT_TABLE_PREFIX) -> frozenset[str]:
    """Every table kvstore creates for a prefix, its version table included: what an
    application's Alembic ``include_name`` hook leaves out of its own autogenerate."""
    return frozenset(tables(check_table_prefix(table_prefix)).metadata.tables) | {
        version_table(table_prefix)
    }


@functools.cache
def script_location() -> Path:
    """The directory holding ``env.py`` and ``versions/``: in the installed package (the wheel
    maps ``alembic/`` to ``kvstore/_alembic``), else in the source checkout."""
    try:
        env: object = importlib.resources.files("kvstore._alembic").joinpath("env.py")
    except ModuleNotFoundError:
        # An editable install maps kvstore._alembic to a folder without __init__.py, which the
        # editable finder cannot import; the folder is then next to the package.
        env = None
    if isinstance(env, Path) and env.is_file():
        return env.parent
    repo = Path(__file__).resolve().parent.parent / "alembic"
    if (repo / "env.py").is_file() and (repo / "versions").is_dir():
        return repo
    raise KVStoreError(
        "kvstore's migration scripts are missing (neither the kvstore._alembic package data "
        f"nor {repo} exists); reinstall kvstore"
    )


def context_options(table_prefix: str = DEFAULT_TABLE_PREFIX) -> dict[str, Any]:
    """Options for Alembic's ``context.configure`` that confine it to kvstore's tables."""
    names = frozenset(tables(check_table_prefix(table_prefix)).metadata.tables)

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        # Without this, comparing kvstore's models with a shared database would report every
        # table of the host application as "to be dropped".
        return type_ != "table" or name in names

    return {
        "version_table": version_table(table_prefix),
        "include_name": include_name,
        "compare_type": _compare_type,
    }


def exclude_kvstore_tables(
    table_prefix: str = DEFAULT_TABLE_PREFIX,
) -> Callable[[str | None, str, Any], bool]:
    """An ``include_name`` hook for the *application's* Alembic ``env.py``: autogenerate then
    leaves kvstore's tables (and its version table) alone, instead of proposing to drop them
    because they are not in the application's models::

        context.configure(..., include_name=kvstore.migrations.exclude_kvstore_tables())

    Combine it with a hook of your own by calling both."""
    names = frozenset(tables(check_table_prefix(table_prefix)).metadata.tables) | {
        version_table(table_prefix)
    }

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        return not (type_ == "table" and name in names)

    return include_name


def _compare_type(
    context: MigrationContext,
    inspected_column: Any,
    metadata_column: Any,
    inspected_type: Any,
    metadata_type: Any,
) -> bool | None:
    # Alembic compares types but not collations, and the key columns' "C" collation on
    # PostgreSQL is what makes keys sort in code-point order: a column that lost it must show.
    impl = metadata_type.dialect_impl(context.dialect)
    want = getattr(impl, "collation", None)
    got = getattr(inspected_type, "collation", None)
    if want == _dialect.MYSQL_COLLATION and got is None:
        # MySQL reports no collation for a column that has its table's (kvstore's tables'
        # default is this one, _dialect.table_options_ddl)
        got = want
    if want is not None and got != want:
        return True
    # MySQL's LONGBLOB/LONGTEXT are what a BLOB/TEXT of 4 GiB becomes (kvstore._dialect
    # names them so, without importing SQLAlchemy's MySQL types)
    same_kind = {"LONGBLOB": sa.LargeBinary, "LONGTEXT": sa.Text}.get(type(inspected_type).__name__)
    if same_kind is not None and getattr(impl, "length", None) == (1 << 32) - 1:
        return not isinstance(impl, same_kind)
    return None  # Alembic's own comparison decides


# -- public functions --------------------------------------------------------------------------
def upgrade(
    bind: Bind, revision: str = "head", *, table_prefix: str = DEFAULT_TABLE_PREFIX
) -> None:
    """Upgrade kvstore's tables to ``revision`` (default: the newest).

    Tables that ``connect(create=True)`` made without a version stamp are adopted at
    :data:`BASELINE` first. An unknown revision raises ``ValueError`` and changes nothing.
    """
    from alembic import command

    prefix = _check_args(revision, table_prefix)
    with begin(bind) as conn:
        _adopt_unversioned(conn, prefix)
        _alembic(command.upgrade, conn, prefix, revision)


def downgrade(bind: Bind, revision: str, *, table_prefix: str = DEFAULT_TABLE_PREFIX) -> None:
    """Downgrade kvstore's tables to ``revision``; ``"base"`` removes every table, trigger and
    function kvstore created, the version table included (the ``alembic downgrade base``
    command keeps the empty version table, as Alembic always does)."""
    from alembic import command

    prefix = _check_args(revision, table_prefix)
    with begin(bind) as conn:
        _alembic(command.downgrade, conn, prefix, revision)
        if _stamped(conn, prefix) == set():
            # Alembic deliberately never drops its version table; an empty one is still a
            # kvstore table left behind, which "downgrade to base" promises not to leave.
            sa.Table(version_table(prefix), sa.MetaData()).drop(conn)


def migration_sql(
    url: str,
    revision: str = "head",
    *,
    downgrade: bool = False,
    table_prefix: str = DEFAULT_TABLE_PREFIX,
) -> str:
    """The SQL that :func:`upgrade` (or, with ``downgrade``, :func:`downgrade`) would run, for
    a DBA to review or apply by hand: Alembic's offline mode, which needs only the URL's
    dialect, never a connection. ``revision`` is a target (``"head"``, ``"0002"``) or a range
    ``"0001:0002"``; a downgrade needs the range (offline, the current revision is unknown).
    """
    from alembic import command

    prefix = _check_args(revision.split(":")[-1], table_prefix)
    backend = sa.make_url(url).get_backend_name()
    _dialect.for_name(backend).check_table_prefix(prefix)
    if downgrade and ":" not in revision:
        raise ValueError(
            "an offline downgrade needs the range FROM:TO (for example 0002:0001): without "
            "a connection the current revision is unknown"
        )
    buf = io.StringIO()
    cfg = _config(None, prefix)
    cfg.output_buffer = buf
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    fn = command.downgrade if downgrade else command.upgrade
    with _ALEMBIC_LOCK:
        try:
            fn(cfg, revision, sql=True)
        except Exception as exc:
            raise ValueError(f"cannot write the SQL for {revision!r}: {exc}") from None
    return buf.getvalue()


def current(bind: Bind, *, table_prefix: str = DEFAULT_TABLE_PREFIX) -> str | None:
    """The revision kvstore's tables are at, or ``None`` when they carry no version stamp."""
    prefix = check_table_prefix(table_prefix)
    with _read(bind) as conn:
        stamped = _stamped(conn, prefix)
    if not stamped:
        return None
    return ",".join(sorted(stamped))


def heads() -> list[str]:
    """The newest revision(s) of the shipped migration scripts."""
    return sorted(_script().get_heads())


def check(bind: Bind, *, table_prefix: str = DEFAULT_TABLE_PREFIX) -> list[str]:
    """Differences between kvstore's models and the database, one readable line each.

    Reports a missing or outdated version stamp, missing or different tables, columns, types,
    indexes and constraints (Alembic's ``compare_metadata``), and missing triggers. An empty
    list means the database is exactly what the models expect. Never writes.
    """
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    prefix = check_table_prefix(table_prefix)
    t = tables(prefix)
    vt = version_table(prefix)
    problems: list[str] = []
    with _read(bind) as conn:
        stamped = _stamped(conn, prefix)
        newest = set(heads())
        if stamped is None:
            problems.append(
                f"version table {vt} is missing: the schema is not stamped by kvstore's migrations"
            )
        elif not stamped:
            problems.append(
                f"version table {vt} is empty: the schema is not stamped by kvstore's migrations"
            )
        elif stamped != newest:
            problems.append(
                f"the schema is at revision {', '.join(sorted(stamped))}, the newest is "
                f"{', '.join(sorted(newest))}: run kvstore.migrate() or `kvstore db upgrade`"
            )
        mc = MigrationContext.configure(conn, opts=context_options(prefix))
        diffs = compare_metadata(mc, t.metadata)
        missing = {d[1].name for d in diffs if isinstance(d, tuple) and d[0] == "add_table"}
        if missing == set(t.metadata.tables):
            return [*problems, f"kvstore's tables ({prefix}entries and the rest) do not exist"]
        for diff in diffs:
            if isinstance(diff, tuple) and diff[0] == "add_index" and diff[1].table.name in missing:
                continue  # said by "table ... is missing"
            problems.append(_describe(diff, conn.dialect))
        problems.extend(_partial_index_problems(conn, prefix, missing))
        if t.entries.name not in missing:
            problems.extend(_trigger_problems(conn, prefix))
    return problems


def _partial_index_problems(conn: Connection, prefix: str, missing: set[str]) -> list[str]:
    # compare_metadata matches indexes by name and columns only; whether an index is partial
    # (its WHERE clause) decides what it costs every write, so it is compared here: both
    # dialects reflect the predicate as the "<dialect>_where" option.
    option = f"{conn.dialect.name}_where"
    inspector = sa.inspect(conn)
    problems = []
    for table in tables(prefix).metadata.sorted_tables:
        if table.name in missing:
            continue
        found = {ix["name"]: ix for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in found:
                continue  # reported as missing by compare_metadata
            want = index.dialect_kwargs.get(option) is not None
            have = found[index.name].get("dialect_options", {}).get(option) is not None
            if want != have:
                what = (
                    "covers every row in the database, partial in kvstore's models"
                    if want
                    else "is partial in the database, covers every row in kvstore's models"
                )
                problems.append(f"index {index.name} on {table.name} {what}")
    return problems


def ensure_schema(
    bind: Engine | Connection | Session, *, table_prefix: str = DEFAULT_TABLE_PREFIX
) -> None:
    """Make sure kvstore's tables exist and are at the newest revision (``connect(create=True)``).

    * Up to date: one query (two in the caller's transaction, which must not be disturbed by a
      failing statement), nothing else; Alembic is not even imported.
    * No tables: ``create_all`` (tables, indexes, triggers) and a stamp at the newest revision,
      in one transaction; replaying every revision would give the same schema, slower.
    * Stamped at an older revision: upgrade. Tables without a stamp: adopt, then upgrade.

    With an ``Engine`` the work is its own transaction. With a ``Connection`` or ``Session`` it
    joins the caller's transaction (which the caller commits). Several processes may call this
    at once: the loser of the race sees the winner's tables and returns.
    """
    prefix = check_table_prefix(table_prefix)
    conn = _caller_connection(bind)
    if conn is not None:
        _ensure_in_transaction(conn, prefix)
    elif isinstance(bind, Engine):
        _ensure_with_engine(bind, prefix)
    else:
        raise TypeError(
            f"ensure_schema() takes an Engine, a Connection or a Session, not {type(bind).__name__}"
        )


# -- ensure_schema -----------------------------------------------------------------------------
def _ensure_with_engine(engine: Engine, prefix: str) -> None:
    sql = f"SELECT version_num FROM {version_table(prefix)}"
    dialect = _dialect.for_engine(engine)
    for attempt in range(_ATTEMPTS):
        try:
            with engine.connect() as conn:
                try:
                    if {row[0] for row in conn.exec_driver_sql(sql)} == {HEAD}:
                        return
                except sa.exc.DBAPIError:
                    pass  # no version table yet: the slow path finds out why, under a lock
            with begin(engine) as conn, dialect.schema_lock(conn, f"kvstore-schema-{prefix}"):
                # Looks again inside the transaction: on SQLite BEGIN IMMEDIATE has serialised
                # us behind any other process doing the same (MariaDB: the schema lock).
                _create_or_upgrade(conn, prefix)
            return
        except sa.exc.DBAPIError as exc:
            # Another process created or upgraded the tables between our look and our DDL
            # (PostgreSQL makes the loser wait for the winner's commit, then fail with
            # "already exists"), or SQLite's busy timeout ran out: look again. A database
            # that cannot be reached is not a race: fail at once (a wrong URL in well under
            # a second, not after every attempt).
            if (
                attempt == _ATTEMPTS - 1
                or dialect.is_unavailable(exc)
                or exc.connection_invalidated
            ):
                raise
            backoff_sleep(SCHEMA_RACE, attempt)


def _ensure_in_transaction(conn: Connection, prefix: str) -> None:
    if _stamped(conn, prefix) == {HEAD}:
        return  # before any BEGIN: an up-to-date schema must not make the caller's a write
    refuse_ddl_in_transaction(conn, "create or upgrade kvstore's tables")
    _driver_begin(conn)
    try:
        # A savepoint, so the loser of a race can roll back its failed DDL without aborting
        # the caller's transaction (PostgreSQL refuses every statement after an error).
        with conn.begin_nested():
            _create_or_upgrade(conn, prefix)
    except sa.exc.DBAPIError:
        if _stamped(conn, prefix) != {HEAD}:
            raise


def _create_or_upgrade(conn: Connection, prefix: str) -> None:
    stamped = _stamped(conn, prefix)
    if stamped == {HEAD}:
        return
    t = tables(prefix)
    if not stamped and not sa.inspect(conn).has_table(t.entries.name):
        # The models' "after_create" events add the triggers.
        t.metadata.create_all(conn)
        _stamp(conn, prefix, HEAD)
        return
    from alembic import command

    _adopt_unversioned(conn, prefix)
    _alembic(command.upgrade, conn, prefix, "heads")


def refuse_ddl_in_transaction(conn: Connection, what: str) -> None:
    """MySQL and MariaDB commit the open transaction before any DDL: on the caller's
    Connection or Session that would commit the caller's work half-way, silently. Refused."""
    if _dialect.for_sa_dialect(conn.dialect).transactional_ddl:
        return
    raise TransactionError(
        f"kvstore will not {what} on your Connection/Session: {conn.dialect.name} commits the "
        "open transaction before any schema change (DDL). Create them first with "
        "kvstore.ensure_schema(engine), kvstore.connect(engine) or `kvstore db upgrade`"
    )


# -- helpers -----------------------------------------------------------------------------------
def _check_args(revision: object, table_prefix: str) -> str:
    if not isinstance(revision, str) or not revision:
        raise TypeError(f"revision must be a non-empty str, got {revision!r}")
    prefix = check_table_prefix(table_prefix)
    if _PLAIN_REVISION.fullmatch(revision) and revision not in ("head", "heads", "base"):
        # Looked up before any connection: Alembic creates its version table before it finds
        # out, and where DDL is not transactional (MariaDB) that table would stay behind.
        from alembic.util import CommandError

        try:
            _script().get_revision(revision)
        except CommandError as exc:
            raise ValueError(f"cannot migrate kvstore's tables to {revision!r}: {exc}") from None
    return prefix


#: a revision named outright (not relative, like "-1", "+2" or "head-1")
_PLAIN_REVISION = re.compile(r"\w[\w-]*(?<![+-]\d)(?<![+-]\d\d)")


def _caller_connection(bind: object) -> Connection | None:
    """The caller's Connection (a Session's current one), or None for anything else."""
    if isinstance(bind, Connection):
        return bind
    # Checked by name, as the store does, so that engine-bound use never imports the ORM.
    if any(
        c.__name__ == "Session" and c.__module__.startswith("sqlalchemy.orm")
        for c in type(bind).__mro__
    ):
        conn: Connection = bind.connection()  # type: ignore[attr-defined]
        return conn
    return None


def _engine(url: str) -> Engine:
    return _dialect.engine_from_url(url, {})


@contextlib.contextmanager
def begin(bind: Bind) -> Iterator[Connection]:
    """A Connection inside a transaction, for schema changes: kvstore's own (committed when the
    block succeeds, rolled back otherwise) for a URL or an Engine, the caller's for a Connection
    or Session. On SQLite the transaction is begun at the driver, so DDL is transactional."""
    if isinstance(bind, str):
        engine = _engine(bind)
        try:
            with begin(engine) as conn:
                yield conn
        finally:
            engine.dispose()
    elif isinstance(bind, Engine):
        with bind.begin() as conn:
            _driver_begin(conn)
            yield conn
    elif (given := _caller_connection(bind)) is not None:
        refuse_ddl_in_transaction(given, "change kvstore's tables")
        _driver_begin(given)
        yield given
    else:
        raise TypeError(
            f"expected a database URL, an Engine, a Connection or a Session, not {type(bind).__name__}"
        )


@contextlib.contextmanager
def _read(bind: Bind) -> Iterator[Connection]:
    if isinstance(bind, str):
        engine = _engine(bind)
        try:
            with _read(engine) as conn:
                yield conn
        finally:
            engine.dispose()
    elif isinstance(bind, Engine):
        _dialect.for_engine(bind)
        with bind.connect() as conn:
            yield conn
    elif (given := _caller_connection(bind)) is not None:
        yield given
    else:
        raise TypeError(
            f"expected a database URL, an Engine, a Connection or a Session, not {type(bind).__name__}"
        )


def _driver_begin(conn: Connection) -> None:
    # pysqlite (before Python 3.12) only BEGINs before DML, so DDL would autocommit statement
    # by statement: a failed migration would leave half a schema, and a caller's rollback would
    # not undo it. Beginning at the driver makes SQLite's DDL as transactional as PostgreSQL's.
    # The dialect's write BEGIN (IMMEDIATE on SQLite) also queues concurrent migrators: a
    # deferred transaction that read the schema and then tries to write fails with "database
    # is locked" at once, without waiting, when another process got there first.
    _dialect.for_sa_dialect(conn.dialect).driver_begin_on(conn)


def _stamped(conn: Connection, prefix: str) -> set[str] | None:
    """The revisions in the version table; ``None`` when there is no version table."""
    vt = version_table(prefix)
    if not sa.inspect(conn).has_table(vt):
        return None
    return {row[0] for row in conn.exec_driver_sql(f"SELECT version_num FROM {vt}")}


@functools.cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(None, DEFAULT_TABLE_PREFIX))


def _config(conn: Connection | None, prefix: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["table_prefix"] = prefix
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def _migration_context(conn: Connection, prefix: str) -> MigrationContext:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"version_table": version_table(prefix)})


def _stamp(conn: Connection, prefix: str, revision: str) -> None:
    _migration_context(conn, prefix).stamp(_script(), revision)


def _adopt_unversioned(conn: Connection, prefix: str) -> None:
    if _stamped(conn, prefix):
        return
    inspector = sa.inspect(conn)
    t = tables(prefix)
    if inspector.has_table(t.entries.name):
        # the newest revision whose shape create_all() tables have: 0004 keys chunks by
        # namespace, 0003 made the counts table
        if "namespace" in {c["name"] for c in inspector.get_columns(t.chunks.name)}:
            revision = "0004"
        elif inspector.has_table(t.counts.name):
            revision = "0003"
        else:
            revision = BASELINE
        _stamp(conn, prefix, revision)


# Alembic's ``context`` and ``op`` are module-level proxies, installed while a command runs:
# two commands at once in one process (two threads upgrading) would swap them under each other.
# Re-entrant, because the application's own env.py or migration may call kvstore.migrate().
_ALEMBIC_LOCK = threading.RLock()


def _alembic(fn: Any, conn: Connection, prefix: str, revision: str) -> None:
    import alembic.context
    import alembic.op
    from alembic.util import CommandError

    _dialect.for_name(conn.dialect.name).check_table_prefix(prefix)
    with _ALEMBIC_LOCK:
        # When the caller is itself inside an Alembic command (kvstore.migrate() called from the
        # application's env.py or from one of its migrations), ours would remove the caller's
        # proxies on exit; put them back, or the caller's next context/op call fails.
        callers = [getattr(m, "_proxy", None) for m in (alembic.context, alembic.op)]
        try:
            fn(_config(conn, prefix), revision)
        except CommandError as exc:
            # Unknown revision, or a target on the wrong side of the current one: a caller's
            # mistake, detected before any migration runs.
            raise ValueError(f"cannot migrate kvstore's tables to {revision!r}: {exc}") from None
        finally:
            for proxy in callers:
                if proxy is not None:
                    proxy._install_proxy()


_CREATE_TRIGGER_RE = re.compile(r"CREATE\s+TRIGGER\s+(\w+)", re.IGNORECASE)


def _trigger_problems(conn: Connection, prefix: str) -> list[str]:
    name = conn.dialect.name
    entries = tables(prefix).entries.name
    expected = {
        m for stmt in _dialect.trigger_sql(name, prefix) for m in _CREATE_TRIGGER_RE.findall(stmt)
    }
    catalog = _dialect.for_name(name).trigger_catalog
    found = {row[0] for row in conn.execute(sa.text(catalog), {"table": entries})}
    return [
        f"trigger {trigger} on table {entries} is missing" for trigger in sorted(expected - found)
    ]


def _describe(diff: Any, dialect: sa.Dialect) -> str:
    """One line for an entry of Alembic's ``compare_metadata`` result."""
    if isinstance(diff, list):  # modifications of one column come as a list of tuples
        return "; ".join(_describe(d, dialect) for d in diff)
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        where = "is missing" if kind == "add_table" else "is not in kvstore's models"
        return f"table {diff[1].name} {where}"
    if kind in ("add_column", "remove_column"):
        where = "is missing" if kind == "add_column" else "is not in kvstore's models"
        return f"column {diff[2]}.{diff[3].name} {where}"
    if kind in (
        "add_index",
        "remove_index",
        "add_constraint",
        "remove_constraint",
        "add_fk",
        "remove_fk",
    ):
        obj = diff[1]
        what = {"index": "index", "constraint": "constraint", "fk": "foreign key"}[
            kind.split("_", 1)[1]
        ]
        cols = ", ".join(c.name for c in getattr(obj, "columns", ()))
        where = "is missing" if kind.startswith("add") else "is not in kvstore's models"
        return f"{what} {obj.name} on {obj.table.name}({cols}) {where}"
    if kind.startswith("modify_"):
        _, _schema, table, column, _kw, db_value, model_value = diff
        attr = kind.removeprefix("modify_")
        if attr == "type":
            db_value, model_value = (v.compile(dialect=dialect) for v in (db_value, model_value))
        elif attr == "nullable":
            attr, db_value, model_value = (
                "NULL",
                *("allowed" if v else "refused" for v in (db_value, model_value)),
            )
        return f"column {table}.{column}: {attr} {db_value} in the database, {model_value} in kvstore's models"
    return f"difference: {diff!r}"
