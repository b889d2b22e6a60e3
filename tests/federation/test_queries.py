"""The federation queries over real HTTPS: our routes and storage on one
side, another server's signed client on the other.

The room: alice (of the served server) creates a public room and writes a
message; bob (of b.test) joins; messages follow. c.test has no one in the
room.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from ranvier.core import compute_event_context, event_to_persist
from ranvier.federation.queries import MAX_BACKFILL_LIMIT, _InFlight, add_query_routes
from ranvier.federation.room_access import PARTIAL_STATE_ERRCODE
from ranvier.federation.transport.client import FederationRequestError
from ranvier.protocol.events import Pdu
from ranvier.protocol.redaction import redact
from ranvier.testing import (
    NOW_MS,
    KnownKeys,
    Pki,
    RemoteHomeserver,
    RoomBuilder,
    ZoneDns,
    ingest,
    ingest_all,
)

from ._resident import Resident, open_peer, start_resident

V1 = "/_matrix/federation/v1"
BOB = "@bob:b.test"


def seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


class Profiles:
    def __init__(self, profiles: Mapping[str, Mapping[str, Any]]) -> None:
        self.profiles = profiles

    async def get_profile(self, user_id: str) -> Mapping[str, Any] | None:
        await trio.lowlevel.checkpoint()
        return self.profiles.get(user_id)


@dataclass
class World:
    resident: Resident
    peer: RemoteHomeserver
    stranger: RemoteHomeserver
    room: RoomBuilder
    alice: str
    bob_join: Pdu
    messages: list[Pdu]

    @property
    def name(self) -> str:
        return self.resident.server_name

    def new_room(self) -> RoomBuilder:
        return RoomBuilder("12", self.alice, keys=self.room.keys)

    async def get(self, peer: RemoteHomeserver, path: str, **query: Any) -> Any:
        return await peer.client.get_json(self.name, path, query=query or None)

    async def refused(self, peer: RemoteHomeserver, method: str, path: str, **kwargs: Any) -> Any:
        with pytest.raises(FederationRequestError) as caught:
            await peer.client.request(method, self.name, path, **kwargs)
        return caught.value


@pytest.fixture
async def world(tmp_path: Path, nursery: trio.Nursery) -> World:
    pki = Pki.create(tmp_path)
    keys = KnownKeys()
    zone = ZoneDns.loopback("a.test")
    resident = await start_resident(nursery, tmp_path, pki, keys)
    alice = f"@alice:{resident.server_name}"
    add_query_routes(
        resident.app.router,
        server_name=resident.server_name,
        store=resident.storage,
        profiles=Profiles({alice: {"displayname": "Alice", "avatar_url": "mxc://a/b"}}),
        clock=lambda: NOW_MS,
    )
    peer = await open_peer(nursery, pki, zone, keys, "b.test")
    stranger = await open_peer(nursery, pki, zone, keys, "c.test")
    signing_keys = {
        resident.server_name: resident.signing_key,
        "b.test": peer.signing_key,
        "c.test": stranger.signing_key,
    }
    room = RoomBuilder("12", alice, keys=signing_keys)
    room.public_room(history_visibility="shared")
    room.message(alice, "before bob")
    bob_join = room.member(BOB, "join")
    messages = [room.message(BOB if i % 2 else alice, f"m{i}") for i in range(5)]
    await ingest_all(resident.storage, room.order)
    return World(resident, peer, stranger, room, alice, bob_join, messages)


def ids_of(events: Sequence[Any], room_version: str = "12") -> list[str]:
    return [Pdu.from_json(msgspec.json.encode(e), room_version).event_id for e in events]


def auth_chain(room: RoomBuilder, event_ids: Sequence[str]) -> set[str]:
    """The union of the events' auth chains, walked in the test's own copy;
    from v12 with the room's create event, which no event cites.
    """
    create_id = room.create.event_id
    chain = {create_id} if set(event_ids) - {create_id} else set()
    todo = [a for event_id in event_ids for a in room.events[event_id].auth_event_ids]
    while todo:
        event_id = todo.pop()
        if event_id not in chain:
            chain.add(event_id)
            todo.extend(room.events[event_id].auth_event_ids)
    return chain


# /event


async def test_event_is_served_byte_for_byte(world: World) -> None:
    event = world.messages[2]
    response = await world.peer.client.request(
        "GET", world.name, f"{V1}/event/{seg(event.event_id)}"
    )
    body = response.json()
    assert body["origin"] == world.name
    assert body["origin_server_ts"] == NOW_MS
    assert ids_of(body["pdus"]) == [event.event_id]
    assert event.raw in response.body


async def test_unknown_event_is_404(world: World) -> None:
    error = await world.refused(world.peer, "GET", f"{V1}/event/{seg('$unknown')}")
    assert (error.status, error.errcode) == (404, "M_NOT_FOUND")


async def test_server_without_members_is_refused_everything(world: World) -> None:
    room_id, event_id = seg(world.room.room_id), world.messages[0].event_id
    refusals = [
        await world.refused(world.stranger, "GET", f"{V1}/event/{seg(event_id)}"),
        await world.refused(
            world.stranger, "GET", f"{V1}/state_ids/{room_id}", query={"event_id": event_id}
        ),
        await world.refused(
            world.stranger, "GET", f"{V1}/state/{room_id}", query={"event_id": event_id}
        ),
        await world.refused(world.stranger, "GET", f"{V1}/event_auth/{room_id}/{seg(event_id)}"),
        await world.refused(
            world.stranger, "GET", f"{V1}/backfill/{room_id}", query={"v": event_id, "limit": 5}
        ),
        await world.refused(
            world.stranger,
            "POST",
            f"{V1}/get_missing_events/{room_id}",
            content={"earliest_events": [], "latest_events": [world.messages[-1].event_id]},
        ),
    ]
    assert [(e.status, e.errcode) for e in refusals] == [(403, "M_FORBIDDEN")] * 6


# /state_ids, /state, /event_auth


async def test_state_ids_are_the_state_before_the_event(world: World) -> None:
    join = world.bob_join
    body = await world.get(
        world.peer, f"{V1}/state_ids/{seg(world.room.room_id)}", event_id=join.event_id
    )
    before = world.room.state_after[join.prev_event_ids[0]]
    assert sorted(body["pdu_ids"]) == sorted(before.values())
    assert join.event_id not in body["pdu_ids"]
    assert set(body["auth_chain_ids"]) == auth_chain(world.room, list(before.values()))


async def test_state_gives_the_events_themselves(world: World) -> None:
    event = world.messages[-1]
    body = await world.get(
        world.peer, f"{V1}/state/{seg(world.room.room_id)}", event_id=event.event_id
    )
    before = world.room.state_after[event.prev_event_ids[0]]
    assert sorted(ids_of(body["pdus"])) == sorted(before.values())
    assert world.bob_join.event_id in ids_of(body["pdus"])
    assert set(ids_of(body["auth_chain"])) == auth_chain(world.room, list(before.values()))


async def test_state_ids_need_an_event_of_the_room(world: World) -> None:
    path = f"{V1}/state_ids/{seg(world.room.room_id)}"
    missing = await world.refused(world.peer, "GET", path)
    assert (missing.status, missing.errcode) == (400, "M_MISSING_PARAM")
    unknown = await world.refused(world.peer, "GET", path, query={"event_id": "$nope"})
    assert (unknown.status, unknown.errcode) == (404, "M_NOT_FOUND")
    other = world.new_room()
    other.public_room(history_visibility="shared")
    await ingest_all(world.resident.storage, other.order)
    elsewhere = await world.refused(world.peer, "GET", path, query={"event_id": other.last})
    assert (elsewhere.status, elsewhere.errcode) == (404, "M_NOT_FOUND")


async def test_reads_through_one_room_give_nothing_of_another(world: World) -> None:
    # b.test is in world.room only: naming that room with event IDs of a
    # private room it is not in must not reach the private room's history.
    private = world.new_room()
    private.member(world.alice, "join")
    private.join_rules(world.alice, "invite")
    secret = private.message(world.alice, "secret")
    await ingest_all(world.resident.storage, private.order)
    room_id = seg(world.room.room_id)
    path = f"{V1}/state/{room_id}"
    missing = await world.refused(world.peer, "GET", path)
    assert (missing.status, missing.errcode) == (400, "M_MISSING_PARAM")
    elsewhere = await world.refused(world.peer, "GET", path, query={"event_id": secret.event_id})
    assert (elsewhere.status, elsewhere.errcode) == (404, "M_NOT_FOUND")
    backfill = await world.get(world.peer, f"{V1}/backfill/{room_id}", v=secret.event_id, limit=10)
    assert backfill["pdus"] == []
    both = await world.get(
        world.peer,
        f"{V1}/backfill/{room_id}",
        v=[secret.event_id, world.messages[0].event_id],
        limit=50,
    )
    assert private.create.event_id not in ids_of(both["pdus"])
    assert world.messages[0].event_id in ids_of(both["pdus"])
    missing_events = await world.peer.client.post_json(
        world.name,
        f"{V1}/get_missing_events/{room_id}",
        {"earliest_events": [], "latest_events": [secret.event_id]},
    )
    assert missing_events["events"] == []


@pytest.mark.parametrize("kind", ["message", "state"])
async def test_no_state_is_given_at_a_rejected_event_or_an_outlier(world: World, kind: str) -> None:
    # The state at a rejected event or an outlier is not known here: a
    # server asking for it must ask elsewhere, not be given a made-up one.
    room = world.room
    state_before = sorted(room.state.values())
    intruder = "@mallory:c.test"
    if kind == "state":
        rejected = room.state_event(intruder, "m.room.topic", {"topic": "mine"}, apply=False)
    else:
        rejected = room.message(intruder, "let me in", apply=False)
    outcome = await ingest(world.resident.storage, rejected)
    assert outcome.failure is not None
    after = room.message(BOB, "after", prev=[rejected.event_id], state=room.state)
    await ingest_all(world.resident.storage, [after])
    outlier = room.message(BOB, "held aside", apply=False)
    await ingest(world.resident.storage, outlier, outlier=True)
    room_id = seg(room.room_id)
    for endpoint in ("state", "state_ids"):
        for event in (rejected, outlier):
            error = await world.refused(
                world.peer, "GET", f"{V1}/{endpoint}/{room_id}", query={"event_id": event.event_id}
            )
            assert (error.status, error.errcode) == (404, "M_NOT_FOUND"), (endpoint, event)
    # The rejected event left the room's state as it was.
    body = await world.get(world.peer, f"{V1}/state_ids/{room_id}", event_id=after.event_id)
    assert sorted(body["pdu_ids"]) == state_before


async def test_event_auth_is_the_events_auth_chain(world: World) -> None:
    event = world.messages[1]
    body = await world.get(
        world.peer, f"{V1}/event_auth/{seg(world.room.room_id)}/{seg(event.event_id)}"
    )
    assert set(ids_of(body["auth_chain"])) == auth_chain(world.room, [event.event_id])
    assert world.room.create.event_id in ids_of(body["auth_chain"])


async def test_event_auth_is_the_chain_of_that_event_not_of_the_current_state(
    world: World,
) -> None:
    """Bob leaves and joins again, then the join rules change: the chain of
    his second join reaches back through his leave to his first join, and
    neither it nor the join rules' chain takes in later state."""
    room = world.room
    leave = room.member(BOB, "leave")
    rejoin = room.member(BOB, "join")
    rules = room.join_rules(world.alice, "invite")
    room.message(world.alice, "after")
    await ingest_all(world.resident.storage, room.order[-4:])
    path = f"{V1}/event_auth/{seg(room.room_id)}"

    body = await world.get(world.peer, f"{path}/{seg(rules.event_id)}")
    assert set(ids_of(body["auth_chain"])) == auth_chain(room, [rules.event_id])
    assert set(rules.auth_event_ids) <= set(ids_of(body["auth_chain"]))

    body = await world.get(world.peer, f"{path}/{seg(rejoin.event_id)}")
    chain = set(ids_of(body["auth_chain"]))
    assert chain == auth_chain(room, [rejoin.event_id])
    assert {leave.event_id, world.bob_join.event_id} <= chain
    assert rules.event_id not in chain
    assert rejoin.event_id not in chain


# /backfill and /get_missing_events


async def test_backfill_walks_back_deepest_first(world: World) -> None:
    last = world.messages[-1]
    body = await world.get(
        world.peer, f"{V1}/backfill/{seg(world.room.room_id)}", v=last.event_id, limit=4
    )
    assert body["origin"] == world.name
    assert ids_of(body["pdus"]) == [e.event_id for e in reversed(world.messages[-4:])]


async def test_backfill_from_two_events_of_a_fork(world: World) -> None:
    room = world.room
    fork_point = world.messages[2].event_id
    left = room.message(world.alice, "left", prev=[fork_point])
    right = room.message(BOB, "right", prev=[fork_point])
    await ingest_all(world.resident.storage, [left, right])
    body = await world.get(
        world.peer,
        f"{V1}/backfill/{seg(room.room_id)}",
        v=[left.event_id, right.event_id],
        limit=3,
    )
    got = ids_of(body["pdus"])
    assert set(got[:2]) == {left.event_id, right.event_id}
    assert got[2] == fork_point


async def test_backfill_limit_is_capped(world: World) -> None:
    room = world.room
    more = [room.message(world.alice, f"n{i}") for i in range(MAX_BACKFILL_LIMIT + 5)]
    await ingest_all(world.resident.storage, more)
    body = await world.get(
        world.peer, f"{V1}/backfill/{seg(room.room_id)}", v=more[-1].event_id, limit=10_000
    )
    assert len(body["pdus"]) == MAX_BACKFILL_LIMIT
    bad = await world.refused(
        world.peer,
        "GET",
        f"{V1}/backfill/{seg(room.room_id)}",
        query={"v": more[-1].event_id, "limit": "many"},
    )
    assert (bad.status, bad.errcode) == (400, "M_INVALID_PARAM")


async def test_get_missing_events_between_earliest_and_latest(world: World) -> None:
    m = world.messages
    path = f"{V1}/get_missing_events/{seg(world.room.room_id)}"
    body = await world.peer.client.post_json(
        world.name, path, {"earliest_events": [m[0].event_id], "latest_events": [m[4].event_id]}
    )
    # Oldest first, the latest and earliest left out.
    assert ids_of(body["events"]) == [m[1].event_id, m[2].event_id, m[3].event_id]
    limited = await world.peer.client.post_json(
        world.name,
        path,
        {"earliest_events": [m[0].event_id], "latest_events": [m[4].event_id], "limit": 2},
    )
    assert ids_of(limited["events"]) == [m[2].event_id, m[3].event_id]
    shallow = await world.peer.client.post_json(
        world.name,
        path,
        {
            "earliest_events": [],
            "latest_events": [m[4].event_id],
            "min_depth": m[3].depth,
        },
    )
    assert ids_of(shallow["events"]) == [m[3].event_id]
    bad = await world.refused(world.peer, "POST", path, content={"latest_events": "x"})
    assert (bad.status, bad.errcode) == (400, "M_BAD_JSON")


# History visibility


async def test_joined_history_goes_redacted_to_a_server_joined_later(world: World) -> None:
    room = world.new_room()
    room.public_room(history_visibility="joined")
    secret = room.message(world.alice, "before bob joined")
    room.member(BOB, "join")
    after = room.message(world.alice, "bob sees this")
    await ingest_all(world.resident.storage, room.order)

    body = await world.get(world.peer, f"{V1}/event/{seg(secret.event_id)}")
    assert body["pdus"] == [redact(secret.json, "12")]
    assert "body" not in body["pdus"][0]["content"]
    body = await world.get(world.peer, f"{V1}/event/{seg(after.event_id)}")
    assert body["pdus"][0]["content"] == {"body": "bob sees this"}

    backfill = await world.get(
        world.peer, f"{V1}/backfill/{seg(room.room_id)}", v=after.event_id, limit=3
    )
    pdus = backfill["pdus"]
    contents = {i: e["content"] for i, e in zip(ids_of(pdus), pdus, strict=True)}
    assert contents[after.event_id] == {"body": "bob sees this"}
    assert contents[secret.event_id] == {}
    # The state needed to take part is not history: it is given whole.
    state = await world.get(
        world.peer, f"{V1}/state_ids/{seg(room.room_id)}", event_id=secret.event_id
    )
    assert sorted(state["pdu_ids"]) == sorted(room.state_after[secret.prev_event_ids[0]].values())


@pytest.mark.parametrize(
    ("visibility", "whole"),
    [("world_readable", True), ("shared", True), ("invited", False), ("joined", False)],
)
async def test_get_missing_events_before_a_servers_join_follow_history_visibility(
    world: World, visibility: str, whole: bool
) -> None:
    """Everything between the create event and bob's join is given, oldest
    first; the message from before the join goes whole or redacted as the
    history visibility says, the state events whole."""
    room = world.new_room()
    room.public_room(history_visibility=visibility)
    message = room.message(world.alice, "before bob")
    join = room.member(BOB, "join")
    await ingest_all(world.resident.storage, room.order)
    body = await world.peer.client.post_json(
        world.name,
        f"{V1}/get_missing_events/{seg(room.room_id)}",
        {
            "earliest_events": [room.create.event_id],
            "latest_events": [join.event_id],
            "limit": 10,
            "min_depth": 1,
        },
    )
    events = body["events"]
    assert ids_of(events) == [e.event_id for e in room.order[1:-1]]
    assert [(e["type"], e.get("state_key")) for e in events] == [
        ("m.room.member", world.alice),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
        ("m.room.history_visibility", ""),
        ("m.room.message", None),
    ]
    assert all(e["room_id"] == room.room_id for e in events)
    assert events[3]["content"] == {"history_visibility": visibility}
    expected = message.json if whole else redact(message.json, "12")
    assert events[4] == expected


async def test_world_readable_room_is_open_to_any_server(world: World) -> None:
    room = world.new_room()
    room.public_room(history_visibility="world_readable")
    message = room.message(world.alice, "for everyone")
    await ingest_all(world.resident.storage, room.order)
    body = await world.get(world.stranger, f"{V1}/event/{seg(message.event_id)}")
    assert body["pdus"][0]["content"] == {"body": "for everyone"}
    backfill = await world.get(
        world.stranger, f"{V1}/backfill/{seg(room.room_id)}", v=message.event_id, limit=2
    )
    assert ids_of(backfill["pdus"])[0] == message.event_id


async def test_server_acl_denies_a_member_server(world: World) -> None:
    room = world.room
    room.state_event(world.alice, "m.room.server_acl", {"allow": ["*"], "deny": ["b.test"]})
    await ingest_all(world.resident.storage, [room.order[-1]])
    event_id = world.messages[0].event_id
    error = await world.refused(world.peer, "GET", f"{V1}/event/{seg(event_id)}")
    assert (error.status, error.errcode) == (403, "M_FORBIDDEN")
    assert "server ACL" in (error.error or "")
    error = await world.refused(
        world.peer, "GET", f"{V1}/state_ids/{seg(room.room_id)}", query={"event_id": event_id}
    )
    assert (error.status, error.errcode) == (403, "M_FORBIDDEN")


# /query/profile


async def test_profile_of_a_local_user(world: World) -> None:
    path = f"{V1}/query/profile"
    assert await world.get(world.peer, path, user_id=world.alice) == {
        "displayname": "Alice",
        "avatar_url": "mxc://a/b",
    }
    assert await world.get(world.peer, path, user_id=world.alice, field="displayname") == {
        "displayname": "Alice"
    }
    assert await world.get(world.peer, path, user_id=world.alice, field="m.tz") == {}
    unknown = await world.refused(
        world.peer, "GET", path, query={"user_id": f"@nobody:{world.name}"}
    )
    assert (unknown.status, unknown.errcode) == (404, "M_NOT_FOUND")
    remote = await world.refused(world.peer, "GET", path, query={"user_id": BOB})
    assert (remote.status, remote.errcode) == (400, "M_INVALID_PARAM")
    missing = await world.refused(world.peer, "GET", path)
    assert (missing.status, missing.errcode) == (400, "M_MISSING_PARAM")
    # Not a user ID: a server name's port is digits.
    for bad in ("@user1:localhost:http", f"@alice:{world.name}:http", "alice", "@:"):
        error = await world.refused(world.peer, "GET", path, query={"user_id": bad})
        assert error.status == 400, bad
        assert error.errcode in ("M_INVALID_PARAM", "M_BAD_JSON"), bad


async def test_a_room_with_partial_state_refuses_its_state_and_auth_chains(
    world: World,
) -> None:
    """While the room's state is partial here, no state or auth chain of it
    is given, not even at events from before; once full, it is again."""
    storage = world.resident.storage
    room = world.room
    await storage.store_partial_join(
        room.room_id, "12", world.bob_join.event_id, "b.test", ["b.test"]
    )
    message = room.message(world.alice, "while partial")
    context = await compute_event_context(
        message, storage, storage, state_ids_before=room.state, partial_state=True
    )
    await storage.persist_events([event_to_persist(message, context)])
    room_id = seg(room.room_id)
    asked = [
        (f"{V1}/state_ids/{room_id}", {"event_id": message.event_id}),
        (f"{V1}/state_ids/{room_id}", {"event_id": world.messages[0].event_id}),
        (f"{V1}/state/{room_id}", {"event_id": world.messages[0].event_id}),
        (f"{V1}/event_auth/{room_id}/{seg(world.messages[0].event_id)}", None),
    ]
    for path, query in asked:
        error = await world.refused(world.peer, "GET", path, query=query)
        assert (error.status, error.errcode) == (403, PARTIAL_STATE_ERRCODE)
        assert "not yet fully known" in (error.error or "")
    # The history itself may still be pulled.
    event = await world.get(world.peer, f"{V1}/event/{seg(message.event_id)}")
    assert ids_of(event["pdus"]) == [message.event_id]

    groups = await storage.get_event_state_groups(message.event_id)
    assert groups is not None
    await storage.update_state_for_partial_event(message.event_id, groups.before, groups.after)
    assert await storage.clear_partial_state(room.room_id)
    body = await world.get(world.peer, asked[0][0], event_id=message.event_id)
    assert world.bob_join.event_id in body["pdu_ids"]
    auth = await world.get(world.peer, asked[3][0])
    assert set(ids_of(auth["auth_chain"])) == auth_chain(room, [world.messages[0].event_id])


async def test_servers_named_by_a_partial_join_may_pull_its_history(world: World) -> None:
    """While the room's state is partial here, a server the join named may
    pull history though the partial state shows none of its members; a
    server neither named nor in the state may not, and once the state is
    full, only the state tells."""
    storage = world.resident.storage
    room = world.new_room()
    room.public_room(history_visibility="shared")
    first = room.message(world.alice, "first")
    gap = [room.message(world.alice, f"gap {i}") for i in range(3)]
    latest = room.message(world.alice, "latest")
    await ingest_all(storage, room.order)
    await storage.store_partial_join(
        room.room_id, "12", room.order[-1].event_id, world.name, ["b.test"]
    )
    path = f"{V1}/get_missing_events/{seg(room.room_id)}"
    ask = {"earliest_events": [first.event_id], "latest_events": [latest.event_id]}

    body = await world.peer.client.post_json(world.name, path, ask)
    assert ids_of(body["events"]) == [event.event_id for event in gap]
    # Shared history: the events go whole, not redacted.
    assert [e["content"] for e in body["events"]] == [{"body": f"gap {i}"} for i in range(3)]
    backfill = await world.get(
        world.peer, f"{V1}/backfill/{seg(room.room_id)}", v=latest.event_id, limit=2
    )
    assert ids_of(backfill["pdus"]) == [latest.event_id, gap[-1].event_id]
    event = await world.get(world.peer, f"{V1}/event/{seg(gap[0].event_id)}")
    assert event["pdus"][0]["content"] == {"body": "gap 0"}
    # The state itself is still refused.
    error = await world.refused(
        world.peer, "GET", f"{V1}/state_ids/{seg(room.room_id)}", query={"event_id": first.event_id}
    )
    assert (error.status, error.errcode) == (403, PARTIAL_STATE_ERRCODE)

    refusals = [
        await world.refused(world.stranger, "POST", path, content=ask),
        await world.refused(
            world.stranger,
            "GET",
            f"{V1}/backfill/{seg(room.room_id)}",
            query={"v": latest.event_id, "limit": 2},
        ),
        await world.refused(world.stranger, "GET", f"{V1}/event/{seg(gap[0].event_id)}"),
    ]
    assert [(e.status, e.errcode) for e in refusals] == [(403, "M_FORBIDDEN")] * 3

    assert await storage.clear_partial_state(room.room_id)
    error = await world.refused(world.peer, "POST", path, content=ask)
    assert (error.status, error.errcode) == (403, "M_FORBIDDEN")


async def test_state_and_state_ids_asked_at_once_are_worked_out_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    chains = world.resident.storage.auth_chains
    original = chains.get_auth_chain_ids
    calls = 0
    # The first request's work is held until the second has come to share
    # it, however long the second takes to arrive; a second that worked it
    # out itself would count a second call.
    arrived = 0
    both_arrived = trio.Event()
    original_run = _InFlight.run

    async def arriving(self: _InFlight[Any, Any], key: Any, work: Any) -> Any:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_arrived.set()
        return await original_run(self, key, work)

    async def counted(event_ids: Any) -> frozenset[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            with trio.fail_after(30):
                await both_arrived.wait()
        return await original(event_ids)

    monkeypatch.setattr(_InFlight, "run", arriving)
    monkeypatch.setattr(chains, "get_auth_chain_ids", counted)
    event = world.messages[-1]
    room_id = seg(world.room.room_id)
    answers: dict[str, Any] = {}

    async def ask(kind: str) -> None:
        answers[kind] = await world.get(
            world.peer, f"{V1}/{kind}/{room_id}", event_id=event.event_id
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "state_ids")
        nursery.start_soon(ask, "state")
    assert calls == 1
    before = world.room.state_after[event.prev_event_ids[0]]
    assert sorted(answers["state_ids"]["pdu_ids"]) == sorted(before.values())
    assert sorted(ids_of(answers["state"]["pdus"])) == sorted(before.values())
    expected_chain = auth_chain(world.room, list(before.values()))
    assert set(answers["state_ids"]["auth_chain_ids"]) == expected_chain
    assert set(ids_of(answers["state"]["auth_chain"])) == expected_chain
    # Nothing is kept once answered: a later ask works it out again.
    await ask("state_ids")
    assert calls == 2
