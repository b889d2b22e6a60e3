"""Forgetting a room through a client_reader worker: the write goes to the
main process's storage actor, the refusal of a room still joined comes
back from there as the same Matrix error, and both processes then hide
the room from Alice."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from _worker_configs import alice_on_both

_V3 = "/_matrix/client/v3"
_INCLUDE_LEAVE = json.dumps({"room": {"include_leave": True}})


async def test_a_forget_through_a_worker_is_written_by_the_main_process(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        created = await both.on_main.post(f"{_V3}/createRoom", json={"preset": "public_chat"})
        assert created.status_code == 200, created.text
        room_id = created.json()["room_id"]
        room = urllib.parse.quote(room_id, safe="")
        # Bob keeps the room going once Alice has left.
        bob = await both.main.register_user("bob")
        async with both.main.client(bob) as bob_on_main:
            bob_joined = await bob_on_main.post(f"{_V3}/rooms/{room}/join", json={})
            assert bob_joined.status_code == 200, bob_joined.text

        joined = await both.on_worker.post(f"{_V3}/rooms/{room}/forget", json={})
        assert (joined.status_code, joined.json()["errcode"]) == (400, "M_UNKNOWN")
        left = await both.on_worker.post(f"{_V3}/rooms/{room}/leave", json={})
        assert left.status_code == 200, left.text
        history = await both.on_worker.get(f"{_V3}/rooms/{room}/messages", params={"dir": "b"})
        assert history.status_code == 200, history.text

        forgot = await both.on_worker.post(f"{_V3}/rooms/{room}/forget", json={})
        assert (forgot.status_code, forgot.json()) == (200, {})
        storage = both.main.server.storage
        assert await storage.forgotten_rooms.forgotten_rooms(both.alice.user_id) == {room_id}
        for client in (both.on_main, both.on_worker):
            refused = await client.get(f"{_V3}/rooms/{room}/messages", params={"dir": "b"})
            assert (refused.status_code, refused.json()["errcode"]) == (403, "M_FORBIDDEN")
            synced = await client.get(f"{_V3}/sync", params={"filter": _INCLUDE_LEAVE})
            assert synced.status_code == 200, synced.text
            assert room_id not in synced.json()["rooms"]["leave"]

        # Joining again through the worker clears it on the main process.
        rejoined = await both.on_worker.post(f"{_V3}/rooms/{room}/join", json={})
        assert rejoined.status_code == 200, rejoined.text
        assert not await storage.forgotten_rooms.has_forgotten(both.alice.user_id, room_id)
