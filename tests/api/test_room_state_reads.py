"""Room creation options, state reads and writes, member lists, power levels
and transaction IDs, as a client meets them over HTTP."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import V3, SharedRoom, open_shared_room, q

from ranvier.testing.homeserver import TestUser

_TXN = itertools.count()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


async def _get(env: SharedRoom, user: TestUser, room_id: str, path: str, **params: Any) -> Any:
    return await env.client.ok(user, "GET", f"/rooms/{q(room_id)}/{path}", params=params or None)


async def _members(env: SharedRoom, room_id: str, **params: Any) -> set[str]:
    answer = await _get(env, env.alice, room_id, "members", **params)
    assert {event["room_id"] for event in answer["chunk"]} == {room_id}
    assert {event["type"] for event in answer["chunk"]} == {"m.room.member"}
    return {event["state_key"] for event in answer["chunk"]}


async def test_member_lists_now_at_a_point_and_filtered(env: SharedRoom) -> None:
    alice, carol = env.alice, env.carol
    room_id = await env.client.create_room(alice, preset="public_chat")
    await env.client.ok(
        alice,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/t{next(_TXN)}",
        {"msgtype": "m.text", "body": "hi"},
    )
    one = '{"room": {"timeline": {"limit": 1}}}'
    at = (await env.sync(alice, filter=one))["rooms"]["join"][room_id]["timeline"]["prev_batch"]
    await env.client.ok(carol, "POST", f"/rooms/{q(room_id)}/join", {})
    assert await _members(env, room_id) == {alice.user_id, carol.user_id}
    assert await _members(env, room_id, at=at) == {alice.user_id}
    await env.client.ok(carol, "POST", f"/rooms/{q(room_id)}/leave", {})
    assert await _members(env, room_id, not_membership="leave") == {alice.user_id}
    assert await _members(env, room_id, membership="leave") == {carol.user_id}
    assert await _members(env, room_id, membership="join") == {alice.user_id}


async def test_state_reads_of_a_new_room(env: SharedRoom) -> None:
    alice = env.alice
    room_id = await env.client.create_room(
        alice, preset="public_chat", name="room name", topic="room topic", room_alias_name="reads"
    )
    member = await _get(env, alice, room_id, f"state/m.room.member/{q(alice.user_id)}")
    assert member["membership"] == "join"
    event = await _get(
        env, alice, room_id, f"state/m.room.member/{q(alice.user_id)}", format="event"
    )
    assert (event["content"]["membership"], event["sender"], event["room_id"]) == (
        "join",
        alice.user_id,
        room_id,
    )
    levels = await _get(env, alice, room_id, "state/m.room.power_levels")
    for key in (
        "ban",
        "kick",
        "redact",
        "state_default",
        "events_default",
        "users_default",
        "events",
        "users",
    ):
        assert key in levels
    joined = await _get(env, alice, room_id, "joined_members")
    assert set(joined["joined"]) == {alice.user_id}
    assert (await _get(env, alice, room_id, "state/m.room.name"))["name"] == "room name"
    topic = await _get(env, alice, room_id, "state/m.room.topic")
    assert topic["topic"] == "room topic"
    assert topic["m.topic"]["m.text"][0]["body"] == "room topic"
    assert topic["m.topic"]["m.text"][0].get("mimetype", "text/plain") == "text/plain"
    whole = await env.client.state(alice, room_id)
    for state_key in (
        ("m.room.create", ""),
        ("m.room.join_rules", ""),
        ("m.room.name", ""),
        ("m.room.power_levels", ""),
        ("m.room.history_visibility", ""),
        ("m.room.member", alice.user_id),
    ):
        assert state_key in whole
    directory = await env.client.ok(None, "GET", f"/directory/room/{q('#reads:localhost')}")
    assert directory["room_id"] == room_id
    rooms = await env.client.ok(alice, "GET", "/joined_rooms")
    assert room_id in rooms["joined_rooms"]


async def test_a_room_created_public_is_listed_and_a_private_one_not(env: SharedRoom) -> None:
    public = await env.client.create_room(env.alice, preset="public_chat", visibility="public")
    private = await env.client.create_room(
        env.alice, visibility="private", invite=[env.carol.user_id]
    )
    listed = await env.client.ok(None, "GET", "/publicRooms")
    ids = {room["room_id"] for room in listed["chunk"]}
    assert public in ids
    assert private not in ids
    assert private in (await env.sync(env.carol))["rooms"]["invite"]


async def test_names_and_topics_are_set_and_read_back(env: SharedRoom) -> None:
    alice, bob = env.alice, env.bob
    room_id = env.room_id
    await env.client.ok(
        alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.name", {"name": "new name"}
    )
    await env.client.ok(
        alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.topic", {"topic": "new topic"}
    )
    assert (await _get(env, bob, room_id, "state/m.room.name"))["name"] == "new name"
    assert (await _get(env, bob, room_id, "state/m.room.topic"))["topic"] == "new topic"
    timeline = (await env.sync(alice))["rooms"]["join"][room_id]["timeline"]["events"]
    assert ("m.room.topic", "new topic") in [
        (e["type"], e["content"].get("topic")) for e in timeline
    ]


async def test_topics_from_initial_state_and_from_topic(env: SharedRoom) -> None:
    initial = [{"type": "m.room.topic", "state_key": "", "content": {"topic": "Shenanigans"}}]
    only_initial = await env.client.create_room(
        env.alice, preset="public_chat", initial_state=initial
    )
    topic = await _get(env, env.alice, only_initial, "state/m.room.topic")
    assert topic == {"topic": "Shenanigans"}
    both = await env.client.create_room(
        env.alice, preset="public_chat", initial_state=initial, topic="Test Room"
    )
    topic = await _get(env, env.alice, both, "state/m.room.topic")
    assert topic["topic"] == "Test Room"
    assert [part["body"] for part in topic["m.topic"]["m.text"]] == ["Test Room"]


async def test_room_versions_and_creation_content(env: SharedRoom) -> None:
    alice = env.alice
    ten = await env.client.create_room(alice, room_version="10", preset="public_chat")
    assert (await _get(env, alice, ten, "state/m.room.create"))["room_version"] == "10"
    await env.client.refused(
        alice, "POST", "/createRoom", {"room_version": 1}, status=400, errcode="M_BAD_JSON"
    )
    await env.client.refused(
        alice,
        "POST",
        "/createRoom",
        {"room_version": "ahfgwjyerhgiuveisbruvybseyrugvi"},
        status=400,
        errcode="M_UNSUPPORTED_ROOM_VERSION",
    )
    no_federation = await env.client.create_room(alice, creation_content={"m.federate": False})
    assert (await _get(env, alice, no_federation, "state/m.room.create"))["m.federate"] is False
    ignored = await env.client.create_room(
        alice, creation_content={"test": "azerty", "room_version": "test"}
    )
    create = (await env.sync(alice))["rooms"]["join"][ignored]["timeline"]["events"][0]
    assert create["type"] == "m.room.create"
    assert create["content"]["test"] == "azerty"
    capabilities = await env.client.ok(alice, "GET", "/capabilities")
    assert (
        create["content"]["room_version"]
        == capabilities["capabilities"]["m.room_versions"]["default"]
    )


async def test_the_creator_sees_creation_and_writes_are_idempotent(env: SharedRoom) -> None:
    alice = env.alice
    since = (await env.sync(alice))["next_batch"]
    room_id = await env.client.create_room(alice)
    answer = await env.sync(alice, since=since)
    events = answer["rooms"]["join"][room_id]["timeline"]["events"]
    kinds = {(event["type"], event.get("state_key")) for event in events}
    assert ("m.room.create", "") in kinds
    assert ("m.room.member", alice.user_id) in kinds
    first = await env.client.ok(
        alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.topic", {"topic": "same"}
    )
    second = await env.client.ok(
        alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.topic", {"topic": "same"}
    )
    assert first["event_id"]
    assert second["event_id"]
    await env.client.ok(alice, "POST", f"/rooms/{q(room_id)}/join", {})
    await env.client.ok(alice, "POST", f"/rooms/{q(room_id)}/join", {})
    state = await env.client.state(alice, room_id)
    assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
    assert state[("m.room.topic", "")]["content"]["topic"] == "same"


async def test_joined_members_is_forbidden_after_leaving(env: SharedRoom) -> None:
    room_id = await env.client.create_room(env.carol)
    await env.client.ok(env.carol, "POST", f"/rooms/{q(room_id)}/leave", {})
    await env.client.refused(
        env.carol, "GET", f"/rooms/{q(room_id)}/joined_members", status=403, errcode="M_FORBIDDEN"
    )


async def test_power_levels_are_read_set_and_demoted_by_users_default(env: SharedRoom) -> None:
    alice, bob = env.alice, env.bob
    room_id = env.room_id
    levels = await _get(env, alice, room_id, "state/m.room.power_levels")
    for key in ("ban", "kick", "redact", "state_default", "events_default", "users_default"):
        assert type(levels[key]) is int
    assert isinstance(levels["events"], dict)
    assert isinstance(levels["users"], dict)
    levels["users"][bob.user_id] = 50
    await env.client.ok(alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.power_levels", levels)
    assert (await _get(env, bob, room_id, "state/m.room.power_levels"))["users"][bob.user_id] == 50
    # Everyone at 100 by default; the default lowered to 40 by a user at 100.
    everyone = {
        "users_default": 100,
        "users": {alice.user_id: 100},
        "events": {},
        "notifications": {},
    }
    lowered = await env.client.create_room(
        alice, preset="public_chat", room_version="10", power_level_content_override=everyone
    )
    await env.client.ok(
        alice,
        "PUT",
        f"/rooms/{q(lowered)}/state/m.room.power_levels",
        {**everyone, "users_default": 40},
    )
    assert (await _get(env, alice, lowered, "state/m.room.power_levels"))["users_default"] == 40
    # (Version 10: in 12 the creator has unlimited power and is not listed.)
    # A room whose levels hold only users: replacing them works as well.
    sparse = await env.client.create_room(
        alice, room_version="10", power_level_content_override={"users": {alice.user_id: 100}}
    )
    await env.client.ok(
        alice,
        "PUT",
        f"/rooms/{q(sparse)}/state/m.room.power_levels",
        {"users": {alice.user_id: 100}},
    )


async def test_transaction_ids_are_per_device_and_room(env: SharedRoom) -> None:
    hs, alice = env.hs, env.alice
    room_id = await env.client.create_room(alice)
    other_room = await env.client.create_room(alice)

    async def send(token: str, room: str, body: str) -> str:
        response = await env.client.http.put(
            f"{V3}/rooms/{q(room)}/send/m.room.message/abcdef",
            json={"msgtype": "m.text", "body": body},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200, response.text
        event_id: str = response.json()["event_id"]
        return event_id

    first = await send(alice.access_token, room_id, "one")
    assert await send(alice.access_token, room_id, "one") == first
    assert await send(alice.access_token, room_id, "other content") == first
    assert await send(alice.access_token, other_room, "one") != first
    # The same device logged in again shares the device's transactions.
    dave = await hs.register_user("dave", password="a long enough password")
    dave_room = await env.client.create_room(dave)
    sent = await send(dave.access_token, dave_room, "from dave")
    login = await env.client.ok(
        None,
        "POST",
        "/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "dave"},
            "password": "a long enough password",
            "device_id": dave.device_id,
        },
    )
    assert await send(login["access_token"], dave_room, "from dave") == sent
    seen = (await env.client.ok(None, "GET", "/sync", token=login["access_token"]))["rooms"][
        "join"
    ][dave_room]
    echoes = [e for e in seen["timeline"]["events"] if e["event_id"] == sent]
    assert echoes[0]["unsigned"]["transaction_id"] == "abcdef"
    # Another device's transactions are its own.
    other = await env.client.ok(
        None,
        "POST",
        "/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "dave"},
            "password": "a long enough password",
        },
    )
    assert await send(other["access_token"], dave_room, "from dave") != sent


async def test_power_levels_are_stored_as_sent_and_emptied_levels_bind_their_setter(
    env: SharedRoom,
) -> None:
    alice = env.alice
    room_id = await env.client.create_room(alice, room_version="10")
    levels = await _get(env, alice, room_id, "state/m.room.power_levels")
    assert all(type(value) is int for value in levels["events"].values())
    assert all(type(value) is int for value in levels["users"].values())
    assert levels["users"][alice.user_id] > levels["users_default"]
    content = {"invite": 100, "users": {alice.user_id: 100, "@someone:elsewhere.test": 20}}
    sent = await env.client.ok(
        alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.power_levels", content
    )
    event = await _get(env, alice, room_id, f"event/{q(sent['event_id'])}")
    assert event["content"] == content
    # Levels without events, then without users: Alice keeps her place
    # long enough to write them, and then has the default of 0.
    await env.client.ok(
        alice,
        "PUT",
        f"/rooms/{q(room_id)}/state/m.room.power_levels",
        {"users": {alice.user_id: 100}},
    )
    await env.client.ok(alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.power_levels", {})
    await env.client.refused(
        alice,
        "PUT",
        f"/rooms/{q(room_id)}/state/m.room.power_levels",
        {"users": {}},
        status=403,
        errcode="M_FORBIDDEN",
    )
    assert await _get(env, alice, room_id, "state/m.room.power_levels") == {}


async def test_a_v12_rooms_create_event_is_its_id_and_names_it_in_every_read(
    env: SharedRoom,
) -> None:
    """The room ID is the create event's ID with ``!`` for ``$``; every read
    that gives the create event whole gives its ``room_id`` (which the event
    itself lacks from v12); and no client may send another create event."""
    client, alice, room_id = env.client, env.alice, env.room_id
    state = await client.ok(alice, "GET", f"/rooms/{q(room_id)}/state")
    (create,) = [event for event in state if event["type"] == "m.room.create"]
    assert room_id == "!" + create["event_id"][1:]
    assert create["room_id"] == room_id
    reads = [
        await client.ok(alice, "GET", f"/rooms/{q(room_id)}/event/{q(create['event_id'])}"),
        await client.ok(
            alice, "GET", f"/rooms/{q(room_id)}/state/m.room.create/", params={"format": "event"}
        ),
        (await client.ok(alice, "GET", f"/rooms/{q(room_id)}/context/{q(create['event_id'])}"))[
            "event"
        ],
    ]
    page = await client.ok(
        alice, "GET", f"/rooms/{q(room_id)}/messages", params={"dir": "b", "limit": "50"}
    )
    reads += [event for event in page["chunk"] if event["type"] == "m.room.create"]
    assert len(reads) == 4
    for event in reads:
        assert (event["event_id"], event["room_id"]) == (create["event_id"], room_id)

    status, answer = await client.call(
        alice, "PUT", f"/rooms/{q(room_id)}/state/m.room.create/", {"room_version": "12", "n": 1}
    )
    assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
    state_after = await client.ok(alice, "GET", f"/rooms/{q(room_id)}/state")
    assert [e["event_id"] for e in state_after if e["type"] == "m.room.create"] == [
        create["event_id"]
    ]
