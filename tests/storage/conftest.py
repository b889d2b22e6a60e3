from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from ranvier.protocol.canonical import encode_canonical_json
from ranvier.storage import EventStateContext, EventToPersist, Storage
from ranvier.storage.connections import open_writer
from ranvier.storage.schema import migrate

ROOM = "!room:example.org"
VERSION = "10"


def build_event(
    event_id: str,
    *,
    room_id: str = ROOM,
    type: str = "m.room.message",
    state_key: str | None = None,
    prev: tuple[str, ...] = (),
    auth: tuple[str, ...] = (),
    before: int | None = None,
    after: int | None = None,
    partial: bool = False,
    outlier: bool = False,
    rejected: str | None = None,
    soft_failed: bool = False,
    depth: int = 1,
    version: str = VERSION,
    body_size: int = 0,
    redacts: str | None = None,
) -> EventToPersist:
    """An event with real canonical JSON bytes; context only for non-outliers."""
    content: dict[str, object] = {"body": "x" * body_size}
    pdu: dict[str, object] = {
        "auth_events": list(auth),
        "content": content,
        "depth": depth,
        "origin_server_ts": 1_700_000_000_000 + depth,
        "prev_events": list(prev),
        "room_id": room_id,
        "sender": "@alice:example.org",
        "type": type,
        "unsigned": {"x-id": event_id},
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    if redacts is not None:
        pdu["redacts"] = redacts
    context = None
    if not outlier:
        assert before is not None, "a non-outlier needs a state group before it"
        context = EventStateContext(
            state_group_before=before, state_group_after=after, partial_state=partial
        )
    return EventToPersist(
        event_id=event_id,
        room_id=room_id,
        room_version=version,
        type=type,
        state_key=state_key,
        sender="@alice:example.org",
        depth=depth,
        origin_server_ts=1_700_000_000_000 + depth,
        json=encode_canonical_json(pdu),
        prev_event_ids=prev,
        auth_event_ids=auth,
        outlier=outlier,
        rejected_reason=rejected,
        soft_failed=soft_failed,
        context=context,
    )


EventFactory = Callable[..., EventToPersist]


@pytest.fixture
def make_event() -> EventFactory:
    return build_event


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ranvier.db"


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A migrated write connection inside a transaction, as the actor runs the
    sqlite3-level functions.
    """
    connection = open_writer(db_path)
    migrate(connection)
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("INSERT INTO rooms (room_id, room_version) VALUES (?, ?)", (ROOM, VERSION))
    try:
        yield connection
    finally:
        connection.execute("ROLLBACK")
        connection.close()


@pytest.fixture
async def storage(db_path: Path, nursery: trio.Nursery) -> Storage:
    store = Storage(db_path)
    await nursery.start(store.run)
    await store.store_room(ROOM, VERSION)
    return store
