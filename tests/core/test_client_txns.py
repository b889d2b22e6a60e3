"""Client transactions: one event per transaction, across concurrent retries and restarts."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from ranvier.core.accounts import Requester
from ranvier.core.client_txns import (
    ClientTransactions,
    PendingTransaction,
    TxnKey,
    TxnOwner,
    claim_client_transaction,
)
from ranvier.core.creation import EventCreator
from ranvier.errors import AuthError
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import Storage

ALICE = "@alice:example.org"
ROOM = "!room:example.org"
DEV = TxnOwner(ALICE, "DEV")
PHONE = TxnOwner(ALICE, "PHONE")


class Sender:
    """Stands in for sending an event: counts the sends, can fail or be held."""

    def __init__(self) -> None:
        self.sent = 0
        self.fail = False
        self.release = trio.Event()
        self.release.set()

    async def send(self) -> str:
        await self.release.wait()
        if self.fail:
            raise RuntimeError("the send failed")
        self.sent += 1
        return f"$event{self.sent}"


@pytest.fixture
def txns(storage: Storage) -> ClientTransactions:
    clock = itertools.count(1)
    return ClientTransactions(storage.client_transactions, clock=lambda: next(clock))


async def test_a_retry_answers_with_the_first_event(txns: ClientTransactions) -> None:
    sender = Sender()
    first = await txns.run(DEV, "/send/t1", ROOM, sender.send)
    again = await txns.run(DEV, "/send/t1", ROOM, sender.send)
    assert first == again == "$event1"
    assert sender.sent == 1
    # Another device, or another scope, is another transaction.
    assert await txns.run(PHONE, "/send/t1", ROOM, sender.send) == "$event2"
    assert await txns.run(DEV, "/send/t2", ROOM, sender.send) == "$event3"


async def test_a_token_with_no_device_owns_its_transactions(
    storage: Storage, txns: ClientTransactions
) -> None:
    """Two device-less tokens of one user (puppet tokens, a service naming
    no device) are two clients: the same scope is two transactions, each
    retried on its own token alone, and neither is the user's devices'."""
    sender = Sender()
    one, other = TxnOwner(ALICE, "", b"\x01" * 32), TxnOwner(ALICE, "", b"\x02" * 32)
    assert await txns.run(one, "/send/t", ROOM, sender.send) == "$event1"
    assert await txns.run(other, "/send/t", ROOM, sender.send) == "$event2"
    assert await txns.run(one, "/send/t", ROOM, sender.send) == "$event1"
    assert await txns.run(other, "/send/t", ROOM, sender.send) == "$event2"
    assert await txns.run(DEV, "/send/t", ROOM, sender.send) == "$event3"
    stored = storage.client_transactions
    assert await stored.get_client_transaction(ALICE, "", b"\x02" * 32, "/send/t") == "$event2"
    assert await stored.get_client_transaction(ALICE, "", b"", "/send/t") is None


def test_an_owner_is_the_device_or_else_the_token() -> None:
    with_device = Requester(ALICE, "DEV", False, b"\x01" * 32)
    puppet = Requester(ALICE, "", False, b"\x02" * 32, puppeted_by="@admin:example.org")
    service = Requester(ALICE, "", False, b"\x03" * 32, app_service="bridge")
    assert TxnOwner.of(with_device) == DEV
    assert TxnOwner.of(puppet) == TxnOwner(ALICE, "", b"\x02" * 32)
    assert TxnOwner.of(service) == TxnOwner(ALICE, "", b"\x03" * 32)


async def test_concurrent_retries_send_once(txns: ClientTransactions) -> None:
    sender = Sender()
    sender.release = trio.Event()
    answers: list[str] = []

    async def attempt() -> None:
        answers.append(await txns.run(DEV, "/send/t", ROOM, sender.send))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(attempt)
        await trio.testing.wait_all_tasks_blocked()
        sender.release.set()
    assert answers == ["$event1"] * 5
    assert sender.sent == 1


async def test_a_failed_send_records_nothing(txns: ClientTransactions) -> None:
    sender = Sender()
    sender.fail = True
    with pytest.raises(RuntimeError):
        await txns.run(DEV, "/send/t", ROOM, sender.send)
    sender.fail = False
    assert await txns.run(DEV, "/send/t", ROOM, sender.send) == "$event1"


async def test_a_retry_after_a_restart_is_recognised(tmp_path: Path) -> None:
    sender = Sender()
    answers = []
    for _ in range(2):
        storage = Storage(tmp_path / "txns.db", synchronous="NORMAL")
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.run)
            txns = ClientTransactions(storage.client_transactions)
            answers.append(await txns.run(DEV, "/send/t", ROOM, sender.send))
            nursery.cancel_scope.cancel()
    assert answers == ["$event1", "$event1"]
    assert sender.sent == 1


async def test_transactions_are_forgotten_after_a_day(storage: Storage) -> None:
    now = [0]
    minute = 60 * 1000
    hour = 60 * minute
    txns = ClientTransactions(storage.client_transactions, clock=lambda: now[0])
    stored = storage.client_transactions
    sender = Sender()

    async def send(scope: str, at: int) -> str:
        now[0] = at
        return await txns.run(DEV, scope, ROOM, sender.send)

    assert await send("/send/old", 0) == "$event1"
    assert await send("/send/early", hour + 15 * minute) == "$event2"
    assert await send("/send/new", 23 * hour) == "$event3"
    # A day after the first: its retry is still recognised until the next prune.
    assert await send("/send/old", 25 * hour) == "$event1"
    assert await send("/send/third", 25 * hour) == "$event4"
    assert await stored.get_client_transaction(ALICE, "DEV", b"", "/send/old") is None
    assert await stored.get_client_transaction(ALICE, "DEV", b"", "/send/early") == "$event2"
    # Within the hour no prune runs again, though "early" is a day old now.
    await send("/send/fourth", 25 * hour + 30 * minute)
    assert await stored.get_client_transaction(ALICE, "DEV", b"", "/send/early") == "$event2"
    await send("/send/fifth", 26 * hour + 30 * minute)
    assert await stored.get_client_transaction(ALICE, "DEV", b"", "/send/early") is None
    assert await stored.get_client_transaction(ALICE, "DEV", b"", "/send/new") == "$event3"


def _creator(storage: Storage, *, recording: bool) -> EventCreator:
    clock = itertools.count(1_700_000_000_000)
    return EventCreator(
        server_name="example.org",
        signing_key=generate_signing_key("1"),
        store=storage,
        persister=storage,
        clock=lambda: next(clock),
        transaction_recorder=storage if recording else None,
    )


@pytest.mark.parametrize("recording", [True, False])
async def test_a_message_and_its_transaction_share_a_commit_when_they_can(
    storage: Storage, txns: ClientTransactions, recording: bool
) -> None:
    creator = _creator(storage, recording=recording)
    room_id = await creator.create_room(ALICE)

    async def send() -> str:
        return await creator.send_event(ALICE, room_id, "m.room.message", {"body": "hi"})

    # The first recording also drops old transactions, in a write of its own.
    await txns.run(DEV, "/send/t0", room_id, send)
    requests = storage.actor.stats.requests
    event_id = await txns.run(DEV, "/send/t1", room_id, send)
    assert storage.actor.stats.requests == requests + (1 if recording else 2)
    assert await storage.client_transactions.get_client_transaction(
        ALICE, "DEV", b"", "/send/t1"
    ) == (event_id)
    assert await txns.run(DEV, "/send/t1", room_id, send) == event_id
    assert await storage.get_forward_extremities(room_id) == {event_id}


async def test_a_refused_message_records_nothing(
    storage: Storage, txns: ClientTransactions
) -> None:
    creator = _creator(storage, recording=True)
    room_id = await creator.create_room(ALICE)

    async def send() -> str:
        return await creator.send_event(
            "@mallory:example.org", room_id, "m.room.message", {"body": "let me in"}
        )

    with pytest.raises(AuthError):
        await txns.run(DEV, "/send/t1", room_id, send)
    assert (
        await storage.client_transactions.get_client_transaction(ALICE, "DEV", b"", "/send/t1")
        is None
    )


async def test_a_transaction_is_claimed_once_and_only_for_its_room(
    storage: Storage, txns: ClientTransactions
) -> None:
    claims: list[PendingTransaction | None] = []

    async def send() -> str:
        claims.append(claim_client_transaction("!elsewhere:example.org"))
        claims.append(claim_client_transaction(ROOM))
        claims.append(claim_client_transaction(ROOM))
        return "$sent"

    assert await txns.run(DEV, "t", ROOM, send) == "$sent"
    first = claims[1]
    assert claims[0] is None
    assert claims[2] is None
    assert first is not None
    assert (first.owner, first.txn_id, first.room_id) == (DEV, "t", ROOM)
    # Claimed and never marked recorded: recorded after the send as before.
    assert (
        await storage.client_transactions.get_client_transaction(ALICE, "DEV", b"", "t") == "$sent"
    )
    assert claim_client_transaction(ROOM) is None


class CountingLookups:
    """The storage of transactions, counting its lookups; the first may fail."""

    def __init__(self, storage: Storage, *, fail_first: bool = False) -> None:
        self.storage = storage.client_transactions
        self.lookups: list[int] = []
        self.fail_first = fail_first

    async def get_client_transaction(
        self, user_id: str, device_id: str, token_hash: bytes, txn_id: str
    ) -> str | None:
        raise AssertionError("transactions are looked up together")

    async def get_client_transactions(self, keys: Collection[TxnKey]) -> Mapping[TxnKey, str]:
        self.lookups.append(len(keys))
        if self.fail_first and len(self.lookups) == 1:
            raise RuntimeError("the database is busy")
        return await self.storage.get_client_transactions(keys)

    async def add_client_transaction(
        self,
        user_id: str,
        device_id: str,
        token_hash: bytes,
        txn_id: str,
        *,
        room_id: str,
        event_id: str,
        created_ts: int,
    ) -> str:
        return await self.storage.add_client_transaction(
            user_id,
            device_id,
            token_hash,
            txn_id,
            room_id=room_id,
            event_id=event_id,
            created_ts=created_ts,
        )

    async def delete_client_transactions_before(self, created_ts: int) -> int:
        return await self.storage.delete_client_transactions_before(created_ts)


async def _run_at_once(txns: ClientTransactions, count: int) -> dict[str, str | Exception]:
    answers: dict[str, str | Exception] = {}

    async def run(n: int) -> None:
        async def send() -> str:
            return f"$sent{n}"

        try:
            answers[f"t{n}"] = await txns.run(DEV, f"t{n}", ROOM, send)
        except RuntimeError as error:
            answers[f"t{n}"] = error

    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(run, n)
    return answers


async def test_transactions_asked_at_once_are_looked_up_together(storage: Storage) -> None:
    store = CountingLookups(storage)
    txns = ClientTransactions(store)
    answers = await _run_at_once(txns, 10)
    assert answers == {f"t{n}": f"$sent{n}" for n in range(10)}
    assert store.lookups == [10]
    # Asked again, each finds its event, again in one read.
    assert await _run_at_once(txns, 10) == answers
    assert store.lookups == [10, 10]


async def test_lookups_that_joined_a_failed_read_ask_again(storage: Storage) -> None:
    store = CountingLookups(storage, fail_first=True)
    answers = await _run_at_once(ClientTransactions(store), 5)
    failed = [key for key, answer in answers.items() if isinstance(answer, Exception)]
    # The lookup that read failed; the others asked again, together.
    assert len(failed) == 1
    assert store.lookups == [5, 4]
    assert {key: answer for key, answer in answers.items() if key not in failed} == {
        f"t{n}": f"$sent{n}" for n in range(5) if f"t{n}" not in failed
    }
