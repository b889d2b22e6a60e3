"""Every field of a local user's profile: ``displayname`` and ``avatar_url``
in ``profiles`` (:mod:`ranvier.storage.client_data`), any other field
(``m.tz``, custom namespaced keys) here.

Tables (schema migration 41)
----------------------------

* ``profile_fields(user_id -> users, key, value)``, primary key
  ``(user_id, key)``: one field of a profile, ``value`` its JSON text
  (any JSON value, ``null`` included: a field set to null is kept).

Invariants
----------

* **The size limit holds in the write.** A change is measured against the
  profile as the same transaction reads it, so two changes racing cannot
  together pass the limit each passed alone; a change that would pass it
  writes nothing.
* **Repeatable.** Setting a field twice, deleting it twice or erasing a
  profile twice leaves the same rows, so a write replayed by replication
  changes nothing more.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

import msgspec

from .write_backend import registered_write

__all__ = [
    "COLUMN_FIELDS",
    "delete_profile_field",
    "erase_profile",
    "name_and_avatar",
    "profile_fields",
    "profile_size",
    "set_profile_field",
]

#: The fields kept as columns of ``profiles``: strings, null meaning unset.
COLUMN_FIELDS: Final = ("displayname", "avatar_url")
_CLEAR_COLUMN: Final = {
    "displayname": "UPDATE profiles SET displayname = NULL WHERE user_id = ?",
    "avatar_url": "UPDATE profiles SET avatar_url = NULL WHERE user_id = ?",
}


def profile_size(profile: dict[str, Any]) -> int:
    """The size in bytes of ``profile`` as JSON: what the limit measures."""
    return len(msgspec.json.encode(profile))


def name_and_avatar(
    conn: sqlite3.Connection, *, user_id: str
) -> tuple[str | None, str | None] | None:
    """A local user's ``displayname`` and ``avatar_url`` (each None when
    unset); None if there is no such account."""
    row = conn.execute(
        "SELECT p.displayname, p.avatar_url FROM users AS u"
        " LEFT JOIN profiles AS p ON p.user_id = u.user_id WHERE u.user_id = ?",
        (user_id,),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def profile_fields(conn: sqlite3.Connection, *, user_id: str) -> dict[str, Any] | None:
    """Every set field of a local user's profile, None if there is no such
    account. An unset ``displayname`` or ``avatar_url`` is left out; any
    other field is shown with the value it was given, null included.
    """
    row = name_and_avatar(conn, user_id=user_id)
    if row is None:
        return None
    profile: dict[str, Any] = {
        field: value for field, value in zip(COLUMN_FIELDS, row, strict=True) if value is not None
    }
    for key, value in conn.execute(
        "SELECT key, value FROM profile_fields WHERE user_id = ? ORDER BY key", (user_id,)
    ):
        profile[str(key)] = msgspec.json.decode(value)
    return profile


@registered_write
def set_profile_field(
    conn: sqlite3.Connection, *, user_id: str, key: str, value_json: str, max_bytes: int
) -> bool:
    """Set ``key`` of ``user_id``'s profile to the JSON ``value_json``
    (a column field's null clears it); False, writing nothing, when the
    profile would then be ``max_bytes`` or larger, or there is no such account.
    """
    profile = profile_fields(conn, user_id=user_id)
    if profile is None:
        return False
    value = msgspec.json.decode(value_json)
    if key in COLUMN_FIELDS and value is None:
        profile.pop(key, None)
    else:
        profile[key] = value
    if profile_size(profile) >= max_bytes:
        return False
    if key in COLUMN_FIELDS:
        displayname, avatar_url = (profile.get(field) for field in COLUMN_FIELDS)
        conn.execute(
            "INSERT INTO profiles (user_id, displayname, avatar_url) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET displayname = excluded.displayname,"
            " avatar_url = excluded.avatar_url",
            (user_id, displayname, avatar_url),
        )
    else:
        conn.execute(
            "INSERT INTO profile_fields (user_id, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, key) DO UPDATE SET value = excluded.value",
            (user_id, key, value_json),
        )
    return True


@registered_write
def delete_profile_field(conn: sqlite3.Connection, *, user_id: str, key: str) -> None:
    """Remove ``key`` from ``user_id``'s profile; nothing when it is not set."""
    if key in _CLEAR_COLUMN:
        conn.execute(_CLEAR_COLUMN[key], (user_id,))
    else:
        conn.execute("DELETE FROM profile_fields WHERE user_id = ? AND key = ?", (user_id, key))


@registered_write
def erase_profile(conn: sqlite3.Connection, *, user_id: str) -> None:
    """Remove every field of ``user_id``'s profile (a deactivated account's)."""
    conn.execute("DELETE FROM profiles WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM profile_fields WHERE user_id = ?", (user_id,))
