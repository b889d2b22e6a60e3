from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
from _recording import NARROW_STATE_READS, WHOLE_MAP_READS, Read, RecordingReader
from _rooms import ALICE, BOB, CAROL, DAVE

from ranvier.core import (
    AuthOutcome,
    AuthPoint,
    check_against_auth_events,
    check_against_current_state,
    check_against_state_before,
    compute_event_context,
    event_to_persist,
    run_auth_checks,
)
from ranvier.protocol.auth import StateKey, auth_types_for_event
from ranvier.protocol.events import Pdu
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest, ingest_all

MEMBER = "m.room.member"


async def _stored_room(storage: Storage, version: str = "10") -> RoomBuilder:
    room = RoomBuilder(version)
    room.public_room(BOB, CAROL, users={BOB: 50})
    await ingest_all(storage, list(room.events.values()))
    return room


@pytest.mark.parametrize("version", ["10", "12"])
async def test_an_allowed_event_passes_all_three(storage: Storage, version: str) -> None:
    room = await _stored_room(storage, version)
    message = room.message(CAROL)
    context = await compute_event_context(message, storage, storage)
    assert await check_against_auth_events(message, storage) is None
    assert await check_against_state_before(message, context, storage) is None
    assert await check_against_current_state(message, context, storage) is None
    outcome = await run_auth_checks(message, context, storage)
    assert outcome.failure is None
    assert outcome.context == context


@pytest.mark.parametrize("version", ["10", "12"])
async def test_rejected_against_its_own_auth_events(storage: Storage, version: str) -> None:
    room = await _stored_room(storage, version)
    state = room.state_after[room.last]
    # A message may not cite the join rules.
    message = room.message(
        BOB,
        auth=[
            *([] if version == "12" else [room.create.event_id]),
            state[("m.room.power_levels", "")],
            state[(MEMBER, BOB)],
            state[("m.room.join_rules", "")],
        ],
    )
    outcome = await ingest(storage, message)
    assert outcome.failure is not None
    assert outcome.failure.point is AuthPoint.AUTH_EVENTS
    assert outcome.failure.rule == "auth_events.unexpected"
    assert outcome.context.rejected_reason == "auth_events.unexpected"
    assert outcome.context.state_group_after == outcome.context.state_group_before
    stored = await storage.get_event(message.event_id)
    assert stored is not None
    assert stored.rejected_reason == "auth_events.unexpected"
    assert message.event_id not in await storage.get_forward_extremities(room.room_id)


async def test_auth_events_not_stored_reject(storage: Storage) -> None:
    room = await _stored_room(storage)
    message = room.message(BOB, auth=[room.create.event_id, "$unknown"])
    failure = await check_against_auth_events(message, storage)
    assert failure is not None
    assert failure.point is AuthPoint.AUTH_EVENTS
    assert failure.rule == "auth_events.missing"
    assert "$unknown" in failure.error.message


async def test_rejected_auth_events_authorise_nothing(storage: Storage) -> None:
    room = await _stored_room(storage)
    fork = room.last
    # Carol (power 0) may not change the power levels: rejected ...
    power = room.power_levels(CAROL, {CAROL: 100})
    outcome = await ingest(storage, power)
    assert outcome.failure is not None
    assert outcome.failure.rule == "send_level"
    # ... and an event citing it is rejected for that.
    bob_join = room.state_after[fork][(MEMBER, BOB)]
    cited = room.message(BOB, prev=[fork], auth=[room.create.event_id, power.event_id, bob_join])
    failure = await check_against_auth_events(cited, storage)
    assert failure is not None
    assert failure.rule == "auth_events.rejected"
    assert power.event_id in failure.error.message


async def test_rejected_against_the_state_before(storage: Storage) -> None:
    room = await _stored_room(storage)
    bob_join = room.state_after[room.last][(MEMBER, BOB)]
    ban = room.member(ALICE, "ban", BOB)
    await ingest(storage, ban)
    # Bob's server cites his old join; the state before the message has the ban.
    message = room.message(
        BOB,
        auth=[
            room.create.event_id,
            room.state_after[ban.event_id][("m.room.power_levels", "")],
            bob_join,
        ],
    )
    assert await check_against_auth_events(message, storage) is None
    outcome = await ingest(storage, message)
    assert outcome.failure is not None
    assert outcome.failure.point is AuthPoint.STATE_BEFORE
    assert outcome.failure.rule == "sender_not_joined"
    assert outcome.context.rejected_reason == "sender_not_joined"
    assert outcome.context.state_group_after == outcome.context.state_group_before
    assert await storage.get_forward_extremities(room.room_id) == {ban.event_id}


async def test_soft_failed_against_the_current_state(storage: Storage) -> None:
    room = await _stored_room(storage)
    fork = room.last
    ban = room.member(ALICE, "ban", BOB)
    await ingest(storage, ban)
    # Bob evades the ban by sending from before it.
    topic = room.topic(BOB, "evading", prev=[fork])
    context = await compute_event_context(topic, storage, storage)
    assert await check_against_state_before(topic, context, storage) is None
    outcome = await ingest(storage, topic)
    assert outcome.failure is not None
    assert outcome.failure.point is AuthPoint.CURRENT_STATE
    assert outcome.failure.rule == "sender_not_joined"
    assert outcome.context.soft_failed
    assert outcome.context.rejected_reason is None
    # Kept with its state, but not an extremity and not current state.
    stored = await storage.get_event(topic.event_id)
    assert stored is not None
    assert stored.soft_failed
    assert stored.rejected_reason is None
    groups = await storage.get_event_state_groups(topic.event_id)
    assert groups is not None
    assert (await storage.get_state_ids(groups.after))[("m.room.topic", "")] == topic.event_id
    assert await storage.get_forward_extremities(room.room_id) == {ban.event_id}
    current = await storage.get_current_state_ids(room.room_id)
    assert current == room.state_after[ban.event_id]


async def test_no_soft_fail_check_in_a_partial_state_room(storage: Storage) -> None:
    room = await _stored_room(storage)
    fork = room.last
    ban = room.member(ALICE, "ban", BOB)
    await ingest(storage, ban)
    topic = room.topic(BOB, "evading", prev=[fork])
    context = await compute_event_context(topic, storage, storage)
    assert await check_against_current_state(topic, context, storage) is not None
    await storage.store_partial_join(room.room_id, "10", ban.event_id, "example.org", ())
    assert await check_against_current_state(topic, context, storage) is None


async def test_partial_state_is_filled_in_from_the_auth_events(storage: Storage) -> None:
    # Dave joins with partial state that leaves out Carol's membership.
    room = RoomBuilder()
    room.public_room(BOB, CAROL, users={BOB: 50})
    carol_join = room.last
    join = room.member(DAVE, "join")
    state = dict(room.state_after[carol_join])
    del state[(MEMBER, CAROL)]
    for event_id in [*state.values(), carol_join]:
        await ingest(storage, room.events[event_id], outlier=True)
    await storage.store_partial_join(room.room_id, "10", join.event_id, "example.org", ())
    assert (await ingest(storage, join, state_ids_before=state, partial_state=True)).failure is None

    message = room.message(CAROL)
    context = await compute_event_context(message, storage, storage)
    assert context.partial_state
    assert (MEMBER, CAROL) not in await context.get_state_before(storage)
    # Her message cites her join, which the partial state lacks.
    assert await check_against_state_before(message, context, storage) is None
    outcome = await run_auth_checks(message, context, storage)
    assert outcome.failure is None
    # The same state taken as complete would reject it.
    full = dataclasses.replace(context, partial_state=False)
    failure = await check_against_state_before(message, full, storage)
    assert failure is not None
    assert failure.rule == "sender_not_joined"


async def test_outliers_are_checked_against_their_auth_events_only(storage: Storage) -> None:
    room = await _stored_room(storage)
    fork = room.last
    ban = room.member(ALICE, "ban", BOB)
    await ingest(storage, ban)
    # Fetched as an auth event, say: the ban after it does not matter.
    topic = room.topic(BOB, "before the ban", prev=[fork])
    outcome = await ingest(storage, topic, outlier=True)
    assert outcome.failure is None
    assert outcome.context.is_outlier
    # One whose auth events do not allow it is rejected all the same.
    carol_topic = room.topic(CAROL, "not allowed", prev=[fork])
    outcome = await ingest(storage, carol_topic, outlier=True)
    assert outcome.failure is not None
    assert outcome.failure.point is AuthPoint.AUTH_EVENTS
    assert outcome.failure.rule == "send_level"
    assert outcome.context.is_outlier
    assert outcome.context.rejected_reason == "send_level"
    stored = await storage.get_event(carol_topic.event_id)
    assert stored is not None
    assert stored.outlier
    assert stored.rejected_reason == "send_level"


# --- A big room: the checks read a handful of state entries ----------------------

BIG_ROOM_MEMBERS = 50_000


@dataclasses.dataclass
class BigRoom:
    room: RoomBuilder
    join: str
    #: The state after the join.
    state: dict[StateKey, str]


async def _big_room(storage: Storage, version: str, *, partial: bool = False) -> BigRoom:
    """Alice's room with 50,000 more members, joined by Dave over federation.

    The room's own events arrive as outliers and the state before the join
    is supplied, as a send_join response gives it. The members' events are
    not stored: the checks under test never look at them, and their state
    entries are all a big room's cost comes from. With ``partial``, the
    join has partial state, which lacks Carol's membership.
    """
    room = RoomBuilder(version)
    room.public_room(BOB, CAROL, users={BOB: 50})
    for event in room.events.values():
        await ingest(storage, event, outlier=True)
    state = dict(room.state_after[room.last])
    if partial:
        del state[(MEMBER, CAROL)]
    state.update(
        {(MEMBER, f"@user{n}:example.org"): f"$member{n}" for n in range(BIG_ROOM_MEMBERS)}
    )
    room.track_state = False
    join = room.member(DAVE, "join", state=state)
    if partial:
        await storage.store_partial_join(room.room_id, version, join.event_id, "example.org", ())
    outcome = await ingest(storage, join, state_ids_before=state, partial_state=partial)
    assert outcome.failure is None
    state[(MEMBER, DAVE)] = join.event_id
    return BigRoom(room, join.event_id, state)


async def _check(reader: RecordingReader, storage: Storage, event: Pdu) -> AuthOutcome:
    """Compute ``event``'s context and run the checks, reading through ``reader``."""
    reader.clear()
    context = await compute_event_context(event, reader, storage)
    return await run_auth_checks(event, context, reader)


def _present(event: Pdu, state: Mapping[StateKey, str]) -> int:
    """How many of the keys the rules read for ``event`` ``state`` has."""
    return sum(1 for key in auth_types_for_event(event) if key in state)


@pytest.mark.parametrize("version", ["10", "12"])
async def test_checks_in_a_big_room_read_a_handful_of_state_entries(
    storage: Storage, version: str
) -> None:
    big = await _big_room(storage, version)
    room, state = big.room, big.state
    assert len(await storage.get_current_state_ids(room.room_id)) > BIG_ROOM_MEMBERS
    reader = RecordingReader(storage)

    # Alice bans Bob: checks 1 and 2 (its prev event is the only extremity).
    ban = room.member(ALICE, "ban", BOB, prev=[big.join], state=state)
    outcome = await _check(reader, storage, ban)
    assert outcome.failure is None
    assert not reader.calls(WHOLE_MAP_READS)
    assert [r.entries for r in reader.calls({"get_state_ids_for_keys"})] == [_present(ban, state)]
    assert not reader.calls({"get_current_state_ids_for_keys"})
    await storage.persist_events([event_to_persist(ban, outcome.context)])
    after_ban = state | {(MEMBER, BOB): ban.event_id}

    # Bob, from before the ban: passes checks 1 and 2, soft fails check 3,
    # which read the ban from the current state, and nothing else of it.
    topic = room.topic(BOB, "evading", prev=[big.join], state=state)
    outcome = await _check(reader, storage, topic)
    assert outcome.failure is not None
    assert outcome.failure.point is AuthPoint.CURRENT_STATE
    assert outcome.failure.rule == "sender_not_joined"
    assert not reader.calls(WHOLE_MAP_READS)
    assert [r.entries for r in reader.calls(NARROW_STATE_READS)] == [
        _present(topic, state),
        _present(topic, after_ban),
    ]

    # Carol from the same fork passes all three.
    message = room.message(CAROL, prev=[big.join], state=state)
    outcome = await _check(reader, storage, message)
    assert outcome.failure is None
    assert not reader.calls(WHOLE_MAP_READS)
    assert len(reader.calls({"get_current_state_ids_for_keys"})) == 1

    # Bob's server citing his old join: rejected against the state before.
    cited = [state[key] for key in sorted(auth_types_for_event(topic))]
    late = room.message(BOB, prev=[ban.event_id], state=after_ban, auth=cited)
    outcome = await _check(reader, storage, late)
    assert outcome.failure is not None
    assert outcome.failure.point is AuthPoint.STATE_BEFORE
    assert outcome.failure.rule == "sender_not_joined"
    assert not reader.calls(WHOLE_MAP_READS)

    # A join reads the most keys: the joining user's membership (absent)
    # and the join rules besides.
    newcomer = room.member("@newcomer:example.org", "join", prev=[ban.event_id], state=after_ban)
    outcome = await _check(reader, storage, newcomer)
    assert outcome.failure is None
    assert not reader.calls(WHOLE_MAP_READS)
    state_entries = reader.entries(NARROW_STATE_READS)
    assert state_entries == _present(newcomer, after_ban) < len(auth_types_for_event(newcomer))
    # Everything read for the join, events included, is a handful.
    assert sum(r.entries for r in reader.reads) <= 16


@pytest.mark.parametrize("version", ["10", "12"])
async def test_checks_with_partial_state_in_a_big_room_stay_narrow(
    storage: Storage, version: str
) -> None:
    big = await _big_room(storage, version, partial=True)
    room = big.room
    reader = RecordingReader(storage)
    # Carol's membership is missing from the partial state; her message
    # cites her join and is let in by resolving the two at the keys checked.
    assert (MEMBER, CAROL) not in big.state
    carol_join = next(
        event.event_id
        for event in room.events.values()
        if event.type == MEMBER and event.state_key == CAROL
    )
    cited = [
        *([] if version == "12" else [room.create.event_id]),
        big.state[("m.room.power_levels", "")],
        carol_join,
    ]
    message = room.message(CAROL, prev=[big.join], state=big.state, auth=cited)
    outcome = await _check(reader, storage, message)
    assert outcome.context.partial_state
    assert outcome.failure is None
    assert not reader.calls(WHOLE_MAP_READS)
    assert reader.calls({"get_partial_state_event_ids"}) == [Read("get_partial_state_event_ids", 1)]
    assert reader.entries({"get_state_ids_for_keys"}) == _present(message, big.state)
