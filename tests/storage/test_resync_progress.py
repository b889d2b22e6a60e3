"""The recorded progress of a room's resync: written through the actor,
replaced, read back, and gone with the room's partial state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from ranvier.errors import PartialStateEventsRemainError
from ranvier.storage import EventToPersist, Storage
from ranvier.storage.reads import ResyncProgress
from ranvier.storage.writes import store_partial_join

# The room the storage fixtures make known.
ROOM = "!room:example.org"
VERSION = "10"
EventFactory = Callable[..., EventToPersist]
CREATE = ("m.room.create", "")
OTHER_ROOM = "!other:example.org"


def _progress(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "phase": "walking",
        "server": "a.example:8448",
        "events_resynced": 1_204,
        "events_total": 2_000,
        "attempts": 2,
        "last_error": None,
        "updated_ts": 1_700_000_000_000,
    }
    values.update(changes)
    return values


async def _partial_room(storage: Storage, make_event: EventFactory) -> None:
    """ROOM joined with partial state, its join written on partial state."""
    base = await storage.store_state_group(ROOM, None, {CREATE: "$create"})
    await storage.store_partial_join(ROOM, VERSION, "$join", "a.example:8448", ["b.example"])
    await storage.persist_events([make_event("$join", before=base, partial=True)])


async def test_progress_is_replaced_and_goes_with_the_rooms_partial_state(
    storage: Storage, make_event: EventFactory
) -> None:
    await _partial_room(storage, make_event)
    assert await storage.get_resync_progress() == {}

    first = _progress(phase="fetching", events_resynced=0, last_error=None)
    assert await storage.store_resync_progress(ROOM, **first) is True
    assert await storage.get_resync_progress() == {ROOM: ResyncProgress(room_id=ROOM, **first)}

    second = _progress(server=None, last_error="b.example: connection refused", attempts=3)
    assert await storage.store_resync_progress(ROOM, **second) is True
    assert await storage.get_resync_progress() == {ROOM: ResyncProgress(room_id=ROOM, **second)}

    # A clear refused while an event has partial state keeps the row.
    with pytest.raises(PartialStateEventsRemainError):
        await storage.clear_partial_state(ROOM)
    assert set(await storage.get_resync_progress()) == {ROOM}

    groups = await storage.get_event_state_groups("$join")
    assert groups is not None
    await storage.update_state_for_partial_event("$join", groups.before, None)
    assert await storage.clear_partial_state(ROOM) is True
    assert await storage.get_resync_progress() == {}
    # Progress that arrives after the clear is dropped, not left behind.
    assert await storage.store_resync_progress(ROOM, **_progress(phase="clearing")) is False
    assert await storage.get_resync_progress() == {}


async def test_progress_of_a_room_without_partial_state_is_dropped(
    storage: Storage, make_event: EventFactory
) -> None:
    await _partial_room(storage, make_event)
    await storage.store_room(OTHER_ROOM, VERSION)
    assert await storage.store_resync_progress(OTHER_ROOM, **_progress()) is False
    assert await storage.store_resync_progress("!unknown:example.org", **_progress()) is False
    assert await storage.store_resync_progress(ROOM, **_progress()) is True
    assert set(await storage.get_resync_progress()) == {ROOM}


def test_the_schema_ties_a_row_to_the_rooms_partial_state(conn: sqlite3.Connection) -> None:
    columns = "room_id, phase, events_resynced, events_total, attempts, updated_ts"
    insert = f"INSERT INTO resync_progress ({columns}) VALUES (?, 'walking', 1, 2, 1, 5)"
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute(insert, (ROOM,))
    store_partial_join(conn, ROOM, VERSION, "$join", "a.example", [])
    conn.execute(insert, (ROOM,))
    # The room's partial state cannot go while the row is there, so the
    # clear has to take it too (see the test above).
    conn.execute("DELETE FROM partial_state_rooms_servers")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute("DELETE FROM partial_state_rooms WHERE room_id = ?", (ROOM,))
