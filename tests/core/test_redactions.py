"""core.redactions: a state reader whose events come out as served, over
real storage, and the client format of a redacted event.
"""

from __future__ import annotations

from pathlib import Path

import trio

from ranvier.core.client_events import client_event
from ranvier.core.interfaces import StateReader
from ranvier.core.redactions import ServedStateReader
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest_all

ALICE = "@alice:example.org"
BOB = "@bob:example.org"


async def test_events_come_out_as_served_and_the_rest_as_stored(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    storage = Storage(tmp_path / "served.db", synchronous="OFF")
    await nursery.start(storage.run)
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB, users={BOB: 50})
    topic = room.topic(BOB, "to be taken back")
    redaction = room.send_fields(
        {"type": "m.room.redaction", "sender": BOB, "content": {}, "redacts": topic.event_id}
    )
    await ingest_all(storage, room.order)
    reader = ServedStateReader(storage, storage.redactions)
    assert isinstance(reader, StateReader)

    served = await reader.get_events([topic.event_id, redaction.event_id])
    stored = await storage.get_events([topic.event_id, redaction.event_id])
    assert served[redaction.event_id] == stored[redaction.event_id]
    assert served[topic.event_id].json != stored[topic.event_id].json
    formatted = client_event(served[topic.event_id], now_ms=topic.origin_server_ts + 5)
    assert formatted["content"] == {}
    assert formatted["unsigned"]["age"] == 5
    because = formatted["unsigned"]["redacted_because"]
    assert because["event_id"] == redaction.event_id
    assert because["redacts"] == topic.event_id
    assert client_event(stored[topic.event_id])["content"] == {"topic": "to be taken back"}

    # Everything else is the store's answer.
    state = await storage.get_current_state_ids(room.room_id)
    assert await reader.get_current_state_ids(room.room_id) == state
    groups = await storage.get_event_state_groups(topic.event_id)
    assert groups is not None
    assert await reader.get_event_state_groups(topic.event_id) == groups
    assert await reader.get_state_ids(groups.after) == await storage.get_state_ids(groups.after)
    key = ("m.room.topic", "")
    assert await reader.get_state_ids_for_keys(groups.after, [key]) == {key: topic.event_id}
    assert await reader.get_current_state_ids_for_keys(room.room_id, [key]) == {key: topic.event_id}
    assert await reader.get_state_deltas([groups.before, groups.after]) == (
        await storage.get_state_deltas([groups.before, groups.after])
    )
    assert await reader.get_forward_extremities(room.room_id) == {redaction.event_id}
    assert not await reader.is_partial_state_room(room.room_id)
    assert list(await reader.get_partial_state_events(room.room_id)) == []
    assert await reader.get_partial_state_event_ids([topic.event_id]) == set()
    assert await reader.get_room_version(room.room_id) == "10"
