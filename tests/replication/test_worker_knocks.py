"""Knocking through a client_reader worker: the knock is written by the
main process's storage actor and seen by the room's members there."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import trio
from _worker_configs import alice_on_both

from ranvier.replication.worker import WorkerServer
from ranvier.testing import Pki
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver

_V3 = "/_matrix/client/v3"
_KNOCK_RULES = {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}


async def test_a_knock_taken_by_a_worker_reaches_the_room(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        bob = await both.main.register_user("bob")
        created = await both.on_main.post(
            f"{_V3}/createRoom",
            json={
                "room_version": "10",
                "initial_state": [
                    {
                        "type": "m.room.join_rules",
                        "state_key": "",
                        "content": {"join_rule": "knock"},
                    }
                ],
            },
        )
        assert created.status_code == 200, created.text
        room_id = created.json()["room_id"]
        worker: WorkerServer = both.worker
        async with TestHomeserver(worker).client(bob) as bob_on_worker:
            knocked = await bob_on_worker.post(
                f"{_V3}/knock/{urllib.parse.quote(room_id, safe='')}", json={"reason": "hi"}
            )
            assert knocked.status_code == 200, knocked.text
            assert knocked.json() == {"room_id": room_id}
        member = await both.on_main.get(
            f"{_V3}/rooms/{urllib.parse.quote(room_id, safe='')}/state/m.room.member/{bob.user_id}"
        )
        assert member.status_code == 200, member.text
        assert member.json()["membership"] == "knock"
        assert member.json()["reason"] == "hi"


async def test_a_knock_on_another_servers_room_through_a_worker_and_its_refusal(
    tmp_path: Path,
) -> None:
    """Alice knocks through the worker on a room of another server; the room's
    side refuses it, and the refusal reaches her syncs on the worker."""
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "remote", federation=pki) as remote,
        alice_on_both(tmp_path, pki=pki) as both,
    ):
        carol = await remote.register_user("carol")
        room_id = await remote.server.create_room(
            carol.user_id, room_version="10", initial_state=[_KNOCK_RULES]
        )
        room = urllib.parse.quote(room_id, safe="")
        since = (await both.on_worker.get(f"{_V3}/sync")).json()["next_batch"]
        knocked = await both.on_worker.post(
            f"{_V3}/knock/{room}",
            params={"server_name": remote.server_name},
            json={"reason": "let me in"},
        )
        assert knocked.status_code == 200, knocked.text
        alice = both.alice.user_id
        async with remote.client(carol) as carols:
            member = await carols.get(f"{_V3}/rooms/{room}/state/m.room.member/{alice}")
            assert member.json()["membership"] == "knock"
            kicked = await carols.post(
                f"{_V3}/rooms/{room}/kick", json={"user_id": alice, "reason": "not today"}
            )
            assert kicked.status_code == 200, kicked.text
        with trio.fail_after(20):
            while True:
                body = (
                    await both.on_worker.get(
                        f"{_V3}/sync", params={"since": since, "timeout": "1000"}
                    )
                ).json()
                since = body["next_batch"]
                if room_id in body["rooms"].get("leave", {}):
                    break
        assert room_id not in body["rooms"].get("knock", {})
        events = body["rooms"]["leave"][room_id]["timeline"]["events"]
        assert [(e["type"], e["content"]["membership"]) for e in events][-1] == (
            "m.room.member",
            "leave",
        )
