"""Timestamp massaging over real HTTP (Application Service API, spec
v1.3): a service's ``?ts=`` on ``PUT .../send`` and ``PUT .../state`` is
the event's ``origin_server_ts``; anyone else's changes nothing. The event
still goes at the tip of the room, so ``/messages`` and ``/notifications``
keep the order events were sent in, while ``/timestamp_to_event`` finds it
by the time the service gave, on this server and on another in the room.
A join or leave this server makes from another server's template (a room
it is not in) is dated now, as Synapse dates it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio
from _appservices import (
    AS_TOKEN,
    WithService,
    open_with_service,
    open_with_service_and_peer,
)
from _client import Client, q
from _federation import eventually

from ranvier.protocol.canonical import CANONICAL_INT_MAX
from ranvier.testing.homeserver import TestHomeserver, TestUser

#: 3 January 2022, midnight UTC: a bridged network's history, long before
#: any room of the test exists.
IMPORTED = 1_641_168_000_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _as_send(
    env: WithService,
    room_id: str,
    txn_id: str,
    body: str,
    *,
    ts: str | None,
    user_id: str | None = None,
) -> tuple[int, Any]:
    params: dict[str, str] = {}
    if ts is not None:
        params["ts"] = ts
    if user_id is not None:
        params["user_id"] = user_id
    return await env.client.call(
        None,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/{txn_id}",
        {"msgtype": "m.text", "body": body},
        token=AS_TOKEN,
        params=params,
    )


async def _event(env: WithService, user: TestUser, room_id: str, event_id: str) -> Any:
    return await env.client.ok(user, "GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")


async def _bridged_room(env: WithService) -> tuple[str, str]:
    """A public room of Alice's that the bridge's ghost has joined; the
    room's ID and the ghost's."""
    ghost = await env.register("_br_ghost")
    room_id = await env.client.create_room(env.alice, preset="public_chat")
    await env.as_ok("POST", f"/rooms/{q(room_id)}/join", {}, user_id=ghost)
    return room_id, ghost


async def _timeline(env: WithService, room_id: str) -> list[str]:
    answer = await env.client.ok(
        env.alice, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": "50"}
    )
    return [event["event_id"] for event in answer["chunk"]]


async def _jump(
    client: Client, user: TestUser, room_id: str, ts: int, direction: str
) -> tuple[int, Any]:
    response = await client.http.get(
        f"/_matrix/client/v1/rooms/{q(room_id)}/timestamp_to_event",
        params={"ts": str(ts), "dir": direction},
        headers={"Authorization": f"Bearer {user.access_token}"},
    )
    return response.status_code, response.json()


async def test_a_service_dates_a_message_of_its_user(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        room_id, ghost = await _bridged_room(env)
        status, sent = await _as_send(
            env, room_id, "t1", "from 2022", ts=str(IMPORTED), user_id=ghost
        )
        assert status == 200, sent
        event = await _event(env, env.alice, room_id, sent["event_id"])
        assert (event["sender"], event["origin_server_ts"]) == (ghost, IMPORTED)
        # The age a client is told runs from the time the service gave.
        assert event["unsigned"]["age"] >= _now_ms() - IMPORTED - 60_000
        # As the service's own sender too, and at both ends of the range.
        await env.as_ok("POST", f"/rooms/{q(room_id)}/join", {})
        for txn_id, ts in (("t2", 0), ("t3", CANONICAL_INT_MAX)):
            status, sent = await _as_send(env, room_id, txn_id, "edge", ts=str(ts))
            assert status == 200, sent
            event = await _event(env, env.alice, room_id, sent["event_id"])
            assert (event["sender"], event["origin_server_ts"]) == (env.sender, ts)


async def test_messages_sent_together_keep_their_own_timestamps(tmp_path: Path) -> None:
    """Messages waiting together are built and written together: each
    with the time its own request gave, or the server's."""
    async with open_with_service(tmp_path) as env:
        room_id, ghost = await _bridged_room(env)
        sent: dict[int, str] = {}

        async def send(n: int) -> None:
            ts = None if n % 3 == 0 else str(IMPORTED + n)
            status, answer = await _as_send(env, room_id, f"c{n}", f"n{n}", ts=ts, user_id=ghost)
            assert status == 200, answer
            sent[n] = answer["event_id"]

        start = _now_ms()
        async with trio.open_nursery() as nursery:
            for n in range(12):
                nursery.start_soon(send, n)
        end = _now_ms()
        for n, event_id in sent.items():
            stamp = (await _event(env, env.alice, room_id, event_id))["origin_server_ts"]
            if n % 3 == 0:
                assert start <= stamp <= end, (n, stamp)
            else:
                assert stamp == IMPORTED + n


async def test_a_service_dates_a_state_event(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        room_id, ghost = await _bridged_room(env)
        answer = await env.client.ok(
            None,
            "PUT",
            f"/rooms/{q(room_id)}/state/m.room.member/{q(ghost)}",
            {"membership": "join", "displayname": "Ghost of 2022"},
            token=AS_TOKEN,
            params={"user_id": ghost, "ts": str(IMPORTED)},
        )
        event = await _event(env, env.alice, room_id, answer["event_id"])
        assert event["origin_server_ts"] == IMPORTED
        assert event["content"]["displayname"] == "Ghost of 2022"
        state = await env.client.state(env.alice, room_id)
        assert state[("m.room.member", ghost)]["event_id"] == answer["event_id"]
        assert state[("m.room.member", ghost)]["origin_server_ts"] == IMPORTED


async def test_a_service_dates_a_join_made_through_state(tmp_path: Path) -> None:
    """A ghost not yet in the room joins it with a member event of its own
    sent through /state, dated as the service asks; the service's bot may
    not make that join for the ghost."""
    async with open_with_service(tmp_path) as env:
        room_id = await env.client.create_room(env.alice, preset="public_chat")
        ghost = await env.register("_br_newcomer")
        path = f"/rooms/{q(room_id)}/state/m.room.member/{q(ghost)}"
        status, answer = await env.as_call("PUT", path, {"membership": "join"})
        assert (status, answer.get("errcode")) == (403, "M_FORBIDDEN"), answer
        answer = await env.client.ok(
            None,
            "PUT",
            path,
            {"membership": "join", "displayname": "Newcomer"},
            token=AS_TOKEN,
            params={"user_id": ghost, "ts": str(IMPORTED)},
        )
        event = await _event(env, env.alice, room_id, answer["event_id"])
        assert (event["sender"], event["origin_server_ts"]) == (ghost, IMPORTED)
        assert event["content"] == {"membership": "join", "displayname": "Newcomer"}
        state = await env.client.state(env.alice, room_id)
        assert state[("m.room.member", ghost)]["event_id"] == answer["event_id"]


async def test_a_bad_timestamp_is_refused_and_nothing_is_sent(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        room_id, ghost = await _bridged_room(env)
        before = await _timeline(env, room_id)
        bad = [
            "-1",
            "1.5",
            "1e3",
            "",
            "soon",
            " 12",
            "0x10",
            "١٢٣",  # digits, but not ASCII ones
            "²",
            str(CANONICAL_INT_MAX + 1),
            "9" * 40,
        ]
        for n, ts in enumerate(bad):
            status, answer = await _as_send(env, room_id, f"bad{n}", "never", ts=ts, user_id=ghost)
            assert (status, answer.get("errcode")) == (400, "M_INVALID_PARAM"), (ts, answer)
            assert "ts" in answer["error"]
            status, answer = await env.client.call(
                None,
                "PUT",
                f"/rooms/{q(room_id)}/state/m.room.member/{q(ghost)}",
                {"membership": "join", "displayname": "never"},
                token=AS_TOKEN,
                params={"user_id": ghost, "ts": ts},
            )
            assert (status, answer.get("errcode")) == (400, "M_INVALID_PARAM"), (ts, answer)
        assert await _timeline(env, room_id) == before
        # A refused transaction is no transaction: sent again, well dated, it goes.
        status, sent = await _as_send(env, room_id, "bad0", "now", ts=str(IMPORTED), user_id=ghost)
        assert status == 200, sent
        assert (await _timeline(env, room_id))[0] == sent["event_id"]


async def test_a_users_timestamp_changes_nothing(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        room_id = await env.client.create_room(env.alice, preset="public_chat")
        for n, ts in enumerate((str(IMPORTED), "-1", "soon")):
            start = _now_ms()
            sent = await env.client.ok(
                env.alice,
                "PUT",
                f"/rooms/{q(room_id)}/send/m.room.message/u{n}",
                {"msgtype": "m.text", "body": "mine"},
                params={"ts": ts},
            )
            stated = await env.client.ok(
                env.alice,
                "PUT",
                f"/rooms/{q(room_id)}/state/m.room.topic",
                {"topic": f"topic {n}"},
                params={"ts": ts},
            )
            end = _now_ms()
            for event_id in (sent["event_id"], stated["event_id"]):
                event = await _event(env, env.alice, room_id, event_id)
                assert start <= event["origin_server_ts"] <= end, (ts, event)


async def test_a_retry_with_another_timestamp_answers_the_first_event(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        room_id, ghost = await _bridged_room(env)
        status, first = await _as_send(
            env, room_id, "same", "once", ts=str(IMPORTED), user_id=ghost
        )
        assert status == 200, first
        status, again = await _as_send(
            env, room_id, "same", "once", ts=str(IMPORTED + 5), user_id=ghost
        )
        assert (status, again) == (200, first)
        status, bare = await _as_send(env, room_id, "same", "once", ts=None, user_id=ghost)
        assert (status, bare) == (200, first)
        timeline = await _timeline(env, room_id)
        assert timeline.count(first["event_id"]) == 1
        assert timeline[0] == first["event_id"]
        event = await _event(env, env.alice, room_id, first["event_id"])
        assert event["origin_server_ts"] == IMPORTED


async def test_an_imported_message_keeps_its_place_and_is_found_by_its_time(
    tmp_path: Path,
) -> None:
    async with open_with_service(tmp_path) as env:
        before_room = _now_ms() - 1
        room_id, ghost = await _bridged_room(env)
        live = await env.client.ok(
            env.alice,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/live",
            {"msgtype": "m.text", "body": "today"},
        )
        status, imported = await _as_send(
            env, room_id, "old", "from 2022", ts=str(IMPORTED), user_id=ghost
        )
        assert status == 200, imported

        # The DAG's order, not the timestamps': the import comes after.
        timeline = await _timeline(env, room_id)
        assert timeline[:2] == [imported["event_id"], live["event_id"]]
        answer = await env.client.ok(
            env.alice, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "f"}
        )
        forwards = [event["event_id"] for event in answer["chunk"]]
        assert forwards.index(live["event_id"]) < forwards.index(imported["event_id"])

        # Found by the time the service gave, before anything of the room.
        status, found = await _jump(env.client, env.alice, room_id, before_room, "b")
        assert (status, found) == (
            200,
            {"event_id": imported["event_id"], "origin_server_ts": IMPORTED},
        )
        status, found = await _jump(env.client, env.alice, room_id, IMPORTED - 1, "f")
        assert (status, found["event_id"]) == (200, imported["event_id"])
        status, found = await _jump(env.client, env.alice, room_id, IMPORTED - 1, "b")
        assert (status, found.get("errcode")) == (404, "M_NOT_FOUND")


async def test_notifications_of_an_imported_message_keep_the_order_of_sending(
    tmp_path: Path,
) -> None:
    async with open_with_service(tmp_path) as env:
        # Alice and the ghost alone: every message notifies her (one-to-one rule).
        room_id, ghost = await _bridged_room(env)
        status, newer = await _as_send(env, room_id, "n1", "first sent", ts=None, user_id=ghost)
        assert status == 200, newer
        status, older = await _as_send(
            env, room_id, "n2", "second sent", ts=str(IMPORTED), user_id=ghost
        )
        assert status == 200, older
        answer = await env.client.ok(env.alice, "GET", "/notifications")
        listed = [entry["event"]["event_id"] for entry in answer["notifications"]]
        assert listed[:2] == [older["event_id"], newer["event_id"]]
        first = answer["notifications"][0]
        assert first["event"]["origin_server_ts"] == IMPORTED


async def test_an_imported_message_is_found_from_another_server(tmp_path: Path) -> None:
    """Complement's imported-event case: a user of B, which joined after
    the import and never held the message, jumps to a time before the room
    existed and gets it, through A."""
    async with open_with_service_and_peer(tmp_path) as (env, b, cb):
        charlie = await b.register_user("charlie")
        before_room = _now_ms() - 1
        room_id, ghost = await _bridged_room(env)
        status, imported = await _as_send(
            env, room_id, "old", "from 2022", ts=str(IMPORTED), user_id=ghost
        )
        assert status == 200, imported
        await cb.ok(charlie, "POST", f"/join/{q(room_id)}", {}, params={"via": env.hs.server_name})
        with trio.fail_after(20):
            await b.server.wait_for_full_state(room_id)
        # B holds the message at most as an outlier (the prev event of
        # Charlie's join), outside its timeline: only A can name it.
        held = await b.server.storage.get_events([imported["event_id"]])
        assert all(event.outlier for event in held.values())

        status, found = await _jump(cb, charlie, room_id, before_room, "b")
        assert (status, found) == (
            200,
            {"event_id": imported["event_id"], "origin_server_ts": IMPORTED},
        )

        async def in_bs_timeline() -> bool:
            events = await b.server.storage.get_events([imported["event_id"]])
            event = events.get(imported["event_id"])
            return event is not None and not event.outlier

        await eventually(in_bs_timeline, "the imported message in B's timeline")
        event = await cb.ok(charlie, "GET", f"/rooms/{q(room_id)}/event/{q(imported['event_id'])}")
        assert (event["sender"], event["origin_server_ts"]) == (ghost, IMPORTED)


async def test_joins_and_leaves_made_through_another_server_are_dated_now(
    tmp_path: Path,
) -> None:
    """The rejection through /state of an invite from another server, and
    a join through /state of a room this server is not in, are made from
    that server's make_leave and make_join templates and dated by this
    server's clock whatever ``ts`` the service gave, as Synapse dates them
    (it hands the service's time to the events it makes in a room it is
    in, not to those); once this server is in the room, a join and a leave
    made here take the service's time again."""
    async with open_with_service_and_peer(tmp_path) as (env, b, cb):
        a = env.hs
        charlie = await b.register_user("charlie")
        # Of a version whose room IDs name the server: /state takes no
        # servers to join through.
        room_id = await cb.create_room(charlie, preset="public_chat", room_version="11")
        ghost, latecomer, invitee = [
            await env.register(f"_br_{name}") for name in ("ghost", "latecomer", "invitee")
        ]

        async def member(user_id: str, membership: str) -> str:
            answer = await env.client.ok(
                None,
                "PUT",
                f"/rooms/{q(room_id)}/state/m.room.member/{q(user_id)}",
                {"membership": membership},
                token=AS_TOKEN,
                params={"user_id": user_id, "ts": str(IMPORTED)},
            )
            return str(answer["event_id"])

        async def held(server: TestHomeserver, event_id: str) -> int | None:
            found = (await server.server.storage.get_events([event_id])).get(event_id)
            return None if found is None else found.origin_server_ts

        async def dated(event_id: str) -> int:
            """The event's time, the same on A, which made it, and on B."""

            async def at_b() -> bool:
                return await held(b, event_id) is not None

            await eventually(at_b, f"{event_id} at B")
            ts_a, ts_b = await held(a, event_id), await held(b, event_id)
            assert ts_a == ts_b, (ts_a, ts_b)
            assert ts_a is not None
            return ts_a

        async def invited() -> bool:
            members = a.server.storage.room_members
            return await members.get_latest_membership_event_id(invitee, room_id) is not None

        await cb.ok(charlie, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": invitee})
        await eventually(invited, "the invite of B's room at A")
        before = _now_ms()
        rejected = await member(invitee, "leave")
        remote_join = await member(ghost, "join")
        after = _now_ms()
        assert before <= await dated(rejected) <= after
        assert before <= await dated(remote_join) <= after

        # A is in the room: a join and a leave are made here, dated by the service.
        with trio.fail_after(20):
            await a.server.wait_for_full_state(room_id)
        assert await dated(await member(latecomer, "join")) == IMPORTED
        assert await dated(await member(ghost, "leave")) == IMPORTED
