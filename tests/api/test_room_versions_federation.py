"""What a client does in a room works in every room version we support,
between two ranvier servers over loopback TLS.

Each version changes the rules the servers apply on both sides (event IDs,
redaction algorithm, where ``redacts`` sits, the create event of v12), so
the basics are walked through once per version: a room created at that
version, an invite over federation declined through the inviting server,
another accepted, a newcomer paging back through history sent before it
joined, and a redaction sent by the joined user of the other server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _client import Client, q
from _federation import eventually, two_servers

from ranvier.protocol.room_versions import SUPPORTED_ROOM_VERSIONS
from ranvier.testing.homeserver import TestUser


async def _membership(client: Client, user: TestUser, room_id: str, member: str) -> str | None:
    status, answer = await client.call(
        user, "GET", f"/rooms/{q(room_id)}/state/m.room.member/{q(member)}"
    )
    return answer.get("membership") if status == 200 else None


async def _timeline(client: Client, user: TestUser, room_id: str) -> list[dict[str, Any]]:
    answer = await client.ok(user, "GET", "/sync")
    events: list[dict[str, Any]] = answer["rooms"]["join"][room_id]["timeline"]["events"]
    return events


@pytest.mark.parametrize("version", sorted(SUPPORTED_ROOM_VERSIONS, key=int))
async def test_a_room_of_each_version_is_shared_across_servers(
    tmp_path: Path, version: str
) -> None:
    async with two_servers(tmp_path) as (_a, b, ca, cb, alice, bob):
        carol = await b.register_user("carol")
        room_id = await ca.create_room(
            alice,
            room_version=version,
            preset="private_chat",
            invite=[bob.user_id, carol.user_id],
        )
        create = (await _timeline(ca, alice, room_id))[0]
        assert create["type"] == "m.room.create"
        assert create["content"]["room_version"] == version

        # Both invites reach B; Carol declines hers through A.
        async def invited() -> bool:
            answer = await cb.ok(carol, "GET", "/sync")
            return room_id in answer["rooms"]["invite"]

        await eventually(invited, "Carol's invite on B")
        await cb.ok(carol, "POST", f"/rooms/{q(room_id)}/leave", {})

        async def declined() -> bool:
            return await _membership(ca, alice, room_id, carol.user_id) == "leave"

        await eventually(declined, "Carol's declined invite on A")
        assert (await cb.ok(carol, "GET", "/sync"))["rooms"]["invite"] == {}

        # History Bob was not there for, then his join through the invite.
        sent = []
        for n in range(8):
            answer = await ca.ok(
                alice,
                "PUT",
                f"/rooms/{q(room_id)}/send/m.room.message/m{n}",
                {"msgtype": "m.text", "body": f"message {n}"},
            )
            sent.append(answer["event_id"])
        await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
        # Bob's join, then Alice's messages newest first: the last of them,
        # which his join follows, comes before it however it reached B (it
        # may come after the rest, fetched as the join's prev event).
        expected = [("m.room.member", bob.user_id), *(("m.room.message", e) for e in sent[:-6:-1])]
        chunk: list[tuple[str, str]] = []

        async def paged_back() -> bool:
            messages = await cb.ok(
                bob, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": "6"}
            )
            chunk[:] = [
                (event["type"], event.get("state_key", event["event_id"]))
                for event in messages["chunk"]
            ]
            return chunk == expected

        await eventually(paged_back, f"B's history ending in Bob's join: {chunk}")

        # Bob's message and his redaction of it reach A, and apply there.
        said = await cb.ok(
            bob,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/hello",
            {"msgtype": "m.text", "body": "hello"},
        )
        redaction = await cb.ok(
            bob, "PUT", f"/rooms/{q(room_id)}/redact/{q(said['event_id'])}/gone", {}
        )

        async def redacted_on_a() -> bool:
            status, _ = await ca.call(
                alice, "GET", f"/rooms/{q(room_id)}/event/{q(redaction['event_id'])}"
            )
            return bool(status == 200)

        await eventually(redacted_on_a, "Bob's redaction on A")
        latest = await ca.ok(
            alice, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": "2"}
        )
        first, second = latest["chunk"]
        assert first["event_id"] == redaction["event_id"]
        if int(version) >= 11:
            assert first["content"]["redacts"] == said["event_id"]
        else:
            assert first["redacts"] == said["event_id"]
        assert second["event_id"] == said["event_id"]
        assert second["content"] == {}
        assert second["unsigned"]["redacted_because"]["event_id"] == redaction["event_id"]
