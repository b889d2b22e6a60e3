"""Users of the core tests, the event creator most of them use, and storage
that counts what core reads.

Rooms come from :class:`ranvier.testing.RoomBuilder`, without keys: real
event IDs, placeholder hashes and signatures, which nothing in core
checks. :func:`ranvier.testing.ingest` takes an event through core into
real storage.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from collections.abc import Collection
from pathlib import Path

from ranvier.core.creation import EventCreator
from ranvier.protocol.signing import SigningKey
from ranvier.storage import StateMap, Storage, StoredEvent

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
DAVE = "@dave:other.example"


def local_creator(storage: Storage, server_name: str, signing_key: SigningKey) -> EventCreator:
    """Events of ``server_name``'s users, written to ``storage``, stamped by a
    clock that moves a millisecond a reading so that no two events tie."""
    clock = itertools.count(1_700_000_000_000)
    return EventCreator(
        server_name=server_name,
        signing_key=signing_key,
        store=storage,
        persister=storage,
        clock=lambda: next(clock),
    )


def count_rows(db_path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(state groups, state group rows)`` in the database."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        groups = conn.execute("SELECT COUNT(*) FROM state_groups").fetchone()[0]
        rows = conn.execute("SELECT COUNT(*) FROM state_group_rows").fetchone()[0]
    return int(groups), int(rows)


class CountingStorage(Storage):
    """Storage that counts what core reads from it, to show what core avoids."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, synchronous="NORMAL")
        self.events_read = 0
        self.state_reads = 0
        self.current_state_reads = 0

    async def get_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        self.events_read += len(set(event_ids))
        return await super().get_events(event_ids)

    async def get_state_ids(self, state_group: int) -> StateMap:
        self.state_reads += 1
        return await super().get_state_ids(state_group)

    async def get_current_state_ids(self, room_id: str) -> StateMap:
        self.current_state_reads += 1
        return await super().get_current_state_ids(room_id)
