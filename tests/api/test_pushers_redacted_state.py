"""What a push gateway is told of a room whose state was redacted: the
room's name and the sender's display name as the room's state is served,
not the content a moderator removed (the gateway is another party, which
passes the notification on to a phone's vendor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import trio
from _client import Client, q

from ranvier.config import PushConfig
from ranvier.testing.homeserver import config_for_tests, open_test_homeserver
from ranvier.testing.network import Pki
from ranvier.testing.push_gateway import FakePushGateway


async def test_a_redacted_room_name_and_display_name_are_not_pushed(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    pki = Pki.create(tmp_path)
    gateway = FakePushGateway()
    await gateway.start(nursery, pki)
    config = msgspec.structs.replace(
        config_for_tests(tmp_path / "hs"), push=PushConfig(ca_file=pki.ca_file)
    )
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as http:
        c = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        room_id = await c.create_room(alice, preset="public_chat", name="Surprise party for Bob")
        await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
        member = await c.ok(
            bob,
            "PUT",
            f"/rooms/{q(room_id)}/state/m.room.member/{q(bob.user_id)}",
            {"membership": "join", "displayname": "Robert Paulson"},
        )
        state = await c.state(alice, room_id)
        name_id = state["m.room.name", ""]["event_id"]
        for n, event_id in enumerate((name_id, member["event_id"])):
            await c.ok(alice, "PUT", f"/rooms/{q(room_id)}/redact/{q(event_id)}/r{n}", {})
        await c.ok(
            alice,
            "POST",
            "/pushers/set",
            {
                "kind": "http",
                "app_id": "org.example.app",
                "pushkey": "key-of-alice",
                "app_display_name": "Example",
                "device_display_name": "Phone",
                "lang": "en",
                "data": {"url": gateway.url},
            },
        )
        sent = await c.ok(
            bob,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/m1",
            {"msgtype": "m.text", "body": "hello"},
        )
        with trio.fail_after(30):
            notification: dict[str, Any] = await gateway.next()
        assert notification["event_id"] == sent["event_id"]
        assert notification["sender"] == bob.user_id
        assert "room_name" not in notification
        assert "sender_display_name" not in notification
