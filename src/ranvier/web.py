"""HTTP plumbing shared by the federation and client-server APIs.

Both APIs are ASGI applications that answer JSON with Matrix errors. What
they share lives here: the :class:`Router` (method and path pattern to
handler), the :class:`Request` a handler sees, :class:`JsonResponse`, and
the reading, parsing and rendering of bodies. What differs (X-Matrix
signatures for servers, access tokens for clients) stays with each API.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.numbers import is_decimal_number
from ranvier.protocol.untrusted_json import decode_untrusted_json

__all__ = [
    "FEDERATION_PREFIX",
    "Disconnected",
    "Handler",
    "JsonResponse",
    "Receive",
    "Rendered",
    "Request",
    "RequestHead",
    "Route",
    "RouteMatch",
    "Router",
    "Scope",
    "Send",
    "StreamResponse",
    "error_response",
    "flag_param",
    "integer_param",
    "invalid_param",
    "only_http",
    "parse_json",
    "read_body",
    "render",
    "retry_after_header",
    "run_lifespan",
    "send_rendered",
    "send_stream",
]

#: Routes under this prefix are authenticated unless registered otherwise.
FEDERATION_PREFIX: Final = "/_matrix/federation/"

# ASGI's shapes, as loosely typed as the ASGI spec itself.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, as a handler sees it."""

    method: str
    #: The request target exactly as sent (path and query, still
    #: percent-encoded): what the X-Matrix signature covers.
    uri: str
    #: The path's ``{name}`` segments, percent-decoded.
    path_params: Mapping[str, str]
    #: Query parameters, percent-decoded; a name given twice has two values.
    query: Mapping[str, Sequence[str]]
    #: Header names lower-cased, decoded as Latin-1 (HTTP's own encoding).
    headers: Sequence[tuple[str, str]]
    #: The raw body: events are kept exactly as received, so handlers that
    #: store them may decode these bytes themselves.
    body: bytes
    #: The body parsed as JSON, or None for a request without a body.
    content: Any
    #: The server that signed the request, or None on an unauthenticated route.
    origin: str | None

    def query_value(self, name: str) -> str | None:
        """The first value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[0] if values else None


def invalid_param(message: str) -> MatrixError:
    """400 ``M_INVALID_PARAM``."""
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def integer_param(request: Request, name: str) -> int | None:
    """A non-negative integer query parameter, or None when absent; more
    than 15 digits is refused rather than handed on as a number nothing
    could mean."""
    value = request.query_value(name)
    if value is None:
        return None
    if not is_decimal_number(value) or len(value) > 15:
        raise invalid_param(f"{name} must be a non-negative integer, not {value[:40]!r}")
    return int(value)


def flag_param(request: Request, name: str) -> bool | None:
    """A ``true`` or ``false`` query parameter, or None when absent."""
    value = request.query_value(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise invalid_param(f"{name} must be true or false, not {value[:40]!r}")
    return value == "true"


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What an ASGI ``http`` scope says of a request before its body is read.

    Both APIs route on the head, and may refuse a request, before they read
    the body; :meth:`request` then makes the :class:`Request` a handler sees,
    so both read the path, target and headers alike.
    """

    method: str
    #: The path as sent, still percent-encoded: what the router matches.
    path: str
    #: The request target exactly as sent (see :attr:`Request.uri`).
    uri: str
    #: The query string as sent, without the ``?``.
    query_string: str
    #: Header names lower-cased, decoded as Latin-1 (HTTP's own encoding).
    headers: list[tuple[str, str]]

    @classmethod
    def from_scope(cls, scope: Scope) -> RequestHead:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        query: bytes = scope.get("query_string", b"")
        path = raw_path.decode("latin-1")
        query_string = query.decode("latin-1")
        return cls(
            method=scope["method"],
            path=path,
            uri=path + ("?" + query_string if query_string else ""),
            query_string=query_string,
            headers=[
                (name.decode("latin-1").lower(), value.decode("latin-1"))
                for name, value in scope["headers"]
            ],
        )

    def request(
        self, *, path_params: Mapping[str, str], body: bytes, content: Any, origin: str | None
    ) -> Request:
        """The request with the body read, its route's parameters and the
        server that signed it, if any."""
        return Request(
            method=self.method,
            uri=self.uri,
            path_params=path_params,
            query=urllib.parse.parse_qs(
                self.query_string, keep_blank_values=True, errors="replace"
            ),
            headers=self.headers,
            body=body,
            content=content,
            origin=origin,
        )


@dataclass(frozen=True, slots=True)
class JsonResponse:
    """A handler's answer when 200 with a JSON object is not what it needs."""

    body: Any
    status: int = 200
    headers: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True, slots=True)
class StreamResponse:
    """A handler's answer that is not JSON (media): its bytes, made by
    ``body()`` a piece at a time as they are sent, so that a large file is
    never held whole. ``headers`` should give the Content-Type and, when
    known, the Content-Length."""

    status: int
    headers: Sequence[tuple[str, str]]
    body: Callable[[], AsyncGenerator[bytes, None]] = field(repr=False)


#: A route's handler: gets the request, returns a JSON body (sent with 200)
#: or a :class:`JsonResponse` or :class:`StreamResponse`, or raises a
#: MatrixError.
Handler = Callable[
    [Request], Awaitable[JsonResponse | StreamResponse | Mapping[str, Any] | list[Any]]
]


@dataclass(frozen=True, slots=True)
class Route:
    """One registered route."""

    method: str
    pattern: str
    segments: tuple[str | None, ...]  # None where the pattern has a parameter
    names: tuple[str, ...]
    handler: Handler
    authenticated: bool
    #: The handler checks the nesting of each unit its body holds, so that
    #: one unit nested too deeply fails alone (a ``/send`` transaction's PDUs).
    units_checked: bool = False
    #: Counted by the federation listener's per-origin rate limits. Not
    #: ``/send``, whose sender keeps one transaction in flight and is slowed
    #: by the per-origin queues that take its PDUs.
    rate_limited: bool = True


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The route a request goes to, with its path parameters decoded."""

    route: Route
    params: dict[str, str]


_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Router:
    """Maps method and path pattern to a handler.

    A pattern is a path whose segments are literal text or ``{name}``, which
    matches one whole non-empty segment: ``/_matrix/federation/v1/send/{txn_id}``.
    A request path may end with one extra ``/``, which some servers add
    (Synapse's transaction URIs do).
    """

    _routes: dict[tuple[str | None, ...], dict[str, Route]] = field(default_factory=dict)
    # The routes as a tree of segments (see _candidates), made on first use.
    _tree: _Node | None = None

    def add(
        self,
        method: str,
        pattern: str,
        handler: Handler,
        *,
        authenticated: bool | None = None,
        units_checked: bool = False,
        rate_limited: bool = True,
    ) -> None:
        """Register ``handler`` for ``method`` requests matching ``pattern``.

        ``authenticated`` defaults to True under ``/_matrix/federation/``
        and False elsewhere. ``units_checked`` lifts the nesting limit on
        the body as a whole (:attr:`Route.units_checked`); ``rate_limited``
        False keeps the route out of per-origin rate limits
        (:attr:`Route.rate_limited`). Raises ValueError
        for a malformed pattern or a method and pattern already registered.
        """
        if not pattern.startswith("/"):
            raise ValueError(f"route pattern {pattern!r} must start with '/'")
        segments: list[str | None] = []
        names: list[str] = []
        for part in pattern[1:].split("/"):
            param = _PARAM.fullmatch(part)
            if param:
                if param[1] in names:
                    raise ValueError(f"route pattern {pattern!r} names {param[1]!r} twice")
                names.append(param[1])
                segments.append(None)
            elif "{" in part or "}" in part:
                raise ValueError(f"route pattern {pattern!r} has a malformed parameter {part!r}")
            else:
                segments.append(part)
        method = method.upper()
        by_method = self._routes.setdefault(tuple(segments), {})
        self._tree = None
        if method in by_method:
            raise ValueError(
                f"{method} {pattern} is already routed (as {by_method[method].pattern})"
            )
        if authenticated is None:
            authenticated = pattern.startswith(FEDERATION_PREFIX)
        by_method[method] = Route(
            method,
            pattern,
            tuple(segments),
            tuple(names),
            handler,
            authenticated,
            units_checked,
            rate_limited,
        )

    def route(
        self, method: str, pattern: str, *, authenticated: bool | None = None
    ) -> Callable[[Handler], Handler]:
        """:meth:`add` as a decorator."""

        def register(handler: Handler) -> Handler:
            self.add(method, pattern, handler, authenticated=authenticated)
            return handler

        return register

    def match(self, method: str, path: str) -> RouteMatch:
        """The route for ``method`` and the still percent-encoded ``path``.

        Raises MatrixError: 404 or 405 ``M_UNRECOGNIZED``, or 400
        ``M_INVALID_PARAM`` for a path that does not percent-decode to UTF-8.
        """
        raw = path[1:].split("/") if path.startswith("/") else [path]
        try:
            decoded = [
                urllib.parse.unquote(part, errors="strict") if "%" in part else part for part in raw
            ]
        except UnicodeDecodeError:
            raise MatrixError(
                "the request path does not percent-decode to UTF-8",
                errcode="M_INVALID_PARAM",
                http_status=400,
            ) from None
        candidates = [decoded]
        if len(decoded) > 1 and decoded[-1] == "" and raw[-1] == "":
            candidates.append(decoded[:-1])
        method = method.upper()
        for parts in candidates:
            matching = [
                (segments, by_method)
                for segments, by_method in self._candidates(parts)
                if _segments_match(segments, parts)
            ]
            if not matching:
                continue
            with_method = [entry for entry in matching if method in entry[1]]
            if not with_method:
                allowed = sorted({name for _, by_method in matching for name in by_method})
                raise MatrixError(
                    f"{method} is not supported on this endpoint (only {', '.join(allowed)})",
                    errcode="M_UNRECOGNIZED",
                    http_status=405,
                )
            # Where patterns overlap (``/a/b`` and ``/a/{x}``), literal
            # segments win over parameters, leftmost first.
            segments, by_method = max(
                with_method, key=lambda entry: tuple(want is not None for want in entry[0])
            )
            route = by_method[method]
            values = [part for part, want in zip(parts, segments, strict=True) if want is None]
            return RouteMatch(route, dict(zip(route.names, values, strict=True)))
        raise MatrixError("unrecognized request", errcode="M_UNRECOGNIZED", http_status=404)

    def _candidates(
        self, parts: list[str]
    ) -> list[tuple[tuple[str | None, ...], dict[str, Route]]]:
        """The routes whose segments match ``parts``, found by walking a tree
        of segments: a request looks at the few routes that share its path
        segment by segment, not at each of the client API's hundred-odd.
        """
        tree = self._tree
        if tree is None:
            tree = self._tree = _Node()
            for segments, by_method in self._routes.items():
                node = tree
                for want in segments:
                    if want is None:
                        node.param = node.param or _Node()
                        node = node.param
                    else:
                        node = node.literals.setdefault(want, _Node())
                node.route = (segments, by_method)
        found: list[tuple[tuple[str | None, ...], dict[str, Route]]] = []
        level = [tree]
        for part in parts:
            level = [
                child
                for node in level
                for child in (node.literals.get(part), node.param if part else None)
                if child is not None
            ]
            if not level:
                return found
        found.extend(node.route for node in level if node.route is not None)
        return found

    def routes(self) -> list[tuple[str, str, bool]]:
        """Every (method, pattern, authenticated) registered, for listings and tests."""
        return sorted(
            (route.method, route.pattern, route.authenticated)
            for by_method in self._routes.values()
            for route in by_method.values()
        )


@dataclass(slots=True)
class _Node:
    """A segment of the routes' tree: what may follow it, and the route
    whose last segment it is, if any."""

    literals: dict[str, _Node] = field(default_factory=dict)
    #: The segment where a route has a parameter (which matches any
    #: non-empty segment).
    param: _Node | None = None
    route: tuple[tuple[str | None, ...], dict[str, Route]] | None = None


def _segments_match(segments: tuple[str | None, ...], parts: list[str]) -> bool:
    if len(segments) != len(parts):
        return False
    return all(
        part != "" if want is None else part == want
        for want, part in zip(segments, parts, strict=True)
    )


class Disconnected(Exception):
    """The client went away before its request body arrived."""


async def read_body(receive: Receive, headers: Iterable[tuple[str, str]], limit: int) -> bytes:
    for name, value in headers:
        if name == "content-length" and is_decimal_number(value.strip()) and int(value) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> MatrixError:
    return MatrixError(
        f"the request body is larger than {limit} bytes", errcode="M_TOO_LARGE", http_status=413
    )


def parse_json(body: bytes, *, check_nesting: bool = True) -> Any:
    """A request body decoded; 400 ``M_NOT_JSON`` if it is not JSON, or is
    nested too deeply to be handled (unless ``check_nesting`` is False, for
    a route whose handler checks the units of its body itself).
    """
    try:
        return decode_untrusted_json(body, check_nesting=check_nesting)
    except msgspec.DecodeError as exc:
        raise MatrixError(
            f"the request body is not valid JSON: {exc}", errcode="M_NOT_JSON", http_status=400
        ) from None


_encoder: Final = msgspec.json.Encoder()


Rendered = tuple[int, list[tuple[bytes, bytes]], bytes]


def retry_after_header(error: MatrixError) -> tuple[str, str] | None:
    """The ``Retry-After`` header for a 429 answer: whole seconds, rounded up."""
    if error.errcode != "M_LIMIT_EXCEEDED":
        return None
    retry_after_ms = error.extra.get("retry_after_ms")
    if not isinstance(retry_after_ms, int) or isinstance(retry_after_ms, bool):
        return None
    return ("Retry-After", str(max(0, math.ceil(retry_after_ms / 1000))))


def error_response(error: MatrixError) -> JsonResponse:
    """The answer to a request that failed with ``error``: its JSON and
    status, and for a rate limit the ``Retry-After`` header HTTP clients
    know, beside the spec's ``retry_after_ms``."""
    retry_after = retry_after_header(error)
    return JsonResponse(
        error.to_json(),
        status=error.http_status,
        headers=() if retry_after is None else (retry_after,),
    )


def render(response: JsonResponse) -> Rendered:
    body = _encoder.encode(response.body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    headers.extend(
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers
    )
    return response.status, headers, body


async def run_lifespan(receive: Receive, send: Send) -> None:
    # Nothing to set up or tear down: the homeserver's components have their
    # own lifetimes. Answering keeps the server from logging that the
    # application does not speak the lifespan protocol.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def only_http(scope: Scope, receive: Receive, send: Send) -> bool:
    """Whether ``scope`` is an HTTP request for the application to answer.

    Every application here runs the lifespan protocol alike
    (:func:`run_lifespan`) and serves nothing but HTTP: websockets and any
    future scope types are refused by the server when the application
    returns.
    """
    if scope["type"] == "lifespan":
        await run_lifespan(receive, send)
        return False
    return bool(scope["type"] == "http")


async def send_stream(
    send: Send, response: StreamResponse, extra_headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send a :class:`StreamResponse`, its body a piece at a time.

    Once the head is sent a failure can no longer be answered: it is
    raised, and the server drops the connection, so the client sees a
    response cut short rather than a whole one that is wrong.
    """
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers
    ]
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [*headers, *extra_headers],
        }
    )
    async with aclosing(response.body()) as chunks:
        async for chunk in chunks:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def send_rendered(send: Send, response: Rendered) -> None:
    """Send a whole response made by :func:`render`."""
    status, headers, body = response
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
