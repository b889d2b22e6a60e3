"""Events arriving over federation: checked, their gaps filled, authorised, written.

A PDU pushed to us in a transaction goes through :meth:`FederationIngester.receive_pdus`
(or :meth:`~FederationIngester.on_receive_pdu` for one event); events we pull
ourselves (the missing events before a pushed one, the state at a gap, auth
chains) take the same road from the signature check on. The server-server
spec's "Checks performed on receipt of a PDU" are done in its order:

1. the event is valid for its room's version (format, sizes), else dropped;
2. it is signed by the servers it must be, else dropped;
3. its content hash matches, else it is kept in its redacted form only;
4. to 6. the three auth checks (:mod:`ranvier.core.event_auth`): rejected,
   rejected, soft failed.

Invariants
----------

* **Nothing unchecked is written.** An event is written only after its
  signatures verified; an event whose content hash does not match is written
  as its redacted copy, never as it arrived.
* **Auth events first.** Before an event is checked, every event it cites in
  ``auth_events`` is stored, fetched from the origin as an outlier if need
  be; outliers fetched together are checked and written in auth order, so
  each is checked against events already judged.
* **One room, one event at a time.** A room's events are handled under its
  lock in :class:`RoomLocks`, so the forward extremities a context is
  computed from do not move before the event is written. Rooms proceed
  concurrently.
* **A run is judged as its events would be one by one.** A transaction's
  events of one room are judged in runs (:mod:`ranvier.core.ingest_batch`):
  each event goes through the same steps as alone, against storage as it
  will be with the events before it written, and the run is written with
  one request. An event that needs something fetched first (a gap before
  it, auth events we lack) ends the run and is taken alone.
* **Gaps are filled, not guessed.** Prev events not known here are asked of
  the origin with ``get_missing_events``; any still missing after that have
  the state at them fetched with ``/state_ids`` (their state and auth chain
  stored as outliers), and the event gets the resolution of those states as
  its state before.
* **No history from before the DAG here.** ``get_missing_events`` asks for
  nothing below the smallest depth of the room's DAG here (for a room joined
  over federation, the join's), and events below it that come back all the
  same are not taken in: the origin may not have our newest events yet, and
  walking back past them it would reach the room's history before we
  joined.
* **A known room is never started over.** Only rooms known here are
  ingested, so an ``m.room.create`` event other than the one stored, and
  any event with no ``prev_events``, is refused before anything of it is
  fetched or written.
* **A server speaks for a room only from inside it.** A pushed event is
  refused, and nothing of it written, when the server that pushed it has no
  joined member in the state before the event. A server's own users' events
  that pass the auth checks prove it has one; others are looked up.
* **A conflict is retried once.** When the room's partial state is cleared
  between computing an event's context and writing the event, the context
  is computed again and the write tried again, once
  (:class:`~ranvier.errors.PartialStateConflictError`); this holds for
  pushed and pulled events alike. A run conflicting is judged again and
  written again, once; conflicting again, its events are taken one at a
  time, each with its own retry. Outliers carry no state and never
  conflict.

Refusals that concern one event (it is malformed, badly signed, from a
server outside the room, of a room we are not in, or its gap cannot be
filled) are :class:`~ranvier.errors.MatrixError` results for that event.
Anything else, such as storage being unavailable, is raised: the caller
then fails the whole transaction, so that the sender tries it again instead
of being told that events it must resend were handled.
"""

from __future__ import annotations

import functools
import heapq
import logging
import queue
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgspec
import trio

from ranvier.errors import (
    AuthError,
    BadJsonError,
    InvalidSignatureError,
    MatrixError,
    PartialStateConflictError,
    RoomGoneError,
    StaleRunError,
    StorageUnavailableError,
)
from ranvier.failures import sole_failure
from ranvier.protocol.auth import CREATE_KEY, StateKey, create_event_id_for_room
from ranvier.protocol.events import Pdu, pdu_room_id
from ranvier.protocol.hashing import compute_event_id
from ranvier.protocol.room_versions import RoomVersion, get_room_version
from ranvier.protocol.untrusted_json import decode_untrusted_json
from ranvier.storage.records import EventToPersist, ReceivedTransaction, StoredEvent

from .context import (
    EventContext,
    UnknownPrevStateError,
    compute_current_state_after,
    compute_event_context,
    event_to_persist,
)
from .event_auth import (
    AuthFailure,
    AuthOutcome,
    AuthPoint,
    check_against_auth_events,
    check_against_current_state,
    check_against_state_before,
)
from .event_signatures import (
    THREAD_THRESHOLD,
    SignatureCheck,
    SignatureOffload,
    check_event_signatures,
    find_signature_checks,
    handed_over,
    redacted_if_hash_mismatch,
    run_signature_checks,
)
from .ingest_batch import AnsweringPersister, AuthInputs, NotInMemoryError, RoomRun, RoomRunReader
from .interfaces import (
    BatchStateReader,
    EventPersister,
    FederationEventClient,
    StateReader,
    VerifyKeySource,
)
from .loading import EventLoader
from .out_of_band import OutOfBandMemberships
from .policy_servers import PolicyServers
from .state import resolve_state_maps

__all__ = [
    "EventVerifier",
    "FederationIngester",
    "IngestResult",
    "PduOutcome",
    "RoomLocks",
    "TransactionAnswer",
    "Verdict",
    "VerificationFeed",
    "auth_order",
    "sole_failure",
]

_log: Final = logging.getLogger(__name__)

#: Writes backfilled events: before the room's history here, moving neither
#: its forward extremities nor its current state.
BackfillWrite: TypeAlias = Callable[[Sequence[EventToPersist]], Awaitable[Mapping[str, int]]]

_MEMBER: Final = "m.room.member"
#: Members of one server looked at per read when checking it is in a room.
_MEMBER_BATCH: Final = 200
#: Room versions remembered (a room's never changes); forgotten all at once past this.
_VERSIONS_REMEMBERED: Final = 10_000
#: Rooms whose last run is kept for the next to start from (the least
#: recently written forgotten first).
_SETTLED_RUNS_KEPT: Final = 64


# --- Signatures and hashes ------------------------------------------------------


class EventVerifier:
    """Steps 2 and 3 of the checks on receipt, for a batch of events, as
    :mod:`ranvier.core.event_signatures` defines them: the signatures an
    event needs, checked over its redacted form with keys valid at its
    ``origin_server_ts``; then its content hash.

    :meth:`verify_each` checks a batch ``chunk_size`` events at a time on
    up to ``threads`` worker threads (at most that many at once across every
    batch), and gives each event's verdict as soon as its chunk is checked,
    so that the caller can go on with the first events while later ones are
    checked. With an ``offload`` (the server's signature process), big
    batches are checked there instead, and threads serve when it cannot.
    """

    def __init__(
        self,
        keys: VerifyKeySource,
        *,
        threads: int = 2,
        chunk_size: int = 8,
        offload: SignatureOffload | None = None,
    ) -> None:
        if threads < 1 or chunk_size < 1:
            raise ValueError("an event verifier needs at least one thread and one event a chunk")
        self._keys = keys
        self._offload = offload
        self._threads = threads
        self._limiter = trio.CapacityLimiter(threads)
        self._chunk_size = chunk_size

    async def verify(self, events: Sequence[Pdu]) -> list[Pdu | MatrixError]:
        """For each event: the event to go on with (its redacted copy when
        the content hash does not match), or why it is dropped.
        """
        failures = await check_event_signatures(events, self._keys, offload=self._offload)
        return [_after_signatures(event, failures.get(event.event_id)) for event in events]

    async def verify_each(self, events: Sequence[Pdu], verdicts: Sequence[Verdict]) -> None:
        """Give each event's verdict (as :meth:`verify` has it) to the
        :class:`Verdict` in the same place, chunk by chunk in event order.

        Each worker thread takes every ``threads``-th chunk and hands each
        chunk's verdicts back as soon as it is checked, with
        ``TrioToken.run_sync_soon``, which does not wait for the event loop:
        a thread goes on to its next chunk even while the loop is busy
        judging the events already checked.
        """
        checks = await find_signature_checks(events, self._keys)
        starts = range(0, len(checks), self._chunk_size)
        token = trio.lowlevel.current_trio_token()

        def give(given: list[tuple[int, Pdu | MatrixError]]) -> None:
            for index, verdict in given:
                verdicts[index].give(verdict)

        def check_chunks(lane_starts: Sequence[int]) -> None:
            for start in lane_starts:
                chunk = checks[start : start + self._chunk_size]
                failures = run_signature_checks(chunk)
                given = [
                    (
                        start + offset,
                        _after_signatures(check.event, failures.get(check.event.event_id)),
                    )
                    for offset, check in enumerate(chunk)
                ]
                token.run_sync_soon(give, given)

        async with trio.open_nursery() as nursery:
            for lane in range(self._threads):
                if starts[lane :: self._threads]:
                    nursery.start_soon(
                        functools.partial(
                            trio.to_thread.run_sync,
                            check_chunks,
                            starts[lane :: self._threads],
                            limiter=self._limiter,
                        )
                    )

    @asynccontextmanager
    async def feed(self, expected: int = 0) -> AsyncIterator[VerificationFeed]:
        """A :class:`VerificationFeed` whose worker threads run in this
        block; :meth:`~VerificationFeed.finish` lets them end once they
        have checked every event added. ``expected`` is how many events
        will be added: more than :data:`THREAD_THRESHOLD` go to the
        offload, if there is one.
        """
        offload = self._offload if expected > THREAD_THRESHOLD else None
        try:
            async with trio.open_nursery() as nursery:
                feed = VerificationFeed(self, nursery, offload=offload)
                try:
                    yield feed
                finally:
                    feed.close()
        finally:
            # Answers coming later start nothing in the closed nursery.
            feed.ended = True


class VerificationFeed:
    """Events handed in one by one as they are parsed, their signatures
    checked a chunk at a time on worker threads while later ones are still
    being parsed; each event's verdict is given as soon as its chunk is checked.

    Get one from :meth:`EventVerifier.feed`. A thread is started for each
    of the first chunks, up to the verifier's ``threads``; they take chunks
    from a queue in turn and give the verdicts back with
    ``TrioToken.run_sync_soon``, which does not wait for the event loop.

    A task waiting for a verdict not yet given checks the chunks still
    queued itself, one at a time with a checkpoint after each, rather than
    wait: a thread needs the GIL back after each signature, which a busy
    event loop gives up only every switch interval, so on a loaded machine
    the threads can fall far behind the loop that waits for them.

    With an ``offload``, each chunk is handed to it as soon as it is full,
    and no thread is started. Its verdicts are given by the task that reads
    the offload's answer, as it reads it, rather than by a task of the
    feed's waiting for it: a task a chunk, started and woken, costs the
    event loop several turns each, which a transaction waits for. Only a
    chunk the offload could not check has a task, which checks it in a
    thread.
    """

    def __init__(
        self,
        verifier: EventVerifier,
        nursery: trio.Nursery,
        *,
        offload: SignatureOffload | None = None,
    ) -> None:
        self._verifier = verifier
        self._nursery = nursery
        self._offload = offload
        self._token = trio.lowlevel.current_trio_token()
        self._queue: queue.SimpleQueue[tuple[list[SignatureCheck], list[Verdict]] | None] = (
            queue.SimpleQueue()
        )
        self._pending: list[tuple[Pdu, Verdict]] = []
        self._lanes = 0
        self._closed = False
        #: Set once the feed's block is left: nothing waits for verdicts then.
        self.ended = False

    async def add(self, event: Pdu) -> Verdict:
        """Queue ``event``'s checks; its verdict comes in what this returns."""
        verdict = Verdict(helper=None if self._offload is not None else self)
        self._pending.append((event, verdict))
        if len(self._pending) >= self._verifier._chunk_size:
            await self._send()
        return verdict

    async def finish(self) -> None:
        """Queue the last events and let the threads end after them."""
        if self._pending:
            await self._send()
        self.close()

    async def _send(self) -> None:
        if self._closed:
            raise RuntimeError("events added to a finished verification feed")
        items, self._pending = self._pending, []
        checks = await find_signature_checks([event for event, _ in items], self._verifier._keys)
        if self._offload is not None:
            # Handed over now, to be checked while later events are parsed.
            sent = await handed_over(checks, self._offload)
            verdicts = [verdict for _, verdict in items]
            if sent is None:
                self._nursery.start_soon(self._give_checked_in_thread, checks, verdicts)
            else:
                sent.when_checked(functools.partial(self._give_answer, checks, verdicts))
            return
        self._queue.put((checks, [verdict for _, verdict in items]))
        if self._lanes < self._verifier._threads:
            self._lanes += 1
            self._nursery.start_soon(
                functools.partial(
                    trio.to_thread.run_sync, self._lane, limiter=self._verifier._limiter
                )
            )

    def _give_answer(
        self,
        checks: Sequence[SignatureCheck],
        verdicts: Sequence[Verdict],
        failures: dict[str, InvalidSignatureError] | None,
    ) -> None:
        """The offload's answer for a chunk: None when it could not check it."""
        if failures is None:
            if not self.ended:
                self._nursery.start_soon(self._give_checked_in_thread, checks, verdicts)
            return
        for check, verdict in zip(checks, verdicts, strict=True):
            event = check.event
            try:
                value = _after_signatures(event, failures.get(event.event_id))
            except Exception:
                # Given on the offload's reader, which must go on reading.
                _log.exception("judging the signatures of %s failed", event.event_id)
                value = MatrixError(
                    f"{event.event_id}: its signatures could not be judged", http_status=500
                )
            verdict.give(value)

    @staticmethod
    async def _give_checked_in_thread(
        checks: Sequence[SignatureCheck], verdicts: Sequence[Verdict]
    ) -> None:
        _give_all(await trio.to_thread.run_sync(_check_chunk, checks, verdicts))

    def close(self) -> None:
        """Let the threads end once the queue is empty."""
        if not self._closed:
            self._closed = True
            for _ in range(self._lanes):
                self._queue.put(None)

    def check_queued_chunk(self) -> bool:
        """Check the next chunk still queued here, on this thread, and give
        its verdicts; False when none is left.
        """
        try:
            job = self._queue.get_nowait()
        except queue.Empty:
            return False
        if job is None:
            # Every chunk is taken: the threads' stop signal goes back.
            self._queue.put(None)
            return False
        _give_all(_check_chunk(*job))
        return True

    def _lane(self) -> None:
        while (job := self._queue.get()) is not None:
            self._token.run_sync_soon(_give_all, _check_chunk(*job))


def _check_chunk(
    checks: Sequence[SignatureCheck], verdicts: Sequence[Verdict]
) -> list[tuple[Verdict, Pdu | MatrixError]]:
    failures = run_signature_checks(checks)
    return [
        (verdict, _after_signatures(check.event, failures.get(check.event.event_id)))
        for check, verdict in zip(checks, verdicts, strict=True)
    ]


def _give_all(given: Sequence[tuple[Verdict, Pdu | MatrixError]]) -> None:
    for verdict, value in given:
        verdict.give(value)


def _after_signatures(event: Pdu, failure: MatrixError | None) -> Pdu | MatrixError:
    """Why an event whose signature check failed is dropped; else the event
    to go on with, redacted if its content hash does not match.
    """
    if failure is not None:
        return failure
    checked = redacted_if_hash_mismatch(event)
    if checked is not event:
        _log.info("%s: content hash does not match; kept redacted", event.event_id)
    return checked


class Verdict:
    """What the signature and hash checks made of one event, once they are done."""

    __slots__ = ("_done", "_helper", "_value")

    def __init__(self, *, helper: VerificationFeed | None = None) -> None:
        self._value: Pdu | MatrixError | None = None
        self._done = trio.Event()
        #: Where queued checks can be taken from while waiting.
        self._helper = helper

    def give(self, value: Pdu | MatrixError) -> None:
        self._value = value
        self._done.set()

    async def get(self) -> Pdu | MatrixError:
        """The event to go on with, or why it is dropped; waits until known,
        checking queued chunks of its feed meanwhile.
        """
        while self._value is None and self._helper is not None:
            if not self._helper.check_queued_chunk():
                break
            await trio.lowlevel.checkpoint()
        if self._value is None:
            await self._done.wait()
        assert self._value is not None
        return self._value


def _domain(user_id: str) -> str:
    return user_id.partition(":")[2]


# --- Per-room ordering ------------------------------------------------------------


class RoomLocks:
    """One lock per room, held while an event of the room, or a run of its
    events, is handled.

    Local event creation and ingestion must share one, so that a room's
    forward extremities do not move between an event's context and its
    write. A room's lock exists only while someone holds or waits for it.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, room_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(room_id, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[room_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[room_id]
            if users == 1:
                del self._locks[room_id]
            else:
                self._locks[room_id] = (lock, users - 1)

    def __len__(self) -> int:
        """How many rooms have a lock held or waited for."""
        return len(self._locks)


# --- Results --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What became of an event that was written (or was already there)."""

    event_id: str
    #: The auth rule that rejected it; None when it was not rejected.
    rejected_reason: str | None = None
    soft_failed: bool = False
    #: The event was stored before it arrived this time; nothing was written.
    already_known: bool = False
    #: The auth check that failed, when one did this time.
    failure: AuthFailure | None = None
    #: The context it was written with; None when it was already known.
    context: EventContext | None = None

    @property
    def error(self) -> MatrixError | None:
        """What to tell the sender: why the event was rejected, if it was."""
        if self.rejected_reason is None:
            return None
        if self.failure is not None:
            return self.failure.error
        return AuthError(f"{self.event_id} was rejected", rule=self.rejected_reason)


@dataclass(frozen=True, slots=True)
class PduOutcome:
    """One PDU of a transaction: its event ID (None when it could not be
    worked out) and either what was written or why nothing was.
    """

    event_id: str | None
    result: IngestResult | None = None
    error: MatrixError | None = None


@dataclass(eq=False, slots=True)
class TransactionAnswer:
    """The answer to the transaction that brought a batch of PDUs, for
    :meth:`FederationIngester.receive_pdus` to record in the commit of the
    PDUs' last write where it can.

    ``record`` makes the record from the outcomes of all the PDUs, as
    ``receive_pdus`` returns them. ``recorded`` is the record written, once
    it is; while it is None, the caller records the answer itself.
    """

    record: Callable[[Sequence[PduOutcome]], ReceivedTransaction]
    recorded: ReceivedTransaction | None = None


@dataclass(frozen=True, slots=True)
class _Sealing:
    """A transaction's answer as one room's run may record it: the outcomes
    known before the room's (by the index of their PDU), and where the
    room's PDUs stand among them.
    """

    answer: TransactionAnswer
    known: Sequence[PduOutcome | None]
    indices: Sequence[int]

    def record(self, room_outcomes: Sequence[PduOutcome]) -> ReceivedTransaction:
        outcomes = list(self.known)
        for index, outcome in zip(self.indices, room_outcomes, strict=True):
            outcomes[index] = outcome
        return self.answer.record([outcome for outcome in outcomes if outcome is not None])


# --- Ingestion --------------------------------------------------------------------

#: A pushed event as parsed, and what its signature check leaves of it, once
#: done: the event to go on with (its redacted copy if its content hash did
#: not match), or why it is dropped.
_Checked: TypeAlias = tuple[Pdu, Verdict]


class _GapError(MatrixError):
    """The state at a gap in the room's history could not be had."""

    errcode = "M_UNKNOWN"
    http_status = 502


class FederationIngester:
    """Takes events from other servers into rooms we are in.

    ``store`` and ``persister`` are storage (or a worker's client of it),
    ``client`` reaches the server that sent an event for what it left out,
    and ``verifier`` checks signatures. ``room_locks`` is shared with local
    event creation. ``missing_events_limit`` is how many events one
    ``get_missing_events`` asks for; ``max_fetched_events`` bounds the events
    fetched to fill one gap; ``fetch_concurrency`` how many are fetched at
    once. ``run_reader``, when given, reads what a run of pushed events
    starts from in one read. ``out_of_band`` takes the leaves and bans
    answering our users' invites and knocks in rooms we are not in.
    ``answers``, which must write where ``persister`` does, records the
    answers to transactions with their events (see :meth:`receive_pdus`).
    """

    def __init__(
        self,
        *,
        store: BatchStateReader,
        persister: EventPersister,
        client: FederationEventClient,
        verifier: EventVerifier,
        room_locks: RoomLocks | None = None,
        missing_events_limit: int = 10,
        max_fetched_events: int = 50_000,
        fetch_concurrency: int = 10,
        run_reader: RoomRunReader | None = None,
        out_of_band: OutOfBandMemberships | None = None,
        answers: AnsweringPersister | None = None,
    ) -> None:
        self._store = store
        self._answers = answers
        #: Takes the answers to our users' invites and knocks in rooms we
        #: are not in (:mod:`ranvier.core.out_of_band`); None takes none.
        self.out_of_band = out_of_band
        self._run_reader = run_reader
        self._persister = persister
        self._client = client
        self._verifier = verifier
        self.room_locks = room_locks if room_locks is not None else RoomLocks()
        self._missing_events_limit = missing_events_limit
        self._max_fetched_events = max_fetched_events
        self._fetch_concurrency = fetch_concurrency
        self._versions: dict[str, str] = {}
        # By room, the run its last run's write left (RoomRun.settled), for
        # the next run of the room to start from without reading; touched
        # under the room's lock only.
        self._settled: dict[str, RoomRun] = {}
        #: The policy server checks (:mod:`ranvier.core.policy_servers`):
        #: an event its room's policy server does not recommend is soft
        #: failed. None checks nothing; set by the server.
        self.policy_servers: PolicyServers | None = None

    # Pushed events

    async def receive_pdus(
        self, origin: str, pdus: Sequence[bytes], *, answer: TransactionAnswer | None = None
    ) -> list[PduOutcome]:
        """Handle the PDUs of one transaction from ``origin``, in order per
        room and rooms concurrently; one outcome per PDU, in their order.

        With ``answer`` and ``answers``, the transaction's answer is recorded
        in the commit of its PDUs' write when one write takes them all: they
        are of one room, and judged in one run. Otherwise, or when that
        write is refused, ``answer.recorded`` stays None.
        """
        outcomes: list[PduOutcome | None] = [None] * len(pdus)
        by_room: dict[str, list[tuple[int, _Checked]]] = {}
        versions: dict[str, str | None] = {}

        async def handle_room(items: list[tuple[int, _Checked]]) -> None:
            sealing = None
            if answer is not None and self._answers is not None and len(by_room) == 1:
                sealing = _Sealing(answer, list(outcomes), [index for index, _ in items])
            room_outcomes = await self._handle_room(
                origin, [item for _, item in items], sealing=sealing
            )
            for (index, _), outcome in zip(items, room_outcomes, strict=True):
                outcomes[index] = outcome

        try:
            # Signatures are checked on worker threads while later PDUs are parsed.
            async with self._verifier.feed(len(pdus)) as feed:
                for index, raw in enumerate(pdus):
                    event_id, event = await self._parse(raw, versions)
                    if isinstance(event, MatrixError):
                        outcomes[index] = PduOutcome(event_id, error=event)
                    else:
                        verdict = await feed.add(event)
                        by_room.setdefault(event.room_id, []).append((index, (event, verdict)))
                await feed.finish()
                if len(by_room) == 1:
                    # Nearly every transaction: its room needs no task of its own.
                    (items,) = by_room.values()
                    await handle_room(items)
                else:
                    async with trio.open_nursery() as nursery:
                        for items in by_room.values():
                            nursery.start_soon(handle_room, items)
        except BaseExceptionGroup as group:
            raise sole_failure(group) from None
        return [outcome for outcome in outcomes if outcome is not None]

    async def on_receive_pdu(self, origin: str, event: Pdu) -> IngestResult:
        """Handle one event pushed by ``origin``.

        Raises :class:`~ranvier.errors.MatrixError` when the event is
        dropped or refused and nothing of it was written.
        """
        await self._check_room_known(event)
        (verdict,) = await self._verifier.verify([event])
        if isinstance(verdict, MatrixError):
            raise verdict
        async with self.room_locks.hold(verdict.room_id):
            if self.out_of_band is not None and await self.out_of_band.take(origin, verdict):
                return IngestResult(verdict.event_id)
            return await self._handle_pushed(origin, verdict)

    # Pulled events

    async def on_pulled_events(self, origin: str, events: Sequence[Pdu]) -> list[PduOutcome]:
        """Handle events we asked ``origin`` for (backfill, missing events),
        oldest first; one outcome per event, in depth order.
        """
        return await self._verify_and_handle_pulled(origin, events, None)

    async def on_backfilled_events(
        self, origin: str, events: Sequence[Pdu], write: BackfillWrite
    ) -> list[PduOutcome]:
        """Handle events ``origin`` gave from before the room's history here
        (``/backfill``), oldest first, each written with ``write``, which
        places it before everything held and moves neither the forward
        extremities nor current state (see :mod:`ranvier.storage.backfill`).

        They are checked as pulled events are, gaps filled from ``origin``,
        except against the current state: an old event is judged where it
        stands in the DAG, and today's state would soft fail much of any
        room's history. The room's own ``m.room.create`` event, held as an
        outlier since the join, takes its place in the DAG too.
        """
        return await self._verify_and_handle_pulled(origin, events, write)

    async def _verify_and_handle_pulled(
        self, origin: str, events: Sequence[Pdu], backfill: BackfillWrite | None
    ) -> list[PduOutcome]:
        """Pulled events' signatures and hashes checked together, then each
        room's handled under its lock; refused events' outcomes first.
        """
        checked = await self._verifier.verify(events)
        outcomes: list[PduOutcome] = []
        by_room: dict[str, list[Pdu]] = {}
        for event, verdict in zip(events, checked, strict=True):
            if isinstance(verdict, MatrixError):
                outcomes.append(PduOutcome(event.event_id, error=verdict))
            else:
                by_room.setdefault(verdict.room_id, []).append(verdict)
        for room_id, room_events in by_room.items():
            async with self.room_locks.hold(room_id):
                outcomes.extend(await self._handle_pulled(origin, room_events, backfill=backfill))
        return outcomes

    # The steps

    async def _room_version(self, room_id: str) -> str | None:
        """A room's version, read once: it never changes while the room is known."""
        version = self._versions.get(room_id)
        if version is None:
            version = await self._store.get_room_version(room_id)
            if version is not None:
                if len(self._versions) >= _VERSIONS_REMEMBERED:
                    self._versions.clear()
                self._versions[room_id] = version
        return version

    async def _check_still_stored(self, room_id: str) -> None:
        """Before asking another server for more of a room: the room read
        afresh, not from the versions remembered, so that a room purged
        since is not fetched into (storage would refuse what came back).
        """
        if await self._store.get_room_version(room_id) is None:
            self._versions.pop(room_id, None)
            raise RoomGoneError(room_id)

    async def _check_room_known(self, event: Pdu) -> None:
        version = await self._room_version(event.room_id)
        if version is None:
            raise _not_in_room(event.room_id)
        if version != event.room_version.identifier:
            raise BadJsonError(
                f"{event.event_id} was read as an event of room version"
                f" {event.room_version.identifier}, but {event.room_id} is of version {version}"
            )

    async def _parse(
        self, raw: bytes, versions: dict[str, str | None]
    ) -> tuple[str | None, Pdu | MatrixError]:
        """The PDU as an event of its room's version, or why it is dropped.

        ``versions`` holds the room versions of one transaction, so that a
        room unknown here is looked for once. The event ID is worked out
        even for an event that fails the format checks, so the sender can
        be told which of its PDUs failed. For a room not known here, the
        version is guessed from the room ID's shape (a version 12 ID, or an
        older one).
        """
        room_id = pdu_room_id(raw)
        if room_id is None:
            try:
                obj = decode_untrusted_json(raw)
            except msgspec.DecodeError as exc:
                return None, BadJsonError(f"a PDU is not valid JSON: {exc}")
            if type(obj) is not dict:
                return None, BadJsonError("a PDU is not a JSON object")
            return None, BadJsonError("a PDU has no room_id")
        if room_id not in versions:
            versions[room_id] = await self._room_version(room_id)
        version = versions[room_id]
        try:
            rv = get_room_version(version if version is not None else _guess_version(room_id))
        except MatrixError as exc:  # a room of a version no longer supported
            return None, exc
        error: MatrixError
        if version is None:
            error = _not_in_room(room_id)
        else:
            try:
                return None, Pdu.from_json(raw, rv)
            except MatrixError as exc:
                error = exc
        try:
            obj = decode_untrusted_json(raw)
        except msgspec.DecodeError:
            return None, error
        try:
            event_id: str | None = compute_event_id(obj, rv)
        except MatrixError:
            event_id = None
        return event_id, error

    async def _handle_room(
        self, origin: str, items: Sequence[_Checked], *, sealing: _Sealing | None = None
    ) -> list[PduOutcome]:
        """One room's pushed events, in order, under the room's lock.

        Their signatures are being checked a chunk at a time in worker
        threads while the first run reads what storage holds of them and
        the first events are judged: each event waits only for its own
        chunk's verdict. They are taken in runs
        (:class:`~ranvier.core.ingest_batch.RoomRun`), each judged in memory
        and written at once; an event that needs something fetched first
        (a gap before it, auth events we lack) ends the run and is taken
        alone, and the next run starts after it. With ``sealing``, a first
        run that takes every item records the transaction's answer.
        """
        outcomes: list[PduOutcome] = []
        if not items:
            return outcomes
        async with self.room_locks.hold(items[0][0].room_id):
            if await self._out_of_band_room(items):
                return [await self._out_of_band_outcome(origin, item) for item in items]
            run = self._settled.pop(items[0][0].room_id, None)
            if run is None or not run.assume_new([event for event, _ in items]):
                run = await self._loaded_run(items)
            rest = list(items)
            while rest:
                taken, rest = await self._take_run(
                    origin, rest, run, sealing=None if outcomes else sealing
                )
                run = None
                outcomes.extend(taken)
                if rest:
                    outcomes.append(await self._alone(origin, rest[0]))
                    rest = rest[1:]
        return outcomes

    async def _out_of_band_room(self, items: Sequence[_Checked]) -> bool:
        """Whether ``items`` hold an answer to an invite or a knock of ours
        and are of a room not joined here (read only when they do).
        """
        oob = self.out_of_band
        return (
            oob is not None
            and any(oob.may_answer(event) for event, _ in items)
            and await oob.room_not_here(items[0][0].room_id)
        )

    async def _out_of_band_outcome(self, origin: str, item: _Checked) -> PduOutcome:
        """A pushed event of a room we are not in: kept if it answers an
        invite or a knock of ours, refused if it meets one and does not
        answer it, else taken (and refused) as ever.
        """
        event, pending = item
        checked = await pending.get()
        if isinstance(checked, MatrixError):
            return PduOutcome(event.event_id, error=checked)
        assert self.out_of_band is not None
        try:
            taken = await self.out_of_band.take(origin, checked)
        except StorageUnavailableError:
            raise
        except MatrixError as exc:
            return PduOutcome(checked.event_id, error=exc)
        if taken:
            return PduOutcome(checked.event_id, result=IngestResult(checked.event_id))
        return await self._pushed_outcome(origin, checked)

    async def _loaded_run(self, items: Sequence[_Checked]) -> RoomRun:
        """A run over the room of ``items``, having read what they need."""
        first = items[0][0]
        run = RoomRun(
            self._store,
            self._persister,
            first.room_id,
            first.room_version,
            run_reader=self._run_reader,
            answers=self._answers,
        )
        await run.load([event for event, _ in items])
        return run

    async def _take_run(
        self,
        origin: str,
        items: Sequence[_Checked],
        run: RoomRun | None,
        *,
        sealing: _Sealing | None = None,
    ) -> tuple[list[PduOutcome], list[_Checked]]:
        """Judge the longest run of ``items`` that needs nothing fetched,
        write it, and give its outcomes and the items after it. ``run`` is
        one that read the items already, if any. With ``sealing``, a run
        that takes every item writes the transaction's answer with it.

        When the room's partial state is cleared under the write, the run
        is judged again with the state as it now is and written again,
        once; after a second conflict its events are taken one at a time.
        A run that read nothing (see :meth:`RoomRun.settled`) and finds the
        room changed under it is judged again by one that reads, and that
        is no attempt. A run that takes every item is kept, settled, for
        the room's next.
        """
        room_id = items[0][0].room_id
        conflicted = False
        while True:
            if run is None:
                run = await self._loaded_run(items)
            verdicts: list[IngestResult | MatrixError] = []
            for _, pending in items:
                checked = await pending.get()
                if isinstance(checked, MatrixError):
                    verdicts.append(checked)
                    continue
                try:
                    verdicts.append(await self._judge_in_run(origin, checked, run))
                except NotInMemoryError:
                    break
                except StorageUnavailableError:
                    raise
                except MatrixError as exc:
                    verdicts.append(exc)
            taken, rest = items[: len(verdicts)], list(items[len(verdicts) :])
            outcomes = [
                PduOutcome(event.event_id, error=verdict)
                if isinstance(verdict, MatrixError)
                else PduOutcome(event.event_id, result=verdict, error=verdict.error)
                for (event, _), verdict in zip(taken, verdicts, strict=True)
            ]
            # Made anew at each attempt: a second judges the run again.
            record = None if sealing is None or rest else sealing.record(outcomes)
            held = run.held
            try:
                answered = await run.write(answer=record)
            except StaleRunError as exc:
                _log.debug("%d events of %s: %s; reading the room", held, room_id, exc)
                run = None
                continue
            except RoomGoneError as exc:
                # Purged since it was read: nothing of the room is written.
                self._versions.pop(room_id, None)
                _log.info("dropped %d events of %s: %s", len(items), room_id, exc.message)
                return [PduOutcome(event.event_id, error=exc) for event, _ in items], []
            except PartialStateConflictError as exc:
                run = None
                if not conflicted:
                    conflicted = True
                    _log.info("%d events of %s: %s; judging them again", held, room_id, exc)
                    continue
                _log.warning(
                    "%d events of %s conflicted with partial state twice: %s; taking them"
                    " one at a time",
                    held,
                    room_id,
                    exc,
                )
                return [await self._alone(origin, item) for item in taken], rest
            if not rest:
                self._keep_settled(run)
            if answered:
                assert sealing is not None
                sealing.answer.recorded = record
            for (event, _), verdict in zip(taken, verdicts, strict=True):
                if isinstance(verdict, MatrixError):
                    _log.info("dropped %s from %s: %s", event.event_id, origin, verdict.message)
            return outcomes, rest

    def known_current_entry(self, room_id: str, key: StateKey) -> tuple[bool, str | None]:
        """The room's current state's entry for ``key`` as the room's last
        run left it, when nothing wrote the room since: ``(True, entry)``,
        the entry None where the state has none; ``(False, None)`` when
        storage must be read for it. Read without the room's lock: a run
        is changed only once taken from those kept, which this leaves.
        """
        run = self._settled.get(room_id)
        if run is None or not run.unchanged():
            return False, None
        return run.current_entry(key)

    def _keep_settled(self, run: RoomRun) -> None:
        settled = run.settled()
        if settled is None:
            return
        kept = self._settled
        kept.pop(run.room_id, None)
        if len(kept) >= _SETTLED_RUNS_KEPT:
            del kept[next(iter(kept))]
        kept[run.room_id] = settled

    async def _alone(self, origin: str, item: _Checked) -> PduOutcome:
        """A pushed event taken alone, or why its signature check dropped it."""
        event, pending = item
        checked = await pending.get()
        if isinstance(checked, MatrixError):
            return PduOutcome(event.event_id, error=checked)
        return await self._pushed_outcome(origin, checked)

    async def _judge_in_run(self, origin: str, event: Pdu, run: RoomRun) -> IngestResult:
        """:meth:`_handle_pushed` against ``run``: the event is held, not
        written. Raises :class:`NotInMemoryError` for an event that needs
        its auth events or the events before it fetched, and for one the
        run takes alone (:meth:`RoomRun.takes_alone`).
        """
        known, missing_auth = await self._first_look(event, run)
        if known is not None:
            return known
        _check_extends_room(event)
        if missing_auth:
            raise NotInMemoryError(f"{event.event_id} cites auth events not stored here")
        if run.takes_alone(event):
            raise NotInMemoryError(f"{event.event_id} is a redaction or a redaction names it")
        return await self._process(origin, event, pushed=True, run=run)

    async def _pushed_outcome(self, origin: str, event: Pdu) -> PduOutcome:
        """A pushed event taken alone, its room's lock held."""
        try:
            result = await self._handle_pushed(origin, event)
        except StorageUnavailableError:
            raise
        except MatrixError as exc:
            if isinstance(exc, RoomGoneError):
                self._versions.pop(exc.room_id, None)
            _log.info("dropped %s from %s: %s", event.event_id, origin, exc.message)
            return PduOutcome(event.event_id, error=exc)
        return PduOutcome(event.event_id, result=result, error=result.error)

    async def _handle_pushed(self, origin: str, event: Pdu) -> IngestResult:
        known, missing_auth = await self._first_look(event, self._store)
        if known is not None:
            return known
        _check_extends_room(event)
        if missing_auth:
            await self._fetch_outliers(origin, event.room_id, event.room_version, missing_auth)
        return await self._process(origin, event, pushed=True)

    async def _handle_pulled(
        self, origin: str, events: Sequence[Pdu], *, backfill: BackfillWrite | None = None
    ) -> list[PduOutcome]:
        outcomes = []
        for event in sorted(events, key=lambda pulled: pulled.depth):
            try:
                result, missing_auth = await self._first_look(event, self._store)
                if result is None:
                    if backfill is None or not await self._is_stored_create(event):
                        _check_extends_room(event)
                    if missing_auth:
                        await self._fetch_outliers(
                            origin, event.room_id, event.room_version, missing_auth, write=backfill
                        )
                    result = await self._process(origin, event, pushed=False, backfill=backfill)
            except StorageUnavailableError:
                raise
            except MatrixError as exc:
                _log.info("dropped pulled event %s: %s", event.event_id, exc.message)
                outcomes.append(PduOutcome(event.event_id, error=exc))
                continue
            outcomes.append(PduOutcome(event.event_id, result=result, error=result.error))
        return outcomes

    async def _is_stored_create(self, event: Pdu) -> bool:
        """Whether ``event`` is the room's create event as held here (an
        outlier from the join, for a room joined over federation).
        """
        if event.type != CREATE_KEY[0] or event.state_key != CREATE_KEY[1]:
            return False
        return event.event_id in await self._store.get_events([event.event_id])

    async def _first_look(
        self, event: Pdu, store: StateReader
    ) -> tuple[IngestResult | None, set[str]]:
        """What is known of ``event`` here, in one read: the event itself
        when it is in the room's DAG already, else the auth events it cites
        that are not stored.

        An event whose prev events include one stored here as an event of
        another room is refused: it could never be placed in its room's
        DAG, and the state after that prev event is the other room's.
        """
        auth_ids = set(event.auth_event_ids)
        if event.room_version.room_id_from_create_event and event.type != CREATE_KEY[0]:
            auth_ids.add(create_event_id_for_room(event.room_id))
        prev_ids = set(event.prev_event_ids)
        stored = await store.get_events([event.event_id, *auth_ids, *prev_ids])
        row = stored.get(event.event_id)
        if row is not None and not row.outlier:
            known = IngestResult(
                event.event_id,
                rejected_reason=row.rejected_reason,
                soft_failed=row.soft_failed,
                already_known=True,
            )
            return known, set()
        for prev_id in sorted(prev_ids):
            prev = stored.get(prev_id)
            if prev is not None and prev.room_id != event.room_id:
                raise BadJsonError(
                    f"{event.event_id} of {event.room_id} follows {prev_id}, an event of"
                    f" {prev.room_id}: prev_events must be events of the same room"
                )
        return None, auth_ids.difference(stored)

    async def _context(
        self,
        origin: str,
        event: Pdu,
        *,
        pushed: bool,
        run: RoomRun | None = None,
        backfill: BackfillWrite | None = None,
    ) -> EventContext:
        """The event's context, its gaps filled first: for a pushed event,
        the missing events are asked of the origin; if prev events are still
        without state here, the state at them is. In a run, a gap is not
        filled: the event is taken alone instead (:class:`NotInMemoryError`).
        """
        state_before: dict[StateKey, str] | None = None
        ask_for_missing = pushed
        while True:
            try:
                # Of a room known here: a purge meanwhile is not undone.
                if run is not None:
                    return await compute_event_context(event, run, run, known_room=True)
                return await compute_event_context(
                    event,
                    self._store,
                    self._persister,
                    state_ids_before=state_before,
                    known_room=True,
                )
            except UnknownPrevStateError as gap:
                if run is not None:
                    raise NotInMemoryError(gap.message) from gap
                if ask_for_missing:
                    ask_for_missing = False
                    await self._fetch_missing_events(origin, event)
                    continue
                missing = sorted(gap.prev_event_ids)
                state_before = await self._state_at_gap(origin, event, missing, write=backfill)

    async def _process(
        self,
        origin: str,
        event: Pdu,
        *,
        pushed: bool,
        run: RoomRun | None = None,
        backfill: BackfillWrite | None = None,
    ) -> IngestResult:
        """Context, auth checks, write: the part every event in the DAG goes
        through; in a run, against the run and held by it; backfilled, not
        checked against the current state and written with ``backfill``.
        """
        store: StateReader = self._store if run is None else run
        persister: EventPersister = self._persister if run is None else run
        recommended: Pdu | None = None
        policy_checked = False
        for attempt in (1, 2):
            context = await self._context(
                origin, event, pushed=pushed and attempt == 1, run=run, backfill=backfill
            )
            loader = EventLoader(store, event.room_version) if run is None else run.loader
            outcome = await _run_auth_checks(
                event,
                context,
                store,
                loader,
                None if run is None else run.auth_verdicts,
                current_state=backfill is None,
            )
            if pushed:
                await self._check_origin_in_room(
                    origin, event, outcome.context, outcome.failure, store
                )
            if backfill is None and outcome.context.accepted and self.policy_servers is not None:
                # Step 7 of the checks on receipt (v1.18): after the auth
                # rules, and only for an event they let into current state.
                if not policy_checked:
                    recommended = await self.policy_servers.recommended(event, store)
                    policy_checked = True
                if recommended is not None:
                    event = recommended
                else:
                    _log.info(
                        "%s from %s is not recommended by its room's policy server: soft failed",
                        event.event_id,
                        origin,
                    )
                    outcome = AuthOutcome(outcome.context.as_soft_failed(), outcome.failure)
            try:
                if backfill is not None:
                    await backfill([event_to_persist(event, outcome.context)])
                else:
                    current = await compute_current_state_after(
                        event, outcome.context, store, persister
                    )
                    await persister.persist_events(
                        [event_to_persist(event, outcome.context)],
                        current_state_groups=None if current is None else {event.room_id: current},
                    )
            except PartialStateConflictError as exc:
                if attempt == 2:
                    _log.warning("%s conflicted with partial state twice: %s", event.event_id, exc)
                    raise MatrixError(
                        f"{event.event_id} could not be written: its room's partial state"
                        " changed under it twice",
                        errcode="M_UNKNOWN",
                        http_status=503,
                    ) from exc
                _log.info("%s: %s; computing its context again", event.event_id, exc)
                continue
            if run is not None:
                run.add_to_loader(event)
            if outcome.failure is not None:
                _log.info(
                    "%s from %s failed the auth rules at %s: %s",
                    event.event_id,
                    origin,
                    outcome.failure.point.value,
                    outcome.failure.error.message,
                )
            return IngestResult(
                event.event_id,
                rejected_reason=outcome.context.rejected_reason,
                soft_failed=outcome.context.soft_failed,
                failure=outcome.failure,
                context=outcome.context,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _check_origin_in_room(
        self,
        origin: str,
        event: Pdu,
        context: EventContext,
        failure: AuthFailure | None,
        store: StateReader,
    ) -> None:
        """Refuse an event pushed by a server with no joined member in the
        state before it.

        An event of one of the origin's own users that passes the first two
        auth checks shows the origin is in the room (the rules admit only
        members' events, and the joins that make members). Partial state
        may lack the origin's members, so it cannot tell; the event is then
        let through.
        """
        passed = failure is None or failure.point is AuthPoint.CURRENT_STATE
        if passed and _domain(event.sender) == origin:
            return
        if context.partial_state:
            return
        state = await context.get_state_before(store)
        candidates = [
            event_id
            for (event_type, state_key), event_id in state.items()
            if event_type == _MEMBER and _domain(state_key) == origin
        ]
        for start in range(0, len(candidates), _MEMBER_BATCH):
            stored = await store.get_events(candidates[start : start + _MEMBER_BATCH])
            if any(_is_join(row) for row in stored.values()):
                return
        raise MatrixError(
            f"{origin} has no member in {event.room_id} at {event.event_id}",
            errcode="M_FORBIDDEN",
            http_status=403,
        )

    # Filling gaps

    async def _fetch_missing_events(self, origin: str, event: Pdu) -> None:
        """Ask ``origin`` for the events between ours and ``event``, and take
        in those it gives, oldest first. Failures leave the gap to
        :meth:`_state_at_gap`.

        Only events as deep as the room's DAG here are asked for and taken:
        when the origin does not have our forward extremities yet (our own
        events still on their way to it), its walk back from ``event``
        does not stop at them, and would go on into the room's history
        before our join. What stays missing is left to
        :meth:`_state_at_gap` too.
        """
        min_depth = await self._store.get_min_depth(event.room_id)
        if min_depth is None:
            # No DAG here to fill a gap up to: all of it would be history
            # from before us.
            _log.info(
                "%s has no events in its DAG here; not asking for missing ones", event.room_id
            )
            return
        extremities = sorted(await self._store.get_forward_extremities(event.room_id))
        try:
            raws = await self._client.get_missing_events(
                origin,
                event.room_id,
                earliest_events=extremities,
                latest_events=[event.event_id],
                limit=self._missing_events_limit,
                min_depth=min_depth,
            )
        except MatrixError as exc:
            _log.info("get_missing_events for %s from %s failed: %s", event.event_id, origin, exc)
            return
        pulled = []
        too_old = 0
        for raw in raws:
            try:
                candidate = Pdu.from_json(raw, event.room_version)
            except MatrixError as exc:
                _log.info("ignoring a missing event from %s: %s", origin, exc.message)
                continue
            if candidate.room_id != event.room_id or candidate.event_id == event.event_id:
                continue
            if candidate.depth < min_depth:
                too_old += 1
                continue
            pulled.append(candidate)
        if too_old:
            _log.info(
                "ignoring %d missing events from %s below depth %d, older than %s's DAG here",
                too_old,
                origin,
                min_depth,
                event.room_id,
            )
        checked = await self._verifier.verify(pulled)
        verified = [verdict for verdict in checked if isinstance(verdict, Pdu)]
        await self._handle_pulled(origin, verified)

    async def _state_at_gap(
        self,
        origin: str,
        event: Pdu,
        missing: Sequence[str],
        *,
        write: BackfillWrite | None = None,
    ) -> dict[StateKey, str]:
        """The state before ``event`` when the state after some of its prev
        events is not known here: the state after each of those from
        ``origin``, resolved with the state after the others.
        """
        await self._check_still_stored(event.room_id)
        states: list[Mapping[StateKey, str]] = []
        for prev_id in event.prev_event_ids:
            if prev_id in missing:
                continue
            groups = await self._store.get_event_state_groups(prev_id)
            if groups is not None:
                states.append(await self._store.get_state_ids(groups.after))
        for prev_id in missing:
            states.append(await self._remote_state_after(origin, event, prev_id, write=write))
        if len(states) == 1:
            return dict(states[0])
        return await resolve_state_maps(self._store, event.room_id, event.room_version, states)

    async def _remote_state_after(
        self, origin: str, event: Pdu, prev_id: str, *, write: BackfillWrite | None = None
    ) -> dict[StateKey, str]:
        try:
            answer = await self._client.get_state_ids(origin, event.room_id, prev_id)
        except MatrixError as exc:
            raise _GapError(
                f"the state at {prev_id}, a prev event of {event.event_id}, could not be"
                f" fetched from {origin}: {exc.message}"
            ) from exc
        wanted = {prev_id, *answer.pdu_ids, *answer.auth_chain_ids}
        await self._fetch_outliers(origin, event.room_id, event.room_version, wanted, write=write)
        stored = await self._store.get_events(wanted)
        prev = stored.get(prev_id)
        if prev is None:
            raise _GapError(f"{prev_id}, a prev event of {event.event_id}, could not be fetched")
        state: dict[StateKey, str] = {}
        for state_id in answer.pdu_ids:
            row = stored.get(state_id)
            if row is None or row.state_key is None or row.room_id != event.room_id:
                _log.info("leaving %s out of the state at %s: not available", state_id, prev_id)
                continue
            if row.rejected_reason is not None:
                # A rejected event is never state, whoever lists it: one
                # whose auth chain could not be fetched is rejected here.
                _log.info(
                    "leaving %s out of the state at %s: rejected (%s)",
                    state_id,
                    prev_id,
                    row.rejected_reason,
                )
                continue
            state[(row.type, row.state_key)] = state_id
        # The answer is the state before the prev event; after it, the prev
        # event itself holds its key.
        if prev.state_key is not None and prev.rejected_reason is None:
            state[(prev.type, prev.state_key)] = prev_id
        return state

    async def _fetch_outliers(
        self,
        origin: str,
        room_id: str,
        room_version: RoomVersion,
        wanted: Collection[str],
        *,
        write: BackfillWrite | None = None,
    ) -> None:
        """Fetch the events of ``wanted`` not stored here, and the events
        their auth chains need; check them against their auth events and
        store them as outliers, auth events first: with ``write`` when they
        are fetched for backfilled events, which keeps them with those,
        before everything the room holds.
        """
        await self._check_still_stored(room_id)
        fetched: dict[str, Pdu] = {}
        level = set(wanted)
        while level:
            have = await self._store.get_events(level)
            todo = sorted(level.difference(have, fetched))
            if len(fetched) + len(todo) > self._max_fetched_events:
                raise _GapError(
                    f"filling a gap in {room_id} needs more than {self._max_fetched_events}"
                    " events from elsewhere"
                )
            new = await self._fetch_events(origin, room_id, room_version, todo)
            checked = await self._verifier.verify(list(new.values()))
            level = set()
            for verdict in checked:
                if isinstance(verdict, MatrixError):
                    _log.info("dropping an event fetched from %s: %s", origin, verdict.message)
                    continue
                fetched[verdict.event_id] = verdict
                level.update(verdict.auth_event_ids)
            level.difference_update(fetched)
        if not fetched:
            return
        loader = EventLoader(self._store, room_version)
        for outlier in fetched.values():
            loader.add(outlier)
        to_persist = []
        for outlier in auth_order(fetched):
            context = EventContext.for_outlier()
            failure = await check_against_auth_events(
                outlier, self._store, loader=loader, outlier=True
            )
            if failure is not None:
                loader.rejected.add(outlier.event_id)
                context = context.as_rejected(failure.rule)
            to_persist.append(event_to_persist(outlier, context))
        if write is not None:
            await write(to_persist)
        else:
            await self._persister.persist_events(to_persist)

    async def _fetch_events(
        self, origin: str, room_id: str, room_version: RoomVersion, event_ids: Sequence[str]
    ) -> dict[str, Pdu]:
        """Fetch events from ``origin`` a few at a time; those that cannot be
        had, or are not what was asked for, are left out.
        """
        found: dict[str, Pdu] = {}
        limiter = trio.CapacityLimiter(self._fetch_concurrency)

        async def fetch(event_id: str) -> None:
            async with limiter:
                try:
                    raw = await self._client.get_event(origin, event_id)
                    event = Pdu.from_json(raw, room_version)
                except MatrixError as exc:
                    _log.info("could not fetch %s from %s: %s", event_id, origin, exc.message)
                    return
            if event.event_id != event_id or event.room_id != room_id:
                _log.info("%s answered %s with another event", origin, event_id)
                return
            found[event_id] = event

        async with trio.open_nursery() as nursery:
            for event_id in event_ids:
                nursery.start_soon(fetch, event_id)
        return {event_id: found[event_id] for event_id in event_ids if event_id in found}


async def _run_auth_checks(
    event: Pdu,
    context: EventContext,
    store: StateReader,
    loader: EventLoader,
    verdicts: dict[AuthInputs, AuthFailure | None] | None = None,
    *,
    current_state: bool = True,
) -> AuthOutcome:
    """:func:`~ranvier.core.event_auth.run_auth_checks`, with events loaded
    through ``loader``: a run shares one, so that the events its events
    cite are read and parsed once. With ``verdicts``, the first two checks
    of an event that shares their inputs with one checked before
    (:func:`_auth_inputs`) take that event's verdict. Without
    ``current_state`` the third check (soft failing) is left out.
    """
    inputs = None if verdicts is None else _auth_inputs(event, context)
    if verdicts is not None and inputs is not None and inputs in verdicts:
        failure = verdicts[inputs]
    else:
        failure = await check_against_auth_events(
            event, store, loader=loader, outlier=context.is_outlier
        )
        if failure is None and not context.is_outlier:
            failure = await check_against_state_before(event, context, store, loader=loader)
        if verdicts is not None and inputs is not None:
            verdicts[inputs] = failure
    if failure is not None:
        return AuthOutcome(context.as_rejected(failure.rule), failure)
    if context.is_outlier or not current_state:
        return AuthOutcome(context)
    failure = await check_against_current_state(event, context, store, loader=loader)
    if failure is not None:
        return AuthOutcome(context.as_soft_failed(), failure)
    return AuthOutcome(context)


def _auth_inputs(event: Pdu, context: EventContext) -> AuthInputs | None:
    """What alone decides the first two auth checks of ``event``, when that
    is its type, sender, cited auth events and state group before; None
    otherwise.

    The rules for an event that is not a state event read of it only its
    type, sender and room (the run's), and which state keys its auth events
    may have follows from those too; the rest is read from its auth events,
    whether they were rejected (which never changes once they are judged),
    and the state before it, which a group fixes. Redactions are left out,
    and so are events with partial state, whose second check also weighs
    what their auth events claim.
    """
    if (
        event.state_key is not None
        or event.type == "m.room.redaction"
        or context.partial_state
        or context.state_group_before is None
    ):
        return None
    return (event.type, event.sender, event.auth_event_ids, context.state_group_before)


def _check_extends_room(event: Pdu) -> None:
    """Refuse an event that would start a room we know over instead of
    following its history.

    Only rooms known here are ingested, and such a room has its create
    event already; a second one (possible before v12, where the room ID
    does not name the create event) passes the auth rules on its own, and
    written in the DAG it would reset the room's state. An event with no
    prev events other than the create event is malformed in the same way.
    """
    if event.prev_event_ids:
        return
    if event.type == CREATE_KEY[0] and event.state_key == CREATE_KEY[1]:
        raise MatrixError(
            f"{event.room_id} already has its m.room.create event; {event.event_id} would"
            " start the room over",
            errcode="M_FORBIDDEN",
            http_status=403,
        )
    raise BadJsonError(
        f"{event.event_id} has no prev_events: only a room's m.room.create event may have none"
    )


def _not_in_room(room_id: str) -> MatrixError:
    return MatrixError(
        f"this server is not in room {room_id}", errcode="M_NOT_FOUND", http_status=404
    )


def _guess_version(room_id: str) -> str:
    """A room version for a room not known here, from its ID's shape: only
    to name its events in an answer.
    """
    return "12" if ":" not in room_id else "10"


def _is_join(row: StoredEvent) -> bool:
    if row.rejected_reason is not None:
        return False
    content = _membership_only(row.json)
    return content is not None and content.get("membership") == "join"


class _ContentOnly(msgspec.Struct):
    content: dict[str, Any] = {}


_decode_content = msgspec.json.Decoder(_ContentOnly).decode


def _membership_only(raw: bytes) -> dict[str, Any] | None:
    try:
        return _decode_content(raw).content
    except msgspec.DecodeError:
        return None


def auth_order(events: Mapping[str, Pdu]) -> list[Pdu]:
    """``events`` with every event after those of them it cites in
    ``auth_events``; ties broken by depth, then ID. Events pulled in bulk
    (gap fillers here, a resync's ``/state``) are stored in this order, so
    that each is judged once its auth events are in.
    """
    pending = {
        event_id: {auth_id for auth_id in event.auth_event_ids if auth_id in events}
        for event_id, event in events.items()
    }
    cited_by: dict[str, list[str]] = {}
    for event_id, needs in pending.items():
        for auth_id in needs:
            cited_by.setdefault(auth_id, []).append(event_id)
    ready = [(events[event_id].depth, event_id) for event_id, needs in pending.items() if not needs]
    heapq.heapify(ready)
    ordered: list[Pdu] = []
    while ready:
        _, event_id = heapq.heappop(ready)
        ordered.append(events[event_id])
        for child in cited_by.get(event_id, ()):
            needs = pending[child]
            needs.discard(event_id)
            if not needs:
                heapq.heappush(ready, (events[child].depth, child))
    # Reference hashes make cycles impossible; anything left would be one.
    seen = {event.event_id for event in ordered}
    ordered.extend(events[event_id] for event_id in sorted(events) if event_id not in seen)
    return ordered
