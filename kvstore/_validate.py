"""Every check kvstore makes at its public boundary, with the limits they enforce, by name.

A bad key, value, TTL, version, metadata document or argument is refused here, before any
statement runs, with an exception that names the problem; the rest of kvstore trusts what
passed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

from .errors import InvalidKeyError, InvalidValueError

# minimalkv's alphabet; kept as a public constant so applications can pre-validate.
VALID_KEY_RE: Final = re.compile(r"[a-zA-Z0-9!\"#$%&'()+,\-.<=>?@\[\\\]^_`{}~]+")
MAX_KEY_LENGTH: Final = 250

FOREVER: Final = "forever"
NOT_SET: Final = "not_set"

TTL = int | float | dt.timedelta | str | None


def check_key(key: object) -> str:
    """Return ``key`` if it is a valid store key, else raise :class:`InvalidKeyError`."""
    if type(key) is not str:
        if isinstance(key, str):
            key = str(key)
        else:
            raise InvalidKeyError(key, f"keys are str, not {type(key).__name__}")
    if not 0 < len(key) <= MAX_KEY_LENGTH:
        if not key:
            raise InvalidKeyError(key, "keys cannot be empty")
        raise InvalidKeyError(key, f"keys are at most {MAX_KEY_LENGTH} characters, got {len(key)}")
    if VALID_KEY_RE.fullmatch(key) is None:
        bad = sorted({c for c in key if VALID_KEY_RE.fullmatch(c) is None})
        raise InvalidKeyError(key, f"character(s) {''.join(bad)!r} are not allowed in keys")
    return key


def check_prefix(prefix: object) -> str:
    """A prefix may be empty, but otherwise obeys the key alphabet over its whole length (a
    character outside it could match nothing, and NUL would reach the database). A prefix
    longer than the longest key is valid and matches nothing."""
    if type(prefix) is not str:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be str, not {type(prefix).__name__}")
        prefix = str(prefix)
    if prefix and VALID_KEY_RE.fullmatch(prefix) is None:
        bad = sorted({c for c in prefix if VALID_KEY_RE.fullmatch(c) is None})
        raise InvalidKeyError(prefix, f"character(s) {''.join(bad)!r} are not allowed in keys")
    return prefix


def ttl_to_seconds(ttl_secs: object, default: object) -> float | None:
    """Normalise minimalkv's ``ttl_secs`` argument to seconds, or ``None`` for "never expires"."""
    if ttl_secs is None:
        ttl_secs = default
    if ttl_secs is None or ttl_secs in (FOREVER, NOT_SET):
        return None
    if isinstance(ttl_secs, dt.timedelta):
        ttl_secs = ttl_secs.total_seconds()
    if isinstance(ttl_secs, bool) or not isinstance(ttl_secs, int | float):
        raise ValueError(
            f"ttl_secs must be a non-negative number of seconds, a timedelta, "
            f"kvstore.FOREVER or kvstore.NOT_SET, not {ttl_secs!r}"
        )
    if math.isnan(ttl_secs) or ttl_secs < 0:
        raise ValueError(f"ttl_secs must be non-negative, got {ttl_secs!r}")
    # An expiry must be a datetime (stat() returns it, export writes it): refuse what would
    # land past 9999-12-31 rather than store what no read path can show. inf is refused too:
    # "never expires" is spelled FOREVER (or None), and inf more often means a bad computation.
    if not ttl_secs < MAX_EXPIRY_EPOCH - time.time():
        raise ValueError(
            f"ttl_secs={ttl_secs!r} reaches past the year 9999; use kvstore.FOREVER for "
            "an entry that never expires"
        )
    return float(ttl_secs)


#: the last instant a ``datetime`` can hold, in seconds since the Unix epoch
MAX_EXPIRY_EPOCH: Final = (
    dt.datetime.max.replace(tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
).total_seconds()


# -- limits -------------------------------------------------------------------------------------
#: a namespace name uses the key alphabet (without ``/``, which separates derived namespaces)
MAX_NAMESPACE_LENGTH: Final = 100
#: collection keys: at most this many UTF-8 bytes, so PostgreSQL's primary-key B-tree takes them
MAX_COLLECTION_KEY_BYTES: Final = 1000
#: a collection's name (it becomes part of its derived namespace)
MAX_COLLECTION_NAME_LENGTH: Final = 120
#: versions and expected versions are BIGINT columns
MAX_VERSION: Final = (1 << 63) - 1
#: nesting levels metadata may have: deeper documents are refused up front (json.dumps and a
#: recursive walk would hit Python's recursion limit instead)
MAX_METADATA_DEPTH: Final = 64
MAX_CONTENT_TYPE_LENGTH: Final = 255
MIN_CHUNK_SIZE: Final = 1 << 10
MAX_CHUNK_SIZE: Final = 1 << 28
#: SQLite's busy_timeout is a 32-bit count of milliseconds
MAX_BUSY_TIMEOUT: Final = (2**31 - 1) // 1000
MAX_OPEN_READERS: Final = 10_000
SQLITE_SYNCHRONOUS: Final = ("OFF", "NORMAL", "FULL", "EXTRA")


def check_value(key: str, data: object) -> bytes:
    """A value is bytes (or a bytes-like object, copied)."""
    if type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise InvalidValueError(key, data)


def check_version(v: object) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_VERSION:
        raise ValueError(f"expected_version must be a non-negative 64-bit int, got {v!r}")
    return v


def check_metadata(metadata: object) -> str | None:
    """Metadata as the JSON text stored for it (None for none)."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
    for k in metadata:
        if not isinstance(k, str):
            raise TypeError(f"metadata keys must be str, got {k!r}")
    check_text_in(metadata, "metadata")
    try:
        text = json.dumps(dict(metadata), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    return text


def check_text_in(obj: Any, what: str) -> None:
    """Refuse strings SQL text cannot hold (NUL, lone surrogates) and nesting deeper than
    :data:`MAX_METADATA_DEPTH`, walking the document without recursion."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError(f"{what} cannot contain NUL characters: {item!r}")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"{what} must be valid Unicode (no lone surrogates): {item!r}"
                ) from None
        elif isinstance(item, Mapping | list | tuple):
            if depth >= MAX_METADATA_DEPTH:
                raise ValueError(f"{what} is nested more than {MAX_METADATA_DEPTH} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, Mapping) else item
            stack.extend((c, depth + 1) for c in children)


def check_content_type(ct: object) -> str | None:
    if ct is None:
        return None
    if not isinstance(ct, str) or len(ct) > MAX_CONTENT_TYPE_LENGTH:
        raise ValueError(
            f"content_type must be a str of at most {MAX_CONTENT_TYPE_LENGTH} characters, "
            f"got {ct!r}"
        )
    check_text_in(ct, "content_type")
    return ct


def check_namespace(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"namespace must be a non-empty str, got {name!r}")
    if len(name) > MAX_NAMESPACE_LENGTH or "/" in name:
        raise ValueError(
            f"invalid namespace {name!r}: namespaces use the key alphabet and are at most "
            f"{MAX_NAMESPACE_LENGTH} characters"
        )
    check_key(name)
    return name


def check_collection_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not name
        or len(name) > MAX_COLLECTION_NAME_LENGTH
        or "\x00" in name
    ):
        raise ValueError(
            f"collection names are 1-{MAX_COLLECTION_NAME_LENGTH} characters without NUL, "
            f"got {name!r}"
        )
    return name


def check_collection_key(key: object, max_chars: int | None = None) -> str:
    """Collection keys are any str that SQL text can hold (no NUL, valid UTF-8), up to
    :data:`MAX_COLLECTION_KEY_BYTES` UTF-8 bytes, and on a database whose key columns count
    characters (MariaDB: ``MySQLDialect.max_collection_key_chars``) up to ``max_chars``."""
    if not isinstance(key, str):
        raise TypeError(f"collection keys are str here, not {type(key).__name__}")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"key {key!r} is not valid Unicode text (lone surrogate)") from None
    if "\x00" in key:
        raise ValueError(f"key {key!r} contains NUL, which SQL text columns cannot store")
    if size > MAX_COLLECTION_KEY_BYTES:
        raise ValueError(f"key is too long: {size} UTF-8 bytes, at most {MAX_COLLECTION_KEY_BYTES}")
    if max_chars is not None and len(key) > max_chars:
        raise ValueError(
            f"key is too long: {len(key)} characters, at most {max_chars} on this database"
        )
    return key


def check_iterable(obj: Any, what: str) -> Iterable[Any]:
    """An iterable of keys or pairs; a single str or bytes is refused (it iterates too)."""
    if isinstance(obj, str | bytes):
        raise TypeError(f"{what} must be an iterable of keys, not a single {type(obj).__name__}")
    try:
        iter(obj)
    except TypeError:
        raise TypeError(f"{what} must be iterable, not {type(obj).__name__}") from None
    return obj  # type: ignore[no-any-return]


def check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def check_chunk_size(chunk_size: object) -> int:
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE
    ):
        raise ValueError(f"chunk_size must be an int between 1 KiB and 256 MiB, got {chunk_size!r}")
    return chunk_size


def check_busy_timeout(busy_timeout: object) -> float:
    if (
        isinstance(busy_timeout, bool)
        or not isinstance(busy_timeout, int | float)
        or not 0 <= busy_timeout <= MAX_BUSY_TIMEOUT
    ):
        raise ValueError(
            f"busy_timeout must be a number of seconds between 0 and {MAX_BUSY_TIMEOUT}, "
            f"got {busy_timeout!r}"
        )
    return float(busy_timeout)


def check_max_open_readers(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_OPEN_READERS:
        raise ValueError(f"max_open_readers must be an int from 0 to {MAX_OPEN_READERS}, got {n!r}")
    return n


def check_synchronous(value: object) -> str:
    up = str(value).upper()
    if up not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"sqlite_synchronous must be one of {SQLITE_SYNCHRONOUS}, got {value!r}")
    return up


def check_retry_args(retries: object, backoff: object) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative int, got {retries!r}")
    if (
        isinstance(backoff, bool)
        or not isinstance(backoff, int | float)
        or not 0 <= backoff < float("inf")
    ):
        raise ValueError(f"backoff must be a non-negative number of seconds, got {backoff!r}")


def check_optional_bool(name: str, value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, not {value!r}")
    return value


def checked_key(key: object) -> str:
    """The key rule of a scope whose caller has already checked every key it passes (a
    collection encodes and checks its keys with :func:`check_collection_key` itself): the
    key is taken as it is, so it is checked once, not twice."""
    if not isinstance(key, str):
        raise TypeError(f"keys are str here, not {type(key).__name__}")
    return key


def check_replica_lag(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
        raise ValueError(
            f"max_replica_lag must be a number of seconds above 0 and at most 86400, got {value!r}"
        )
    return float(value)
