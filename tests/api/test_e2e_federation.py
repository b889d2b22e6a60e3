"""End-to-end encryption across two homeservers over loopback TLS: keys
queried and claimed from the user's server, to-device messages as
``m.direct_to_device`` EDUs, and key changes as ``m.device_list_update``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from _client import Client, q
from _e2e import OTK, cross_signing, device_keys, one_time_keys
from _federation import eventually, share_a_room, two_servers

from ranvier.testing.homeserver import TestUser


async def _sync(client: Client, user: TestUser, **params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = await client.ok(user, "GET", "/sync", params=params)
    return answer


async def test_keys_are_queried_and_claimed_from_the_users_server(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        keys = device_keys(bob)
        cross = cross_signing(bob)
        # A device name stays on its server.
        await cb.ok(bob, "PUT", f"/devices/{bob.device_id}", {"display_name": "Bob's phone"})
        await cb.ok(
            bob,
            "POST",
            "/keys/upload",
            {"device_keys": keys.body, "one_time_keys": one_time_keys(keys, bob, "k1", "k2")},
        )
        await cb.ok(bob, "POST", "/keys/device_signing/upload", cross.body)
        found = await ca.ok(
            alice, "POST", "/keys/query", {"device_keys": {bob.user_id: [], alice.user_id: []}}
        )
        assert found["failures"] == {}
        assert found["device_keys"][bob.user_id] == {bob.device_id: keys.body}
        assert found["device_keys"][alice.user_id] == {}
        assert found["master_keys"] == {bob.user_id: cross.body["master_key"]}
        assert found["self_signing_keys"] == {bob.user_id: cross.body["self_signing_key"]}
        # Bob's user-signing key is his alone, on his server too.
        assert found["user_signing_keys"] == {}
        claimed: list[str] = []
        for _ in range(3):
            answer = await ca.ok(
                alice,
                "POST",
                "/keys/claim",
                {"one_time_keys": {bob.user_id: {bob.device_id: OTK}}},
            )
            assert answer["failures"] == {}
            claimed.extend(answer["one_time_keys"].get(bob.user_id, {}).get(bob.device_id, {}))
        assert sorted(claimed) == [f"{OTK}:k1", f"{OTK}:k2"]
        assert (await _sync(cb, bob))["device_one_time_keys_count"] == {OTK: 0}
        # GET /user/devices lists Bob's device with its keys.
        response = await a.server.federation_client.request(
            "GET", b.server_name, f"/_matrix/federation/v1/user/devices/{q(bob.user_id)}"
        )
        listed = msgspec.json.decode(response.body)
        assert listed["user_id"] == bob.user_id
        assert [device["device_id"] for device in listed["devices"]] == [bob.device_id]
        assert listed["devices"][0] == {"device_id": bob.device_id, "keys": keys.body}
        assert listed["master_key"] == cross.body["master_key"]
        assert "user_signing_key" not in listed


async def test_a_to_device_message_crosses_to_the_other_server_once(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        since = (await _sync(cb, bob))["next_batch"]
        content = {"algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": {}}
        body = {"messages": {bob.user_id: {bob.device_id: content}}}
        await ca.ok(alice, "PUT", "/sendToDevice/m.room.encrypted/t1", body)
        # A retry of the same transaction sends nothing again.
        await ca.ok(alice, "PUT", "/sendToDevice/m.room.encrypted/t1", body)
        await ca.ok(
            alice,
            "PUT",
            "/sendToDevice/m.test/t2",
            {"messages": {bob.user_id: {bob.device_id: {"last": True}}}},
        )
        received: list[dict[str, Any]] = []
        token = since

        async def both_arrived() -> bool:
            nonlocal token
            answer = await _sync(cb, bob, since=token, timeout=1000)
            received.extend(answer["to_device"]["events"])
            token = answer["next_batch"]
            return any(event["type"] == "m.test" for event in received)

        await eventually(both_arrived, "the to-device messages at B")
        assert received == [
            {"type": "m.room.encrypted", "sender": alice.user_id, "content": content},
            {"type": "m.test", "sender": alice.user_id, "content": {"last": True}},
        ]
        assert (await _sync(cb, bob, since=token))["to_device"]["events"] == []
        # Taken by B, the EDUs are gone from A's outbox.
        outbox = a.server.storage.e2e_keys

        async def outbox_empty() -> bool:
            return not await outbox.outbox_edus(b.server_name, 0, 10)

        await eventually(outbox_empty, "A's outbox to empty")


async def test_a_key_change_reaches_the_device_lists_of_the_other_servers_users(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as servers:
        _, _, ca, cb, alice, bob = servers
        await share_a_room(servers)
        since = (await _sync(ca, alice))["next_batch"]
        await cb.ok(bob, "POST", "/keys/upload", {"device_keys": device_keys(bob).body})
        changed: list[str] = []
        token = since

        async def listed() -> bool:
            nonlocal token
            answer = await _sync(ca, alice, since=token, timeout=1000)
            changed.extend(answer["device_lists"]["changed"])
            token = answer["next_batch"]
            return bob.user_id in changed

        await eventually(listed, "Bob's key change in Alice's device lists")


async def test_a_device_renamed_is_a_device_list_change_for_the_other_servers_users(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as servers:
        _, _, ca, cb, alice, bob = servers
        await share_a_room(servers)
        token = (await _sync(ca, alice))["next_batch"]
        changed: list[str] = []

        async def listed() -> bool:
            nonlocal token
            answer = await _sync(ca, alice, since=token, timeout=0)
            changed.extend(answer["device_lists"]["changed"])
            token = answer["next_batch"]
            return bob.user_id in changed

        await cb.ok(bob, "POST", "/keys/upload", {"device_keys": device_keys(bob).body})
        await eventually(listed, "Bob's key upload in Alice's device lists")
        changed.clear()
        await cb.ok(bob, "PUT", f"/devices/{q(bob.device_id)}", {"display_name": "Bob's phone"})
        await eventually(listed, "Bob's rename in Alice's device lists")
        # The name itself stays on Bob's server.
        answer = await ca.ok(alice, "POST", "/keys/query", {"device_keys": {bob.user_id: []}})
        keys = answer["device_keys"][bob.user_id][bob.device_id]
        assert "device_display_name" not in keys.get("unsigned", {})
