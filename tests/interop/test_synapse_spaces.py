"""Spaces between ranvier and a real Synapse: a ranvier user in a space
hosted by Synapse sees its child rooms that ranvier is not in, as Synapse
describes them over federation, and a Synapse user in a space hosted by
ranvier sees its child rooms as ranvier describes them."""

from __future__ import annotations

import os
import urllib.parse

import httpx
import trio

from ranvier.server import HomeServer

from ._synapse import SynapseProcess

_WAIT_SECONDS = 60.0


async def test_space_hierarchies_cross_between_ranvier_and_synapse(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    zed = await synapse.register(synapse_http, f"zedspace{os.getpid()}")
    space = await zed.create_room(
        preset="public_chat", name="Their space", creation_content={"type": "m.space"}
    )
    child = await zed.create_room(preset="public_chat", name="Their room", topic="on Synapse")
    await zed.send_state(space, "m.space.child", {"via": [synapse.server_name]}, state_key=child)
    bob = f"@bob:{ranvier.server_name}"
    await ranvier.join_room(bob, space, [synapse.server_name])
    with trio.fail_after(_WAIT_SECONDS):
        await ranvier.wait_for_full_state(space)

    # ranvier is in the space, not in the child: Synapse describes the child.
    page = await ranvier.room_hierarchy.get_hierarchy(bob, space)
    rooms = {room["room_id"]: room for room in page["rooms"]}
    assert list(rooms) == [space, child]
    assert rooms[child]["name"] == "Their room"
    assert rooms[child]["topic"] == "on Synapse"
    assert rooms[child]["join_rule"] == "public"
    assert rooms[space]["room_type"] == "m.space"
    (link,) = rooms[space]["children_state"]
    assert link["state_key"] == child

    # A space on ranvier that Synapse's user joins, its child on ranvier
    # alone: Synapse asks ranvier about the child over federation.
    alice = f"@alice:{ranvier.server_name}"
    our_space = await ranvier.create_room(
        alice, preset="public_chat", name="Our space", creation_content={"type": "m.space"}
    )
    our_child = await ranvier.create_room(alice, preset="public_chat", name="Our room")
    await ranvier.send_event(
        alice, our_space, "m.space.child", {"via": [ranvier.server_name]}, state_key=our_child
    )
    await zed.join(our_space, via=ranvier.server_name)
    answer = await zed.request(
        "GET", f"/_matrix/client/v1/rooms/{urllib.parse.quote(our_space, safe='')}/hierarchy"
    )
    names = {room["room_id"]: room.get("name") for room in answer["rooms"]}
    assert names == {our_space: "Our space", our_child: "Our room"}
