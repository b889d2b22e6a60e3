"""The admin's bulk redaction of another server's user: A's admin redacts
what Bob of B said in A's room, through the room's local admin, and B
serves Bob's events redacted too."""

from __future__ import annotations

from pathlib import Path

from _admin import admin_ok
from _client import q
from _federation import eventually, share_a_room, two_servers


async def test_a_remote_users_events_are_redacted_here_and_there(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, _b, ca, cb, alice, bob = servers
        room_id = await share_a_room(servers)
        admin = await a.register_user("root", admin=True)
        said = []
        for n in range(3):
            sent = await cb.ok(
                bob,
                "PUT",
                f"/rooms/{q(room_id)}/send/m.room.message/s{n}",
                {"msgtype": "m.text", "body": f"spam {n}"},
            )
            said.append(sent["event_id"])

        async def all_at_a() -> bool:
            for event_id in said:
                status, _ = await ca.call(alice, "GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")
                if status != 200:
                    return False
            return True

        await eventually(all_at_a, "Bob's messages at A")

        answer = await admin_ok(
            ca.http, admin, "POST", f"/v1/user/{q(bob.user_id)}/redact",
            {"rooms": [], "reason": "spam"},
        )  # fmt: skip
        status_path = f"/v1/user/redact_status/{q(answer['redact_id'])}"

        async def finished() -> bool:
            status = await admin_ok(ca.http, admin, "GET", status_path)
            return bool(status["status"] != "active")

        await eventually(finished, "the end of the job")
        status = await admin_ok(ca.http, admin, "GET", status_path)
        assert status == {"status": "complete", "failed_redactions": {}}

        for event_id in said:
            event = await ca.ok(alice, "GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")
            assert event["content"] == {}
            because = event["unsigned"]["redacted_because"]
            # The admin is not in the room: Alice, its creator, redacts.
            assert (because["sender"], because["content"]["reason"]) == (alice.user_id, "spam")

        async def redacted_at_b() -> bool:
            for event_id in said:
                event = await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")
                if event["content"] != {}:
                    return False
            return True

        await eventually(redacted_at_b, "the redactions at B")
