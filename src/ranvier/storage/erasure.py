"""Erased users: accounts deactivated with ``erase``, and their events as
served to those who may only see them redacted.

The spec's erasure (``POST /account/deactivate`` with ``erase: true``)
asks that users and servers who join a room after the request get the
erased user's events redacted, while those who could see them before
still see them whole. Nothing is sent and no stored event changes: the
JSON stays as it arrived (its signatures and hashes cover it, and other
servers still check them), and the redacted form is made on the way out,
by the room version's redaction algorithm, as a redaction's is
(:mod:`ranvier.storage.redactions`). Who sees which form is the readers'
business (:mod:`ranvier.core.erasure`, :mod:`ranvier.federation.queries`).

Tables (schema migration 55)
----------------------------

* ``erased_users(user_id -> users)``: one row per erased account.

Invariants
----------

* **Marked with the deactivation.** The row is written in the
  transaction that deactivates the account
  (:func:`ranvier.storage.accounts.deactivate_account`), so an account is
  never left deactivated without the erasure it asked for, and a write
  replayed by replication leaves the same row.
* **Reactivation takes it back**, as Synapse does
  (:func:`ranvier.storage.admin_writes.reactivate_account`): a user back
  in use asks again if they want it.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from typing import Final

from .readers import ReaderPool
from .records import StoredEvent
from .redactions import pruned_row

__all__ = [
    "ErasedEvent",
    "ErasureStorage",
    "erased_forms",
    "erased_users",
    "is_erased",
    "mark_erased",
]

# Stays well under SQLite's limit on bound parameters.
_CHUNK: Final = 500


class ErasedEvent(StoredEvent, frozen=True, kw_only=True):
    """An event of an erased user as it is served to those who may not see
    it whole: ``json`` is the redacted PDU, the rest is the row as stored.
    No redaction event caused it, so there is no ``redacted_because``.
    """


def mark_erased(conn: sqlite3.Connection, user_id: str) -> None:
    """Record ``user_id``, an account of this server, as erased; a second
    mark changes nothing.
    """
    conn.execute("INSERT INTO erased_users (user_id) VALUES (?) ON CONFLICT DO NOTHING", (user_id,))


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def erased_users(conn: sqlite3.Connection, user_ids: Collection[str]) -> frozenset[str]:
    """Those of ``user_ids`` that are erased."""
    wanted = sorted(set(user_ids))
    found: set[str] = set()
    for chunk in _chunks(wanted):
        marks = ",".join("?" * len(chunk))
        found.update(
            user_id
            for (user_id,) in conn.execute(
                f"SELECT user_id FROM erased_users WHERE user_id IN ({marks})", chunk
            )
        )
    return frozenset(found)


def is_erased(conn: sqlite3.Connection, *, user_id: str) -> bool:
    return bool(erased_users(conn, (user_id,)))


def erased_forms(conn: sqlite3.Connection, events: Sequence[StoredEvent]) -> dict[str, StoredEvent]:
    """The redacted form of each of ``events`` whose sender is erased, by
    event ID; the others are not in it. An event whose room's version is
    not known here cannot be redacted by its rules: it is left out of the
    answer too, and so served as it is, which cannot happen for an event
    stored here (its room row is written first).
    """
    erased = erased_users(conn, {event.sender for event in events})
    if not erased:
        return {}
    chosen = [event for event in events if event.sender in erased]
    versions: dict[str, str] = {}
    for room_id in {event.room_id for event in chosen}:
        row = conn.execute(
            "SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)
        ).fetchone()
        if row is not None:
            versions[room_id] = str(row[0])
    forms: dict[str, StoredEvent] = {}
    for event in chosen:
        version = versions.get(event.room_id)
        if version is None:
            continue
        forms[event.event_id] = ErasedEvent(**pruned_row(event, version))
    return forms


class ErasureStorage:
    """Reads of erased users and of their events' redacted forms."""

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def erased_users(self, user_ids: Collection[str]) -> frozenset[str]:
        """Those of ``user_ids`` that are erased."""
        wanted = frozenset(user_ids)
        if not wanted:
            return frozenset()
        return await self._readers.read(functools.partial(erased_users, user_ids=wanted))

    async def is_erased(self, user_id: str) -> bool:
        return await self._readers.read(functools.partial(is_erased, user_id=user_id))

    async def erased_forms(self, events: Sequence[StoredEvent]) -> dict[str, StoredEvent]:
        """The redacted form of each of ``events`` whose sender is erased, by event ID."""
        if not events:
            return {}
        chosen = tuple(events)
        return await self._readers.read(functools.partial(erased_forms, events=chosen))
