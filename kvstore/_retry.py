"""The one retry policy: how many attempts, after which errors, with what backoff.

Every loop in kvstore that runs an operation again (lock contention, a serialization failure,
a concurrent writer that won a race) goes through :func:`retry` with a named :class:`Policy`,
so attempts and backoff are decided here and nowhere else.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.util import await_only
from sqlalchemy.util import concurrency as sa_concurrency

T = TypeVar("T")

__all__ = ["CONTENTION", "LOCK_POLL", "RACE", "SCHEMA_RACE", "Policy", "backoff_sleep", "retry"]


@dataclass(frozen=True)
class Policy:
    """``attempts`` runs in all; before run ``n + 1`` sleep a random fraction of
    ``min(cap, base * 2**n)`` seconds (full jitter, so contenders spread out)."""

    attempts: int
    base: float
    cap: float = 0.5

    def delay(self, attempt: int) -> float:
        return float(min(self.cap, self.base * 2**attempt) * random.random())


#: a statement or transaction that met a lock ("database is locked", a deadlock, a
#: serialization failure) while kvstore owns the transaction
CONTENTION = Policy(attempts=9, base=0.01)
#: polling for something another party holds: a cached call waiting for another caller's
#: computation of the same key, a connection waiting to switch a new SQLite file to WAL
LOCK_POLL = Policy(attempts=0, base=0.005, cap=0.1)
#: ensure_schema lost a race with another process creating or upgrading the same tables
SCHEMA_RACE = Policy(attempts=6, base=0.05, cap=2.0)
#: an operation that lost a race with a concurrent writer (a key created between our check and
#: our write): run again at once, it sees the winner's row
RACE = Policy(attempts=20, base=0.0, cap=0.0)


def backoff_sleep(policy: Policy, attempt: int) -> None:
    delay = policy.delay(attempt)
    if delay > 0:
        if in_async_greenlet():
            # an async store's call (kvstore.aio): wait on the event loop, never block it
            await_only(asyncio.sleep(delay))
        else:
            time.sleep(delay)


def in_async_greenlet() -> bool:
    """Whether this code runs inside SQLAlchemy's greenlet bridge (``greenlet_spawn``), where
    an asyncio driver's calls, and ``await_only``, wait on the event loop."""
    try:
        return bool(sa_concurrency.in_greenlet())
    except Exception:  # greenlet is not installed: nothing can be running in one
        return False


def retry(
    fn: Callable[[], T],
    policy: Policy,
    retryable: Callable[[BaseException], bool],
    *,
    exhausted: Callable[[BaseException], BaseException] | None = None,
) -> T:
    """Call ``fn`` until it returns, retrying errors ``retryable`` accepts under ``policy``.

    When the attempts run out, the last error is raised (or ``exhausted(last)`` chained to
    it, when given)."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not retryable(exc):
                raise
            attempt += 1
            if attempt >= policy.attempts:
                if exhausted is None:
                    raise
                raise exhausted(exc) from exc
            backoff_sleep(policy, attempt - 1)
