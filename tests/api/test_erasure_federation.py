"""Erasure across servers, over real HTTP and TLS: a server that joins a
room after one of A's users was erased gets that user's messages redacted,
through ``/backfill`` and ``/event``, and its user reads them so; a server
whose user was in the room when they were sent still gets them whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from _client import Client, q
from _federation import TwoServers, share_a_room, two_servers

from ranvier.protocol.hashing import compute_event_id
from ranvier.testing.homeserver import TestUser

PASSWORD = "erins password"


async def _erin_speaks(servers: TwoServers, room_id: str) -> tuple[TestUser, dict[str, str]]:
    """Erin of A joins the room and says two things; her messages by event ID."""
    a, ca = servers.a, servers.ca
    erin = await a.register_user("erin", PASSWORD)
    await ca.ok(erin, "POST", f"/rooms/{q(room_id)}/join", {})
    said = {}
    for number, body in enumerate(["first secret", "second secret"]):
        sent = await ca.ok(
            erin,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/{number}",
            {"msgtype": "m.text", "body": body},
        )
        said[sent["event_id"]] = body
    return erin, said


async def _erase(ca: Client, erin: TestUser) -> None:
    status, challenge = await ca.call(erin, "POST", "/account/deactivate", {"erase": True})
    assert status == 401, challenge
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "erin"},
        "password": PASSWORD,
        "session": challenge["session"],
    }
    await ca.ok(erin, "POST", "/account/deactivate", {"erase": True, "auth": auth})


async def _paged_back(c: Client, user: TestUser, room_id: str) -> dict[str, dict[str, Any]]:
    """Every message of the room ``user`` pages back to, by event ID."""
    found: dict[str, dict[str, Any]] = {}
    params: dict[str, Any] = {"dir": "b", "limit": 20}
    for _ in range(20):
        page = await c.ok(user, "GET", f"/rooms/{q(room_id)}/messages", params=params)
        found.update(
            (event["event_id"], event)
            for event in page["chunk"]
            if event["type"] == "m.room.message"
        )
        if "end" not in page:
            return found
        params["from"] = page["end"]
    raise AssertionError("the history never ended")


async def _pulled(
    servers: TwoServers, room_id: str, said: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The contents of Erin's messages, by event ID, as B pulls them from
    A: each by ``/event``, and all by ``/backfill`` from the newest."""
    a, b = servers.a, servers.b
    client = b.server.federation_client
    one_by_one = {}
    for event_id in said:
        answer = await client.get_json(a.server_name, f"/_matrix/federation/v1/event/{q(event_id)}")
        (pdu,) = answer["pdus"]
        one_by_one[event_id] = pdu["content"]
    answer = await client.get_json(
        a.server_name,
        f"/_matrix/federation/v1/backfill/{q(room_id)}",
        query={"v": list(said)[-1], "limit": "50"},
    )
    version = await a.server.storage.get_room_version(room_id)
    assert version is not None
    by_id = {compute_event_id(pdu, version): pdu for pdu in answer["pdus"]}
    backfilled = {event_id: by_id[event_id]["content"] for event_id in said}
    return one_by_one, backfilled


async def test_a_server_joining_after_the_erasure_gets_the_messages_redacted(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        room_id = await ca.create_room(alice, preset="public_chat", room_alias_name="lobby")
        erin, said = await _erin_speaks(servers, room_id)
        await _erase(ca, erin)

        await cb.ok(bob, "POST", f"/join/{q(f'#lobby:{a.server_name}')}", {})
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        # B holds none of Erin's messages yet: paging back fetches them from A.
        assert not await b.server.storage.get_events(list(said))
        messages = await _paged_back(cb, bob, room_id)
        assert {event_id: messages[event_id]["content"] for event_id in said} == {
            event_id: {} for event_id in said
        }
        redacted = {event_id: {} for event_id in said}
        assert await _pulled(servers, room_id, said) == (redacted, redacted)
        # Alice, who was there, still reads them at A.
        at_a = await _paged_back(ca, alice, room_id)
        assert {event_id: at_a[event_id]["content"]["body"] for event_id in said} == said


async def test_a_server_in_the_room_at_the_time_gets_the_messages_whole(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        room_id = await share_a_room(servers)
        erin, said = await _erin_speaks(servers, room_id)
        await _erase(servers.ca, erin)
        whole = {event_id: {"msgtype": "m.text", "body": body} for event_id, body in said.items()}
        assert await _pulled(servers, room_id, said) == (whole, whole)
