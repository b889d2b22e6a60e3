"""Server notices through a client_reader worker: sent by its admin API, the
room made, tagged and kept by writes of the main process's storage actor,
the user refused declining on the worker and joining on the main process,
and a repeated transaction sent once."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import httpx
from _worker_configs import main_and_worker_configs

from ranvier.config import ServerNoticesConfig
from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver

_V3 = "/_matrix/client/v3"
_SEND = "/_synapse/admin/v1/send_server_notice"
_SYSTEM = "@notices:localhost"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


async def _invites(http: httpx.AsyncClient) -> list[str]:
    synced = await http.get(f"{_V3}/sync")
    assert synced.status_code == 200, synced.text
    return list(synced.json()["rooms"].get("invite", {}))


async def test_server_notices_through_a_worker(tmp_path: Path) -> None:
    main_config, worker_config = main_and_worker_configs(
        tmp_path, server_notices=ServerNoticesConfig(system_mxid_localpart="notices")
    )
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        admin = await main.register_user("admin", admin=True)
        alice = await main.register_user("alice")
        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client(admin) as admin_on_worker,
            TestHomeserver(worker).client(alice) as alice_on_worker,
            main.client(alice) as alice_on_main,
        ):
            body = {
                "user_id": alice.user_id,
                "content": {"msgtype": "m.server_notice", "body": "hi"},
            }
            first = await admin_on_worker.put(f"{_SEND}/t1", json=body)
            assert first.status_code == 200, first.text
            again = await admin_on_worker.put(f"{_SEND}/t1", json=body)
            assert again.json() == first.json()

            (room_id,) = await _invites(alice_on_worker)
            assert (
                await main.server.storage.server_notices.get_server_notice_room(alice.user_id)
                == room_id
            )
            declined = await alice_on_worker.post(f"{_V3}/rooms/{_q(room_id)}/leave", json={})
            assert declined.status_code == 403
            assert declined.json()["errcode"] == "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM"
            tag = await alice_on_worker.get(
                f"{_V3}/user/{_q(alice.user_id)}/rooms/{_q(room_id)}/account_data/m.tag"
            )
            assert tag.json() == {"tags": {"m.server_notice": {}}}

            joined = await alice_on_main.post(f"{_V3}/rooms/{_q(room_id)}/join", json={})
            assert joined.status_code == 200, joined.text
            second = await admin_on_worker.post(_SEND, json=body)
            assert second.status_code == 200, second.text
            messages = await alice_on_worker.get(
                f"{_V3}/rooms/{_q(room_id)}/messages", params={"dir": "f", "limit": 50}
            )
            sent = [
                event["event_id"]
                for event in messages.json()["chunk"]
                if event["type"] == "m.room.message" and event["sender"] == _SYSTEM
            ]
            assert sent == [first.json()["event_id"], second.json()["event_id"]]
