"""``GET /_matrix/client/v1/room_summary/{roomIdOrAlias}`` over HTTP on one
server: the summary of a public room, a private one (hidden from a
stranger, shown to a member and an invitee), a restricted one, a
knockable one, by alias, without an access token, and at the unstable
paths; and the refusals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _client import Client, q

from ranvier.testing.homeserver import TestUser, open_test_homeserver

SUMMARY = "/_matrix/client/v1/room_summary"
UNSTABLE = "/_matrix/client/unstable/im.nheko.summary"


@dataclass
class Rooms:
    """Alice's rooms; Bob is in none of them, Carol is in the space."""

    client: Client
    alice: TestUser
    bob: TestUser
    carol: TestUser
    public: str
    private: str
    space: str
    restricted: str

    async def get(
        self,
        user: TestUser | None,
        target: str,
        *,
        path: str = SUMMARY + "/{}",
        token: str | None = None,
        **params: Any,
    ) -> tuple[int, dict[str, Any]]:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        elif user is not None:
            headers["Authorization"] = f"Bearer {user.access_token}"
        response = await self.client.http.get(
            path.format(q(target)), params=params, headers=headers
        )
        answer: dict[str, Any] = response.json()
        return response.status_code, answer

    async def shown(self, user: TestUser | None, target: str, **params: Any) -> dict[str, Any]:
        status, answer = await self.get(user, target, **params)
        assert status == 200, answer
        return answer

    async def hidden(self, user: TestUser | None, target: str) -> None:
        status, answer = await self.get(user, target)
        assert (status, answer["errcode"]) == (404, "M_NOT_FOUND"), answer


def _state(event_type: str, **content: Any) -> dict[str, Any]:
    return {"type": event_type, "state_key": "", "content": content}


@asynccontextmanager
async def open_rooms(tmp_path: Path) -> AsyncIterator[Rooms]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        client = Client(hs, http)
        alice, bob, carol = [await hs.register_user(name) for name in ("alice", "bob", "carol")]
        public = await client.create_room(
            alice,
            name="Lobby",
            topic="Say hello",
            preset="public_chat",
            room_alias_name="lobby",
            initial_state=[_state("m.room.avatar", url="mxc://localhost/lobby")],
        )
        private = await client.create_room(
            alice,
            name="Secret",
            preset="private_chat",
            initial_state=[_state("m.room.encryption", algorithm="m.megolm.v1.aes-sha2")],
        )
        space = await client.create_room(
            alice, name="Space", preset="private_chat", creation_content={"type": "m.space"}
        )
        await client.ok(alice, "POST", f"/rooms/{q(space)}/invite", {"user_id": carol.user_id})
        await client.ok(carol, "POST", f"/rooms/{q(space)}/join", {})
        restricted = await client.create_room(
            alice,
            name="Members of the space",
            preset="private_chat",
            room_version="10",
            initial_state=[
                _state(
                    "m.room.join_rules",
                    join_rule="restricted",
                    allow=[{"type": "m.room_membership", "room_id": space}],
                )
            ],
        )
        yield Rooms(client, alice, bob, carol, public, private, space, restricted)


async def test_a_public_room_is_shown_to_anyone(tmp_path: Path) -> None:
    async with open_rooms(tmp_path) as rooms:
        answer = await rooms.shown(rooms.bob, rooms.public)
        assert answer == {
            "room_id": rooms.public,
            "name": "Lobby",
            "topic": "Say hello",
            "canonical_alias": "#lobby:localhost",
            "avatar_url": "mxc://localhost/lobby",
            "num_joined_members": 1,
            "join_rule": "public",
            "guest_can_join": False,
            "world_readable": False,
            "room_version": answer["room_version"],
            "membership": "leave",
        }
        state = await rooms.client.state(rooms.alice, rooms.public)
        assert answer["room_version"] == state["m.room.create", ""]["content"]["room_version"]
        # Alice is joined, and says so.
        assert (await rooms.shown(rooms.alice, rooms.public))["membership"] == "join"
        # Without a token: the same, without membership.
        anonymous = await rooms.shown(None, rooms.public)
        assert "membership" not in anonymous
        assert anonymous["name"] == "Lobby"
        # After Bob joins, one more member.
        await rooms.client.ok(rooms.bob, "POST", f"/rooms/{q(rooms.public)}/join", {})
        joined = await rooms.shown(rooms.bob, rooms.public)
        assert (joined["num_joined_members"], joined["membership"]) == (2, "join")


async def test_a_room_is_found_by_its_alias(tmp_path: Path) -> None:
    async with open_rooms(tmp_path) as rooms:
        answer = await rooms.shown(None, "#lobby:localhost")
        assert answer["room_id"] == rooms.public
        assert answer["name"] == "Lobby"
        await rooms.hidden(rooms.bob, "#nowhere:localhost")


async def test_a_private_room_is_hidden_from_strangers_as_if_it_did_not_exist(
    tmp_path: Path,
) -> None:
    async with open_rooms(tmp_path) as rooms:
        await rooms.hidden(rooms.bob, rooms.private)
        await rooms.hidden(None, rooms.private)
        stranger = await rooms.get(rooms.bob, rooms.private)
        unknown = await rooms.get(rooms.bob, "!nothing:localhost")
        assert stranger[0] == unknown[0] == 404
        assert stranger[1]["errcode"] == unknown[1]["errcode"]

        member = await rooms.shown(rooms.alice, rooms.private)
        assert member["membership"] == "join"
        assert member["join_rule"] == "invite"
        assert member["encryption"] == "m.megolm.v1.aes-sha2"
        assert member["name"] == "Secret"

        await rooms.client.ok(
            rooms.alice, "POST", f"/rooms/{q(rooms.private)}/invite", {"user_id": rooms.bob.user_id}
        )
        invited = await rooms.shown(rooms.bob, rooms.private)
        assert (invited["membership"], invited["room_id"]) == ("invite", rooms.private)
        # Still nothing without a token.
        await rooms.hidden(None, rooms.private)

        # Left again: hidden again.
        await rooms.client.ok(rooms.bob, "POST", f"/rooms/{q(rooms.private)}/leave", {})
        await rooms.hidden(rooms.bob, rooms.private)


async def test_a_restricted_room_is_shown_to_members_of_the_rooms_it_allows(
    tmp_path: Path,
) -> None:
    async with open_rooms(tmp_path) as rooms:
        answer = await rooms.shown(rooms.carol, rooms.restricted)
        assert answer["join_rule"] == "restricted"
        assert answer["allowed_room_ids"] == [rooms.space]
        assert answer["membership"] == "leave"
        assert answer["room_version"] == "10"
        await rooms.hidden(rooms.bob, rooms.restricted)
        await rooms.hidden(None, rooms.restricted)
        # The space is a space, and private: Carol sees its type.
        space = await rooms.shown(rooms.carol, rooms.space)
        assert (space["room_type"], space["membership"]) == ("m.space", "join")
        assert "allowed_room_ids" not in space


async def test_rooms_anyone_may_see_need_no_token(tmp_path: Path) -> None:
    async with open_rooms(tmp_path) as rooms:
        client, alice = rooms.client, rooms.alice
        readable = await client.create_room(
            alice,
            preset="private_chat",
            initial_state=[
                _state("m.room.history_visibility", history_visibility="world_readable")
            ],
        )
        knock = await client.create_room(
            alice,
            name="Knock first",
            preset="private_chat",
            room_version="7",
            initial_state=[_state("m.room.join_rules", join_rule="knock")],
        )
        shown = await rooms.shown(None, readable)
        assert (shown["world_readable"], shown["join_rule"]) == (True, "invite")
        assert (await rooms.shown(None, knock))["join_rule"] == "knock"
        assert (await rooms.shown(rooms.bob, knock))["membership"] == "leave"


async def test_the_unstable_paths_answer_the_same(tmp_path: Path) -> None:
    async with open_rooms(tmp_path) as rooms:
        stable = await rooms.shown(rooms.alice, rooms.private)
        for path in (f"{UNSTABLE}/summary/{{}}", f"{UNSTABLE}/rooms/{{}}/summary"):
            status, answer = await rooms.get(rooms.alice, rooms.private, path=path)
            assert (status, answer) == (200, stable)
            status, answer = await rooms.get(rooms.bob, rooms.private, path=path)
            assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")


async def test_versions_names_the_unstable_feature(tmp_path: Path) -> None:
    async with open_rooms(tmp_path) as rooms:
        versions = await rooms.client.http.get("/_matrix/client/versions")
        assert versions.json()["unstable_features"]["im.nheko.summary"] is True


async def test_refusals(tmp_path: Path) -> None:
    async with open_rooms(tmp_path) as rooms:
        status, answer = await rooms.get(None, rooms.public, token="not-a-token")
        assert (status, answer["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        status, answer = await rooms.get(rooms.bob, "lobby")
        assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
        assert answer["error"]
        # A room not known here, and no server named to ask: 404.
        await rooms.hidden(rooms.bob, "!far:elsewhere.test")
