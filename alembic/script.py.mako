"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Every kvstore migration takes the table prefix from env.py: write table, index and constraint
names as f-strings on ``p`` (autogenerate renders the default ``kv_`` literally; replace it), and
constraint names through ``op.f()`` so long prefixes are truncated exactly as the models'
naming convention truncates them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | None = ${repr(branch_labels)}
depends_on: str | None = ${repr(depends_on)}


def upgrade(table_prefix: str) -> None:
    p = table_prefix
    ${upgrades if upgrades else "pass"}


def downgrade(table_prefix: str) -> None:
    p = table_prefix
    ${downgrades if downgrades else "pass"}
