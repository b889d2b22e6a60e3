"""What media retention and the media admin API read and write: the media
a room's events name, a user's uploads, media past its lifetime,
quarantine, protection from it, and deletion.

Tables (the schema's ``_media_upkeep`` migration)
-------------------------------------------------

``media`` gained ``last_access_ts``, ``safe_from_quarantine`` and
``deleting``; ``media_quarantine`` holds a row per quarantined piece of
media, ours or another server's, whether or not it is stored here.

Invariants
----------

* **Rows go after their files.** Deleting is two writes around the files'
  removal: :func:`mark_for_deletion` marks the rows (``deleting``), which
  serving then treats as gone and a fetch does not replace; the caller
  removes the files; :func:`remove_marked` removes the rows. A crash
  between leaves marked rows, which the next retention pass finishes,
  never a row served as found whose file is gone.
* **A rule is checked where it is applied.** The conditions a deletion was
  chosen by (last used before, larger than, not quarantined, not
  protected) are checked again as the rows are marked, so media served or
  quarantined since it was chosen is kept.
* **Protected media is never quarantined.**
* **Every write survives being run twice**, answering as it did the first
  time.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

from .media import RECORD_COLUMNS, RECORD_TABLES, MediaRecord, record_of
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = [
    "USER_MEDIA_ORDERS",
    "DeletionRule",
    "MediaAdminStorage",
    "MediaKey",
    "UserMediaOrder",
]

#: ``(origin, media_id)``.
MediaKey = tuple[str, str]

UserMediaOrder = Literal[
    "media_id",
    "upload_name",
    "created_ts",
    "last_access_ts",
    "media_length",
    "media_type",
    "quarantined_by",
    "safe_from_quarantine",
]
USER_MEDIA_ORDERS: Final[frozenset[str]] = frozenset(get_args(UserMediaOrder))

_ORDER_COLUMNS: Final[dict[str, str]] = {
    "media_id": "m.media_id",
    "upload_name": "m.upload_name",
    "created_ts": "m.created_ts",
    "last_access_ts": "m.last_access_ts",
    "media_length": "m.size",
    "media_type": "m.content_type",
    "quarantined_by": "q.quarantined_by",
    "safe_from_quarantine": "m.safe_from_quarantine",
}

# When media was last used: its last access, or its creation until then.
# Written as the index media_last_used is, so that the index serves it.
_LAST_USED: Final = "COALESCE(m.last_access_ts, m.created_ts)"

# The mxc URIs profiles and rooms show: local users' avatars, members'
# avatars in rooms' current state, and rooms' avatars.
_IN_USE: Final = (
    "SELECT uri FROM ("
    " SELECT avatar_url AS uri FROM profiles"
    " UNION SELECT json_extract(CAST(e.json AS TEXT), '$.content.avatar_url')"
    "  FROM current_state AS cs JOIN events AS e ON e.event_id = cs.event_id"
    "  WHERE cs.type = 'm.room.member'"
    " UNION SELECT json_extract(CAST(e.json AS TEXT), '$.content.url')"
    "  FROM current_state AS cs JOIN events AS e ON e.event_id = cs.event_id"
    "  WHERE cs.type = 'm.room.avatar'"
    ") WHERE uri IS NOT NULL"
)


@dataclass(frozen=True, slots=True)
class DeletionRule:
    """Which media a deletion may take: last used before ``before_ts``,
    larger than ``size_gt`` bytes (-1: any, not yet uploaded too), and
    unless spared, quarantined or protected media."""

    before_ts: int
    size_gt: int = -1
    spare_quarantined: bool = True
    spare_protected: bool = True


class MediaAdminStorage:
    """Media upkeep's reads on the reader pool and writes through the writer."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    # Reads.

    async def room_exists(self, room_id: str) -> bool:
        return await self._readers.read(functools.partial(_room_exists, room_id=room_id))

    async def user_exists(self, user_id: str) -> bool:
        return await self._readers.read(functools.partial(_user_exists, user_id=user_id))

    async def room_media_uris(self, room_id: str) -> list[str]:
        """The strings the room's events give as ``url`` or
        ``info.thumbnail_url`` of their content, oldest first, once each;
        rejected events apart."""
        return await self._readers.read(functools.partial(_room_media_uris, room_id=room_id))

    async def user_media(
        self,
        user_id: str,
        origin: str,
        *,
        order_by: UserMediaOrder,
        backwards: bool,
        offset: int,
        limit: int,
    ) -> tuple[list[MediaRecord], int]:
        """A page of the media ``user_id`` uploaded, and how many there are."""
        return await self._readers.read(
            functools.partial(
                _user_media,
                user_id=user_id,
                origin=origin,
                order_by=order_by,
                backwards=backwards,
                offset=offset,
                limit=limit,
            )
        )

    async def deletion_candidates(
        self, server_name: str, *, local: bool, rule: DeletionRule, keep_profiles: bool, limit: int
    ) -> list[MediaKey]:
        """Up to ``limit`` of our media (``local``) or of other servers'
        that ``rule`` allows deleting, least recently used first;
        ``keep_profiles`` spares what profiles and room avatars show."""
        return await self._readers.read(
            functools.partial(
                _deletion_candidates,
                server_name=server_name,
                local=local,
                rule=rule,
                keep_profiles=keep_profiles,
                limit=limit,
            )
        )

    async def pending_deletions(self, limit: int) -> list[MediaKey]:
        """Media marked for deletion whose rows are still there."""
        return await self._readers.read(functools.partial(_pending_deletions, limit=limit))

    # Writes.

    async def quarantine(
        self, items: Sequence[MediaKey], *, server_name: str, quarantined_by: str, ts: int
    ) -> int:
        return await self._writer.submit(
            functools.partial(
                quarantine,
                items=list(items),
                server_name=server_name,
                quarantined_by=quarantined_by,
                ts=ts,
            )
        )

    async def quarantine_uploads(
        self, user_id: str, *, server_name: str, quarantined_by: str, ts: int
    ) -> int:
        return await self._writer.submit(
            functools.partial(
                quarantine_uploads,
                user_id=user_id,
                server_name=server_name,
                quarantined_by=quarantined_by,
                ts=ts,
            )
        )

    async def unquarantine(self, origin: str, media_id: str) -> None:
        await self._writer.submit(functools.partial(unquarantine, origin=origin, media_id=media_id))

    async def set_protected(self, origin: str, media_id: str, protected: bool) -> bool:
        return await self._writer.submit(
            functools.partial(set_protected, origin=origin, media_id=media_id, protected=protected)
        )

    async def mark_for_deletion(
        self, items: Sequence[MediaKey], rule: DeletionRule | None
    ) -> list[MediaKey]:
        return await self._writer.submit(
            functools.partial(mark_for_deletion, items=list(items), rule=rule)
        )

    async def remove_marked(self, items: Sequence[MediaKey], *, server_name: str) -> None:
        await self._writer.submit(
            functools.partial(remove_marked, items=list(items), server_name=server_name)
        )


# Reads.


def _room_exists(conn: sqlite3.Connection, *, room_id: str) -> bool:
    return conn.execute("SELECT 1 FROM rooms WHERE room_id = ?", (room_id,)).fetchone() is not None


def _user_exists(conn: sqlite3.Connection, *, user_id: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is not None


def _room_media_uris(conn: sqlite3.Connection, *, room_id: str) -> list[str]:
    found: dict[str, None] = {}
    for values in conn.execute(
        "SELECT json_extract(CAST(json AS TEXT), '$.content.url'),"
        " json_extract(CAST(json AS TEXT), '$.content.info.thumbnail_url')"
        " FROM events WHERE room_id = ? AND rejected_reason IS NULL ORDER BY stream_ordering",
        (room_id,),
    ):
        for value in values:
            if isinstance(value, str):
                found.setdefault(value, None)
    return list(found)


def _user_media(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    origin: str,
    order_by: UserMediaOrder,
    backwards: bool,
    offset: int,
    limit: int,
) -> tuple[list[MediaRecord], int]:
    where = "m.user_id = ? AND m.origin = ? AND m.uploaded_ts IS NOT NULL AND m.deleting = 0"
    direction = "DESC" if backwards else "ASC"
    rows = conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM {RECORD_TABLES} WHERE {where}"
        f" ORDER BY {_ORDER_COLUMNS[order_by]} {direction}, m.media_id ASC LIMIT ? OFFSET ?",
        (user_id, origin, limit, offset),
    ).fetchall()
    (total,) = conn.execute(
        f"SELECT COUNT(*) FROM media AS m WHERE {where}", (user_id, origin)
    ).fetchone()
    return [record_of(row) for row in rows], int(total)


def _rule_conditions(rule: DeletionRule) -> tuple[str, list[int]]:
    """SQL conditions on ``media AS m`` for ``rule``, and their parameters."""
    conditions = [f"{_LAST_USED} < ?", "COALESCE(m.size, 0) > ?"]
    if rule.spare_protected:
        conditions.append("m.safe_from_quarantine = 0")
    if rule.spare_quarantined:
        conditions.append(
            "NOT EXISTS (SELECT 1 FROM media_quarantine AS q"
            " WHERE q.origin = m.origin AND q.media_id = m.media_id)"
        )
    return " AND ".join(conditions), [rule.before_ts, rule.size_gt]


def _deletion_candidates(
    conn: sqlite3.Connection,
    *,
    server_name: str,
    local: bool,
    rule: DeletionRule,
    keep_profiles: bool,
    limit: int,
) -> list[MediaKey]:
    conditions, parameters = _rule_conditions(rule)
    origin = "m.origin = ?" if local else "m.origin != ?"
    in_use = (
        f" AND 'mxc://' || m.origin || '/' || m.media_id NOT IN ({_IN_USE})"
        if keep_profiles
        else ""
    )
    return [
        (str(row_origin), str(media_id))
        for row_origin, media_id in conn.execute(
            f"SELECT m.origin, m.media_id FROM media AS m WHERE {conditions} AND {origin}"
            f" AND m.deleting = 0{in_use} ORDER BY {_LAST_USED} LIMIT ?",
            (*parameters, server_name, limit),
        )
    ]


def _pending_deletions(conn: sqlite3.Connection, *, limit: int) -> list[MediaKey]:
    return [
        (str(origin), str(media_id))
        for origin, media_id in conn.execute(
            "SELECT origin, media_id FROM media WHERE deleting = 1 LIMIT ?", (limit,)
        )
    ]


# Writes.


@registered_write
def quarantine(
    conn: sqlite3.Connection,
    *,
    items: list[MediaKey],
    server_name: str,
    quarantined_by: str,
    ts: int,
) -> int:
    """Quarantine ``items``; how many are quarantined now. Protected media
    is left alone, and so is our media that does not exist; other servers'
    media is quarantined whether it is stored here or not, so it is never
    fetched. Media quarantined already keeps who quarantined it first.
    """
    count = 0
    for origin, media_id in dict.fromkeys(items):
        row = conn.execute(
            "SELECT safe_from_quarantine FROM media WHERE origin = ? AND media_id = ?",
            (origin, media_id),
        ).fetchone()
        if (row is None and origin == server_name) or (row is not None and row[0]):
            continue
        conn.execute(
            "INSERT OR IGNORE INTO media_quarantine"
            " (origin, media_id, quarantined_by, quarantined_ts) VALUES (?, ?, ?, ?)",
            (origin, media_id, quarantined_by, ts),
        )
        count += 1
    return count


@registered_write
def quarantine_uploads(
    conn: sqlite3.Connection, *, user_id: str, server_name: str, quarantined_by: str, ts: int
) -> int:
    """Quarantine every piece of media ``user_id`` uploaded here (or created
    the ID of), protected media apart; how many are quarantined now."""
    where = "user_id = ? AND origin = ? AND safe_from_quarantine = 0"
    conn.execute(
        "INSERT OR IGNORE INTO media_quarantine"
        " (origin, media_id, quarantined_by, quarantined_ts)"
        f" SELECT origin, media_id, ?, ? FROM media WHERE {where}",
        (quarantined_by, ts, user_id, server_name),
    )
    (count,) = conn.execute(
        f"SELECT COUNT(*) FROM media WHERE {where}", (user_id, server_name)
    ).fetchone()
    return int(count)


@registered_write
def unquarantine(conn: sqlite3.Connection, *, origin: str, media_id: str) -> None:
    conn.execute(
        "DELETE FROM media_quarantine WHERE origin = ? AND media_id = ?", (origin, media_id)
    )


@registered_write
def set_protected(conn: sqlite3.Connection, *, origin: str, media_id: str, protected: bool) -> bool:
    """Protect the media from quarantine, or stop; False if it is not here."""
    conn.execute(
        "UPDATE media SET safe_from_quarantine = ? WHERE origin = ? AND media_id = ?",
        (int(protected), origin, media_id),
    )
    return (
        conn.execute(
            "SELECT 1 FROM media WHERE origin = ? AND media_id = ?", (origin, media_id)
        ).fetchone()
        is not None
    )


@registered_write
def mark_for_deletion(
    conn: sqlite3.Connection, *, items: list[MediaKey], rule: DeletionRule | None
) -> list[MediaKey]:
    """Mark ``items`` that ``rule`` still allows deleting (all of them
    without a rule); answer those marked, these and earlier ones."""
    conditions, parameters = ("1", []) if rule is None else _rule_conditions(rule)
    marked: list[MediaKey] = []
    for origin, media_id in dict.fromkeys(items):
        conn.execute(
            f"UPDATE media AS m SET deleting = 1 WHERE m.origin = ? AND m.media_id = ?"
            f" AND m.deleting = 0 AND {conditions}",
            (origin, media_id, *parameters),
        )
        row = conn.execute(
            "SELECT deleting FROM media WHERE origin = ? AND media_id = ?", (origin, media_id)
        ).fetchone()
        if row is not None and row[0]:
            marked.append((origin, media_id))
    return marked


@registered_write
def remove_marked(conn: sqlite3.Connection, *, items: list[MediaKey], server_name: str) -> None:
    """Remove the rows of ``items`` marked for deletion, with their
    thumbnails' rows; our media's quarantine goes with it (its media ID is
    never given again), other servers' stays."""
    for origin, media_id in items:
        marked = conn.execute(
            "SELECT 1 FROM media WHERE origin = ? AND media_id = ? AND deleting = 1",
            (origin, media_id),
        ).fetchone()
        if marked is None:
            continue
        key = (origin, media_id)
        conn.execute("DELETE FROM media_thumbnails WHERE origin = ? AND media_id = ?", key)
        conn.execute("DELETE FROM media WHERE origin = ? AND media_id = ?", key)
        if origin == server_name:
            conn.execute("DELETE FROM media_quarantine WHERE origin = ? AND media_id = ?", key)
