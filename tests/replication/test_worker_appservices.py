"""Application services through a client_reader worker: the service's
as_token registers a user of its namespace there and acts as it, the
writes go through the main process, and the main process's sender alone
pushes the events to the service, once."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import trio
from _worker_configs import alice_on_both

from ranvier.testing.appservice import FakeAppService

_V3 = "/_matrix/client/v3"
_AS_TOKEN = "as-token-worker-bridge"
_HS_TOKEN = "hs-token-worker-bridge"


def _registration(url: str) -> str:
    return f"""\
id: bridge
url: "{url}"
as_token: {_AS_TOKEN}
hs_token: {_HS_TOKEN}
sender_localpart: _br_bot
namespaces:
  users:
    - exclusive: true
      regex: "@_br_.*"
"""


async def test_a_service_acts_through_a_worker_and_hears_from_the_main_process(
    tmp_path: Path,
) -> None:
    service = FakeAppService(hs_token=_HS_TOKEN)
    async with trio.open_nursery() as nursery:
        url = await service.start(nursery)
        registration = tmp_path / "bridge.yaml"
        registration.write_text(_registration(url), encoding="utf-8")
        async with alice_on_both(tmp_path, app_service_config_files=(registration,)) as both:
            as_service = {"Authorization": f"Bearer {_AS_TOKEN}"}
            registered = await both.on_worker.post(
                f"{_V3}/register",
                json={
                    "type": "m.login.application_service",
                    "username": "_br_ghost",
                    "inhibit_login": True,
                },
                headers=as_service,
            )
            assert registered.status_code == 200, registered.text
            ghost = registered.json()["user_id"]
            assert await both.main.server.accounts.user_exists(ghost)

            created = await both.on_main.post(f"{_V3}/createRoom", json={"preset": "public_chat"})
            room_id = created.json()["room_id"]
            room = urllib.parse.quote(room_id, safe="")
            joined = await both.on_worker.post(
                f"{_V3}/rooms/{room}/join", json={}, params={"user_id": ghost}, headers=as_service
            )
            assert joined.status_code == 200, joined.text
            sent = await both.on_worker.put(
                f"{_V3}/rooms/{room}/send/m.room.message/w1",
                json={"msgtype": "m.text", "body": "from the bridge, through the worker"},
                params={"user_id": ghost},
                headers=as_service,
            )
            assert sent.status_code == 200, sent.text
            event_id = sent.json()["event_id"]

            def ids() -> list[str]:
                return [event["event_id"] for event in service.events()]

            with trio.fail_after(20):
                await service.wait_for(lambda: event_id in ids())
            (event,) = [e for e in service.events() if e["event_id"] == event_id]
            assert event["sender"] == ghost
            assert ids().count(event_id) == 1
            # The worker follows no service itself.
            assert both.worker.appservice_sender.positions == {}
        nursery.cancel_scope.cancel()
