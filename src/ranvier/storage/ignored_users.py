"""Who each user ignores: the ``ignored_users`` of their global
``m.ignored_user_list`` account data (the spec's "Ignoring Users").

Read where events are served, from the account data as it is at the time
of the read, so that a change applies from the next request on, as the
spec asks ("the sync API for all clients should immediately start
ignoring"). Nothing is kept: the list is one small row per user.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Sequence
from typing import Any, Final

import msgspec

__all__ = ["IGNORED_USER_LIST", "ignored_in", "read_ignored_users", "read_ignoring"]

IGNORED_USER_LIST: Final = "m.ignored_user_list"
#: User IDs per query when the users ignoring a sender are read.
_CHUNK: Final = 500


def ignored_in(content: bytes | None) -> frozenset[str]:
    """The user IDs an ``m.ignored_user_list`` content ignores.

    The spec makes ``ignored_users`` an object keyed by user ID; anything
    else ignores nobody, so a malformed list never hides a whole room.
    """
    if content is None:
        return frozenset()
    try:
        decoded: Any = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return frozenset()
    users = decoded.get("ignored_users") if isinstance(decoded, dict) else None
    if not isinstance(users, dict):
        return frozenset()
    return frozenset(user for user in users if isinstance(user, str))


def read_ignored_users(conn: sqlite3.Connection, *, user_id: str) -> frozenset[str]:
    """The users ``user_id`` ignores."""
    row = conn.execute(
        "SELECT content FROM account_data WHERE user_id = ? AND room_id = '' AND type = ?",
        (user_id, IGNORED_USER_LIST),
    ).fetchone()
    return ignored_in(None if row is None else bytes(row[0]))


def read_ignoring(
    conn: sqlite3.Connection, *, sender: str, user_ids: Collection[str]
) -> frozenset[str]:
    """Those of ``user_ids`` who ignore ``sender``."""
    ignoring: set[str] = set()
    for chunk in _chunks(sorted(user_ids)):
        marks = ", ".join("?" for _ in chunk)
        rows = conn.execute(
            "SELECT user_id, content FROM account_data"
            f" WHERE room_id = '' AND type = ? AND user_id IN ({marks})",
            (IGNORED_USER_LIST, *chunk),
        )
        ignoring.update(
            str(user_id) for user_id, content in rows if sender in ignored_in(bytes(content))
        )
    return frozenset(ignoring)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
