from __future__ import annotations

import dataclasses

import pytest
from _rooms import ALICE, BOB, CAROL, DAVE, Room, ingest, ingest_all

from ranvier.core import (
    AuthPoint,
    check_against_auth_events,
    check_against_current_state,
    check_against_state_before,
    compute_event_context,
    run_auth_checks,
)
from ranvier.storage import Storage

MEMBER = "m.room.member"


async def _stored_room(storage: Storage, version: str = "10") -> Room:
    room = Room(version)
    room.basic()
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
    room = Room()
    room.basic()
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
