"""Hostile variants of a remote server's answer.

ranvier trusts no other server's answer, so a test of a request it makes
has the other side answer with each of :func:`variants` of the real
answer: not JSON, a JSON array, ``{}``, and the answer with one of its
fields (at any depth, the first item of lists standing for all) removed or
replaced by a value of another kind (:data:`ODD_VALUES`) or by arrays nested
deeper than JSON from outside may nest (:data:`DEEP_NESTINGS`: as deep as a
decoder can still read, and deeper); or the whole answer nested too deeply.
Each variant is named, so that a failure names it; its body is made only when asked for,
as some are large.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, Final

import msgspec

from ranvier.web import Request, StreamResponse

__all__ = [
    "DEEP_NESTINGS",
    "NOT_JSON",
    "ODD_VALUES",
    "CannedAnswer",
    "deeply_nested",
    "stream_body",
    "variant",
    "variants",
]

NOT_JSON: Final = b'{"not json'
#: What each field is replaced by, besides being removed, by name.
ODD_VALUES: Final[dict[str, Any]] = {
    "null": None,
    "true": True,
    "-1": -1,
    "2**63": 2**63,
    "1.5": 1.5,
    "empty string": "",
    "long string": "x" * 70000,
    "empty list": [],
    "empty object": {},
}
#: How deep the nested arrays that replace each field go, by name.
DEEP_NESTINGS: Final[dict[str, int]] = {"nested 900 deep": 900, "nested 5000 deep": 5000}
_REMOVED: Final = object()
# Stands for a deep value while the rest is encoded, which could not
# encode the value itself.
_DEEP_PLACEHOLDER: Final = "ranvier.testing.hostile: deep value"


def deeply_nested(depth: int) -> bytes:
    """Arrays nested ``depth`` deep, as JSON."""
    return b"[" * depth + b"]" * depth


def _paths(value: Any, depth: int) -> Iterator[tuple[Any, ...]]:
    if depth == 0:
        return
    if isinstance(value, dict):
        for key, inner in value.items():
            yield (key,)
            for rest in _paths(inner, depth - 1):
                yield (key, *rest)
    elif isinstance(value, list) and value:
        for rest in _paths(value[0], depth - 1):
            yield (0, *rest)


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> bytes:
    copy = msgspec.json.decode(msgspec.json.encode(value))
    holder = copy
    for step in path[:-1]:
        holder = holder[step]
    if new is _REMOVED:
        del holder[path[-1]]
    else:
        holder[path[-1]] = new
    return msgspec.json.encode(copy)


def _nested_at(value: Any, path: tuple[Any, ...], depth: int) -> bytes:
    body = _replaced(value, path, _DEEP_PLACEHOLDER)
    return body.replace(msgspec.json.encode(_DEEP_PLACEHOLDER), deeply_nested(depth), 1)


def _constant(body: bytes) -> Callable[[], bytes]:
    return lambda: body


def variants(good: Any, depth: int = 4) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """``(name, make_body)`` of every hostile variant of the answer ``good``,
    looking ``depth`` steps into it."""
    yield "not JSON", _constant(NOT_JSON)
    yield "an array", lambda: msgspec.json.encode([good])
    yield "{}", _constant(b"{}")
    yield "nested 5000 deep", _constant(deeply_nested(5000))
    for path in _paths(good, depth):
        where = "/".join(str(step) for step in path)
        yield f"{where} removed", functools.partial(_replaced, good, path, _REMOVED)
        for name, new in ODD_VALUES.items():
            yield f"{where} = {name}", functools.partial(_replaced, good, path, new)
        for name, nesting in DEEP_NESTINGS.items():
            yield f"{where} = {name}", functools.partial(_nested_at, good, path, nesting)


def variant(good: Any, name: str) -> bytes:
    """The body of the variant of ``good`` called ``name``."""
    for found, make in variants(good):
        if found == name:
            return make()
    raise KeyError(f"no variant {name!r} of this answer")


class CannedAnswer:
    """A route's answer: :attr:`good`, unless :attr:`body` is set. Counts
    the requests it answers (:attr:`asked`)."""

    def __init__(self, good: Any) -> None:
        self.good = msgspec.json.encode(good)
        self.body: bytes | None = None
        self.asked = 0

    async def handle(self, request: Request) -> StreamResponse:
        self.asked += 1
        return stream_body(self.body if self.body is not None else self.good)


def stream_body(body: bytes, status: int = 200) -> StreamResponse:
    """``body`` as a route's answer, sent as it is (JSON or not)."""

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    return StreamResponse(
        status,
        [("content-type", "application/json"), ("content-length", str(len(body)))],
        chunks,
    )
