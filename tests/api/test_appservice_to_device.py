"""To-device messages pushed to an application service over real HTTP
(MSC4203): the messages for its users' devices, under both keys, with
``to_user_id`` and ``to_device_id``; nobody else's; only to a service that
asks; a ``*`` message as each device's copy; no loss or repeat across a
restart; at most 100 a transaction, in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from _appservices import (
    AS_TOKEN,
    HS_TOKEN,
    WithService,
    config_with_registration,
    registration_yaml,
    serving,
)
from _client import q

from ranvier.config import ConfigError
from ranvier.core.appservices import load_app_services
from ranvier.testing.appservice import FakeAppService
from ranvier.testing.homeserver import TestUser

_LEGACY = "de.sorunome.msc2409.to_device"
_OPT_IN = "receive_ephemeral: true\norg.matrix.msc3202: true\n"


@asynccontextmanager
async def _with_service(
    tmp_path: Path, extra: str = _OPT_IN
) -> AsyncIterator[tuple[WithService, FakeAppService]]:
    service = FakeAppService(hs_token=HS_TOKEN)
    async with trio.open_nursery() as nursery:
        url = await service.start(nursery)
        async with serving(tmp_path, config_with_registration(tmp_path, url, extra)) as env:
            yield env, service
        nursery.cancel_scope.cancel()


async def _ghost(env: WithService, localpart: str) -> TestUser:
    """A bridged user with a device, made by the service."""
    answer = await env.as_ok(
        "POST", "/register", {"type": "m.login.application_service", "username": localpart}
    )
    return TestUser(answer["user_id"], answer["access_token"], answer["device_id"])


async def _second_device(env: WithService, ghost: TestUser) -> TestUser:
    status, answer = await env.client.call(
        None,
        "POST",
        "/login",
        {
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.user", "user": ghost.user_id},
        },
        token=AS_TOKEN,
    )
    assert status == 200, answer
    return TestUser(answer["user_id"], answer["access_token"], answer["device_id"])


async def _send(env: WithService, txn: str, messages: dict[str, dict[str, Any]]) -> None:
    await env.client.ok(
        env.alice, "PUT", f"/sendToDevice/m.room_key/{q(txn)}", {"messages": messages}
    )


def _to_device(service: FakeAppService) -> list[dict[str, Any]]:
    return [
        message
        for transaction in service.transactions
        for message in transaction.body.get("to_device", [])
    ]


async def _wait_for_seq(service: FakeAppService, seq: int) -> None:
    with trio.fail_after(30):
        await service.wait_for(
            lambda: any(m["content"].get("seq") == seq for m in _to_device(service))
        )


async def _wait_for_event(service: FakeAppService, event_id: str) -> None:
    with trio.fail_after(30):
        await service.wait_for(lambda: event_id in [e["event_id"] for e in service.events()])


async def _marker(env: WithService, ghost: str) -> str:
    """A room event the service is sent: whatever was sent before it had
    its turn once the service has it.
    """
    room_id = await env.client.create_room(env.alice, preset="public_chat", invite=[ghost])
    answer = await env.client.ok(
        env.alice,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/marker",
        {"msgtype": "m.text", "body": "marker"},
    )
    event_id: str = answer["event_id"]
    return event_id


async def test_a_message_for_a_bridged_device_goes_in_the_transaction(tmp_path: Path) -> None:
    async with _with_service(tmp_path) as (env, service):
        ghost = await _ghost(env, "_br_ghost")
        alice = env.alice
        await _send(
            env,
            "t1",
            {
                ghost.user_id: {ghost.device_id: {"seq": 1, "session_key": "k"}},
                alice.user_id: {alice.device_id: {"seq": 2}},
            },
        )
        await _wait_for_seq(service, 1)
        (carrying,) = [t for t in service.transactions if "to_device" in t.body]
        assert carrying.body["to_device"] == [
            {
                "type": "m.room_key",
                "sender": alice.user_id,
                "content": {"seq": 1, "session_key": "k"},
                "to_user_id": ghost.user_id,
                "to_device_id": ghost.device_id,
            }
        ]
        assert carrying.body[_LEGACY] == carrying.body["to_device"]

        # Alice is outside the namespace: her message is hers alone, and it
        # is still in her inbox. The ghost's, in the exclusive namespace, was
        # the service's: its device's inbox no longer holds it.
        marker = await _marker(env, ghost.user_id)
        await _wait_for_event(service, marker)
        assert all(m["to_user_id"] == ghost.user_id for m in _to_device(service))
        synced = await env.client.ok(alice, "GET", "/sync")
        assert [m["content"] for m in synced["to_device"]["events"]] == [{"seq": 2}]
        synced = await env.client.ok(ghost, "GET", "/sync")
        assert synced.get("to_device", {}).get("events", []) == []


async def test_a_service_that_does_not_ask_gets_none(tmp_path: Path) -> None:
    # Ephemeral events alone are not enough: the service must do encryption.
    async with _with_service(tmp_path, extra="receive_ephemeral: true\n") as (env, service):
        ghost = await _ghost(env, "_br_ghost")
        await _send(env, "t1", {ghost.user_id: {ghost.device_id: {"seq": 1}}})
        marker = await _marker(env, ghost.user_id)
        await _wait_for_event(service, marker)
        assert service.transactions
        for transaction in service.transactions:
            assert "to_device" not in transaction.body
            assert _LEGACY not in transaction.body
        # Not the service's to take: the device still has it.
        synced = await env.client.ok(ghost, "GET", "/sync")
        assert [m["content"] for m in synced["to_device"]["events"]] == [{"seq": 1}]


async def test_a_message_for_every_device(tmp_path: Path) -> None:
    async with _with_service(tmp_path) as (env, service):
        ghost = await _ghost(env, "_br_ghost")
        other = await _second_device(env, ghost)
        await _send(env, "t1", {ghost.user_id: {"*": {"seq": 1}}})
        with trio.fail_after(30):
            await service.wait_for(lambda: len(_to_device(service)) >= 2)
        devices = sorted(m["to_device_id"] for m in _to_device(service))
        assert devices == sorted([ghost.device_id, other.device_id])
        assert all(m["content"] == {"seq": 1} for m in _to_device(service))
        assert all(m["to_user_id"] == ghost.user_id for m in _to_device(service))


async def test_a_restart_loses_and_repeats_nothing(tmp_path: Path) -> None:
    service = FakeAppService(hs_token=HS_TOKEN)
    async with trio.open_nursery() as nursery:
        url = await service.start(nursery)
        config = config_with_registration(tmp_path, url, _OPT_IN)
        async with serving(tmp_path, config) as env:
            ghost = await _ghost(env, "_br_ghost")
            alice = env.alice
            await _send(env, "t1", {ghost.user_id: {ghost.device_id: {"seq": 1}}})
            await _wait_for_seq(service, 1)
            service.status = 503
            tried = len(service.attempts)
            await _send(env, "t2", {ghost.user_id: {ghost.device_id: {"seq": 2}}})
            with trio.fail_after(30):
                await service.wait_for(lambda: len(service.attempts) > tried)
            # The sender is stuck on the second message's transaction; the
            # third waits in the stream, in no transaction, when the server stops.
            await _send(env, "t3", {ghost.user_id: {ghost.device_id: {"seq": 3}}})
        assert [m["content"]["seq"] for m in _to_device(service)] == [1]
        service.status = 200

        async with serving(tmp_path, config, alice) as env:
            await _wait_for_seq(service, 3)
        nursery.cancel_scope.cancel()

    assert [m["content"]["seq"] for m in _to_device(service)] == [1, 2, 3]
    # The failed transaction was sent again under its ID.
    ids = [t.txn_id for t in service.transactions]
    assert len(ids) == len(set(ids))
    assert service.attempts[tried] in ids


async def test_more_than_a_hundred_go_in_several_transactions_in_order(
    tmp_path: Path,
) -> None:
    async with _with_service(tmp_path) as (env, service):
        ghost = await _ghost(env, "_br_ghost")
        # Held back while they are sent, so that they pile up.
        service.status = 503
        for seq in range(130):
            await _send(env, f"t{seq}", {ghost.user_id: {ghost.device_id: {"seq": seq}}})
        service.status = 200
        await _wait_for_seq(service, 129)
        sizes = [len(t.body.get("to_device", [])) for t in service.transactions]
        assert max(sizes) == 100
        assert sum(sizes) == 130
        assert [m["content"]["seq"] for m in _to_device(service)] == list(range(130))
        for transaction in service.transactions:
            assert transaction.body.get(_LEGACY) == transaction.body.get("to_device")


def test_the_opt_in_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(registration_yaml("http://127.0.0.1:9") + _OPT_IN, encoding="utf-8")
    (service,) = load_app_services([path], "localhost")
    assert service.receives_to_device

    path.write_text(
        registration_yaml("http://127.0.0.1:9") + "de.sorunome.msc2409.push_ephemeral: true\n"
        "org.matrix.msc3202: true\n",
        encoding="utf-8",
    )
    (service,) = load_app_services([path], "localhost")
    assert service.receives_to_device

    path.write_text(
        registration_yaml("http://127.0.0.1:9") + "org.matrix.msc3202: true\n", encoding="utf-8"
    )
    (service,) = load_app_services([path], "localhost")
    assert not service.receives_to_device

    path.write_text(
        registration_yaml("http://127.0.0.1:9") + "receive_ephemeral: true\n"
        'org.matrix.msc3202: "yes"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as refused:
        load_app_services([path], "localhost")
    assert refused.value.key == "org.matrix.msc3202"
    assert refused.value.source == str(path)
