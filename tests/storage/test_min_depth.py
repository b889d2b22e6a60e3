"""How far back a room's DAG reaches here: the floor of gap filling."""

from __future__ import annotations

from collections.abc import Callable

from ranvier.storage import EventToPersist, Storage

ROOM = "!room:example.org"
OTHER = "!other:example.org"
EventFactory = Callable[..., EventToPersist]


async def test_the_smallest_depth_of_a_rooms_dag_leaves_outliers_out(
    storage: Storage, make_event: EventFactory
) -> None:
    assert await storage.get_min_depth(ROOM) is None
    # The state at a join, fetched as outliers, lies deeper in the past.
    await storage.persist_events(
        [make_event("$old-state", outlier=True, depth=2), make_event("$older", outlier=True)]
    )
    assert await storage.get_min_depth(ROOM) is None
    g0 = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    await storage.persist_events(
        [
            make_event("$join", depth=7, before=g0),
            make_event("$after", depth=8, prev=("$join",), before=g0),
            make_event("$rejected", depth=9, prev=("$after",), before=g0, rejected="r"),
        ]
    )
    assert await storage.get_min_depth(ROOM) == 7
    # History reached later (backfill) lowers it; another room's events do not.
    await storage.store_room(OTHER, "10")
    g1 = await storage.store_state_group(OTHER, None, {("m.room.create", ""): "$c2"})
    await storage.persist_events([make_event("$elsewhere", room_id=OTHER, depth=1, before=g1)])
    assert await storage.get_min_depth(ROOM) == 7
    assert await storage.get_min_depth(OTHER) == 1
    await storage.persist_events([make_event("$backfilled", depth=5, before=g0)])
    assert await storage.get_min_depth(ROOM) == 5
    assert await storage.get_min_depth("!unknown:example.org") is None
