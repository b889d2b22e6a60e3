"""A room upgraded through a client_reader worker: the new room, the moved
alias and room list entry and the tombstone are written by the main
process, which serves them as the worker does."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import httpx
import trio
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


async def test_one_upgrade_asked_of_the_worker_and_the_main_process_at_once(
    tmp_path: Path,
) -> None:
    async with alice_on_both(tmp_path) as both:
        on_worker, on_main = both.on_worker, both.on_main
        created = await on_main.post(f"{_V3}/createRoom", json={"room_version": "10"})
        old = created.json()["room_id"]
        answers: dict[str, httpx.Response] = {}

        async def upgrade(name: str, client: httpx.AsyncClient) -> None:
            answers[name] = await client.post(
                f"{_V3}/rooms/{_q(old)}/upgrade", json={"new_version": "11"}
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upgrade, "worker", on_worker)
            nursery.start_soon(upgrade, "main", on_main)
        joined = await on_main.get(f"{_V3}/joined_rooms")
        tombstone = await on_main.get(f"{_V3}/rooms/{_q(old)}/state/m.room.tombstone")

    assert answers["worker"].status_code == answers["main"].status_code == 200
    new = answers["main"].json()["replacement_room"]
    assert answers["worker"].json()["replacement_room"] == new
    assert tombstone.json()["replacement_room"] == new
    # The old room and one new one: no second replacement was made.
    assert sorted(joined.json()["joined_rooms"]) == sorted([old, new])
