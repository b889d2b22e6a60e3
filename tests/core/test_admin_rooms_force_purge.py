"""A room's deletion when a local user's leave fails: the purge is refused,
nothing is deleted and the status says why, until ``force_purge`` is
given. Real storage; the leaves are a stand-in that writes the leave
event through core, or refuses it for the user told to fail."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest
import trio

from ranvier.core.admin_rooms import AdminRooms
from ranvier.errors import MatrixError
from ranvier.storage import Storage
from ranvier.storage.room_purge import PurgeResult
from ranvier.testing import RoomBuilder, ingest, ingest_all

SERVER = "example.org"
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
DAVE = "@dave:other.example"
ADMIN = "@admin:example.org"


class _Leaves:
    """Leaves written as the room's next event, but ``failing``'s."""

    def __init__(self, storage: Storage, room: RoomBuilder, failing: str) -> None:
        self._storage, self._room, self._failing = storage, room, failing

    async def leave(self, user_id: str, room_id: str, *, reason: str | None = None) -> str:
        if user_id == self._failing:
            raise MatrixError(f"{user_id} cannot leave now", http_status=500)
        event = self._room.member(user_id, "leave")
        await ingest(self._storage, event)
        return event.event_id


class _NoAliases:
    async def room_aliases(self, room_id: str) -> list[str]:
        return []

    async def delete_alias(self, user_id: str, alias: str, *, is_admin: bool = False) -> None:
        raise AssertionError("no alias to delete")


class _RoomList:
    def __init__(self) -> None:
        self.unlisted: list[str] = []

    async def set_visibility(
        self, user_id: str, room_id: str, visibility: object, *, is_admin: bool = False
    ) -> None:
        self.unlisted.append(room_id)


class _WatchedPurger:
    """The storage's purge, noting the deletion's status as it starts."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.rooms: AdminRooms | None = None
        self.statuses: list[str] = []

    async def purge_room(
        self,
        room_id: str,
        *,
        refuse_if_members_of: str | None = None,
        origin: str | None = None,
        leaves: Collection[str] = (),
    ) -> PurgeResult | None:
        assert self.rooms is not None
        self.statuses += [d["status"] for d in self.rooms.delete_status(room_id)["results"]]
        return await self._storage.room_purge.purge_room(
            room_id, refuse_if_members_of=refuse_if_members_of, origin=origin, leaves=leaves
        )


@pytest.fixture
async def storage(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    store = Storage(tmp_path / "admin_rooms.db", synchronous="OFF")
    await nursery.start(store.run)
    return store


async def test_a_purge_waits_for_every_local_user_to_leave_unless_forced(
    storage: Storage,
) -> None:
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB, DAVE)
    room.message(BOB, "to be purged")
    await ingest_all(storage, room.order)
    purger, room_list = _WatchedPurger(storage), _RoomList()
    rooms = AdminRooms(
        server_name=SERVER,
        store=storage.admin,
        state=storage,
        leaves=_Leaves(storage, room, failing=BOB),
        aliases=_NoAliases(),
        room_list=room_list,
        purger=purger,
    )
    purger.rooms = rooms

    answer = await rooms.delete(ADMIN, room.room_id, {})

    status = rooms.delete_status_by_id(answer["delete_id"])
    assert status["status"] == "failed"
    assert BOB in status["error"]
    assert "force_purge" in status["error"]
    assert status["shutdown_room"]["kicked_users"] == [ALICE]
    assert status["shutdown_room"]["failed_to_kick_users"] == [BOB]
    assert purger.statuses == ["purging"]
    # Nothing was deleted: the room and its events are all there.
    assert await storage.get_room_version(room.room_id) == "10"
    assert set(await storage.get_events([e.event_id for e in room.order])) == {
        e.event_id for e in room.order
    }
    assert (await rooms.room(room.room_id))["joined_local_members"] == 1
    # The first version of the endpoint says so as an error.
    with pytest.raises(MatrixError) as refused:
        await rooms.delete_now(ADMIN, room.room_id, {})
    assert BOB in refused.value.message

    answer = await rooms.delete(ADMIN, room.room_id, {"force_purge": True})

    status = rooms.delete_status_by_id(answer["delete_id"])
    assert (status["status"], "error" in status) == ("complete", False)
    assert status["shutdown_room"]["failed_to_kick_users"] == [BOB]
    assert await storage.get_room_version(room.room_id) is None
    assert await storage.get_events([e.event_id for e in room.order]) == {}
    with pytest.raises(MatrixError) as unknown:
        await rooms.room(room.room_id)
    assert unknown.value.http_status == 404
    assert room_list.unlisted == [room.room_id] * 3
