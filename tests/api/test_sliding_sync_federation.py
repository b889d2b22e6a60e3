"""Sliding sync with a room joined from another server with partial state
(MSC3706, MSC3902): a config that asks for every membership waits for the
resync, as an eager /sync does, and one that lazy-loads members has the
room at once, without member counts it cannot know yet.

A holds the room; B's user joins it through A, and A's router holds the
reads of B's resync until the test lets them go. Both run whole over TLS
on loopback; B also serves the client API, which the test calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing
from _sliding_sync import all_rooms, slide

from ranvier.config import ListenerConfig
from ranvier.server import open_homeserver
from ranvier.testing import Pki
from ranvier.testing.held_routes import HeldRoutes
from ranvier.testing.homeserver import TestUser, federating_config

_CLIENT = ListenerConfig(type="client", host="127.0.0.1", port=0)


async def test_a_partial_state_room_waits_for_every_member_but_not_for_lazy_ones(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_homeserver(federating_config(tmp_path, pki, "a", _CLIENT)) as a,
        open_homeserver(federating_config(tmp_path, pki, "b", _CLIENT)) as b,
    ):
        alice = f"@alice:{a.server_name}"
        room_id = await a.create_room(alice, preset="public_chat", name="partial")
        await a.join_room(f"@member:{a.server_name}", room_id)
        held = HeldRoutes(a.federation_app.router)
        a.federation_app.router = held
        registration = await b.accounts.register("bob", "a long enough password")
        assert registration.access_token is not None
        assert registration.device_id is not None
        bob = TestUser(registration.user_id, registration.access_token, registration.device_id)
        (client,) = [bound for bound in b.listeners if bound.config.type == "client"]
        async with httpx.AsyncClient(base_url=client.url, timeout=60) as http:
            await b.join_room(bob.user_id, room_id, [a.server_name])
            assert await b.storage.is_partial_state_room(room_id)
            members = {"lists": {"all": all_rooms(required_state=[["m.room.member", "*"]])}}
            lazy = {
                "lists": {"all": all_rooms(required_state=[["m.room.member", "$LAZY"]])},
                "conn_id": "lazy",
            }
            eager = await slide(http, bob, members)
            assert room_id not in eager["rooms"]
            at_once = await slide(http, bob, lazy)
            room = at_once["rooms"][room_id]
            assert room["initial"] is True
            assert "joined_count" not in room
            senders = {event["sender"] for event in room["timeline"]}
            assert {e["state_key"] for e in room["required_state"]} == senders

            answers: list[dict[str, Any]] = []

            async def poll() -> None:
                answers.append(await slide(http, bob, members, pos=eager["pos"], timeout_ms=60_000))

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(poll)
                    while b.stream_notifier.waiting == 0:
                        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
                    assert not answers
                    held.released.set()
            assert not await b.storage.is_partial_state_room(room_id)
            (full,) = answers
            room = full["rooms"][room_id]
            assert room["initial"] is True
            assert room["joined_count"] == 3
            every = {event["state_key"] for event in room["required_state"]}
            assert every == {alice, bob.user_id, f"@member:{a.server_name}"}
