"""Sliding sync through a client_reader worker: a connection's positions
live in the shared database, so a connection started on one process goes
on from the other (its writes made by the main process's storage actor),
a long-poll on the worker wakes for a message the main process took, a
longer timeline asked of the worker expands the room and the main process
remembers it, and the presence extension follows the main process's
presence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing
from _worker_configs import alice_on_both

from ranvier.api.sliding_sync import SLIDING_SYNC_PATH

_V3 = "/_matrix/client/v3"
_BODY = {"lists": {"all": {"timeline_limit": 5, "required_state": [["m.room.name", ""]]}}}


async def _slide(
    http: httpx.AsyncClient, pos: str | None = None, timeout_ms: int | None = None
) -> dict[str, Any]:
    params = {} if pos is None else {"pos": pos}
    if timeout_ms is not None:
        params["timeout"] = str(timeout_ms)
    response = await http.post(SLIDING_SYNC_PATH, json=_BODY, params=params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _bodies(answer: dict[str, Any], room_id: str) -> list[str]:
    return [
        event["content"]["body"]
        for event in answer["rooms"][room_id]["timeline"]
        if event["type"] == "m.room.message"
    ]


async def test_a_connection_goes_on_across_the_processes(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        server, alice = both.main.server, both.alice
        made = await both.on_main.post(f"{_V3}/createRoom", json={"name": "Both"})
        room_id = made.json()["room_id"]

        async def say(text: str) -> None:
            await server.send_event(
                alice.user_id, room_id, "m.room.message", {"msgtype": "m.text", "body": text}
            )

        first = await _slide(both.on_main)
        assert first["rooms"][room_id]["name"] == "Both"
        await say("to the worker")
        on_worker = await _slide(both.on_worker, first["pos"])
        assert "initial" not in on_worker["rooms"][room_id]
        assert _bodies(on_worker, room_id) == ["to the worker"]
        await say("back to the main process")
        on_main = await _slide(both.on_main, on_worker["pos"])
        assert _bodies(on_main, room_id) == ["back to the main process"]

        # A long-poll on the worker, woken by a message the main process took.
        answers: list[dict[str, Any]] = []

        async def poll() -> None:
            answers.append(await _slide(both.on_worker, on_main["pos"], timeout_ms=60_000))

        notifier = both.worker.stream_notifier
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                while notifier.waiting == 0:
                    await trio.testing.wait_all_tasks_blocked(cushion=0.01)
                assert answers == []
                await say("wake the worker")
        (answer,) = answers
        assert _bodies(answer, room_id) == ["wake the worker"]


async def test_the_presence_extension_on_the_worker(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        alice = both.alice
        status = f"{_V3}/presence/{alice.user_id}/status"
        # The worker's syncs leave presence alone: only the main process's
        # changes below move it.
        body = {"extensions": {"presence": {"enabled": True}}}
        params = {"set_presence": "offline"}

        async def slide(pos: str | None = None, timeout_ms: int = 0) -> dict[str, Any]:
            query = {**params, "timeout": str(timeout_ms), **({} if pos is None else {"pos": pos})}
            response = await both.on_worker.post(SLIDING_SYNC_PATH, json=body, params=query)
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            return answer

        def statuses(answer: dict[str, Any]) -> list[str | None]:
            return [
                event["content"].get("status_msg")
                for event in answer["extensions"]["presence"]["events"]
                if event["sender"] == alice.user_id
            ]

        made = await both.on_main.put(status, json={"presence": "unavailable", "status_msg": "a"})
        assert made.status_code == 200, made.text
        with trio.fail_after(30):
            # The worker's copy of presence follows the main process's.
            first = await slide()
            while statuses(first) != ["a"]:
                await trio.sleep(0.05)
                first = await slide()
        answers: list[dict[str, Any]] = []

        async def poll() -> None:
            answers.append(await slide(first["pos"], timeout_ms=60_000))

        notifier = both.worker.stream_notifier
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                while notifier.waiting == 0:
                    await trio.testing.wait_all_tasks_blocked(cushion=0.01)
                assert answers == []
                made = await both.on_main.put(
                    status, json={"presence": "online", "status_msg": "b"}
                )
                assert made.status_code == 200, made.text
        (answer,) = answers
        assert statuses(answer) == ["b"]
        assert answer["pos"] != first["pos"]


async def test_a_longer_timeline_on_the_worker_expands_the_room(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        server, alice = both.main.server, both.alice
        made = await both.on_main.post(f"{_V3}/createRoom", json={"name": "Both"})
        room_id = made.json()["room_id"]
        for text in ("one", "two", "three"):
            await server.send_event(
                alice.user_id, room_id, "m.room.message", {"msgtype": "m.text", "body": text}
            )
        state = [["m.room.name", ""]]
        short = {"lists": {"all": {"timeline_limit": 1, "required_state": state}}}
        longer = {
            **short,
            "room_subscriptions": {room_id: {"timeline_limit": 3, "required_state": state}},
        }
        first = await both.on_main.post(SLIDING_SYNC_PATH, json=short)
        assert _bodies(first.json(), room_id) == ["three"]
        pos = first.json()["pos"]
        on_worker = await both.on_worker.post(SLIDING_SYNC_PATH, json=longer, params={"pos": pos})
        room = on_worker.json()["rooms"][room_id]
        assert "initial" not in room
        assert room["expanded_timeline"] is True
        assert _bodies(on_worker.json(), room_id) == ["one", "two", "three"]
        assert room["required_state"] == []
        # The main process reads the longer limit the worker's answer stored.
        pos = on_worker.json()["pos"]
        back = await both.on_main.post(SLIDING_SYNC_PATH, json=longer, params={"pos": pos})
        assert back.json()["rooms"] == {}
