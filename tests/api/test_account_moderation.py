"""Locked and suspended accounts over real HTTP: what each refuses and
allows, that lifting either brings the same sessions back, and the admin
endpoints that set them (the spec's and Synapse's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _admin import admin_call, admin_ok
from _client import WithAdmin, open_with_admin, q

from ranvier.testing.homeserver import TestUser

_V1 = "/_matrix/client/v1/admin"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def _spec_call(
    env: WithAdmin, user: TestUser | None, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    headers = {} if user is None else {"Authorization": f"Bearer {user.access_token}"}
    response = await env.client.http.request(method, _V1 + path, json=body, headers=headers)
    return response.status_code, response.json()


async def _lock(env: WithAdmin, user: TestUser, locked: bool) -> None:
    status, answer = await _spec_call(
        env, env.admin, "PUT", f"/lock/{q(user.user_id)}", {"locked": locked}
    )
    assert (status, answer) == (200, {"locked": locked})


async def _suspend(env: WithAdmin, user: TestUser, suspended: bool) -> None:
    status, answer = await _spec_call(
        env, env.admin, "PUT", f"/suspend/{q(user.user_id)}", {"suspended": suspended}
    )
    assert (status, answer) == (200, {"suspended": suspended})


async def _locked_out(env: WithAdmin, user: TestUser, method: str, path: str, body: Any) -> None:
    status, answer = await env.client.call(user, method, path, body)
    assert status == 401, (method, path, answer)
    assert answer["errcode"] == "M_USER_LOCKED"
    assert answer["soft_logout"] is True
    assert "locked" in answer["error"]


async def _password_login(env: WithAdmin, localpart: str, password: str) -> tuple[int, Any]:
    return await env.client.call(
        None,
        "POST",
        "/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
        },
    )


# Locking.


async def test_a_locked_account_is_refused_everywhere_until_unlocked(env: WithAdmin) -> None:
    client, alice, bob = env.client, env.alice, env.bob
    room_id = await client.create_room(alice)
    await _lock(env, alice, True)

    for method, path, body in [
        ("GET", "/sync", None),
        ("PUT", f"/rooms/{q(room_id)}/send/m.room.message/t1", {"msgtype": "m.text", "body": "x"}),
        ("PUT", f"/profile/{q(alice.user_id)}/displayname", {"displayname": "A"}),
        ("GET", "/account/whoami", None),
        ("GET", "/devices", None),
    ]:
        await _locked_out(env, alice, method, path, body)
    # Others carry on.
    assert (await client.ok(bob, "GET", "/account/whoami"))["user_id"] == bob.user_id

    await _lock(env, alice, False)
    # The very same token works again: nothing was logged out.
    assert (await client.ok(alice, "GET", "/account/whoami"))["user_id"] == alice.user_id
    await client.ok(
        alice,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/t2",
        {"msgtype": "m.text", "body": "back"},
    )


async def test_a_locked_account_may_log_out(env: WithAdmin) -> None:
    carol = await env.hs.register_user("carol")
    await _lock(env, env.alice, True)
    await _lock(env, carol, True)
    assert await env.client.ok(env.alice, "POST", "/logout", {}) == {}
    assert await env.client.ok(carol, "POST", "/logout/all", {}) == {}
    await _lock(env, env.alice, False)
    await _lock(env, carol, False)
    for user in (env.alice, carol):
        await env.client.refused(
            user, "GET", "/account/whoami", status=401, errcode="M_UNKNOWN_TOKEN"
        )


async def test_a_locked_account_gets_no_new_token(env: WithAdmin) -> None:
    dave = await env.hs.register_user("dave", "secret")
    await _lock(env, dave, True)
    status, answer = await _password_login(env, "dave", "secret")
    assert (status, answer["errcode"], answer["soft_logout"]) == (401, "M_USER_LOCKED", True)
    # A wrong password hears what it always hears: the lock is not told.
    status, answer = await _password_login(env, "dave", "wrong")
    assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
    await _lock(env, dave, False)
    status, answer = await _password_login(env, "dave", "secret")
    assert status == 200, answer
    assert answer["user_id"] == dave.user_id


async def test_a_locked_account_cannot_refresh_and_keeps_its_session(env: WithAdmin) -> None:
    gina = await env.hs.register_user("gina", "pw")
    status, login = await env.client.call(
        None,
        "POST",
        "/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "gina"},
            "password": "pw",
            "refresh_token": True,
        },
    )
    assert status == 200, login
    await _lock(env, gina, True)
    status, answer = await env.client.call(
        None, "POST", "/refresh", {"refresh_token": login["refresh_token"]}
    )
    assert (status, answer["errcode"], answer["soft_logout"]) == (401, "M_USER_LOCKED", True)
    assert "access_token" not in answer
    await _lock(env, gina, False)
    # The session is as it was: its token works, and its refresh token too.
    answer = await env.client.ok(None, "GET", "/account/whoami", token=login["access_token"])
    assert answer["device_id"] == login["device_id"]
    refreshed = await env.client.ok(
        None, "POST", "/refresh", {"refresh_token": login["refresh_token"]}
    )
    answer = await env.client.ok(None, "GET", "/account/whoami", token=refreshed["access_token"])
    assert answer["device_id"] == login["device_id"]


async def test_lock_endpoints_are_for_admins_only(env: WithAdmin) -> None:
    bob_path = f"/lock/{q(env.bob.user_id)}"
    for user, status, errcode in [(env.alice, 403, "M_FORBIDDEN"), (None, 401, "M_MISSING_TOKEN")]:
        for method, body in [("GET", None), ("PUT", {"locked": True})]:
            got, answer = await _spec_call(env, user, method, bob_path, body)
            assert (got, answer["errcode"]) == (status, errcode)
    # A user ID that does not exist is not told apart to a non-admin.
    got, answer = await _spec_call(env, env.alice, "GET", f"/lock/{q('@nobody:x.test')}")
    assert (got, answer["errcode"]) == (403, "M_FORBIDDEN")
    assert (await _spec_call(env, env.admin, "GET", bob_path)) == (200, {"locked": False})
    assert (await env.client.ok(env.bob, "GET", "/account/whoami"))["user_id"] == env.bob.user_id


async def test_lock_endpoints_refuse_unknown_remote_and_admin_targets(env: WithAdmin) -> None:
    nobody = f"@nobody:{env.hs.server_name}"
    for method, body in [("GET", None), ("PUT", {"locked": True})]:
        got, answer = await _spec_call(env, env.admin, method, f"/lock/{q(nobody)}", body)
        assert (got, answer["errcode"]) == (404, "M_NOT_FOUND")
        got, answer = await _spec_call(env, env.admin, method, f"/lock/{q('@x:remote.test')}", body)
        assert (got, answer["errcode"]) == (400, "M_INVALID_PARAM")
    other_admin = await env.hs.register_user("root", admin=True)
    for target in (env.admin, other_admin):
        got, answer = await _spec_call(
            env, env.admin, "PUT", f"/lock/{q(target.user_id)}", {"locked": True}
        )
        assert (got, answer["errcode"]) == (403, "M_FORBIDDEN")
    got, answer = await _spec_call(
        env, env.admin, "PUT", f"/lock/{q(env.bob.user_id)}", {"locked": "yes"}
    )
    assert (got, answer["errcode"]) == (400, "M_BAD_JSON")
    # A deactivated account is not found.
    await admin_ok(env.client.http, env.admin, "POST", f"/v1/deactivate/{q(env.bob.user_id)}", {})
    got, answer = await _spec_call(env, env.admin, "GET", f"/lock/{q(env.bob.user_id)}")
    assert (got, answer["errcode"]) == (404, "M_NOT_FOUND")


async def test_the_synapse_user_api_locks_and_shows_the_lock(env: WithAdmin) -> None:
    http, alice = env.client.http, env.alice
    path = f"/v2/users/{q(alice.user_id)}"
    answer = await admin_ok(http, env.admin, "PUT", path, {"locked": True})
    assert answer["locked"] is True
    assert (await admin_ok(http, env.admin, "GET", path))["locked"] is True
    assert (await _spec_call(env, env.admin, "GET", f"/lock/{q(alice.user_id)}")) == (
        200,
        {"locked": True},
    )
    await _locked_out(env, alice, "GET", "/account/whoami", None)
    # The list leaves locked accounts out unless asked, as Synapse's does.
    listed = await admin_ok(http, env.admin, "GET", "/v2/users")
    assert alice.user_id not in [user["name"] for user in listed["users"]]
    listed = await admin_ok(
        http, env.admin, "GET", "/v2/users", params={"locked": "true", "order_by": "locked"}
    )
    names = [user["name"] for user in listed["users"]]
    assert names[-1] == alice.user_id
    assert [user["locked"] for user in listed["users"]] == [False] * (len(names) - 1) + [True]
    listed = await admin_ok(
        http,
        env.admin,
        "GET",
        "/v2/users",
        params={"locked": "true", "order_by": "locked", "dir": "b"},
    )
    assert listed["users"][0]["name"] == alice.user_id

    answer = await admin_ok(http, env.admin, "PUT", path, {"locked": False})
    assert answer["locked"] is False
    assert (await env.client.ok(alice, "GET", "/account/whoami"))["user_id"] == alice.user_id
    # An admin cannot lock themselves out.
    status, answer = await admin_call(
        http, env.admin, "PUT", f"/v2/users/{q(env.admin.user_id)}", {"locked": True}
    )
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")


async def test_an_account_made_locked_cannot_log_in(env: WithAdmin) -> None:
    path = f"/v2/users/{q('@erin:' + env.hs.server_name)}"
    status, answer = await admin_call(
        env.client.http, env.admin, "PUT", path, {"password": "pw", "locked": True}
    )
    assert (status, answer["locked"]) == (201, True)
    status, answer = await _password_login(env, "erin", "pw")
    assert (status, answer["errcode"]) == (401, "M_USER_LOCKED")


# Suspension.


async def _suspended(
    env: WithAdmin, user: TestUser, method: str, path: str, body: Any = None
) -> None:
    status, answer = await env.client.call(user, method, path, body)
    assert (status, answer.get("errcode")) == (403, "M_USER_SUSPENDED"), (method, path, answer)
    assert "suspended" in answer["error"]


async def test_a_suspended_account_is_refused_what_the_list_names(env: WithAdmin) -> None:
    client, alice, bob = env.client, env.alice, env.bob
    carol = await env.hs.register_user("carol")
    room_id = await client.create_room(alice, preset="public_chat")
    await client.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})
    other_room = await client.create_room(bob, preset="public_chat")
    invited_room = await client.create_room(bob, invite=[alice.user_id])
    bobs_event = (
        await client.ok(
            bob,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/b1",
            {"msgtype": "m.text", "body": "bob"},
        )
    )["event_id"]
    await _suspend(env, alice, True)

    room = f"/rooms/{q(room_id)}"
    await _suspended(env, alice, "POST", f"/join/{q(other_room)}", {})
    await _suspended(env, alice, "POST", f"/rooms/{q(other_room)}/join", {})
    await _suspended(env, alice, "POST", f"/rooms/{q(invited_room)}/join", {})
    await _suspended(env, alice, "POST", f"/knock/{q(other_room)}", {})
    await _suspended(env, alice, "POST", f"{room}/invite", {"user_id": carol.user_id})
    # The same, sent as member events through /state.
    own = f"state/m.room.member/{q(alice.user_id)}"
    await _suspended(env, alice, "PUT", f"/rooms/{q(other_room)}/{own}", {"membership": "join"})
    await _suspended(env, alice, "PUT", f"/rooms/{q(other_room)}/{own}", {"membership": "knock"})
    await _suspended(
        env,
        alice,
        "PUT",
        f"{room}/state/m.room.member/{q(carol.user_id)}",
        {"membership": "invite"},
    )
    await _suspended(
        env, alice, "PUT", f"{room}/send/m.room.message/a1", {"msgtype": "m.text", "body": "x"}
    )
    await _suspended(env, alice, "PUT", f"{room}/state/m.room.topic", {"topic": "t"})
    await _suspended(
        env, alice, "PUT", f"/profile/{q(alice.user_id)}/displayname", {"displayname": "A"}
    )
    await _suspended(env, alice, "DELETE", f"/profile/{q(alice.user_id)}/avatar_url")
    await _suspended(env, alice, "PUT", f"{room}/redact/{q(bobs_event)}/r1", {})
    await _suspended(env, alice, "PUT", f"{room}/send/m.room.redaction/r2", {"redacts": bobs_event})
    await _suspended(env, alice, "POST", "/createRoom", {})
    await _suspended(env, alice, "POST", f"{room}/upgrade", {"new_version": "11"})
    # Nothing of it happened.
    state = await client.state(bob, room_id)
    assert ("m.room.topic", "") not in state
    assert ("m.room.member", carol.user_id) not in state
    assert (await client.ok(bob, "GET", f"/profile/{q(alice.user_id)}")).get("displayname") != "A"
    event = await client.ok(bob, "GET", f"{room}/event/{q(bobs_event)}")
    assert event["content"] == {"msgtype": "m.text", "body": "bob"}
    # Others are not suspended.
    await client.ok(
        bob, "PUT", f"{room}/send/m.room.message/b2", {"msgtype": "m.text", "body": "still"}
    )

    await _suspend(env, alice, False)
    await client.ok(
        alice, "PUT", f"{room}/send/m.room.message/a2", {"msgtype": "m.text", "body": "back"}
    )
    await client.ok(alice, "POST", f"/rooms/{q(invited_room)}/join", {})


async def test_a_suspended_account_keeps_what_the_spec_allows(env: WithAdmin) -> None:
    client, alice, bob = env.client, env.alice, env.bob
    room_id = await client.create_room(alice)
    left_room = await client.create_room(alice)
    invited_room = await client.create_room(bob, invite=[alice.user_id])
    declined_room = await client.create_room(bob, invite=[alice.user_id])
    room = f"/rooms/{q(room_id)}"
    mine = [
        (
            await client.ok(
                alice, "PUT", f"{room}/send/m.room.message/m{n}", {"msgtype": "m.text", "body": "a"}
            )
        )["event_id"]
        for n in range(2)
    ]
    await _suspend(env, alice, True)

    assert "rooms" in await env.sync(alice)
    await client.ok(alice, "GET", f"{room}/messages", params={"dir": "b"})
    await client.ok(alice, "PUT", f"{room}/redact/{q(mine[0])}/r1", {"reason": "mine"})
    await client.ok(alice, "PUT", f"{room}/send/m.room.redaction/r2", {"redacts": mine[1]})
    for event_id in mine:
        event = await client.ok(alice, "GET", f"{room}/event/{q(event_id)}")
        assert event["content"] == {}
    await client.ok(alice, "POST", f"/rooms/{q(left_room)}/leave", {})
    await client.ok(alice, "POST", f"/rooms/{q(invited_room)}/leave", {})
    assert (await client.state(bob, invited_room))[("m.room.member", alice.user_id)]["content"][
        "membership"
    ] == "leave"
    # Declining an invite sent as her member event through /state is the same leave.
    await client.ok(
        alice,
        "PUT",
        f"/rooms/{q(declined_room)}/state/m.room.member/{q(alice.user_id)}",
        {"membership": "leave"},
    )
    assert (await client.state(bob, declined_room))[("m.room.member", alice.user_id)]["content"][
        "membership"
    ] == "leave"
    # Still suspended after all that.
    await _suspended(env, alice, "POST", "/createRoom", {})


async def test_a_suspended_account_may_delete_a_device_and_log_out(env: WithAdmin) -> None:
    frank = await env.hs.register_user("frank", "pw")
    await _suspend(env, frank, True)
    # Logging in is allowed, and the new session is suspended too.
    status, login = await _password_login(env, "frank", "pw")
    assert status == 200, login
    second = TestUser(frank.user_id, login["access_token"], login["device_id"])
    await _suspended(env, second, "POST", "/createRoom", {})
    status, answer = await env.client.call(
        frank,
        "DELETE",
        f"/devices/{q(second.device_id)}",
        {
            "auth": {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "frank"},
                "password": "pw",
            }
        },
    )
    assert status == 200, answer
    await env.client.refused(
        second, "GET", "/account/whoami", status=401, errcode="M_UNKNOWN_TOKEN"
    )
    assert await env.client.ok(frank, "POST", "/logout", {}) == {}


async def test_suspension_endpoints(env: WithAdmin) -> None:
    http, alice = env.client.http, env.alice
    path = f"/suspend/{q(alice.user_id)}"
    got, answer = await _spec_call(env, env.bob, "PUT", path, {"suspended": True})
    assert (got, answer["errcode"]) == (403, "M_FORBIDDEN")
    got, answer = await _spec_call(env, env.bob, "GET", path)
    assert (got, answer["errcode"]) == (403, "M_FORBIDDEN")
    assert await _spec_call(env, env.admin, "GET", path) == (200, {"suspended": False})
    got, answer = await _spec_call(
        env, env.admin, "GET", f"/suspend/{q('@n:' + env.hs.server_name)}"
    )
    assert (got, answer["errcode"]) == (404, "M_NOT_FOUND")
    got, answer = await _spec_call(
        env, env.admin, "PUT", f"/suspend/{q(env.admin.user_id)}", {"suspended": True}
    )
    assert (got, answer["errcode"]) == (403, "M_FORBIDDEN")

    # Synapse's endpoint, and its user query showing the flag.
    synapse = f"/v1/suspend/{q(alice.user_id)}"
    status, answer = await admin_call(http, env.bob, "PUT", synapse, {"suspend": True})
    assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
    answer = await admin_ok(http, env.admin, "PUT", synapse, {"suspend": True})
    assert answer == {f"user_{alice.user_id}_suspended": True}
    user = await admin_ok(http, env.admin, "GET", f"/v2/users/{q(alice.user_id)}")
    assert (user["suspended"], user["locked"]) == (True, False)
    assert await _spec_call(env, env.admin, "GET", path) == (200, {"suspended": True})
    await _suspended(env, alice, "POST", "/createRoom", {})
    status, answer = await admin_call(
        http, env.admin, "PUT", f"/v1/suspend/{q('@x:remote.test')}", {"suspend": True}
    )
    assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM")
    status, answer = await admin_call(
        http, env.admin, "PUT", f"/v1/suspend/{q('@n:' + env.hs.server_name)}", {"suspend": True}
    )
    assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
    answer = await admin_ok(http, env.admin, "PUT", synapse, {"suspend": False})
    assert answer == {f"user_{alice.user_id}_suspended": False}
    user = await admin_ok(http, env.admin, "GET", f"/v2/users/{q(alice.user_id)}")
    assert user["suspended"] is False
    await env.client.ok(alice, "POST", "/createRoom", {})


async def test_admins_are_told_they_may_lock_and_suspend(env: WithAdmin) -> None:
    answer = await env.client.ok(env.admin, "GET", "/capabilities")
    assert answer["capabilities"]["m.account_moderation"] == {"lock": True, "suspend": True}
    answer = await env.client.ok(env.alice, "GET", "/capabilities")
    assert "m.account_moderation" not in answer["capabilities"]
