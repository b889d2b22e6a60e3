"""Space hierarchies through a client_reader worker: a space built through
the worker is walked by both processes, and a page token one process gives
is continued by the other (the token holds all a page needs)."""

from __future__ import annotations

from pathlib import Path

from _worker_configs import alice_on_both

_V1 = "/_matrix/client/v1"
_V3 = "/_matrix/client/v3"


async def test_a_hierarchy_paged_across_the_worker_and_the_main_process(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        main, on_worker, on_main = both.main, both.on_worker, both.on_main

        async def create(body: dict[str, object]) -> str:
            created = await on_worker.post(f"{_V3}/createRoom", json=body)
            assert created.status_code == 200, created.text
            room_id: str = created.json()["room_id"]
            return room_id

        space = await create({"creation_content": {"type": "m.space"}, "name": "Space"})
        children = [await create({"name": f"Room {n}"}) for n in range(3)]
        for order, child in zip("abc", children, strict=True):
            linked = await on_worker.put(
                f"{_V3}/rooms/{space}/state/m.space.child/{child}",
                json={"via": [main.server_name], "order": order},
            )
            assert linked.status_code == 200, linked.text
        walked: dict[str, list[str]] = {}
        for first, then in (("worker", "main"), ("main", "worker")):
            clients = {"worker": on_worker, "main": on_main}
            found: list[str] = []
            token = None
            for turn in range(4):
                http = clients[first if turn % 2 == 0 else then]
                params = {"limit": "1", **({"from": token} if token else {})}
                page = await http.get(f"{_V1}/rooms/{space}/hierarchy", params=params)
                assert page.status_code == 200, page.text
                found += [room["room_id"] for room in page.json()["rooms"]]
                token = page.json().get("next_batch")
            assert token is None
            walked[first] = found
    assert walked["worker"] == walked["main"] == [space, *children]
