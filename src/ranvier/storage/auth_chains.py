"""Auth chains and event JSON for the federation's state answers.

``/state``, ``/state_ids`` and ``/event_auth`` answer with the auth chain
of the state at an event: in a room of tens of thousands of members, that
walk starts from every member's event. Walking it by reading whole events
to decode their ``auth_events`` cost a read and a parse per event; the auth
edges are stored (``event_auth_edges``), so one recursive query follows
them inside SQLite instead.

The chain is what following ``auth_events`` from the given events reaches,
whatever the events on the way are: rejected events and outliers are
followed, and an event cited but not stored is part of the chain without
leading further. The given events are in it only when another one reaches
them.

Event IDs go to SQLite as one JSON array (``json_each``), so a state of any
size is one statement, with no limit on bound parameters to chunk around.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection

import msgspec

from .readers import ReaderPool
from .redactions import served_events

__all__ = ["AuthChainStorage", "auth_chain_ids", "event_jsons"]

_AUTH_CHAIN_SQL = """
WITH RECURSIVE chain (event_id) AS (
    SELECT edge.auth_event_id
    FROM json_each(?1) AS start
    JOIN events AS e ON e.event_id = start.value
    JOIN event_auth_edges AS edge ON edge.event_ordering = e.stream_ordering
    UNION
    SELECT edge.auth_event_id
    FROM chain
    JOIN events AS e ON e.event_id = chain.event_id
    JOIN event_auth_edges AS edge ON edge.event_ordering = e.stream_ordering
)
SELECT event_id FROM chain
"""

# The orderings are found first, through the event ID index, so that the
# rows are then read in the table's own order rather than in the random
# order of their IDs: some 5-10% less for a 50,000-member state.
_JSON_SQL = """
SELECT event_id, json FROM events WHERE stream_ordering IN (
    SELECT stream_ordering FROM events WHERE event_id IN (SELECT value FROM json_each(?1))
)
"""

_REDACTED_SQL = (
    "SELECT DISTINCT redacts FROM redactions WHERE redacts IN (SELECT value FROM json_each(?1))"
)


def _id_array(event_ids: Collection[str]) -> str:
    # Unsorted and possibly repeated: SQLite sorts the list for IN itself.
    return msgspec.json.encode(list(event_ids)).decode()


def auth_chain_ids(conn: sqlite3.Connection, event_ids: Collection[str]) -> frozenset[str]:
    """The union of the auth chains of ``event_ids``."""
    if not event_ids:
        return frozenset()
    return frozenset(
        event_id for (event_id,) in conn.execute(_AUTH_CHAIN_SQL, (_id_array(event_ids),))
    )


def event_jsons(
    conn: sqlite3.Connection, event_ids: Collection[str], *, as_served: bool
) -> dict[str, bytes]:
    """The stored JSON of those of ``event_ids`` that are stored, by ID.

    With ``as_served``, an event a redaction applies to comes redacted, as
    :func:`~ranvier.storage.redactions.served_events` serves it; only the
    few events some redaction names are read whole for that.
    """
    if not event_ids:
        return {}
    ids = _id_array(event_ids)
    found = {event_id: bytes(json) for event_id, json in conn.execute(_JSON_SQL, (ids,))}
    if as_served:
        named = [event_id for (event_id,) in conn.execute(_REDACTED_SQL, (ids,))]
        if named:
            for event_id, event in served_events(conn, named).items():
                found[event_id] = event.json
    return found


class AuthChainStorage:
    """Reads of auth chains and event JSON, on the reader pool."""

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def get_auth_chain_ids(self, event_ids: Collection[str]) -> frozenset[str]:
        """The union of the auth chains of ``event_ids`` (see the module)."""
        ids = frozenset(event_ids)
        return await self._readers.read(functools.partial(auth_chain_ids, event_ids=ids))

    async def get_event_jsons(
        self, event_ids: Collection[str], *, as_served: bool
    ) -> dict[str, bytes]:
        """The JSON of the stored events of ``event_ids``; redacted where a
        redaction applies, with ``as_served``.
        """
        ids = frozenset(event_ids)
        return await self._readers.read(
            functools.partial(event_jsons, event_ids=ids, as_served=as_served)
        )
