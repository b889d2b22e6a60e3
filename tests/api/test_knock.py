"""``POST /knock/{roomIdOrAlias}`` on one server, over HTTP: a knock let in
by an invite and then a join, one turned away by a kick, one withdrawn,
knocks the join rule does not allow, and /sync's ``rooms.knock``, initial
and incremental.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _client import Client, OneServer, q

from ranvier.testing.homeserver import TestUser, open_test_homeserver

_KNOCK_RULE = {"type": "m.room.join_rules", "content": {"join_rule": "knock"}}


@dataclass
class KnockRoom(OneServer):
    """Alice's room of join rule ``knock`` (alias ``#door``), which Bob has
    not knocked on yet."""

    room_id: str


@asynccontextmanager
async def _knock_room(tmp_path: Path) -> AsyncIterator[KnockRoom]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        client = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        room_id = await client.create_room(
            alice, name="Door", room_alias_name="door", initial_state=[_KNOCK_RULE]
        )
        yield KnockRoom(hs, client, alice, bob, room_id)


async def _membership(env: KnockRoom, user: TestUser) -> dict[str, Any]:
    state = await env.client.state(env.alice, env.room_id)
    event: dict[str, Any] = state[("m.room.member", user.user_id)]
    return event


def _by_key(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(event["type"], event["state_key"]): event for event in events}


async def test_a_knock_is_let_in_by_an_invite_and_then_joins(tmp_path: Path) -> None:
    async with _knock_room(tmp_path) as env:
        client, alice, bob, room_id = env.client, env.alice, env.bob, env.room_id
        answer = await client.ok(bob, "POST", f"/knock/{q(room_id)}", {"reason": "let me in"})
        assert answer == {"room_id": room_id}
        knock = await _membership(env, bob)
        assert knock["content"] == {"membership": "knock", "reason": "let me in"}
        assert knock["sender"] == bob.user_id
        # Alice sees the knock in her room's timeline.
        timeline = (await env.sync(alice))["rooms"]["join"][room_id]["timeline"]["events"]
        assert knock["event_id"] in [event["event_id"] for event in timeline]

        synced = await env.sync(bob)
        assert synced["rooms"]["join"] == {}
        assert synced["rooms"]["invite"] == {}
        events = synced["rooms"]["knock"][room_id]["knock_state"]["events"]
        by_key = _by_key(events)
        assert set(by_key) == {
            ("m.room.create", ""),
            ("m.room.join_rules", ""),
            ("m.room.name", ""),
            ("m.room.canonical_alias", ""),
            ("m.room.member", bob.user_id),
        }
        assert all(set(event) == {"type", "state_key", "content", "sender"} for event in events)
        assert by_key[("m.room.join_rules", "")]["content"] == {"join_rule": "knock"}
        assert by_key[("m.room.name", "")]["content"] == {"name": "Door"}
        assert events[-1] == {
            "type": "m.room.member",
            "state_key": bob.user_id,
            "content": {"membership": "knock", "reason": "let me in"},
            "sender": bob.user_id,
        }

        # Nothing new: the knock is not repeated.
        again = await env.sync(bob, since=synced["next_batch"])
        assert again["rooms"]["knock"] == {}
        # Let in: the room moves to invite.
        await client.ok(alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
        invited = await env.sync(bob, since=again["next_batch"])
        assert invited["rooms"]["knock"] == {}
        assert room_id in invited["rooms"]["invite"]
        assert await client.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {}) == {"room_id": room_id}
        assert (await _membership(env, bob))["content"]["membership"] == "join"
        joined = await env.sync(bob, since=invited["next_batch"])
        assert room_id in joined["rooms"]["join"]
        assert joined["rooms"]["knock"] == {}
        assert joined["rooms"]["invite"] == {}


async def test_a_knock_through_an_alias_turned_away_by_a_kick(tmp_path: Path) -> None:
    async with _knock_room(tmp_path) as env:
        client, alice, bob, room_id = env.client, env.alice, env.bob, env.room_id
        before = await env.sync(bob)
        assert before["rooms"]["knock"] == {}
        alias = f"#door:{env.hs.server_name}"
        assert await client.ok(bob, "POST", f"/knock/{q(alias)}", {}) == {"room_id": room_id}
        assert (await _membership(env, bob))["content"] == {"membership": "knock"}
        # An incremental sync brings the knock made since.
        knocked = await env.sync(bob, since=before["next_batch"])
        assert list(knocked["rooms"]["knock"]) == [room_id]

        await client.ok(
            alice, "POST", f"/rooms/{q(room_id)}/kick", {"user_id": bob.user_id, "reason": "no"}
        )
        kick = await _membership(env, bob)
        assert kick["content"] == {"membership": "leave", "reason": "no"}
        assert kick["sender"] == alice.user_id
        refused = await env.sync(bob, since=knocked["next_batch"])
        assert refused["rooms"]["knock"] == {}
        assert room_id in refused["rooms"]["leave"]
        # A new initial sync shows no knock either.
        assert (await env.sync(bob))["rooms"]["knock"] == {}
        # Knocking again after a refusal is allowed; after a ban it is not.
        await client.ok(bob, "POST", f"/knock/{q(room_id)}", {})
        assert (await _membership(env, bob))["content"] == {"membership": "knock"}
        await client.ok(alice, "POST", f"/rooms/{q(room_id)}/ban", {"user_id": bob.user_id})
        await client.refused(
            bob, "POST", f"/knock/{q(room_id)}", {}, status=403, errcode="M_FORBIDDEN"
        )
        assert (await _membership(env, bob))["content"] == {"membership": "ban"}


async def test_a_knock_is_withdrawn_by_leaving(tmp_path: Path) -> None:
    async with _knock_room(tmp_path) as env:
        client, bob, room_id = env.client, env.bob, env.room_id
        await client.ok(bob, "POST", f"/knock/{q(room_id)}", {})
        knocked = await env.sync(bob)
        assert room_id in knocked["rooms"]["knock"]
        assert await client.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {}) == {}
        leave = await _membership(env, bob)
        assert (leave["content"], leave["sender"]) == ({"membership": "leave"}, bob.user_id)
        withdrawn = await env.sync(bob, since=knocked["next_batch"])
        assert withdrawn["rooms"]["knock"] == {}
        assert room_id in withdrawn["rooms"]["leave"]


async def test_a_knock_the_join_rule_does_not_allow_is_refused(tmp_path: Path) -> None:
    async with _knock_room(tmp_path) as env:
        client, alice, bob = env.client, env.alice, env.bob
        public = await client.create_room(alice, preset="public_chat")
        private = await client.create_room(alice, preset="private_chat")
        old = await client.create_room(alice, room_version="6", initial_state=[_KNOCK_RULE])
        for room_id in (public, private, old):
            await client.refused(
                bob, "POST", f"/knock/{q(room_id)}", {}, status=403, errcode="M_FORBIDDEN"
            )
            state = await client.state(alice, room_id)
            assert ("m.room.member", bob.user_id) not in state
        # Alice is joined already.
        await client.refused(
            alice, "POST", f"/knock/{q(env.room_id)}", {}, status=403, errcode="M_FORBIDDEN"
        )
        assert (await env.sync(bob))["rooms"]["knock"] == {}


async def test_a_knock_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    async with _knock_room(tmp_path) as env:
        client, bob, room_id = env.client, env.bob, env.room_id
        path = f"/knock/{q(room_id)}"
        await client.refused(bob, "POST", path, {"reason": 5}, status=400, errcode="M_BAD_JSON")
        await client.refused(bob, "POST", path, [], status=400, errcode="M_BAD_JSON")
        await client.refused(
            bob, "POST", "/knock/nowhere", {}, status=400, errcode="M_INVALID_PARAM"
        )
        await client.refused(None, "POST", path, {}, status=401, errcode="M_MISSING_TOKEN")
        # A room no server is named for, and this server does not know.
        await client.refused(
            bob, "POST", f"/knock/{q('!unknown')}", {}, status=404, errcode="M_NOT_FOUND"
        )
        unknown_alias = f"#nothing:{env.hs.server_name}"
        await client.refused(
            bob, "POST", f"/knock/{q(unknown_alias)}", {}, status=404, errcode="M_NOT_FOUND"
        )
        state = await env.client.state(env.alice, room_id)
        assert ("m.room.member", bob.user_id) not in state


async def test_a_knock_wakes_a_long_poll_and_knock_restricted_allows_it(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        client = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        space = await client.create_room(alice, preset="private_chat")
        allow = [{"type": "m.room_membership", "room_id": space}]
        rule = {"join_rule": "knock_restricted", "allow": allow}
        room_id = await client.create_room(
            alice, initial_state=[{"type": "m.room.join_rules", "content": rule}]
        )
        env = KnockRoom(hs, client, alice, bob, room_id)
        since = (await env.sync(bob))["next_batch"]

        async def quiet() -> None:
            await client.ok(alice, "PUT", f"/rooms/{q(space)}/send/m.room.message/1", {"body": "x"})

        async def wake() -> None:
            await client.ok(bob, "POST", f"/knock/{q(room_id)}", {})

        woken = await env.woken_sync(bob, since, quiet=quiet, wake=wake)
        assert list(woken["rooms"]["knock"]) == [room_id]
        events = woken["rooms"]["knock"][room_id]["knock_state"]["events"]
        assert events[-1]["content"] == {"membership": "knock"}
        assert (await _membership(env, bob))["content"] == {"membership": "knock"}


async def test_a_knock_sent_through_the_state_api_is_made_and_withdrawn(tmp_path: Path) -> None:
    """A knock member event of Bob's own through /state knocks as /knock
    does, with the keys he sent; his leave through /state withdraws it.
    Knocking for someone else is refused and writes nothing."""
    async with _knock_room(tmp_path) as env:
        client, alice, bob, room_id = env.client, env.alice, env.bob, env.room_id
        path = f"/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}"
        await client.refused(
            alice, "PUT", path, {"membership": "knock"}, status=403, errcode="M_FORBIDDEN"
        )
        assert ("m.room.member", bob.user_id) not in await client.state(alice, room_id)

        knock = {"membership": "knock", "reason": "let me in", "org.example.note": "hi"}
        answer = await client.ok(bob, "PUT", path, knock)
        event = await _membership(env, bob)
        assert (event["event_id"], event["sender"]) == (answer["event_id"], bob.user_id)
        assert {key: event["content"][key] for key in knock} == knock
        knocked = await env.sync(bob)
        assert room_id in knocked["rooms"]["knock"]

        answer = await client.ok(bob, "PUT", path, {"membership": "leave"})
        event = await _membership(env, bob)
        assert (event["event_id"], event["content"]) == (
            answer["event_id"],
            {"membership": "leave"},
        )
        withdrawn = await env.sync(bob, since=knocked["next_batch"])
        assert withdrawn["rooms"]["knock"] == {}
        assert room_id in withdrawn["rooms"]["leave"]
