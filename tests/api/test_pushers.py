"""Pushers over real HTTP: ``/pushers`` and ``/pushers/set`` as the spec
has them, and notifications reaching a real HTTPS push gateway on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from _client import Client, q

from ranvier.config import Config, PushConfig
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)
from ranvier.testing.network import Pki
from ranvier.testing.push_gateway import FakePushGateway


async def _next(gateway: FakePushGateway) -> dict[str, Any]:
    with trio.fail_after(30):
        return await gateway.next()


@dataclass
class Env:
    hs: TestHomeserver
    client: Client
    gateway: FakePushGateway
    alice: TestUser
    bob: TestUser
    room_id: str
    _txn: int = 0

    async def set_pusher(self, user: TestUser, **fields: Any) -> None:
        body = {
            "kind": "http",
            "app_id": "org.example.app",
            "pushkey": f"key-of-{user.user_id}",
            "app_display_name": "Example",
            "device_display_name": "Phone",
            "lang": "en",
            "data": {"url": self.gateway.url},
        } | fields
        await self.client.ok(user, "POST", "/pushers/set", body)

    async def send(self, user: TestUser, body: str, **content: Any) -> str:
        self._txn += 1
        path = f"/rooms/{q(self.room_id)}/send/m.room.message/p{self._txn}"
        answer = await self.client.ok(
            user, "PUT", path, {"msgtype": "m.text", "body": body, **content}
        )
        event_id: str = answer["event_id"]
        return event_id

    async def pushers(self, user: TestUser) -> list[dict[str, Any]]:
        answer = await self.client.ok(user, "GET", "/pushers")
        found: list[dict[str, Any]] = answer["pushers"]
        return found

    async def settled(self) -> None:
        """Until the push sender has judged every event written so far and
        sent what it queued."""
        sender, notifier = self.hs.server.push_sender, self.hs.server.stream_notifier

        def busy() -> bool:
            return sender.position < notifier.position.events or sender.waiting() > 0

        with trio.fail_after(30):
            # The sender offers nothing to wait on for this: the test polls.
            while busy():  # noqa: ASYNC110
                await trio.sleep(0.01)


@asynccontextmanager
async def _running(
    tmp_path: Path, gateway: FakePushGateway, config: Config, *, again: Env | None = None
) -> AsyncIterator[Env]:
    """A server with Alice's room that Bob joined; ``again`` runs the
    server of an earlier :class:`Env` once more, on the same data.
    """
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as http:
        client = Client(hs, http)
        if again is not None:
            yield Env(hs, client, gateway, again.alice, again.bob, again.room_id, again._txn)
            return
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        room_id = await client.create_room(alice, preset="public_chat", name="Lunch")
        await client.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
        yield Env(hs, client, gateway, alice, bob, room_id)


@pytest.fixture
async def gateway_and_config(
    tmp_path: Path, nursery: trio.Nursery
) -> tuple[FakePushGateway, Config]:
    pki = Pki.create(tmp_path)
    gateway = FakePushGateway()
    await gateway.start(nursery, pki)
    config = config_for_tests(tmp_path / "hs")
    return gateway, msgspec.structs.replace(config, push=PushConfig(ca_file=pki.ca_file))


@pytest.fixture
async def env(
    tmp_path: Path, gateway_and_config: tuple[FakePushGateway, Config]
) -> AsyncIterator[Env]:
    async with _running(tmp_path, *gateway_and_config) as env:
        yield env


# The API


async def test_a_pusher_set_is_listed_replaced_and_deleted(env: Env) -> None:
    await env.set_pusher(env.alice, profile_tag="tag")
    (shown,) = await env.pushers(env.alice)
    assert shown == {
        "pushkey": f"key-of-{env.alice.user_id}",
        "kind": "http",
        "app_id": "org.example.app",
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {"url": env.gateway.url},
        "profile_tag": "tag",
    }
    await env.set_pusher(env.alice, device_display_name="Tablet")
    (shown,) = await env.pushers(env.alice)
    assert shown["device_display_name"] == "Tablet"
    assert await env.pushers(env.bob) == []
    await env.set_pusher(env.alice, kind=None)
    assert await env.pushers(env.alice) == []


async def test_a_pushkey_moves_to_its_new_user_unless_appended(env: Env) -> None:
    shared = {"pushkey": "shared"}
    await env.set_pusher(env.alice, **shared)
    await env.set_pusher(env.bob, **shared, append=True)
    assert len(await env.pushers(env.alice)) == 1
    await env.set_pusher(env.bob, **shared)
    assert await env.pushers(env.alice) == []
    assert [p["pushkey"] for p in await env.pushers(env.bob)] == ["shared"]


@pytest.mark.parametrize(
    ("change", "errcode"),
    [
        ({"app_id": None}, "M_MISSING_PARAM"),
        ({"lang": None}, "M_MISSING_PARAM"),
        ({"data": None}, "M_MISSING_PARAM"),
        ({"data": {}}, "M_MISSING_PARAM"),
        ({"app_id": "a" * 65}, "M_INVALID_PARAM"),
        ({"pushkey": "k" * 513}, "M_INVALID_PARAM"),
        ({"kind": "email"}, "M_INVALID_PARAM"),
        ({"kind": 5}, "M_INVALID_PARAM"),
        ({"append": "yes"}, "M_INVALID_PARAM"),
        ({"data": {"url": "http://127.0.0.1/_matrix/push/v1/notify"}}, "M_INVALID_PARAM"),
        ({"data": {"url": "https://127.0.0.1/elsewhere"}}, "M_INVALID_PARAM"),
    ],
)
async def test_a_bad_pusher_is_refused_and_nothing_is_kept(
    env: Env, change: dict[str, Any], errcode: str
) -> None:
    body = {
        "kind": "http",
        "app_id": "org.example.app",
        "pushkey": "key",
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {"url": env.gateway.url},
    }
    for key, value in change.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    status, answer = await env.client.call(env.alice, "POST", "/pushers/set", body)
    assert (status, answer["errcode"]) == (400, errcode)
    assert await env.pushers(env.alice) == []


async def test_pushers_need_an_access_token(env: Env) -> None:
    status, answer = await env.client.call(None, "GET", "/pushers")
    assert (status, answer["errcode"]) == (401, "M_MISSING_TOKEN")


# Notifications


async def test_a_message_reaches_the_gateway_with_counts_tweaks_and_names(env: Env) -> None:
    await env.set_pusher(env.alice)
    event_id = await env.send(env.bob, "hello there")
    notification = await _next(env.gateway)
    assert notification["event_id"] == event_id
    assert notification["room_id"] == env.room_id
    assert notification["type"] == "m.room.message"
    assert notification["sender"] == env.bob.user_id
    assert notification["content"]["body"] == "hello there"
    assert notification["room_name"] == "Lunch"
    assert notification["counts"] == {"unread": 1}
    (device,) = notification["devices"]
    assert device["pushkey"] == f"key-of-{env.alice.user_id}"
    assert device["app_id"] == "org.example.app"
    assert device["data"] == {}
    # Two members: the one-to-one rule, with its sound and no highlight.
    assert device["tweaks"] == {"sound": "default", "highlight": False}

    mention = await env.send(
        env.bob, "alice, lunch?", **{"m.mentions": {"user_ids": [env.alice.user_id]}}
    )
    notification = await _next(env.gateway)
    assert notification["event_id"] == mention
    assert notification["counts"] == {"unread": 2}
    assert notification["devices"][0]["tweaks"]["highlight"] is True
    assert notification["prio"] == "high"


async def test_own_events_and_silenced_rooms_are_not_pushed(env: Env) -> None:
    await env.set_pusher(env.alice)
    await env.send(env.alice, "my own")
    await env.client.ok(
        env.alice, "PUT", f"/pushrules/global/room/{q(env.room_id)}", {"actions": []}
    )
    await env.send(env.bob, "muted")
    await env.settled()
    assert env.gateway.received == []


async def test_an_ignored_users_messages_are_not_pushed(env: Env) -> None:
    await env.set_pusher(env.alice)
    ignore: dict[str, Any] = {"ignored_users": {env.bob.user_id: {}}}
    path = f"/user/{q(env.alice.user_id)}/account_data/m.ignored_user_list"
    await env.client.ok(env.alice, "PUT", path, ignore)
    await env.send(env.bob, "alice, are you there?")
    await env.settled()
    assert env.gateway.received == []
    # Ignored no more: pushed again.
    await env.client.ok(env.alice, "PUT", path, {"ignored_users": {}})
    event_id = await env.send(env.bob, "hello again")
    notification = await _next(env.gateway)
    assert notification["event_id"] == event_id


async def test_the_badge_follows_reads_and_messages_in_every_room(env: Env) -> None:
    await env.set_pusher(env.alice)
    first = await env.send(env.bob, "one")
    assert (await _next(env.gateway))["counts"] == {"unread": 1}
    other = await env.client.create_room(env.bob, preset="public_chat")
    await env.client.ok(env.alice, "POST", f"/rooms/{q(other)}/join", {})

    async def send_in_other(body: str) -> None:
        env._txn += 1
        path = f"/rooms/{q(other)}/send/m.room.message/o{env._txn}"
        await env.client.ok(env.bob, "PUT", path, {"msgtype": "m.text", "body": body})

    await send_in_other("two")
    assert (await _next(env.gateway))["counts"] == {"unread": 2}
    # Reading the first room, with nothing new in it, takes its message off
    # the badge of the next push, from the other room.
    await env.client.ok(env.alice, "POST", f"/rooms/{q(env.room_id)}/receipt/m.read/{q(first)}", {})
    await send_in_other("three")
    assert (await _next(env.gateway))["counts"] == {"unread": 2}
    await env.send(env.bob, "four")
    assert (await _next(env.gateway))["counts"] == {"unread": 3}


async def test_event_id_only_pushers_get_no_content(env: Env) -> None:
    await env.set_pusher(env.alice, data={"url": env.gateway.url, "format": "event_id_only"})
    event_id = await env.send(env.bob, "secret")
    notification = await _next(env.gateway)
    assert set(notification) == {"event_id", "room_id", "counts", "devices", "prio"}
    assert notification["event_id"] == event_id
    assert notification["devices"][0]["data"] == {"format": "event_id_only"}


async def test_a_rejected_pushkey_deletes_its_pusher(env: Env) -> None:
    await env.set_pusher(env.alice)
    env.gateway.rejected = [f"key-of-{env.alice.user_id}"]
    await env.send(env.bob, "one")
    await _next(env.gateway)
    await env.settled()
    assert await env.pushers(env.alice) == []
    await env.send(env.bob, "two")
    await env.settled()
    assert env.gateway.received == []


async def test_a_failing_gateway_gets_the_notification_again(env: Env) -> None:
    await env.set_pusher(env.alice)
    env.gateway.status = 503
    event_id = await env.send(env.bob, "try again")
    with trio.fail_after(30):
        while env.hs.server.push_sender.waiting() == 0:  # noqa: ASYNC110
            await trio.sleep(0.01)
    env.gateway.status = 200
    notification = await _next(env.gateway)
    assert notification["event_id"] == event_id


async def test_after_a_restart_nothing_is_pushed_twice_or_skipped(
    tmp_path: Path, gateway_and_config: tuple[FakePushGateway, Config]
) -> None:
    gateway = gateway_and_config[0]
    async with _running(tmp_path, *gateway_and_config) as env:
        await env.set_pusher(env.alice)
        first = await env.send(env.bob, "before the restart")
        assert (await _next(gateway))["event_id"] == first
    async with _running(tmp_path, *gateway_and_config, again=env) as env:
        second = await env.send(env.bob, "after the restart")
        assert (await _next(gateway))["event_id"] == second
        await env.settled()
        assert gateway.received == []


async def test_an_invite_is_pushed_to_the_invitee_before_they_join(env: Env) -> None:
    carol = await env.hs.register_user("carol")
    await env.set_pusher(carol)
    await env.client.ok(
        env.alice, "POST", f"/rooms/{q(env.room_id)}/invite", {"user_id": carol.user_id}
    )
    notification = await _next(env.gateway)
    assert notification["type"] == "m.room.member"
    assert notification["user_is_target"] is True
    assert notification["content"]["membership"] == "invite"
    assert notification["devices"][0]["pushkey"] == f"key-of-{carol.user_id}"


async def test_a_room_without_a_name_is_shown_by_its_canonical_alias(env: Env) -> None:
    await env.set_pusher(env.alice)
    room_id = await env.client.create_room(
        env.bob, preset="public_chat", room_alias_name="lunchroom"
    )
    await env.client.ok(env.alice, "POST", f"/rooms/{q(room_id)}/join", {})
    alias = f"#lunchroom:{env.hs.server_name}"
    path = f"/rooms/{q(room_id)}/send/m.room.message/"
    sent = await env.client.ok(env.bob, "PUT", path + "a1", {"msgtype": "m.text", "body": "hi"})
    notification = await _next(env.gateway)
    assert notification["event_id"] == sent["event_id"]
    assert notification["room_alias"] == alias
    assert "room_name" not in notification
    # A name given, both go: the gateway picks what to show.
    await env.client.ok(env.bob, "PUT", f"/rooms/{q(room_id)}/state/m.room.name", {"name": "Cafe"})
    await env.client.ok(env.bob, "PUT", path + "a2", {"msgtype": "m.text", "body": "again"})
    notification = await _next(env.gateway)
    assert (notification["room_name"], notification["room_alias"]) == ("Cafe", alias)


async def test_a_muted_room_still_pushes_a_mention(env: Env) -> None:
    await env.set_pusher(env.alice)
    await env.client.ok(
        env.alice, "PUT", f"/pushrules/global/room/{q(env.room_id)}", {"actions": ["dont_notify"]}
    )
    await env.send(env.bob, "nothing for alice")
    # The mention rule is an override rule, judged before any room rule.
    mention = await env.send(env.bob, "alice!", **{"m.mentions": {"user_ids": [env.alice.user_id]}})
    notification = await _next(env.gateway)
    assert notification["event_id"] == mention
    await env.settled()
    assert env.gateway.received == []


async def test_a_pushers_own_data_is_kept_and_shown(env: Env) -> None:
    data = {"url": env.gateway.url, "format": "event_id_only", "custom": {"tag": "mine"}}
    await env.set_pusher(env.alice, data=data)
    (shown,) = await env.pushers(env.alice)
    assert shown["data"] == data
    event_id = await env.send(env.bob, "x")
    notification = await _next(env.gateway)
    assert notification["event_id"] == event_id
    # Everything but the URL goes to the gateway with the device.
    assert notification["devices"][0]["data"] == {
        "format": "event_id_only",
        "custom": {"tag": "mine"},
    }


async def test_a_rejected_pushkey_leaves_the_users_other_pushers(env: Env) -> None:
    await env.set_pusher(env.alice, pushkey="key-1")
    await env.set_pusher(env.alice, pushkey="key-2")
    env.gateway.rejected = ["key-1"]
    await env.send(env.bob, "one")
    keys = {(await _next(env.gateway))["devices"][0]["pushkey"] for _ in range(2)}
    assert keys == {"key-1", "key-2"}
    await env.settled()
    assert [pusher["pushkey"] for pusher in await env.pushers(env.alice)] == ["key-2"]
    env.gateway.rejected = []
    event_id = await env.send(env.bob, "two")
    notification = await _next(env.gateway)
    assert (notification["event_id"], notification["devices"][0]["pushkey"]) == (
        event_id,
        "key-2",
    )
    await env.settled()
    assert env.gateway.received == []
