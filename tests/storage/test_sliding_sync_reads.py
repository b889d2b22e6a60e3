"""The room-list read of sliding sync on a real server's database: every
room with what lists sort and filter by, the rooms that moved read again
and the others taken from an earlier read, and a room's state delta."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ranvier.testing.homeserver import open_test_homeserver


async def test_only_rooms_that_moved_are_read_again(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        server = hs.server
        alice = (await hs.register_user("alice")).user_id
        quiet = await server.create_room(alice, name="Quiet")
        busy = await server.create_room(alice, name="Busy")
        space = await server.create_room(alice, creation_content={"type": "m.space"})
        store = server.storage.sliding_sync
        first = await store.room_list(alice, 0)
        facts = {room.room_id: room for room in first.rooms}
        assert set(facts) == {quiet, busy, space}
        assert facts[space].room_type == "m.space"
        assert facts[busy].bump > facts[quiet].bump
        assert facts[busy].membership == "join"
        # Facts that no read would give, to see which are read again.
        doctored = {
            room_id: dataclasses.replace(room, bump=-1, latest=-1)
            for room_id, room in facts.items()
        }
        await server.send_event(alice, busy, "m.room.message", {"msgtype": "m.text", "body": "x"})
        later = await store.room_list(alice, 0, known=doctored, known_at=first.events)
        again = {room.room_id: room for room in later.rooms}
        assert again[quiet].bump == -1
        assert again[space].bump == -1
        assert again[busy].bump == again[busy].latest == later.events
        # Without earlier facts, every room is read.
        fresh = {room.room_id: room for room in (await store.room_list(alice, 0)).rooms}
        assert fresh[quiet] == facts[quiet]


async def test_a_state_delta_between_two_positions(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        server = hs.server
        alice = (await hs.register_user("alice")).user_id
        room_id = await server.create_room(alice, name="Before")
        store = server.storage.sliding_sync
        before = (await store.room_list(alice, 0)).events
        renamed = await server.send_event(
            alice, room_id, "m.room.name", {"name": "After"}, state_key=""
        )
        await server.send_event(
            alice, room_id, "m.room.message", {"msgtype": "m.text", "body": "x"}
        )
        after = (await store.room_list(alice, 0)).events
        assert await store.state_delta(room_id, before, after) == {("m.room.name", ""): renamed}
        assert await store.state_delta(room_id, after, after) == {}
        whole = await store.state_delta(room_id, 0, after)
        assert ("m.room.create", "") in whole
