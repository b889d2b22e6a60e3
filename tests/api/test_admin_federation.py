"""The federation destinations admin API over real HTTP.

Two servers share a room; B is stopped, A fails to deliver to it and backs
off for an hour. The admin API shows the failure, the interval and the
room behind; with B back, ``reset_connection`` clears the backoff and A
delivers what B missed at once, not an hour later. Refusals: unknown
destinations, bad paging, users who are not admins.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from _admin import admin_call, admin_ok, admin_refused
from _client import WithAdmin, open_with_admin, q
from _federation import eventually, two_servers

from ranvier.storage.records import DestinationRetry
from ranvier.testing import Pki
from ranvier.testing.homeserver import config_for_tests, open_test_homeserver

DESTINATIONS = "/v1/federation/destinations"
# An hour: a test that passes has not waited for it.
RETRY_SECONDS = 3600.0


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[WithAdmin]:
    async with open_with_admin(tmp_path) as env:
        yield env


async def test_a_destination_backing_off_is_shown_and_reset_and_delivered_to_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ranvier.federation.sender.queue")
    pki = Pki.create(tmp_path)
    a_config = config_for_tests(tmp_path / "a", federation=pki)
    a_config = msgspec.structs.replace(
        a_config,
        federation=msgspec.structs.replace(
            a_config.federation, destination_retry_seconds=RETRY_SECONDS
        ),
    )
    # The same name, port, key and database each time B starts.
    b_config = config_for_tests(tmp_path / "b", federation=pki)
    b_name = b_config.server_name
    async with (
        open_test_homeserver(tmp_path / "a", config=a_config) as a,
        a.client() as http,
    ):
        alice = await a.register_user("alice")
        admin = await a.register_user("root", admin=True)
        created = await http.post(
            "/_matrix/client/v3/createRoom",
            json={"preset": "public_chat"},
            headers={"Authorization": f"Bearer {alice.access_token}"},
        )
        assert created.status_code == 200, created.text
        room_id: str = created.json()["room_id"]
        async with open_test_homeserver(tmp_path / "b", config=b_config) as b:
            bob = await b.register_user("bob")
            await b.server.join_room(bob.user_id, room_id, [a.server_name])
            # Resynced now, so that B has nothing to ask of A when it starts again.
            with trio.fail_after(20):
                await b.server.wait_for_full_state(room_id)

        # B is down: A fails to deliver and backs off.
        missed = await a.server.send_event(
            alice.user_id, room_id, "m.room.message", {"msgtype": "m.text", "body": "missed"}
        )

        async def failing() -> bool:
            status, shown = await admin_call(http, admin, "GET", f"{DESTINATIONS}/{q(b_name)}")
            return status == 200 and shown["retry_interval"] > 0

        await eventually(failing, "A backing off from B")
        shown = await admin_ok(http, admin, "GET", f"{DESTINATIONS}/{q(b_name)}")
        assert shown["destination"] == b_name
        assert shown["retry_interval"] >= RETRY_SECONDS * 1000 * 0.8
        assert shown["failure_ts"] is not None
        assert shown["retry_last_ts"] >= shown["failure_ts"] > 0
        listed = await admin_ok(http, admin, "GET", DESTINATIONS, params={"destination": b_name})
        assert listed == {"destinations": [shown], "total": 1}
        rooms = await admin_ok(http, admin, "GET", f"{DESTINATIONS}/{q(b_name)}/rooms")
        assert rooms["total"] == 1
        (behind,) = rooms["rooms"]
        assert behind["room_id"] == room_id
        assert behind["sent_stream_ordering"] is None or (
            behind["stream_ordering"] > behind["sent_stream_ordering"]
        )

        async with open_test_homeserver(tmp_path / "b", config=b_config) as b:
            still = await admin_ok(http, admin, "GET", f"{DESTINATIONS}/{q(b_name)}")
            assert still["retry_interval"] > 0
            reset = await admin_ok(
                http, admin, "POST", f"{DESTINATIONS}/{q(b_name)}/reset_connection", {}
            )
            assert reset == {}
            cleared = await admin_ok(http, admin, "GET", f"{DESTINATIONS}/{q(b_name)}")
            assert (cleared["retry_last_ts"], cleared["retry_interval"], cleared["failure_ts"]) == (
                0,
                0,
                None,
            )

            async def delivered() -> bool:
                return bool(await b.server.storage.get_events([missed]))

            await eventually(delivered, "the missed event at B")
            assert f"{b_name}: its backoff was cleared" in caplog.text

            async def caught_up() -> bool:
                page = await admin_ok(http, admin, "GET", f"{DESTINATIONS}/{q(b_name)}/rooms")
                room = page["rooms"][0]
                return bool(room["sent_stream_ordering"] == room["stream_ordering"])

            await eventually(caught_up, "B's room marked sent")
            page = await admin_ok(http, admin, "GET", f"{DESTINATIONS}/{q(b_name)}/rooms")
            shown = await admin_ok(http, admin, "GET", f"{DESTINATIONS}/{q(b_name)}")
            assert (
                shown["last_successful_stream_ordering"]
                == (page["rooms"][0]["sent_stream_ordering"])
            )
            # Coming back is noted at once, after the failure it ends.
            assert shown["last_success_ts"] >= still["retry_last_ts"] > 0
            # Nothing is left to reset.
            await admin_refused(
                http,
                admin,
                "POST",
                f"{DESTINATIONS}/{q(b_name)}/reset_connection",
                {},
                status=400,
                errcode="M_UNKNOWN",
            )
            assert list(await b.server.storage.get_events([missed])) == [missed]


async def _seed(env: WithAdmin) -> None:
    """Three destinations known to the server: two behind in a room, one
    failing."""
    storage = env.hs.server.storage
    room_id = await env.client.create_room(env.alice)
    await storage.store_destination_rooms("b.example", {room_id: 3})
    await storage.store_destination_rooms("a.example", {room_id: 4})
    await storage.store_destination_retry(
        "c.example",
        DestinationRetry(
            destination="c.example", failure_ts=10, retry_last_ts=20, retry_interval_ms=5000
        ),
    )


async def test_the_list_pages_sorts_and_filters(env: WithAdmin) -> None:
    http, admin = env.client.http, env.admin
    await _seed(env)

    def names(answer: dict[str, Any]) -> list[str]:
        return [shown["destination"] for shown in answer["destinations"]]

    first = await admin_ok(http, admin, "GET", DESTINATIONS, params={"limit": "2"})
    assert (names(first), first["total"], first["next_token"]) == (
        ["a.example", "b.example"],
        3,
        "2",
    )
    rest = await admin_ok(http, admin, "GET", DESTINATIONS, params={"limit": "2", "from": "2"})
    assert (names(rest), rest["total"], "next_token" in rest) == (["c.example"], 3, False)
    assert rest["destinations"][0] == {
        "destination": "c.example",
        "retry_last_ts": 20,
        "retry_interval": 5000,
        "failure_ts": 10,
        "last_successful_stream_ordering": None,
        "last_success_ts": None,
    }
    by_interval = await admin_ok(
        http, admin, "GET", DESTINATIONS, params={"order_by": "retry_interval", "dir": "b"}
    )
    assert names(by_interval) == ["c.example", "b.example", "a.example"]
    found = await admin_ok(http, admin, "GET", DESTINATIONS, params={"destination": "B.EX"})
    assert (names(found), found["total"]) == (["b.example"], 1)
    rooms = await admin_ok(http, admin, "GET", f"{DESTINATIONS}/a.example/rooms")
    assert rooms["total"] == 1
    assert rooms["rooms"][0]["stream_ordering"] == 4
    assert rooms["rooms"][0]["sent_stream_ordering"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"from": "-5"},
        {"from": "x"},
        {"dir": "up"},
        {"order_by": "name"},
    ],
)
async def test_bad_paging_is_refused(env: WithAdmin, params: dict[str, str]) -> None:
    http, admin = env.client.http, env.admin
    await _seed(env)
    await admin_refused(
        http, admin, "GET", DESTINATIONS, params=params, status=400, errcode="M_INVALID_PARAM"
    )
    if "order_by" not in params:
        await admin_refused(
            http,
            admin,
            "GET",
            f"{DESTINATIONS}/a.example/rooms",
            params=params,
            status=400,
            errcode="M_INVALID_PARAM",
        )


async def test_unknown_destinations_are_not_found(env: WithAdmin) -> None:
    http, admin = env.client.http, env.admin
    await _seed(env)
    for method, path in (
        ("GET", f"{DESTINATIONS}/nowhere.example"),
        ("GET", f"{DESTINATIONS}/nowhere.example/rooms"),
        ("POST", f"{DESTINATIONS}/nowhere.example/reset_connection"),
    ):
        await admin_refused(
            http,
            admin,
            method,
            path,
            {} if method == "POST" else None,
            status=404,
            errcode="M_NOT_FOUND",
        )
    # Known, and well: nothing to reset.
    await admin_refused(
        http,
        admin,
        "POST",
        f"{DESTINATIONS}/a.example/reset_connection",
        {},
        status=400,
        errcode="M_UNKNOWN",
    )


async def test_only_admins_may_look_or_reset(env: WithAdmin) -> None:
    http, bob = env.client.http, env.bob
    await _seed(env)
    for method, path in (
        ("GET", DESTINATIONS),
        ("GET", f"{DESTINATIONS}/c.example"),
        ("GET", f"{DESTINATIONS}/c.example/rooms"),
        ("POST", f"{DESTINATIONS}/c.example/reset_connection"),
    ):
        body: dict[str, Any] | None = {} if method == "POST" else None
        await admin_refused(http, bob, method, path, body, status=403, errcode="M_FORBIDDEN")
        await admin_refused(http, None, method, path, body, status=401, errcode="M_MISSING_TOKEN")
    # Bob's attempt changed nothing.
    assert await env.hs.server.storage.get_destination_retry("c.example") is not None


async def test_destinations_sent_only_edus_are_listed_with_their_last_success(
    env: WithAdmin,
) -> None:
    http, admin = env.client.http, env.admin
    await _seed(env)
    deliveries = env.hs.server.storage.federation_admin
    await deliveries.note_delivery("d.example", 2000)
    # An older time than the one noted (another process's) changes nothing.
    await deliveries.note_delivery("d.example", 1000)
    await deliveries.note_delivery("a.example", 500)

    def waiting(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO to_device_outbox (destination, edu) VALUES ('e.example', x'7b7d')"
        )

    await env.hs.server.storage.actor.submit(waiting)
    listed = await admin_ok(
        http, admin, "GET", DESTINATIONS, params={"order_by": "last_success_ts", "dir": "b"}
    )
    shown = {row["destination"]: row for row in listed["destinations"]}
    assert [row["destination"] for row in listed["destinations"]][:2] == [
        "d.example",
        "a.example",
    ]
    assert listed["total"] == 5
    assert shown["d.example"] == {
        "destination": "d.example",
        "retry_last_ts": 0,
        "retry_interval": 0,
        "failure_ts": None,
        "last_successful_stream_ordering": None,
        "last_success_ts": 2000,
    }
    assert shown["a.example"]["last_success_ts"] == 500
    assert shown["e.example"]["last_success_ts"] is None
    assert await admin_ok(http, admin, "GET", f"{DESTINATIONS}/d.example") == shown["d.example"]
    rooms = await admin_ok(http, admin, "GET", f"{DESTINATIONS}/e.example/rooms")
    assert rooms == {"rooms": [], "total": 0}


async def test_a_server_sent_only_a_to_device_message_is_listed_once_it_took_it(
    tmp_path: Path,
) -> None:
    async with two_servers(tmp_path) as (a, b, ca, cb, alice, bob):
        admin = await a.register_user("root", admin=True)
        b_name = b.server_name
        before = await admin_call(ca.http, admin, "GET", f"{DESTINATIONS}/{q(b_name)}")
        assert before[0] == 404
        # No room is shared: the message goes as an EDU alone.
        message = {"messages": {bob.user_id: {bob.device_id: {"n": 1}}}}
        await ca.ok(alice, "PUT", "/sendToDevice/m.test/t1", message)

        async def arrived() -> bool:
            synced = await cb.ok(bob, "GET", "/sync")
            return bool(synced.get("to_device", {}).get("events"))

        await eventually(arrived, "the message at B")

        async def noted() -> bool:
            status, shown = await admin_call(ca.http, admin, "GET", f"{DESTINATIONS}/{q(b_name)}")
            return status == 200 and shown["last_success_ts"] is not None

        await eventually(noted, "B's delivery noted at A")
        shown = await admin_ok(ca.http, admin, "GET", f"{DESTINATIONS}/{q(b_name)}")
        assert shown["last_successful_stream_ordering"] is None
        assert (shown["retry_interval"], shown["failure_ts"]) == (0, None)
        listed = await admin_ok(ca.http, admin, "GET", DESTINATIONS)
        assert [row["destination"] for row in listed["destinations"]] == [b_name]
