"""Knocking through a client_reader worker: the knock is written by the
main process's storage actor and seen by the room's members there."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from _worker_configs import alice_on_both

from ranvier.replication.worker import WorkerServer
from ranvier.testing.homeserver import TestHomeserver

_V3 = "/_matrix/client/v3"


async def test_a_knock_taken_by_a_worker_reaches_the_room(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        bob = await both.main.register_user("bob")
        created = await both.on_main.post(
            f"{_V3}/createRoom",
            json={
                "room_version": "10",
                "initial_state": [
                    {
                        "type": "m.room.join_rules",
                        "state_key": "",
                        "content": {"join_rule": "knock"},
                    }
                ],
            },
        )
        assert created.status_code == 200, created.text
        room_id = created.json()["room_id"]
        worker: WorkerServer = both.worker
        async with TestHomeserver(worker).client(bob) as bob_on_worker:
            knocked = await bob_on_worker.post(
                f"{_V3}/knock/{urllib.parse.quote(room_id, safe='')}", json={"reason": "hi"}
            )
            assert knocked.status_code == 200, knocked.text
            assert knocked.json() == {"room_id": room_id}
        member = await both.on_main.get(
            f"{_V3}/rooms/{urllib.parse.quote(room_id, safe='')}/state/m.room.member/{bob.user_id}"
        )
        assert member.status_code == 200, member.text
        assert member.json()["membership"] == "knock"
        assert member.json()["reason"] == "hi"
