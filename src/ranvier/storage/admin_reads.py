"""What the admin API reads: accounts with their profiles and devices,
rooms with the state the room list shows, members, blocks and reports.

Reads only, on a reader connection; each function runs in one read
transaction, so what it answers is one moment's picture. Room summaries
take their fields from current state (the content of the ``m.room.*``
events the admin list shows), decoded in SQLite as the other member reads
here do.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from .membership_sql import MEMBERSHIP

__all__ = [
    "BlockRecord",
    "DeviceRow",
    "ReportDetail",
    "RoomRow",
    "UserQuery",
    "UserRow",
    "block_of",
    "devices_of",
    "joined_rooms_of",
    "list_users",
    "local_members_to_remove",
    "report",
    "room_members",
    "rooms",
    "user",
]

UserOrder = Literal[
    "name",
    "creation_ts",
    "admin",
    "deactivated",
    "displayname",
    "avatar_url",
    "last_seen_ts",
    "locked",
    "is_guest",
    "shadow_banned",
]


@dataclass(frozen=True, slots=True)
class UserQuery:
    """Which accounts a page lists and in what order.

    ``name`` matches the localpart or the display name (either, any case);
    ``user_id`` a part of the user ID, and only when ``name`` is not given.
    ``admins`` None lists both admins and the rest.
    """

    offset: int
    limit: int
    order_by: UserOrder = "name"
    backwards: bool = False
    name: str | None = None
    user_id: str | None = None
    deactivated: bool = False
    admins: bool | None = None
    #: Whether locked accounts are listed too.
    locked: bool = False
    #: Whether guest accounts are listed too.
    guests: bool = True


@dataclass(frozen=True, slots=True)
class UserRow:
    user_id: str
    admin: bool
    deactivated: bool
    created_ts: int
    displayname: str | None
    avatar_url: str | None
    last_seen_ts: int | None
    locked: bool = False
    suspended: bool = False
    guest: bool = False
    shadow_banned: bool = False
    erased: bool = False


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: str
    display_name: str | None
    last_seen_ts: int | None


@dataclass(frozen=True, slots=True)
class RoomRow:
    """A room as the admin API describes it, from its current state."""

    room_id: str
    version: str
    name: str | None
    topic: str | None
    avatar: str | None
    canonical_alias: str | None
    creator: str | None
    encryption: str | None
    federatable: bool
    public: bool
    join_rules: str | None
    guest_access: str | None
    history_visibility: str | None
    room_type: str | None
    state_events: int
    joined_members: int
    joined_local_members: int
    joined_local_devices: int


@dataclass(frozen=True, slots=True)
class BlockRecord:
    """A room blocked here, and by whom."""

    room_id: str
    user_id: str
    blocked_ts: int


@dataclass(frozen=True, slots=True)
class ReportDetail:
    """A kept report with what its admin page shows of the event and room."""

    report_id: int
    room_id: str
    event_id: str | None
    user_id: str
    reason: str | None
    score: int | None
    received_ts: int
    sender: str | None
    event_json: bytes | None


_USER_COLUMNS: Final = (
    "SELECT u.user_id, u.admin, u.deactivated, u.created_ts, p.displayname, p.avatar_url,"
    " (SELECT MAX(d.last_seen_ts) FROM devices AS d WHERE d.user_id = u.user_id)"
    " AS last_seen_ts, u.locked, u.suspended, u.is_guest, u.shadow_banned,"
    " EXISTS (SELECT 1 FROM erased_users AS x WHERE x.user_id = u.user_id) AS erased"
    " FROM users AS u LEFT JOIN profiles AS p ON p.user_id = u.user_id"
)

_USER_ORDER: Final[dict[str, str]] = {
    "name": "u.user_id",
    "creation_ts": "u.created_ts",
    "admin": "u.admin",
    "deactivated": "u.deactivated",
    "displayname": "p.displayname",
    "avatar_url": "p.avatar_url",
    "last_seen_ts": "last_seen_ts",
    "locked": "u.locked",
    "is_guest": "u.is_guest",
    "shadow_banned": "u.shadow_banned",
}


def _user_row(row: Sequence[object]) -> UserRow:
    (
        user_id,
        admin,
        deactivated,
        created_ts,
        displayname,
        avatar_url,
        last_seen,
        locked,
        suspended,
        guest,
        shadow_banned,
        erased,
    ) = row
    return UserRow(
        str(user_id),
        bool(admin),
        bool(deactivated),
        int(created_ts),  # type: ignore[call-overload]
        displayname if isinstance(displayname, str) else None,
        avatar_url if isinstance(avatar_url, str) else None,
        last_seen if isinstance(last_seen, int) else None,
        bool(locked),
        bool(suspended),
        bool(guest),
        bool(shadow_banned),
        bool(erased),
    )


def list_users(conn: sqlite3.Connection, *, query: UserQuery) -> tuple[list[UserRow], int]:
    """One page of accounts and how many the filters let through in all."""
    where: list[str] = []
    params: list[object] = []
    if not query.deactivated:
        where.append("u.deactivated = 0")
    if not query.locked:
        where.append("u.locked = 0")
    if not query.guests:
        where.append("u.is_guest = 0")
    if query.admins is not None:
        where.append("u.admin = ?")
        params.append(int(query.admins))
    if query.name is not None:
        # The localpart is what lies between '@' and the first ':'.
        where.append(
            "(instr(lower(substr(u.user_id, 2, instr(u.user_id, ':') - 2)), lower(?)) > 0"
            " OR instr(lower(coalesce(p.displayname, '')), lower(?)) > 0)"
        )
        params.extend([query.name, query.name])
    elif query.user_id is not None:
        where.append("instr(u.user_id, ?) > 0")
        params.append(query.user_id)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    direction = "DESC" if query.backwards else "ASC"
    order = f"{_USER_ORDER[query.order_by]} {direction}, u.user_id ASC"
    rows = conn.execute(
        f"{_USER_COLUMNS}{clause} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, query.limit, query.offset],
    ).fetchall()
    (total,) = conn.execute(
        f"SELECT COUNT(*) FROM users AS u LEFT JOIN profiles AS p ON p.user_id = u.user_id{clause}",
        params,
    ).fetchone()
    return [_user_row(row) for row in rows], int(total)


def user(conn: sqlite3.Connection, *, user_id: str) -> UserRow | None:
    """The account ``user_id``, deactivated or not; None if there is none."""
    row = conn.execute(f"{_USER_COLUMNS} WHERE u.user_id = ?", (user_id,)).fetchone()
    return None if row is None else _user_row(row)


def devices_of(conn: sqlite3.Connection, *, user_id: str) -> list[DeviceRow]:
    """The devices logged in for ``user_id``, by device ID."""
    return [
        DeviceRow(str(device_id), display_name, last_seen_ts)
        for device_id, display_name, last_seen_ts in conn.execute(
            "SELECT device_id, display_name, last_seen_ts FROM devices WHERE user_id = ?"
            " ORDER BY device_id",
            (user_id,),
        )
    ]


def joined_rooms_of(conn: sqlite3.Connection, *, user_id: str) -> list[str]:
    """The rooms ``user_id`` is joined to by current state, by room ID."""
    return [
        str(room_id)
        for (room_id,) in conn.execute(
            "SELECT cs.room_id FROM current_state AS cs JOIN events AS e"
            " ON e.event_id = cs.event_id WHERE cs.type = 'm.room.member'"
            f" AND cs.state_key = ? AND {MEMBERSHIP} = 'join' ORDER BY cs.room_id",
            (user_id,),
        )
    ]


def _state_field(event_type: str, path: str) -> str:
    """A subquery: ``path`` of the content of the room's ``event_type``
    (empty state key) in current state, when it is text."""
    value = f"json_extract(CAST(e.json AS TEXT), '$.content.{path}')"
    kind = f"json_type(CAST(e.json AS TEXT), '$.content.{path}')"
    return (
        f"(SELECT CASE WHEN {kind} = 'text' THEN {value} END FROM current_state AS cs"
        " JOIN events AS e ON e.event_id = cs.event_id"
        f" WHERE cs.room_id = r.room_id AND cs.type = '{event_type}' AND cs.state_key = '')"
    )


def _joined(local: bool) -> str:
    mine = " AND substr(cs.state_key, -length(:suffix)) = :suffix" if local else ""
    return (
        "(SELECT COUNT(*) FROM current_state AS cs JOIN events AS e ON e.event_id = cs.event_id"
        " WHERE cs.room_id = r.room_id AND cs.type = 'm.room.member'"
        f" AND {MEMBERSHIP} = 'join'{mine})"
    )


_ROOM_SELECT: Final = (
    "SELECT r.room_id, r.room_version,"
    f" {_state_field('m.room.name', 'name')},"
    f" {_state_field('m.room.topic', 'topic')},"
    f" {_state_field('m.room.avatar', 'url')},"
    f" {_state_field('m.room.canonical_alias', 'alias')},"
    " (SELECT e.sender FROM current_state AS cs JOIN events AS e ON e.event_id = cs.event_id"
    "  WHERE cs.room_id = r.room_id AND cs.type = 'm.room.create' AND cs.state_key = ''),"
    f" {_state_field('m.room.encryption', 'algorithm')},"
    " (SELECT json_type(CAST(e.json AS TEXT), '$.content.\"m.federate\"') IS NOT 'false'"
    "  FROM current_state AS cs JOIN events AS e ON e.event_id = cs.event_id"
    "  WHERE cs.room_id = r.room_id AND cs.type = 'm.room.create' AND cs.state_key = ''),"
    " EXISTS (SELECT 1 FROM room_list AS l WHERE l.room_id = r.room_id),"
    f" {_state_field('m.room.join_rules', 'join_rule')},"
    f" {_state_field('m.room.guest_access', 'guest_access')},"
    f" {_state_field('m.room.history_visibility', 'history_visibility')},"
    f" {_state_field('m.room.create', 'type')},"
    " (SELECT COUNT(*) FROM current_state AS cs WHERE cs.room_id = r.room_id),"
    f" {_joined(False)}, {_joined(True)},"
    " (SELECT COUNT(*) FROM devices AS d WHERE d.user_id IN"
    "  (SELECT cs.state_key FROM current_state AS cs JOIN events AS e"
    "   ON e.event_id = cs.event_id WHERE cs.room_id = r.room_id"
    f"   AND cs.type = 'm.room.member' AND {MEMBERSHIP} = 'join'"
    "   AND substr(cs.state_key, -length(:suffix)) = :suffix))"
    " FROM rooms AS r"
    # Rooms this server has state of: not those known only by an invite.
    " WHERE EXISTS (SELECT 1 FROM current_state_groups AS c WHERE c.room_id = r.room_id)"
)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _room_row(row: Sequence[object]) -> RoomRow:
    (room_id, version, name, topic, avatar, alias, creator, encryption, federatable, public,
     join_rules, guest_access, history, room_type, state_events, joined, local,
     devices) = row  # fmt: skip
    return RoomRow(
        room_id=str(room_id),
        version=str(version),
        name=_text(name),
        topic=_text(topic),
        avatar=_text(avatar),
        canonical_alias=_text(alias),
        creator=_text(creator),
        encryption=_text(encryption),
        federatable=federatable is None or bool(federatable),
        public=bool(public),
        join_rules=_text(join_rules),
        guest_access=_text(guest_access),
        history_visibility=_text(history),
        room_type=_text(room_type),
        state_events=int(state_events),  # type: ignore[call-overload]
        joined_members=int(joined),  # type: ignore[call-overload]
        joined_local_members=int(local),  # type: ignore[call-overload]
        joined_local_devices=int(devices),  # type: ignore[call-overload]
    )


def rooms(
    conn: sqlite3.Connection, *, server_name: str, room_id: str | None = None
) -> list[RoomRow]:
    """Every room this server has state of, or just ``room_id``."""
    sql, params = _ROOM_SELECT, {"suffix": f":{server_name}"}
    if room_id is not None:
        sql += " AND r.room_id = :room_id"
        params["room_id"] = room_id
    return [_room_row(row) for row in conn.execute(sql, params)]


def room_members(conn: sqlite3.Connection, *, room_id: str) -> list[str]:
    """The users joined to ``room_id`` by current state, by user ID."""
    return [
        str(user_id)
        for (user_id,) in conn.execute(
            "SELECT cs.state_key FROM current_state AS cs JOIN events AS e"
            " ON e.event_id = cs.event_id WHERE cs.room_id = ? AND cs.type = 'm.room.member'"
            f" AND {MEMBERSHIP} = 'join' ORDER BY cs.state_key",
            (room_id,),
        )
    ]


def local_members_to_remove(
    conn: sqlite3.Connection, *, room_id: str, server_name: str
) -> list[str]:
    """This server's users joined to, invited to or knocking on ``room_id``."""
    return [
        str(user_id)
        for (user_id,) in conn.execute(
            "SELECT cs.state_key FROM current_state AS cs JOIN events AS e"
            " ON e.event_id = cs.event_id WHERE cs.room_id = ? AND cs.type = 'm.room.member'"
            f" AND {MEMBERSHIP} IN ('join', 'invite', 'knock')"
            " AND substr(cs.state_key, -length(?)) = ? ORDER BY cs.state_key",
            (room_id, f":{server_name}", f":{server_name}"),
        )
    ]


def block_of(conn: sqlite3.Connection, *, room_id: str) -> BlockRecord | None:
    """The block of ``room_id``, None if it is not blocked."""
    row = conn.execute(
        "SELECT user_id, blocked_ts FROM blocked_rooms WHERE room_id = ?", (room_id,)
    ).fetchone()
    return None if row is None else BlockRecord(room_id, str(row[0]), int(row[1]))


def report(conn: sqlite3.Connection, *, report_id: int) -> ReportDetail | None:
    """Report ``report_id`` with the reported event's sender and JSON, if
    the event is stored; None for no such report."""
    row = conn.execute(
        "SELECT r.report_id, r.room_id, r.event_id, r.user_id, r.reason, r.score,"
        " r.received_ts, e.sender, e.json FROM event_reports AS r"
        " LEFT JOIN events AS e ON e.event_id = r.event_id WHERE r.report_id = ?",
        (report_id,),
    ).fetchone()
    return None if row is None else ReportDetail(*row)
