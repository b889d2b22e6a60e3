"""Another server's user's device list kept through a client_reader
worker: the worker's key query fetches it and has the main process write
it, and a later query on the worker answers from it while that server is
down."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from _worker_configs import alice_on_both

from ranvier.errors import MatrixError
from ranvier.protocol.signing import SigningKey, encode_verify_key_base64, sign_json
from ranvier.testing import Pki
from ranvier.testing.homeserver import TestUser, open_test_homeserver

_V3 = "/_matrix/client/v3"


def _device_keys(user: TestUser) -> dict[str, Any]:
    key = SigningKey(os.urandom(32), user.device_id)
    unsigned = {
        "user_id": user.user_id,
        "device_id": user.device_id,
        "algorithms": ["m.megolm.v1.aes-sha2"],
        "keys": {f"ed25519:{user.device_id}": encode_verify_key_base64(key.verify_key)},
    }
    return sign_json(unsigned, user.user_id, key)


async def test_a_worker_fills_the_kept_list_and_answers_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "remote", federation=pki) as remote,
        alice_on_both(tmp_path, pki=pki) as both,
    ):
        bob = await remote.register_user("bob")
        room_id = await remote.server.create_room(
            bob.user_id, preset="public_chat", room_version="10"
        )
        room = urllib.parse.quote(room_id, safe="")
        joined = await both.on_main.post(
            f"{_V3}/join/{room}", params={"server_name": remote.server_name}, json={}
        )
        assert joined.status_code == 200, joined.text
        keys = _device_keys(bob)
        async with remote.client(bob) as bobs:
            uploaded = await bobs.post(f"{_V3}/keys/upload", json={"device_keys": keys})
            assert uploaded.status_code == 200, uploaded.text
        query: dict[str, Any] = {"device_keys": {bob.user_id: []}}

        first = (await both.on_worker.post(f"{_V3}/keys/query", json=query)).json()
        kept = await both.main.server.storage.remote_device_lists.entry(bob.user_id)

        # Bob's server answers no federation request from now on.
        router = remote.server.federation_app.router
        original = router.match

        def down(method: str, path: str) -> Any:
            if path.startswith("/_matrix/federation/"):
                raise MatrixError("down", errcode="M_UNKNOWN", http_status=503)
            return original(method, path)

        monkeypatch.setattr(router, "match", down)
        second = (await both.on_worker.post(f"{_V3}/keys/query", json=query)).json()

    assert first["failures"] == {}
    assert first["device_keys"] == {bob.user_id: {bob.device_id: keys}}
    assert kept is not None
    listed, stale = kept
    assert not stale
    assert set(listed.devices) == {bob.device_id}
    assert second["failures"] == {}
    assert second["device_keys"] == first["device_keys"]
