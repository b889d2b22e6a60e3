"""A room upgraded through a client_reader worker: the new room, the moved
alias and room list entry and the tombstone are written by the main
process, which serves them as the worker does."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from _worker_configs import alice_on_both

_V3 = "/_matrix/client/v3"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


async def test_a_room_upgraded_through_a_worker(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        main, on_worker, on_main = both.main, both.on_worker, both.on_main
        created = await on_main.post(
            f"{_V3}/createRoom",
            json={
                "room_version": "10",
                "visibility": "public",
                "room_alias_name": "hall",
                "name": "Hall",
            },
        )
        old = created.json()["room_id"]
        upgraded = await on_worker.post(
            f"{_V3}/rooms/{_q(old)}/upgrade", json={"new_version": "12"}
        )
        assert upgraded.status_code == 200, upgraded.text
        new = upgraded.json()["replacement_room"]

        alias = await on_main.get(f"{_V3}/directory/room/{_q('#hall:' + main.server_name)}")
        listed = await on_main.get(f"{_V3}/publicRooms")
        tombstone = await on_main.get(f"{_V3}/rooms/{_q(old)}/state/m.room.tombstone")
        create = await on_main.get(f"{_V3}/rooms/{_q(new)}/state/m.room.create")
        name = await on_worker.get(f"{_V3}/rooms/{_q(new)}/state/m.room.name")

    assert alias.json()["room_id"] == new
    assert [room["room_id"] for room in listed.json()["chunk"]] == [new]
    assert tombstone.json()["replacement_room"] == new
    assert create.json()["predecessor"] == {"room_id": old}
    assert name.json() == {"name": "Hall"}
