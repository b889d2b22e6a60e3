"""A kept report in detail over real HTTP: the reported event and its
room as an admin reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _admin import admin_ok, admin_refused
from _client import WithAdmin, open_with_admin, q

ADMIN_REPORTS = "/_synapse/admin/v1/event_reports"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def test_a_report_is_shown_with_its_event_and_room(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat", name="Market")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    sent = await c.ok(
        alice,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/t1",
        {"msgtype": "m.text", "body": "buy"},
    )
    event_id = sent["event_id"]
    await c.ok(
        bob, "POST", f"/rooms/{q(room_id)}/report/{q(event_id)}", {"reason": "spam", "score": -50}
    )
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/report", {"reason": "the whole room"})
    listed = await admin_ok(http, admin, "GET", "/v1/event_reports")
    event_report, room_report = listed["event_reports"]

    detail = await admin_ok(http, admin, "GET", f"/v1/event_reports/{event_report['id']}")
    assert detail["event_json"]["content"] == {"msgtype": "m.text", "body": "buy"}
    assert (detail["event_json"]["type"], detail["event_json"]["sender"]) == (
        "m.room.message",
        alice.user_id,
    )
    del detail["event_json"]
    assert detail == {
        "id": event_report["id"],
        "received_ts": event_report["received_ts"],
        "room_id": room_id,
        "name": "Market",
        "canonical_alias": None,
        "user_id": bob.user_id,
        "reason": "spam",
        "event_id": event_id,
        "score": -50,
        "sender": alice.user_id,
    }
    whole = await admin_ok(http, admin, "GET", f"/v1/event_reports/{room_report['id']}")
    assert (whole["room_id"], whole["reason"], whole["name"]) == (
        room_id,
        "the whole room",
        "Market",
    )
    assert "event_id" not in whole

    await admin_refused(
        http, admin, "GET", "/v1/event_reports/999", status=404, errcode="M_NOT_FOUND"
    )
    await admin_refused(
        http, admin, "GET", "/v1/event_reports/abc", status=400, errcode="M_INVALID_PARAM"
    )
    await admin_refused(
        http,
        bob,
        "GET",
        f"/v1/event_reports/{event_report['id']}",
        status=403,
        errcode="M_FORBIDDEN",
    )


async def test_a_deleted_report_is_gone(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/report", {"reason": "first"})
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/report", {"reason": "second"})
    first, second = (await admin_ok(http, admin, "GET", "/v1/event_reports"))["event_reports"]
    path = f"/v1/event_reports/{first['id']}"
    await admin_refused(http, bob, "DELETE", path, status=403, errcode="M_FORBIDDEN")
    assert await admin_ok(http, admin, "DELETE", path) == {}
    listed = await admin_ok(http, admin, "GET", "/v1/event_reports")
    assert [report["id"] for report in listed["event_reports"]] == [second["id"]]
    assert listed["total"] == 1
    await admin_refused(http, admin, "GET", path, status=404, errcode="M_NOT_FOUND")
    await admin_refused(http, admin, "DELETE", path, status=404, errcode="M_NOT_FOUND")
    await admin_refused(
        http, admin, "DELETE", "/v1/event_reports/x1", status=400, errcode="M_INVALID_PARAM"
    )
