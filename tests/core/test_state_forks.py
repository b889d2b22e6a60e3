"""State resolution of stored state groups from their changes against one another."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from _recording import STATE_DELTA_READS, WHOLE_MAP_READS, RecordingReader
from _rooms import ALICE, BOB, CAROL, DAVE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranvier.core import (
    EventContext,
    compute_current_state_after,
    compute_event_context,
    event_to_persist,
    resolve_state_maps,
)
from ranvier.core.loading import EventLoader
from ranvier.core.state import GroupState, ResolvedGroups, resolve_state_groups
from ranvier.errors import MatrixError
from ranvier.protocol.auth import StateKey
from ranvier.protocol.events import Pdu
from ranvier.protocol.state_res import ChangedState, StateDelta, resolve_state
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest, ingest_all, make_pdu

MEMBER = "m.room.member"
TOPIC = ("m.room.topic", "")
ACTORS = [ALICE, BOB, CAROL]


def _apply(state: Mapping[StateKey, str], delta: StateDelta) -> dict[StateKey, str]:
    applied = dict(state)
    for key, event_id in delta.items():
        if event_id is None:
            applied.pop(key, None)
        else:
            applied[key] = event_id
    return applied


async def _after_group(storage: Storage, event_id: str) -> int:
    groups = await storage.get_event_state_groups(event_id)
    assert groups is not None, event_id
    return groups.after


async def _check_resolution(
    storage: Storage, room: RoomBuilder, groups: Sequence[int], order: Sequence[int]
) -> dict[StateKey, str]:
    """Resolve ``groups`` both ways, the delta form with its base taken in
    ``order``, and check that they agree; return the resolved state.
    """
    states = [await storage.get_state_ids(group) for group in groups]
    expected = await resolve_state_maps(storage, room.room_id, room.room_version, states)
    resolved = await resolve_state_groups(
        storage, room.room_id, room.room_version, [groups[index] for index in order]
    )
    assert resolved.base_group == groups[order[0]]
    base = await storage.get_state_ids(resolved.base_group)
    assert dict(ChangedState(base, resolved.changes)) == expected
    # The changes are changes: none restates the base.
    assert all(base.get(key) != event_id for key, event_id in resolved.changes.items())
    closest, delta = resolved.closest()
    assert closest in groups
    assert _apply(await storage.get_state_ids(closest), delta) == expected
    sizes = [len(_changes(await storage.get_state_ids(group), expected)) for group in groups]
    assert len(delta) == min(sizes)
    return expected


def _changes(state: Mapping[StateKey, str], target: Mapping[StateKey, str]) -> dict[StateKey, str]:
    changed = {key: event_id for key, event_id in target.items() if state.get(key) != event_id}
    changed.update((key, "") for key in state if key not in target)
    return changed


# --- Forked rooms, resolved both ways -------------------------------------------------


@dataclass
class _Forks:
    room: RoomBuilder
    before: list[Pdu]
    branches: list[list[Pdu]]


@st.composite
def _forked_rooms(draw: st.DrawFn) -> _Forks:
    """A public room whose history forks into branches of a few events each,
    authorised or not.
    """
    room = RoomBuilder(draw(st.sampled_from(["10", "12"])))
    room.public_room(BOB, CAROL, users={BOB: 50})
    before = list(room.order)
    fork = room.last
    branches: list[list[Pdu]] = []
    for _ in range(draw(st.integers(2, 3))):
        branch: list[Pdu] = []
        for _ in range(draw(st.integers(0, 4))):
            prev = [branch[-1].event_id if branch else fork]
            sender = draw(st.sampled_from(ACTORS))
            target = draw(st.sampled_from([*ACTORS, DAVE]))
            kind = draw(st.sampled_from(["topic", "levels", "ban", "rules", "leave", "join", "x"]))
            if kind == "topic":
                event = room.topic(sender, f"by {sender}", prev=prev)
            elif kind == "levels":
                level = draw(st.sampled_from([0, 50, 100]))
                event = room.power_levels(sender, {ALICE: 100, target: level}, prev=prev)
            elif kind == "rules":
                rule = draw(st.sampled_from(["public", "invite"]))
                event = room.join_rules(sender, rule, prev=prev)
            elif kind == "x":
                event = room.state_event(sender, "m.custom", {"n": len(branch)}, prev=prev)
            else:
                event = room.member(sender, kind, target if kind == "ban" else sender, prev=prev)
            branch.append(event)
        branches.append(branch)
    return _Forks(room, before, branches)


async def _check_forks(forks: _Forks, checked: bool, data: st.DataObject) -> None:
    room = forks.room
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage(Path(tmp) / "forks.db", synchronous="NORMAL")
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.run)
            await ingest_all(storage, forks.before)
            fork = forks.before[-1].event_id
            for branch in forks.branches:
                for event in branch:
                    if checked:
                        # The auth checks may reject or soft-fail it, and
                        # the current state follows the other branches.
                        await ingest(storage, event)
                    else:
                        context = await compute_event_context(event, storage, storage)
                        await storage.persist_events([event_to_persist(event, context)])
            tips = list(dict.fromkeys(b[-1].event_id if b else fork for b in forks.branches))
            groups = list(dict.fromkeys([await _after_group(storage, tip) for tip in tips]))
            order = data.draw(st.permutations(range(len(groups))))
            expected = await _check_resolution(storage, room, groups, order)
            if not checked:
                # Nothing rejected: as resolved from the room's own states.
                states = [room.state_after[tip] for tip in tips]
                assert expected == resolve_state(room.version, states, room.events)

            # An event after every branch gets the resolved state before it.
            merge = room.message(ALICE, "merge", prev=tips)
            context = await compute_event_context(merge, storage, storage)
            assert context.state_group_before is not None
            assert await storage.get_state_ids(context.state_group_before) == expected
            if checked:
                # The room's current state is its extremities' resolved.
                extremities = await storage.get_forward_extremities(room.room_id)
                states = [
                    await storage.get_state_ids(await _after_group(storage, event_id))
                    for event_id in sorted(extremities)
                ]
                current = await resolve_state_maps(storage, room.room_id, room.room_version, states)
                assert await storage.get_current_state_ids(room.room_id) == current
            nursery.cancel_scope.cancel()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forks=_forked_rooms(), checked=st.booleans(), data=st.data())
def test_groups_resolve_as_their_whole_states_do(
    forks: _Forks, checked: bool, data: st.DataObject
) -> None:
    trio.run(_check_forks, forks, checked, data)


async def test_a_state_with_changes_on_top(storage: Storage) -> None:
    """The state after an event not written yet: its group before, with it."""
    room = RoomBuilder("10")
    room.public_room(BOB, CAROL, users={BOB: 50})
    await ingest_all(storage, room.order)
    fork = room.last
    left = room.topic(ALICE, "left")
    right = room.topic(BOB, "right", prev=[fork])
    await ingest(storage, left)
    context = await compute_event_context(right, storage, storage)
    assert context.state_group_before is not None
    left_group = await _after_group(storage, left.event_id)
    states = [room.state_after[right.event_id], room.state_after[left.event_id]]
    expected = resolve_state("10", states, room.events)

    # The event is not stored: the loader has it at hand for the replay.
    loader = EventLoader(storage, room.room_version)
    loader.add(right)
    on_top = {TOPIC: right.event_id}
    resolved = await resolve_state_groups(
        storage,
        room.room_id,
        room.room_version,
        [GroupState(context.state_group_before, on_top), left_group],
        loader=loader,
    )
    assert resolved.base_group == context.state_group_before
    base = await storage.get_state_ids(context.state_group_before)
    assert dict(ChangedState(base, resolved.changes)) == expected
    # Neither topic is a power event and both cite the same power levels:
    # the later one is applied last and stays.
    assert expected[TOPIC] == right.event_id
    current = await compute_current_state_after(right, context, storage, storage)
    assert current is not None
    assert await storage.get_state_ids(current) == expected


async def test_states_that_agree_resolve_to_the_first(storage: Storage) -> None:
    room = RoomBuilder("10")
    room.public_room(BOB, CAROL)
    await ingest_all(storage, room.order)
    group = await _after_group(storage, room.last)
    reader = RecordingReader(storage)
    resolved = await resolve_state_groups(reader, room.room_id, room.room_version, [group, group])
    assert (resolved.base_group, dict(resolved.changes)) == (group, {})
    assert resolved.closest() == (group, {})
    # Changes on top that every set makes are no conflict either.
    on_top = GroupState(group, {TOPIC: "$new", (MEMBER, CAROL): None})
    resolved = await resolve_state_groups(reader, room.room_id, room.room_version, [on_top, on_top])
    assert dict(resolved.changes) == {TOPIC: "$new", (MEMBER, CAROL): None}
    assert not reader.calls({"get_events"})
    assert not reader.calls(WHOLE_MAP_READS)

    with pytest.raises(MatrixError, match="no state of") as caught:
        await resolve_state_groups(storage, room.room_id, room.room_version, [])
    assert caught.value.errcode == "M_INVALID_PARAM"


def test_the_closest_group_has_the_fewest_changes() -> None:
    base = {TOPIC: "$t0", (MEMBER, ALICE): "$a0", (MEMBER, BOB): "$b0"}
    resolved = ResolvedGroups(
        base_group=1,
        changes={TOPIC: "$t1", (MEMBER, BOB): None},
        group_deltas={1: {}, 2: {TOPIC: "$t1"}, 3: {TOPIC: "$t1", (MEMBER, BOB): None}, 4: {}},
        base_entries=base,
    )
    assert resolved.closest() == (3, {})
    tie = ResolvedGroups(
        base_group=1,
        changes={TOPIC: "$t1"},
        group_deltas={1: {}, 2: {(MEMBER, ALICE): None}},
        base_entries=base,
    )
    # Both are a change away; the first one given wins.
    assert tie.closest() == (1, {TOPIC: "$t1"})
    back = ResolvedGroups(
        base_group=1,
        changes={},
        group_deltas={2: {TOPIC: "$t9", (MEMBER, ALICE): None}},
        base_entries=base,
    )
    assert back.closest() == (2, {TOPIC: "$t0", (MEMBER, ALICE): "$a0"})


# --- A fork in a room of 50,000 members ----------------------------------------------

BIG_ROOM_MEMBERS = 50_000


async def _big_room(storage: Storage) -> tuple[RoomBuilder, str]:
    """A public room joined with 50,000 members in its state; the join's ID.

    The members come as outliers with the join's state, as a join over
    federation stores them: one whole copy of the state, the join's.
    """
    room = RoomBuilder("10")
    room.public_room(BOB, CAROL, users={BOB: 50})
    for event in room.order:
        await ingest(storage, event, outlier=True)
    state = dict(room.state)
    auth = [room.create.event_id, state[("m.room.power_levels", "")]]
    auth.append(state[("m.room.join_rules", "")])
    members = []
    for n in range(BIG_ROOM_MEMBERS):
        user = f"@user{n}:example.org"
        member = make_pdu(
            room.version,
            {
                "type": MEMBER,
                "state_key": user,
                "sender": user,
                "room_id": room.room_id,
                "content": {"membership": "join"},
                "auth_events": auth,
                "prev_events": [room.last],
                "depth": 10,
                "origin_server_ts": room.ts,
            },
        )
        members.append(event_to_persist(member, EventContext.for_outlier()))
        state[(MEMBER, user)] = member.event_id
    for start in range(0, len(members), 10_000):
        await storage.persist_events(members[start : start + 10_000])
    join = room.member(DAVE, "join", state=state)
    outcome = await ingest(storage, join, state_ids_before=state)
    assert outcome.failure is None
    return room, join.event_id


async def _write(
    storage: Storage, reader: RecordingReader, events: Sequence[Pdu], *, current: bool = True
) -> None:
    """Write ``events`` through core, reading through ``reader``; with
    ``current``, the room's current state follows them.
    """
    for event in events:
        context = await compute_event_context(event, reader, storage)
        group = None
        if current:
            group = await compute_current_state_after(event, context, reader, storage)
        await storage.persist_events(
            [event_to_persist(event, context)],
            current_state_groups=None if group is None else {event.room_id: group},
        )


async def test_forks_in_a_big_room(storage: Storage) -> None:
    started = time.monotonic()
    room, join = await _big_room(storage)
    built = time.monotonic()
    reader = RecordingReader(storage)

    # Alice's two branches set the same 30 keys differently: 30 conflicts,
    # whose events cite the same auth events, so their auth chains agree.
    fork_size = 30
    left = [
        room.state_event(ALICE, "m.custom", {"side": "left"}, state_key=str(n))
        for n in range(fork_size)
    ]
    right = [room.topic(ALICE, "right", prev=[join])]
    right += [
        room.state_event(ALICE, "m.custom", {"side": "right"}, state_key=str(n))
        for n in range(fork_size)
    ]
    mark = time.perf_counter()
    await _write(storage, reader, [*left, *right])
    written = time.perf_counter() - mark
    merge = room.message(ALICE, "merge", prev=[left[-1].event_id, right[-1].event_id])
    mark = time.perf_counter()
    context = await compute_event_context(merge, reader, storage)
    merged_in = time.perf_counter() - mark

    assert not reader.calls(WHOLE_MAP_READS)
    state_entries = reader.entries(STATE_DELTA_READS | {"get_state_ids_for_keys"})
    events_read = reader.entries({"get_events"})
    # Each of the 31 right-hand events resolved against the left branch
    # (for the current state), then the merge: a few entries and events
    # per conflict, none per member.
    resolutions = len(right) + 1
    assert state_entries <= resolutions * (4 * fork_size + 20)
    assert events_read <= resolutions * (3 * fork_size + 20)
    assert context.state_group_before is not None
    merged = await storage.get_state_ids(context.state_group_before)
    assert len(merged) > BIG_ROOM_MEMBERS
    assert merged[TOPIC] == right[0].event_id
    for n in range(fork_size):
        # The same power levels cited: in timestamp order, so the right
        # branch's, built later, are applied last and stay.
        assert merged[("m.custom", str(n))] == right[n + 1].event_id
    assert await storage.get_current_state_ids(room.room_id) == merged

    # A newcomer's join cites the join rules, which Alice's topic does
    # not, and Alice's topic cites her membership, which the join does not.
    # Both sides hold both: a lookup of their keys settles it, and nothing
    # of the shared events is read.
    joined = room.member("@newcomer:example.org", "join", prev=[join])
    topic = room.topic(ALICE, "by Alice", prev=[join])
    await _write(storage, reader, [joined, topic], current=False)
    groups = [await _after_group(storage, joined.event_id)]
    groups.append(await _after_group(storage, topic.event_id))
    reader.clear()
    mark = time.perf_counter()
    resolved = await resolve_state_groups(reader, room.room_id, room.room_version, groups)
    join_against_topic = time.perf_counter() - mark
    assert not reader.calls(WHOLE_MAP_READS)
    assert reader.entries({"get_events"}) < 100
    base = await storage.get_state_ids(resolved.base_group)
    expected = await _check_resolution(storage, room, groups, [0, 1])
    assert dict(ChangedState(base, resolved.changes)) == expected
    assert expected[(MEMBER, "@newcomer:example.org")] == joined.event_id

    # Bob's topic cites his membership, which no event of the other side
    # cites; both sides hold it, so it is no more in doubt than the above.
    bobs = room.topic(BOB, "by Bob", prev=[join])
    await _write(storage, reader, [bobs], current=False)
    groups[0] = await _after_group(storage, bobs.event_id)
    reader.clear()
    mark = time.perf_counter()
    resolved = await resolve_state_groups(reader, room.room_id, room.room_version, groups)
    two_senders = time.perf_counter() - mark
    assert not reader.calls(WHOLE_MAP_READS)
    assert reader.entries({"get_events"}) < 100
    base = await storage.get_state_ids(resolved.base_group)
    expected = await _check_resolution(storage, room, groups, [1, 0])
    assert dict(ChangedState(base, resolved.changes)) == expected

    # Erin joins and renames herself on one side: her first join is cited
    # there and held by neither state. Only the whole chain of the shared
    # events shows that it is in the auth difference, and every member's
    # join is read to walk it.
    erin = "@erin:example.org"
    first = room.member(erin, "join", prev=[join])
    renamed = room.member(erin, "join", content={"displayname": "Erin"})
    await _write(storage, reader, [first, renamed], current=False)
    groups[0] = await _after_group(storage, renamed.event_id)
    reader.clear()
    mark = time.perf_counter()
    resolved = await resolve_state_groups(reader, room.room_id, room.room_version, groups)
    whole_walk = time.perf_counter() - mark
    assert [read.method for read in reader.calls(WHOLE_MAP_READS)] == ["get_state_ids"]
    assert reader.entries({"get_events"}) > BIG_ROOM_MEMBERS
    base = await storage.get_state_ids(resolved.base_group)
    expected = await _check_resolution(storage, room, groups, [0, 1])
    assert dict(ChangedState(base, resolved.changes)) == expected
    assert expected[(MEMBER, erin)] == renamed.event_id
    print(
        f"50,000 members (built in {built - started:.1f} s): a fork of {fork_size} keys a"
        f" side written in {written:.3f} s and merged in {merged_in:.3f} s reading"
        f" {state_entries} state entries and {events_read} events; join against topic"
        f" {join_against_topic:.3f} s; topics by two senders {two_senders:.3f} s;"
        f" a join and a rename against a topic {whole_walk:.3f} s"
    )
