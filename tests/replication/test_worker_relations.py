"""Relations through a client_reader worker: events sent through the worker
are written by the main process's storage actor with their relation rows,
and both processes serve /relations, /threads and /context from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _worker_configs import alice_on_both

_V1 = "/_matrix/client/v1"
_V3 = "/_matrix/client/v3"


async def test_relations_written_through_a_worker(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        on_worker, on_main = both.on_worker, both.on_main
        created = await on_worker.post(f"{_V3}/createRoom", json={})
        room_id = created.json()["room_id"]

        async def send(txn: str, content: dict[str, Any]) -> str:
            sent = await on_worker.put(
                f"{_V3}/rooms/{room_id}/send/m.room.message/{txn}", json=content
            )
            assert sent.status_code == 200, sent.text
            event_id: str = sent.json()["event_id"]
            return event_id

        root = await send("t1", {"msgtype": "m.text", "body": "root"})
        reply = await send(
            "t2",
            {
                "msgtype": "m.text",
                "body": "reply",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root},
            },
        )
        answers = {}
        for name, http in (("worker", on_worker), ("main", on_main)):
            relations = await http.get(f"{_V1}/rooms/{room_id}/relations/{root}")
            threads = await http.get(f"{_V1}/rooms/{room_id}/threads")
            context = await http.get(f"{_V3}/rooms/{room_id}/context/{root}")
            answers[name] = (relations.json(), threads.json(), context.json())

    for relations, threads, context in answers.values():
        assert [event["event_id"] for event in relations["chunk"]] == [reply]
        assert [event["event_id"] for event in threads["chunk"]] == [root]
        thread = context["event"]["unsigned"]["m.relations"]["m.thread"]
        assert thread["latest_event"]["event_id"] == reply
