"""The un-partial-state task: rooms joined with partial state get their full state.

A join with partial state (MSC3706) is quick because the resident leaves
out the room's members. Until they are known here, the events of the room
(the join first) are written with state that may be wrong, and are marked
as having partial state. :class:`UnpartialStater` runs one task per such
room, beside event ingestion, that fetches the full state from the servers
in the room, redoes each marked event with it, and then clears the room's
partial state.

Invariants
----------

* **One task per room.** A room's task is registered before it starts and
  removed when it ends; :meth:`UnpartialStater.start_resync` on a room with
  a task only asks that task to look once more before it ends, so a room
  made partial again while its task was finishing is not left without one.
* **Servers in turn.** The server joined through is asked first, then the
  other servers the join found in the room, in name order; a server that
  fails or answers what does not check out
  (:class:`~ranvier.core.resync.RemoteStateError`) hands over to the next.
* **Oldest first, and only on full state.** The room's partial-state events
  are redone in the order they were written, and an event only once each of
  its prev events has full state here or has no state here at all. In the
  latter case (the join's prev events, an event after a gap) the state after
  it is fetched (``/state_ids`` gives the state before an event, so the
  event itself is added when it is a state event that state allows).
* **Redone as on receipt.** A redone event gets its context computed again
  and the auth checks against its auth events and its state before, which
  may reject an event accepted on partial state or accept one rejected on
  it. The check against current state is not run: current state is not
  full until the room's partial state is cleared.
* **Cleared under the room's lock.** Clearing the room's partial state
  takes the lock that every writer of the room's events holds
  (:class:`~ranvier.core.ingest.RoomLocks`); under it the task finds no
  partial-state event left, recomputes current state and clears. An event
  written with partial state before that is seen and redone first; one
  whose partial context was computed before and is written after fails
  with :class:`~ranvier.errors.PartialStateConflictError` and its writer
  computes it again. Storage refusing the clear
  (:class:`~ranvier.errors.PartialStateEventsRemainError`) sends the task
  round again.
* **Never silent, never busy.** When every server has failed, the task
  waits, twice as long each time up to ``backoff_max`` seconds, and tries
  again for as long as a user of this server is joined to the room; it
  stops when none is. Each step is logged and shown by
  :meth:`UnpartialStater.status`.
* **A purged room's task ends.** Storage refuses to bring a purged room
  back (:class:`~ranvier.errors.RoomGoneError`: the task's contexts are
  of a room known here), and finds no partial state to clear; either way
  the task ends at once, counted neither completed nor stopped, and
  nothing of the room is left to resume.
* **Progress is recorded, never waited for.** Given a
  :class:`ResyncProgressStore`, each room's progress is written there by a
  recorder task beside the room's task: at once when the phase, the server
  asked or the attempt changes, otherwise at most every
  ``progress_interval`` seconds and only after ``progress_every`` more
  events. The room's task only notes the change; it never waits on a write,
  except the last one when it stops for want of a local user. Writes of a
  room go one at a time, each of the newest snapshot, so a later one never
  lands before an earlier one. A room whose partial state is cleared loses
  its record with it (storage drops both in one transaction).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import msgspec
import trio

from ranvier.errors import MatrixError, PartialStateEventsRemainError, RoomGoneError
from ranvier.protocol.auth import CREATE_KEY, StateKey
from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import RoomVersion, get_room_version
from ranvier.storage.records import PartialStateRoom

from .context import compute_event_context
from .event_auth import run_auth_checks
from .ingest import EventVerifier, RoomLocks
from .interfaces import PartialStateStore, ResyncClient
from .resync import STATE_AHEAD_MIN, STATE_CHUNK, RemoteStateError, RemoteStateFetcher
from .state import changes_between, resolve_state_maps

__all__ = ["ResyncPhase", "ResyncProgressStore", "ResyncStatus", "UnpartialStater"]

_log: Final = logging.getLogger(__name__)

_MEMBER: Final = "m.room.member"
#: Progress is logged at least this often, in events redone.
_LOG_EVERY: Final = 1_000
#: A recorded error is cut to this many characters: it is for a status line.
_MAX_RECORDED_ERROR: Final = 500

#: What a room's task is doing: ``starting`` a round, looking at the room
#: (still partial? a user of ours still in it?) before it asks a server,
#: ``fetching`` the state from a server, ``walking`` the room's
#: partial-state events, ``clearing`` the room's partial state (waiting for
#: the room's lock, perhaps), ``waiting`` before trying every server again.
#: ``stopped`` when no user of this server is left in the room: the task
#: records it and ends, and the room leaves :meth:`UnpartialStater.status`.
ResyncPhase = Literal["starting", "fetching", "walking", "clearing", "waiting", "stopped"]


class ResyncProgressStore(Protocol):
    """Where each room's progress is recorded for other processes to read
    (``ranvier status``); :class:`ranvier.storage.Storage` is one.

    A record replaces the room's previous one. It is dropped, and False
    returned, when the room has no partial state (any more).
    """

    async def store_resync_progress(
        self,
        room_id: str,
        *,
        phase: str,
        server: str | None,
        events_resynced: int,
        events_total: int,
        attempts: int,
        last_error: str | None,
        updated_ts: int,
    ) -> bool: ...


class ResyncStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How far the resync of one room has come."""

    room_id: str
    phase: ResyncPhase
    #: The server asked now, or last.
    server: str | None
    #: Partial-state events redone with full state so far.
    events_resynced: int
    #: Those and the ones still to do, as last counted.
    events_total: int
    #: Rounds started; each asks the servers in turn until one serves.
    attempts: int
    #: Walks over the room's partial-state events; more than one when events
    #: arrived with partial state during the resync.
    passes: int
    last_error: str | None
    #: Seconds until the next round while ``waiting``; None otherwise.
    retry_in: float | None


@dataclass(slots=True)
class _Progress:
    room_id: str
    phase: ResyncPhase = "starting"
    server: str | None = None
    events_resynced: int = 0
    events_total: int = 0
    attempts: int = 0
    passes: int = 0
    last_error: str | None = None
    retry_at: float | None = None
    #: start_resync was called while this task ran: look once more at the end.
    again: bool = False
    #: Set when something an operator sees changed, for the recorder.
    changed: trio.Event = field(default_factory=trio.Event)
    #: Set with ``changed`` when the change must not wait for the interval.
    urgent: trio.Event = field(default_factory=trio.Event)
    #: ``events_resynced`` when a change was last noted.
    noted_events: int = 0
    #: Held for each write of this room's progress, so writes go in order.
    write_lock: trio.Lock = field(default_factory=trio.Lock)

    def note(self, *, urgent: bool) -> None:
        """Have the recorder write the progress: at once if ``urgent``,
        otherwise when the interval since the last write is up.
        """
        self.noted_events = self.events_resynced
        self.changed.set()
        if urgent:
            self.urgent.set()

    def enter(self, phase: ResyncPhase) -> None:
        if phase != self.phase:
            self.phase = phase
            self.note(urgent=True)

    def snapshot(self) -> ResyncStatus:
        retry_in = None
        if self.retry_at is not None:
            retry_in = max(0.0, self.retry_at - trio.current_time())
        return ResyncStatus(
            room_id=self.room_id,
            phase=self.phase,
            server=self.server,
            events_resynced=self.events_resynced,
            events_total=self.events_total,
            attempts=self.attempts,
            passes=self.passes,
            last_error=self.last_error,
            retry_in=retry_in,
        )


class _NoProgressError(Exception):
    """A walk found partial-state events but could redo none of them."""


class _NotPartialError(Exception):
    """The room's partial state is gone from under the task (at its clear,
    or behind a storage error): the room was purged, since only the task
    itself clears it.
    """


class UnpartialStater:
    """Resyncs every room with partial state, one task per room, in its own
    nursery; start it with ``await nursery.start(stater.run)``.

    ``server_name`` is ours: its users' memberships keep a room's task going,
    and it is never asked for state. ``store`` is storage; ``client``
    reaches the other servers; ``verifier`` is federation ingestion's and
    ``room_locks`` the one lock table every writer of room events shares.
    ``backoff_initial`` and ``backoff_max`` (seconds) bound the waits after
    every server failed; the ``bulk_*``, ``fetch_concurrency``, ``state_chunk``
    and ``state_ahead_min`` settings are
    :class:`~ranvier.core.resync.RemoteStateFetcher`'s.
    ``progress_store``, when given, records each room's progress (see the
    module's invariants for how often: ``progress_interval`` seconds and
    ``progress_every`` events).

    ``serving``, when given, holds every resync back until it is set: the
    server sets it once its listeners accept connections. A server asked
    for state tries at once what it has for us, and one that finds nobody
    listening backs off; resyncs resumed at start-up would otherwise ask
    before we listen.
    """

    def __init__(
        self,
        *,
        server_name: str,
        store: PartialStateStore,
        client: ResyncClient,
        verifier: EventVerifier,
        room_locks: RoomLocks,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
        bulk_min_missing: int = 10,
        bulk_missing_share: float = 0.1,
        fetch_concurrency: int = 10,
        state_chunk: int = STATE_CHUNK,
        state_ahead_min: int = STATE_AHEAD_MIN,
        progress_store: ResyncProgressStore | None = None,
        progress_interval: float = 1.0,
        progress_every: int = 100,
        serving: trio.Event | None = None,
    ) -> None:
        if progress_interval <= 0:
            raise ValueError(f"progress_interval must be positive, not {progress_interval}")
        if progress_every < 1:
            raise ValueError(f"progress_every must be at least 1, not {progress_every}")
        if backoff_initial <= 0:
            raise ValueError(f"backoff_initial must be positive, not {backoff_initial}")
        if backoff_max < backoff_initial:
            raise ValueError(
                f"backoff_max ({backoff_max}) must be at least backoff_initial ({backoff_initial})"
            )
        self.server_name = server_name
        self._store = store
        self._room_locks = room_locks
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._fetcher = RemoteStateFetcher(
            store=store,
            client=client,
            verifier=verifier,
            bulk_min_missing=bulk_min_missing,
            bulk_missing_share=bulk_missing_share,
            fetch_concurrency=fetch_concurrency,
            state_chunk=state_chunk,
            state_ahead_min=state_ahead_min,
        )
        self._progress_store = progress_store
        self._progress_interval = progress_interval
        self._progress_every = progress_every
        self._serving = serving
        self._nursery: trio.Nursery | None = None
        self._rooms: dict[str, _Progress] = {}
        self._full_state: dict[str, trio.Event] = {}
        self._completed = 0
        self._stopped = 0
        #: Told each room whose partial state was completed, in turn, before
        #: its waiters: what was done on partial state may need redoing.
        self.on_full_state: list[Callable[[str], Awaitable[None]]] = []
        #: Run once when the task starts: what a restart left undone
        #: between a room's completion and its listeners.
        self.on_start: list[Callable[[], Awaitable[None]]] = []

    # The component

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resume the resync of every room still partial, then take new ones
        from :meth:`start_resync` until cancelled.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                rooms = await self._store.get_partial_state_rooms()
                for room_id in sorted(rooms):
                    self._spawn(room_id)
                if rooms:
                    _log.info("resuming the resync of %d partial-state rooms", len(rooms))
                for resume in self.on_start:
                    nursery.start_soon(self._resume, resume)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def start_resync(self, room_id: str) -> None:
        """Make sure ``room_id``, just joined with partial state, has a task.

        Never blocks, and never starts a second task for a room.
        """
        if self._nursery is None:
            raise RuntimeError("the un-partial-state task is not running")
        progress = self._rooms.get(room_id)
        if progress is not None:
            progress.again = True
            return
        self._spawn(room_id)

    def status(self) -> dict[str, ResyncStatus]:
        """Each room being resynced, and how far it has come."""
        return {room_id: progress.snapshot() for room_id, progress in self._rooms.items()}

    @property
    def completed_resyncs(self) -> int:
        """Rooms whose full state a task of this stater completed."""
        return self._completed

    @property
    def stopped_resyncs(self) -> int:
        """Tasks that stopped, the room still partial, because no user of
        this server was left in the room.
        """
        return self._stopped

    async def wait_for_full_state(self, room_id: str) -> None:
        """Return once ``room_id`` has no partial state (at once if it has none).

        A room whose task stopped because no user of ours is left in it
        stays partial: the caller bounds its wait.
        """
        while True:
            # Made before the read, so that a clear after the read still wakes us.
            cleared = self._full_state.setdefault(room_id, trio.Event())
            if not await self._store.is_partial_state_room(room_id):
                return
            await cleared.wait()

    # One room

    def _spawn(self, room_id: str) -> None:
        assert self._nursery is not None
        progress = _Progress(room_id)
        progress.note(urgent=True)
        self._rooms[room_id] = progress
        self._nursery.start_soon(self._run_room, progress, name=f"resync {room_id}")

    async def _run_room(self, progress: _Progress) -> None:
        async with trio.open_nursery() as nursery:
            if self._progress_store is not None:
                nursery.start_soon(
                    self._record, progress, name=f"resync progress {progress.room_id}"
                )
            try:
                if self._serving is not None:
                    await self._serving.wait()
                while True:
                    progress.again = False
                    await self._resync(progress)
                    if not progress.again:
                        return
            finally:
                # With no checkpoint after the look at ``again``: a
                # start_resync from now on starts a new task.
                del self._rooms[progress.room_id]
                nursery.cancel_scope.cancel()

    async def _record(self, progress: _Progress) -> None:
        """Write the room's progress whenever it changes; see the module's
        invariants for how often.
        """
        while True:
            await progress.changed.wait()
            progress.changed = trio.Event()
            progress.urgent = trio.Event()
            await self._write_progress(progress)
            with trio.move_on_after(self._progress_interval):
                await progress.urgent.wait()

    async def _write_progress(self, progress: _Progress) -> None:
        store = self._progress_store
        if store is None:
            return
        async with progress.write_lock:
            # Taken under the lock, so a write waiting for it writes what
            # is newest then.
            error = progress.last_error
            if error is not None and len(error) > _MAX_RECORDED_ERROR:
                error = error[: _MAX_RECORDED_ERROR - 1] + "…"
            try:
                await store.store_resync_progress(
                    progress.room_id,
                    phase=progress.phase,
                    server=progress.server,
                    events_resynced=progress.events_resynced,
                    events_total=progress.events_total,
                    attempts=progress.attempts,
                    last_error=error,
                    updated_ts=int(time.time() * 1000),
                )
            except Exception:
                # The record is for operators; the resync goes on without it.
                _log.warning(
                    "%s: could not record the resync's progress", progress.room_id, exc_info=True
                )

    async def _resync(self, progress: _Progress) -> None:
        room_id = progress.room_id
        delay = 0.0
        while True:
            # After a wait, or a look again once cleared: a round starts.
            progress.enter("starting")
            room = (await self._store.get_partial_state_rooms()).get(room_id)
            if room is None:
                self._wake(room_id)
                return
            if not await self._has_local_member(room_id):
                _log.info(
                    "%s: no user of %s is in the room any more; its resync stops",
                    room_id,
                    self.server_name,
                )
                self._stopped += 1
                progress.last_error = f"no user of {self.server_name} is in the room any more"
                progress.enter("stopped")
                # The one write waited for: the recorder goes with the task.
                await self._write_progress(progress)
                return
            progress.attempts += 1
            progress.note(urgent=True)
            before = progress.events_resynced
            try:
                done = await self._round(room, progress)
            except (RoomGoneError, _NotPartialError):
                # Storage refused to bring the room back, or found nothing
                # to clear: a purge removed it, partial-state row and all.
                _log.info("%s: the room was purged; its resync ends", room_id)
                self._wake(room_id)
                return
            if done:
                _log.info(
                    "%s: full state resynced from %s (%d events redone)",
                    room_id,
                    progress.server,
                    progress.events_resynced,
                )
                self._completed += 1
                await self._tell_full_state(room_id)
                self._wake(room_id)
                return
            if progress.events_resynced > before:
                delay = 0.0
            delay = self._backoff_initial if delay == 0 else min(self._backoff_max, delay * 2)
            _log.warning(
                "%s: no server could complete the room's state (attempt %d: %s);"
                " trying again in %.1f s",
                room_id,
                progress.attempts,
                progress.last_error,
                delay,
            )
            progress.retry_at = trio.current_time() + delay
            progress.enter("waiting")
            try:
                await trio.sleep(delay)
            finally:
                progress.retry_at = None

    async def _round(self, room: PartialStateRoom, progress: _Progress) -> bool:
        """Ask each server in turn until the room is cleared; False if none could."""
        servers = self._servers(room)
        if not servers:
            progress.last_error = "no other server is known to be in the room"
            return False
        for server in servers:
            if server != progress.server:
                progress.server = server
                progress.note(urgent=True)
            try:
                while True:
                    await self._walk(room, server, progress)
                    if await self._clear(room, progress):
                        return True
            except RemoteStateError as exc:
                progress.last_error = str(exc)
                _log.warning("%s: resync from %s failed: %s", room.room_id, server, exc)
            except (RoomGoneError, _NotPartialError):
                raise
            except (MatrixError, _NoProgressError) as exc:
                if not await self._store.is_partial_state_room(room.room_id):
                    # An event or a group it read is gone with the room.
                    raise _NotPartialError(room.room_id) from exc
                # Not the server's doing (storage, say): the next server
                # would meet it too.
                progress.last_error = str(exc)
                _log.warning("%s: resync stopped: %s", room.room_id, exc)
                return False
            except Exception as exc:
                progress.last_error = f"{type(exc).__name__}: {exc}"
                _log.exception("%s: resync failed unexpectedly", room.room_id)
                return False
        return False

    def _servers(self, room: PartialStateRoom) -> list[str]:
        others = sorted(room.servers - {room.joined_via, self.server_name})
        first = [] if room.joined_via == self.server_name else [room.joined_via]
        return first + others

    async def _walk(self, room: PartialStateRoom, server: str, progress: _Progress) -> None:
        """Redo the room's partial-state events, pass after pass, until none is left."""
        room_version = get_room_version(room.room_version)
        while True:
            pending = await self._store.get_partial_state_events(room.room_id)
            if not pending:
                return
            progress.passes += 1
            progress.events_total = progress.events_resynced + len(pending)
            progress.note(urgent=False)
            progress.enter("walking")
            _log.info(
                "%s: %d of %d events resynced; %d to do, from %s (attempt %d)",
                room.room_id,
                progress.events_resynced,
                progress.events_total,
                len(pending),
                server,
                progress.attempts,
            )
            redone = 0
            for event_id in pending:
                if await self._redo(room, room_version, server, event_id, progress):
                    redone += 1
                    progress.events_resynced += 1
                    if progress.events_resynced - progress.noted_events >= self._progress_every:
                        progress.note(urgent=False)
                    if progress.events_resynced % _LOG_EVERY == 0:
                        _log.info(
                            "%s: %d of %d events resynced, from %s (attempt %d)",
                            room.room_id,
                            progress.events_resynced,
                            progress.events_total,
                            server,
                            progress.attempts,
                        )
            if not redone:
                raise _NoProgressError(
                    f"none of the {len(pending)} partial-state events could be redone"
                )

    async def _redo(
        self,
        room: PartialStateRoom,
        room_version: RoomVersion,
        server: str,
        event_id: str,
        progress: _Progress,
    ) -> bool:
        """Give one partial-state event its full state and verdict; False when
        it must wait for a prev event that still has partial state.
        """
        store = self._store
        row = (await store.get_events([event_id])).get(event_id)
        if row is None:
            return False
        event = Pdu.from_json(row.json, room_version, check_limits=False)
        prev_ids = list(dict.fromkeys(event.prev_event_ids))
        known: dict[str, int] = {}
        for prev_id in prev_ids:
            groups = await store.get_event_state_groups(prev_id)
            if groups is not None:
                known[prev_id] = groups.after
        if known and await store.get_partial_state_event_ids(known):
            return False
        missing = [prev_id for prev_id in prev_ids if prev_id not in known]
        if missing:
            progress.enter("fetching")
            state = await self._state_at_gap(room, room_version, server, event, known, missing)
            context = await compute_event_context(
                event, store, store, state_ids_before=state, known_room=True
            )
            progress.enter("walking")
        else:
            context = await compute_event_context(event, store, store, known_room=True)
        verdict = (await run_auth_checks(event, context, store)).context
        if verdict.state_group_before is None:
            raise RuntimeError(f"{event_id} came out of its context as an outlier")
        await store.update_state_for_partial_event(
            event_id,
            verdict.state_group_before,
            verdict.state_group_after,
            verdict.rejected_reason,
        )
        if (row.rejected_reason is None) != (verdict.rejected_reason is None):
            _log.info(
                "%s: %s was %s with partial state and is %s with full state",
                room.room_id,
                event_id,
                "accepted" if row.rejected_reason is None else "rejected",
                "accepted" if verdict.rejected_reason is None else "rejected",
            )
        return True

    async def _state_at_gap(
        self,
        room: PartialStateRoom,
        room_version: RoomVersion,
        server: str,
        event: Pdu,
        known: Mapping[str, int],
        missing: list[str],
    ) -> Mapping[StateKey, str]:
        """The full state before ``event``: the states after its prev events,
        fetched from ``server`` for those without state here, resolved.
        """
        create_id = await self._create_event_id(event.event_id)
        states: list[Mapping[StateKey, str]] = [
            await self._store.get_state_ids(group) for group in dict.fromkeys(known.values())
        ]
        # Before the join the partial state left out the room's members: most
        # of the state there is missing here, about as many events as came
        # before the join, which its depth gauges. After a later gap, little is.
        expect_missing = event.depth if event.event_id == room.join_event_id else 0
        for prev_id in missing:
            states.append(
                await self._fetcher.state_after(
                    server,
                    room.room_id,
                    room_version,
                    prev_id,
                    create_event_id=create_id,
                    expect_missing=expect_missing,
                )
            )
        if len(states) == 1:
            # Not copied: compute_event_context copies what it keeps, and a
            # big room's state is tens of thousands of entries.
            return states[0]
        return await resolve_state_maps(self._store, room.room_id, room_version, states)

    async def _create_event_id(self, event_id: str) -> str | None:
        """The create event of the state an event has now, partial as it is."""
        groups = await self._store.get_event_state_groups(event_id)
        if groups is None:
            return None
        found = await self._store.get_state_ids_for_keys(groups.before, [CREATE_KEY])
        return found.get(CREATE_KEY)

    async def _clear(self, room: PartialStateRoom, progress: _Progress) -> bool:
        """Under the room's lock: if no partial-state event is left, make the
        resolved state of the room's forward extremities current and clear
        the room's partial state. False when events are left to redo.
        """
        progress.enter("clearing")
        async with self._room_locks.hold(room.room_id):
            if await self._store.get_partial_state_events(room.room_id):
                return False
            await self._recompute_current_state(room)
            try:
                cleared = await self._store.clear_partial_state(room.room_id)
            except PartialStateEventsRemainError:
                _log.info("%s: events with partial state appeared; going round again", room.room_id)
                return False
        if not cleared:
            raise _NotPartialError(room.room_id)
        return True

    async def _recompute_current_state(self, room: PartialStateRoom) -> None:
        store = self._store
        groups: list[int] = []
        for extremity in sorted(await store.get_forward_extremities(room.room_id)):
            found = await store.get_event_state_groups(extremity)
            if found is not None and found.after not in groups:
                groups.append(found.after)
        if not groups:
            return
        target = groups[0]
        if len(groups) > 1:
            states = {group: await store.get_state_ids(group) for group in groups}
            resolved = await resolve_state_maps(
                store, room.room_id, get_room_version(room.room_version), list(states.values())
            )
            deltas = {group: changes_between(state, resolved) for group, state in states.items()}
            target = min(deltas, key=lambda group: len(deltas[group]))
            if deltas[target]:
                target = await store.store_state_group(room.room_id, target, deltas[target])
        await store.set_current_state(room.room_id, target)

    async def _has_local_member(self, room_id: str) -> bool:
        """Whether a user of this server is joined, by the room's current state.

        A partial state lacks remote members, never our own.
        """
        current = await self._store.get_current_state_ids(room_id)
        ours = [
            event_id
            for (event_type, state_key), event_id in current.items()
            if event_type == _MEMBER and state_key.partition(":")[2] == self.server_name
        ]
        rows = await self._store.get_events(ours)
        return any(
            row.rejected_reason is None and _membership(row.json) == "join" for row in rows.values()
        )

    async def _tell_full_state(self, room_id: str) -> None:
        for listener in self.on_full_state:
            try:
                await listener(room_id)
            except Exception:
                # The room is complete whatever a listener makes of it.
                _log.warning("%s: a listener of its full state failed", room_id, exc_info=True)

    async def _resume(self, resume: Callable[[], Awaitable[None]]) -> None:
        try:
            await resume()
        except Exception:
            # The resyncs go on whatever a listener makes of it.
            _log.warning("resuming what completed resyncs left failed", exc_info=True)

    def _wake(self, room_id: str) -> None:
        cleared = self._full_state.pop(room_id, None)
        if cleared is not None:
            cleared.set()


class _ContentOnly(msgspec.Struct):
    content: dict[str, Any] = {}


_decode_content: Final = msgspec.json.Decoder(_ContentOnly).decode


def _membership(raw: bytes) -> object:
    try:
        return _decode_content(raw).content.get("membership")
    except msgspec.DecodeError:
        return None
