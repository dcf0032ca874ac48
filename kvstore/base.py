"""The abstract key-value store: minimalkv's ``KeyValueStore`` interface, extended.

Public methods validate their arguments once and then do the work (or call a protected hook);
decorators override the public methods they change and forward the rest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

from ._validate import NOT_SET, check_key, check_prefix

__all__ = ["EntryInfo", "KeyValueStore", "SizedRawReader", "check_destination", "read_source"]


@dataclass(frozen=True)
class EntryInfo:
    """What :meth:`KeyValueStore.stat` tells about one key."""

    key: str
    size: int
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime | None
    content_type: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    checksum: str = ""


@dataclass(frozen=True)
class NamespaceInfo:
    """What :meth:`kvstore.Store.namespaces` tells about one namespace."""

    name: str
    #: live entries
    entries: int
    #: bytes of their values
    size: int


class KeyValueStore(ABC):
    """Base class of every kvstore store and decorator (minimalkv-compatible)."""

    ttl_support = True
    default_ttl_secs: Any = NOT_SET

    # -- validation ----------------------------------------------------------------------------
    def _check_valid_key(self, key: object) -> None:
        """Raise ``ValueError`` (:class:`kvstore.InvalidKeyError`) if ``key`` is not valid."""
        check_key(key)

    # -- the core every store implements -----------------------------------------------------
    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the value of ``key``; ``KeyError`` when it is missing or expired."""

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        ttl_secs: Any = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        expected_version: int | None = None,
    ) -> str:
        """Store ``data`` under ``key`` (insert or replace) and return the key."""

    @abstractmethod
    def delete(self, key: str, *, expected_version: int | None = None) -> None:
        """Delete ``key``; no error when it is missing."""

    @abstractmethod
    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        """Iterate over the keys starting with ``prefix``, in code-point order."""

    @abstractmethod
    def __contains__(self, key: object) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...

    def __bool__(self) -> bool:
        """Always true, as minimalkv's stores are, and at no cost: without this, ``bool()``
        falls back to ``__len__`` (a query) and an empty store is false, which makes client
        code written as ``if app and store:`` (Flask-KVSession) silently skip its set-up."""
        return True

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable, seekable binary file object over the value of ``key``."""

    @abstractmethod
    def put_file(
        self,
        key: str,
        file: str | os.PathLike[str] | IO[bytes],
        ttl_secs: Any = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> str:
        """Store the contents of a path or readable binary file under ``key``."""

    @abstractmethod
    def stat(self, key: str) -> EntryInfo:
        """Size, version, timestamps, content type, metadata and checksum of ``key``."""

    # -- derived operations (stores override them with one-round-trip versions) ---------------
    def keys(self, prefix: str = "") -> list[str]:
        """All keys starting with ``prefix``, sorted."""
        return list(self.iter_keys(prefix))

    def __iter__(self) -> Iterator[str]:
        return self.iter_keys()

    def iter_prefixes(self, delimiter: str, prefix: str = "") -> Iterator[str]:
        """minimalkv's ``iter_prefixes``: each key's part up to and including the first
        ``delimiter`` after ``prefix`` (or the whole key), without repetition."""
        check_prefix(prefix)
        if not delimiter:
            raise ValueError("delimiter must be a non-empty string")
        seen: set[str] = set()
        for key in self.iter_keys(prefix):
            pos = key.find(delimiter, len(prefix))
            out = key if pos == -1 else key[: pos + len(delimiter)]
            if out not in seen:
                seen.add(out)
                yield out

    def get_file(self, key: str, file: str | os.PathLike[str] | IO[bytes]) -> str:
        """Write the value of ``key`` to a path or writable binary file, in chunks."""
        self._check_valid_key(key)
        check_destination(file)
        with self.open(key) as src:
            if isinstance(file, str | os.PathLike):
                with open(file, "wb") as dst:
                    _copy(src, dst)
            else:
                _copy(src, file)
        return key

    def copy(self, source: str, dest: str) -> str:
        self.put(dest, self.get(source))
        return dest

    def move(self, source: str, dest: str) -> str:
        self.copy(source, dest)
        if source != dest:
            self.delete(source)
        return dest

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for key in keys:
            with contextlib.suppress(KeyError):
                out[key] = self.get(key)
        return out

    def put_many(
        self, items: Mapping[str, bytes] | Iterable[tuple[str, bytes]], ttl_secs: Any = None
    ) -> list[str]:
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        return [self.put(k, v, ttl_secs) for k, v in pairs]

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def incr(self, key: str, delta: int = 1, initial: int = 0) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not support incr")

    def decr(self, key: str, delta: int = 1, initial: int = 0) -> int:
        return self.incr(key, -delta, initial)

    def purge_expired(self) -> int:
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook: most stores hold nothing
        """Release the store's resources."""

    def __enter__(self) -> KeyValueStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SizedRawReader(io.RawIOBase):
    """A raw, read-only, seekable stream of ``size`` bytes with a real file's position rules
    (seeking past the end is allowed, before the start is ``OSError``, anything after close is
    ``ValueError``). Subclasses implement :meth:`readinto` from ``self._pos``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise OSError(22, "Invalid argument: negative seek position")
        self._pos = pos
        return pos

    def _check(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")


def _copy(src: IO[bytes], dst: IO[bytes], bufsize: int = 1 << 20) -> None:
    while True:
        buf = src.read(bufsize)
        if not buf:
            return
        dst.write(buf)


def check_destination(file: object) -> None:
    """``TypeError`` unless ``file`` is a path or a writable binary file (as ``read_source``
    refuses what cannot be read), checked before anything is read from the store."""
    if isinstance(file, str | os.PathLike):
        return
    if not callable(getattr(file, "write", None)):
        raise TypeError(f"expected a path or a writable binary file, not {type(file).__name__}")
    if isinstance(file, io.TextIOBase):
        raise TypeError("the file must be opened in binary mode ('wb'), not text mode")


def read_source(file: str | os.PathLike[str] | IO[bytes]) -> tuple[IO[bytes], bool]:
    """Open a path for reading, or check a file object is readable binary; (file, we_own_it)."""
    if isinstance(file, str | os.PathLike):
        return open(file, "rb"), True
    if not hasattr(file, "read"):
        raise TypeError(f"expected a path or a readable binary file, not {type(file).__name__}")
    if isinstance(file, io.TextIOBase):
        raise TypeError("the file must be opened in binary mode ('rb'), not text mode")
    return file, False
