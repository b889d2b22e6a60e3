"""The database schema, as numbered migrations applied at start-up.

The version a database is at lives in ``PRAGMA user_version``. Start-up runs
every migration above it in order, each in its own transaction together with
the version bump, so a crash mid-upgrade leaves the database at the version
before and the next start-up simply tries again. A migration is never edited
once released: a change to the schema is a new migration.

Foreign keys are declared without ``ON DELETE`` actions on purpose. Deleting a
row that others still reference must fail: that failure is how the storage
actor notices that a room's partial state changed under a write. (Rows keyed
by an event's stream ordering follow it with ``ON UPDATE CASCADE`` when the
ordering moves; nothing is deleted that way.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "schema_version"]

Migration = Callable[[sqlite3.Connection], None]


_SQL_TYPES: Final = {str: "TEXT", int: "INTEGER", bytes: "BLOB", float: "REAL"}


def _create(
    conn: sqlite3.Connection,
    name: str,
    columns: dict[str, type],
    *,
    pk: str | tuple[str, ...],
    not_null: set[str] | None = None,
    foreign_keys: list[tuple[str, str, str]] | None = None,
) -> None:
    """A STRICT table whose primary-key columns are NOT NULL.

    SQLite lets a composite primary key hold NULLs unless told otherwise, and
    without STRICT it stores a string in an INTEGER column without a word.
    The statement is written as the first migrations' library wrote it, so
    a database made now holds the same schema text as one made then.
    """
    keys = (pk,) if isinstance(pk, str) else pk
    required = (not_null or set()) | set(keys)
    references = {column: (table, other) for column, table, other in foreign_keys or ()}
    lines = []
    for column, kind in columns.items():
        line = f'"{column}" {_SQL_TYPES[kind]}'
        if keys == (column,):
            line += " PRIMARY KEY"
        if column in required:
            line += " NOT NULL"
        if column in references:
            table, other = references[column]
            line += f' REFERENCES "{table}"("{other}")'
        lines.append(line)
    if len(keys) > 1:
        lines.append("PRIMARY KEY (" + ", ".join(f'"{key}"' for key in keys) + ")")
    conn.execute(f'CREATE TABLE "{name}" (\n   ' + ",\n   ".join(lines) + "\n) STRICT")


def _index(
    conn: sqlite3.Connection, table: str, columns: list[str], *, unique: bool = False
) -> None:
    """An index named as the first migrations' library named them
    (``idx_<table>_<columns>``), which later migrations may refer to.
    """
    name = "_".join(["idx", table, *columns])
    quoted = ", ".join(f'"{column}"' for column in columns)
    kind = "UNIQUE INDEX" if unique else "INDEX"
    conn.execute(f'CREATE {kind} "{name}"\n    ON "{table}" ({quoted})')


def _rooms_and_events(conn: sqlite3.Connection) -> None:
    """Rooms, events exactly as received, and the two kinds of event edges."""
    _create(
        conn,
        "rooms",
        {"room_id": str, "room_version": str},
        pk="room_id",
        not_null={"room_version"},
    )
    # stream_ordering is the rowid: SQLite hands out max + 1, which is the
    # order the actor commits events in.
    _create(
        conn,
        "events",
        {
            "stream_ordering": int,
            "event_id": str,
            "room_id": str,
            "type": str,
            "state_key": str,
            "sender": str,
            "depth": int,
            "origin_server_ts": int,
            "json": bytes,
            "outlier": int,
            "soft_failed": int,
            "rejected_reason": str,
        },
        pk="stream_ordering",
        not_null={
            "event_id",
            "room_id",
            "type",
            "sender",
            "depth",
            "origin_server_ts",
            "json",
            "outlier",
            "soft_failed",
        },
        foreign_keys=[("room_id", "rooms", "room_id")],
    )
    _index(conn, "events", ["event_id"], unique=True)
    _index(conn, "events", ["room_id", "stream_ordering"])
    # prev_event_id and auth_event_id are not foreign keys: an event may
    # point at events this server has never seen.
    for table, column in (("event_edges", "prev_event_id"), ("event_auth", "auth_event_id")):
        _create(
            conn,
            table,
            {"event_id": str, column: str, "room_id": str},
            pk=("event_id", column),
            not_null={"room_id"},
            foreign_keys=[("event_id", "events", "event_id")],
        )
    _index(conn, "event_edges", ["prev_event_id"])


def _state(conn: sqlite3.Connection) -> None:
    """State groups stored as deltas, the state at each event, current state
    and forward extremities.
    """
    # A group with no prev_group is a snapshot: its rows are the whole state.
    # Otherwise its rows are the changes from prev_group, a NULL event_id
    # meaning the key is gone. chain_length counts hops to the snapshot.
    _create(
        conn,
        "state_groups",
        {
            "id": int,
            "room_id": str,
            "prev_group": int,
            "chain_length": int,
            "row_count": int,
        },
        pk="id",
        not_null={"room_id", "chain_length", "row_count"},
        foreign_keys=[("room_id", "rooms", "room_id"), ("prev_group", "state_groups", "id")],
    )
    _create(
        conn,
        "state_group_rows",
        {"state_group": int, "type": str, "state_key": str, "event_id": str},
        pk=("state_group", "type", "state_key"),
        foreign_keys=[("state_group", "state_groups", "id")],
    )
    _create(
        conn,
        "event_to_state_groups",
        {"event_id": str, "state_group_before": int, "state_group_after": int},
        pk="event_id",
        not_null={"state_group_before", "state_group_after"},
        foreign_keys=[
            ("event_id", "events", "event_id"),
            ("state_group_before", "state_groups", "id"),
            ("state_group_after", "state_groups", "id"),
        ],
    )
    _create(
        conn,
        "current_state",
        {"room_id": str, "type": str, "state_key": str, "event_id": str},
        pk=("room_id", "type", "state_key"),
        not_null={"event_id"},
        foreign_keys=[("room_id", "rooms", "room_id")],
    )
    # Which state group current_state is a copy of, so that moving current
    # state writes only the keys that differ.
    _create(
        conn,
        "current_state_groups",
        {"room_id": str, "state_group": int},
        pk="room_id",
        not_null={"state_group"},
        foreign_keys=[("room_id", "rooms", "room_id"), ("state_group", "state_groups", "id")],
    )
    _create(
        conn,
        "forward_extremities",
        {"room_id": str, "event_id": str},
        pk=("room_id", "event_id"),
        foreign_keys=[("room_id", "rooms", "room_id"), ("event_id", "events", "event_id")],
    )


def _partial_state(conn: sqlite3.Connection) -> None:
    """Rooms joined with partial state, the servers in them, and the events
    whose state is still partial.
    """
    # The join event is written after this row, so it is not a foreign key.
    _create(
        conn,
        "partial_state_rooms",
        {"room_id": str, "join_event_id": str, "joined_via": str},
        pk="room_id",
        not_null={"join_event_id", "joined_via"},
        foreign_keys=[("room_id", "rooms", "room_id")],
    )
    _create(
        conn,
        "partial_state_rooms_servers",
        {"room_id": str, "server_name": str},
        pk=("room_id", "server_name"),
        foreign_keys=[("room_id", "partial_state_rooms", "room_id")],
    )
    # The key the race turns on: room_id references partial_state_rooms.
    _create(
        conn,
        "partial_state_events",
        {"event_id": str, "room_id": str},
        pk="event_id",
        not_null={"room_id"},
        foreign_keys=[
            ("event_id", "events", "event_id"),
            ("room_id", "partial_state_rooms", "room_id"),
        ],
    )
    _index(conn, "partial_state_events", ["room_id"])


def _federation(conn: sqlite3.Connection) -> None:
    """Received transactions, remote servers' keys and per-destination retry
    state.
    """
    _create(
        conn,
        "received_transactions",
        {
            "origin": str,
            "transaction_id": str,
            "response_code": int,
            "response_json": bytes,
            "received_ts": int,
        },
        pk=("origin", "transaction_id"),
        not_null={"response_code", "response_json", "received_ts"},
    )
    _index(conn, "received_transactions", ["received_ts"])
    _create(
        conn,
        "server_keys",
        {
            "server_name": str,
            "key_id": str,
            "verify_key": bytes,
            "valid_until_ts": int,
            "expired_ts": int,
            "from_server": str,
            "fetched_ts": int,
            "key_json": bytes,
        },
        pk=("server_name", "key_id"),
        not_null={"verify_key", "valid_until_ts", "from_server", "fetched_ts", "key_json"},
    )
    _create(
        conn,
        "destinations",
        {
            "destination": str,
            "failure_ts": int,
            "retry_last_ts": int,
            "retry_interval_ms": int,
        },
        pk="destination",
        not_null={"retry_last_ts", "retry_interval_ms"},
    )


def _outgoing_federation(conn: sqlite3.Connection) -> None:
    """Which rooms each destination has been sent events of, and how far.

    ``stream_ordering`` is the newest event of the room meant for the
    destination, ``sent_stream_ordering`` the newest one it acknowledged. A
    row where the first is ahead is a room the destination has missed events
    of: after an outage, a restart or an overflowing queue, the sender sends
    it the room's latest events and the destination fetches the gap itself.
    """
    _create(
        conn,
        "destination_rooms",
        {
            "destination": str,
            "room_id": str,
            "stream_ordering": int,
            "sent_stream_ordering": int,
        },
        pk=("destination", "room_id"),
        not_null={"stream_ordering"},
        foreign_keys=[("room_id", "rooms", "room_id")],
    )
    # Only the rows still to catch up on are indexed: a server that is up
    # has none, so finding the destinations behind is cheap however many
    # rooms are shared.
    conn.execute(
        "CREATE INDEX destination_rooms_unsent ON destination_rooms (destination, stream_ordering)"
        " WHERE sent_stream_ordering IS NULL OR stream_ordering > sent_stream_ordering"
    )


def _resync_progress(conn: sqlite3.Connection) -> None:
    """How far the resync of each partial-state room had come when it was
    last recorded, so that another process (``ranvier status``) can show it.

    A row belongs to a room with partial state: it references
    ``partial_state_rooms`` and goes in the same transaction as the room's
    partial state, so it never outlives it.
    """
    _create(
        conn,
        "resync_progress",
        {
            "room_id": str,
            "phase": str,
            "server": str,
            "events_resynced": int,
            "events_total": int,
            "attempts": int,
            "last_error": str,
            "updated_ts": int,
        },
        pk="room_id",
        not_null={"phase", "events_resynced", "events_total", "attempts", "updated_ts"},
        foreign_keys=[("room_id", "partial_state_rooms", "room_id")],
    )


def _client_api(conn: sqlite3.Connection) -> None:
    """Local accounts and what the client-server API keeps for them.

    Passwords and access tokens are stored only as hashes: a copy of the
    database must not let anyone log in. ``client_transactions`` makes a
    client's retried send return the first event instead of a second one,
    across restarts. ``un_partial_stated_rooms`` records the stream position
    at which a room's state became complete, so that a sync that left the
    room out while it was partial knows to bring it in.
    """
    _create(
        conn,
        "users",
        {
            "user_id": str,
            "password_hash": str,
            "admin": int,
            "created_ts": int,
            "deactivated": int,
        },
        pk="user_id",
        not_null={"admin", "created_ts", "deactivated"},
    )
    _create(
        conn,
        "devices",
        {
            "user_id": str,
            "device_id": str,
            "display_name": str,
            "created_ts": int,
            "last_seen_ts": int,
        },
        pk=("user_id", "device_id"),
        not_null={"created_ts"},
        foreign_keys=[("user_id", "users", "user_id")],
    )
    _create(
        conn,
        "access_tokens",
        {"token_hash": bytes, "user_id": str, "device_id": str, "created_ts": int},
        pk="token_hash",
        not_null={"user_id", "device_id", "created_ts"},
        foreign_keys=[("user_id", "users", "user_id")],
    )
    _index(conn, "access_tokens", ["user_id", "device_id"])
    _create(
        conn,
        "client_transactions",
        {
            "user_id": str,
            "device_id": str,
            "txn_id": str,
            "room_id": str,
            "event_id": str,
            "created_ts": int,
        },
        pk=("user_id", "device_id", "txn_id"),
        not_null={"room_id", "event_id", "created_ts"},
    )
    _index(conn, "client_transactions", ["created_ts"])
    _create(
        conn,
        "room_aliases",
        {"alias": str, "room_id": str, "creator": str, "created_ts": int},
        pk="alias",
        not_null={"room_id", "creator", "created_ts"},
    )
    _index(conn, "room_aliases", ["room_id"])
    _create(
        conn,
        "user_filters",
        {"user_id": str, "filter_id": int, "filter_json": bytes},
        pk=("user_id", "filter_id"),
        not_null={"filter_json"},
    )
    _create(
        conn,
        "un_partial_stated_rooms",
        {"room_id": str, "stream_ordering": int},
        pk="room_id",
        not_null={"stream_ordering"},
        foreign_keys=[("room_id", "rooms", "room_id")],
    )
    # A user's rooms, for /sync and membership checks, without a scan of
    # every room's current state.
    conn.execute(
        "CREATE INDEX current_state_members ON current_state (state_key, room_id)"
        " WHERE type = 'm.room.member'"
    )


def _redactions(conn: sqlite3.Connection) -> None:
    """Which event each stored redaction names, for serving events redacted
    (:mod:`ranvier.storage.redactions`), filled from the events stored so far.

    Not a foreign key on ``redacts``: a redaction may arrive before the
    event it names, and applies once that event is stored.
    """
    _create(
        conn,
        "redactions",
        {
            "event_id": str,
            "redacts": str,
            "room_id": str,
            "sender_may_redact": int,
            "received_ts": int,
        },
        pk="event_id",
        not_null={"redacts", "room_id", "sender_may_redact", "received_ts"},
        foreign_keys=[("event_id", "events", "event_id")],
    )
    _index(conn, "redactions", ["redacts"])
    # Imported here: the redactions module reads through modules that need
    # the storage actor, which imports this one.
    from .redactions import fill_redactions

    fill_redactions(conn)


def _client_data(conn: sqlite3.Connection) -> None:
    """Profiles, account data and the published room list
    (:mod:`ranvier.storage.client_data`).

    ``account_data.stream_id`` is the account data stream's position. A
    change replaces the row, and AUTOINCREMENT never hands out an ID twice,
    so a change is never filed behind a position a sync already reported.
    """
    conn.execute(
        "CREATE TABLE profiles ("
        " user_id TEXT PRIMARY KEY NOT NULL REFERENCES users (user_id),"
        " displayname TEXT, avatar_url TEXT) STRICT"
    )
    conn.execute(
        "CREATE TABLE account_data ("
        " stream_id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,"
        " user_id TEXT NOT NULL, room_id TEXT NOT NULL, type TEXT NOT NULL,"
        " content BLOB NOT NULL) STRICT"
    )
    conn.execute("CREATE UNIQUE INDEX account_data_key ON account_data (user_id, room_id, type)")
    conn.execute("CREATE INDEX account_data_user_stream ON account_data (user_id, stream_id)")
    conn.execute(
        "CREATE TABLE room_list ("
        " room_id TEXT PRIMARY KEY NOT NULL REFERENCES rooms (room_id),"
        " added_ts INTEGER NOT NULL) STRICT"
    )


def _receipts(conn: sqlite3.Connection) -> None:
    """Users' receipts per room (:mod:`ranvier.storage.receipts`).

    ``stream_id`` is the receipts stream's position, kept as account data
    keeps its own: a newer receipt replaces the row with a new ID.
    ``thread_id`` is ``''`` for an unthreaded receipt, so that the unique
    key holds for those too (NULLs never collide in a unique index).
    """
    conn.execute(
        "CREATE TABLE receipts ("
        " stream_id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,"
        " room_id TEXT NOT NULL REFERENCES rooms (room_id),"
        " receipt_type TEXT NOT NULL, user_id TEXT NOT NULL, thread_id TEXT NOT NULL,"
        " event_id TEXT NOT NULL, ts INTEGER NOT NULL) STRICT"
    )
    conn.execute(
        "CREATE UNIQUE INDEX receipts_key ON receipts (room_id, receipt_type, user_id, thread_id)"
    )
    conn.execute("CREATE INDEX receipts_room_stream ON receipts (room_id, stream_id)")


#: The tables migration 11 re-keys, with the column naming the other end of
#: each edge, and the views that keep their old names and columns.
_EDGE_TABLES = (
    ("event_edges", "event_prev_edges", "prev_event_id"),
    ("event_auth", "event_auth_edges", "auth_event_id"),
)


def _rows_keyed_by_ordering(conn: sqlite3.Connection) -> None:
    """An event's edges and state groups keyed by its stream ordering, not
    by its ID.

    Event IDs are hashes, so rows keyed by them land on a random page of
    their table each: a batch of 50 events wrote some 250 pages more to the
    WAL (and to the database at each checkpoint) for the edge, auth and
    state-group tables alone. Stream orderings grow, so the same rows now
    append to the last pages. ``ON UPDATE CASCADE`` carries them along when
    an event's ordering changes (an outlier taking its place in the DAG, a
    backfilled event placed below the stream). The lookup by prev event,
    for the children of an event, keeps its random index: the prev event
    need not be stored.

    Views keep the old tables' names and columns for reads, and take
    inserts through triggers that look the ordering up by event ID (an
    unknown event then has none and is refused, as the foreign key refused
    it before).
    """
    run = conn.execute
    for old, new, other in _EDGE_TABLES:
        run(
            f"CREATE TABLE {new} ("
            " event_ordering INTEGER NOT NULL"
            " REFERENCES events (stream_ordering) ON UPDATE CASCADE,"
            f" {other} TEXT NOT NULL, room_id TEXT NOT NULL,"
            f" PRIMARY KEY (event_ordering, {other})) WITHOUT ROWID, STRICT"
        )
        run(
            f"INSERT INTO {new} (event_ordering, {other}, room_id)"
            f" SELECT e.stream_ordering, x.{other}, x.room_id"
            f" FROM {old} AS x JOIN events AS e ON e.event_id = x.event_id"
        )
        run(f"DROP TABLE {old}")
        run(
            f"CREATE VIEW {old} (event_id, {other}, room_id) AS"
            f" SELECT e.event_id, x.{other}, x.room_id"
            f" FROM {new} AS x JOIN events AS e ON e.stream_ordering = x.event_ordering"
        )
        run(
            f"CREATE TRIGGER {old}_insert INSTEAD OF INSERT ON {old} BEGIN"
            f" INSERT INTO {new} (event_ordering, {other}, room_id) VALUES ("
            " (SELECT stream_ordering FROM events WHERE event_id = NEW.event_id),"
            f" NEW.{other}, NEW.room_id); END"
        )
    run("CREATE INDEX event_prev_edges_prev ON event_prev_edges (prev_event_id)")
    run(
        "CREATE TABLE event_state ("
        " event_ordering INTEGER PRIMARY KEY NOT NULL"
        " REFERENCES events (stream_ordering) ON UPDATE CASCADE,"
        " state_group_before INTEGER NOT NULL REFERENCES state_groups (id),"
        " state_group_after INTEGER NOT NULL REFERENCES state_groups (id)) STRICT"
    )
    run(
        "INSERT INTO event_state (event_ordering, state_group_before, state_group_after)"
        " SELECT e.stream_ordering, g.state_group_before, g.state_group_after"
        " FROM event_to_state_groups AS g JOIN events AS e ON e.event_id = g.event_id"
    )
    run("DROP TABLE event_to_state_groups")
    run(
        "CREATE VIEW event_to_state_groups (event_id, state_group_before, state_group_after) AS"
        " SELECT e.event_id, g.state_group_before, g.state_group_after"
        " FROM event_state AS g JOIN events AS e ON e.stream_ordering = g.event_ordering"
    )
    run(
        "CREATE TRIGGER event_to_state_groups_insert INSTEAD OF INSERT ON event_to_state_groups"
        " BEGIN INSERT INTO event_state (event_ordering, state_group_before, state_group_after)"
        " VALUES ((SELECT stream_ordering FROM events WHERE event_id = NEW.event_id),"
        " NEW.state_group_before, NEW.state_group_after); END"
    )


def _end_to_end(conn: sqlite3.Connection) -> None:
    """Devices' encryption keys, to-device messages and the device-list
    stream (:mod:`ranvier.storage.e2e_keys`).

    Keys are stored as the JSON the client signed, so they are served byte
    for byte as uploaded, signatures intact. A one-time key is claimed by
    deleting its row; a fallback key stays until replaced, marked used once
    claimed. ``to_device_inbox.stream_id`` and ``device_list_changes.stream_id``
    are stream positions: AUTOINCREMENT never hands one out twice, so a
    sync's token never points below a row it has not seen. Rows are not
    tied to ``devices`` by a foreign key: a device's deletion must not fail
    over a message waiting for it, and reads join on ``devices`` instead.
    """
    run = conn.execute
    run(
        "CREATE TABLE e2e_device_keys (user_id TEXT NOT NULL, device_id TEXT NOT NULL,"
        " key_json BLOB NOT NULL, PRIMARY KEY (user_id, device_id)) STRICT"
    )
    run(
        "CREATE TABLE e2e_one_time_keys (user_id TEXT NOT NULL, device_id TEXT NOT NULL,"
        " algorithm TEXT NOT NULL, key_id TEXT NOT NULL, key_json BLOB NOT NULL,"
        " PRIMARY KEY (user_id, device_id, algorithm, key_id)) STRICT"
    )
    run(
        "CREATE TABLE e2e_fallback_keys (user_id TEXT NOT NULL, device_id TEXT NOT NULL,"
        " algorithm TEXT NOT NULL, key_id TEXT NOT NULL, key_json BLOB NOT NULL,"
        " used INTEGER NOT NULL, PRIMARY KEY (user_id, device_id, algorithm)) STRICT"
    )
    run(
        "CREATE TABLE e2e_cross_signing_keys (user_id TEXT NOT NULL, key_type TEXT NOT NULL,"
        " key_json BLOB NOT NULL, PRIMARY KEY (user_id, key_type)) STRICT"
    )
    run(
        "CREATE TABLE to_device_inbox ("
        " stream_id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,"
        " user_id TEXT NOT NULL, device_id TEXT NOT NULL, message BLOB NOT NULL) STRICT"
    )
    run("CREATE INDEX to_device_inbox_device ON to_device_inbox (user_id, device_id, stream_id)")
    run(
        "CREATE TABLE to_device_transactions (user_id TEXT NOT NULL, device_id TEXT NOT NULL,"
        " txn_id TEXT NOT NULL, created_ts INTEGER NOT NULL,"
        " PRIMARY KEY (user_id, device_id, txn_id)) STRICT"
    )
    run(
        "CREATE TABLE device_list_changes ("
        " stream_id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, user_id TEXT NOT NULL) STRICT"
    )
    run("CREATE INDEX device_list_changes_user ON device_list_changes (user_id, stream_id)")


def _to_device_outbox(conn: sqlite3.Connection) -> None:
    """``m.direct_to_device`` EDUs waiting for their destination
    (:mod:`ranvier.federation.sender.queue`): unlike other EDUs they must
    reach it, through a backoff and a restart, so they are written with the
    send that makes them and deleted once the destination took them.
    """
    run = conn.execute
    run(
        "CREATE TABLE to_device_outbox ("
        " stream_id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,"
        " destination TEXT NOT NULL, edu BLOB NOT NULL) STRICT"
    )
    run("CREATE INDEX to_device_outbox_destination ON to_device_outbox (destination, stream_id)")


def _room_key_backups(conn: sqlite3.Connection) -> None:
    """Server-side key backups (:mod:`ranvier.storage.room_keys`).

    A backup version is never deleted, only marked so: its number is never
    handed out again, and a client still holding it is told it is gone
    rather than finding someone else's backup under it. Its keys are deleted
    with the mark. ``etag`` counts the changes of the version's keys;
    ``creation_id`` is drawn at random by the request that created the
    version, so that the creation run again finds its own row.
    """
    run = conn.execute
    run(
        "CREATE TABLE room_key_backup_versions (user_id TEXT NOT NULL,"
        " version INTEGER NOT NULL, algorithm TEXT NOT NULL, auth_data BLOB NOT NULL,"
        " etag INTEGER NOT NULL, deleted INTEGER NOT NULL, creation_id TEXT NOT NULL,"
        " PRIMARY KEY (user_id, version)) STRICT"
    )
    run(
        "CREATE TABLE room_key_backup_keys (user_id TEXT NOT NULL, version INTEGER NOT NULL,"
        " room_id TEXT NOT NULL, session_id TEXT NOT NULL,"
        " first_message_index INTEGER NOT NULL, forwarded_count INTEGER NOT NULL,"
        " is_verified INTEGER NOT NULL, session_data BLOB NOT NULL,"
        " PRIMARY KEY (user_id, version, room_id, session_id),"
        " FOREIGN KEY (user_id, version)"
        " REFERENCES room_key_backup_versions (user_id, version)) STRICT"
    )


def _media(conn: sqlite3.Connection) -> None:
    """The content repository (:mod:`ranvier.storage.media`): a row per
    piece of media, ours or fetched from its origin, and one per thumbnail
    made of it. The bytes are files (:mod:`ranvier.storage.media_files`).

    ``uploaded_ts`` is NULL for a media ID created ahead of its upload;
    ``user_id`` is the local uploader, NULL for another server's media.
    """
    run = conn.execute
    run(
        "CREATE TABLE media (origin TEXT NOT NULL, media_id TEXT NOT NULL, user_id TEXT,"
        " content_type TEXT, upload_name TEXT, size INTEGER, created_ts INTEGER NOT NULL,"
        " uploaded_ts INTEGER, PRIMARY KEY (origin, media_id)) STRICT"
    )
    run(
        "CREATE TABLE media_thumbnails (origin TEXT NOT NULL, media_id TEXT NOT NULL,"
        " width INTEGER NOT NULL, height INTEGER NOT NULL, method TEXT NOT NULL,"
        " content_type TEXT NOT NULL, size INTEGER NOT NULL,"
        " PRIMARY KEY (origin, media_id, width, height, method),"
        " FOREIGN KEY (origin, media_id) REFERENCES media (origin, media_id)) STRICT"
    )


def _pushers(conn: sqlite3.Connection) -> None:
    """Pushers and how far the push sender has read the event stream
    (:mod:`ranvier.storage.pushers`).

    A pusher is keyed as the spec keys it, by app ID, pushkey and user;
    ``push_position`` has one row, made when the sender first runs.
    """
    conn.execute(
        "CREATE TABLE pushers ("
        " user_id TEXT NOT NULL, app_id TEXT NOT NULL, pushkey TEXT NOT NULL,"
        " kind TEXT NOT NULL, app_display_name TEXT NOT NULL,"
        " device_display_name TEXT NOT NULL, profile_tag TEXT, lang TEXT NOT NULL,"
        " data_json BLOB NOT NULL, pushkey_ts INTEGER NOT NULL,"
        " PRIMARY KEY (app_id, pushkey, user_id)) STRICT"
    )
    conn.execute("CREATE INDEX pushers_user ON pushers (user_id)")
    conn.execute(
        "CREATE TABLE push_position ("
        " id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1), stream_ordering INTEGER NOT NULL)"
        " STRICT"
    )


def _reports_and_openid(conn: sqlite3.Connection) -> None:
    """Reports of rooms and events for the server's admins
    (:mod:`ranvier.storage.reports`), and OpenID tokens
    (:mod:`ranvier.storage.accounts`).

    A report's ``event_id`` is NULL when the room itself is reported;
    ``request_id`` is drawn by the request that made it, so that the write
    run again finds its own row. OpenID tokens are kept as their SHA-256.
    """
    conn.execute(
        "CREATE TABLE event_reports ("
        " report_id INTEGER PRIMARY KEY NOT NULL, request_id TEXT NOT NULL UNIQUE,"
        " room_id TEXT NOT NULL, event_id TEXT, user_id TEXT NOT NULL, reason TEXT,"
        " score INTEGER, received_ts INTEGER NOT NULL) STRICT"
    )
    conn.execute(
        "CREATE TABLE openid_tokens ("
        " token_hash BLOB PRIMARY KEY NOT NULL, user_id TEXT NOT NULL,"
        " expires_ts INTEGER NOT NULL) STRICT"
    )
    conn.execute("CREATE INDEX openid_tokens_user ON openid_tokens (user_id)")


def _event_relations(conn: sqlite3.Connection) -> None:
    """Which event relates to which, and how (:mod:`ranvier.storage.relations`),
    filled from the events stored so far.

    Keyed by the relating event's stream ordering, which the row follows
    when it moves, as migration 11's tables do. Not a foreign key on
    ``relates_to_id``: an event may arrive before the one it relates to.
    """
    conn.execute(
        "CREATE TABLE event_relations ("
        " stream_ordering INTEGER PRIMARY KEY NOT NULL"
        " REFERENCES events (stream_ordering) ON UPDATE CASCADE,"
        " event_id TEXT NOT NULL UNIQUE, relates_to_id TEXT NOT NULL,"
        " rel_type TEXT NOT NULL, room_id TEXT NOT NULL) STRICT"
    )
    conn.execute(
        "CREATE INDEX event_relations_target"
        " ON event_relations (relates_to_id, rel_type, stream_ordering)"
    )
    conn.execute(
        "CREATE INDEX event_relations_room_type"
        " ON event_relations (room_id, rel_type, relates_to_id)"
    )
    # Imported here, as for migration 8.
    from .relations import fill_relations

    fill_relations(conn)


def _event_search(conn: sqlite3.Connection) -> None:
    """The full-text index of searchable event keys
    (:mod:`ranvier.storage.search`), filled from the events stored so far.

    An FTS5 table: the text indexed, the event's ID, room and key not.
    The unicode61 tokenizer folds case and diacritics, so a search for
    "cafe" finds "Café".
    """
    conn.execute(
        "CREATE VIRTUAL TABLE event_search USING fts5("
        "value, event_id UNINDEXED, room_id UNINDEXED, key UNINDEXED,"
        " tokenize = 'unicode61 remove_diacritics 2')"
    )
    # Imported here, as for migration 8.
    from .search import fill_search

    fill_search(conn)


def _events_by_timestamp(conn: sqlite3.Connection) -> None:
    """The room's timeline events by ``origin_server_ts``, for
    ``/timestamp_to_event`` (:mod:`ranvier.storage.timestamps`): a partial
    index of the events that are neither outliers, rejected nor soft
    failed, so the nearest such event to a time is one seek.
    """
    conn.execute(
        "CREATE INDEX events_room_timestamp ON events (room_id, origin_server_ts)"
        " WHERE outlier = 0 AND soft_failed = 0 AND rejected_reason IS NULL"
    )


def _application_services(conn: sqlite3.Connection) -> None:
    """Application services' positions in the event stream and their
    unanswered transactions (:mod:`ranvier.storage.appservices`).
    """
    conn.execute(
        "CREATE TABLE appservice_positions ("
        " service_id TEXT PRIMARY KEY NOT NULL, stream_ordering INTEGER NOT NULL,"
        " next_txn_id INTEGER NOT NULL) STRICT"
    )
    conn.execute(
        "CREATE TABLE appservice_transactions ("
        " service_id TEXT NOT NULL, txn_id INTEGER NOT NULL, body BLOB NOT NULL,"
        " PRIMARY KEY (service_id, txn_id)) STRICT"
    )


def _url_previews(conn: sqlite3.Connection) -> None:
    """URL previews kept for a while (:mod:`ranvier.storage.url_previews`):
    a row per URL, found by URL, and expired rows found by their expiry."""
    conn.execute(
        "CREATE TABLE url_previews (url TEXT NOT NULL PRIMARY KEY, preview_json BLOB NOT NULL,"
        " made_ts INTEGER NOT NULL, expires_ts INTEGER NOT NULL) STRICT"
    )
    conn.execute("CREATE INDEX url_previews_expiry ON url_previews (expires_ts)")


def _blocked_rooms(conn: sqlite3.Connection) -> None:
    """Rooms an admin blocked (:mod:`ranvier.storage.admin_writes`): no
    local user may join them. Not a foreign key to ``rooms``: a room may be
    blocked before this server knows it."""
    conn.execute(
        "CREATE TABLE blocked_rooms (room_id TEXT PRIMARY KEY NOT NULL,"
        " user_id TEXT NOT NULL, blocked_ts INTEGER NOT NULL) STRICT"
    )


def _media_upkeep(conn: sqlite3.Connection) -> None:
    """Media retention, quarantine and deletion (:mod:`ranvier.storage.media_admin`).

    ``last_access_ts`` is when the media was last served (NULL until it
    is; its creation counts until then), found through an index on that
    rule. ``safe_from_quarantine`` is an admin's protection. ``deleting``
    marks rows whose files are being removed: set before the files go,
    the rows removed after, so a crash between leaves rows that say so
    rather than rows naming missing files. Quarantine is a table of its
    own, not a column: other servers' media may be quarantined before it
    is fetched, and stays quarantined when its cached copy is purged.
    """
    run = conn.execute
    run("ALTER TABLE media ADD COLUMN last_access_ts INTEGER")
    run("ALTER TABLE media ADD COLUMN safe_from_quarantine INTEGER NOT NULL DEFAULT 0")
    run("ALTER TABLE media ADD COLUMN deleting INTEGER NOT NULL DEFAULT 0")
    run("CREATE INDEX media_last_used ON media (COALESCE(last_access_ts, created_ts))")
    run("CREATE INDEX media_uploader ON media (user_id, created_ts)")
    run("CREATE INDEX media_deleting ON media (origin, media_id) WHERE deleting = 1")
    run(
        "CREATE TABLE media_quarantine (origin TEXT NOT NULL, media_id TEXT NOT NULL,"
        " quarantined_by TEXT NOT NULL, quarantined_ts INTEGER NOT NULL,"
        " PRIMARY KEY (origin, media_id)) STRICT"
    )


def _sliding_sync(conn: sqlite3.Connection) -> None:
    """Sliding sync connections, their positions and what each sent of each
    room (:mod:`ranvier.storage.sliding_sync`): a connection found by its
    user, device and ``conn_id``, a position by its nonce when a write is
    repeated, a room's rows by connection, room and position.
    """
    conn.execute(
        "CREATE TABLE sliding_sync_connections (conn_key INTEGER NOT NULL PRIMARY KEY,"
        " user_id TEXT NOT NULL, device_id TEXT NOT NULL, conn_id TEXT NOT NULL,"
        " UNIQUE (user_id, device_id, conn_id)) STRICT"
    )
    conn.execute(
        "CREATE TABLE sliding_sync_positions (pos INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,"
        " conn_key INTEGER NOT NULL REFERENCES sliding_sync_connections (conn_key),"
        " nonce TEXT NOT NULL UNIQUE, token TEXT NOT NULL, made_ms INTEGER NOT NULL) STRICT"
    )
    conn.execute("CREATE INDEX sliding_sync_positions_conn ON sliding_sync_positions (conn_key)")
    conn.execute(
        "CREATE TABLE sliding_sync_rooms ("
        " conn_key INTEGER NOT NULL REFERENCES sliding_sync_connections (conn_key),"
        " room_id TEXT NOT NULL, pos INTEGER NOT NULL, sent_upto INTEGER NOT NULL,"
        " config TEXT NOT NULL, PRIMARY KEY (conn_key, room_id, pos)) STRICT"
    )


def _registration_tokens(conn: sqlite3.Connection) -> None:
    """Registration tokens and the sessions holding a use of one
    (:mod:`ranvier.storage.registration_tokens`): sessions found by token,
    to count a token's pending uses, and by expiry, to delete the expired.
    """
    conn.execute(
        "CREATE TABLE registration_tokens (token TEXT PRIMARY KEY NOT NULL,"
        " uses_allowed INTEGER, completed INTEGER NOT NULL, expiry_time INTEGER) STRICT"
    )
    conn.execute(
        "CREATE TABLE registration_token_sessions (session_id TEXT PRIMARY KEY NOT NULL,"
        " token TEXT NOT NULL REFERENCES registration_tokens (token),"
        " expires_ts INTEGER NOT NULL, user_id TEXT) STRICT"
    )
    conn.execute(
        "CREATE INDEX registration_token_sessions_token ON registration_token_sessions (token)"
    )
    conn.execute(
        "CREATE INDEX registration_token_sessions_expiry"
        " ON registration_token_sessions (expires_ts)"
    )


def _dehydrated_devices(conn: sqlite3.Connection) -> None:
    """Each user's dehydrated device (MSC3814,
    :mod:`ranvier.storage.dehydrated_devices`): the device is a row of
    ``devices`` without a token, its keys and messages those of any device;
    this table marks it and keeps the client's ``device_data``, with the
    upload that stored it and what that upload answered.
    """
    conn.execute(
        "CREATE TABLE dehydrated_devices (user_id TEXT NOT NULL PRIMARY KEY,"
        " device_id TEXT NOT NULL, device_data BLOB NOT NULL, upload_id TEXT NOT NULL,"
        " replaced TEXT, replaced_position INTEGER, position INTEGER NOT NULL) STRICT"
    )


def _user_reports(conn: sqlite3.Connection) -> None:
    """Reports of users for the server's admins (:mod:`ranvier.storage.reports`),
    numbered apart from those of rooms and events, as the admin API lists
    them apart; ``request_id`` as for those. Indexed by the reported user,
    whose reports an admin reads together.
    """
    conn.execute(
        "CREATE TABLE user_reports ("
        " report_id INTEGER PRIMARY KEY NOT NULL, request_id TEXT NOT NULL UNIQUE,"
        " target_user_id TEXT NOT NULL, user_id TEXT NOT NULL, reason TEXT,"
        " received_ts INTEGER NOT NULL) STRICT"
    )
    conn.execute("CREATE INDEX user_reports_target ON user_reports (target_user_id)")


def _server_notice_rooms(conn: sqlite3.Connection) -> None:
    """Each local user's server notices room (:mod:`ranvier.storage.server_notices`),
    found by the user when a notice is sent or the user would decline it.
    """
    conn.execute(
        "CREATE TABLE server_notice_rooms (user_id TEXT PRIMARY KEY NOT NULL,"
        " room_id TEXT NOT NULL, created_ts INTEGER NOT NULL) STRICT"
    )


def _refresh_and_login_tokens(conn: sqlite3.Connection) -> None:
    """Access tokens that expire, refresh tokens and login tokens
    (:mod:`ranvier.storage.refresh_tokens`, :mod:`ranvier.storage.login_tokens`),
    every token kept as its SHA-256.

    A refresh token belongs to the access token issued with it and goes when
    that does (a logout, a new login of the device); ``previous_hash`` is the
    refresh token it was exchanged for, kept until the new pair is first used.
    """
    conn.execute("ALTER TABLE access_tokens ADD COLUMN expires_ts INTEGER")
    conn.execute(
        "CREATE TABLE refresh_tokens (token_hash BLOB PRIMARY KEY NOT NULL,"
        " access_token_hash BLOB NOT NULL UNIQUE"
        " REFERENCES access_tokens (token_hash) ON DELETE CASCADE,"
        " previous_hash BLOB REFERENCES refresh_tokens (token_hash) ON DELETE SET NULL) STRICT"
    )
    conn.execute("CREATE INDEX refresh_tokens_previous ON refresh_tokens (previous_hash)")
    conn.execute(
        "CREATE TABLE login_tokens (token_hash BLOB PRIMARY KEY NOT NULL,"
        " user_id TEXT NOT NULL, expires_ts INTEGER NOT NULL) STRICT"
    )


def _forgotten_rooms(conn: sqlite3.Connection) -> None:
    """Rooms users forgot (:mod:`ranvier.storage.forgotten_rooms`), read by
    user and by user and room.
    """
    conn.execute(
        "CREATE TABLE forgotten_rooms (user_id TEXT NOT NULL, room_id TEXT NOT NULL,"
        " PRIMARY KEY (user_id, room_id)) STRICT"
    )


def _pusher_devices(conn: sqlite3.Connection) -> None:
    """The device whose session set each pusher
    (:mod:`ranvier.storage.pushers`), so that the pusher ends with the
    session. NULL for the pushers set before: their device is not known.
    """
    conn.execute("ALTER TABLE pushers ADD COLUMN device_id TEXT")


def _out_of_band_memberships(conn: sqlite3.Connection) -> None:
    """Outlier memberships of our users in rooms this server is not in
    (:mod:`ranvier.storage.local_memberships`), read by user. Until now
    such rooms were those with no current state, where every member event
    is one: those are marked.
    """
    conn.execute(
        "CREATE TABLE out_of_band_memberships (event_id TEXT PRIMARY KEY,"
        " room_id TEXT NOT NULL, user_id TEXT NOT NULL) STRICT"
    )
    conn.execute("CREATE INDEX out_of_band_memberships_user ON out_of_band_memberships (user_id)")
    conn.execute(
        "INSERT INTO out_of_band_memberships (event_id, room_id, user_id)"
        " SELECT e.event_id, e.room_id, e.state_key FROM events AS e"
        " WHERE e.type = 'm.room.member' AND e.state_key IS NOT NULL AND e.outlier = 1"
        " AND NOT EXISTS (SELECT 1 FROM current_state_groups AS c WHERE c.room_id = e.room_id)"
    )


def _appservice_receipts(conn: sqlite3.Connection) -> None:
    """How far each application service that receives ephemeral events has
    been sent the receipts stream (:mod:`ranvier.storage.appservices`),
    kept so that a restart loses none; NULL for a service not sent them.
    """
    conn.execute("ALTER TABLE appservice_positions ADD COLUMN receipts_position INTEGER")


def _destination_deliveries(conn: sqlite3.Connection) -> None:
    """When each destination last took a transaction of ours
    (:mod:`ranvier.storage.admin_federation`), for the federation admin
    API: ``destinations`` loses its row on a success, and a destination sent
    only EDUs has no ``destination_rooms`` row either.
    """
    conn.execute(
        "CREATE TABLE destination_deliveries (destination TEXT PRIMARY KEY NOT NULL,"
        " last_success_ts INTEGER NOT NULL) STRICT"
    )


def _id_floors(conn: sqlite3.Connection) -> None:
    """The top each counter that is its table's largest value plus one had
    when a room's purge deleted rows (:mod:`ranvier.storage.id_floors`), so
    that no stream ordering, state group ID or un-partial-state position is
    handed out twice.
    """
    conn.execute(
        "CREATE TABLE id_floors (counter TEXT PRIMARY KEY NOT NULL,"
        " highest INTEGER NOT NULL) STRICT"
    )


def _media_outside_quota(conn: sqlite3.Connection) -> None:
    """Which media the server stored on a user's behalf (URL preview
    images), so that the upload windows count only what users upload.
    Earlier rows count: none of them is recent enough to matter for long.
    """
    conn.execute("ALTER TABLE media ADD COLUMN outside_quota INTEGER NOT NULL DEFAULT 0")


def _appservice_to_device(conn: sqlite3.Connection) -> None:
    """How far each application service that receives to-device messages
    has been sent the to-device stream (:mod:`ranvier.storage.appservices`);
    NULL for a service not sent them.
    """
    conn.execute("ALTER TABLE appservice_positions ADD COLUMN to_device_position INTEGER")


def _room_upgrade_claims(conn: sqlite3.Connection) -> None:
    """Which room an upgrade is under way for, by whom and to which version
    (:mod:`ranvier.storage.room_upgrades`): the main process and its workers
    each serve upgrades, and the claim keeps them to one at a time per room.
    ``claim_id`` is the upgrade's own, drawn at random.
    """
    conn.execute(
        "CREATE TABLE room_upgrade_claims (room_id TEXT PRIMARY KEY NOT NULL,"
        " claim_id TEXT NOT NULL, user_id TEXT NOT NULL, new_version TEXT NOT NULL,"
        " claimed_ts INTEGER NOT NULL) STRICT"
    )


def _alias_write_ids(conn: sqlite3.Connection) -> None:
    """Each alias's ``write_id``, drawn at random by the write that made it
    (:mod:`ranvier.storage.aliases`): that write, repeated by replication,
    knows its own row by it, where the room, creator and millisecond could
    be a second request's too. Earlier rows get ``''``, which no write draws.
    """
    conn.execute("ALTER TABLE room_aliases ADD COLUMN write_id TEXT NOT NULL DEFAULT ''")


def _profile_fields(conn: sqlite3.Connection) -> None:
    """Profile fields beyond the display name and avatar, each a JSON value
    (:mod:`ranvier.storage.profile_fields`).
    """
    conn.execute(
        "CREATE TABLE profile_fields ("
        " user_id TEXT NOT NULL REFERENCES users (user_id), key TEXT NOT NULL,"
        " value TEXT NOT NULL, PRIMARY KEY (user_id, key)) STRICT"
    )


def _account_moderation(conn: sqlite3.Connection) -> None:
    """An account's lock and suspension (:mod:`ranvier.core.suspension`),
    set by admins and read with every access token."""
    conn.execute("ALTER TABLE users ADD COLUMN locked INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE users ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0")


def _sso_subjects(conn: sqlite3.Connection) -> None:
    """Which local user each identity provider's subject logs in as
    (:mod:`ranvier.storage.sso`): the same subject is always the same user,
    whatever its username claim says later.
    """
    conn.execute(
        "CREATE TABLE sso_subjects (idp_id TEXT NOT NULL, subject TEXT NOT NULL,"
        " user_id TEXT NOT NULL REFERENCES users (user_id), created_ts INTEGER NOT NULL,"
        " PRIMARY KEY (idp_id, subject)) STRICT"
    )


def _sso_sessions(conn: sqlite3.Connection) -> None:
    """Single sign-on logins between the redirect and the callback
    (:mod:`ranvier.storage.sso`), in the database so that any process may
    take the callback; keyed by the SHA-256 of ``state``.
    """
    conn.execute(
        "CREATE TABLE sso_sessions (state_hash BLOB PRIMARY KEY NOT NULL, idp_id TEXT NOT NULL,"
        " nonce TEXT NOT NULL, code_verifier TEXT NOT NULL, redirect_url TEXT NOT NULL,"
        " expires_ts INTEGER NOT NULL) STRICT"
    )
    conn.execute("CREATE INDEX sso_sessions_expiry ON sso_sessions (expires_ts)")


def _redacted_content_pruning(conn: sqlite3.Connection) -> None:
    """Which redactions housekeeping has dealt with, replacing the content
    of the events they name (:mod:`ranvier.storage.redacted_content`); the
    index finds those still waiting, oldest first."""
    conn.execute("ALTER TABLE redactions ADD COLUMN content_pruned INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        "CREATE INDEX redactions_waiting ON redactions (received_ts) WHERE content_pruned = 0"
    )


def _remote_device_lists(conn: sqlite3.Connection) -> None:
    """Other servers' users' device lists, kept while they share a room
    with this server (:mod:`ranvier.storage.remote_device_lists`): one row
    per user, one per device with its keys as the user's server served them.
    """
    conn.execute(
        "CREATE TABLE remote_device_lists (user_id TEXT PRIMARY KEY NOT NULL,"
        " stream_id INTEGER NOT NULL, master_key BLOB, self_signing_key BLOB,"
        " filled_at INTEGER NOT NULL, stale INTEGER NOT NULL) STRICT"
    )
    conn.execute(
        "CREATE TABLE remote_device_keys (user_id TEXT NOT NULL"
        " REFERENCES remote_device_lists (user_id) ON DELETE CASCADE,"
        " device_id TEXT NOT NULL, key_json BLOB NOT NULL,"
        " PRIMARY KEY (user_id, device_id)) STRICT"
    )


def _ratelimit_overrides(conn: sqlite3.Connection) -> None:
    """Admins' per-user overrides of the message rate limit
    (:mod:`ranvier.storage.ratelimit_overrides`)."""
    conn.execute(
        "CREATE TABLE ratelimit_overrides (user_id TEXT PRIMARY KEY NOT NULL"
        " REFERENCES users (user_id), messages_per_second INTEGER NOT NULL,"
        " burst_count INTEGER NOT NULL) STRICT"
    )


def _threepids(conn: sqlite3.Connection) -> None:
    """E-mail addresses on accounts, one account each, and the sessions
    that validate them, keyed by ``sid`` with the token's SHA-256
    (:mod:`ranvier.storage.threepids`)."""
    conn.execute(
        "CREATE TABLE user_threepids (medium TEXT NOT NULL, address TEXT NOT NULL,"
        " user_id TEXT NOT NULL REFERENCES users (user_id), validated_ts INTEGER NOT NULL,"
        " added_ts INTEGER NOT NULL, PRIMARY KEY (medium, address)) STRICT"
    )
    conn.execute("CREATE INDEX user_threepids_user ON user_threepids (user_id)")
    conn.execute(
        "CREATE TABLE threepid_validation_sessions (sid TEXT PRIMARY KEY NOT NULL,"
        " medium TEXT NOT NULL, address TEXT NOT NULL, client_secret TEXT NOT NULL,"
        " token_hash BLOB NOT NULL, send_attempt INTEGER NOT NULL, next_link TEXT,"
        " created_ts INTEGER NOT NULL, expires_ts INTEGER NOT NULL, validated_ts INTEGER)"
        " STRICT"
    )
    conn.execute(
        "CREATE INDEX threepid_validation_sessions_secret"
        " ON threepid_validation_sessions (client_secret, medium, address)"
    )
    conn.execute(
        "CREATE INDEX threepid_validation_sessions_expiry"
        " ON threepid_validation_sessions (expires_ts)"
    )


def _partial_state_device_updates(conn: sqlite3.Connection) -> None:
    """Local users' device-list updates made while a room's state was
    partial, kept until its resync completes
    (:mod:`ranvier.storage.partial_state_device_updates`)."""
    conn.execute(
        "CREATE TABLE partial_state_device_updates (id INTEGER PRIMARY KEY NOT NULL,"
        " room_id TEXT NOT NULL, user_id TEXT NOT NULL, position INTEGER NOT NULL,"
        " point TEXT NOT NULL, sent_to TEXT NOT NULL, edus BLOB NOT NULL,"
        " UNIQUE (room_id, user_id, position)) STRICT"
    )
    conn.execute(
        "CREATE INDEX partial_state_device_updates_room"
        " ON partial_state_device_updates (room_id, id)"
    )


def _guest_accounts(conn: sqlite3.Connection) -> None:
    """Which accounts are guests' (:mod:`ranvier.core.guests`), read with
    every access token; upgrading one clears it."""
    conn.execute("ALTER TABLE users ADD COLUMN is_guest INTEGER NOT NULL DEFAULT 0")


def _shadow_bans(conn: sqlite3.Connection) -> None:
    """Which accounts an admin shadow-banned (:mod:`ranvier.core.shadow_bans`),
    read with every access token as the lock and suspension are."""
    conn.execute("ALTER TABLE users ADD COLUMN shadow_banned INTEGER NOT NULL DEFAULT 0")


def _user_redactions(conn: sqlite3.Connection) -> None:
    """Admins' jobs redacting a user's events, resumed after a restart
    (:mod:`ranvier.storage.admin_redactions`)."""
    conn.execute(
        "CREATE TABLE user_redactions (redact_id TEXT PRIMARY KEY NOT NULL,"
        " user_id TEXT NOT NULL, admin_id TEXT NOT NULL, rooms TEXT NOT NULL, reason TEXT,"
        " per_room_limit INTEGER NOT NULL, before_ts INTEGER, after_ts INTEGER,"
        " use_admin INTEGER NOT NULL, status TEXT NOT NULL, failed TEXT NOT NULL, error TEXT,"
        " created_ts INTEGER NOT NULL, finished_ts INTEGER) STRICT"
    )
    conn.execute("CREATE INDEX user_redactions_user ON user_redactions (user_id, status)")


def _replaced_state(conn: sqlite3.Connection) -> None:
    """The state entry each state event replaced, the ``replaces_state``
    and ``prev_content`` of timelines (:mod:`ranvier.storage.replaced_state`),
    filled from the events stored so far."""
    conn.execute("ALTER TABLE event_state ADD COLUMN replaces_state TEXT")
    # Imported here, as for migration 8.
    from .replaced_state import fill_replaced_state

    fill_replaced_state(conn)


def _appservice_room_lists(conn: sqlite3.Connection) -> None:
    """The rooms application services publish in their networks' room
    lists, apart from the server's own (:mod:`ranvier.storage.client_data`)."""
    conn.execute(
        "CREATE TABLE appservice_room_list (appservice_id TEXT NOT NULL,"
        " network_id TEXT NOT NULL, room_id TEXT NOT NULL REFERENCES rooms (room_id),"
        " added_ts INTEGER NOT NULL, PRIMARY KEY (appservice_id, network_id, room_id)) STRICT"
    )
    conn.execute("CREATE INDEX appservice_room_list_room ON appservice_room_list (room_id)")


def _erased_users(conn: sqlite3.Connection) -> None:
    """Accounts deactivated with ``erase``, whose events those who join
    after are served redacted (:mod:`ranvier.storage.erasure`)."""
    conn.execute(
        "CREATE TABLE erased_users (user_id TEXT PRIMARY KEY NOT NULL"
        " REFERENCES users (user_id)) WITHOUT ROWID, STRICT"
    )


def _uia_sessions(conn: sqlite3.Connection) -> None:
    """User-interactive authentication sessions (:mod:`ranvier.storage.uia`):
    whose, for which request, the stages done out of band (single sign-on)
    and, once the request succeeded, its answer, so that a retry is answered
    and not carried out twice. A registration's session is claimed with the
    account it made, in the account's write. Single sign-on logins gain the
    session they confirm and the browser they were started in."""
    conn.execute(
        "CREATE TABLE uia_sessions (session_id TEXT PRIMARY KEY NOT NULL,"
        " operation TEXT NOT NULL, user_id TEXT, token_hash BLOB,"
        " completed TEXT NOT NULL DEFAULT '[]', request_hash BLOB, result TEXT,"
        " write_id TEXT, expires_ts INTEGER NOT NULL) STRICT"
    )
    conn.execute("CREATE INDEX uia_sessions_expiry ON uia_sessions (expires_ts)")
    conn.execute("ALTER TABLE sso_sessions ADD COLUMN uia_session TEXT")
    conn.execute("ALTER TABLE sso_sessions ADD COLUMN browser_hash BLOB")


def _knock_servers(conn: sqlite3.Connection) -> None:
    """The server each out-of-band knock was sent through
    (:mod:`ranvier.core.out_of_band`): only its refusal of the knock is
    believed. Knocks kept before have none recorded, and none is guessed.
    """
    conn.execute("ALTER TABLE out_of_band_memberships ADD COLUMN sent_through TEXT")


def _remote_device_names(conn: sqlite3.Connection) -> None:
    """The display names other servers give their users' devices, kept
    with the devices' keys (:mod:`ranvier.storage.remote_device_lists`) to
    be shown in ``/keys/query`` answers. Lists kept before have none until
    fetched or updated again.
    """
    conn.execute("ALTER TABLE remote_device_keys ADD COLUMN display_name TEXT")


def _pdu_outbox(conn: sqlite3.Connection) -> None:
    """PDUs of rooms purged here still owed to other servers
    (:mod:`ranvier.storage.pdu_outbox`): our users' leaves, which catching
    up can no longer send once the room's events are gone. Not tied to a
    room's tables, so the purge that writes them keeps them; deleted once
    the destination took them.
    """
    run = conn.execute
    run(
        "CREATE TABLE pdu_outbox ("
        " position INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,"
        " destination TEXT NOT NULL, event_id TEXT NOT NULL, room_id TEXT NOT NULL,"
        " pdu BLOB NOT NULL, UNIQUE (destination, event_id)) STRICT"
    )
    run("CREATE INDEX pdu_outbox_destination ON pdu_outbox (destination, position)")


def _puppet_tokens(conn: sqlite3.Connection) -> None:
    """Access tokens an admin was given to act as another user
    (:meth:`ranvier.core.accounts.Accounts.issue_puppet_token`), apart from
    the user's devices and their tokens: no device of the user's, not
    logged out with them, but with the admin's (Synapse's puppet tokens).
    """
    run = conn.execute
    run(
        "CREATE TABLE puppet_tokens (token_hash BLOB PRIMARY KEY NOT NULL,"
        " user_id TEXT NOT NULL REFERENCES users (user_id),"
        " admin_id TEXT NOT NULL REFERENCES users (user_id),"
        " created_ts INTEGER NOT NULL, expires_ts INTEGER) STRICT"
    )
    run("CREATE INDEX puppet_tokens_user ON puppet_tokens (user_id)")
    run("CREATE INDEX puppet_tokens_admin ON puppet_tokens (admin_id)")


def _client_transaction_tokens(conn: sqlite3.Connection) -> None:
    """Client transactions keyed by the access token too
    (:mod:`ranvier.core.client_txns`): those of a request made with no
    device (a puppet token, an application service naming none) are its
    token's; the column is empty beside a device. The rows of device-less
    requests kept so far cannot be told apart by token and are dropped:
    all that is lost is the recognition of a retry of one of those sends.
    """
    run = conn.execute
    run(
        "CREATE TABLE client_transactions_by_token (user_id TEXT NOT NULL,"
        " device_id TEXT NOT NULL, token_hash BLOB NOT NULL DEFAULT x'', txn_id TEXT NOT NULL,"
        " room_id TEXT NOT NULL, event_id TEXT NOT NULL, created_ts INTEGER NOT NULL,"
        " PRIMARY KEY (user_id, device_id, token_hash, txn_id)) STRICT"
    )
    run(
        "INSERT INTO client_transactions_by_token"
        " SELECT user_id, device_id, x'', txn_id, room_id, event_id, created_ts"
        " FROM client_transactions WHERE device_id != ''"
    )
    run("DROP TABLE client_transactions")
    run("ALTER TABLE client_transactions_by_token RENAME TO client_transactions")
    _index(conn, "client_transactions", ["created_ts"])


def _to_device_transaction_tokens(conn: sqlite3.Connection) -> None:
    """To-device transactions keyed by the access token too, as client
    transactions are since version 61: a device-less token's are its own.
    Rows of device-less requests kept so far cannot be given their token
    and are dropped: all that is lost is the recognition of a retry.
    """
    run = conn.execute
    run(
        "CREATE TABLE to_device_transactions_by_token (user_id TEXT NOT NULL,"
        " device_id TEXT NOT NULL, token_hash BLOB NOT NULL DEFAULT x'', txn_id TEXT NOT NULL,"
        " created_ts INTEGER NOT NULL, PRIMARY KEY (user_id, device_id, token_hash, txn_id))"
        " STRICT"
    )
    run(
        "INSERT INTO to_device_transactions_by_token"
        " SELECT user_id, device_id, x'', txn_id, created_ts"
        " FROM to_device_transactions WHERE device_id != ''"
    )
    run("DROP TABLE to_device_transactions")
    run("ALTER TABLE to_device_transactions_by_token RENAME TO to_device_transactions")


def _search_scrub(conn: sqlite3.Connection) -> None:
    """Where the full-text index's scrubs stand
    (:mod:`ranvier.storage.search_scrub`): how many were asked for, the one
    the merge under way was started for, the last finished. One is asked
    for at once, for the purges and pruned redactions made before, whose
    words may still be in the index's segments.
    """
    conn.execute(
        "CREATE TABLE search_scrub (id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),"
        " requested INTEGER NOT NULL, started INTEGER NOT NULL, done INTEGER NOT NULL) STRICT"
    )
    conn.execute("INSERT INTO search_scrub (id, requested, started, done) VALUES (1, 1, 0, 0)")


def _prev_edges_by_ordering(conn: sqlite3.Connection) -> None:
    """Prev edges found from the prev event's stream ordering
    (``prev_ordering``), where it is stored, rather than from its ID.

    Event IDs are hashes: an index by them takes each new edge to a random
    leaf, a page of its own to write at every commit, some 36 of the 124
    pages a write of 50 events took. Prev events are recent, so their
    orderings fall near the end of the new index. An edge whose prev event
    is not stored when it is written has none; the partial index by ID
    finds those few, and storing the prev event fills them in. The key
    follows an ordering that changes (an outlier joining the DAG, a
    backfilled event), and is emptied if the prev event is deleted.
    """
    run = conn.execute
    run(
        "ALTER TABLE event_prev_edges ADD COLUMN prev_ordering INTEGER"
        " REFERENCES events (stream_ordering) ON UPDATE CASCADE ON DELETE SET NULL"
    )
    run(
        "UPDATE event_prev_edges SET prev_ordering ="
        " (SELECT stream_ordering FROM events WHERE event_id = event_prev_edges.prev_event_id)"
    )
    run("CREATE INDEX event_prev_edges_prev_ordering ON event_prev_edges (prev_ordering)")
    run(
        "CREATE INDEX event_prev_edges_unstored_prev ON event_prev_edges (prev_event_id)"
        " WHERE prev_ordering IS NULL"
    )
    run("DROP INDEX event_prev_edges_prev")
    # The view of version 11 writes the new column too.
    run("DROP TRIGGER event_edges_insert")
    run(
        "CREATE TRIGGER event_edges_insert INSTEAD OF INSERT ON event_edges BEGIN"
        " INSERT INTO event_prev_edges (event_ordering, prev_event_id, room_id, prev_ordering)"
        " VALUES ((SELECT stream_ordering FROM events WHERE event_id = NEW.event_id),"
        " NEW.prev_event_id, NEW.room_id,"
        " (SELECT stream_ordering FROM events WHERE event_id = NEW.prev_event_id)); END"
    )


#: Migration n (1-based) brings a database from version n - 1 to n.
MIGRATIONS: Sequence[Migration] = (
    _rooms_and_events,
    _state,
    _partial_state,
    _federation,
    _outgoing_federation,
    _resync_progress,
    _client_api,
    _redactions,
    _client_data,
    _receipts,
    _rows_keyed_by_ordering,
    _end_to_end,
    _to_device_outbox,
    _room_key_backups,
    _media,
    _pushers,
    _reports_and_openid,
    _event_relations,
    _event_search,
    _events_by_timestamp,
    _application_services,
    _url_previews,
    _blocked_rooms,
    _media_upkeep,
    _sliding_sync,
    _registration_tokens,
    _dehydrated_devices,
    _user_reports,
    _server_notice_rooms,
    _refresh_and_login_tokens,
    _forgotten_rooms,
    _pusher_devices,
    _out_of_band_memberships,
    _appservice_receipts,
    _destination_deliveries,
    _id_floors,
    _media_outside_quota,
    _appservice_to_device,
    _room_upgrade_claims,
    _alias_write_ids,
    _profile_fields,
    _account_moderation,
    _sso_subjects,
    _sso_sessions,
    _redacted_content_pruning,
    _remote_device_lists,
    _ratelimit_overrides,
    _threepids,
    _partial_state_device_updates,
    _guest_accounts,
    _shadow_bans,
    _user_redactions,
    _replaced_state,
    _appservice_room_lists,
    _erased_users,
    _uia_sessions,
    _knock_servers,
    _remote_device_names,
    _pdu_outbox,
    _puppet_tokens,
    _client_transaction_tokens,
    _search_scrub,
    _to_device_transaction_tokens,
    _prev_edges_by_ordering,
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The version a database is at: 0 when it is empty."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


@contextmanager
def _atomic(conn: sqlite3.Connection) -> Iterator[None]:
    """One transaction, or a savepoint inside the caller's if one is open."""
    if conn.in_transaction:
        conn.execute("SAVEPOINT migration")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO SAVEPOINT migration")
            conn.execute("RELEASE SAVEPOINT migration")
            raise
        conn.execute("RELEASE SAVEPOINT migration")
        return
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection, *, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to ``target``, one transaction per migration.

    ``conn`` must have no transaction open. Returns the version reached. A
    database newer than this code is refused rather than written to.
    """
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"no schema version {target}: this code knows 0 to {SCHEMA_VERSION}")
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database is at schema version {current}, newer than this code's "
            f"{SCHEMA_VERSION}: refusing to write to it"
        )
    for version in range(current + 1, target + 1):
        with _atomic(conn):
            MIGRATIONS[version - 1](conn)
            conn.execute(f"PRAGMA user_version = {version:d}")
    return max(current, target)
