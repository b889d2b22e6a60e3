"""Our users' newest membership in each room, the room's state and what
came from outside it taken together.

A room's current state says what a user's membership is as far as the
DAG held here goes. While no user of ours is in the room, the DAG stops
where we left it, yet the room goes on: another server invites one of our
users again, our user declines it or knocks through a server in the room,
the room withdraws the invite. Each of these reaches us as one event we
keep as an outlier, with no place in the DAG, and each is newer than
anything the DAG here says about the user.

Those outliers are marked when written (``EventToPersist.out_of_band``,
a row of ``out_of_band_memberships``), because not every outlier
membership is one: a membership fetched as an auth event or with a room's
state on a join is an old event, whatever its stream ordering. A user's
membership in a room is then the newer, by stream ordering, of the member
event in the room's current state and the newest marked outlier, while
the outlier is still one. A real membership later taken into the DAG (the
user joins, a leave arrives in the room's timeline) is newer than the
outlier and wins; an outlier taken into the DAG itself is read from the
current state like any event.

Invariants:

* A row names an outlier ``m.room.member`` event of the row's room and
  user, written in the same transaction as the event; a knock's row names
  the server it was sent through (``sent_through``), the only one whose
  refusal of it is believed.
* Only writes marked out-of-band add rows. A row whose event has since
  joined the DAG, or is gone with its room, is not read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import msgspec

from .records import EventToPersist

__all__ = [
    "LocalMembership",
    "dag_membership",
    "newest_membership",
    "newest_memberships",
    "record_out_of_band",
    "sent_through",
]

#: ``(room ID, membership, stream ordering of the membership event, its event ID)``.
LocalMembership = tuple[str, str, int, str]


class _Content(msgspec.Struct):
    content: dict[str, Any] = {}


_decode_content = msgspec.json.Decoder(_Content).decode


def _membership_of(json: bytes) -> str:
    membership = _decode_content(json).content.get("membership")
    return membership if isinstance(membership, str) else ""


def record_out_of_band(conn: sqlite3.Connection, events: Iterable[EventToPersist]) -> None:
    """Mark the out-of-band memberships among ``events`` (written already,
    in this transaction).
    """
    conn.executemany(
        "INSERT OR IGNORE INTO out_of_band_memberships (event_id, room_id, user_id, sent_through)"
        " VALUES (?, ?, ?, ?)",
        [
            (event.event_id, event.room_id, event.state_key, event.sent_through)
            for event in events
            if event.out_of_band and event.type == "m.room.member" and event.state_key is not None
        ],
    )


_CURRENT_SQL = """
SELECT cs.room_id, cs.event_id, e.stream_ordering, e.json
FROM current_state AS cs JOIN events AS e ON e.event_id = cs.event_id
WHERE cs.type = 'm.room.member' AND cs.state_key = ?
"""
_OUT_OF_BAND_SQL = """
SELECT o.room_id, o.event_id, e.stream_ordering, e.json
FROM out_of_band_memberships AS o JOIN events AS e ON e.event_id = o.event_id
WHERE o.user_id = ? AND e.outlier = 1
"""


def newest_memberships(conn: sqlite3.Connection, user_id: str) -> list[LocalMembership]:
    """The user's membership in every room they have one in, as the module
    says: the current state's, unless a marked outlier is newer.
    """
    newest: dict[str, LocalMembership] = {}
    for sql in (_CURRENT_SQL, _OUT_OF_BAND_SQL):
        for room_id, event_id, ordering, json in conn.execute(sql, (user_id,)):
            known = newest.get(room_id)
            if known is None or ordering > known[2]:
                newest[room_id] = (room_id, _membership_of(json), int(ordering), event_id)
    return list(newest.values())


def newest_membership(
    conn: sqlite3.Connection, user_id: str, room_id: str
) -> LocalMembership | None:
    """The user's membership in one room, as :func:`newest_memberships` reads it."""
    found: LocalMembership | None = None
    for sql in (_CURRENT_SQL + " AND cs.room_id = ?", _OUT_OF_BAND_SQL + " AND o.room_id = ?"):
        for _, event_id, ordering, json in conn.execute(sql, (user_id, room_id)):
            if found is None or ordering > found[2]:
                found = (room_id, _membership_of(json), int(ordering), event_id)
    return found


def sent_through(conn: sqlite3.Connection, event_id: str) -> str | None:
    """The server an out-of-band knock was sent through; None for any
    other event, and for a knock kept before this was recorded.
    """
    row = conn.execute(
        "SELECT sent_through FROM out_of_band_memberships WHERE event_id = ?", (event_id,)
    ).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def dag_membership(conn: sqlite3.Connection, user_id: str, room_id: str) -> LocalMembership | None:
    """The user's membership in the room's current state alone."""
    row = conn.execute(_CURRENT_SQL + " AND cs.room_id = ?", (user_id, room_id)).fetchone()
    return None if row is None else (room_id, _membership_of(row[3]), int(row[2]), row[1])
