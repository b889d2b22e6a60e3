"""What ingestion reads once for a run of one room's events, in one read.

Before it judges anything, a run (:class:`ranvier.core.ingest_batch.RoomRun`)
needs the rows of its events and of the events they cite, whether the room
has partial state and which of the prev events do, the state groups around
the prev events, the room's forward extremities, and which of its own
events an accepted event already cites; its first auth checks then need
the entries for its events' auth keys in the state after the prev events
and in the current state, and which of the events a stored redaction
names (the others those checks read as stored). Asked one by one, each is
a trip to a worker thread, and the trips of one transaction wait on each
other and on the signature checks running beside them; asked here, they
are one trip, and one read transaction makes them one snapshot of the
database.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass

from . import reads
from .readers import ReaderPool
from .records import EventStateGroups, StateKey, StoredEvent
from .redactions import redaction_targets

__all__ = ["RoomRunRows", "RunReads", "read_room_run"]


@dataclass(frozen=True, slots=True)
class RoomRunRows:
    """What storage holds of a run of one room's events, read at one time."""

    #: The stored events among those asked for, by ID.
    events: dict[str, StoredEvent]
    partial_state_room: bool
    #: The prev events asked for that have partial state (none unless the room has).
    partial_state_events: frozenset[str]
    #: The groups around each prev event that has them (not outliers).
    state_groups: dict[str, EventStateGroups]
    forward_extremities: frozenset[str]
    #: The run's events that an accepted event of the DAG cites as a prev event.
    cited: frozenset[str]
    #: The state keys asked for (the entries below hold those present).
    state_keys: frozenset[StateKey] = frozenset()
    #: The entries for ``state_keys`` of the group after each prev event.
    state_after_prevs: dict[int, dict[StateKey, str]] | None = None
    #: The entries for ``state_keys`` of the room's current state.
    current_state: dict[StateKey, str] | None = None
    #: The events asked for that a stored redaction names: the others are
    #: read by the auth checks as stored.
    redaction_targets: frozenset[str] = frozenset()
    #: The group the room's current state is (None: it has none).
    current_group: int | None = None


def read_room_run(
    conn: sqlite3.Connection,
    *,
    room_id: str,
    event_ids: Collection[str],
    wanted: Collection[str],
    prev_ids: Collection[str],
    state_keys: Collection[StateKey] = (),
) -> RoomRunRows:
    """The run's reads: ``event_ids`` are its events, ``wanted`` every event
    whose row it needs, ``prev_ids`` the prev events it cites, and
    ``state_keys`` the keys to read of the state after each prev event and
    of the current state.
    """
    partial_room = reads.is_partial_state_room(conn, room_id)
    events = reads.get_events(conn, wanted)
    # A run's events are mostly each other's prev events, and those not
    # stored yet have neither state groups nor partial state to look up.
    unstored = {event_id for event_id in event_ids if event_id not in events}
    stored_prevs = [prev_id for prev_id in prev_ids if prev_id not in unstored]
    partial_events = (
        reads.get_partial_state_event_ids(conn, stored_prevs)
        if partial_room and stored_prevs
        else frozenset()
    )
    groups = reads.get_events_state_groups(conn, stored_prevs)
    keys = frozenset(state_keys)
    after_prevs = None
    current = None
    if keys:
        after_prevs = {
            group: reads.get_state_ids_for_keys(conn, group, keys)
            for group in {groups_of.after for groups_of in groups.values()}
        }
        current = reads.get_current_state_ids_for_keys(conn, room_id, keys)
    return RoomRunRows(
        events=events,
        partial_state_room=partial_room,
        partial_state_events=partial_events,
        state_groups=groups,
        forward_extremities=reads.get_forward_extremities(conn, room_id),
        cited=reads.get_events_with_accepted_children(conn, event_ids),
        state_keys=keys,
        state_after_prevs=after_prevs,
        current_state=current,
        redaction_targets=redaction_targets(conn, wanted),
        current_group=reads.get_current_state_group(conn, room_id),
    )


class RunReads:
    """:func:`read_room_run` through the reader pool."""

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def read_room_run(
        self,
        room_id: str,
        *,
        event_ids: Collection[str],
        wanted: Collection[str],
        prev_ids: Collection[str],
        state_keys: Collection[StateKey] = (),
    ) -> RoomRunRows:
        return await self._readers.read(
            functools.partial(
                read_room_run,
                room_id=room_id,
                event_ids=frozenset(event_ids),
                wanted=frozenset(wanted),
                prev_ids=frozenset(prev_ids),
                state_keys=frozenset(state_keys),
            )
        )
