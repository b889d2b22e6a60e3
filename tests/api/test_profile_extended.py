"""Profile fields beyond the name and avatar over real HTTP: ``m.tz`` and
custom fields set, read and deleted, the spec's limits, who may change
them, the capability, deactivation, and a field read over federation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _client import Client, q
from _federation import two_servers

from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver

PASSWORD = "correct horse"
JOB = "org.example.job_title"


@dataclass
class Env:
    hs: TestHomeserver
    client: Client
    alice: TestUser
    bob: TestUser


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        yield Env(
            hs,
            Client(hs, http),
            await hs.register_user("alice", PASSWORD),
            await hs.register_user("bob"),
        )


def _field(user: TestUser, key: str) -> str:
    return f"/profile/{q(user.user_id)}/{key}"


def _profile(user: TestUser) -> str:
    return f"/profile/{q(user.user_id)}"


async def test_custom_fields_and_the_time_zone_are_set_read_and_deleted(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    await c.refused(None, "GET", _field(alice, "m.tz"), status=404, errcode="M_NOT_FOUND")
    await c.ok(alice, "PUT", _field(alice, "m.tz"), {"m.tz": "Europe/London"})
    await c.ok(alice, "PUT", _field(alice, JOB), {JOB: {"title": "Smith", "since": [2020, 1]}})
    await c.ok(alice, "PUT", _field(alice, "displayname"), {"displayname": "Alice"})
    # Any JSON value, null included: a null is kept, not taken as a delete.
    await c.ok(alice, "PUT", _field(alice, "org.example.nothing"), {"org.example.nothing": None})
    assert await c.ok(None, "GET", _field(alice, "m.tz")) == {"m.tz": "Europe/London"}
    assert await c.ok(bob, "GET", _field(alice, JOB)) == {
        JOB: {"title": "Smith", "since": [2020, 1]}
    }
    assert await c.ok(None, "GET", _field(alice, "org.example.nothing")) == {
        "org.example.nothing": None
    }
    assert await c.ok(None, "GET", _profile(alice)) == {
        "displayname": "Alice",
        "m.tz": "Europe/London",
        JOB: {"title": "Smith", "since": [2020, 1]},
        "org.example.nothing": None,
    }
    await c.ok(alice, "PUT", _field(alice, JOB), {JOB: "Farrier"})
    assert await c.ok(alice, "DELETE", _field(alice, "m.tz")) == {}
    assert await c.ok(alice, "DELETE", _field(alice, "org.example.nothing")) == {}
    # Deleting a field not set is no error.
    assert await c.ok(alice, "DELETE", _field(alice, "org.example.never")) == {}
    await c.refused(None, "GET", _field(alice, "m.tz"), status=404, errcode="M_NOT_FOUND")
    assert await c.ok(None, "GET", _profile(alice)) == {"displayname": "Alice", JOB: "Farrier"}


async def test_bad_names_values_and_bodies_are_refused_and_change_nothing(env: Env) -> None:
    c, alice = env.client, env.alice
    await c.ok(alice, "PUT", _field(alice, JOB), {JOB: "Smith"})
    before = await c.ok(None, "GET", _profile(alice))
    long_key = "org.example." + "k" * 244  # 256 bytes
    for method in ("GET", "PUT", "DELETE"):
        for bad in ("nonamespace", "Org.Example.caps", "org..example", "org.example-x", "org.9x"):
            await c.refused(
                alice, method, _field(alice, bad), {bad: 1}, status=400, errcode="M_INVALID_PARAM"
            )
        await c.refused(
            alice,
            method,
            _field(alice, long_key),
            {long_key: 1},
            status=400,
            errcode="M_KEY_TOO_LARGE",
        )
    # 255 bytes is still a name.
    longest = long_key[:-1]
    await c.ok(alice, "PUT", _field(alice, longest), {longest: 1})
    await c.ok(alice, "DELETE", _field(alice, longest))
    for tz in (5, None, ["UTC"], {"zone": "UTC"}):
        await c.refused(
            alice, "PUT", _field(alice, "m.tz"), {"m.tz": tz}, status=400, errcode="M_INVALID_PARAM"
        )
    path = _field(alice, JOB)
    await c.refused(alice, "PUT", path, {}, status=400, errcode="M_MISSING_PARAM")
    await c.refused(
        alice, "PUT", path, {"org.example.other": 1}, status=400, errcode="M_MISSING_PARAM"
    )
    await c.refused(
        alice, "PUT", path, {JOB: "Cook", "m.tz": "UTC"}, status=400, errcode="M_BAD_JSON"
    )
    await c.refused(alice, "PUT", path, [JOB], status=400, errcode="M_NOT_JSON")
    assert await c.ok(None, "GET", _profile(alice)) == before


async def test_the_whole_profile_stays_under_64_kib(env: Env) -> None:
    c, alice = env.client, env.alice
    await c.ok(alice, "PUT", _field(alice, "displayname"), {"displayname": "Alice"})
    # {"displayname":"Alice","org.example.big":"..."} is 44 bytes and the
    # value: a value of 64 KiB less 44 makes the profile exactly 64 KiB.
    big = "org.example.big"
    await c.refused(
        alice,
        "PUT",
        _field(alice, big),
        {big: "x" * (64 * 1024 - 44)},
        status=400,
        errcode="M_PROFILE_TOO_LARGE",
    )
    assert await c.ok(None, "GET", _profile(alice)) == {"displayname": "Alice"}
    await c.ok(alice, "PUT", _field(alice, big), {big: "x" * (64 * 1024 - 45)})
    # Full: one byte more anywhere is refused, the name and avatar too.
    await c.refused(
        alice,
        "PUT",
        _field(alice, "displayname"),
        {"displayname": "Alice!"},
        status=400,
        errcode="M_PROFILE_TOO_LARGE",
    )
    await c.refused(
        alice, "PUT", _field(alice, "m.tz"), {"m.tz": ""}, status=400, errcode="M_PROFILE_TOO_LARGE"
    )
    assert (await c.ok(None, "GET", _field(alice, "displayname"))) == {"displayname": "Alice"}
    # Shrinking a field makes room.
    await c.ok(alice, "PUT", _field(alice, big), {big: "small"})
    await c.ok(alice, "PUT", _field(alice, "m.tz"), {"m.tz": "UTC"})


async def test_only_the_owner_or_an_admin_changes_a_profile(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    await c.ok(alice, "PUT", _field(alice, JOB), {JOB: "Smith"})
    await c.refused(bob, "PUT", _field(alice, JOB), {JOB: "X"}, status=403, errcode="M_FORBIDDEN")
    await c.refused(bob, "DELETE", _field(alice, JOB), status=403, errcode="M_FORBIDDEN")
    await c.refused(
        None, "PUT", _field(alice, JOB), {JOB: "X"}, status=401, errcode="M_MISSING_TOKEN"
    )
    await c.refused(None, "DELETE", _field(alice, JOB), status=401, errcode="M_MISSING_TOKEN")
    assert await c.ok(None, "GET", _field(alice, JOB)) == {JOB: "Smith"}
    admin = await env.hs.register_user("root", admin=True)
    await c.ok(admin, "PUT", _field(alice, JOB), {JOB: "Set by an admin"})
    assert await c.ok(None, "GET", _field(alice, JOB)) == {JOB: "Set by an admin"}
    await c.ok(admin, "DELETE", _field(alice, JOB))
    await c.refused(None, "GET", _field(alice, JOB), status=404, errcode="M_NOT_FOUND")


async def test_the_name_through_the_general_path_rewrites_member_events_others_do_not(
    env: Env,
) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    room_id = await c.create_room(alice, preset="public_chat")
    await c.ok(bob, "POST", f"/join/{q(room_id)}", {})
    member_path = f"/rooms/{q(room_id)}/state/m.room.member/{q(alice.user_id)}"
    state_path = f"/rooms/{q(room_id)}/state"
    await c.ok(alice, "PUT", _field(alice, "displayname"), {"displayname": "Alice A."})
    assert await c.ok(bob, "GET", member_path) == {"membership": "join", "displayname": "Alice A."}
    state_before = {event["event_id"] for event in await c.ok(bob, "GET", state_path)}
    await c.ok(alice, "PUT", _field(alice, "m.tz"), {"m.tz": "Asia/Tokyo"})
    await c.ok(alice, "PUT", _field(alice, JOB), {JOB: "Smith"})
    await c.ok(alice, "DELETE", _field(alice, JOB))
    assert {event["event_id"] for event in await c.ok(bob, "GET", state_path)} == state_before
    await c.ok(alice, "DELETE", _field(alice, "displayname"))
    assert await c.ok(bob, "GET", member_path) == {"membership": "join"}


async def test_the_capability_says_fields_may_be_changed(env: Env) -> None:
    answer: dict[str, Any] = await env.client.ok(env.alice, "GET", "/capabilities")
    capabilities = answer["capabilities"]
    assert capabilities["m.profile_fields"] == {"enabled": True}
    # Kept for older clients, and agreeing with it.
    assert capabilities["m.set_displayname"] == {"enabled": True}
    assert capabilities["m.set_avatar_url"] == {"enabled": True}


async def test_deactivation_erases_every_field(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    await c.ok(alice, "PUT", _field(alice, "displayname"), {"displayname": "Alice"})
    await c.ok(alice, "PUT", _field(alice, "m.tz"), {"m.tz": "UTC"})
    await c.ok(alice, "PUT", _field(alice, JOB), {JOB: ["Smith"]})
    status, challenge = await c.call(alice, "POST", "/account/deactivate", {})
    assert status == 401, challenge
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": PASSWORD,
        "session": challenge["session"],
    }
    await c.ok(alice, "POST", "/account/deactivate", {"auth": auth})
    assert await c.ok(bob, "GET", _profile(alice)) == {}
    for key in ("displayname", "m.tz", JOB):
        await c.refused(bob, "GET", _field(alice, key), status=404, errcode="M_NOT_FOUND")


async def test_a_field_of_another_servers_user_is_asked_of_that_server(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (a, b, ca, cb, alice, bob):
        await ca.ok(alice, "PUT", _field(alice, JOB), {JOB: {"title": "Smith"}})
        await ca.ok(alice, "PUT", _field(alice, "m.tz"), {"m.tz": "Europe/Paris"})
        await ca.ok(alice, "PUT", _field(alice, "displayname"), {"displayname": "Alice of A"})
        assert await cb.ok(bob, "GET", _field(alice, JOB)) == {JOB: {"title": "Smith"}}
        assert await cb.ok(bob, "GET", _field(alice, "m.tz")) == {"m.tz": "Europe/Paris"}
        await cb.refused(
            bob, "GET", _field(alice, "org.example.unset"), status=404, errcode="M_NOT_FOUND"
        )
        assert await cb.ok(bob, "GET", _profile(alice)) == {
            "displayname": "Alice of A",
            "m.tz": "Europe/Paris",
            JOB: {"title": "Smith"},
        }
        # A's answer to the query itself: the one field asked for, or none.
        assert await _query(a, b, alice.user_id, JOB) == {JOB: {"title": "Smith"}}
        assert await _query(a, b, alice.user_id, "org.example.unset") == {}
        # B may not change it.
        await cb.refused(
            bob, "PUT", _field(alice, JOB), {JOB: "X"}, status=403, errcode="M_FORBIDDEN"
        )
        assert await ca.ok(None, "GET", _field(alice, JOB)) == {JOB: {"title": "Smith"}}


async def _query(a: TestHomeserver, b: TestHomeserver, user_id: str, field: str) -> Any:
    """A's answer to B's signed ``/query/profile`` for ``field`` of ``user_id``."""
    response = await b.server.federation_client.request(
        "GET",
        a.server_name,
        "/_matrix/federation/v1/query/profile",
        query={"user_id": user_id, "field": field},
    )
    return json.loads(response.body)
