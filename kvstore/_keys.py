"""Key and TTL validation shared by every store (the public boundary checks)."""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from typing import Final

from .errors import InvalidKeyError

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
