"""PUT /send over real HTTPS on loopback, into real storage.

Our side is the federation app with the transaction route, the key ring and
the ingester on a SQLite file. The remote is the real federation app too,
serving its keys and, from its copy of the room, the events and state we
ask it for; it sends transactions with the real federation client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from ranvier.core.ingest import EventVerifier, FederationIngester, RoomLocks
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
from ranvier.protocol.signing import SigningKey, generate_signing_key
from ranvier.protocol.x_matrix import format_authorization, sign_request
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


async def test_rooms_in_one_transaction_are_each_handled(world: World) -> None:
    other = RoomBuilder(creator=world.alice, keys=world.room.keys)
    other.public_room(world.bob)
    await ingest_all(world.storage, list(other.events.values()))
    pdus = [world.room.message(world.bob, "a1"), other.message(world.bob, "b1")]
    pdus.append(world.room.message(world.bob, "a2"))
    results = await world.send(pdus)
    assert results == {pdu.event_id: {} for pdu in pdus}
    assert await world.storage.get_forward_extremities(world.room.room_id) == {pdus[2].event_id}
    assert await world.storage.get_forward_extremities(other.room_id) == {pdus[1].event_id}


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
    with trio.fail_after(5):
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
