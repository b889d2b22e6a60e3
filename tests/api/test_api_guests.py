"""Guest accounts over real HTTP: registering one, what it may do, being
made to leave a room that stops letting guests in, and becoming a full
account with the same user ID."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import trio
from _client import Client, q
from _federation import eventually

from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)
from ranvier.testing.network import Pki

_CAN_JOIN = {
    "type": "m.room.guest_access",
    "state_key": "",
    "content": {"guest_access": "can_join"},
}
_WORLD_READABLE = {
    "type": "m.room.history_visibility",
    "state_key": "",
    "content": {"history_visibility": "world_readable"},
}


@dataclass
class _Guests:
    hs: TestHomeserver
    client: Client
    alice: TestUser

    async def register_guest(self, body: Any = None) -> TestUser:
        answer = await self.client.ok(
            None, "POST", "/register", {} if body is None else body, params={"kind": "guest"}
        )
        return TestUser(answer["user_id"], answer["access_token"], answer["device_id"])

    async def guests_room(self, *, readable: bool = True) -> str:
        """Alice's public room that lets guests join (and read, when ``readable``)."""
        state = [_CAN_JOIN, _WORLD_READABLE] if readable else [_CAN_JOIN]
        return await self.client.create_room(self.alice, preset="public_chat", initial_state=state)

    async def membership(self, room_id: str, user_id: str) -> str:
        state = await self.client.state(self.alice, room_id)
        membership: str = state[("m.room.member", user_id)]["content"]["membership"]
        return membership


@asynccontextmanager
async def _open(
    tmp_path: Path, *, guests: bool = True, registration: bool = False
) -> AsyncIterator[_Guests]:
    config = config_for_tests(tmp_path / "hs")
    config = msgspec.structs.replace(
        config,
        registration=msgspec.structs.replace(
            config.registration, allow_guest_access=guests, enabled=registration
        ),
    )
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as http:
        yield _Guests(hs, Client(hs, http), await hs.register_user("alice"))


async def test_guest_registration_is_refused_by_default(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        assert hs.server.config.registration.allow_guest_access is False
        await Client(hs, http).refused(
            None,
            "POST",
            "/register",
            {},
            params={"kind": "guest"},
            status=403,
            errcode="M_GUEST_ACCESS_FORBIDDEN",
        )


async def test_a_guest_registers_with_a_numeric_id_and_whoami_says_guest(tmp_path: Path) -> None:
    async with _open(tmp_path) as env:
        # Everything but the device's display name is ignored.
        guest = await env.register_guest(
            {"username": "mallory", "device_id": "CHOSEN", "initial_device_display_name": "Kiosk"}
        )
        localpart, _, server = guest.user_id[1:].partition(":")
        assert localpart.isdigit()
        assert server == env.hs.server.config.server_name
        assert guest.device_id != "CHOSEN"
        whoami = await env.client.ok(guest, "GET", "/account/whoami")
        assert whoami == {"user_id": guest.user_id, "device_id": guest.device_id, "is_guest": True}
        device = await env.client.ok(guest, "GET", f"/devices/{q(guest.device_id)}")
        assert device["display_name"] == "Kiosk"
        other = await env.register_guest()
        assert other.user_id != guest.user_id
        alice = await env.client.ok(env.alice, "GET", "/account/whoami")
        assert alice["is_guest"] is False


async def test_a_guest_reads_joins_a_can_join_room_sends_and_syncs(tmp_path: Path) -> None:
    async with _open(tmp_path) as env:
        room_id = await env.guests_room()
        await env.client.ok(
            env.alice, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/t1", {"body": "hello"}
        )
        guest = await env.register_guest()
        # A world-readable room is read before joining.
        messages = await env.client.ok(
            guest, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b"}
        )
        assert "hello" in [event["content"].get("body") for event in messages["chunk"]]
        state = await env.client.ok(guest, "GET", f"/rooms/{q(room_id)}/state")
        assert ("m.room.guest_access", "") in {(e["type"], e["state_key"]) for e in state}

        await env.client.ok(guest, "POST", f"/rooms/{q(room_id)}/join", {})
        assert await env.membership(room_id, guest.user_id) == "join"
        sent = await env.client.ok(
            guest, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/g1", {"body": "hi, guest here"}
        )
        await env.client.ok(
            guest, "PUT", f"/profile/{q(guest.user_id)}/displayname", {"displayname": "Visitor"}
        )
        synced = await env.client.ok(guest, "GET", "/sync")
        timeline = synced["rooms"]["join"][room_id]["timeline"]["events"]
        assert sent["event_id"] in [event["event_id"] for event in timeline]


async def test_a_guest_is_refused_what_the_spec_does_not_list(tmp_path: Path) -> None:
    async with _open(tmp_path) as env:
        closed = await env.client.create_room(env.alice, preset="public_chat")
        guest = await env.register_guest()
        await env.client.refused(
            guest, "POST", f"/rooms/{q(closed)}/join", {}, status=403, errcode="M_FORBIDDEN"
        )
        await env.client.refused(
            guest, "POST", f"/join/{q(closed)}", {}, status=403, errcode="M_FORBIDDEN"
        )
        assert ("m.room.member", guest.user_id) not in await env.client.state(env.alice, closed)
        forbidden = "M_GUEST_ACCESS_FORBIDDEN"
        await env.client.refused(guest, "POST", "/createRoom", {}, status=403, errcode=forbidden)
        await env.client.refused(
            guest, "POST", "/keys/device_signing/upload", {}, status=403, errcode=forbidden
        )
        await env.client.refused(
            guest,
            "PUT",
            f"/profile/{q(guest.user_id)}/avatar_url",
            {"avatar_url": "mxc://localhost/abc"},
            status=403,
            errcode=forbidden,
        )
        for method, path in [
            ("GET", "/joined_rooms"),
            ("GET", "/pushrules/"),
            ("POST", "/account/deactivate"),
            ("POST", "/account/password"),
            ("PUT", f"/rooms/{q(closed)}/typing/{q(guest.user_id)}"),
            ("POST", f"/rooms/{q(closed)}/invite"),
            ("GET", f"/user/{q(guest.user_id)}/account_data/m.direct"),
        ]:
            await env.client.refused(guest, method, path, {}, status=403, errcode=forbidden)
        # Guests are refused on the routes, not everyone.
        await env.client.ok(env.alice, "GET", "/joined_rooms")


async def test_a_guest_is_made_to_leave_when_guest_access_is_withdrawn(tmp_path: Path) -> None:
    async with _open(tmp_path) as env:
        room_id = await env.guests_room()
        guest = await env.register_guest()
        stayer = await env.register_guest()
        other_room = await env.guests_room()
        await env.client.ok(guest, "POST", f"/rooms/{q(room_id)}/join", {})
        await env.client.ok(stayer, "POST", f"/rooms/{q(other_room)}/join", {})
        bob = await env.hs.register_user("bob")
        await env.client.ok(bob, "POST", f"/rooms/{q(room_id)}/join", {})

        await env.client.ok(
            env.alice,
            "PUT",
            f"/rooms/{q(room_id)}/state/m.room.guest_access",
            {"guest_access": "forbidden"},
        )
        for _ in range(500):
            if await env.membership(room_id, guest.user_id) == "leave":
                break
            await trio.sleep(0.02)
        state = await env.client.state(env.alice, room_id)
        leave = state[("m.room.member", guest.user_id)]
        assert leave["sender"] == guest.user_id
        assert leave["content"]["reason"] == "the room no longer allows guests"
        # Full members stay, and so do guests of other rooms.
        assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "join"
        assert await env.membership(other_room, stayer.user_id) == "join"
        # Nor may the guest come back.
        await env.client.refused(
            guest, "POST", f"/rooms/{q(room_id)}/join", {}, status=403, errcode="M_FORBIDDEN"
        )


async def test_a_guest_upgrades_keeping_its_user_id_and_rooms(tmp_path: Path) -> None:
    async with _open(tmp_path, registration=True) as env:
        room_id = await env.guests_room()
        guest = await env.register_guest()
        await env.client.ok(guest, "POST", f"/rooms/{q(room_id)}/join", {})
        localpart = guest.user_id[1:].partition(":")[0]
        body: dict[str, Any] = {
            "guest_access_token": guest.access_token,
            "username": localpart,
            "password": "a long passphrase",
        }
        status, challenge = await env.client.call(None, "POST", "/register", body)
        assert status == 401
        assert challenge["flows"] == [{"stages": ["m.login.dummy"]}]
        upgraded = await env.client.ok(
            None, "POST", "/register", {**body, "auth": {"type": "m.login.dummy"}}
        )
        assert upgraded["user_id"] == guest.user_id
        full = TestUser(upgraded["user_id"], upgraded["access_token"], upgraded["device_id"])
        assert (await env.client.ok(full, "GET", "/account/whoami"))["is_guest"] is False
        # The guest's token stays, now a full account's.
        whoami = await env.client.ok(guest, "GET", "/account/whoami")
        assert whoami == {"user_id": guest.user_id, "device_id": guest.device_id, "is_guest": False}
        assert room_id in (await env.client.ok(full, "GET", "/joined_rooms"))["joined_rooms"]
        assert await env.client.create_room(full)
        logged_in = await env.client.ok(
            None,
            "POST",
            "/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": "a long passphrase",
            },
        )
        assert logged_in["user_id"] == guest.user_id
        # Once upgraded, the token is no guest's to upgrade with again.
        await env.client.refused(
            None,
            "POST",
            "/register",
            {**body, "auth": {"type": "m.login.dummy"}},
            status=403,
            errcode="M_FORBIDDEN",
        )


async def test_a_retried_upgrade_in_its_session_answers_the_same_user(tmp_path: Path) -> None:
    async with _open(tmp_path, registration=True) as env:
        c = env.client
        guest = await env.register_guest()
        localpart = guest.user_id[1:].partition(":")[0]
        body: dict[str, Any] = {
            "guest_access_token": guest.access_token,
            "username": localpart,
            "password": "a long passphrase",
        }
        status, challenge = await c.call(None, "POST", "/register", body)
        assert status == 401
        session = challenge["session"]
        # The session is kept: asking again in it gives it back.
        status, again = await c.call(
            None, "POST", "/register", {**body, "auth": {"session": session}}
        )
        assert (status, again["session"]) == (401, session)
        dummy = {"type": "m.login.dummy", "session": session}
        upgraded = await c.ok(None, "POST", "/register", {**body, "auth": dummy})
        assert upgraded["user_id"] == guest.user_id

        # The answer was lost: the retry answers the same user, logged in anew.
        retried = await c.ok(None, "POST", "/register", {**body, "auth": dummy})
        assert retried["user_id"] == guest.user_id
        assert retried["access_token"] != upgraded["access_token"]
        for answer in (upgraded, retried):
            user = TestUser(answer["user_id"], answer["access_token"], answer["device_id"])
            whoami = await c.ok(user, "GET", "/account/whoami")
            assert (whoami["user_id"], whoami["is_guest"]) == (guest.user_id, False)
        # The session alone, or without a login, is the same retry.
        alone = await c.ok(None, "POST", "/register", {**body, "auth": {"session": session}})
        assert alone["user_id"] == guest.user_id
        inhibited = await c.ok(
            None, "POST", "/register", {**body, "inhibit_login": True, "auth": dummy}
        )
        assert inhibited == {"user_id": guest.user_id, "home_server": "localhost"}

        # The session is this guest's alone: another guest cannot use it, nor
        # can the session-less retry, which has nothing to show for itself.
        other = await env.register_guest()
        other_body = {
            **body,
            "guest_access_token": other.access_token,
            "username": other.user_id[1:].partition(":")[0],
        }
        for username in (other_body["username"], localpart):
            await c.refused(
                None,
                "POST",
                "/register",
                {**other_body, "username": username, "auth": dummy},
                status=400,
                errcode="M_INVALID_PARAM",
            )
        assert (await c.ok(other, "GET", "/account/whoami"))["is_guest"] is True
        await c.refused(
            None,
            "POST",
            "/register",
            {**body, "auth": {"type": "m.login.dummy"}},
            status=403,
            errcode="M_FORBIDDEN",
        )
        # The other guest upgrades in a session of its own.
        status, challenge = await c.call(None, "POST", "/register", other_body)
        assert status == 401
        assert challenge["session"] != session
        own = {"type": "m.login.dummy", "session": challenge["session"]}
        second = await c.ok(None, "POST", "/register", {**other_body, "auth": own})
        assert second["user_id"] == other.user_id


async def test_an_upgrade_must_name_the_guest_and_needs_open_registration(
    tmp_path: Path,
) -> None:
    async with _open(tmp_path, registration=True) as env:
        guest = await env.register_guest()
        body = {
            "guest_access_token": guest.access_token,
            "username": "someoneelse",
            "password": "a long passphrase",
            "auth": {"type": "m.login.dummy"},
        }
        await env.client.refused(None, "POST", "/register", body, status=403, errcode="M_FORBIDDEN")
        await env.client.refused(
            None,
            "POST",
            "/register",
            {**body, "guest_access_token": env.alice.access_token, "username": "alice"},
            status=403,
            errcode="M_FORBIDDEN",
        )
        # All-digit names are the guests' alone.
        await env.client.refused(
            None,
            "POST",
            "/register",
            {"username": "12345", "password": "a long passphrase", "auth": body["auth"]},
            status=400,
            errcode="M_INVALID_USERNAME",
        )
        await env.client.refused(
            None,
            "GET",
            "/register/available",
            params={"username": "12345"},
            status=400,
            errcode="M_INVALID_USERNAME",
        )
        assert (await env.client.ok(guest, "GET", "/account/whoami"))["is_guest"] is True

    async with _open(tmp_path / "closed") as env:
        guest = await env.register_guest()
        localpart = guest.user_id[1:].partition(":")[0]
        await env.client.refused(
            None,
            "POST",
            "/register",
            {
                "guest_access_token": guest.access_token,
                "username": localpart,
                "password": "a long passphrase",
                "auth": {"type": "m.login.dummy"},
            },
            status=403,
            errcode="M_FORBIDDEN",
        )
        assert (await env.client.ok(guest, "GET", "/account/whoami"))["is_guest"] is True


async def test_the_admin_user_list_shows_guests(tmp_path: Path) -> None:
    async with _open(tmp_path) as env:
        admin = await env.hs.register_user("root", admin=True)
        guest = await env.register_guest()
        async with env.hs.client(admin) as http:
            listed = (await http.get("/_synapse/admin/v2/users")).json()["users"]
            flags = {user["name"]: user["is_guest"] for user in listed}
            assert flags[guest.user_id] is True
            assert flags[env.alice.user_id] is False
            without = (await http.get("/_synapse/admin/v2/users?guests=false")).json()["users"]
            assert guest.user_id not in {user["name"] for user in without}
            one = (await http.get(f"/_synapse/admin/v2/users/{q(guest.user_id)}")).json()
            assert one["is_guest"] is True
            deactivated = await http.post(
                f"/_synapse/admin/v1/deactivate/{q(guest.user_id)}", json={}
            )
            assert deactivated.status_code == 200, deactivated.text
        await env.client.refused(
            guest, "GET", "/account/whoami", status=401, errcode="M_UNKNOWN_TOKEN"
        )


async def test_a_guest_leaves_when_another_servers_member_withdraws_guest_access(
    tmp_path: Path,
) -> None:
    """Bob's room on B lets guests in; Alice of A, a moderator there, closes
    it to them: B sees her event arrive and makes its guest leave."""
    pki = Pki.create(tmp_path)
    config = config_for_tests(tmp_path / "b", federation=pki)
    config = msgspec.structs.replace(
        config,
        registration=msgspec.structs.replace(config.registration, allow_guest_access=True),
    )
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", config=config) as b,
        a.client() as http_a,
        b.client() as http_b,
    ):
        ca, cb = Client(a, http_a), Client(b, http_b)
        alice, bob = await a.register_user("alice"), await b.register_user("bob")
        room_id = await cb.create_room(bob, preset="public_chat", initial_state=[_CAN_JOIN])
        await cb.ok(
            bob,
            "PUT",
            f"/rooms/{q(room_id)}/state/m.room.power_levels/",
            {"users": {alice.user_id: 50}},
        )
        await ca.ok(alice, "POST", f"/join/{q(room_id)}", {}, params={"server_name": b.server_name})
        with trio.fail_after(20):
            await a.server.wait_for_full_state(room_id)
        registered = await cb.ok(None, "POST", "/register", {}, params={"kind": "guest"})
        guest = TestUser(registered["user_id"], registered["access_token"], registered["device_id"])
        await cb.ok(guest, "POST", f"/rooms/{q(room_id)}/join", {})

        async def membership_at(client: Client, reader: TestUser, wanted: str) -> bool:
            state = await client.state(reader, room_id)
            held = state.get(("m.room.member", guest.user_id))
            return held is not None and held["content"]["membership"] == wanted

        await eventually(lambda: membership_at(ca, alice, "join"), "the guest's join at A")
        await ca.ok(
            alice,
            "PUT",
            f"/rooms/{q(room_id)}/state/m.room.guest_access/",
            {"guest_access": "forbidden"},
        )
        await eventually(lambda: membership_at(cb, bob, "leave"), "the guest's leave at B")
        await eventually(lambda: membership_at(ca, alice, "leave"), "the guest's leave at A")
        state = await cb.state(bob, room_id)
        assert state[("m.room.member", guest.user_id)]["sender"] == guest.user_id
        assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
