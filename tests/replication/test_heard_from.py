"""Servers heard from, passed on: the relay keeps only those backing off
and takes them in rounds; the main process's control endpoint takes a
worker's, and its stream hands them to the worker that asks, each once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
from _replication import SECRET

from ranvier.core.notifier import StreamNotifier
from ranvier.federation.transport.listener import HttpListener
from ranvier.replication.heard_from import HeardFromRelay
from ranvier.replication.server import ReplicationApp
from ranvier.replication.stream import HEARD_NOTHING, MainControl, StreamSource
from ranvier.storage import Storage
from ranvier.storage.records import DestinationRetry

STREAM = "/_ranvier/replication/control/stream"
HEARD_FROM = "/_ranvier/replication/control/heard_from"
NOW_MS = 1_700_000_000_000


@pytest.fixture
async def storage(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    storage = Storage(tmp_path / "ranvier.db", synchronous="NORMAL")
    await nursery.start(storage.run)
    return storage


async def _backing_off(storage: Storage, destination: str, *, last_ms: int, wait_ms: int) -> None:
    await storage.store_destination_retry(
        destination,
        DestinationRetry(
            destination=destination,
            failure_ts=last_ms,
            retry_last_ts=last_ms,
            retry_interval_ms=wait_ms,
        ),
    )


async def test_the_relay_passes_on_only_servers_backing_off_a_round_at_a_time(
    storage: Storage, nursery: trio.Nursery
) -> None:
    await _backing_off(storage, "down.test", last_ms=NOW_MS - 1_000, wait_ms=3_600_000)
    # Its interval has run out: its sender tries it anyway.
    await _backing_off(storage, "over.test", last_ms=NOW_MS - 10_000, wait_ms=5_000)
    told: list[tuple[float, list[str]]] = []
    each_told = [trio.Event(), trio.Event()]

    async def tell(destinations: Sequence[str]) -> None:
        await trio.lowlevel.checkpoint()
        told.append((trio.current_time(), list(destinations)))
        each_told[len(told) - 1].set()

    relay = HeardFromRelay(storage, tell, interval_seconds=0.5, clock_ms=lambda: NOW_MS)
    for _ in range(1_000):
        for origin in ("down.test", "over.test", "up.test"):
            relay.heard_from(origin)
    await nursery.start(relay.run)
    await each_told[0].wait()
    assert told == [(told[0][0], ["down.test"])]
    assert relay.rounds == 1

    # Heard again at once: the next round waits for the interval.
    relay.heard_from("down.test")
    relay.heard_from("up.test")
    await each_told[1].wait()
    (first, _), (second, destinations) = told
    assert destinations == ["down.test"]
    assert second - first >= 0.5
    assert relay.rounds == 2
    assert relay.passed_on == 2
    assert relay.dropped == 0


@pytest.fixture
async def served(
    storage: Storage, nursery: trio.Nursery
) -> tuple[str, StreamSource, list[list[str]]]:
    notifier = StreamNotifier()
    storage.on_stream_advance = notifier.advance
    source = StreamSource(storage, notifier)
    taken: list[list[str]] = []

    def heard_from(destinations: Sequence[str]) -> None:
        taken.append(list(destinations))
        source.note_heard_from(destinations)

    app = ReplicationApp(
        storage,
        shared_secret=SECRET,
        control=MainControl(storage, source, resync=lambda room_id: None, heard_from=heard_from),
        on_write=source.note_write,
    )
    listener = HttpListener(app, host="127.0.0.1", port=0, ssl_context=None)
    port = await nursery.start(listener.run)
    return f"http://127.0.0.1:{port}", source, taken


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {SECRET}"}, timeout=30
    )


async def test_the_stream_carries_servers_heard_from_to_a_worker_that_asks(
    served: tuple[str, StreamSource, list[list[str]]],
) -> None:
    url, source, taken = served
    async with _client(url) as http:
        first = (await http.get(STREAM, params={"heard": HEARD_NOTHING})).json()
        assert first["heard"] == source.heard
        assert first["heard_from"] == []
        known = {key: str(value) for key, value in first["positions"].items()}
        params = {**known, "tokens": first["tokens"], "queued": first["queued"]}
        answers: dict[str, dict[str, object]] = {}

        async def poll(name: str, extra: dict[str, str], timeout_ms: int) -> None:
            answer = await http.get(
                STREAM, params={**params, **extra, "timeout_ms": str(timeout_ms)}
            )
            answers[name] = answer.json()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll, "asks", {"heard": first["heard"]}, 20_000)
            # A worker that does not ask is not answered for them: its own
            # timeout ends it, long after the post and the poll below have
            # made their round trips, however loaded the machine.
            nursery.start_soon(poll, "does not ask", {}, 5_000)
            await trio.sleep(0.2)
            assert answers == {}
            told = await http.post(
                HEARD_FROM, content=msgspec.msgpack.encode(["c.test", "d.test", "c.test"])
            )
            assert told.status_code == 200, told.text
            # A worker with another life's count gets none of them.
            nursery.start_soon(poll, "another life", {"heard": "another:0"}, 20_000)
    assert taken == [["c.test", "d.test", "c.test"]]
    # The two that were woken (in either order: one post wakes both) came
    # back before the one that only its own timeout ended.
    assert set(list(answers)[:2]) == {"asks", "another life"}
    assert list(answers)[2] == "does not ask"
    assert answers["asks"]["heard_from"] == ["c.test", "d.test"]
    assert answers["asks"]["heard"] == source.heard != first["heard"]
    assert answers["another life"]["heard_from"] == []
    assert answers["another life"]["heard"] == source.heard
    assert answers["does not ask"]["heard_from"] == []
    assert answers["does not ask"]["positions"] == first["positions"]

    # Asked from where it left off: only what came since.
    source.note_heard_from(["e.test"])
    async with _client(url) as http:
        later = await http.get(STREAM, params={**params, "heard": str(answers["asks"]["heard"])})
    assert later.json()["heard_from"] == ["e.test"]


async def test_a_bad_list_of_servers_heard_from_is_refused(
    served: tuple[str, StreamSource, list[list[str]]],
) -> None:
    url, _, taken = served
    async with _client(url) as http:
        not_a_list = await http.post(HEARD_FROM, content=msgspec.msgpack.encode({"a": 1}))
        not_names = await http.post(HEARD_FROM, content=msgspec.msgpack.encode([1, 2]))
    async with httpx.AsyncClient(base_url=url) as without_secret:
        bare = await without_secret.post(HEARD_FROM, content=msgspec.msgpack.encode(["a.test"]))
    assert not_a_list.status_code == 400
    assert not_a_list.json()["errcode"] == "M_BAD_JSON"
    assert not_names.status_code == 400
    assert bare.status_code == 401
    assert taken == []
