"""The content repository's client endpoints: ``/_matrix/media/*`` and
``/_matrix/client/v1/media/*``.

Media are not JSON, and an upload may be far larger than any other client
request, so these routes have an ASGI application of their own,
:class:`MediaApp`, in front of the client API's
(:class:`~ranvier.api.app.ClientApp`), which gets every other path. Here
a request body is streamed to disk as it arrives, bounded by the media
limit rather than the client API's, and a download is streamed from disk.

Served: ``POST /_matrix/media/v3/upload``, ``POST /_matrix/media/v1/create``
with ``PUT /_matrix/media/v3/upload/{serverName}/{mediaId}``, download,
thumbnail and config under ``/_matrix/client/v1/media`` (access token
required) and under the deprecated ``/_matrix/media/v3`` (download and
thumbnail without a token, as older clients expect). ``r0`` paths are the
``v3`` ones. URL previews (``preview_url``) are served under both, with a
token, when the server has a previewer; without one they are 404
``M_UNRECOGNIZED``, as an unknown endpoint is. Uploads and ``create``
count against the ``media_create`` rate limit (:mod:`ranvier.api.ratelimit`)
before any byte of the body is read.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Final

from ranvier.api.app import CORS_HEADERS
from ranvier.api.auth import Auth
from ranvier.api.ratelimit import RouteLimits
from ranvier.core.media import MediaContent, MediaRepository
from ranvier.core.url_previews import UrlPreviewer
from ranvier.errors import MatrixError
from ranvier.metrics import note_route
from ranvier.protocol.media import (
    SECURITY_HEADERS,
    content_disposition,
    invalid_param,
    thumbnail_dimension_param,
    thumbnail_method_param,
    timeout_ms_param,
)
from ranvier.protocol.numbers import is_decimal_number
from ranvier.web import (
    Disconnected,
    JsonResponse,
    Receive,
    Request,
    RequestHead,
    Router,
    Scope,
    Send,
    StreamResponse,
    error_response,
    render,
    send_rendered,
    send_stream,
)

__all__ = ["MEDIA_PREFIXES", "MediaApp"]

_logger: Final = logging.getLogger(__name__)

#: The paths :class:`MediaApp` answers; the rest go to the client API.
MEDIA_PREFIXES: Final = ("/_matrix/media/", "/_matrix/client/v1/media/")

_LEGACY: Final = ("/_matrix/media/v3", "/_matrix/media/r0")
_AUTHENTICATED: Final = "/_matrix/client/v1/media"

#: An ASGI application (the client API's, behind this one).
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_MediaHandler = Callable[[Request, Receive], Awaitable[JsonResponse | StreamResponse]]


class MediaApp:
    """The ASGI application for media paths, handing any other request
    (and CORS preflights, and the lifespan protocol) to ``fallback``.
    ``rate_limits`` limits the routes its table names (none without it)."""

    def __init__(
        self,
        *,
        media: MediaRepository,
        auth: Auth,
        fallback: AsgiApp,
        previews: UrlPreviewer | None = None,
        rate_limits: RouteLimits | None = None,
    ) -> None:
        self._media = media
        self._rate_limits = rate_limits
        self._previews = previews
        self._auth = auth
        self._fallback = fallback
        # The router matches paths (404 and 405 as the client API answers
        # them); the handlers, which need the request body's stream, are
        # kept beside it by method and pattern.
        self._router = Router()
        self._handlers: dict[tuple[str, str], _MediaHandler] = {}
        for prefix in _LEGACY:
            self._add("POST", f"{prefix}/upload", self._upload)
            self._add("PUT", f"{prefix}/upload/{{serverName}}/{{mediaId}}", self._upload_to)
            self._add_reads(prefix, authenticated=False)
        self._add("POST", "/_matrix/media/v1/create", self._create)
        self._add_reads(_AUTHENTICATED, authenticated=True)

    def _add_reads(self, prefix: str, *, authenticated: bool) -> None:
        download = self._download if authenticated else self._legacy_download
        thumbnail = self._thumbnail if authenticated else self._legacy_thumbnail
        self._add("GET", f"{prefix}/download/{{serverName}}/{{mediaId}}", download)
        self._add("GET", f"{prefix}/download/{{serverName}}/{{mediaId}}/{{fileName}}", download)
        self._add("GET", f"{prefix}/thumbnail/{{serverName}}/{{mediaId}}", thumbnail)
        self._add("GET", f"{prefix}/config", self._config)
        self._add("GET", f"{prefix}/preview_url", self._preview_url)

    def routes(self) -> list[tuple[str, str, bool]]:
        """Every (method, pattern, authenticated) this app answers, as
        :meth:`ranvier.web.Router.routes` lists them."""
        return self._router.routes()

    def _add(self, method: str, pattern: str, handler: _MediaHandler) -> None:
        self._router.add(method, pattern, _never_called)
        self._handlers[(method, pattern)] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"
            or not str(scope["path"]).startswith(MEDIA_PREFIXES)
        ):
            await self._fallback(scope, receive, send)
            return
        head = RequestHead.from_scope(scope)
        try:
            match = self._router.match(head.method, head.path)
            note_route(scope, match.route, api="media")
            request = head.request(path_params=match.params, body=b"", content=None, origin=None)
            handler = self._handlers[(match.route.method, match.route.pattern)]
            if self._rate_limits is not None:
                await self._rate_limits.apply(match.route, request, scope.get("client"))
            response = await handler(request, receive)
        except Disconnected:
            return
        except MatrixError as exc:
            response = error_response(exc)
        except Exception:
            _logger.exception("%s %s failed", head.method, head.path)
            response = JsonResponse(
                {"errcode": "M_UNKNOWN", "error": "internal server error"}, status=500
            )
        if isinstance(response, StreamResponse):
            await send_stream(send, response, CORS_HEADERS)
        else:
            status, headers, body = render(response)
            await send_rendered(send, (status, [*headers, *CORS_HEADERS], body))

    # Uploads.

    async def _upload(self, request: Request, receive: Receive) -> JsonResponse:
        requester = await self._auth.get_user(request)
        async with aclosing(_body(receive)) as body:
            uri = await self._media.upload(
                requester.user_id,
                body,
                content_type=_header(request, "content-type"),
                filename=request.query_value("filename"),
                declared_length=_content_length(request),
            )
        return JsonResponse({"content_uri": uri})

    async def _create(self, request: Request, receive: Receive) -> JsonResponse:
        requester = await self._auth.get_user(request)
        uri, expires_at = await self._media.create(requester.user_id)
        return JsonResponse({"content_uri": uri, "unused_expires_at": expires_at})

    async def _upload_to(self, request: Request, receive: Receive) -> JsonResponse:
        requester = await self._auth.get_user(request)
        async with aclosing(_body(receive)) as body:
            await self._media.upload_to(
                requester.user_id,
                request.path_params["serverName"],
                request.path_params["mediaId"],
                body,
                content_type=_header(request, "content-type"),
                filename=request.query_value("filename"),
                declared_length=_content_length(request),
            )
        return JsonResponse({})

    # Downloads.

    async def _download(self, request: Request, receive: Receive) -> StreamResponse:
        await self._auth.get_user(request)
        return await self._serve_download(request, allow_remote=True)

    async def _legacy_download(self, request: Request, receive: Receive) -> StreamResponse:
        allow_remote = _boolean(request, "allow_remote", default=True)
        return await self._serve_download(request, allow_remote=allow_remote)

    async def _serve_download(self, request: Request, *, allow_remote: bool) -> StreamResponse:
        content = await self._media.download(
            request.path_params["serverName"],
            request.path_params["mediaId"],
            timeout_ms=timeout_ms_param(request.query_value("timeout_ms")),
            allow_remote=allow_remote,
        )
        filename = request.path_params.get("fileName") or content.filename
        return _served(content, content_disposition(content.content_type, filename))

    async def _thumbnail(self, request: Request, receive: Receive) -> StreamResponse:
        await self._auth.get_user(request)
        return await self._serve_thumbnail(request, allow_remote=True)

    async def _legacy_thumbnail(self, request: Request, receive: Receive) -> StreamResponse:
        allow_remote = _boolean(request, "allow_remote", default=True)
        return await self._serve_thumbnail(request, allow_remote=allow_remote)

    async def _serve_thumbnail(self, request: Request, *, allow_remote: bool) -> StreamResponse:
        thumbnail_method = thumbnail_method_param(request.query_value("method"))
        _boolean(request, "animated", default=False)
        content = await self._media.thumbnail(
            request.path_params["serverName"],
            request.path_params["mediaId"],
            width=thumbnail_dimension_param("width", request.query_value("width")),
            height=thumbnail_dimension_param("height", request.query_value("height")),
            method=thumbnail_method,
            timeout_ms=timeout_ms_param(request.query_value("timeout_ms")),
            allow_remote=allow_remote,
        )
        extension = content.content_type.rpartition("/")[2] or "bin"
        return _served(content, f'inline; filename="thumbnail.{extension}"')

    async def _config(self, request: Request, receive: Receive) -> JsonResponse:
        await self._auth.get_user(request)
        return JsonResponse({"m.upload.size": self._media.max_upload_bytes})

    # URL previews.

    async def _preview_url(self, request: Request, receive: Receive) -> JsonResponse:
        requester = await self._auth.get_user(request)
        if self._previews is None:
            raise MatrixError(
                "URL previews are turned off on this server",
                errcode="M_UNRECOGNIZED",
                http_status=404,
            )
        url = request.query_value("url")
        if not url:
            raise MatrixError(
                "the url parameter is required", errcode="M_MISSING_PARAM", http_status=400
            )
        # ``ts`` asks for the preview as of a time; the newest kept is
        # answered, which the spec allows.
        ts = request.query_value("ts")
        if ts is not None and not is_decimal_number(ts.removeprefix("-")):
            raise invalid_param(f"ts must be an integer, not {ts!r}")
        return JsonResponse(await self._previews.preview(requester.user_id, url))


def _served(content: MediaContent, disposition: str) -> StreamResponse:
    return StreamResponse(
        status=200,
        headers=(
            ("content-type", content.content_type),
            ("content-length", str(content.size)),
            ("content-disposition", disposition),
            *SECURITY_HEADERS,
        ),
        body=content.chunks,
    )


async def _body(receive: Receive) -> AsyncGenerator[bytes, None]:
    """The request body as it arrives."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk: bytes = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _header(request: Request, name: str) -> str | None:
    return next((value for key, value in request.headers if key == name), None) or None


def _content_length(request: Request) -> int | None:
    value = (_header(request, "content-length") or "").strip()
    return int(value) if is_decimal_number(value) else None


def _boolean(request: Request, name: str, *, default: bool) -> bool:
    value = request.query_value(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise invalid_param(f"{name} must be true or false, not {value!r}")
    return value == "true"


async def _never_called(request: Request) -> JsonResponse:
    raise AssertionError("media routes are dispatched by MediaApp")
