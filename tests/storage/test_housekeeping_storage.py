from __future__ import annotations

import functools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ranvier.storage import Storage
from ranvier.storage.housekeeping import Prune, _delete, _find

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
DAN, ERIN, FAY, GIL = (f"@{name}:remote.example" for name in ("dan", "erin", "fay", "gil"))
#: Rows stamped OLD are before the cutoff of every test, NEW after it.
OLD, CUTOFF, NEW = 100, 500, 1000


def _seed(conn: sqlite3.Connection) -> None:
    run = conn.execute
    run("INSERT INTO users (user_id, admin, created_ts, deactivated) VALUES (?, 0, 0, 0)", (ALICE,))
    run("INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, 'LIVE', 0)", (ALICE,))
    for txn, ts in (("old", OLD), ("new", NEW), ("edge", CUTOFF)):
        run(
            "INSERT INTO received_transactions VALUES ('remote.example', ?, 200, x'7b7d', ?)",
            (txn, ts),
        )
    for device, txn, ts in (
        ("LIVE", "old", OLD),
        ("LIVE", "new", NEW),
        ("GONE", "new", NEW),
        ("", "old", OLD),
        ("", "new", NEW),
    ):
        run(
            "INSERT INTO client_transactions VALUES (?, ?, ?, ?, '!r:example.org', ?, ?)",
            (ALICE, device, b"" if device else b"\x01", txn, f"${device}{txn}", ts),
        )
        run(
            "INSERT INTO to_device_transactions (user_id, device_id, txn_id, created_ts)"
            " VALUES (?, ?, ?, ?)",
            (ALICE, device, txn, ts),
        )
    for device in ("LIVE", "GONE"):
        run(
            "INSERT INTO to_device_inbox (user_id, device_id, message) VALUES (?, ?, x'7b7d')",
            (ALICE, device),
        )
    run("INSERT INTO registration_tokens VALUES ('tok', NULL, 0, NULL)")
    for name, expires in (("expired", OLD), ("at", CUTOFF), ("valid", NEW)):
        run("INSERT INTO url_previews VALUES (?, x'7b7d', 0, ?)", (name, expires))
        run("INSERT INTO login_tokens VALUES (?, ?, ?)", (name.encode(), ALICE, expires))
        run("INSERT INTO openid_tokens VALUES (?, ?, ?)", (name.encode(), ALICE, expires))
        run("INSERT INTO registration_token_sessions VALUES (?, 'tok', ?, NULL)", (name, expires))
        run(
            "INSERT INTO sso_sessions"
            " (state_hash, idp_id, nonce, code_verifier, redirect_url, expires_ts)"
            " VALUES (?, 'idp', 'n', 'v', 'https://c.test/', ?)",
            (name.encode(), expires),
        )
        run(
            "INSERT INTO threepid_validation_sessions"
            " VALUES (?, 'email', 'a@x.org', 'c', x'01', 1, NULL, 0, ?, NULL)",
            (name, expires),
        )
        run(
            "INSERT INTO uia_sessions (session_id, operation, user_id, expires_ts)"
            " VALUES (?, 'delete_devices', ?, ?)",
            (name, ALICE, expires),
        )
    # Positions around CUTOFF, as a position of the device-list stream.
    for position, user in (
        (1, ALICE),
        (2, BOB),
        (3, ALICE),
        (400, CAROL),
        (600, CAROL),
        (700, ALICE),
    ):
        run("INSERT INTO device_list_changes (stream_id, user_id) VALUES (?, ?)", (position, user))
    for key, device, made in (
        (1, "LIVE", NEW),
        (2, "LIVE", OLD),
        (3, "GONE", NEW),
        (4, "LIVE", None),
    ):
        run(
            "INSERT INTO sliding_sync_connections VALUES (?, ?, ?, ?)",
            (key, ALICE, device, f"c{key}"),
        )
        if made is not None:
            run(
                "INSERT INTO sliding_sync_positions (pos, conn_key, nonce, token, made_ms)"
                " VALUES (?, ?, ?, 't', ?)",
                (key, key, f"n{key}", made),
            )
            run(
                "INSERT INTO sliding_sync_rooms VALUES (?, '!r:example.org', ?, 1, '{}')",
                (key, key),
            )
    # Alice's messages, each redacted by herself: one redaction before the
    # cutoff, one after it, and one, before it, of an event not stored.
    run("INSERT INTO rooms (room_id, room_version) VALUES ('!r:example.org', '10')")
    stored = [("$m1", "m.room.message"), ("$m2", "m.room.message")]
    stored += [(f"$r{ts}", "m.room.redaction") for ts in ("old", "new", "gap")]
    for n, (event_id, event_type) in enumerate(stored):
        run(
            "INSERT INTO events (event_id, room_id, type, sender, depth, origin_server_ts,"
            " json, outlier, soft_failed) VALUES (?, '!r:example.org', ?, ?, ?, 0, ?, 0, 0)",
            (event_id, event_type, ALICE, n, b'{"content": {"body": "said"}, "type": "x"}'),
        )
    for redaction, target, ts in (
        ("$rold", "$m1", OLD),
        ("$rnew", "$m2", NEW),
        ("$rgap", "$m3", OLD),
    ):
        run(
            "INSERT INTO redactions (event_id, redacts, room_id, sender_may_redact, received_ts)"
            " VALUES (?, ?, '!r:example.org', 1, ?)",
            (redaction, target, ts),
        )
    # Kept device lists: Dan shares !r with Alice (ours); Erin is joined
    # only to a room Alice left; Fay is in no room; Gil is in !r but left.
    run("INSERT INTO rooms (room_id, room_version) VALUES ('!left:example.org', '10')")
    for n, (room, user, membership) in enumerate(
        (
            ("!r:example.org", ALICE, "join"),
            ("!r:example.org", DAN, "join"),
            ("!r:example.org", GIL, "leave"),
            ("!left:example.org", ALICE, "leave"),
            ("!left:example.org", ERIN, "join"),
        )
    ):
        event_id = f"$member{n}"
        run(
            "INSERT INTO events (event_id, room_id, type, state_key, sender, depth,"
            " origin_server_ts, json, outlier, soft_failed)"
            " VALUES (?, ?, 'm.room.member', ?, ?, 0, 0, ?, 0, 0)",
            (
                event_id,
                room,
                user,
                user,
                json.dumps({"content": {"membership": membership}}).encode(),
            ),
        )
        run(
            "INSERT INTO current_state (room_id, type, state_key, event_id)"
            " VALUES (?, 'm.room.member', ?, ?)",
            (room, user, event_id),
        )
    for user in (DAN, ERIN, FAY, GIL):
        run("INSERT INTO remote_device_lists VALUES (?, 1, NULL, NULL, 0, 0)", (user,))
        run("INSERT INTO remote_device_keys VALUES (?, 'DEV', x'7b7d', 'phone')", (user,))


@pytest.fixture
async def seeded(storage: Storage) -> Storage:
    await storage.actor.submit(_seed)
    return storage


def _rows(db_path: Path, sql: str) -> list[Any]:
    conn = sqlite3.connect(db_path)
    try:
        return sorted(conn.execute(sql).fetchall())
    finally:
        conn.close()


#: Per rule: what the rows left read as, and how many went.
_EXPECTED: dict[Prune, tuple[str, list[Any], int]] = {
    Prune.RECEIVED_TRANSACTIONS: (
        "SELECT transaction_id FROM received_transactions",
        [("edge",), ("new",)],
        1,
    ),
    Prune.CLIENT_TRANSACTIONS: (
        "SELECT device_id, txn_id FROM client_transactions",
        [("", "new"), ("GONE", "new"), ("LIVE", "new")],
        2,
    ),
    Prune.CLIENT_TRANSACTIONS_OF_GONE_DEVICES: (
        "SELECT device_id, txn_id FROM client_transactions",
        [("", "new"), ("", "old"), ("LIVE", "new"), ("LIVE", "old")],
        1,
    ),
    Prune.TO_DEVICE_TRANSACTIONS: (
        "SELECT device_id, txn_id FROM to_device_transactions",
        [("", "new"), ("GONE", "new"), ("LIVE", "new")],
        2,
    ),
    Prune.TO_DEVICE_TRANSACTIONS_OF_GONE_DEVICES: (
        "SELECT device_id, txn_id FROM to_device_transactions",
        [("", "new"), ("", "old"), ("LIVE", "new"), ("LIVE", "old")],
        1,
    ),
    Prune.TO_DEVICE_INBOX_OF_GONE_DEVICES: (
        "SELECT device_id FROM to_device_inbox",
        [("LIVE",)],
        1,
    ),
    Prune.URL_PREVIEWS: ("SELECT url FROM url_previews", [("valid",)], 2),
    Prune.LOGIN_TOKENS: ("SELECT token_hash FROM login_tokens", [(b"valid",)], 2),
    Prune.OPENID_TOKENS: ("SELECT token_hash FROM openid_tokens", [(b"valid",)], 2),
    Prune.REGISTRATION_TOKEN_SESSIONS: (
        "SELECT session_id FROM registration_token_sessions",
        [("valid",)],
        2,
    ),
    Prune.SSO_SESSIONS: ("SELECT state_hash FROM sso_sessions", [(b"valid",)], 2),
    Prune.THREEPID_VALIDATION_SESSIONS: (
        "SELECT sid FROM threepid_validation_sessions",
        [("valid",)],
        2,
    ),
    Prune.UIA_SESSIONS: ("SELECT session_id FROM uia_sessions", [("valid",)], 2),
    Prune.SLIDING_SYNC_CONNECTIONS: (
        "SELECT c.conn_key, p.pos, r.pos FROM sliding_sync_connections AS c"
        " LEFT JOIN sliding_sync_positions AS p USING (conn_key)"
        " LEFT JOIN sliding_sync_rooms AS r USING (conn_key)",
        [(1, 1, 1)],
        3,
    ),
    # Alice's 1 goes for her 3; her 3 stays, for her 700 is past the
    # cutoff, and so does Carol's 400; each user's newest stays.
    Prune.SUPERSEDED_DEVICE_LIST_CHANGES: (
        "SELECT stream_id, user_id FROM device_list_changes",
        [(2, BOB), (3, ALICE), (400, CAROL), (600, CAROL), (700, ALICE)],
        1,
    ),
    # Only Dan shares a room with one of ours; the other lists go, with
    # their devices' keys.
    Prune.UNSHARED_DEVICE_LISTS: (
        "SELECT l.user_id, k.device_id FROM remote_device_lists AS l"
        " LEFT JOIN remote_device_keys AS k USING (user_id)",
        [(DAN, "DEV")],
        3,
    ),
    # Only the old redaction of a stored event is taken (its event's
    # content goes: tests/storage/test_redacted_content.py).
    Prune.REDACTED_CONTENT: (
        "SELECT event_id FROM redactions WHERE content_pruned = 0",
        [("$rgap",), ("$rnew",)],
        1,
    ),
}


@pytest.mark.parametrize("rule", list(Prune), ids=lambda rule: rule.value)
async def test_a_rule_deletes_only_its_rows_and_is_done_the_second_time(
    seeded: Storage, db_path: Path, rule: Prune
) -> None:
    sql, left, deleted = _EXPECTED[rule]
    before = _rows(db_path, sql)
    assert set(left) < set(before)
    assert await seeded.housekeeping.prune(rule, cutoff_ms=CUTOFF, limit=1000) == deleted
    assert _rows(db_path, sql) == left
    assert await seeded.housekeeping.prune(rule, cutoff_ms=CUTOFF, limit=1000) == 0
    assert _rows(db_path, sql) == left


def test_every_rule_is_tested() -> None:
    assert set(_EXPECTED) == set(Prune)


async def test_a_write_deletes_at_most_its_limit(storage: Storage, db_path: Path) -> None:
    def fill(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO received_transactions VALUES ('remote.example', ?, 200, x'7b7d', ?)",
            [(f"t{n}", OLD if n < 250 else NEW) for n in range(300)],
        )

    await storage.actor.submit(fill)
    counts = [
        await storage.housekeeping.prune(Prune.RECEIVED_TRANSACTIONS, cutoff_ms=CUTOFF, limit=100)
        for _ in range(4)
    ]
    assert counts == [100, 100, 50, 0]
    assert _rows(db_path, "SELECT COUNT(*) FROM received_transactions") == [(50,)]


async def test_a_limit_below_one_is_refused(storage: Storage) -> None:
    with pytest.raises(ValueError, match="limit"):
        await storage.housekeeping.prune(Prune.LOGIN_TOKENS, cutoff_ms=CUTOFF, limit=0)


async def test_a_row_back_in_use_since_it_was_found_is_kept(seeded: Storage, db_path: Path) -> None:
    (found,) = await seeded.readers.read(
        functools.partial(
            _find, rule=Prune.TO_DEVICE_INBOX_OF_GONE_DEVICES, cutoff_ms=CUTOFF, limit=10
        )
    )

    def log_in_again(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, 'GONE', 0)", (ALICE,)
        )

    await seeded.actor.submit(log_in_again)
    deleted = await seeded.actor.submit(
        functools.partial(
            _delete,
            rule=Prune.TO_DEVICE_INBOX_OF_GONE_DEVICES.value,
            cutoff_ms=CUTOFF,
            keys=[found],
        )
    )
    assert deleted == 0
    assert _rows(db_path, "SELECT device_id FROM to_device_inbox") == [("GONE",), ("LIVE",)]
