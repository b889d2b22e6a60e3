"""Who vouches for a join of a restricted room, judged from real storage:
a space and a restricted room of a.test (ours), with members of b.test.
"""

from __future__ import annotations

from typing import Any

import pytest

from ranvier.core.restricted_joins import JoinVouching, RestrictedJoins
from ranvier.errors import MatrixError
from ranvier.protocol.room_versions import get_room_version
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest, ingest_all

OURS = "a.test"
ALICE = "@alice:a.test"
DAVE = "@dave:a.test"
ERIN = "@erin:a.test"
BOB = "@bob:b.test"
CAROL = "@carol:b.test"
ZED = "@zed:c.test"
V10 = get_room_version("10")


def _allow(*room_ids: str) -> dict[str, Any]:
    return {"allow": [{"type": "m.room_membership", "room_id": room_id} for room_id in room_ids]}


async def _space(storage: Storage, *members: str) -> RoomBuilder:
    space = RoomBuilder("10", ALICE)
    space.public_room(*members)
    await ingest_all(storage, space.order)
    return space


async def _restricted(
    storage: Storage,
    *allowed: str,
    rule: str = "restricted",
    version: str = "10",
    creator: str = ALICE,
    joiners: tuple[str, ...] = (),
    users: dict[str, int] | None = None,
    invite: int = 50,
) -> RoomBuilder:
    room = RoomBuilder(version, creator)
    room.member(creator, "join")
    room.power_levels(creator, {creator: 100, **(users or {})}, content={"invite": invite})
    room.join_rules(creator, "public")
    for user in joiners:
        room.member(user, "join")
    room.join_rules(creator, rule, content=_allow(*allowed))
    await ingest_all(storage, room.order)
    return room


async def _refused(pending: Any) -> tuple[int, str]:
    with pytest.raises(MatrixError) as caught:
        await pending
    return caught.value.http_status, caught.value.errcode


@pytest.mark.parametrize("rule", ["restricted", "knock_restricted"])
async def test_a_member_of_an_allowed_room_is_vouched_for_by_our_strongest_inviter(
    storage: Storage, rule: str
) -> None:
    space = await _space(storage, BOB, DAVE)
    room = await _restricted(
        storage, "!elsewhere:c.test", space.room_id, rule=rule, joiners=(ERIN,), users={ERIN: 60}
    )
    judge = RestrictedJoins(storage, OURS)
    # Alice (100) outranks Erin (60); both may invite.
    assert await judge.for_remote_user(room.room_id, V10, BOB) == ALICE
    assert await judge.for_local_user(room.room_id, DAVE) == JoinVouching(authoriser=ALICE)
    # Carol of b.test and Erin's absent friend are in no allowed room.
    assert await _refused(judge.for_remote_user(room.room_id, V10, CAROL)) == (403, "M_FORBIDDEN")
    local = judge.for_local_user(room.room_id, "@frank:a.test")
    assert await _refused(local) == (403, "M_FORBIDDEN")


async def test_no_one_vouches_for_the_joined_invited_or_an_unrestricted_room(
    storage: Storage,
) -> None:
    space = await _space(storage)
    room = await _restricted(storage, space.room_id, joiners=(BOB,))
    invite = room.member(ALICE, "invite", CAROL)
    await ingest_all(storage, [invite])
    judge = RestrictedJoins(storage, OURS)
    assert await judge.for_remote_user(room.room_id, V10, BOB) is None
    assert await judge.for_remote_user(room.room_id, V10, CAROL) is None
    assert await judge.for_remote_user(space.room_id, V10, CAROL) is None
    assert await judge.for_local_user(space.room_id, DAVE) == JoinVouching()
    # Version 7 has no restricted rule: its auth rules read none.
    old = RoomBuilder("7", ALICE)
    old.public_room()
    old.join_rules(ALICE, "restricted", content=_allow(space.room_id))
    await ingest_all(storage, old.order)
    assert await judge.for_remote_user(old.room_id, get_room_version("7"), CAROL) is None
    # A room this server is not in is judged by a server that is.
    assert await judge.for_local_user("!unknown:c.test", DAVE) == JoinVouching()


async def test_allowed_rooms_this_server_is_not_in_cannot_be_judged(storage: Storage) -> None:
    room = await _restricted(storage, "!elsewhere:c.test")
    judge = RestrictedJoins(storage, OURS)
    remote = judge.for_remote_user(room.room_id, V10, BOB)
    assert await _refused(remote) == (400, "M_UNABLE_TO_AUTHORISE_JOIN")
    # Our own users' rooms are all known here: not in one, not joined.
    assert await _refused(judge.for_local_user(room.room_id, DAVE)) == (403, "M_FORBIDDEN")
    # No conditions at all: failed, not unknowable.
    bare = await _restricted(storage)
    assert await _refused(judge.for_remote_user(bare.room_id, V10, BOB)) == (403, "M_FORBIDDEN")


async def test_an_allowed_room_with_partial_state_only_says_yes(storage: Storage) -> None:
    """Dave joined c.test's space with partial state, which left out Bob's
    membership: Zed's, there, lets Zed in; Bob's absence decides nothing.
    """
    space = RoomBuilder("10", ZED)
    space.public_room(BOB)
    state = {key: event_id for key, event_id in space.state.items() if key[1] != BOB}
    join = space.member(DAVE, "join")
    for event_id in state.values():
        await ingest(storage, space.events[event_id], outlier=True)
    await storage.store_partial_join(space.room_id, "10", join.event_id, "c.test", {"c.test"})
    outcome = await ingest(storage, join, state_ids_before=state, partial_state=True)
    assert outcome.failure is None
    room = await _restricted(storage, space.room_id)
    judge = RestrictedJoins(storage, OURS)
    assert await judge.for_remote_user(room.room_id, V10, ZED) == ALICE
    unknown = judge.for_remote_user(room.room_id, V10, BOB)
    assert await _refused(unknown) == (400, "M_UNABLE_TO_AUTHORISE_JOIN")
    # Dave's own membership is known: Erin's absence is a refusal.
    assert await judge.for_local_user(room.room_id, DAVE) == JoinVouching(authoriser=ALICE)
    assert await _refused(judge.for_local_user(room.room_id, ERIN)) == (403, "M_FORBIDDEN")


async def test_with_no_inviter_here_the_join_goes_through_a_server_that_has_one(
    storage: Storage,
) -> None:
    """A room of c.test's Zed that Alice joined without the power to invite."""
    space = await _space(storage, BOB, DAVE)
    room = await _restricted(storage, space.room_id, creator=ZED, joiners=(ALICE, CAROL))
    judge = RestrictedJoins(storage, OURS)
    granting = judge.for_remote_user(room.room_id, V10, BOB)
    assert await _refused(granting) == (400, "M_UNABLE_TO_GRANT_JOIN")
    assert await judge.for_local_user(room.room_id, DAVE) == JoinVouching(through=("c.test",))
    # Still only for those who qualify.
    assert await _refused(judge.for_local_user(room.room_id, ERIN)) == (403, "M_FORBIDDEN")


async def test_every_member_may_vouch_when_the_default_level_invites(storage: Storage) -> None:
    space = await _space(storage, BOB)
    room = await _restricted(storage, space.room_id, creator=ZED, joiners=(ALICE,), invite=0)
    judge = RestrictedJoins(storage, OURS)
    assert await judge.for_remote_user(room.room_id, V10, BOB) == ALICE


async def test_in_version_12_the_creator_vouches(storage: Storage) -> None:
    space = await _space(storage, BOB)
    room = await _restricted(storage, space.room_id, version="12", joiners=(DAVE,))
    judge = RestrictedJoins(storage, OURS)
    assert await judge.for_remote_user(room.room_id, get_room_version("12"), BOB) == ALICE


async def test_a_join_received_naming_our_user_is_held_to_the_conditions(
    storage: Storage,
) -> None:
    space = await _space(storage, BOB)
    room = await _restricted(storage, space.room_id)
    judge = RestrictedJoins(storage, OURS)
    vouched = {"join_authorised_via_users_server": ALICE}
    await judge.check_join_received(room.draft_member(BOB, "join", content=vouched))
    forged = room.draft_member(CAROL, "join", content=vouched)
    assert await _refused(judge.check_join_received(forged)) == (403, "M_FORBIDDEN")
    # Naming another server's user, or no one: the auth rules decide.
    elsewhere = {"join_authorised_via_users_server": ZED}
    await judge.check_join_received(room.draft_member(CAROL, "join", content=elsewhere))
    await judge.check_join_received(room.draft_member(CAROL, "join"))
