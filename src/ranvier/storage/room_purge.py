"""A room's purge: every stored row of the room deleted in one write, for
the room admin API's ``purge`` (:mod:`ranvier.core.admin_rooms`), so an
operator can remove abusive or illegal content from the database.

What goes: the room's events (outliers, rejected and soft-failed ones too)
and every row keyed by them or by the room: edges, state at each event,
the room's state groups and their rows, current state, forward
extremities, partial-state rows and resync progress, redactions,
relations, search rows, receipts, room account data and tags, reports,
key backups of the room's sessions, aliases, the published listings
(the server's own and application services' networks'),
forgotten-room marks, out-of-band memberships, client transactions that
sent into it, sliding sync rows, what each destination was sent of it,
the server notices room's record, an upgrade's claim on it, and the
room's version row.

What stays: the block (``blocked_rooms``), so a blocked room stays
blocked; our users' leaves still owed to the room's other servers, with
the events before them those servers missed (at most
:data:`~ranvier.storage.pdu_outbox.MAX_GAP` each), written to
``pdu_outbox`` by the purge itself (:mod:`ranvier.storage.pdu_outbox`) and
deleted once delivered, since catching a destination up reads the room's
events, which are gone; media files and their rows (media are not tied to a room, and
other rooms may use the same file; Synapse keeps them too, and the media
admin API removes them); and rows whose purpose outlives the room and
which hold an event only inside an opaque body (received transactions'
answers, kept a day for de-duplication; an application service's pending
transactions; to-device messages; admins' redaction jobs, which name
rooms and events, not what they said).

Invariants
----------

* **All or nothing.** One registered write: the room is entirely gone or
  nothing changed. With ``server_name`` given, the write refuses (400,
  nothing deleted) while a user of that server is still joined to,
  invited to or knocking on the room, read in the same transaction.
* **Children first.** Foreign keys are on; each table is emptied of the
  room before the tables its rows reference (:data:`_STATEMENTS`'s order).
* **No counter goes back** (:mod:`ranvier.storage.id_floors`): the
  events stream, the state group IDs and the un-partial-state stream keep
  the top they had, though the rows holding it are gone.
* **Gone for work in flight.** No tombstone is kept (a user of ours may
  join the room again), but the room's ``rooms`` row is gone, and a write
  of events or of a whole state for a room not stored raises
  :class:`~ranvier.errors.RoomGoneError` in its own transaction unless
  it is what makes a room known (a join's first state, an invite or a
  knock of ours; see :func:`ranvier.storage.writes.persist_events`). So
  work on the room in flight at the purge (the un-partial-state task, an
  event being ingested, a client's send, a join) ends with that error and
  brings no row back.
* Deleted pages are overwritten
  (:func:`~ranvier.storage.connections.secure_deletion` for the write),
  so the purged content does not linger in the database file's free pages;
  the words of the room's full-text rows leave the index's segments too,
  in the write or by a scrub after it (:mod:`ranvier.storage.search_scrub`).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from ranvier.errors import MatrixError

from .admin_reads import local_members_to_remove
from .connections import secure_deletion
from .id_floors import keep_floors
from .pdu_outbox import keep_leaves_owed
from .search_scrub import after_search_deletes, before_search_deletes
from .write_backend import WriteBackend, registered_write

__all__ = ["PURGED_TABLES", "PurgeResult", "RoomPurgeStorage", "purge_room"]

_EVENTS: Final = "SELECT event_id FROM events WHERE room_id = :room"
_ORDERINGS: Final = "SELECT stream_ordering FROM events WHERE room_id = :room"
_GROUPS: Final = "SELECT id FROM state_groups WHERE room_id = :room"

#: (table, the rows of the room in it), in the order they are deleted.
_STATEMENTS: Final[tuple[tuple[str, str], ...]] = (
    ("event_search", "room_id = :room"),
    ("event_relations", f"stream_ordering IN ({_ORDERINGS})"),
    ("redactions", f"event_id IN ({_EVENTS})"),
    ("event_reports", "room_id = :room"),
    ("receipts", "room_id = :room"),
    ("account_data", "room_id = :room"),
    ("client_transactions", "room_id = :room"),
    ("room_aliases", "room_id = :room"),
    ("forgotten_rooms", "room_id = :room"),
    ("out_of_band_memberships", "room_id = :room"),
    ("server_notice_rooms", "room_id = :room"),
    ("sliding_sync_rooms", "room_id = :room"),
    ("room_key_backup_keys", "room_id = :room"),
    ("room_list", "room_id = :room"),
    ("appservice_room_list", "room_id = :room"),
    ("room_upgrade_claims", "room_id = :room"),
    ("destination_rooms", "room_id = :room"),
    ("un_partial_stated_rooms", "room_id = :room"),
    ("resync_progress", "room_id = :room"),
    ("partial_state_events", f"event_id IN ({_EVENTS})"),
    ("partial_state_rooms_servers", "room_id = :room"),
    ("partial_state_device_updates", "room_id = :room"),
    ("partial_state_rooms", "room_id = :room"),
    ("forward_extremities", "room_id = :room"),
    ("current_state", "room_id = :room"),
    ("current_state_groups", "room_id = :room"),
    ("event_state", f"event_ordering IN ({_ORDERINGS})"),
    ("state_group_rows", f"state_group IN ({_GROUPS})"),
    # One statement: a group's prev_group is checked once all are gone.
    ("state_groups", "room_id = :room"),
    ("event_prev_edges", f"event_ordering IN ({_ORDERINGS})"),
    ("event_auth_edges", f"event_ordering IN ({_ORDERINGS})"),
    ("events", "room_id = :room"),
    ("rooms", "room_id = :room"),
)

#: Every table the purge deletes the room's rows from.
PURGED_TABLES: Final = frozenset(table for table, _ in _STATEMENTS)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a purge deleted: ``rows`` per table, with none left out; and
    the destinations our users' leaves are still owed to, kept for them."""

    rows: dict[str, int]
    owed_destinations: tuple[str, ...] = ()

    @property
    def events(self) -> int:
        return self.rows.get("events", 0)


def _still_in_room(room_id: str, users: list[str]) -> MatrixError:
    shown = ", ".join(users[:10]) + (" …" if len(users) > 10 else "")
    return MatrixError(
        f"not purging {room_id}: local users are still in it ({shown});"
        " send force_purge to purge it anyway",
        errcode="M_UNKNOWN",
        http_status=400,
    )


@registered_write
def purge_room(
    conn: sqlite3.Connection,
    *,
    room_id: str,
    server_name: str | None = None,
    origin: str | None = None,
    leaves: tuple[str, ...] = (),
) -> PurgeResult | None:
    """Delete every row of ``room_id`` but its block; None if it is not
    stored here. With ``server_name``, refuse while a user of that server
    is joined to, invited to or knocking on it (see the module's doc).

    With ``origin`` (this server's name), the leaves of its users that
    other servers have not acknowledged are kept for them first
    (:func:`~ranvier.storage.pdu_outbox.keep_leaves_owed`, which says what
    ``leaves`` are).
    """
    if conn.execute("SELECT 1 FROM rooms WHERE room_id = ?", (room_id,)).fetchone() is None:
        return None
    if server_name is not None:
        staying = local_members_to_remove(conn, room_id=room_id, server_name=server_name)
        if staying:
            raise _still_in_room(room_id, staying)
    owed: list[str] = []
    if origin is not None:
        owed = keep_leaves_owed(conn, room_id=room_id, origin=origin, leaves=leaves)
    keep_floors(conn)
    # A backup whose keys change says so through its etag.
    conn.execute(
        "UPDATE room_key_backup_versions SET etag = etag + 1 WHERE (user_id, version) IN"
        " (SELECT DISTINCT user_id, version FROM room_key_backup_keys WHERE room_id = ?)",
        (room_id,),
    )
    before_search_deletes(conn)
    with secure_deletion(conn):
        rows = {
            table: conn.execute(f"DELETE FROM {table} WHERE {where}", {"room": room_id}).rowcount
            for table, where in _STATEMENTS
        }
    after_search_deletes(conn, rows["event_search"])
    return PurgeResult(rows, tuple(owed))


class RoomPurgeStorage:
    """:func:`purge_room` through the storage actor."""

    def __init__(self, actor: WriteBackend) -> None:
        self._actor = actor

    async def purge_room(
        self,
        room_id: str,
        *,
        refuse_if_members_of: str | None = None,
        origin: str | None = None,
        leaves: Collection[str] = (),
    ) -> PurgeResult | None:
        """See :func:`purge_room`; ``refuse_if_members_of`` is its ``server_name``."""
        return await self._actor.submit(
            functools.partial(
                purge_room,
                room_id=room_id,
                server_name=refuse_if_members_of,
                origin=origin,
                leaves=tuple(leaves),
            )
        )
