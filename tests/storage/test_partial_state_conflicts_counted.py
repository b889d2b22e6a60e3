"""Every partial-state conflict storage refuses is counted, whoever wrote:
the metric ``ranvier_partial_state_conflicts_total`` reads this count, and
remote joins, un-partial-stating, ingestion and local sends all write
through :meth:`Storage.persist_events`."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ranvier.errors import PartialStateConflictError
from ranvier.storage import Storage
from ranvier.storage.records import EventToPersist

ROOM = "!room:example.org"


async def test_a_refused_partial_state_write_is_counted(
    storage: Storage, make_event: Callable[..., EventToPersist]
) -> None:
    base = await storage.store_state_group(ROOM, None, {("m.room.create", ""): "$create"})
    assert storage.partial_state_conflicts == 0
    # The room has no partial state (any more): an event with it is refused.
    for event_id in ("$a", "$b"):
        with pytest.raises(PartialStateConflictError):
            await storage.persist_events([make_event(event_id, before=base, partial=True)])
    assert storage.partial_state_conflicts == 2
    # One written as it should be counts nothing.
    await storage.persist_events([make_event("$c", before=base)])
    assert storage.partial_state_conflicts == 2
