"""PUT /send over real HTTPS on loopback, into real storage.

Our side is the federation app with the transaction route, the key ring and
the ingester on a SQLite file. The remote is the real federation app too,
serving its keys and, from its copy of the room, the events and state we
ask it for; it sends transactions with the real federation client.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import pytest
import trio

from ranvier.core.ingest import EventVerifier, FederationIngester, RoomLocks
from ranvier.errors import MatrixError
from ranvier.federation.client import FederationEventFetcher
from ranvier.federation.keys import KeyRing
from ranvier.federation.persistence import ReceivedTransactions
from ranvier.federation.server import (
    MAX_PDUS_PER_TRANSACTION,
    TransactionHandler,
    add_transaction_routes,
)
from ranvier.federation.transport.client import (
    FederationConnectionError,
    FederationHttpClient,
    FederationRequestError,
)
from ranvier.federation.transport.listener import HttpListener
from ranvier.federation.transport.routes import wall_clock_ms
from ranvier.federation.transport.server import FederationApp
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.events import Pdu
from ranvier.protocol.redaction import redact
from ranvier.protocol.signing import SigningKey, generate_signing_key, key_id
from ranvier.protocol.unpadded_base64 import encode_unpadded_base64
from ranvier.protocol.untrusted_json import MAX_JSON_NESTING
from ranvier.protocol.x_matrix import XMatrixAuthorization, format_authorization, sign_request
from ranvier.storage import Storage
from ranvier.testing import (
    KnownKeys,
    Pki,
    RemoteHomeserver,
    RemoteRooms,
    RoomBuilder,
    ZoneDns,
    free_port,
    ingest_all,
)

NAMES = ("ours.test", "remote.test", "evil.test", "127.0.0.1")
SEND = "/_matrix/federation/v1/send/"


@dataclass
class World:
    tmp_path: Path
    nursery: trio.Nursery
    pki: Pki
    zone: ZoneDns
    ours: str
    our_key: SigningKey
    storage: Storage
    handler: TransactionHandler
    remote: RemoteHomeserver
    remote_client: FederationHttpClient
    served: RemoteRooms
    room: RoomBuilder
    alice: str
    bob: str
    http: httpx.AsyncClient

    def transaction(self, pdus: Sequence[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
        return self.remote.transaction(pdus, **extra)

    async def send(
        self, pdus: Sequence[Pdu | Mapping[str, Any]], txn_id: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        """PUT /send as the remote; the answer's PDU results."""
        answer = await self.remote.send_transaction(self.ours, pdus, txn_id=txn_id, **extra)
        results: dict[str, Any] = answer["pdus"]
        return results

    async def stored(self, *events: Pdu) -> set[str]:
        return set(await self.storage.get_events([event.event_id for event in events]))

    async def add_server(self, name: str) -> tuple[RemoteHomeserver, FederationHttpClient]:
        """Another remote server, listening, with a client that signs as it."""
        other = RemoteHomeserver(name + ":{port}", key_lookup=KnownKeys({self.ours: self.our_key}))
        await other.start(self.nursery, self.pki.server_context(*NAMES))
        client = await other.open_client(self.nursery, self.pki.client_context(), self.zone)
        return other, client


@pytest.fixture
def limits() -> dict[str, int]:
    """The transaction handler's limits; a test parametrizes it to change them."""
    return {}


@pytest.fixture
async def world(
    tmp_path: Path, nursery: trio.Nursery, limits: dict[str, int]
) -> AsyncIterator[World]:
    pki = Pki.create(tmp_path)
    zone = ZoneDns()
    for name in NAMES[:3]:
        zone.addresses[name] = ["127.0.0.1"]
    port = free_port()
    ours = f"ours.test:{port}"
    our_key = generate_signing_key("o1")
    storage = Storage(tmp_path / "ours.db", synchronous="OFF")
    await nursery.start(storage.run)
    our_client = FederationHttpClient(ours, our_key, ssl_context=pki.client_context(), dns=zone)
    await nursery.start(our_client.run)
    ring = KeyRing(
        store=storage, client=our_client, local_server_name=ours, local_keys=[our_key.verify_key]
    )
    ingester = FederationIngester(
        store=storage,
        persister=storage,
        client=FederationEventFetcher(our_client),
        verifier=EventVerifier(ring),
        room_locks=RoomLocks(),
        answers=storage,
    )
    handler = TransactionHandler(
        pdus=ingester,
        transactions=ReceivedTransactions(storage),
        retry_after_ms=200,
        max_waiting_per_origin=limits.get("max_waiting_per_origin", 2),
        max_concurrent_transactions=limits.get("max_concurrent_transactions", 16),
    )
    app = FederationApp(server_name=ours, key_lookup=ring)
    add_transaction_routes(app.router, handler)
    listener = HttpListener(
        app, host="127.0.0.1", port=port, ssl_context=pki.server_context(*NAMES)
    )
    await nursery.start(listener.run)

    remote = RemoteHomeserver("remote.test:{port}", key_lookup=KnownKeys({ours: our_key}))
    await remote.start(nursery, pki.server_context(*NAMES))
    served = remote.rooms
    remote_client = await remote.open_client(nursery, pki.client_context(), zone)

    alice, bob = f"@alice:{ours}", f"@bob:{remote.server_name}"
    room = RoomBuilder(creator=alice, keys={ours: our_key, remote.server_name: remote.signing_key})
    room.public_room(bob)
    served.rooms[room.room_id] = room
    await ingest_all(storage, list(room.events.values()))
    async with httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{port}", verify=pki.client_context(), timeout=10
    ) as http:
        yield World(
            tmp_path, nursery, pki, zone, ours, our_key, storage, handler, remote,
            remote_client, served, room, alice, bob, http,
        )  # fmt: skip


# Transactions


async def test_a_message_is_persisted_before_the_answer(world: World) -> None:
    message = world.room.message(world.bob, "hi")
    results = await world.send([message])
    assert results == {message.event_id: {}}
    stored = await world.storage.get_event(message.event_id)
    assert stored is not None
    assert stored.json == message.raw  # byte for byte as received
    assert await world.storage.get_forward_extremities(world.room.room_id) == {message.event_id}
    assert world.served.requests == []  # nothing was missing


async def test_a_repeated_transaction_gets_the_first_answer_and_changes_nothing(
    world: World,
) -> None:
    first = world.room.message(world.bob, "once")
    assert await world.send([first], txn_id="same") == {first.event_id: {}}
    # The same ID again, even with other PDUs in it, is answered as before.
    second = world.room.message(world.bob, "twice")
    assert await world.send([second], txn_id="same") == {first.event_id: {}}
    assert await world.stored(first, second) == {first.event_id}
    # Another ID is another transaction.
    assert await world.send([second], txn_id="other") == {second.event_id: {}}


async def test_the_answer_is_recorded_with_the_pdus_when_one_write_takes_them(
    world: World,
) -> None:
    def requests() -> int:
        return world.storage.actor.stats.requests

    async def recorded(txn_id: str) -> Any:
        record = await world.storage.get_received_transaction(world.remote.server_name, txn_id)
        assert record is not None
        return msgspec.json.decode(record.response_json)

    # The first request from the remote stores its key.
    await world.send([world.room.message(world.bob, "first")])
    messages = [world.room.message(world.bob, f"m{n}") for n in range(3)]
    before = requests()
    results = await world.send(messages, txn_id="alone")
    assert results == {message.event_id: {} for message in messages}
    # The events and the answer in one request: one commit holds both.
    assert requests() == before + 1
    assert await recorded("alone") == {"pdus": results}

    # With EDUs, handled beside the PDUs, the answer waits for both and is
    # written after them.
    message = world.room.message(world.bob, "with an EDU")
    edu = {"edu_type": "m.typing", "content": {"room_id": world.room.room_id, "typing": True}}
    before = requests()
    assert await world.send([message], edus=[edu], txn_id="edus") == {message.event_id: {}}
    assert requests() == before + 2
    assert await recorded("edus") == {"pdus": {message.event_id: {}}}

    # A PDU that cannot be read is named in the answer recorded with the rest.
    good = world.room.message(world.bob, "readable")
    unreadable = dict(world.room.message(world.bob, "damaged").json, depth="deep")
    before = requests()
    results = await world.send([good, unreadable], txn_id="damaged")
    assert results[good.event_id] == {}
    assert len(results) == 2
    assert requests() == before + 1
    assert await recorded("damaged") == {"pdus": results}


async def test_rooms_in_one_transaction_are_each_handled(world: World) -> None:
    other = RoomBuilder(creator=world.alice, keys=world.room.keys)
    other.public_room(world.bob)
    await ingest_all(world.storage, list(other.events.values()))
    # The first request from the remote stores its key.
    await world.send([world.room.message(world.bob, "first")])
    pdus = [world.room.message(world.bob, "a1"), other.message(world.bob, "b1")]
    pdus.append(world.room.message(world.bob, "a2"))
    requests = world.storage.actor.stats.requests
    results = await world.send(pdus, txn_id="two rooms")
    assert results == {pdu.event_id: {} for pdu in pdus}
    assert await world.storage.get_forward_extremities(world.room.room_id) == {pdus[2].event_id}
    assert await world.storage.get_forward_extremities(other.room_id) == {pdus[1].event_id}
    # A write per room, and the answer in one of its own once both are done.
    assert world.storage.actor.stats.requests == requests + 3
    record = await world.storage.get_received_transaction(world.remote.server_name, "two rooms")
    assert record is not None
    assert msgspec.json.decode(record.response_json) == {"pdus": results}


async def test_edus_never_break_a_transaction(world: World) -> None:
    seen: list[tuple[str, str, Mapping[str, Any]]] = []

    class Edus:
        async def on_edu(self, origin: str, edu_type: str, content: Mapping[str, Any]) -> None:
            await trio.lowlevel.checkpoint()
            seen.append((origin, edu_type, content))
            if content.get("fail"):
                raise RuntimeError("a handler that breaks")

    world.handler._edus = Edus()
    message = world.room.message(world.bob)
    edus = [
        {"edu_type": "m.typing", "content": {"room_id": world.room.room_id, "typing": True}},
        "not an object",
        {"edu_type": "m.receipt"},
        {"edu_type": "org.example.unknown", "content": {}},
        {"edu_type": "m.presence", "content": {"fail": True}},
        {"edu_type": "m.direct_to_device", "content": {"messages": {}}},
    ]
    assert await world.send([message], edus=edus) == {message.event_id: {}}
    assert [edu_type for _, edu_type, _ in seen] == ["m.typing", "m.presence", "m.direct_to_device"]
    assert {origin for origin, _, _ in seen} == {world.remote.server_name}


# Gaps


async def test_a_small_gap_is_filled_with_get_missing_events(world: World) -> None:
    missed = [world.room.message(world.bob, f"missed {n}") for n in range(3)]
    latest = world.room.message(world.bob, "latest")
    assert await world.send([latest]) == {latest.event_id: {}}
    assert world.served.requests == ["get_missing_events"]
    for event in [*missed, latest]:
        stored = await world.storage.get_event(event.event_id)
        assert stored is not None
        assert not stored.outlier
        assert await world.storage.get_event_state_groups(event.event_id) is not None
    assert await world.storage.get_forward_extremities(world.room.room_id) == {latest.event_id}


async def test_a_bigger_gap_is_filled_with_the_state_at_it(world: World) -> None:
    room = world.room
    carol = f"@carol:{world.remote.server_name}"
    early = [room.member(carol, "join"), room.topic(world.alice, "before the gap")]
    early += [room.message(world.bob, f"m{n}") for n in range(12)]
    latest = room.message(world.bob, "latest")
    assert await world.send([latest]) == {latest.event_id: {}}
    # Ten events came with get_missing_events; the state before the oldest
    # of them came with /state_ids, its events one by one.
    assert world.served.requests[0] == "get_missing_events"
    assert "state_ids" in world.served.requests
    pulled = early[-10:]
    for event in [*pulled, latest]:
        stored = await world.storage.get_event(event.event_id)
        assert stored is not None
        assert not stored.outlier
        assert stored.rejected_reason is None
    current = await world.storage.get_current_state_ids(room.room_id)
    assert current == room.state_after[latest.event_id]
    # The state events from the gap are stored, as outliers.
    for event in early[:2]:
        stored = await world.storage.get_event(event.event_id)
        assert stored is not None
        assert stored.outlier


async def test_a_gap_the_origin_cannot_fill_fails_that_pdu(world: World) -> None:
    world.room.message(world.bob, "missed")
    latest = world.room.message(world.bob, "latest")
    world.served.rooms.clear()  # the remote answers 500 to every read
    results = await world.send([latest])
    error = results[latest.event_id]["error"]
    assert error.startswith("M_UNKNOWN")
    assert "answered 500" in error
    assert await world.stored(latest) == set()


async def test_an_event_failed_for_its_gap_is_taken_when_sent_again_after_the_gap(
    world: World,
) -> None:
    first = world.room.message(world.bob, "first")
    second = world.room.message(world.bob, "second")
    world.served.rooms.clear()  # the remote will not serve the first
    results = await world.send([second])
    assert "error" in results[second.event_id]
    assert await world.stored(first, second) == set()
    assert await world.send([first]) == {first.event_id: {}}
    # Sent again, the second now has every prev event here: it is taken,
    # as a new event after the first.
    assert await world.send([second]) == {second.event_id: {}}
    stored = await world.storage.get_events([first.event_id, second.event_id])
    for event in stored.values():
        assert not event.outlier
        assert event.rejected_reason is None
    assert stored[first.event_id].stream_ordering < stored[second.event_id].stream_ordering
    assert await world.storage.get_forward_extremities(world.room.room_id) == {second.event_id}


# Bad input: refused before anything is read


def _signed_header(
    world: World,
    uri: str,
    content: Any,
    *,
    key: SigningKey | None = None,
    destination: str | None = None,
) -> str:
    return format_authorization(
        sign_request(
            method="PUT",
            uri=uri,
            origin=world.remote.server_name,
            destination=destination or world.ours,
            signing_key=key or world.remote.signing_key,
            content=content,
        )
    )


async def _put(
    world: World, content: Any, *, authorization: str | None, raw: bytes | None = None
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if authorization is not None:
        headers["authorization"] = authorization
    body = raw if raw is not None else encode_canonical_json(content)
    return await world.http.put(SEND + "bad", content=body, headers=headers)


@pytest.mark.parametrize(
    "problem", ["unsigned", "bad signature", "wrong destination", "unknown key"]
)
async def test_requests_that_do_not_authenticate_are_refused(world: World, problem: str) -> None:
    message = world.room.message(world.bob)
    body = world.transaction([message.json])
    uri = SEND + "bad"
    authorization: str | None
    if problem == "unsigned":
        authorization = None
    elif problem == "bad signature":
        forger = generate_signing_key(world.remote.signing_key.version)
        authorization = _signed_header(world, uri, body, key=forger)
    elif problem == "wrong destination":
        authorization = _signed_header(world, uri, body, destination="elsewhere.test")
    else:
        authorization = _signed_header(world, uri, body, key=generate_signing_key("unknown"))
    response = await _put(world, body, authorization=authorization)
    assert response.status_code == 401, response.text
    assert response.json()["errcode"] == "M_UNAUTHORIZED"
    assert await world.stored(message) == set()


async def test_malformed_json_is_refused(world: World) -> None:
    authorization = _signed_header(world, SEND + "bad", None)
    response = await _put(
        world, None, authorization=authorization, raw=b'{"origin": "x", "pdus": ['
    )
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_NOT_JSON"


async def test_a_body_that_is_not_a_transaction_is_refused(world: World) -> None:
    message = world.room.message(world.bob)
    with pytest.raises(FederationRequestError) as caught:
        await world.remote_client.put_json(world.ours, SEND + "t", {"pdus": [message.json]})
    assert (caught.value.status, caught.value.errcode) == (400, "M_BAD_JSON")
    assert "origin" in (caught.value.error or "")
    assert await world.stored(message) == set()


async def test_more_than_50_pdus_are_refused(world: World) -> None:
    messages = [world.room.message(world.bob, f"{n}") for n in range(MAX_PDUS_PER_TRANSACTION + 1)]
    with pytest.raises(FederationRequestError) as caught:
        await world.send(messages)
    assert (caught.value.status, caught.value.errcode) == (400, "M_BAD_JSON")
    assert "at most 50 PDUs" in (caught.value.error or "")
    assert await world.stored(*messages) == set()
    # Fifty go through.
    results = await world.send(messages[:MAX_PDUS_PER_TRANSACTION])
    assert all(result == {} for result in results.values())


async def test_a_transaction_claiming_another_origin_is_refused(world: World) -> None:
    message = world.room.message(world.bob)
    with pytest.raises(FederationRequestError) as caught:
        await world.send([message], origin="evil.test")
    assert (caught.value.status, caught.value.errcode) == (403, "M_FORBIDDEN")
    assert await world.stored(message) == set()


# Bad PDUs: each fails alone, with its error, and is not written


async def test_bad_pdus_fail_alone(world: World) -> None:
    room = world.room
    good = room.message(world.bob, "good")
    forged = room.message(
        world.bob, "forged", key=generate_signing_key(world.remote.signing_key.version)
    )
    unsigned_json = dict(room.message(world.bob, "unsigned").json)
    unsigned_json["signatures"] = {}
    unsigned = Pdu.from_json(unsigned_json, room.version)
    too_big = dict(room.message(world.bob, "big").json)
    too_big["content"] = {"body": "x" * 70_000}
    big = world.room.signed({k: v for k, v in too_big.items() if k not in ("hashes", "signatures")})
    results = await world.send([forged, unsigned, big, good])
    assert results[good.event_id] == {}
    assert results[forged.event_id]["error"].startswith("M_UNAUTHORIZED")
    assert "does not match" in results[forged.event_id]["error"]
    assert results[unsigned.event_id]["error"].startswith("M_UNAUTHORIZED")
    assert len(results) == 4
    (big_id,) = set(results) - {good.event_id, forged.event_id, unsigned.event_id}
    assert results[big_id]["error"].startswith("M_TOO_LARGE")
    stored = await world.storage.get_events([forged.event_id, unsigned.event_id, big_id])
    assert stored == {}
    assert await world.stored(good) == {good.event_id}


async def test_a_bad_content_hash_keeps_only_the_redacted_event(world: World) -> None:
    message = world.room.message(world.bob, "what was signed")
    tampered = dict(message.json)
    tampered["content"] = {"msgtype": "m.text", "body": "what was changed"}
    results = await world.send([tampered])
    assert results == {message.event_id: {}}
    stored = await world.storage.get_event(message.event_id)
    assert stored is not None
    kept = msgspec.json.decode(stored.json)
    assert kept == redact(message.json, world.room.version)
    assert kept["content"] == {}
    assert b"what was changed" not in stored.json


async def test_an_event_for_a_room_we_are_not_in_gets_an_error(world: World) -> None:
    elsewhere = RoomBuilder(creator=world.bob, keys=world.room.keys)
    elsewhere.public_room()
    message = elsewhere.message(world.bob)
    results = await world.send([message])
    assert results[message.event_id]["error"].startswith("M_NOT_FOUND")
    assert await world.storage.get_room_version(elsewhere.room_id) is None
    assert await world.stored(message) == set()


async def test_an_event_failing_the_auth_rules_is_rejected(world: World) -> None:
    # Bob has no power to change the power levels.
    grab = world.room.power_levels(world.bob, {world.bob: 100})
    results = await world.send([grab])
    assert results[grab.event_id]["error"].startswith("M_FORBIDDEN")
    stored = await world.storage.get_event(grab.event_id)
    # Kept as rejected (so that events citing it are judged by it), and
    # nothing of the room moved.
    assert stored is not None
    assert stored.rejected_reason is not None
    current = await world.storage.get_current_state_ids(world.room.room_id)
    assert current[("m.room.power_levels", "")] != grab.event_id
    assert grab.event_id not in await world.storage.get_forward_extremities(world.room.room_id)


async def test_an_event_pushed_by_a_server_with_no_member_is_refused(world: World) -> None:
    evil, evil_client = await world.add_server("evil.test")
    mallory = f"@mallory:{evil.server_name}"
    world.room.keys[evil.server_name] = evil.signing_key
    # Mallory never joined; her message cites the room's auth events.
    message = world.room.message(mallory, "let me in", auth=[world.room.create.event_id])
    # And a real member's event relayed by a server with no member.
    relayed = world.room.message(world.bob, "relayed", prev=message.prev_event_ids)
    body = {
        "origin": evil.server_name,
        "origin_server_ts": wall_clock_ms(),
        "pdus": [message.json, relayed.json],
    }
    answer = await evil_client.put_json(world.ours, SEND + "e1", body)
    results = answer["pdus"]
    assert results[message.event_id]["error"].startswith("M_FORBIDDEN")
    assert "has no member" in results[message.event_id]["error"]
    assert results[relayed.event_id]["error"].startswith("M_FORBIDDEN")
    assert await world.stored(message, relayed) == set()
    # The same event pushed by a server in the room is taken.
    assert await world.send([relayed]) == {relayed.event_id: {}}


# Concurrency


async def _wait_until(condition: Callable[[], bool]) -> None:
    # What is awaited travels over real sockets: there is no event in this
    # process to wait on, so it is looked at until it holds.
    with trio.fail_after(30):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.005)


@pytest.mark.parametrize(
    ("limits", "bounded"),
    [({"max_concurrent_transactions": 1}, True), ({"max_concurrent_transactions": 2}, False)],
)
async def test_work_across_origins_is_bounded(world: World, bounded: bool) -> None:
    other, other_client = await world.add_server("evil.test")
    world.served.hold_missing_events = trio.Event()
    world.room.message(world.bob, "missed")
    latest = world.room.message(world.bob, "latest")
    done: list[str] = []

    async def remote_sends() -> None:
        await world.send([latest])
        done.append("remote")

    async def other_sends() -> None:
        body = {"origin": other.server_name, "origin_server_ts": wall_clock_ms(), "pdus": []}
        await other_client.put_json(world.ours, SEND + "o1", body)
        done.append("other")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(remote_sends)
        # The remote's transaction is under way, held by its gap.
        await world.served.asked_for_missing.wait()
        nursery.start_soon(other_sends)
        if bounded:
            # The other origin's transaction waits for a place...
            await _wait_until(lambda: world.handler.queued(other.server_name) == 1)
            assert done == []
        else:
            # ...or, with room for two, is answered meanwhile.
            await _wait_until(lambda: done == ["other"])
        world.served.hold_missing_events.set()
    assert sorted(done) == ["other", "remote"]
    if bounded:
        assert done == ["remote", "other"]
    assert await world.stored(latest) == {latest.event_id}


# A sender that does not wait


async def test_a_flood_is_slowed_down_and_nothing_is_lost(world: World) -> None:
    """Forty transactions sent at once, each retried after 429 until
    answered: every PDU a 200 answer accepts is stored when the answer
    arrives, and in the end all of them are.
    """
    messages = [world.room.message(world.bob, f"burst {n}") for n in range(200)]
    batches = [messages[i : i + 5] for i in range(0, len(messages), 5)]
    refusals: list[tuple[int, str | None]] = []
    missing_at_answer: list[str] = []

    async def send_until_taken(index: int, batch: list[Pdu]) -> None:
        while True:
            try:
                results = await world.send(batch, txn_id=f"burst{index}")
            except FederationRequestError as exc:
                refusals.append((exc.status, exc.errcode))
                await trio.sleep(exc.body["retry_after_ms"] / 1000)
                continue
            except FederationConnectionError:
                # A kept-alive connection the server closed as it was
                # reused: no answer came, so the transaction is sent again
                # under the same ID, as the sender does.
                continue
            assert results == {pdu.event_id: {} for pdu in batch}
            present = await world.stored(*batch)
            missing_at_answer.extend(pdu.event_id for pdu in batch if pdu.event_id not in present)
            return

    async with trio.open_nursery() as nursery:
        for index, batch in enumerate(batches):
            nursery.start_soon(send_until_taken, index, batch)
    assert refusals
    assert set(refusals) == {(429, "M_LIMIT_EXCEEDED")}
    assert missing_at_answer == []
    assert await world.stored(*messages) == {message.event_id for message in messages}
    assert world.handler.queued(world.remote.server_name) == 0
    assert await world.storage.get_forward_extremities(world.room.room_id) == {
        messages[-1].event_id
    }


# Hostile PDUs: whatever a remote puts in a transaction, it gets an answer,
# and what it sent is either taken whole, kept as rejected, or not written.


def _nested(depth: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


_DEEP: Final = _nested(200)
#: Values that are wrong in some field, or in every field.
_ODD_VALUES: Final[tuple[Any, ...]] = (
    None, True, 0, -1, 2**53, 2**53 + 1, -(2**63), 2**64, 1.5, float("nan"), "", "\ud800",
    "x" * 70_000, [], {}, ["$nope"], ["nope"], {"a": {"b": {}}}, _DEEP,
    ["$" + "a" * 43] * 30, "!room:" + "x" * 300,
)  # fmt: skip
_PDU_FIELDS: Final = (
    "type", "room_id", "sender", "content", "prev_events", "auth_events", "depth",
    "origin_server_ts", "state_key", "redacts", "unsigned", "hashes", "signatures",
)  # fmt: skip
_DELETED: Final = object()


def _mutants(world: World, base: Pdu) -> list[bytes]:
    """``base`` with each field deleted or set to each odd value, each
    hashed and signed again where that can be done (so that it gets past
    the signature check to what is further in), as raw JSON bytes.
    """
    mutants: list[bytes] = []
    for field in _PDU_FIELDS:
        for value in (_DELETED, *_ODD_VALUES):
            fields = {
                key: item for key, item in base.json.items() if key not in ("hashes", "signatures")
            }
            # A body of its own, so that no two mutants are the same event.
            fields["content"] = {"msgtype": "m.text", "body": f"mutant {len(mutants)}"}
            if value is _DELETED:
                fields.pop(field, None)
            else:
                fields[field] = value
            try:
                pdu = world.room.signed(fields) if field not in ("hashes", "signatures") else None
            except (MatrixError, ValueError, TypeError, KeyError):
                pdu = None  # not signable as it is: sent with the base's hashes and signatures
            if pdu is None:
                pdu = fields | {
                    key: base.json[key] for key in ("hashes", "signatures") if key != field
                }
                if field in ("hashes", "signatures") and value is not _DELETED:
                    pdu[field] = value
            mutants.append(json.dumps(pdu, allow_nan=True).encode())
    # Objects the JSON parser must make up its mind about.
    good = base.raw.decode()
    mutants.append(('{"type":"m.room.power_levels",' + good[1:]).encode())
    mutants.append((good[:-1] + ',"depth":1e400}').encode())
    mutants.append(good.replace('"depth":', '"depth":0', 1).encode())
    return mutants


def _strict_json(raw: bytes) -> bool:
    """Whether ``raw`` is JSON as RFC 8259 has it: no NaN or infinities, no
    number too large for a double, no lone surrogates in strings.
    """

    def refuse(text: str) -> Any:
        raise ValueError(text)

    def finite(text: str) -> float:
        number = float(text)
        if math.isinf(number):
            raise ValueError(text)
        return number

    try:
        json.loads(raw, parse_constant=refuse, parse_float=finite)
        raw.decode("utf-8", errors="strict")
    except ValueError:
        return False
    return b"\\ud8" not in raw.lower() and b"\\udc" not in raw.lower()


def _signed_raw_put(world: World, uri: str, body: bytes) -> dict[str, str]:
    """Headers for PUT ``uri`` with ``body``, signed over the body as sent.

    The signed object is built by hand, with the body's own bytes as its
    content, so bodies that canonical JSON could not encode can be sent;
    the server checks a body received in this form first.
    """
    remote = world.remote
    rest = encode_canonical_json(
        {"destination": world.ours, "method": "PUT", "origin": remote.server_name, "uri": uri}
    )
    signed = b'{"content":' + body + b"," + rest[1:]
    signature = encode_unpadded_base64(remote.signing_key.sign(signed).signature)
    authorization = format_authorization(
        XMatrixAuthorization(
            origin=remote.server_name,
            destination=world.ours,
            key=key_id(remote.signing_key),
            sig=signature,
        )
    )
    return {"content-type": "application/json", "authorization": authorization}


async def test_hostile_pdus_get_answers_and_leave_the_room_whole(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    room = world.room
    base = room.message(world.bob, "base")
    assert await world.send([base]) == {base.event_id: {}}
    mutants = _mutants(world, base)
    # A body that is not JSON at all is refused whole (400 M_NOT_JSON), so
    # the mutants that are not strict JSON each go in a transaction alone.
    strict = [mutant for mutant in mutants if _strict_json(mutant)]
    loose = [mutant for mutant in mutants if not _strict_json(mutant)]
    assert loose
    batches = [strict[i : i + MAX_PDUS_PER_TRANSACTION] for i in range(0, len(strict), 50)]
    outcomes: list[tuple[str, Any]] = []
    with caplog.at_level(logging.ERROR, logger="ranvier"):
        for number, chunk in enumerate([*batches, *([mutant] for mutant in loose)]):
            body = b'{"origin":"%s","origin_server_ts":%d,"pdus":[%s]}' % (
                world.remote.server_name.encode(),
                wall_clock_ms(),
                b",".join(chunk),
            )
            uri = f"{SEND}hostile{number}"
            answer = await world.http.put(
                uri, content=body, headers=_signed_raw_put(world, uri, body)
            )
            if answer.status_code == 400 and chunk[0] in loose:
                assert answer.json()["errcode"] == "M_NOT_JSON"
                continue
            assert answer.status_code == 200, answer.text
            pdus = answer.json()["pdus"]
            assert all(
                outcome == {} or (set(outcome) == {"error"} and outcome["error"].startswith("M_"))
                for outcome in pdus.values()
            ), pdus
            outcomes.extend(pdus.items())
    # Nothing the server did went wrong on its side (a 500 would log).
    assert [record.getMessage() for record in caplog.records] == []
    # Some mutants are fine (an odd unsigned, a state key on a message), most
    # are not; both kinds must have been there for this test to mean much.
    accepted = {event_id for event_id, outcome in outcomes if outcome == {}}
    # A mutant with only its signatures changed has the ID of an event that
    # was taken (the ID covers the redacted event, without signatures):
    # refusing that copy leaves the stored one as it was.
    refused = {event_id for event_id, outcome in outcomes if outcome != {}} - accepted
    refused.discard(base.event_id)
    assert accepted
    assert len(refused) > len(_PDU_FIELDS)
    stored = await world.storage.get_events([*accepted, *refused])
    for event_id in accepted:
        kept = stored[event_id]
        assert kept.rejected_reason is None
        # What was taken parses again as an event of the room, under its ID.
        assert Pdu.from_json(kept.json, room.version).event_id == event_id
    for event_id in refused:
        assert event_id not in stored or stored[event_id].rejected_reason is not None
    current = await world.storage.get_current_state_ids(room.room_id)
    assert not set(current.values()) & set(refused)
    extremities = await world.storage.get_forward_extremities(room.room_id)
    assert not extremities & set(refused)
    # And the room goes on: a member's next message is taken.
    after = room.message(
        world.bob, "after", prev=sorted(extremities)[:20], state=room.state_after[base.event_id]
    )
    assert await world.send([after]) == {after.event_id: {}}


@pytest.mark.parametrize("depth", [MAX_JSON_NESTING, 300, 900, 5_000])
async def test_a_pdu_nested_too_deeply_fails_alone_or_the_body_is_not_json(
    world: World, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A PDU nesting deeper than JSON from outside may is refused as bad
    JSON and gets no event ID; the transaction's other PDUs are taken. A
    body too deep for the decoder itself is not JSON at all.
    """
    good = world.room.message(world.bob, "good")
    deep = world.room.message(world.bob, "deep").raw
    deep = deep.replace(b'"content":{', b'"content":{"x":' + b"[" * depth + b"]" * depth + b",", 1)
    body = b'{"origin":"%s","origin_server_ts":%d,"pdus":[%s,%s]}' % (
        world.remote.server_name.encode(),
        wall_clock_ms(),
        deep,
        good.raw,
    )
    uri = f"{SEND}deep{depth}"
    with caplog.at_level(logging.ERROR, logger="ranvier"):
        answer = await world.http.put(uri, content=body, headers=_signed_raw_put(world, uri, body))
    assert [record.getMessage() for record in caplog.records] == []
    if answer.status_code == 400:
        assert depth >= 900
        assert answer.json()["errcode"] == "M_NOT_JSON"
        assert await world.stored(good) == set()
        return
    assert answer.status_code == 200, answer.text
    assert answer.json()["pdus"] == {good.event_id: {}}
    assert await world.stored(good) == {good.event_id}
