"""A bulk redaction asked of a client_reader worker: the job runs there,
its record written through the main process's storage actor, and either
process answers its status."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import trio
from _worker_configs import alice_on_both

from ranvier.testing.homeserver import TestHomeserver

_V3 = "/_matrix/client/v3"
_ADMIN = "/_synapse/admin/v1"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


async def _status(client: httpx.AsyncClient, redact_id: str) -> dict[str, Any]:
    response = await client.get(f"{_ADMIN}/user/redact_status/{_q(redact_id)}")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _finished(client: httpx.AsyncClient, redact_id: str) -> None:
    """Return once the job is no longer active (polled, for at most 20 s)."""
    with trio.fail_after(20):
        while True:
            if (await _status(client, redact_id))["status"] != "active":
                return
            await trio.sleep(0.02)


async def test_a_job_asked_of_a_worker_runs_there_and_is_read_anywhere(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        root = await both.main.register_user("root", admin=True)
        bob = await both.main.register_user("bob")
        main = TestHomeserver(both.main.server)
        async with (
            TestHomeserver(both.worker).client(root) as root_on_worker,
            main.client(root) as root_on_main,
            main.client(bob) as bob_on_main,
        ):
            created = await both.on_main.post(f"{_V3}/createRoom", json={"preset": "public_chat"})
            room_id = created.json()["room_id"]
            joined = await bob_on_main.post(f"{_V3}/rooms/{_q(room_id)}/join", json={})
            assert joined.status_code == 200, joined.text
            said = []
            for n in range(3):
                sent = await bob_on_main.put(
                    f"{_V3}/rooms/{_q(room_id)}/send/m.room.message/t{n}",
                    json={"msgtype": "m.text", "body": f"spam {n}"},
                )
                said.append(sent.json()["event_id"])

            asked = await root_on_worker.post(
                f"{_ADMIN}/user/{_q(bob.user_id)}/redact", json={"rooms": [], "reason": "spam"}
            )
            assert asked.status_code == 200, asked.text
            redact_id = asked.json()["redact_id"]
            await _finished(root_on_main, redact_id)
            assert await _status(root_on_main, redact_id) == {
                "status": "complete",
                "failed_redactions": {},
            }
            for event_id in said:
                event = await both.on_main.get(f"{_V3}/rooms/{_q(room_id)}/event/{_q(event_id)}")
                because = event.json()["unsigned"]["redacted_because"]
                assert (because["sender"], because["content"]["reason"]) == (
                    both.alice.user_id,
                    "spam",
                )
            # The worker reads the finished job's record too.
            assert (await _status(root_on_worker, redact_id))["status"] == "complete"
