"""End-to-end encryption through a client_reader worker: its writes (keys,
claims, to-device messages) go to the main process's storage actor as
registered writes, refusals included."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
from _worker_configs import main_and_worker_configs

from ranvier.protocol.signing import SigningKey, encode_verify_key_base64, sign_json
from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    open_test_homeserver,
)

_V3 = "/_matrix/client/v3"
OTK = "signed_curve25519"


def _device_keys(user: TestUser) -> dict[str, Any]:
    key = SigningKey(os.urandom(32), user.device_id)
    unsigned = {
        "user_id": user.user_id,
        "device_id": user.device_id,
        "algorithms": ["m.megolm.v1.aes-sha2"],
        "keys": {f"ed25519:{user.device_id}": encode_verify_key_base64(key.verify_key)},
    }
    return sign_json(unsigned, user.user_id, key)


async def test_keys_and_messages_through_a_worker(tmp_path: Path) -> None:
    main_config, worker_config = main_and_worker_configs(tmp_path)
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        alice = await main.register_user("alice")
        bob = await main.register_user("bob")
        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client(bob) as bob_on_worker,
            TestHomeserver(worker).client(alice) as alice_on_worker,
        ):
            upload = {
                "device_keys": _device_keys(bob),
                "one_time_keys": {f"{OTK}:k1": {"key": "one"}},
            }
            answer = await bob_on_worker.post(f"{_V3}/keys/upload", json=upload)
            assert answer.json() == {"one_time_key_counts": {OTK: 1}}
            # The same key ID with other content: refused by the main
            # process's write, and the refusal reaches the client.
            clash = {"one_time_keys": {f"{OTK}:k1": {"key": "other"}}}
            refused = await bob_on_worker.post(f"{_V3}/keys/upload", json=clash)
            assert (refused.status_code, refused.json()["errcode"]) == (400, "M_INVALID_PARAM")
            claim = {"one_time_keys": {bob.user_id: {bob.device_id: OTK}}}
            claimed = (await alice_on_worker.post(f"{_V3}/keys/claim", json=claim)).json()
            assert list(claimed["one_time_keys"][bob.user_id][bob.device_id]) == [f"{OTK}:k1"]
            again = (await alice_on_worker.post(f"{_V3}/keys/claim", json=claim)).json()
            assert again["one_time_keys"] == {}
            carol = "@carol:elsewhere.invalid"
            message = {
                "messages": {bob.user_id: {bob.device_id: {"n": 1}}, carol: {"DEV": {"n": 2}}}
            }
            sent = await alice_on_worker.put(f"{_V3}/sendToDevice/m.test/t1", json=message)
            assert sent.status_code == 200
            # Carol's EDU waits in the outbox, written through the main process.
            waiting = await main.server.storage.e2e_keys.outbox_edus("elsewhere.invalid", 0, 10)
            assert len(waiting) == 1
            edu = msgspec.json.decode(waiting[0][1])
            assert edu["edu_type"] == "m.direct_to_device"
            assert edu["content"]["messages"] == {carol: {"DEV": {"n": 2}}}
            synced = (await bob_on_worker.get(f"{_V3}/sync")).json()
            assert synced["to_device"]["events"] == [
                {"type": "m.test", "sender": alice.user_id, "content": {"n": 1}}
            ]
        # The main process stored it all.
        found = await main.server.storage.e2e_keys.device_keys({bob.user_id: ()})
        assert list(found[bob.user_id]) == [bob.device_id]
