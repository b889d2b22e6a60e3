"""Knocking between ranvier and a real Synapse: a ranvier user knocks on a
room hosted by Synapse (make_knock and send_knock), Synapse's members see
the knock and let them in, and a Synapse user knocks on a room hosted by
ranvier."""

from __future__ import annotations

import os

import httpx

from ranvier.server import HomeServer

from ._checks import eventually
from ._synapse import SynapseProcess, SynapseUser

_KNOCK_RULES = {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}


async def _membership_on_synapse(user: SynapseUser, room_id: str, member: str) -> str | None:
    state = await user.request("GET", f"/_matrix/client/v3/rooms/{room_id}/state")
    for event in state:
        if event["type"] == "m.room.member" and event["state_key"] == member:
            membership: str = event["content"]["membership"]
            return membership
    return None


async def test_knocks_each_way_between_ranvier_and_synapse(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    zed = await synapse.register(synapse_http, f"zedknock{os.getpid()}")
    room_id = await zed.create_room(room_version="10", initial_state=[_KNOCK_RULES])
    bob = f"@bob:{ranvier.server_name}"

    knocked = await ranvier.knock_room(bob, room_id, [synapse.server_name], reason="let me in")
    assert knocked == room_id
    # Synapse took the knock: only its refusal of it would be believed.
    members = ranvier.storage.room_members
    bobs_knock = await members.get_latest_membership_event_id(bob, room_id)
    assert bobs_knock is not None
    assert await members.get_knock_server(bobs_knock) == synapse.server_name

    async def knocking() -> bool:
        return await _membership_on_synapse(zed, room_id, bob) == "knock"

    await eventually(knocking, "bob's knock on Synapse")
    await zed.invite(room_id, bob)
    await ranvier.join_room(bob, room_id, [synapse.server_name])

    async def joined() -> bool:
        return await _membership_on_synapse(zed, room_id, bob) == "join"

    await eventually(joined, "bob's join on Synapse")

    # A Synapse user knocks on a room hosted by ranvier.
    alice = f"@alice:{ranvier.server_name}"
    ours = await ranvier.create_room(alice, room_version="10", initial_state=[_KNOCK_RULES])
    await zed.request(
        "POST",
        f"/_matrix/client/v3/knock/{ours}",
        body={"reason": "from Synapse"},
        params={"via": ranvier.server_name},
    )
    state = await ranvier.storage.get_current_state_ids(ours)
    knock_id = state.get(("m.room.member", zed.user_id))
    assert knock_id is not None
    knock = await ranvier.storage.get_event(knock_id)
    assert knock is not None
    assert b'"membership":"knock"' in knock.json
