"""The reads ``/sync`` and ``/messages`` make, and the user's filters.

Positions
---------

Two streams order what a sync reports. The events stream is
``events.stream_ordering``, handed out at commit in commit order (an
outlier taken into the DAG later moves to the end of it, see
:mod:`ranvier.storage.writes`), so every event at or below a position
read from one snapshot is committed and no later commit adds one below it.
The un-partial-state stream is the rowid of ``un_partial_stated_rooms``,
one past the previous on each clear: a room's state becoming complete is
not an event, and a sync must tell a room cleared after its token from one
cleared before it even when no event arrived in between.

A sync reads both positions and the user's memberships in one snapshot
(:func:`sync_snapshot`) and bounds every later read by them, so what it
reports is what that snapshot held, however much is committed meanwhile.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Collection, Sequence
from typing import Any

import msgspec

from .e2e_keys import joined_members_now
from .erasure import erased_forms
from .forgotten_rooms import forgotten_rooms, is_forgotten
from .id_floors import events_top, un_partial_top
from .ignored_users import read_ignored_users
from .local_memberships import dag_membership, newest_membership, newest_memberships
from .readers import ReaderPool
from .records import (
    STORED_EVENT_COLUMNS,
    ReplacedState,
    StateKey,
    StateMap,
    StoredEvent,
    stored_event_from_row,
)
from .redactions import served, served_events
from .replaced_state import read_replaced_state
from .state_groups import keys_changed_between, read_state, read_state_for_keys
from .write_backend import WriteBackend, registered_write

__all__ = [
    "Membership",
    "SyncReads",
    "SyncSnapshot",
    "joined_rooms",
    "positions",
    "sync_snapshot",
]

#: ``(room ID, membership, stream ordering of the membership event, its event ID)``.
Membership = tuple[str, str, int, str]
#: ``(events position, un-partial-state position, the user's memberships,
#: rooms among them with partial state, rooms whose state became complete
#: after the given un-partial-state position, rooms with events after the
#: given events position or None when not asked or too many to list)``.
SyncSnapshot = tuple[
    int, int, list[Membership], frozenset[str], frozenset[str], frozenset[str] | None
]

_TIMELINE = "outlier = 0 AND soft_failed = 0 AND rejected_reason IS NULL"
_EVENT_COLUMNS = ", ".join(STORED_EVENT_COLUMNS)
# Rows read per statement while a Python filter picks events.
_PAGE = 200
# Beyond this many events since a sync's token, listing the rooms they are
# in costs more than reading each of the user's rooms.
_MOST_CHANGED_EVENTS = 100_000


class _Membership(msgspec.Struct):
    """The content of an event, whatever else it holds."""

    content: dict[str, Any] = {}


_decode_membership = msgspec.json.Decoder(_Membership).decode


def positions(conn: sqlite3.Connection) -> tuple[int, int]:
    """The newest events position and un-partial-state position."""
    return events_top(conn), un_partial_top(conn)


def sync_snapshot(
    conn: sqlite3.Connection,
    user_id: str,
    un_partial_after: int,
    events_after: int | None = None,
) -> SyncSnapshot:
    """Everything a sync starts from, read in one snapshot.

    The memberships are each room's newest for the user
    (:mod:`ranvier.storage.local_memberships`): the current state's, or a
    membership this server holds from outside the room's DAG when newer.
    """
    events_position, un_partial_position = positions(conn)
    memberships: list[Membership] = newest_memberships(conn, user_id)
    rooms = [room_id for room_id, *_ in memberships]
    partial = frozenset(
        room_id
        for room_id in rooms
        if conn.execute(
            "SELECT 1 FROM partial_state_rooms WHERE room_id = ?", (room_id,)
        ).fetchone()
    )
    un_partialled = frozenset(
        room_id
        for (room_id,) in conn.execute(
            "SELECT room_id FROM un_partial_stated_rooms WHERE rowid > ? AND rowid <= ?",
            (un_partial_after, un_partial_position),
        )
    )
    changed = None
    if events_after is not None and events_position - events_after <= _MOST_CHANGED_EVENTS:
        # A range of the events' rowid: the rooms an incremental sync needs
        # to look at, instead of every room of the user.
        changed = frozenset(
            room_id
            for (room_id,) in conn.execute(
                "SELECT DISTINCT room_id FROM events"
                " WHERE stream_ordering > ? AND stream_ordering <= ?",
                (events_after, events_position),
            )
        )
    return events_position, un_partial_position, memberships, partial, un_partialled, changed


def room_events(
    conn: sqlite3.Connection,
    room_id: str,
    *,
    after: int,
    upto: int,
    limit: int,
    backwards: bool,
    accept: Callable[[str, str], bool] | None,
) -> tuple[list[StoredEvent], bool]:
    """The room's timeline events with ``after < stream ordering <= upto``
    that ``accept(type, sender)`` lets through, at most ``limit`` of them
    taken from the newest end when ``backwards`` and the oldest otherwise,
    in the order taken, redacted where a redaction applies; and whether
    more such events are left.
    """
    order = "DESC" if backwards else "ASC"
    taken: list[StoredEvent] = []
    low, high = after, upto
    while True:
        rows = conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events"
            f" WHERE room_id = ? AND stream_ordering > ? AND stream_ordering <= ? AND {_TIMELINE}"
            f" ORDER BY stream_ordering {order} LIMIT ?",
            (room_id, low, high, _PAGE),
        ).fetchall()
        for row in rows:
            event = stored_event_from_row(row)
            if accept is None or accept(event.type, event.sender):
                if len(taken) == limit:
                    return served(conn, taken), True
                taken.append(event)
        if len(rows) < _PAGE:
            return served(conn, taken), False
        if backwards:
            high = rows[-1][0] - 1
        else:
            low = rows[-1][0]


def history_starts_at_create(conn: sqlite3.Connection, room_id: str) -> bool:
    """Whether the room's first timeline event held here is its create
    event: false for a room joined through another server, whose history
    before the join that server holds.
    """
    row = conn.execute(
        f"SELECT type FROM events WHERE room_id = ? AND stream_ordering > 0 AND {_TIMELINE}"
        " ORDER BY stream_ordering ASC LIMIT 1",
        (room_id,),
    ).fetchone()
    return row is not None and row[0] == "m.room.create"


def _state_group_at(conn: sqlite3.Connection, room_id: str, position: int) -> int | None:
    """The state after the room's last timeline event at or below ``position``."""
    row = conn.execute(
        f"""
        SELECT g.state_group_after FROM events AS e
        JOIN event_to_state_groups AS g ON g.event_id = e.event_id
        WHERE e.room_id = ? AND e.stream_ordering <= ? AND {_TIMELINE}
        ORDER BY e.stream_ordering DESC LIMIT 1
        """,
        (room_id, position),
    ).fetchone()
    return None if row is None else int(row[0])


def _group_before(conn: sqlite3.Connection, event_id: str) -> int | None:
    row = conn.execute(
        "SELECT state_group_before FROM event_to_state_groups WHERE event_id = ?", (event_id,)
    ).fetchone()
    return None if row is None else int(row[0])


def state_before(
    conn: sqlite3.Connection, event_id: str, keys: Collection[StateKey] | None
) -> StateMap:
    """The state before an event (only ``keys`` of it, when given)."""
    group = _group_before(conn, event_id)
    if group is None:
        return {}
    return read_state(conn, group) if keys is None else read_state_for_keys(conn, group, keys)


def state_at(
    conn: sqlite3.Connection, room_id: str, position: int, keys: Collection[StateKey] | None
) -> StateMap:
    """The room's state after its last timeline event at or below ``position``."""
    group = _state_group_at(conn, room_id, position)
    if group is None:
        return {}
    return read_state(conn, group) if keys is None else read_state_for_keys(conn, group, keys)


def state_changes(conn: sqlite3.Connection, room_id: str, since: int, event_id: str) -> StateMap:
    """The entries of the state before ``event_id`` that differ from the
    room's state at ``since``: what a limited incremental sync reports.
    """
    before = _group_before(conn, event_id)
    if before is None:
        return {}
    return _changes_since(conn, room_id, since, before)


def state_changes_upto(conn: sqlite3.Connection, room_id: str, since: int, upto: int) -> StateMap:
    """The entries of the room's state at ``upto`` that differ from its
    state at ``since``: a sync's ``state_after`` (``use_state_after``).
    """
    after = _state_group_at(conn, room_id, upto)
    if after is None:
        return {}
    return _changes_since(conn, room_id, since, after)


def _changes_since(conn: sqlite3.Connection, room_id: str, since: int, before: int) -> StateMap:
    old = _state_group_at(conn, room_id, since)
    if old is None:
        return read_state(conn, before)
    keys = keys_changed_between(conn, old, before)
    if keys is None:
        new_state, old_state = read_state(conn, before), read_state(conn, old)
    else:
        new_state = read_state_for_keys(conn, before, keys)
        old_state = read_state_for_keys(conn, old, keys)
    return {key: value for key, value in new_state.items() if old_state.get(key) != value}


def auth_memberships(
    conn: sqlite3.Connection, event_ids: Collection[str], users: Collection[str]
) -> dict[str, str]:
    """For each of ``users``, a membership event of theirs that one of
    ``event_ids`` cites as an auth event: what shows a sender's membership
    where the room's state here does not hold it yet (partial state).
    """
    wanted = set(users)
    found: dict[str, str] = {}
    for event_id in event_ids:
        for auth_id, state_key in conn.execute(
            """
            SELECT a.auth_event_id, e.state_key FROM event_auth AS a
            JOIN events AS e ON e.event_id = a.auth_event_id
            WHERE a.event_id = ? AND e.type = 'm.room.member'
            """,
            (event_id,),
        ):
            if state_key in wanted and state_key not in found:
                found[state_key] = auth_id
    return found


def current_membership(
    conn: sqlite3.Connection, room_id: str, user_id: str
) -> tuple[str, int] | None:
    """The user's newest membership in the room, as /sync reads it, and the
    position of its event.
    """
    found = newest_membership(conn, user_id, room_id)
    if found is None:
        return None
    membership, ordering = found[1], found[2]
    if membership in ("leave", "ban"):
        # Held from outside the DAG, the leave has no place in the room's
        # history here: what the user saw ends at their membership there.
        in_dag = dag_membership(conn, user_id, room_id)
        if in_dag is not None and in_dag[3] != found[3]:
            ordering = in_dag[2]
    return membership, ordering


def joined_rooms(conn: sqlite3.Connection, *, user_id: str) -> list[str]:
    """The rooms ``user_id`` is joined to now, sorted."""
    rows = conn.execute(
        "SELECT cs.room_id FROM current_state AS cs JOIN events AS e ON e.event_id = cs.event_id"
        " WHERE cs.type = 'm.room.member' AND cs.state_key = ?"
        " AND json_extract(CAST(e.json AS TEXT), '$.content.membership') = 'join'",
        (user_id,),
    ).fetchall()
    return sorted(str(row[0]) for row in rows)


def current_state_for_keys(
    conn: sqlite3.Connection, room_id: str, keys: Collection[StateKey]
) -> list[StoredEvent]:
    ids = [
        row[0]
        for key in keys
        for row in conn.execute(
            "SELECT event_id FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
            (room_id, *key),
        )
    ]
    events = served_events(conn, ids)
    return [events[event_id] for event_id in ids if event_id in events]


def visibility_at(
    conn: sqlite3.Connection, user_id: str, event_ids: Collection[str]
) -> dict[str, tuple[str | None, str | None]]:
    """For each event with state here, the room's history visibility and the
    user's membership in the state before it (None where absent).
    """
    keys = (("m.room.history_visibility", ""), ("m.room.member", user_id))
    contents: dict[str, dict[str, Any]] = {}
    found: dict[str, tuple[str | None, str | None]] = {}
    for event_id in event_ids:
        group = _group_before(conn, event_id)
        if group is None:
            continue
        state = read_state_for_keys(conn, group, keys)
        values: list[str | None] = []
        for key, field in zip(keys, ("history_visibility", "membership"), strict=True):
            holder = state.get(key)
            if holder is None:
                values.append(None)
                continue
            if holder not in contents:
                row = conn.execute(
                    "SELECT json FROM events WHERE event_id = ?", (holder,)
                ).fetchone()
                contents[holder] = {} if row is None else _decode_membership(row[0]).content
            value = contents[holder].get(field)
            values.append(value if isinstance(value, str) else None)
        found[event_id] = (values[0], values[1])
    return found


def room_summary(
    conn: sqlite3.Connection, room_id: str, user_id: str, heroes: int
) -> tuple[int, int, list[str]]:
    """The room's joined and invited member counts in its current state, and
    up to ``heroes`` other members to name it by when it has neither name
    nor canonical alias (joined and invited first, in the order they came,
    then those who left), read in one statement over its member rows.
    """
    named = conn.execute(
        "SELECT 1 FROM current_state WHERE room_id = ? AND state_key = ''"
        " AND type IN ('m.room.name', 'm.room.canonical_alias')",
        (room_id,),
    ).fetchone()
    joined = invited = 0
    present: list[str] = []
    gone: list[str] = []
    for member, membership in conn.execute(
        """
        SELECT cs.state_key, json_extract(CAST(e.json AS TEXT), '$.content.membership')
        FROM current_state AS cs JOIN events AS e ON e.event_id = cs.event_id
        WHERE cs.room_id = ? AND cs.type = 'm.room.member'
        ORDER BY e.stream_ordering
        """,
        (room_id,),
    ):
        if membership == "join":
            joined += 1
        elif membership == "invite":
            invited += 1
        if named or member == user_id:
            continue
        if membership in ("join", "invite"):
            if len(present) < heroes:
                present.append(member)
        elif len(gone) < heroes:
            gone.append(member)
    return joined, invited, present or gone


def transaction_ids(
    conn: sqlite3.Connection,
    user_id: str,
    device_id: str,
    token_hash: bytes,
    event_ids: Collection[str],
) -> dict[str, str]:
    """The transaction IDs a device (or a token with no device: see
    :mod:`ranvier.core.client_txns`) sent events under, for those of
    ``event_ids`` it sent (within the time transactions are kept). The
    primary key's prefix narrows the read to the device's own.
    """
    wanted = set(event_ids)
    return {
        event_id: txn_id
        for txn_id, event_id in conn.execute(
            "SELECT txn_id, event_id FROM client_transactions"
            " WHERE user_id = ? AND device_id = ? AND token_hash = ?",
            (user_id, device_id, token_hash),
        )
        if event_id in wanted
    }


@registered_write
def store_filter(conn: sqlite3.Connection, user_id: str, filter_json: bytes) -> int:
    (filter_id,) = conn.execute(
        "SELECT COALESCE(MAX(filter_id), -1) + 1 FROM user_filters WHERE user_id = ?", (user_id,)
    ).fetchone()
    conn.execute(
        "INSERT INTO user_filters (user_id, filter_id, filter_json) VALUES (?, ?, ?)",
        (user_id, filter_id, filter_json),
    )
    return int(filter_id)


def get_filter(conn: sqlite3.Connection, user_id: str, filter_id: int) -> bytes | None:
    row = conn.execute(
        "SELECT filter_json FROM user_filters WHERE user_id = ? AND filter_id = ?",
        (user_id, filter_id),
    ).fetchone()
    return None if row is None else bytes(row[0])


class SyncReads:
    """The reads of ``/sync`` and ``/messages``, and the filters users store."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    async def positions(self) -> tuple[int, int]:
        return await self._readers.read(positions)

    async def sync_snapshot(
        self, user_id: str, un_partial_after: int, events_after: int | None = None
    ) -> SyncSnapshot:
        return await self._readers.read(
            functools.partial(
                sync_snapshot,
                user_id=user_id,
                un_partial_after=un_partial_after,
                events_after=events_after,
            )
        )

    async def room_events(
        self,
        room_id: str,
        *,
        after: int,
        upto: int,
        limit: int,
        backwards: bool,
        accept: Callable[[str, str], bool] | None = None,
    ) -> tuple[list[StoredEvent], bool]:
        return await self._readers.read(
            functools.partial(
                room_events,
                room_id=room_id,
                after=after,
                upto=upto,
                limit=limit,
                backwards=backwards,
                accept=accept,
            )
        )

    async def history_starts_at_create(self, room_id: str) -> bool:
        return await self._readers.read(
            functools.partial(history_starts_at_create, room_id=room_id)
        )

    async def state_before(
        self, event_id: str, keys: Collection[StateKey] | None = None
    ) -> StateMap:
        wanted = None if keys is None else frozenset(keys)
        return await self._readers.read(
            functools.partial(state_before, event_id=event_id, keys=wanted)
        )

    async def state_at(
        self, room_id: str, position: int, keys: Collection[StateKey] | None = None
    ) -> StateMap:
        wanted = None if keys is None else frozenset(keys)
        return await self._readers.read(
            functools.partial(state_at, room_id=room_id, position=position, keys=wanted)
        )

    async def state_changes(self, room_id: str, since: int, event_id: str) -> StateMap:
        return await self._readers.read(
            functools.partial(state_changes, room_id=room_id, since=since, event_id=event_id)
        )

    async def state_changes_upto(self, room_id: str, since: int, upto: int) -> StateMap:
        return await self._readers.read(
            functools.partial(state_changes_upto, room_id=room_id, since=since, upto=upto)
        )

    async def auth_memberships(
        self, event_ids: Collection[str], users: Collection[str]
    ) -> dict[str, str]:
        ids, wanted = tuple(event_ids), frozenset(users)
        return await self._readers.read(
            functools.partial(auth_memberships, event_ids=ids, users=wanted)
        )

    async def joined_members(self, room_ids: Collection[str]) -> set[str]:
        rooms = sorted(set(room_ids))
        return await self._readers.read(functools.partial(joined_members_now, room_ids=rooms))

    async def current_membership(self, room_id: str, user_id: str) -> tuple[str, int] | None:
        return await self._readers.read(
            functools.partial(current_membership, room_id=room_id, user_id=user_id)
        )

    async def current_state_for_keys(
        self, room_id: str, keys: Collection[StateKey]
    ) -> list[StoredEvent]:
        wanted = tuple(keys)
        return await self._readers.read(
            functools.partial(current_state_for_keys, room_id=room_id, keys=wanted)
        )

    async def get_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]:
        """The stored events of ``event_ids``, redacted where a redaction applies."""
        ids = frozenset(event_ids)
        return await self._readers.read(functools.partial(served_events, event_ids=ids))

    async def erased_forms(self, events: Sequence[StoredEvent]) -> dict[str, StoredEvent]:
        """The redacted form of each of ``events`` whose sender is erased
        (:mod:`ranvier.storage.erasure`), by event ID.
        """
        if not events:
            return {}
        return await self._readers.read(functools.partial(erased_forms, events=tuple(events)))

    async def get_replaced_state(self, event_ids: Collection[str]) -> dict[str, ReplacedState]:
        """What each state event of ``event_ids`` replaced, the replaced
        event as served (:mod:`ranvier.storage.replaced_state`)."""
        ids = frozenset(event_ids)
        return await self._readers.read(functools.partial(read_replaced_state, event_ids=ids))

    async def ignored_users(self, user_id: str) -> frozenset[str]:
        return await self._readers.read(functools.partial(read_ignored_users, user_id=user_id))

    async def has_forgotten(self, user_id: str, room_id: str) -> bool:
        return await self._readers.read(
            functools.partial(is_forgotten, user_id=user_id, room_id=room_id)
        )

    async def forgotten_rooms(self, user_id: str) -> frozenset[str]:
        return await self._readers.read(functools.partial(forgotten_rooms, user_id=user_id))

    async def visibility_at(
        self, user_id: str, event_ids: Collection[str]
    ) -> dict[str, tuple[str | None, str | None]]:
        ids = tuple(event_ids)
        return await self._readers.read(
            functools.partial(visibility_at, user_id=user_id, event_ids=ids)
        )

    async def room_summary(
        self, room_id: str, user_id: str, heroes: int = 5
    ) -> tuple[int, int, list[str]]:
        return await self._readers.read(
            functools.partial(room_summary, room_id=room_id, user_id=user_id, heroes=heroes)
        )

    async def transaction_ids(
        self, user_id: str, device_id: str, token_hash: bytes, event_ids: Collection[str]
    ) -> dict[str, str]:
        ids = frozenset(event_ids)
        return await self._readers.read(
            functools.partial(
                transaction_ids,
                user_id=user_id,
                device_id=device_id,
                token_hash=token_hash,
                event_ids=ids,
            )
        )

    async def store_filter(self, user_id: str, filter_json: bytes) -> int:
        return await self._actor.submit(
            functools.partial(store_filter, user_id=user_id, filter_json=filter_json)
        )

    async def get_filter(self, user_id: str, filter_id: int) -> bytes | None:
        return await self._readers.read(
            functools.partial(get_filter, user_id=user_id, filter_id=filter_id)
        )
