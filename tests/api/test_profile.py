"""Profiles over real HTTP: reading, changing one's own, the member events
a change rewrites, joins carrying the profile, and a profile of another
server's user asked over federation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _client import Client, q
from _federation import two_servers

from ranvier.testing.homeserver import TestUser, open_test_homeserver


@dataclass
class Env:
    client: Client
    alice: TestUser
    bob: TestUser


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        yield Env(Client(hs, http), await hs.register_user("alice"), await hs.register_user("bob"))


def _field(user: TestUser | str, field: str) -> str:
    user_id = user if isinstance(user, str) else user.user_id
    return f"/profile/{q(user_id)}/{field}"


async def _member(c: Client, reader: TestUser, room_id: str, user: TestUser) -> dict[str, str]:
    content: dict[str, str] = await c.ok(
        reader, "GET", f"/rooms/{q(room_id)}/state/m.room.member/{q(user.user_id)}"
    )
    return content


async def test_a_profile_is_set_read_and_cleared(env: Env) -> None:
    c, alice = env.client, env.alice
    assert await c.ok(None, "GET", f"/profile/{q(alice.user_id)}") == {}
    await c.refused(None, "GET", _field(alice, "displayname"), status=404, errcode="M_NOT_FOUND")
    await c.ok(alice, "PUT", _field(alice, "displayname"), {"displayname": "Alice"})
    await c.ok(alice, "PUT", _field(alice, "avatar_url"), {"avatar_url": "mxc://localhost/abc"})
    # Reading needs no token.
    assert await c.ok(None, "GET", f"/profile/{q(alice.user_id)}") == {
        "displayname": "Alice",
        "avatar_url": "mxc://localhost/abc",
    }
    assert await c.ok(None, "GET", _field(alice, "displayname")) == {"displayname": "Alice"}
    assert await c.ok(None, "GET", _field(alice, "avatar_url")) == {
        "avatar_url": "mxc://localhost/abc"
    }
    await c.ok(alice, "PUT", _field(alice, "displayname"), {"displayname": None})
    assert await c.ok(None, "GET", f"/profile/{q(alice.user_id)}") == {
        "avatar_url": "mxc://localhost/abc"
    }


async def test_refusals_change_nothing(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    await c.ok(alice, "PUT", _field(alice, "displayname"), {"displayname": "Alice"})
    name = _field(alice, "displayname")
    await c.refused(None, "PUT", name, {"displayname": "X"}, status=401, errcode="M_MISSING_TOKEN")
    await c.refused(bob, "PUT", name, {"displayname": "X"}, status=403, errcode="M_FORBIDDEN")
    await c.refused(alice, "PUT", name, raw=b"{", status=400, errcode="M_NOT_JSON")
    await c.refused(alice, "PUT", name, {}, status=400, errcode="M_MISSING_PARAM")
    await c.refused(alice, "PUT", name, {"displayname": 5}, status=400, errcode="M_BAD_JSON")
    await c.refused(
        alice, "PUT", name, {"displayname": "x" * 257}, status=400, errcode="M_INVALID_PARAM"
    )
    for bad in ("https://example.org/a.png", "mxc://", "mxc://server", "mxc://server/"):
        await c.refused(
            alice,
            "PUT",
            _field(alice, "avatar_url"),
            {"avatar_url": bad},
            status=400,
            errcode="M_INVALID_PARAM",
        )
    await c.refused(
        alice,
        "PUT",
        _field("@nobody:localhost", "displayname"),
        {"displayname": "X"},
        status=403,
        errcode="M_FORBIDDEN",
    )
    await c.refused(None, "GET", "/profile/@nobody:localhost", status=404, errcode="M_NOT_FOUND")
    await c.refused(None, "GET", "/profile/not-a-user", status=400, errcode="M_INVALID_PARAM")
    assert await c.ok(None, "GET", f"/profile/{q(alice.user_id)}") == {"displayname": "Alice"}
    # 256 characters are allowed.
    await c.ok(alice, "PUT", name, {"displayname": "y" * 256})


async def test_a_change_rewrites_the_member_event_of_every_joined_room(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    first = await c.create_room(alice, preset="public_chat")
    second = await c.create_room(bob, preset="public_chat")
    await c.ok(alice, "POST", f"/join/{q(second)}", {})
    left = await c.create_room(alice)
    await c.ok(alice, "POST", f"/rooms/{q(left)}/leave", {})

    await c.ok(alice, "PUT", _field(alice, "displayname"), {"displayname": "Alice A."})
    await c.ok(alice, "PUT", _field(alice, "avatar_url"), {"avatar_url": "mxc://localhost/av"})
    for room_id in (first, second):
        assert await _member(c, bob if room_id == second else alice, room_id, alice) == {
            "membership": "join",
            "displayname": "Alice A.",
            "avatar_url": "mxc://localhost/av",
        }
    # A room left is not joined again by a profile change.
    left_member = await _member(c, alice, left, alice)
    assert left_member["membership"] == "leave"
    # A new room's creator join and a later join both carry the profile.
    third = await c.create_room(alice, preset="public_chat")
    assert (await _member(c, alice, third, alice))["displayname"] == "Alice A."
    await c.ok(bob, "PUT", _field(bob, "displayname"), {"displayname": "Bobby"})
    await c.ok(bob, "POST", f"/join/{q(third)}", {})
    assert await _member(c, alice, third, bob) == {"membership": "join", "displayname": "Bobby"}


async def test_a_profile_of_another_servers_user_is_asked_of_that_server(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as (a, _b, ca, cb, alice, bob):
        await ca.ok(alice, "PUT", _field(alice, "displayname"), {"displayname": "Alice of A"})
        assert await cb.ok(bob, "GET", f"/profile/{q(alice.user_id)}") == {
            "displayname": "Alice of A"
        }
        assert await cb.ok(bob, "GET", _field(alice, "displayname")) == {
            "displayname": "Alice of A"
        }
        # Reading a profile needs no access token, another server's neither.
        assert await cb.ok(None, "GET", _field(alice, "displayname")) == {
            "displayname": "Alice of A"
        }
        await cb.refused(bob, "GET", _field(alice, "avatar_url"), status=404, errcode="M_NOT_FOUND")
        nobody = f"@nobody:{a.server_name}"
        await cb.refused(bob, "GET", f"/profile/{q(nobody)}", status=404, errcode="M_NOT_FOUND")
        # A join through another server carries the joiner's profile.
        await cb.ok(bob, "PUT", _field(bob, "displayname"), {"displayname": "Bob of B"})
        room_id = await ca.create_room(alice, preset="public_chat")
        await cb.ok(bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": a.server_name})
        assert await _member(ca, alice, room_id, bob) == {
            "membership": "join",
            "displayname": "Bob of B",
        }
        # B may not change A's user's profile.
        await cb.refused(
            bob,
            "PUT",
            _field(alice, "displayname"),
            {"displayname": "X"},
            status=403,
            errcode="M_FORBIDDEN",
        )


async def test_deleting_a_field_clears_it_in_the_profile_and_member_events(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    await c.ok(alice, "PUT", _field(alice, "displayname"), {"displayname": "Alice"})
    await c.ok(alice, "PUT", _field(alice, "avatar_url"), {"avatar_url": "mxc://localhost/abc"})
    room_id = await c.create_room(alice)
    for field in ("displayname", "avatar_url"):
        await c.refused(None, "DELETE", _field(alice, field), status=401, errcode="M_MISSING_TOKEN")
        await c.refused(bob, "DELETE", _field(alice, field), status=403, errcode="M_FORBIDDEN")
    assert await c.ok(None, "GET", f"/profile/{q(alice.user_id)}") == {
        "displayname": "Alice",
        "avatar_url": "mxc://localhost/abc",
    }
    assert await c.ok(alice, "DELETE", _field(alice, "displayname")) == {}
    await c.refused(None, "GET", _field(alice, "displayname"), status=404, errcode="M_NOT_FOUND")
    assert await c.ok(None, "GET", f"/profile/{q(alice.user_id)}") == {
        "avatar_url": "mxc://localhost/abc"
    }
    member = await _member(c, alice, room_id, alice)
    assert "displayname" not in member
    assert member["avatar_url"] == "mxc://localhost/abc"
    await c.ok(alice, "DELETE", _field(alice, "avatar_url"))
    assert await c.ok(None, "GET", f"/profile/{q(alice.user_id)}") == {}
    assert await _member(c, alice, room_id, alice) == {"membership": "join"}
    # Deleting a field already clear changes nothing.
    assert await c.ok(alice, "DELETE", _field(alice, "avatar_url")) == {}
    assert await c.ok(None, "GET", f"/profile/{q(alice.user_id)}") == {}
