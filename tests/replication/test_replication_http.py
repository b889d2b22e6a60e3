"""A worker's writes over real HTTP on loopback to the main process's actor."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
from _replication import ALICE, BOB, SECRET, Main, Worker, shared_room, worker_client

from ranvier.core import compute_event_context, event_to_persist
from ranvier.errors import (
    MatrixError,
    PartialStateConflictError,
    PartialStateEventsRemainError,
    StaleRunError,
    StorageUnavailableError,
)
from ranvier.federation.transport.listener import HttpListener
from ranvier.replication import operations
from ranvier.replication.client import RemoteWriter, new_txn_id
from ranvier.replication.server import ReplicationApp
from ranvier.storage import Storage, writes
from ranvier.storage.accounts import NewAccount, NewDevice, UserInUseError
from ranvier.storage.sync_reads import store_filter
from ranvier.storage.write_backend import registered_write
from ranvier.testing import RoomBuilder, ingest_all
from ranvier.testing.network import free_port


def _count(db_path: Path, sql: str, *args: object) -> int:
    conn = sqlite3.connect(db_path)
    try:
        (count,) = conn.execute(sql, args).fetchone()
    finally:
        conn.close()
    return int(count)


async def test_storage_of_a_worker_writes_through_the_main_process(
    main: Main, worker: Worker
) -> None:
    before = main.storage.actor.stats.requests
    await worker.storage.store_room("!r:ours.test", "10")
    assert await worker.storage.aliases.create_alias("#a:ours.test", "!r:ours.test", ALICE, 5)
    assert not await worker.storage.aliases.create_alias("#a:ours.test", "!x:ours.test", ALICE, 6)
    device = NewDevice(
        user_id=ALICE, device_id="D", display_name=None, token_hash=b"\x01" * 32, created_ts=5
    )
    await worker.storage.accounts.create_account(
        NewAccount(user_id=ALICE, password_hash=None, admin=False, created_ts=5), device
    )
    assert await worker.storage.sync.store_filter(ALICE, b"{}") == 0
    assert await worker.storage.sync.store_filter(ALICE, b"{}") == 1
    # Every write ran on the main process's actor, and both sides read it.
    assert main.storage.actor.stats.requests - before == 6
    assert main.app.writes_run["write"] == 6
    assert await worker.storage.get_room_version("!r:ours.test") == "10"
    assert await main.storage.aliases.get_alias("#a:ours.test") == ("!r:ours.test", ALICE)
    owner = await worker.storage.accounts.get_token_owner(b"\x01" * 32)
    assert owner is not None
    assert owner.device_id == "D"


async def test_events_go_through_their_endpoints_and_are_read_back(
    main: Main, worker: Worker
) -> None:
    room = shared_room()
    events = list(room.events.values())
    await ingest_all(worker.storage, events)
    assert main.app.writes_run["fed_send_events"] == len(events)
    message = room.message(BOB, "through send_event")
    persister = worker.persister("client")
    context = await compute_event_context(message, worker.storage, persister)
    orderings = await persister.persist_events([event_to_persist(message, context)])
    assert main.app.writes_run["send_event"] == 1
    stored = await main.storage.get_event(message.event_id)
    assert stored is not None
    assert stored.stream_ordering == orderings[message.event_id]
    assert stored.json == message.raw
    assert await worker.storage.get_forward_extremities(room.room_id) == {message.event_id}


async def test_the_stream_listener_of_the_worker_hears_of_its_own_events(
    main: Main, worker: Worker
) -> None:
    heard: list[tuple[int | None, frozenset[str]]] = []

    def listener(
        events: int | None, un_partial: int | None, *, rooms: object, users: object
    ) -> None:
        assert isinstance(rooms, set | frozenset)
        heard.append((events, frozenset(rooms)))

    worker.storage.on_stream_advance = listener
    room = shared_room()
    await ingest_all(worker.storage, list(room.events.values()))
    message = room.message(BOB)
    persister = worker.persister("federation")
    context = await compute_event_context(message, worker.storage, persister)
    orderings = await persister.persist_events([event_to_persist(message, context)])
    assert heard[-1] == (orderings[message.event_id], frozenset({room.room_id}))


async def test_a_repeated_transaction_is_answered_once_and_written_once(
    main: Main, worker: Worker, db_path: Path
) -> None:
    room = shared_room()
    events = list(room.events.values())
    await ingest_all(worker.storage, events[:-1])
    last = events[-1]
    context = await compute_event_context(last, worker.storage, worker.storage)
    operation = writes.PersistEvents((event_to_persist(last, context),))
    _, body = operations.encode_operation(operation)
    path = f"/_ranvier/replication/fed_send_events/{new_txn_id()}"
    first = await worker.client.post(path, body)
    second = await worker.client.post(path, body)
    assert first == second
    assert main.app.writes_run["fed_send_events"] == len(events)  # the repeat ran nothing
    assert _count(db_path, "SELECT COUNT(*) FROM events WHERE event_id = ?", last.event_id) == 1

    # A write that would not be the same twice (a new filter ID each time),
    # sent twice at once and once more after.
    filter_op = functools.partial(store_filter, user_id=ALICE, filter_json=b"{}")
    name, filter_body = operations.encode_operation(filter_op)
    filter_path = f"/_ranvier/replication/write/{name}/{new_txn_id()}"
    writes_before = main.app.writes_run["write"]
    answers: list[bytes] = []

    async def send() -> None:
        answers.append(await worker.client.post(filter_path, filter_body))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(send)
    answers.append(await worker.client.post(filter_path, filter_body))
    assert {operations.decode_result(name, answer) for answer in answers} == {0}
    assert _count(db_path, "SELECT COUNT(*) FROM user_filters WHERE user_id = ?", ALICE) == 1
    assert main.app.writes_run["write"] == writes_before + 1


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong"}, {"authorization": SECRET}, {"authorization": ""}],
)
async def test_no_secret_or_a_wrong_one_is_401_and_writes_nothing(
    main: Main, headers: dict[str, str]
) -> None:
    _, body = operations.encode_operation(
        functools.partial(writes.store_room, room_id="!r:x", room_version="10")
    )
    async with httpx.AsyncClient(base_url=main.url) as http:
        response = await http.post(
            f"/_ranvier/replication/write/writes.store_room/{new_txn_id()}",
            content=body,
            headers=headers,
        )
    assert response.status_code == 401
    assert response.json()["errcode"] == "M_UNAUTHORIZED"
    assert await main.storage.get_room_version("!r:x") is None
    assert sum(main.app.writes_run.values()) == 0


async def test_a_worker_with_the_wrong_secret_is_told_storage_is_unavailable(
    main: Main, db_path: Path, nursery: trio.Nursery
) -> None:
    client = worker_client(main.url)
    client._headers["authorization"] = "Bearer not it"  # the worker's configuration is wrong
    storage = Storage(db_path, writer=RemoteWriter(client))
    await nursery.start(storage.run)
    with pytest.raises(StorageUnavailableError, match="secret"):
        await storage.store_room("!r:x", "10")
    assert client.attempts == 1  # not retried


async def test_an_unregistered_operation_is_refused(main: Main, worker: Worker) -> None:
    body = msgspec.msgpack.encode({"sql": "DELETE FROM events"})
    with pytest.raises(MatrixError) as raised:
        await worker.client.post(f"/_ranvier/replication/write/builtins.exec/{new_txn_id()}", body)
    assert (raised.value.http_status, raised.value.errcode) == (400, "M_UNRECOGNIZED")
    # Events only through their own endpoints.
    _, events = operations.encode_operation(writes.PersistEvents(()))
    with pytest.raises(MatrixError) as raised:
        await worker.client.post(
            f"/_ranvier/replication/write/{operations.PERSIST_EVENTS}/{new_txn_id()}", events
        )
    assert raised.value.http_status == 400
    with pytest.raises(MatrixError) as raised:
        await worker.client.post(f"/_ranvier/replication/elsewhere/{new_txn_id()}", b"")
    assert raised.value.http_status == 404
    assert sum(main.app.writes_run.values()) == 0


async def test_send_event_names_one_of_the_events_sent(main: Main, worker: Worker) -> None:
    room = shared_room()
    create = next(iter(room.events.values()))
    context = await compute_event_context(create, worker.storage, worker.storage)
    _, body = operations.encode_operation(
        writes.PersistEvents((event_to_persist(create, context),))
    )
    with pytest.raises(MatrixError, match="not among the events sent"):
        await worker.client.post(f"/_ranvier/replication/send_event/$other/{new_txn_id()}", body)
    assert await main.storage.get_event(create.event_id) is None


async def test_errors_of_writes_keep_their_class_code_and_status(worker: Worker) -> None:
    account = NewAccount(user_id=ALICE, password_hash=None, admin=False, created_ts=1)
    await worker.storage.accounts.create_account(account)
    with pytest.raises(UserInUseError) as in_use:
        await worker.storage.accounts.create_account(account)
    assert in_use.value.user_id == ALICE
    with pytest.raises(MatrixError) as not_found:
        await worker.storage.store_destination_rooms("a.test", {"!nowhere:x": 1})
    assert (not_found.value.http_status, not_found.value.errcode) == (404, "M_NOT_FOUND")
    assert "!nowhere:x" in not_found.value.message


async def _partial_room(worker: Worker) -> tuple[RoomBuilder, str]:
    """A room joined with partial state, with one event written with partial state."""
    room = shared_room()
    await ingest_all(worker.storage, list(room.events.values()))
    await worker.storage.store_partial_join(
        room.room_id, room.version, room.last, joined_via="remote.test", servers_in_room=[]
    )
    message = room.message(BOB, "with partial state")
    persister = worker.persister("federation")
    await persister.persist_events([await worker.with_partial_state(room, message)])
    return room, message.event_id


async def test_a_partial_state_conflict_crosses_the_boundary_as_itself(
    main: Main, worker: Worker
) -> None:
    room, partial_event = await _partial_room(worker)
    # The main process finishes the room's state.
    groups = await main.storage.get_event_state_groups(partial_event)
    assert groups is not None
    await main.storage.update_state_for_partial_event(partial_event, groups.before, None)
    assert await main.storage.clear_partial_state(room.room_id)
    late = room.message(BOB, "computed while the room was partial")
    persister = worker.persister("federation")
    to_persist = await worker.with_partial_state(room, late)
    attempts = worker.client.attempts
    with pytest.raises(PartialStateConflictError, match=room.room_id):
        await persister.persist_events([to_persist])
    assert worker.client.attempts == attempts + 1  # a 409 is not retried
    assert await worker.storage.get_event(late.event_id) is None


async def test_a_stale_run_crosses_the_boundary_as_itself(main: Main, worker: Worker) -> None:
    room = shared_room()
    await ingest_all(worker.storage, list(room.events.values()))
    # The worker cannot see the main process's marks: its runs always read.
    assert worker.storage.room_mark(room.room_id) is None
    first = room.message(BOB, "written by a run")
    context = await compute_event_context(first, worker.storage, worker.storage)
    written = await worker.storage.persist_run(room.room_id, [event_to_persist(first, context)])
    assert written.mark == main.storage.room_mark(room.room_id)
    # Anything written since makes a run judged against that mark stale.
    await worker.storage.store_room("!elsewhere:ours.test", "10")
    late = room.message(BOB, "judged against the first run's write")
    context = await compute_event_context(late, worker.storage, worker.storage)
    attempts = worker.client.attempts
    with pytest.raises(StaleRunError, match="may touch any room"):
        await worker.storage.persist_run(
            room.room_id, [event_to_persist(late, context)], since=written.mark
        )
    assert worker.client.attempts == attempts + 1  # a 409 is not retried
    assert await worker.storage.get_event(late.event_id) is None


async def test_events_remaining_partial_cross_the_boundary_as_themselves(
    worker: Worker,
) -> None:
    room, _ = await _partial_room(worker)
    with pytest.raises(PartialStateEventsRemainError) as raised:
        await worker.storage.clear_partial_state(room.room_id)
    assert raised.value.room_id == room.room_id
    assert await worker.storage.is_partial_state_room(room.room_id)


async def test_a_write_waits_for_a_main_process_that_is_not_up_yet(
    db_path: Path, nursery: trio.Nursery
) -> None:
    # The database exists; the main process's listener does not yet.
    main_storage = Storage(db_path, synchronous="NORMAL")
    await nursery.start(main_storage.run)
    port = free_port()
    client = worker_client(f"http://127.0.0.1:{port}")
    storage = Storage(db_path, writer=RemoteWriter(client))
    await nursery.start(storage.run)
    done = trio.Event()

    async def write() -> None:
        await storage.store_room("!late:x", "10")
        done.set()

    nursery.start_soon(write)
    # Real time: the connections are refused for real, each as it comes.
    with trio.fail_after(30):
        while client.attempts < 3:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert not done.is_set()
    app = ReplicationApp(main_storage, shared_secret=SECRET)
    await nursery.start(HttpListener(app, host="127.0.0.1", port=port, ssl_context=None).run)
    with trio.fail_after(30):
        await done.wait()
    assert await main_storage.get_room_version("!late:x") == "10"
    assert app.writes_run["write"] == 1


async def test_a_write_fails_once_the_main_process_stays_away_too_long(
    db_path: Path, main: Main, nursery: trio.Nursery
) -> None:
    # A second: room for a few refused attempts however slow each is on a
    # loaded machine, and far short of the 10 s the client would take.
    client = worker_client(f"http://127.0.0.1:{free_port()}", retry_for_seconds=1.0)
    storage = Storage(db_path, writer=RemoteWriter(client))
    await nursery.start(storage.run)
    start = trio.current_time()
    with pytest.raises(StorageUnavailableError, match=r"did not take a write for 1s"):
        await storage.store_room("!r:x", "10")
    assert 0.5 <= trio.current_time() - start <= 8.0
    assert client.attempts >= 3


_FAILURES = {"left": 0}


@registered_write
def _fails_at_first(conn: sqlite3.Connection, *, room_id: str) -> str:
    # Not pure, on purpose: it fails the first times it is run, the way a
    # main process in trouble answers 500.
    if _FAILURES["left"] > 0:
        _FAILURES["left"] -= 1
        raise RuntimeError("not yet")
    conn.execute(
        "INSERT INTO rooms (room_id, room_version) VALUES (?, '10')",
        (room_id,),
    )
    return room_id


async def test_a_500_is_retried_under_the_same_transaction(main: Main, worker: Worker) -> None:
    _FAILURES["left"] = 2
    attempts = worker.client.attempts
    operation = functools.partial(_fails_at_first, room_id="!retried:x")
    assert await worker.storage.writer.submit(operation) == "!retried:x"
    assert worker.client.attempts - attempts == 3
    assert main.app.writes_run["write"] == 3
    assert await main.storage.get_room_version("!retried:x") == "10"


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    client = worker_client("http://127.0.0.1:1")
    for attempt, ceiling in [(0, 0.01), (1, 0.02), (2, 0.04), (4, 0.16), (5, 0.2), (30, 0.2)]:
        waits = [client.backoff(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in waits)
        assert len(set(waits)) > 100  # jittered, not fixed
