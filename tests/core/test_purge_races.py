"""A room's purge racing the work in flight on the same room.

Our server joined Bob's room with partial state (:class:`RaceRoom`). The
un-partial-state task, an event pushed over federation or a local client's
send is parked at a hook point of the real storage (:class:`ProbedStorage`)
or of the remote server, the room is purged (the storage write the room
admin API's purge makes), and the parked work goes on. Whatever it was
doing, it ends without an escaping exception, and no row of the purged room
is left in any table afterwards (the schema is read from the database, so a
table added later is covered).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from _races import (
    ALICE,
    REMOTE,
    ProbedStorage,
    RaceRoom,
    StateServer,
    Turnstile,
    as_actor,
    running_stater,
    until,
)
from _resident import start_resident
from trio.testing import MockClock

from ranvier.core.ingest import PduOutcome, RoomLocks
from ranvier.core.interfaces import StateIdsAtEvent
from ranvier.core.joins import RemoteJoiner
from ranvier.errors import MatrixError, RoomGoneError
from ranvier.federation.membership import FederationJoinClient
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import Storage
from ranvier.testing import NOW_MS, KnownKeys, Pki, ticking_clock
from ranvier.testing.room_rows import RoomRows, Row, read_tables, search_index_internals


class _RoomRows:
    """A room's rows in every table (:class:`RoomRows`), read from the
    database file while the room is stored, and looked for again after.
    """

    #: Tables that keep a purged room's ID on purpose.
    KEPT = frozenset({"blocked_rooms"})

    def __init__(self, db_path: Path, room_id: str) -> None:
        self._db_path = db_path
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            self._rows = RoomRows(conn, room_id)

    def left(self, *, also: Collection[str] = ()) -> dict[str, list[Row]]:
        """The room's rows left but where kept on purpose (the full-text
        index's own structures hold no rows); ``also``: more event IDs of
        the room, written after the first read."""
        with contextlib.closing(sqlite3.connect(self._db_path)) as conn:
            tables = read_tables(conn)
        skip = self.KEPT | search_index_internals(tables)
        return self._rows.left(tables, skip=skip, also=also)


class _GatedServer(StateServer):
    """The room's servers, whose ``/state_ids`` answers pass a hook point."""

    def __init__(self, race: RaceRoom, turnstile: Turnstile) -> None:
        super().__init__(race.room)
        self.turnstile = turnstile

    async def get_state_ids(self, destination: str, room_id: str, event_id: str) -> StateIdsAtEvent:
        await self.turnstile.point("fetch", [event_id])
        return await super().get_state_ids(destination, room_id, event_id)


async def _purge(storage: Storage, room_id: str) -> None:
    result = await storage.room_purge.purge_room(room_id)
    assert result is not None
    assert result.events > 0


# --- The un-partial-state task -----------------------------------------------------------


@pytest.mark.parametrize("phase", ["fetch", "redo", "clear"])
async def test_a_resync_held_across_the_purge_ends_and_writes_nothing_back(
    race: RaceRoom,
    storage: Storage,
    probed: ProbedStorage,
    turnstile: Turnstile,
    db_path: Path,
    phase: str,
    autojump_clock: MockClock,
) -> None:
    """Held while it fetches the state before the join, before it redoes an
    event, or before it clears the room; the room is purged; let on, the
    task stops, and neither the state it fetched nor what it worked out
    of it is written back.
    """
    race.remote = _GatedServer(race, turnstile)
    turnstile.arm("stater", phase)
    rows = _RoomRows(db_path, race.room_id)
    stater = race.stater(probed, RoomLocks())
    async with running_stater(stater):
        await turnstile.wait_parked("stater")
        await _purge(storage, race.room_id)
        assert rows.left() == {}
        turnstile.release("stater")
        await until(lambda: race.room_id not in stater.status(), "the task to end")
        assert stater.completed_resyncs == 0
    assert rows.left() == {}
    assert await storage.get_partial_state_rooms() == {}
    assert await storage.get_room_version(race.room_id) is None
    # Started again, as at a restart, the stater finds nothing to resume.
    again = race.stater(storage, RoomLocks())
    async with running_stater(again):
        assert again.status() == {}


# --- Federation ingestion ----------------------------------------------------------------


async def test_a_pushed_event_held_across_the_purge_is_refused_and_not_written(
    race: RaceRoom,
    storage: Storage,
    probed: ProbedStorage,
    turnstile: Turnstile,
    db_path: Path,
    autojump_clock: MockClock,
) -> None:
    pushed = race.later[0]
    rows = _RoomRows(db_path, race.room_id)
    turnstile.arm("remote", "persist", pushed.event_id)
    results: list[Any] = []
    ingester = race.ingester(probed, RoomLocks())
    async with trio.open_nursery() as nursery:
        receive = functools.partial(ingester.receive_pdus, REMOTE, [pushed.raw])
        nursery.start_soon(as_actor, "remote", receive, results)
        await turnstile.wait_parked("remote")
        await _purge(storage, race.room_id)
        turnstile.release("remote")

    (result,) = results
    assert not isinstance(result, Exception), repr(result)
    (outcome,) = result
    assert isinstance(outcome, PduOutcome)
    assert outcome.result is None
    assert isinstance(outcome.error, RoomGoneError)
    assert rows.left(also=[pushed.event_id]) == {}


async def test_a_pdu_for_a_purged_room_is_dropped_without_asking_for_more(
    race: RaceRoom, storage: Storage, db_path: Path, autojump_clock: MockClock
) -> None:
    """A server that has not heard of our leave yet pushes the room's
    next event: nothing is written, and neither its missing prev events nor
    the state before it are asked for."""
    ingester = race.ingester(storage, RoomLocks())
    # The ingester has met the room: it remembers the room's version.
    (first,) = await ingester.receive_pdus(REMOTE, [race.later[0].raw])
    assert first.error is None
    rows = _RoomRows(db_path, race.room_id)
    await _purge(storage, race.room_id)
    race.remote.calls.clear()
    for later in race.later[1:]:
        (outcome,) = await ingester.receive_pdus(REMOTE, [later.raw])
        assert outcome.result is None
        assert isinstance(outcome.error, MatrixError)
        assert outcome.error.http_status in (403, 404)
    assert race.remote.requests == []
    assert rows.left(also=[event.event_id for event in race.later]) == {}


# --- Local clients -----------------------------------------------------------------------


async def test_a_client_send_held_across_the_purge_gets_a_matrix_error(
    race: RaceRoom,
    storage: Storage,
    probed: ProbedStorage,
    turnstile: Turnstile,
    db_path: Path,
    autojump_clock: MockClock,
) -> None:
    rows = _RoomRows(db_path, race.room_id)
    creator = race.creator(probed, RoomLocks())
    turnstile.arm("client", "persist")
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        send = functools.partial(
            creator.send_event, ALICE, race.room_id, "m.room.message", {"body": "too late"}
        )
        nursery.start_soon(as_actor, "client", send, results)
        await turnstile.wait_parked("client")
        await _purge(storage, race.room_id)
        turnstile.release("client")

    (error,) = results
    assert isinstance(error, RoomGoneError), error
    assert (error.http_status, error.errcode) == (404, "M_NOT_FOUND")
    assert rows.left() == {}


# --- A join over federation ---------------------------------------------------------------

#: Our server, joining a room another server (the resident) has.
_OURS = "b.test"
_BOB = f"@bob:{_OURS}"
_DAN = f"@dan:{_OURS}"


@dataclass
class _Joined:
    """Our joiner (on storage probed for the race), our storage, the room
    and the resident server that has it."""

    joiner: RemoteJoiner
    turnstile: Turnstile
    ours: Storage
    room_id: str
    resident: str


@pytest.fixture
async def joined(tmp_path: Path, nursery: trio.Nursery) -> _Joined:
    """A resident server's public room, which Bob of ours has joined over
    federation."""
    pki = Pki.create(tmp_path)
    keys = KnownKeys()
    ours_key = generate_signing_key("b1")
    keys.add(_OURS, ours_key)
    started = await start_resident(nursery, tmp_path, pki, keys)
    resident = started.name
    room_id = await started.creator.create_room(f"@alice:{resident}", preset="public_chat")
    ours = Storage(tmp_path / "ours.db", synchronous="NORMAL")
    await nursery.start(ours.run)
    http = FederationHttpClient(_OURS, ours_key, ssl_context=pki.client_context())
    await nursery.start(http.run)
    turnstile = Turnstile()
    probed = ProbedStorage(ours, turnstile)
    joiner = RemoteJoiner(
        server_name=_OURS,
        signing_key=ours_key,
        client=FederationJoinClient(http),
        keys=keys,
        store=probed,
        persister=probed,
        clock=ticking_clock(NOW_MS + 10_000),
        partial_state=False,
    )
    await joiner.join_remote_room(_BOB, room_id, [resident])
    return _Joined(joiner, turnstile, ours, room_id, resident)


async def test_a_join_written_before_the_purge_makes_the_purge_refuse(joined: _Joined) -> None:
    """Dan's join is written first: the purge, asked to spare rooms with a
    user of ours in them (as the admin API's is, unless forced), refuses
    and deletes nothing."""
    ours, room_id = joined.ours, joined.room_id
    await joined.joiner.join_remote_room(_DAN, room_id, [joined.resident])
    before = await ours.get_current_state_ids(room_id)
    assert ("m.room.member", _DAN) in before
    with pytest.raises(MatrixError) as refused:
        await ours.room_purge.purge_room(room_id, refuse_if_members_of=_OURS)
    assert refused.value.http_status == 400
    assert _DAN in refused.value.message
    assert await ours.get_current_state_ids(room_id) == before


async def test_a_join_held_across_the_purge_fails_cleanly(joined: _Joined, tmp_path: Path) -> None:
    """The shut found no one else, and the purge runs while Dan's join is on
    its way to storage: the join fails with a 404, and nothing of the room
    comes back."""
    ours, room_id, turnstile = joined.ours, joined.room_id, joined.turnstile
    rows = _RoomRows(tmp_path / "ours.db", room_id)
    turnstile.arm("joiner", "persist")
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        join = functools.partial(joined.joiner.join_remote_room, _DAN, room_id, [joined.resident])
        nursery.start_soon(as_actor, "joiner", join, results)
        await turnstile.wait_parked("joiner")
        assert await ours.room_purge.purge_room(room_id) is not None
        turnstile.release("joiner")

    (error,) = results
    assert isinstance(error, RoomGoneError), error
    assert (error.http_status, error.errcode) == (404, "M_NOT_FOUND")
    assert rows.left() == {}
    assert await ours.get_room_version(room_id) is None
