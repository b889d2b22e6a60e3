"""Server notices over HTTP: Synapse's admin API sends them, the user is
invited to a room tagged ``m.server_notice``, reads them once joined, cannot
speak there nor decline the invite, and gets a new room after leaving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
from _admin import admin_call, admin_ok, admin_refused
from _client import Client, WithAdmin, open_with_admin, q

from ranvier.config import ServerNoticesConfig
from ranvier.testing.homeserver import config_for_tests, open_test_homeserver

_SEND = "/v1/send_server_notice"
_SYSTEM = "@notices:localhost"


@asynccontextmanager
async def _with_notices(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    config = msgspec.structs.replace(
        config_for_tests(tmp_path / "hs"),
        server_notices=ServerNoticesConfig(
            system_mxid_localpart="notices",
            system_mxid_display_name="Server Notices",
            system_mxid_avatar_url="mxc://localhost/notices",
            room_name="From the operators",
        ),
    )
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as http:
        yield WithAdmin(
            hs,
            Client(hs, http),
            await hs.register_user("alice"),
            await hs.register_user("bob"),
            await hs.register_user("admin", admin=True),
        )


def _notice(body: str) -> dict[str, Any]:
    return {
        "msgtype": "m.server_notice",
        "body": body,
        "server_notice_type": "m.server_notice.usage_limit_reached",
        "limit_type": "monthly_active_user",
    }


async def _send(env: WithAdmin, user_id: str, body: str) -> str:
    answer = await admin_ok(
        env.client.http, env.admin, "POST", _SEND, {"user_id": user_id, "content": _notice(body)}
    )
    event_id: str = answer["event_id"]
    return event_id


async def _sync(env: WithAdmin, user: Any) -> dict[str, Any]:
    answer: dict[str, Any] = await env.client.ok(user, "GET", "/sync")
    return answer


async def _invited_room(env: WithAdmin, user: Any) -> str:
    (room_id,) = (await _sync(env, user))["rooms"].get("invite", {})
    return str(room_id)


async def _notices_in(env: WithAdmin, user: Any, room_id: str) -> list[dict[str, Any]]:
    answer = await env.client.ok(
        user, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "f", "limit": 50}
    )
    return [
        event
        for event in answer["chunk"]
        if event["type"] == "m.room.message" and event["sender"] == _SYSTEM
    ]


async def test_a_notice_invites_to_a_tagged_room_and_is_read_once_joined(tmp_path: Path) -> None:
    async with _with_notices(tmp_path) as env:
        alice, client = env.alice, env.client
        first = await _send(env, alice.user_id, "maintenance at noon")

        sync = await _sync(env, alice)
        (room_id,) = sync["rooms"]["invite"]
        stripped = {
            (event["type"], event["state_key"]): event["content"]
            for event in sync["rooms"]["invite"][room_id]["invite_state"]["events"]
        }
        assert stripped[("m.room.name", "")] == {"name": "From the operators"}
        assert stripped[("m.room.member", alice.user_id)]["membership"] == "invite"
        tag = await client.ok(
            alice, "GET", f"/user/{q(alice.user_id)}/rooms/{q(room_id)}/account_data/m.tag"
        )
        assert tag == {"tags": {"m.server_notice": {}}}

        await client.ok(alice, "POST", f"/rooms/{q(room_id)}/join", {})
        joined = (await _sync(env, alice))["rooms"]["join"][room_id]
        timeline = [event for event in joined["timeline"]["events"] if event["event_id"] == first]
        assert [event["content"] for event in timeline] == [_notice("maintenance at noon")]
        assert timeline[0]["sender"] == _SYSTEM
        account_data = {
            event["type"]: event["content"] for event in joined["account_data"]["events"]
        }
        assert account_data["m.tag"] == {"tags": {"m.server_notice": {}}}
        member = (await client.state(alice, room_id))[("m.room.member", _SYSTEM)]
        assert member["content"]["displayname"] == "Server Notices"
        assert member["content"]["avatar_url"] == "mxc://localhost/notices"

        second = await _send(env, alice.user_id, "done")
        notices = await _notices_in(env, alice, room_id)
        assert [event["event_id"] for event in notices] == [first, second]
        assert (await _sync(env, alice))["rooms"].get("invite", {}) == {}


async def test_the_user_cannot_speak_or_decline_but_may_leave_for_a_new_room(
    tmp_path: Path,
) -> None:
    async with _with_notices(tmp_path) as env:
        alice, client = env.alice, env.client
        await _send(env, alice.user_id, "one")
        room_id = await _invited_room(env, alice)
        await client.refused(
            alice,
            "POST",
            f"/rooms/{q(room_id)}/leave",
            {},
            status=403,
            errcode="M_CANNOT_LEAVE_SERVER_NOTICE_ROOM",
        )
        # Nor as a member event of their own, which is the same leave.
        await client.refused(
            alice,
            "PUT",
            f"/rooms/{q(room_id)}/state/m.room.member/{q(alice.user_id)}",
            {"membership": "leave"},
            status=403,
            errcode="M_CANNOT_LEAVE_SERVER_NOTICE_ROOM",
        )
        assert await _invited_room(env, alice) == room_id

        await client.ok(alice, "POST", f"/rooms/{q(room_id)}/join", {})
        for path, body in (
            (f"/rooms/{q(room_id)}/send/m.room.message/t1", {"msgtype": "m.text", "body": "hi"}),
            (f"/rooms/{q(room_id)}/state/m.room.topic", {"topic": "mine"}),
        ):
            await client.refused(alice, "PUT", path, body, status=403, errcode="M_FORBIDDEN")
        await client.refused(
            alice,
            "POST",
            f"/rooms/{q(room_id)}/invite",
            {"user_id": env.bob.user_id},
            status=403,
            errcode="M_FORBIDDEN",
        )

        await client.ok(alice, "POST", f"/rooms/{q(room_id)}/leave", {})
        again = await _send(env, alice.user_id, "two")
        new_room = await _invited_room(env, alice)
        assert new_room != room_id
        await client.ok(alice, "POST", f"/rooms/{q(new_room)}/join", {})
        assert [event["event_id"] for event in await _notices_in(env, alice, new_room)] == [again]


async def test_a_transaction_id_sends_once(tmp_path: Path) -> None:
    async with _with_notices(tmp_path) as env:
        http, alice = env.client.http, env.alice
        body = {"user_id": alice.user_id, "content": _notice("once")}
        first = await admin_ok(http, env.admin, "PUT", f"{_SEND}/txn1", body)
        repeated = await admin_ok(http, env.admin, "PUT", f"{_SEND}/txn1", body)
        other = await admin_ok(http, env.admin, "PUT", f"{_SEND}/txn2", body)
        assert repeated == first
        assert other != first

        room_id = await _invited_room(env, alice)
        await env.client.ok(alice, "POST", f"/rooms/{q(room_id)}/join", {})
        sent = [event["event_id"] for event in await _notices_in(env, alice, room_id)]
        assert sent == [first["event_id"], other["event_id"]]


async def test_refusals(tmp_path: Path) -> None:
    async with _with_notices(tmp_path) as env:
        http, alice = env.client.http, env.alice
        good = {"user_id": alice.user_id, "content": _notice("x")}
        await admin_refused(http, alice, "POST", _SEND, good, status=403, errcode="M_FORBIDDEN")
        await admin_refused(
            http, alice, "PUT", f"{_SEND}/t", good, status=403, errcode="M_FORBIDDEN"
        )
        status, _ = await admin_call(http, None, "POST", _SEND, good)
        assert status == 401
        message = await admin_refused(
            http,
            env.admin,
            "POST",
            _SEND,
            {"user_id": "@alice:elsewhere.example", "content": _notice("x")},
            status=400,
            errcode="M_UNKNOWN",
        )
        assert "local users" in message
        await admin_refused(
            http,
            env.admin,
            "POST",
            _SEND,
            {"user_id": "@nobody:localhost", "content": _notice("x")},
            status=404,
            errcode="M_NOT_FOUND",
        )
        await admin_refused(
            http,
            env.admin,
            "POST",
            _SEND,
            {"user_id": alice.user_id},
            status=400,
            errcode="M_MISSING_PARAM",
        )
        await admin_refused(
            http,
            env.admin,
            "POST",
            _SEND,
            {"user_id": alice.user_id, "content": "text"},
            status=400,
            errcode="M_BAD_JSON",
        )
        await admin_refused(
            http,
            env.admin,
            "POST",
            _SEND,
            {"user_id": _SYSTEM, "content": _notice("x")},
            status=400,
            errcode="M_INVALID_PARAM",
        )
        # Nothing was sent by any of them.
        assert (await _sync(env, alice))["rooms"].get("invite", {}) == {}


async def test_off_unless_a_system_user_is_configured(tmp_path: Path) -> None:
    async with open_with_admin(tmp_path) as env:
        body = {"user_id": env.alice.user_id, "content": _notice("x")}
        for method, path in (("POST", _SEND), ("PUT", f"{_SEND}/t1")):
            message = await admin_refused(
                env.client.http, env.admin, method, path, body, status=400, errcode="M_UNKNOWN"
            )
            assert "not enabled" in message
        assert not await env.hs.server.accounts.user_exists(_SYSTEM)


async def test_the_system_user_exists_cannot_log_in_and_is_not_found(tmp_path: Path) -> None:
    async with _with_notices(tmp_path) as env:
        alice, client = env.alice, env.client
        assert await env.hs.server.accounts.user_exists(_SYSTEM)
        profile = await client.ok(None, "GET", f"/profile/{q(_SYSTEM)}")
        assert profile == {"displayname": "Server Notices", "avatar_url": "mxc://localhost/notices"}
        for password in ("", "notices", "password"):
            status, answer = await client.call(
                None,
                "POST",
                "/login",
                {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "notices"},
                    "password": password or "x",
                },
            )
            assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")

        await _send(env, alice.user_id, "hello")
        room_id = await _invited_room(env, alice)
        await client.ok(alice, "POST", f"/rooms/{q(room_id)}/join", {})
        found = await client.ok(alice, "POST", "/user_directory/search", {"search_term": "notices"})
        assert found["results"] == []
        members = await client.ok(alice, "GET", f"/rooms/{q(room_id)}/joined_members")
        assert _SYSTEM in members["joined"]


async def test_the_servers_own_leaves_are_not_refused(tmp_path: Path) -> None:
    async with _with_notices(tmp_path) as env:
        bob = env.bob
        await _send(env, bob.user_id, "welcome")
        room_id = await _invited_room(env, bob)
        await admin_ok(env.client.http, env.admin, "POST", f"/v1/deactivate/{q(bob.user_id)}", {})
        assert await env.hs.server.room_reader.membership(bob.user_id, room_id) == "leave"


async def test_the_notices_account_takes_no_password_and_stays_active(tmp_path: Path) -> None:
    async with _with_notices(tmp_path) as env:
        http, admin = env.client.http, env.admin
        user_path = f"/v2/users/{q(_SYSTEM)}"
        for method, path, body in [
            ("PUT", user_path, {"password": "let me in"}),
            ("PUT", user_path, {"deactivated": True}),
            ("POST", f"/v1/reset_password/{q(_SYSTEM)}", {"new_password": "let me in"}),
            ("POST", f"/v1/deactivate/{q(_SYSTEM)}", {}),
        ]:
            message = await admin_refused(
                http, admin, method, path, body, status=400, errcode="M_INVALID_PARAM"
            )
            assert "notices" in message
        # Its name and avatar may still be set, and notices still go out.
        await admin_ok(http, admin, "PUT", user_path, {"displayname": "Operators"})
        await _send(env, env.alice.user_id, "still here")
        status, _ = await env.client.call(
            None,
            "POST",
            "/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "notices"},
                "password": "let me in",
            },
        )
        assert status == 403
