"""Dehydrated devices through a client_reader worker: storing, replacing
and deleting one goes to the main process's storage actor as registered
writes (a refusal too), and its messages are read on the worker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from _worker_configs import main_and_worker_configs

from ranvier.protocol.signing import SigningKey, encode_verify_key_base64, sign_json
from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver

_V3 = "/_matrix/client/v3"
_PATH = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"
_OTK = "signed_curve25519"


def _body(user: TestUser, device_id: str) -> dict[str, Any]:
    key = SigningKey(os.urandom(32), device_id)
    keys = {
        "user_id": user.user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {f"ed25519:{device_id}": encode_verify_key_base64(key.verify_key)},
    }
    return {
        "device_id": device_id,
        "device_data": {"algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": device_id},
        "device_keys": sign_json(keys, user.user_id, key),
        "one_time_keys": {f"{_OTK}:k1": {"key": device_id}},
    }


async def test_a_dehydrated_device_through_a_worker(tmp_path: Path) -> None:
    main_config, worker_config = main_and_worker_configs(tmp_path)
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        alice = await main.register_user("alice")
        bob = await main.register_user("bob")
        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client(alice) as alice_on_worker,
            TestHomeserver(worker).client(bob) as bob_on_worker,
        ):
            versions = (await alice_on_worker.get("/_matrix/client/versions")).json()
            assert versions["unstable_features"]["org.matrix.msc3814"] is True
            stored = await alice_on_worker.put(_PATH, json=_body(alice, "FIRST"))
            assert stored.json() == {"device_id": "FIRST"}
            # The ID of Alice's logged-in device: refused by the main
            # process's write, and the refusal reaches the client.
            clash = _body(alice, alice.device_id)
            refused = await alice_on_worker.put(_PATH, json=clash)
            assert (refused.status_code, refused.json()["errcode"]) == (400, "M_INVALID_PARAM")
            message = {"messages": {alice.user_id: {"FIRST": {"n": 1}}}}
            sent = await bob_on_worker.put(f"{_V3}/sendToDevice/m.test/t1", json=message)
            assert sent.status_code == 200
            events = (await alice_on_worker.post(f"{_PATH}/FIRST/events", json={})).json()
            assert events["events"] == [
                {"type": "m.test", "sender": bob.user_id, "content": {"n": 1}}
            ]
            replaced = await alice_on_worker.put(_PATH, json=_body(alice, "SECOND"))
            assert replaced.json() == {"device_id": "SECOND"}
            assert (await alice_on_worker.get(_PATH)).json()["device_id"] == "SECOND"
            claim = {"one_time_keys": {alice.user_id: {"SECOND": _OTK, "FIRST": _OTK}}}
            claimed = (await bob_on_worker.post(f"{_V3}/keys/claim", json=claim)).json()
            assert claimed["one_time_keys"] == {
                alice.user_id: {"SECOND": {f"{_OTK}:k1": {"key": "SECOND"}}}
            }
            # The main process stored it all.
            stored_at_main = main.server.storage.dehydrated_devices
            assert await stored_at_main.dehydrated_device(alice.user_id) == (
                "SECOND",
                b'{"algorithm":"org.matrix.msc3814.v1.olm","device_pickle":"SECOND"}',
            )
            deleted = await alice_on_worker.delete(_PATH)
            assert deleted.json() == {"device_id": "SECOND"}
            assert (await alice_on_worker.get(_PATH)).status_code == 404
        assert await stored_at_main.dehydrated_device(alice.user_id) is None
        found = await main.server.storage.e2e_keys.device_keys({alice.user_id: ()})
        assert found == {alice.user_id: {}}
