"""``GET /_matrix/federation/v1/timestamp_to_event/{roomId}`` over real
HTTPS: the nearest event the resident holds, and the access checks the
other history reads make (server ACL, being in the room or the room being
world-readable, partial state).

The room is the queries' room: alice (of the resident) creates a public
room and writes; bob of b.test joins; messages follow, one millisecond
apart. c.test has no one in the room.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from ranvier.core import compute_event_context, event_to_persist
from ranvier.federation.room_access import PARTIAL_STATE_ERRCODE
from ranvier.federation.timestamps import add_timestamp_route
from ranvier.federation.transport.client import FederationRequestError
from ranvier.protocol.events import Pdu
from ranvier.testing import KnownKeys, Pki, RemoteHomeserver, RoomBuilder, ZoneDns, ingest_all

from ._resident import Resident, open_peer, start_resident

BOB = "@bob:b.test"


@dataclass
class World:
    resident: Resident
    peer: RemoteHomeserver
    stranger: RemoteHomeserver
    room: RoomBuilder
    alice: str
    bob_join: Pdu
    messages: list[Pdu]

    def path(self, room_id: str | None = None) -> str:
        room = urllib.parse.quote(room_id or self.room.room_id, safe="")
        return f"/_matrix/federation/v1/timestamp_to_event/{room}"

    async def nearest(self, peer: RemoteHomeserver, ts: int, direction: str, **kw: Any) -> Any:
        query = {"ts": str(ts), "dir": direction}
        return await peer.client.get_json(self.resident.server_name, self.path(**kw), query=query)

    async def refused(self, peer: RemoteHomeserver, query: dict[str, str], **kw: Any) -> Any:
        with pytest.raises(FederationRequestError) as caught:
            await peer.client.request(
                "GET", self.resident.server_name, self.path(**kw), query=query
            )
        return caught.value


@pytest.fixture
async def world(tmp_path: Path, nursery: trio.Nursery) -> World:
    pki = Pki.create(tmp_path)
    keys = KnownKeys()
    zone = ZoneDns.loopback("a.test")
    resident = await start_resident(nursery, tmp_path, pki, keys)
    alice = f"@alice:{resident.server_name}"
    add_timestamp_route(resident.app.router, store=resident.storage)
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


async def test_the_nearest_event_held_either_way(world: World) -> None:
    m0, m1, m2 = world.messages[:3]
    at = m1.origin_server_ts
    assert m0.origin_server_ts < at < m2.origin_server_ts
    assert await world.nearest(world.peer, at, "b") == {
        "event_id": m1.event_id,
        "origin_server_ts": at,
    }
    assert (await world.nearest(world.peer, at, "f"))["event_id"] == m1.event_id
    # Between two events, one each way.
    before = await world.nearest(world.peer, at - 1, "b")
    after = await world.nearest(world.peer, at + 1, "f")
    assert before["event_id"] == m0.event_id
    assert after["event_id"] == m2.event_id
    first = await world.nearest(world.peer, 0, "f")
    assert first["event_id"] == world.room.create.event_id


async def test_nothing_in_that_direction_is_404(world: World) -> None:
    last = world.messages[-1]
    error = await world.refused(world.peer, {"ts": str(last.origin_server_ts + 1), "dir": "f"})
    assert (error.status, error.errcode) == (404, "M_NOT_FOUND")
    error = await world.refused(world.peer, {"ts": "0", "dir": "b"})
    assert (error.status, error.errcode) == (404, "M_NOT_FOUND")
    error = await world.refused(world.peer, {"ts": "0", "dir": "f"}, room_id="!unknown:a.test")
    assert (error.status, error.errcode) == (404, "M_NOT_FOUND")


async def test_bad_parameters_are_400(world: World) -> None:
    for query, errcode in (
        ({"dir": "b"}, "M_MISSING_PARAM"),
        ({"ts": "5"}, "M_MISSING_PARAM"),
        ({"ts": "later", "dir": "b"}, "M_INVALID_PARAM"),
        ({"ts": "5", "dir": "up"}, "M_INVALID_PARAM"),
    ):
        error = await world.refused(world.peer, query)
        assert (error.status, error.errcode) == (400, errcode), query


async def test_a_server_not_in_the_room_is_refused_unless_it_is_world_readable(
    world: World,
) -> None:
    query = {"ts": str(world.messages[0].origin_server_ts), "dir": "b"}
    error = await world.refused(world.stranger, query)
    assert (error.status, error.errcode) == (403, "M_FORBIDDEN")

    room = RoomBuilder("12", world.alice, keys=world.room.keys)
    room.public_room(history_visibility="world_readable")
    message = room.message(world.alice, "for everyone")
    await ingest_all(world.resident.storage, room.order)
    answer = await world.nearest(
        world.stranger, message.origin_server_ts, "b", room_id=room.room_id
    )
    assert answer["event_id"] == message.event_id


async def test_the_server_acl_is_applied_first(world: World) -> None:
    room = world.room
    acl = room.state_event(world.alice, "m.room.server_acl", {"allow": ["*"], "deny": ["b.test"]})
    await ingest_all(world.resident.storage, [acl])
    error = await world.refused(world.peer, {"ts": str(acl.origin_server_ts), "dir": "b"})
    assert (error.status, error.errcode) == (403, "M_FORBIDDEN")
    assert "server ACL" in (error.error or "")


async def test_a_room_with_partial_state_sends_the_asker_elsewhere(world: World) -> None:
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
    query = {"ts": str(message.origin_server_ts), "dir": "b"}
    error = await world.refused(world.peer, query)
    assert (error.status, error.errcode) == (403, PARTIAL_STATE_ERRCODE)

    groups = await storage.get_event_state_groups(message.event_id)
    assert groups is not None
    await storage.update_state_for_partial_event(message.event_id, groups.before, groups.after)
    assert await storage.clear_partial_state(room.room_id)
    answer = await world.nearest(world.peer, message.origin_server_ts, "b")
    assert answer["event_id"] == message.event_id
