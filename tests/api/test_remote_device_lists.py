"""Bob's device list kept on Alice's server while they share a room, over
two real servers: filled once through ``GET /user/devices``, kept current
by Bob's server's updates, fetched again after a gap or a break in
sharing, and answering while Bob's server is down."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from _client import Client, q
from _e2e import cross_signing, device_keys
from _federation import TwoServers, eventually, share_a_room, two_servers

from ranvier.errors import MatrixError
from ranvier.testing.homeserver import TestHomeserver, TestUser

_DEVICES = "/_matrix/federation/v1/user/devices/"
_QUERY = "/_matrix/federation/v1/user/keys/query"


class _Seen:
    """The federation requests a server matched, and a switch that makes
    it answer none of them (down)."""

    def __init__(self, hs: TestHomeserver, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        self.down = False
        router = hs.server.federation_app.router
        original: Callable[[str, str], Any] = router.match

        def match(method: str, path: str) -> Any:
            if path.startswith("/_matrix/federation/"):
                self.paths.append(path)
                if self.down:
                    raise MatrixError("down", errcode="M_UNKNOWN", http_status=503)
            return original(method, path)

        monkeypatch.setattr(router, "match", match)

    def count(self, prefix: str) -> int:
        return sum(path.startswith(prefix) for path in self.paths)


async def _query(c: Client, user: TestUser, *users: str) -> dict[str, Any]:
    answer: dict[str, Any] = await c.ok(
        user, "POST", "/keys/query", {"device_keys": {u: [] for u in users}}
    )
    return answer


async def _kept(hs: TestHomeserver, user_id: str) -> dict[str, Any] | None:
    """The devices' keys A keeps for ``user_id``; None when it keeps no
    fresh list."""
    found = await hs.server.storage.remote_device_lists.entry(user_id)
    if found is None or found[1]:
        return None
    return {device_id: msgspec.json.decode(keys) for device_id, keys in found[0].devices.items()}


async def _until_kept(hs: TestHomeserver, user_id: str, devices: dict[str, Any]) -> None:
    async def check() -> bool:
        return await _kept(hs, user_id) == devices

    await eventually(check, f"{sorted(devices)} kept for {user_id}")


async def _heard_of(hs: TestHomeserver, user_id: str) -> None:
    """Wait for a row of ``user_id``'s (a device-list update arrived)."""

    async def there() -> bool:
        return await hs.server.storage.remote_device_lists.entry(user_id) is not None

    await eventually(there, f"an update about {user_id}")


async def _bob_with_keys(servers: TwoServers) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bob's device keys and cross-signing keys uploaded, and heard of at A."""
    a, _, _, cb, _, bob = servers
    keys = device_keys(bob).body
    cross = cross_signing(bob).body
    await cb.ok(bob, "POST", "/keys/upload", {"device_keys": keys})
    await cb.ok(bob, "POST", "/keys/device_signing/upload", cross)
    await _heard_of(a, bob.user_id)
    return keys, cross


async def test_a_shared_users_list_is_fetched_once_then_kept_current(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        seen = _Seen(b, monkeypatch)
        await share_a_room(servers)
        keys, cross = await _bob_with_keys(servers)
        first = await _query(ca, alice, bob.user_id)
        assert first["failures"] == {}
        assert first["device_keys"] == {bob.user_id: {bob.device_id: keys}}
        assert first["master_keys"] == {bob.user_id: cross["master_key"]}
        assert first["self_signing_keys"] == {bob.user_id: cross["self_signing_key"]}
        assert (seen.count(_DEVICES), seen.count(_QUERY)) == (1, 0)
        assert await _query(ca, alice, bob.user_id) == first
        assert (seen.count(_DEVICES), seen.count(_QUERY)) == (1, 0)

        # Bob adds a device: the update reaches A's copy.
        login = await b.server.accounts.login_as(bob.user_id, device_id="PHONE")
        phone = TestUser(bob.user_id, login.access_token, "PHONE")
        phone_keys = device_keys(phone).body
        await cb.ok(phone, "POST", "/keys/upload", {"device_keys": phone_keys})

        await _until_kept(a, bob.user_id, {bob.device_id: keys, "PHONE": phone_keys})
        found = await _query(ca, alice, bob.user_id)
        assert found["device_keys"] == {bob.user_id: {bob.device_id: keys, "PHONE": phone_keys}}
        # Only the devices asked for, as Bob's server would answer.
        only = await ca.ok(alice, "POST", "/keys/query", {"device_keys": {bob.user_id: ["PHONE"]}})
        assert only["device_keys"] == {bob.user_id: {"PHONE": phone_keys}}
        assert only["master_keys"] == first["master_keys"]

        # The phone's keys change: the copy follows.
        new_keys = device_keys(phone).body
        await cb.ok(phone, "POST", "/keys/upload", {"device_keys": new_keys})
        await _until_kept(a, bob.user_id, {bob.device_id: keys, "PHONE": new_keys})
        found = await _query(ca, alice, bob.user_id)
        assert found["device_keys"][bob.user_id]["PHONE"] == new_keys

        # The phone logs out: its device goes from the copy.
        await cb.ok(phone, "POST", "/logout", {})
        await _until_kept(a, bob.user_id, {bob.device_id: keys})
        found = await _query(ca, alice, bob.user_id)
        assert found["device_keys"] == {bob.user_id: {bob.device_id: keys}}
        assert (seen.count(_DEVICES), seen.count(_QUERY)) == (1, 0)


async def test_an_update_after_a_gap_makes_the_next_query_fetch_again(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        seen = _Seen(b, monkeypatch)
        barry = await b.register_user("barry")
        await share_a_room(servers)
        keys, _ = await _bob_with_keys(servers)
        first = await _query(ca, alice, bob.user_id)
        assert seen.count(_DEVICES) == 1
        # B's device-list stream moves on twice (Barry shares no room with A).
        for _ in range(2):
            await cb.ok(barry, "POST", "/keys/upload", {"device_keys": device_keys(barry).body})
        position = await b.server.e2e_keys.device_lists_position()
        # An update from Bob's server naming one A never heard of.
        ghost = device_keys(bob, device_id="GHOST").body
        update = {
            "user_id": bob.user_id,
            "device_id": "GHOST",
            "stream_id": position,
            "prev_id": [position - 1],
            "deleted": False,
            "keys": ghost,
        }
        transaction = {
            "origin": b.server_name,
            "origin_server_ts": 1,
            "pdus": [],
            "edus": [{"edu_type": "m.device_list_update", "content": update}],
        }
        await b.server.federation_client.put_json(
            a.server_name, "/_matrix/federation/v1/send/gap1", transaction
        )
        found = await a.server.storage.remote_device_lists.entry(bob.user_id)
        assert found is not None
        assert found[1]
        # Not applied: the next query asks Bob's server for the whole list.
        again = await _query(ca, alice, bob.user_id)
        assert again == first
        assert again["device_keys"] == {bob.user_id: {bob.device_id: keys}}
        assert (seen.count(_DEVICES), seen.count(_QUERY)) == (2, 0)
        # The list fetched is kept: stale no more, it answers alone again.
        assert await _query(ca, alice, bob.user_id) == first
        assert (seen.count(_DEVICES), seen.count(_QUERY)) == (2, 0)


async def test_a_kept_list_answers_while_its_server_is_down(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_servers(tmp_path) as servers:
        _, b, ca, _, alice, bob = servers
        seen = _Seen(b, monkeypatch)
        barry = await b.register_user("barry")
        await share_a_room(servers)
        await _bob_with_keys(servers)
        first = await _query(ca, alice, bob.user_id)
        seen.down = True
        assert await _query(ca, alice, bob.user_id) == first
        # Barry shares no room with A's users: asked, and his server fails.
        answer = await _query(ca, alice, bob.user_id, barry.user_id)
        assert list(answer["failures"]) == [b.server_name]
        assert answer["device_keys"] == first["device_keys"]
        assert barry.user_id not in answer["device_keys"]
        assert seen.count(_QUERY) == 1


async def test_a_user_no_longer_sharing_a_room_is_asked_and_fetched_again_on_rejoining(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        seen = _Seen(b, monkeypatch)
        room_id = await share_a_room(servers)
        keys, _ = await _bob_with_keys(servers)
        first = await _query(ca, alice, bob.user_id)
        assert (seen.count(_DEVICES), seen.count(_QUERY)) == (1, 0)

        async def bob_is(membership: str) -> None:
            async def seen_at_a() -> bool:
                members = await ca.ok(alice, "GET", f"/rooms/{q(room_id)}/joined_members")
                return (bob.user_id in members["joined"]) == (membership == "join")

            await eventually(seen_at_a, f"Bob's {membership} at A")

        await cb.ok(bob, "POST", f"/rooms/{q(room_id)}/leave", {})
        await bob_is("leave")
        # Shared no more, Bob is asked as any other server's user.
        assert await _query(ca, alice, bob.user_id) == first
        assert (seen.count(_DEVICES), seen.count(_QUERY)) == (1, 1)
        await cb.ok(bob, "POST", f"/join/{q(f'#lobby:{a.server_name}')}", {})
        await bob_is("join")
        # Updates may have been missed meanwhile: fetched again, then kept.
        assert await _query(ca, alice, bob.user_id) == first
        assert (seen.count(_DEVICES), seen.count(_QUERY)) == (2, 1)
        assert await _query(ca, alice, bob.user_id) == first
        assert (seen.count(_DEVICES), seen.count(_QUERY)) == (2, 1)
        assert await _kept(a, bob.user_id) == {bob.device_id: keys}


async def test_a_kept_list_is_fetched_again_after_this_server_left_and_rejoined(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_servers(tmp_path) as servers:
        _, b, ca, _, alice, bob = servers
        seen = _Seen(b, monkeypatch)
        room_id = await share_a_room(servers)
        await _bob_with_keys(servers)
        first = await _query(ca, alice, bob.user_id)
        # Alice, A's only user there, leaves and comes back: Bob's updates
        # did not reach A in between.
        await ca.ok(alice, "POST", f"/rooms/{q(room_id)}/leave", {})
        assert await _query(ca, alice, bob.user_id) == first
        assert (seen.count(_DEVICES), seen.count(_QUERY)) == (1, 1)
        await ca.ok(alice, "POST", f"/join/{q(room_id)}", {}, params={"server_name": b.server_name})
        assert await _query(ca, alice, bob.user_id) == first
        assert (seen.count(_DEVICES), seen.count(_QUERY)) == (2, 1)
