"""Auth events that were redacted after they were used.

Synapse judges an event against the redacted form of its auth events, in
every room version, and resolves state with events as stored (see
ranvier.core.loading): these tests hold ranvier to both. Redaction keeps
a power levels event's ``users``, so no user loses power that way; what it
drops before room version 11 is ``invite``, and in every version
``notifications``, whose changes the auth rules check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from _rooms import ALICE, BOB, CAROL, DAVE, local_creator

from ranvier.core import AuthPoint, compute_event_context
from ranvier.errors import MatrixError
from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest, ingest_all

POWER_LEVELS = ("m.room.power_levels", "")
#: Bob may change the power levels, and not the notification level of 20.
LEVELS: Mapping[str, Any] = {
    "events": {"m.room.power_levels": 10},
    "state_default": 50,
    "notifications": {"room": 20},
}
#: The same, with the notification level Bob may not set by the original.
LOWERED: Mapping[str, Any] = {**LEVELS, "notifications": {"room": 5}}


def _redaction(room: RoomBuilder, sender: str, target: str, **options: Any) -> Pdu:
    if room.room_version.redacts_in_content:
        return room.send("m.room.redaction", sender, {"redacts": target}, **options)
    return room.send("m.room.redaction", sender, {}, extra={"redacts": target}, **options)


async def _room(
    storage: Storage, version: str, content: Mapping[str, Any]
) -> tuple[RoomBuilder, Pdu]:
    """A public room of Alice's where Bob joined under power levels of
    ``content`` (Alice at 100, Bob at 10); returns it and those levels."""
    room = RoomBuilder(version)
    room.member(ALICE, "join")
    levels = room.power_levels(ALICE, {ALICE: 100, BOB: 10}, content=content)
    room.join_rules(ALICE, "public")
    room.member(BOB, "join")
    await ingest_all(storage, room.order)
    return room, levels


@pytest.mark.parametrize("version", ["6", "10"])
async def test_an_invite_allowed_only_by_the_redacted_invite_level_is_refused(
    storage: Storage, version: str
) -> None:
    # Bob is at -10, and may invite only because the invite level is -20:
    # redacted, the levels have no invite level, which is then 0.
    room = RoomBuilder(version)
    room.member(ALICE, "join")
    levels = room.power_levels(ALICE, {ALICE: 100, BOB: -10}, content={"invite": -20})
    room.join_rules(ALICE, "public")
    room.member(BOB, "join")
    await ingest_all(storage, room.order)
    first = room.member(BOB, "invite", CAROL)
    assert (await ingest(storage, first)).failure is None

    assert (await ingest(storage, _redaction(room, ALICE, levels.event_id))).failure is None
    second = room.member(BOB, "invite", DAVE)
    assert levels.event_id in second.auth_event_ids
    outcome = await ingest(storage, second)
    assert outcome.failure is not None
    assert outcome.failure.point is AuthPoint.AUTH_EVENTS
    assert outcome.failure.rule == "member.invite.power"
    stored = await storage.get_event(second.event_id)
    assert stored is not None
    assert stored.rejected_reason == "member.invite.power"


@pytest.mark.parametrize("version", ["6", "10", "11", "12"])
async def test_a_change_of_a_redacted_notification_level_is_judged_without_it(
    storage: Storage, version: str
) -> None:
    room, levels = await _room(storage, version, LEVELS)
    # Before the redaction, Bob may not lower a level above his own ...
    refused = room.power_levels(BOB, {ALICE: 100, BOB: 10}, content=LOWERED, apply=False)
    outcome = await ingest(storage, refused)
    assert outcome.failure is not None
    assert outcome.failure.rule == "power_levels.change.notifications"

    # ... after it, the levels he changes have no notification levels.
    assert (await ingest(storage, _redaction(room, ALICE, levels.event_id))).failure is None
    lowered = room.power_levels(BOB, {ALICE: 100, BOB: 10}, content=LOWERED)
    assert levels.event_id in lowered.auth_event_ids
    outcome = await ingest(storage, lowered)
    assert outcome.failure is None
    assert outcome.context.accepted
    current = await storage.get_current_state_ids(room.room_id)
    assert current[POWER_LEVELS] == lowered.event_id


@pytest.mark.parametrize("version", ["6", "10", "11"])
async def test_state_resolution_reads_the_power_levels_as_stored(
    storage: Storage, version: str
) -> None:
    # Bob's change, accepted when it arrives (judged by the redacted levels,
    # as Synapse judges it), meets a fork where the levels stayed. State
    # resolution v2 replays the power events in order: Alice's levels
    # pass; Bob's change is checked against them as Synapse's resolution
    # reads them, as stored, with the notification level of 20 above his
    # 10, and fails. The resolved power levels are Alice's.
    room, levels = await _room(storage, version, LEVELS)
    fork = room.last
    redaction = _redaction(room, ALICE, levels.event_id)
    lowered = room.power_levels(BOB, {ALICE: 100, BOB: 10}, content=LOWERED)
    topic = room.topic(ALICE, "elsewhere", prev=[fork])
    for event in (redaction, lowered, topic):
        assert (await ingest(storage, event)).failure is None

    merge = room.message(ALICE, prev=[lowered.event_id, topic.event_id])
    context = await compute_event_context(merge, storage, storage)
    state = await context.get_state_before_for_keys(storage, {POWER_LEVELS})
    assert state[POWER_LEVELS] == levels.event_id


@pytest.mark.parametrize("version", ["6", "10"])
async def test_a_redacted_create_event_is_read_as_stored(storage: Storage, version: str) -> None:
    # Synapse applies no redaction to a create event; redacted before v11,
    # it would lose m.federate and let other servers' users in.
    room = RoomBuilder(version, create_content={"m.federate": False})
    room.member(ALICE, "join")
    room.power_levels(ALICE, {ALICE: 100})
    room.join_rules(ALICE, "public")
    await ingest_all(storage, room.order)
    assert (await ingest(storage, _redaction(room, ALICE, room.create.event_id))).failure is None
    served = await storage.redactions.get_served_events([room.create.event_id])
    assert "m.federate" not in served[room.create.event_id].json.decode()

    outcome = await ingest(storage, room.member(DAVE, "join"))
    assert outcome.failure is not None
    assert outcome.failure.rule == "federate"


@pytest.mark.parametrize("version", ["10", "11"])
async def test_events_created_here_are_judged_by_redacted_auth_events(
    storage: Storage, version: str
) -> None:
    creator = local_creator(storage, "example.org", generate_signing_key("1"))
    room_id = await creator.create_room(ALICE, preset="public_chat", room_version=version)
    await creator.join(BOB, room_id)
    users = {"users": {ALICE: 100, BOB: 10}}
    levels = await creator.send_event(
        ALICE, room_id, "m.room.power_levels", {**LEVELS, **users}, state_key=""
    )
    with pytest.raises(MatrixError) as refused:
        await creator.send_event(
            BOB, room_id, "m.room.power_levels", {**LOWERED, **users}, state_key=""
        )
    assert refused.value.errcode == "M_FORBIDDEN"

    await creator.send_event(ALICE, room_id, "m.room.redaction", {"redacts": levels})
    lowered = await creator.send_event(
        BOB, room_id, "m.room.power_levels", {**LOWERED, **users}, state_key=""
    )
    current = await storage.get_current_state_ids(room_id)
    assert current[POWER_LEVELS] == lowered
