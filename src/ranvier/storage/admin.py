"""The admin API's storage: its reads (:mod:`.admin_reads`) on the reader
pool and its few writes (:mod:`.admin_writes`) through the storage actor.
"""

from __future__ import annotations

import functools

from . import admin_reads, admin_writes
from .admin_reads import (
    BlockRecord,
    DeviceRow,
    ReportDetail,
    RoomRow,
    UserQuery,
    UserRow,
)
from .readers import ReaderPool
from .write_backend import WriteBackend

__all__ = ["AdminStorage"]


class AdminStorage:
    """What the admin API reads and writes; see :mod:`.admin_reads`."""

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    # Accounts.

    async def list_users(self, query: UserQuery) -> tuple[list[UserRow], int]:
        return await self._readers.read(functools.partial(admin_reads.list_users, query=query))

    async def user(self, user_id: str) -> UserRow | None:
        return await self._readers.read(functools.partial(admin_reads.user, user_id=user_id))

    async def devices_of(self, user_id: str) -> list[DeviceRow]:
        return await self._readers.read(functools.partial(admin_reads.devices_of, user_id=user_id))

    async def joined_rooms_of(self, user_id: str) -> list[str]:
        return await self._readers.read(
            functools.partial(admin_reads.joined_rooms_of, user_id=user_id)
        )

    async def set_admin(self, user_id: str, admin: bool) -> bool:
        return await self._writer.submit(
            functools.partial(admin_writes.set_admin, user_id=user_id, admin=admin)
        )

    async def set_locked(self, user_id: str, locked: bool) -> bool:
        return await self._writer.submit(
            functools.partial(admin_writes.set_locked, user_id=user_id, locked=locked)
        )

    async def set_suspended(self, user_id: str, suspended: bool) -> bool:
        return await self._writer.submit(
            functools.partial(admin_writes.set_suspended, user_id=user_id, suspended=suspended)
        )

    async def set_shadow_banned(self, user_id: str, shadow_banned: bool) -> bool:
        return await self._writer.submit(
            functools.partial(
                admin_writes.set_shadow_banned, user_id=user_id, shadow_banned=shadow_banned
            )
        )

    async def reactivate_account(self, user_id: str, password_hash: str) -> bool:
        return await self._writer.submit(
            functools.partial(
                admin_writes.reactivate_account, user_id=user_id, password_hash=password_hash
            )
        )

    # Rooms.

    async def rooms(self, server_name: str) -> list[RoomRow]:
        return await self._readers.read(
            functools.partial(admin_reads.rooms, server_name=server_name)
        )

    async def room(self, server_name: str, room_id: str) -> RoomRow | None:
        found = await self._readers.read(
            functools.partial(admin_reads.rooms, server_name=server_name, room_id=room_id)
        )
        return found[0] if found else None

    async def room_members(self, room_id: str) -> list[str]:
        return await self._readers.read(
            functools.partial(admin_reads.room_members, room_id=room_id)
        )

    async def local_members_to_remove(self, room_id: str, server_name: str) -> list[str]:
        return await self._readers.read(
            functools.partial(
                admin_reads.local_members_to_remove, room_id=room_id, server_name=server_name
            )
        )

    async def block_of(self, room_id: str) -> BlockRecord | None:
        return await self._readers.read(functools.partial(admin_reads.block_of, room_id=room_id))

    async def is_room_blocked(self, room_id: str) -> bool:
        return await self.block_of(room_id) is not None

    async def block_room(self, room_id: str, user_id: str, blocked_ts: int) -> None:
        await self._writer.submit(
            functools.partial(
                admin_writes.block_room, room_id=room_id, user_id=user_id, blocked_ts=blocked_ts
            )
        )

    async def unblock_room(self, room_id: str) -> None:
        await self._writer.submit(functools.partial(admin_writes.unblock_room, room_id=room_id))

    # Reports.

    async def report(self, report_id: int) -> ReportDetail | None:
        return await self._readers.read(functools.partial(admin_reads.report, report_id=report_id))

    async def delete_report(self, report_id: int) -> bool:
        return await self._writer.submit(
            functools.partial(admin_writes.delete_event_report, report_id=report_id)
        )
