"""What a run of one room's events starts from, read in one go: the same
answers as the reads it stands for, made one by one."""

from __future__ import annotations

from collections.abc import Callable

from ranvier.storage import EventToPersist, Storage
from ranvier.storage.run_reads import RoomRunRows, RunReads

ROOM = "!room:example.org"
EventFactory = Callable[..., EventToPersist]


async def _one_by_one(
    storage: Storage, event_ids: set[str], wanted: set[str], prev_ids: set[str]
) -> RoomRunRows:
    partial_room = await storage.is_partial_state_room(ROOM)
    return RoomRunRows(
        events=await storage.get_events(wanted),
        partial_state_room=partial_room,
        partial_state_events=(
            await storage.get_partial_state_event_ids(prev_ids) if partial_room else frozenset()
        ),
        state_groups=await storage.get_events_state_groups(prev_ids),
        forward_extremities=await storage.get_forward_extremities(ROOM),
        cited=await storage.get_events_with_accepted_children(event_ids),
        redaction_targets=await storage.get_redaction_targets(wanted),
        current_group=await storage.get_current_state_group(ROOM),
    )


async def test_one_read_answers_as_the_reads_one_by_one(
    storage: Storage, make_event: EventFactory
) -> None:
    g0 = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    await storage.persist_events(
        [
            make_event("$create", type="m.room.create", state_key="", before=g0, after=g0),
            make_event("$a", prev=("$create",), before=g0),
            make_event("$b", prev=("$a",), before=g0),
            make_event("$outlier", outlier=True),
        ]
    )
    reader = RunReads(storage.readers)
    # A run of $b (already stored and cited by nothing), $c and $d, which
    # cite $b, $a, an outlier, an event never seen and $c (of the run, not
    # stored yet).
    event_ids = {"$b", "$c", "$d"}
    prev_ids = {"$a", "$b", "$c", "$outlier", "$unseen"}
    wanted = event_ids | prev_ids | {"$create"}
    rows = await reader.read_room_run(ROOM, event_ids=event_ids, wanted=wanted, prev_ids=prev_ids)
    assert rows == await _one_by_one(storage, event_ids, wanted, prev_ids)
    assert set(rows.events) == {"$create", "$a", "$b", "$outlier"}
    assert set(rows.state_groups) == {"$a", "$b"}
    assert rows.forward_extremities == {"$b"}
    assert rows.cited == set()
    assert not rows.partial_state_room
    # The state after the prev events and the current state, for given keys.
    topic = ("m.room.topic", "")
    keyed = await reader.read_room_run(
        ROOM,
        event_ids=event_ids,
        wanted=wanted,
        prev_ids=prev_ids,
        state_keys={("m.room.create", ""), topic},
    )
    assert keyed.state_keys == {("m.room.create", ""), topic}
    assert keyed.state_after_prevs == {g0: {("m.room.create", ""): "$create"}}
    assert keyed.current_state == dict(
        await storage.get_current_state_ids_for_keys(ROOM, [("m.room.create", ""), topic])
    )
    assert rows.state_after_prevs is None
    # $a is cited by $b, an accepted event.
    cited = await reader.read_room_run(ROOM, event_ids={"$a"}, wanted={"$a"}, prev_ids=set())
    assert cited.cited == {"$a"}
    assert cited.state_groups == {}


async def test_partial_state_is_read_for_the_prev_events(
    storage: Storage, make_event: EventFactory
) -> None:
    g0 = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    await storage.store_partial_join(ROOM, "10", "$join", "hs.example", ["hs.example"])
    await storage.persist_events(
        [
            make_event("$join", before=g0, partial=True),
            make_event("$full", prev=("$join",), before=g0),
        ]
    )
    # $after, of the run, cites $next, of the run too.
    event_ids = {"$next", "$after"}
    prev_ids = {"$join", "$full", "$next"}
    rows = await RunReads(storage.readers).read_room_run(
        ROOM, event_ids=event_ids, wanted=event_ids | prev_ids, prev_ids=prev_ids
    )
    assert rows.partial_state_room
    assert rows.partial_state_events == {"$join"}
    assert rows == await _one_by_one(storage, event_ids, event_ids | prev_ids, prev_ids)
