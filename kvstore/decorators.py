"""Store decorators, as in minimalkv: each wraps a :class:`~kvstore.KeyValueStore` and is one.

A decorator validates keys at its own public boundary, maps them, and forwards every call to
the store it wraps, so decorators stack (``PrefixDecorator("p-", HMACDecorator(k, store))``).
Unlike minimalkv's decorators there is no ``__getattr__`` pass-through: a call the decorator
does not define (``create_index``, ``dict()``, ...) would bypass its key mapping, its MAC or
its read-only guard, so it is an ``AttributeError`` instead of a silent hole. Reach the wrapped
store explicitly through :attr:`StoreDecorator.store` when that is what you mean.

See ``docs/decorators.md``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import hmac
import io
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import IO, Any, BinaryIO, NoReturn, Self, cast
from urllib.parse import quote_plus, unquote_plus

from ._validate import FOREVER, NOT_SET, ttl_to_seconds
from .base import EntryInfo, KeyValueStore, SizedRawReader, check_destination, read_source
from .errors import (
    ConflictError,
    InvalidKeyError,
    InvalidValueError,
    NotFoundError,
    ReadOnlyError,
    TransactionError,
    VerificationError,
)

__all__ = [
    "HMACDecorator",
    "HashDecorator",
    "PrefixDecorator",
    "ReadOnlyDecorator",
    "StoreDecorator",
    "URLEncodeKeysDecorator",
    "UUIDDecorator",
]

_BUFSIZE = 1 << 20
_CAS_RETRIES = 20

File = str | os.PathLike[str] | IO[bytes]


class StoreDecorator(KeyValueStore):
    """Base class of the decorators: forwards the whole store API to :attr:`store`.

    Subclasses that rename keys override the three hooks :meth:`_map_key` (caller's key to
    wrapped key), :meth:`_map_prefix` and :meth:`_unmap_key` (wrapped key back to the caller's,
    or ``None`` for a key the decorator does not own); everything else follows from them.
    """

    def __init__(self, store: KeyValueStore) -> None:
        if not isinstance(store, KeyValueStore):
            raise TypeError(
                f"{type(self).__name__} wraps a kvstore.KeyValueStore, not {type(store).__name__}"
            )
        self._dstore = store

    @property
    def store(self) -> KeyValueStore:
        """The wrapped store (writes through it bypass this decorator)."""
        return self._dstore

    # -- TTL: the wrapped store's ----------------------------------------------------------------
    @property
    def ttl_support(self) -> bool:
        return bool(self._dstore.ttl_support)

    @ttl_support.setter
    def ttl_support(self, value: bool) -> None:
        raise AttributeError("ttl_support is the wrapped store's; it cannot be set on a decorator")

    @property
    def default_ttl_secs(self) -> Any:
        return self._dstore.default_ttl_secs

    @default_ttl_secs.setter
    def default_ttl_secs(self, value: Any) -> None:
        ttl_to_seconds(value, NOT_SET)  # refuse a bad default here, not on the next put
        self._dstore.default_ttl_secs = value

    # -- key mapping hooks -----------------------------------------------------------------------
    def _map_key(self, key: str) -> str:
        return key

    def _map_prefix(self, prefix: str) -> str:
        return prefix

    def _unmap_key(self, key: str) -> str | None:
        return key

    def _check_valid_key(self, key: object) -> None:
        """``ValueError`` (:class:`~kvstore.InvalidKeyError`) unless ``key`` is a key this
        decorator accepts: a non-empty str whose mapped form the wrapped store accepts."""
        self._inner_key(key)

    def _inner_key(self, key: object) -> str:
        """Validate ``key`` at this boundary and return the wrapped store's key for it."""
        if not isinstance(key, str):
            raise InvalidKeyError(key, f"keys are str, not {type(key).__name__}")
        key = str(key)
        if not key:
            raise InvalidKeyError(key, "keys cannot be empty")
        mapped = self._map_key(key)
        try:
            self._dstore._check_valid_key(mapped)
        except InvalidKeyError as exc:
            if mapped == key:
                raise
            raise InvalidKeyError(key, f"{exc.reason} (stored as {mapped!r})") from None
        return mapped

    def _user_error(self, exc: Exception, user: str, mapped: str) -> NoReturn:
        """Re-raise a wrapped store's key error so it names the caller's key, not ours."""
        if user != mapped and getattr(exc, "key", None) == mapped:
            if isinstance(exc, NotFoundError):
                raise NotFoundError(user) from None
            if isinstance(exc, ConflictError):
                raise ConflictError(user, exc.expected_version, exc.actual_version) from None
        raise exc

    # -- reading ---------------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        mk = self._inner_key(key)
        try:
            return self._dstore.get(mk)
        except (NotFoundError, ConflictError) as exc:
            self._user_error(exc, key, mk)

    def open(self, key: str) -> BinaryIO:
        mk = self._inner_key(key)
        try:
            return self._dstore.open(mk)
        except (NotFoundError, ConflictError) as exc:
            self._user_error(exc, key, mk)

    def get_file(self, key: str, file: File) -> str:
        mk = self._inner_key(key)
        try:
            self._dstore.get_file(mk, file)
        except (NotFoundError, ConflictError) as exc:
            self._user_error(exc, key, mk)
        return str(key)

    def stat(self, key: str) -> EntryInfo:
        mk = self._inner_key(key)
        try:
            info = self._dstore.stat(mk)
        except (NotFoundError, ConflictError) as exc:
            self._user_error(exc, key, mk)
        return info if mk == key else replace(info, key=str(key))

    def __contains__(self, key: object) -> bool:
        return self._inner_key(key) in self._dstore

    def __len__(self) -> int:
        return self._count_prefix("")

    def _count_prefix(self, prefix: str) -> int:
        return _count(self._dstore, self._map_prefix(prefix))

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        _check_prefix_type(prefix)
        return self._iter_keys(prefix)

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        for key in self._dstore.iter_keys(self._map_prefix(prefix)):
            user = self._unmap_key(key)
            if user is not None and user.startswith(prefix):
                yield user

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, sorted (whatever order the wrapped keys have)."""
        # timsort is linear on the already sorted lists most stacks produce
        return sorted(self.iter_keys(prefix))

    def iter_prefixes(self, delimiter: str, prefix: str = "") -> Iterator[str]:
        _check_prefix_type(prefix)
        if not isinstance(delimiter, str) or not delimiter:
            raise ValueError("delimiter must be a non-empty string")
        return self._iter_prefixes(delimiter, prefix)

    def _iter_prefixes(self, delimiter: str, prefix: str) -> Iterator[str]:
        # The wrapped store's (SQL skip-scan) algorithm gives the same answer on mapped keys as
        # minimalkv's on ours whenever the mapping only prepends, which all but URL encoding do.
        for out in self._dstore.iter_prefixes(delimiter, self._map_prefix(prefix)):
            user = self._unmap_key(out)
            if user is not None:
                yield user

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        mapped = {self._inner_key(k): str(k) for k in _iterable(keys, "keys")}
        found = self._dstore.get_many(list(mapped))
        return {mapped[mk]: value for mk, value in found.items() if mk in mapped}

    # -- writing ---------------------------------------------------------------------------------
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
        mk = self._inner_key(key)
        data = _check_data(key, data)
        try:
            self._dstore.put(
                mk,
                data,
                ttl_secs,
                metadata=metadata,
                content_type=content_type,
                expected_version=expected_version,
            )
        except (NotFoundError, ConflictError) as exc:
            self._user_error(exc, key, mk)
        return str(key)

    def put_file(
        self,
        key: str,
        file: File,
        ttl_secs: Any = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> str:
        mk = self._inner_key(key)
        self._dstore.put_file(mk, file, ttl_secs, metadata=metadata, content_type=content_type)
        return str(key)

    def delete(self, key: str, *, expected_version: int | None = None) -> None:
        mk = self._inner_key(key)
        try:
            self._dstore.delete(mk, expected_version=expected_version)
        except (NotFoundError, ConflictError) as exc:
            self._user_error(exc, key, mk)

    def put_many(
        self, items: Mapping[str, bytes] | Iterable[tuple[str, bytes]], ttl_secs: Any = None
    ) -> list[str]:
        pairs = _pairs(items)
        mapped = [(self._inner_key(k), _check_data(k, v)) for k, v in pairs]
        self._dstore.put_many(mapped, ttl_secs)
        return [str(k) for k, _ in pairs]

    def delete_many(self, keys: Iterable[str]) -> None:
        self._dstore.delete_many([self._inner_key(k) for k in _iterable(keys, "keys")])

    def copy(self, source: str, dest: str) -> str:
        ms, md = self._inner_key(source), self._inner_key(dest)
        try:
            self._dstore.copy(ms, md)
        except (NotFoundError, ConflictError) as exc:
            self._user_error(exc, source, ms)
        return str(dest)

    def move(self, source: str, dest: str) -> str:
        ms, md = self._inner_key(source), self._inner_key(dest)
        try:
            self._dstore.move(ms, md)
        except (NotFoundError, ConflictError) as exc:
            self._user_error(exc, source, ms)
        return str(dest)

    def incr(self, key: str, delta: int = 1, initial: int = 0) -> int:
        return self._dstore.incr(self._inner_key(key), delta, initial)

    def decr(self, key: str, delta: int = 1, initial: int = 0) -> int:
        return self._dstore.decr(self._inner_key(key), delta, initial)

    def purge_expired(self) -> int:
        return self._dstore.purge_expired()

    # -- lifetime and transactions ---------------------------------------------------------------
    def close(self) -> None:
        """Close the wrapped store (a decorator owns nothing else)."""
        self._dstore.close()

    def __enter__(self) -> Self:
        return self

    @contextlib.contextmanager
    def transaction(self, isolation: str | None = None) -> Iterator[Self]:
        """The wrapped store's transaction, seen through this decorator (same configuration).

        ``NotImplementedError`` when the wrapped store has no ``transaction()``.
        """
        begin = getattr(self._dstore, "transaction", None)
        if begin is None:
            raise NotImplementedError(
                f"{type(self._dstore).__name__} does not support transactions"
            )
        with begin() if isolation is None else begin(isolation) as tx:
            yield self._rebind(tx)

    def _supports_transactions(self) -> bool:
        inner = self._dstore
        if isinstance(inner, StoreDecorator):
            return inner._supports_transactions()
        return callable(getattr(inner, "transaction", None))

    def _rebind(self, store: KeyValueStore) -> Self:
        clone = copy.copy(self)
        clone._dstore = store
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._dstore!r})"


# -- key-renaming decorators ---------------------------------------------------------------------
class PrefixDecorator(StoreDecorator):
    """Prepend ``prefix`` to every key; listings, ``len()`` and prefix scans see only the keys
    under the prefix, with the prefix stripped."""

    def __init__(self, prefix: str, store: KeyValueStore) -> None:
        super().__init__(store)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be str, not {type(prefix).__name__}")
        if prefix:
            # A prefix the wrapped store cannot hold would make every key invalid: say so now.
            try:
                store._check_valid_key(prefix)
            except InvalidKeyError as exc:
                raise ValueError(f"invalid prefix {prefix!r}: {exc.reason}") from None
        self.prefix = str(prefix)

    def _map_key(self, key: str) -> str:
        return self.prefix + key

    def _map_prefix(self, prefix: str) -> str:
        return self.prefix + prefix

    def _unmap_key(self, key: str) -> str | None:
        if not key.startswith(self.prefix) or len(key) == len(self.prefix):
            return None
        return key[len(self.prefix) :]

    def _count_prefix(self, prefix: str) -> int:
        n = _count(self._dstore, self.prefix + prefix)
        if not prefix and self.prefix and self.prefix in self._dstore:
            n -= 1  # a wrapped key equal to the prefix maps to "", which is no key of ours
        return n

    def __repr__(self) -> str:
        return f"PrefixDecorator({self.prefix!r}, {self._dstore!r})"


class URLEncodeKeysDecorator(StoreDecorator):
    """URL-encode keys (``urllib.parse.quote_plus``, as minimalkv), so any str is a key.

    Only keys that are the canonical encoding of some str are listed: a key written to the
    wrapped store by other means (``"a!b"``) has no decoded form this decorator could read back,
    so it is invisible here. ``iter_keys()`` streams in the order of the *encoded* keys (which
    differs from the decoded order once characters are escaped); ``keys()`` is sorted.
    """

    def _map_key(self, key: str) -> str:
        try:
            return quote_plus(key, safe="")
        except UnicodeEncodeError:
            raise InvalidKeyError(
                key, "keys must be valid Unicode text (no lone surrogates)"
            ) from None

    def _map_prefix(self, prefix: str) -> str:
        return self._map_key(prefix) if prefix else ""

    def _unmap_key(self, key: str) -> str | None:
        try:
            user = unquote_plus(key, errors="strict")
        except UnicodeDecodeError:
            return None
        return user if quote_plus(user, safe="") == key else None

    def _count_prefix(self, prefix: str) -> int:
        # Non-canonical keys are not ours, so the count must apply the same filter as listing.
        return sum(1 for _ in self._iter_keys(prefix))

    def _iter_prefixes(self, delimiter: str, prefix: str) -> Iterator[str]:
        # Escapes break the wrapped store's scan: an encoded delimiter "A" would match the hex
        # digit in "%4A". So minimalkv's algorithm runs here, on decoded keys.
        seen: set[str] = set()
        for key in self._iter_keys(prefix):
            pos = key.find(delimiter, len(prefix))
            out = key if pos == -1 else key[: pos + len(delimiter)]
            if out not in seen:
                seen.add(out)
                yield out


# -- read-only ------------------------------------------------------------------------------------
class ReadOnlyDecorator(StoreDecorator):
    """Reads pass through; every write raises :class:`~kvstore.ReadOnlyError` (a
    ``PermissionError``) naming the operation, before touching the wrapped store.

    A guard against mistakes, not a security boundary: :attr:`store` is still writable.
    """

    def _refuse(self, operation: str) -> NoReturn:
        raise ReadOnlyError(f"{operation}() is not allowed: the store is read-only")

    def put(self, key: str, data: bytes, ttl_secs: Any = None, **kwargs: Any) -> str:
        self._refuse("put")

    def put_file(self, key: str, file: File, ttl_secs: Any = None, **kwargs: Any) -> str:
        self._refuse("put_file")

    def delete(self, key: str, **kwargs: Any) -> None:
        self._refuse("delete")

    def put_many(self, items: Any, ttl_secs: Any = None) -> list[str]:
        self._refuse("put_many")

    def delete_many(self, keys: Iterable[str]) -> None:
        self._refuse("delete_many")

    def copy(self, source: str, dest: str) -> str:
        self._refuse("copy")

    def move(self, source: str, dest: str) -> str:
        self._refuse("move")

    def incr(self, key: str, delta: int = 1, initial: int = 0) -> int:
        self._refuse("incr")

    def decr(self, key: str, delta: int = 1, initial: int = 0) -> int:
        self._refuse("decr")

    def purge_expired(self) -> int:
        # It only removes what no reader can see, but it is still a write to the database.
        self._refuse("purge_expired")

    @property
    def default_ttl_secs(self) -> Any:
        return self._dstore.default_ttl_secs

    @default_ttl_secs.setter
    def default_ttl_secs(self, value: Any) -> None:
        self._refuse("setting default_ttl_secs")


# -- key-generating decorators --------------------------------------------------------------------
class _KeyGenerator(StoreDecorator):
    """``put(None, ...)``/``put_file(None, ...)`` generate the key; explicit keys pass as given."""

    def __init__(self, store: KeyValueStore, template: str) -> None:
        super().__init__(store)
        if not isinstance(template, str):
            raise TypeError(f"template must be str, not {type(template).__name__}")
        try:
            a, b = template.format("0" * 64), template.format("f" * 64)
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(
                f"template must have one '{{}}' field, got {template!r}: {exc}"
            ) from None
        if a == b:
            raise ValueError(f"template {template!r} has no '{{}}' field for the generated key")
        try:
            store._check_valid_key(a)
        except InvalidKeyError as exc:
            raise ValueError(f"template {template!r} makes invalid keys: {exc.reason}") from None
        self._template = template

    @property
    def template(self) -> str:
        return self._template

    def put(
        self,
        key: str | None,
        data: bytes,
        ttl_secs: Any = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        expected_version: int | None = None,
    ) -> str:
        if key is None:
            data = _check_data("<generated>", data)
            key = self._template.format(self._new_id(data))
        return super().put(
            key,
            data,
            ttl_secs,
            metadata=metadata,
            content_type=content_type,
            expected_version=expected_version,
        )

    def _new_id(self, data: bytes) -> str:
        raise NotImplementedError


class HashDecorator(_KeyGenerator):
    """``put(None, data)`` stores ``data`` under ``template.format(hashfunc(data).hexdigest())``
    (content addressing) and returns that key; an explicit key is used as given."""

    def __init__(
        self,
        store: KeyValueStore,
        hashfunc: Callable[..., Any] = hashlib.sha256,
        template: str = "{}",
    ) -> None:
        try:
            probe = hashfunc(b"")
            probe.update(b"")
            probe.hexdigest()
        except Exception as exc:
            raise TypeError(
                f"hashfunc must build a hashlib-style object (update/hexdigest), got {hashfunc!r}"
            ) from exc
        self.hashfunc = hashfunc
        super().__init__(store, template)

    def _new_id(self, data: bytes) -> str:
        return str(self.hashfunc(data).hexdigest())

    def put_file(
        self,
        key: str | None,
        file: File,
        ttl_secs: Any = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> str:
        if key is not None:
            return super().put_file(
                key, file, ttl_secs, metadata=metadata, content_type=content_type
            )
        ttl_to_seconds(ttl_secs, NOT_SET)  # before reading what may be a long stream
        src, own = read_source(file)
        try:
            digest = self.hashfunc()
            if src.seekable():
                # Hash, rewind, store: one handle, so a path cannot change between the two reads.
                start = src.tell()
                _pump(src, digest.update)
                src.seek(start)
                key = self._template.format(digest.hexdigest())
                return super().put_file(
                    key, src, ttl_secs, metadata=metadata, content_type=content_type
                )
            # A pipe cannot be rewound: keep a copy (in memory up to 1 MiB, then on disk).
            with tempfile.SpooledTemporaryFile(max_size=_BUFSIZE) as spool:

                def both(buf: bytes) -> None:
                    digest.update(buf)
                    spool.write(buf)

                _pump(src, both)
                spool.seek(0)
                key = self._template.format(digest.hexdigest())
                return super().put_file(
                    key, spool, ttl_secs, metadata=metadata, content_type=content_type
                )
        finally:
            if own:
                src.close()

    def __repr__(self) -> str:
        name = getattr(self.hashfunc, "__name__", repr(self.hashfunc))
        return f"HashDecorator({self._dstore!r}, hashfunc={name}, template={self._template!r})"


class UUIDDecorator(_KeyGenerator):
    """``put(None, data)`` stores ``data`` under ``template.format(uuid4().hex)`` and returns
    that key; an explicit key is used as given."""

    def __init__(self, store: KeyValueStore, template: str = "{}") -> None:
        super().__init__(store, template)

    def _new_id(self, data: bytes) -> str:
        return uuid.uuid4().hex

    def put_file(
        self,
        key: str | None,
        file: File,
        ttl_secs: Any = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> str:
        if key is None:
            key = self._template.format(uuid.uuid4().hex)
        return super().put_file(key, file, ttl_secs, metadata=metadata, content_type=content_type)

    def __repr__(self) -> str:
        return f"UUIDDecorator({self._dstore!r}, template={self._template!r})"


# -- HMAC -----------------------------------------------------------------------------------------
class HMACDecorator(StoreDecorator):
    """Sign every value: the wrapped store holds ``data + HMAC(secret, key, data)``.

    Reads (``get``, ``open``, ``get_file``, ``get_many``, and ``copy``/``move``/``incr``, which
    read first) verify the MAC and raise :class:`~kvstore.VerificationError` when the value was
    modified, truncated, or copied from another key (the MAC covers the key). ``open()`` and
    ``get_file()`` verify the whole value before returning a byte of it, so nothing unverified
    ever reaches the caller; for values stored in chunks that means reading them twice.
    """

    def __init__(
        self,
        secret_key: bytes | bytearray | str,
        store: KeyValueStore,
        hashfunc: Callable[..., Any] | str = hashlib.sha256,
    ) -> None:
        super().__init__(store)
        if isinstance(secret_key, str):
            secret_key = secret_key.encode("utf-8")
        if not isinstance(secret_key, bytes | bytearray):
            raise TypeError(f"secret_key must be bytes or str, not {type(secret_key).__name__}")
        if not secret_key:
            raise ValueError("secret_key must not be empty")
        self._secret = bytes(secret_key)
        self._hashfunc = hashfunc
        try:
            self._digest_size = hmac.new(self._secret, digestmod=hashfunc).digest_size
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"hashfunc is not a hash usable by hmac: {hashfunc!r} ({exc})"
            ) from None

    @property
    def hashfunc(self) -> Callable[..., Any] | str:
        return self._hashfunc

    def _mac(self, key: str) -> hmac.HMAC:
        # The key is length-prefixed so no (key, data) pair can be re-split into another, and it
        # goes into the message rather than the HMAC key as minimalkv does: HMAC zero-pads short
        # keys, so key||secret can collide when keys may hold NUL (any str can, under URL
        # encoding). The format is therefore not byte-compatible with minimalkv's.
        raw = key.encode("utf-8", "surrogatepass")
        mac = hmac.new(self._secret, digestmod=self._hashfunc)
        mac.update(len(raw).to_bytes(8, "big"))
        mac.update(raw)
        return mac

    def _sign(self, key: str, data: bytes) -> bytes:
        mac = self._mac(key)
        mac.update(data)
        return data + mac.digest()

    def _verify(self, key: str, stored: bytes) -> bytes:
        n = self._digest_size
        if len(stored) < n:
            raise VerificationError(
                f"value of {key!r} is too short ({len(stored)} bytes) to carry its {n}-byte HMAC"
            )
        data, tag = stored[: len(stored) - n], stored[len(stored) - n :]
        mac = self._mac(key)
        mac.update(data)
        if not hmac.compare_digest(mac.digest(), tag):
            raise _tampered(key)
        return data

    # -- reading ---------------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        return self._verify(str(key), super().get(key))

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        return {k: self._verify(k, v) for k, v in super().get_many(keys).items()}

    def open(self, key: str) -> BinaryIO:
        """A readable, seekable file over the verified value, in constant memory."""
        src = super().open(key)
        try:
            size = src.seek(0, io.SEEK_END)
            n = self._digest_size
            if size < n:
                raise VerificationError(
                    f"value of {key!r} is too short ({size} bytes) to carry its {n}-byte HMAC"
                )
            src.seek(0)
            mac = self._mac(str(key))
            left = size - n
            while left:
                buf = src.read(min(_BUFSIZE, left))
                if not buf:
                    raise VerificationError(f"value of {key!r} ended early while being verified")
                mac.update(buf)
                left -= len(buf)
            if not hmac.compare_digest(mac.digest(), _read_all(src, n)):
                raise _tampered(str(key))
            # The second pass reads the same bytes: kvstore's open() reads one snapshot.
            raw = _Window(src, size - n)
        except BaseException:
            src.close()
            raise
        return cast(BinaryIO, io.BufferedReader(raw, buffer_size=1 << 16))

    def get_file(self, key: str, file: File) -> str:
        """Verify, then write: on :class:`VerificationError` the destination is untouched."""
        self._inner_key(key)
        check_destination(file)
        with self.open(key) as src:
            if isinstance(file, str | os.PathLike):
                with open(file, "wb") as dst:
                    _pump(src, dst.write)
            else:
                _pump(src, file.write)
        return str(key)

    def stat(self, key: str) -> EntryInfo:
        """The wrapped entry's info with ``size`` of the unsigned value; ``checksum`` is of the
        stored (signed) bytes."""
        info = super().stat(key)
        return replace(info, size=max(info.size - self._digest_size, 0))

    # -- writing ---------------------------------------------------------------------------------
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
        self._inner_key(key)
        data = _check_data(key, data)
        return super().put(
            key,
            self._sign(str(key), data),
            ttl_secs,
            metadata=metadata,
            content_type=content_type,
            expected_version=expected_version,
        )

    def put_file(
        self,
        key: str,
        file: File,
        ttl_secs: Any = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> str:
        """Stream ``file`` to the wrapped store with its MAC appended; constant memory."""
        self._inner_key(key)
        src, own = read_source(file)
        try:
            signed = cast(IO[bytes], _Signer(src, lambda: self._mac(str(key))))
            return super().put_file(
                key, signed, ttl_secs, metadata=metadata, content_type=content_type
            )
        finally:
            if own:
                src.close()

    def put_many(
        self, items: Mapping[str, bytes] | Iterable[tuple[str, bytes]], ttl_secs: Any = None
    ) -> list[str]:
        pairs = _pairs(items)
        signed = []
        for k, v in pairs:
            self._inner_key(k)
            signed.append((k, self._sign(str(k), _check_data(k, v))))
        return super().put_many(signed, ttl_secs)

    def copy(self, source: str, dest: str) -> str:
        """Verify ``source`` and store it re-signed for ``dest`` (the MAC covers the key),
        keeping metadata, content type and expiry; atomic when the wrapped store has
        transactions (a kvstore Store, or decorators over one)."""
        return self._relocate(source, dest, remove=False)

    def move(self, source: str, dest: str) -> str:
        return self._relocate(source, dest, remove=True)

    def _relocate(self, source: str, dest: str, *, remove: bool) -> str:
        ms = self._inner_key(source)
        self._inner_key(dest)
        source, dest = str(source), str(dest)

        def run(s: HMACDecorator) -> None:
            try:
                info = s._dstore.stat(ms)
            except NotFoundError:
                raise NotFoundError(source) from None
            with s.open(source) as value:
                if source == dest:
                    return
                s.put_file(dest, value, **_carry(info))
            if remove:
                # Only delete the version we copied; a newer one means start again.
                s._dstore.delete(ms, expected_version=info.version)

        for _ in range(_CAS_RETRIES):
            try:
                if self._supports_transactions():
                    with self.transaction() as tx:
                        run(tx)
                else:
                    run(self)
                return dest
            except ConflictError:
                continue  # the source changed under us: everything rolled back, start again
        what = "move" if remove else "copy"
        raise TransactionError(f"{what} of {source!r} kept conflicting with concurrent writers")

    def incr(self, key: str, delta: int = 1, initial: int = 0) -> int:
        """Verified read, re-signed compare-and-set write (retried on conflict): atomic under
        concurrency on any wrapped store that honours ``expected_version``."""
        mk = self._inner_key(key)
        key = str(key)
        for name, v in (("delta", delta), ("initial", initial)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"incr {name} must be an int, not {type(v).__name__}")
        for _ in range(_CAS_RETRIES):
            try:
                info = self._dstore.stat(mk)
            except KeyError:
                info = None
            try:
                if info is None:
                    new = initial + delta
                    self.put(key, str(new).encode("ascii"), expected_version=0)
                    return new
                raw = self.get(key)
                try:
                    new = int(raw.decode("ascii").strip()) + delta
                except (UnicodeDecodeError, ValueError):
                    raise ValueError(f"value of {key!r} is not an integer: {raw[:40]!r}") from None
                carried = _carry(info)
                if carried["ttl_secs"] == 0:
                    continue  # expired between our reads: it is missing now
                self.put(key, str(new).encode("ascii"), expected_version=info.version, **carried)
                return new
            except (ConflictError, KeyError):
                continue  # another writer got in between: read again
        raise TransactionError(f"incr of {key!r} kept conflicting with concurrent writers")

    def decr(self, key: str, delta: int = 1, initial: int = 0) -> int:
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"incr delta must be an int, not {type(delta).__name__}")
        return self.incr(key, -delta, initial)

    def __repr__(self) -> str:  # never show the secret
        name = getattr(self._hashfunc, "__name__", self._hashfunc)
        return f"HMACDecorator(<secret>, {self._dstore!r}, hashfunc={name})"


# -- helpers --------------------------------------------------------------------------------------
def _tampered(key: str) -> VerificationError:
    return VerificationError(
        f"HMAC verification failed for key {key!r}: the value was modified, or written under "
        "another key or with another secret"
    )


def _carry(info: EntryInfo) -> dict[str, Any]:
    """put() arguments that keep an entry's metadata, content type and expiry."""
    if info.expires_at is None:
        ttl: Any = FOREVER
    else:
        now = dt.datetime.now(dt.UTC)
        ttl = max((info.expires_at - now).total_seconds(), 0.0)
    return {"ttl_secs": ttl, "metadata": info.metadata or None, "content_type": info.content_type}


def _count(store: KeyValueStore, prefix: str) -> int:
    """Live keys of ``store`` starting with ``prefix``: one indexed COUNT on a kvstore Store."""
    if isinstance(store, StoreDecorator):
        return store._count_prefix(prefix)
    if not prefix:
        return len(store)
    count_keys = getattr(store, "count_keys", None)
    if callable(count_keys):
        return int(count_keys(prefix))
    return sum(1 for _ in store.iter_keys(prefix))


def _check_prefix_type(prefix: object) -> None:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be str, not {type(prefix).__name__}")


def _check_data(key: object, data: object) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise InvalidValueError(key, data)


def _iterable(obj: Any, what: str) -> Iterable[Any]:
    if isinstance(obj, str | bytes):
        raise TypeError(f"{what} must be an iterable of keys, not a single {type(obj).__name__}")
    try:
        iter(obj)
    except TypeError:
        raise TypeError(f"{what} must be iterable, not {type(obj).__name__}") from None
    return cast(Iterable[Any], obj)


def _pairs(items: Any) -> list[tuple[str, bytes]]:
    pairs = list(items.items() if isinstance(items, Mapping) else _iterable(items, "items"))
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(f"put_many takes (key, value) pairs, got {pair!r}")
    return [(p[0], p[1]) for p in pairs]


def _pump(src: IO[bytes], sink: Callable[[bytes], Any]) -> None:
    while True:
        buf = src.read(_BUFSIZE)
        if not buf:
            return
        if not isinstance(buf, bytes | bytearray | memoryview):
            raise TypeError(f"expected a binary file, read returned {type(buf).__name__}")
        sink(bytes(buf))


def _read_all(src: IO[bytes], n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        buf = src.read(n)
        if not buf:
            break
        parts.append(bytes(buf))
        n -= len(buf)
    return b"".join(parts)


class _Signer(io.RawIOBase):
    """A readable stream of ``src`` followed by its MAC, so put_file stays constant-memory.

    Seeking back to the start is allowed (and restarts the MAC) when ``src`` is seekable: the
    store replays a stream that way when it retries a write after lock contention.
    """

    def __init__(self, src: IO[bytes], new_mac: Callable[[], hmac.HMAC]) -> None:
        self._src = src
        self._new_mac = new_mac
        self._start = src.tell() if src.seekable() else None
        self._restart()

    def _restart(self) -> None:
        self._mac = self._new_mac()
        self._tail: bytes | None = None
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._start is not None

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = (
            offset if whence == io.SEEK_SET else self._pos + offset if whence == io.SEEK_CUR else -1
        )
        if target == self._pos:
            return self._pos
        if target != 0 or self._start is None:
            raise io.UnsupportedOperation("a signing stream can only seek back to its start")
        self._src.seek(self._start)
        self._restart()
        return 0

    def readinto(self, buf: Any) -> int:
        if self._tail is None:
            data = self._src.read(len(buf))
            if data:
                if not isinstance(data, bytes | bytearray | memoryview):
                    raise TypeError(f"expected a binary file, read returned {type(data).__name__}")
                self._mac.update(data)
                buf[: len(data)] = data
                self._pos += len(data)
                return len(data)
            self._tail = self._mac.digest()
        piece, self._tail = self._tail[: len(buf)], self._tail[len(buf) :]
        buf[: len(piece)] = piece
        self._pos += len(piece)
        return len(piece)


class _Window(SizedRawReader):
    """The first ``size`` bytes of a seekable file (the value without its MAC)."""

    def __init__(self, src: IO[bytes], size: int) -> None:
        super().__init__(size)
        self._src = src
        src.seek(0)

    def readinto(self, buf: Any) -> int:
        self._check()
        n = min(len(buf), self._size - self._pos)
        if n <= 0:
            return 0
        if self._src.tell() != self._pos:
            self._src.seek(self._pos)
        data = self._src.read(n)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._src.close()
        super().close()
