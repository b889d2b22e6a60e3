"""A server our federation_sender worker backs off from for an hour signs
a request of ours, at the main process or at a federation_reader, each a
real process: the worker hears of it over replication and delivers what
the server missed at once, not an hour later."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from _backoff import (
    RETRY_SECONDS,
    backed_off_ms,
    backoff_cleared,
    retry_interval_ms,
    room_with_remote_member,
    wait_delivered,
)
from _client_api import auth, register
from _deployment import Deployment

from ranvier.testing import Pki
from ranvier.testing.homeserver import TestHomeserver, config_for_tests, open_test_homeserver


async def _signs_until_delivered(
    remote: TestHomeserver, deployment: Deployment, destination: str, user_id: str
) -> None:
    """The remote signs a request of ours (a profile query) every second
    and a half until the worker has delivered to it, at most 30 times.

    Its first signed request may come while it is still starting: its
    resync asks us for the room's state before its listener is up, and the
    worker's retry then fails to connect. Each request after that is heard
    from again, once the second after that failure has passed.
    """
    for _ in range(30):
        if retry_interval_ms(deployment, destination) is None:
            return
        await remote.server.federation_client.get_json(
            deployment.server_name,
            "/_matrix/federation/v1/query/profile",
            query={"user_id": user_id},
        )
        await trio.sleep(1.5)


async def _send(http: httpx.AsyncClient, user: dict[str, str], room_id: str, body: str) -> str:
    answer = await http.put(
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{body.replace(' ', '-')}",
        json={"msgtype": "m.text", "body": body},
        headers=auth(user),
    )
    assert answer.status_code == 200, answer.text
    event_id: str = answer.json()["event_id"]
    return event_id


@pytest.mark.parametrize("reached", ["main", "federation_reader"])
async def test_a_destination_backing_off_that_signs_a_request_is_delivered_to_at_once(
    tmp_path: Path, reached: str
) -> None:
    pki = Pki.create(tmp_path)
    deployment = Deployment(
        tmp_path / "deployment",
        pki,
        federation_sender=True,
        main_federation=reached == "main",
        retry_seconds=RETRY_SECONDS,
    )
    deployment.write_configs()
    names = ["main", "client_reader", "federation_sender"]
    if reached == "federation_reader":
        names.append("federation_reader")
    # The same name, port, key and database each time the remote starts.
    remote_config = config_for_tests(tmp_path / "remote", federation=pki)
    destination = remote_config.server_name
    async with (
        deployment.running(names),
        httpx.AsyncClient(base_url=deployment.client_url, timeout=60) as http,
    ):
        alice = await register(http, "alice")
        room_id, bob_id = await room_with_remote_member(
            deployment, http, alice, tmp_path / "remote", remote_config, resynced=False
        )

        # The remote is down: the worker fails to deliver and backs off.
        missed = await _send(http, alice, room_id, "while you were down")
        assert await backed_off_ms(deployment, destination) >= RETRY_SECONDS * 1000 / 2

        async with open_test_homeserver(tmp_path / "remote", config=remote_config) as remote:
            assert await remote.server.storage.get_events([missed]) == {}
            # Bob speaks: a transaction signed by the remote reaches us.
            await remote.server.send_event(
                bob_id, room_id, "m.room.message", {"msgtype": "m.text", "body": "back"}
            )
            await _signs_until_delivered(remote, deployment, destination, alice["user_id"])
            await wait_delivered(remote, missed)
        # Delivered: the stored backoff is gone.
        await backoff_cleared(deployment, destination)
        assert f"{destination} was heard from" in deployment.log("federation_sender")
