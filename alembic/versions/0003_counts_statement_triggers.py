"""``len()`` without a scan on SQLite, and set-based cleanup of deleted entries on PostgreSQL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

* ``kv_counts`` (every dialect; filled only on SQLite): the rows each namespace has in
  ``kv_entries``, kept by two triggers and back-filled here from the entries already stored.
  SQLite's ``COUNT(*)`` reads every row of the namespace; with the counter, ``len()`` is one
  primary-key lookup less the expired entries not yet purged (on the expiry index).
* PostgreSQL: the row-level ``entries_cleanup`` trigger becomes a statement-level trigger on
  ``DELETE`` with a transition table (one set-based cleanup per statement, however many rows
  it deletes) and a row-level trigger on ``UPDATE OF blob_id`` whose ``WHEN`` condition keeps
  ordinary writes from calling PL/pgSQL at all.

MariaDB gets the (empty) counts table only: its ``len()`` counts the primary key's index.

Like 0001, the SQL is written out here rather than taken from kvstore: a migration keeps doing
what it did when it shipped.
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_MYSQL = ("mysql", "mariadb")


def upgrade(table_prefix: str) -> None:
    p = table_prefix
    dialect = op.get_context().dialect.name
    op.create_table(
        f"{p}counts",
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", name=op.f(f"pk_{p}counts")),
        # MariaDB: the options of every kvstore table (0001); its len() counts the index
        **{
            f"{d}_{opt}": value
            for d in _MYSQL
            for opt, value in (
                ("engine", "InnoDB"),
                ("charset", "utf8mb4"),
                ("collate", "utf8mb4_nopad_bin"),
            )
        },
    )
    if dialect == "postgresql":
        _run(
            [
                f"DROP TRIGGER IF EXISTS {p}entries_cleanup ON {p}entries",
                f"DROP FUNCTION IF EXISTS {p}entries_cleanup()",
                *_pg_triggers(p),
            ]
        )
    elif dialect == "sqlite":
        op.execute(
            f"INSERT INTO {p}counts (namespace, n) "
            f"SELECT namespace, COUNT(*) FROM {p}entries GROUP BY namespace"
        )
        _run(_sqlite_count_triggers(p))


def downgrade(table_prefix: str) -> None:
    p = table_prefix
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        _run(
            [
                f"DROP TRIGGER IF EXISTS {p}entries_deleted ON {p}entries",
                f"DROP TRIGGER IF EXISTS {p}entries_reblobbed ON {p}entries",
                f"DROP FUNCTION IF EXISTS {p}entries_deleted()",
                f"DROP FUNCTION IF EXISTS {p}entries_reblobbed()",
                *_pg_0001_triggers(p),
            ]
        )
    elif dialect == "sqlite":
        _run(
            [
                f"DROP TRIGGER IF EXISTS {p}entries_count_ai",
                f"DROP TRIGGER IF EXISTS {p}entries_count_ad",
            ]
        )
    op.drop_table(f"{p}counts")


def _run(statements: list[str]) -> None:
    # sa.DDL, as in 0001: op.execute of a plain string would read ":name" as a parameter.
    for stmt in statements:
        op.execute(sa.DDL(stmt.replace("%", "%%")))  # type: ignore[no-untyped-call]


# -- the triggers as this revision shipped them ------------------------------------------------


def _sqlite_count_triggers(p: str) -> list[str]:
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


def _pg_triggers(p: str) -> list[str]:
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


def _pg_0001_triggers(p: str) -> list[str]:
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


def triggers(dialect_name: str, p: str, mysql_0001: list[str] | None = None) -> list[str]:
    """Every kvstore trigger at this revision (what kvstore._dialect creates on a new
    database: a test checks that the two agree). MariaDB's are 0001's, unchanged here."""
    if dialect_name in _MYSQL:
        return list(mysql_0001 or [])
    if dialect_name == "postgresql":
        return _pg_triggers(p)
    sqlite_0001 = [
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
    return sqlite_0001 + _sqlite_count_triggers(p)
