"""A main process and a client_reader as real processes: a /sync long-poll
on the worker wakes for a to-device message and for a key change that the
main process handled, carried by the replication stream."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import trio
from _deployment import Deployment

from ranvier.protocol.signing import SigningKey, encode_verify_key_base64, sign_json
from ranvier.testing import Pki

PASSWORD = "a password long enough"
_V3 = "/_matrix/client/v3"
# Far beyond what the test waits for a wake-up: a poll that only ended at
# its timeout fails the test.
_POLL_MS = 120_000
_WAIT_SECONDS = 60


async def _register(http: httpx.AsyncClient, name: str) -> dict[str, str]:
    answer = await http.post(
        f"{_V3}/register",
        json={"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    assert answer.status_code == 200, answer.text
    registered: dict[str, str] = answer.json()
    return registered


def _auth(user: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['access_token']}"}


async def _sync(
    http: httpx.AsyncClient, user: dict[str, str], since: str | None, timeout_ms: int = 0
) -> dict[str, Any]:
    params = {"timeout": str(timeout_ms)}
    if since is not None:
        params["since"] = since
    answer = await http.get(f"{_V3}/sync", params=params, headers=_auth(user))
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _device_keys(user: dict[str, str]) -> dict[str, Any]:
    key = SigningKey(os.urandom(32), user["device_id"])
    unsigned = {
        "user_id": user["user_id"],
        "device_id": user["device_id"],
        "algorithms": ["m.megolm.v1.aes-sha2"],
        "keys": {f"ed25519:{user['device_id']}": encode_verify_key_base64(key.verify_key)},
    }
    return sign_json(unsigned, user["user_id"], key)


async def test_a_long_poll_on_a_worker_wakes_for_messages_and_keys_the_main_process_took(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    deployment = Deployment(tmp_path / "deployment", pki)
    deployment.write_configs()
    try:
        await deployment.start("main")
        await deployment.start("client_reader")
        async with (
            httpx.AsyncClient(base_url=deployment.client_url, timeout=300) as worker,
            httpx.AsyncClient(base_url=deployment.main_client_url, timeout=300) as main,
        ):
            await _run(worker, main)
    except BaseException:
        for name in ("main", "client_reader"):
            print(f"--- {name}\n{deployment.log(name)[-6000:]}")
        raise
    finally:
        deployment.stop_all()


async def _run(worker: httpx.AsyncClient, main: httpx.AsyncClient) -> None:
    alice = await _register(worker, "alice")
    bob = await _register(main, "bob")
    created = await worker.post(f"{_V3}/createRoom", json={}, headers=_auth(alice))
    assert created.status_code == 200, created.text
    room_id = created.json()["room_id"]
    invited = await worker.post(
        f"{_V3}/rooms/{room_id}/invite", json={"user_id": bob["user_id"]}, headers=_auth(alice)
    )
    assert invited.status_code == 200, invited.text
    joined = await main.post(f"{_V3}/join/{room_id}", json={}, headers=_auth(bob))
    assert joined.status_code == 200, joined.text
    since = (await _sync(worker, alice, None))["next_batch"]
    # Settle past Bob's join, which the worker may hear of a little later.
    since = (await _sync(worker, alice, since))["next_batch"]

    # A to-device message Bob sends through the main process.
    woken: list[dict[str, Any]] = []

    async def long_poll() -> None:
        woken.append(await _sync(worker, alice, since, timeout_ms=_POLL_MS))

    message = {"messages": {alice["user_id"]: {alice["device_id"]: {"hello": "alice"}}}}
    with trio.fail_after(_WAIT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.sleep(0.5)
            assert woken == []
            sent = await main.put(f"{_V3}/sendToDevice/m.test/t1", json=message, headers=_auth(bob))
            assert sent.status_code == 200, sent.text
    assert woken[0]["to_device"]["events"] == [
        {"type": "m.test", "sender": bob["user_id"], "content": {"hello": "alice"}}
    ]
    since = woken[0]["next_batch"]

    # Bob's new keys, uploaded through the main process: Alice shares a room.
    woken.clear()
    upload = {"device_keys": _device_keys(bob)}
    with trio.fail_after(_WAIT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.sleep(0.5)
            assert woken == []
            uploaded = await main.post(f"{_V3}/keys/upload", json=upload, headers=_auth(bob))
            assert uploaded.status_code == 200, uploaded.text
    assert woken[0]["device_lists"]["changed"] == [bob["user_id"]]
    assert woken[0]["to_device"]["events"] == []
