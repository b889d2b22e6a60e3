"""The content repository: uploads, downloads and thumbnails, of our media
and of other servers' media fetched for local users.

Invariants
----------

* **Bytes before rows.** A file is complete and synced under its name
  before the row describing it is written (see
  :mod:`ranvier.storage.media_files`), so media that a row calls uploaded
  can always be served whole.
* **Bounded memory.** Uploads and other servers' answers are written to
  disk as they arrive, and downloads read from disk, a piece at a time;
  an upload is refused at its ``Content-Length`` when it declares too
  much, and either is cut off at the limit when it does not. Only
  thumbnails are held whole.
* **Media IDs and server names are checked before they name a file**: a
  media ID of the spec's characters only (no ``/`` or ``.``), a server
  name of the spec's grammar. Anything else is a media that does not exist.
* **One fetch per remote media at a time**: requests for media being
  fetched wait for that fetch and then read what it stored.
* **Quarantined media is not there**: neither served (404, to clients and
  to other servers alike, thumbnails included) nor fetched again from its
  origin. Neither is media being deleted.
* **Upload quotas are decided by the writer.** With ``upload_windows``
  set, each upload of a local user is held to every window: what the user
  uploaded within it plus this upload must stay within its maximum. A
  declared length is checked against what is stored before the body is
  read, to spare the transfer; the decision is the storage write's, which
  sums and stores at once (see :mod:`ranvier.storage.media`), so uploads
  racing each other cannot both slip under. An upload refused there has
  its file removed: nothing is kept. Application services' users are held
  to them as anyone is. Other servers' media and thumbnails are not user
  uploads and never counted; URL preview images are stored with
  :class:`UnlimitedUploads`, marked outside the quota:
  never refused, and not summed with the user's own uploads.
* **Access is noted sparingly**: serving media writes its last access
  only when the one stored is older than :data:`ACCESS_NOTE_INTERVAL_MS`
  (and once at a time per process), not once per request.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import trio

from ranvier.errors import LimitExceededError, MatrixError
from ranvier.protocol.media import ThumbnailMethod, is_media_id, thumbnail_size
from ranvier.protocol.x_matrix import is_server_name
from ranvier.storage.media import (
    MediaRecord,
    ThumbnailRecord,
    UploadOutcome,
    UploadQuota,
    UploadWindow,
)

from .thumbnails import THUMBNAILABLE_TYPES, make_thumbnail

__all__ = [
    "FetchedMedia",
    "MediaContent",
    "MediaFileStore",
    "MediaRepository",
    "MediaRows",
    "MediaWriter",
    "RemoteMediaSource",
    "UnlimitedUploads",
    "UploadWindow",
]

_logger: Final = logging.getLogger(__name__)

#: A type for media uploaded without one, as the spec says.
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"
#: How long a download may wait for media created but not yet uploaded.
MAX_WAIT_MS: Final = 60_000
#: Created media IDs unused this long are refused (told to clients as
#: ``unused_expires_at``; the spec recommends a day).
UNUSED_EXPIRY_MS: Final = 24 * 60 * 60 * 1000
#: How many created media IDs, not yet uploaded nor expired, a user may
#: hold: more is 429 ``M_LIMIT_EXCEEDED``, as the spec asks.
MAX_PENDING_UPLOADS: Final = 10
#: How stale a piece of media's stored last access may grow before serving
#: it writes a new one; retention counts in days.
ACCESS_NOTE_INTERVAL_MS: Final = 60 * 60 * 1000
# How often a waiting download looks again for an upload another process
# may have written, which this process's wake-up does not cover.
_RECHECK_SECONDS: Final = 1.0


class MediaRows(Protocol):
    """Where media is described (:class:`ranvier.storage.media.MediaStorage`)."""

    async def create(
        self, origin: str, media_id: str, *, user_id: str, created_ts: int
    ) -> None: ...

    async def add_upload(
        self,
        origin: str,
        media_id: str,
        *,
        user_id: str,
        content_type: str | None,
        upload_name: str | None,
        size: int,
        ts: int,
        quota: UploadQuota | None = None,
        outside_quota: bool = False,
    ) -> UploadWindow | None: ...

    async def complete_upload(
        self,
        origin: str,
        media_id: str,
        *,
        user_id: str,
        content_type: str | None,
        upload_name: str | None,
        size: int,
        ts: int,
        quota: UploadQuota | None = None,
    ) -> UploadOutcome | UploadWindow: ...

    async def uploaded_bytes(
        self, origin: str, user_id: str, *, window: UploadWindow, quota: UploadQuota, ts: int
    ) -> int: ...

    async def add_remote(
        self,
        origin: str,
        media_id: str,
        *,
        content_type: str | None,
        upload_name: str | None,
        size: int,
        ts: int,
    ) -> None: ...

    async def add_thumbnail(
        self,
        origin: str,
        media_id: str,
        *,
        width: int,
        height: int,
        method: str,
        content_type: str,
        size: int,
    ) -> None: ...

    async def media(self, origin: str, media_id: str) -> MediaRecord | None: ...

    async def quarantined_by(self, origin: str, media_id: str) -> str | None: ...

    async def record_access(self, origin: str, media_id: str, *, ts: int) -> None: ...

    async def pending_uploads(
        self, origin: str, user_id: str, *, created_since: int
    ) -> list[int]: ...

    async def thumbnail(
        self, origin: str, media_id: str, *, width: int, height: int, method: str
    ) -> ThumbnailRecord | None: ...


class MediaFileStore(Protocol):
    """Where media bytes live (:class:`ranvier.storage.media_files.MediaFiles`).

    ``write`` without ``replace`` raises FileExistsError for a name taken.
    """

    def local(self, media_id: str) -> Path: ...

    def remote(self, origin: str, media_id: str) -> Path: ...

    def thumbnail(
        self, origin: str, media_id: str, width: int, height: int, method: str
    ) -> Path: ...

    async def write(
        self, path: Path, chunks: AsyncIterable[bytes], *, replace: bool = False
    ) -> int: ...

    async def write_bytes(self, path: Path, data: bytes, *, replace: bool = False) -> int: ...

    def chunks(self, path: Path) -> AsyncGenerator[bytes, None]: ...

    async def size(self, path: Path) -> int | None: ...

    async def remove(self, path: Path) -> None: ...


@dataclass(frozen=True, slots=True)
class FetchedMedia:
    """Another server's media, as it answered, once its bytes are written."""

    content_type: str | None
    filename: str | None
    size: int


#: Writes media bytes as they come; returns how many there were.
MediaWriter = Callable[[AsyncIterable[bytes]], Awaitable[int]]


class RemoteMediaSource(Protocol):
    """Fetches media from the server that holds it
    (:class:`ranvier.federation.media.FederationMediaClient`), handing its
    bytes to ``write`` as they arrive.

    Raises MatrixError as a client should see it: 404 ``M_NOT_FOUND``
    when the origin does not have it, 502 when it cannot be had (502
    ``M_TOO_LARGE`` for an answer far over ``max_bytes``), and whatever
    ``write`` raises.
    """

    async def fetch(
        self, origin: str, media_id: str, *, max_bytes: int, timeout_ms: int, write: MediaWriter
    ) -> FetchedMedia: ...


@dataclass(frozen=True, slots=True)
class MediaContent:
    """Media to serve: its headers' values and its bytes, read on demand."""

    content_type: str
    #: The name it was uploaded with, if any.
    filename: str | None
    size: int
    chunks: Callable[[], AsyncGenerator[bytes, None]] = field(repr=False)


class MediaRepository:
    """Uploads, downloads and thumbnails for ``server_name``.

    ``remote`` fetches other servers' media; without it only ours is
    served. ``max_upload_bytes`` bounds uploads and media fetched;
    ``upload_windows`` what one user uploads over time;
    ``max_thumbnail_pixels`` the images thumbnailed.
    """

    def __init__(
        self,
        *,
        server_name: str,
        rows: MediaRows,
        files: MediaFileStore,
        remote: RemoteMediaSource | None = None,
        max_upload_bytes: int,
        upload_windows: tuple[UploadWindow, ...] = (),
        max_thumbnail_pixels: int = 32_000_000,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.server_name = server_name
        self.max_upload_bytes = max_upload_bytes
        self._rows = rows
        self._files = files
        self._remote = remote
        self._max_thumbnail_pixels = max_thumbnail_pixels
        # A media ID may be filled until it expires, and the upload itself
        # takes time: twice the expiry bounds how long before its upload a
        # row can have been created.
        self._quota = (
            UploadQuota(windows=upload_windows, created_lead_ms=2 * UNUSED_EXPIRY_MS)
            if upload_windows
            else None
        )
        self._clock_ms = clock_ms
        # Downloads waiting for an upload, woken when it is stored here.
        self._uploaded: dict[str, trio.Event] = {}
        # Remote fetches in progress, by (origin, media ID).
        self._fetching: dict[tuple[str, str], trio.Lock] = {}
        # Last accesses being written, by (origin, media ID).
        self._noting: set[tuple[str, str]] = set()

    # Uploads.

    async def upload(
        self,
        user_id: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str | None,
        filename: str | None,
        declared_length: int | None,
        outside_quota: bool = False,
    ) -> str:
        """Store a new upload; return its ``mxc://`` URI.

        Raises 403 ``M_FORBIDDEN`` for an upload that would take the user
        past one of the upload windows (see :func:`_over_quota`).
        ``outside_quota`` is for what the server stores on a user's behalf
        (URL preview images), not the user's own: it is neither refused
        nor counted against them.
        """
        self._check_declared(declared_length)
        quota = None if outside_quota else self._quota
        if quota is not None:
            await self._check_quota(user_id, quota, declared_length)
        media_id = secrets.token_urlsafe(18)
        path = self._files.local(media_id)
        size = await self._write_upload(path, chunks)
        crossed = await self._rows.add_upload(
            self.server_name,
            media_id,
            user_id=user_id,
            content_type=content_type,
            upload_name=filename or None,
            size=size,
            ts=self._clock_ms(),
            quota=quota,
            outside_quota=outside_quota,
        )
        if crossed is not None:
            await self._files.remove(path)
            raise _over_quota(crossed)
        return f"mxc://{self.server_name}/{media_id}"

    async def _check_quota(
        self, user_id: str, quota: UploadQuota, declared_length: int | None
    ) -> None:
        """Refuse early an upload that cannot pass: the storage write
        decides, but a refusal here spares reading the body."""
        now = self._clock_ms()
        for window in quota.windows:
            used = await self._rows.uploaded_bytes(
                self.server_name, user_id, window=window, quota=quota, ts=now
            )
            if used + (declared_length or 0) > window.max_bytes:
                raise _over_quota(window)

    async def create(self, user_id: str) -> tuple[str, int]:
        """A media ID for an upload to come: its ``mxc://`` URI and when it
        stops being usable (ms since the epoch)."""
        now = self._clock_ms()
        pending = await self._rows.pending_uploads(
            self.server_name, user_id, created_since=now - UNUSED_EXPIRY_MS
        )
        if len(pending) >= MAX_PENDING_UPLOADS:
            # One is freed when the oldest expires, if none is uploaded first.
            freed = pending[len(pending) - MAX_PENDING_UPLOADS] + UNUSED_EXPIRY_MS
            raise LimitExceededError(
                f"at most {MAX_PENDING_UPLOADS} created media IDs may wait for their upload",
                retry_after_ms=max(freed - now, 0),
            )
        media_id = secrets.token_urlsafe(18)
        await self._rows.create(self.server_name, media_id, user_id=user_id, created_ts=now)
        return f"mxc://{self.server_name}/{media_id}", now + UNUSED_EXPIRY_MS

    async def upload_to(
        self,
        user_id: str,
        server_name: str,
        media_id: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str | None,
        filename: str | None,
        declared_length: int | None,
    ) -> None:
        """Upload the content of a media ID created with :meth:`create`.

        Raises 404 ``M_NOT_FOUND`` for an ID not created here, 403
        ``M_FORBIDDEN`` for another user's, 409 ``M_CANNOT_OVERWRITE_MEDIA``
        for one uploaded already, all before the body is read.
        """
        if server_name != self.server_name or not is_media_id(media_id):
            raise _not_found()
        record = await self._rows.media(server_name, media_id)
        self._check_uploadable(record, user_id, media_id)
        self._check_declared(declared_length)
        if self._quota is not None:
            await self._check_quota(user_id, self._quota, declared_length)
        path = self._files.local(media_id)
        try:
            size = await self._write_upload(path, chunks)
        except FileExistsError:
            raise _cannot_overwrite() from None
        outcome = await self._rows.complete_upload(
            server_name,
            media_id,
            user_id=user_id,
            content_type=content_type,
            upload_name=filename or None,
            size=size,
            ts=self._clock_ms(),
            quota=self._quota,
        )
        if isinstance(outcome, UploadWindow):
            # The media ID stays created and empty: it may be filled once
            # the user is back under the window, until it expires.
            await self._files.remove(path)
            raise _over_quota(outcome)
        if outcome != "stored":
            # Refused at the write though it passed the check above: the
            # file was written by this request, and nothing names it.
            raise _cannot_overwrite()
        event = self._uploaded.pop(media_id, None)
        if event is not None:
            event.set()

    def _check_uploadable(self, record: MediaRecord | None, user_id: str, media_id: str) -> None:
        if record is None or self._expired(record):
            raise _not_found()
        if record.user_id != user_id:
            raise MatrixError(
                "only the user who created this media ID may upload to it",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        if record.uploaded:
            raise _cannot_overwrite()

    def _expired(self, record: MediaRecord) -> bool:
        """Whether ``record`` is a created media ID left unused too long."""
        return not record.uploaded and record.created_ts + UNUSED_EXPIRY_MS < self._clock_ms()

    def _check_declared(self, declared_length: int | None) -> None:
        if declared_length is not None and declared_length > self.max_upload_bytes:
            raise _upload_too_large(self.max_upload_bytes)

    async def _write_upload(self, path: Path, chunks: AsyncIterable[bytes]) -> int:
        capped = _limited(chunks, self.max_upload_bytes, _upload_too_large)
        async with contextlib.aclosing(capped) as limited:
            return await self._files.write(path, limited)

    # Downloads.

    async def download(
        self,
        server_name: str,
        media_id: str,
        *,
        timeout_ms: int = 20_000,
        allow_remote: bool = True,
    ) -> MediaContent:
        """The media ``mxc://server_name/media_id``: ours, or another
        server's (fetched once and kept, unless ``allow_remote`` is False).

        Media created but not yet uploaded is waited for up to
        ``timeout_ms`` (at most :data:`MAX_WAIT_MS`), then 504
        ``M_NOT_YET_UPLOADED``. Unknown media is 404 ``M_NOT_FOUND``.
        """
        record, path = await self._source(server_name, media_id, timeout_ms, allow_remote)
        content = await self._content(record, path)
        await self._note_access(record)
        return content

    async def thumbnail(
        self,
        server_name: str,
        media_id: str,
        *,
        width: int,
        height: int,
        method: ThumbnailMethod,
        timeout_ms: int = 20_000,
        allow_remote: bool = True,
    ) -> MediaContent:
        """A thumbnail at least ``width`` x ``height`` (unless the image is
        smaller: then the image itself), made once per standard size
        (:func:`ranvier.protocol.media.thumbnail_size`) and kept.

        Raises 400 ``M_UNKNOWN`` for media that is not an image this server
        reads, 413 ``M_TOO_LARGE`` for an image too large to decode, and
        what :meth:`download` raises.
        """
        record, path = await self._source(server_name, media_id, timeout_ms, allow_remote)
        if _essence(record.content_type) not in THUMBNAILABLE_TYPES:
            raise MatrixError(
                f"cannot generate thumbnails of {record.content_type or 'untyped'} media",
                errcode="M_UNKNOWN",
                http_status=400,
            )
        size = thumbnail_size(width, height, method)
        origin = record.origin
        thumbnail_path = self._files.thumbnail(
            origin, record.media_id, size.width, size.height, size.method
        )
        cached = await self._rows.thumbnail(
            origin, record.media_id, width=size.width, height=size.height, method=size.method
        )
        await self._note_access(record)
        if cached is not None:
            return await self._file_content(thumbnail_path, cached.content_type, None)
        made = await trio.to_thread.run_sync(
            lambda: make_thumbnail(path, size, max_pixels=self._max_thumbnail_pixels)
        )
        if made is None:
            return await self._content(record, path)
        written = await self._files.write_bytes(thumbnail_path, made.data, replace=True)
        await self._rows.add_thumbnail(
            origin,
            record.media_id,
            width=size.width,
            height=size.height,
            method=size.method,
            content_type=made.content_type,
            size=written,
        )
        return MediaContent(
            content_type=made.content_type,
            filename=None,
            size=written,
            chunks=lambda: self._files.chunks(thumbnail_path),
        )

    async def _note_access(self, record: MediaRecord) -> None:
        """Write the media's last access, unless the stored one is recent."""
        now = self._clock_ms()
        last = record.last_access_ts
        key = (record.origin, record.media_id)
        if (last is not None and now - last < ACCESS_NOTE_INTERVAL_MS) or key in self._noting:
            return
        self._noting.add(key)
        try:
            await self._rows.record_access(record.origin, record.media_id, ts=now)
        except Exception:
            # A hint for retention: serving goes on without it.
            _logger.warning("could not note the access of mxc://%s/%s", *key, exc_info=True)
        finally:
            self._noting.discard(key)

    async def _content(self, record: MediaRecord, path: Path) -> MediaContent:
        content_type = record.content_type or DEFAULT_CONTENT_TYPE
        return await self._file_content(path, content_type, record.upload_name)

    async def _file_content(
        self, path: Path, content_type: str, filename: str | None
    ) -> MediaContent:
        # The size is the file's own, so that the Content-Length sent is
        # the length of what is sent, whatever happened to the file.
        size = await self._files.size(path)
        if size is None:
            raise _not_found()
        return MediaContent(
            content_type=content_type,
            filename=filename,
            size=size,
            chunks=lambda: self._files.chunks(path),
        )

    async def _source(
        self, server_name: str, media_id: str, timeout_ms: int, allow_remote: bool
    ) -> tuple[MediaRecord, Path]:
        if not is_media_id(media_id) or not is_server_name(server_name):
            raise _not_found()
        if server_name == self.server_name:
            return await self._local(media_id, timeout_ms), self._files.local(media_id)
        if not allow_remote:
            raise _not_found()
        record = await self._remote_record(server_name, media_id, timeout_ms)
        return record, self._files.remote(server_name, media_id)

    async def _local(self, media_id: str, timeout_ms: int) -> MediaRecord:
        wait = min(max(timeout_ms, 0), MAX_WAIT_MS) / 1000
        with trio.move_on_after(wait):
            while True:
                record = await self._rows.media(self.server_name, media_id)
                if record is None or self._expired(record) or _withheld(record):
                    raise _not_found()
                if record.uploaded:
                    return record
                event = self._uploaded.setdefault(media_id, trio.Event())
                try:
                    with trio.move_on_after(_RECHECK_SECONDS):
                        await event.wait()
                finally:
                    # The last download to stop waiting for media that never
                    # came takes its wake-up away with it.
                    if event.statistics().tasks_waiting == 0:
                        self._uploaded.pop(media_id, None)
        record = await self._rows.media(self.server_name, media_id)
        if record is None or self._expired(record) or _withheld(record):
            raise _not_found()
        if record.uploaded:
            return record
        raise MatrixError(
            "the content has not been uploaded yet",
            errcode="M_NOT_YET_UPLOADED",
            http_status=504,
        )

    async def _remote_record(self, origin: str, media_id: str, timeout_ms: int) -> MediaRecord:
        record = await self._rows.media(origin, media_id)
        if record is not None and _withheld(record):
            raise _not_found()
        if record is not None and record.uploaded:
            return record
        if self._remote is None:
            raise _not_found()
        key = (origin, media_id)
        lock = self._fetching.setdefault(key, trio.Lock())
        try:
            async with lock:
                record = await self._rows.media(origin, media_id)
                if record is None or not record.uploaded:
                    # Quarantined before it was ever fetched: never fetched.
                    if await self._rows.quarantined_by(origin, media_id) is not None:
                        raise _not_found()
                    record = await self._fetch(origin, media_id, timeout_ms)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._fetching.pop(key, None)
        if _withheld(record):
            raise _not_found()
        return record

    async def _fetch(self, origin: str, media_id: str, timeout_ms: int) -> MediaRecord:
        assert self._remote is not None
        path = self._files.remote(origin, media_id)
        limit = self.max_upload_bytes

        async def write(chunks: AsyncIterable[bytes]) -> int:
            capped = _limited(chunks, limit, _remote_too_large)
            async with contextlib.aclosing(capped) as limited:
                return await self._files.write(path, limited, replace=True)

        fetched = await self._remote.fetch(
            origin,
            media_id,
            max_bytes=limit,
            timeout_ms=min(max(timeout_ms, 0), MAX_WAIT_MS),
            write=write,
        )
        await self._rows.add_remote(
            origin,
            media_id,
            content_type=fetched.content_type,
            upload_name=fetched.filename,
            size=fetched.size,
            ts=self._clock_ms(),
        )
        record = await self._rows.media(origin, media_id)
        assert record is not None
        return record


@dataclass(frozen=True, slots=True)
class UnlimitedUploads:
    """``media``'s uploads outside the upload windows, for storing what the
    server fetched on a user's behalf (URL preview images: a user does not
    choose their size, and one preview serves everyone who links the page)."""

    media: MediaRepository

    async def upload(
        self,
        user_id: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str | None,
        filename: str | None,
        declared_length: int | None,
    ) -> str:
        return await self.media.upload(
            user_id,
            chunks,
            content_type=content_type,
            filename=filename,
            declared_length=declared_length,
            outside_quota=True,
        )


async def _limited(
    chunks: AsyncIterable[bytes], limit: int, too_large: Callable[[int], MatrixError]
) -> AsyncGenerator[bytes, None]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        yield chunk


def _withheld(record: MediaRecord) -> bool:
    """Whether media known here is not to be served: quarantined, or being
    deleted (and then not to be fetched again until it is gone)."""
    return record.quarantined_by is not None or record.deleting


def _essence(content_type: str | None) -> str:
    return (content_type or "").partition(";")[0].strip().lower()


def _not_found() -> MatrixError:
    return MatrixError("no such media", errcode="M_NOT_FOUND", http_status=404)


def _cannot_overwrite() -> MatrixError:
    return MatrixError(
        "this media has been uploaded already",
        errcode="M_CANNOT_OVERWRITE_MEDIA",
        http_status=409,
    )


def _remote_too_large(limit: int) -> MatrixError:
    return MatrixError(
        f"the media is over {limit} bytes, more than this server fetches",
        errcode="M_TOO_LARGE",
        http_status=502,
    )


def _over_quota(window: UploadWindow) -> MatrixError:
    """The refusal of an upload that would cross ``window``.

    The spec's upload endpoints answer a user who "has reached a quota for
    uploaded content" with 403 ``M_FORBIDDEN``, so that is the answer.
    Synapse answers 400 ``M_RESOURCE_LIMIT_EXCEEDED``, which the spec keeps
    for a limit of the homeserver as a whole (and then requires an
    ``admin_contact``); 413 ``M_TOO_LARGE`` would tell the client this one
    file is too large, when a smaller one may be refused alike and the same
    one accepted later.
    """
    return MatrixError(
        f"uploads are limited to {window.max_bytes} bytes per user in any"
        f" {_duration(window.period_ms)}, and this upload would go over",
        errcode="M_FORBIDDEN",
        http_status=403,
    )


def _duration(ms: int) -> str:
    units = ((86_400_000, "day"), (3_600_000, "hour"), (60_000, "minute"), (1000, "second"))
    for unit_ms, unit in units:
        if ms % unit_ms == 0:
            count = ms // unit_ms
            return unit if count == 1 else f"{count} {unit}s"
    return f"{ms} ms"


def _upload_too_large(limit: int) -> MatrixError:
    return MatrixError(
        f"uploads are limited to {limit} bytes", errcode="M_TOO_LARGE", http_status=413
    )
