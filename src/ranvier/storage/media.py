"""What the content repository knows of each piece of media: who uploaded
it, its type, file name and size, and which thumbnails were made of it.

Tables (the schema's ``_media`` migration)
------------------------------------------

``media`` holds a row per piece of media keyed by ``(origin, media_id)``:
ours (``origin`` is this server, ``user_id`` the uploader) and other
servers' media fetched for local users. ``media_thumbnails`` a row per
thumbnail made, keyed by its box and method. A record carries what the
``_media_upkeep`` migration added (last access, quarantine, protection,
deletion under way: :mod:`ranvier.storage.media_admin`), which serving
needs to know.

Invariants
----------

* **A row describes a file already written.** The bytes are written, synced
  and renamed into place first (:mod:`ranvier.storage.media_files`); only
  then is the row written that says they are there. A crash in between
  leaves a file nobody names, never a row naming a missing or half file.
  Deletion runs the other way round: the row is marked ``deleting``
  before the files go and removed after, and a marked row is never served.
* **An upload fills a created media ID once.** Only the user who created
  it may, and a second upload is refused; the same upload run twice (a
  worker's write repeated) finds its own values and answers as the first.
* **Upload quotas hold under concurrency.** The bytes a user uploaded
  within each window are summed in the same write that stores the upload
  (:func:`_add_upload`, :func:`_complete_upload`), so the one writer
  decides every upload against every upload stored before it: two uploads
  that together cross a window cannot both pass, whichever process took
  them. An upload is counted by when it was stored (``uploaded_ts``), and
  looked for among the user's rows created at most
  :attr:`UploadQuota.created_lead_ms` before the window, which the
  ``media_uploader`` index finds without reading the rest.
* **Every write survives being run twice.**
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = [
    "RECORD_COLUMNS",
    "RECORD_TABLES",
    "MediaRecord",
    "MediaStorage",
    "ThumbnailRecord",
    "UploadOutcome",
    "UploadQuota",
    "UploadWindow",
    "record_of",
]

#: What filling a created media ID did: ``stored``, or why nothing was
#: written (no such ID, another user's, already uploaded).
UploadOutcome = Literal["stored", "unknown", "forbidden", "already uploaded"]


@dataclass(frozen=True, slots=True)
class UploadWindow:
    """At most ``max_bytes`` uploaded by one user within any ``period_ms``."""

    period_ms: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class UploadQuota:
    """The windows an upload is held to.

    ``created_lead_ms`` is the longest a media ID may be created ahead of
    its upload: rows created longer than that before a window cannot have
    been uploaded within it, so they are not read.
    """

    windows: tuple[UploadWindow, ...]
    created_lead_ms: int


@dataclass(frozen=True, slots=True)
class MediaRecord:
    """One piece of media as the database describes it."""

    origin: str
    media_id: str
    #: The local uploader; None for another server's media.
    user_id: str | None
    content_type: str | None
    upload_name: str | None
    #: None until the bytes are uploaded.
    size: int | None
    created_ts: int
    uploaded_ts: int | None
    #: When it was last served; None until it is.
    last_access_ts: int | None = None
    #: The admin who quarantined it, if anyone did: it is then not served.
    quarantined_by: str | None = None
    #: Protected by an admin from being quarantined.
    safe_from_quarantine: bool = False
    #: Its files are being removed, and then its row: it is gone already.
    deleting: bool = False

    @property
    def uploaded(self) -> bool:
        return self.uploaded_ts is not None


@dataclass(frozen=True, slots=True)
class ThumbnailRecord:
    """A thumbnail made of a piece of media."""

    width: int
    height: int
    method: str
    content_type: str
    size: int


class MediaStorage:
    """Media rows over the write backend and the reader pool."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def create(self, origin: str, media_id: str, *, user_id: str, created_ts: int) -> None:
        """Note a media ID created ahead of its upload (``/media/v1/create``)."""
        await self._writer.submit(
            functools.partial(
                _create_media,
                origin=origin,
                media_id=media_id,
                user_id=user_id,
                created_ts=created_ts,
            )
        )

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
    ) -> UploadWindow | None:
        """Note a new media ID and its uploaded file at once (``/upload``).

        Returns the window of ``quota`` the upload would cross, and then
        writes nothing; None once it is stored. ``outside_quota`` marks
        media stored on the user's behalf, which no window counts.
        """
        return await self._writer.submit(
            functools.partial(
                _add_upload,
                origin=origin,
                media_id=media_id,
                user_id=user_id,
                content_type=content_type,
                upload_name=upload_name,
                size=size,
                ts=ts,
                quota=quota,
                outside_quota=outside_quota,
            )
        )

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
    ) -> UploadOutcome | UploadWindow:
        """Fill a media ID created earlier with its uploaded file; see
        :data:`UploadOutcome`. A window of ``quota`` the upload would cross
        is returned instead, and nothing written."""
        return await self._writer.submit(
            functools.partial(
                _complete_upload,
                origin=origin,
                media_id=media_id,
                user_id=user_id,
                content_type=content_type,
                upload_name=upload_name,
                size=size,
                ts=ts,
                quota=quota,
            )
        )

    async def add_remote(
        self,
        origin: str,
        media_id: str,
        *,
        content_type: str | None,
        upload_name: str | None,
        size: int,
        ts: int,
    ) -> None:
        """Note another server's media, fetched and stored here. A row
        already there (fetched by a request alongside) is kept."""
        await self._writer.submit(
            functools.partial(
                _add_remote,
                origin=origin,
                media_id=media_id,
                content_type=content_type,
                upload_name=upload_name,
                size=size,
                ts=ts,
            )
        )

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
    ) -> None:
        """Note a thumbnail made and stored; one made again replaces it."""
        await self._writer.submit(
            functools.partial(
                _add_thumbnail,
                origin=origin,
                media_id=media_id,
                width=width,
                height=height,
                method=method,
                content_type=content_type,
                size=size,
            )
        )

    async def media(self, origin: str, media_id: str) -> MediaRecord | None:
        """The media ``(origin, media_id)``, or None if it is not known here."""
        return await self._readers.read(
            functools.partial(_read_media, origin=origin, media_id=media_id)
        )

    async def quarantined_by(self, origin: str, media_id: str) -> str | None:
        """Who quarantined ``(origin, media_id)``, known here or not yet."""
        return await self._readers.read(
            functools.partial(_read_quarantined_by, origin=origin, media_id=media_id)
        )

    async def record_access(self, origin: str, media_id: str, *, ts: int) -> None:
        """Note the media served at ``ts`` (for retention)."""
        await self._writer.submit(
            functools.partial(_record_access, origin=origin, media_id=media_id, ts=ts)
        )

    async def pending_uploads(self, origin: str, user_id: str, *, created_since: int) -> list[int]:
        """When each of ``user_id``'s media IDs created at or after
        ``created_since`` and not uploaded yet was created, oldest first."""
        return await self._readers.read(
            functools.partial(
                _read_pending, origin=origin, user_id=user_id, created_since=created_since
            )
        )

    async def uploaded_bytes(
        self, origin: str, user_id: str, *, window: UploadWindow, quota: UploadQuota, ts: int
    ) -> int:
        """How many bytes ``user_id`` uploaded in ``window`` ending at ``ts``,
        as the upload writes count them (for a check before a body is read)."""
        return await self._readers.read(
            functools.partial(
                _uploaded_bytes,
                origin=origin,
                user_id=user_id,
                window=window,
                quota=quota,
                ts=ts,
            )
        )

    async def thumbnail(
        self, origin: str, media_id: str, *, width: int, height: int, method: str
    ) -> ThumbnailRecord | None:
        """The thumbnail of that box and method, if one was made."""
        return await self._readers.read(
            functools.partial(
                _read_thumbnail,
                origin=origin,
                media_id=media_id,
                width=width,
                height=height,
                method=method,
            )
        )


_MEDIA_COLUMNS = (
    "origin, media_id, user_id, content_type, upload_name, size, created_ts, uploaded_ts"
)


@registered_write
def _create_media(
    conn: sqlite3.Connection, *, origin: str, media_id: str, user_id: str, created_ts: int
) -> None:
    conn.execute(
        f"INSERT OR IGNORE INTO media ({_MEDIA_COLUMNS})"
        " VALUES (?, ?, ?, NULL, NULL, NULL, ?, NULL)",
        (origin, media_id, user_id, created_ts),
    )


@registered_write
def _add_upload(
    conn: sqlite3.Connection,
    *,
    origin: str,
    media_id: str,
    user_id: str,
    content_type: str | None,
    upload_name: str | None,
    size: int,
    ts: int,
    quota: UploadQuota | None = None,
    outside_quota: bool = False,
) -> UploadWindow | None:
    taken = conn.execute(
        "SELECT 1 FROM media WHERE origin = ? AND media_id = ?", (origin, media_id)
    ).fetchone()
    if taken is None and quota is not None:
        # Run a second time, the write finds its own row and is done: its
        # bytes are not counted against itself.
        crossed = _crossed_window(conn, origin, user_id, size, ts, quota)
        if crossed is not None:
            return crossed
    _insert_file(conn, origin, media_id, user_id, content_type, upload_name, size, ts)
    if outside_quota:
        conn.execute(
            "UPDATE media SET outside_quota = 1 WHERE origin = ? AND media_id = ?",
            (origin, media_id),
        )
    return None


@registered_write
def _complete_upload(
    conn: sqlite3.Connection,
    *,
    origin: str,
    media_id: str,
    user_id: str,
    content_type: str | None,
    upload_name: str | None,
    size: int,
    ts: int,
    quota: UploadQuota | None = None,
) -> UploadOutcome | UploadWindow:
    row = conn.execute(
        "SELECT user_id, content_type, upload_name, size, uploaded_ts FROM media"
        " WHERE origin = ? AND media_id = ?",
        (origin, media_id),
    ).fetchone()
    if row is None:
        return "unknown"
    if row[0] != user_id:
        return "forbidden"
    if row[4] is not None:
        # The same write run a second time finds exactly what it wrote.
        same = tuple(row) == (user_id, content_type, upload_name, size, ts)
        return "stored" if same else "already uploaded"
    if quota is not None:
        crossed = _crossed_window(conn, origin, user_id, size, ts, quota)
        if crossed is not None:
            return crossed
    conn.execute(
        "UPDATE media SET content_type = ?, upload_name = ?, size = ?, uploaded_ts = ?"
        " WHERE origin = ? AND media_id = ?",
        (content_type, upload_name, size, ts, origin, media_id),
    )
    return "stored"


def _crossed_window(
    conn: sqlite3.Connection, origin: str, user_id: str, size: int, ts: int, quota: UploadQuota
) -> UploadWindow | None:
    """The first window that ``size`` more bytes at ``ts`` would take past
    its maximum, if any."""
    for window in quota.windows:
        used = _uploaded_bytes(
            conn, origin=origin, user_id=user_id, window=window, quota=quota, ts=ts
        )
        if used + size > window.max_bytes:
            return window
    return None


def _uploaded_bytes(
    conn: sqlite3.Connection,
    *,
    origin: str,
    user_id: str,
    window: UploadWindow,
    quota: UploadQuota,
    ts: int,
) -> int:
    """What ``user_id`` uploaded after ``ts - window.period_ms``: the window
    is open at its start, so an upload leaves it exactly one period on."""
    since = ts - window.period_ms
    (total,) = conn.execute(
        "SELECT COALESCE(SUM(size), 0) FROM media WHERE user_id = ? AND created_ts > ?"
        " AND origin = ? AND uploaded_ts > ? AND outside_quota = 0",
        (user_id, since - quota.created_lead_ms, origin, since),
    ).fetchone()
    return int(total)


@registered_write
def _add_remote(
    conn: sqlite3.Connection,
    *,
    origin: str,
    media_id: str,
    content_type: str | None,
    upload_name: str | None,
    size: int,
    ts: int,
) -> None:
    _insert_file(conn, origin, media_id, None, content_type, upload_name, size, ts)


def _insert_file(
    conn: sqlite3.Connection,
    origin: str,
    media_id: str,
    user_id: str | None,
    content_type: str | None,
    upload_name: str | None,
    size: int,
    ts: int,
) -> None:
    """A row for media whose file is written, created and uploaded at ``ts``;
    a row already there is kept (the write run twice, or a fetch alongside)."""
    conn.execute(
        f"INSERT OR IGNORE INTO media ({_MEDIA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (origin, media_id, user_id, content_type, upload_name, size, ts, ts),
    )


@registered_write
def _add_thumbnail(
    conn: sqlite3.Connection,
    *,
    origin: str,
    media_id: str,
    width: int,
    height: int,
    method: str,
    content_type: str,
    size: int,
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO media_thumbnails"
        " (origin, media_id, width, height, method, content_type, size)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (origin, media_id, width, height, method, content_type, size),
    )


@registered_write
def _record_access(conn: sqlite3.Connection, *, origin: str, media_id: str, ts: int) -> None:
    # Never moved back: a late write of an earlier access changes nothing.
    conn.execute(
        "UPDATE media SET last_access_ts = ? WHERE origin = ? AND media_id = ?"
        " AND (last_access_ts IS NULL OR last_access_ts < ?)",
        (ts, origin, media_id, ts),
    )


#: The columns of a :class:`MediaRecord`, of ``media AS m`` left-joined
#: with ``media_quarantine AS q``.
RECORD_COLUMNS = (
    "m.origin, m.media_id, m.user_id, m.content_type, m.upload_name, m.size, m.created_ts,"
    " m.uploaded_ts, m.last_access_ts, q.quarantined_by, m.safe_from_quarantine, m.deleting"
)
#: What :data:`RECORD_COLUMNS` are read from.
RECORD_TABLES = (
    "media AS m LEFT JOIN media_quarantine AS q ON q.origin = m.origin AND q.media_id = m.media_id"
)


def record_of(row: tuple[Any, ...]) -> MediaRecord:
    """A :class:`MediaRecord` of a row of :data:`RECORD_COLUMNS`."""
    fields = list(row)
    # SQLite's integers for the two flags.
    fields[10:12] = [bool(fields[10]), bool(fields[11])]
    return MediaRecord(*fields)


def _read_media(conn: sqlite3.Connection, *, origin: str, media_id: str) -> MediaRecord | None:
    row = conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM {RECORD_TABLES} WHERE m.origin = ? AND m.media_id = ?",
        (origin, media_id),
    ).fetchone()
    return None if row is None else record_of(row)


def _read_quarantined_by(conn: sqlite3.Connection, *, origin: str, media_id: str) -> str | None:
    row = conn.execute(
        "SELECT quarantined_by FROM media_quarantine WHERE origin = ? AND media_id = ?",
        (origin, media_id),
    ).fetchone()
    return None if row is None else str(row[0])


def _read_thumbnail(
    conn: sqlite3.Connection, *, origin: str, media_id: str, width: int, height: int, method: str
) -> ThumbnailRecord | None:
    row = conn.execute(
        "SELECT width, height, method, content_type, size FROM media_thumbnails"
        " WHERE origin = ? AND media_id = ? AND width = ? AND height = ? AND method = ?",
        (origin, media_id, width, height, method),
    ).fetchone()
    return None if row is None else ThumbnailRecord(*row)


def _read_pending(
    conn: sqlite3.Connection, *, origin: str, user_id: str, created_since: int
) -> list[int]:
    return [
        created_ts
        for (created_ts,) in conn.execute(
            "SELECT created_ts FROM media WHERE origin = ? AND user_id = ?"
            " AND uploaded_ts IS NULL AND created_ts >= ? ORDER BY created_ts",
            (origin, user_id, created_since),
        )
    ]
