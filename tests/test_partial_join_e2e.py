"""A partial-state join between two ranvier homeservers, end to end.

A holds a room of 2,000 members. B's user joins it through A with partial
state: the join returns once the room's state without its members is
checked and stored, and B's un-partial-state task fetches the members from
A in the background. Meanwhile both sides talk; B is stopped in the middle
of the resync and started again on the same data directory, at a moment
when A is down too, so the resumed resync has to wait for A to come back.
In the end both servers hold the same room: the same current state, the
same events with the same prev edges, the same forward extremities, and
nothing of the partial state is left on B.

Both servers run whole, as ``open_homeserver`` starts them, on loopback
over TLS with certificates from one test CA, which both trust through
``federation.ca_file``. Arrival on the other side is awaited by polling
storage in a bounded loop.

"The middle of the resync" is not left to timing: during A's first life
its router holds every answer to the reads B's resync makes (``/state_ids``,
``/state``, ``/event``) and never lets one go, so B is stopped while its
resync is provably fetching, however slow the machine. A's second life is
a fresh server on the same data directory and answers at once.

Finer cases of the resync are tested on the task itself in
tests/core/test_unpartial.py: a server answering garbage hands over to the
next (``test_a_server_answering_garbage_hands_over_to_the_next``), every
server down backs off until one comes back
(``test_every_server_down_backs_off_until_one_comes_back``), events
written with partial state just before the clear, and verdicts that change
with the full state.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from ranvier.config import Config
from ranvier.core.ingest_batch import RoomRun
from ranvier.metrics import sample_name
from ranvier.server import HomeServer
from ranvier.storage import Storage
from ranvier.testing import Pki, RoomBuilder, ingest_all
from ranvier.testing.held_routes import HeldRoutes
from ranvier.testing.homeserver import RestartableHomeserver, federating_config

MEMBERS = 2_000
#: Messages each side sends while B's resumed resync runs.
MESSAGES = 100
#: Joins of the big room judged together and written at once: a transaction's most PDUs.
_JOINS_PER_WRITE = 50


# --- Servers on loopback --------------------------------------------------------------


def _hold_resync_reads(hs: HomeServer) -> HeldRoutes:
    """Put a :class:`HeldRoutes` in front of ``hs``'s federation routes,
    never released: a peer resyncing from ``hs`` stays stuck fetching."""
    app = hs.federation_app
    holding = HeldRoutes(app.router)
    app.router = holding
    return holding


# --- Looking into storage -------------------------------------------------------------


# Real seconds a wait below may take: each crosses real sockets, threads and
# two servers' tasks, so only a failure, never a loaded machine, reaches it.
_GIVE_UP_SECONDS = 30


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check`` holds, looking every 10 ms."""
    with trio.move_on_after(_GIVE_UP_SECONDS):
        while not await check():  # noqa: ASYNC110
            await trio.sleep(0.01)
        return
    raise AssertionError(f"gave up waiting for {what}")


async def _in_dag(storage: Storage, event_ids: list[str]) -> bool:
    rows = await storage.get_events(event_ids)
    return all(event_id in rows and not rows[event_id].outlier for event_id in event_ids)


async def _graph_since(storage: Storage, room_id: str, stop: str) -> dict[str, list[str]]:
    """The room's events from its forward extremities back to ``stop``, each
    with its prev events; every one must be accepted and in the DAG.
    """
    graph: dict[str, list[str]] = {}
    level = set(await storage.get_forward_extremities(room_id))
    while level:
        rows = await storage.get_events(level)
        following: set[str] = set()
        for event_id in level:
            row = rows[event_id]
            assert not row.outlier, event_id
            assert row.rejected_reason is None, (event_id, row.rejected_reason)
            assert not row.soft_failed, event_id
            prev: list[str] = msgspec.json.decode(row.json)["prev_events"]
            graph[event_id] = prev
            if event_id != stop:
                following.update(p for p in prev if p not in graph)
        level = following
    return graph


def _partial_rows(database: Path) -> dict[str, int]:
    """How many rows each partial-state table holds, read from the file
    while no server has it open.
    """
    uri = database.absolute().as_uri() + "?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in (
                "partial_state_rooms",
                "partial_state_rooms_servers",
                "partial_state_events",
            )
        }


async def _ranvier_status(tmp_path: Path, config: Config) -> list[str]:
    """The lines ``ranvier status`` prints for the server's data directory."""
    toml = tmp_path / "status.toml"
    toml.write_text(
        f'server_name = "{config.server_name}"\ndata_dir = "{config.data_dir}"\n',
        encoding="utf-8",
    )
    done = await trio.run_process(
        [sys.executable, "-m", "ranvier.cli", "status", "--config", str(toml)],
        capture_stdout=True,
    )
    return done.stdout.decode().splitlines()


async def _content(storage: Storage, event_id: str) -> dict[str, Any]:
    row = await storage.get_event(event_id)
    assert row is not None, event_id
    content: dict[str, Any] = msgspec.json.decode(row.json)["content"]
    return content


# --- The room -------------------------------------------------------------------------


async def _big_room(a: HomeServer) -> str:
    """A public, named room on A with :data:`MEMBERS` of A's users joined.

    The members' joins are signed with A's key and written through core
    into A's storage, as A's own joins would be, but without a round of
    the event creator per member. They are judged and written
    :data:`_JOINS_PER_WRITE` at a time, as ingestion takes a transaction's
    run of events (:class:`~ranvier.core.ingest_batch.RoomRun`): one write
    per run instead of one per join builds the room two to three times
    quicker.
    """
    alice = f"@alice:{a.server_name}"
    room = RoomBuilder("12", alice, keys={a.server_name: a.signing_key})
    room.public_room()
    room.state_event(alice, "m.room.name", {"name": "a big room"})
    await ingest_all(a.storage, room.order)
    first_join = len(room.order)
    for n in range(MEMBERS):
        room.member(f"@member{n}:{a.server_name}", "join")
    joins = room.order[first_join:]
    for start in range(0, len(joins), _JOINS_PER_WRITE):
        some = joins[start : start + _JOINS_PER_WRITE]
        run = RoomRun(a.storage, a.storage, room.room_id, room.room_version)
        await run.load(some)
        await ingest_all(run, some)
        await run.write()
    return room.room_id


# --- The test -------------------------------------------------------------------------


async def test_a_partial_join_is_quick_and_ends_with_the_residents_room(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ranvier.core.unpartial")
    pki = Pki.create(tmp_path)
    server_a = RestartableHomeserver(nursery, federating_config(tmp_path, pki, "a"))
    server_b = RestartableHomeserver(nursery, federating_config(tmp_path, pki, "b"))
    a, b = await server_a.start(), await server_b.start()
    # A's first life answers none of B's resync reads; its second is a new server.
    held_on_a = _hold_resync_reads(a)
    alice, bob = f"@alice:{a.server_name}", f"@bob:{b.server_name}"
    room_id = await _big_room(a)

    # The join returns with the room partial on B, well before its members are in.
    join_id = await b.join_room(bob, room_id, [a.server_name])
    assert await b.storage.is_partial_state_room(room_id)
    members_on_b = [
        k for k in await b.storage.get_current_state_ids(room_id) if k[0] == "m.room.member"
    ]
    assert members_on_b == [("m.room.member", bob)]
    assert room_id in b.resync_status()

    # Both sides talk while B's resync runs: B's event is written on partial
    # state and reaches A; A's reaches B and is taken in on partial state.
    hello_b = await b.send_event(bob, room_id, "m.room.message", {"body": "hello from B"})
    assert await b.storage.get_partial_state_event_ids([hello_b])
    hello_a = await a.send_event(alice, room_id, "m.room.message", {"body": "hello from A"})
    await _eventually(lambda: _in_dag(b.storage, [hello_a]), "A's message on B")
    await _eventually(lambda: _in_dag(a.storage, [hello_b]), "B's message on A")
    assert await b.storage.get_partial_state_event_ids([hello_a])

    # B stops in the middle of the resync, its first read of the room's
    # state still unanswered, and A goes down too.
    with trio.fail_after(_GIVE_UP_SECONDS):
        await held_on_a.first_held.wait()
    # The resync's first reads are held: the state IDs at the join, and for
    # a room this big the state itself asked alongside, at the same event;
    # the talk above needed none.
    held = sorted(urllib.parse.unquote(uri) for uri in held_on_a.held)
    first_state_ids = f"/_matrix/federation/v1/state_ids/{room_id}"
    assert any(uri.startswith(f"{first_state_ids}?") for uri in held), held
    at_event = {uri.partition("?")[2] for uri in held}
    assert len(at_event) == 1, held
    assert {uri.partition("?")[0] for uri in held} <= {
        first_state_ids,
        f"/_matrix/federation/v1/state/{room_id}",
    }, held
    assert b.resync_status()[room_id].phase == "fetching"
    # The record an operator's `ranvier status` reads is written beside the
    # resync, not waited for by it: wait for it to say so too.
    await _eventually(
        lambda: _recorded_phase_is(b, room_id, "fetching"), "B to record its resync fetching"
    )
    # Each side has also recorded its message as delivered, so neither
    # starts again with a catch-up to send (see _delivered).
    await _eventually(lambda: _delivered(b, a.server_name), "B to record its delivery to A")
    await _eventually(lambda: _delivered(a, b.server_name), "A to record its delivery to B")
    await server_b.stop()
    await server_a.stop()
    rows = _partial_rows(server_b.config.paths.database)
    assert rows["partial_state_rooms"] == 1
    assert rows["partial_state_events"] >= 2
    # What an operator sees meanwhile.
    status = await _ranvier_status(tmp_path, server_b.config)
    assert status[1:5] == [
        room_id,
        f"  partial-state events: {rows['partial_state_events']}",
        f"  joined via: {a.server_name}",
        f"  servers known: {a.server_name}",
    ]
    # The resync's last record: fetching its first event's state from A, in
    # its first attempt, with no error; how long ago depends on the machine.
    assert len(status) == 6, status
    resync_line = re.fullmatch(
        rf"  resync: fetching, 0 of (\d+) events, via {re.escape(a.server_name)}, attempt 1,"
        r" updated \d+ (s|min) ago",
        status[5],
    )
    assert resync_line is not None, status[5]
    assert 1 <= int(resync_line[1]) <= rows["partial_state_events"], status[5]

    # B starts again and resumes the resync, which fails while A is down…
    b = await server_b.start()
    assert await b.storage.is_partial_state_room(room_id)
    await _eventually(
        lambda: _phase_is(b, room_id, "waiting"), "the resync to wait for A to come back"
    )
    metrics = b.metrics()
    assert (metrics["ranvier_resync_rooms"], metrics["ranvier_resync_rooms_waiting"]) == (1, 1)
    assert metrics[sample_name("ranvier_resync_attempts", room_id=room_id)] == 1

    # …and goes on once A is back, while both sides send messages and
    # change state.
    a = await server_a.start()
    sent: dict[str, list[str]] = {"a": [], "b": []}

    first_on_partial_state: list[bool] = []

    async def talk(hs: HomeServer, user: str, side: str) -> None:
        for n in range(MESSAGES):
            body = {"msgtype": "m.text", "body": f"{side} {n}"}
            sent[side].append(await hs.send_event(user, room_id, "m.room.message", body))
            if side == "b" and n == 0:
                partial = await hs.storage.get_partial_state_event_ids(sent[side])
                first_on_partial_state.append(bool(partial))
            if n == MESSAGES // 2:
                if side == "a":
                    content = {"topic": "changed on A during the resync"}
                    state_key, event_type = "", "m.room.topic"
                else:
                    content = {"membership": "join", "displayname": "Bob of B"}
                    state_key, event_type = bob, "m.room.member"
                sent[side].append(
                    await hs.send_event(user, room_id, event_type, content, state_key=state_key)
                )

    async with trio.open_nursery() as talking:
        talking.start_soon(talk, a, alice, "a")
        talking.start_soon(talk, b, bob, "b")
    # B's first message of this round was written on partial state.
    assert first_on_partial_state == [True]

    with trio.fail_after(30):
        await b.wait_for_full_state(room_id)
    everything = [hello_a, hello_b, *sent["a"], *sent["b"]]

    async def converged() -> bool:
        if not (await _in_dag(a.storage, everything) and await _in_dag(b.storage, everything)):
            return False
        ours = await a.storage.get_forward_extremities(room_id)
        return ours == await b.storage.get_forward_extremities(room_id)

    await _eventually(converged, "both servers to hold every event")

    state_a = await a.storage.get_current_state_ids(room_id)
    assert state_a == await b.storage.get_current_state_ids(room_id)
    assert sum(key[0] == "m.room.member" for key in state_a) == MEMBERS + 2
    assert (await _content(b.storage, state_a[("m.room.topic", "")]))["topic"].endswith("resync")
    assert (await _content(b.storage, state_a[("m.room.member", bob)]))["displayname"] == "Bob of B"
    graph = await _graph_since(a.storage, room_id, join_id)
    assert graph == await _graph_since(b.storage, room_id, join_id)
    assert set(everything) | {join_id} <= set(graph)
    assert not await b.storage.get_partial_state_rooms()
    assert not await b.storage.get_partial_state_events(room_id)
    assert room_id not in b.resync_status()

    # The progress was logged: events redone of how many, from which
    # server, in which attempt (the first after the restart found A down).
    progress = [r.getMessage() for r in caplog.records if "events resynced" in r.getMessage()]
    assert any(f"from {a.server_name} (attempt 2)" in line for line in progress), progress

    await server_b.stop()
    await server_a.stop()
    assert _partial_rows(server_b.config.paths.database) == dict.fromkeys(
        ("partial_state_rooms", "partial_state_rooms_servers", "partial_state_events"), 0
    )


async def _delivered(hs: HomeServer, destination: str) -> bool:
    """Whether ``hs`` has nothing in flight to ``destination`` and has
    recorded every event it handed over for it as delivered.

    The destination stores a transaction's events before the sender hears
    the answer and records the delivery. A server stopped in between starts
    again catching up, sending the room's newest event alone for the
    destination to pull the gap before it; a sender whose room still has
    partial state cannot serve that pull, so the test does not leave it to
    chance.
    """
    status = hs.federation_sender.status(destination)
    if status is not None and (
        status.pending_transaction is not None or status.queued_pdus or status.catching_up
    ):
        return False
    return not await hs.storage.get_unsent_destination_rooms(destination)


async def _recorded_phase_is(hs: HomeServer, room_id: str, phase: str) -> bool:
    recorded = (await hs.storage.get_resync_progress()).get(room_id)
    return recorded is not None and recorded.phase == phase


async def _phase_is(hs: HomeServer, room_id: str, phase: str) -> bool:
    await trio.lowlevel.checkpoint()
    status = hs.resync_status().get(room_id)
    return status is not None and status.phase == phase
