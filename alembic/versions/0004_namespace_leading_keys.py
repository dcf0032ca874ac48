"""Every table's primary key leads with the namespace.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

``kv_chunks``, ``kv_index_entries`` and ``kv_list_items`` gain a ``namespace`` column (their
entry's, index's or list's), and it leads their primary keys, unique constraints and indexes;
``kv_indexes`` and ``kv_lists`` are keyed by ``(namespace, id)``, with ids chosen at random by
kvstore instead of auto-assigned. So one namespace's rows are contiguous in every B-tree, and a
distributed PostgreSQL (Citus, distributed by ``namespace``) can co-locate every table.

MariaDB: the index entries' primary key stays ``(index_id, ivalue, key)``: with the namespace in
front it would be 4,052 bytes of utf8mb4, over InnoDB's 3,072-byte limit.

The five tables are rebuilt the same way on every dialect: their rows are copied aside (with
the namespace joined in), the tables dropped and created in the new shape, and the rows copied
back. Chunks whose blob no entry points at any more are garbage and are not copied. The
downgrade does the reverse, keeping every id.

Like the earlier revisions, everything is written out here rather than taken from kvstore.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_MYSQL = ("mysql", "mariadb")
_MYSQL_TABLE = {
    f"{d}_{opt}": value
    for d in _MYSQL
    for opt, value in (
        ("engine", "InnoDB"),
        ("charset", "utf8mb4"),
        ("collate", "utf8mb4_nopad_bin"),
    )
}
# children first: a parent is dropped only once nothing refers to it
_TABLES = ("list_items", "lists", "index_entries", "indexes", "chunks")


def _key() -> sa.types.TypeEngine[str]:
    return (
        sa.String()
        .with_variant(sa.String(collation="C"), "postgresql")
        .with_variant(sa.String(500), *_MYSQL)
    )


def _blob() -> sa.types.TypeEngine[bytes]:
    return sa.LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL)


def _ivalue() -> sa.types.TypeEngine[bytes]:
    return sa.LargeBinary().with_variant(sa.VARBINARY(1024), *_MYSQL)


def _id_0001() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade(table_prefix: str) -> None:
    p = table_prefix
    dialect = op.get_context().dialect.name
    _run(_drop_triggers_0003(dialect, p))
    _hold(
        p,
        {
            "chunks": f"SELECT e.namespace, c.blob_id, c.n, c.data FROM {p}chunks c "
            f"JOIN {p}entries e ON e.blob_id = c.blob_id",
            "indexes": "SELECT namespace, id, name, kind, definition, is_unique, created_at "
            f"FROM {p}indexes",
            "index_entries": "SELECT ix.namespace, ie.index_id, ie.ivalue, ie.uvalue, ie.key "
            f"FROM {p}index_entries ie JOIN {p}indexes ix ON ix.id = ie.index_id",
            "lists": f"SELECT namespace, id, name, length FROM {p}lists",
            "list_items": "SELECT l.namespace, li.list_id, li.pos, li.value "
            f"FROM {p}list_items li JOIN {p}lists l ON l.id = li.list_id",
        },
        dialect,
    )
    for name in _TABLES:
        op.drop_table(f"{p}{name}")
    _create_0004(p, dialect)
    _restore(
        p,
        {
            "chunks": "namespace, blob_id, n, data",
            "indexes": "namespace, id, name, kind, definition, is_unique, created_at",
            "index_entries": "namespace, index_id, ivalue, uvalue, key",
            "lists": "namespace, id, name, length",
            "list_items": "namespace, list_id, pos, value",
        },
        dialect,
    )
    _run(_cleanup(dialect, p))


def downgrade(table_prefix: str) -> None:
    p = table_prefix
    dialect = op.get_context().dialect.name
    _run(_drop_triggers(dialect, p))
    _hold(
        p,
        {
            "chunks": f"SELECT blob_id, n, data FROM {p}chunks",
            "indexes": "SELECT id, namespace, name, kind, definition, is_unique, created_at "
            f"FROM {p}indexes",
            "index_entries": f"SELECT index_id, ivalue, uvalue, key FROM {p}index_entries",
            "lists": f"SELECT id, namespace, name, length FROM {p}lists",
            "list_items": f"SELECT list_id, pos, value FROM {p}list_items",
        },
        dialect,
    )
    for name in _TABLES:
        op.drop_table(f"{p}{name}")
    _create_0001(p)
    _restore(
        p,
        {
            "chunks": "blob_id, n, data",
            "indexes": "id, namespace, name, kind, definition, is_unique, created_at",
            "index_entries": "index_id, ivalue, uvalue, key",
            "lists": "id, namespace, name, length",
            "list_items": "list_id, pos, value",
        },
        dialect,
    )
    if dialect == "postgresql":
        # the ids were inserted as they were: the sequences must start above them
        for name in ("indexes", "lists"):
            op.execute(
                f"SELECT setval(pg_get_serial_sequence('{p}{name}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {p}{name}), 0) + 1, false)"
            )
    _run(_triggers_0003(dialect, p))


def _q(dialect: str, column_list: str) -> str:
    # "key" is a reserved word on MariaDB
    if dialect not in _MYSQL:
        return column_list
    return ", ".join("`key`" if c.strip() == "key" else c for c in column_list.split(", "))


def _hold(p: str, selects: dict[str, str], dialect: str) -> None:
    """Copy each table's rows aside, into ``<prefix>m4_<table>``."""
    for name, select in selects.items():
        if dialect in _MYSQL:
            select = select.replace(".key", ".`key`").replace(", key FROM", ", `key` FROM")
        op.execute(sa.text(f"CREATE TABLE {p}m4_{name} AS {select}"))


def _restore(p: str, columns: dict[str, str], dialect: str) -> None:
    # parents before children (the foreign keys are checked as rows arrive)
    for name in reversed(_TABLES):
        cols = _q(dialect, columns[name])
        op.execute(sa.text(f"INSERT INTO {p}{name} ({cols}) SELECT {cols} FROM {p}m4_{name}"))
        op.execute(sa.text(f"DROP TABLE {p}m4_{name}"))


def _create_0004(p: str, dialect: str) -> None:
    op.create_table(
        f"{p}chunks",
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("blob_id", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("data", _blob(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "blob_id", "n", name=op.f(f"pk_{p}chunks")),
        **_MYSQL_TABLE,
    )
    op.create_table(
        f"{p}indexes",
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("id", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("definition", sa.String(1024), nullable=False),
        sa.Column("is_unique", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "id", name=op.f(f"pk_{p}indexes")),
        sa.UniqueConstraint("namespace", "name", name=op.f(f"uq_{p}indexes_namespace_name")),
        **_MYSQL_TABLE,
    )
    ie_key = ("index_id", "ivalue", "key")
    op.create_table(
        f"{p}index_entries",
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("index_id", sa.BigInteger(), nullable=False),
        sa.Column("ivalue", _ivalue(), nullable=False),
        sa.Column("uvalue", _ivalue(), nullable=True),
        sa.Column("key", _key(), nullable=False),
        sa.PrimaryKeyConstraint(
            *(ie_key if dialect in _MYSQL else ("namespace", *ie_key)),
            name=op.f(f"pk_{p}index_entries"),
        ),
        sa.UniqueConstraint(
            "namespace",
            "index_id",
            "uvalue",
            name=op.f(f"uq_{p}index_entries_namespace_index_id_uvalue"),
        ),
        sa.ForeignKeyConstraint(
            ["namespace", "index_id"],
            [f"{p}indexes.namespace", f"{p}indexes.id"],
            name=op.f(f"fk_{p}index_entries_namespace_{p}indexes"),
            ondelete="CASCADE",
        ),
        **_MYSQL_TABLE,
    )
    op.create_index(
        op.f(f"ix_{p}index_entries_key"), f"{p}index_entries", ["namespace", "index_id", "key"]
    )
    op.create_table(
        f"{p}lists",
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("id", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "id", name=op.f(f"pk_{p}lists")),
        sa.UniqueConstraint("namespace", "name", name=op.f(f"uq_{p}lists_namespace_name")),
        **_MYSQL_TABLE,
    )
    op.create_table(
        f"{p}list_items",
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("list_id", sa.BigInteger(), nullable=False),
        sa.Column("pos", sa.BigInteger(), nullable=False),
        sa.Column("value", _blob(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "list_id", "pos", name=op.f(f"pk_{p}list_items")),
        sa.ForeignKeyConstraint(
            ["namespace", "list_id"],
            [f"{p}lists.namespace", f"{p}lists.id"],
            name=op.f(f"fk_{p}list_items_namespace_{p}lists"),
            ondelete="CASCADE",
        ),
        **_MYSQL_TABLE,
    )


def _create_0001(p: str) -> None:
    """The five tables as 0001 created them."""
    op.create_table(
        f"{p}chunks",
        sa.Column("blob_id", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("data", _blob(), nullable=False),
        sa.PrimaryKeyConstraint("blob_id", "n", name=op.f(f"pk_{p}chunks")),
        **_MYSQL_TABLE,
    )
    op.create_table(
        f"{p}indexes",
        sa.Column("id", _id_0001(), primary_key=True, autoincrement=True, nullable=False),
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("definition", sa.String(1024), nullable=False),
        sa.Column("is_unique", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{p}indexes")),
        sa.UniqueConstraint("namespace", "name", name=op.f(f"uq_{p}indexes_namespace_name")),
        **_MYSQL_TABLE,
    )
    op.create_table(
        f"{p}index_entries",
        sa.Column("index_id", sa.BigInteger(), nullable=False),
        sa.Column("ivalue", _ivalue(), nullable=False),
        sa.Column("uvalue", _ivalue(), nullable=True),
        sa.Column("key", _key(), nullable=False),
        sa.PrimaryKeyConstraint("index_id", "ivalue", "key", name=op.f(f"pk_{p}index_entries")),
        sa.UniqueConstraint(
            "index_id", "uvalue", name=op.f(f"uq_{p}index_entries_index_id_uvalue")
        ),
        sa.ForeignKeyConstraint(
            ["index_id"],
            [f"{p}indexes.id"],
            name=op.f(f"fk_{p}index_entries_index_id_{p}indexes"),
            ondelete="CASCADE",
        ),
        **_MYSQL_TABLE,
    )
    op.create_index(
        op.f(f"ix_{p}index_entries_index_id_{p}index_entries_key"),
        f"{p}index_entries",
        ["index_id", "key"],
    )
    op.create_table(
        f"{p}lists",
        sa.Column("id", _id_0001(), primary_key=True, autoincrement=True, nullable=False),
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{p}lists")),
        sa.UniqueConstraint("namespace", "name", name=op.f(f"uq_{p}lists_namespace_name")),
        **_MYSQL_TABLE,
    )
    op.create_table(
        f"{p}list_items",
        sa.Column("list_id", sa.BigInteger(), nullable=False),
        sa.Column("pos", sa.BigInteger(), nullable=False),
        sa.Column("value", _blob(), nullable=False),
        sa.PrimaryKeyConstraint("list_id", "pos", name=op.f(f"pk_{p}list_items")),
        sa.ForeignKeyConstraint(
            ["list_id"],
            [f"{p}lists.id"],
            name=op.f(f"fk_{p}list_items_list_id_{p}lists"),
            ondelete="CASCADE",
        ),
        **_MYSQL_TABLE,
    )


def _run(statements: list[str]) -> None:
    # sa.DDL, as in 0001: op.execute of a plain string would read ":name" as a parameter.
    for stmt in statements:
        op.execute(sa.DDL(stmt.replace("%", "%%")))  # type: ignore[no-untyped-call]


# -- the triggers as this revision ships them --------------------------------------------------
# Only the cleanup triggers change (their statements now name the namespace); SQLite's counting
# triggers stay as 0003 made them.


def _sqlite_cleanup(p: str) -> list[str]:
    return [
        f"""CREATE TRIGGER {p}entries_ad AFTER DELETE ON {p}entries
BEGIN
  DELETE FROM {p}chunks
    WHERE OLD.blob_id IS NOT NULL AND namespace = OLD.namespace AND blob_id = OLD.blob_id;
  DELETE FROM {p}index_entries WHERE namespace = OLD.namespace AND key = OLD.key
    AND index_id IN (SELECT id FROM {p}indexes WHERE namespace = OLD.namespace);
END""",
        f"""CREATE TRIGGER {p}entries_au AFTER UPDATE OF blob_id ON {p}entries
WHEN OLD.blob_id IS NOT NULL AND OLD.blob_id IS NOT NEW.blob_id
BEGIN
  DELETE FROM {p}chunks WHERE namespace = OLD.namespace AND blob_id = OLD.blob_id;
END""",
    ]


def _sqlite_count(p: str) -> list[str]:
    return [
        f"""CREATE TRIGGER {p}entries_count_ai AFTER INSERT ON {p}entries
BEGIN
  INSERT INTO {p}counts (namespace, n) VALUES (NEW.namespace, 1)
    ON CONFLICT (namespace) DO UPDATE SET n = n + 1;
END""",
        f"""CREATE TRIGGER {p}entries_count_ad AFTER DELETE ON {p}entries
BEGIN
  UPDATE {p}counts SET n = n - 1 WHERE namespace = OLD.namespace;
END""",
    ]


def _pg(p: str) -> list[str]:
    return [
        f"""CREATE FUNCTION {p}entries_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM {p}chunks c USING old_rows o
    WHERE o.blob_id IS NOT NULL AND c.namespace = o.namespace AND c.blob_id = o.blob_id;
  DELETE FROM {p}index_entries ie USING old_rows o, {p}indexes ix
    WHERE ix.namespace = o.namespace AND ie.namespace = o.namespace AND ie.index_id = ix.id
      AND ie.key = o.key;
  RETURN NULL;
END $$""",
        f"""CREATE TRIGGER {p}entries_deleted AFTER DELETE ON {p}entries
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {p}entries_deleted()""",
        f"""CREATE FUNCTION {p}entries_reblobbed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM {p}chunks WHERE namespace = OLD.namespace AND blob_id = OLD.blob_id;
  RETURN NULL;
END $$""",
        f"""CREATE TRIGGER {p}entries_reblobbed AFTER UPDATE OF blob_id ON {p}entries
FOR EACH ROW WHEN (OLD.blob_id IS NOT NULL AND OLD.blob_id IS DISTINCT FROM NEW.blob_id)
EXECUTE FUNCTION {p}entries_reblobbed()""",
    ]


def _mysql(p: str) -> list[str]:
    return [
        f"""CREATE TRIGGER {p}entries_ad AFTER DELETE ON {p}entries FOR EACH ROW
BEGIN
  IF OLD.blob_id IS NOT NULL THEN
    DELETE FROM {p}chunks WHERE namespace = OLD.namespace AND blob_id = OLD.blob_id;
  END IF;
  DELETE ie FROM {p}index_entries ie
    JOIN {p}indexes ix ON ix.namespace = ie.namespace AND ix.id = ie.index_id
    WHERE ix.namespace = OLD.namespace AND ie.namespace = OLD.namespace
      AND ie.`key` = OLD.`key`;
END""",
        f"""CREATE TRIGGER {p}entries_au AFTER UPDATE ON {p}entries FOR EACH ROW
BEGIN
  IF OLD.blob_id IS NOT NULL AND NOT (OLD.blob_id <=> NEW.blob_id) THEN
    DELETE FROM {p}chunks WHERE namespace = OLD.namespace AND blob_id = OLD.blob_id;
  END IF;
END""",
    ]


def _cleanup(dialect_name: str, p: str) -> list[str]:
    if dialect_name in _MYSQL:
        return _mysql(p)
    return _pg(p) if dialect_name == "postgresql" else _sqlite_cleanup(p)


def triggers(dialect_name: str, p: str) -> list[str]:
    """Every kvstore trigger at this revision (what kvstore._dialect creates on a new
    database: a test checks that the two agree)."""
    return _cleanup(dialect_name, p) + (_sqlite_count(p) if dialect_name == "sqlite" else [])


def _drop_triggers(dialect_name: str, p: str) -> list[str]:
    """This revision's cleanup triggers (SQLite's counting triggers are left in place)."""
    if dialect_name == "postgresql":
        return [
            f"DROP TRIGGER IF EXISTS {p}entries_deleted ON {p}entries",
            f"DROP TRIGGER IF EXISTS {p}entries_reblobbed ON {p}entries",
            f"DROP FUNCTION IF EXISTS {p}entries_deleted()",
            f"DROP FUNCTION IF EXISTS {p}entries_reblobbed()",
        ]
    return [f"DROP TRIGGER IF EXISTS {p}entries_ad", f"DROP TRIGGER IF EXISTS {p}entries_au"]


# 0003's cleanup triggers: the same names, so the same DROP statements
_drop_triggers_0003 = _drop_triggers


def _triggers_0003(dialect_name: str, p: str) -> list[str]:
    """The cleanup triggers 0003 left (PostgreSQL's its own, the others 0001's)."""
    if dialect_name in _MYSQL:
        return [
            f"""CREATE TRIGGER {p}entries_ad AFTER DELETE ON {p}entries FOR EACH ROW
BEGIN
  IF OLD.blob_id IS NOT NULL THEN
    DELETE FROM {p}chunks WHERE blob_id = OLD.blob_id;
  END IF;
  DELETE ie FROM {p}index_entries ie JOIN {p}indexes ix ON ix.id = ie.index_id
    WHERE ix.namespace = OLD.namespace AND ie.`key` = OLD.`key`;
END""",
            f"""CREATE TRIGGER {p}entries_au AFTER UPDATE ON {p}entries FOR EACH ROW
BEGIN
  IF OLD.blob_id IS NOT NULL AND NOT (OLD.blob_id <=> NEW.blob_id) THEN
    DELETE FROM {p}chunks WHERE blob_id = OLD.blob_id;
  END IF;
END""",
        ]
    if dialect_name == "postgresql":
        return [
            f"""CREATE FUNCTION {p}entries_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM {p}chunks c USING old_rows o WHERE o.blob_id IS NOT NULL AND c.blob_id = o.blob_id;
  DELETE FROM {p}index_entries ie USING old_rows o, {p}indexes ix
    WHERE ix.namespace = o.namespace AND ie.index_id = ix.id AND ie.key = o.key;
  RETURN NULL;
END $$""",
            f"""CREATE TRIGGER {p}entries_deleted AFTER DELETE ON {p}entries
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {p}entries_deleted()""",
            f"""CREATE FUNCTION {p}entries_reblobbed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM {p}chunks WHERE blob_id = OLD.blob_id;
  RETURN NULL;
END $$""",
            f"""CREATE TRIGGER {p}entries_reblobbed AFTER UPDATE OF blob_id ON {p}entries
FOR EACH ROW WHEN (OLD.blob_id IS NOT NULL AND OLD.blob_id IS DISTINCT FROM NEW.blob_id)
EXECUTE FUNCTION {p}entries_reblobbed()""",
        ]
    return [
        f"""CREATE TRIGGER {p}entries_ad AFTER DELETE ON {p}entries
BEGIN
  DELETE FROM {p}chunks WHERE OLD.blob_id IS NOT NULL AND blob_id = OLD.blob_id;
  DELETE FROM {p}index_entries WHERE key = OLD.key
    AND index_id IN (SELECT id FROM {p}indexes WHERE namespace = OLD.namespace);
END""",
        f"""CREATE TRIGGER {p}entries_au AFTER UPDATE OF blob_id ON {p}entries
WHEN OLD.blob_id IS NOT NULL AND OLD.blob_id IS NOT NEW.blob_id
BEGIN
  DELETE FROM {p}chunks WHERE blob_id = OLD.blob_id;
END""",
    ]
