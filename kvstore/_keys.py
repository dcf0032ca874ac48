"""Key and TTL validation shared by every store (the public boundary checks)."""

from __future__ import annotations

import datetime as dt
import math
import re
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
    """A prefix may be empty, but otherwise obeys the key alphabet (or it could match nothing)."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be str, not {type(prefix).__name__}")
    if prefix:
        check_key(prefix[:MAX_KEY_LENGTH])
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
    if math.isinf(ttl_secs):
        return None
    return float(ttl_secs)
