"""PDUs owed to other servers that catching up cannot send: our users'
leaves of a room purged here (:mod:`ranvier.storage.room_purge`), and the
events a server missed before them.

The federation sender normally needs nothing kept but positions
(``destination_rooms``): a destination that missed events of a room,
backing off or across a restart, is sent the room's latest events from the
room's own tables, and fetches the gap before them from us. A purge
deletes those tables, and with them what a destination down at the time
was still owed. What matters of it is that our users left: without their
leaves the room's other servers keep them as members and keep sending us
the room. So the purge writes, in its own transaction and before it
deletes anything, what each destination is owed into ``pdu_outbox``, a
table tied to no room, and the sender reads it like the EDU outbox
(:class:`ranvier.federation.sender.interfaces.PduOutbox`).

Invariants
----------

* **Written with the purge, or not at all.** :func:`keep_leaves_owed`
  runs inside the purge's write: the room is gone and what it owed kept,
  or neither.
* **Owed means not acknowledged.** A leave is kept for a destination
  whose sent position in the room (``destination_rooms``) is behind it:
  one that the leave was handed over for and has not taken, or, for the
  leaves the purge's own deletion just made (``leaves``), any of the
  room's other servers, since the position a leave handed over a moment
  ago may not be written yet. A destination that takes a leave between
  the purge and its send gets it twice; it keeps each event once.
* **A leave comes with the gap before it.** A destination places an event
  after its prev events, and one it lacks it fetches from the sender,
  which after the purge answers that it knows no such room: a leave alone
  would be refused by a server that missed the messages before it. So a
  destination owed leaves is also kept the room's events it may have
  missed up to its newest leave: those after its sent position (after its
  own first event in the room when it acknowledged none), but its own
  servers' events, at most :data:`MAX_GAP` of the newest, oldest first. A
  destination that missed more than that may still fail to place the
  leaves.
* **Kept until taken.** A destination's rows are deleted up to a position
  once it took (or refused outright) the transaction carrying them, so a
  backoff or a restart delays them and loses none. Each (destination,
  event) is kept once, so a purge run again adds nothing.
* **Only what a member was owed stays, and only until delivered.** The
  events kept are ones the destination, in the room, was entitled to and
  would have been sent had it been up; each goes once the destination
  took it. The rest of the room (its state, older history, what servers
  that were up have had) goes with the purge.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection
from typing import Final

from .membership_sql import MEMBERSHIP
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["MAX_GAP", "PduOutboxStorage", "keep_leaves_owed"]

#: The most events kept for one destination of a purged room: the newest
#: it may have missed up to its newest leave owed (see the module's doc).
MAX_GAP: Final = 200

# Our users' leaves in the room's current state, as our users' servers see
# them: the member is ours and so is the sender (a leave, or a kick by one
# of our moderators).
_OUR_LEAVES: Final = (
    "SELECT e.event_id, e.stream_ordering FROM current_state AS cs"
    " JOIN events AS e ON e.event_id = cs.event_id"
    " WHERE cs.room_id = :room AND cs.type = 'm.room.member'"
    f" AND {MEMBERSHIP} = 'leave'"
    " AND substr(cs.state_key, -length(:ours)) = :ours"
    " AND substr(e.sender, -length(:ours)) = :ours ORDER BY e.stream_ordering"
)

_JOINED_MEMBERS: Final = (
    "SELECT cs.state_key FROM current_state AS cs JOIN events AS e ON e.event_id = cs.event_id"
    f" WHERE cs.room_id = :room AND cs.type = 'm.room.member' AND {MEMBERSHIP} = 'join'"
)


def _server_of(user_id: str) -> str | None:
    _, colon, server = user_id.partition(":")
    return server if colon and server else None


def keep_leaves_owed(
    conn: sqlite3.Connection, *, room_id: str, origin: str, leaves: Collection[str] = ()
) -> list[str]:
    """Write our users' leaves of ``room_id`` that another server has not
    acknowledged, with the events before them it may have missed, into
    ``pdu_outbox`` before the room's purge deletes them; the destinations
    owed any, in name order.

    ``origin`` is this server's name. ``leaves`` are the event IDs of the
    leaves just made for the purge: owed to every other server of the room
    whose sent position is behind them, the position of their handing over
    perhaps not written yet. Any other leave of ours is owed to a
    destination it was handed over for and not sent.
    """
    ours = f":{origin}"
    found = conn.execute(_OUR_LEAVES, {"room": room_id, "ours": ours}).fetchall()
    if not found:
        return []
    # destination -> (newest position handed over, newest acknowledged or None).
    positions: dict[str, tuple[int, int | None]] = {
        str(destination): (int(handed), None if sent is None else int(sent))
        for destination, handed, sent in conn.execute(
            "SELECT destination, stream_ordering, sent_stream_ordering"
            " FROM destination_rooms WHERE room_id = ?",
            (room_id,),
        )
    }
    servers: set[str] = set(positions)
    for (member,) in conn.execute(_JOINED_MEMBERS, {"room": room_id}):
        server = _server_of(str(member))
        if server is not None:
            servers.add(server)
    servers.update(
        str(server)
        for (server,) in conn.execute(
            "SELECT server_name FROM partial_state_rooms_servers WHERE room_id = ?", (room_id,)
        )
    )
    servers.discard(origin)
    just_made = frozenset(leaves)
    owed: list[str] = []
    for destination in sorted(servers):
        handed, sent = positions.get(destination, (0, None))
        acknowledged = sent or 0
        leaves_owed = [
            (str(event_id), int(ordering))
            for event_id, ordering in found
            if ordering > acknowledged and (event_id in just_made or ordering <= handed)
        ]
        if not leaves_owed:
            continue
        owed.append(destination)
        kept = dict(leaves_owed)
        kept.update(
            _gap(conn, room_id=room_id, destination=destination, sent=sent, upto=max(kept.values()))
        )
        conn.executemany(
            "INSERT OR IGNORE INTO pdu_outbox (destination, event_id, room_id, pdu)"
            " SELECT ?, event_id, room_id, json FROM events WHERE event_id = ?",
            [(destination, event_id) for event_id in sorted(kept, key=kept.__getitem__)],
        )
    return owed


def _gap(
    conn: sqlite3.Connection, *, room_id: str, destination: str, sent: int | None, upto: int
) -> dict[str, int]:
    """The room's events up to ``upto`` (the newest leave of ours owed to
    ``destination``) that it may not have, by event ID with their stream
    orderings: see the module's doc."""
    theirs = f":{destination}"
    if sent is None:
        # Nothing acknowledged: what it missed starts after its own first
        # event in the room (its join, as a rule); with none, nothing.
        (first,) = conn.execute(
            "SELECT MIN(stream_ordering) FROM events WHERE room_id = ?"
            " AND substr(sender, -length(?)) = ?",
            (room_id, theirs, theirs),
        ).fetchone()
        if first is None:
            return {}
        after = int(first)
    else:
        after = sent
    return {
        str(event_id): int(ordering)
        for event_id, ordering in conn.execute(
            "SELECT event_id, stream_ordering FROM events"
            " WHERE room_id = :room AND stream_ordering > :after AND stream_ordering <= :upto"
            " AND outlier = 0 AND soft_failed = 0 AND rejected_reason IS NULL"
            " AND substr(sender, -length(:theirs)) != :theirs"
            " ORDER BY stream_ordering DESC LIMIT :most",
            {"room": room_id, "after": after, "upto": upto, "theirs": theirs, "most": MAX_GAP},
        )
    }


def _destinations(conn: sqlite3.Connection, *, after: str, limit: int) -> list[str]:
    return [
        str(destination)
        for (destination,) in conn.execute(
            "SELECT DISTINCT destination FROM pdu_outbox WHERE destination > ?"
            " ORDER BY destination LIMIT ?",
            (after, limit),
        )
    ]


def _pdus(
    conn: sqlite3.Connection, *, destination: str, after: int, limit: int
) -> list[tuple[int, str, bytes]]:
    return [
        (int(position), str(event_id), bytes(pdu))
        for position, event_id, pdu in conn.execute(
            "SELECT position, event_id, pdu FROM pdu_outbox WHERE destination = ? AND position > ?"
            " ORDER BY position LIMIT ?",
            (destination, after, limit),
        )
    ]


@registered_write
def _delete_pdus(conn: sqlite3.Connection, *, destination: str, upto: int) -> int:
    return conn.execute(
        "DELETE FROM pdu_outbox WHERE destination = ? AND position <= ?", (destination, upto)
    ).rowcount


class PduOutboxStorage:
    """The PDU outbox over the write backend and the reader pool, for the
    federation sender (:class:`ranvier.federation.sender.interfaces.PduOutbox`)."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def pdu_outbox_destinations(self, after: str | None, limit: int) -> list[str]:
        """Destinations owed PDUs, in name order, after ``after``, at most ``limit``."""
        return await self._readers.read(
            functools.partial(_destinations, after=after or "", limit=limit)
        )

    async def outbox_pdus(
        self, destination: str, after: int, limit: int
    ) -> list[tuple[int, str, bytes]]:
        """``(position, event ID, JSON)`` of the PDUs owed to
        ``destination`` after ``after``, oldest first, at most ``limit``."""
        return await self._readers.read(
            functools.partial(_pdus, destination=destination, after=after, limit=limit)
        )

    async def delete_outbox_pdus(self, destination: str, upto: int) -> int:
        """Forget the PDUs owed to ``destination`` up to ``upto``, which it
        took; how many went."""
        return await self._writer.submit(
            functools.partial(_delete_pdus, destination=destination, upto=upto)
        )
