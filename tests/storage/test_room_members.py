from __future__ import annotations

import itertools

from ranvier.core.creation import EventCreator
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import Storage

ALICE = "@alice:example.org"
BOB = "@bob:example.org"


def _creator(storage: Storage) -> EventCreator:
    clock = itertools.count(1_700_000_000_000)
    return EventCreator(
        server_name="example.org",
        signing_key=generate_signing_key("1"),
        store=storage,
        persister=storage,
        clock=lambda: next(clock),
    )


async def test_a_users_memberships_come_from_current_state(storage: Storage) -> None:
    creator = _creator(storage)
    first = await creator.create_room(ALICE, preset="public_chat")
    second = await creator.create_room(ALICE, preset="public_chat")
    join = await creator.join(BOB, first)
    invite = await creator.invite(ALICE, second, BOB)
    members = storage.room_members
    assert await members.get_current_membership_event_ids(BOB) == {first: join, second: invite}
    leave = await creator.leave(BOB, first)
    assert await members.get_current_membership_event_ids(BOB) == {first: leave, second: invite}
    assert await members.get_current_membership_event_ids("@nobody:example.org") == {}
    assert await members.get_latest_membership_event_id(BOB, first) == leave
    assert await members.get_latest_membership_event_id(BOB, second) == invite
    assert await members.get_latest_membership_event_id(BOB, "!unknown:example.org") is None


async def test_a_rooms_last_event_by_a_position(storage: Storage) -> None:
    creator = _creator(storage)
    room_id = await creator.create_room(ALICE, preset="public_chat")
    join = await creator.join(BOB, room_id)
    other = await creator.create_room(ALICE)
    message = await creator.send_event(ALICE, room_id, "m.room.message", {"body": "x"})
    rows = await storage.get_events([join, message])
    members = storage.room_members
    at_join = rows[join].stream_ordering
    assert await members.get_room_event_id_at(room_id, at_join) == join
    # Another room's events in between do not count.
    assert await members.get_room_event_id_at(room_id, rows[message].stream_ordering - 1) == join
    assert await members.get_room_event_id_at(room_id, 10**9) == message
    assert await members.get_room_event_id_at(room_id, 0) is None
    assert await members.get_room_event_id_at(other, at_join) is None
