"""The client-server requests the end-to-end wake-up tests make of the
processes of a :class:`~_deployment.Deployment`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from _deployment import Deployment

from ranvier.protocol.signing import SigningKey, encode_verify_key_base64, sign_json
from ranvier.testing import Pki

PASSWORD = "a password long enough"
V3 = "/_matrix/client/v3"


async def register(http: httpx.AsyncClient, name: str) -> dict[str, str]:
    answer = await http.post(
        f"{V3}/register",
        json={"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    assert answer.status_code == 200, answer.text
    registered: dict[str, str] = answer.json()
    return registered


def auth(user: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['access_token']}"}


async def sync(
    http: httpx.AsyncClient, user: dict[str, str], since: str | None, timeout_ms: int = 0
) -> dict[str, Any]:
    params = {"timeout": str(timeout_ms)}
    if since is not None:
        params["since"] = since
    answer = await http.get(f"{V3}/sync", params=params, headers=auth(user))
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def device_keys(user: dict[str, str]) -> dict[str, Any]:
    """Signed keys of ``user``'s device, for ``/keys/upload``."""
    key = SigningKey(os.urandom(32), user["device_id"])
    unsigned = {
        "user_id": user["user_id"],
        "device_id": user["device_id"],
        "algorithms": ["m.megolm.v1.aes-sha2"],
        "keys": {f"ed25519:{user['device_id']}": encode_verify_key_base64(key.verify_key)},
    }
    return sign_json(unsigned, user["user_id"], key)


@asynccontextmanager
async def main_and_client_reader(
    tmp_path: Path,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """``ranvier serve`` and a client_reader worker as processes of their
    own, and a client of each one's client API: (worker, main). Their logs
    are printed when the body fails.
    """
    deployment = Deployment(tmp_path / "deployment", Pki.create(tmp_path))
    deployment.write_configs()
    try:
        await deployment.start("main")
        await deployment.start("client_reader")
        async with (
            httpx.AsyncClient(base_url=deployment.client_url, timeout=300) as worker,
            httpx.AsyncClient(base_url=deployment.main_client_url, timeout=300) as main,
        ):
            yield worker, main
    except BaseException:
        for name in ("main", "client_reader"):
            print(f"--- {name}\n{deployment.log(name)[-6000:]}")
        raise
    finally:
        deployment.stop_all()


async def share_a_room(
    worker: httpx.AsyncClient, main: httpx.AsyncClient
) -> tuple[dict[str, str], dict[str, str], str]:
    """Alice registered through the worker and Bob through the main
    process, both joined to a room of Alice's: (alice, bob, room ID).
    """
    alice = await register(worker, "alice")
    bob = await register(main, "bob")
    created = await worker.post(f"{V3}/createRoom", json={}, headers=auth(alice))
    assert created.status_code == 200, created.text
    room_id = created.json()["room_id"]
    invited = await worker.post(
        f"{V3}/rooms/{room_id}/invite", json={"user_id": bob["user_id"]}, headers=auth(alice)
    )
    assert invited.status_code == 200, invited.text
    joined = await main.post(f"{V3}/join/{room_id}", json={}, headers=auth(bob))
    assert joined.status_code == 200, joined.text
    return alice, bob, room_id
