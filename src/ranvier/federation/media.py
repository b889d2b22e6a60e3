"""Media over federation: serving ours to other servers, and fetching
theirs for our users.

Both sides speak the server-server spec's media endpoints
(``/_matrix/federation/v1/media/download/{mediaId}`` and
``.../thumbnail/{mediaId}``): a signed GET answered with
``multipart/mixed``, a JSON part (``{}``) then the media, or a
``Location`` to fetch the media from. A server without these endpoints
(answering 404 or 405 ``M_UNRECOGNIZED``) is asked the deprecated
``/_matrix/media/v3/download`` instead, which answers the bytes alone.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Final

import httpx

from ranvier.core.media import FetchedMedia, MediaContent, MediaRepository, MediaWriter
from ranvier.errors import MatrixError
from ranvier.protocol.media import (
    MultipartReader,
    content_disposition,
    disposition_filename,
    multipart_head,
    multipart_tail,
    thumbnail_dimension_param,
    thumbnail_method_param,
    timeout_ms_param,
)
from ranvier.web import Request, StreamResponse

from .transport.client import (
    FederationError,
    FederationHttpClient,
    FederationRequestError,
    FederationResponseError,
)
from .transport.server import Router

__all__ = ["FederationMediaClient", "add_media_routes"]

_PREFIX: Final = "/_matrix/federation/v1/media"
#: Room for the multipart framing around the media in an answer's limit.
_FRAMING_BYTES: Final = 64 * 1024


def add_media_routes(router: Router, *, media: MediaRepository) -> None:
    """Serve our media (never other servers', which they hold themselves)."""

    async def download(request: Request) -> StreamResponse:
        content = await media.download(
            media.server_name,
            request.path_params["mediaId"],
            timeout_ms=timeout_ms_param(request.query_value("timeout_ms")),
            allow_remote=False,
        )
        return _multipart(content, content_disposition(content.content_type, content.filename))

    async def thumbnail(request: Request) -> StreamResponse:
        thumbnail_method = thumbnail_method_param(request.query_value("method"))
        content = await media.thumbnail(
            media.server_name,
            request.path_params["mediaId"],
            width=thumbnail_dimension_param("width", request.query_value("width")),
            height=thumbnail_dimension_param("height", request.query_value("height")),
            method=thumbnail_method,
            timeout_ms=timeout_ms_param(request.query_value("timeout_ms")),
            allow_remote=False,
        )
        extension = content.content_type.rpartition("/")[2] or "bin"
        return _multipart(content, f'inline; filename="thumbnail.{extension}"')

    router.add("GET", f"{_PREFIX}/download/{{mediaId}}", download)
    router.add("GET", f"{_PREFIX}/thumbnail/{{mediaId}}", thumbnail)


def _multipart(content: MediaContent, disposition: str) -> StreamResponse:
    boundary = secrets.token_hex(16)
    head = multipart_head(boundary, content.content_type, disposition)
    tail = multipart_tail(boundary)

    async def body() -> AsyncGenerator[bytes, None]:
        yield head
        chunks = content.chunks()
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()
        yield tail

    return StreamResponse(
        status=200,
        headers=(
            ("content-type", f"multipart/mixed; boundary={boundary}"),
            ("content-length", str(len(head) + content.size + len(tail))),
        ),
        body=body,
    )


class FederationMediaClient:
    """Fetches other servers' media for :class:`~ranvier.core.media.MediaRepository`,
    handing the bytes on as they arrive."""

    def __init__(self, client: FederationHttpClient) -> None:
        self._client = client

    async def fetch(
        self, origin: str, media_id: str, *, max_bytes: int, timeout_ms: int, write: MediaWriter
    ) -> FetchedMedia:
        """The media ``mxc://origin/media_id`` as ``origin`` serves it,
        its bytes given to ``write``.

        Raises MatrixError: 404 ``M_NOT_FOUND`` when ``origin`` says it has
        no such media, 504 ``M_NOT_YET_UPLOADED`` when it is still to be
        uploaded there, 502 ``M_TOO_LARGE`` for an answer over
        ``max_bytes`` and its framing, and 502 ``M_UNKNOWN`` when no usable
        answer came; and what ``write`` raises.
        """
        quoted = urllib.parse.quote(media_id, safe="")
        try:
            try:
                return await self._client.request_streamed(
                    "GET",
                    origin,
                    f"{_PREFIX}/download/{quoted}",
                    functools.partial(self._read_answer, write=write, max_bytes=max_bytes),
                    query={"timeout_ms": timeout_ms},
                    max_response_bytes=max_bytes + _FRAMING_BYTES,
                )
            except FederationRequestError as exc:
                if exc.status not in (404, 405) or exc.errcode not in (None, "M_UNRECOGNIZED"):
                    raise
                server = urllib.parse.quote(origin, safe="")
                return await self._client.request_streamed(
                    "GET",
                    origin,
                    f"/_matrix/media/v3/download/{server}/{quoted}",
                    functools.partial(_read_plain, write=write, part=None),
                    query={"allow_remote": "false", "timeout_ms": timeout_ms},
                    max_response_bytes=max_bytes,
                )
        except FederationRequestError as exc:
            raise _refused(origin, exc) from None
        except FederationResponseError as exc:
            raise MatrixError(
                f"the media is too large, or the answer unusable: {exc}",
                errcode="M_TOO_LARGE",
                http_status=502,
            ) from None
        except FederationError as exc:
            raise _bad_gateway(f"cannot fetch the media from {origin}: {exc}") from None
        except ValueError as exc:
            raise _bad_gateway(f"{origin} answered media that cannot be read: {exc}") from None

    async def _read_answer(
        self,
        headers: httpx.Headers,
        chunks: AsyncIterator[bytes],
        *,
        write: MediaWriter,
        max_bytes: int,
    ) -> FetchedMedia:
        """Read a multipart answer as it arrives: the media part's headers,
        then its bytes straight to ``write``, or the answer its
        ``Location`` gives."""
        reader = MultipartReader(headers.get("content-type"))
        head: list[bytes] = []
        async for chunk in chunks:
            head.append(reader.feed(chunk))
            if reader.headers is not None:
                break
        else:
            reader.finish()
        part = reader.headers
        assert part is not None  # or finish raised
        if reader.location is not None:
            # The rest is the closing delimiter: read to the end, so that
            # the answer is checked whole and its stream finished.
            async for chunk in chunks:
                reader.feed(chunk)
            reader.finish()
            return await self._client.fetch_url(
                reader.location,
                functools.partial(_read_plain, write=write, part=part),
                max_response_bytes=max_bytes,
            )

        async def media() -> AsyncGenerator[bytes, None]:
            for piece in head:
                if piece:
                    yield piece
            async for chunk in chunks:
                piece = reader.feed(chunk)
                if piece:
                    yield piece
            reader.finish()

        async with contextlib.aclosing(media()) as pieces:
            size = await write(pieces)
        return FetchedMedia(
            content_type=part.get("content-type"),
            filename=disposition_filename(part.get("content-disposition")),
            size=size,
        )


async def _read_plain(
    headers: httpx.Headers,
    chunks: AsyncIterator[bytes],
    *,
    write: MediaWriter,
    part: Mapping[str, str] | None,
) -> FetchedMedia:
    """An answer that is the media itself; its headers say what it is,
    or else those of the part that pointed to it."""
    size = await write(chunks)
    fallback = part or {}
    return FetchedMedia(
        content_type=headers.get("content-type") or fallback.get("content-type"),
        filename=disposition_filename(headers.get("content-disposition"))
        or disposition_filename(fallback.get("content-disposition")),
        size=size,
    )


def _refused(origin: str, exc: FederationRequestError) -> MatrixError:
    if exc.status == 404:
        return MatrixError(f"{origin} has no such media", errcode="M_NOT_FOUND", http_status=404)
    if exc.errcode == "M_NOT_YET_UPLOADED":
        return MatrixError(
            f"the content has not been uploaded to {origin} yet",
            errcode="M_NOT_YET_UPLOADED",
            http_status=504,
        )
    if exc.errcode == "M_TOO_LARGE":
        return MatrixError(
            f"{origin} says the media is too large", errcode="M_TOO_LARGE", http_status=502
        )
    return _bad_gateway(f"cannot fetch the media from {origin}: {exc}")


def _bad_gateway(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_UNKNOWN", http_status=502)
