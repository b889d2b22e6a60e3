"""Decoding JSON that others sent: nesting too deep is invalid JSON.

msgspec decodes arrays and objects recursively and, like the ``json``
module, raises :class:`RecursionError` rather than
:class:`msgspec.DecodeError` once the input nests deeper than Python's
recursion limit allows from the current stack (about 1,000 levels, fewer
when the caller is itself deep). A 64 KiB body can nest 32,000 levels, so
any client or remote server could make a decode site that expects only
``DecodeError`` fail with an unexpected exception.

Input that does decode can still be deep enough to break Python code that
walks it recursively later (copying, screening, push rule evaluation,
filters, re-encoding in a response). So the rule is: JSON from outside
nests at most :data:`MAX_JSON_NESTING` levels (``[]`` and ``{}`` are one
level each; a PDU's content object is at level two), checked once where the
bytes are decoded, and deeper JSON is refused exactly as invalid JSON is.
128 is serde_json's default limit, which Rust homeservers apply to all of
their input, and leaves the walkers' recursion far below Python's limit.

The check costs two byte counts for most input: a text with no more than
:data:`MAX_JSON_NESTING` opening brackets cannot nest deeper. A text with
more (a whole transaction, a big answer) is reduced to its brackets outside
strings with byte-level operations in C, never a Python loop per byte.
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar, overload

import msgspec

__all__ = [
    "DECODE_ERRORS",
    "MAX_JSON_NESTING",
    "JsonNestedTooDeeplyError",
    "check_json_nesting",
    "decode_untrusted_json",
    "untrusted_json_decoder",
]

_T = TypeVar("_T")
_Bytes = bytes | bytearray | memoryview | msgspec.Raw

#: The deepest nesting of arrays and objects accepted from outside.
MAX_JSON_NESTING: Final = 128


class JsonNestedTooDeeplyError(msgspec.DecodeError):
    """JSON that nests arrays and objects deeper than allowed."""


#: What msgspec may raise when decoding unusable JSON or msgpack from
#: outside, for sites that call it themselves: catch these around the
#: decode call alone, never around code that goes on to use the result.
DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError)

# Strings whose only brackets and quotes are their own delimiters; used once
# escapes are gone and everything but brackets and quotes is deleted.
_STRING: Final = re.compile(rb'"[^"]*"')
_NOT_BRACKETS_OR_QUOTES: Final = bytes(sorted(set(range(256)) - set(b'[]{}"')))
# Opening brackets count 2 and closing ones 0: the running sum less the
# number of brackets so far is then the depth, which C iterators compute.
_BRACKET_STEPS: Final = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
# A few rounds of removing empty pairs settle almost all real JSON, each
# taking at most two levels off any branch.
_PEELING_ROUNDS: Final = 4


def _opening(brackets: bytes | bytearray) -> int:
    return brackets.count(b"[") + brackets.count(b"{")


def _brackets_outside_strings(data: bytes | bytearray) -> bytes:
    """The brackets of ``data`` that are not inside strings, in order.

    In JSON a backslash only appears in strings, and starts a two-character
    escape; removing escaped backslashes, then escaped quotes, leaves
    quotes that only delimit strings. With all else deleted, two adjacent
    quotes either close one string and open the next over a gap holding no
    bracket, or delimit a string holding none: removing them changes
    nothing inside or outside strings, and leaves few strings to remove.
    """
    text = bytes(data)
    if b"\\" in text:
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = text.translate(None, _NOT_BRACKETS_OR_QUOTES).replace(b'""', b"")
    if b'"' in kept:
        kept = _STRING.sub(b"", kept)
    return kept


def _nesting(brackets: bytes) -> int:
    steps = brackets.translate(_BRACKET_STEPS)
    return max(map(operator.sub, itertools.accumulate(steps), itertools.count(1)), default=0)


def check_json_nesting(data: _Bytes, *, limit: int = MAX_JSON_NESTING) -> None:
    """Raise :class:`JsonNestedTooDeeplyError` if ``data`` nests deeper than ``limit``.

    Meant for JSON that is then decoded: invalid JSON with many opening
    brackets may be refused here rather than by the decoder.
    """
    if not isinstance(data, bytes | bytearray):
        data = bytes(data)
    if _opening(data) <= limit:
        return
    brackets = _brackets_outside_strings(data)
    peeled, removed = brackets, 0
    for _ in range(_PEELING_ROUNDS):
        if _opening(peeled) + removed <= limit:
            return
        peeled = peeled.replace(b"{}", b"").replace(b"[]", b"")
        removed += 2
    if _nesting(brackets) > limit:
        raise JsonNestedTooDeeplyError(
            f"JSON nested too deeply (arrays and objects may nest {limit} levels)"
        )


@overload
def decode_untrusted_json(data: _Bytes | str, *, check_nesting: bool = True) -> Any: ...


@overload
def decode_untrusted_json(
    data: _Bytes | str, *, type: type[_T], check_nesting: bool = True
) -> _T: ...


def decode_untrusted_json(
    data: _Bytes | str, *, type: Any = Any, check_nesting: bool = True
) -> Any:
    """:func:`msgspec.json.decode` for JSON from outside: nesting deeper
    than :data:`MAX_JSON_NESTING` raises :class:`JsonNestedTooDeeplyError`,
    a :class:`msgspec.DecodeError`, as invalid JSON does.

    ``check_nesting=False`` skips the measure, leaving only the decoder's
    own recursion turned into the same error: for big answers decoded into
    a shape with no free-form values, whose nested units (``msgspec.Raw``)
    are checked one by one when they are parsed.
    """
    if check_nesting:
        check_json_nesting(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return _decoded(functools.partial(msgspec.json.decode, type=type), data)


def untrusted_json_decoder(type: type[_T], *, check_nesting: bool = True) -> Callable[[_Bytes], _T]:
    """A reusable :func:`decode_untrusted_json` for one ``type``, as
    ``msgspec.json.Decoder(type).decode`` is for :func:`msgspec.json.decode`.
    """
    decode = msgspec.json.Decoder(type).decode

    def decode_checked(data: _Bytes) -> _T:
        if check_nesting:
            check_json_nesting(data)
        return _decoded(decode, data)

    return decode_checked


def _decoded(decode: Callable[[Any], _T], data: Any) -> _T:
    """``decode(data)``, the decoder's own recursion limit raising as
    nesting too deep does, and bytes that are not UTF-8 inside a string
    (which msgspec reports as a UnicodeDecodeError) as invalid JSON: JSON
    is UTF-8 (RFC 8259), so such a body is not JSON at all."""
    try:
        return decode(data)
    except RecursionError:
        raise JsonNestedTooDeeplyError("JSON nested too deeply to decode") from None
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError(f"JSON is not valid UTF-8 ({exc.reason})") from None
