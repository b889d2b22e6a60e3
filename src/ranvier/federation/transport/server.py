"""The federation HTTP server: an ASGI application, its router and X-Matrix auth.

Other homeservers call ``/_matrix/federation/*`` and ``/_matrix/key/*``.
:class:`FederationApp` turns each call into a :class:`Request` for the
handler its :class:`Router` names, and the handler's answer (or the
:class:`~ranvier.errors.MatrixError` it raises) into a JSON response, so a
handler deals in parsed JSON and Matrix errors only, never in ASGI messages.

Every request is checked in the same order, cheapest refusal first, and
as much as can be decided from the headers is decided before the body is
read, so that a refusal costs the headers alone:

1. the route: unknown paths are 404 and known paths with another method 405,
   both ``M_UNRECOGNIZED`` as the spec asks;
2. for authenticated routes, the ``Authorization`` headers are parsed and
   checked as far as they can be without the body (one origin, this
   server the destination, a supported key algorithm), and a request
   without one is refused (401 ``M_UNAUTHORIZED``);
3. with a ``rate_limiter``, a request naming an origin that is over its
   limit is refused with 429 ``M_LIMIT_EXCEEDED``
   (:meth:`~ranvier.federation.transport.ratelimit.FederationRateLimiter.check`).
   The origin is only claimed at this point, so nothing is counted
   against it: what is refused here was made over the limit by requests
   whose signatures held, and a forger can spend nobody's allowance;
4. the body is read up to a size limit (413 ``M_TOO_LARGE``) and parsed as
   JSON (400 ``M_NOT_JSON``);
5. the X-Matrix signature, which covers the body, is checked with the
   origin's key, which a :class:`KeyLookup` supplies (401
   ``M_UNAUTHORIZED`` naming the problem);
6. the handler runs with the authenticated origin in ``request.origin``,
   after ``on_authenticated`` has heard of it: a server that signs a
   request is up, which the federation sender wants to know of a server it
   is backing off;
7. with a ``rate_limiter``, the handler runs when the origin's limits let
   it (:mod:`ranvier.federation.transport.ratelimit`): the request counts
   against its now proven origin, and may be delayed, wait its turn, or be
   refused with 429 ``M_LIMIT_EXCEEDED``. Every signed request counts but
   ``/send`` (see :attr:`ranvier.web.Route.rate_limited`: its PDUs' queues
   slow a flood instead); the unsigned ones (``/version``, the key server)
   have no origin to count against.

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
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from ranvier.errors import InvalidSignatureError, MatrixError
from ranvier.federation.transport.ratelimit import FederationRateLimiter
from ranvier.metrics import note_route
from ranvier.protocol.signing import ED25519, VerifyKeyLike
from ranvier.protocol.x_matrix import XMatrixAuthorization, parse_authorization, verify_request
from ranvier.web import (
    FEDERATION_PREFIX,
    Disconnected,
    Handler,
    JsonResponse,
    Receive,
    Rendered,
    Request,
    RequestHead,
    Route,
    RouteMatch,
    Router,
    Scope,
    Send,
    StreamResponse,
    error_response,
    only_http,
    parse_json,
    read_body,
    render,
    send_rendered,
    send_stream,
)

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

#: The body size limit when none is given.
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024


class KeyLookup(Protocol):
    """Where the server finds other servers' verify keys.

    ``get_verify_key`` returns the key ``key_id`` of ``server_name`` if it is
    known and valid now, fetching it if need be, or None if the server does
    not have such a key. It may raise a
    :class:`~ranvier.errors.MatrixError` when the key cannot be fetched;
    the request is then refused with 401, naming that error.
    """

    async def get_verify_key(self, server_name: str, key_id: str) -> VerifyKeyLike | None: ...


class FederationApp:
    """The ASGI application serving federation and key requests.

    Give it the server's name (what ``destination`` must be), a
    :class:`Router` with the routes to serve (``app.router`` stays open for
    more), and a :class:`KeyLookup` for other servers' keys.
    ``on_authenticated`` is called with the origin of each request whose
    signature holds, before its handler runs; it must not wait or raise.
    ``rate_limiter`` holds each origin to its limits (none without it).
    """

    def __init__(
        self,
        *,
        server_name: str,
        key_lookup: KeyLookup,
        router: Router | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        on_authenticated: Callable[[str], None] | None = None,
        rate_limiter: FederationRateLimiter | None = None,
    ) -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, not {max_body_bytes}")
        self.server_name = server_name
        self.router = router if router is not None else Router()
        self.max_body_bytes = max_body_bytes
        self._key_lookup = key_lookup
        self.on_authenticated = on_authenticated
        self.rate_limiter = rate_limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if not await only_http(scope, receive, send):
            return
        response = await self._respond(scope, receive)
        if isinstance(response, StreamResponse):
            await send_stream(send, response)
        elif response is not None:
            await send_rendered(send, response)

    async def _respond(self, scope: Scope, receive: Receive) -> Rendered | StreamResponse | None:
        head = RequestHead.from_scope(scope)
        method, path, uri = head.method, head.path, head.uri
        try:
            match = self.router.match(method, path)
            note_route(scope, match.route)
            authorizations = _authorizations(head.headers) if match.route.authenticated else None
            if authorizations is not None:
                claimed = self._claimed_origin(authorizations)
                if self.rate_limiter is not None and match.route.rate_limited:
                    self.rate_limiter.check(claimed)
            body = await read_body(receive, head.headers, self.max_body_bytes)
            units_checked = match.route.units_checked
            content = parse_json(body, check_nesting=not units_checked) if body else None
            origin = None
            if authorizations is not None:
                origin = await self._authenticate(authorizations, method, uri, content, body)
                if self.on_authenticated is not None:
                    self.on_authenticated(origin)
            request = head.request(
                path_params=match.params, body=body, content=content, origin=origin
            )
            if origin is not None and self.rate_limiter is not None and match.route.rate_limited:
                async with self.rate_limiter.limit(origin):
                    result = await match.route.handler(request)
            else:
                result = await match.route.handler(request)
            if isinstance(result, StreamResponse):
                return result
            return render(result if isinstance(result, JsonResponse) else JsonResponse(result))
        except Disconnected:
            return None
        except MatrixError as exc:
            return render(error_response(exc))
        except Exception:
            # A bug, not the caller's fault: answer 500 and leave the details
            # in the log rather than in the response.
            _logger.exception("%s %s failed", method, path)
            return render(
                JsonResponse({"errcode": "M_UNKNOWN", "error": "internal server error"}, status=500)
            )

    def _claimed_origin(self, authorizations: list[XMatrixAuthorization]) -> str:
        """The origin the headers name, once each header has passed every
        check that needs no key and no body."""
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
            # first spares a key fetch and a body for a request that is
            # refused anyway.
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
        return origin

    async def _authenticate(
        self,
        authorizations: list[XMatrixAuthorization],
        method: str,
        uri: str,
        content: Any,
        body: bytes,
    ) -> str:
        """The origin, once every header's signature holds
        (:meth:`_claimed_origin` has passed them)."""
        origin = authorizations[0].origin
        for authorization in authorizations:
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
                raw_content=body or None,
            )
        return origin


def _authorizations(headers: Iterable[tuple[str, str]]) -> list[XMatrixAuthorization]:
    values = [value for name, value in headers if name == "authorization"]
    if not values:
        raise InvalidSignatureError(
            "the request has no Authorization header; federation requests must be signed (X-Matrix)"
        )
    return [parse_authorization(value) for value in values]
