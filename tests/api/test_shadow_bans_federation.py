"""A shadow-banned user's sends do not leave the server: over loopback TLS,
server B hears a later send of another user of A, and nothing of what the
banned user was answered for before it (messages, state, typing, an invite
of B's user). Once the ban is lifted, the user's sends reach B again."""

from __future__ import annotations

from pathlib import Path

from _admin import admin_ok
from _client import Client, q
from _federation import TwoServers, eventually, share_a_room, two_servers

from ranvier.testing.homeserver import TestUser


async def _bodies(client: Client, user: TestUser, room_id: str) -> list[str]:
    answer = await client.ok(
        user, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": 100}
    )
    return [
        event["content"]["body"] for event in answer["chunk"] if event["type"] == "m.room.message"
    ]


async def _send(client: Client, user: TestUser, room_id: str, body: str, txn: str) -> str:
    answer = await client.ok(
        user,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": body},
    )
    event_id: str = answer["event_id"]
    return event_id


async def _shadow_ban(servers: TwoServers, admin: TestUser, banned: bool) -> None:
    path = f"/v1/users/{q(servers.alice.user_id)}/shadow_ban"
    assert await admin_ok(servers.ca.http, admin, "POST" if banned else "DELETE", path) == {}


async def test_nothing_a_shadow_banned_user_sends_reaches_the_other_server(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        room_id = await share_a_room(servers)
        admin = await a.register_user("root", admin=True)
        dave = await a.register_user("dave")
        erin = await b.register_user("erin")
        await ca.ok(dave, "POST", f"/rooms/{q(room_id)}/join", {})
        room = f"/rooms/{q(room_id)}"
        await ca.ok(alice, "PUT", f"{room}/state/m.room.topic", {"topic": "calm"})

        async def topic_on_b_is(topic: str) -> bool:
            status, content = await cb.call(bob, "GET", f"{room}/state/m.room.topic")
            return status == 200 and content == {"topic": topic}

        await eventually(lambda: topic_on_b_is("calm"), "the first topic on B")

        await _shadow_ban(servers, admin, True)
        faked = [await _send(ca, alice, room_id, "spam", "s1")]
        topic = await ca.ok(alice, "PUT", f"{room}/state/m.room.topic", {"topic": "spam"})
        faked.append(topic["event_id"])
        assert await ca.ok(alice, "POST", f"{room}/invite", {"user_id": erin.user_id}) == {}
        typing = {"typing": True, "timeout": 60_000}
        await ca.ok(alice, "PUT", f"{room}/typing/{q(alice.user_id)}", typing)
        # Dave's message and typing follow on A's queue to B.
        await _send(ca, dave, room_id, "marker", "d1")
        await ca.ok(dave, "PUT", f"{room}/typing/{q(dave.user_id)}", typing)

        async def marker_on_b() -> bool:
            return "marker" in await _bodies(cb, bob, room_id)

        await eventually(marker_on_b, "Dave's message on B")
        assert "spam" not in await _bodies(cb, bob, room_id)
        assert await b.server.storage.get_events(faked) == {}
        assert await topic_on_b_is("calm")
        invites = (await cb.ok(erin, "GET", "/sync"))["rooms"]["invite"]
        assert room_id not in invites

        async def dave_typing_on_b() -> bool:
            return dave.user_id in b.server.typing_notices.typing_in(room_id)

        await eventually(dave_typing_on_b, "Dave's typing on B")
        assert alice.user_id not in b.server.typing_notices.typing_in(room_id)

        await _shadow_ban(servers, admin, False)
        sent = await _send(ca, alice, room_id, "lifted", "s2")

        async def lifted_on_b() -> bool:
            return bool(await b.server.storage.get_events([sent]))

        await eventually(lifted_on_b, "Alice's message on B once the ban is lifted")
        assert "lifted" in await _bodies(cb, bob, room_id)
