"""Space hierarchies across two servers over loopback TLS: a space on A
whose subspace lives on B, walked by a user of A, and A's
``/_matrix/federation/v1/hierarchy/{roomId}`` answering B's signed requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _client import Client, q
from _federation import TwoServers, two_servers

from ranvier.federation.transport.client import FederationRequestError
from ranvier.testing.homeserver import TestUser

V1 = "/_matrix/client/v1"
SPACE = {"creation_content": {"type": "m.space"}, "preset": "public_chat"}


async def link(
    client: Client, user: TestUser, parent: str, child: str, via: str, **content: Any
) -> None:
    await client.ok(
        user,
        "PUT",
        f"/rooms/{q(parent)}/state/m.space.child/{q(child)}",
        {"via": [via], **content},
    )


async def hierarchy(client: Client, user: TestUser, room_id: str) -> dict[str, Any]:
    response = await client.http.get(
        f"{V1}/rooms/{q(room_id)}/hierarchy",
        headers={"Authorization": f"Bearer {user.access_token}"},
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_a_subspace_on_another_server_is_asked_of_it(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        # On B: a public space with a public room and a private one.
        far = await cb.create_room(bob, name="Far space", **SPACE)
        far_room = await cb.create_room(bob, name="Far room", preset="public_chat")
        secret = await cb.create_room(bob, name="Secret", preset="private_chat")
        await link(cb, bob, far, far_room, b.server_name, order="1")
        await link(cb, bob, far, secret, b.server_name, order="2")
        # On A: Alice's space links B's space (first) and a room of her own.
        home = await ca.create_room(alice, name="Home", **SPACE)
        near = await ca.create_room(alice, name="Near", preset="public_chat")
        await link(ca, alice, home, far, b.server_name, order="a")
        await link(ca, alice, home, near, a.server_name, order="b")

        answer = await hierarchy(ca, alice, home)
        rooms = {room["room_id"]: room for room in answer["rooms"]}
        assert [room["room_id"] for room in answer["rooms"]] == [home, far, far_room, near]
        assert rooms[far]["name"] == "Far space"
        assert rooms[far]["room_type"] == "m.space"
        assert rooms[far]["num_joined_members"] == 1
        assert rooms[far]["join_rule"] == "public"
        # B's secret room is left out, its link kept.
        assert [event["state_key"] for event in rooms[far]["children_state"]] == [
            far_room,
            secret,
        ]
        assert rooms[far_room]["name"] == "Far room"
        assert rooms[far_room]["children_state"] == []

        # B's answer is kept a while: a rename on B is not seen at once.
        await cb.ok(bob, "PUT", f"/rooms/{q(far)}/state/m.room.name/", {"name": "Renamed"})
        again = await hierarchy(ca, alice, home)
        assert again["rooms"][1]["name"] == "Far space"


async def _served(servers: TwoServers, room_id: str, **query: str) -> dict[str, Any]:
    answer: dict[str, Any] = await servers.b.server.federation_client.get_json(
        servers.a.server_name, f"/_matrix/federation/v1/hierarchy/{q(room_id)}", query=query
    )
    return answer


async def test_the_federation_endpoint_shows_what_the_asking_server_may_see(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as servers:
        a, _b, ca, cb, alice, bob = servers
        space = await ca.create_room(alice, name="Space", **SPACE)
        public = await ca.create_room(alice, name="Public", preset="public_chat")
        private = await ca.create_room(alice, name="Private", preset="private_chat")
        shared = await ca.create_room(alice, name="Shared", preset="private_chat")
        await link(ca, alice, space, public, a.server_name, order="a", suggested=True)
        await link(ca, alice, space, private, a.server_name, order="b")
        await link(ca, alice, space, shared, a.server_name, order="c")
        # A link to a room A is not in: left out, not called inaccessible.
        await link(ca, alice, space, "!elsewhere:nowhere.test", "nowhere.test", order="d")
        # Bob of B is in the shared private room, so B may see it.
        await ca.ok(alice, "POST", f"/rooms/{q(shared)}/invite", {"user_id": bob.user_id})
        await cb.ok(bob, "POST", f"/join/{q(shared)}", {})

        answer = await _served(servers, space)
        assert answer["room"]["room_id"] == space
        assert answer["room"]["name"] == "Space"
        assert answer["room"]["room_type"] == "m.space"
        assert [event["state_key"] for event in answer["room"]["children_state"]] == [
            public,
            private,
            shared,
            "!elsewhere:nowhere.test",
        ]
        assert [child["room_id"] for child in answer["children"]] == [public, shared]
        assert answer["children"][1]["num_joined_members"] == 2
        assert answer["inaccessible_children"] == [private]

        suggested = await _served(servers, space, suggested_only="true")
        assert [child["room_id"] for child in suggested["children"]] == [public]
        assert [event["state_key"] for event in suggested["room"]["children_state"]] == [public]
        assert suggested["inaccessible_children"] == []

        # A private room B has nobody in, and a room A does not know: 404.
        for room_id in (private, "!unknown:nowhere.test"):
            with pytest.raises(FederationRequestError) as caught:
                await _served(servers, room_id)
            assert (caught.value.status, caught.value.errcode) == (404, "M_NOT_FOUND")
        assert (await _served(servers, shared))["room"]["room_id"] == shared
        with pytest.raises(FederationRequestError) as caught:
            await _served(servers, space, suggested_only="maybe")
        assert (caught.value.status, caught.value.errcode) == (400, "M_INVALID_PARAM")


async def test_a_restricted_room_on_another_server_shows_once_that_server_can_judge(
    tmp_path: Path,
) -> None:
    """A's space links Charlie's room on B, restricted to the space. B is
    not in the space, so cannot tell that A's users are: the room is not
    shown. Once Charlie joins the space, Alice (in it) sees the room and
    Bob of A (not in it) still does not."""
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, charlie = servers
        bob = await a.register_user("bob")
        readable = {
            "type": "m.room.history_visibility",
            "state_key": "",
            "content": {"history_visibility": "world_readable"},
        }
        space = await ca.create_room(alice, name="Space", initial_state=[readable], **SPACE)
        allow = [{"type": "m.room_membership", "room_id": space, "via": [a.server_name]}]
        rules = {
            "type": "m.room.join_rules",
            "state_key": "",
            "content": {"join_rule": "restricted", "allow": allow},
        }
        room = await cb.create_room(
            charlie, name="Room", preset="public_chat", room_version="8", initial_state=[rules]
        )
        await link(ca, alice, space, room, b.server_name)

        async def walked(user: TestUser) -> list[str]:
            return [entry["room_id"] for entry in (await hierarchy(ca, user, space))["rooms"]]

        assert await walked(alice) == [space]
        assert await walked(bob) == [space]
        await cb.ok(charlie, "POST", f"/join/{q(space)}", {}, params={"server_name": a.server_name})
        assert await walked(alice) == [space, room]
        assert await walked(bob) == [space]
