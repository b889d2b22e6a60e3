"""Room summaries of rooms on another server, asked of it through
federation's ``/hierarchy``: by room ID with ``via``, by an alias of that
server, a restricted room shown to a member of the room it allows and to
nobody else, and refused when it may not be seen or nobody is named to ask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _client import Client, q
from _federation import two_servers

from ranvier.testing.homeserver import TestUser

SUMMARY = "/_matrix/client/v1/room_summary"


async def summary(
    client: Client, user: TestUser | None, target: str, **params: Any
) -> tuple[int, dict[str, Any]]:
    headers = {} if user is None else {"Authorization": f"Bearer {user.access_token}"}
    response = await client.http.get(f"{SUMMARY}/{q(target)}", params=params, headers=headers)
    answer: dict[str, Any] = response.json()
    return response.status_code, answer


async def test_a_room_on_another_server_is_asked_of_the_via_servers(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        _a, b, ca, cb, alice, bob = servers
        far = await cb.create_room(
            bob,
            name="Far away",
            topic="On B",
            preset="public_chat",
            room_alias_name="far",
            creation_content={"type": "m.space"},
        )
        secret = await cb.create_room(bob, name="Secret", preset="private_chat")

        status, answer = await summary(ca, alice, far, via=b.server_name)
        assert status == 200, answer
        assert answer["room_id"] == far
        assert (answer["name"], answer["topic"]) == ("Far away", "On B")
        assert (answer["room_type"], answer["join_rule"]) == ("m.space", "public")
        assert answer["num_joined_members"] == 1
        assert answer["membership"] == "leave"
        assert "children_state" not in answer
        # Without a token too, as the room is public.
        status, anonymous = await summary(ca, None, far, via=b.server_name)
        assert status == 200, anonymous
        assert "membership" not in anonymous

        # By B's alias: resolved by B, which is then asked.
        status, by_alias = await summary(ca, alice, f"#far:{b.server_name}")
        assert status == 200, by_alias
        assert by_alias["room_id"] == far

        # Nobody named to ask: A knows nothing of it.
        status, answer = await summary(ca, alice, far)
        assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
        # B will not tell A of a private room no user of A is in.
        status, answer = await summary(ca, alice, secret, via=b.server_name)
        assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")


async def test_a_restricted_room_elsewhere_is_shown_to_members_of_a_room_it_allows(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        carol = await a.register_user("carol")
        lobby = await cb.create_room(bob, name="Lobby", preset="public_chat")
        restricted = await cb.create_room(
            bob,
            name="Lobby members",
            preset="private_chat",
            room_version="10",
            initial_state=[
                {
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {
                        "join_rule": "restricted",
                        "allow": [{"type": "m.room_membership", "room_id": lobby}],
                    },
                }
            ],
        )
        # Before Alice joins the lobby, B tells A nothing of the room.
        status, answer = await summary(ca, alice, restricted, via=b.server_name)
        assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")

        await ca.ok(alice, "POST", f"/join/{q(lobby)}", {}, params={"server_name": b.server_name})
        status, answer = await summary(ca, alice, restricted, via=b.server_name)
        assert status == 200, answer
        assert (answer["join_rule"], answer["allowed_room_ids"]) == ("restricted", [lobby])
        assert (answer["name"], answer["membership"]) == ("Lobby members", "leave")
        # Carol, of A too but not in the lobby, is not shown it by A.
        status, answer = await summary(ca, carol, restricted, via=b.server_name)
        assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
