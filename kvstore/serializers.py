"""Serializers turn collection elements and cached results into bytes and back.

``"json"`` is the default; ``"pickle"`` is opt-in only (unpickling runs arbitrary code: never
use it on data that untrusted parties can write); ``"marshal"`` is fast for plain built-ins;
``"raw"`` stores ``bytes`` as they are. Any object with ``dumps(obj) -> bytes | str`` and
``loads(data)`` works too.
"""

from __future__ import annotations

import json
import marshal
import pickle
from typing import Any, Protocol, runtime_checkable

__all__ = ["JSON", "MARSHAL", "PICKLE", "RAW", "Serializer", "get_serializer"]


@runtime_checkable
class Serializer(Protocol):
    def dumps(self, obj: Any) -> bytes: ...
    def loads(self, data: bytes) -> Any: ...


class _Json:
    name = "json"

    def dumps(self, obj: Any) -> bytes:
        try:
            return json.dumps(
                obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")
            ).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cannot serialize {type(obj).__name__} as JSON: {exc}") from None

    def loads(self, data: bytes) -> Any:
        return json.loads(data.decode("utf-8", "surrogatepass"))


class _Pickle:
    name = "pickle"

    def dumps(self, obj: Any) -> bytes:
        try:
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise TypeError(f"cannot pickle {type(obj).__name__}: {exc}") from None

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


class _Marshal:
    name = "marshal"

    def dumps(self, obj: Any) -> bytes:
        try:
            return marshal.dumps(obj)
        except ValueError as exc:
            raise TypeError(f"cannot marshal {type(obj).__name__}: {exc}") from None

    def loads(self, data: bytes) -> Any:
        return marshal.loads(data)


class _Raw:
    name = "raw"

    def dumps(self, obj: Any) -> bytes:
        if isinstance(obj, bytes | bytearray | memoryview):
            return bytes(obj)
        raise TypeError(f"the raw serializer stores bytes, not {type(obj).__name__}")

    def loads(self, data: bytes) -> Any:
        return bytes(data)


class Custom:
    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.name = getattr(obj, "__name__", type(obj).__name__)

    def dumps(self, value: Any) -> bytes:
        try:
            out = self.obj.dumps(value)
        except TypeError:
            raise
        except Exception as exc:
            raise TypeError(
                f"serializer {self.name} cannot encode {type(value).__name__}: {exc}"
            ) from exc
        if isinstance(out, str):
            return out.encode("utf-8")
        if not isinstance(out, bytes | bytearray | memoryview):
            raise TypeError(
                f"serializer {self.name}.dumps returned {type(out).__name__}, not bytes or str"
            )
        return bytes(out)

    def loads(self, data: bytes) -> Any:
        return self.obj.loads(data)


JSON, PICKLE, MARSHAL, RAW = _Json(), _Pickle(), _Marshal(), _Raw()
BY_NAME: dict[str, Any] = {"json": JSON, "pickle": PICKLE, "marshal": MARSHAL, "raw": RAW}


def get_serializer(spec: Any) -> Any:
    """A serializer from a name (``"json"``, ``"pickle"``, ``"marshal"``, ``"raw"``) or an
    object with ``dumps``/``loads``."""
    if isinstance(spec, str):
        try:
            return BY_NAME[spec]
        except KeyError:
            raise ValueError(
                f"unknown serializer {spec!r}; use one of {sorted(BY_NAME)} or an object with dumps/loads"
            ) from None
    if callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None)):
        return spec if spec in BY_NAME.values() else Custom(spec)
    raise TypeError(
        f"a serializer is a name or an object with dumps() and loads(), not {type(spec).__name__}"
    )
