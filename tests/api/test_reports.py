"""Reporting rooms and events over real HTTP, and the admins' list of reports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import Client, WithAdmin, open_with_admin, q

ADMIN_REPORTS = "/_synapse/admin/v1/event_reports"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def _send(c: Client, user: Any, room_id: str, body: str) -> str:
    answer = await c.ok(
        user,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/{body}",
        {"msgtype": "m.text", "body": body},
    )
    event_id: str = answer["event_id"]
    return event_id


async def _reports(env: WithAdmin, **params: Any) -> dict[str, Any]:
    response = await env.client.http.get(
        ADMIN_REPORTS,
        params=params,
        headers={"Authorization": f"Bearer {env.admin.access_token}"},
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_a_member_reports_an_event_and_admins_read_it(env: WithAdmin) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    event_id = await _send(c, alice, room_id, "rude")
    path = f"/rooms/{q(room_id)}/report/{q(event_id)}"
    assert await c.ok(bob, "POST", path, {"reason": "this makes me sad", "score": -100}) == {}
    assert await c.ok(bob, "POST", f"/rooms/{q(room_id)}/report", {"reason": "whole room"}) == {}

    answer = await _reports(env)
    assert answer["total"] == 2
    first, second = answer["event_reports"]
    assert {key: first[key] for key in ("room_id", "event_id", "user_id", "reason", "score")} == {
        "room_id": room_id,
        "event_id": event_id,
        "user_id": bob.user_id,
        "reason": "this makes me sad",
        "score": -100,
    }
    assert isinstance(first["received_ts"], int)
    assert "event_id" not in second
    assert (second["room_id"], second["reason"]) == (room_id, "whole room")
    assert second["id"] > first["id"]
    # Paged by number.
    page = await _reports(env, limit=1)
    assert [entry["id"] for entry in page["event_reports"]] == [first["id"]]
    assert page["next_token"] == first["id"]
    rest = await _reports(env, **{"from": page["next_token"]})
    assert [entry["id"] for entry in rest["event_reports"]] == [second["id"]]
    assert "next_token" not in rest


async def test_an_event_the_reporter_cannot_see_is_not_found(env: WithAdmin) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    private = await c.create_room(alice, preset="private_chat")
    hidden = await _send(c, alice, private, "secret")
    public = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(public)}/join", {})
    visible = await _send(c, alice, public, "hello")
    # Not in the room, an event of another room, no such event.
    for room_id, event_id in (
        (private, hidden),
        (public, hidden),
        (public, "$nothing:hs.test"),
    ):
        await c.refused(
            bob,
            "POST",
            f"/rooms/{q(room_id)}/report/{q(event_id)}",
            {"reason": "x"},
            status=404,
            errcode="M_NOT_FOUND",
        )
    # A member who has left cannot report either.
    await c.ok(bob, "POST", f"/rooms/{q(public)}/leave", {})
    await c.refused(
        bob,
        "POST",
        f"/rooms/{q(public)}/report/{q(visible)}",
        {},
        status=404,
        errcode="M_NOT_FOUND",
    )
    await c.refused(
        bob,
        "POST",
        f"/rooms/{q('!unknown:hs.test')}/report",
        {"reason": "x"},
        status=404,
        errcode="M_NOT_FOUND",
    )
    assert (await _reports(env))["total"] == 0


async def test_bad_reports_are_refused_and_kept_nowhere(env: WithAdmin) -> None:
    c, alice = env.client, env.alice
    room_id = await c.create_room(alice, preset="public_chat")
    event_id = await _send(c, alice, room_id, "hi")
    path = f"/rooms/{q(room_id)}/report/{q(event_id)}"
    await c.refused(None, "POST", path, {}, status=401, errcode="M_MISSING_TOKEN")
    await c.refused(alice, "POST", path, {"score": 5}, status=400, errcode="M_INVALID_PARAM")
    await c.refused(alice, "POST", path, {"score": "bad"}, status=400, errcode="M_BAD_JSON")
    await c.refused(alice, "POST", path, {"score": True}, status=400, errcode="M_BAD_JSON")
    await c.refused(alice, "POST", path, {"reason": 3}, status=400, errcode="M_BAD_JSON")
    await c.refused(
        alice, "POST", path, {"reason": "x" * 4097}, status=400, errcode="M_INVALID_PARAM"
    )
    await c.refused(alice, "POST", path, raw=b"[]", status=400, errcode="M_NOT_JSON")
    assert (await _reports(env))["total"] == 0


async def test_only_admins_read_reports(env: WithAdmin) -> None:
    http = env.client.http
    response = await http.get(
        ADMIN_REPORTS, headers={"Authorization": f"Bearer {env.alice.access_token}"}
    )
    assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
    response = await http.get(ADMIN_REPORTS)
    assert (response.status_code, response.json()["errcode"]) == (401, "M_MISSING_TOKEN")
    response = await http.get(
        ADMIN_REPORTS,
        params={"limit": 0},
        headers={"Authorization": f"Bearer {env.admin.access_token}"},
    )
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")
