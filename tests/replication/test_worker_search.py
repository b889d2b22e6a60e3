"""Search through a client_reader worker: messages sent through the worker
are written by the main process's storage actor into the search index, and
both processes find them with POST /search."""

from __future__ import annotations

from pathlib import Path

from _worker_configs import alice_on_both

_V3 = "/_matrix/client/v3"


async def test_messages_sent_through_a_worker_are_found(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        on_worker, on_main = both.on_worker, both.on_main
        created = await on_worker.post(f"{_V3}/createRoom", json={"name": "Mars watch"})
        room_id = created.json()["room_id"]
        sent = await on_worker.put(
            f"{_V3}/rooms/{room_id}/send/m.room.message/t1",
            json={"msgtype": "m.text", "body": "martians seen over the lake"},
        )
        assert sent.status_code == 200, sent.text
        message = sent.json()["event_id"]
        found = {}
        for name, http in (("worker", on_worker), ("main", on_main)):
            answer = await http.post(
                f"{_V3}/search",
                json={
                    "search_categories": {
                        "room_events": {"search_term": "mar", "order_by": "recent"}
                    }
                },
            )
            assert answer.status_code == 200, answer.text
            found[name] = answer.json()["search_categories"]["room_events"]["results"]

    for results in found.values():
        assert [result["result"]["type"] for result in results] == [
            "m.room.message",
            "m.room.name",
        ]
        assert results[0]["result"]["event_id"] == message
        assert results[0]["result"]["room_id"] == room_id
