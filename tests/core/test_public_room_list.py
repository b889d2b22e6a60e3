"""Which server's room list :meth:`RoomList.public_rooms` reads: its own
from storage, another's from that server, and a refusal for a name that
is not a server name or when no other server can be asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from ranvier.core.room_list import RoomList
from ranvier.errors import MatrixError
from ranvier.storage.client_data import PublicRoomState


class _Store:
    async def set_room_listed(self, room_id: str, listed: bool, now_ms: int) -> None:
        raise AssertionError("not written here")

    async def is_room_listed(self, room_id: str) -> bool:
        return True

    async def room_exists(self, room_id: str) -> bool:
        return True

    async def set_room_listed_in_network(
        self, appservice_id: str, network_id: str, room_id: str, listed: bool, now_ms: int
    ) -> None:
        raise AssertionError("not written here")

    async def listed_rooms(
        self, *, main: bool = True, networks: Sequence[tuple[str, str | None]] = ()
    ) -> list[PublicRoomState]:
        return []


class _Permissions:
    async def may_change_directory(self, user_id: str, room_id: str) -> bool:
        return False


class _Remote:
    def __init__(self) -> None:
        self.asked: list[tuple[str, int | None, str | None, str | None]] = []
        self.networks: list[tuple[bool, str | None]] = []

    async def query_public_rooms(
        self,
        server_name: str,
        *,
        limit: int | None,
        since: str | None,
        search: str | None,
        include_all_networks: bool = False,
        third_party_instance_id: str | None = None,
    ) -> dict[str, Any]:
        self.asked.append((server_name, limit, since, search))
        self.networks.append((include_all_networks, third_party_instance_id))
        return {"chunk": [{"room_id": "!r:other.test"}]}


async def test_another_server_s_list_is_asked_of_it() -> None:
    remote = _Remote()
    rooms = RoomList(
        store=_Store(), permissions=_Permissions(), server_name="here.test", remote=remote
    )
    page = await rooms.public_rooms(server="other.test:8448", limit=3, since="t", search="x")
    assert page == {"chunk": [{"room_id": "!r:other.test"}]}
    assert remote.asked == [("other.test:8448", 3, "t", "x")]
    # Our own name reads our own list.
    assert await rooms.public_rooms(server="here.test") == {
        "chunk": [],
        "total_room_count_estimate": 0,
    }
    for bad in ("not a name", "", "other.test:0"):
        with pytest.raises(MatrixError) as caught:
            await rooms.public_rooms(server=bad)
        assert (caught.value.http_status, caught.value.errcode) == (400, "M_INVALID_PARAM")
    with pytest.raises(MatrixError) as caught:
        await rooms.public_rooms(server="other.test", limit=-1)
    assert caught.value.errcode == "M_INVALID_PARAM"
    assert len(remote.asked) == 1


async def test_without_a_remote_only_our_own_list_is_served() -> None:
    rooms = RoomList(store=_Store(), permissions=_Permissions(), server_name="here.test")
    with pytest.raises(MatrixError) as caught:
        await rooms.public_rooms(server="other.test")
    assert (caught.value.http_status, caught.value.errcode) == (400, "M_INVALID_PARAM")


async def test_the_networks_asked_for_are_asked_of_the_other_server() -> None:
    remote = _Remote()
    rooms = RoomList(
        store=_Store(), permissions=_Permissions(), server_name="here.test", remote=remote
    )
    await rooms.public_rooms(server="other.test", third_party_instance_id="irc|libera")
    await rooms.public_rooms(server="other.test", include_all_networks=True)
    await rooms.public_rooms(server="other.test")
    assert remote.networks == [(False, "irc|libera"), (True, None), (False, None)]
