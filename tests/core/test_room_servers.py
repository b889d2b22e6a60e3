"""Which servers are in a room, read from real storage, and where a local
event is sent.

The room's events are signed by their senders' servers and written through
core; the queue a local event is handed to is a list that keeps what it
is given, standing in for the federation sender (which has tests of its
own, and runs for real in tests/test_federation_e2e.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import pytest
from _recording import STATE_DELTA_READS, WHOLE_MAP_READS, RecordingReader

from ranvier.core.room_servers import RoomEventSender, RoomServers
from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest_all

OURS = "ours.test"
REMOTE = "remote.test"
THIRD = "third.test"
ALICE = f"@alice:{OURS}"
BOB = f"@bob:{REMOTE}"
CAROL = f"@carol:{THIRD}"
DAN = f"@dan:{THIRD}"


class Queued:
    """Keeps each PDU handed over for delivery."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, list[str], bytes]] = []

    def send_pdu(
        self,
        pdu: bytes | Mapping[str, Any],
        *,
        event_id: str,
        room_id: str,
        stream_ordering: int,
        destinations: Iterable[str],
    ) -> None:
        assert isinstance(pdu, bytes)
        self.calls.append((event_id, stream_ordering, list(destinations), pdu))


@pytest.fixture
async def room(storage: Storage) -> RoomBuilder:
    keys = {server: generate_signing_key("k1") for server in (OURS, REMOTE, THIRD)}
    room = RoomBuilder(creator=ALICE, keys=keys)
    room.public_room(BOB, CAROL, DAN)
    await ingest_all(storage, list(room.events.values()))
    return room


async def test_joined_servers_follow_the_current_state(storage: Storage, room: RoomBuilder) -> None:
    servers = RoomServers(storage)
    assert await servers.joined_servers(room.room_id) == {OURS, REMOTE, THIRD}
    # One of THIRD's two users leaving leaves THIRD in; both leaving takes it out.
    await ingest_all(storage, [room.member(CAROL, "leave")])
    assert await servers.joined_servers(room.room_id) == {OURS, REMOTE, THIRD}
    await ingest_all(storage, [room.member(DAN, "leave")])
    assert await servers.joined_servers(room.room_id) == {OURS, REMOTE}
    # An invite is not a join.
    await ingest_all(storage, [room.member(ALICE, "invite", CAROL)])
    assert await servers.joined_servers(room.room_id) == {OURS, REMOTE}
    assert await servers.joined_servers("!unknown:ours.test") == frozenset()


async def test_only_new_member_events_are_read_again(storage: Storage, room: RoomBuilder) -> None:
    reader = RecordingReader(storage)
    servers = RoomServers(reader)
    await servers.joined_servers(room.room_id)
    assert reader.entries({"get_events"}) == 4  # alice, bob, carol, dan
    reader.clear()
    await ingest_all(storage, [room.member(BOB, "leave")])
    assert await servers.joined_servers(room.room_id) == {OURS, THIRD}
    assert reader.entries({"get_events"}) == 1
    # Only what changed since the last look is read, never the whole state.
    assert reader.calls(WHOLE_MAP_READS) == []
    assert reader.entries(STATE_DELTA_READS) == 1
    # A room forgotten is read whole again.
    servers.forget(room.room_id)
    reader.clear()
    assert await servers.joined_servers(room.room_id) == {OURS, THIRD}
    assert reader.entries({"get_events"}) == 4


async def test_rooms_remembered_are_bounded(storage: Storage, room: RoomBuilder) -> None:
    reader = RecordingReader(storage)
    servers = RoomServers(reader, rooms_remembered=1)
    other = RoomBuilder(creator=ALICE, keys=room.keys)
    other.public_room(BOB)
    await ingest_all(storage, list(other.events.values()))
    await servers.joined_servers(room.room_id)
    await servers.joined_servers(other.room_id)
    reader.clear()
    # The first room was pushed out by the second, so it is read whole.
    await servers.joined_servers(room.room_id)
    assert reader.entries({"get_events"}) == 4
    with pytest.raises(ValueError, match="at least one room"):
        RoomServers(storage, rooms_remembered=0)


async def test_a_partial_state_room_counts_the_servers_its_join_named(
    storage: Storage, room: RoomBuilder
) -> None:
    # Joined with partial state, a room's current state lacks the members of
    # servers already in it; the servers of the send_join answer stand in.
    fourth = "fourth.test"
    await storage.store_partial_join(room.room_id, room.version, "$join", REMOTE, [fourth])
    servers = RoomServers(storage)
    assert await servers.joined_servers(room.room_id) == {OURS, REMOTE, THIRD, fourth}
    queued = Queued()
    sender = RoomEventSender(OURS, servers, queued)
    message = room.message(ALICE, "while partial")
    await _send_after_write(storage, sender, message)
    assert queued.calls[-1][2] == sorted({REMOTE, THIRD, fourth})
    # Once the full state is in, the current state alone says who is in.
    assert await storage.clear_partial_state(room.room_id)
    assert await servers.joined_servers(room.room_id) == {OURS, REMOTE, THIRD}


async def _send_after_write(
    storage: Storage, sender: RoomEventSender, event: Pdu, ordering: int = 7
) -> None:
    await ingest_all(storage, [event])
    await sender.on_new_event(event, ordering)


async def test_a_local_event_goes_to_every_other_joined_server(
    storage: Storage, room: RoomBuilder
) -> None:
    queued = Queued()
    sender = RoomEventSender(OURS, RoomServers(storage), queued)
    message = room.message(ALICE, "to all")
    await _send_after_write(storage, sender, message, 42)
    assert queued.calls == [(message.event_id, 42, [REMOTE, THIRD], message.raw)]


async def test_a_kick_also_goes_to_the_kicked_users_server(
    storage: Storage, room: RoomBuilder
) -> None:
    queued = Queued()
    sender = RoomEventSender(OURS, RoomServers(storage), queued)
    await ingest_all(storage, [room.member(CAROL, "leave")])
    kick = room.member(ALICE, "leave", DAN)
    await _send_after_write(storage, sender, kick)
    # THIRD has no one joined after the kick, and hears of it all the same.
    assert [destinations for _, _, destinations, _ in queued.calls] == [[REMOTE, THIRD]]
    # An invite of a user of another server is not sent there by this path.
    invite = room.member(ALICE, "invite", CAROL)
    await _send_after_write(storage, sender, invite)
    assert queued.calls[-1][2] == [REMOTE]


async def test_nothing_is_queued_when_no_other_server_is_in_the_room(storage: Storage) -> None:
    keys = {OURS: generate_signing_key("k1")}
    room = RoomBuilder(creator=ALICE, keys=keys)
    room.public_room()
    await ingest_all(storage, list(room.events.values()))
    queued = Queued()
    sender = RoomEventSender(OURS, RoomServers(storage), queued)
    await _send_after_write(storage, sender, room.message(ALICE))
    assert queued.calls == []


async def test_a_membership_made_through_us_does_not_go_back_to_its_server(
    storage: Storage, room: RoomBuilder
) -> None:
    queued = Queued()
    sender = RoomEventSender(OURS, RoomServers(storage), queued)
    erin = f"@erin:{REMOTE}"
    # Erin's server joined her through us (send_join): we pass it on to THIRD.
    join = room.member(erin, "join")
    await _send_after_write(storage, sender, join)
    assert queued.calls == [(join.event_id, 7, [THIRD], join.raw)]


async def test_messages_written_together_ask_for_the_room_s_servers_once(
    storage: Storage, room: RoomBuilder
) -> None:
    queued = Queued()
    reader = RecordingReader(storage)
    sender = RoomEventSender(OURS, RoomServers(reader), queued)
    messages = [room.message(ALICE, f"m{n}") for n in range(3)]
    await ingest_all(storage, messages)
    reader.clear()
    await sender.on_new_events([(message, 10 + n) for n, message in enumerate(messages)])
    assert queued.calls == [
        (message.event_id, 10 + n, [REMOTE, THIRD], message.raw)
        for n, message in enumerate(messages)
    ]
    assert len(reader.calls(WHOLE_MAP_READS)) == 1


async def test_servers_named_by_state_group_are_read_once_per_group(
    storage: Storage, room: RoomBuilder
) -> None:
    # The room's current state group, as its last writer knows it: the
    # servers of a group already looked at are not read again.
    last = list(room.events)[-1]
    groups = await storage.get_event_state_groups(last)
    assert groups is not None
    group = groups.after
    queued = Queued()
    reader = RecordingReader(storage)
    servers = RoomServers(reader)
    sender = RoomEventSender(OURS, servers, queued)
    first, second = room.message(ALICE, "m0"), room.message(ALICE, "m1")
    await ingest_all(storage, [first, second])
    reader.clear()
    await sender.on_new_events([(first, 10)], state_group=group)
    await sender.on_new_events([(second, 11)], state_group=group)
    assert [call[2] for call in queued.calls] == [[REMOTE, THIRD], [REMOTE, THIRD]]
    assert len(reader.calls(WHOLE_MAP_READS)) == 1
    assert len(reader.calls({"is_partial_state_room"})) == 2
    # A writer that read the room to have full state says so: nothing is read.
    reader.clear()
    await sender.on_new_events([(second, 11)], state_group=group, full_state=True)
    assert queued.calls[-1][2] == [REMOTE, THIRD]
    assert reader.calls({"get_current_state_ids", "is_partial_state_room"}) == []
    reader.clear()
    # A partial-state join's servers are still asked for each time.
    await storage.store_partial_join(room.room_id, room.version, "$join", REMOTE, ["fourth.test"])
    assert await servers.joined_servers(room.room_id, state_group=group) == {
        OURS,
        REMOTE,
        THIRD,
        "fourth.test",
    }
    assert reader.calls(WHOLE_MAP_READS) == []
    # Another group is read as its changes from the group held; a room
    # forgotten is read whole again.
    leave = room.member(CAROL, "leave")
    await ingest_all(storage, [leave])
    after_leave = await storage.get_event_state_groups(leave.event_id)
    assert after_leave is not None
    reader.clear()
    assert await servers.by_group.joined_servers_at(room.room_id, after_leave.after) == {
        OURS,
        REMOTE,
        THIRD,
    }
    assert reader.calls(WHOLE_MAP_READS) == []
    assert reader.entries(STATE_DELTA_READS) == 1
    servers.forget(room.room_id)
    await servers.joined_servers(room.room_id, state_group=group)
    assert len(reader.calls(WHOLE_MAP_READS)) == 1


async def test_a_state_event_written_with_messages_is_sent_after_its_own_state(
    storage: Storage, room: RoomBuilder
) -> None:
    queued = Queued()
    sender = RoomEventSender(OURS, RoomServers(storage), queued)
    before = room.message(ALICE, "before")
    kick = room.member(ALICE, "leave", BOB)
    after = room.message(ALICE, "after")
    await ingest_all(storage, [before, kick, after])
    await sender.on_new_events([(before, 1), (kick, 2), (after, 3)])
    # Each is sent as if alone, after the whole write: the kicked user's
    # server hears of the kick, and of nothing else written with it.
    assert [(event_id, destinations) for event_id, _, destinations, _ in queued.calls] == [
        (before.event_id, [THIRD]),
        (kick.event_id, [REMOTE, THIRD]),
        (after.event_id, [THIRD]),
    ]


@pytest.mark.parametrize("seed", range(3))
async def test_servers_kept_across_changes_match_a_whole_read(
    storage: Storage, room: RoomBuilder, seed: int
) -> None:
    # Many membership changes of users of several servers, each looked at
    # from the members held at the last look; every answer must be what a
    # whole read of the state says, also when looking back at older groups.
    rng = random.Random(seed)
    servers = RoomServers(storage)
    users = [f"@u{n}:{(OURS, REMOTE, THIRD)[n % 3]}" for n in range(12)]
    groups: list[int] = []
    now: dict[str, str] = {}
    for _ in range(40):
        user = rng.choice(users)
        allowed = {
            None: ["join", "invite"],
            "join": ["leave"],
            "invite": ["join", "leave"],
            "leave": ["join", "invite"],
        }[now.get(user)]
        membership = rng.choice(allowed)
        now[user] = membership
        sender = ALICE if membership == "invite" else user
        event = room.member(sender, membership, None if sender == user else user)
        await ingest_all(storage, [event])
        assert await servers.joined_servers(room.room_id) == await _joined_by_whole_read(
            storage, room.room_id
        )
        found = await storage.get_event_state_groups(event.event_id)
        assert found is not None
        groups.append(found.after)
    for group in rng.sample(groups, 10):
        fresh = RoomServers(storage)
        assert await servers.by_group.joined_servers_at(room.room_id, group) == (
            await fresh.by_group.joined_servers_at(room.room_id, group)
        )


async def _joined_by_whole_read(storage: Storage, room_id: str) -> frozenset[str]:
    state = await storage.get_current_state_ids(room_id)
    members = {key[1]: event_id for key, event_id in state.items() if key[0] == "m.room.member"}
    rows = await storage.get_events(list(members.values()))
    return frozenset(
        user.partition(":")[2]
        for user, event_id in members.items()
        if msgspec.json.decode(rows[event_id].json)["content"]["membership"] == "join"
    )
