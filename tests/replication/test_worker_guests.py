"""Guests through a client_reader worker: the guest flag comes with the
token's lookup there too, and an upgrade made on the main process reaches
the token the worker had cached."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import trio
from _worker_configs import alice_on_both

from ranvier.config import RegistrationConfig
from ranvier.testing.homeserver import TestHomeserver, config_for_tests

_V3 = "/_matrix/client/v3"
_GUESTS_ROOM = {
    "preset": "public_chat",
    "initial_state": [
        {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}
    ],
}


def _registration(tmp_path: Path) -> RegistrationConfig:
    tests = config_for_tests(tmp_path / "defaults").registration
    return msgspec.structs.replace(tests, enabled=True, allow_guest_access=True)


async def _register_guest(client: httpx.AsyncClient) -> dict[str, str]:
    registered = await client.post(f"{_V3}/register?kind=guest", json={})
    assert registered.status_code == 200, registered.text
    guest: dict[str, str] = registered.json()
    return guest


async def test_a_guest_of_the_worker_is_held_to_the_guest_routes(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path, registration=_registration(tmp_path)) as both:
        worker = TestHomeserver(both.worker)
        async with worker.client() as anonymous:
            guest = await _register_guest(anonymous)
        room_id = (await both.on_main.post(f"{_V3}/createRoom", json=_GUESTS_ROOM)).json()[
            "room_id"
        ]
        auth = {"Authorization": f"Bearer {guest['access_token']}"}
        async with worker.client(headers=auth) as on_worker:
            whoami = await on_worker.get(f"{_V3}/account/whoami")
            assert whoami.json()["is_guest"] is True, whoami.text
            refused = await on_worker.post(f"{_V3}/createRoom", json={})
            assert refused.status_code == 403
            assert refused.json()["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
            joined = await on_worker.post(f"{_V3}/rooms/{room_id}/join", json={})
            assert joined.status_code == 200, joined.text

            localpart = guest["user_id"][1:].partition(":")[0]
            upgraded = await _upgrade_on_main(both.on_main, guest, localpart)
            assert upgraded["user_id"] == guest["user_id"]
            for _ in range(500):
                whoami = await on_worker.get(f"{_V3}/account/whoami")
                if whoami.json().get("is_guest") is False:
                    break
                await trio.sleep(0.02)
            assert whoami.json()["is_guest"] is False, whoami.text
            made = await on_worker.post(f"{_V3}/createRoom", json={})
            assert made.status_code == 200, made.text


async def _upgrade_on_main(
    on_main: httpx.AsyncClient, guest: dict[str, str], localpart: str
) -> dict[str, str]:
    answer = await on_main.post(
        f"{_V3}/register",
        json={
            "guest_access_token": guest["access_token"],
            "username": localpart,
            "password": "a long passphrase",
            "auth": {"type": "m.login.dummy"},
        },
    )
    assert answer.status_code == 200, answer.text
    upgraded: dict[str, str] = answer.json()
    return upgraded


async def test_an_upgrade_on_the_worker_claims_its_session(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path, registration=_registration(tmp_path)) as both:
        worker = TestHomeserver(both.worker)
        async with worker.client() as anonymous:
            guest = await _register_guest(anonymous)
            body = {
                "guest_access_token": guest["access_token"],
                "username": guest["user_id"][1:].partition(":")[0],
                "password": "a long passphrase",
            }
            challenge = await anonymous.post(f"{_V3}/register", json=body)
            assert challenge.status_code == 401, challenge.text
            auth = {"type": "m.login.dummy", "session": challenge.json()["session"]}
            answers = [
                await anonymous.post(f"{_V3}/register", json={**body, "auth": auth})
                for _ in range(2)
            ]
        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert answer.json()["user_id"] == guest["user_id"]
        tokens = {answer.json()["access_token"] for answer in answers}
        assert len(tokens) == 2
        # The second answer's login is a full account's, on the main process too.
        async with both.main.client(
            headers={"Authorization": f"Bearer {answers[1].json()['access_token']}"}
        ) as on_main:
            whoami = await on_main.get(f"{_V3}/account/whoami")
            assert whoami.json()["is_guest"] is False, whoami.text
