"""The federation HTTP server: an ASGI application, its router and X-Matrix auth.

Other homeservers call ``/_matrix/federation/*`` and ``/_matrix/key/*``.
:class:`FederationApp` turns each call into a :class:`Request` for the
handler its :class:`Router` names, and the handler's answer (or the
:class:`~ranvier.errors.MatrixError` it raises) into a JSON response, so a
handler deals in parsed JSON and Matrix errors only, never in ASGI messages.

Every request is checked in the same order, cheapest refusal first:

1. the route: unknown paths are 404 and known paths with another method 405,
   both ``M_UNRECOGNIZED`` as the spec asks;
2. for authenticated routes, the ``Authorization`` header is parsed, and a
   request without one is refused before its body is read;
3. the body is read up to a size limit (413 ``M_TOO_LARGE``) and parsed as
   JSON (400 ``M_NOT_JSON``);
4. the X-Matrix signature is checked with the origin's key, which a
   :class:`KeyLookup` supplies (401 ``M_UNAUTHORIZED`` naming the problem);
5. the handler runs with the authenticated origin in ``request.origin``.

Every ``/_matrix/federation/*`` route is authenticated unless it is
registered with ``authenticated=False``, which only the few endpoints the
spec leaves open (such as ``/version``) use: forgetting the flag fails
closed.

Signature checks run on the event loop, not in a worker thread. Measured
on a two-core machine for a signed transaction of five messages, a check
costs 52 µs inline and 98 µs through
``trio.to_thread.run_sync``, and with 50 requests in flight 53 µs against
103 µs each. A request's one check is smaller than the cost of handing it
over; batches of event signatures are another matter.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec

from ranvier.errors import InvalidSignatureError, MatrixError
from ranvier.protocol.signing import ED25519, VerifyKeyLike
from ranvier.protocol.x_matrix import XMatrixAuthorization, parse_authorization, verify_request

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "FEDERATION_PREFIX",
    "FederationApp",
    "Handler",
    "JsonResponse",
    "KeyLookup",
    "Request",
    "Route",
    "RouteMatch",
    "Router",
]

_logger: Final = logging.getLogger(__name__)

#: Routes under this prefix are authenticated unless registered otherwise.
FEDERATION_PREFIX: Final = "/_matrix/federation/"

#: The body size limit when none is given.
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024

# ASGI's shapes, as loosely typed as the ASGI spec itself.
_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


class KeyLookup(Protocol):
    """Where the server finds other servers' verify keys.

    ``get_verify_key`` returns the key ``key_id`` of ``server_name`` if it is
    known and valid now, fetching it if need be, or None if the server does
    not have such a key. It may raise a
    :class:`~ranvier.errors.MatrixError` when the key cannot be fetched;
    the request is then refused with 401, naming that error.
    """

    async def get_verify_key(self, server_name: str, key_id: str) -> VerifyKeyLike | None: ...


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


@dataclass(frozen=True, slots=True)
class JsonResponse:
    """A handler's answer when 200 with a JSON object is not what it needs."""

    body: Any
    status: int = 200
    headers: Sequence[tuple[str, str]] = ()


#: A route's handler: gets the request, returns a JSON body (sent with 200)
#: or a :class:`JsonResponse`, or raises a MatrixError.
Handler = Callable[[Request], Awaitable[JsonResponse | Mapping[str, Any] | list[Any]]]


@dataclass(frozen=True, slots=True)
class Route:
    """One registered route."""

    method: str
    pattern: str
    segments: tuple[str | None, ...]  # None where the pattern has a parameter
    names: tuple[str, ...]
    handler: Handler
    authenticated: bool


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

    def add(
        self,
        method: str,
        pattern: str,
        handler: Handler,
        *,
        authenticated: bool | None = None,
    ) -> None:
        """Register ``handler`` for ``method`` requests matching ``pattern``.

        ``authenticated`` defaults to True under ``/_matrix/federation/``
        and False elsewhere. Raises ValueError for a malformed pattern or a
        method and pattern already registered.
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
        if method in by_method:
            raise ValueError(
                f"{method} {pattern} is already routed (as {by_method[method].pattern})"
            )
        if authenticated is None:
            authenticated = pattern.startswith(FEDERATION_PREFIX)
        by_method[method] = Route(
            method, pattern, tuple(segments), tuple(names), handler, authenticated
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
            decoded = [urllib.parse.unquote(part, errors="strict") for part in raw]
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
                for segments, by_method in self._routes.items()
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

    def routes(self) -> list[tuple[str, str, bool]]:
        """Every (method, pattern, authenticated) registered, for listings and tests."""
        return sorted(
            (route.method, route.pattern, route.authenticated)
            for by_method in self._routes.values()
            for route in by_method.values()
        )


def _segments_match(segments: tuple[str | None, ...], parts: list[str]) -> bool:
    if len(segments) != len(parts):
        return False
    return all(
        part != "" if want is None else part == want
        for want, part in zip(segments, parts, strict=True)
    )


class _Disconnected(Exception):
    """The client went away before its request body arrived."""


class FederationApp:
    """The ASGI application serving federation and key requests.

    Give it the server's name (what ``destination`` must be), a
    :class:`Router` with the routes to serve (``app.router`` stays open for
    more), and a :class:`KeyLookup` for other servers' keys.
    """

    def __init__(
        self,
        *,
        server_name: str,
        key_lookup: KeyLookup,
        router: Router | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, not {max_body_bytes}")
        self.server_name = server_name
        self.router = router if router is not None else Router()
        self.max_body_bytes = max_body_bytes
        self._key_lookup = key_lookup

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        """The ASGI entry point."""
        if scope["type"] == "lifespan":
            await _run_lifespan(receive, send)
            return
        if scope["type"] != "http":
            # Websockets and any future scope types are not served here;
            # the server refuses them when the application returns.
            return
        response = await self._respond(scope, receive)
        if response is not None:
            status, headers, body = response
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    async def _respond(self, scope: _Scope, receive: _Receive) -> _Rendered | None:
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        query: bytes = scope.get("query_string", b"")
        path = raw_path.decode("latin-1")
        uri = path + ("?" + query.decode("latin-1") if query else "")
        headers = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in scope["headers"]
        ]
        try:
            match = self.router.match(method, path)
            authorizations = _authorizations(headers) if match.route.authenticated else None
            body = await _read_body(receive, headers, self.max_body_bytes)
            content = _parse_json(body) if body else None
            origin = None
            if authorizations is not None:
                origin = await self._authenticate(authorizations, method, uri, content)
            request = Request(
                method=method,
                uri=uri,
                path_params=match.params,
                query=urllib.parse.parse_qs(
                    query.decode("latin-1"), keep_blank_values=True, errors="replace"
                ),
                headers=headers,
                body=body,
                content=content,
                origin=origin,
            )
            result = await match.route.handler(request)
            return _render(result if isinstance(result, JsonResponse) else JsonResponse(result))
        except _Disconnected:
            return None
        except MatrixError as exc:
            return _render(JsonResponse(exc.to_json(), status=exc.http_status))
        except Exception:
            # A bug, not the caller's fault: answer 500 and leave the details
            # in the log rather than in the response.
            _logger.exception("%s %s failed", method, path)
            return _render(
                JsonResponse({"errcode": "M_UNKNOWN", "error": "internal server error"}, status=500)
            )

    async def _authenticate(
        self,
        authorizations: list[XMatrixAuthorization],
        method: str,
        uri: str,
        content: Any,
    ) -> str:
        # Every header must hold a valid signature by the same origin: a
        # server may sign with several keys, and each must stand.
        origin = authorizations[0].origin
        for authorization in authorizations:
            if authorization.origin != origin:
                raise InvalidSignatureError(
                    f"the request's Authorization headers name different origins"
                    f" ({origin!r} and {authorization.origin!r})"
                )
            # verify_request checks the destination too; checking it here
            # first spares a key fetch for a request that is refused anyway.
            destination = authorization.destination
            if destination is not None and destination != self.server_name:
                raise InvalidSignatureError(
                    f"the request is addressed to {destination!r}, not to this server"
                    f" ({self.server_name!r})"
                )
            algorithm, _, _ = authorization.key.partition(":")
            if algorithm != ED25519:
                raise InvalidSignatureError(
                    f"the request is signed with key {authorization.key!r}, of an unsupported"
                    " algorithm"
                )
            try:
                verify_key = await self._key_lookup.get_verify_key(origin, authorization.key)
            except MatrixError as exc:
                raise InvalidSignatureError(
                    f"cannot get key {authorization.key} of {origin}: {exc.message}"
                ) from exc
            if verify_key is None:
                raise InvalidSignatureError(f"{origin} has no known key {authorization.key}")
            verify_request(
                authorization,
                method=method,
                uri=uri,
                our_server_name=self.server_name,
                verify_key=verify_key,
                content=content,
            )
        return origin


def _authorizations(headers: Iterable[tuple[str, str]]) -> list[XMatrixAuthorization]:
    values = [value for name, value in headers if name == "authorization"]
    if not values:
        raise InvalidSignatureError(
            "the request has no Authorization header; federation requests must be signed (X-Matrix)"
        )
    return [parse_authorization(value) for value in values]


async def _read_body(receive: _Receive, headers: Iterable[tuple[str, str]], limit: int) -> bytes:
    for name, value in headers:
        if name == "content-length" and value.strip().isdigit() and int(value) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
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


def _parse_json(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise MatrixError(
            f"the request body is not valid JSON: {exc}", errcode="M_NOT_JSON", http_status=400
        ) from None


_encoder: Final = msgspec.json.Encoder()


_Rendered = tuple[int, list[tuple[bytes, bytes]], bytes]


def _render(response: JsonResponse) -> _Rendered:
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


async def _run_lifespan(receive: _Receive, send: _Send) -> None:
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
