"""Jump to date through a client_reader worker: the worker reads the
events the main process wrote (its own sends among them) from the shared
database's timestamp index, and answers as the main process does."""

from __future__ import annotations

from pathlib import Path

from _worker_configs import alice_on_both

_V1 = "/_matrix/client/v1"
_V3 = "/_matrix/client/v3"


async def test_a_worker_finds_what_the_main_process_finds(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        on_worker, on_main = both.on_worker, both.on_main
        created = await on_main.post(f"{_V3}/createRoom", json={})
        room_id = created.json()["room_id"]
        sent = []
        for txn, http in (("t1", on_main), ("t2", on_worker)):
            answer = await http.put(
                f"{_V3}/rooms/{room_id}/send/m.room.message/{txn}", json={"body": txn}
            )
            assert answer.status_code == 200, answer.text
            sent.append(answer.json()["event_id"])
        events = {}
        for event_id in sent:
            event = await on_main.get(f"{_V3}/rooms/{room_id}/event/{event_id}")
            events[event_id] = event.json()["origin_server_ts"]
        last = sent[-1]

        answers = {}
        for name, http in (("worker", on_worker), ("main", on_main)):
            path = f"{_V1}/rooms/{room_id}/timestamp_to_event"
            backwards = await http.get(path, params={"ts": events[last] + 1, "dir": "b"})
            after = await http.get(path, params={"ts": events[last] + 1, "dir": "f"})
            answers[name] = (backwards.status_code, backwards.json(), after.status_code)

    for backwards_status, backwards, after_status in answers.values():
        assert backwards_status == 200
        assert backwards == {"event_id": last, "origin_server_ts": events[last]}
        assert after_status == 404
