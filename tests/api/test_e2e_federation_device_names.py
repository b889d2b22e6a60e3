"""Devices' display names across two homeservers over loopback TLS: B's
operator decides (``[federation] allow_device_name_lookup_over_federation``)
whether A is shown the names of B's users' devices, in ``GET
/user/devices`` and ``/user/keys/query`` answers and in
``m.device_list_update`` EDUs; off, the default, none of them carries a
name, while B's own users see every name. Shared, A keeps the names with
B's users' device lists and shows them to its own users."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _client import Client, q
from _e2e import cross_signing, device_keys
from _federation import TwoServers, eventually, share_a_room

from ranvier.core.remote_device_lists import MAX_DEVICE_NAME_LENGTH
from ranvier.testing.homeserver import TestUser, config_for_tests, open_test_homeserver
from ranvier.testing.network import Pki

NAME = "Bob's phone"
RENAMED = "Bob's work laptop"


@asynccontextmanager
async def _two_servers(tmp_path: Path, *, share_names: bool) -> AsyncIterator[TwoServers]:
    """A and B, B sharing its devices' names or not; Bob of B has a password."""
    pki = Pki.create(tmp_path)
    config_b = config_for_tests(tmp_path / "b", federation=pki)
    config_b = msgspec.structs.replace(
        config_b,
        federation=msgspec.structs.replace(
            config_b.federation, allow_device_name_lookup_over_federation=share_names
        ),
    )
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", config=config_b) as b,
        a.client() as http_a,
        b.client() as http_b,
    ):
        alice, bob = await a.register_user("alice"), await b.register_user("bob", "pw")
        yield TwoServers(a, b, Client(a, http_a), Client(b, http_b), alice, bob)


async def _second_device(cb: Client, bob: TestUser) -> TestUser:
    """Bob logged in again, on a device given no name."""
    login = await cb.ok(
        None,
        "POST",
        "/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "bob"},
            "password": "pw",
        },
    )
    return TestUser(bob.user_id, login["access_token"], login["device_id"])


@pytest.mark.parametrize("share_names", [True, False])
async def test_device_names_reach_other_servers_only_when_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, share_names: bool
) -> None:
    async with _two_servers(tmp_path, share_names=share_names) as servers:
        a, b, _, cb, _, bob = servers
        await share_a_room(servers)
        # What A hears of Bob's devices, as its EDU handler is given it.
        updates: list[dict[str, Any]] = []
        e2e = a.server.e2e_keys
        heard = e2e.on_remote_update

        async def record(origin: str, content: Any, *, edu_type: str) -> None:
            if edu_type == "m.device_list_update":
                updates.append(content)
            await heard(origin, content, edu_type=edu_type)

        monkeypatch.setattr(e2e, "on_remote_update", record)

        async def heard_of(device_id: str, count: int = 1) -> None:
            async def arrived() -> bool:
                return sum(1 for u in updates if u.get("device_id") == device_id) >= count

            await eventually(arrived, f"{count} update(s) of {device_id} at A")

        def last_update(device_id: str) -> dict[str, Any]:
            return [u for u in updates if u.get("device_id") == device_id][-1]

        await cb.ok(bob, "PUT", f"/devices/{q(bob.device_id)}", {"display_name": NAME})
        named_keys = device_keys(bob)
        await cb.ok(bob, "POST", "/keys/upload", {"device_keys": named_keys.body})
        cross = cross_signing(bob)
        await cb.ok(bob, "POST", "/keys/device_signing/upload", cross.body)
        unnamed = await _second_device(cb, bob)
        unnamed_keys = device_keys(unnamed)
        await cb.ok(unnamed, "POST", "/keys/upload", {"device_keys": unnamed_keys.body})

        # m.device_list_update: the name beside the keys, which are as uploaded.
        await heard_of(bob.device_id)
        # The new device is heard of at its login, before it has keys.
        await heard_of(unnamed.device_id, 2)
        first = next(u for u in updates if u.get("device_id") == unnamed.device_id)
        assert "keys" not in first
        update = last_update(bob.device_id)
        assert update["keys"] == named_keys.body
        assert update.get("device_display_name") == (NAME if share_names else None)
        update = last_update(unnamed.device_id)
        assert update["keys"] == unnamed_keys.body
        assert "device_display_name" not in update
        # A rename is sent on with the new name, or with none.
        before = sum(1 for u in updates if u.get("device_id") == bob.device_id)
        await cb.ok(bob, "PUT", f"/devices/{q(bob.device_id)}", {"display_name": RENAMED})
        await heard_of(bob.device_id, before + 1)
        update = last_update(bob.device_id)
        assert update.get("device_display_name") == (RENAMED if share_names else None)
        assert update["keys"] == named_keys.body

        # GET /user/devices: likewise beside the keys.
        response = await a.server.federation_client.request(
            "GET", b.server_name, f"/_matrix/federation/v1/user/devices/{q(bob.user_id)}"
        )
        listed = msgspec.json.decode(response.body)
        by_device = {device["device_id"]: device for device in listed["devices"]}
        named_entry = {"device_id": bob.device_id, "keys": named_keys.body}
        if share_names:
            named_entry["device_display_name"] = RENAMED
        assert by_device == {
            bob.device_id: named_entry,
            unnamed.device_id: {"device_id": unnamed.device_id, "keys": unnamed_keys.body},
        }
        assert listed["master_key"] == cross.body["master_key"]
        assert listed["self_signing_key"] == cross.body["self_signing_key"]
        assert "user_signing_key" not in listed

        # POST /user/keys/query: in the keys' unsigned data, as a client sees it.
        response = await a.server.federation_client.request(
            "POST",
            b.server_name,
            "/_matrix/federation/v1/user/keys/query",
            content={"device_keys": {bob.user_id: []}},
        )
        answer = msgspec.json.decode(response.body)
        shown = answer["device_keys"][bob.user_id]
        expected = dict(named_keys.body)
        if share_names:
            expected["unsigned"] = {"device_display_name": RENAMED}
        assert shown == {bob.device_id: expected, unnamed.device_id: unnamed_keys.body}
        assert answer["master_keys"] == {bob.user_id: cross.body["master_key"]}
        assert "user_signing_keys" not in answer

        # Bob's own server shows its users every name, whatever the setting.
        own = await cb.ok(bob, "POST", "/keys/query", {"device_keys": {bob.user_id: []}})
        keys = own["device_keys"][bob.user_id][bob.device_id]
        assert keys["unsigned"]["device_display_name"] == RENAMED


async def test_names_of_another_servers_devices_are_kept_and_shown(tmp_path: Path) -> None:
    """B shares names. Alice of A asks for Bob's keys: A fetches his list
    with ``GET /user/devices``, keeps the names with it and shows them as
    ``unsigned.device_display_name``; a rename reaches A in an
    ``m.device_list_update`` and is shown from the kept list. A name
    longer than A keeps (set in B's storage past B's own bound, as another
    server may allow) leaves the device kept without a name, whichever
    way it comes."""
    async with _two_servers(tmp_path, share_names=True) as servers:
        a, b, ca, cb, alice, bob = servers
        await share_a_room(servers)
        too_long = "n" * (MAX_DEVICE_NAME_LENGTH + 1)
        await cb.ok(bob, "PUT", f"/devices/{q(bob.device_id)}", {"display_name": NAME})
        named_keys = device_keys(bob)
        await cb.ok(bob, "POST", "/keys/upload", {"device_keys": named_keys.body})
        other = await _second_device(cb, bob)
        other_keys = device_keys(other)
        await cb.ok(other, "POST", "/keys/upload", {"device_keys": other_keys.body})
        names = b.server.storage.client_data
        assert await names.set_device_display_name(bob.user_id, other.device_id, too_long)

        async def shown_at_a() -> dict[str, Any]:
            asked = await ca.ok(alice, "POST", "/keys/query", {"device_keys": {bob.user_id: []}})
            devices: dict[str, Any] = asked["device_keys"][bob.user_id]
            return devices

        async def kept_names() -> dict[str, str] | None:
            found = await a.server.storage.remote_device_lists.entry(bob.user_id)
            return None if found is None or found[1] else found[0].display_names

        # Fetched with GET /user/devices, and kept.
        shown = await shown_at_a()
        assert shown[bob.device_id]["unsigned"] == {"device_display_name": NAME}
        assert shown[other.device_id] == other_keys.body
        assert await kept_names() == {bob.device_id: NAME}

        # A rename arrives in an update, and the kept list shows it.
        await cb.ok(bob, "PUT", f"/devices/{q(bob.device_id)}", {"display_name": RENAMED})

        async def renamed() -> bool:
            return await kept_names() == {bob.device_id: RENAMED}

        await eventually(renamed, "the rename kept at A")
        shown = await shown_at_a()
        assert shown[bob.device_id]["unsigned"] == {"device_display_name": RENAMED}
        assert await kept_names() == {bob.device_id: RENAMED}

        # A name too long in an update: the device stays, unnamed.
        assert await names.set_device_display_name(bob.user_id, bob.device_id, too_long)
        await b.server.e2e_keys.device_renamed(bob.user_id, bob.device_id)

        async def unnamed() -> bool:
            return await kept_names() == {}

        await eventually(unnamed, "the over-long name left out at A")
        shown = await shown_at_a()
        assert shown == {bob.device_id: named_keys.body, other.device_id: other_keys.body}
