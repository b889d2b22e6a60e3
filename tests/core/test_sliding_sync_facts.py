"""The sliding sync handler's memory of room facts between requests: each
user's facts are handed back to storage on their next request, within a
bound on rooms kept for all users together, the least recent given up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import pytest

from ranvier.core import sliding_sync as module
from ranvier.core.notifier import StreamNotifier
from ranvier.core.sliding_sync import SlidingSyncHandler, SlidingSyncStore
from ranvier.core.sync import SyncStore
from ranvier.storage.sliding_sync_reads import RoomFacts, RoomList


class _Rooms:
    """Each user in ``sizes[user]`` rooms; records the facts it was handed."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.handed: list[tuple[str, int | None]] = []
        self.position = 0

    async def room_list(
        self,
        user_id: str,
        un_partial_after: int,
        *,
        detailed: bool = True,
        known: Mapping[str, RoomFacts] | None = None,
        known_at: int = 0,
    ) -> RoomList:
        self.handed.append((user_id, None if known is None else len(known)))
        self.position += 1
        rooms = [
            RoomFacts(f"!{n}{user_id}", "join", 1, "$m", user_id, 1, 1, None, False, False, False)
            for n in range(self.sizes[user_id])
        ]
        return RoomList(self.position, 0, rooms, frozenset(), frozenset())


async def _look(handler: SlidingSyncHandler, user_id: str) -> None:
    await handler._room_list(user_id, 0, detailed=True)


async def test_facts_are_handed_back_within_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_FACTS_KEPT", 5)
    store = _Rooms({"@a:x": 2, "@b:x": 2, "@c:x": 3})
    handler = SlidingSyncHandler(
        cast(SlidingSyncStore, store), cast(SyncStore, cast(Any, None)), StreamNotifier()
    )
    await _look(handler, "@a:x")
    await _look(handler, "@a:x")
    await _look(handler, "@b:x")
    # Two users, four rooms: both kept. A third user's three rooms push out
    # the one heard from longest ago.
    await _look(handler, "@c:x")
    await _look(handler, "@b:x")
    await _look(handler, "@a:x")
    assert store.handed == [
        ("@a:x", None),
        ("@a:x", 2),
        ("@b:x", None),
        ("@c:x", None),
        ("@b:x", 2),
        ("@a:x", None),
    ]
