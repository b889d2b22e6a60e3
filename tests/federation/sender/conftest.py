"""The sender against stand-in remote homeservers over real HTTPS on
loopback, with the real storage actor on a SQLite file.

Time is Trio's mock clock, moved by hand: nothing waits on its own, so a
test says exactly when a backoff or a timeout runs out. The wall clock the
sender stores retry state in follows the mock clock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from ranvier.federation.sender import BackoffPolicy, FederationSender
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.federation.transport.server import JsonResponse, Request
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.signing import SigningKey, generate_signing_key
from ranvier.storage import EventStateContext, EventToPersist, Storage
from ranvier.testing import Canned, KnownKeys, Pki, RemoteHomeserver, ZoneDns

from .._servers import TEST_NAMES

ORIGIN = "origin.test"
NOW_MS = 1_700_000_000_000
SEND = "/_matrix/federation/v1/send/"
ROOM_VERSION = "10"


def clock_ms() -> int:
    """Wall-clock milliseconds that move with Trio's (mock) clock."""
    return NOW_MS + int(trio.current_time() * 1000)


# Real seconds any wait below may take before the test fails: the mock clock
# never moves by itself, so only a bug can use them up.
_GIVE_UP_AFTER = 15.0


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait until ``predicate()`` holds, letting every task run meanwhile.

    It passes the moment the predicate holds, so whatever the predicate does
    not say may still be on its way: :func:`settle` before looking at that.
    """
    give_up = time.monotonic() + _GIVE_UP_AFTER
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)


async def until_async(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    """:func:`until` for a predicate that must wait, such as a database read."""
    give_up = time.monotonic() + _GIVE_UP_AFTER
    while not await predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)


def _nothing(conn: sqlite3.Connection) -> None:
    """A write that writes nothing: it is answered only after every write
    sent to the actor before it has committed."""


async def settle(storage: Storage) -> None:
    """Let everything run until nothing more happens unless the mock clock
    moves or a remote is let answer.

    Every task being blocked is not enough: a task waiting on ``storage`` is
    blocked while a thread does the work, and what that task does next has
    not happened yet. So this also waits until no read is running and a
    write sent after all tasks blocked is the only write the actor took
    meanwhile: every write asked for before has then committed, and no task
    woke to ask for another. Remotes run in this Trio loop, so their
    requests and answers show as tasks running.
    """
    give_up = time.monotonic() + _GIVE_UP_AFTER
    readers = storage.readers.limiter
    while True:
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        if readers.borrowed_tokens == 0:
            writes_before = storage.actor.stats.requests
            await storage.actor.submit(_nothing)
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            if storage.actor.stats.requests == writes_before + 1 and readers.borrowed_tokens == 0:
                return
        if time.monotonic() > give_up:
            raise AssertionError("gave up waiting for the sender and storage to settle")


@dataclass
class Received:
    """One ``/send`` request as the remote saw it."""

    transaction_id: str
    origin: str | None
    content: dict[str, Any]

    @property
    def event_ids(self) -> list[str]:
        return [pdu["unsigned"]["x-id"] for pdu in self.content["pdus"]]

    @property
    def edus(self) -> list[dict[str, Any]]:
        edus: list[dict[str, Any]] = self.content.get("edus", [])
        return edus


class TransactionSink(RemoteHomeserver):
    """A remote homeserver's ``/send``: records each request as it arrives,
    then answers as the test says.

    ``gate``, when set, holds every answer back until the event is set;
    ``answer`` replaces the normal answer (a 503 for a server that is
    unwell, say); ``pdu_errors`` are reported for those event IDs.
    """

    def __init__(self, template: str, *, key_lookup: KnownKeys) -> None:
        super().__init__(template, key_lookup=key_lookup, clock=clock_ms)
        self.received: list[Received] = []
        self.gate: trio.Event | None = None
        self.answer: Canned | None = None
        self.pdu_errors: dict[str, str] = {}
        self.app.router.add("PUT", SEND + "{txn_id}", self._send)

    async def _send(self, request: Request) -> Any:
        self.received.append(
            Received(request.path_params["txn_id"], request.origin, request.content)
        )
        if self.gate is not None:
            await self.gate.wait()
        if self.answer is not None:
            return JsonResponse(msgspec.json.decode(self.answer.body), status=self.answer.status)
        return {
            "pdus": {
                pdu["unsigned"]["x-id"]: (
                    {"error": self.pdu_errors[pdu["unsigned"]["x-id"]]}
                    if pdu["unsigned"]["x-id"] in self.pdu_errors
                    else {}
                )
                for pdu in request.content["pdus"]
            }
        }


@dataclass(frozen=True)
class StoredPdu:
    event_id: str
    room_id: str
    stream_ordering: int
    json: bytes


@dataclass
class Running:
    sender: FederationSender
    scope: trio.CancelScope
    stopped: trio.Event = field(default_factory=trio.Event)

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()


@dataclass
class World:
    pki: Pki
    zone: ZoneDns
    key: SigningKey
    nursery: trio.Nursery
    storage: Storage
    client: FederationHttpClient
    _rooms: dict[str, list[StoredPdu]] = field(default_factory=dict)
    _senders: list[Running] = field(default_factory=list)

    async def remote(self, host: str = "remote.test") -> TransactionSink:
        sink = TransactionSink(host + ":{port}", key_lookup=KnownKeys({ORIGIN: self.key}))
        await sink.start(self.nursery, self.pki.server_context())
        return sink

    async def start_sender(self, **options: Any) -> Running:
        options.setdefault("backoff", BackoffPolicy())
        options.setdefault("clock_ms", clock_ms)
        sender = FederationSender(ORIGIN, self.client, self.storage, **options)
        running = Running(sender, trio.CancelScope())

        async def run(task_status: trio.TaskStatus[None]) -> None:
            try:
                with running.scope:
                    await sender.run(task_status=task_status)
            finally:
                running.stopped.set()

        await self.nursery.start(run)
        self._senders.append(running)
        return running

    async def stop_senders(self) -> None:
        """Stop every sender still running, as a homeserver stops its parts:
        before the storage they use, which would otherwise close under a
        sender still reading."""
        for running in self._senders:
            await running.stop()

    async def events(
        self, room_id: str, count: int, *, after: str | None = None
    ) -> list[StoredPdu]:
        """``count`` new events in ``room_id``, each following the one before,
        stored. The first follows ``after`` if given (a fork), else the
        room's last event; the room is created with its first call.
        """
        chain = self._rooms.get(room_id)
        if chain is None:
            await self.storage.store_room(room_id, ROOM_VERSION)
            chain = self._rooms[room_id] = []
        group = await self.storage.store_state_group(room_id, None, {})
        parent = after if after is not None else (chain[-1].event_id if chain else None)
        to_persist: list[EventToPersist] = []
        for n in range(len(chain), len(chain) + count):
            event_id = f"${room_id[1:].split(':')[0]}-{n}"
            prev = (parent,) if parent is not None else ()
            parent = event_id
            pdu = {
                "auth_events": [],
                "content": {"body": f"message {n}", "msgtype": "m.text"},
                "depth": n + 1,
                "origin_server_ts": NOW_MS + n,
                "prev_events": list(prev),
                "room_id": room_id,
                "sender": f"@alice:{ORIGIN}",
                "type": "m.room.message",
                "unsigned": {"x-id": event_id},
            }
            to_persist.append(
                EventToPersist(
                    event_id=event_id,
                    room_id=room_id,
                    room_version=ROOM_VERSION,
                    type="m.room.message",
                    state_key=None,
                    sender=f"@alice:{ORIGIN}",
                    depth=n + 1,
                    origin_server_ts=NOW_MS + n,
                    json=encode_canonical_json(pdu),
                    prev_event_ids=prev,
                    context=EventStateContext(state_group_before=group),
                )
            )
        orderings = await self.storage.persist_events(to_persist)
        made = [
            StoredPdu(event.event_id, room_id, orderings[event.event_id], event.json)
            for event in to_persist
        ]
        chain.extend(made)
        return made


async def caught_up(world: World, destination: str) -> None:
    """Wait until the database shows nothing ``destination`` is behind in,
    and still shows it once everything has settled.

    The first look can come before a position handed over is written, when
    the room is not behind yet only because the database has not heard of it.
    """

    async def nothing_behind() -> bool:
        return not await world.storage.get_unsent_destination_rooms(destination)

    await until_async(nothing_behind, f"{destination} to be caught up")
    await settle(world.storage)
    behind = await world.storage.get_unsent_destination_rooms(destination)
    assert not behind, f"{destination} is still behind in {behind}"


def send(running: Running, pdus: list[StoredPdu], *destinations: str) -> None:
    for pdu in pdus:
        running.sender.send_pdu(
            pdu.json,
            event_id=pdu.event_id,
            room_id=pdu.room_id,
            stream_ordering=pdu.stream_ordering,
            destinations=destinations,
        )


@pytest.fixture
async def world(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[World]:
    """Remotes, storage and a client; each test takes ``mock_clock`` itself,
    since pytest-trio runs a test on a clock only when the test names it.
    """
    pki = Pki.create(tmp_path, names=TEST_NAMES)
    zone = ZoneDns()
    for name in ("remote.test", "a.test", "b.test"):
        zone.addresses[name] = ["127.0.0.1"]
    storage = Storage(tmp_path / "ranvier.db", synchronous="OFF")
    await nursery.start(storage.run)
    key = generate_signing_key("k1")
    # No pooled connections: the remote's keep-alive timers run on the mock
    # clock, and a connection it closes as a test moves the clock must not
    # be picked for the next request.
    async with FederationHttpClient(
        ORIGIN,
        key,
        ssl_context=pki.client_context(),
        dns=zone,
        request_timeout=30.0,
        max_keepalive_connections=0,
    ) as client:
        world = World(pki, zone, key, nursery, storage, client)
        yield world
        await world.stop_senders()
