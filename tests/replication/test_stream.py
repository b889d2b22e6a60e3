"""The replication stream's endpoints on a main process's replication
listener, over real HTTP on loopback: the long-poll of positions and the
resync requests."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from _replication import SECRET

from ranvier.core.notifier import StreamNotifier
from ranvier.federation.transport.listener import HttpListener
from ranvier.replication.client import RemoteWriter, ReplicationClient
from ranvier.replication.server import ReplicationApp
from ranvier.replication.stream import MainControl, StreamSource
from ranvier.storage import Storage

STREAM = "/_ranvier/replication/control/stream"


@pytest.fixture
async def served(tmp_path: Path, nursery: trio.Nursery) -> tuple[str, Storage, list[str]]:
    storage = Storage(tmp_path / "ranvier.db", synchronous="NORMAL")
    await nursery.start(storage.run)
    notifier = StreamNotifier()
    storage.on_stream_advance = notifier.advance
    source = StreamSource(storage, notifier)
    resyncs: list[str] = []
    app = ReplicationApp(
        storage,
        shared_secret=SECRET,
        control=MainControl(storage, source, resync=resyncs.append),
        on_write=source.note_write,
    )
    listener = HttpListener(app, host="127.0.0.1", port=0, ssl_context=None)
    port = await nursery.start(listener.run)
    return f"http://127.0.0.1:{port}", storage, resyncs


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {SECRET}"}, timeout=30
    )


async def test_the_stream_answers_at_once_when_the_worker_is_behind_and_waits_otherwise(
    served: tuple[str, Storage, list[str]],
) -> None:
    url, storage, _ = served
    await storage.store_room("!r:x", "10")
    async with _client(url) as http:
        first = (await http.get(STREAM, params={"timeout_ms": "0"})).json()
        assert first["positions"] == {
            "events": 0,
            "un_partial": 0,
            "account_data": 0,
            "receipts": 0,
            "to_device": 0,
            "device_lists": 0,
        }
        known = {key: str(value) for key, value in first["positions"].items()}
        params = {**known, "tokens": first["tokens"], "queued": first["queued"]}
        started = trio.current_time()
        same = (await http.get(STREAM, params={**params, "timeout_ms": "300"})).json()
        assert trio.current_time() - started >= 0.3
        assert same == first
        # A write that invalidates tokens answers a waiting poll at once.
        answers: list[dict[str, object]] = []

        async def poll() -> None:
            answer = await http.get(STREAM, params={**params, "timeout_ms": "20000"})
            answers.append(answer.json())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.1)
            assert answers == []
            # A worker logging out every device of a user, through the main process.
            worker = Storage(
                storage.path, writer=RemoteWriter(ReplicationClient(url, shared_secret=SECRET))
            )
            async with trio.open_nursery() as inner:
                await inner.start(worker.run)
                await worker.accounts.delete_devices("@nobody:x")
                inner.cancel_scope.cancel()
        (answer,) = answers
        assert answer["tokens"] != first["tokens"]
        assert answer["positions"] == first["positions"]


async def test_bad_stream_positions_are_refused(served: tuple[str, Storage, list[str]]) -> None:
    url, _, _ = served
    async with _client(url) as http:
        answer = await http.get(STREAM, params={"events": "a lot"})
    assert answer.status_code == 400
    assert answer.json()["errcode"] == "M_INVALID_PARAM"


async def test_a_resync_is_started_only_for_a_partial_room(
    served: tuple[str, Storage, list[str]],
) -> None:
    url, storage, resyncs = served
    await storage.store_partial_join("!p:x", "10", "$join", "x", ["x"])
    await storage.store_room("!f:x", "10")
    async with _client(url) as http:
        full = await http.post("/_ranvier/replication/control/resync/%21f%3Ax")
        partial = await http.post("/_ranvier/replication/control/resync/%21p%3Ax")
    async with httpx.AsyncClient(base_url=url) as without_secret:
        bare = await without_secret.post("/_ranvier/replication/control/resync/%21p%3Ax")
    assert full.json() == {"resyncing": False}
    assert partial.json() == {"resyncing": True}
    assert bare.status_code == 401
    assert resyncs == ["!p:x"]
