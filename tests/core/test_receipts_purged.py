"""Receipts whose room is purged after the check that the user or server
is in it, and before they are written: nothing of them is stored, a local
user is answered as not in the room, and another server's are dropped.

The purge (the real storage's purge write) runs inside the last read
before the write (:class:`_PurgedOnceLooked`), so the race is taken
every time.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import pytest

from ranvier.core.receipts import Receipts, RemoteReceipt
from ranvier.errors import MatrixError
from ranvier.server import HomeServer
from ranvier.storage.records import StoredEvent
from ranvier.testing.homeserver import open_test_homeserver

REMOTE = "remote.example"


class _PurgedOnceLooked:
    """The real membership, events and joined servers, with the room purged
    right after the last of them a receipt reads: the answer is the room's
    as it was."""

    def __init__(self, server: HomeServer) -> None:
        self._server = server

    async def _purge(self, room_id: str) -> None:
        assert await self._server.storage.room_purge.purge_room(room_id) is not None

    async def membership(self, user_id: str, room_id: str) -> str | None:
        return await self._server.room_reader.membership(user_id, room_id)

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        events = await self._server.storage.get_events(event_ids)
        for room_id in {event.room_id for event in events.values()}:
            await self._purge(room_id)
        return events

    async def joined_servers(self, room_id: str) -> frozenset[str]:
        servers = await self._server.room_servers.joined_servers(room_id)
        await self._purge(room_id)
        # As if a remote user were in the room too.
        return servers | {REMOTE}


def _receipts(server: HomeServer) -> Receipts:
    looked = _PurgedOnceLooked(server)
    return Receipts(
        server_name=server.server_name,
        store=server.storage.receipts,
        account_data=server.storage.client_data,
        rooms=looked,
        events=looked,
        servers=looked,
        edus=server.federation_sender,
    )


async def _stored(server: HomeServer, room_id: str) -> list[str]:
    upto = await server.storage.receipts.receipts_position()
    changes = await server.storage.receipts.receipt_changes([room_id], 0, upto)
    return [change.user_id for change in changes]


async def test_a_local_receipt_for_a_room_purged_meanwhile_is_refused(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        server = hs.server
        alice = await hs.register_user("alice")
        room_id = await server.create_room(alice.user_id)
        event_id = await server.send_event(alice.user_id, room_id, "m.room.message", {"body": "x"})
        receipts = _receipts(server)
        # Found in the room, its event found, then the room goes.
        with pytest.raises(MatrixError) as refused:
            await receipts.post_receipt(alice.user_id, room_id, "m.read", event_id, {})
        assert (refused.value.http_status, refused.value.errcode) == (403, "M_FORBIDDEN")
        assert await _stored(server, room_id) == []
        assert await server.storage.get_room_version(room_id) is None


async def test_a_remote_receipt_for_a_room_purged_meanwhile_is_dropped(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        server = hs.server
        alice = await hs.register_user("alice")
        room_id = await server.create_room(alice.user_id)
        event_id = await server.send_event(alice.user_id, room_id, "m.room.message", {"body": "x"})
        receipts = _receipts(server)
        sent = [
            RemoteReceipt(room_id, f"@{name}:{REMOTE}", event_id, ts=5) for name in ("bob", "carol")
        ]
        assert await receipts.on_remote_receipts(REMOTE, sent) == 0
        assert await _stored(server, room_id) == []
        assert await server.storage.get_room_version(room_id) is None
