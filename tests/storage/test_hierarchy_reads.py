"""The hierarchy's reads on real storage: a room's summary state, its
``m.space.child`` events, joined members and their servers, a user's
membership, and which of some rooms a user or a server is joined to."""

from __future__ import annotations

import itertools

from ranvier.core.creation import EventCreator
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
BOB_B = "@bob:b.test"
ZED = "@zed:c.test"


def _creator(storage: Storage) -> EventCreator:
    clock = itertools.count(1_700_000_000_000)
    return EventCreator(
        server_name="example.org",
        signing_key=generate_signing_key("1"),
        store=storage,
        persister=storage,
        clock=lambda: next(clock),
    )


async def test_a_rooms_state_as_the_hierarchy_reads_it(storage: Storage) -> None:
    creator = _creator(storage)
    space = await creator.create_room(ALICE, preset="public_chat", name="Space", topic="T")
    child = await creator.create_room(ALICE, preset="private_chat")
    await creator.send_event(
        ALICE, space, "m.space.child", {"via": ["example.org"]}, state_key=child
    )
    await creator.send_event(ALICE, space, "m.space.child", {}, state_key="!gone:example.org")
    await creator.send_event(ALICE, space, "m.room.message", {"body": "not state"})
    await creator.join(BOB, space)
    await creator.invite(ALICE, child, CAROL)

    states = await storage.hierarchy.room_states([space, child, "!unknown:x"], user_id=CAROL)
    assert set(states) == {space, child}
    room = states[space]
    assert room.state["m.room.name"] == {"name": "Space"}
    assert room.state["m.room.topic"]["topic"] == "T"
    assert room.state["m.room.join_rules"]["join_rule"] == "public"
    assert "m.room.member" not in room.state
    assert room.joined_members == 2
    assert room.joined_servers == frozenset({"example.org"})
    assert room.membership is None
    assert isinstance(room.room_version, str)
    children = {event.state_key: event for event in room.children}
    assert set(children) == {child, "!gone:example.org"}
    assert children[child].content == {"via": ["example.org"]}
    assert children[child].sender == ALICE
    assert children[child].origin_server_ts > 1_700_000_000_000
    assert children["!gone:example.org"].content == {}
    assert states[child].membership == "invite"
    assert states[child].children == ()
    assert (await storage.hierarchy.room_states([space]))[space].membership is None


async def test_which_rooms_a_user_or_a_server_is_joined_to(storage: Storage) -> None:
    creator = _creator(storage)
    first = await creator.create_room(ALICE, preset="public_chat")
    second = await creator.create_room(ALICE, preset="public_chat")
    await creator.join(BOB, first)
    await creator.join(BOB, second)
    await creator.leave(BOB, second)
    await creator.invite(ALICE, second, CAROL)
    reads = storage.hierarchy
    rooms = [first, second, "!unknown:example.org"]
    assert await reads.rooms_joined_by_user(BOB, rooms) == {first}
    assert await reads.rooms_joined_by_user(CAROL, rooms) == set()
    assert await reads.rooms_joined_by_user(ALICE, rooms) == {first, second}
    assert await reads.rooms_joined_by_server("example.org", rooms) == {first, second}
    # The whole server name, not a part of it.
    for other in ("example", "org", "ample.org", "xexample.org", "example.or"):
        assert await reads.rooms_joined_by_server(other, rooms) == set(), other
    assert await reads.rooms_joined_by_user(BOB, []) == set()


async def test_a_server_the_resident_named_counts_while_the_state_is_partial(
    storage: Storage,
) -> None:
    """A space of c.test joined with partial state, which left out every
    member but the creator: b.test, named by the resident among the
    servers in the room, counts as joined until the resync ends."""
    space = RoomBuilder("10", ZED)
    space.public_room(BOB_B)
    state = {key: event_id for key, event_id in space.state.items() if key[1] != BOB_B}
    join = space.member(ALICE, "join")
    for event_id in state.values():
        await ingest(storage, space.events[event_id], outlier=True)
    servers = {"c.test", "b.test"}
    await storage.store_partial_join(space.room_id, "10", join.event_id, "c.test", servers)
    outcome = await ingest(storage, join, state_ids_before=state, partial_state=True)
    assert outcome.failure is None
    reads = storage.hierarchy
    room = (await reads.room_states([space.room_id]))[space.room_id]
    assert room.joined_servers == frozenset({"c.test", "example.org"})
    assert room.partial_state_servers == frozenset(servers)
    assert await reads.rooms_joined_by_server("b.test", [space.room_id]) == {space.room_id}
    assert await reads.rooms_joined_by_server("d.test", [space.room_id]) == set()

    groups = await storage.get_event_state_groups(join.event_id)
    assert groups is not None
    await storage.update_state_for_partial_event(join.event_id, groups.before, groups.after)
    assert await storage.clear_partial_state(space.room_id)
    room = (await reads.room_states([space.room_id]))[space.room_id]
    assert room.partial_state_servers == frozenset()
    assert await reads.rooms_joined_by_server("b.test", [space.room_id]) == set()
