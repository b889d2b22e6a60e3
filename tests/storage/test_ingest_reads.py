"""Reads that ingestion makes once for a run of events instead of once per event."""

from __future__ import annotations

from collections.abc import Callable

from ranvier.storage import EventStateGroups, EventToPersist, Storage

ROOM = "!room:example.org"
EventFactory = Callable[..., EventToPersist]


async def test_state_groups_of_many_events_in_one_read(
    storage: Storage, make_event: EventFactory
) -> None:
    g0 = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    g1 = await storage.store_state_group(ROOM, g0, {("m.room.topic", ""): "$topic"})
    await storage.persist_events(
        [
            make_event("$create", type="m.room.create", state_key="", before=g0, after=g0),
            make_event("$topic", type="m.room.topic", state_key="", prev=("$create",), before=g0),
            make_event("$message", prev=("$topic",), before=g1),
            make_event("$outlier", outlier=True),
        ]
    )
    found = await storage.get_events_state_groups(
        ["$create", "$topic", "$message", "$outlier", "$unknown"]
    )
    assert set(found) == {"$create", "$topic", "$message"}
    assert found["$create"] == EventStateGroups(g0, g0)
    assert found["$message"] == EventStateGroups(g1, g1)
    # The derived group after the topic: one read agrees with the other.
    for event_id, groups in found.items():
        assert await storage.get_event_state_groups(event_id) == groups
    assert found["$topic"].before == g0
    assert found["$topic"].after not in (g0, g1)
    assert await storage.get_events_state_groups([]) == {}


async def test_events_cited_by_accepted_children(
    storage: Storage, make_event: EventFactory
) -> None:
    g0 = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    await storage.persist_events(
        [
            make_event("$create", type="m.room.create", state_key="", before=g0, after=g0),
            # Cites "$late", never stored: it arrives after its child.
            make_event("$child", prev=("$create", "$late"), before=g0),
            make_event("$rejected", prev=("$only-rejected",), before=g0, rejected="r"),
            make_event("$soft", prev=("$only-soft",), before=g0, soft_failed=True),
            make_event("$outlier", outlier=True, prev=("$only-outlier",)),
            make_event("$tip", prev=("$child",), before=g0),
        ]
    )
    asked = [
        "$create",
        "$late",
        "$child",
        "$tip",
        "$only-rejected",
        "$only-soft",
        "$only-outlier",
        "$nothing",
    ]
    cited = await storage.get_events_with_accepted_children(asked)
    assert cited == {"$create", "$late", "$child"}
    assert await storage.get_events_with_accepted_children([]) == set()
