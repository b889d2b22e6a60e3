"""An admin resets the backoff of a server our federation_sender worker
gave an hour, through a client_reader, each a real process: the main
process passes the wake down its stream to the worker, which delivers what
the server missed at once, not an hour later."""

from __future__ import annotations

import sqlite3
import urllib.parse
from contextlib import closing
from pathlib import Path

import httpx
from _backoff import (
    RETRY_SECONDS,
    backed_off_ms,
    backoff_cleared,
    room_with_remote_member,
    wait_delivered,
)
from _client_api import PASSWORD, V3, auth, register
from _deployment import Deployment

from ranvier.testing import Pki
from ranvier.testing.homeserver import config_for_tests, open_test_homeserver

DESTINATIONS = "/_synapse/admin/v1/federation/destinations"


async def _admin(deployment: Deployment, http: httpx.AsyncClient) -> dict[str, str]:
    """A server admin: registered, flagged in the database, then logged in
    afresh so that no token of it was looked up before the flag."""
    registered = await register(http, "root")
    with closing(sqlite3.connect(deployment.database)) as conn, conn:
        conn.execute("UPDATE users SET admin = 1 WHERE user_id = ?", (registered["user_id"],))
    login = await http.post(
        f"{V3}/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "root"},
            "password": PASSWORD,
        },
    )
    assert login.status_code == 200, login.text
    logged_in: dict[str, str] = login.json()
    return logged_in


async def test_a_reset_at_a_client_reader_wakes_the_federation_sender_worker(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    deployment = Deployment(
        tmp_path / "deployment", pki, federation_sender=True, retry_seconds=RETRY_SECONDS
    )
    deployment.write_configs()
    names = ["main", "client_reader", "federation_sender", "federation_reader"]
    # The same name, port, key and database each time the remote starts.
    remote_config = config_for_tests(tmp_path / "remote", federation=pki)
    destination = remote_config.server_name
    path = f"{DESTINATIONS}/{urllib.parse.quote(destination, safe='')}"
    async with (
        deployment.running(names),
        httpx.AsyncClient(base_url=deployment.client_url, timeout=60) as http,
    ):
        alice = await register(http, "alice")
        root = await _admin(deployment, http)
        # Resynced, so that the remote asks nothing of us when it starts
        # again: only the reset can wake the worker.
        room_id, _ = await room_with_remote_member(
            deployment, http, alice, tmp_path / "remote", remote_config, resynced=True
        )

        # The remote is down: the worker fails to deliver and backs off.
        answer = await http.put(
            f"{V3}/rooms/{room_id}/send/m.room.message/missed",
            json={"msgtype": "m.text", "body": "while you were down"},
            headers=auth(alice),
        )
        assert answer.status_code == 200, answer.text
        missed: str = answer.json()["event_id"]
        interval = await backed_off_ms(deployment, destination)
        shown = await http.get(path, headers=auth(root))
        assert shown.status_code == 200, shown.text
        assert shown.json()["retry_interval"] == interval >= RETRY_SECONDS * 1000 * 0.8

        async with open_test_homeserver(tmp_path / "remote", config=remote_config) as remote:
            reset = await http.post(f"{path}/reset_connection", json={}, headers=auth(root))
            assert (reset.status_code, reset.json()) == (200, {})
            await wait_delivered(remote, missed)
        await backoff_cleared(deployment, destination)
        assert f"{destination}: its backoff was cleared" in deployment.log("federation_sender")
