"""The writes only the admin API makes: an account's admin flag, its lock,
suspension and shadow ban, an account brought back from deactivation, rooms
blocked or unblocked, and event reports dealt with.

Each is one registered write, so a worker's admin request is written by
the main process as it would be here, and each is the same when run again.
"""

from __future__ import annotations

import sqlite3

from .write_backend import registered_write

__all__ = [
    "block_room",
    "delete_event_report",
    "reactivate_account",
    "set_admin",
    "set_locked",
    "set_shadow_banned",
    "set_suspended",
    "unblock_room",
]


@registered_write
def set_admin(conn: sqlite3.Connection, *, user_id: str, admin: bool) -> bool:
    """Set the admin flag of ``user_id``; False if there is no such account.
    Taking it away ends the puppet tokens the user was given as an admin
    (:mod:`ranvier.storage.accounts`): being made an admin again does not
    bring them back."""
    changed = conn.execute(
        "UPDATE users SET admin = ? WHERE user_id = ?", (int(admin), user_id)
    ).rowcount
    if not admin:
        conn.execute("DELETE FROM puppet_tokens WHERE admin_id = ?", (user_id,))
    return changed > 0


@registered_write
def set_locked(conn: sqlite3.Connection, *, user_id: str, locked: bool) -> bool:
    """Lock or unlock ``user_id``; False if there is no such account."""
    changed = conn.execute(
        "UPDATE users SET locked = ? WHERE user_id = ?", (int(locked), user_id)
    ).rowcount
    return changed > 0


@registered_write
def set_suspended(conn: sqlite3.Connection, *, user_id: str, suspended: bool) -> bool:
    """Suspend ``user_id`` or lift the suspension; False if there is no such account."""
    changed = conn.execute(
        "UPDATE users SET suspended = ? WHERE user_id = ?", (int(suspended), user_id)
    ).rowcount
    return changed > 0


@registered_write
def set_shadow_banned(conn: sqlite3.Connection, *, user_id: str, shadow_banned: bool) -> bool:
    """Shadow-ban ``user_id`` or lift the ban; False if there is no such account."""
    changed = conn.execute(
        "UPDATE users SET shadow_banned = ? WHERE user_id = ?", (int(shadow_banned), user_id)
    ).rowcount
    return changed > 0


@registered_write
def reactivate_account(conn: sqlite3.Connection, *, user_id: str, password_hash: str) -> bool:
    """Make a deactivated ``user_id`` active again with a new password:
    the old one must not come back with the account, nor an erasure it
    asked for while deactivated (an account in use is served as any other;
    the user asks again at their next deactivation). False if there is no
    such account.
    """
    changed = conn.execute(
        "UPDATE users SET deactivated = 0, password_hash = ? WHERE user_id = ?",
        (password_hash, user_id),
    ).rowcount
    conn.execute("DELETE FROM erased_users WHERE user_id = ?", (user_id,))
    return changed > 0


@registered_write
def block_room(conn: sqlite3.Connection, *, room_id: str, user_id: str, blocked_ts: int) -> None:
    """Block ``room_id`` (whether this server knows it or not); a room
    already blocked keeps who blocked it first."""
    conn.execute(
        "INSERT INTO blocked_rooms (room_id, user_id, blocked_ts) VALUES (?, ?, ?)"
        " ON CONFLICT (room_id) DO NOTHING",
        (room_id, user_id, blocked_ts),
    )


@registered_write
def unblock_room(conn: sqlite3.Connection, *, room_id: str) -> None:
    conn.execute("DELETE FROM blocked_rooms WHERE room_id = ?", (room_id,))


@registered_write
def delete_event_report(conn: sqlite3.Connection, *, report_id: int) -> bool:
    """Forget event report ``report_id``; False if there is none."""
    return conn.execute("DELETE FROM event_reports WHERE report_id = ?", (report_id,)).rowcount > 0
