"""kvstore's initial schema: entries, chunks, namespaces, indexes, lists, and the triggers.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

The tables are written out here rather than taken from ``kvstore.models``: a migration must keep
doing what it did when it shipped, while the models move on (a later model change gets a new
revision, and ``kvstore.migrations.check`` fails until it has one). Constraint and index names
are the ones the models' naming convention produces, passed through ``op.f()`` so a long prefix
is truncated exactly as the models truncate it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


# MariaDB came later (issue 14); no MariaDB database had kvstore's tables before, so its
# variants were added to this revision rather than to a new one: it creates on MariaDB what the
# models say there (kvstore._dialect.key_type, blob_type, ivalue_type; kvstore._schema's table
# options), written out as for the other dialects.
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


def _key() -> sa.types.TypeEngine[str]:
    # Code-point order on PostgreSQL whatever the database's collation (see kvstore.models);
    # MariaDB needs a length, and its binary collation without padding
    return (
        sa.String()
        .with_variant(sa.String(collation="C"), "postgresql")
        .with_variant(sa.String(500), *_MYSQL)  # (collation: the table's)
    )


def _blob() -> sa.types.TypeEngine[bytes]:
    # MariaDB's BLOB holds 64 KiB
    return sa.LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL)


def _ivalue() -> sa.types.TypeEngine[bytes]:
    # MariaDB indexes no BLOB: the longest encoded index value
    return sa.LargeBinary().with_variant(sa.VARBINARY(1024), *_MYSQL)


def _id() -> sa.types.TypeEngine[int]:
    # SQLite only auto-assigns INTEGER PRIMARY KEY (the rowid alias), not BIGINT.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    # text on MariaDB (kvstore writes and checks the JSON itself; MariaDB's JSON type checks a
    # nesting limit of 32, below kvstore's)
    return (
        sa.JSON()
        .with_variant(postgresql.JSONB(), "postgresql")
        .with_variant(mysql.LONGTEXT(), *_MYSQL)
    )


def upgrade(table_prefix: str) -> None:
    p = table_prefix
    op.create_table(
        f"{p}namespaces",
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("index_generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", name=op.f(f"pk_{p}namespaces")),
        **_MYSQL_TABLE,
    )
    op.create_table(
        f"{p}entries",
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("key", _key(), nullable=False),
        sa.Column("value", _blob(), nullable=True),
        sa.Column("blob_id", sa.BigInteger(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        # timestamps: integer microseconds since the Unix epoch, UTC (kvstore.models.Timestamp)
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("content_type", sa.String(255), nullable=True),
        sa.Column("metadata", _json(), nullable=True),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "key", name=op.f(f"pk_{p}entries")),
        **_MYSQL_TABLE,
    )
    # Partial: a write without a TTL touches no index page besides the primary key's.
    op.create_index(
        f"ix_{p}entries_expiry",
        f"{p}entries",
        ["namespace", "expires_at"],
        sqlite_where=sa.text("expires_at IS NOT NULL"),
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
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
        sa.Column("id", _id(), primary_key=True, autoincrement=True, nullable=False),
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
        sa.Column("id", _id(), primary_key=True, autoincrement=True, nullable=False),
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
    # sa.DDL rather than a plain string: op.execute() would wrap a string in text(), which
    # reads ":name" as a bind parameter; DDL only needs "%" doubled.
    for stmt in _triggers(op.get_context().dialect.name, p):
        op.execute(sa.DDL(stmt.replace("%", "%%")))  # type: ignore[no-untyped-call]


def downgrade(table_prefix: str) -> None:
    p = table_prefix
    for stmt in _drop_triggers(op.get_context().dialect.name, p):
        op.execute(sa.DDL(stmt.replace("%", "%%")))  # type: ignore[no-untyped-call]
    for name in (
        "list_items",
        "lists",
        "index_entries",
        "indexes",
        "chunks",
        "entries",
        "namespaces",
    ):
        op.drop_table(f"{p}{name}")


# -- the triggers as this revision shipped them ------------------------------------------------
# Frozen here, not taken from kvstore._dialect: the live catalogue may change (a later revision
# then replaces the triggers), and this revision must keep creating what it always created.
# Deleting an entry, or pointing it at another blob, drops the old blob's chunks and the entry's
# index entries in the same transaction, whoever issues the statement.


def _triggers(dialect_name: str, p: str) -> list[str]:
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
            f"""CREATE FUNCTION {p}entries_cleanup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.blob_id IS NOT NULL AND (TG_OP = 'DELETE' OR OLD.blob_id IS DISTINCT FROM NEW.blob_id) THEN
    DELETE FROM {p}chunks WHERE blob_id = OLD.blob_id;
  END IF;
  IF TG_OP = 'DELETE' THEN
    DELETE FROM {p}index_entries WHERE key = OLD.key
      AND index_id IN (SELECT id FROM {p}indexes WHERE namespace = OLD.namespace);
  END IF;
  RETURN NULL;
END $$""",
            f"""CREATE TRIGGER {p}entries_cleanup AFTER DELETE OR UPDATE OF blob_id ON {p}entries
FOR EACH ROW EXECUTE FUNCTION {p}entries_cleanup()""",
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


def _drop_triggers(dialect_name: str, p: str) -> list[str]:
    if dialect_name == "postgresql":
        return [
            f"DROP TRIGGER IF EXISTS {p}entries_cleanup ON {p}entries",
            f"DROP FUNCTION IF EXISTS {p}entries_cleanup()",
        ]
    return [f"DROP TRIGGER IF EXISTS {p}entries_ad", f"DROP TRIGGER IF EXISTS {p}entries_au"]
