"""kvstore: key-value storage, transactions, secondary indexes and persistent collections
inside the SQL database (SQLite, PostgreSQL or MariaDB) your application already has."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._indexing import IndexInfo, json_field
from ._validate import FOREVER, MAX_KEY_LENGTH, NOT_SET, VALID_KEY_RE
from .aio import (
    AsyncPersistentDict,
    AsyncPersistentList,
    AsyncPersistentSet,
    AsyncReader,
    AsyncStore,
    AsyncTransaction,
    connect_async,
)
from .base import EntryInfo, KeyValueStore, NamespaceInfo
from .cache import cached
from .collections import PersistentDict, PersistentSet
from .decorators import (
    HashDecorator,
    HMACDecorator,
    PrefixDecorator,
    ReadOnlyDecorator,
    StoreDecorator,
    URLEncodeKeysDecorator,
    UUIDDecorator,
)
from .errors import (
    ConflictError,
    DatabaseError,
    DatabaseUnavailableError,
    IndexDefinitionError,
    IndexNotDeclaredError,
    InvalidKeyError,
    InvalidValueError,
    KVStoreError,
    LockTimeoutError,
    NotFoundError,
    ReadOnlyError,
    StorageFullError,
    TooManyReadersError,
    TransactionError,
    UniqueViolation,
    UnknownIndexError,
    VerificationError,
)
from .lists import PersistentList
from .migrations import upgrade
from .store import Store, Transaction, connect

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session

__version__ = "0.1.0"


def migrate(
    bind: str | Engine | Connection | Session, revision: str = "head", *, table_prefix: str = "kv_"
) -> None:
    """Run kvstore's shipped Alembic migrations up to ``revision`` (see docs/migrations.md).

    Alembic itself is imported only when the schema needs work: using a store never loads it.
    """
    upgrade(bind, revision, table_prefix=table_prefix)


__all__ = [
    "FOREVER",
    "MAX_KEY_LENGTH",
    "NOT_SET",
    "VALID_KEY_RE",
    "AsyncPersistentDict",
    "AsyncPersistentList",
    "AsyncPersistentSet",
    "AsyncReader",
    "AsyncStore",
    "AsyncTransaction",
    "ConflictError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "EntryInfo",
    "HMACDecorator",
    "HashDecorator",
    "IndexDefinitionError",
    "IndexInfo",
    "IndexNotDeclaredError",
    "InvalidKeyError",
    "InvalidValueError",
    "KVStoreError",
    "KeyValueStore",
    "LockTimeoutError",
    "NamespaceInfo",
    "NotFoundError",
    "PersistentDict",
    "PersistentList",
    "PersistentSet",
    "PrefixDecorator",
    "ReadOnlyDecorator",
    "ReadOnlyError",
    "StorageFullError",
    "Store",
    "StoreDecorator",
    "TooManyReadersError",
    "Transaction",
    "TransactionError",
    "URLEncodeKeysDecorator",
    "UUIDDecorator",
    "UniqueViolation",
    "UnknownIndexError",
    "VerificationError",
    "__version__",
    "cached",
    "connect",
    "connect_async",
    "json_field",
    "migrate",
]
