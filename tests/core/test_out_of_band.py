"""core.out_of_band on real storage: a leave or ban of a local user that
answers their out-of-band invite or knock is kept as an outlier; nothing
else is, nor anything of a room whose DAG is held here."""

from __future__ import annotations

import pytest

from ranvier.core.context import out_of_band_to_persist
from ranvier.core.out_of_band import OutOfBandMemberships
from ranvier.errors import MatrixError
from ranvier.protocol.events import Pdu
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest_all

HERE = "here.test"
ALICE = "@alice:there.test"
BOB = f"@bob:{HERE}"
CAROL = f"@carol:{HERE}"


async def _held_alone(storage: Storage, *events: Pdu, through: str | None = None) -> None:
    """Store the room and ``events`` as outliers, as an invite or a knock
    is; a knock as sent ``through`` that server."""
    await storage.store_room(events[0].room_id, events[0].room_version.identifier)
    await storage.persist_events(
        [
            out_of_band_to_persist(
                event, sent_through=through if event.membership == "knock" else None
            )
            for event in events
        ]
    )


async def _refused(oob: OutOfBandMemberships, origin: str, event: Pdu) -> str:
    """Why ``event`` from ``origin`` is refused: 403 M_FORBIDDEN."""
    with pytest.raises(MatrixError) as refused:
        await oob.take(origin, event)
    assert (refused.value.http_status, refused.value.errcode) == (403, "M_FORBIDDEN")
    return refused.value.message


def _oob(storage: Storage) -> OutOfBandMemberships:
    return OutOfBandMemberships(
        server_name=HERE, store=storage, memberships=storage.room_members, persister=storage
    )


async def _latest(storage: Storage, room_id: str) -> str | None:
    return await storage.room_members.get_latest_membership_event_id(BOB, room_id)


async def test_a_withdrawn_invite_is_kept_as_an_outlier(storage: Storage) -> None:
    room = RoomBuilder("12", ALICE)
    room.public_room()
    invite = room.member(ALICE, "invite", BOB)
    withdrawn = room.member(ALICE, "leave", BOB)
    assert invite.event_id in withdrawn.auth_event_ids
    await _held_alone(storage, invite)
    oob = _oob(storage)

    assert oob.may_answer(withdrawn)
    assert await oob.take("there.test", withdrawn)
    held = (await storage.get_events([withdrawn.event_id]))[withdrawn.event_id]
    assert held.outlier
    assert await _latest(storage, room.room_id) == withdrawn.event_id
    assert await storage.get_forward_extremities(room.room_id) == set()
    # Taken again, it is there already.
    assert await oob.take("there.test", withdrawn)


async def test_an_invite_is_withdrawn_only_by_its_inviter(storage: Storage) -> None:
    """This server holds nothing of the room to tell who else may take the
    invite back, so a leave or ban of the invitee by anyone but the inviter
    (the room's admin, or a stranger citing the invite) is not taken; the
    inviter's own withdrawal still is."""
    dave = "@dave:there.test"
    room = RoomBuilder("12", ALICE)
    room.public_room(dave, users={dave: 50})
    invite = room.member(dave, "invite", BOB)
    await _held_alone(storage, invite)
    oob = _oob(storage)
    eve = "@eve:evil.test"
    by_others = [
        room.draft_member(ALICE, "leave", BOB),
        room.draft_member(ALICE, "ban", BOB),
        room.draft_member(
            eve, "leave", BOB, auth=[room.state[("m.room.power_levels", "")], invite.event_id]
        ),
    ]
    for event in by_others:
        assert invite.event_id in event.auth_event_ids
        reason = await _refused(oob, "there.test", event)
        assert f"came from {dave}" in reason, reason
        assert event.event_id not in await storage.get_events([event.event_id])
    assert await _latest(storage, room.room_id) == invite.event_id

    withdrawn = room.member(dave, "leave", BOB)
    assert await oob.take("there.test", withdrawn)
    assert await _latest(storage, room.room_id) == withdrawn.event_id


async def test_a_refused_knock_and_a_ban_are_answers(storage: Storage) -> None:
    room = RoomBuilder("12", ALICE)
    room.public_room()
    room.state_event(ALICE, "m.room.join_rules", {"join_rule": "knock"})
    knock = room.member(BOB, "knock")
    banned = room.member(ALICE, "ban", BOB)
    await _held_alone(storage, knock, through="there.test")
    assert await _oob(storage).take("there.test", banned)
    assert await _latest(storage, room.room_id) == banned.event_id


async def test_a_knock_is_refused_only_by_the_server_it_was_made_through(
    storage: Storage,
) -> None:
    """The knock went through there.test. Another server that knows the
    room (and the knock's event ID) cannot refuse it: not with a leave of
    its own user's, nor by passing on one of there.test's, and there.test
    cannot pass on another server's either. Nothing is written; there.test's
    own refusal is taken."""
    eve = "@eve:evil.test"
    room = RoomBuilder("12", ALICE)
    room.public_room(eve, users={eve: 100})
    room.state_event(ALICE, "m.room.join_rules", {"join_rule": "knock"})
    knock = room.member(BOB, "knock")
    await _held_alone(storage, knock, through="there.test")
    oob = _oob(storage)
    by_eve = room.draft_member(eve, "leave", BOB)
    by_alice = room.draft_member(ALICE, "leave", BOB)
    assert knock.event_id in by_eve.auth_event_ids
    assert knock.event_id in by_alice.auth_event_ids
    forged = [
        ("evil.test", by_eve, "evil.test cannot refuse it"),
        ("evil.test", by_alice, "evil.test cannot refuse it"),
        ("there.test", by_eve, f"{eve} of evil.test refuses it"),
    ]
    for origin, event, why in forged:
        reason = await _refused(oob, origin, event)
        assert "was made through there.test" in reason, reason
        assert why in reason, reason
        assert event.event_id not in await storage.get_events([event.event_id])
        assert await _latest(storage, room.room_id) == knock.event_id

    assert await oob.take("there.test", by_alice)
    assert await _latest(storage, room.room_id) == by_alice.event_id


async def test_a_knock_with_no_server_recorded_is_withdrawn_only_by_its_knocker(
    storage: Storage,
) -> None:
    """A knock kept before its server was recorded: no server can speak
    for its room, so only the knocker's own leave answers it."""
    room = RoomBuilder("12", ALICE)
    room.public_room()
    room.state_event(ALICE, "m.room.join_rules", {"join_rule": "knock"})
    knock = room.member(BOB, "knock")
    await _held_alone(storage, knock)
    oob = _oob(storage)
    kick = room.draft_member(ALICE, "leave", BOB)
    reason = await _refused(oob, "there.test", kick)
    assert "no record of the server it was made through" in reason, reason
    own = room.member(BOB, "leave")
    assert await oob.take("there.test", own)
    assert await _latest(storage, room.room_id) == own.event_id


async def test_only_the_answer_to_the_pending_membership_is_taken(storage: Storage) -> None:
    room = RoomBuilder("12", ALICE)
    room.public_room()
    first = room.member(ALICE, "invite", BOB)
    old_leave = room.member(ALICE, "leave", BOB)
    second = room.member(ALICE, "invite", BOB)
    await _held_alone(storage, first, old_leave, second)
    oob = _oob(storage)
    # The old leave answers the first invite, not the pending one.
    reason = await _refused(oob, "there.test", old_leave)
    assert f"does not cite the invite of {BOB}" in reason, reason
    assert await _latest(storage, room.room_id) == second.event_id
    withdrawn = room.member(ALICE, "leave", BOB)
    assert await oob.take("there.test", withdrawn)
    # Nothing is pending now: a ban after the leave is not an answer.
    ban = room.member(ALICE, "ban", BOB)
    assert not await oob.take("there.test", ban)
    assert await _latest(storage, room.room_id) == withdrawn.event_id


async def test_nothing_but_a_leave_or_ban_of_a_local_user(storage: Storage) -> None:
    room = RoomBuilder("12", ALICE)
    room.public_room()
    invite = room.member(ALICE, "invite", BOB)
    await _held_alone(storage, invite)
    oob = _oob(storage)
    others = [
        room.message(ALICE, "hello"),
        room.member(ALICE, "invite", "@carol:elsewhere.test"),
        room.member(ALICE, "leave", "@carol:elsewhere.test"),
        room.state_event(ALICE, "m.room.topic", {"topic": "t"}),
    ]
    for event in others:
        assert not oob.may_answer(event), event.type
        assert not await oob.take("there.test", event)
    assert await _latest(storage, room.room_id) == invite.event_id


async def test_a_room_joined_here_is_no_business_of_it(storage: Storage) -> None:
    room = RoomBuilder("12", ALICE)
    room.public_room()
    room.member(CAROL, "join")
    room.member(ALICE, "invite", BOB)
    await ingest_all(storage, room.order)
    leave = room.member(ALICE, "leave", BOB)
    oob = _oob(storage)
    assert not await oob.room_not_here(room.room_id)
    assert not await oob.take("there.test", leave)
    assert leave.event_id not in await storage.get_events([leave.event_id])


async def test_a_room_left_here_takes_the_answer_to_a_new_invite(storage: Storage) -> None:
    room = RoomBuilder("12", ALICE)
    room.public_room()
    room.member(BOB, "join")
    room.member(BOB, "leave")
    await ingest_all(storage, room.order)
    oob = _oob(storage)
    # The room's DAG is held, but no user of ours is in it any more.
    assert await storage.get_forward_extremities(room.room_id)
    assert await oob.room_not_here(room.room_id)
    # Nothing pending: a leave of the room's own is no answer.
    kick = room.member(ALICE, "leave", BOB)
    assert not await oob.take("there.test", kick)
    invite = room.member(ALICE, "invite", BOB)
    await storage.persist_events([out_of_band_to_persist(invite)])
    assert await _latest(storage, room.room_id) == invite.event_id
    withdrawn = room.member(ALICE, "leave", BOB)
    assert await oob.take("there.test", withdrawn)
    assert await _latest(storage, room.room_id) == withdrawn.event_id
    assert (await storage.get_events([withdrawn.event_id]))[withdrawn.event_id].outlier
