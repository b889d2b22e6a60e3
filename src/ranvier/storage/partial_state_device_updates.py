"""Local users' device-list updates made while a room's state was partial,
remembered until the resync completes, so that the servers the partial
state left out can be sent what they missed (:mod:`ranvier.core.e2e_keys`).

Table (the schema's ``_partial_state_device_updates`` migration)
----------------------------------------------------------------

``partial_state_device_updates`` has a row per update and room: whose
update it is and its device-list stream position (together, the update:
a write repeated after the main process restarted adds nothing), the
room's forward extremities when the update was made (``point``, a JSON
list), the servers it went to (``sent_to``, a JSON list) and its EDUs as
sent (``edus``, a JSON list of ``[edu_type, content]``), numbered in the
order they were made.

Invariants
----------

* **Rows are added only for a room whose state is partial**, read in the
  same transaction as the insert. The process that completes a resync
  clears the partial state first and reads the rows after, so a row is
  either there to be read or was never written: the process whose update
  found the room complete sends the missed EDUs itself.
* **At most ``keep`` rows per room**, the oldest dropped first.
* **Rows go once their EDUs were handed on** (by number, so that nothing
  added meanwhile goes with them), or with the room's purge. There is no
  foreign key to ``partial_state_rooms``: the rows must outlive the
  clearing of the room's partial state until they are read.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["PartialStateDeviceUpdateStorage", "RememberedUpdate"]


@dataclass(frozen=True, slots=True)
class RememberedUpdate:
    """One update remembered for one room."""

    #: The row's number: forgetting goes up to one.
    number: int
    point: list[str]
    sent_to: list[str]
    edus: list[tuple[str, dict[str, Any]]]


class PartialStateDeviceUpdateStorage:
    """The remembered updates over the write backend and the reader pool."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    async def remember(
        self,
        rooms: Sequence[tuple[str, Collection[str], Collection[str]]],
        *,
        user_id: str,
        position: int,
        edus: Sequence[tuple[str, dict[str, Any]]],
        keep: int,
    ) -> list[str]:
        """Remember ``user_id``'s update at device-list ``position`` (its
        ``edus``) for each ``(room, point, sent_to)`` whose state is still
        partial, keeping the newest ``keep`` per room; the rooms whose state
        was complete by then (nothing remembered for them).
        """
        return await self._writer.submit(
            functools.partial(
                _remember,
                rooms=[
                    (room_id, sorted(point), sorted(sent_to)) for room_id, point, sent_to in rooms
                ],
                user_id=user_id,
                position=position,
                edus=msgspec.json.encode([[edu_type, content] for edu_type, content in edus]),
                keep=keep,
            )
        )

    async def remembered(self, room_id: str) -> list[RememberedUpdate]:
        """The updates remembered for ``room_id``, oldest first."""
        return await self._readers.read(functools.partial(_remembered, room_id=room_id))

    async def forget(self, room_id: str, upto: int) -> int:
        """Forget ``room_id``'s updates numbered up to ``upto``; how many."""
        return await self._writer.submit(functools.partial(_forget, room_id=room_id, upto=upto))

    async def rooms_completed_with_updates(self) -> list[str]:
        """Rooms whose state is complete and that still have updates
        remembered: a restart came between the clearing and the sending.
        """
        return await self._readers.read(_rooms_completed_with_updates)


@registered_write
def _remember(
    conn: sqlite3.Connection,
    *,
    rooms: list[tuple[str, list[str], list[str]]],
    user_id: str,
    position: int,
    edus: bytes,
    keep: int,
) -> list[str]:
    complete: list[str] = []
    for room_id, point, sent_to in rooms:
        partial = conn.execute(
            "SELECT 1 FROM partial_state_rooms WHERE room_id = ?", (room_id,)
        ).fetchone()
        if partial is None:
            complete.append(room_id)
            continue
        conn.execute(
            "INSERT OR IGNORE INTO partial_state_device_updates"
            " (room_id, user_id, position, point, sent_to, edus) VALUES (?, ?, ?, ?, ?, ?)",
            (
                room_id,
                user_id,
                position,
                msgspec.json.encode(point).decode(),
                msgspec.json.encode(sent_to).decode(),
                edus,
            ),
        )
        conn.execute(
            "DELETE FROM partial_state_device_updates WHERE room_id = ? AND id <= ("
            " SELECT id FROM partial_state_device_updates WHERE room_id = ?"
            " ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (room_id, room_id, keep),
        )
    return complete


_decode_names = msgspec.json.Decoder(list[str]).decode
_decode_edus = msgspec.json.Decoder(list[tuple[str, dict[str, Any]]]).decode


def _remembered(conn: sqlite3.Connection, *, room_id: str) -> list[RememberedUpdate]:
    return [
        RememberedUpdate(
            int(number), _decode_names(point), _decode_names(sent_to), _decode_edus(edus)
        )
        for number, point, sent_to, edus in conn.execute(
            "SELECT id, point, sent_to, edus FROM partial_state_device_updates"
            " WHERE room_id = ? ORDER BY id",
            (room_id,),
        )
    ]


@registered_write
def _forget(conn: sqlite3.Connection, *, room_id: str, upto: int) -> int:
    cursor = conn.execute(
        "DELETE FROM partial_state_device_updates WHERE room_id = ? AND id <= ?", (room_id, upto)
    )
    return cursor.rowcount


def _rooms_completed_with_updates(conn: sqlite3.Connection) -> list[str]:
    return [
        str(room_id)
        for (room_id,) in conn.execute(
            "SELECT DISTINCT room_id FROM partial_state_device_updates"
            " WHERE room_id NOT IN (SELECT room_id FROM partial_state_rooms) ORDER BY room_id"
        )
    ]
