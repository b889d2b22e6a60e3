"""URL previews: what a page linked in a message looks like, for clients to
show as a card (``GET /_matrix/client/v1/media/preview_url``).

A preview is the page's OpenGraph properties
(:func:`ranvier.protocol.html_preview.html_preview`), its image fetched and
stored as media of this server so that clients load it from here, as
``og:image`` (an ``mxc://`` URI), ``og:image:type``, ``og:image:width``,
``og:image:height`` and ``matrix:image:size``. A URL that is an image is
previewed as that image. Anything else previews as ``{}``.

Invariants
----------

* **Fetches go through a** :class:`UrlSource` **only**, which keeps users
  out of the server's network (:mod:`ranvier.url_fetcher`); the page's
  image is fetched through it too, as is anything a page names.
* **One fetch per URL at a time.** Requests for a URL being previewed wait
  for that preview and answer with it, or with its failure; a preview is
  kept (:meth:`PreviewRows.store`) for :data:`PREVIEW_LIFETIME_MS` and
  served from there. Failures are not kept.
* **Bounded work**: at most :data:`MAX_CONCURRENT_PREVIEWS` previews are
  made at once, each holding at most the fetcher's byte limit of page or
  image; the HTML is parsed in a worker thread.
* **A page's image is optional.** When it cannot be fetched or stored the
  preview is made without it, not refused.
"""

from __future__ import annotations

import io
import logging
import time
import urllib.parse
import warnings
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import trio

from ranvier.errors import MatrixError

__all__ = [
    "MAX_CONCURRENT_PREVIEWS",
    "PREVIEW_LIFETIME_MS",
    "FetchedUrl",
    "PreviewImageStore",
    "PreviewRows",
    "UrlPreviewer",
    "UrlSource",
]

_logger: Final = logging.getLogger(__name__)

#: How long a preview is served before the page is fetched again.
PREVIEW_LIFETIME_MS: Final = 60 * 60 * 1000
#: Previews made at once; more wait their turn.
MAX_CONCURRENT_PREVIEWS: Final = 8
_HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})


@dataclass(frozen=True, slots=True)
class FetchedUrl:
    """A URL's answer: where it came from after redirects, its type as
    sent, and its body (None when not read)."""

    url: str
    content_type: str | None
    body: bytes | None = field(repr=False)


class UrlSource(Protocol):
    """Fetches a URL users named (:class:`ranvier.url_fetcher.UrlFetcher`).

    Reads the body only when ``wanted`` accepts the answer's Content-Type.
    Raises MatrixError as the client should see it: 400 for a URL that is
    not http or https, 403 for an address the server may not fetch from,
    502 for a page that cannot be had.
    """

    async def fetch(self, url: str, *, wanted: Callable[[str | None], bool]) -> FetchedUrl: ...


class PreviewRows(Protocol):
    """Where previews are kept (:class:`ranvier.storage.url_previews.UrlPreviewStorage`)."""

    async def store(
        self, url: str, preview: dict[str, Any], *, made_ts: int, expires_ts: int
    ) -> None: ...

    async def preview(self, url: str, *, now_ts: int) -> dict[str, Any] | None: ...


class PreviewImageStore(Protocol):
    """Stores an image as media of this server
    (:meth:`ranvier.core.media.MediaRepository.upload`); returns its URI."""

    async def upload(
        self,
        user_id: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str | None,
        filename: str | None,
        declared_length: int | None,
    ) -> str: ...


@dataclass(slots=True)
class _Flight:
    """A preview being made, and those waiting for it."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    users: int = 0
    failure: MatrixError | None = None


class UrlPreviewer:
    """Makes, keeps and serves URL previews; see the module's invariants."""

    def __init__(
        self,
        *,
        source: UrlSource,
        rows: PreviewRows,
        images: PreviewImageStore,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._source = source
        self._rows = rows
        self._images = images
        self._clock_ms = clock_ms
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT_PREVIEWS)
        self._flights: dict[str, _Flight] = {}

    async def preview(self, user_id: str, url: str) -> dict[str, Any]:
        """The preview of ``url`` for ``user_id`` (whose upload its image
        becomes when it is made now).

        Raises 400 ``M_INVALID_PARAM`` for what is not an http or https
        URL, and what :class:`UrlSource` raises.
        """
        key = _cache_key(url)
        kept = await self._rows.preview(key, now_ts=self._clock_ms())
        if kept is not None:
            return kept
        flight = self._flights.setdefault(key, _Flight())
        flight.users += 1
        try:
            async with flight.lock:
                if flight.failure is not None:
                    # The preview this request waited for failed: so does this.
                    failure = flight.failure
                    raise MatrixError(
                        failure.message, errcode=failure.errcode, http_status=failure.http_status
                    )
                kept = await self._rows.preview(key, now_ts=self._clock_ms())
                if kept is not None:
                    return kept
                try:
                    async with self._limiter:
                        made = await self._make(user_id, key)
                except MatrixError as exc:
                    flight.failure = exc
                    raise
                now = self._clock_ms()
                await self._rows.store(key, made, made_ts=now, expires_ts=now + PREVIEW_LIFETIME_MS)
                return made
        finally:
            flight.users -= 1
            if flight.users == 0:
                del self._flights[key]

    async def _make(self, user_id: str, url: str) -> dict[str, Any]:
        page = await self._source.fetch(url, wanted=_previewable)
        if page.body is None:
            return {}
        if _essence(page.content_type).startswith("image/"):
            return await self._store_image(user_id, page)
        body, content_type, page_url = page.body, page.content_type, page.url
        # Imported on first use: the stdlib HTML parser and its entity
        # tables are close to 1 MiB that a server never previewing a link
        # need not hold.
        from ranvier.protocol.html_preview import html_preview

        found: dict[str, Any] = dict(
            await trio.to_thread.run_sync(
                lambda: html_preview(body, content_type=content_type, page_url=page_url)
            )
        )
        image_url = found.pop("og:image", None)
        # What the page says of its image describes the page's copy; the
        # stored copy is described below, from its own bytes.
        for key in [key for key in found if key.startswith("og:image:") and key != "og:image:alt"]:
            del found[key]
        if image_url is not None:
            found.update(await self._page_image(user_id, image_url))
        return found

    async def _page_image(self, user_id: str, url: str) -> dict[str, Any]:
        try:
            image = await self._source.fetch(url, wanted=_is_image)
            if image.body is None:
                return {}
            return await self._store_image(user_id, image)
        except MatrixError as exc:
            _logger.info("preview image %s left out: %s", url, exc.message)
            return {}

    async def _store_image(self, user_id: str, image: FetchedUrl) -> dict[str, Any]:
        assert image.body is not None
        data = image.body
        content_type = _essence(image.content_type)
        try:
            uri = await self._images.upload(
                user_id,
                _one_chunk(data),
                content_type=content_type,
                filename=None,
                declared_length=len(data),
            )
        except MatrixError as exc:
            if exc.errcode != "M_TOO_LARGE":
                raise
            # The upload limit is the operator's, below the preview's.
            raise MatrixError(
                f"the image is over this server's upload limit: {exc.message}",
                errcode="M_TOO_LARGE",
                http_status=502,
            ) from None
        described: dict[str, Any] = {
            "og:image": uri,
            "og:image:type": content_type,
            "matrix:image:size": len(data),
        }
        dimensions = await trio.to_thread.run_sync(_image_dimensions, data)
        if dimensions is not None:
            described["og:image:width"], described["og:image:height"] = dimensions
        return described


def _cache_key(url: str) -> str:
    """``url`` without its fragment, which names a place in the page and
    is never sent; 400 for what is not an http or https URL."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise MatrixError(
            f"{url!r} is not an http or https URL", errcode="M_INVALID_PARAM", http_status=400
        )
    return urllib.parse.urlunsplit(parts._replace(fragment=""))


def _previewable(content_type: str | None) -> bool:
    essence = _essence(content_type)
    return essence in _HTML_TYPES or essence.startswith("image/")


def _is_image(content_type: str | None) -> bool:
    return _essence(content_type).startswith("image/")


def _essence(content_type: str | None) -> str:
    return (content_type or "").partition(";")[0].strip().lower()


async def _one_chunk(data: bytes) -> AsyncIterable[bytes]:
    yield data


def _image_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height from the image's header (no pixel is decoded), or
    None for what Pillow does not read (SVG among them)."""
    # Imported on first use, as for thumbnails.
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Exception:
        return None
    return int(width), int(height)
