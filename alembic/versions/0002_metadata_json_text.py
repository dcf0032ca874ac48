"""Entry metadata keeps the JSON text it was given: ``json`` instead of ``jsonb`` on PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

JSONB re-encodes numbers as ``numeric``: ``1e16`` came back as the int ``10000000000000000``
and ``-6.382684991819165e16`` as ``-63826849918191650``, so metadata did not round-trip on
PostgreSQL while it did on SQLite. The ``json`` type stores the text as written (and is still
validated and queryable with ``->``/``->>``). SQLite already stores JSON as text: nothing to do
there. Values written before this revision keep the form JSONB gave them.
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade(table_prefix: str) -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE {table_prefix}entries ALTER COLUMN metadata TYPE JSON "
            "USING metadata::text::json"
        )


def downgrade(table_prefix: str) -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE {table_prefix}entries ALTER COLUMN metadata TYPE JSONB "
            "USING metadata::jsonb"
        )
