"""An admin logging in as a user through a client_reader worker: the token
the worker hands out is written by the main process's storage actor and
acts as the user on either process, Alice's own logout leaves it, and its
logout through the worker holds on the main process, which had it cached."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import httpx
from _worker_configs import alice_on_both

from ranvier.testing.homeserver import TestHomeserver

_V3 = "/_matrix/client/v3"
_ADMIN = "/_synapse/admin"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


async def _whoami(http: httpx.AsyncClient, token: str) -> tuple[int, str | None]:
    answer = await http.get(f"{_V3}/account/whoami", headers={"Authorization": f"Bearer {token}"})
    return answer.status_code, answer.json().get("user_id")


async def test_a_token_given_on_a_worker_acts_on_both_processes(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        alice = both.alice
        root = await both.main.register_user("root", admin=True)
        async with (
            TestHomeserver(both.worker).client(root) as root_on_worker,
            TestHomeserver(both.worker).client() as anonymous_worker,
            both.main.client() as anonymous_main,
        ):
            given = await root_on_worker.post(
                f"{_ADMIN}/v1/users/{_q(alice.user_id)}/login", json={}
            )
            assert given.status_code == 200, given.text
            token = given.json()["access_token"]
            # Looked up, and cached, on both.
            assert await _whoami(anonymous_main, token) == (200, alice.user_id)
            assert await _whoami(anonymous_worker, token) == (200, alice.user_id)

            created = await both.on_main.post(f"{_V3}/createRoom", json={"preset": "private_chat"})
            room_id = created.json()["room_id"]
            as_alice = {"Authorization": f"Bearer {token}"}
            sent = await anonymous_worker.put(
                f"{_V3}/rooms/{_q(room_id)}/send/m.room.message/t1",
                json={"msgtype": "m.text", "body": "from the worker"},
                headers=as_alice,
            )
            assert sent.status_code == 200, sent.text
            event = await both.on_main.get(
                f"{_V3}/rooms/{_q(room_id)}/event/{_q(sent.json()['event_id'])}"
            )
            assert event.json()["sender"] == alice.user_id

            # Alice logs out everywhere on the main process: not the admin.
            assert (await both.on_main.post(f"{_V3}/logout/all", json={})).status_code == 200
            assert (await _whoami(anonymous_worker, alice.access_token))[0] == 401
            assert await _whoami(anonymous_worker, token) == (200, alice.user_id)
            assert await _whoami(anonymous_main, token) == (200, alice.user_id)

            # Logged out through the worker: gone on the main process too.
            out = await anonymous_worker.post(f"{_V3}/logout", json={}, headers=as_alice)
            assert out.status_code == 200, out.text
            assert (await _whoami(anonymous_main, token))[0] == 401
            assert (await _whoami(anonymous_worker, token))[0] == 401
