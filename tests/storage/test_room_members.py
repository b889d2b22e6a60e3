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


async def test_whether_a_server_has_a_joined_member(storage: Storage) -> None:
    creator = _creator(storage)
    room_id = await creator.create_room(ALICE, preset="public_chat")
    members = storage.room_members
    assert await members.server_has_joined_member(room_id, "example.org")
    # The server is the whole part after the user ID's first colon.
    for other in ("example", "org", "other.org", "example.org:8448", ""):
        assert not await members.server_has_joined_member(room_id, other)
    assert not await members.server_has_joined_member("!unknown:example.org", "example.org")
    await creator.join(BOB, room_id)
    await creator.leave(ALICE, room_id)
    assert await members.server_has_joined_member(room_id, "example.org")
    await creator.leave(BOB, room_id)
    assert not await members.server_has_joined_member(room_id, "example.org")
    # Storage answers as its sub-reader does.
    assert not await storage.server_has_joined_member(room_id, "example.org")


async def test_member_events_memberships_and_orderings(storage: Storage) -> None:
    creator = _creator(storage)
    room_id = await creator.create_room(ALICE, preset="public_chat")
    join = await creator.join(BOB, room_id)
    leave = await creator.leave(BOB, room_id)
    invite = await creator.invite(ALICE, room_id, BOB)
    message = await creator.send_event(ALICE, room_id, "m.room.message", {"body": "x"})
    rows = await storage.get_events([join, leave, invite, message])
    wanted = [join, leave, invite, message, "$unknown", join]
    found = await storage.get_memberships(wanted)
    assert found == {
        join: (rows[join].stream_ordering, "join"),
        leave: (rows[leave].stream_ordering, "leave"),
        invite: (rows[invite].stream_ordering, "invite"),
        message: (rows[message].stream_ordering, None),
    }
    assert await storage.room_members.get_memberships([]) == {}
    # More IDs than one statement binds.
    many = [*(f"$unknown{n}" for n in range(1_200)), invite]
    assert await storage.get_memberships(many) == {invite: found[invite]}
