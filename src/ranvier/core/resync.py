"""The state of a room after one of its events, as a server in the room gives it.

The un-partial-state task (:mod:`ranvier.core.unpartial`) needs the full
state at the points where the room's history starts for us: the events a
join (or an event after a gap) follows, which we have no state for. It asks
one server at a time, and a server's answer is taken only once it checks
out, because a server may be buggy, behind, or hostile.

``/state_ids`` at an event gives the state *before* it, so the state after
it is that state plus the event itself, when the event is a state event
that the state before it allows.

Invariants
----------

* **A bad event is dropped, a bad answer refused.** Every event of the
  state, the event itself, and every event in their auth chains must be
  stored here or be served by the server. One it serves that is not
  validly signed, in ``/state`` and again in ``/event``, is dropped, as the
  spec says of any event received so, and so is every event citing one
  dropped: none is written, and those of the state are left out of it.
  The answer is refused (:class:`RemoteStateError`), and the caller asks
  another server, when the server does not serve an event at all, when
  the event itself is dropped, or when the state is not a state of the
  room (state events only, one per key, the room's create event).
* **Written as it comes, never without its auth chain.** A big answer is
  checked and written a chunk at a time, so that it is never all held in
  memory. An event is written only once each event it cites in
  ``auth_events`` is stored here; one citing what is not waits for it. So
  an answer refused part way leaves behind only outliers that are validly
  signed events of the room with their auth chains, which is harmless.
* **What is written was checked as on receipt.** Fetched events go through
  the same verifier as federation ingestion (signatures, then the content
  hash, keeping the redacted copy on a mismatch), and are checked against
  their auth events, auth events first, before they are written as
  outliers; an event failing that check is written rejected.
* **One request when most is missing.** When more than ``bulk_min_missing``
  events, and more than ``bulk_missing_share`` of those wanted, are missing
  here, they are asked for in one ``/state`` request; otherwise, or for what
  that answer leaves out, one ``/event`` request each, a few at a time. A
  room joined with partial state lacks all of its members, so the first
  fetch after a join is a ``/state``; later gaps are usually a few events.
  When the caller expects most to be missing, ``/state`` is asked for
  alongside ``/state_ids``, not after it, and dropped if not needed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Final

import trio

from ranvier.errors import AuthError, MatrixError
from ranvier.failures import sole_failure
from ranvier.protocol.auth import (
    CREATE_KEY,
    StateKey,
    auth_types_for_event,
    check_auth_rules,
    create_event_id_for_room,
)
from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import RoomVersion
from ranvier.storage.records import EventToPersist, StoredEvent

from .context import EventContext, event_to_persist
from .event_auth import check_against_auth_events
from .ingest import EventVerifier, auth_order
from .interfaces import PartialStateStore, ResyncClient, RoomStateAtEvent
from .loading import EventLoader

__all__ = ["STATE_AHEAD_MIN", "STATE_CHUNK", "RemoteStateError", "RemoteStateFetcher"]

_log: Final = logging.getLogger(__name__)

#: Outliers written per storage request (a batch more at most, when batches
#: waited), so other writers get a turn.
_WRITE_BATCH: Final = 500
#: Batches of checked events waiting while the one before is written; those
#: waiting are written together, in the order they were checked.
_BATCHES_QUEUED: Final = 3
#: Stored events cited by checks kept for the next batches of checks.
_CITED_KEPT: Final = 256
#: Events checked against their auth events between two checkpoints.
_CHECKS_PER_STEP: Final = 200
#: Event IDs named in a message before the rest are counted.
_NAMED: Final = 3
#: Events of a ``/state`` answer parsed, verified and written at a time.
#: Some six chunks are held parsed at once (being parsed, queued, two being
#: verified, queued, being written); at 512 that was ~3,000 events and 8 MiB
#: more peak memory than at 128, for no measurable speed, and 128 held some
#: 1-3 MiB more than 64 does at 10,000 members (CPU time alike).
STATE_CHUNK: Final = 64
#: Events expected missing from which ``/state`` is asked for alongside
#: ``/state_ids``. Below it both answers are small and quick, so the round
#: trip saved is short, and a ``/state`` not needed after all costs as much.
STATE_AHEAD_MIN: Final = 1_000
#: Chunks whose signatures are checked at once, each in a worker thread.
_VERIFYING_CHUNKS: Final = 2
#: Chunks parsed or verified ahead of the next stage: what bounds memory.
_CHUNKS_QUEUED: Final = 1


class RemoteStateError(Exception):
    """A server's answer about the state at an event did not check out, or
    it gave none; another server may do better.
    """

    def __init__(self, server: str, message: str) -> None:
        super().__init__(f"{server}: {message}")
        self.server = server


class RemoteStateFetcher:
    """Fetches the state after an event from one server, checks it, and
    writes the events it lacked here as outliers.

    ``store`` is storage; ``client`` reaches the servers; ``verifier`` is
    the one federation ingestion uses. See the module's invariants for
    ``bulk_min_missing`` and ``bulk_missing_share``; ``fetch_concurrency``
    bounds the ``/event`` requests in flight, ``state_chunk`` is how
    many events of a ``/state`` answer are taken at a time, and
    ``state_ahead_min`` is explained in :meth:`state_after`.
    """

    def __init__(
        self,
        *,
        store: PartialStateStore,
        client: ResyncClient,
        verifier: EventVerifier,
        bulk_min_missing: int = 10,
        bulk_missing_share: float = 0.1,
        fetch_concurrency: int = 10,
        state_chunk: int = STATE_CHUNK,
        state_ahead_min: int = STATE_AHEAD_MIN,
    ) -> None:
        if bulk_min_missing < 0:
            raise ValueError(f"bulk_min_missing must not be negative, not {bulk_min_missing}")
        if not 0 <= bulk_missing_share <= 1:
            raise ValueError(f"bulk_missing_share must be in [0, 1], not {bulk_missing_share}")
        if fetch_concurrency < 1:
            raise ValueError(f"fetch_concurrency must be at least 1, not {fetch_concurrency}")
        if state_chunk < 1:
            raise ValueError(f"state_chunk must be at least 1, not {state_chunk}")
        if state_ahead_min < 1:
            raise ValueError(f"state_ahead_min must be at least 1, not {state_ahead_min}")
        self._state_ahead_min = state_ahead_min
        self._state_chunk = state_chunk
        self._store = store
        self._client = client
        self._verifier = verifier
        self._bulk_min_missing = bulk_min_missing
        self._bulk_missing_share = bulk_missing_share
        self._fetch_concurrency = fetch_concurrency

    async def state_after(
        self,
        server: str,
        room_id: str,
        room_version: RoomVersion,
        event_id: str,
        *,
        create_event_id: str | None = None,
        expect_missing: int = 0,
    ) -> dict[StateKey, str]:
        """The state of ``room_id`` after ``event_id``, as ``server`` has it.

        ``create_event_id`` is the room's create event as known here; a
        state naming another is refused. ``expect_missing`` is the caller's
        guess at how many events of that state are missing here: from
        ``state_ahead_min`` on, ``/state`` is asked for alongside
        ``/state_ids`` rather than after it, and dropped if the answer to
        ``/state_ids`` shows that few are missing after all. Raises
        :class:`RemoteStateError` when the server gives no usable answer.
        """
        if expect_missing < self._state_ahead_min:
            return await self._state_after(
                server, room_id, room_version, event_id, create_event_id, None
            )
        ahead = _StateAhead()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._get_state_ahead, server, room_id, event_id, ahead)
                try:
                    return await self._state_after(
                        server, room_id, room_version, event_id, create_event_id, ahead
                    )
                finally:
                    # Taken or not needed: a /state still coming is not waited for.
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise sole_failure(group) from None

    async def _get_state_ahead(
        self, server: str, room_id: str, event_id: str, ahead: _StateAhead
    ) -> None:
        try:
            ahead.answer = await self._client.get_state(server, room_id, event_id)
        except MatrixError as exc:
            ahead.answer = exc
        ahead.done.set()

    async def _state_after(
        self,
        server: str,
        room_id: str,
        room_version: RoomVersion,
        event_id: str,
        create_event_id: str | None,
        ahead: _StateAhead | None,
    ) -> dict[StateKey, str]:
        try:
            answer = await self._client.get_state_ids(server, room_id, event_id)
        except MatrixError as exc:
            raise RemoteStateError(server, f"/state_ids at {event_id}: {exc.message}") from exc
        wanted = {event_id, *answer.pdu_ids, *answer.auth_chain_ids}
        kinds, dropped = await self._fetch_missing(
            server, room_id, room_version, event_id, wanted, ahead
        )
        if event_id in dropped:
            raise RemoteStateError(server, f"{event_id} was not served validly signed")
        state = await self._state_map(server, room_id, event_id, answer.pdu_ids, kinds, dropped)
        expected = create_event_id
        if room_version.room_id_from_create_event:
            expected = create_event_id_for_room(room_id)
        if expected is not None and state.get(CREATE_KEY) != expected:
            raise RemoteStateError(
                server,
                f"the state at {event_id} has create event {state.get(CREATE_KEY)},"
                f" not the room's {expected}",
            )
        event = await self._event(event_id, room_version)
        if event.room_id != room_id:
            raise RemoteStateError(server, f"{event_id} is not an event of {room_id}")
        if event.state_key is not None and await self._allowed(event, state):
            state[(event.type, event.state_key)] = event_id
        return state

    # The state map

    async def _state_map(
        self,
        server: str,
        room_id: str,
        event_id: str,
        pdu_ids: Sequence[str],
        written: Mapping[str, StateKey | None],
        dropped: Collection[str],
    ) -> dict[StateKey, str]:
        # Only events stored before are read: those just written are known.
        rows: dict[str, StateKey | None] = {}
        found = await self._store.get_events(
            [e for e in pdu_ids if e not in written and e not in dropped]
        )
        rows.update((e, _state_key_of(room_id, row)) for e, row in found.items())
        del found
        state: dict[StateKey, str] = {}
        for state_id in dict.fromkeys(pdu_ids):
            if state_id in dropped:
                continue
            if state_id in written:
                key = written[state_id]
            elif state_id in rows:
                key = rows[state_id]
            else:  # written just before; only a purge could remove it
                raise RemoteStateError(server, f"{state_id} of the state at {event_id} is gone")
            if key is None:
                raise RemoteStateError(
                    server,
                    f"{state_id}, in the state at {event_id}, is not a state event of {room_id}",
                )
            if key in state:
                raise RemoteStateError(
                    server, f"the state at {event_id} holds two events for {key}"
                )
            state[key] = state_id
        if CREATE_KEY not in state:
            raise RemoteStateError(server, f"the state at {event_id} has no create event")
        return state

    async def _event(self, event_id: str, room_version: RoomVersion) -> Pdu:
        row = (await self._store.get_events([event_id]))[event_id]
        return Pdu.from_json(row.json, room_version, check_limits=False)

    async def _allowed(self, event: Pdu, state: Mapping[StateKey, str]) -> bool:
        """Whether ``event`` is not rejected: it passed the check against its
        auth events when it was written, and the rules allow it against
        ``state``, the state before it.
        """
        loader = EventLoader(self._store, event.room_version)
        cited = await loader.load([event.event_id])
        if event.event_id not in cited or event.event_id in loader.rejected:
            return False
        keys = {key for key in auth_types_for_event(event) if key in state}
        keys.add(CREATE_KEY)
        at_keys = {key: state[key] for key in keys if key in state}
        events = await loader.load_for_auth(at_keys.values())
        auth_state = {
            key: events[state_id]
            for key, state_id in at_keys.items()
            if state_id in events and state_id not in loader.rejected
        }
        try:
            check_auth_rules(event, auth_state)
        except AuthError as exc:
            _log.info("%s is rejected by the state before it: %s", event.event_id, exc.message)
            return False
        return True

    # Fetching

    async def _fetch_missing(
        self,
        server: str,
        room_id: str,
        room_version: RoomVersion,
        at_event: str,
        wanted: Collection[str],
        ahead: _StateAhead | None = None,
    ) -> tuple[dict[str, StateKey | None], set[str]]:
        """Fetch from ``server`` the events of ``wanted`` not stored here, and
        those of their auth chains, check them and write them as outliers;
        return the state key of each event written (None for one that is
        not a state event of the room), and the events dropped: the state
        map needs no more.
        """
        known = set(await self._store.have_seen_events(wanted))
        level = set(wanted) - known
        writer = _OutlierWriter(self._store, room_id, room_version, known)
        if not level:
            return writer.kinds, writer.dropped
        async with writer.running():
            await self._fetch_levels(
                server, room_id, room_version, at_event, wanted, level, writer, ahead
            )
        return writer.kinds, writer.dropped

    async def _fetch_levels(
        self,
        server: str,
        room_id: str,
        room_version: RoomVersion,
        at_event: str,
        wanted: Collection[str],
        level: set[str],
        writer: _OutlierWriter,
        ahead: _StateAhead | None,
    ) -> None:
        """Fetch ``level``, then the auth events they cite that are not
        here, level by level, and hand each to ``writer``.
        """
        bulk = len(level) > self._bulk_min_missing and (
            len(level) > self._bulk_missing_share * len(wanted)
        )
        while level:
            if bulk:
                bulk = False
                await self._fetch_state_and_event(
                    server, room_id, room_version, at_event, level, writer, ahead
                )
            rest = sorted(e for e in level if not writer.handed(e))
            if rest:
                each = await self._fetch_each(
                    server, room_id, room_version, rest, writer.badly_signed
                )
                await writer.add(each.values())
            lost = sorted(e for e in level if not writer.handed(e))
            # Served, though not validly signed: dropped, as on receipt.
            await writer.drop(e for e in lost if e in writer.badly_signed)
            lost = [e for e in lost if e not in writer.badly_signed]
            if lost:
                named = ", ".join(lost[:_NAMED])
                raise RemoteStateError(
                    server,
                    f"{len(lost)} events needed for the state at {at_event} were not served"
                    f" ({named}{', …' if len(lost) > _NAMED else ''})",
                )
            cited = writer.unmet()
            if cited:
                seen = set(await self._store.have_seen_events(cited))
                await writer.stored_already(seen)
                cited -= seen
            level = cited
        if writer.waiting:
            # Every event cited was had: only a cycle, which event IDs being
            # hashes over auth_events rules out, could leave some waiting.
            await writer.add((), force=True)

    async def _fetch_state_and_event(
        self,
        server: str,
        room_id: str,
        room_version: RoomVersion,
        at_event: str,
        wanted: Collection[str],
        writer: _OutlierWriter,
        ahead: _StateAhead | None,
    ) -> None:
        """:meth:`_fetch_state`, with ``at_event`` itself fetched alongside
        when it is wanted: ``/state`` gives the state before it, never the
        event, and asking for it only after would add a round trip.
        """
        if at_event not in wanted:
            await self._fetch_state(server, room_id, room_version, at_event, wanted, writer, ahead)
            return
        alongside: dict[str, Pdu] = {}

        async def fetch_state() -> None:
            await self._fetch_state(server, room_id, room_version, at_event, wanted, writer, ahead)

        async def fetch_event() -> None:
            alongside.update(
                await self._fetch_each(
                    server, room_id, room_version, [at_event], writer.badly_signed
                )
            )

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch_state)
                nursery.start_soon(fetch_event)
        except BaseExceptionGroup as group:
            raise sole_failure(group) from None
        # Handed over once the answer is in: the event cites events of it.
        await writer.add(alongside.values())

    async def _fetch_state(
        self,
        server: str,
        room_id: str,
        room_version: RoomVersion,
        at_event: str,
        wanted: Collection[str],
        writer: _OutlierWriter,
        ahead: _StateAhead | None,
    ) -> None:
        """Hand ``writer`` the events of ``wanted`` that a ``/state`` answer
        holds, verified.

        The answer is taken a chunk at a time: parsed here, its signatures
        checked in worker threads (libsodium lets go of the GIL, so two
        cores share the work), and checked and written as the next chunks
        are parsed. Only a few chunks are held at once, and the auth chain
        goes first, so most events find their auth events written already.
        A failed request leaves every event to ``/event``. ``ahead`` is
        the request when it was made before.
        """
        try:
            if ahead is None:
                answer = await self._client.get_state(server, room_id, at_event)
            else:
                answer = await ahead.take()
        except MatrixError as exc:
            _log.info("/state at %s from %s failed: %s", at_event, server, exc.message)
            return
        raws = [*answer.auth_chain, *answer.pdus]
        del answer
        # Events parsed and not yet handed to the writer, which knows the rest:
        # a few chunks' worth, not a set of every event of a big state.
        taken: set[str] = set()
        parsed_in, parsed_out = trio.open_memory_channel[list[Pdu]](_CHUNKS_QUEUED)
        checked_in, checked_out = trio.open_memory_channel[dict[str, Pdu]](_CHUNKS_QUEUED)

        async def parse() -> None:
            async with parsed_in:
                while raws:
                    chunk = raws[: self._state_chunk]
                    del raws[: self._state_chunk]
                    events = []
                    for raw in chunk:
                        try:
                            event = Pdu.from_json(raw, room_version, check_limits=False)
                        except MatrixError as exc:
                            _log.info(
                                "an event of /state from %s is invalid: %s", server, exc.message
                            )
                            continue
                        event_id = event.event_id
                        if (
                            event_id in wanted
                            and event.room_id == room_id
                            and event_id not in taken
                            and not writer.handed(event_id)
                        ):
                            taken.add(event_id)
                            events.append(event)
                    del chunk
                    await parsed_in.send(events)

        async def verify(
            parsed: trio.MemoryReceiveChannel[list[Pdu]],
            checked: trio.MemorySendChannel[dict[str, Pdu]],
        ) -> None:
            async with parsed, checked:
                async for events in parsed:
                    await checked.send(await self._verified(server, events, writer.badly_signed))

        async def write() -> None:
            async with checked_out:
                async for good in checked_out:
                    await writer.add(good.values())
                    taken.difference_update(good)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(parse)
                async with parsed_out, checked_in:
                    for _ in range(_VERIFYING_CHUNKS):
                        nursery.start_soon(verify, parsed_out.clone(), checked_in.clone())
                nursery.start_soon(write)
        except BaseExceptionGroup as group:
            raise sole_failure(group) from None

    async def _fetch_each(
        self,
        server: str,
        room_id: str,
        room_version: RoomVersion,
        event_ids: Sequence[str],
        badly_signed: set[str],
    ) -> dict[str, Pdu]:
        """The events of ``event_ids`` that ``server`` gives one by one,
        verified; those failing verification are added to ``badly_signed``.
        """
        found: dict[str, Pdu] = {}
        limiter = trio.CapacityLimiter(self._fetch_concurrency)

        async def fetch(event_id: str) -> None:
            async with limiter:
                try:
                    raw = await self._client.get_event(server, event_id)
                    event = Pdu.from_json(raw, room_version, check_limits=False)
                except MatrixError as exc:
                    _log.info("could not fetch %s from %s: %s", event_id, server, exc.message)
                    return
            if event.event_id != event_id or event.room_id != room_id:
                _log.info("%s answered %s with another event", server, event_id)
                return
            found[event_id] = event

        async with trio.open_nursery() as nursery:
            for event_id in event_ids:
                nursery.start_soon(fetch, event_id)
        return await self._verified(server, found.values(), badly_signed)

    async def _verified(
        self, server: str, events: Iterable[Pdu], badly_signed: set[str]
    ) -> dict[str, Pdu]:
        batch = list(events)
        verdicts = await self._verifier.verify(batch)
        good: dict[str, Pdu] = {}
        for event, verdict in zip(batch, verdicts, strict=True):
            if isinstance(verdict, MatrixError):
                _log.info("dropping %s from %s: %s", event.event_id, server, verdict.message)
                badly_signed.add(event.event_id)
            else:
                good[verdict.event_id] = verdict
        return good


class _StateAhead:
    """A ``/state`` answer asked for before it is known to be needed."""

    def __init__(self) -> None:
        self.answer: RoomStateAtEvent | MatrixError | None = None
        self.done = trio.Event()

    async def take(self) -> RoomStateAtEvent:
        """The answer, once in, let go of here so that it is freed as it is
        used; raises the request's :class:`~ranvier.errors.MatrixError`.
        """
        await self.done.wait()
        answer, self.answer = self.answer, None
        if isinstance(answer, MatrixError):
            raise answer
        if answer is None:
            raise RuntimeError("a /state answer asked for ahead was taken twice")
        return answer


def _state_key_of(room_id: str, event: Pdu | StoredEvent) -> StateKey | None:
    """The key an event takes in a state of ``room_id``; None for one that
    cannot be in it. The room's one string for a type that every event
    repeats: a big room's state keeps tens of thousands of these.
    """
    if event.room_id != room_id or event.state_key is None:
        return None
    return (sys.intern(event.type), event.state_key)


class _OutlierWriter:
    """Checks fetched events against their auth events and writes them as
    outliers, each once its auth events are stored here.

    Events citing an auth event that is neither stored nor among those
    handed over wait, in :attr:`waiting`; :meth:`unmet` names what they
    wait for, to be fetched. So an event is never written without its
    auth events, and a server that withholds some leaves only whole auth
    chains behind. ``stored`` is the IDs found stored here before; of the
    events checked here only what the state map needs is kept
    (:attr:`kinds`), not the events, and that tells which were checked: a
    big room's state is tens of thousands of events, and each set of their
    IDs some MiB.

    Writes go on in a task of their own (use it in :meth:`running`), so
    that the next events are checked while the last ones are written; the
    batches checked meanwhile wait, a few at most, and go in one write. A
    batch is written only once the one before it is stored, so the rule
    above holds even when a write fails (what waits is then dropped). The
    events handed over are kept (:attr:`_writing`) until they are stored:
    the next events' checks may cite them before storage has them.
    """

    def __init__(
        self, store: PartialStateStore, room_id: str, room_version: RoomVersion, stored: set[str]
    ) -> None:
        self._store = store
        self._room_id = room_id
        self._room_version = room_version
        self._stored = stored
        self.waiting: dict[str, Pdu] = {}
        #: Events served not validly signed (until served so, they may be
        #: served again validly signed).
        self.badly_signed: set[str] = set()
        #: Events dropped: those badly signed, and those citing a dropped one.
        self.dropped: set[str] = set()
        #: Each event checked here (written, or being written), and the key
        #: it takes in a state of the room.
        self.kinds: dict[str, StateKey | None] = {}
        #: Events handed to the write task and not stored yet, and whether
        #: each was rejected.
        self._writing: dict[str, tuple[Pdu, bool]] = {}
        #: Stored events that checks cited, and whether each is rejected,
        #: kept for the next batches (a few hundred at most): most events of
        #: a room cite the same few.
        self._cited: dict[str, tuple[Pdu, bool]] = {}
        self._batches: trio.MemorySendChannel[list[EventToPersist]] | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Write in a task beside the block; every event handed over is
        stored by the time the block ends.
        """
        send, receive = trio.open_memory_channel[list[EventToPersist]](_BATCHES_QUEUED)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, receive)
                async with send:
                    self._batches = send
                    try:
                        yield
                    finally:
                        self._batches = None
        except BaseExceptionGroup as group:
            raise sole_failure(group) from None

    async def _write(self, batches: trio.MemoryReceiveChannel[list[EventToPersist]]) -> None:
        async with batches:
            async for first in batches:
                # What queued up meanwhile goes in the same write, in order.
                rows = list(first)
                while len(rows) < _WRITE_BATCH:
                    try:
                        rows.extend(batches.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._store.persist_events(rows)
                for row in rows:
                    self._writing.pop(row.event_id, None)

    def _settled(self, event_id: str) -> bool:
        """Whether an event is stored here or checked and being written."""
        return event_id in self.kinds or event_id in self._stored

    def handed(self, event_id: str) -> bool:
        """Whether an event was handed over, or needs not be: stored, being
        written, waiting for its auth events, or dropped.
        """
        return event_id in self.waiting or event_id in self.dropped or self._settled(event_id)

    async def drop(self, event_ids: Iterable[str]) -> None:
        """Drop ``event_ids`` and the waiting events citing them, and write
        what waited for nothing else.
        """
        dropped = set(event_ids) - self.dropped
        if dropped:
            _log.info("dropping %d events not validly signed: %s", len(dropped), sorted(dropped))
            self.dropped.update(dropped)
            await self.add(())

    def _drop_citing_dropped(self) -> None:
        """Drop the waiting events that cite a dropped event, directly or
        through others waiting: they cannot be written with their auth events.
        """
        found = True
        while found:
            citing = [
                event_id
                for event_id, event in self.waiting.items()
                if not self.dropped.isdisjoint(event.auth_event_ids)
            ]
            found = bool(citing)
            for event_id in citing:
                _log.info("dropping %s: it cites a dropped event", event_id)
                del self.waiting[event_id]
                self.dropped.add(event_id)

    def unmet(self) -> set[str]:
        """The auth events that waiting events cite and nobody has handed over."""
        return {
            auth_id
            for event in self.waiting.values()
            for auth_id in event.auth_event_ids
            if not self._settled(auth_id) and auth_id not in self.waiting
        }

    async def stored_already(self, event_ids: Collection[str]) -> None:
        """Note events found stored here, and write what waited for them."""
        if event_ids:
            self._stored.update(event_ids)
            await self.add(())

    async def add(self, events: Iterable[Pdu], *, force: bool = False) -> None:
        """Check ``events`` and those waiting, each whose auth events are
        stored or handed over with it, and hand them to the write task;
        with ``force``, every one waiting.
        """
        if self._batches is None:
            raise RuntimeError("an outlier writer writes only while running")
        for event in events:
            if not self._settled(event.event_id) and event.event_id not in self.dropped:
                self.waiting[event.event_id] = event
        if self.dropped:
            self._drop_citing_dropped()
        ready = auth_order(self.waiting if force else self._ready())
        if not ready:
            return
        for event in ready:
            del self.waiting[event.event_id]
        # A loader for this batch alone: the events written before it are
        # read back if cited, rather than all kept parsed; those still being
        # written are not readable yet, so they are handed to it, and so are
        # those cited before. A stored event's verdict does not change while
        # a state is fetched (only the redo after it changes any).
        loader = EventLoader(self._store, self._room_version)
        for known in (self._cited, self._writing):
            for handed, rejected in known.values():
                loader.add(handed)
                if rejected:
                    loader.rejected.add(handed.event_id)
        for event in ready:
            loader.add(event)
        rows = []
        checked: dict[str, tuple[Pdu, bool]] = {}
        for count, event in enumerate(ready, start=1):
            context = EventContext.for_outlier()
            failure = await check_against_auth_events(
                event, self._store, loader=loader, outlier=True
            )
            if failure is not None:
                _log.info(
                    "%s fails against its auth events: %s", event.event_id, failure.error.message
                )
                loader.rejected.add(event.event_id)
                context = context.as_rejected(failure.rule)
            rows.append(event_to_persist(event, context))
            checked[event.event_id] = (event, failure is not None)
            self.kinds[event.event_id] = _state_key_of(self._room_id, event)
            if count % _CHECKS_PER_STEP == 0:
                await trio.lowlevel.checkpoint()
        for event_id, read in loader.events.items():
            if len(self._cited) >= _CITED_KEPT:
                break
            if event_id not in checked and event_id not in self._writing:
                self._cited.setdefault(event_id, (read, event_id in loader.rejected))
        del ready, loader
        for start in range(0, len(rows), _WRITE_BATCH):
            batch = rows[start : start + _WRITE_BATCH]
            self._writing.update((row.event_id, checked[row.event_id]) for row in batch)
            # Taken by the write task only once the batch before is stored.
            await self._batches.send(batch)

    def _ready(self) -> dict[str, Pdu]:
        """The waiting events whose auth events are stored or ready too."""
        waiting = self.waiting
        dependants: dict[str, list[str]] = {}
        blocked: list[str] = []
        for event_id, event in waiting.items():
            for auth_id in event.auth_event_ids:
                if self._settled(auth_id):
                    continue
                if auth_id in waiting:
                    dependants.setdefault(auth_id, []).append(event_id)
                else:
                    blocked.append(event_id)
        held = set(blocked)
        while blocked:
            for dependant in dependants.get(blocked.pop(), ()):
                if dependant not in held:
                    held.add(dependant)
                    blocked.append(dependant)
        return {event_id: event for event_id, event in waiting.items() if event_id not in held}
