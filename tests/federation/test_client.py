"""FederationEventFetcher against a resident's real query routes over HTTPS.

The resident is the federation app with ranvier's query routes over its own
storage, holding a room that b.test's user joined; the fetcher reads it as
b.test, through b.test's signed federation client. A second app stands in
for a broken server whose answers are not shaped as the spec says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from ranvier.core.interfaces import ResyncClient
from ranvier.errors import MatrixError
from ranvier.federation.client import FederationEventFetcher
from ranvier.federation.queries import add_query_routes
from ranvier.federation.timestamps import add_timestamp_route
from ranvier.federation.transport.server import FederationApp, Request
from ranvier.protocol.events import Pdu
from ranvier.testing import NOW_MS, KnownKeys, Pki, RoomBuilder, ZoneDns, ingest_all, serve

from ._resident import Resident, open_peer, start_resident

BOB = "@bob:b.test"


@dataclass
class World:
    resident: Resident
    fetcher: FederationEventFetcher
    room: RoomBuilder
    messages: list[Pdu]
    broken: str


async def _broken_answer(request: Request) -> Any:
    await trio.lowlevel.checkpoint()
    return {"pdus": "not a list", "auth_chain": [], "pdu_ids": 7}


@pytest.fixture
async def world(tmp_path: Path, nursery: trio.Nursery) -> World:
    pki = Pki.create(tmp_path)
    keys = KnownKeys()
    zone = ZoneDns.loopback("a.test", "broken.test")
    resident = await start_resident(nursery, tmp_path, pki, keys)
    add_query_routes(
        resident.app.router,
        server_name=resident.server_name,
        store=resident.storage,
        clock=lambda: NOW_MS,
    )
    add_timestamp_route(resident.app.router, store=resident.storage)
    broken_app = FederationApp(server_name="broken.test", key_lookup=keys)
    for kind in ("state", "state_ids"):
        broken_app.router.add("GET", f"/_matrix/federation/v1/{kind}/{{room_id}}", _broken_answer)
    broken_app.router.add(
        "GET", "/_matrix/federation/v1/timestamp_to_event/{room_id}", _broken_answer
    )
    broken = f"broken.test:{await serve(nursery, broken_app, pki.server_context('broken.test'))}"
    broken_app.server_name = broken
    peer = await open_peer(nursery, pki, zone, keys, "b.test")
    alice = f"@alice:{resident.server_name}"
    room = RoomBuilder(
        "12", alice, keys={resident.server_name: resident.signing_key, "b.test": peer.signing_key}
    )
    room.public_room(BOB)
    messages = [room.message(BOB if n % 2 else alice, f"m{n}") for n in range(3)]
    await ingest_all(resident.storage, room.order)
    return World(resident, FederationEventFetcher(peer.client), room, messages, broken)


def test_the_fetcher_is_what_the_resync_reads_through() -> None:
    assert issubclass(FederationEventFetcher, ResyncClient)


async def test_state_gives_the_events_as_the_resident_stores_them(world: World) -> None:
    at = world.messages[-1]
    answer = await world.fetcher.get_state(
        world.resident.server_name, world.room.room_id, at.event_id
    )
    before = world.room.state_before(at.event_id)
    # Each event byte for byte as stored, which is as it was signed.
    stored = await world.resident.storage.get_events(before.values())
    assert sorted(bytes(raw) for raw in answer.pdus) == sorted(row.json for row in stored.values())
    # Views into the one body read, not copies of each event.
    assert all(type(raw) is msgspec.Raw for raw in (*answer.pdus, *answer.auth_chain))
    chain = [Pdu.from_json(raw, "12") for raw in answer.auth_chain]
    assert {event.event_id for event in chain} <= {event.event_id for event in world.room.order}
    assert world.room.create.event_id in {event.event_id for event in chain}
    # The same state as /state_ids names.
    ids = await world.fetcher.get_state_ids(
        world.resident.server_name, world.room.room_id, at.event_id
    )
    assert sorted(Pdu.from_json(raw, "12").event_id for raw in answer.pdus) == sorted(ids.pdu_ids)
    assert sorted(event.event_id for event in chain) == sorted(ids.auth_chain_ids)


async def test_a_refusal_is_the_remotes_fault(world: World) -> None:
    with pytest.raises(MatrixError) as caught:
        await world.fetcher.get_state(world.resident.server_name, world.room.room_id, "$unknown")
    assert caught.value.http_status == 502
    assert world.resident.server_name in caught.value.message


async def test_an_answer_of_the_wrong_shape_is_the_remotes_fault(world: World) -> None:
    for read in (world.fetcher.get_state, world.fetcher.get_state_ids):
        with pytest.raises(MatrixError) as caught:
            await read(world.broken, world.room.room_id, world.messages[0].event_id)
        assert caught.value.http_status == 502
        assert "unusable answer" in caught.value.message


async def test_timestamp_to_event_names_the_residents_nearest_event(world: World) -> None:
    resident, room_id = world.resident.server_name, world.room.room_id
    first = world.messages[0]
    found = await world.fetcher.timestamp_to_event(resident, room_id, first.origin_server_ts, "b")
    assert found == (first.event_id, first.origin_server_ts)
    # Nothing after the last message: the resident's 404 is a failure too.
    with pytest.raises(MatrixError) as caught:
        await world.fetcher.timestamp_to_event(
            resident, room_id, world.messages[-1].origin_server_ts + 1, "f"
        )
    assert caught.value.http_status == 502
    with pytest.raises(MatrixError) as caught:
        await world.fetcher.timestamp_to_event(world.broken, room_id, 0, "f")
    assert "unusable answer" in caught.value.message
