"""Housekeeping over real HTTP: a federation transaction sent again within
its window is answered from the record and handled afresh after it; a
client's transaction retried within a week is de-duplicated and not after;
the records of a device that logged out go at the next pass; a redacted
message's content goes a week after its redaction, unless configured off.

Each pass is run as of a time the test names, so days pass without
waiting for them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import trio
from _client import Client, q

from ranvier.core.housekeeping import HOUR_MS
from ranvier.storage.housekeeping import Prune
from ranvier.testing import RemoteHomeserver
from ranvier.testing.homeserver import (
    TestHomeserver,
    TestUser,
    config_for_tests,
    open_test_homeserver,
)
from ranvier.testing.network import Pki

DAY_MS = 24 * HOUR_MS
_MARKER = {"pdus": {"$marker": {"error": "answered from the record"}}}


def _rows(hs: TestHomeserver, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(hs.server.config.paths.database)
    try:
        return sorted(conn.execute(sql).fetchall())
    finally:
        conn.close()


async def test_a_repeated_federation_transaction_is_answered_from_its_record_for_a_day(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    pki = Pki.create(tmp_path)
    remote = RemoteHomeserver("127.0.0.1:{port}")
    await remote.start(nursery, pki.server_context("127.0.0.1"))
    await remote.open_client(nursery, pki.client_context())
    async with open_test_homeserver(tmp_path / "a", federation=pki) as a:
        storage = a.server.storage
        first = await remote.send_transaction(a.server_name, [], txn_id="txn1")
        record = await storage.get_received_transaction(remote.server_name, "txn1")
        assert record is not None

        # An answer that could only come from the record, to tell it apart
        # from the transaction handled again.
        def mark(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE received_transactions SET response_json = ? WHERE transaction_id = 'txn1'",
                (msgspec.json.encode(_MARKER),),
            )

        await storage.actor.submit(mark)
        housekeeping = a.server.housekeeping
        within = await housekeeping.run_pass(now_ms=record.received_ts + DAY_MS)
        repeated = await remote.send_transaction(a.server_name, [], txn_id="txn1")
        after = await housekeeping.run_pass(now_ms=record.received_ts + DAY_MS + 1)
        pruned = await storage.get_received_transaction(remote.server_name, "txn1")
        handled_again = await remote.send_transaction(a.server_name, [], txn_id="txn1")

    assert first == {"pdus": {}}
    assert sum(within.values()) == 0
    assert repeated == _MARKER
    assert sum(after.values()) == 1
    assert pruned is None
    assert handled_again == {"pdus": {}}


async def test_a_client_transaction_is_de_duplicated_for_a_week(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs, hs.client() as http:
        client = Client(hs, http)
        alice = await hs.register_user("alice")
        room_id = await client.create_room(alice)
        path = f"/rooms/{q(room_id)}/send/m.room.message/retried"

        async def send() -> str:
            answer = await client.ok(alice, "PUT", path, {"body": "once"})
            return str(answer["event_id"])

        first = await send()
        ((created,),) = _rows(hs, "SELECT created_ts FROM client_transactions")
        assert isinstance(created, int)
        housekeeping = hs.server.housekeeping
        await housekeeping.run_pass(now_ms=created + 7 * DAY_MS)
        within_a_week = await send()
        await housekeeping.run_pass(now_ms=created + 7 * DAY_MS + 1)
        left = _rows(hs, "SELECT txn_id FROM client_transactions")
        after_a_week = await send()

    assert within_a_week == first
    assert left == []
    assert after_a_week != first


async def test_the_records_of_a_device_that_logged_out_go_at_the_next_pass(
    tmp_path: Path,
) -> None:
    async with open_test_homeserver(tmp_path) as hs, hs.client() as http:
        client = Client(hs, http)
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        for user in (alice, bob):
            room_id = await client.create_room(user)
            await client.ok(
                user, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/m1", {"body": "hi"}
            )
            await client.ok(
                user,
                "PUT",
                "/sendToDevice/m.test/d1",
                {"messages": {alice.user_id: {alice.device_id: {"n": 1}}}},
            )
        sent_txns = "SELECT user_id FROM client_transactions WHERE txn_id LIKE '%m1'"
        to_device_txns = "SELECT user_id FROM to_device_transactions"
        before = (_rows(hs, sent_txns), _rows(hs, to_device_txns))
        await client.ok(bob, "POST", "/logout", {})
        deleted = await hs.server.housekeeping.run_pass()
        after = (_rows(hs, sent_txns), _rows(hs, to_device_txns))
        again = await hs.server.housekeeping.run_pass()

    both = [(alice.user_id,), (bob.user_id,)]
    assert before == (both, both)
    assert after == ([(alice.user_id,)], [(alice.user_id,)])
    assert sum(deleted.values()) == 2
    assert sum(again.values()) == 0


async def _redacted_message(hs: TestHomeserver, client: Client) -> tuple[TestUser, str, str]:
    """Alice's message "zebra" in a room of hers, redacted by her: the
    user, the room's path and the message's event ID."""
    alice = await hs.register_user("alice")
    room = f"/rooms/{q(await client.create_room(alice))}"
    sent = await client.ok(alice, "PUT", f"{room}/send/m.room.message/m1", {"body": "zebra"})
    event_id = str(sent["event_id"])
    await client.ok(alice, "PUT", f"{room}/redact/{q(event_id)}/r1", {"reason": "oops"})
    return alice, room, event_id


def _stored_json(hs: TestHomeserver, event_id: str) -> str:
    ((json,),) = _rows(hs, f"SELECT CAST(json AS TEXT) FROM events WHERE event_id = '{event_id}'")
    return str(json)


def _without_unsigned(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "unsigned": None}


async def test_a_redacted_message_loses_its_content_a_week_after_the_redaction(
    tmp_path: Path,
) -> None:
    async with open_test_homeserver(tmp_path) as hs, hs.client() as http:
        client = Client(hs, http)
        alice, room, event_id = await _redacted_message(hs, client)
        served = await client.ok(alice, "GET", f"{room}/event/{q(event_id)}")
        ((received,),) = _rows(hs, "SELECT received_ts FROM redactions")
        assert isinstance(received, int)
        housekeeping = hs.server.housekeeping

        await housekeeping.run_pass(now_ms=received + 7 * DAY_MS)
        within = _stored_json(hs, event_id)
        done = await housekeeping.run_pass(now_ms=received + 7 * DAY_MS + 1)
        after = _stored_json(hs, event_id)
        served_after = await client.ok(alice, "GET", f"{room}/event/{q(event_id)}")
        search = {"search_categories": {"room_events": {"search_term": "zebra"}}}
        found = await client.ok(alice, "POST", "/search", search)

    assert "zebra" in within
    assert done[Prune.REDACTED_CONTENT] == 1
    assert "zebra" not in after
    # As served before, but for the age and the transaction ID, whose
    # record went in the same pass.
    assert _without_unsigned(served_after) == _without_unsigned(served)
    because = served["unsigned"]["redacted_because"]
    assert _without_unsigned(served_after["unsigned"]["redacted_because"]) == _without_unsigned(
        because
    )
    assert served_after["content"] == {}
    assert found["search_categories"]["room_events"]["count"] == 0


async def test_redacted_content_is_kept_for_ever_when_pruning_is_off(tmp_path: Path) -> None:
    config = config_for_tests(tmp_path / "hs")
    config = msgspec.structs.replace(
        config,
        housekeeping=msgspec.structs.replace(config.housekeeping, prune_redacted_content=False),
    )
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as http:
        _, _, event_id = await _redacted_message(hs, Client(hs, http))
        done = await hs.server.housekeeping.run_pass(now_ms=2**62)
        kept = _stored_json(hs, event_id)

    assert Prune.REDACTED_CONTENT not in done
    assert "zebra" in kept
