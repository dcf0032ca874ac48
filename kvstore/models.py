"""kvstore's tables as SQLAlchemy 2 typed declarative models.

The models are public so an application can query or join kvstore's tables and include
:data:`metadata` in its own Alembic autogenerate. They describe the default table prefix
(``kv_``); :func:`tables` returns the same tables for another prefix. The schema and the
reasons behind it are described in ``docs/schema.md`` and in :mod:`kvstore._schema`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped

from ._schema import (
    DEFAULT_TABLE_PREFIX,
    Tables,
    Timestamp,
    default_tables,
    from_micros,
    metadata,
    naming_convention,
    tables,
)

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "Chunk",
    "Entry",
    "IndexDefinition",
    "IndexEntry",
    "ListHeader",
    "ListItem",
    "NamespaceCount",
    "NamespaceRecord",
    "Tables",
    "Timestamp",
    "from_micros",
    "metadata",
    "naming_convention",
    "tables",
]


class Base(DeclarativeBase):
    metadata = metadata


class NamespaceRecord(Base):
    __table__ = default_tables.namespaces
    namespace: Mapped[str]
    index_generation: Mapped[int]


class Entry(Base):
    """One key of one namespace."""

    __table__ = default_tables.entries
    namespace: Mapped[str]
    key: Mapped[str]
    value: Mapped[bytes | None]
    blob_id: Mapped[int | None]
    size: Mapped[int]
    version: Mapped[int]
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime | None]
    content_type: Mapped[str | None]
    # "metadata" is reserved by declarative classes; the column keeps its plain name.
    user_metadata: Mapped[dict[str, Any] | None] = default_tables.entries.c.metadata  # type: ignore[assignment]


class Chunk(Base):
    __table__ = default_tables.chunks
    namespace: Mapped[str]
    blob_id: Mapped[int]
    n: Mapped[int]
    data: Mapped[bytes]


class IndexDefinition(Base):
    __table__ = default_tables.indexes
    namespace: Mapped[str]
    id: Mapped[int]
    name: Mapped[str]
    kind: Mapped[str]
    definition: Mapped[str]
    is_unique: Mapped[bool]
    created_at: Mapped[dt.datetime]


class IndexEntry(Base):
    __table__ = default_tables.index_entries
    namespace: Mapped[str]
    index_id: Mapped[int]
    ivalue: Mapped[bytes]
    uvalue: Mapped[bytes | None]
    key: Mapped[str]


class ListHeader(Base):
    __table__ = default_tables.lists
    namespace: Mapped[str]
    id: Mapped[int]
    name: Mapped[str]
    length: Mapped[int]


class ListItem(Base):
    __table__ = default_tables.list_items
    namespace: Mapped[str]
    list_id: Mapped[int]
    pos: Mapped[int]
    value: Mapped[bytes]


class NamespaceCount(Base):
    """Rows of one namespace in the entries table, expired ones included (SQLite only)."""

    __table__ = default_tables.counts
    namespace: Mapped[str]
    n: Mapped[int]
