"""Bob's membership events as the storage tests write them, and the room's
first state group: the forgotten-room and newest-membership tests build
the same ones."""

from __future__ import annotations

import sqlite3

from ranvier.protocol.canonical import encode_canonical_json
from ranvier.storage import EventStateContext, EventToPersist
from ranvier.storage.state_groups import store_state_group

ROOM = "!room:example.org"
BOB = "@bob:example.org"
VERSION = "10"


def bob_member(
    event_id: str,
    membership: str,
    *,
    room_id: str = ROOM,
    before: int | None = None,
    out_of_band: bool = False,
    rejected: str | None = None,
    soft_failed: bool = False,
    depth: int = 2,
) -> EventToPersist:
    """Bob's membership: in the DAG after the state group ``before``, or
    an outlier without it (out-of-band when marked so)."""
    pdu = {
        "auth_events": [],
        "content": {"membership": membership},
        "depth": depth,
        "origin_server_ts": 1_700_000_000_000 + depth,
        "prev_events": [],
        "room_id": room_id,
        "sender": BOB,
        "state_key": BOB,
        "type": "m.room.member",
    }
    return EventToPersist(
        event_id=event_id,
        room_id=room_id,
        room_version=VERSION,
        type="m.room.member",
        state_key=BOB,
        sender=BOB,
        depth=depth,
        origin_server_ts=1_700_000_000_000 + depth,
        json=encode_canonical_json(pdu),
        outlier=before is None,
        out_of_band=out_of_band,
        rejected_reason=rejected,
        soft_failed=soft_failed,
        context=None if before is None else EventStateContext(state_group_before=before),
    )


def base_state(conn: sqlite3.Connection) -> int:
    """The room's first state group: its create event alone."""
    return store_state_group(conn, ROOM, None, {("m.room.create", ""): "$create"})
