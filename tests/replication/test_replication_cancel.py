"""Cancellation across the boundary: a worker that stops waiting does not
stop a write the main process has started, nor the recording of its answer
for the worker's retry."""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import MutableMapping
from typing import Any

import trio
from _replication import SECRET, Main, Worker

from ranvier.replication import operations
from ranvier.replication.client import new_txn_id
from ranvier.replication.server import ReplicationApp
from ranvier.storage.write_backend import registered_write

_STARTED = threading.Event()
_GO_ON = threading.Event()
# Real seconds any wait below may take: they cross a real socket and the
# writer thread, so only a failure, never a loaded machine, reaches them.
_LIMIT = 30


@registered_write
def _waits_to_be_let_on(conn: sqlite3.Connection, *, room_id: str) -> str:
    # Holds the writer thread until the test lets it on: a slow write.
    _STARTED.set()
    assert _GO_ON.wait(_LIMIT)
    conn.execute("INSERT INTO rooms (room_id, room_version) VALUES (?, '10')", (room_id,))
    return room_id


async def test_a_cancelled_worker_leaves_the_write_to_finish_and_be_remembered(
    main: Main, worker: Worker
) -> None:
    _STARTED.clear()
    _GO_ON.clear()
    name, body = operations.encode_operation(
        functools.partial(_waits_to_be_let_on, room_id="!slow:x")
    )
    path = f"/_ranvier/replication/write/{name}/{new_txn_id()}"
    with trio.move_on_after(_LIMIT) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.client.post, path, body)
            assert await trio.to_thread.run_sync(_STARTED.wait, _LIMIT)
            # The worker gives up on the answer and hangs up.
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    _GO_ON.set()
    # Its retry under the same transaction gets the first write's answer.
    with trio.fail_after(_LIMIT):
        answer = await worker.client.post(path, body)
    assert operations.decode_result(name, answer) == "!slow:x"
    assert main.app.writes_run["write"] == 1
    assert await main.storage.get_room_version("!slow:x") == "10"


async def _call_app(app: ReplicationApp, path: str, body: bytes) -> tuple[int, bytes]:
    """One request straight into the ASGI app, as a server would make it."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {SECRET}".encode())],
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"]
    answer = sent[1]["body"]
    assert isinstance(status, int)
    assert isinstance(answer, bytes)
    return status, answer


async def test_a_request_cancelled_in_the_app_still_finishes_its_write(main: Main) -> None:
    _STARTED.clear()
    _GO_ON.clear()
    name, body = operations.encode_operation(
        functools.partial(_waits_to_be_let_on, room_id="!cut:x")
    )
    path = f"/_ranvier/replication/write/{name}/{new_txn_id()}"
    with trio.move_on_after(_LIMIT) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_call_app, main.app, path, body)
            assert await trio.to_thread.run_sync(_STARTED.wait, _LIMIT)
            nursery.cancel_scope.cancel()  # the server cancels the request
            _GO_ON.set()
    assert not scope.cancelled_caught
    with trio.fail_after(_LIMIT):
        status, answer = await _call_app(main.app, path, body)
    assert status == 200
    assert operations.decode_result(name, answer) == "!cut:x"
    assert main.app.writes_run["write"] == 1
