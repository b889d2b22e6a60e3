"""A room deleted through a client_reader worker's admin API is purged by
the main process's storage actor, its block kept."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from _worker_configs import alice_on_both

from ranvier.testing.homeserver import TestHomeserver

_V3 = "/_matrix/client/v3"
_ADMIN = "/_synapse/admin"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


async def test_a_room_deleted_on_a_worker_is_purged_by_the_main_process(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        root = await both.main.register_user("root", admin=True)
        async with (
            TestHomeserver(both.worker).client(root) as root_on_worker,
            TestHomeserver(both.main.server).client(root) as root_on_main,
        ):
            created = await both.on_main.post(f"{_V3}/createRoom", json={"preset": "public_chat"})
            room_id = created.json()["room_id"]
            before = await root_on_main.get(f"{_ADMIN}/v1/rooms/{_q(room_id)}")
            assert before.status_code == 200, before.text

            deleted = await root_on_worker.request(
                "DELETE", f"{_ADMIN}/v2/rooms/{_q(room_id)}", json={"block": True}
            )
            assert deleted.status_code == 200, deleted.text
            delete_id = deleted.json()["delete_id"]
            status = await root_on_worker.get(f"{_ADMIN}/v2/rooms/delete_status/{delete_id}")
            assert status.json()["status"] == "complete", status.text

            gone = await root_on_main.get(f"{_ADMIN}/v1/rooms/{_q(room_id)}")
            assert (gone.status_code, gone.json()["errcode"]) == (404, "M_NOT_FOUND")
            assert await both.main.server.storage.get_room_version(room_id) is None
            block = await root_on_main.get(f"{_ADMIN}/v1/rooms/{_q(room_id)}/block")
            assert block.json() == {"block": True, "user_id": root.user_id}
