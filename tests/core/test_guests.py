"""Guests' IDs, the guest access a join reads, and the task that makes
guests leave rooms closed to them, on real servers."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import trio

from ranvier.config import Config
from ranvier.core.guests import (
    GuestJoins,
    allows_guests,
    is_guest_localpart,
    new_guest_localpart,
)
from ranvier.testing.homeserver import config_for_tests, open_test_homeserver

_V3 = "/_matrix/client/v3"
#: A public room that lets guests join.
_GUESTS_ROOM = {
    "preset": "public_chat",
    "initial_state": [
        {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}
    ],
}


def test_guest_localparts_are_twelve_digits_and_only_they_look_so() -> None:
    drawn = {new_guest_localpart() for _ in range(200)}
    assert len(drawn) == 200
    assert all(len(one) == 12 and one.isdigit() and one[0] != "0" for one in drawn)
    assert all(is_guest_localpart(one) for one in drawn)
    for other in ("alice", "123abc", "", "\uff11\uff12\uff13", "12.3", "-12"):
        assert not is_guest_localpart(other), other


def test_only_can_join_lets_guests_in() -> None:
    assert allows_guests({"guest_access": "can_join"})
    for content in (None, {}, {"guest_access": "forbidden"}, {"guest_access": "CAN_JOIN"}):
        assert not allows_guests(content), content


def _config(data_dir: Path, *, guests: bool) -> Config:
    config = config_for_tests(data_dir)
    return msgspec.structs.replace(
        config,
        registration=msgspec.structs.replace(config.registration, allow_guest_access=guests),
    )


async def _membership(http: httpx.AsyncClient, room_id: str, user_id: str) -> str:
    path = f"{_V3}/rooms/{room_id}/state/m.room.member/{user_id}"
    answer = await http.get(path)
    assert answer.status_code == 200, answer.text
    membership: str = answer.json()["membership"]
    return membership


async def test_a_join_reads_the_current_guest_access(tmp_path: Path) -> None:
    data_dir = tmp_path / "hs"
    async with open_test_homeserver(data_dir, config=_config(data_dir, guests=True)) as hs:
        alice = await hs.register_user("alice")
        async with hs.client(alice) as http:
            open_room = await http.post(f"{_V3}/createRoom", json=_GUESTS_ROOM)
            closed_room = await http.post(f"{_V3}/createRoom", json={"preset": "public_chat"})
        joins = GuestJoins(hs.server.storage)
        assert await joins.allows_guests(open_room.json()["room_id"])
        assert not await joins.allows_guests(closed_room.json()["room_id"])
        assert not await joins.allows_guests("!unknown:elsewhere.example")


async def test_guests_of_rooms_closed_while_the_task_was_not_running_leave_at_start(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "hs"
    async with open_test_homeserver(data_dir, config=_config(data_dir, guests=True)) as hs:
        alice = await hs.register_user("alice")
        async with hs.client() as anonymous:
            registered = await anonymous.post(f"{_V3}/register?kind=guest", json={})
        guest = registered.json()
        async with hs.client(alice) as http:
            made = await http.post(f"{_V3}/createRoom", json=_GUESTS_ROOM)
            room_id = made.json()["room_id"]
        async with hs.client() as as_guest:
            as_guest.headers["Authorization"] = f"Bearer {guest['access_token']}"
            joined = await as_guest.post(f"{_V3}/rooms/{room_id}/join", json={})
            assert joined.status_code == 200, joined.text

    # Guest access off: no task to see the room close.
    async with open_test_homeserver(data_dir, config=_config(data_dir, guests=False)) as hs:
        assert hs.server.guest_eviction is None
        async with hs.client(alice) as http:
            closed = await http.put(
                f"{_V3}/rooms/{room_id}/state/m.room.guest_access",
                json={"guest_access": "forbidden"},
            )
            assert closed.status_code == 200, closed.text
            assert await _membership(http, room_id, guest["user_id"]) == "join"

    async with open_test_homeserver(data_dir, config=_config(data_dir, guests=True)) as hs:
        # One look at every joined guest, when the task starts.
        async with hs.client(alice) as http:
            for _ in range(500):
                if await _membership(http, room_id, guest["user_id"]) == "leave":
                    break
                await trio.sleep(0.02)
            assert await _membership(http, room_id, guest["user_id"]) == "leave"
        assert hs.server.guest_eviction is not None
        assert await hs.server.guest_eviction.evict() == 0
