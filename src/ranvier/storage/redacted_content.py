"""The original content of redacted events, dropped once its redaction is old.

Reads serve an event a redaction applies to in its redacted form
(:mod:`ranvier.storage.redactions`), but the row keeps the JSON as it
arrived. That is needed for a while: a redaction with partial state is
judged again once the room's state is complete and may stop applying, and
admins reviewing a report see what was said. After that, keeping what a
user deleted helps nobody, so housekeeping replaces it, as Synapse does
after its ``redaction_retention_period``:

* A redaction is taken once it was received before the cutoff, is not
  partial-state (its verdict could still change), and the event it names
  is stored (one arriving later is taken at a later pass). Each is taken
  once: ``redactions.content_pruned`` records it.
* If the redaction applies (:func:`~ranvier.storage.redactions.redaction_applies`,
  the rule reads follow), the target's JSON becomes its redacted form, the
  bytes :mod:`~ranvier.storage.redactions` serves, and its full-text rows
  go. The event ID, hashes and signatures are kept by the redaction
  algorithm, so the event still verifies for other servers, as a redacted
  copy does. Nothing else stores an event's content.
* **What the auth rules read stays as it was.** State resolution and the
  check of outliers read stored events whole (the other auth checks read
  them redacted already: :mod:`ranvier.core.loading`), and resolution runs
  again long after an event was first judged. The redaction algorithm
  drops content the rules read (a power-levels event's ``notifications``,
  and before room version 11 its ``invite`` and a create event's
  ``m.federate``), so replacing such an event would change what those
  runs decide about events already judged. An auth event (create, power
  levels, join rules, third-party invite) is replaced only when redacting
  leaves its content as it was, a member event only when its
  ``membership``, ``join_authorised_via_users_server`` and
  ``third_party_invite`` stay; otherwise it keeps its content (room
  settings, not something a user said; a display name on a member event
  whose membership survives does go). Reads serve it redacted all the same.
* The write overwrites what it frees
  (:func:`~ranvier.storage.connections.secure_deletion`), so the old
  content does not stay behind in the file's free space, and the words of
  the full-text rows it deletes leave the index's segments too
  (:mod:`ranvier.storage.search_scrub`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from ranvier.protocol.redaction import redact

from .connections import secure_deletion
from .redactions import redaction_applies
from .search_scrub import after_search_deletes, before_search_deletes

__all__ = ["auth_content_kept", "prune_redacted_content", "waiting_redactions"]

#: What the auth rules and state resolution read of a state event's
#: content, by type: the keys named, or all of it (None).
_READ_BY_AUTH: Final[dict[str, tuple[str, ...] | None]] = {
    "m.room.create": None,
    "m.room.power_levels": None,
    "m.room.join_rules": None,
    "m.room.third_party_invite": None,
    "m.room.member": ("membership", "join_authorised_via_users_server", "third_party_invite"),
}
_ABSENT: Final = object()

#: Redactions (aliased ``r``) received before ``:cutoff`` whose target has
#: not been dealt with, whose verdict is final and whose target is stored.
_WAITING = """
    r.content_pruned = 0 AND r.received_ts < :cutoff
    AND NOT EXISTS (SELECT 1 FROM partial_state_events AS p WHERE p.event_id = r.event_id)
    AND EXISTS (SELECT 1 FROM events AS t WHERE t.event_id = r.redacts)
"""


def waiting_redactions(conn: sqlite3.Connection, *, cutoff_ms: int, limit: int) -> list[int]:
    """The row IDs of at most ``limit`` redactions waiting before
    ``cutoff_ms`` (see the module's doc), oldest first."""
    return [
        int(rowid)
        for (rowid,) in conn.execute(
            f"SELECT r.rowid FROM redactions AS r WHERE {_WAITING}"
            " ORDER BY r.received_ts LIMIT :limit",
            {"cutoff": cutoff_ms, "limit": limit},
        )
    ]


def auth_content_kept(event: Mapping[str, Any], redacted: Mapping[str, Any]) -> bool:
    """Whether ``redacted`` (``event`` as the redaction algorithm leaves
    it) holds all that the auth rules read of ``event`` (see the module's
    doc)."""
    if "state_key" not in event or event.get("type") not in _READ_BY_AUTH:
        return True
    keys = _READ_BY_AUTH[event["type"]]
    before, after = event.get("content"), redacted.get("content")
    if keys is None or not isinstance(before, dict) or not isinstance(after, dict):
        return before == after
    return all(before.get(key, _ABSENT) == after.get(key, _ABSENT) for key in keys)


def prune_redacted_content(conn: sqlite3.Connection, *, cutoff_ms: int, rowids: list[int]) -> int:
    """Deal with the redactions of ``rowids`` (from :func:`waiting_redactions`)
    that are still waiting before ``cutoff_ms``; how many were. Run it in a
    write.
    """
    rows = conn.execute(
        f"""
        SELECT r.event_id, r.sender_may_redact, rooms.room_version,
               e.room_id, e.sender, e.rejected_reason IS NULL AND e.soft_failed = 0,
               t.event_id, t.room_id, t.sender, t.json
        FROM redactions AS r
        JOIN events AS e ON e.event_id = r.event_id
        JOIN events AS t ON t.event_id = r.redacts
        JOIN rooms ON rooms.room_id = t.room_id
        WHERE r.rowid IN (SELECT value FROM json_each(:ids)) AND {_WAITING}
        """,
        {"ids": json.dumps(rowids), "cutoff": cutoff_ms},
    ).fetchall()
    searchable = 0
    before_search_deletes(conn)
    with secure_deletion(conn):
        for (
            redaction_id,
            may_redact,
            room_version,
            room_id,
            sender,
            accepted,
            target_id,
            target_room_id,
            target_sender,
            target_json,
        ) in rows:
            if accepted and redaction_applies(
                redaction_room_id=room_id,
                redaction_sender=sender,
                sender_may_redact=bool(may_redact),
                target_room_id=target_room_id,
                target_sender=target_sender,
            ):
                original = msgspec.json.decode(target_json)
                pruned = redact(original, room_version)
                if auth_content_kept(original, pruned):
                    conn.execute(
                        "UPDATE events SET json = ? WHERE event_id = ?",
                        (msgspec.json.encode(pruned, order="sorted"), target_id),
                    )
                searchable += conn.execute(
                    "DELETE FROM event_search WHERE event_id = ?", (target_id,)
                ).rowcount
            conn.execute(
                "UPDATE redactions SET content_pruned = 1 WHERE event_id = ?", (redaction_id,)
            )
    after_search_deletes(conn, searchable)
    return len(rows)
