"""/sync, filters and /messages over real HTTP on a started homeserver.

Rooms are driven through the HomeServer's own methods (create_room,
send_event, invite, join_room, leave_room); what the client sees is read
through the client listener with an access token, as a client would.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from ranvier.config import Config, DatabaseConfig, ListenerConfig
from ranvier.core import pagination
from ranvier.server import HomeServer, open_homeserver

SERVER = "sync.test"
ALICE = f"@alice:{SERVER}"
BOB = f"@bob:{SERVER}"
CAROL = f"@carol:{SERVER}"


@dataclass
class _Env:
    hs: HomeServer
    http: httpx.AsyncClient
    tokens: dict[str, str]

    async def get(self, user: str, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(
            path,
            params={k: v for k, v in params.items() if v is not None},
            headers={"Authorization": f"Bearer {self.tokens[user]}"},
        )

    async def sync(self, user: str, **params: Any) -> dict[str, Any]:
        response = await self.get(user, "/_matrix/client/v3/sync", **params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[_Env]:
    config = Config(
        server_name=SERVER,
        data_dir=tmp_path / "hs",
        listeners=(ListenerConfig(type="client", host="127.0.0.1", port=0),),
        database=DatabaseConfig(synchronous="OFF"),
    )
    async with open_homeserver(config) as hs:
        tokens = {}
        for name in ("alice", "bob", "carol"):
            registration = await hs.accounts.register(name, "a long enough password")
            assert registration.access_token is not None
            tokens[registration.user_id] = registration.access_token
        async with httpx.AsyncClient(base_url=hs.listeners[0].url, timeout=30) as http:
            yield _Env(hs, http, tokens)


def _bodies(room: dict[str, Any]) -> list[str]:
    return [
        event["content"]["body"]
        for event in room["timeline"]["events"]
        if event["type"] == "m.room.message"
    ]


async def _say(hs: HomeServer, user: str, room_id: str, *bodies: str) -> None:
    for body in bodies:
        await hs.send_event(user, room_id, "m.room.message", {"msgtype": "m.text", "body": body})


async def test_initial_sync_has_the_room_with_its_state_and_latest_events(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE, name="Lobby")
    await _say(env.hs, ALICE, room_id, "one", "two")
    body = await env.sync(ALICE)
    assert body["next_batch"].startswith("s")
    room = body["rooms"]["join"][room_id]
    assert _bodies(room) == ["one", "two"]
    # The whole room fits in the timeline.
    assert room["timeline"]["limited"] is False
    assert room["timeline"]["events"][0]["type"] == "m.room.create"
    assert room["state"]["events"] == []
    await _say(env.hs, ALICE, room_id, *(f"m{i}" for i in range(12)))
    body = await env.sync(ALICE)
    room = body["rooms"]["join"][room_id]
    assert _bodies(room) == [f"m{i}" for i in range(2, 12)]
    # Initial sync: the state before the timeline plus the timeline is the room.
    state_types = {event["type"] for event in room["state"]["events"]}
    timeline_types = {event["type"] for event in room["timeline"]["events"]}
    assert "m.room.create" in state_types | timeline_types
    assert "m.room.name" in state_types | timeline_types
    assert all("room_id" not in event for event in room["timeline"]["events"])
    assert room["timeline"]["limited"] is True
    # Bob is in no room.
    assert (await env.sync(BOB))["rooms"]["join"] == {}


async def test_incremental_sync_has_only_what_is_new(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE)
    quiet = await env.hs.create_room(ALICE)
    first = await env.sync(ALICE)
    assert {room_id, quiet} <= first["rooms"]["join"].keys()
    await _say(env.hs, ALICE, room_id, "hello")
    second = await env.sync(ALICE, since=first["next_batch"])
    assert list(second["rooms"]["join"]) == [room_id]
    room = second["rooms"]["join"][room_id]
    assert _bodies(room) == ["hello"]
    assert room["timeline"]["limited"] is False
    assert room["state"]["events"] == []
    # Nothing new: nothing at all, and a next_batch that is no older.
    third = await env.sync(ALICE, since=second["next_batch"])
    assert third["rooms"]["join"] == {}
    assert third["next_batch"] == second["next_batch"]


async def test_a_long_poll_is_woken_by_a_send_from_another_task(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE)
    since = (await env.sync(ALICE))["next_batch"]
    answers: list[dict[str, Any]] = []

    async def poll() -> None:
        answers.append(await env.sync(ALICE, since=since, timeout=60_000))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            # The poll has found nothing and sleeps on the notifier.
            while env.hs.stream_notifier.waiting == 0:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            await _say(env.hs, ALICE, room_id, "wake up")
    (answer,) = answers
    assert _bodies(answer["rooms"]["join"][room_id]) == ["wake up"]
    assert answer["next_batch"] != since


async def test_a_long_poll_that_times_out_answers_empty(env: _Env) -> None:
    await env.hs.create_room(ALICE)
    since = (await env.sync(ALICE))["next_batch"]
    started = trio.current_time()
    with trio.fail_after(30):
        body = await env.sync(ALICE, since=since, timeout=300)
    assert trio.current_time() - started >= 0.3
    assert body["rooms"]["join"] == {}
    assert body["next_batch"] == since


async def test_a_long_poll_ignores_rooms_of_others(env: _Env) -> None:
    await env.hs.create_room(ALICE)
    since = (await env.sync(ALICE))["next_batch"]
    others = await env.hs.create_room(BOB)
    await _say(env.hs, BOB, others, "not for alice")
    body = await env.sync(ALICE, since=since, timeout=200)
    assert body["rooms"]["join"] == {}


async def test_a_limited_incremental_sync_carries_the_state_that_changed(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE)
    since = (await env.sync(ALICE))["next_batch"]
    await env.hs.send_event(ALICE, room_id, "m.room.topic", {"topic": "new"}, state_key="")
    await _say(env.hs, ALICE, room_id, *(f"m{i}" for i in range(5)))
    body = await env.sync(
        ALICE, since=since, filter=json.dumps({"room": {"timeline": {"limit": 3}}})
    )
    room = body["rooms"]["join"][room_id]
    assert _bodies(room) == ["m2", "m3", "m4"]
    assert room["timeline"]["limited"] is True
    assert [(e["type"], e["content"]) for e in room["state"]["events"]] == [
        ("m.room.topic", {"topic": "new"})
    ]
    # prev_batch pages back from the start of the timeline.
    messages = await env.get(
        ALICE,
        f"/_matrix/client/v3/rooms/{room_id}/messages",
        dir="b",
        limit=2,
        **{"from": room["timeline"]["prev_batch"]},
    )
    assert [e["content"].get("body") for e in messages.json()["chunk"]] == ["m1", "m0"]


async def test_filters_are_stored_read_back_and_applied(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE, invite=[BOB])
    await env.hs.join_room(BOB, room_id)
    await _say(env.hs, ALICE, room_id, "from alice")
    await _say(env.hs, BOB, room_id, "from bob")
    definition = {"room": {"timeline": {"senders": [BOB], "types": ["m.room.*"]}}}
    created = await env.http.post(
        f"/_matrix/client/v3/user/{ALICE}/filter",
        json=definition,
        headers={"Authorization": f"Bearer {env.tokens[ALICE]}"},
    )
    assert created.status_code == 200, created.text
    filter_id = created.json()["filter_id"]
    read = await env.get(ALICE, f"/_matrix/client/v3/user/{ALICE}/filter/{filter_id}")
    assert read.json() == definition
    body = await env.sync(ALICE, filter=filter_id)
    timeline = body["rooms"]["join"][room_id]["timeline"]["events"]
    assert {event["sender"] for event in timeline} == {BOB}
    assert "from bob" in [event["content"].get("body") for event in timeline]
    # Not a room the filter lets through.
    body = await env.sync(ALICE, filter=json.dumps({"room": {"not_rooms": [room_id]}}))
    assert room_id not in body["rooms"]["join"]
    # Only the fields asked for.
    body = await env.sync(ALICE, filter=json.dumps({"event_fields": ["type", "content.body"]}))
    last = body["rooms"]["join"][room_id]["timeline"]["events"][-1]
    assert last == {"type": "m.room.message", "content": {"body": "from bob"}}


async def test_bad_filters_and_someone_elses(env: _Env) -> None:
    auth = {"Authorization": f"Bearer {env.tokens[ALICE]}"}
    bad = await env.http.post(
        f"/_matrix/client/v3/user/{ALICE}/filter",
        json={"room": {"timeline": {"limit": "ten"}}},
        headers=auth,
    )
    assert (bad.status_code, bad.json()["errcode"]) == (400, "M_BAD_JSON")
    theirs = await env.http.post(f"/_matrix/client/v3/user/{BOB}/filter", json={}, headers=auth)
    assert (theirs.status_code, theirs.json()["errcode"]) == (403, "M_FORBIDDEN")
    created = await env.http.post(
        f"/_matrix/client/v3/user/{BOB}/filter",
        json={},
        headers={"Authorization": f"Bearer {env.tokens[BOB]}"},
    )
    filter_id = created.json()["filter_id"]
    peek = await env.get(ALICE, f"/_matrix/client/v3/user/{BOB}/filter/{filter_id}")
    assert (peek.status_code, peek.json()["errcode"]) == (403, "M_FORBIDDEN")
    missing = await env.get(ALICE, f"/_matrix/client/v3/user/{ALICE}/filter/77")
    assert (missing.status_code, missing.json()["errcode"]) == (404, "M_NOT_FOUND")
    # Bob's filter ID is not Alice's.
    unknown = await env.get(ALICE, "/_matrix/client/v3/sync", filter="77")
    assert (unknown.status_code, unknown.json()["errcode"]) == (400, "M_INVALID_PARAM")
    garbage = await env.get(ALICE, "/_matrix/client/v3/sync", filter="{not json")
    assert (garbage.status_code, garbage.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_bad_tokens_are_refused(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE)
    for token in ("garbage", "s12", "s1_x", "t5"):
        response = await env.get(ALICE, "/_matrix/client/v3/sync", since=token)
        assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")
    response = await env.get(
        ALICE, f"/_matrix/client/v3/rooms/{room_id}/messages", **{"from": "nope"}
    )
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")
    response = await env.get(ALICE, f"/_matrix/client/v3/rooms/{room_id}/messages", dir="x")
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")
    for name, value in (("limit", "-1"), ("limit", "ten")):
        response = await env.get(
            ALICE, f"/_matrix/client/v3/rooms/{room_id}/messages", **{name: value}
        )
        assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")
    response = await env.get(ALICE, "/_matrix/client/v3/sync", timeout="soon")
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")
    response = await env.get(ALICE, "/_matrix/client/v3/sync", set_presence="busy")
    assert (response.status_code, response.json()["errcode"]) == (400, "M_INVALID_PARAM")
    missing = await env.http.get("/_matrix/client/v3/sync")
    assert (missing.status_code, missing.json()["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_invites_and_leaves(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE, name="Party")
    since = (await env.sync(BOB))["next_batch"]
    await env.hs.invite(ALICE, room_id, BOB)
    body = await env.sync(BOB, since=since)
    invite = body["rooms"]["invite"][room_id]["invite_state"]["events"]
    kinds = {(event["type"], event["state_key"]) for event in invite}
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.member", BOB)} <= kinds
    assert body["rooms"]["join"] == {}
    # Joined: the room comes in full, as newly joined.
    await env.hs.join_room(BOB, room_id)
    await _say(env.hs, ALICE, room_id, "welcome")
    joined = await env.sync(BOB, since=body["next_batch"])
    assert room_id not in joined["rooms"]["invite"]
    room = joined["rooms"]["join"][room_id]
    assert "welcome" in _bodies(room)
    state_types = {e["type"] for e in room["state"]["events"] + room["timeline"]["events"]}
    assert "m.room.create" in state_types
    # Left: the leave, and nothing after it.
    await env.hs.leave_room(BOB, room_id)
    await _say(env.hs, ALICE, room_id, "gone")
    left = await env.sync(BOB, since=joined["next_batch"])
    assert room_id not in left["rooms"]["join"]
    timeline = left["rooms"]["leave"][room_id]["timeline"]["events"]
    assert timeline[-1]["type"] == "m.room.member"
    assert timeline[-1]["content"]["membership"] == "leave"
    assert "gone" not in [event["content"].get("body") for event in timeline]
    # Initial syncs list left rooms only when asked to.
    assert room_id not in (await env.sync(BOB))["rooms"]["leave"]
    with_leave = await env.sync(BOB, filter=json.dumps({"room": {"include_leave": True}}))
    assert room_id in with_leave["rooms"]["leave"]


async def test_messages_pages_back_to_the_start_and_forward_again(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE)
    await _say(env.hs, ALICE, room_id, *(f"m{i}" for i in range(7)))
    path = f"/_matrix/client/v3/rooms/{room_id}/messages"
    seen: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(20):
        page = (await env.get(ALICE, path, dir="b", limit=4, **{"from": token})).json()
        seen.extend(page["chunk"])
        assert len(page["chunk"]) <= 4
        if "end" not in page:
            break
        token = page["end"]
    else:
        pytest.fail("paging back never reached the start")
    assert seen[-1]["type"] == "m.room.create"
    bodies = [event["content"].get("body") for event in seen if event["type"] == "m.room.message"]
    assert bodies == [f"m{i}" for i in reversed(range(7))]
    # Forward from the start: the same events in the other order.
    forward: list[dict[str, Any]] = []
    token = None
    for _ in range(20):
        page = (await env.get(ALICE, path, dir="f", limit=5, **{"from": token})).json()
        forward.extend(page["chunk"])
        if "end" not in page:
            break
        token = page["end"]
    assert [event["event_id"] for event in forward] == [e["event_id"] for e in reversed(seen)]
    # `to` stops the page.
    first_page = (await env.get(ALICE, path, dir="f", limit=3)).json()
    bounded = (await env.get(ALICE, path, dir="f", to=first_page["end"])).json()
    assert [e["event_id"] for e in bounded["chunk"]] == [e["event_id"] for e in first_page["chunk"]]


async def test_messages_with_lazy_loaded_members(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE, preset="public_chat")
    await env.hs.join_room(BOB, room_id)
    await _say(env.hs, BOB, room_id, "bob speaks")
    lazy = json.dumps({"lazy_load_members": True, "types": ["m.room.message"]})
    page = (
        await env.get(ALICE, f"/_matrix/client/v3/rooms/{room_id}/messages", limit=1, filter=lazy)
    ).json()
    assert [event["sender"] for event in page["chunk"]] == [BOB]
    assert [(e["type"], e["state_key"]) for e in page["state"]] == [("m.room.member", BOB)]


async def test_messages_are_for_members_only(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE, preset="public_chat")
    path = f"/_matrix/client/v3/rooms/{room_id}/messages"
    stranger = await env.get(CAROL, path)
    assert (stranger.status_code, stranger.json()["errcode"]) == (403, "M_FORBIDDEN")
    # A world-readable room is anyone's to read, from when it became so.
    readable = await env.hs.create_room(ALICE, preset="public_chat")
    await _say(env.hs, ALICE, readable, "hidden")
    await env.hs.send_event(
        ALICE,
        readable,
        "m.room.history_visibility",
        {"history_visibility": "world_readable"},
        state_key="",
    )
    await _say(env.hs, ALICE, readable, "for all")
    page = (await env.get(CAROL, f"/_matrix/client/v3/rooms/{readable}/messages")).json()
    assert [e["content"]["body"] for e in page["chunk"] if "body" in e["content"]] == ["for all"]
    await env.hs.join_room(BOB, room_id)
    await _say(env.hs, ALICE, room_id, "before")
    await env.hs.leave_room(BOB, room_id)
    await _say(env.hs, ALICE, room_id, "after")
    page = (await env.get(BOB, path, limit=50)).json()
    bodies = [event["content"].get("body") for event in page["chunk"]]
    assert "before" in bodies
    assert "after" not in bodies
    assert page["chunk"][0]["content"].get("membership") == "leave"


async def test_full_state_sends_the_whole_state_with_a_timeline_since_the_token(
    env: _Env,
) -> None:
    room_id = await env.hs.create_room(ALICE, name="Full")
    quiet = await env.hs.create_room(ALICE)
    since = (await env.sync(ALICE))["next_batch"]
    await _say(env.hs, ALICE, room_id, "new")
    body = await env.sync(ALICE, since=since, full_state="true")
    room = body["rooms"]["join"][room_id]
    assert [event["type"] for event in room["timeline"]["events"]] == ["m.room.message"]
    kinds = {(event["type"], event["state_key"]) for event in room["state"]["events"]}
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.member", ALICE)} <= kinds
    # A room with nothing new is there too, with its state.
    assert body["rooms"]["join"][quiet]["timeline"]["events"] == []
    assert body["rooms"]["join"][quiet]["state"]["events"]
    bad = await env.get(ALICE, "/_matrix/client/v3/sync", full_state="yes")
    assert (bad.status_code, bad.json()["errcode"]) == (400, "M_INVALID_PARAM")


async def test_a_profile_change_is_not_a_new_join(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE)
    since = (await env.sync(ALICE))["next_batch"]
    await env.hs.send_event(
        ALICE,
        room_id,
        "m.room.member",
        {"membership": "join", "displayname": "Alice"},
        state_key=ALICE,
    )
    room = (await env.sync(ALICE, since=since))["rooms"]["join"][room_id]
    assert [event["content"] for event in room["timeline"]["events"]] == [
        {"membership": "join", "displayname": "Alice"}
    ]
    assert room["timeline"]["limited"] is False
    assert room["state"]["events"] == []


async def test_the_sending_device_gets_its_transaction_id_back(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE, preset="public_chat")
    await env.hs.join_room(BOB, room_id)
    since = {user: (await env.sync(user))["next_batch"] for user in (ALICE, BOB)}
    sent = await env.http.put(
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/txn-1",
        json={"msgtype": "m.text", "body": "echo"},
        headers={"Authorization": f"Bearer {env.tokens[ALICE]}"},
    )
    assert sent.status_code == 200, sent.text
    event_id = sent.json()["event_id"]

    def unsigned_of(events: list[dict[str, Any]]) -> dict[str, Any]:
        (event,) = [event for event in events if event["event_id"] == event_id]
        unsigned: dict[str, Any] = event.get("unsigned", {})
        return unsigned

    mine = await env.sync(ALICE, since=since[ALICE])
    assert unsigned_of(mine["rooms"]["join"][room_id]["timeline"]["events"]) == {
        "transaction_id": "txn-1",
        "membership": "join",
    }
    theirs = await env.sync(BOB, since=since[BOB])
    assert "transaction_id" not in unsigned_of(
        theirs["rooms"]["join"][room_id]["timeline"]["events"]
    )
    page = (await env.get(ALICE, f"/_matrix/client/v3/rooms/{room_id}/messages", limit=1)).json()
    assert unsigned_of(page["chunk"])["transaction_id"] == "txn-1"


async def test_lazy_loading_sends_the_senders_and_the_users_own_membership(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE, preset="public_chat")
    await env.hs.join_room(BOB, room_id)
    await env.hs.join_room(CAROL, room_id)
    await _say(env.hs, BOB, room_id, *(f"b{i}" for i in range(10)))
    await _say(env.hs, CAROL, room_id, *(f"c{i}" for i in range(10)))
    lazy = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 10}}})
    room = (await env.sync(ALICE, filter=lazy))["rooms"]["join"][room_id]
    assert {event["sender"] for event in room["timeline"]["events"]} == {CAROL}
    members = {e["state_key"] for e in room["state"]["events"] if e["type"] == "m.room.member"}
    assert members == {ALICE, CAROL}
    # The client cannot count or name the members itself: the summary does.
    assert room["summary"] == {
        "m.joined_member_count": 3,
        "m.invited_member_count": 0,
        "m.heroes": [BOB, CAROL],
    }
    await env.hs.invite(ALICE, room_id, f"@dave:{SERVER}")
    await env.hs.send_event(ALICE, room_id, "m.room.name", {"name": "Named"}, state_key="")
    room = (await env.sync(ALICE, filter=lazy))["rooms"]["join"][room_id]
    assert room["summary"] == {
        "m.joined_member_count": 3,
        "m.invited_member_count": 1,
        "m.heroes": [],
    }
    # Without lazy-loading, every member.
    room = (await env.sync(ALICE))["rooms"]["join"][room_id]
    members = {e["state_key"] for e in room["state"]["events"] if e["type"] == "m.room.member"}
    assert members == {ALICE, BOB, CAROL}
    refused = await env.get(
        ALICE,
        "/_matrix/client/v3/sync",
        filter=json.dumps({"room": {"state": {"lazy_load_members": "true"}}}),
    )
    assert (refused.status_code, refused.json()["errcode"]) == (400, "M_BAD_JSON")


async def test_history_visibility_hides_what_came_before_a_join(env: _Env) -> None:
    guarded = await env.hs.create_room(ALICE, preset="public_chat")
    await env.hs.send_event(
        ALICE,
        guarded,
        "m.room.history_visibility",
        {"history_visibility": "joined"},
        state_key="",
    )
    shared = await env.hs.create_room(ALICE, preset="public_chat")
    for room_id in (guarded, shared):
        await _say(env.hs, ALICE, room_id, "before bob")
        await env.hs.join_room(BOB, room_id)
        await _say(env.hs, ALICE, room_id, "after bob")
    body = await env.sync(BOB)
    assert _bodies(body["rooms"]["join"][guarded]) == ["after bob"]
    assert _bodies(body["rooms"]["join"][shared]) == ["before bob", "after bob"]
    for room_id, expected in ((guarded, ["after bob"]), (shared, ["after bob", "before bob"])):
        page = (await env.get(BOB, f"/_matrix/client/v3/rooms/{room_id}/messages", limit=50)).json()
        bodies = [event["content"]["body"] for event in page["chunk"] if "body" in event["content"]]
        assert bodies == expected
    # Alice, there all along, sees everything.
    assert _bodies((await env.sync(ALICE))["rooms"]["join"][guarded]) == ["before bob", "after bob"]


async def test_a_token_ahead_of_the_server_is_never_answered_with_an_older_one(
    env: _Env,
) -> None:
    await env.hs.create_room(ALICE)
    now = (await env.sync(ALICE))["next_batch"]
    events, _, _, receipts, typing, presence, to_device, devices = (
        int(part) for part in now[1:].split("_")
    )
    ahead = f"s{events + 1000}_7_0_{receipts}_{typing}_{presence + 5}_{to_device + 3}_{devices + 2}"
    body = await env.sync(ALICE, since=ahead, timeout=0)
    assert body["next_batch"] == ahead
    # One stream ahead, the other behind: each keeps the larger.
    mixed = await env.sync(ALICE, since="s0_7", timeout=0)
    assert mixed["next_batch"] == (
        f"s{events}_7_0_{receipts}_{typing}_{presence}_{to_device}_{devices}"
    )


def _member_keys(room: dict[str, Any]) -> set[str]:
    return {e["state_key"] for e in room["state"]["events"] if e["type"] == "m.room.member"}


async def test_lazy_loading_leaves_out_memberships_the_device_was_sent(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE, preset="public_chat")
    await env.hs.join_room(BOB, room_id)
    await _say(env.hs, BOB, room_id, "b0", "b1")
    lazy = {"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 10}}}
    redundant = {"room": {"state": {"lazy_load_members": True, "include_redundant_members": True}}}
    first = await env.sync(ALICE, filter=json.dumps(lazy))
    room = first["rooms"]["join"][room_id]
    timeline_members = {
        e["state_key"] for e in room["timeline"]["events"] if e["type"] == "m.room.member"
    }
    assert BOB in _member_keys(room) | timeline_members

    await _say(env.hs, BOB, room_id, "b2")
    second = await env.sync(ALICE, filter=json.dumps(lazy), since=first["next_batch"])
    room = second["rooms"]["join"][room_id]
    assert _bodies(room) == ["b2"]
    # Bob's join came in the first answer's timeline: the device holds it.
    assert _member_keys(room) == set()
    # Asked for again, it comes again.
    again = await env.sync(ALICE, filter=json.dumps(redundant), since=first["next_batch"])
    assert _member_keys(again["rooms"]["join"][room_id]) == {BOB}

    # Carol's join and her first words arrive in one limited answer whose
    # timeline starts after her join: her membership comes in the state, once.
    await env.hs.join_room(CAROL, room_id)
    await _say(env.hs, CAROL, room_id, *(f"c{i}" for i in range(3)))
    short = {"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 2}}}
    third = await env.sync(ALICE, filter=json.dumps(short), since=second["next_batch"])
    room = third["rooms"]["join"][room_id]
    assert room["timeline"]["limited"]
    assert _member_keys(room) == {CAROL}
    await _say(env.hs, CAROL, room_id, "c3")
    await _say(env.hs, BOB, room_id, "b3")
    fourth = await env.sync(ALICE, filter=json.dumps(lazy), since=third["next_batch"])
    room = fourth["rooms"]["join"][room_id]
    assert _bodies(room) == ["c3", "b3"]
    assert _member_keys(room) == set()

    # Another device of Alice's was sent nothing: it gets both.
    login = await env.hs.accounts.login_with_password("alice", "a long enough password")
    other = await env.http.get(
        "/_matrix/client/v3/sync",
        params={"filter": json.dumps(lazy), "since": third["next_batch"]},
        headers={"Authorization": f"Bearer {login.access_token}"},
    )
    assert _member_keys(other.json()["rooms"]["join"][room_id]) == {BOB, CAROL}
    # Bob's new display name is a new membership event, which is sent.
    await env.hs.send_event(
        BOB, room_id, "m.room.member", {"membership": "join", "displayname": "B"}, state_key=BOB
    )
    await _say(env.hs, BOB, room_id, *(f"d{i}" for i in range(3)))
    fifth = await env.sync(ALICE, filter=json.dumps(short), since=fourth["next_batch"])
    room = fifth["rooms"]["join"][room_id]
    assert room["timeline"]["limited"]
    (bob,) = [e for e in room["state"]["events"] if e["type"] == "m.room.member"]
    assert (bob["state_key"], bob["content"]["displayname"]) == (BOB, "B")


async def test_each_timeline_event_carries_the_readers_membership_at_it(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE, preset="public_chat")
    await _say(env.hs, ALICE, room_id, "before anyone")
    await env.hs.invite(ALICE, room_id, BOB)
    await _say(env.hs, ALICE, room_id, "while bob is invited")
    await env.hs.join_room(BOB, room_id)
    await _say(env.hs, ALICE, room_id, "after bob joined")

    def memberships(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
        return [
            (event["content"].get("body") or event["type"], event["unsigned"].get("membership"))
            for event in events
            if event["type"] == "m.room.message" or event.get("state_key") == BOB
        ]

    expected = [
        ("before anyone", "leave"),
        ("m.room.member", "invite"),
        ("while bob is invited", "invite"),
        ("m.room.member", "join"),
        ("after bob joined", "join"),
    ]
    timeline = (await env.sync(BOB))["rooms"]["join"][room_id]["timeline"]["events"]
    assert memberships(timeline) == expected
    page = await env.get(BOB, f"/_matrix/client/v3/rooms/{room_id}/messages", dir="f", limit=50)
    assert memberships(page.json()["chunk"]) == expected
    # The creator had no membership before her own join: the create event
    # is from before it.
    everything = json.dumps({"room": {"timeline": {"limit": 50}}})
    alice_view = (await env.sync(ALICE, filter=everything))["rooms"]["join"][room_id]["timeline"][
        "events"
    ]
    assert alice_view[0]["type"] == "m.room.create"
    assert alice_view[0]["unsigned"]["membership"] == "leave"
    assert {event["unsigned"]["membership"] for event in alice_view[1:]} == {"join"}

    # A departed member's last events: the leave itself says so.
    since = (await env.sync(BOB))["next_batch"]
    await _say(env.hs, BOB, room_id, "bye")
    await env.hs.leave_room(BOB, room_id)
    left = (await env.sync(BOB, since=since))["rooms"]["leave"][room_id]["timeline"]["events"]
    assert [(e["type"], e["unsigned"]["membership"]) for e in left] == [
        ("m.room.message", "join"),
        ("m.room.member", "leave"),
    ]


async def test_the_readers_membership_is_on_every_endpoint_serving_timeline_events(
    env: _Env,
) -> None:
    room_id = await env.hs.create_room(ALICE, preset="public_chat")
    before = await env.hs.send_event(
        ALICE, room_id, "m.room.message", {"msgtype": "m.text", "body": "needle before bob"}
    )
    await env.hs.invite(ALICE, room_id, BOB)
    await env.hs.join_room(BOB, room_id)
    after = await env.hs.send_event(
        ALICE,
        room_id,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "needle after bob",
            "m.relates_to": {"rel_type": "m.thread", "event_id": before},
        },
    )
    rooms = f"/_matrix/client/v3/rooms/{room_id}"

    # One event: Bob had no membership before his invite, and was joined after.
    for event_id, expected in ((before, "leave"), (after, "join")):
        single = (await env.get(BOB, f"{rooms}/event/{event_id}")).json()
        assert single["unsigned"]["membership"] == expected
    # Alice's own join is her membership at it, not the absence before it.
    create_and_join = (await env.get(ALICE, f"{rooms}/messages", dir="f", limit=2)).json()
    (alice_join,) = [e for e in create_and_join["chunk"] if e.get("state_key") == ALICE]
    own = (await env.get(ALICE, f"{rooms}/event/{alice_join['event_id']}")).json()
    assert own["unsigned"]["membership"] == "join"

    # /context: the event and those around it.
    context = (await env.get(BOB, f"{rooms}/context/{before}", limit=10)).json()
    assert context["event"]["unsigned"]["membership"] == "leave"
    around = {
        e["event_id"]: e["unsigned"]["membership"]
        for e in (*context["events_before"], *context["events_after"])
    }
    assert around[after] == "join"
    assert {e["type"] for e in context["events_after"] if around[e["event_id"]] == "invite"} == {
        "m.room.member"
    }

    # The thread's events (/relations) and its root (/threads).
    relations = (
        await env.get(BOB, f"/_matrix/client/v1/rooms/{room_id}/relations/{before}")
    ).json()
    assert [(e["event_id"], e["unsigned"]["membership"]) for e in relations["chunk"]] == [
        (after, "join")
    ]
    threads = (await env.get(BOB, f"/_matrix/client/v1/rooms/{room_id}/threads")).json()
    assert [(e["event_id"], e["unsigned"]["membership"]) for e in threads["chunk"]] == [
        (before, "leave")
    ]

    # /search: the results and their context.
    found = await env.http.post(
        "/_matrix/client/v3/search",
        json={
            "search_categories": {
                "room_events": {
                    "search_term": "needle",
                    "order_by": "recent",
                    "event_context": {"before_limit": 1, "after_limit": 1},
                }
            }
        },
        headers={"Authorization": f"Bearer {env.tokens[BOB]}"},
    )
    results = found.json()["search_categories"]["room_events"]["results"]
    assert [(r["result"]["event_id"], r["result"]["unsigned"]["membership"]) for r in results] == [
        (after, "join"),
        (before, "leave"),
    ]
    newest_context = results[0]["context"]["events_before"]
    assert [e["unsigned"]["membership"] for e in newest_context] == ["join"]


async def test_messages_between_sync_tokens_lazy_load_only_their_senders(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE, preset="public_chat")
    await env.hs.join_room(BOB, room_id)
    await env.hs.join_room(CAROL, room_id)
    await _say(env.hs, BOB, room_id, "from bob")
    before = (await env.sync(ALICE))["next_batch"]
    await _say(env.hs, CAROL, room_id, "from carol")
    after = (await env.sync(ALICE, since=before))["next_batch"]
    lazy = json.dumps({"lazy_load_members": True})
    path = f"/_matrix/client/v3/rooms/{room_id}/messages"
    page = (
        await env.get(ALICE, path, dir="f", filter=lazy, **{"from": before, "to": after})
    ).json()
    assert [event["content"]["body"] for event in page["chunk"]] == ["from carol"]
    assert [(e["type"], e["state_key"], e["content"]["membership"]) for e in page["state"]] == [
        ("m.room.member", CAROL, "join")
    ]
    # Back from a sync token: what came before it, Alice's creation of the
    # room, whose membership is there to show it (here in the chunk itself,
    # which the spec lets the state leave out).
    alone = await env.hs.create_room(ALICE)
    token = (await env.sync(ALICE))["next_batch"]
    await _say(env.hs, ALICE, alone, "later")
    page = (
        await env.get(
            ALICE,
            f"/_matrix/client/v3/rooms/{alone}/messages",
            dir="b",
            filter=lazy,
            **{"from": token},
        )
    ).json()
    assert "later" not in [event["content"].get("body") for event in page["chunk"]]
    assert page["chunk"][-1]["type"] == "m.room.create"
    shown = page["chunk"] + page.get("state", [])
    members = {e["state_key"] for e in shown if e["type"] == "m.room.member"}
    assert members == {ALICE}
    # Forward from a sync token: what came after it.
    page = (
        await env.get(
            ALICE, f"/_matrix/client/v3/rooms/{alone}/messages", dir="f", **{"from": token}
        )
    ).json()
    assert [event["content"]["body"] for event in page["chunk"]] == ["later"]


async def test_state_changed_by_events_filtered_out_of_the_timeline_end_is_sent(
    env: _Env,
) -> None:
    """The timeline's last events are left out by its filter; the state they
    set still reaches the client in ``state``, initial and incremental, so
    that state and timeline together give the room's state now."""
    room_id = await env.hs.create_room(ALICE, name="Old")
    since = (await env.sync(ALICE))["next_batch"]
    await _say(env.hs, ALICE, room_id, "kept")
    await env.hs.send_event(ALICE, room_id, "m.room.name", {"name": "New"}, state_key="")
    await env.hs.send_event(ALICE, room_id, "please_filter_me", {"body": "hidden"})
    hidden = {"room": {"timeline": {"not_types": ["m.room.name", "please_filter_me"], "limit": 1}}}
    for token in (None, since):
        answer = await env.sync(ALICE, filter=json.dumps(hidden), since=token)
        room = answer["rooms"]["join"][room_id]
        assert _bodies(room) == ["kept"], token
        names = [e["content"] for e in room["state"]["events"] if e["type"] == "m.room.name"]
        assert names == [{"name": "New"}], token


async def test_a_filtered_timeline_holding_every_event_it_takes_is_not_limited(
    env: _Env,
) -> None:
    """The filter leaves out the create event: the timeline cannot start at
    it, yet holding the room's only message it is not limited."""
    room_id = await env.hs.create_room(ALICE)
    await _say(env.hs, ALICE, room_id, "the only one")
    for n in range(12):
        await env.hs.send_event(ALICE, room_id, "org.example.filler", {"n": n})
    messages = {"room": {"timeline": {"limit": 1, "types": ["m.room.message"]}}}
    room = (await env.sync(ALICE, filter=json.dumps(messages)))["rooms"]["join"][room_id]
    assert _bodies(room) == ["the only one"]
    assert room["timeline"]["limited"] is False
    # A second message is one more than the limit takes.
    await _say(env.hs, ALICE, room_id, "a second")
    room = (await env.sync(ALICE, filter=json.dumps(messages)))["rooms"]["join"][room_id]
    assert _bodies(room) == ["a second"]
    assert room["timeline"]["limited"] is True


async def test_the_federation_event_format_sends_the_events_as_pdus(env: _Env) -> None:
    room_id = await env.hs.create_room(ALICE, preset="public_chat")
    await env.hs.join_room(BOB, room_id)
    since = (await env.sync(ALICE))["next_batch"]
    await _say(env.hs, ALICE, room_id, "as sent")
    pdus = json.dumps({"event_format": "federation", "room": {"timeline": {"limit": 1}}})
    for token in (None, since):
        room = (await env.sync(ALICE, filter=pdus, since=token))["rooms"]["join"][room_id]
        (event,) = room["timeline"]["events"]
        assert event["content"]["body"] == "as sent"
        assert event["room_id"] == room_id
        assert {"prev_events", "auth_events", "depth", "hashes", "signatures"} <= event.keys()
        assert isinstance(event["event_id"], str)
        fetched = await env.get(
            ALICE, f"/_matrix/client/v3/rooms/{room_id}/event/{event['event_id']}"
        )
        assert fetched.json()["content"] == event["content"]
        state = {(e["type"], e["state_key"]): e for e in room["state"]["events"]}
        if token is None:
            assert "signatures" in state[("m.room.member", BOB)]
    # The client format, for comparison, has none of the PDU's fields.
    (event,) = (await env.sync(ALICE, filter=json.dumps({"room": {"timeline": {"limit": 1}}})))[
        "rooms"
    ]["join"][room_id]["timeline"]["events"]
    assert not {"prev_events", "auth_events", "depth", "hashes", "signatures", "room_id"} & set(
        event
    )


async def test_lazy_loading_gappy_syncs_carry_the_joins_and_leaves_of_the_gap(env: _Env) -> None:
    """A lazy-loading client keeps its member list current from incremental
    syncs (the spec's expected pattern): a join or leave in a gap the
    timeline skips reaches it in ``state``, though the member never spoke;
    the memberships it holds already do not come again."""
    room_id = await env.hs.create_room(ALICE, preset="public_chat")
    await env.hs.join_room(BOB, room_id)
    await _say(env.hs, BOB, room_id, *(f"b{i}" for i in range(10)))
    lazy = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 10}}})
    answer = await env.sync(ALICE, filter=lazy)

    def memberships(answer: dict[str, Any]) -> dict[str, str]:
        room = answer["rooms"]["join"][room_id]
        return {
            event["state_key"]: event["content"]["membership"]
            for event in room["state"]["events"]
            if event["type"] == "m.room.member"
        }

    assert memberships(answer) == {ALICE: "join", BOB: "join"}
    await env.hs.join_room(CAROL, room_id)
    await _say(env.hs, BOB, room_id, *(f"gap{i}" for i in range(20)))
    answer = await env.sync(ALICE, filter=lazy, since=answer["next_batch"])
    assert answer["rooms"]["join"][room_id]["timeline"]["limited"] is True
    assert memberships(answer) == {CAROL: "join"}
    await env.hs.leave_room(CAROL, room_id)
    await _say(env.hs, BOB, room_id, *(f"more{i}" for i in range(20)))
    answer = await env.sync(ALICE, filter=lazy, since=answer["next_batch"])
    assert memberships(answer) == {CAROL: "leave"}
    # Without a gap the leave is in the timeline, and state holds nothing.
    await env.hs.join_room(CAROL, room_id)
    answer = await env.sync(ALICE, filter=lazy, since=answer["next_batch"])
    room = answer["rooms"]["join"][room_id]
    assert room["state"]["events"] == []
    assert [e["state_key"] for e in room["timeline"]["events"]] == [CAROL]


def _ids(events: list[dict[str, Any]]) -> list[str]:
    return [event["event_id"] for event in events]


async def _pages(
    env: _Env, user: str, room_id: str, token: str | None, *, limit: int, direction: str = "b"
) -> list[list[dict[str, Any]]]:
    """The chunks ``/messages`` answers paging from ``token`` until a page has no ``end``."""
    pages = []
    for _ in range(100):
        response = await env.get(
            user,
            f"/_matrix/client/v3/rooms/{room_id}/messages",
            dir=direction,
            limit=limit,
            **{"from": token},
        )
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page["chunk"])
        if "end" not in page:
            return pages
        token = page["end"]
    pytest.fail("paging never came to an end")


async def _away_for_a_while(env: _Env) -> tuple[str, list[str]]:
    """A room of ``joined`` history that Bob joined, left while Alice said
    thirty things, and joined again; and the event IDs Bob may see of it,
    newest first, as one page of /messages large enough for all gives them.
    """
    hs = env.hs
    room_id = await hs.create_room(ALICE, preset="public_chat")
    await hs.send_event(
        ALICE, room_id, "m.room.history_visibility", {"history_visibility": "joined"}, state_key=""
    )
    await hs.join_room(BOB, room_id)
    await _say(hs, ALICE, room_id, *(f"seen {n}" for n in range(5)))
    await hs.leave_room(BOB, room_id)
    await _say(hs, ALICE, room_id, *(f"away {n}" for n in range(30)))
    await hs.join_room(BOB, room_id)
    await _say(hs, ALICE, room_id, "back 0", "back 1")
    everything = (
        await env.get(BOB, f"/_matrix/client/v3/rooms/{room_id}/messages", dir="b", limit=1000)
    ).json()
    assert "end" not in everything
    assert not any("away" in event["content"].get("body", "") for event in everything["chunk"])
    return room_id, _ids(everything["chunk"])


async def test_a_timeline_holds_its_limit_of_visible_events_past_hidden_ones(env: _Env) -> None:
    room_id, visible = await _away_for_a_while(env)
    body = await env.sync(BOB, filter=json.dumps({"room": {"timeline": {"limit": 8}}}))
    room = body["rooms"]["join"][room_id]
    timeline = room["timeline"]
    # The eight newest events Bob may see, though thirty he may not lie among them.
    assert _ids(timeline["events"]) == visible[:8][::-1]
    assert _bodies(room) == ["seen 1", "seen 2", "seen 3", "seen 4", "back 0", "back 1"]
    assert timeline["limited"] is True
    # Paging back from prev_batch goes on with the next older ones, none
    # skipped or repeated, in full pages.
    pages = await _pages(env, BOB, room_id, timeline["prev_batch"], limit=3)
    assert [_ids(page) for page in pages] == [
        visible[start : start + 3] for start in range(8, len(visible), 3)
    ]


async def test_messages_pages_hold_their_limit_of_visible_events(
    env: _Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    room_id, visible = await _away_for_a_while(env)
    back = await _pages(env, BOB, room_id, None, limit=4)
    assert [_ids(page) for page in back] == [
        visible[start : start + 4] for start in range(0, len(visible), 4)
    ]
    oldest_first = visible[::-1]
    forward = await _pages(env, BOB, room_id, None, limit=4, direction="f")
    assert [_ids(page) for page in forward] == [
        oldest_first[start : start + 4] for start in range(0, len(oldest_first), 4)
    ]
    # Reads past the first are capped: with none allowed, pages over the
    # hidden stretch come short, and their tokens still go on from where
    # the reads stopped.
    monkeypatch.setattr(pagination, "VISIBILITY_LOADS", 0)
    short = await _pages(env, BOB, room_id, None, limit=4)
    assert any(len(page) < 4 for page in short[:-1])
    assert [event_id for page in short for event_id in _ids(page)] == visible
    short = await _pages(env, BOB, room_id, None, limit=4, direction="f")
    assert any(len(page) < 4 for page in short[:-1])
    assert [event_id for page in short for event_id in _ids(page)] == oldest_first


async def test_hidden_current_state_in_a_timeline_counts_toward_its_limit(env: _Env) -> None:
    hs = env.hs
    room_id = await hs.create_room(ALICE, preset="public_chat")
    visibility = await hs.send_event(
        ALICE, room_id, "m.room.history_visibility", {"history_visibility": "joined"}, state_key=""
    )
    topic = await hs.send_event(ALICE, room_id, "m.room.topic", {"topic": "t"}, state_key="")
    await _say(hs, ALICE, room_id, *(f"before {n}" for n in range(30)))
    await hs.join_room(BOB, room_id)
    await _say(hs, ALICE, room_id, "after 0", "after 1")
    (everything,) = await _pages(env, BOB, room_id, None, limit=1000)
    visible = _ids(everything)
    assert topic not in visible
    # The topic is hidden from Bob, who joined after it, but is still the
    # room's state: the timeline carries it, in its place, within the limit.
    at = visible.index(visibility)
    served = [*visible[:at], topic, *visible[at:]]
    body = await env.sync(BOB, filter=json.dumps({"room": {"timeline": {"limit": 10}}}))
    timeline = body["rooms"]["join"][room_id]["timeline"]
    assert _ids(timeline["events"]) == served[:10][::-1]
    assert timeline["limited"] is True
    rest = visible[visible.index(served[9]) + 1 :]
    pages = await _pages(env, BOB, room_id, timeline["prev_batch"], limit=4)
    assert [_ids(page) for page in pages] == [
        rest[start : start + 4] for start in range(0, len(rest), 4)
    ]
