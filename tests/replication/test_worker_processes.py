"""A main process, a federation_reader and a client_reader, each a real
process (``ranvier serve`` and ``ranvier worker``) on loopback, beside a
remote homeserver in the test: client traffic through the client_reader,
another server's events through the federation_reader, every event written
once by the main process, a long-poll on one worker woken by an event that
came in through the other, and the main process killed with SIGKILL in the
middle of it all and started again, losing and duplicating nothing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import trio
from _deployment import SECRET, Deployment

from ranvier.testing import Pki
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver

PASSWORD = "a password long enough"


async def _register(http: httpx.AsyncClient, name: str) -> dict[str, str]:
    answer = await http.post(
        "/_matrix/client/v3/register",
        json={"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


async def _send(
    http: httpx.AsyncClient, auth: dict[str, str], room_id: str, body: str, txn_id: str
) -> str:
    """Send as a client does: the same transaction ID until an answer comes."""
    path = f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn_id}"
    while True:
        try:
            answer = await http.put(path, json={"msgtype": "m.text", "body": body}, headers=auth)
        except httpx.TransportError:
            await trio.sleep(0.1)
            continue
        if answer.status_code == 200:
            event_id: str = answer.json()["event_id"]
            return event_id
        assert answer.status_code >= 500 or answer.status_code == 429, answer.text
        await trio.sleep(0.1)


async def _sync(
    http: httpx.AsyncClient, auth: dict[str, str], since: str | None, timeout_ms: int = 0
) -> dict[str, Any]:
    # Timelines long enough to hold every message of the test.
    params = {"timeout": str(timeout_ms), "filter": '{"room": {"timeline": {"limit": 100}}}'}
    if since is not None:
        params["since"] = since
    answer = await http.get("/_matrix/client/v3/sync", params=params, headers=auth)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _timeline_bodies(sync: dict[str, Any], room_id: str) -> list[str]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    return [
        event["content"].get("body", "")
        for event in room.get("timeline", {}).get("events", [])
        if event["type"] == "m.room.message"
    ]


async def _wait_for_bodies(deployment: Deployment, room_id: str, wanted: set[str]) -> None:
    # Polled: the database is another process's.
    for _ in range(600):
        if wanted <= {body for _, body in deployment.room_messages(room_id)}:
            return
        await trio.sleep(0.1)
    raise AssertionError(f"{wanted} did not all arrive in a minute")


async def test_a_main_process_and_two_workers(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    deployment = Deployment(tmp_path / "deployment", pki)
    deployment.write_configs()
    try:
        await deployment.start("main")
        await deployment.start("federation_reader")
        await deployment.start("client_reader")
        async with (
            open_test_homeserver(tmp_path / "remote", federation=pki) as remote,
            httpx.AsyncClient(base_url=deployment.client_url, timeout=60) as http,
        ):
            await _run(deployment, remote, http)
    except BaseException:
        for name in ("main", "federation_reader", "client_reader"):
            print(f"--- {name}\n{deployment.log(name)[-6000:]}")
        raise
    finally:
        deployment.stop_all()


async def _run(deployment: Deployment, remote: TestHomeserver, http: httpx.AsyncClient) -> None:
    # A client through the client_reader: register, create, send, sync.
    alice = await _register(http, "alice")
    created = await http.post(
        "/_matrix/client/v3/createRoom", json={"preset": "public_chat"}, headers=alice
    )
    assert created.status_code == 200, created.text
    room_id: str = created.json()["room_id"]
    first = await _send(http, alice, room_id, "hello from the client_reader", "t0")
    assert deployment.event_rows(first) == 1
    synced = await _sync(http, alice, None)
    assert "hello from the client_reader" in _timeline_bodies(synced, room_id)

    # Another server's user joins through the federation_reader.
    bob = await remote.register_user("bob")
    await remote.server.join_room(bob.user_id, room_id, [deployment.server_name])
    since = synced["next_batch"]
    with trio.fail_after(30):
        while True:
            synced = await _sync(http, alice, since, timeout_ms=5000)
            since = synced["next_batch"]
            members = [
                event
                for event in synced.get("rooms", {})
                .get("join", {})
                .get(room_id, {})
                .get("timeline", {})
                .get("events", [])
                if event["type"] == "m.room.member" and event["state_key"] == bob.user_id
            ]
            if members:
                break

    # A long-poll on the client_reader, woken by an event that came in
    # through the federation_reader. Its own timeout is far past the limit
    # on the wait: only the event can answer it in time.
    woken: list[dict[str, Any]] = []

    async def long_poll() -> None:
        woken.append(await _sync(http, alice, since, timeout_ms=120_000))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.sleep(0.5)
            assert woken == []
            await remote.server.send_event(
                bob.user_id, room_id, "m.room.message", {"msgtype": "m.text", "body": "from bob"}
            )
    assert _timeline_bodies(woken[0], room_id) == ["from bob"]
    bobs = [event_id for event_id, body in deployment.room_messages(room_id) if body == "from bob"]
    assert len(bobs) == 1

    # The replication listener refuses requests without the secret.
    async with httpx.AsyncClient(base_url=deployment.replication_url) as bare:
        path = "/_ranvier/replication/write/writes.store_room/some-txn"
        assert (await bare.post(path, content=b"")).status_code == 401
        wrong = {"Authorization": f"Bearer not {SECRET}"}
        assert (await bare.post(path, content=b"", headers=wrong)).status_code == 401
        stream = "/_ranvier/replication/control/stream"
        assert (await bare.get(stream)).status_code == 401

    # The main process killed with SIGKILL while both workers write through
    # it, and started again: nothing lost, nothing twice.
    alice_bodies = [f"alice {index}" for index in range(12)]
    bob_bodies = [f"bob {index}" for index in range(6)]
    sent: list[str] = []
    some_sent = trio.Event()

    async def alice_sends() -> None:
        for index, body in enumerate(alice_bodies):
            sent.append(await _send(http, alice, room_id, body, f"kill-{index}"))
            if len(sent) == 3:
                some_sent.set()

    async def bob_sends() -> None:
        for body in bob_bodies:
            await remote.server.send_event(
                bob.user_id, room_id, "m.room.message", {"msgtype": "m.text", "body": body}
            )
            await trio.sleep(0.05)

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(alice_sends)
            nursery.start_soon(bob_sends)
            await some_sent.wait()
            deployment.kill("main")
            await trio.sleep(0.5)
            await deployment.start("main")
    await _wait_for_bodies(deployment, room_id, {*alice_bodies, *bob_bodies})
    stored = deployment.room_messages(room_id)
    counts = Counter(body for _, body in stored)
    assert all(counts[body] == 1 for body in [*alice_bodies, *bob_bodies]), counts
    assert len({event_id for event_id, _ in stored}) == len(stored)
    assert all(deployment.event_rows(event_id) == 1 for event_id in sent)

    # The client_reader's sync carries everything, in the order stored.
    synced = await _sync(http, alice, woken[0]["next_batch"])
    seen = _timeline_bodies(synced, room_id)
    assert Counter(seen) == Counter([*alice_bodies, *bob_bodies])


async def test_a_federation_sender_worker_delivers_what_the_others_write(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    deployment = Deployment(tmp_path / "deployment", pki, federation_sender=True)
    deployment.write_configs()
    names = ("main", "federation_reader", "client_reader", "federation_sender")
    try:
        for name in names:
            await deployment.start(name)
        async with (
            open_test_homeserver(tmp_path / "remote", federation=pki) as remote,
            httpx.AsyncClient(base_url=deployment.client_url, timeout=60) as http,
        ):
            alice = await _register(http, "alice")
            created = await http.post(
                "/_matrix/client/v3/createRoom", json={"preset": "public_chat"}, headers=alice
            )
            room_id: str = created.json()["room_id"]
            bob = await remote.register_user("bob")
            await remote.server.join_room(bob.user_id, room_id, [deployment.server_name])
            sent = [
                await _send(http, alice, room_id, f"to bob {index}", f"s{index}")
                for index in range(5)
            ]
            for _ in range(600):
                found = await remote.server.storage.get_events(sent)
                if len(found) == len(sent):
                    break
                await trio.sleep(0.05)
            assert len(await remote.server.storage.get_events(sent)) == len(sent)
        # Delivered by the federation_sender alone: the others only noted them.
        remote_send = f"{remote.server_name}/_matrix/federation/v1/send/"
        assert remote_send in deployment.log("federation_sender")
        for name in ("main", "client_reader", "federation_reader"):
            assert remote_send not in deployment.log(name), name
    except BaseException:
        for name in names:
            print(f"--- {name}\n{deployment.log(name)[-6000:]}")
        raise
    finally:
        deployment.stop_all()
