"""Room previews through a client_reader worker: a user never in a
world-readable room previews it on the worker, and the worker's ``/events``
long-poll wakes for a message the main process took."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import trio
import trio.testing
from _worker_configs import alice_on_both

from ranvier.testing.homeserver import TestHomeserver

_V3 = "/_matrix/client/v3"


async def test_a_preview_on_the_worker_follows_the_main_process(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        server, alice = both.main.server, both.alice
        made = await both.on_main.post(
            f"{_V3}/createRoom",
            json={
                "preset": "public_chat",
                "initial_state": [
                    {
                        "type": "m.room.history_visibility",
                        "state_key": "",
                        "content": {"history_visibility": "world_readable"},
                    }
                ],
            },
        )
        room_id = made.json()["room_id"]

        async def say(text: str) -> str:
            return await server.send_event(
                alice.user_id, room_id, "m.room.message", {"msgtype": "m.text", "body": text}
            )

        await say("before")
        carol = await both.main.register_user("carol")
        async with TestHomeserver(both.worker).client(carol) as carol_on_worker:
            path = f"{_V3}/rooms/{urllib.parse.quote(room_id, safe='')}/initialSync"
            preview = (await carol_on_worker.get(path)).json()
            chunk = preview["messages"]["chunk"]
            # Messages apart, the preview shows the change of history
            # visibility that opened the room to it, which it allows itself.
            assert [e["content"]["body"] for e in chunk if e["type"] == "m.room.message"] == [
                "before"
            ]
            assert {e["type"] for e in chunk} == {"m.room.message", "m.room.history_visibility"}
            end = preview["messages"]["end"]
            answers: list[dict[str, Any]] = []

            async def poll() -> None:
                response = await carol_on_worker.get(
                    f"{_V3}/events", params={"room_id": room_id, "from": end, "timeout": 60_000}
                )
                assert response.status_code == 200, response.text
                answers.append(response.json())

            notifier = both.worker.stream_notifier
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(poll)
                    while notifier.waiting == 0:
                        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
                    assert answers == []
                    sent = await say("wake the worker")
        (answer,) = answers
        assert [event["event_id"] for event in answer["chunk"]] == [sent]
        assert answer["start"] == end
