"""Key backups through a client_reader worker: versions and keys are
written by the main process's storage actor, and its refusals (an older
version, with the current one named) reach the client as they are."""

from __future__ import annotations

from pathlib import Path

from _worker_configs import alice_on_both

_V3 = "/_matrix/client/v3"
ALG = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM = "!room:example.org"


def _key(first: int) -> dict[str, object]:
    return {
        "first_message_index": first,
        "forwarded_count": 0,
        "is_verified": False,
        "session_data": {"ciphertext": f"from {first}"},
    }


async def test_a_backup_kept_through_a_worker(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        main, alice, on_worker, on_main = both.main, both.alice, both.on_worker, both.on_main
        body = {"algorithm": ALG, "auth_data": {"public_key": "p"}}
        first = (await on_worker.post(f"{_V3}/room_keys/version", json=body)).json()
        second = (await on_worker.post(f"{_V3}/room_keys/version", json=body)).json()
        assert (first, second) == ({"version": "1"}, {"version": "2"})
        path = f"{_V3}/room_keys/keys/{ROOM}/s1"
        stored = await on_worker.put(path, params={"version": "2"}, json=_key(5))
        assert stored.status_code == 200
        assert stored.json()["count"] == 1
        # The main process's write refuses the older version.
        late = await on_worker.put(path, params={"version": "1"}, json=_key(0))
        assert late.status_code == 403
        assert late.json()["errcode"] == "M_WRONG_ROOM_KEYS_VERSION"
        assert late.json()["current_version"] == "2"
        # A better key replaces the stored one; the main process serves it.
        better = await on_worker.put(path, params={"version": "2"}, json=_key(1))
        assert better.json()["etag"] != stored.json()["etag"]
        served = await on_main.get(path, params={"version": "2"})
        assert served.json() == _key(1)
        info = (await on_worker.get(f"{_V3}/room_keys/version")).json()
        assert (info["version"], info["count"], info["etag"]) == (
            "2",
            1,
            better.json()["etag"],
        )
        deleted = await on_worker.delete(f"{_V3}/room_keys/version/2")
        assert deleted.status_code == 200
        current = (await on_main.get(f"{_V3}/room_keys/version")).json()
        assert current["version"] == "1"
        gone = await main.server.storage.room_keys.keys(alice.user_id, 2)
        assert gone is None
