"""kvstore: key-value storage, transactions, secondary indexes and persistent collections
inside the SQL database (SQLite or PostgreSQL) your application already has."""

from __future__ import annotations

from ._keys import FOREVER, MAX_KEY_LENGTH, NOT_SET, VALID_KEY_RE
from .base import EntryInfo, KeyValueStore
from .errors import (
    ConflictError,
    IndexNotDeclaredError,
    InvalidKeyError,
    InvalidValueError,
    KVStoreError,
    NotFoundError,
    ReadOnlyError,
    TransactionError,
    UniqueViolation,
    UnknownIndexError,
    VerificationError,
)
from .indexes import IndexInfo, json_field
from .store import Store, Transaction, connect

__version__ = "0.1.0"

__all__ = [
    "FOREVER",
    "MAX_KEY_LENGTH",
    "NOT_SET",
    "VALID_KEY_RE",
    "ConflictError",
    "EntryInfo",
    "IndexInfo",
    "IndexNotDeclaredError",
    "InvalidKeyError",
    "InvalidValueError",
    "KVStoreError",
    "KeyValueStore",
    "NotFoundError",
    "ReadOnlyError",
    "Store",
    "Transaction",
    "TransactionError",
    "UniqueViolation",
    "UnknownIndexError",
    "VerificationError",
    "__version__",
    "connect",
    "json_field",
]
