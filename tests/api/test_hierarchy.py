"""``GET /_matrix/client/v1/rooms/{roomId}/hierarchy`` over HTTP on one
server: a space with a subspace and rooms of every kind of access, walked
depth first in the spec's order, paged to the end, cut by ``max_depth`` and
``suggested_only``, and refused for a root the user may not see.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _client import Client, q

from ranvier.testing.homeserver import TestUser, open_test_homeserver

V1 = "/_matrix/client/v1"


@dataclass
class Space:
    """Alice's public space and its rooms; Bob has joined the space only.

    The space links, in this order of sending: ``sub`` (order "a"), ``open``
    (order "b"), ``private``, ``readable`` and ``restricted`` (no order).
    ``sub`` is a public space linking ``inner`` (public) and ``hidden``
    (invite only). ``readable`` is invite only but world-readable;
    ``restricted`` lets in members of the space.
    """

    client: Client
    alice: TestUser
    bob: TestUser
    space: str
    sub: str
    open: str
    private: str
    readable: str
    restricted: str
    inner: str
    hidden: str

    async def hierarchy(
        self, user: TestUser, room_id: str | None = None, **params: Any
    ) -> tuple[int, dict[str, Any]]:
        response = await self.client.http.get(
            f"{V1}/rooms/{q(room_id or self.space)}/hierarchy",
            params=params,
            headers={"Authorization": f"Bearer {user.access_token}"},
        )
        answer: dict[str, Any] = response.json()
        return response.status_code, answer

    async def rooms(self, user: TestUser, **params: Any) -> list[str]:
        """Every room of the walk, page after page until no next_batch."""
        found: list[str] = []
        token = None
        for _ in range(20):
            page_params = dict(params, **({"from": token} if token else {}))
            status, answer = await self.hierarchy(user, **page_params)
            assert status == 200, answer
            found += [room["room_id"] for room in answer["rooms"]]
            token = answer.get("next_batch")
            if token is None:
                return found
        raise AssertionError("the pages never ended")


async def link(
    client: Client, user: TestUser, parent: str, child: str, **content: Any
) -> dict[str, Any]:
    via = content.pop("via", [client.hs.server_name])
    return await client.ok(  # type: ignore[no-any-return]
        user,
        "PUT",
        f"/rooms/{q(parent)}/state/m.space.child/{q(child)}",
        {"via": via, **content},
    )


@asynccontextmanager
async def open_space(tmp_path: Path) -> AsyncIterator[Space]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        client = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        space_type = {"creation_content": {"type": "m.space"}, "preset": "public_chat"}
        space = await client.create_room(alice, name="Space", topic="All of it", **space_type)
        sub = await client.create_room(alice, name="Sub", **space_type)
        opened = await client.create_room(alice, name="Open", preset="public_chat")
        private = await client.create_room(alice, name="Private", preset="private_chat")
        readable = await client.create_room(
            alice,
            name="Readable",
            preset="private_chat",
            initial_state=[
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "world_readable"},
                },
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                },
            ],
        )
        restricted = await client.create_room(
            alice,
            name="Restricted",
            preset="private_chat",
            room_version="10",
            initial_state=[
                {
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {
                        "join_rule": "restricted",
                        "allow": [{"type": "m.room_membership", "room_id": space}],
                    },
                }
            ],
        )
        inner = await client.create_room(alice, name="Inner", preset="public_chat")
        hidden = await client.create_room(alice, name="Hidden", preset="private_chat")
        await link(client, alice, space, sub, order="a")
        await link(client, alice, space, opened, order="b")
        for child in (private, readable, restricted):
            await link(client, alice, space, child)
        await link(client, alice, sub, inner)
        await link(client, alice, sub, hidden)
        # Not links: no via, an empty via.
        await client.ok(alice, "PUT", f"/rooms/{q(space)}/state/m.space.child/{q(hidden)}", {})
        await link(client, alice, space, "!gone:elsewhere", via=[])
        await client.ok(bob, "POST", f"/rooms/{q(space)}/join", {})
        yield Space(
            client, alice, bob, space, sub, opened, private, readable, restricted, inner, hidden
        )


def _by_id(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {room["room_id"]: room for room in answer["rooms"]}


async def test_the_walk_is_depth_first_in_the_spec_order_and_shows_what_bob_may_see(
    tmp_path: Path,
) -> None:
    async with open_space(tmp_path) as s:
        status, answer = await s.hierarchy(s.bob)
        assert status == 200, answer
        assert "next_batch" not in answer
        rooms = _by_id(answer)
        children = rooms[s.space]["children_state"]
        # Links without a usable via are not links.
        linked = [event["state_key"] for event in children]
        assert sorted(linked) == sorted([s.sub, s.open, s.private, s.readable, s.restricted])
        # Ordered ones first by order, then the rest by timestamp, then room ID.
        assert linked[:2] == [s.sub, s.open]
        rest = sorted(
            children[2:], key=lambda event: (event["origin_server_ts"], event["state_key"])
        )
        assert children[2:] == rest
        for event in children:
            assert event["type"] == "m.space.child"
            assert event["sender"] == s.alice.user_id
            assert event["content"]["via"] == [s.client.hs.server_name]
            assert isinstance(event["origin_server_ts"], int)
        # Depth first: the subspace's rooms come before the space's next child.
        # The private rooms Bob is not in are left out, their links kept.
        after_sub = [
            event["state_key"] for event in children[2:] if event["state_key"] != s.private
        ]
        assert [room["room_id"] for room in answer["rooms"]] == [
            s.space,
            s.sub,
            s.inner,
            s.open,
            *after_sub,
        ]
        assert [event["state_key"] for event in rooms[s.sub]["children_state"]] == sorted(
            [s.inner, s.hidden],
            key=lambda room_id: next(
                (event["origin_server_ts"], room_id)
                for event in rooms[s.sub]["children_state"]
                if event["state_key"] == room_id
            ),
        )
        space = rooms[s.space]
        assert space["name"] == "Space"
        assert space["topic"] == "All of it"
        assert space["room_type"] == "m.space"
        assert space["join_rule"] == "public"
        assert space["num_joined_members"] == 2
        assert space["world_readable"] is False
        assert space["guest_can_join"] is False
        assert isinstance(space["room_version"], str)
        assert rooms[s.readable]["world_readable"] is True
        assert rooms[s.readable]["join_rule"] == "invite"
        assert rooms[s.restricted]["join_rule"] == "restricted"
        assert rooms[s.restricted]["allowed_room_ids"] == [s.space]
        assert rooms[s.restricted]["room_version"] == "10"
        assert rooms[s.open]["children_state"] == []
        assert rooms[s.readable]["encryption"] == "m.megolm.v1.aes-sha2"
        assert "encryption" not in rooms[s.open]
        assert "allowed_room_ids" not in rooms[s.open]
        assert "room_type" not in rooms[s.open]
        # Alice is in every room, so she sees them all.
        everything = await s.rooms(s.alice)
        assert sorted(everything) == sorted(
            [s.space, s.sub, s.inner, s.hidden, s.open, s.private, s.readable, s.restricted]
        )


async def test_a_restricted_room_is_hidden_from_who_is_not_in_an_allowed_room(
    tmp_path: Path,
) -> None:
    async with open_space(tmp_path) as s:
        carol = await s.client.hs.register_user("carol")
        # Carol peeks at the public space without joining it.
        seen = await s.rooms(carol)
        assert s.restricted not in seen
        assert s.readable in seen
        assert s.open in seen
        assert s.restricted in await s.rooms(s.bob)


async def test_pages_end_and_keep_their_parameters(tmp_path: Path) -> None:
    async with open_space(tmp_path) as s:
        whole = await s.rooms(s.bob)
        assert len(whole) == 6
        for limit in (1, 2, 4, 5, 6):
            assert await s.rooms(s.bob, limit=limit) == whole
        status, first = await s.hierarchy(s.bob, limit=2)
        assert status == 200
        assert len(first["rooms"]) == 2
        token = first["next_batch"]
        assert isinstance(token, str)
        status, answer = await s.hierarchy(s.bob, limit=2, **{"from": token, "max_depth": "1"})
        assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
        status, answer = await s.hierarchy(
            s.bob, limit=2, **{"from": token, "suggested_only": "true"}
        )
        assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
        status, answer = await s.hierarchy(s.bob, s.sub, **{"from": token})
        assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
        for bad in ("nonsense!", "", "e30"):
            status, answer = await s.hierarchy(s.bob, **{"from": bad})
            assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM"), bad
        for name, value in (("limit", "0"), ("limit", "-1"), ("max_depth", "-1"), ("limit", "x")):
            status, answer = await s.hierarchy(s.bob, **{name: value})
            assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM"), (name, value)
        status, answer = await s.hierarchy(s.bob, suggested_only="yes")
        assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")


async def test_max_depth_and_suggested_only(tmp_path: Path) -> None:
    async with open_space(tmp_path) as s:
        assert await s.rooms(s.bob, max_depth=0) == [s.space]
        one_deep = await s.rooms(s.bob, max_depth=1)
        assert s.inner not in one_deep
        assert one_deep[:3] == [s.space, s.sub, s.open]
        assert sorted(one_deep) == sorted([s.space, s.sub, s.open, s.readable, s.restricted])
        # The subspace's links are still shown at the depth limit.
        _, answer = await s.hierarchy(s.bob, max_depth=1)
        assert [event["state_key"] for event in _by_id(answer)[s.sub]["children_state"]]
        await link(s.client, s.alice, s.space, s.open, order="b", suggested=True)
        await link(s.client, s.alice, s.space, s.sub, order="a", suggested=True)
        await link(s.client, s.alice, s.sub, s.inner, suggested=False)
        assert await s.rooms(s.bob, suggested_only="true") == [s.space, s.sub, s.open]
        _, answer = await s.hierarchy(s.bob, suggested_only="true")
        rooms = _by_id(answer)
        assert [event["state_key"] for event in rooms[s.space]["children_state"]] == [
            s.sub,
            s.open,
        ]
        assert rooms[s.sub]["children_state"] == []


async def test_a_root_the_user_may_not_see_is_forbidden(tmp_path: Path) -> None:
    async with open_space(tmp_path) as s:
        for room_id in (s.private, s.hidden, "!unknown:localhost"):
            status, answer = await s.hierarchy(s.bob, room_id)
            assert (status, answer["errcode"]) == (403, "M_FORBIDDEN"), room_id
        # Invited is enough to see it.
        await s.client.ok(
            s.alice, "POST", f"/rooms/{q(s.private)}/invite", {"user_id": s.bob.user_id}
        )
        status, answer = await s.hierarchy(s.bob, s.private)
        assert status == 200
        assert [room["room_id"] for room in answer["rooms"]] == [s.private]
        # Without an access token: 401.
        response = await s.client.http.get(f"{V1}/rooms/{q(s.space)}/hierarchy")
        assert response.status_code == 401


async def test_a_loop_is_walked_once_and_knockable_rooms_are_shown(tmp_path: Path) -> None:
    async with open_space(tmp_path) as s:
        knock = await s.client.create_room(
            s.alice,
            name="Knock",
            preset="private_chat",
            room_version="10",
            initial_state=[
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
            ],
        )
        await link(s.client, s.alice, s.sub, knock, order="0")
        # The subspace links back to the space: a loop.
        await link(s.client, s.alice, s.sub, s.space, order="1")
        rooms = await s.rooms(s.bob)
        assert rooms[:4] == [s.space, s.sub, knock, s.inner]
        assert len(rooms) == len(set(rooms)) == 7
        _, answer = await s.hierarchy(s.bob)
        assert _by_id(answer)[knock]["join_rule"] == "knock"


async def test_a_room_everyone_here_left_is_shown_from_its_last_state(tmp_path: Path) -> None:
    async with open_space(tmp_path) as s:
        await s.client.ok(s.alice, "POST", f"/rooms/{q(s.open)}/leave", {})
        # No other server to ask: the room as this server last knew it.
        _, answer = await s.hierarchy(s.bob, max_depth=1)
        left = _by_id(answer)[s.open]
        assert left["name"] == "Open"
        assert left["num_joined_members"] == 0
        await s.client.ok(s.alice, "POST", f"/rooms/{q(s.private)}/leave", {})
        _, answer = await s.hierarchy(s.alice, max_depth=1)
        # Alice left the private room: she no longer sees it.
        assert s.private not in _by_id(answer)


async def test_a_redacted_link_is_no_link(tmp_path: Path) -> None:
    async with open_space(tmp_path) as s:
        sent = await link(s.client, s.alice, s.space, s.sub, order="a")
        path = f"/rooms/{q(s.space)}/redact/{q(sent['event_id'])}/t1"
        await s.client.ok(s.alice, "PUT", path, {"reason": "unlinked"})
        walked = await s.rooms(s.bob)
        assert s.sub not in walked
        assert s.inner not in walked
        _, answer = await s.hierarchy(s.bob)
        links = [event["state_key"] for event in _by_id(answer)[s.space]["children_state"]]
        assert s.sub not in links
        assert s.open in links
