"""Reporting users over real HTTP (``POST /_matrix/client/v3/users/{userId}/report``),
the admins' list of those reports and each report alone, the refusals, and
the rate limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import Client, WithAdmin, open_with_admin, q

from ranvier.testing.homeserver import TestUser, open_test_homeserver

USER_REPORTS = "/_synapse/admin/v1/user_reports"
EVENT_REPORTS = "/_synapse/admin/v1/event_reports"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def _admin_get(
    env: WithAdmin, path: str, user: TestUser | None = None, **params: Any
) -> tuple[int, dict[str, Any]]:
    who = user or env.admin
    response = await env.client.http.get(
        path, params=params, headers={"Authorization": f"Bearer {who.access_token}"}
    )
    answer: dict[str, Any] = response.json()
    return response.status_code, answer


async def _listed(env: WithAdmin, **params: Any) -> dict[str, Any]:
    status, answer = await _admin_get(env, USER_REPORTS, **params)
    assert status == 200, answer
    return answer


async def _report(c: Client, user: TestUser, target: str, body: Any) -> None:
    assert await c.ok(user, "POST", f"/users/{q(target)}/report", body) == {}


async def test_a_user_is_reported_and_admins_read_it(env: WithAdmin) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    await _report(c, bob, alice.user_id, {"reason": "sends spam"})
    # A user of another server: kept on the reporter's word.
    await _report(c, alice, "@troll:elsewhere.test", {"reason": ""})
    await _report(c, bob, alice.user_id, {})

    answer = await _listed(env)
    assert answer["total"] == 3
    first, second, third = answer["user_reports"]
    assert set(first) == {"id", "received_ts", "target_user_id", "user_id", "reason"}
    assert (first["target_user_id"], first["user_id"], first["reason"]) == (
        alice.user_id,
        bob.user_id,
        "sends spam",
    )
    assert (second["target_user_id"], second["user_id"], second["reason"]) == (
        "@troll:elsewhere.test",
        alice.user_id,
        "",
    )
    assert (third["target_user_id"], third["reason"]) == (alice.user_id, None)
    assert first["id"] < second["id"] < third["id"]
    assert isinstance(first["received_ts"], int)
    assert first["received_ts"] > 0

    # Paged by number, and filtered by the reported user.
    page = await _listed(env, limit=1)
    assert (page["user_reports"], page["next_token"]) == ([first], first["id"])
    rest = await _listed(env, **{"from": page["next_token"]})
    assert rest["user_reports"] == [second, third]
    assert "next_token" not in rest
    alices = await _listed(env, target_user_id=alice.user_id)
    assert (alices["user_reports"], alices["total"]) == ([first, third], 2)

    # One report alone.
    status, alone = await _admin_get(env, f"{USER_REPORTS}/{second['id']}")
    assert (status, alone) == (200, second)
    status, missing = await _admin_get(env, f"{USER_REPORTS}/{third['id'] + 1}")
    assert (status, missing["errcode"]) == (404, "M_NOT_FOUND")
    status, bad = await _admin_get(env, f"{USER_REPORTS}/first")
    assert (status, bad["errcode"]) == (400, "M_INVALID_PARAM")

    # Reports of users are not among those of rooms and events.
    status, events = await _admin_get(env, EVENT_REPORTS)
    assert (status, events["total"], events["event_reports"]) == (200, 0, [])


async def test_a_local_user_who_does_not_exist_is_answered_alike_and_nothing_kept(
    env: WithAdmin,
) -> None:
    c, bob = env.client, env.bob
    await _report(c, bob, "@nobody:localhost", {"reason": "who?"})
    assert (await _listed(env))["total"] == 0
    await _report(c, bob, env.alice.user_id, {"reason": "someone"})
    assert (await _listed(env))["total"] == 1


async def test_bad_reports_are_refused_and_kept_nowhere(env: WithAdmin) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    path = f"/users/{q(alice.user_id)}/report"
    await c.refused(
        bob, "POST", "/users/not-a-user/report", {}, status=400, errcode="M_INVALID_PARAM"
    )
    await c.refused(bob, "POST", path, {"reason": 5}, status=400, errcode="M_BAD_JSON")
    await c.refused(
        bob, "POST", path, {"reason": "x" * 5000}, status=400, errcode="M_INVALID_PARAM"
    )
    await c.refused(bob, "POST", path, [1], status=400, errcode="M_NOT_JSON")
    await c.refused(None, "POST", path, {"reason": "x"}, status=401, errcode="M_MISSING_TOKEN")
    assert (await _listed(env))["total"] == 0


async def test_only_admins_read_reports_of_users(env: WithAdmin) -> None:
    await _report(env.client, env.bob, env.alice.user_id, {"reason": "spam"})
    for path in (USER_REPORTS, f"{USER_REPORTS}/1"):
        status, answer = await _admin_get(env, path, env.bob)
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
    status, answer = await _admin_get(env, USER_REPORTS, limit=0)
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")


async def test_reports_are_rate_limited(tmp_path: Path) -> None:
    async with (
        open_test_homeserver(tmp_path / "hs", rate_limits=True) as hs,
        hs.client() as http,
    ):
        c = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        answers = [
            await c.call(bob, "POST", f"/users/{q(alice.user_id)}/report", {"reason": str(n)})
            for n in range(25)
        ]
        statuses = [status for status, _ in answers]
        # The default burst is 10, refilled one every ten seconds.
        assert statuses[:10] == [200] * 10
        refused = [answer for status, answer in answers if status == 429]
        assert refused
        assert refused[0]["errcode"] == "M_LIMIT_EXCEEDED"
        assert refused[0]["retry_after_ms"] > 0
        # Alice's own reports have a bucket of their own.
        assert (await c.call(alice, "POST", f"/users/{q(bob.user_id)}/report", {}))[0] == 200
        kept = await hs.server.storage.reports.list_user_reports(after=0, limit=100)
        assert kept[1] == statuses.count(200) + 1
