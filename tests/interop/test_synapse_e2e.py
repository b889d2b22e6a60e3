"""End-to-end encryption's server side between ranvier and a real Synapse:
each server's users' keys queried and claimed through the other, and
to-device messages each way.
"""

from __future__ import annotations

from typing import Any

import httpx

from ranvier.core.client_txns import TxnOwner
from ranvier.protocol.signing import sign_json
from ranvier.server import HomeServer

from ._checks import device_keys, eventually, localpart
from ._synapse import SynapseProcess

_OTK = "signed_curve25519"


def _keys(user_id: str, device_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Signed device keys and two signed one-time keys of a device."""
    device, key = device_keys(user_id, device_id)
    one_time = {
        f"{_OTK}:{name}": sign_json({"key": f"b3Rr{name}"}, user_id, key) for name in ("a", "b")
    }
    return device, one_time


async def test_keys_and_to_device_messages_between_ranvier_and_synapse(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    zed = await synapse.register(synapse_http, localpart("zed"))
    zed_device = (await zed.request("GET", "/_matrix/client/v3/account/whoami"))["device_id"]
    zed_keys, zed_one_time = _keys(zed.user_id, zed_device)
    await zed.request(
        "POST",
        "/_matrix/client/v3/keys/upload",
        body={"device_keys": zed_keys, "one_time_keys": zed_one_time},
    )
    bob = await ranvier.accounts.register(localpart("bob"), None)
    assert bob.device_id is not None
    bob_device: str = bob.device_id
    bob_keys, bob_one_time = _keys(bob.user_id, bob_device)
    keys = ranvier.e2e_keys
    await keys.upload(
        bob.user_id, bob.device_id, {"device_keys": bob_keys, "one_time_keys": bob_one_time}
    )

    # ranvier asks Synapse for Zed's keys, and claims one of his one-time keys.
    found = await keys.query(bob.user_id, {"device_keys": {zed.user_id: []}})
    assert found["failures"] == {}
    assert found["device_keys"][zed.user_id][zed_device]["keys"] == zed_keys["keys"]
    claimed = await keys.claim({"one_time_keys": {zed.user_id: {zed_device: _OTK}}})
    assert claimed["failures"] == {}
    (name,) = claimed["one_time_keys"][zed.user_id][zed_device]
    assert name in zed_one_time

    # Synapse asks ranvier for Bob's, and claims one of his.
    asked = await zed.request(
        "POST", "/_matrix/client/v3/keys/query", body={"device_keys": {bob.user_id: []}}
    )
    assert asked["failures"] == {}
    shown = asked["device_keys"][bob.user_id][bob.device_id]
    assert {key: shown[key] for key in bob_keys} == bob_keys
    taken = await zed.request(
        "POST",
        "/_matrix/client/v3/keys/claim",
        body={"one_time_keys": {bob.user_id: {bob.device_id: _OTK}}},
    )
    assert list(taken["one_time_keys"][bob.user_id][bob.device_id]) in (
        [[name] for name in bob_one_time]
    )
    counts, _ = await ranvier.storage.e2e_keys.key_counts(bob.user_id, bob.device_id)
    assert counts == {_OTK: 1}

    # A to-device message each way.
    await ranvier.to_device.send(
        TxnOwner(bob.user_id, bob.device_id),
        "m.test",
        "t1",
        {"messages": {zed.user_id: {zed_device: {"from": "ranvier"}}}},
    )
    received: list[dict[str, Any]] = []
    since: list[str] = []

    async def at_synapse() -> bool:
        params = {"timeout": "0", **({"since": since[-1]} if since else {})}
        synced = await zed.request("GET", "/_matrix/client/v3/sync", params=params)
        since.append(synced["next_batch"])
        received.extend(synced.get("to_device", {}).get("events", []))
        return bool(received)

    await eventually(at_synapse, "ranvier's to-device message at Synapse")
    assert received == [{"type": "m.test", "sender": bob.user_id, "content": {"from": "ranvier"}}]
    await zed.request(
        "PUT",
        "/_matrix/client/v3/sendToDevice/m.test/t2",
        body={"messages": {bob.user_id: {bob.device_id: {"from": "synapse"}}}},
    )
    store = ranvier.storage.e2e_keys

    async def at_ranvier() -> bool:
        upto = await store.to_device_position()
        return bool(await store.to_device_messages(bob.user_id, bob_device, 0, upto, 10))

    await eventually(at_ranvier, "Synapse's to-device message at ranvier")
    upto = await store.to_device_position()
    (stored,) = await store.to_device_messages(bob.user_id, bob.device_id, 0, upto, 10)
    assert stored[1] == (
        b'{"type":"m.test","sender":"' + zed.user_id.encode() + b'","content":{"from":"synapse"}}'
    )


async def test_a_key_change_reaches_synapse_users_sharing_a_room(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    zed = await synapse.register(synapse_http, localpart("zed"))
    room_id = await zed.create_room(preset="public_chat", name="Keys, on Synapse")
    bob = await ranvier.accounts.register(localpart("bob"), None)
    assert bob.device_id is not None
    keys = ranvier.e2e_keys
    first, _ = _keys(bob.user_id, bob.device_id)
    await keys.upload(bob.user_id, bob.device_id, {"device_keys": first})
    join_id = await ranvier.join_room(bob.user_id, room_id, [synapse.server_name])

    async def joined() -> bool:
        return bob.user_id in await zed.joined_members(room_id)

    await eventually(joined, f"ranvier's join {join_id} on Synapse")

    async def zed_sees(wanted: dict[str, Any]) -> bool:
        asked = await zed.request(
            "POST", "/_matrix/client/v3/keys/query", body={"device_keys": {bob.user_id: []}}
        )
        shown = asked["device_keys"].get(bob.user_id, {}).get(bob.device_id, {})
        return bool(shown.get("keys") == wanted["keys"])

    # Synapse now follows Bob's device list: it has his first keys...
    await eventually(lambda: zed_sees(first), "Bob's first keys at Synapse")
    since = (await zed.request("GET", "/_matrix/client/v3/sync", params={"timeout": "0"}))[
        "next_batch"
    ]
    # ...and an update to them reaches Zed's sync and his next query.
    second, _ = _keys(bob.user_id, bob.device_id)
    await keys.upload(bob.user_id, bob.device_id, {"device_keys": second})
    changed: list[str] = []

    async def listed() -> bool:
        synced = await zed.request(
            "GET", "/_matrix/client/v3/sync", params={"timeout": "0", "since": since}
        )
        changed.extend(synced.get("device_lists", {}).get("changed", []))
        return bob.user_id in changed

    await eventually(listed, "Bob in Zed's device_lists.changed")
    await eventually(lambda: zed_sees(second), "Bob's new keys at Synapse")
