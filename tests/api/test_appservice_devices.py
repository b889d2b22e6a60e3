"""An application service's devices over real HTTP (spec v1.17): acting
with a device of its user (``device_id``, MSC4326), creating devices with
``PUT /devices/{deviceId}`` and deleting them without user-interactive
authentication (MSC4190), and replacing cross-signing keys without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _appservices import AS_TOKEN, WithService, open_with_service
from _e2e import cross_signing

from ranvier.testing.homeserver import TestUser


async def _as(
    env: WithService, method: str, path: str, body: Any = None, **params: str
) -> tuple[int, Any]:
    return await env.client.call(None, method, path, body, token=AS_TOKEN, params=params)


async def test_a_service_creates_a_device_then_renames_it(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        ghost = await env.register("_br_ghost")
        status, answer = await _as(
            env, "PUT", "/devices/BRIDGEDEV", {"display_name": "Bridge"}, user_id=ghost
        )
        assert (status, answer) == (201, {})
        status, listed = await _as(env, "GET", "/devices", user_id=ghost)
        assert status == 200
        assert [(d["device_id"], d.get("display_name")) for d in listed["devices"]] == [
            ("BRIDGEDEV", "Bridge")
        ]
        # The device exists now: the same request renames it, 200.
        status, answer = await _as(
            env, "PUT", "/devices/BRIDGEDEV", {"display_name": "Renamed"}, user_id=ghost
        )
        assert (status, answer) == (200, {})
        status, device = await _as(env, "GET", "/devices/BRIDGEDEV", user_id=ghost)
        assert device["display_name"] == "Renamed"


async def test_a_user_cannot_create_a_device_by_naming_it(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        await env.client.refused(
            env.alice,
            "PUT",
            "/devices/MADEUP",
            {"display_name": "x"},
            status=404,
            errcode="M_NOT_FOUND",
        )
        devices = await env.client.ok(env.alice, "GET", "/devices")
        assert "MADEUP" not in {d["device_id"] for d in devices["devices"]}


async def test_a_service_acts_with_a_device_of_its_user(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        ghost = await env.register("_br_ghost")
        assert (await _as(env, "PUT", "/devices/DEV1", {}, user_id=ghost))[0] == 201
        status, whoami = await _as(env, "GET", "/account/whoami", user_id=ghost, device_id="DEV1")
        assert (status, whoami) == (200, {"user_id": ghost, "device_id": "DEV1", "is_guest": False})
        # What needs a device works with it: one-time keys land on DEV1.
        status, counts = await _as(
            env,
            "POST",
            "/keys/upload",
            {"one_time_keys": {"signed_curve25519:AAAA": {"key": "k", "signatures": {}}}},
            user_id=ghost,
            device_id="DEV1",
        )
        assert status == 200, counts
        assert counts["one_time_key_counts"]["signed_curve25519"] == 1
        # Without device_id the service still acts with no device.
        status, whoami = await _as(env, "GET", "/account/whoami", user_id=ghost)
        assert whoami == {"user_id": ghost, "is_guest": False}


async def test_a_device_the_user_does_not_have_is_refused(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        ghost = await env.register("_br_ghost")
        other = await env.register("_br_other")
        assert (await _as(env, "PUT", "/devices/THEIRS", {}, user_id=other))[0] == 201
        for params in (
            {"user_id": ghost, "device_id": "NOPE"},
            {"user_id": ghost, "device_id": "THEIRS"},
            # No user_id: the device must be the service's sender's.
            {"device_id": "THEIRS"},
        ):
            status, answer = await _as(env, "GET", "/account/whoami", **params)
            assert (status, answer["errcode"]) == (400, "M_UNKNOWN_DEVICE"), params


async def test_a_service_deletes_devices_without_interactive_auth(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        ghost = await env.register("_br_ghost")
        for device_id in ("ONE", "TWO", "THREE"):
            assert (await _as(env, "PUT", f"/devices/{device_id}", {}, user_id=ghost))[0] == 201
        status, answer = await _as(env, "DELETE", "/devices/ONE", user_id=ghost)
        assert (status, answer) == (200, {})
        status, answer = await _as(
            env, "POST", "/delete_devices", {"devices": ["TWO", "THREE"]}, user_id=ghost
        )
        assert (status, answer) == (200, {})
        status, listed = await _as(env, "GET", "/devices", user_id=ghost)
        assert listed["devices"] == []
        # A user still authenticates interactively.
        alice = env.alice
        status, answer = await env.client.call(alice, "DELETE", f"/devices/{alice.device_id}")
        assert status == 401
        assert answer["flows"] == [{"stages": ["m.login.password"]}]


async def test_a_service_replaces_cross_signing_keys_without_interactive_auth(
    tmp_path: Path,
) -> None:
    async with open_with_service(tmp_path) as env:
        ghost = await env.register("_br_ghost")
        # Only the user ID goes into the keys: the service acts with its token.
        as_ghost = TestUser(ghost, access_token="", device_id="")
        first, second = cross_signing(as_ghost), cross_signing(as_ghost)
        for keys in (first, second):
            status, answer = await _as(
                env, "POST", "/keys/device_signing/upload", keys.body, user_id=ghost
            )
            assert (status, answer) == (200, {})
        query = {"device_keys": {ghost: []}}
        status, shown = await _as(env, "POST", "/keys/query", query, user_id=ghost)
        assert status == 200
        assert shown["master_keys"] == {ghost: second.body["master_key"]}
        assert shown["user_signing_keys"] == {ghost: second.body["user_signing_key"]}
        # A user replacing their own keys is still asked for the password.
        alice = env.alice
        await env.client.ok(alice, "POST", "/keys/device_signing/upload", cross_signing(alice).body)
        status, answer = await env.client.call(
            alice, "POST", "/keys/device_signing/upload", cross_signing(alice).body
        )
        assert status == 401
        assert answer["flows"] == [{"stages": ["m.login.password"]}]
