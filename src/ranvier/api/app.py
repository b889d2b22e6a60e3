"""The client-server API's HTTP application.

Clients call ``/_matrix/client/*``. :class:`ClientApp` turns each call into a
:class:`~ranvier.web.Request` for the handler its :class:`~ranvier.web.Router`
names and the handler's answer, or the :class:`~ranvier.errors.MatrixError`
it raises, into a JSON response.

Unlike federation requests, which servers sign, client requests carry an
access token, and which routes need one is the handlers' business: a
handler that needs a user calls :meth:`ranvier.api.auth.Auth.get_user`
first. The test suite checks that every route but the few the spec leaves
open refuses a request without a token.

Web clients call from another origin, so every response carries the CORS
headers the spec asks for, and a preflight ``OPTIONS`` is answered for any
path without reaching a handler.

Rate limits are applied here, before the handler, to the routes that
:class:`~ranvier.api.ratelimit.RouteLimits` names; every ``429
M_LIMIT_EXCEEDED``, whether from a limit or raised by a handler, carries a
``Retry-After`` header beside its ``retry_after_ms``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Final

from ranvier.api.ratelimit import RouteLimits
from ranvier.errors import MatrixError
from ranvier.metrics import note_route
from ranvier.web import (
    Disconnected,
    JsonResponse,
    Receive,
    Rendered,
    RequestHead,
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
)

__all__ = [
    "CLIENT_PREFIX",
    "CLIENT_VERSION_PREFIXES",
    "CORS_HEADERS",
    "DEFAULT_MAX_CLIENT_BODY_BYTES",
    "ClientApp",
]

_logger: Final = logging.getLogger(__name__)

CLIENT_PREFIX: Final = "/_matrix/client"
#: The prefixes of the endpoints whose shape did not change from ``r0`` to
#: ``v3``, served under both so that older clients keep working.
CLIENT_VERSION_PREFIXES: Final = (f"{CLIENT_PREFIX}/v3", f"{CLIENT_PREFIX}/r0")

#: Requests are JSON of events and their content (at most 64 KiB each) and
#: small parameter objects; media are not served here.
DEFAULT_MAX_CLIENT_BODY_BYTES: Final = 1024 * 1024

#: What the spec's "Web Browser Clients" section asks every response to carry.
CORS_HEADERS: Final = (
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"GET, POST, PUT, DELETE, OPTIONS"),
    (
        b"access-control-allow-headers",
        b"X-Requested-With, Content-Type, Authorization",
    ),
)


class ClientApp:
    """The ASGI application serving ``/_matrix/client`` (and the few other
    paths clients call, such as ``/.well-known/matrix/client``).

    ``router`` holds the routes (``app.router`` stays open for more);
    ``rate_limits``, when given, says which of them are limited and how.
    """

    def __init__(
        self,
        *,
        router: Router | None = None,
        max_body_bytes: int = DEFAULT_MAX_CLIENT_BODY_BYTES,
        rate_limits: RouteLimits | None = None,
    ) -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, not {max_body_bytes}")
        self.router = router if router is not None else Router()
        self.max_body_bytes = max_body_bytes
        self.rate_limits = rate_limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if not await only_http(scope, receive, send):
            return
        response = await self._respond(scope, receive)
        if response is not None:
            status, headers, body = response
            await send_rendered(send, (status, [*headers, *CORS_HEADERS], body))

    async def _respond(self, scope: Scope, receive: Receive) -> Rendered | None:
        head = RequestHead.from_scope(scope)
        method, path = head.method, head.path
        if method == "OPTIONS":
            # A CORS preflight: the headers added to every response are the
            # whole answer.
            return render(JsonResponse({}))
        try:
            match = self.router.match(method, path)
            note_route(scope, match.route)
            body = await read_body(receive, head.headers, self.max_body_bytes)
            content = parse_json(body) if body else None
            request = head.request(
                path_params=match.params, body=body, content=content, origin=None
            )
            if self.rate_limits is not None:
                await self.rate_limits.apply(match.route, request, scope.get("client"))
            result = await match.route.handler(request)
            if isinstance(result, StreamResponse):
                # A small page or a redirect (single sign-on), not media.
                return await _gathered(result.status, result.headers, result.body)
            return render(result if isinstance(result, JsonResponse) else JsonResponse(result))
        except Disconnected:
            return None
        except MatrixError as exc:
            return render(error_response(exc))
        except Exception:
            _logger.exception("%s %s failed", method, path)
            return render(
                JsonResponse({"errcode": "M_UNKNOWN", "error": "internal server error"}, status=500)
            )


async def _gathered(
    status: int,
    headers: Sequence[tuple[str, str]],
    body: Callable[[], AsyncGenerator[bytes, None]],
) -> Rendered:
    chunks = [chunk async for chunk in body()]
    encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    return status, encoded, b"".join(chunks)
