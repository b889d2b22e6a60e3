"""Typing and presence across real processes (``ranvier serve`` and two
``ranvier worker``), each with its own clock and memory, beside a remote
homeserver in the test: presence set through the client_reader is seen by
the main process's sync, fresh, and by the other server; typing from the
other server, taken by the federation_reader, is seen by a sync on the
client_reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from _deployment import Deployment

from ranvier.testing import Pki
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver

_PASSWORD = "a password long enough"
_NAMES = ("main", "federation_reader", "client_reader")


async def _register(http: httpx.AsyncClient, name: str) -> tuple[str, dict[str, str]]:
    answer = await http.post(
        "/_matrix/client/v3/register",
        json={"username": name, "password": _PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body["user_id"], {"Authorization": f"Bearer {body['access_token']}"}


async def _sync(
    http: httpx.AsyncClient, auth: dict[str, str], since: str | None, timeout_ms: int = 0
) -> dict[str, Any]:
    # Leaves presence as it is: the test sets it itself.
    params = {"timeout": str(timeout_ms), "set_presence": "offline"}
    if since is not None:
        params["since"] = since
    answer = await http.get("/_matrix/client/v3/sync", params=params, headers=auth)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def test_typing_and_presence_across_real_processes(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    deployment = Deployment(tmp_path / "deployment", pki)
    deployment.write_configs()
    try:
        for name in _NAMES:
            await deployment.start(name)
        async with (
            open_test_homeserver(tmp_path / "remote", federation=pki) as remote,
            httpx.AsyncClient(base_url=deployment.client_url, timeout=60) as reader,
            httpx.AsyncClient(base_url=deployment.main_client_url, timeout=60) as main,
        ):
            await _run(deployment, remote, reader, main)
    except BaseException:
        for name in _NAMES:
            print(f"--- {name}\n{deployment.log(name)[-6000:]}")
        raise
    finally:
        deployment.stop_all()


async def _run(
    deployment: Deployment,
    remote: TestHomeserver,
    reader: httpx.AsyncClient,
    main: httpx.AsyncClient,
) -> None:
    alice, auth = await _register(reader, "alice")
    created = await reader.post(
        "/_matrix/client/v3/createRoom", json={"preset": "public_chat"}, headers=auth
    )
    assert created.status_code == 200, created.text
    room_id: str = created.json()["room_id"]
    carol = await remote.register_user("carol")
    await remote.server.join_room(carol.user_id, room_id, [deployment.server_name])

    # Presence set through the client_reader: the main process's sync shows
    # it, active just now by the main process's own clock.
    status = {"presence": "online", "status_msg": "at my desk"}
    put = await reader.put(f"/_matrix/client/v3/presence/{alice}/status", json=status, headers=auth)
    assert put.status_code == 200, put.text
    synced = await _sync(main, auth, None)
    (said,) = [e["content"] for e in synced["presence"]["events"] if e["sender"] == alice]
    assert (said["presence"], said["status_msg"], said["currently_active"]) == (
        "online",
        "at my desk",
        True,
    )
    assert 0 <= said["last_active_ago"] < 30_000
    # ... and the other server hears of it.
    with trio.fail_after(30):
        while True:
            there = await remote.server.presence.get_presence(carol.user_id, alice)
            if there.get("status_msg") == "at my desk":
                break
            await trio.sleep(0.05)

    # Carol types on the other server: the federation_reader takes the EDU,
    # the main process holds it, a long-poll on the client_reader wakes.
    since = (await _sync(reader, auth, None))["next_batch"]
    woken: list[dict[str, Any]] = []

    async def long_poll() -> None:
        woken.append(await _sync(reader, auth, since, timeout_ms=60_000))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.sleep(0.5)
            assert woken == []
            await remote.server.typing_notices.set_typing(
                carol.user_id, carol.user_id, room_id, typing=True
            )
    ephemeral = woken[0]["rooms"]["join"][room_id]["ephemeral"]["events"]
    assert {"type": "m.typing", "content": {"user_ids": [carol.user_id]}} in ephemeral
