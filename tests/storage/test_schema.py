import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ranvier.storage import replaced_state
from ranvier.storage.connections import open_writer
from ranvier.storage.schema import MIGRATIONS, SCHEMA_VERSION, migrate, schema_version

# What each version adds, written out here independently of the migrations.
TABLES_ADDED = {
    1: {"rooms", "events", "event_edges", "event_auth"},
    2: {
        "state_groups",
        "state_group_rows",
        "event_to_state_groups",
        "current_state",
        "current_state_groups",
        "forward_extremities",
    },
    3: {"partial_state_rooms", "partial_state_rooms_servers", "partial_state_events"},
    4: {"received_transactions", "server_keys", "destinations"},
    5: {"destination_rooms"},
    6: {"resync_progress"},
    7: {
        "users",
        "devices",
        "access_tokens",
        "client_transactions",
        "room_aliases",
        "user_filters",
        "un_partial_stated_rooms",
    },
    8: {"redactions"},
    9: {"profiles", "account_data", "room_list"},
    10: {"receipts"},
    11: {"event_prev_edges", "event_auth_edges", "event_state"},
    12: {
        "e2e_device_keys",
        "e2e_one_time_keys",
        "e2e_fallback_keys",
        "e2e_cross_signing_keys",
        "to_device_inbox",
        "to_device_transactions",
        "device_list_changes",
    },
    13: {"to_device_outbox"},
    14: {"room_key_backup_versions", "room_key_backup_keys"},
    15: {"media", "media_thumbnails"},
    16: {"pushers", "push_position"},
    17: {"event_reports", "openid_tokens"},
    18: {"event_relations"},
    # An FTS5 table and the tables it keeps its index in.
    19: {
        "event_search",
        "event_search_config",
        "event_search_content",
        "event_search_data",
        "event_search_docsize",
        "event_search_idx",
    },
    # An index of the events by timestamp, no table.
    20: set(),
    21: {"appservice_positions", "appservice_transactions"},
    22: {"url_previews"},
    23: {"blocked_rooms"},
    24: {"media_quarantine"},
    25: {"sliding_sync_connections", "sliding_sync_positions", "sliding_sync_rooms"},
    26: {"registration_tokens", "registration_token_sessions"},
    27: {"dehydrated_devices"},
    28: {"user_reports"},
    29: {"server_notice_rooms"},
    30: {"refresh_tokens", "login_tokens"},
    31: {"forgotten_rooms"},
    # A column of pushers, no table.
    32: set(),
    33: {"out_of_band_memberships"},
    # A column of appservice_positions, no table.
    34: set(),
    35: {"destination_deliveries"},
    36: {"id_floors"},
    # A column of media, no table.
    37: set(),
    # A column of appservice_positions, no table.
    38: set(),
    39: {"room_upgrade_claims"},
    # A column of room_aliases, no table.
    40: set(),
    41: {"profile_fields"},
    # Columns of users, no table.
    42: set(),
    43: {"sso_subjects"},
    44: {"sso_sessions"},
    # A column of redactions, no table.
    45: set(),
    46: {"remote_device_lists", "remote_device_keys"},
    47: {"ratelimit_overrides"},
    48: {"user_threepids", "threepid_validation_sessions"},
    49: {"partial_state_device_updates"},
    # A column of users, no table.
    50: set(),
    # A column of users, no table.
    51: set(),
    52: {"user_redactions"},
    # A column of event_state, no table.
    53: set(),
    54: {"appservice_room_list"},
    55: {"erased_users"},
    56: {"uia_sessions"},
    # A column of out_of_band_memberships, no table.
    57: set(),
    # A column of remote_device_keys, no table.
    58: set(),
    59: {"pdu_outbox"},
    60: {"puppet_tokens"},
    # client_transactions, rebuilt with a column more.
    61: set(),
    62: {"search_scrub"},
    # to_device_transactions, rebuilt with a column more.
    63: set(),
    # A column and indexes on event_prev_edges.
    64: set(),
}
# Tables a version turns into views of the same name and columns.
TABLES_MADE_VIEWS = {11: {"event_edges", "event_auth", "event_to_state_groups"}}


def _tables_at(version: int) -> set[str]:
    tables: set[str] = set()
    for v in range(1, version + 1):
        tables = (tables | TABLES_ADDED[v]) - TABLES_MADE_VIEWS.get(v, set())
    return tables


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }


def _fill(conn: sqlite3.Connection, version: int) -> None:
    """Rows for the tables of ``version``, each consistent with the keys."""
    run = conn.execute
    if version == 1:
        run("INSERT INTO rooms VALUES ('!r:x', '10')")
        run(
            "INSERT INTO events (event_id, room_id, type, state_key, sender, depth,"
            " origin_server_ts, json, outlier, soft_failed, rejected_reason)"
            " VALUES ('$e', '!r:x', 'm.room.create', '', '@a:x', 1, 5, x'7b7d', 0, 0, NULL)"
        )
        run("INSERT INTO event_edges VALUES ('$e', '$p', '!r:x')")
        run("INSERT INTO event_auth VALUES ('$e', '$a', '!r:x')")
    elif version == 2:
        run("INSERT INTO state_groups VALUES (1, '!r:x', NULL, 0, 1)")
        run("INSERT INTO state_group_rows VALUES (1, 'm.room.create', '', '$e')")
        run("INSERT INTO event_to_state_groups VALUES ('$e', 1, 1)")
        run("INSERT INTO current_state VALUES ('!r:x', 'm.room.create', '', '$e')")
        run("INSERT INTO current_state_groups VALUES ('!r:x', 1)")
        run("INSERT INTO forward_extremities VALUES ('!r:x', '$e')")
    elif version == 3:
        run("INSERT INTO partial_state_rooms VALUES ('!r:x', '$e', 'hs.example')")
        run("INSERT INTO partial_state_rooms_servers VALUES ('!r:x', 'hs.example')")
        run("INSERT INTO partial_state_events VALUES ('$e', '!r:x')")
    elif version == 4:
        run("INSERT INTO received_transactions VALUES ('hs.example', 't1', 200, x'7b7d', 7)")
        run(
            "INSERT INTO server_keys VALUES"
            " ('hs.example', 'ed25519:a', x'00', 9, NULL, 'hs.example', 8, x'7b7d')"
        )
        run("INSERT INTO destinations VALUES ('hs.example', NULL, 1, 2)")
    elif version == 5:
        run("INSERT INTO destination_rooms VALUES ('hs.example', '!r:x', 1, NULL)")
    elif version == 6:
        run("INSERT INTO resync_progress VALUES ('!r:x', 'walking', NULL, 1, 2, 1, NULL, 5)")
    elif version == 7:
        run(
            "INSERT INTO users (user_id, password_hash, admin, created_ts, deactivated)"
            " VALUES ('@a:x', 'hash', 0, 5, 0)"
        )
        run("INSERT INTO devices VALUES ('@a:x', 'DEV', NULL, 5, NULL)")
        run(
            "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
            " VALUES (x'00', '@a:x', 'DEV', 5)"
        )
        run(
            "INSERT INTO client_transactions (user_id, device_id, txn_id, room_id, event_id,"
            " created_ts) VALUES ('@a:x', 'DEV', 't1', '!r:x', '$e', 5)"
        )
        run(
            "INSERT INTO room_aliases (alias, room_id, creator, created_ts)"
            " VALUES ('#a:x', '!r:x', '@a:x', 5)"
        )
        run("INSERT INTO user_filters VALUES ('@a:x', 0, x'7b7d')")
        run("INSERT INTO un_partial_stated_rooms VALUES ('!r:x', 1)")
    elif version == 8:
        run(
            "INSERT INTO redactions (event_id, redacts, room_id, sender_may_redact,"
            " received_ts) VALUES ('$e', '$target', '!r:x', 0, 5)"
        )
    elif version == 9:
        run("INSERT INTO profiles VALUES ('@a:x', 'Alice', NULL)")
        run(
            "INSERT INTO account_data (user_id, room_id, type, content) VALUES"
            " ('@a:x', '', 'm.direct', x'7b7d')"
        )
        run("INSERT INTO room_list VALUES ('!r:x', 5)")
    elif version == 10:
        run(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts)"
            " VALUES ('!r:x', 'm.read', '@a:x', '', '$e', 5)"
        )
    elif version == 11:
        run(
            "INSERT INTO events (event_id, room_id, type, sender, depth,"
            " origin_server_ts, json, outlier, soft_failed)"
            " VALUES ('$f', '!r:x', 'm.room.message', '@a:x', 2, 6, x'7b7d', 0, 0)"
        )
        ordering = run("SELECT stream_ordering FROM events WHERE event_id = '$f'").fetchone()[0]
        run("INSERT INTO event_prev_edges VALUES (?, '$e', '!r:x')", (ordering,))
        run("INSERT INTO event_auth_edges VALUES (?, '$e', '!r:x')", (ordering,))
        # Columns named: a later version adds one.
        run(
            "INSERT INTO event_state (event_ordering, state_group_before, state_group_after)"
            " VALUES (?, 1, 1)",
            (ordering,),
        )
    elif version == 12:
        run("INSERT INTO e2e_device_keys VALUES ('@a:x', 'DEV', x'7b7d')")
        run("INSERT INTO e2e_one_time_keys VALUES ('@a:x', 'DEV', 'alg', 'k1', x'7b7d')")
        run("INSERT INTO e2e_fallback_keys VALUES ('@a:x', 'DEV', 'alg', 'k2', x'7b7d', 0)")
        run("INSERT INTO e2e_cross_signing_keys VALUES ('@a:x', 'master', x'7b7d')")
        run(
            "INSERT INTO to_device_inbox (user_id, device_id, message)"
            " VALUES ('@a:x', 'DEV', x'7b7d')"
        )
        # Columns named: a later version adds one.
        run(
            "INSERT INTO to_device_transactions (user_id, device_id, txn_id, created_ts)"
            " VALUES ('@a:x', 'DEV', 't1', 5)"
        )
        run("INSERT INTO device_list_changes (user_id) VALUES ('@a:x')")
    elif version == 13:
        run("INSERT INTO to_device_outbox (destination, edu) VALUES ('hs.example', x'7b7d')")
    elif version == 14:
        run("INSERT INTO room_key_backup_versions VALUES ('@a:x', 1, 'alg', x'7b7d', 0, 0, 'c')")
        run("INSERT INTO room_key_backup_keys VALUES ('@a:x', 1, '!r:x', 'sess', 0, 0, 1, x'7b7d')")
    elif version == 15:
        run(
            "INSERT INTO media (origin, media_id, user_id, content_type, upload_name, size,"
            " created_ts, uploaded_ts) VALUES ('x', 'm1', '@a:x', 'image/png', 'a.png', 3, 5, 6)"
        )
        run("INSERT INTO media_thumbnails VALUES ('x', 'm1', 32, 32, 'crop', 'image/png', 2)")
    elif version == 16:
        run(
            "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name,"
            " device_display_name, profile_tag, lang, data_json, pushkey_ts)"
            " VALUES ('@a:x', 'app', 'key', 'http', 'A', 'D', NULL, 'en', x'7b7d', 5)"
        )
        run("INSERT INTO push_position VALUES (1, 7)")
    elif version == 17:
        run("INSERT INTO event_reports VALUES (1, 'r1', '!r:x', '$e', '@a:x', 'spam', -100, 5)")
        run("INSERT INTO event_reports VALUES (2, 'r2', '!r:x', NULL, '@a:x', NULL, NULL, 6)")
        run("INSERT INTO openid_tokens VALUES (x'00', '@a:x', 3600005)")
    elif version == 18:
        run(
            "INSERT INTO event_relations SELECT stream_ordering, event_id, '$e', 'm.thread',"
            " room_id FROM events WHERE event_id = '$f'"
        )
    elif version == 19:
        run("INSERT INTO event_search VALUES ('hello', '$f', '!r:x', 'content.body')")
    elif version == 23:
        run("INSERT INTO blocked_rooms VALUES ('!r:x', '@a:x', 7)")
    elif version == 24:
        run("UPDATE media SET last_access_ts = 9, safe_from_quarantine = 1")
        run("INSERT INTO media_quarantine VALUES ('x', 'm2', '@a:x', 8)")
    elif version == 25:
        run("INSERT INTO sliding_sync_connections VALUES (1, '@a:x', 'DEV', '')")
        run("INSERT INTO sliding_sync_positions VALUES (3, 1, 'n', 's1_0', 5)")
        run("INSERT INTO sliding_sync_rooms VALUES (1, '!r:x', 3, 9, '[1,[],[]]')")
    elif version == 26:
        run("INSERT INTO registration_tokens VALUES ('abc', 2, 1, NULL)")
        run("INSERT INTO registration_token_sessions VALUES ('s', 'abc', 9, NULL)")
    elif version == 27:
        run("INSERT INTO dehydrated_devices VALUES ('@a:x', 'DEV', x'7b7d', 'u1', NULL, NULL, 4)")
    elif version == 28:
        run("INSERT INTO user_reports VALUES (1, 'r1', '@b:x', '@a:x', 'spam', 5)")
    elif version == 29:
        run("INSERT INTO server_notice_rooms VALUES ('@a:x', '!n:x', 6)")
    elif version == 30:
        run("INSERT INTO access_tokens VALUES (x'01', '@a:x', 'DEV', 5, 9)")
        run("INSERT INTO refresh_tokens VALUES (x'02', x'01', NULL)")
        run("INSERT INTO login_tokens VALUES (x'03', '@a:x', 9)")
    elif version == 31:
        run("INSERT INTO forgotten_rooms VALUES ('@a:x', '!r:x')")
    elif version == 32:
        run("UPDATE pushers SET device_id = 'DEV'")
        run(
            "INSERT INTO pushers VALUES"
            " ('@a:x', 'app', 'key2', 'http', 'A', 'D', NULL, 'en', x'7b7d', 5, 'DEV')"
        )
    elif version == 33:
        run(
            "INSERT INTO out_of_band_memberships (event_id, room_id, user_id)"
            " VALUES ('$e', '!r:x', '@a:x')"
        )
    elif version == 34:
        run(
            "INSERT INTO appservice_positions"
            " (service_id, stream_ordering, next_txn_id, receipts_position)"
            " VALUES ('bridge', 5, 2, 1)"
        )
    elif version == 35:
        run("INSERT INTO destination_deliveries VALUES ('hs.example', 5)")
    elif version == 36:
        run("INSERT INTO id_floors VALUES ('events', 7)")
    elif version == 37:
        run("UPDATE media SET outside_quota = 1")
    elif version == 38:
        run("UPDATE appservice_positions SET to_device_position = 3")
    elif version == 39:
        run("INSERT INTO room_upgrade_claims VALUES ('!r:x', 'c', '@a:x', '11', 5)")
    elif version == 40:
        run("UPDATE room_aliases SET write_id = 'w'")
    elif version == 41:
        run("INSERT INTO profile_fields VALUES ('@a:x', 'm.tz', '\"Europe/Paris\"')")
    elif version == 42:
        run("UPDATE users SET locked = 1, suspended = 1")
    elif version == 43:
        run("INSERT INTO sso_subjects VALUES ('idp', 'sub', '@a:x', 5)")
    elif version == 44:
        # Columns named: a later version adds some.
        run(
            "INSERT INTO sso_sessions"
            " (state_hash, idp_id, nonce, code_verifier, redirect_url, expires_ts)"
            " VALUES (x'01', 'idp', 'n', 'v', 'https://c.x/', 9)"
        )
    elif version == 45:
        run("UPDATE redactions SET content_pruned = 1")
    elif version == 46:
        run("INSERT INTO remote_device_lists VALUES ('@b:y', 7, x'7b7d', NULL, 5, 0)")
        run(
            "INSERT INTO remote_device_keys (user_id, device_id, key_json)"
            " VALUES ('@b:y', 'DEV', x'7b7d')"
        )
    elif version == 47:
        run("INSERT INTO ratelimit_overrides VALUES ('@a:x', 0, 0)")
    elif version == 48:
        run("INSERT INTO user_threepids VALUES ('email', 'a@x.org', '@a:x', 4, 5)")
        run(
            "INSERT INTO threepid_validation_sessions"
            " VALUES ('s', 'email', 'a@x.org', 'c', x'01', 1, NULL, 4, 9, NULL)"
        )
    elif version == 49:
        run(
            "INSERT INTO partial_state_device_updates"
            " (room_id, user_id, position, point, sent_to, edus)"
            " VALUES ('!r:x', '@a:x', 3, '[\"$e\"]', '[\"y\"]', x'5b5d')"
        )
    elif version == 50:
        run("UPDATE users SET is_guest = 1")
    elif version == 51:
        run("UPDATE users SET shadow_banned = 1")
    elif version == 52:
        run(
            "INSERT INTO user_redactions VALUES ('r', '@a:x', '@b:x', '[]', NULL, 10, NULL,"
            " NULL, 0, 'active', '{}', NULL, 5, NULL)"
        )
    elif version == 53:
        run("UPDATE event_state SET replaces_state = '$e' WHERE state_group_before = 1")
    elif version == 54:
        run("INSERT INTO appservice_room_list VALUES ('bridge', 'net', '!r:x', 5)")
    elif version == 55:
        run("INSERT INTO erased_users VALUES ('@a:x')")
    elif version == 56:
        run(
            "INSERT INTO uia_sessions (session_id, operation, user_id, expires_ts)"
            " VALUES ('s', 'register', '@a:x', 9)"
        )
        run("UPDATE sso_sessions SET uia_session = 's', browser_hash = x'02'")
    elif version == 57:
        run("UPDATE out_of_band_memberships SET sent_through = 'x'")
    elif version == 58:
        run("UPDATE remote_device_keys SET display_name = 'phone'")
    elif version == 59:
        run(
            "INSERT INTO pdu_outbox (destination, event_id, room_id, pdu)"
            " VALUES ('b.test', '$e', '!r:x', x'7b7d')"
        )
    elif version == 60:
        run("INSERT INTO puppet_tokens VALUES (x'03', '@a:x', '@a:x', 5, NULL)")


def _views(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}


def _row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        table: conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
        for table in _tables(conn) | _views(conn)
    }


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = open_writer(tmp_path / "schema.db")
    yield connection
    connection.close()


def test_versions_are_numbered_from_one() -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS) == len(TABLES_ADDED)


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
def test_each_version_from_an_empty_database(raw: sqlite3.Connection, version: int) -> None:
    assert schema_version(raw) == 0
    assert migrate(raw, target=version) == version
    assert schema_version(raw) == version
    assert _tables(raw) == _tables_at(version)
    assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
def test_each_version_from_the_one_before_keeps_the_data(
    raw: sqlite3.Connection, version: int
) -> None:
    migrate(raw, target=version - 1)
    for earlier in range(1, version):
        _fill(raw, earlier)
    before = _row_counts(raw)

    assert migrate(raw, target=version) == version

    after = _row_counts(raw)
    assert {table: after[table] for table in before} == before
    assert set(after) - set(before) == TABLES_ADDED[version]
    assert _views(raw) >= TABLES_MADE_VIEWS.get(version, set())
    assert _tables(raw) == _tables_at(version)
    # The new tables accept rows that reference the old ones.
    _fill(raw, version)
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []


def test_version_11_keeps_edges_and_groups_under_the_old_names(
    raw: sqlite3.Connection,
) -> None:
    migrate(raw, target=10)
    for version in range(1, 11):
        _fill(raw, version)
    migrate(raw)
    # The rows written before, read through the views as before.
    assert raw.execute("SELECT * FROM event_edges").fetchall() == [("$e", "$p", "!r:x")]
    assert raw.execute("SELECT * FROM event_auth").fetchall() == [("$e", "$a", "!r:x")]
    assert raw.execute("SELECT * FROM event_to_state_groups").fetchall() == [("$e", 1, 1)]
    # Inserts through the views land keyed by the event's ordering ...
    raw.execute("INSERT INTO event_auth VALUES ('$e', '$b', '!r:x')")
    (ordering,) = raw.execute("SELECT stream_ordering FROM events WHERE event_id = '$e'").fetchone()
    assert raw.execute(
        "SELECT auth_event_id FROM event_auth_edges WHERE event_ordering = ? ORDER BY 1",
        (ordering,),
    ).fetchall() == [("$a",), ("$b",)]
    # ... and one for an event not stored is refused.
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute("INSERT INTO event_edges VALUES ('$nowhere', '$p', '!r:x')")
    # An event given another ordering takes its rows along.
    raw.execute("UPDATE events SET stream_ordering = -5 WHERE event_id = '$e'")
    assert raw.execute("SELECT * FROM event_edges").fetchall() == [("$e", "$p", "!r:x")]
    assert raw.execute("SELECT COUNT(*) FROM event_auth WHERE event_id = '$e'").fetchone() == (2,)
    assert raw.execute("SELECT * FROM event_to_state_groups").fetchall() == [("$e", 1, 1)]
    assert raw.execute("SELECT DISTINCT event_ordering FROM event_state").fetchall() == [(-5,)]
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []


def test_migrating_again_changes_nothing(raw: sqlite3.Connection) -> None:
    migrate(raw)
    _fill(raw, 1)
    assert migrate(raw) == SCHEMA_VERSION
    assert _row_counts(raw)["events"] == 1


def test_a_newer_database_is_refused(raw: sqlite3.Connection) -> None:
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this code"):
        migrate(raw)


def test_unknown_target_is_refused(raw: sqlite3.Connection) -> None:
    with pytest.raises(ValueError, match="no schema version"):
        migrate(raw, target=SCHEMA_VERSION + 1)


def test_a_failing_migration_is_undone_whole(raw: sqlite3.Connection) -> None:
    migrate(raw, target=2)
    # A stray table with the name migration 3 creates second makes it fail
    # half-way through.
    raw.execute("CREATE TABLE partial_state_rooms_servers (x)")
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        migrate(raw)
    assert schema_version(raw) == 2
    assert "partial_state_rooms" not in _tables(raw)


def test_every_table_is_strict_with_non_null_keys(raw: sqlite3.Connection) -> None:
    migrate(raw)
    # A full-text index is a virtual table, kept in tables SQLite makes and
    # names after it: those are not the schema's to declare.
    virtual = [
        name
        for (name,) in raw.execute(
            "SELECT name FROM sqlite_master WHERE sql LIKE 'CREATE VIRTUAL TABLE%'"
        )
    ]
    assert virtual == ["event_search"]
    for table in _tables(raw):
        if any(table == name or table.startswith(f"{name}_") for name in virtual):
            continue
        (sql,) = raw.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        assert sql.rstrip().endswith("STRICT"), table
        for _, name, _, notnull, _, pk in raw.execute(f'PRAGMA table_info("{table}")'):
            if pk:
                assert notnull, (table, name)


def test_partial_state_foreign_key_fails_both_ways(raw: sqlite3.Connection) -> None:
    migrate(raw)
    _fill(raw, 1)
    raw.execute("INSERT INTO partial_state_rooms VALUES ('!r:x', '$e', 'hs.example')")
    raw.execute("INSERT INTO partial_state_events VALUES ('$e', '!r:x')")
    # The room row cannot go while an event refers to it ...
    with pytest.raises(sqlite3.IntegrityError) as deleting:
        raw.execute("DELETE FROM partial_state_rooms WHERE room_id = '!r:x'")
    assert deleting.value.sqlite_errorcode == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
    # ... and nothing cascades: the event row is still there.
    assert raw.execute("SELECT COUNT(*) FROM partial_state_events").fetchone() == (1,)
    raw.execute("DELETE FROM partial_state_events")
    raw.execute("DELETE FROM partial_state_rooms")
    # Once it is gone, an event cannot claim it.
    with pytest.raises(sqlite3.IntegrityError) as inserting:
        raw.execute("INSERT INTO partial_state_events VALUES ('$e', '!r:x')")
    assert inserting.value.sqlite_errorcode == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY


def test_version_18_fills_relations_from_the_events_stored(raw: sqlite3.Connection) -> None:
    migrate(raw, target=17)
    raw.execute("INSERT INTO rooms VALUES ('!r:x', '10')")

    def event(event_id: str, content: str) -> None:
        raw.execute(
            "INSERT INTO events (event_id, room_id, type, sender, depth,"
            " origin_server_ts, json, outlier, soft_failed)"
            " VALUES (?, '!r:x', 'm.room.message', '@a:x', 1, 5, ?, 0, 0)",
            (event_id, f'{{"content": {content}}}'.encode()),
        )

    event("$root", '{"body": "root"}')
    event("$reply", '{"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}}')
    event("$like", '{"m.relates_to": {"rel_type": "m.annotation", "event_id": "$root"}}')
    event("$quote", '{"m.relates_to": {"m.in_reply_to": {"event_id": "$root"}}}')
    event("$odd", '{"m.relates_to": {"rel_type": 5, "event_id": "$root"}}')
    event("$text", '{"body": "\\"m.relates_to\\" is only words"}')

    migrate(raw, target=18)

    rows = raw.execute(
        "SELECT e.event_id, r.event_id, r.relates_to_id, r.rel_type, r.room_id"
        " FROM event_relations AS r JOIN events AS e ON e.stream_ordering = r.stream_ordering"
        " ORDER BY r.stream_ordering"
    ).fetchall()
    assert rows == [
        ("$reply", "$reply", "$root", "m.thread", "!r:x"),
        ("$like", "$like", "$root", "m.annotation", "!r:x"),
    ]


def test_version_19_indexes_the_searchable_keys_of_the_events_stored(
    raw: sqlite3.Connection,
) -> None:
    migrate(raw, target=18)
    raw.execute("INSERT INTO rooms VALUES ('!r:x', '10')")

    def event(event_id: str, event_type: str, content: str, *, outlier: int = 0) -> None:
        raw.execute(
            "INSERT INTO events (event_id, room_id, type, sender, depth,"
            " origin_server_ts, json, outlier, soft_failed)"
            " VALUES (?, '!r:x', ?, '@a:x', 1, 5, ?, ?, 0)",
            (event_id, event_type, f'{{"content": {content}}}'.encode(), outlier),
        )

    event("$msg", "m.room.message", '{"body": "martians and men"}')
    event("$name", "m.room.name", '{"name": "Martian club"}')
    event("$topic", "m.room.topic", '{"topic": "all about martians"}')
    event("$other", "m.custom", '{"body": "martians too"}')
    event("$nobody", "m.room.message", '{"body": 5}')
    event("$outlier", "m.room.message", '{"body": "martians outside"}', outlier=1)

    migrate(raw, target=19)

    rows = raw.execute(
        "SELECT event_id, room_id, key FROM event_search WHERE event_search MATCH 'martians'"
        " ORDER BY event_id"
    ).fetchall()
    assert rows == [
        ("$msg", "!r:x", "content.body"),
        ("$topic", "!r:x", "content.topic"),
    ]
    assert raw.execute("SELECT COUNT(*) FROM event_search").fetchone() == (3,)


def test_version_53_records_what_the_state_events_stored_replaced(
    raw: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A few events a page, so that the fill goes over several.
    monkeypatch.setattr(replaced_state, "_FILL_PAGE", 3)
    migrate(raw, target=52)
    raw.execute("INSERT INTO rooms VALUES ('!r:x', '10')")

    def event(event_id: str, kind: str, state_key: str | None, before: int, after: int) -> None:
        raw.execute(
            "INSERT INTO events (event_id, room_id, type, state_key, sender, depth,"
            " origin_server_ts, json, outlier, soft_failed)"
            " VALUES (?, '!r:x', ?, ?, '@a:x', 1, 5, x'7b7d', 0, 0)",
            (event_id, kind, state_key),
        )
        raw.execute("INSERT INTO event_to_state_groups VALUES (?, ?, ?)", (event_id, before, after))

    def group(group_id: int, prev: int | None, rows: dict[tuple[str, str], str | None]) -> None:
        chain = 0 if prev is None else group_id - 1
        raw.execute(
            "INSERT INTO state_groups VALUES (?, '!r:x', ?, ?, ?)",
            (group_id, prev, chain, len(rows)),
        )
        raw.executemany(
            "INSERT INTO state_group_rows VALUES (?, ?, ?, ?)",
            [(group_id, kind, key, event_id) for (kind, key), event_id in rows.items()],
        )

    topic = ("m.room.topic", "")
    alice = ("m.room.member", "@a:x")
    # A snapshot, then a chain of deltas: the topic set twice, a member
    # who joins and leaves, and a key removed along the way.
    group(1, None, {("m.room.create", ""): "$create"})
    group(2, 1, {alice: "$join"})
    group(3, 2, {topic: "$topic1"})
    group(4, 3, {("m.room.name", ""): "$name"})
    group(5, 4, {topic: "$topic2", ("m.room.name", ""): None})
    group(6, 5, {alice: "$leave"})
    event("$create", "m.room.create", "", 1, 1)
    event("$join", *alice, 1, 2)
    event("$topic1", *topic, 2, 3)
    event("$name", "m.room.name", "", 3, 4)
    event("$msg", "m.room.message", None, 4, 4)
    event("$topic2", *topic, 4, 5)
    event("$leave", *alice, 5, 6)
    # The name, removed before this event, replaces nothing.
    event("$rename", "m.room.name", "", 5, 5)
    # A backfilled event, placed below the stream.
    event("$old", *topic, 3, 3)
    raw.execute("UPDATE events SET stream_ordering = -7 WHERE event_id = '$old'")

    migrate(raw, target=53)

    rows = raw.execute(
        "SELECT e.event_id, s.replaces_state FROM event_state AS s"
        " JOIN events AS e ON e.stream_ordering = s.event_ordering ORDER BY s.event_ordering"
    ).fetchall()
    assert rows == [
        ("$old", "$topic1"),
        ("$create", None),
        ("$join", None),
        ("$topic1", None),
        ("$name", None),
        ("$msg", None),
        ("$topic2", "$topic1"),
        ("$leave", "$join"),
        ("$rename", None),
    ]


def test_version_63_keys_to_device_transactions_by_token_too(raw: sqlite3.Connection) -> None:
    migrate(raw, target=62)
    for device, txn in (("DEV", "t1"), ("DEV", "t2"), ("", "t1")):
        raw.execute("INSERT INTO to_device_transactions VALUES ('@a:x', ?, ?, 5)", (device, txn))
    migrate(raw, target=63)
    # A device's rows are kept, with no token; a device-less request's row
    # cannot be given its token and is dropped.
    assert raw.execute(
        "SELECT user_id, device_id, token_hash, txn_id, created_ts"
        " FROM to_device_transactions ORDER BY txn_id"
    ).fetchall() == [("@a:x", "DEV", b"", "t1", 5), ("@a:x", "DEV", b"", "t2", 5)]
    # Two tokens of the user may use one transaction ID; one token may not twice.
    insert = "INSERT INTO to_device_transactions VALUES ('@a:x', '', ?, 't1', 6)"
    raw.execute(insert, (b"\x01",))
    raw.execute(insert, (b"\x02",))
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute(insert, (b"\x01",))


def test_version_61_keys_client_transactions_by_token_too(raw: sqlite3.Connection) -> None:
    migrate(raw, target=60)
    for device, txn in (("DEV", "t1"), ("DEV", "t2"), ("", "t1")):
        raw.execute(
            "INSERT INTO client_transactions VALUES ('@a:x', ?, ?, '!r:x', ?, 5)",
            (device, txn, f"${device}{txn}"),
        )
    migrate(raw, target=61)
    # A device's rows are kept, with no token; a device-less request's row
    # cannot be given its token and is dropped.
    assert raw.execute(
        "SELECT user_id, device_id, token_hash, txn_id, room_id, event_id, created_ts"
        " FROM client_transactions ORDER BY txn_id"
    ).fetchall() == [
        ("@a:x", "DEV", b"", "t1", "!r:x", "$DEVt1", 5),
        ("@a:x", "DEV", b"", "t2", "!r:x", "$DEVt2", 5),
    ]
    # Two tokens of the user may use one transaction ID; one token may not twice.
    insert = "INSERT INTO client_transactions VALUES ('@a:x', '', ?, 't1', '!r:x', ?, 6)"
    raw.execute(insert, (b"\x01", "$one"))
    raw.execute(insert, (b"\x02", "$two"))
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute(insert, (b"\x01", "$again"))
    assert raw.execute(
        "SELECT name FROM sqlite_master WHERE tbl_name = 'client_transactions' AND type = 'index'"
        " AND sql IS NOT NULL"
    ).fetchall() == [("idx_client_transactions_created_ts",)]


def _event(conn: sqlite3.Connection, event_id: str) -> int:
    """A stored event's stream ordering, the event written first."""
    conn.execute(
        "INSERT INTO events (event_id, room_id, type, state_key, sender, depth,"
        " origin_server_ts, json, outlier, soft_failed, rejected_reason)"
        " VALUES (?, '!r:x', 'm.room.message', NULL, '@a:x', 2, 5, x'7b7d', 0, 0, NULL)",
        (event_id,),
    )
    (ordering,) = conn.execute(
        "SELECT stream_ordering FROM events WHERE event_id = ?", (event_id,)
    ).fetchone()
    return int(ordering)


def _prev_orderings(conn: sqlite3.Connection) -> list[tuple[str, int | None]]:
    return conn.execute(
        "SELECT prev_event_id, prev_ordering FROM event_prev_edges ORDER BY prev_event_id"
    ).fetchall()


def test_version_64_finds_prev_edges_by_the_prev_events_ordering(raw: sqlite3.Connection) -> None:
    migrate(raw, target=63)
    _fill(raw, 1)
    stored = _event(raw, "$stored")
    raw.execute("INSERT INTO event_edges VALUES ('$e', '$stored', '!r:x')")
    migrate(raw)
    # A stored prev event's edge gets its ordering; one not stored, none.
    assert _prev_orderings(raw) == [("$p", None), ("$stored", stored)]
    indexes = {
        name
        for (name,) in raw.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'event_prev_edges'"
            " AND sql IS NOT NULL"
        )
    }
    assert indexes == {"event_prev_edges_prev_ordering", "event_prev_edges_unstored_prev"}
    # The view of version 11 writes the ordering too.
    later = _event(raw, "$later")
    raw.execute("INSERT INTO event_edges VALUES ('$later', '$stored', '!r:x')")
    assert raw.execute(
        "SELECT prev_ordering FROM event_prev_edges WHERE event_ordering = ?", (later,)
    ).fetchall() == [(stored,)]
    # The ordering follows the prev event's, and is emptied when it goes.
    raw.execute("UPDATE events SET stream_ordering = -7 WHERE event_id = '$stored'")
    assert {ordering for prev, ordering in _prev_orderings(raw) if prev == "$stored"} == {-7}
    raw.execute("DELETE FROM events WHERE event_id = '$stored'")
    assert {ordering for prev, ordering in _prev_orderings(raw) if prev == "$stored"} == {None}
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []


def test_tables_and_indexes_keep_the_statements_of_their_first_release(
    raw: sqlite3.Connection,
) -> None:
    # The first migrations were written with a library that made these
    # statements; databases made since must hold the same schema text.
    migrate(raw)
    sql = dict(raw.execute("SELECT name, sql FROM sqlite_master"))
    assert sql["rooms"] == (
        'CREATE TABLE "rooms" (\n   "room_id" TEXT PRIMARY KEY NOT NULL,\n'
        '   "room_version" TEXT NOT NULL\n) STRICT'
    )
    assert sql["partial_state_events"] == (
        'CREATE TABLE "partial_state_events" (\n'
        '   "event_id" TEXT PRIMARY KEY NOT NULL REFERENCES "events"("event_id"),\n'
        '   "room_id" TEXT NOT NULL REFERENCES "partial_state_rooms"("room_id")\n) STRICT'
    )
    assert sql["idx_access_tokens_user_id_device_id"] == (
        'CREATE INDEX "idx_access_tokens_user_id_device_id"\n'
        '    ON "access_tokens" ("user_id", "device_id")'
    )
