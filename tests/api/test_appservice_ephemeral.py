"""Typing, receipts and presence pushed to an application service over
real HTTP (``receive_ephemeral``, MSC2409): only to a service that asks,
by the accepted key or the older prefixed one, only of rooms and users
that concern it, never a private receipt, and no receipt lost to a
restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from _appservices import HS_TOKEN, WithService, config_with_registration, serving
from _client import q

from ranvier.testing.appservice import FakeAppService

_LEGACY = "de.sorunome.msc2409.ephemeral"


def _config(tmp_path: Path, url: str, flag: str | None) -> Any:
    return config_with_registration(tmp_path, url, "" if flag is None else f"{flag}: true\n")


@asynccontextmanager
async def _with_service(
    tmp_path: Path, flag: str | None = "receive_ephemeral"
) -> AsyncIterator[tuple[WithService, FakeAppService]]:
    service = FakeAppService(hs_token=HS_TOKEN)
    async with trio.open_nursery() as nursery:
        url = await service.start(nursery)
        async with serving(tmp_path, _config(tmp_path, url, flag)) as env:
            yield env, service
        nursery.cancel_scope.cancel()


def _ephemeral(service: FakeAppService) -> list[dict[str, Any]]:
    return [
        event
        for transaction in service.transactions
        for event in transaction.body.get("ephemeral", [])
    ]


async def _wait_for(service: FakeAppService, found: Callable[[dict[str, Any]], bool]) -> None:
    with trio.fail_after(20):
        await service.wait_for(lambda: any(found(event) for event in _ephemeral(service)))


async def _bridged_room(env: WithService) -> tuple[str, str]:
    """A room of Alice's that a ghost of the bridge joined."""
    room_id = await env.client.create_room(env.alice, preset="public_chat")
    ghost = await env.register("_br_ghost")
    await env.as_ok("POST", f"/rooms/{q(room_id)}/join", {}, user_id=ghost)
    return room_id, ghost


async def _send(env: WithService, room_id: str, txn: str) -> str:
    answer = await env.client.ok(
        env.alice,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": txn},
    )
    event_id: str = answer["event_id"]
    return event_id


async def _type(env: WithService, room_id: str, typing: bool) -> None:
    await env.client.ok(
        env.alice,
        "PUT",
        f"/rooms/{q(room_id)}/typing/{q(env.alice.user_id)}",
        {"typing": typing, "timeout": 30_000} if typing else {"typing": False},
    )


async def _receipt(env: WithService, room_id: str, receipt_type: str, event_id: str) -> None:
    await env.client.ok(
        env.alice, "POST", f"/rooms/{q(room_id)}/receipt/{receipt_type}/{q(event_id)}", {}
    )


def _typing_in(room_id: str, user_ids: list[str]) -> Callable[[dict[str, Any]], bool]:
    def found(event: dict[str, Any]) -> bool:
        return (
            event["type"] == "m.typing"
            and event.get("room_id") == room_id
            and event["content"] == {"user_ids": user_ids}
        )

    return found


def _read_by(room_id: str, event_id: str, user_id: str) -> Callable[[dict[str, Any]], bool]:
    def found(event: dict[str, Any]) -> bool:
        return (
            event["type"] == "m.receipt"
            and event.get("room_id") == room_id
            and user_id in event["content"].get(event_id, {}).get("m.read", {})
        )

    return found


def _presence_of(user_id: str) -> Callable[[dict[str, Any]], bool]:
    def found(event: dict[str, Any]) -> bool:
        return bool(event["type"] == "m.presence" and event["sender"] == user_id)

    return found


async def test_typing_receipts_and_presence_of_the_services_rooms_and_users(
    tmp_path: Path,
) -> None:
    async with _with_service(tmp_path) as (env, service):
        room_id, _ = await _bridged_room(env)
        elsewhere = await env.client.create_room(env.alice, preset="private_chat")
        alice = env.alice.user_id

        # Typing: in a room of the bridge's, started and stopped; a room
        # without the bridge is left out (it changed first, so it was judged).
        await _type(env, elsewhere, True)
        await _type(env, room_id, True)
        await _wait_for(service, _typing_in(room_id, [alice]))
        await _type(env, room_id, False)
        await _wait_for(service, _typing_in(room_id, []))
        assert all(event.get("room_id") != elsewhere for event in _ephemeral(service))

        # Receipts: the public one, never the private one set before it.
        private = await _send(env, room_id, "read in private")
        message = await _send(env, room_id, "read me")
        await _receipt(env, room_id, "m.read.private", private)
        await _receipt(env, room_id, "m.read", message)
        await _wait_for(service, _read_by(room_id, message, alice))
        receipts = [event for event in _ephemeral(service) if event["type"] == "m.receipt"]
        assert len(receipts) == 1
        (receipt,) = receipts
        assert list(receipt["content"]) == [message]
        assert list(receipt["content"][message]) == ["m.read"]
        assert isinstance(receipt["content"][message]["m.read"][alice]["ts"], int)

        # Presence: Alice shares a room with the ghost; Carol, who set hers
        # first, shares none.
        carol = await env.hs.register_user("carol")
        await env.client.ok(
            carol, "PUT", f"/presence/{q(carol.user_id)}/status", {"presence": "online"}
        )
        await env.client.ok(
            env.alice,
            "PUT",
            f"/presence/{q(alice)}/status",
            {"presence": "online", "status_msg": "bridging"},
        )
        await _wait_for(service, _presence_of(alice))
        (presence,) = [event for event in _ephemeral(service) if _presence_of(alice)(event)]
        assert presence["content"]["presence"] == "online"
        assert presence["content"]["status_msg"] == "bridging"
        assert "room_id" not in presence
        assert not any(_presence_of(carol.user_id)(event) for event in _ephemeral(service))

        # Both keys carry the same list, for services of either age.
        for transaction in service.transactions:
            if "ephemeral" in transaction.body:
                assert transaction.body[_LEGACY] == transaction.body["ephemeral"]
            assert isinstance(transaction.body["events"], list)


async def test_a_service_that_does_not_ask_gets_none(tmp_path: Path) -> None:
    async with _with_service(tmp_path, flag=None) as (env, service):
        room_id, _ = await _bridged_room(env)
        first = await _send(env, room_id, "first")
        await _type(env, room_id, True)
        await _receipt(env, room_id, "m.read", first)
        await env.client.ok(
            env.alice, "PUT", f"/presence/{q(env.alice.user_id)}/status", {"presence": "online"}
        )
        # Sent after the rest: whatever came before it had its turn.
        last = await _send(env, room_id, "last")
        with trio.fail_after(20):
            await service.wait_for(
                lambda: last in [event["event_id"] for event in service.events()]
            )
        assert service.transactions
        for transaction in service.transactions:
            assert "ephemeral" not in transaction.body
            assert _LEGACY not in transaction.body


async def test_the_older_key_of_the_registration(tmp_path: Path) -> None:
    async with _with_service(tmp_path, flag="de.sorunome.msc2409.push_ephemeral") as (
        env,
        service,
    ):
        room_id, _ = await _bridged_room(env)
        await _type(env, room_id, True)
        await _wait_for(service, _typing_in(room_id, [env.alice.user_id]))
        (transaction,) = [t for t in service.transactions if "ephemeral" in t.body]
        assert transaction.body[_LEGACY] == transaction.body["ephemeral"]


async def test_a_restart_loses_no_receipt(tmp_path: Path) -> None:
    service = FakeAppService(hs_token=HS_TOKEN)
    async with trio.open_nursery() as nursery:
        url = await service.start(nursery)
        config = _config(tmp_path, url, "receive_ephemeral")
        async with serving(tmp_path, config) as env:
            room_id, ghost = await _bridged_room(env)
            alice = env.alice
            with trio.fail_after(20):
                await service.wait_for(
                    lambda: any(e.get("state_key") == ghost for e in service.events())
                )
            service.status = 503
            tried = len(service.attempts)
            message = await _send(env, room_id, "read while the bridge is down")
            with trio.fail_after(20):
                await service.wait_for(lambda: len(service.attempts) > tried)
            # The sender is stuck on the message's transaction: the receipt
            # waits in the stream, in no transaction yet, when the server stops.
            await _receipt(env, room_id, "m.read", message)
        assert not any(_read_by(room_id, message, alice.user_id)(e) for e in _ephemeral(service))
        service.status = 200

        async with serving(tmp_path, config, alice) as env:
            await _wait_for(service, _read_by(room_id, message, alice.user_id))
        nursery.cancel_scope.cancel()

    read = [e for e in _ephemeral(service) if _read_by(room_id, message, alice.user_id)(e)]
    assert len(read) == 1
    events = [event["event_id"] for event in service.events()]
    assert events.count(message) == 1
