"""Canonical JSON, as the Matrix specification defines it.

Signatures, content hashes and event IDs are computed over canonical JSON:
object keys sorted by code point, no insignificant whitespace, UTF-8, and
only the values JSON and the spec both allow. msgspec does the encoding; it
is far faster than the ``json`` module, but it accepts values that canonical
JSON forbids (floats, including NaN which it writes as ``null``, integers
beyond ±(2^53-1)), so every value is checked before it is encoded.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ranvier.errors import BadJsonError

__all__ = [
    "CANONICAL_INT_MAX",
    "CANONICAL_INT_MIN",
    "decode_canonical_json",
    "encode_canonical_json",
]

#: The integer range canonical JSON allows: what an IEEE double holds exactly.
CANONICAL_INT_MAX: Final = 2**53 - 1
CANONICAL_INT_MIN: Final = -(2**53 - 1)

_encoder: Final = msgspec.json.Encoder(order="sorted")


def _reject_float(text: str) -> Any:
    raise BadJsonError(f"floats are not allowed in canonical JSON: {text}")


_decoder: Final = msgspec.json.Decoder(float_hook=_reject_float)


def _check_value(value: Any, path: str) -> None:
    """Raise BadJsonError at the first value canonical JSON does not allow."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return
    if kind is int:
        if not CANONICAL_INT_MIN <= value <= CANONICAL_INT_MAX:
            raise BadJsonError(f"integer out of the canonical JSON range at {path}: {value}")
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise BadJsonError(f"object key {key!r} at {path} is not a string")
            _check_value(item, f"{path}.{key}")
        return
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            _check_value(item, f"{path}[{index}]")
        return
    if kind is float:
        raise BadJsonError(f"floats are not allowed in canonical JSON (at {path}: {value!r})")
    raise BadJsonError(f"a {kind.__name__} cannot be encoded as JSON (at {path})")


def encode_canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON bytes.

    Raises :class:`~ranvier.errors.BadJsonError` for anything canonical JSON
    cannot represent: floats, integers outside ±(2^53-1), non-string keys,
    strings that are not valid Unicode (lone surrogates), or other types.
    """
    _check_value(obj, "$")
    try:
        return _encoder.encode(obj)
    except UnicodeEncodeError as exc:
        raise BadJsonError(f"string is not valid Unicode: {exc.reason}") from None


def decode_canonical_json(data: bytes | str) -> Any:
    """Decode JSON that must hold only values canonical JSON allows.

    This is for JSON received from others (events over federation, request
    bodies): invalid UTF-8, floats and out-of-range integers are refused with
    :class:`~ranvier.errors.BadJsonError`. Keys need not be sorted: the check
    is on values, and canonical form is re-made on encoding.
    """
    try:
        obj = _decoder.decode(data)
    except BadJsonError:
        raise
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadJsonError(f"invalid JSON: {exc}") from None
    _check_value(obj, "$")
    return obj
