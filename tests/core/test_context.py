from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest
import trio
from _recording import Read, RecordingReader
from _rooms import ALICE, BOB, CAROL, DAVE, CountingStorage, count_rows

from ranvier.core import (
    EventContext,
    UnknownPrevStateError,
    compute_current_state_after,
    compute_event_context,
    event_to_persist,
    run_auth_checks,
)
from ranvier.errors import MatrixError
from ranvier.protocol.state_res import resolve_state
from ranvier.storage import EventToPersist, Storage
from ranvier.storage.state_groups import MAX_CHAIN_LENGTH
from ranvier.testing import RoomBuilder, ingest, ingest_all, make_pdu

MEMBER = "m.room.member"


@pytest.fixture
async def counting(tmp_path: Path, nursery: trio.Nursery) -> CountingStorage:
    store = CountingStorage(tmp_path / "counting.db")
    await nursery.start(store.run)
    return store


@pytest.mark.parametrize("version", ["10", "12"])
async def test_a_room_event_by_event(storage: Storage, version: str) -> None:
    room = RoomBuilder(version)
    room.public_room(BOB, CAROL, users={BOB: 50})
    contexts = await ingest_all(storage, list(room.events.values()))
    for event, context in zip(room.events.values(), contexts, strict=True):
        groups = await storage.get_event_state_groups(event.event_id)
        assert groups is not None
        assert groups.before == context.state_group_before
        assert await storage.get_state_ids(groups.after) == room.state_after[event.event_id]
        assert not context.partial_state
    assert await storage.get_current_state_ids(room.room_id) == room.state_after[room.last]
    assert await storage.get_forward_extremities(room.room_id) == {room.last}


async def test_one_prev_event_reads_no_state(counting: CountingStorage) -> None:
    room = RoomBuilder()
    room.public_room(BOB, CAROL, users={BOB: 50})
    await ingest_all(counting, list(room.events.values()))
    message = room.message(BOB)
    reads = counting.state_reads
    rows = count_rows(counting.path)
    context = await compute_event_context(message, counting, counting)
    prev = await counting.get_event_state_groups(message.prev_event_ids[0])
    assert prev is not None
    assert context.state_group_before == prev.after
    assert context.state_group_after is None
    assert counting.state_reads == reads
    assert count_rows(counting.path) == rows
    # The map is read when asked for, once.
    expected = room.state_after[message.prev_event_ids[0]]
    assert await context.get_state_before(counting) == expected
    assert await context.get_state_before(counting) == expected
    assert counting.state_reads == reads + 1


async def test_a_few_keys_of_the_state_before_are_read_alone(storage: Storage) -> None:
    room = RoomBuilder()
    room.public_room(BOB, CAROL, users={BOB: 50})
    await ingest_all(storage, list(room.events.values()))
    message = room.message(BOB)
    expected = room.state_after[message.prev_event_ids[0]]
    keys = [("m.room.power_levels", ""), (MEMBER, BOB), (MEMBER, DAVE)]
    reader = RecordingReader(storage)
    context = await compute_event_context(message, reader, storage)
    reader.clear()
    picked = {key: expected[key] for key in keys if key in expected}
    assert await context.get_state_before_for_keys(reader, keys) == picked
    assert reader.reads == [Read("get_state_ids_for_keys", 2)]
    # The whole map is still unread, and read once when asked for ...
    assert await context.get_state_before(reader) == expected
    assert await context.get_state_before(reader) == expected
    assert reader.calls({"get_state_ids"}) == [Read("get_state_ids", len(expected))]
    # ... after which keys are picked from it without reading.
    reader.clear()
    assert await context.get_state_before_for_keys(reader, keys) == picked
    assert reader.reads == []
    with pytest.raises(MatrixError, match="no state before"):
        await EventContext.for_outlier().get_state_before_for_keys(reader, keys)


@pytest.mark.parametrize("version", ["10", "12"])
async def test_forked_room_is_resolved_at_the_merge(
    storage: Storage, db_path: Path, version: str
) -> None:
    room = RoomBuilder(version)
    room.public_room(BOB, CAROL, users={BOB: 50})
    fork = room.last
    room.topic(ALICE, "left")
    name = room.send("m.room.name", ALICE, {"name": "left"}, state_key="")
    right = room.topic(BOB, "right", prev=[fork])
    await ingest_all(storage, [e for e in room.events.values() if e not in (name, right)])
    await ingest(storage, name)
    await ingest(storage, right)
    assert await storage.get_forward_extremities(room.room_id) == {name.event_id, right.event_id}

    merge = room.message(CAROL, prev=[name.event_id, right.event_id])
    groups_before, rows_before = count_rows(db_path)
    context = await compute_event_context(merge, storage, storage)
    expected = resolve_state(
        version, [room.state_after[name.event_id], room.state_after[right.event_id]], room.events
    )
    assert context.state_group_before is not None
    assert await storage.get_state_ids(context.state_group_before) == expected
    # Both topics cite the same power levels, so mainline order puts the
    # later one last, and it wins: Bob's, sent after Alice's.
    assert expected[("m.room.topic", "")] == right.event_id
    assert expected[("m.room.name", "")] == name.event_id
    # One new group, stored as its changes against one fork's group.
    groups_after, rows_after = count_rows(db_path)
    assert groups_after == groups_before + 1
    assert rows_after - rows_before <= 2


async def test_ban_against_power_change_resolves_as_the_spec_orders(storage: Storage) -> None:
    # Bob (50) bans Carol while, on another branch, Alice takes Bob's power
    # away. Power events are replayed in order of their senders' power:
    # Alice's change first, after which Bob may no longer ban.
    room = RoomBuilder()
    room.public_room(BOB, CAROL, users={BOB: 50})
    fork = room.last
    demote = room.power_levels(ALICE, {ALICE: 100})
    ban = room.member(BOB, "ban", CAROL, prev=[fork])
    await ingest_all(storage, [e for e in room.events.values() if e not in (demote, ban)])
    # The ban arrives first and is accepted; the demotion then forks the room.
    assert (await ingest(storage, ban)).failure is None
    assert (await ingest(storage, demote)).failure is None
    current = await storage.get_current_state_ids(room.room_id)
    assert current[("m.room.power_levels", "")] == demote.event_id
    assert current[(MEMBER, CAROL)] == room.state_after[fork][(MEMBER, CAROL)]

    merge = room.message(ALICE, prev=[demote.event_id, ban.event_id])
    context = await compute_event_context(merge, storage, storage)
    state = await context.get_state_before(storage)
    assert state == current
    assert state == resolve_state(
        "10", [room.state_after[demote.event_id], room.state_after[ban.event_id]], room.events
    )


async def test_current_state_after_needs_resolving_only_with_several_extremities(
    storage: Storage,
) -> None:
    room = RoomBuilder()
    room.public_room(BOB, CAROL, users={BOB: 50})
    await ingest_all(storage, list(room.events.values()))
    topic = room.topic(ALICE, "one extremity")
    context = await compute_event_context(topic, storage, storage)
    assert await compute_current_state_after(topic, context, storage, storage) is None

    side = room.topic(BOB, "another", prev=topic.prev_event_ids)
    await ingest(storage, topic)
    side_context = await compute_event_context(side, storage, storage)
    group = await compute_current_state_after(side, side_context, storage, storage)
    assert group is not None
    expected = resolve_state(
        "10", [room.state_after[topic.event_id], room.state_after[side.event_id]], room.events
    )
    assert await storage.get_state_ids(group) == expected
    # A rejected event moves nothing.
    assert (
        await compute_current_state_after(side, side_context.as_rejected("x"), storage, storage)
        is None
    )


async def _partial_join(storage: Storage) -> tuple[RoomBuilder, str]:
    """A room that Dave joins with partial state: the remote server's state
    leaves out Carol, whom a partial join response does not list.
    """
    room = RoomBuilder()
    room.public_room(BOB, CAROL, users={BOB: 50})
    remote_last = room.last
    join = room.member(DAVE, "join")
    state = dict(room.state_after[remote_last or ""])
    del state[(MEMBER, CAROL)]
    for event_id in state.values():
        await ingest(storage, room.events[event_id], outlier=True)
    await storage.store_partial_join(
        room.room_id, "10", join.event_id, "example.org", {"example.org"}
    )
    outcome = await ingest(storage, join, state_ids_before=state, partial_state=True)
    assert outcome.failure is None
    assert outcome.context.partial_state
    return room, join.event_id


async def test_partial_state_from_a_partial_join_response(storage: Storage) -> None:
    room, join_id = await _partial_join(storage)
    assert await storage.get_partial_state_events(room.room_id) == [join_id]
    groups = await storage.get_event_state_groups(join_id)
    assert groups is not None
    assert (MEMBER, CAROL) not in await storage.get_state_ids(groups.before)


async def test_partial_state_spreads_from_a_prev_event(storage: Storage) -> None:
    room, join_id = await _partial_join(storage)
    message = room.message(DAVE)
    context = await compute_event_context(message, storage, storage)
    assert context.partial_state

    # Once the join has its full state, events after it are not partial,
    # though the room still is.
    groups = await storage.get_event_state_groups(join_id)
    assert groups is not None
    await storage.update_state_for_partial_event(join_id, groups.before, groups.after)
    assert await storage.is_partial_state_room(room.room_id)
    context = await compute_event_context(message, storage, storage)
    assert not context.partial_state


async def test_partial_state_is_asked_of_the_prev_events_only(storage: Storage) -> None:
    room, join_id = await _partial_join(storage)
    for n in range(40):
        assert (await ingest(storage, room.message(DAVE, f"partial {n}"))).context.partial_state
    assert len(await storage.get_partial_state_events(room.room_id)) == 41
    reader = RecordingReader(storage)
    fork = room.message(CAROL, prev=[join_id, room.last])
    context = await compute_event_context(fork, reader, storage)
    assert context.partial_state
    assert reader.calls({"get_partial_state_events", "is_partial_state_room"}) == []
    assert reader.calls({"get_partial_state_event_ids"}) == [Read("get_partial_state_event_ids", 2)]

    # With full state for those two, the room's other partial events do not matter.
    for event_id in fork.prev_event_ids:
        groups = await storage.get_event_state_groups(event_id)
        assert groups is not None
        await storage.update_state_for_partial_event(event_id, groups.before, groups.after)
    reader.clear()
    context = await compute_event_context(fork, reader, storage)
    assert not context.partial_state
    assert len(await storage.get_partial_state_events(room.room_id)) == 39
    assert reader.calls({"get_partial_state_event_ids"}) == [Read("get_partial_state_event_ids", 0)]


async def test_outliers_are_never_partial(storage: Storage) -> None:
    room, _ = await _partial_join(storage)
    message = room.message(DAVE)
    context = await compute_event_context(message, storage, storage, outlier=True)
    assert context == EventContext.for_outlier()
    assert context.is_outlier
    assert not context.partial_state
    assert event_to_persist(message, context).context is None
    with pytest.raises(MatrixError, match="outlier") as caught:
        await compute_event_context(message, storage, storage, outlier=True, partial_state=True)
    assert caught.value.errcode == "M_INVALID_PARAM"
    with pytest.raises(MatrixError, match="no state before"):
        await context.get_state_before(storage)


async def test_unknown_prev_events_need_state_from_the_caller(
    storage: Storage, db_path: Path
) -> None:
    room = RoomBuilder()
    room.public_room(BOB, CAROL, users={BOB: 50})
    events = list(room.events.values())
    await ingest_all(storage, events[:-1])
    after_gap = room.message(CAROL)
    with pytest.raises(UnknownPrevStateError) as caught:
        await compute_event_context(after_gap, storage, storage)
    assert caught.value.errcode == "M_NOT_FOUND"
    assert caught.value.prev_event_ids == {events[-1].event_id}
    assert events[-1].event_id in caught.value.message

    # With the state before supplied it is stored as changes against the
    # state of a prev event that is known.
    groups_before, rows_before = count_rows(db_path)
    await ingest(storage, events[-1], outlier=True)
    two_prevs = room.message(CAROL, prev=[events[-2].event_id, events[-1].event_id])
    context = await compute_event_context(
        two_prevs, storage, storage, state_ids_before=room.state_after[events[-1].event_id]
    )
    assert not context.partial_state
    assert context.state_group_before is not None
    assert (
        await storage.get_state_ids(context.state_group_before)
        == (room.state_after[events[-1].event_id])
    )
    groups_after, rows_after = count_rows(db_path)
    assert (groups_after, rows_after) == (groups_before + 1, rows_before + 1)


async def test_only_the_create_event_starts_from_nothing(storage: Storage) -> None:
    room = RoomBuilder()
    orphan = make_pdu(
        "10",
        {
            "type": "m.room.message",
            "sender": ALICE,
            "room_id": room.room_id,
            "content": {"body": "no prev events"},
        },
    )
    with pytest.raises(UnknownPrevStateError):
        await compute_event_context(orphan, storage, storage)
    context = await compute_event_context(room.create, storage, storage)
    assert context.state_group_before is not None
    assert await storage.get_state_ids(context.state_group_before) == {}


async def test_events_to_persist_keep_the_bytes_and_cross_a_process_boundary(
    storage: Storage,
) -> None:
    room = RoomBuilder()
    room.public_room(BOB, CAROL, users={BOB: 50})
    await ingest_all(storage, list(room.events.values()))
    message = room.message(BOB)
    context = await compute_event_context(message, storage, storage)
    record = event_to_persist(message, context.as_rejected("sender_not_joined"))
    assert record.json == message.raw
    assert record.rejected_reason == "sender_not_joined"
    assert record.context is not None
    assert record.context.state_group_after == context.state_group_before
    wire = msgspec.msgpack.encode(record)
    assert msgspec.msgpack.decode(wire, type=EventToPersist) == record
    stored = await storage.persist_events([record])
    assert message.event_id in stored
    row = await storage.get_event(message.event_id)
    assert row is not None
    assert row.json == message.raw


async def test_a_big_room_grows_by_deltas(counting: CountingStorage) -> None:
    """50,000 members' state, then 1,000 events through contexts, the auth
    checks and storage: the database gains about a row per state event,
    never another copy of the state, and no event reads the whole state.
    """
    started = time.monotonic()
    room = RoomBuilder()
    room.public_room(BOB, CAROL, users={BOB: 50})
    # Joined over federation: the room's events arrive as outliers with the
    # state from the send_join response.
    for event in room.events.values():
        await ingest(counting, event, outlier=True)
    base = dict(room.state_after[room.last])
    auth = [room.create.event_id, base[("m.room.power_levels", "")]]
    auth.append(base[("m.room.join_rules", "")])
    members = []
    for n in range(50_000):
        user = f"@user{n}:example.org"
        member = make_pdu(
            "10",
            {
                "type": MEMBER,
                "state_key": user,
                "sender": user,
                "room_id": room.room_id,
                "content": {"membership": "join"},
                "auth_events": auth,
                "prev_events": [room.last],
                "depth": 10,
            },
        )
        members.append(member)
        base[(MEMBER, user)] = member.event_id
    outliers = [event_to_persist(m, EventContext.for_outlier()) for m in members]
    for start in range(0, len(outliers), 5_000):
        await counting.persist_events(outliers[start : start + 5_000])

    # The join, after an event that has no state here, with the room's state
    # supplied: the only whole copy of the state.
    join = room.member(DAVE, "join", state=base)
    groups_start, rows_start = count_rows(counting.path)
    outcome = await ingest(counting, join, state_ids_before=base)
    assert outcome.failure is None
    groups_joined, rows_joined = count_rows(counting.path)
    assert groups_joined == groups_start + 2  # the state before and after the join
    assert rows_start + 50_000 < rows_joined <= rows_start + len(base) + 1

    room.track_state = False
    state_reads = counting.state_reads
    state_events = 0
    expected = dict(base)
    expected[(MEMBER, DAVE)] = join.event_id
    for n in range(1_000):
        if n % 4 == 0:
            event = room.topic(ALICE, str(n), state=expected)
        elif n % 4 == 2:
            event = room.member(f"@new{n}:example.org", "join", state=expected)
        else:
            event = room.message(DAVE, f"message {n}", state=expected)
        if event.state_key is not None:
            expected[(event.type, event.state_key)] = event.event_id
            state_events += 1
        context = await compute_event_context(event, counting, counting)
        assert not context.partial_state
        outcome = await run_auth_checks(event, context, counting)
        assert outcome.failure is None, (n, outcome.failure)
        await counting.persist_events([event_to_persist(event, outcome.context)])
    groups_end, rows_end = count_rows(counting.path)
    # No event read the room's whole state, before it or current.
    assert counting.state_reads == state_reads
    assert counting.current_state_reads == 0

    # One group per state event; rows: one per state event, plus the
    # changes a group merges when a delta chain reaches its cap.
    assert groups_end - groups_joined == state_events
    merges = state_events // MAX_CHAIN_LENGTH
    merged_rows = sum(k * MAX_CHAIN_LENGTH + 1 for k in range(1, merges + 1))
    assert rows_end - rows_joined <= state_events + merged_rows
    assert rows_end - rows_joined < 10_000  # a single copy would be 50,000
    assert await counting.get_current_state_ids(room.room_id) == expected
    print(
        f"50,000 members + 1,000 events: +{groups_end - groups_joined} groups,"
        f" +{rows_end - rows_joined} rows after the join's {rows_joined - rows_start};"
        f" {time.monotonic() - started:.1f} s"
    )
