"""The user admin API over real HTTP: who may call it, listing and paging,
accounts made and changed then logging in, deactivation and reactivation,
passwords reset, admin rights, devices and rooms."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _admin import admin_call, admin_ok, admin_refused
from _client import WithAdmin, open_with_admin, q

import ranvier
from ranvier.testing.homeserver import TestUser


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


def _user(env: WithAdmin, localpart: str) -> str:
    return f"@{localpart}:{env.hs.server_name}"


async def _login(env: WithAdmin, localpart: str, password: str) -> tuple[int, Any]:
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


async def _whoami(env: WithAdmin, token: str) -> int:
    status, _ = await env.client.call(None, "GET", "/account/whoami", token=token)
    return status


async def test_only_admins_are_answered(env: WithAdmin) -> None:
    http, alice = env.client.http, env.alice
    bob_id = q(env.bob.user_id)
    calls = [
        ("GET", "/v2/users", None),
        ("GET", f"/v2/users/{bob_id}", None),
        ("PUT", f"/v2/users/{bob_id}", {"admin": True}),
        ("POST", f"/v1/deactivate/{bob_id}", {}),
        ("POST", f"/v1/reset_password/{bob_id}", {"new_password": "x"}),
        ("GET", f"/v1/users/{bob_id}/admin", None),
        ("PUT", f"/v1/users/{bob_id}/admin", {"admin": True}),
        ("GET", f"/v1/whois/{bob_id}", None),
        ("GET", f"/v1/users/{bob_id}/joined_rooms", None),
        ("GET", "/v1/rooms", None),
        ("GET", "/v1/event_reports/1", None),
        ("GET", "/v1/event_reports", None),
    ]
    for method, path, body in calls:
        message = await admin_refused(
            http, alice, method, path, body, status=403, errcode="M_FORBIDDEN"
        )
        assert message == "You are not a server admin"
        await admin_refused(http, None, method, path, body, status=401, errcode="M_MISSING_TOKEN")
    # Bob was changed by none of it.
    answer = await admin_ok(http, env.admin, "GET", f"/v2/users/{bob_id}")
    assert (answer["admin"], answer["deactivated"]) == (False, False)
    assert await _whoami(env, env.bob.access_token) == 200


async def test_the_server_version_is_open_to_anyone(env: WithAdmin) -> None:
    status, answer = await admin_call(env.client.http, None, "GET", "/v1/server_version")
    assert (status, answer) == (200, {"server_version": ranvier.__version__})


async def test_users_are_paged_to_the_end_and_filtered(env: WithAdmin) -> None:
    http, admin = env.client.http, env.admin
    for name in ("dave", "erin", "frank", "grace"):
        await env.hs.register_user(name)
    everyone = sorted(
        _user(env, name) for name in ("admin", "alice", "bob", "dave", "erin", "frank", "grace")
    )
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    pages = 0
    while True:
        page = await admin_ok(http, admin, "GET", "/v2/users", params=params)
        assert page["total"] == len(everyone)
        seen.extend(user["name"] for user in page["users"])
        pages += 1
        if "next_token" not in page:
            break
        params["from"] = page["next_token"]
    assert (seen, pages) == (everyone, 3)

    backwards = await admin_ok(
        http, admin, "GET", "/v2/users", params={"order_by": "creation_ts", "dir": "b"}
    )
    times = [user["creation_ts"] for user in backwards["users"]]
    assert times == sorted(times, reverse=True)
    admins = await admin_ok(http, admin, "GET", "/v2/users", params={"admins": "true"})
    assert [user["name"] for user in admins["users"]] == [env.admin.user_id]

    # name matches the localpart or the display name, in any case.
    await env.client.ok(
        env.bob, "PUT", f"/profile/{q(env.bob.user_id)}/displayname", {"displayname": "Robert"}
    )
    found = await admin_ok(http, admin, "GET", "/v2/users", params={"name": "ROB"})
    assert [user["name"] for user in found["users"]] == [env.bob.user_id]
    found = await admin_ok(http, admin, "GET", "/v2/users", params={"name": "fra"})
    assert [user["name"] for user in found["users"]] == [_user(env, "frank")]

    # Deactivated accounts only when asked for.
    await admin_ok(http, admin, "POST", f"/v1/deactivate/{q(_user(env, 'dave'))}", {})
    active = await admin_ok(http, admin, "GET", "/v2/users")
    assert _user(env, "dave") not in [user["name"] for user in active["users"]]
    assert active["total"] == len(everyone) - 1
    every = await admin_ok(http, admin, "GET", "/v2/users", params={"deactivated": "true"})
    (dave,) = [user for user in every["users"] if user["name"] == _user(env, "dave")]
    assert dave["deactivated"] is True

    await admin_refused(
        http,
        admin,
        "GET",
        "/v2/users",
        params={"limit": "0"},
        status=400,
        errcode="M_INVALID_PARAM",
    )
    await admin_refused(
        http,
        admin,
        "GET",
        "/v2/users",
        params={"order_by": "shoe_size"},
        status=400,
        errcode="M_INVALID_PARAM",
    )


async def test_an_account_is_shown(env: WithAdmin) -> None:
    answer = await admin_ok(env.client.http, env.admin, "GET", f"/v2/users/{q(env.alice.user_id)}")
    assert answer["name"] == env.alice.user_id
    assert (answer["admin"], answer["deactivated"], answer["is_guest"]) == (False, False, False)
    assert isinstance(answer["creation_ts"], int)
    assert answer["threepids"] == []
    # The device registering logged in is the account's last activity.
    assert isinstance(answer["last_seen_ts"], int)


async def test_only_local_users_and_known_ones(env: WithAdmin) -> None:
    http, admin = env.client.http, env.admin
    for path in ("/v2/users/{}", "/v1/whois/{}", "/v1/users/{}/joined_rooms", "/v1/users/{}/admin"):
        await admin_refused(
            http, admin, "GET", path.format(q("@x:elsewhere.example")),
            status=400, errcode="M_INVALID_PARAM",
        )  # fmt: skip
        await admin_refused(
            http, admin, "GET", path.format(q(_user(env, "nobody"))),
            status=404, errcode="M_NOT_FOUND",
        )  # fmt: skip
    await admin_refused(
        http, admin, "PUT", f"/v2/users/{q('@x:elsewhere.example')}", {"password": "pw"},
        status=400, errcode="M_INVALID_PARAM",
    )  # fmt: skip


async def test_an_account_made_then_changed_logs_in_with_its_new_password(
    env: WithAdmin,
) -> None:
    http, admin = env.client.http, env.admin
    carol = _user(env, "carol")
    status, made = await admin_call(
        http, admin, "PUT", f"/v2/users/{q(carol)}", {"password": "first", "displayname": "Carol"}
    )
    assert status == 201
    assert (made["name"], made["displayname"], made["admin"]) == (carol, "Carol", False)
    status, login = await _login(env, "carol", "first")
    assert status == 200
    old_token = login["access_token"]

    changed = await admin_ok(
        http,
        admin,
        "PUT",
        f"/v2/users/{q(carol)}",
        {"password": "second", "displayname": "Caroline", "avatar_url": "mxc://a.example/pic"},
    )
    assert (changed["displayname"], changed["avatar_url"]) == ("Caroline", "mxc://a.example/pic")
    # A new password logs every device out unless asked not to.
    assert await _whoami(env, old_token) == 401
    assert (await _login(env, "carol", "first"))[0] == 403
    status, login = await _login(env, "carol", "second")
    assert status == 200
    profile = await env.client.ok(None, "GET", f"/profile/{q(carol)}")
    assert profile == {"displayname": "Caroline", "avatar_url": "mxc://a.example/pic"}

    await admin_ok(
        http, admin, "PUT", f"/v2/users/{q(carol)}", {"password": "third", "logout_devices": False}
    )
    assert await _whoami(env, login["access_token"]) == 200
    assert (await _login(env, "carol", "third"))[0] == 200

    # Made an admin, the token she has now reaches the admin API.
    await admin_ok(http, admin, "PUT", f"/v2/users/{q(carol)}", {"admin": True})
    as_carol = TestUser(carol, login["access_token"], login["device_id"])
    assert (await admin_call(http, as_carol, "GET", "/v2/users"))[0] == 200


async def test_a_bad_body_changes_nothing(env: WithAdmin) -> None:
    http, admin = env.client.http, env.admin
    path = f"/v2/users/{q(env.alice.user_id)}"
    bad = [
        ({"displayname": "New", "avatar_url": "https://not.mxc/x"}, "M_INVALID_PARAM"),
        ({"displayname": "New", "password": 5}, "M_BAD_JSON"),
        ({"displayname": "New", "admin": "yes"}, "M_BAD_JSON"),
        ({"displayname": "New", "threepids": [{"medium": "email", "address": "a@b"}]},
         "M_INVALID_PARAM"),
        ({"displayname": "x" * 300}, "M_INVALID_PARAM"),
    ]  # fmt: skip
    for body, errcode in bad:
        await admin_refused(http, admin, "PUT", path, body, status=400, errcode=errcode)
    await admin_refused(
        http, admin, "PUT", f"/v2/users/{q(_user(env, 'NotLower'))}", {"password": "pw"},
        status=400, errcode="M_INVALID_USERNAME",
    )  # fmt: skip
    answer = await admin_ok(http, admin, "GET", path)
    assert (answer["displayname"], answer["admin"]) == (None, False)
    assert await _whoami(env, env.alice.access_token) == 200
    listed = await admin_ok(http, admin, "GET", "/v2/users")
    assert _user(env, "notlower") not in [user["name"] for user in listed["users"]]


async def test_a_deactivated_user_is_refused_until_reactivated(env: WithAdmin) -> None:
    http, admin, c = env.client.http, env.admin, env.client
    dave = await env.hs.register_user("dave", password="secret")
    room_id = await c.create_room(env.alice, preset="public_chat")
    await c.ok(dave, "POST", f"/rooms/{q(room_id)}/join", {})

    answer = await admin_ok(
        http, admin, "POST", f"/v1/deactivate/{q(dave.user_id)}", {"erase": True}
    )
    assert answer == {"id_server_unbind_result": "success"}
    assert await _whoami(env, dave.access_token) == 401
    status, refused = await _login(env, "dave", "secret")
    assert (status, refused["errcode"]) == (403, "M_USER_DEACTIVATED")
    members = await c.ok(env.alice, "GET", f"/rooms/{q(room_id)}/joined_members")
    assert dave.user_id not in members["joined"]
    shown = await admin_ok(http, admin, "GET", f"/v2/users/{q(dave.user_id)}")
    assert shown["deactivated"] is True

    path = f"/v2/users/{q(dave.user_id)}"
    await admin_refused(
        http, admin, "PUT", path, {"deactivated": False}, status=400, errcode="M_MISSING_PARAM"
    )
    back = await admin_ok(http, admin, "PUT", path, {"deactivated": False, "password": "again"})
    assert back["deactivated"] is False
    # The old password did not come back with the account.
    assert (await _login(env, "dave", "secret"))[0] == 403
    assert (await _login(env, "dave", "again"))[0] == 200

    # Deactivating through PUT is the same deactivation.
    await admin_ok(http, admin, "PUT", path, {"deactivated": True})
    assert (await _login(env, "dave", "again"))[1]["errcode"] == "M_USER_DEACTIVATED"


async def test_a_password_is_reset(env: WithAdmin) -> None:
    http, admin = env.client.http, env.admin
    erin = await env.hs.register_user("erin", password="old")
    path = f"/v1/reset_password/{q(erin.user_id)}"
    await admin_refused(http, admin, "POST", path, {}, status=400, errcode="M_MISSING_PARAM")
    assert (
        await admin_ok(http, admin, "POST", path, {"new_password": "kept", "logout_devices": False})
        == {}
    )
    assert await _whoami(env, erin.access_token) == 200
    assert (await _login(env, "erin", "old"))[0] == 403
    assert await admin_ok(http, admin, "POST", path, {"new_password": "new"}) == {}
    assert await _whoami(env, erin.access_token) == 401
    assert (await _login(env, "erin", "new"))[0] == 200


async def test_admin_rights_are_granted_and_taken(env: WithAdmin) -> None:
    http, admin, bob = env.client.http, env.admin, env.bob
    path = f"/v1/users/{q(bob.user_id)}/admin"
    assert await admin_ok(http, admin, "GET", path) == {"admin": False}
    assert await admin_ok(http, admin, "PUT", path, {"admin": True}) == {}
    assert await admin_ok(http, admin, "GET", path) == {"admin": True}
    # Bob's token, looked up before, now carries the right.
    assert (await admin_call(http, bob, "GET", "/v2/users"))[0] == 200
    await admin_ok(http, admin, "PUT", path, {"admin": False})
    assert (await admin_call(http, bob, "GET", "/v2/users"))[0] == 403

    own = f"/v1/users/{q(admin.user_id)}/admin"
    await admin_refused(
        http, admin, "PUT", own, {"admin": False}, status=400, errcode="M_INVALID_PARAM"
    )
    await admin_refused(http, admin, "PUT", path, {"admin": "no"}, status=400, errcode="M_BAD_JSON")
    assert await admin_ok(http, admin, "GET", own) == {"admin": True}


async def test_whois_lists_the_devices_and_joined_rooms_the_rooms(env: WithAdmin) -> None:
    http, admin, alice, c = env.client.http, env.admin, env.alice, env.client
    frank = await env.hs.register_user("frank", password="pw")
    status, login = await _login(env, "frank", "pw")
    assert status == 200
    answer = await admin_ok(http, admin, "GET", f"/v1/whois/{q(frank.user_id)}")
    assert answer["user_id"] == frank.user_id
    assert set(answer["devices"]) == {frank.device_id, login["device_id"]}
    for device in answer["devices"].values():
        (session,) = device["sessions"]
        (connection,) = session["connections"]
        assert isinstance(connection["last_seen"], int)

    first = await c.create_room(alice)
    second = await c.create_room(alice)
    await c.create_room(env.bob)
    rooms = await admin_ok(http, admin, "GET", f"/v1/users/{q(alice.user_id)}/joined_rooms")
    assert (sorted(rooms["joined_rooms"]), rooms["total"]) == (sorted([first, second]), 2)
    await c.ok(alice, "POST", f"/rooms/{q(first)}/leave", {})
    rooms = await admin_ok(http, admin, "GET", f"/v1/users/{q(alice.user_id)}/joined_rooms")
    assert rooms == {"joined_rooms": [second], "total": 1}


async def test_the_client_apis_whois_answers_admins_and_the_user_themselves(
    env: WithAdmin,
) -> None:
    c, admin, alice, bob = env.client, env.admin, env.alice, env.bob
    frank = await env.hs.register_user("frank", password="pw")
    status, login = await _login(env, "frank", "pw")
    assert status == 200
    path = f"/admin/whois/{q(frank.user_id)}"
    by_admin = await c.ok(admin, "GET", path)
    assert by_admin["user_id"] == frank.user_id
    assert set(by_admin["devices"]) == {frank.device_id, login["device_id"]}
    for device in by_admin["devices"].values():
        (session,) = device["sessions"]
        (connection,) = session["connections"]
        # Addresses and user agents are not recorded: left out, not null.
        assert set(connection) == {"last_seen"}
        assert isinstance(connection["last_seen"], int)
    assert await c.ok(frank, "GET", path) == by_admin
    own = await c.ok(alice, "GET", f"/admin/whois/{q(alice.user_id)}")
    assert (own["user_id"], list(own["devices"])) == (alice.user_id, [alice.device_id])
    await c.refused(alice, "GET", path, status=403, errcode="M_FORBIDDEN")
    await c.refused(
        bob, "GET", f"/admin/whois/{q(alice.user_id)}", status=403, errcode="M_FORBIDDEN"
    )
    await c.refused(None, "GET", path, status=401, errcode="M_MISSING_TOKEN")
    await c.refused(
        admin, "GET", f"/admin/whois/{q('@nobody:localhost')}", status=404, errcode="M_NOT_FOUND"
    )
    await c.refused(
        admin, "GET", f"/admin/whois/{q('@x:elsewhere.example')}",
        status=400, errcode="M_INVALID_PARAM",
    )  # fmt: skip


async def test_username_available_checks_as_registration_does(env: WithAdmin) -> None:
    c, http, admin, bob = env.client, env.client.http, env.admin, env.bob
    path = "/v1/username_available"
    # The same answers as the client API's check.
    assert await c.ok(None, "GET", "/register/available", params={"username": "carol"}) == {
        "available": True
    }
    assert await admin_ok(http, admin, "GET", path, params={"username": "carol"}) == {
        "available": True
    }
    for username, errcode in (
        ("alice", "M_USER_IN_USE"),
        ("ALICE", "M_USER_IN_USE"),
        ("no spaces", "M_INVALID_USERNAME"),
        ("", "M_INVALID_USERNAME"),
    ):
        await admin_refused(
            http, admin, "GET", path, params={"username": username}, status=400, errcode=errcode
        )
    await admin_refused(http, admin, "GET", path, status=400, errcode="M_MISSING_PARAM")
    await admin_refused(
        http, bob, "GET", path, params={"username": "carol"}, status=403, errcode="M_FORBIDDEN"
    )
    # Registering the name makes it taken.
    await env.hs.register_user("carol")
    await admin_refused(
        http, admin, "GET", path, params={"username": "carol"}, status=400, errcode="M_USER_IN_USE"
    )
