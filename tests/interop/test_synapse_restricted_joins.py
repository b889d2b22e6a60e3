"""Restricted joins (join rules ``restricted`` and ``knock_restricted``,
room versions 8 and later) between ranvier and a real Synapse, each way.

* A room Synapse hosts lets in the members of a space Synapse hosts: a
  ranvier user in the space joins through Synapse, whose answer names a
  Synapse user able to invite as ``join_authorised_via_users_server`` and
  signs the join; a ranvier user in no such space is refused with 403
  ``M_FORBIDDEN`` and nothing of the room is kept on ranvier. Once ranvier
  is in the room (with a user who may not invite), a second ranvier user
  of the space still gets in, through Synapse.
* A room ranvier hosts lets in the members of a space ranvier hosts: a
  Synapse user in the space joins through ranvier, which names and signs
  for its own user able to invite; one in no such space is refused by
  ranvier's make_join (403 ``M_FORBIDDEN``), and one asking to join a
  room whose allowed room ranvier is not in gets 400
  ``M_UNABLE_TO_AUTHORISE_JOIN``. ranvier's own users join it the same
  way, vouched for locally.
* ``knock_restricted`` (room version 10): on each server's room, the other
  server's user in the space joins, and one outside it knocks, is invited
  and joins.
* A room ranvier hosts whose allowed space is on Synapse: ranvier judges
  membership of the space from its own copy of it.

What ranvier has is read from its storage; what Synapse has, through its
client API. Arrival on either side is awaited by polling, within a bound.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable
from typing import Any

import httpx
import msgspec
import pytest
import trio

from ranvier.errors import MatrixError
from ranvier.server import HomeServer

from ._checks import WAIT_SECONDS, eventually, localpart
from ._synapse import SynapseClientError, SynapseProcess, SynapseUser

_MEMBER = "m.room.member"
_AUTHORISER = "join_authorised_via_users_server"
# Invites need more than a member's default power, so that which user may
# vouch for a join is a real question.
_INVITE_LEVEL = 50


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _rules(join_rule: str, *allowed: str) -> dict[str, Any]:
    return {
        "type": "m.room.join_rules",
        "state_key": "",
        "content": {
            "join_rule": join_rule,
            "allow": [{"type": "m.room_membership", "room_id": room_id} for room_id in allowed],
        },
    }


def _ranvier_user(hs: HomeServer, name: str) -> str:
    return f"@{localpart(name)}:{hs.server_name}"


# --- ranvier's side ---------------------------------------------------------------


async def _ranvier_event(hs: HomeServer, event_id: str) -> dict[str, Any]:
    row = await hs.storage.get_event(event_id)
    assert row is not None, event_id
    assert not row.outlier, event_id
    assert row.rejected_reason is None, (event_id, row.rejected_reason)
    event: dict[str, Any] = msgspec.json.decode(row.json)
    return event


async def _ranvier_member(hs: HomeServer, room_id: str, user_id: str) -> dict[str, Any] | None:
    event_id = (await hs.storage.get_current_state_ids(room_id)).get((_MEMBER, user_id))
    return None if event_id is None else await _ranvier_event(hs, event_id)


async def _ranvier_membership(hs: HomeServer, room_id: str, user_id: str) -> str | None:
    member = await _ranvier_member(hs, room_id, user_id)
    return None if member is None else str(member["content"]["membership"])


async def _ranvier_joined(hs: HomeServer, room_id: str) -> set[str]:
    state = await hs.storage.get_current_state_ids(room_id)
    members = {key[1]: event_id for key, event_id in state.items() if key[0] == _MEMBER}
    rows = await hs.storage.get_events(members.values())
    return {
        user_id
        for user_id, event_id in members.items()
        if msgspec.json.decode(rows[event_id].json)["content"].get("membership") == "join"
    }


async def _ranvier_refusal(attempt: Awaitable[object]) -> tuple[int, str]:
    """The status and errcode with which ranvier refused ``attempt``."""
    try:
        await attempt
    except MatrixError as exc:
        return exc.http_status, exc.errcode
    raise AssertionError("ranvier accepted what it should have refused")


async def _nothing_kept(hs: HomeServer, room_id: str) -> None:
    """ranvier keeps no trace of a room it never got into."""
    assert await hs.storage.get_room_version(room_id) is None
    assert not await hs.storage.is_partial_state_room(room_id)
    assert room_id not in await hs.storage.get_partial_state_rooms()
    assert await hs.storage.get_current_state_ids(room_id) == {}
    assert await hs.storage.get_forward_extremities(room_id) == set()


# --- Synapse's side ---------------------------------------------------------------


async def _synapse_member(user: SynapseUser, room_id: str, member: str) -> dict[str, Any] | None:
    for event in await user.request("GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/state"):
        if event["type"] == _MEMBER and event["state_key"] == member:
            found: dict[str, Any] = event
            return found
    return None


async def _synapse_membership(user: SynapseUser, room_id: str, member: str) -> str | None:
    event = await _synapse_member(user, room_id, member)
    return None if event is None else str(event["content"]["membership"])


async def _synapse_refusal(attempt: Awaitable[object]) -> tuple[int, str | None]:
    """The status and errcode with which Synapse refused ``attempt``."""
    try:
        await attempt
    except SynapseClientError as exc:
        return exc.status, msgspec.json.decode(exc.body).get("errcode")
    raise AssertionError("Synapse accepted what it should have refused")


async def _knock(user: SynapseUser, room_id: str, via: str) -> None:
    await user.request(
        "POST", f"/_matrix/client/v3/knock/{_q(room_id)}", body={}, params={"via": via}
    )


async def _same_members(
    hs: HomeServer, watcher: SynapseUser, room_id: str, expected: set[str]
) -> None:
    """Both servers end with ``expected`` as the room's joined members."""
    with trio.fail_after(WAIT_SECONDS):
        await hs.wait_for_full_state(room_id)

    async def agreed() -> bool:
        return (
            await _ranvier_joined(hs, room_id) == expected
            and await watcher.joined_members(room_id) == expected
        )

    await eventually(agreed, f"both servers to see {sorted(expected)} joined to {room_id}")


async def _vouched_for_on_both(
    hs: HomeServer,
    watcher: SynapseUser,
    room_id: str,
    join_id: str,
    authoriser: str,
    signers: set[str],
) -> None:
    """The join names ``authoriser`` on both servers, signed by ``signers``."""
    ours = await _ranvier_event(hs, join_id)
    assert ours["content"]["membership"] == "join"
    assert ours["content"][_AUTHORISER] == authoriser
    assert signers <= set(ours["signatures"]), ours["signatures"]

    async def arrived() -> bool:
        return await watcher.event(room_id, join_id) is not None

    await eventually(arrived, f"{join_id} on Synapse")
    theirs = await watcher.event(room_id, join_id)
    assert theirs is not None
    assert theirs["content"][_AUTHORISER] == authoriser


# --- A room Synapse hosts ----------------------------------------------------------


@pytest.mark.parametrize("room_version", ["10", "12"])
async def test_ranvier_users_join_a_restricted_room_on_synapse_through_its_space(
    synapse: SynapseProcess,
    synapse_http: httpx.AsyncClient,
    ranvier: HomeServer,
    room_version: str,
) -> None:
    zed = await synapse.register(synapse_http, localpart("zedrestricted"))
    space = await zed.create_room(
        preset="public_chat", creation_content={"type": "m.space"}, room_version=room_version
    )
    room = await zed.create_room(
        preset="private_chat",
        room_version=room_version,
        initial_state=[_rules("restricted", space)],
        power_level_content_override={"invite": _INVITE_LEVEL},
    )
    bob, carol, dave = (_ranvier_user(ranvier, name) for name in ("bob", "carol", "dave"))
    via = [synapse.server_name]

    # Carol is in no allowed room: Synapse refuses her, and ranvier, which
    # is not in the room yet, keeps nothing of it.
    assert await _ranvier_refusal(ranvier.join_room(carol, room, via)) == (403, "M_FORBIDDEN")
    await _nothing_kept(ranvier, room)

    # Bob joins the space, then the room through it: Synapse vouches with
    # its only user able to invite, zed, and signs.
    await ranvier.join_room(bob, space, via)
    join_id = await ranvier.join_room(bob, room, via)
    await _vouched_for_on_both(
        ranvier, zed, room, join_id, zed.user_id, {ranvier.server_name, synapse.server_name}
    )
    if room_version == "10":
        levels = await zed.state_event(room, "m.room.power_levels")
        assert levels["users"][zed.user_id] >= levels["invite"] == _INVITE_LEVEL
    else:
        # Room version 12: the creator outranks every power level.
        create_id = (await ranvier.storage.get_current_state_ids(room))[("m.room.create", "")]
        create = await ranvier.storage.get_event(create_id)
        assert create is not None
        assert msgspec.json.decode(create.json)["sender"] == zed.user_id
    await _same_members(ranvier, zed, room, {zed.user_id, bob})

    # ranvier is in the room now, but bob may not invite: dave, in the
    # space too, is vouched for by Synapse all the same.
    await ranvier.join_room(dave, space, via)

    async def dave_in_space() -> bool:
        return await _synapse_membership(zed, space, dave) == "join"

    # ranvier is in the space already: dave's join reaches Synapse in a
    # transaction, which Synapse handles after answering it.
    await eventually(dave_in_space, "dave's join of the space on Synapse")
    dave_join = await ranvier.join_room(dave, room, via)
    await _vouched_for_on_both(
        ranvier, zed, room, dave_join, zed.user_id, {ranvier.server_name, synapse.server_name}
    )
    # Carol is still refused, now by ranvier itself, and nothing is written.
    assert await _ranvier_refusal(ranvier.join_room(carol, room, via)) == (403, "M_FORBIDDEN")
    assert await _ranvier_membership(ranvier, room, carol) is None
    await _same_members(ranvier, zed, room, {zed.user_id, bob, dave})
    assert await _synapse_membership(zed, room, carol) is None


# --- A room ranvier hosts ----------------------------------------------------------


@pytest.mark.parametrize("room_version", ["10", "12"])
async def test_synapse_users_join_a_restricted_room_on_ranvier_through_its_space(
    synapse: SynapseProcess,
    synapse_http: httpx.AsyncClient,
    ranvier: HomeServer,
    room_version: str,
) -> None:
    alice, dave, erin = (_ranvier_user(ranvier, name) for name in ("alice", "dave", "erin"))
    space = await ranvier.create_room(
        alice, preset="public_chat", creation_content={"type": "m.space"}, room_version=room_version
    )
    room = await ranvier.create_room(
        alice,
        room_version=room_version,
        initial_state=[_rules("restricted", space)],
        power_level_content_override={"invite": _INVITE_LEVEL},
    )
    yara = await synapse.register(synapse_http, localpart("yararestricted"))
    zora = await synapse.register(synapse_http, localpart("zorarestricted"))
    via = ranvier.server_name

    # Zora is in no allowed room: ranvier's make_join refuses her with
    # 403 M_FORBIDDEN, which Synapse hands on to its client.
    assert await _synapse_refusal(zora.join(room, via=via)) == (403, "M_FORBIDDEN")
    assert await _ranvier_membership(ranvier, room, zora.user_id) is None

    # Yara joins the space, then the room through it: ranvier names alice,
    # its one user able to invite, and signs the join.
    await yara.join(space, via=via)
    await yara.join(room, via=via)
    join_id = (await _state_ids(ranvier, room))[(_MEMBER, yara.user_id)]
    await _vouched_for_on_both(
        ranvier, yara, room, join_id, alice, {ranvier.server_name, synapse.server_name}
    )
    await _same_members(ranvier, yara, room, {alice, yara.user_id})

    # ranvier's own users are held to the same rules: dave, in the space,
    # is vouched for by alice; erin, in no allowed room, is refused and
    # nothing of her is written.
    await ranvier.join_room(dave, space)
    dave_join = await ranvier.join_room(dave, room)
    await _vouched_for_on_both(ranvier, yara, room, dave_join, alice, {ranvier.server_name})
    assert await _ranvier_refusal(ranvier.join_room(erin, room)) == (403, "M_FORBIDDEN")
    assert await _ranvier_membership(ranvier, room, erin) is None
    await _same_members(ranvier, yara, room, {alice, yara.user_id, dave})

    # A room whose allowed room ranvier is not in: ranvier cannot tell
    # whether a user meets the condition, and says so with 400
    # M_UNABLE_TO_AUTHORISE_JOIN, on which Synapse looks for another server.
    elsewhere = await yara.create_room(preset="public_chat")
    unknowable = await ranvier.create_room(
        alice, room_version=room_version, initial_state=[_rules("restricted", elsewhere)]
    )
    # Synapse takes the 400 as a sign to try another server and, having
    # none, answers its client 502 without the errcode (the spec would have
    # it passed on); its log shows ranvier's 400 (the errcode itself is
    # checked in tests/federation/test_membership.py).
    mark = synapse.log_size()
    status, _ = await _synapse_refusal(yara.join(unknowable, via=via))
    assert status == 502
    assert synapse.logged_since(mark, f"Failed to make_join via {ranvier.server_name}: 400")
    assert await _ranvier_membership(ranvier, unknowable, yara.user_id) is None


async def _state_ids(hs: HomeServer, room_id: str) -> dict[tuple[str, str], str]:
    return dict(await hs.storage.get_current_state_ids(room_id))


# --- knock_restricted ------------------------------------------------------------


async def test_knock_restricted_rooms_let_in_members_or_knockers_each_way(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    zed = await synapse.register(synapse_http, localpart("zedknockr"))
    bob, carol = (_ranvier_user(ranvier, name) for name in ("bob", "carol"))

    # On Synapse: bob, in the space, joins; carol, outside it, may not
    # join but knocks, is invited and joins.
    their_space = await zed.create_room(
        preset="public_chat", creation_content={"type": "m.space"}, room_version="10"
    )
    theirs = await zed.create_room(
        preset="private_chat",
        room_version="10",
        initial_state=[_rules("knock_restricted", their_space)],
        power_level_content_override={"invite": _INVITE_LEVEL},
    )
    via = [synapse.server_name]
    await ranvier.join_room(bob, their_space, via)
    bob_join = await ranvier.join_room(bob, theirs, via)
    await _vouched_for_on_both(
        ranvier, zed, theirs, bob_join, zed.user_id, {ranvier.server_name, synapse.server_name}
    )
    assert await _ranvier_refusal(ranvier.join_room(carol, theirs, via)) == (403, "M_FORBIDDEN")
    await ranvier.knock_room(carol, theirs, via, reason="not in the space")

    async def carol_knocking() -> bool:
        return await _synapse_membership(zed, theirs, carol) == "knock"

    await eventually(carol_knocking, "carol's knock on Synapse")
    await zed.invite(theirs, carol)

    async def carol_invited() -> bool:
        return await _ranvier_membership(ranvier, theirs, carol) == "invite"

    await eventually(carol_invited, "carol's invite on ranvier")
    carol_join = await ranvier.join_room(carol, theirs, via)
    assert _AUTHORISER not in (await _ranvier_event(ranvier, carol_join))["content"]
    await _same_members(ranvier, zed, theirs, {zed.user_id, bob, carol})

    # On ranvier: yara, in the space, joins; zora, outside it, is refused,
    # knocks, is invited and joins.
    alice = _ranvier_user(ranvier, "alice")
    our_space = await ranvier.create_room(
        alice, preset="public_chat", creation_content={"type": "m.space"}, room_version="10"
    )
    ours = await ranvier.create_room(
        alice,
        room_version="10",
        initial_state=[_rules("knock_restricted", our_space)],
        power_level_content_override={"invite": _INVITE_LEVEL},
    )
    yara = await synapse.register(synapse_http, localpart("yaraknockr"))
    zora = await synapse.register(synapse_http, localpart("zoraknockr"))
    await yara.join(our_space, via=ranvier.server_name)
    await yara.join(ours, via=ranvier.server_name)
    yara_join = (await _state_ids(ranvier, ours))[(_MEMBER, yara.user_id)]
    await _vouched_for_on_both(
        ranvier, yara, ours, yara_join, alice, {ranvier.server_name, synapse.server_name}
    )
    refused = await _synapse_refusal(zora.join(ours, via=ranvier.server_name))
    assert refused == (403, "M_FORBIDDEN")
    # Synapse is in the room now (through yara): it knocks, and later
    # joins, itself, and sends each to ranvier in a transaction.
    await _knock(zora, ours, ranvier.server_name)

    async def zora_is(membership: str) -> bool:
        return await _ranvier_membership(ranvier, ours, zora.user_id) == membership

    await eventually(lambda: zora_is("knock"), "zora's knock on ranvier")
    await ranvier.invite(alice, ours, zora.user_id)

    async def zora_invited_on_synapse() -> bool:
        return await _synapse_membership(yara, ours, zora.user_id) == "invite"

    await eventually(zora_invited_on_synapse, "zora's invite on Synapse")
    await zora.join(ours, via=ranvier.server_name)
    await eventually(lambda: zora_is("join"), "zora's join on ranvier")
    zora_join = await _ranvier_member(ranvier, ours, zora.user_id)
    assert zora_join is not None
    assert zora_join["content"]["membership"] == "join"
    assert _AUTHORISER not in zora_join["content"]
    await _same_members(ranvier, yara, ours, {alice, yara.user_id, zora.user_id})


# --- A room ranvier hosts, its space on Synapse ----------------------------------------


async def test_ranvier_judges_membership_of_a_space_synapse_hosts(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    zed = await synapse.register(synapse_http, localpart("zedspacer"))
    yara = await synapse.register(synapse_http, localpart("yaraspacer"))
    zora = await synapse.register(synapse_http, localpart("zoraspacer"))
    alice, dave = (_ranvier_user(ranvier, name) for name in ("alice", "dave"))
    space = await zed.create_room(preset="public_chat", creation_content={"type": "m.space"})
    await ranvier.join_room(alice, space, [synapse.server_name])
    with trio.fail_after(WAIT_SECONDS):
        await ranvier.wait_for_full_state(space)
    room = await ranvier.create_room(
        alice,
        initial_state=[_rules("restricted", space)],
        power_level_content_override={"invite": _INVITE_LEVEL},
    )

    # Yara joins the space on Synapse; once ranvier has heard of it, she
    # joins ranvier's room through it, vouched for by alice.
    await yara.join(space, via=synapse.server_name)

    async def yara_in_space() -> bool:
        return await _ranvier_membership(ranvier, space, yara.user_id) == "join"

    await eventually(yara_in_space, "yara's join of the space on ranvier")
    await yara.join(room, via=ranvier.server_name)
    join_id = (await _state_ids(ranvier, room))[(_MEMBER, yara.user_id)]
    await _vouched_for_on_both(
        ranvier, yara, room, join_id, alice, {ranvier.server_name, synapse.server_name}
    )

    # Zora is not in the space: refused.
    assert await _synapse_refusal(zora.join(room, via=ranvier.server_name)) == (
        403,
        "M_FORBIDDEN",
    )
    assert await _ranvier_membership(ranvier, room, zora.user_id) is None

    # Dave, of ranvier, joins the space on Synapse, then the room here.
    await ranvier.join_room(dave, space)
    dave_join = await ranvier.join_room(dave, room)
    await _vouched_for_on_both(ranvier, yara, room, dave_join, alice, {ranvier.server_name})
    await _same_members(ranvier, yara, room, {alice, yara.user_id, dave})
