"""The application service sender over real storage, with services that
record or refuse what they are sent: a service down does not hold back
another, its transaction is retried unchanged with a doubling backoff, at
most 100 events go in one transaction, senders are made at start."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
import trio
from trio.testing import MockClock

from ranvier.core.accounts import Accounts
from ranvier.core.appservice_sender import MAX_EVENTS, AppServiceSender
from ranvier.core.appservices import (
    AppService,
    AppServices,
    AppServiceUnavailableError,
    load_app_services,
)
from ranvier.core.notifier import StreamNotifier
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest_all

ALICE = "@alice:example.org"
BRIDGE_USER = "@_a_ghost:example.org"
OTHER_USER = "@_b_ghost:example.org"

_REGISTRATION = """\
id: {name}
url: "http://127.0.0.1:9/{name}"
as_token: as-{name}
hs_token: hs-{name}
sender_localpart: _{name}_bot
namespaces:
  users:
    - exclusive: true
      regex: "@_{name}_.*"
"""


@dataclass
class _Services:
    """Services that answer as :attr:`down` says, recording every attempt."""

    down: set[str] = field(default_factory=set)
    attempts: list[tuple[str, str, float]] = field(default_factory=list)
    delivered: dict[str, list[tuple[str, list[str]]]] = field(default_factory=dict)
    changed: trio.Event = field(default_factory=trio.Event)

    async def send_transaction(self, service: AppService, txn_id: str, body: bytes) -> None:
        self.attempts.append((service.id, txn_id, trio.current_time()))
        self.changed.set()
        self.changed = trio.Event()
        if service.id in self.down:
            raise AppServiceUnavailableError(f"{service.id} is down")
        events = msgspec.json.decode(body)["events"]
        ids = [event["event_id"] for event in events]
        self.delivered.setdefault(service.id, []).append((txn_id, ids))

    async def query_user(self, service: AppService, user_id: str) -> bool:
        raise AssertionError("not asked here")

    async def query_alias(self, service: AppService, alias: str) -> bool:
        raise AssertionError("not asked here")

    async def ping(self, service: AppService, transaction_id: str | None) -> int:
        raise AssertionError("not asked here")

    def ids(self, service_id: str) -> list[str]:
        return [event_id for _, ids in self.delivered.get(service_id, []) for event_id in ids]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.changed.wait()


@pytest.fixture
def jumping_clock() -> MockClock:
    """Trio's clock for the backoff test: it jumps to the next deadline once
    every task has waited a moment, storage's reader threads included.
    """
    return MockClock(autojump_threshold=0.05)


def _assert_in_order_from_the_join(
    ids: list[str], room: RoomBuilder, user: str = BRIDGE_USER
) -> None:
    """``ids`` are the room's events in order, each once, the service's user's
    join and every later event among them: the room is judged by its
    members when its events are read, so earlier ones may be left out.
    """
    order = [event.event_id for event in room.order]
    (join,) = [
        event.event_id
        for event in room.order
        if event.type == "m.room.member" and event.state_key == user
    ]
    assert ids == order[order.index(ids[0]) :]
    assert order.index(ids[0]) <= order.index(join)


def _services(tmp_path: Path, *names: str) -> AppServices:
    paths = []
    for name in names:
        path = tmp_path / f"{name}.yaml"
        path.write_text(_REGISTRATION.format(name=name), encoding="utf-8")
        paths.append(path)
    return load_app_services(paths, "example.org")


async def _start(
    storage: Storage,
    services: AppServices,
    client: _Services,
    nursery: trio.Nursery,
    *,
    first_backoff: float = 1.0,
) -> tuple[AppServiceSender, Accounts]:
    notifier = StreamNotifier()
    storage.on_stream_advance = notifier.advance
    accounts = Accounts(server_name="example.org", store=storage.accounts)
    sender = AppServiceSender(
        storage.appservices,
        notifier,
        services,
        client,
        accounts,
        first_backoff=first_backoff,
        max_backoff=8.0,
    )
    await nursery.start(sender.run)
    return sender, accounts


async def test_senders_are_made_at_start(
    storage: Storage, tmp_path: Path, nursery: trio.Nursery
) -> None:
    _, accounts = await _start(storage, _services(tmp_path, "a", "b"), _Services(), nursery)
    assert await accounts.user_exists("@_a_bot:example.org")
    assert await accounts.user_exists("@_b_bot:example.org")


async def test_a_service_down_holds_back_only_itself(
    storage: Storage, tmp_path: Path, nursery: trio.Nursery, jumping_clock: MockClock
) -> None:
    client = _Services(down={"a"})
    await _start(storage, _services(tmp_path, "a", "b"), client, nursery)
    room = RoomBuilder("10", ALICE)
    room.public_room(BRIDGE_USER, OTHER_USER)
    message = room.message(ALICE, "for both")
    await ingest_all(storage, room.order)

    with trio.fail_after(100):
        await client.wait_for(lambda: message.event_id in client.ids("b"))
        # Down for a while: retried with the same ID, 1, 2, 4, 8, 8 s apart.
        await client.wait_for(lambda: sum(a[0] == "a" for a in client.attempts) >= 6)
    tried = [(txn_id, at) for service, txn_id, at in client.attempts if service == "a"]
    assert len({txn_id for txn_id, _ in tried}) == 1
    gaps = [round(b - a) for (_, a), (_, b) in itertools.pairwise(tried)]
    assert gaps[:5] == [1, 2, 4, 8, 8]
    assert "a" not in client.delivered

    client.down.clear()
    with trio.fail_after(100):
        await client.wait_for(lambda: message.event_id in client.ids("a"))
    # The transaction tried first is delivered first, then the rest: the
    # room's events in order from when a user of the service was in it.
    assert client.delivered["a"][0][0] == tried[0][0]
    _assert_in_order_from_the_join(client.ids("a"), room, BRIDGE_USER)
    _assert_in_order_from_the_join(client.ids("b"), room, OTHER_USER)


async def test_at_most_a_hundred_events_a_transaction(
    storage: Storage, tmp_path: Path, nursery: trio.Nursery
) -> None:
    # Down while the events are written, so that they wait in the stream.
    client = _Services(down={"a"})
    await _start(storage, _services(tmp_path, "a"), client, nursery, first_backoff=0.01)
    room = RoomBuilder("10", ALICE)
    room.public_room(BRIDGE_USER)
    for index in range(150):
        room.message(ALICE, f"message {index}")
    await ingest_all(storage, room.order)
    client.down.clear()
    last = room.order[-1].event_id
    with trio.fail_after(30):
        await client.wait_for(lambda: last in client.ids("a"))
    sizes = [len(ids) for _, ids in client.delivered["a"]]
    assert max(sizes) == MAX_EVENTS
    _assert_in_order_from_the_join(client.ids("a"), room)
    txn_ids = [txn_id for txn_id, _ in client.delivered["a"]]
    assert txn_ids == [str(number) for number in range(1, len(txn_ids) + 1)]


async def test_events_of_other_rooms_are_not_sent(
    storage: Storage, tmp_path: Path, nursery: trio.Nursery
) -> None:
    client = _Services()
    await _start(storage, _services(tmp_path, "a"), client, nursery)
    quiet = RoomBuilder("10", ALICE)
    quiet.public_room("@bob:example.org")
    quiet.message(ALICE, "not for the bridge")
    bridged = RoomBuilder("10", ALICE)
    bridged.public_room(BRIDGE_USER)
    message = bridged.message(ALICE, "for the bridge")
    await ingest_all(storage, quiet.order)
    await ingest_all(storage, bridged.order)
    with trio.fail_after(30):
        await client.wait_for(lambda: message.event_id in client.ids("a"))
    assert not {event.event_id for event in quiet.order} & set(client.ids("a"))
    _assert_in_order_from_the_join(client.ids("a"), bridged)
