"""RemoteRooms and RemoteHomeserver: a remote's copy of a room, read in
process and over HTTPS, and transactions signed as the remote."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ranvier.errors import MatrixError
from ranvier.federation.transport.client import FederationRequestError
from ranvier.federation.transport.server import Request
from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import key_id
from ranvier.testing import KnownKeys, Pki, RemoteHomeserver, RemoteRooms, RoomBuilder, ZoneDns

V1 = "/_matrix/federation/v1"
ALICE = "@alice:a.test"
JOIN_RULES = ("m.room.join_rules", "")


def _room() -> tuple[RoomBuilder, list[str]]:
    room = RoomBuilder("10", ALICE)
    room.public_room()
    return room, [room.message(ALICE, f"m{n}").event_id for n in range(5)]


def _ids(events: list[Any]) -> list[str]:
    return [Pdu.from_json(event, "10").event_id for event in events]


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


async def test_missing_events_walk_back_from_the_latest_to_the_earliest() -> None:
    room, messages = _room()
    remote = RemoteRooms(room)
    between = await remote.get_missing_events(
        "remote.test",
        room.room_id,
        earliest_events=[messages[0]],
        latest_events=[messages[4]],
        limit=10,
    )
    assert _ids(between) == messages[1:4]
    newest = await remote.get_missing_events(
        "remote.test", room.room_id, earliest_events=[], latest_events=[messages[4]], limit=2
    )
    assert _ids(newest) == messages[2:4]
    assert remote.requests == ["get_missing_events", "get_missing_events"]
    assert remote.called("get_missing_events") == ["remote.test", "remote.test"]


async def test_state_ids_and_events_come_from_the_room() -> None:
    room, messages = _room()
    remote = RemoteRooms()
    remote.add(room)
    answer = await remote.get_state_ids("remote.test", room.room_id, messages[0])
    state = room.state_before(messages[0])
    assert answer.pdu_ids == tuple(sorted(state.values()))
    # The join rules cite the rest of that state; nothing cites them.
    assert set(answer.auth_chain_ids) == set(state.values()) - {state[JOIN_RULES]}
    assert await remote.get_event("remote.test", messages[2]) == room.events[messages[2]].raw
    with pytest.raises(MatrixError) as missing:
        await remote.get_event("remote.test", "$nothing")
    assert (missing.value.errcode, missing.value.http_status) == ("M_NOT_FOUND", 502)
    assert remote.calls == [
        ("state_ids", messages[0]),
        ("event", messages[2]),
        ("event", "$nothing"),
    ]


async def test_missing_events_can_be_held_back() -> None:
    room, messages = _room()
    remote = RemoteRooms(room)
    remote.hold_missing_events = trio.Event()
    answered: list[list[bytes]] = []

    async def ask() -> None:
        answer = await remote.get_missing_events(
            "remote.test", room.room_id, earliest_events=[], latest_events=[messages[1]], limit=1
        )
        answered.append(answer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await remote.asked_for_missing.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert answered == []
        remote.hold_missing_events.set()
    assert _ids(answered[0]) == [messages[0]]


async def test_over_https_it_serves_its_keys_and_its_rooms(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    pki = Pki.create(tmp_path, names=("remote.test",))
    zone = ZoneDns.loopback("remote.test")
    asker = RemoteHomeserver("asker.test")
    remote = RemoteHomeserver(key_lookup=KnownKeys({"asker.test": asker.signing_key}))
    name = await remote.start(nursery, pki.server_context())
    assert name == f"remote.test:{remote.port}"
    with pytest.raises(RuntimeError, match="open_client"):
        asker.client  # noqa: B018
    await asker.open_client(nursery, pki.client_context(), zone)
    room, messages = _room()
    remote.rooms.add(room)

    keys = await asker.client.get_json(name, "/_matrix/key/v2/server")
    assert keys["server_name"] == name
    assert set(keys["verify_keys"]) == {key_id(remote.signing_key)}
    event = await asker.client.get_json(name, f"{V1}/event/{_seg(messages[2])}")
    assert (event["origin"], _ids(event["pdus"])) == (name, [messages[2]])
    state_ids = await asker.client.get_json(
        name, f"{V1}/state_ids/{_seg(room.room_id)}", query={"event_id": messages[0]}
    )
    assert state_ids["pdu_ids"] == sorted(room.state_before(messages[0]).values())
    missing = await asker.client.post_json(
        name,
        f"{V1}/get_missing_events/{_seg(room.room_id)}",
        {"earliest_events": [messages[0]], "latest_events": [messages[4]]},
    )
    assert _ids(missing["events"]) == messages[1:4]
    with pytest.raises(FederationRequestError) as unknown:
        await asker.client.get_json(name, f"{V1}/event/{_seg('$nothing')}")
    assert (unknown.value.status, unknown.value.errcode) == (404, "M_NOT_FOUND")
    assert remote.rooms.requests == ["event", "state_ids", "get_missing_events", "event"]


async def test_transactions_are_signed_as_the_remote(tmp_path: Path, nursery: trio.Nursery) -> None:
    pki = Pki.create(tmp_path, names=("receiver.test",))
    sender = RemoteHomeserver("sender.test")
    receiver = RemoteHomeserver(
        "receiver.test:{port}", key_lookup=KnownKeys({"sender.test": sender.signing_key})
    )
    received: list[tuple[str, str | None, Any]] = []

    async def on_send(request: Request) -> Any:
        received.append((request.path_params["txn_id"], request.origin, request.content))
        return {"pdus": {}}

    receiver.app.router.add("PUT", V1 + "/send/{txn_id}", on_send)
    await receiver.start(nursery, pki.server_context())
    await sender.open_client(nursery, pki.client_context(), ZoneDns.loopback("receiver.test"))
    room, messages = _room()
    message = room.events[messages[0]]
    assert await sender.send_transaction(receiver.server_name, [message]) == {"pdus": {}}
    await sender.send_transaction(receiver.server_name, [], txn_id="mine", edus=[])
    assert [(txn_id, origin) for txn_id, origin, _ in received] == [
        ("t0", "sender.test"),
        ("mine", "sender.test"),
    ]
    first, second = received[0][2], received[1][2]
    assert first["origin"] == "sender.test"
    assert first["pdus"] == [message.json]
    assert (second["origin"], second["pdus"], second["edus"]) == ("sender.test", [], [])
