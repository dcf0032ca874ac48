"""kvstore's exceptions.

Every exception kvstore raises for its own conditions derives from :class:`KVStoreError`.
Where minimalkv's contract (or Python's built-ins) names a built-in exception, kvstore's
class derives from that built-in too, so ``except KeyError`` and ``except ValueError`` keep
working for code written against minimalkv or ``dict``.
"""

from __future__ import annotations

import errno
from typing import Any

__all__ = [
    "ConflictError",
    "DatabaseError",
    "IndexNotDeclaredError",
    "InvalidKeyError",
    "InvalidValueError",
    "KVStoreError",
    "NotFoundError",
    "ReadOnlyError",
    "StorageFullError",
    "TooManyReadersError",
    "TransactionError",
    "UniqueViolation",
    "UnknownIndexError",
    "VerificationError",
]


class KVStoreError(Exception):
    """Root of every exception that is kvstore's own."""


class InvalidKeyError(KVStoreError, ValueError):
    """A key is not a valid key (wrong type, alphabet or length)."""

    def __init__(self, key: object, reason: str) -> None:
        super().__init__(f"invalid key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class InvalidValueError(KVStoreError, OSError, TypeError):
    """A value is not ``bytes``.

    minimalkv raises ``OSError`` for this and ``dict`` users expect ``TypeError``; this class is
    both, so either ``except`` clause catches it.
    """

    def __init__(self, key: object, value: object) -> None:
        super().__init__(f"value for key {key!r} must be bytes, not {type(value).__name__}")
        self.key = key


class NotFoundError(KVStoreError, KeyError):
    """A key does not exist (or has expired)."""

    def __init__(self, key: object) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return repr(self.key)


class ConflictError(KVStoreError):
    """A compare-and-set write found another version than the one it expected."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        what = "missing" if actual == 0 else f"at version {actual}"
        want = "to be missing" if expected == 0 else f"version {expected}"
        super().__init__(f"conflict on key {key!r}: expected {want}, found it {what}")
        self.key = key
        self.expected_version = expected
        self.actual_version = actual


class UniqueViolation(KVStoreError):
    """A write would give two keys the same value in a unique index; nothing was written."""

    def __init__(self, index: str, value: Any, key: str, existing_key: str | None) -> None:
        held = f" (already held by {existing_key!r})" if existing_key is not None else ""
        super().__init__(f"unique index {index!r}: value {value!r} for key {key!r} is taken{held}")
        self.index = index
        self.value = value
        self.key = key
        self.existing_key = existing_key


class IndexNotDeclaredError(KVStoreError):
    """A write reached a namespace with a Python-callable index this process has not declared."""

    def __init__(self, namespace: str, names: list[str]) -> None:
        listed = ", ".join(repr(n) for n in names)
        super().__init__(
            f"namespace {namespace!r} has callable index(es) {listed} that this process has "
            "not declared; call create_index() with the same definition before writing"
        )
        self.namespace = namespace
        self.names = names


class UnknownIndexError(KVStoreError, KeyError):
    """No index of that name exists in the namespace."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(name)
        self.namespace = namespace
        self.name = name

    def __str__(self) -> str:
        return f"no index named {self.name!r} in namespace {self.namespace!r}"


class IndexDefinitionError(KVStoreError, ValueError):
    """``create_index`` named an existing index with a different definition."""


class VerificationError(KVStoreError):
    """An HMAC-signed value failed verification (tampered, or replayed under another key)."""


class ReadOnlyError(KVStoreError, PermissionError):
    """A write was attempted through a read-only store."""


class TransactionError(KVStoreError):
    """A transaction could not be completed (retries exhausted, or the transaction was misused)."""


class DatabaseError(KVStoreError):
    """The database failed an operation (a lost connection, a full disk, a timeout). The
    driver's exception is the ``__cause__``, and also ``orig``."""

    def __init__(self, message: str, orig: BaseException | None = None) -> None:
        super().__init__(message)
        self.orig = orig


class DatabaseUnavailableError(DatabaseError, ConnectionError):
    """The database cannot be reached: refused, unknown host, a lost connection, a server
    shutting down, a SQLite file that cannot be opened. Never retried by kvstore on connect,
    so a wrong URL fails at once."""


class LockTimeoutError(DatabaseError, TimeoutError):
    """A statement gave up waiting for a lock another transaction holds (SQLite's
    ``busy_timeout``, PostgreSQL's ``lock_timeout``); nothing of it was applied."""


class StorageFullError(DatabaseError, OSError):
    """The database's disk (or its size limit) is full: nothing of the failed write was
    applied. Also an ``OSError`` with ``errno.ENOSPC``, as a full disk is for a file."""

    def __init__(self, message: str, orig: BaseException | None = None) -> None:
        DatabaseError.__init__(self, message, orig)
        self.errno = errno.ENOSPC
        self.strerror = message

    def __str__(self) -> str:
        return str(self.strerror)


class TooManyReadersError(KVStoreError):
    """``open()`` was refused because the store's readers already hold as many connections
    as it lets them (``connect(max_open_readers=...)``); close some readers first."""
