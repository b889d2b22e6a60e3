"""Rooms users have forgotten (``POST /rooms/{roomId}/forget``).

Forgetting a room a user has left hides it from them: its history, its
state and its place in ``/sync``'s ``leave`` section, until they are in it
again. One row per (user, room) says so.

Invariants
----------

* **Only a room the user is out of is forgotten.** :func:`_forget_room`
  reads the user's membership in the same transaction as it writes, so a
  join committed just before it is seen and the forget refused: a user is
  never joined to, invited to or knocking on a room marked forgotten by a
  write that raced with the membership.
* **Being in the room again clears it.** An invite, knock or join of the
  user that becomes their current membership deletes the row in the
  transaction that writes it (:func:`clear_forgotten`, from
  :func:`ranvier.storage.writes.persist_events`, whatever path the event
  came by). An out-of-band invite or knock (an outlier of a room this
  server is not in, :mod:`ranvier.storage.local_memberships`) is that
  membership, and so, in a room known here only through outliers, is any
  outlier invite or knock. An old
  membership event backfilled into the timeline does not become current,
  so it clears nothing.
* Reads still look at the membership: a row only matters while the user's
  current membership is a leave or a ban.
* **Writing the same forget again changes nothing**, so a worker's write
  run again after the main process restarted answers as the first did.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from ranvier.errors import MatrixError

from .local_memberships import newest_membership
from .readers import ReaderPool
from .records import EventToPersist
from .write_backend import WriteBackend, registered_write

__all__ = ["ForgottenRoomStorage", "clear_forgotten", "forgotten_rooms", "is_forgotten"]

#: Memberships that put the user in the room again.
_BACK_IN: Final = frozenset({"invite", "knock", "join"})


class _Content(msgspec.Struct):
    content: dict[str, Any] = {}


_decode: Final = msgspec.json.Decoder(_Content).decode


def _membership(json: bytes) -> str | None:
    try:
        value = _decode(json).content.get("membership")
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, str) else None


class ForgottenRoomStorage:
    """Forgotten rooms over the storage actor (writes) and the reader pool (reads)."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    async def forget_room(self, user_id: str, room_id: str) -> None:
        """Mark the room forgotten by ``user_id``; 400 ``M_UNKNOWN`` while
        they are joined to it, invited or knocking, and nothing kept for a
        room they never had a membership in."""
        await self._actor.submit(functools.partial(_forget_room, user_id=user_id, room_id=room_id))

    async def has_forgotten(self, user_id: str, room_id: str) -> bool:
        return await self._readers.read(
            functools.partial(is_forgotten, user_id=user_id, room_id=room_id)
        )

    async def forgotten_rooms(self, user_id: str) -> frozenset[str]:
        return await self._readers.read(functools.partial(forgotten_rooms, user_id=user_id))


def is_forgotten(conn: sqlite3.Connection, *, user_id: str, room_id: str) -> bool:
    """Whether ``user_id`` forgot the room since they were last in it."""
    row = conn.execute(
        "SELECT 1 FROM forgotten_rooms WHERE user_id = ? AND room_id = ?", (user_id, room_id)
    ).fetchone()
    return row is not None


def forgotten_rooms(conn: sqlite3.Connection, *, user_id: str) -> frozenset[str]:
    """The rooms ``user_id`` forgot since they were last in them."""
    rows = conn.execute("SELECT room_id FROM forgotten_rooms WHERE user_id = ?", (user_id,))
    return frozenset(str(room_id) for (room_id,) in rows)


def _current_membership(conn: sqlite3.Connection, user_id: str, room_id: str) -> str | None:
    """The user's newest membership in the room, as /sync shows it."""
    found = newest_membership(conn, user_id, room_id)
    return None if found is None else found[1]


def _has_current_state(conn: sqlite3.Connection, room_id: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM current_state_groups WHERE room_id = ?", (room_id,)).fetchone()
        is not None
    )


@registered_write
def _forget_room(conn: sqlite3.Connection, *, user_id: str, room_id: str) -> None:
    membership = _current_membership(conn, user_id, room_id)
    if membership in _BACK_IN:
        raise MatrixError(
            f"{user_id} has not left {room_id} (membership {membership})",
            errcode="M_UNKNOWN",
            http_status=400,
        )
    if membership is None:
        # Never in the room: nothing to hide, and no row for anyone to fill
        # the table with.
        return
    conn.execute(
        "INSERT OR IGNORE INTO forgotten_rooms (user_id, room_id) VALUES (?, ?)",
        (user_id, room_id),
    )


def clear_forgotten(conn: sqlite3.Connection, events: Iterable[EventToPersist]) -> None:
    """Delete the forgotten rows of users whose invite, knock or join among
    ``events`` (written already, in this transaction, current state moved)
    is now their membership. Events of other types cost a comparison, and
    membership events one look at the table while nobody has forgotten a room.
    """
    members = [
        event
        for event in events
        if event.type == "m.room.member"
        and event.state_key is not None
        and event.rejected_reason is None
        and not event.soft_failed
    ]
    if not members or conn.execute("SELECT 1 FROM forgotten_rooms LIMIT 1").fetchone() is None:
        return
    for event in members:
        assert event.state_key is not None
        membership = _membership(event.json)
        if membership not in _BACK_IN:
            continue
        if event.outlier:
            # An out-of-band invite or knock is the user's membership now;
            # another outlier join is an auth event fetched on its own.
            if not event.out_of_band and (
                membership == "join" or _has_current_state(conn, event.room_id)
            ):
                continue
        elif (
            conn.execute(
                "SELECT 1 FROM current_state WHERE room_id = ? AND type = 'm.room.member'"
                " AND state_key = ? AND event_id = ?",
                (event.room_id, event.state_key, event.event_id),
            ).fetchone()
            is None
        ):
            continue
        conn.execute(
            "DELETE FROM forgotten_rooms WHERE user_id = ? AND room_id = ?",
            (event.state_key, event.room_id),
        )
