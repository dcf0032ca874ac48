"""kvstore's tables in SQLAlchemy Core (the ORM models in :mod:`kvstore.models` map them).

Kept free of ``sqlalchemy.orm`` so that using a store does not pay for importing the ORM.

Schema (see ``docs/schema.md`` for the reasoning):

``kv_namespaces``
    One row per namespace that has ever had an index; ``index_generation`` changes whenever the
    namespace's set of indexes changes, and every write checks it in the same statement.
``kv_entries``
    One row per key: the value inline (``value``) or, for large values, in ``kv_chunks`` under
    ``blob_id``; size, version, timestamps (microseconds since the Unix epoch, UTC), expiry,
    content type, user metadata (JSON) and a SHA-256 checksum. Persistent dicts and sets live
    here too, in derived namespaces (``<namespace>/d/<name>``), so they share indexes and TTL.
``kv_chunks``
    Large values, split in fixed-size chunks. A ``blob_id`` is never reused, so a reader that
    holds a snapshot never sees a mix of two values. Triggers delete a blob's chunks when its
    entry is deleted or points at another blob.
``kv_indexes`` / ``kv_index_entries``
    Secondary index definitions and their entries. Index values are stored in an
    order-preserving binary encoding (``ivalue``), so one B-tree serves every value type;
    ``uvalue`` repeats it for unique indexes only, under a unique constraint.
``kv_counts``
    How many rows each namespace has in ``kv_entries`` (expired ones included), kept by
    triggers on SQLite, where ``COUNT(*)`` reads every row, so that ``len()`` is one lookup
    (less the entries expired and not yet purged, counted on the expiry index). PostgreSQL
    leaves it empty: it counts a namespace on the primary key's index, and a counter row there
    would serialise the namespace's writers.
``kv_lists`` / ``kv_list_items``
    Persistent lists: a header row with the length, and items at contiguous positions so
    ``l[i]`` is one primary-key lookup.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from . import _dialect

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "Tables",
    "Timestamp",
    "metadata",
    "naming_convention",
    "tables",
]

DEFAULT_TABLE_PREFIX = "kv_"
_PREFIX_RE = re.compile(r"[a-z_][a-z0-9_]{0,29}")

naming_convention: dict[str, str] = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Timestamp(TypeDecorator[dt.datetime]):
    """A UTC instant stored as integer microseconds since the Unix epoch.

    Integers compare and index the same way on every dialect and cost nothing to convert on
    the hot path; ORM users still read and write timezone-aware ``datetime`` objects.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        if value is None or isinstance(value, int):
            return value
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise TypeError("Timestamp columns take timezone-aware datetimes")
        return (value - _EPOCH) // dt.timedelta(microseconds=1)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        return None if value is None else from_micros(value)


def from_micros(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


@dataclass(frozen=True)
class Tables:
    """kvstore's tables for one table prefix, with their own :class:`MetaData`."""

    prefix: str
    metadata: MetaData
    namespaces: Table
    entries: Table
    chunks: Table
    indexes: Table
    index_entries: Table
    lists: Table
    list_items: Table
    counts: Table


def _define(prefix: str, md: MetaData) -> Tables:
    p = prefix
    namespaces = Table(
        f"{p}namespaces",
        md,
        Column("namespace", String(255), primary_key=True),
        Column("index_generation", BigInteger, nullable=False, default=0),
    )
    entries = Table(
        f"{p}entries",
        md,
        Column("namespace", String(255), nullable=False),
        Column("key", _dialect.key_type(), nullable=False),
        Column("value", _dialect.blob_type(), nullable=True),
        Column("blob_id", BigInteger, nullable=True),
        Column("size", BigInteger, nullable=False),
        Column("version", BigInteger, nullable=False),
        Column("created_at", Timestamp, nullable=False),
        Column("updated_at", Timestamp, nullable=False),
        Column("expires_at", Timestamp, nullable=True),
        Column("content_type", String(255), nullable=True),
        # json, not jsonb, on PostgreSQL: jsonb re-encodes numbers (1e16 became an int)
        # LONGTEXT on MySQL/MariaDB: MySQL's JSON re-encodes like jsonb, and MariaDB's checks
        # a nesting limit (32) below kvstore's own (_validate.MAX_METADATA_DEPTH)
        Column("metadata", _dialect.json_type(), nullable=True),
        Column("checksum", String(64), nullable=False),
        PrimaryKeyConstraint("namespace", "key"),
    )
    # Only entries with a TTL are in the expiry index: a write without one touches no index
    # page besides the primary key's (each extra page is WAL written and fsynced on SQLite).
    Index(
        f"ix_{p}entries_expiry",
        entries.c.namespace,
        entries.c.expires_at,
        sqlite_where=entries.c.expires_at.isnot(None),
        postgresql_where=entries.c.expires_at.isnot(None),
    )
    # Every table's primary key leads with the namespace: one namespace's rows are contiguous
    # in each B-tree, and a distributed PostgreSQL (Citus, by namespace) co-locates them.
    chunks = Table(
        f"{p}chunks",
        md,
        Column("namespace", String(255), nullable=False),
        Column("blob_id", BigInteger, nullable=False),
        Column("n", Integer, nullable=False),
        Column("data", _dialect.blob_type(), nullable=False),
        PrimaryKeyConstraint("namespace", "blob_id", "n"),
    )
    # ids are random (kvstore._entries.new_id), not auto-assigned: SQLite assigns only an
    # INTEGER PRIMARY KEY, and these keys are (namespace, id)
    indexes = Table(
        f"{p}indexes",
        md,
        Column("namespace", _dialect.namespace_type(), nullable=False),
        Column("id", BigInteger, nullable=False, autoincrement=False),
        Column("name", String(255), nullable=False),
        Column("kind", String(16), nullable=False),
        Column("definition", String(1024), nullable=False),
        Column("is_unique", Boolean, nullable=False),
        Column("created_at", Timestamp, nullable=False),
        PrimaryKeyConstraint("namespace", "id"),
        UniqueConstraint("namespace", "name"),
    )
    index_entries = Table(
        f"{p}index_entries",
        md,
        Column("namespace", _dialect.namespace_type(), nullable=False),
        Column("index_id", BigInteger, nullable=False),
        Column("ivalue", _dialect.ivalue_type(), nullable=False),
        Column("uvalue", _dialect.ivalue_type(), nullable=True),
        Column("key", _dialect.key_type(), nullable=False),
        # (MariaDB: without the namespace, see _dialect.mysql_primary_key)
        PrimaryKeyConstraint(
            "namespace",
            "index_id",
            "ivalue",
            "key",
            info=_dialect.mysql_primary_key("index_id", "ivalue", "key"),
        ),
        UniqueConstraint("namespace", "index_id", "uvalue"),
        ForeignKeyConstraint(
            ["namespace", "index_id"],
            [indexes.c.namespace, indexes.c.id],
            ondelete="CASCADE",
        ),
        Index(f"ix_{p}index_entries_key", "namespace", "index_id", "key"),
    )
    lists = Table(
        f"{p}lists",
        md,
        Column("namespace", _dialect.namespace_type(), nullable=False),
        Column("id", BigInteger, nullable=False, autoincrement=False),
        Column("name", String(255), nullable=False),
        Column("length", BigInteger, nullable=False),
        PrimaryKeyConstraint("namespace", "id"),
        UniqueConstraint("namespace", "name"),
    )
    list_items = Table(
        f"{p}list_items",
        md,
        Column("namespace", _dialect.namespace_type(), nullable=False),
        Column("list_id", BigInteger, nullable=False),
        Column("pos", BigInteger, nullable=False),
        Column("value", _dialect.blob_type(), nullable=False),
        PrimaryKeyConstraint("namespace", "list_id", "pos"),
        ForeignKeyConstraint(
            ["namespace", "list_id"],
            [lists.c.namespace, lists.c.id],
            ondelete="CASCADE",
        ),
    )
    counts = Table(
        f"{p}counts",
        md,
        Column("namespace", String(255), primary_key=True),
        Column("n", BigInteger, nullable=False),
    )
    for table in (
        namespaces,
        entries,
        chunks,
        indexes,
        index_entries,
        lists,
        list_items,
        counts,
    ):
        for ddl in _dialect.table_options_ddl(table.name):
            event.listen(table, "after_create", ddl)
    for ddl in _dialect.trigger_ddl(prefix):
        event.listen(entries, "after_create", ddl)
    for ddl in _dialect.drop_trigger_ddl(prefix):
        event.listen(entries, "before_drop", ddl)
    return Tables(
        p, md, namespaces, entries, chunks, indexes, index_entries, lists, list_items, counts
    )


def check_table_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or _PREFIX_RE.fullmatch(prefix) is None:
        raise ValueError(
            f"table_prefix must be lower-case letters, digits and '_' (at most 30, not "
            f"starting with a digit), got {prefix!r}"
        )
    return prefix


metadata = MetaData(naming_convention=naming_convention)
default_tables = _define(DEFAULT_TABLE_PREFIX, metadata)


@functools.cache
def tables(prefix: str = DEFAULT_TABLE_PREFIX) -> Tables:
    """Return kvstore's tables for ``prefix`` (the models' own tables for the default)."""
    check_table_prefix(prefix)
    if prefix == DEFAULT_TABLE_PREFIX:
        return default_tables
    return _define(prefix, MetaData(naming_convention=naming_convention))
