"""A main process that dies after committing a worker's write and before
answering it, and comes back on the same database while the worker retries:
the write lands once, and the worker gets the first write's answer."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from _replication import SECRET, worker_client

from ranvier.core import compute_event_context, event_to_persist
from ranvier.protocol.signing import generate_signing_key
from ranvier.replication.client import RemoteWriter, ReplicationEventPersister
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest_all
from ranvier.testing.network import free_port

_SCRIPT = Path(__file__).parent / "_main_process.py"
ALICE = "@alice:ours.test"
BOB = "@bob:remote.test"


@asynccontextmanager
async def _main_process(
    db: Path, port: int, *, crash_after: str | None = None
) -> AsyncIterator[trio.Process]:
    command = [sys.executable, str(_SCRIPT), str(db), str(port), SECRET]
    if crash_after is not None:
        command.append(crash_after)
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        seen = b""
        with trio.fail_after(30):
            while b"ready\n" not in seen:
                chunk = await process.stdout.receive_some()
                assert chunk, f"the main process ended before it was ready: {seen!r}"
                seen += chunk
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


def _rows(db: Path, event_id: str) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT stream_ordering FROM events WHERE event_id = ?", (event_id,)
        ).fetchall()
    finally:
        conn.close()
    return [int(ordering) for (ordering,) in rows]


async def test_a_write_committed_before_the_main_process_died_lands_once(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    db, port = tmp_path / "ranvier.db", free_port()
    keys = {server: generate_signing_key("k1") for server in ("ours.test", "remote.test")}
    room = RoomBuilder(creator=ALICE, keys=keys)
    room.public_room(BOB)
    history = list(room.events.values())
    message = room.message(BOB, "the write the main process died answering")

    async with _main_process(db, port, crash_after=message.event_id) as first:
        client = worker_client(f"http://127.0.0.1:{port}", retry_for_seconds=60)
        storage = Storage(db, writer=RemoteWriter(client))
        await nursery.start(storage.run)
        await ingest_all(storage, history)
        persister = ReplicationEventPersister(client, storage, kind="federation")
        context = await compute_event_context(message, storage, persister)
        answers: list[dict[str, int]] = []
        answered = trio.Event()

        async def persist() -> None:
            answers.append(await persister.persist_events([event_to_persist(message, context)]))
            answered.set()

        nursery.start_soon(persist)
        with trio.fail_after(30):
            assert await first.wait() == 3  # died as planned
    # Committed before it died, and not yet heard of by the worker, which
    # goes on retrying the same transaction against nobody.
    (ordering,) = _rows(db, message.event_id)
    assert answers == []
    attempts = client.attempts
    with trio.fail_after(30):
        while client.attempts == attempts:  # noqa: ASYNC110
            await trio.sleep(0.01)

    async with _main_process(db, port):
        with trio.fail_after(30):
            await answered.wait()
        # The same event, once, with the ordering the first write gave it.
        assert answers == [{message.event_id: ordering}]
        assert _rows(db, message.event_id) == [ordering]
        assert await storage.get_forward_extremities(room.room_id) == {message.event_id}
        # And the worker goes on writing through the new main process.
        after = room.message(BOB, "after the restart")
        context = await compute_event_context(after, storage, persister)
        orderings = await persister.persist_events([event_to_persist(after, context)])
        assert orderings[after.event_id] > ordering
        assert _rows(db, after.event_id) == [orderings[after.event_id]]
