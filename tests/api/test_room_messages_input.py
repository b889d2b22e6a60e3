"""Sending and reading messages as a client does: bad JSON values, oversized
events, bad filters, /messages of rooms one may not read, and the shape of
typing and receipt events in /sync, over HTTP."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q

_TXN = itertools.count()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


def _send_path(room_id: str, kind: str = "m.room.message") -> str:
    return f"/rooms/{q(room_id)}/send/{kind}/t{next(_TXN)}"


async def test_numbers_canonical_json_cannot_hold_and_non_json_values_are_refused(
    env: SharedRoom,
) -> None:
    for raw in (
        b'{"body": 9007199254740992}',
        b'{"body": -9007199254740992}',
        b'{"body": 1.1}',
    ):
        await env.client.refused(
            env.alice,
            "PUT",
            _send_path(env.room_id, "org.example.dummy"),
            raw=raw,
            status=400,
            errcode="M_BAD_JSON",
        )
    for raw in (b'{"body": Infinity}', b'{"body": -Infinity}', b'{"body": NaN}'):
        status, _ = await env.client.call(
            env.alice, "PUT", _send_path(env.room_id, "org.example.dummy"), raw=raw
        )
        assert status == 400


async def test_events_past_64_kib_are_refused_as_too_large(env: SharedRoom) -> None:
    await env.client.refused(
        env.alice,
        "PUT",
        _send_path(env.room_id),
        {"msgtype": "m.text", "body": "and they do not stop coming " * 2600},
        status=413,
        errcode="M_TOO_LARGE",
    )
    await env.client.refused(
        env.alice,
        "PUT",
        f"/rooms/{q(env.room_id)}/state/org.example.big",
        {"body": "a long line of state to fill it up\n" * 2100},
        status=413,
        errcode="M_TOO_LARGE",
    )


async def test_malformed_filters_are_refused_with_a_4xx(env: SharedRoom) -> None:
    not_object, not_list = "not_an_object", "not_a_list"
    room_parts: list[dict[str, Any]] = [
        {"timeline": not_object},
        {"state": not_object},
        {"ephemeral": not_object},
        {"account_data": not_object},
    ]
    for key in ("rooms", "not_rooms", "senders", "not_senders", "types", "not_types"):
        room_parts.append({"timeline": {key: not_list}})
    room_parts.append({"timeline": {"types": [1]}})
    room_parts.append({"timeline": {"rooms": ["not_a_room_id"]}})
    room_parts.append({"timeline": {"senders": ["not_a_sender_id"]}})
    filters: list[dict[str, Any]] = [
        {"presence": not_object},
        {"account_data": not_object},
        *({"room": part} for part in room_parts),
    ]
    path = f"/user/{q(env.alice.user_id)}/filter"
    for definition in filters:
        status, answer = await env.client.call(env.alice, "POST", path, definition)
        assert 400 <= status < 500, (definition, status, answer)
        assert answer["errcode"], definition


async def test_a_sent_message_is_read_back_and_messages_need_membership(
    env: SharedRoom,
) -> None:
    since = (await env.sync(env.alice))["next_batch"]
    await env.client.ok(
        env.alice, "PUT", _send_path(env.room_id), {"msgtype": "m.text", "body": "hello"}
    )
    timeline = (await env.sync(env.alice, since=since))["rooms"]["join"][env.room_id]["timeline"]
    assert [event["content"]["body"] for event in timeline["events"]] == ["hello"]
    page = await env.client.ok(
        env.alice, "GET", f"/rooms/{q(env.room_id)}/messages", params={"dir": "b"}
    )
    assert page["chunk"][0]["content"]["body"] == "hello"
    await env.client.refused(
        env.carol,
        "GET",
        "/rooms/!nowhere:localhost/messages",
        params={"dir": "b"},
        status=403,
        errcode="M_FORBIDDEN",
    )
    # The same transaction ID again: the same event, not a second one.
    path = _send_path(env.room_id)
    first = await env.client.ok(env.alice, "PUT", path, {"msgtype": "m.text", "body": "once"})
    again = await env.client.ok(env.alice, "PUT", path, {"msgtype": "m.text", "body": "once"})
    assert first["event_id"] == again["event_id"]


async def test_typing_and_receipts_in_sync_carry_no_room_id(env: SharedRoom) -> None:
    since = (await env.sync(env.alice))["next_batch"]
    sent = await env.client.ok(
        env.bob, "PUT", _send_path(env.room_id), {"msgtype": "m.text", "body": "read me"}
    )
    await env.client.ok(
        env.bob,
        "PUT",
        f"/rooms/{q(env.room_id)}/typing/{q(env.bob.user_id)}",
        {"typing": True, "timeout": 30_000},
    )
    await env.client.ok(
        env.bob, "POST", f"/rooms/{q(env.room_id)}/receipt/m.read/{q(sent['event_id'])}", {}
    )
    ephemeral = (await env.sync(env.alice, since=since))["rooms"]["join"][env.room_id]["ephemeral"][
        "events"
    ]
    by_type = {event["type"]: event for event in ephemeral}
    assert by_type["m.typing"]["content"]["user_ids"] == [env.bob.user_id]
    assert env.bob.user_id in by_type["m.receipt"]["content"][sent["event_id"]]["m.read"]
    for event in ephemeral:
        assert "room_id" not in event
    await env.client.ok(
        env.bob, "PUT", f"/rooms/{q(env.room_id)}/typing/{q(env.bob.user_id)}", {"typing": False}
    )
    stopped = (await env.sync(env.alice, since=since))["rooms"]["join"][env.room_id]["ephemeral"][
        "events"
    ]
    typing = [event for event in stopped if event["type"] == "m.typing"]
    assert typing[0]["content"]["user_ids"] == []


async def test_read_markers_set_the_receipt_and_the_fully_read_marker(env: SharedRoom) -> None:
    sent = await env.client.ok(
        env.alice, "PUT", _send_path(env.room_id), {"msgtype": "m.text", "body": "marker"}
    )
    event_id = sent["event_id"]
    await env.client.ok(
        env.alice,
        "POST",
        f"/rooms/{q(env.room_id)}/read_markers",
        {"m.fully_read": event_id, "m.read": event_id},
    )
    room = (await env.sync(env.alice))["rooms"]["join"][env.room_id]
    receipts = [event for event in room["ephemeral"]["events"] if event["type"] == "m.receipt"]
    assert env.alice.user_id in receipts[0]["content"][event_id]["m.read"]
    fully_read = [
        event for event in room["account_data"]["events"] if event["type"] == "m.fully_read"
    ]
    assert fully_read[0]["content"]["event_id"] == event_id


async def test_bodies_that_are_not_utf8_are_not_json(env: SharedRoom) -> None:
    since = (await env.sync(env.alice))["next_batch"]
    not_utf8 = b'{ "test":"a\x81" }'
    await env.client.refused(
        None, "POST", "/register", raw=not_utf8, status=400, errcode="M_NOT_JSON"
    )
    for user, method, path in (
        (env.alice, "PUT", _send_path(env.room_id)),
        (env.alice, "POST", "/createRoom"),
        (env.alice, "PUT", f"/rooms/{q(env.room_id)}/state/org.example.odd"),
    ):
        await env.client.refused(user, method, path, raw=not_utf8, status=400, errcode="M_NOT_JSON")
    # Nothing was written.
    answer = await env.sync(env.alice, since=since, timeout=0)
    assert answer["rooms"]["join"] == {}
