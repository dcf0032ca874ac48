"""Copy a store's entries to and from JSON Lines, one entry per line, for backups and migrations.

The format (one JSON object per line, UTF-8) is the one ``kvstore export`` writes and
``kvstore import`` reads; docs/cli.md describes it. :func:`export_lines` yields the lines of a
namespace (or of a prefix), and :func:`import_lines` writes lines back in transactions of
``batch_size`` entries, or in one transaction with ``atomic=True``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._validate import check_key, check_prefix
from .base import EntryInfo
from .errors import InvalidKeyError, KVStoreError, TransactionError
from .store import Store

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "BadLine",
    "ExportFailed",
    "ImportFailed",
    "ImportResult",
    "Record",
    "export_lines",
    "export_record",
    "import_lines",
    "parse_record",
]

#: Entries per transaction of :func:`import_lines` unless told otherwise.
DEFAULT_BATCH_SIZE = 1000

#: How often :func:`export_lines` reads an entry that changes under it before giving up.

_RECORD_FIELDS = {"key", "value", "value_b64", "metadata", "content_type", "expires_at", "ttl_secs"}


# -- records -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Record:
    """One parsed line of the import format."""

    line: int
    key: str
    value: bytes
    ttl: float | None
    metadata: dict[str, Any] | None
    content_type: str | None
    expired: bool = False


class BadLine(KVStoreError, ValueError):
    """A line that is not a valid record; the message says what is wrong with it."""


class ImportFailed(KVStoreError):
    """:func:`import_lines` stopped: a bad line, or a write the database refused.

    The cause is chained (``__cause__``): a :class:`BadLine` for a line that is not a valid
    record, otherwise the store's exception (a :class:`~kvstore.UniqueViolation`, a database
    error, ...). Everything before line :attr:`resume_line` is committed (:attr:`committed`
    entries; none after an atomic import), nothing from that line on is written.
    """

    def __init__(
        self, reason: str, *, line: int, last_line: int, committed: int, resume_line: int
    ) -> None:
        where = f"line {line}" if line == last_line else f"lines {line}-{last_line}"
        if resume_line == 1:
            status = "nothing was written"
        else:
            done = "1 entry was" if committed == 1 else f"{committed} entries were"
            status = f"the {done} committed before line {resume_line}, nothing from there on"
        super().__init__(f"{where}: {reason}; {status}")
        #: the reason alone, without the position
        self.reason = reason
        #: the line the error is about; when a refused write cannot be pinned to one line,
        #: the first line of the batch holding it
        self.line = line
        #: the last line the error is about (== line unless it spans a batch)
        self.last_line = last_line
        #: entries committed before the failure (0 for an atomic import)
        self.committed = committed
        #: the first line of which nothing was written (1 for an atomic import)
        self.resume_line = resume_line


class ExportFailed(KVStoreError):
    """:func:`export_lines` could not read a consistent value and details of an entry that
    kept being rewritten while it was exported."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} kept changing while it was being exported")
        self.key = key


@dataclasses.dataclass(frozen=True)
class ImportResult:
    """What :func:`import_lines` did."""

    #: entries written (a key on several lines of one batch counts once)
    imported: int
    #: records skipped because their ``expires_at`` had already passed
    skipped: int
    #: lines read, blank ones included
    lines: int


def parse_record(text: str, now: dt.datetime | None = None, *, line: int = 0) -> Record | None:
    """One line of the import format as a :class:`Record` (None for a blank line); raises
    :class:`BadLine` saying what is wrong with it. ``now`` (default: the current time) is
    when an ``expires_at`` is measured from."""
    if not text.strip():
        return None
    record = _parse_record(text, dt.datetime.now(dt.UTC) if now is None else now)
    record.line = line
    return record


def _parse_record(text: str, now: dt.datetime) -> Record:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BadLine(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BadLine(f"expected a JSON object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - _RECORD_FIELDS)
    if unknown:
        raise BadLine(
            f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(_RECORD_FIELDS))}"
        )
    if "key" not in doc:
        raise BadLine("missing 'key'")
    try:
        key = check_key(doc["key"])
    except InvalidKeyError as exc:
        raise BadLine(str(exc)) from None
    if ("value" in doc) == ("value_b64" in doc):
        raise BadLine("needs exactly one of 'value' (text) and 'value_b64' (base64 bytes)")
    if "value" in doc:
        if not isinstance(doc["value"], str):
            raise BadLine(
                f"'value' must be a string, got {type(doc['value']).__name__}; use 'value_b64' for bytes"
            )
        try:
            value = doc["value"].encode("utf-8")
        except UnicodeEncodeError:
            raise BadLine("'value' is not valid Unicode text (lone surrogate)") from None
    else:
        if not isinstance(doc["value_b64"], str):
            raise BadLine("'value_b64' must be a base64 string")
        try:
            value = base64.b64decode(doc["value_b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadLine(f"'value_b64' is not valid base64 ({exc})") from None
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadLine("'metadata' must be a JSON object")
    content_type = doc.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        raise BadLine("'content_type' must be a string")
    if doc.get("expires_at") is not None and doc.get("ttl_secs") is not None:
        raise BadLine("give 'expires_at' or 'ttl_secs', not both")
    ttl: float | None = None
    expired = False
    if doc.get("ttl_secs") is not None:
        t = doc["ttl_secs"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not t >= 0:
            raise BadLine(f"'ttl_secs' must be a non-negative number, got {t!r}")
        ttl = float(t)
    elif doc.get("expires_at") is not None:
        raw = doc["expires_at"]
        try:
            when = dt.datetime.fromisoformat(raw) if isinstance(raw, str) else None
        except ValueError:
            when = None
        if when is None:
            raise BadLine(f"'expires_at' must be an ISO-8601 timestamp, got {raw!r}")
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)  # documented: a naive timestamp is UTC
        ttl = (when - now).total_seconds()
        expired = ttl <= 0
    return Record(0, key, value, ttl, metadata or None, content_type, expired)


def export_record(key: str, info: EntryInfo, data: bytes) -> dict[str, Any]:
    """The JSON Lines object for one entry (the inverse of :func:`parse_record`)."""
    out: dict[str, Any] = {"key": key}
    try:
        out["value"] = data.decode("utf-8")
    except UnicodeDecodeError:
        out["value_b64"] = base64.b64encode(data).decode("ascii")
    if info.content_type is not None:
        out["content_type"] = info.content_type
    if info.metadata:
        out["metadata"] = info.metadata
    if info.expires_at is not None:
        out["expires_at"] = info.expires_at.astimezone(dt.UTC).isoformat()
    return out


# -- import --------------------------------------------------------------------------------------
def _write_batch(tx: Store, batch: list[Record]) -> None:
    # The same key twice in a batch: the later line wins, as if written one by one.
    latest = {r.key: r for r in batch}
    plain = [
        r
        for r in latest.values()
        if r.ttl is None and r.metadata is None and r.content_type is None
    ]
    if plain:
        # put_many is one executemany; it has no per-entry metadata or TTL, so entries that
        # carry them are written one by one in the same transaction.
        tx.put_many([(r.key, r.value) for r in plain])
    for r in latest.values():
        if r.ttl is not None or r.metadata is not None or r.content_type is not None:
            tx.put(r.key, r.value, r.ttl, metadata=r.metadata, content_type=r.content_type)


def _decode(raw: str | bytes, n: int) -> str:
    """A line as text: bytes are UTF-8, and a byte-order mark opening the input is dropped."""
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise BadLine("not UTF-8 text") from exc
    return raw.removeprefix("\ufeff") if n == 1 else raw


def import_lines(
    store: Store,
    lines: Iterable[str | bytes],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    atomic: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Write the records of ``lines`` (JSON Lines text, or UTF-8 bytes such as the lines of a
    file opened ``"rb"``) into ``store``.

    Records are written in transactions of ``batch_size`` entries, each all-or-nothing; with
    ``atomic=True`` the whole input is one transaction. Existing keys are replaced, the last
    line wins for a key given twice, blank lines are skipped and so are records whose
    ``expires_at`` has passed. A bad line or a refused write raises :class:`ImportFailed`,
    the batches before it committed (none when atomic). ``progress``, if given, is called
    with the number of lines read so far after each line.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    imported = skipped = n = 0
    batch: list[Record] = []

    def failed(reason: str, line: int, last_line: int, resume_line: int) -> ImportFailed:
        if atomic:
            return ImportFailed(reason, line=line, last_line=last_line, committed=0, resume_line=1)
        return ImportFailed(
            reason, line=line, last_line=last_line, committed=imported, resume_line=resume_line
        )

    def flush(target: Store) -> None:
        nonlocal imported
        if not batch:
            return
        try:
            if atomic:
                _write_batch(target, batch)
            else:
                store.run_in_transaction(lambda tx: _write_batch(tx, batch))
        except Exception as exc:
            key = getattr(exc, "key", None)
            at = [r.line for r in batch if r.key == key]
            first, last = (at[-1], at[-1]) if at else (batch[0].line, batch[-1].line)
            reason = str(exc) or type(exc).__name__
            raise failed(reason, first, last, batch[0].line) from exc
        imported += len({r.key for r in batch})
        batch.clear()

    scope: contextlib.AbstractContextManager[Store] = (
        store.transaction() if atomic else contextlib.nullcontext(store)
    )
    with scope as target:
        for n, raw in enumerate(lines, start=1):
            try:
                record = parse_record(_decode(raw, n), line=n)
            except BadLine as exc:
                raise failed(str(exc), n, n, batch[0].line if batch else n) from exc
            if progress is not None:
                progress(n)
            if record is None:
                continue
            if record.expired:
                skipped += 1
                continue
            batch.append(record)
            if len(batch) >= batch_size:
                flush(target)
        flush(target)
    return ImportResult(imported, skipped, n)


# -- export --------------------------------------------------------------------------------------
def export_lines(
    store: Store,
    prefix: str = "",
    *,
    progress: Callable[[int], None] | None = None,
    snapshot: bool = False,
) -> Iterator[str]:
    """The entries of ``store`` whose keys start with ``prefix``, sorted by key, as lines of
    JSON Lines text (each ending in a newline) that :func:`import_lines` reads back.

    The lines are produced as they are consumed, with flat memory, a batch of entries per
    statement (``Store.iter_entries``); keys deleted meanwhile are left out, and each entry's
    value and details are read together. With ``snapshot``, the whole export reads one
    consistent snapshot of the database (``Store.snapshot()``: a backup of one moment; on
    SQLite it takes no write lock). ``progress``, if given, is called with the number of lines
    handed out so far, after each one.
    """
    check_prefix(prefix)  # now, not at the first line
    return _export(store, prefix, progress, snapshot)


def _export(
    store: Store, prefix: str, progress: Callable[[int], None] | None, snapshot: bool
) -> Iterator[str]:
    if snapshot:
        with store.snapshot() as tx:
            yield from _export_entries(tx, prefix, progress)
    else:
        yield from _export_entries(store, prefix, progress)


def _export_entries(
    store: Store, prefix: str, progress: Callable[[int], None] | None
) -> Iterator[str]:
    n = 0
    last = prefix
    try:
        for info, data in store.iter_entries(prefix):
            last = info.key
            record = export_record(info.key, info, data)
            yield json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
            n += 1
            if progress is not None:
                progress(n)
    except TransactionError as exc:
        # an entry was rewritten every time it was read (iter_entries retries each one)
        raise ExportFailed(last) from exc
