"""Room reads for clients: who sees which state, events and members."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from _races import ALICE as RACE_ALICE
from _races import CROWD, OURS, RaceRoom, running_stater
from _rooms import local_creator

from ranvier.core.creation import EventCreator
from ranvier.core.ingest import RoomLocks
from ranvier.core.rooms import RoomReader
from ranvier.errors import MatrixError
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import Storage

SERVER = "example.org"
KEY = generate_signing_key("1")
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
DAN = "@dan:example.org"
NOW = 1_800_000_000_000


@pytest.fixture
def creator(storage: Storage) -> EventCreator:
    return local_creator(storage, SERVER, KEY)


@pytest.fixture
def reader(storage: Storage) -> RoomReader:
    return RoomReader(storage, storage.room_members, clock=lambda: NOW)


async def _public_room(creator: EventCreator, **kwargs: Any) -> str:
    room_id = await creator.create_room(ALICE, preset="public_chat", name="first", **kwargs)
    await creator.join(BOB, room_id)
    return room_id


def _by_key(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(event["type"], event["state_key"]): event for event in events}


async def _refused(call: Any, errcode: str, status: int) -> None:
    with pytest.raises(MatrixError) as caught:
        await call
    assert (caught.value.errcode, caught.value.http_status) == (errcode, status)


async def test_a_member_reads_the_current_state_in_the_client_format(
    creator: EventCreator, reader: RoomReader, storage: Storage
) -> None:
    room_id = await _public_room(creator)
    state = await reader.state(BOB, room_id)
    keyed = _by_key(state)
    assert set(keyed) == set(await storage.get_current_state_ids(room_id))
    name = keyed[("m.room.name", "")]
    assert name["content"] == {"name": "first"}
    assert name["sender"] == ALICE
    assert name["room_id"] == room_id
    assert name["unsigned"]["age"] == NOW - name["origin_server_ts"]
    # Federation's fields stay out.
    assert not {"auth_events", "prev_events", "hashes", "signatures", "depth"} & set(name)
    # The one-event reads say what a state event replaced, where it did.
    assert await reader.state_event(BOB, room_id, "m.room.name", "") == name
    renamed = await creator.send_event(
        ALICE, room_id, "m.room.name", {"name": "second"}, state_key=""
    )
    one = await reader.state_event(BOB, room_id, "m.room.name", "")
    assert one["event_id"] == renamed
    assert one["unsigned"]["prev_content"] == {"name": "first"}
    assert one["unsigned"]["replaces_state"] == name["event_id"]
    # The event read says too what the reader's membership was at it.
    read = await reader.event(BOB, room_id, renamed)
    assert read == one | {"unsigned": one["unsigned"] | {"membership": "join"}}
    message = await creator.send_event(ALICE, room_id, "m.room.message", {"body": "hi"})
    assert (await reader.event(BOB, room_id, message))["unsigned"].keys() == {"age", "membership"}
    await _refused(reader.state_event(BOB, room_id, "m.room.topic", ""), "M_NOT_FOUND", 404)


async def test_strangers_and_unknown_rooms_are_refused_alike(
    creator: EventCreator, reader: RoomReader
) -> None:
    room_id = await _public_room(creator)
    for room in (room_id, "!unknown:example.org"):
        await _refused(reader.state(CAROL, room), "M_FORBIDDEN", 403)
        await _refused(reader.members(CAROL, room), "M_FORBIDDEN", 403)
        await _refused(reader.joined_members(CAROL, room), "M_FORBIDDEN", 403)
        await _refused(reader.state_event(CAROL, room, "m.room.name", ""), "M_FORBIDDEN", 403)
        await _refused(reader.check_joined(CAROL, room), "M_FORBIDDEN", 403)
    # Invited is not joined.
    await creator.invite(ALICE, room_id, CAROL)
    await _refused(reader.state(CAROL, room_id), "M_FORBIDDEN", 403)


async def test_a_user_who_left_reads_the_room_as_it_was_when_they_left(
    creator: EventCreator, reader: RoomReader
) -> None:
    room_id = await _public_room(creator)
    leave = await creator.leave(BOB, room_id)
    await creator.send_event(ALICE, room_id, "m.room.name", {"name": "second"}, state_key="")
    await creator.join(CAROL, room_id)
    keyed = _by_key(await reader.state(BOB, room_id))
    assert keyed[("m.room.name", "")]["content"] == {"name": "first"}
    assert keyed[("m.room.member", BOB)]["event_id"] == leave
    assert ("m.room.member", CAROL) not in keyed
    name = await reader.state_event(BOB, room_id, "m.room.name", "")
    assert name["content"] == {"name": "first"}
    members = await reader.members(BOB, room_id)
    assert {event["state_key"] for event in members} == {ALICE, BOB}
    # The joined-members list is for members only.
    await _refused(reader.joined_members(BOB, room_id), "M_FORBIDDEN", 403)
    assert (await reader.state_event(ALICE, room_id, "m.room.name", ""))["content"] == {
        "name": "second"
    }


async def test_members_are_filtered_by_membership(
    creator: EventCreator, reader: RoomReader
) -> None:
    room_id = await _public_room(creator)
    await creator.invite(ALICE, room_id, CAROL)
    await creator.join(DAN, room_id)
    await creator.ban(ALICE, room_id, DAN)

    async def users(**kw: Any) -> set[str]:
        return {event["state_key"] for event in await reader.members(ALICE, room_id, **kw)}

    assert await users() == {ALICE, BOB, CAROL, DAN}
    assert await users(membership="join") == {ALICE, BOB}
    assert await users(not_membership="join") == {CAROL, DAN}
    # Both: either condition (the spec's "or").
    assert await users(membership="join", not_membership="invite") == {ALICE, BOB, DAN}
    await _refused(reader.members(ALICE, room_id, membership="joined"), "M_INVALID_PARAM", 400)


async def test_joined_members_carry_display_names_and_avatars(
    creator: EventCreator, reader: RoomReader
) -> None:
    room_id = await _public_room(creator)
    content = {"membership": "join", "displayname": "Alice", "avatar_url": "mxc://example.org/a"}
    await creator.send_event(ALICE, room_id, "m.room.member", content, state_key=ALICE)
    await creator.invite(ALICE, room_id, CAROL)
    assert await reader.joined_members(BOB, room_id) == {
        ALICE: {"display_name": "Alice", "avatar_url": "mxc://example.org/a"},
        BOB: {},
    }


async def test_joined_rooms_lists_only_current_joins(
    creator: EventCreator, reader: RoomReader
) -> None:
    first = await _public_room(creator)
    second = await _public_room(creator)
    third = await _public_room(creator)
    await creator.leave(BOB, second)
    await creator.invite(ALICE, third, CAROL)
    assert await reader.joined_rooms(BOB) == [first, third]
    assert await reader.joined_rooms(CAROL) == []
    assert await reader.membership(BOB, second) == "leave"
    assert await reader.membership(CAROL, third) == "invite"
    assert await reader.membership(DAN, third) is None


@pytest.mark.parametrize(
    ("visibility", "sees_before_join"),
    [("shared", True), ("joined", False), ("invited", False), ("world_readable", True)],
)
async def test_an_event_is_shown_as_history_visibility_allows(
    creator: EventCreator, reader: RoomReader, visibility: str, sees_before_join: bool
) -> None:
    room_id = await _public_room(creator)
    content = {"history_visibility": visibility}
    await creator.send_event(ALICE, room_id, "m.room.history_visibility", content, state_key="")
    before = await creator.send_event(ALICE, room_id, "m.room.message", {"body": "before"})
    join = await creator.join(CAROL, room_id)
    after = await creator.send_event(ALICE, room_id, "m.room.message", {"body": "after"})

    assert (await reader.event(CAROL, room_id, after))["content"] == {"body": "after"}
    assert (await reader.event(CAROL, room_id, join))["sender"] == CAROL
    if sees_before_join:
        assert (await reader.event(CAROL, room_id, before))["content"] == {"body": "before"}
    else:
        await _refused(reader.event(CAROL, room_id, before), "M_NOT_FOUND", 404)
    # Someone never in the room reads only a world-readable one.
    if visibility == "world_readable":
        assert (await reader.event(DAN, room_id, after))["event_id"] == after
        assert (await reader.state(DAN, room_id)) == await reader.state(ALICE, room_id)
    else:
        await _refused(reader.event(DAN, room_id, after), "M_NOT_FOUND", 404)
    await _refused(reader.event(CAROL, room_id, "$nothing"), "M_NOT_FOUND", 404)


async def test_an_event_of_another_room_is_not_found_through_this_one(
    creator: EventCreator, reader: RoomReader
) -> None:
    room_id = await _public_room(creator)
    other = await _public_room(creator)
    message = await creator.send_event(ALICE, other, "m.room.message", {"body": "elsewhere"})
    await _refused(reader.event(BOB, room_id, message), "M_NOT_FOUND", 404)


async def test_a_former_member_sees_events_up_to_the_leave_only(
    creator: EventCreator, reader: RoomReader
) -> None:
    room_id = await _public_room(creator)
    content = {"history_visibility": "joined"}
    await creator.send_event(ALICE, room_id, "m.room.history_visibility", content, state_key="")
    while_in = await creator.send_event(ALICE, room_id, "m.room.message", {"body": "in"})
    await creator.leave(BOB, room_id)
    after = await creator.send_event(ALICE, room_id, "m.room.message", {"body": "out"})
    assert (await reader.event(BOB, room_id, while_in))["event_id"] == while_in
    await _refused(reader.event(BOB, room_id, after), "M_NOT_FOUND", 404)


async def test_member_reads_of_a_partial_state_room_wait_for_its_full_state(
    storage: Storage, autojump_clock: trio.testing.MockClock
) -> None:
    race = RaceRoom()
    await race.join_partially(storage)
    stater = race.stater(storage, RoomLocks())
    reader = RoomReader(storage, storage.room_members, full_state=stater, server_name=OURS)
    room_id = race.room_id
    # Our users' memberships and other state are in the partial state: no wait.
    own = await reader.state_event(RACE_ALICE, room_id, "m.room.member", RACE_ALICE)
    assert own["content"]["membership"] == "join"
    topic = await reader.state_event(RACE_ALICE, room_id, "m.room.topic", "")
    assert topic["content"]["topic"] == "before the join"
    await reader.check_joined(RACE_ALICE, room_id)
    results: list[Any] = []

    async def members() -> None:
        results.append(await reader.members(RACE_ALICE, room_id))
        results.append(await reader.joined_members(RACE_ALICE, room_id))
        results.append(await reader.state(RACE_ALICE, room_id))
        results.append(await reader.state_event(RACE_ALICE, room_id, "m.room.member", CROWD[0]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(members)
        await trio.sleep(5)
        assert results == []
        # Sending does not wait.
        creator = race.creator(storage, RoomLocks())
        await creator.send_event(RACE_ALICE, room_id, "m.room.message", {"body": "now"})
        async with running_stater(stater):
            await stater.wait_for_full_state(room_id)
    chunk, joined, state, crowd_member = results
    assert {event["state_key"] for event in chunk} >= {RACE_ALICE, *CROWD}
    assert set(CROWD) <= set(joined)
    assert {("m.room.member", user) for user in CROWD} <= set(_by_key(state))
    assert crowd_member["content"]["membership"] == "join"


async def test_members_at_a_stream_position(
    creator: EventCreator, reader: RoomReader, storage: Storage
) -> None:
    room_id = await _public_room(creator)  # Alice creates it, Bob joins

    async def position(event_id: str) -> int:
        return (await storage.get_events([event_id]))[event_id].stream_ordering

    carol = await position(await creator.join(CAROL, room_id))
    left = await position(await creator.leave(BOB, room_id))
    await creator.join(DAN, room_id)

    async def users(user: str, at: int) -> dict[str, str]:
        members = await reader.members(user, room_id, at=at)
        return {event["state_key"]: event["content"]["membership"] for event in members}

    assert await users(ALICE, carol - 1) == {ALICE: "join", BOB: "join"}
    assert await users(ALICE, carol) == {ALICE: "join", BOB: "join", CAROL: "join"}
    assert await users(ALICE, 0) == {}
    # Bob, who left, sees no further than his leave, however late he asks.
    at_leave = {ALICE: "join", BOB: "leave", CAROL: "join"}
    assert await users(BOB, left + 100) == at_leave
    assert await users(BOB, carol) == {ALICE: "join", BOB: "join", CAROL: "join"}
    assert set(await users(ALICE, left + 100)) == {ALICE, BOB, CAROL, DAN}
