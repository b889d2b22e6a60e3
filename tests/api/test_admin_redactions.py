"""The admin's bulk redaction of a user's events over real HTTP: every
room the user is in or named ones, limits and time bounds, who redacts in
each room (the admin, the room's local admin, the user), the events that
fail and why, the status, refusals, and a job a stop interrupted resumed
by the next start."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from _admin import admin_call, admin_ok, admin_refused
from _client import Client, WithAdmin, open_with_admin, q

from ranvier.core.admin_redactions import DEFAULT_LIMIT
from ranvier.storage.admin_redactions import RedactionJob
from ranvier.testing.homeserver import TestUser, open_test_homeserver


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def _say(client: Client, user: TestUser, room_id: str, body: str) -> str:
    sent = await client.ok(
        user,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/{q(room_id + body)}",
        {"msgtype": "m.text", "body": body},
    )
    event_id: str = sent["event_id"]
    return event_id


async def _event(client: Client, user: TestUser, room_id: str, event_id: str) -> dict[str, Any]:
    event: dict[str, Any] = await client.ok(user, "GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")
    return event


async def _redacted_by(
    client: Client, user: TestUser, room_id: str, event_id: str
) -> dict[str, Any] | None:
    """The redaction applied to the event, as ``user`` is served it; None if none."""
    event = await _event(client, user, room_id, event_id)
    because: dict[str, Any] | None = event.get("unsigned", {}).get("redacted_because")
    return because


async def _finished(http: Any, admin: TestUser, redact_id: str) -> dict[str, Any]:
    """The job's status once it is no longer active (polled, for at most 20 s)."""
    with trio.fail_after(20):
        while True:
            status: dict[str, Any] = await admin_ok(
                http, admin, "GET", f"/v1/user/redact_status/{q(redact_id)}"
            )
            if status["status"] != "active":
                return status
            await trio.sleep(0.02)


async def _redact(env: WithAdmin, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = await admin_ok(
        env.client.http, env.admin, "POST", f"/v1/user/{q(user_id)}/redact", body
    )
    assert set(answer) == {"redact_id"}
    return await _finished(env.client.http, env.admin, answer["redact_id"])


async def test_a_users_events_in_all_their_rooms_are_redacted(env: WithAdmin) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    carol = await env.hs.register_user("carol")
    rooms = [
        await c.create_room(alice, preset="public_chat", room_version=version)
        for version in ("10", "11", "12")
    ]
    spam: dict[str, list[str]] = {}
    for room_id in rooms:
        joined = await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
        assert joined["room_id"] == room_id
        await c.ok(carol, "POST", f"/rooms/{q(room_id)}/join", {})
        state = await c.state(alice, room_id)
        spam[room_id] = [state[("m.room.member", bob.user_id)]["event_id"]]
        spam[room_id] += [await _say(c, bob, room_id, f"buy now {n}") for n in range(3)]
        encrypted = await c.ok(
            bob,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.encrypted/e1",
            {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA", "session_id": "s"},
        )
        spam[room_id].append(encrypted["event_id"])
    # What is not Bob's, or not of the kinds redacted, stays.
    first = rooms[0]
    carols = await _say(c, carol, first, "hello")
    reaction = await c.ok(
        bob,
        "PUT",
        f"/rooms/{q(first)}/send/m.reaction/r1",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": carols, "key": "x"}},
    )
    # A room Bob left is not one of his rooms.
    left = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/rooms/{q(left)}/join", {})
    said_and_left = await _say(c, bob, left, "bye")
    await c.ok(bob, "POST", f"/rooms/{q(left)}/leave", {})

    status = await _redact(env, bob.user_id, {"rooms": [], "reason": "spam"})
    assert status == {"status": "complete", "failed_redactions": {}}
    for room_id, event_ids in spam.items():
        for event_id in event_ids:
            because = await _redacted_by(c, carol, room_id, event_id)
            assert because is not None, (room_id, event_id)
            # The admin is in none of the rooms: Alice, their admin, redacts.
            assert because["sender"] == alice.user_id
            assert because["content"]["reason"] == "spam"
        message = await _event(c, carol, room_id, event_ids[1])
        assert message["content"] == {}
    assert await _redacted_by(c, carol, first, carols) is None
    assert await _redacted_by(c, carol, first, reaction["event_id"]) is None
    assert await _redacted_by(c, alice, left, said_and_left) is None
    # Bob's join, redacted, keeps its membership and loses the rest.
    join = await _event(c, carol, first, spam[first][0])
    assert join["content"] == {"membership": "join"}

    # Run again, it finds nothing left to redact and sends nothing more.
    before = await c.ok(alice, "GET", f"/rooms/{q(first)}/messages", params={"dir": "b"})
    assert await _redact(env, bob.user_id, {"rooms": []}) == {
        "status": "complete",
        "failed_redactions": {},
    }
    after = await c.ok(alice, "GET", f"/rooms/{q(first)}/messages", params={"dir": "b"})
    assert after["chunk"][0]["event_id"] == before["chunk"][0]["event_id"]


async def test_named_rooms_a_limit_and_time_bounds(env: WithAdmin) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    named = await c.create_room(alice, preset="public_chat")
    other = await c.create_room(alice, preset="public_chat")
    for room_id in (named, other):
        await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    said = [await _say(c, bob, named, f"m{n}") for n in range(6)]
    elsewhere = await _say(c, bob, other, "elsewhere")

    # The newest two only, in the named room only.
    await _redact(env, bob.user_id, {"rooms": [named], "limit": 2})
    redacted = [await _redacted_by(c, alice, named, event_id) is not None for event_id in said]
    assert redacted == [False, False, False, False, True, True]
    assert await _redacted_by(c, alice, other, elsewhere) is None

    # Within time bounds (inclusive): m1 to m2.
    stamps = [(await _event(c, alice, named, event_id))["origin_server_ts"] for event_id in said]
    body = {"rooms": [named], "after_ts": stamps[1], "before_ts": stamps[2]}
    await _redact(env, bob.user_id, body)
    redacted = [await _redacted_by(c, alice, named, event_id) is not None for event_id in said]
    expected = [stamps[1] <= stamp <= stamps[2] or n >= 4 for n, stamp in enumerate(stamps)]
    assert redacted == expected
    assert redacted[1]
    assert redacted[2]


async def test_who_redacts_in_each_room_and_what_fails(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    # The admin, made a room admin, redacts there.
    moderated = await c.create_room(alice, preset="public_chat")
    await admin_ok(http, admin, "POST", f"/v1/rooms/{q(moderated)}/make_room_admin")
    # Nobody of ours has power in this one once Alice is gone: Bob redacts his own.
    unwatched = await c.create_room(alice, preset="public_chat", room_version="10")
    # Nobody of ours is left in this one at all.
    abandoned = await c.create_room(alice, preset="public_chat")
    said: dict[str, str] = {}
    for room_id in (moderated, unwatched, abandoned):
        await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
        said[room_id] = await _say(c, bob, room_id, "spam")
    await c.ok(alice, "POST", f"/rooms/{q(unwatched)}/leave", {})
    await c.ok(bob, "POST", f"/rooms/{q(abandoned)}/leave", {})
    await c.ok(alice, "POST", f"/rooms/{q(abandoned)}/leave", {})
    rooms = [moderated, unwatched, abandoned]

    status = await _redact(env, bob.user_id, {"rooms": rooms, "limit": 1})
    assert status["status"] == "complete"
    assert set(status["failed_redactions"]) == {said[abandoned]}
    assert "no user of" in status["failed_redactions"][said[abandoned]]
    by_moderator = await _redacted_by(c, bob, moderated, said[moderated])
    assert by_moderator is not None
    assert by_moderator["sender"] == admin.user_id
    by_himself = await _redacted_by(c, bob, unwatched, said[unwatched])
    assert by_himself is not None
    assert by_himself["sender"] == bob.user_id

    # With use_admin, only the admin redacts: Bob's join in the rooms where
    # the admin is not fails, and is left as it was.
    status = await _redact(env, bob.user_id, {"rooms": rooms, "use_admin": True})
    assert status["status"] == "complete"
    failed = status["failed_redactions"]
    joins = {
        room_id: (await c.state(alice if room_id == moderated else bob, room_id)).get(
            ("m.room.member", bob.user_id)
        )
        for room_id in (moderated, unwatched)
    }
    unwatched_join = joins[unwatched]
    assert unwatched_join is not None
    assert unwatched_join["event_id"] in failed
    assert admin.user_id in failed[unwatched_join["event_id"]]
    assert await _redacted_by(c, bob, unwatched, unwatched_join["event_id"]) is None
    moderated_join = joins[moderated]
    assert moderated_join is not None
    assert moderated_join["event_id"] not in failed
    assert await _redacted_by(c, bob, moderated, moderated_join["event_id"]) is not None


async def test_bad_requests_are_refused(env: WithAdmin) -> None:
    c, http, admin, alice, bob = env.client, env.client.http, env.admin, env.alice, env.bob
    server = env.hs.server_name
    room_id = await c.create_room(alice, preset="public_chat")
    path = f"/v1/user/{q(bob.user_id)}/redact"
    cases: list[tuple[str, Any, int, str]] = [
        (path, {}, 400, "M_MISSING_PARAM"),
        (path, {"rooms": room_id}, 400, "M_INVALID_PARAM"),
        (path, {"rooms": [7]}, 400, "M_INVALID_PARAM"),
        (path, {"rooms": ["lobby"]}, 400, "M_INVALID_PARAM"),
        (path, {"rooms": ["!unknown:" + server]}, 404, "M_NOT_FOUND"),
        (path, {"rooms": [], "limit": 0}, 400, "M_INVALID_PARAM"),
        (path, {"rooms": [], "limit": "10"}, 400, "M_INVALID_PARAM"),
        (path, {"rooms": [], "reason": 5}, 400, "M_INVALID_PARAM"),
        (path, {"rooms": [], "use_admin": "yes"}, 400, "M_INVALID_PARAM"),
        (path, {"rooms": [], "before_ts": 1.5}, 400, "M_INVALID_PARAM"),
        (f"/v1/user/{q('@nobody:' + server)}/redact", {"rooms": []}, 404, "M_NOT_FOUND"),
        (f"/v1/user/{q('bob')}/redact", {"rooms": []}, 400, "M_INVALID_PARAM"),
    ]
    for where, body, status, errcode in cases:
        await admin_refused(http, admin, "POST", where, body, status=status, errcode=errcode)
    await admin_refused(
        http, admin, "GET", "/v1/user/redact_status/nothing", status=404, errcode="M_NOT_FOUND"
    )
    # Admins only, both endpoints.
    await admin_refused(http, bob, "POST", path, {"rooms": []}, status=403, errcode="M_FORBIDDEN")
    got, answer = await admin_call(http, None, "POST", path, {"rooms": []})
    assert (got, answer["errcode"]) == (401, "M_MISSING_TOKEN")
    done = await admin_ok(http, admin, "POST", path, {"rooms": []})
    await admin_refused(
        http, bob, "GET", f"/v1/user/redact_status/{q(done['redact_id'])}",
        status=403, errcode="M_FORBIDDEN",
    )  # fmt: skip

    # One active job per user: a second is refused while one is recorded active.
    await _finished(http, admin, done["redact_id"])
    jobs = env.hs.server.storage.admin_redactions
    busy = RedactionJob(
        redact_id="busy",
        user_id=bob.user_id,
        admin_id=admin.user_id,
        rooms=[],
        reason=None,
        per_room_limit=DEFAULT_LIMIT,
        before_ts=None,
        after_ts=None,
        use_admin=False,
    )
    assert await jobs.start_job(busy, forget_before_ts=0)
    message = await admin_refused(
        http, admin, "POST", path, {"rooms": []}, status=400, errcode="M_UNKNOWN"
    )
    assert bob.user_id in message
    # Another user's job is not held up.
    assert (await _redact(env, alice.user_id, {"rooms": []}))["status"] == "complete"


async def test_a_job_a_stop_interrupted_is_resumed_at_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "hs"
    async with open_test_homeserver(data) as hs, hs.client() as http:
        c = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        admin = await hs.register_user("admin", admin=True)
        room_id = await c.create_room(alice, preset="public_chat")
        await c.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
        said = [await _say(c, bob, room_id, f"m{n}") for n in range(3)]
        # The first message was redacted before the stop; the job's record
        # says it is still active.
        await c.ok(alice, "PUT", f"/rooms/{q(room_id)}/redact/{q(said[0])}/t", {})
        job = RedactionJob(
            redact_id="interrupted",
            user_id=bob.user_id,
            admin_id=admin.user_id,
            rooms=[room_id],
            reason="cleanup",
            per_room_limit=DEFAULT_LIMIT,
            before_ts=None,
            after_ts=None,
            use_admin=False,
        )
        assert await hs.server.storage.admin_redactions.start_job(job, forget_before_ts=0)
        await hs.server.storage.admin_redactions.record_failures("interrupted", {"$old": "was"})
        status = await admin_ok(http, admin, "GET", "/v1/user/redact_status/interrupted")
        assert status == {"status": "active", "failed_redactions": {"$old": "was"}}

    async with open_test_homeserver(data) as hs, hs.client() as http:
        c = Client(hs, http)
        status = await _finished(http, admin, "interrupted")
        # Run again from the start: failures of before are forgotten.
        assert status == {"status": "complete", "failed_redactions": {}}
        for event_id in said[1:]:
            because = await _redacted_by(c, alice, room_id, event_id)
            assert because is not None
            assert because["content"]["reason"] == "cleanup"
        # The message redacted before keeps its one redaction.
        first = await _redacted_by(c, alice, room_id, said[0])
        assert first is not None
        assert "reason" not in first["content"]

    # The finished job's status outlives a restart too.
    async with open_test_homeserver(data) as hs, hs.client() as http:
        status = await admin_ok(http, admin, "GET", "/v1/user/redact_status/interrupted")
        assert status["status"] == "complete"
