"""Pushers through a client_reader worker: set there, written by the main
process, and served by the main process's push sender alone, so each
notification reaches the gateway once whichever process took the event;
and deleted with the session that set them when it is logged out or ended
by a password change through the worker."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import trio
from _worker_configs import main_and_worker_configs

from ranvier.config import PushConfig
from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver
from ranvier.testing.network import Pki
from ranvier.testing.push_gateway import FakePushGateway

_V3 = "/_matrix/client/v3"


async def test_an_event_sent_through_a_worker_is_pushed_once_by_the_main_process(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    gateway = FakePushGateway()
    main_config, worker_config = main_and_worker_configs(
        tmp_path, push=PushConfig(ca_file=pki.ca_file)
    )
    async with trio.open_nursery() as nursery:
        await gateway.start(nursery, pki)
        async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
            alice = await main.register_user("alice")
            bob = await main.register_user("bob")
            async with (
                open_worker(worker_config, "client_reader") as worker,
                TestHomeserver(worker).client(alice) as alice_http,
                TestHomeserver(worker).client(bob) as bob_http,
            ):
                created = await alice_http.post(f"{_V3}/createRoom", json={"preset": "public_chat"})
                room = urllib.parse.quote(created.json()["room_id"], safe="")
                assert (await bob_http.post(f"{_V3}/rooms/{room}/join", json={})).status_code == 200
                pusher = {
                    "kind": "http",
                    "app_id": "org.example.app",
                    "pushkey": "alice-phone",
                    "app_display_name": "Example",
                    "device_display_name": "Phone",
                    "lang": "en",
                    "data": {"url": gateway.url},
                }
                set_answer = await alice_http.post(f"{_V3}/pushers/set", json=pusher)
                assert set_answer.status_code == 200
                listed = (await alice_http.get(f"{_V3}/pushers")).json()["pushers"]
                assert [p["pushkey"] for p in listed] == ["alice-phone"]
                sent = await bob_http.put(
                    f"{_V3}/rooms/{room}/send/m.room.message/1",
                    json={"msgtype": "m.text", "body": "through the worker"},
                )
                with trio.fail_after(30):
                    notification = await gateway.next()
                assert notification["event_id"] == sent.json()["event_id"]
                # Every event the main process has is judged and sent: nothing
                # more comes, and the worker never ran a sender of its own.
                judged, notifier = main.server.push_sender, main.server.stream_notifier

                def behind() -> bool:
                    return judged.position < notifier.position.events or judged.waiting() > 0

                with trio.fail_after(30):
                    while behind():  # noqa: ASYNC110
                        await trio.sleep(0.01)
                assert gateway.received == []
                assert worker.push_sender.position == 0
        nursery.cancel_scope.cancel()


_PASSWORD = "alices password"


async def _as(
    http: httpx.AsyncClient, user: TestUser, method: str, path: str, body: dict[str, Any]
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {user.access_token}"}
    return await http.request(method, f"{_V3}{path}", json=body, headers=headers)


async def test_pushers_set_through_a_worker_end_with_their_sessions(tmp_path: Path) -> None:
    main_config, worker_config = main_and_worker_configs(tmp_path)
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        alice = await main.register_user("alice", password=_PASSWORD)
        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client() as http,
        ):
            sessions = [alice]
            for device_id in ("PHONE", "TABLET"):
                login = {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "alice"},
                    "password": _PASSWORD,
                    "device_id": device_id,
                }
                answer = (await http.post(f"{_V3}/login", json=login)).json()
                sessions.append(TestUser(alice.user_id, answer["access_token"], device_id))
            for user in sessions:
                pusher = {
                    "kind": "http",
                    "app_id": "org.example.app",
                    "pushkey": user.device_id,
                    "app_display_name": "Example",
                    "device_display_name": user.device_id,
                    "lang": "en",
                    "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
                }
                assert (await _as(http, user, "POST", "/pushers/set", pusher)).status_code == 200

            async def pushkeys() -> list[str]:
                pushers = await main.server.storage.pushers.pushers_of(alice.user_id)
                return sorted(pusher.pushkey for pusher in pushers)

            assert (await _as(http, sessions[1], "POST", "/logout", {})).status_code == 200
            assert await pushkeys() == sorted([alice.device_id, "TABLET"])

            change: dict[str, Any] = {"new_password": "alices next password"}
            asked = await _as(http, alice, "POST", "/account/password", change)
            auth = {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": _PASSWORD,
                "session": asked.json()["session"],
            }
            changed = await _as(http, alice, "POST", "/account/password", {**change, "auth": auth})
            assert changed.status_code == 200, changed.text
            assert await pushkeys() == [alice.device_id]
