"""Application services over real HTTP: the client-server API as a service
uses it (its as_token, identity assertion, registration and login of its
users, exclusive namespaces, rate limits)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from _appservices import AS_TOKEN, open_with_service
from _client import q


async def test_the_as_token_acts_as_the_sender(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        answer = await env.as_ok("GET", "/account/whoami")
        assert answer == {"user_id": env.sender, "is_guest": False}


async def test_a_service_registers_a_user_and_masquerades_as_it(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        ghost = await env.register("_br_ghost")
        assert ghost == env.user("_br_ghost")
        assert await env.hs.server.accounts.user_exists(ghost)
        assert (await env.as_ok("GET", "/account/whoami", user_id=ghost))["user_id"] == ghost

        room_id = await env.client.create_room(env.alice, preset="public_chat")
        await env.as_ok("POST", f"/rooms/{q(room_id)}/join", {}, user_id=ghost)
        sent = await env.as_ok(
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/t1",
            {"msgtype": "m.text", "body": "from the bridge"},
            user_id=ghost,
        )
        messages = await env.client.ok(
            env.alice, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b"}
        )
        (event,) = [e for e in messages["chunk"] if e["event_id"] == sent["event_id"]]
        assert event["sender"] == ghost
        assert event["content"]["body"] == "from the bridge"


async def test_registration_with_login_gives_a_token(tmp_path: Path) -> None:
    async with open_with_service(tmp_path, registration_open=False) as env:
        answer = await env.as_ok(
            "POST",
            "/register",
            {"type": "m.login.application_service", "username": "_br_talker"},
        )
        assert answer["user_id"] == env.user("_br_talker")
        token = answer["access_token"]
        whoami = await env.client.ok(None, "GET", "/account/whoami", token=token)
        assert whoami["user_id"] == env.user("_br_talker")
        assert whoami["device_id"] == answer["device_id"]
        # No password was set: a password login is refused.
        await env.client.refused(
            None,
            "POST",
            "/login",
            {"type": "m.login.password", "user": "_br_talker", "password": ""},
            status=403,
            errcode="M_FORBIDDEN",
        )


async def test_identity_assertion_is_limited_to_registered_namespace_users(
    tmp_path: Path,
) -> None:
    async with open_with_service(tmp_path) as env:
        for user_id in (env.alice.user_id, env.user("_br_never_registered")):
            status, answer = await env.as_call("GET", "/account/whoami", user_id=user_id)
            assert (status, answer["errcode"]) == (403, "M_FORBIDDEN"), answer


async def test_a_service_registers_only_in_its_namespace(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        status, answer = await env.as_call(
            "POST",
            "/register",
            {"type": "m.login.application_service", "username": "outsider", "inhibit_login": True},
        )
        assert (status, answer["errcode"]) == (400, "M_EXCLUSIVE")
        assert not await env.hs.server.accounts.user_exists(env.user("outsider"))


async def test_others_may_not_register_in_an_exclusive_namespace(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        await env.client.refused(
            None,
            "POST",
            "/register",
            {"username": "_br_squatter", "password": "pw", "auth": {"type": "m.login.dummy"}},
            status=400,
            errcode="M_EXCLUSIVE",
        )
        await env.client.refused(
            None,
            "GET",
            "/register/available",
            params={"username": "_br_squatter"},
            status=400,
            errcode="M_EXCLUSIVE",
        )
        assert not await env.hs.server.accounts.user_exists(env.user("_br_squatter"))
        # Outside the namespace, registration is as usual.
        available = await env.client.ok(
            None, "GET", "/register/available", params={"username": "someone"}
        )
        assert available == {"available": True}


async def test_the_application_service_type_needs_an_as_token(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        body = {"type": "m.login.application_service", "username": "_br_x"}
        await env.client.refused(
            None, "POST", "/register", body, status=401, errcode="M_MISSING_TOKEN"
        )
        await env.client.refused(
            env.alice, "POST", "/register", body, status=401, errcode="M_UNKNOWN_TOKEN"
        )
        login = {
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.user", "user": "_br_x"},
        }
        await env.client.refused(
            env.alice, "POST", "/login", login, status=401, errcode="M_UNKNOWN_TOKEN"
        )


async def test_a_service_logs_its_users_in(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        flows = await env.client.ok(None, "GET", "/login")
        assert {"type": "m.login.application_service"} in flows["flows"]
        ghost = await env.register("_br_ghost")
        answer = await env.client.ok(
            None,
            "POST",
            "/login",
            {
                "type": "m.login.application_service",
                "identifier": {"type": "m.id.user", "user": "_br_ghost"},
            },
            token=AS_TOKEN,
        )
        assert answer["user_id"] == ghost
        whoami = await env.client.ok(None, "GET", "/account/whoami", token=answer["access_token"])
        assert whoami["user_id"] == ghost
        status, refused = await env.client.call(
            None,
            "POST",
            "/login",
            {
                "type": "m.login.application_service",
                "identifier": {"type": "m.id.user", "user": env.alice.user_id},
            },
            token=AS_TOKEN,
        )
        assert (status, refused["errcode"]) == (400, "M_EXCLUSIVE")


async def test_exclusive_aliases_are_the_services(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        room_id = await env.client.create_room(env.alice, preset="public_chat")
        alias = f"#_br_chan:{env.hs.server_name}"
        await env.client.refused(
            env.alice,
            "PUT",
            f"/directory/room/{q(alias)}",
            {"room_id": room_id},
            status=400,
            errcode="M_EXCLUSIVE",
        )
        ghost = await env.register("_br_ghost")
        await env.as_ok("POST", f"/rooms/{q(room_id)}/join", {}, user_id=ghost)
        await env.as_ok("PUT", f"/directory/room/{q(alias)}", {"room_id": room_id}, user_id=ghost)
        resolved = await env.client.ok(env.alice, "GET", f"/directory/room/{q(alias)}")
        assert resolved["room_id"] == room_id
        await env.client.refused(
            env.alice,
            "DELETE",
            f"/directory/room/{q(alias)}",
            status=400,
            errcode="M_EXCLUSIVE",
        )


async def test_a_room_is_not_made_for_an_alias_the_service_owns(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        before = await env.client.ok(env.alice, "GET", "/joined_rooms")
        await env.client.refused(
            env.alice,
            "POST",
            "/createRoom",
            {"room_alias_name": "_br_mine", "preset": "public_chat"},
            status=400,
            errcode="M_EXCLUSIVE",
        )
        # Refused before anything was made: no room, no alias.
        assert await env.client.ok(env.alice, "GET", "/joined_rooms") == before
        await env.client.refused(
            env.alice,
            "GET",
            f"/directory/room/{q('#_br_mine:' + env.hs.server_name)}",
            status=404,
            errcode="M_NOT_FOUND",
        )


async def _burst(call: Callable[[int], Awaitable[tuple[int, object]]], count: int) -> list[int]:
    statuses = []
    for index in range(count):
        status, _ = await call(index)
        statuses.append(status)
    return statuses


async def test_a_service_not_rate_limited(tmp_path: Path) -> None:
    async with open_with_service(tmp_path, rate_limited=False, rate_limits=True) as env:
        room_id = await env.client.create_room(env.alice, preset="public_chat")
        ghost = await env.register("_br_ghost")
        await env.as_ok("POST", f"/rooms/{q(room_id)}/join", {}, user_id=ghost)
        path = f"/rooms/{q(room_id)}/send/m.room.message/"
        body = {"msgtype": "m.text", "body": "x"}

        async def as_ghost(index: int) -> tuple[int, object]:
            return await env.as_call("PUT", f"{path}g{index}", body, user_id=ghost)

        async def as_alice(index: int) -> tuple[int, object]:
            return await env.client.call(env.alice, "PUT", f"{path}a{index}", body)

        # The default message burst is 20.
        assert set(await _burst(as_ghost, 25)) == {200}
        assert 429 in await _burst(as_alice, 25)


async def test_a_rate_limited_service_is_limited_as_its_users(tmp_path: Path) -> None:
    async with open_with_service(tmp_path, rate_limited=True, rate_limits=True) as env:
        room_id = await env.client.create_room(env.alice, preset="public_chat")
        ghost = await env.register("_br_ghost")
        await env.as_ok("POST", f"/rooms/{q(room_id)}/join", {}, user_id=ghost)
        body = {"msgtype": "m.text", "body": "x"}

        async def as_ghost(index: int) -> tuple[int, object]:
            path = f"/rooms/{q(room_id)}/send/m.room.message/g{index}"
            return await env.as_call("PUT", path, body, user_id=ghost)

        assert 429 in await _burst(as_ghost, 25)


async def test_inhibit_login_makes_no_device(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        answer = await env.as_ok(
            "POST",
            "/register",
            {"type": "m.login.application_service", "username": "_br_quiet", "inhibit_login": True},
        )
        assert answer["user_id"] == env.user("_br_quiet")
        assert "access_token" not in answer
        assert "device_id" not in answer
        devices = await env.as_ok("GET", "/devices", user_id=answer["user_id"])
        assert devices == {"devices": []}


async def test_a_service_sets_its_users_profiles_and_no_one_elses(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        ghost = await env.register("_br_ghost")
        avatar = "mxc://example.org/ghostly"
        await env.as_ok(
            "PUT", f"/profile/{q(ghost)}/avatar_url", {"avatar_url": avatar}, user_id=ghost
        )
        await env.as_ok(
            "PUT", f"/profile/{q(ghost)}/displayname", {"displayname": "Casper"}, user_id=ghost
        )
        profile = await env.client.ok(env.alice, "GET", f"/profile/{q(ghost)}")
        assert profile == {"displayname": "Casper", "avatar_url": avatar}
        # The service is not Alice: neither as itself nor masquerading.
        alice = env.alice.user_id
        path = f"/profile/{q(alice)}/displayname"
        for user_id in (None, alice):
            status, answer = await env.as_call(
                "PUT", path, {"displayname": "Taken"}, user_id=user_id
            )
            assert (status, answer["errcode"]) == (403, "M_FORBIDDEN"), answer
        assert "displayname" not in await env.client.ok(env.alice, "GET", f"/profile/{q(alice)}")


async def test_the_services_own_user_needs_no_registration(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        first = await env.client.create_room(env.alice, preset="public_chat")
        second = await env.client.create_room(env.alice, preset="public_chat")
        await env.as_ok("POST", f"/rooms/{q(first)}/join", {})
        await env.as_ok("POST", f"/rooms/{q(second)}/join", {}, user_id=env.sender)
        for room_id in (first, second):
            members = await env.client.ok(env.alice, "GET", f"/rooms/{q(room_id)}/joined_members")
            assert env.sender in members["joined"]


async def test_a_service_deactivates_its_user_without_a_password(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        ghost = await env.register("_br_gone")
        answer = await env.as_ok("POST", "/account/deactivate", {}, user_id=ghost)
        assert answer["id_server_unbind_result"] == "no-support"
        # Gone: the service cannot act as the user any more.
        status, refused = await env.as_call("GET", "/account/whoami", user_id=ghost)
        assert (status, refused["errcode"]) == (403, "M_USER_DEACTIVATED"), refused
        # A user deactivating themselves still proves who they are.
        status, challenge = await env.client.call(env.alice, "POST", "/account/deactivate", {})
        assert status == 401
        assert "flows" in challenge


async def test_a_service_points_its_aliases_at_rooms_it_is_not_in(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        room_id = await env.client.create_room(env.alice, preset="private_chat")
        alias = f"#_br_linked:{env.hs.server_name}"
        await env.as_ok("PUT", f"/directory/room/{q(alias)}", {"room_id": room_id})
        resolved = await env.as_ok("GET", f"/directory/room/{q(alias)}")
        assert resolved["room_id"] == room_id
        # Outside its namespace the service is a user like any other.
        status, answer = await env.as_call(
            "PUT", f"/directory/room/{q('#plain:' + env.hs.server_name)}", {"room_id": room_id}
        )
        assert (status, answer["errcode"]) == (403, "M_FORBIDDEN"), answer
        bob = await env.hs.register_user("bob")
        await env.client.refused(
            bob,
            "PUT",
            f"/directory/room/{q('#bobs:' + env.hs.server_name)}",
            {"room_id": room_id},
            status=403,
            errcode="M_FORBIDDEN",
        )
