"""Canonical JSON, as the Matrix specification defines it.

Signatures, content hashes and event IDs are computed over canonical JSON:
object keys sorted by code point, no insignificant whitespace, UTF-8, and
only the values JSON and the spec both allow. msgspec does the encoding; it
is far faster than the ``json`` module, but it accepts values that canonical
JSON forbids (floats, including NaN which it writes as ``null``, integers
beyond ±(2^53-1), dates, sets and other Python types), so every value is
checked before it is encoded.

Encoding and decoding sit on the path of every event, so the checks are
split in two. A fast pass answers only "is everything allowed?" and keeps no
record of where it is; when it says no, or msgspec refuses the input, a slow
pass looks again to say what is wrong and where. Valid input, which is
almost all input, pays only for the fast pass (about half the cost of a
single path-building walk, measured on typical events).

- Encoding: the fast pass checks the type of every value and the range of
  every integer. Keys are left to msgspec, which refuses non-string keys
  when it sorts them, and so are lone surrogates, which it refuses too.
- Decoding: msgspec already refuses invalid UTF-8, lone surrogates, and
  (through ``float_hook``) every number with a fraction or an exponent. It
  does not refuse ``-0`` or out-of-range integers, and after decoding those
  can no longer be told apart from ``0`` or from valid integers without
  another walk. So the raw bytes are screened instead: only a text holding
  ``-0`` or a run of 16 digits can hold either, and only such a text is
  tokenised to find them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final, NoReturn

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


def _reject_float(text: str) -> NoReturn:
    # A ValueError, so that msgspec re-raises it with the path of the number.
    raise ValueError(
        f"numbers with a fraction or exponent are not allowed in canonical JSON: {text}"
    )


_decoder: Final = msgspec.json.Decoder(float_hook=_reject_float)


def _all_allowed(values: Iterable[Any]) -> bool:
    """Whether every value, and everything inside it, may be encoded.

    The fast pass of encoding: no paths and no messages, and scalars are
    tested inline rather than by a call each, which is most of its speed.
    """
    for value in values:
        kind = type(value)
        if kind is str:
            continue
        if kind is int:
            if CANONICAL_INT_MIN <= value <= CANONICAL_INT_MAX:
                continue
            return False
        if kind is dict:
            if _all_allowed(value.values()):
                continue
            return False
        if kind is list or kind is tuple:
            if _all_allowed(value):
                continue
            return False
        if kind is bool or value is None:
            continue
        return False
    return True


def _check_string(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(text[exc.start])
        raise BadJsonError(
            f"{where} holds a lone surrogate U+{bad:04X} at index {exc.start},"
            " which is not valid Unicode"
        ) from None


def _check_value(value: Any, path: str) -> None:
    """Raise BadJsonError at the first value canonical JSON does not allow.

    The slow pass: it runs only once the fast pass or msgspec has refused
    the object, and builds the path of every value it visits.
    """
    kind = type(value)
    if kind is str:
        _check_string(value, f"the string at {path}")
        return
    if kind is bool or value is None:
        return
    if kind is int:
        if not CANONICAL_INT_MIN <= value <= CANONICAL_INT_MAX:
            raise BadJsonError(
                f"integer {value} at {path} is outside the canonical JSON range ±(2^53-1)"
            )
        return
    if kind is dict:
        for key, item in value.items():
            # msgspec encodes str subclasses as strings, so they are allowed
            # as keys here too: refusing them only on this path would make
            # the answer depend on which pass ran.
            if not isinstance(key, str):
                raise BadJsonError(f"object key {key!r} at {path} is not a string")
            _check_string(key, f"the key {key!r} at {path}")
            _check_value(item, f"{path}.{key}")
        return
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            _check_value(item, f"{path}[{index}]")
        return
    if kind is float:
        raise BadJsonError(f"floats are not allowed in canonical JSON (at {path}: {value!r})")
    raise BadJsonError(f"a {kind.__name__} cannot be encoded as canonical JSON (at {path})")


def encode_canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON bytes.

    Raises :class:`~ranvier.errors.BadJsonError` for anything canonical JSON
    cannot represent: floats, integers outside ±(2^53-1), non-string keys,
    strings that are not valid Unicode (lone surrogates), or other types
    (only dict, list, tuple, str, int, bool and None are accepted, exactly:
    subclasses such as enums are refused). The message names the first
    offending value by its path, such as ``$.content.body``.
    """
    try:
        if _all_allowed((obj,)):
            return _encoder.encode(obj)
        _check_value(obj, "$")
    except (TypeError, UnicodeEncodeError) as exc:
        _check_value(obj, "$")
        # The slow pass should have named the problem; this is a backstop.
        raise BadJsonError(f"cannot encode as canonical JSON: {exc}") from None
    except RecursionError:
        raise BadJsonError("the value is nested too deeply to encode as canonical JSON") from None
    raise BadJsonError("the value cannot be encoded as canonical JSON")


# A text can only hold -0 or an out-of-range integer if it holds "-0" or 16
# digits in a row (2^53 has 16 digits); these screens find out in well under
# a microsecond per kilobyte. A regular expression is the fastest search for
# the two-byte "-0" (faster than ``in``), but slow for runs of digits, so
# for those every digit is turned into "0" and a run of sixteen zeros is
# searched for instead.
_NEGATIVE_ZERO_SCREEN: Final = re.compile(rb"-0")
_DIGITS_TO_ZERO: Final = bytes.maketrans(b"0123456789", b"0" * 10)
_SIXTEEN_DIGITS: Final = b"0" * 16
# Strings are matched whole so that digits inside them are skipped; what is
# left between strings are number literals.
_TOKENS: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|(-?[0-9]+)([.eE][-+0-9.eE]*)?', re.DOTALL)


def _may_hold_refused_number(data: bytes) -> bool:
    """Whether ``data`` (valid JSON) may hold ``-0`` or an integer of 16
    digits or more: a screen, false positives allowed, misses not.

    The screens above find "-0" and runs of 16 digits anywhere, strings
    included, and URL-safe base64 event IDs hold "-0" often: one cited by
    every event of a room (its create or power levels event) would send
    each of them down the slow exact check. A number literal, though, only
    ever follows ``[``, ``:``, ``,`` or nothing, with whitespace between, so
    each find is kept only if it is so placed.
    """
    for found in _NEGATIVE_ZERO_SCREEN.finditer(data):
        if _literal_starts_at(data, found.start()):
            return True
    zeros = data.translate(_DIGITS_TO_ZERO)
    start = zeros.find(_SIXTEEN_DIGITS)
    while start != -1:
        run = start
        while run > 0 and zeros[run - 1] == _ZERO:
            run -= 1
        if run > 0 and data[run - 1] == _MINUS:
            run -= 1
        if _literal_starts_at(data, run):
            return True
        end = start + len(_SIXTEEN_DIGITS)
        while end < len(zeros) and zeros[end] == _ZERO:
            end += 1
        start = zeros.find(_SIXTEEN_DIGITS, end)
    return False


_ZERO: Final = ord("0")
_MINUS: Final = ord("-")
_BEFORE_A_LITERAL: Final = frozenset(b"[:,")
_JSON_WHITESPACE: Final = frozenset(b" \t\n\r")


def _literal_starts_at(data: bytes, index: int) -> bool:
    """Whether a token starting at ``index`` is placed as a value would be:
    after ``[``, ``:``, ``,`` or at the start, whitespace aside.
    """
    before = index - 1
    while before >= 0 and data[before] in _JSON_WHITESPACE:
        before -= 1
    return before < 0 or data[before] in _BEFORE_A_LITERAL


def _check_number_literals(data: bytes) -> None:
    """Raise BadJsonError at the first number canonical JSON does not allow.

    ``data`` must already be known to be valid JSON.
    """
    for match in _TOKENS.finditer(data):
        integer, fraction = match.groups()
        if integer is None:
            continue
        where = f"at byte {match.start()}"
        if fraction is not None:
            raise BadJsonError(
                f"number {match.group().decode()} {where} has a fraction or exponent,"
                " which canonical JSON does not allow"
            )
        if integer == b"-0":
            raise BadJsonError(f"-0 {where} is not allowed in canonical JSON")
        digits = integer.removeprefix(b"-")
        # 2^53-1 has 16 digits and JSON allows no leading zeros, so longer
        # literals are out of range without converting them (which Python
        # refuses beyond 4300 digits anyway).
        if len(digits) > 16 or (len(digits) == 16 and int(digits) > CANONICAL_INT_MAX):
            shown = integer.decode() if len(integer) <= 40 else f"{integer[:20].decode()}..."
            raise BadJsonError(
                f"integer {shown} {where} is outside the canonical JSON range ±(2^53-1)"
            )


def _invalid_utf8_error(data: bytes) -> BadJsonError:
    # msgspec reports the offset within the string being decoded; the
    # offset in the whole text is what helps.
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadJsonError(f"invalid UTF-8 at byte {exc.start}: {exc.reason}")
    return BadJsonError("invalid UTF-8")


def _lone_surrogate_error(data: bytes) -> BadJsonError | None:
    """Name a lone surrogate escape, which msgspec reports only as truncation."""

    def refuse(text: str) -> NoReturn:
        raise ValueError(text)

    try:
        obj = json.loads(data, parse_float=refuse, parse_constant=refuse)
        _check_value(obj, "$")
    except BadJsonError as exc:
        return exc
    except (ValueError, RecursionError):
        return None
    return None


def decode_canonical_json(data: bytes | str) -> Any:
    """Decode JSON that must hold only values canonical JSON allows.

    This is for JSON received from others (events over federation, request
    bodies): invalid JSON or UTF-8, lone surrogates, numbers with a fraction
    or exponent, ``-0`` and integers outside ±(2^53-1) are refused with
    :class:`~ranvier.errors.BadJsonError`, as room versions 6 onwards
    require. Keys need not be sorted nor whitespace minimal: canonical form
    is re-made on encoding.
    """
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadJsonError(
                f"the text holds a lone surrogate at index {exc.start}, which is not valid Unicode"
            ) from None
    try:
        obj = _decoder.decode(data)
    except UnicodeDecodeError:
        raise _invalid_utf8_error(data) from None
    except msgspec.ValidationError as exc:
        # A number refused by float_hook, or an integer too large even for
        # msgspec: the literal's byte offset says more than msgspec's path.
        _check_number_literals(data)
        raise BadJsonError(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise _lone_surrogate_error(data) or BadJsonError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise BadJsonError("invalid JSON: nested too deeply to decode") from None
    if _may_hold_refused_number(data):
        _check_number_literals(data)
    return obj
