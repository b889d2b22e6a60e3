"""A dehydrated device seen from another server: its keys queried and
claimed through federation, its creation and replacement told to the
servers sharing a room, and messages from there waiting for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _client import Client
from _dehydrated import dehydrated_body, ok
from _e2e import OTK
from _federation import eventually, share_a_room, two_servers

from ranvier.testing.homeserver import TestUser


async def _sync(client: Client, user: TestUser, **params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = await client.ok(user, "GET", "/sync", params=params)
    return answer


async def _changed_since(client: Client, user: TestUser, since: str, of: str) -> None:
    """Wait until ``user``'s syncs from ``since`` list ``of`` in
    ``device_lists.changed``."""
    token = since

    async def listed() -> bool:
        nonlocal token
        answer = await _sync(client, user, since=token, timeout=1000)
        token = answer["next_batch"]
        return of in answer["device_lists"]["changed"]

    await eventually(listed, f"{of} in the device lists")


async def test_another_servers_user_encrypts_to_the_dehydrated_device(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        _, _, ca, cb, alice, bob = servers
        await share_a_room(servers)
        since = (await _sync(ca, alice))["next_batch"]
        body, keys = dehydrated_body(bob, "BOBS_DEHYDRATED", "k1")
        await ok(cb, bob, "PUT", "", body)
        # The new device reaches A as a device-list update.
        await _changed_since(ca, alice, since, bob.user_id)
        query: dict[str, Any] = {"device_keys": {bob.user_id: []}}
        found = await ca.ok(alice, "POST", "/keys/query", query)
        assert found["failures"] == {}
        assert found["device_keys"][bob.user_id]["BOBS_DEHYDRATED"] == keys.body
        claim = {"one_time_keys": {bob.user_id: {"BOBS_DEHYDRATED": OTK}}}
        claimed = await ca.ok(alice, "POST", "/keys/claim", claim)
        assert list(claimed["one_time_keys"][bob.user_id]["BOBS_DEHYDRATED"]) == [f"{OTK}:k1"]
        # Alice's message travels as an m.direct_to_device EDU and waits.
        content = {"algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": {"k": "v"}}
        message = {"messages": {bob.user_id: {"BOBS_DEHYDRATED": content}}}
        await ca.ok(alice, "PUT", "/sendToDevice/m.room.encrypted/t1", message)
        fetched: list[dict[str, Any]] = []

        async def arrived() -> bool:
            answer = await ok(cb, bob, "POST", "/BOBS_DEHYDRATED/events", {})
            fetched[:] = answer["events"]
            return bool(fetched)

        await eventually(arrived, "Alice's message at B")
        assert fetched == [
            {"type": "m.room.encrypted", "sender": alice.user_id, "content": content}
        ]
        # Replaced, the old device is gone for A too.
        since = (await _sync(ca, alice))["next_batch"]
        replacement, _ = dehydrated_body(bob, "BOBS_NEXT")
        await ok(cb, bob, "PUT", "", replacement)
        await _changed_since(ca, alice, since, bob.user_id)

        # The old device's removal and the new one's arrival are two
        # updates, which may reach A in two transactions.
        async def replaced() -> bool:
            found = await ca.ok(alice, "POST", "/keys/query", query)
            # (Bob's own device uploaded no keys, so is not listed.)
            return set(found["device_keys"][bob.user_id]) == {"BOBS_NEXT"}

        await eventually(replaced, "the replacement dehydrated device at A")
