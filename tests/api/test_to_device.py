"""Send-to-device messaging over real HTTP: ``PUT /sendToDevice`` and the
``to_device`` section of ``/sync``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room

from ranvier.testing.homeserver import TestUser

PASSWORD = "bobs password"


@dataclass
class Env(SharedRoom):
    async def send(
        self, user: TestUser, txn_id: str, messages: dict[str, Any], event_type: str = "m.test"
    ) -> None:
        await self.client.ok(
            user, "PUT", f"/sendToDevice/{event_type}/{txn_id}", {"messages": messages}
        )

    async def second_device(self, user: TestUser, password: str) -> TestUser:
        answer = await self.client.ok(
            None,
            "POST",
            "/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user.user_id},
                "password": password,
            },
        )
        return TestUser(answer["user_id"], answer["access_token"], answer["device_id"])


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_shared_room(tmp_path, Env) as shared:
        yield shared


async def test_a_message_reaches_its_device_once_and_goes_once_acknowledged(env: Env) -> None:
    since = (await env.sync(env.bob))["next_batch"]
    content = {"algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": {"x": {"body": "y"}}}

    async def to_carol() -> None:
        await env.send(env.alice, "t0", {env.carol.user_id: {env.carol.device_id: {"n": 0}}})

    answer = await env.woken_sync(
        env.bob,
        since,
        quiet=to_carol,
        wake=lambda: env.send(
            env.alice, "t1", {env.bob.user_id: {env.bob.device_id: content}}, "m.room.encrypted"
        ),
    )
    expected = {"type": "m.room.encrypted", "sender": env.alice.user_id, "content": content}
    assert answer["to_device"]["events"] == [expected]
    # Until a sync acknowledges it, the message is handed out again from
    # the old token; a retry of the send (same transaction ID) adds nothing.
    await env.send(env.alice, "t1", {env.bob.user_id: {env.bob.device_id: content}})
    again = await env.sync(env.bob, since=since)
    assert again["to_device"]["events"] == [expected]
    acknowledged = await env.sync(env.bob, since=answer["next_batch"])
    assert acknowledged["to_device"]["events"] == []
    # Gone: even the old token finds nothing now.
    assert (await env.sync(env.bob, since=since))["to_device"]["events"] == []
    assert (await env.sync(env.bob))["to_device"]["events"] == []
    # Carol's message is hers alone.
    carol = await env.sync(env.carol)
    assert [event["content"] for event in carol["to_device"]["events"]] == [{"n": 0}]


async def test_a_star_reaches_every_device_and_unknown_devices_nothing(tmp_path: Path) -> None:
    async with open_shared_room(tmp_path, Env) as env:
        dave = await env.hs.register_user("dave", PASSWORD)
        second = await env.second_device(dave, PASSWORD)
        await env.send(env.alice, "t1", {dave.user_id: {"*": {"n": 1}, "NOSUCHDEVICE": {"n": 2}}})
        for device in (dave, second):
            events = (await env.sync(device))["to_device"]["events"]
            assert [event["content"] for event in events] == [{"n": 1}]


async def test_messages_come_a_page_at_a_time(env: Env) -> None:
    for n in range(105):
        await env.send(env.alice, f"t{n}", {env.bob.user_id: {env.bob.device_id: {"n": n}}})
    pages: list[list[int]] = []
    body = await env.sync(env.bob)
    while body["to_device"]["events"]:
        pages.append([event["content"]["n"] for event in body["to_device"]["events"]])
        body = await env.sync(env.bob, since=body["next_batch"])
    assert pages == [list(range(100)), list(range(100, 105))]


@pytest.mark.parametrize(
    ("messages", "errcode"),
    [
        (None, "M_BAD_JSON"),
        ("text", "M_BAD_JSON"),
        ({"not-a-user": {"DEV": {}}}, "M_INVALID_PARAM"),
        ({"@carol:not a server": {"DEV": {}}}, "M_INVALID_PARAM"),
        ({"@bob:x": ["DEV"]}, "M_BAD_JSON"),
        ({"@bob:x": {"DEV": "content"}}, "M_BAD_JSON"),
    ],
)
async def test_refused_sends_write_nothing(env: Env, messages: Any, errcode: str) -> None:
    body = {} if messages is None else {"messages": messages}
    if isinstance(messages, dict):
        # Alongside a message that would be fine on its own.
        body["messages"] = {env.bob.user_id: {env.bob.device_id: {"n": 1}}, **messages}
    await env.client.refused(
        env.alice, "PUT", "/sendToDevice/m.test/t1", body, status=400, errcode=errcode
    )
    assert (await env.sync(env.bob))["to_device"]["events"] == []
    # The transaction ID was not used up by the refusal.
    await env.send(env.alice, "t1", {env.bob.user_id: {env.bob.device_id: {"n": 2}}})
    events = (await env.sync(env.bob))["to_device"]["events"]
    assert [event["content"] for event in events] == [{"n": 2}]


async def test_sending_needs_an_access_token(env: Env) -> None:
    await env.client.refused(
        None,
        "PUT",
        "/sendToDevice/m.test/t1",
        {"messages": {}},
        status=401,
        errcode="M_MISSING_TOKEN",
    )
