"""Persist events until killed, printing each event ID once it is acknowledged.

Run by test_crash.py as ``python crash_writer.py DATABASE RUN``. Several
writers run at once so the actor groups their requests; some events change
state and some are large, so state groups, current state and WAL checkpoints
are all in play when the kill lands.
"""

from __future__ import annotations

import os
import sys

import trio

from ranvier.protocol.canonical import encode_canonical_json
from ranvier.storage import EventStateContext, EventToPersist, Storage

ROOM = "!crash:example.org"
WRITERS = 4


def _event(event_id: str, prev: tuple[str, ...], before: int, n: int) -> EventToPersist:
    state_key = f"@user{n % 50}:example.org" if n % 5 == 0 else None
    kind = "m.room.member" if state_key is not None else "m.room.message"
    body = "x" * (20_000 if n % 17 == 0 else 40)
    pdu = {
        "content": {"body": body},
        "prev_events": list(prev),
        "room_id": ROOM,
        "type": kind,
        "unsigned": {"id": event_id},
    }
    return EventToPersist(
        event_id=event_id,
        room_id=ROOM,
        room_version="10",
        type=kind,
        state_key=state_key,
        sender="@writer:example.org",
        depth=n + 1,
        origin_server_ts=n,
        json=encode_canonical_json(pdu),
        prev_event_ids=prev,
        context=EventStateContext(state_group_before=before),
    )


async def _main(path: str, run: str) -> None:
    storage = Storage(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        await storage.store_room(ROOM, "10")
        base = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})

        async def writer(lane: int) -> None:
            prev: tuple[str, ...] = ()
            before = base
            n = 0
            while True:
                event_id = f"$run{run}-lane{lane}-{n}"
                await storage.persist_events([_event(event_id, prev, before, n)])
                # One write(2) per line: a kill cannot split a line in two.
                os.write(1, f"{event_id}\n".encode())
                groups = await storage.get_event_state_groups(event_id)
                assert groups is not None
                prev, before, n = (event_id,), groups.after, n + 1

        for lane in range(WRITERS):
            nursery.start_soon(writer, lane)


if __name__ == "__main__":
    trio.run(_main, sys.argv[1], sys.argv[2])
