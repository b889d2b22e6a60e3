"""What a purge or a redaction removes leaves the full-text index for good,
over real HTTP: a purged room's words, and a redacted message's once its
content is pruned, are nowhere in the database file after the server's
scrub (:mod:`ranvier.storage.search_scrub`), read after a checkpoint, while
the other rooms are still searched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
from _admin import admin_ok
from _client import Client, open_with_admin, q

from ranvier.core.housekeeping import HOUR_MS
from ranvier.storage.housekeeping import Prune
from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver

DAY_MS = 24 * HOUR_MS


def _secret(n: int) -> str:
    """A word said once; its tail is what the file is searched for (the
    index stores a word after the letters it shares with the one before)."""
    return f"hush{n:03d}qzx{n:03d}"


def _tail(n: int) -> bytes:
    return _secret(n)[-7:].encode()


def _file_bytes(database: Path) -> bytes:
    """The database file and its WAL, after a checkpoint."""
    conn = sqlite3.connect(database)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    wal = database.with_name(database.name + "-wal")
    return database.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def _say(client: Client, user: TestUser, room_id: str, body: str, txn: str) -> None:
    await client.ok(
        user,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": body},
    )


async def _search(client: Client, user: TestUser, term: str) -> list[str]:
    body = {"search_categories": {"room_events": {"search_term": term}}}
    found = await client.ok(user, "POST", "/search", body)
    return [
        hit["result"]["content"]["body"]
        for hit in found["search_categories"]["room_events"]["results"]
    ]


async def _scrubbed(hs: TestHomeserver) -> None:
    """Wait, woken, for the server's scrubber to have finished its scrub."""
    scrubber, store = hs.server.search_scrubber, hs.server.storage.search_scrub
    scrubber.wake()
    with trio.fail_after(60):
        while await store.scrub_owed():
            await scrubber.wait_for_look(scrubber.looks + 1)


async def test_a_purged_rooms_words_are_gone_from_the_file(tmp_path: Path) -> None:
    async with open_with_admin(tmp_path) as env:
        client, alice = env.client, env.alice
        database = Path(env.hs.server.config.paths.database)
        doomed = await client.create_room(alice, preset="public_chat")
        kept = await client.create_room(alice, preset="public_chat")
        for n in range(40):
            await _say(client, alice, doomed, f"{_secret(n)} said here", f"d{n}")
            await _say(client, alice, kept, f"keptword{n} said there", f"k{n}")
        assert await _search(client, alice, _secret(7)) == [f"{_secret(7)} said here"]
        assert all(_tail(n) in _file_bytes(database) for n in range(40))

        answer = await admin_ok(client.http, env.admin, "DELETE", f"/v2/rooms/{q(doomed)}", {})
        status = await admin_ok(
            client.http, env.admin, "GET", f"/v2/rooms/delete_status/{answer['delete_id']}"
        )
        assert status["status"] == "complete"
        await _scrubbed(env.hs)
        assert await _search(client, alice, "keptword7") == ["keptword7 said there"]
        assert len(await _search(client, alice, "said")) == 10

    left = _file_bytes(database)
    assert [n for n in range(40) if _tail(n) in left] == []
    assert b"keptword39" in left


async def test_a_redacted_messages_words_are_gone_once_its_content_is_pruned(
    tmp_path: Path,
) -> None:
    async with open_test_homeserver(tmp_path) as hs, hs.client() as http:
        client = Client(hs, http)
        database = Path(hs.server.config.paths.database)
        alice = await hs.register_user("alice")
        room_id = await client.create_room(alice)
        sent = await client.ok(
            alice,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/m1",
            {"msgtype": "m.text", "body": f"{_secret(1)} regretted"},
        )
        for n in range(20):
            await _say(client, alice, room_id, f"stays{n} here", f"s{n}")
        await client.ok(alice, "PUT", f"/rooms/{q(room_id)}/redact/{q(sent['event_id'])}/r1", {})
        conn = sqlite3.connect(database)
        try:
            ((received,),) = conn.execute("SELECT received_ts FROM redactions").fetchall()
        finally:
            conn.close()
        # Hidden from search at once, but its words still in the index.
        assert await _search(client, alice, _secret(1)) == []
        assert _tail(1) in _file_bytes(database)

        done = await hs.server.housekeeping.run_pass(now_ms=received + 7 * DAY_MS + 1)
        assert done[Prune.REDACTED_CONTENT] == 1
        await _scrubbed(hs)
        assert await _search(client, alice, "stays3") == ["stays3 here"]

    assert _tail(1) not in _file_bytes(database)
