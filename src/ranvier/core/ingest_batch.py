"""A run of one room's pushed events, judged in memory and written at once.

A transaction brings up to 50 PDUs, mostly of one room, each usually
following the one before it. Judged one at a time against storage, each
costs a dozen reads and a write of its own, every one a round trip to
another thread. A :class:`RoomRun` is instead storage as it will be once
the events judged so far are written: ingestion takes each event through
the very steps it takes alone (context, the three auth checks, the check
that the origin is in the room, the current state after it) with the run
as the store those steps read and the persister they write to. The run
holds the events instead of writing them, answers later reads as storage
would with them written, and :meth:`RoomRun.write` writes them all with
one :meth:`~ranvier.core.interfaces.EventPersister.persist_events`.

Invariants
----------

* **The run answers as storage will.** Every read returns what storage
  would return had the events held so far been written one after another,
  each with the current state its writer named: their rows, state groups
  and partial-state marks, the forward extremities they leave, and the
  current state (by the rule of :mod:`ranvier.storage.writes`: the group
  named, else the state after the sole extremity, else after the last
  accepted event).
* **What storage already holds is read once per run.** The run's events,
  the events they cite and those events' state groups are read together
  when the run starts, in one read when the store offers it
  (:class:`RoomRunReader`); entries of state groups (which never change) and
  of the current state are kept once read. The room's lock, held for the
  whole run, keeps every other writer of the room's DAG out; a change the
  un-partial-state task makes meanwhile is seen by the next run, as a lone
  event sees it at its next read.
* **Or not read at all, when nothing changed.** A run whose write took the
  room where it is gives, through :meth:`RoomRun.settled`, the next run of
  the room: what it knew, for a room left with full state, simple current
  state and extremities whose groups it knows. That run takes its own
  events for new, uncited and named by no redaction
  (:meth:`RoomRun.assume_new`) and reads nothing it holds already. Its
  write carries the mark the earlier write got back
  (:mod:`ranvier.storage.write_marks`), and storage refuses it whole with
  :class:`~ranvier.errors.StaleRunError` if any write that may touch the
  room came between, or the assumptions fail: the events are then judged
  again by a run that reads.
* **Only events of the room's DAG are held.** An outlier, an event of
  another room or an event already held raises :class:`NotInMemoryError`:
  the caller writes what the run holds and takes that event alone. So do
  events with a gap before them or auth events to fetch; ingestion checks
  for those before the event enters the run.
* **No held event is read redacted.** The auth checks read events
  redacted where a redaction applies (:mod:`ranvier.core.loading`), which
  storage decides for stored events only. So a redaction is taken alone,
  and so is an event that a stored redaction names (:meth:`RoomRun.takes_alone`):
  the events after them are judged in a run that reads them from storage.
* **One write, the same result.** :meth:`RoomRun.write` writes the held
  events in the order judged, in one request, naming the current state the
  last of the writes it stands for named. Storage derives the same
  extremities and current state from one request as from the writes one
  by one (see :mod:`ranvier.storage.writes`). State groups are written
  when asked for: a group a step resolved, and the group after a held
  state event once a later event needs its number.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeAlias

import msgspec
import trio

from ranvier.failures import sole_failure
from ranvier.protocol.auth import (
    CREATE_KEY,
    StateKey,
    auth_state_keys,
    create_event_id_for_room,
)
from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import RoomVersion
from ranvier.protocol.server_acl import SERVER_ACL_KEY
from ranvier.storage.records import (
    EventStateGroups,
    EventToPersist,
    ReceivedTransaction,
    StateDelta,
    StoredEvent,
)
from ranvier.storage.run_reads import RoomRunRows
from ranvier.storage.write_marks import WriteMark
from ranvier.storage.writes import RunWritten

from .event_auth import AuthFailure
from .interfaces import BatchStateReader, EventPersister
from .loading import EventLoader
from .policy_servers import POLICY_KEY

__all__ = ["AnsweringPersister", "AuthInputs", "NotInMemoryError", "RoomRun", "RoomRunReader"]

#: What decides the first two auth checks of an event whose rules read
#: nothing of its own but its type and sender: those, the auth events it
#: cites, and the state group before it.
AuthInputs: TypeAlias = tuple[str, str, tuple[str, ...], int]

#: The stream ordering the run gives events it holds: they have none until written.
_UNWRITTEN: Final = 0
_REDACTION: Final = "m.room.redaction"
#: Whole states a run keeps once read (the newest), for the origin check of
#: relayed events, which reads the state before each.
_WHOLE_STATES_KEPT: Final = 4
#: Verdicts a settled run passes on (see :meth:`RoomRun.settled`); past
#: this many, the next run starts without them.
_VERDICTS_KEPT: Final = 256


class NotInMemoryError(Exception):
    """An event the run cannot hold: it must be taken alone, against storage."""


class RoomRunReader(Protocol):
    """Everything a run reads when it starts, in one read
    (:class:`ranvier.storage.run_reads.RunReads` is one).
    """

    async def read_room_run(
        self,
        room_id: str,
        *,
        event_ids: Collection[str],
        wanted: Collection[str],
        prev_ids: Collection[str],
        state_keys: Collection[StateKey] = (),
    ) -> RoomRunRows:
        """The rows of ``wanted``, the room's partial state and that of
        ``prev_ids``, their state groups, the room's forward extremities,
        which of ``event_ids`` an accepted event cites, and the entries for
        ``state_keys`` after each of ``prev_ids`` and in the current state.
        """
        ...


class AnsweringPersister(Protocol):
    """Writes a run's events with the answer to the federation transaction
    that brought them, in one commit, and hands out the room's mark
    (:class:`ranvier.storage.Storage` is one).
    """

    async def persist_run(
        self,
        room_id: str,
        events: Sequence[EventToPersist],
        *,
        answer: ReceivedTransaction | None = None,
        current_state_groups: Mapping[str, int] | None = None,
        since: WriteMark | None = None,
    ) -> RunWritten:
        """:meth:`~ranvier.core.interfaces.EventPersister.persist_events`,
        recording ``answer`` in the same commit; neither is written if the
        events are refused. With ``since``, refused with
        :class:`~ranvier.errors.StaleRunError` unless the room is as the
        write that got that mark left it.
        """
        ...

    def room_mark(self, room_id: str) -> WriteMark | None:
        """The room's mark now, or None when it cannot be known here (the
        writes are another process's): a run is then always read."""
        ...


@dataclass(frozen=True, slots=True)
class _Point:
    """A state: a stored group, with at most the entry of an event held on top."""

    group: int
    on_top: Mapping[StateKey, str] = field(default_factory=dict)


class RoomRun:
    """Storage for one room, with the events judged so far held in memory.

    ``store`` and ``persister`` are the real ones; reads of other rooms go
    straight to ``store``. ``loader`` is shared by the run's auth checks,
    so that an event cited by many is parsed once; each event, once held,
    is handed to it as parsed (:meth:`add_to_loader`). With ``run_reader``
    the run reads what it starts from in one read instead of several; with
    ``answers``, which must write where ``persister`` does, :meth:`write`
    can record a transaction's answer in the commit of its events.
    """

    def __init__(
        self,
        store: BatchStateReader,
        persister: EventPersister,
        room_id: str,
        room_version: RoomVersion,
        *,
        run_reader: RoomRunReader | None = None,
        answers: AnsweringPersister | None = None,
    ) -> None:
        self._store = store
        self._run_reader = run_reader
        self._persister = persister
        self._answers = answers
        self.room_id = room_id
        self.room_version = room_version
        self.loader = EventLoader(self, room_version)
        #: The verdicts of the first two auth checks by their inputs, for the
        #: run's events that share them (see :data:`AuthInputs`): what was
        #: read for them does not change while the run lasts.
        self.auth_verdicts: dict[AuthInputs, AuthFailure | None] = {}
        # Events: stored rows read, IDs found not stored, and the events held.
        self._rows: dict[str, StoredEvent] = {}
        self._absent: set[str] = set()
        # Which events a stored redaction names, of those read when the run
        # started (the rest the auth checks read as stored, as they do
        # held events); and rows read as the auth checks read them.
        self._targets_known: set[str] = set()
        self._targets: Set[str] = frozenset()
        self._for_auth: dict[str, StoredEvent] = {}
        self._held: dict[str, EventToPersist] = {}
        # State groups around events; held state events whose group after
        # is not stored yet, by (group before, their key).
        self._groups: dict[str, EventStateGroups] = {}
        self._no_groups: set[str] = set()
        self._to_derive: dict[str, tuple[int, StateKey]] = {}
        # Partial state, of the room and of the events whose mark is known.
        self._partial_room = False
        self._partial_known: set[str] = set()
        self._partial: set[str] = set()
        self._extremities: set[str] = set()
        # Events of the run that accepted events already stored cite.
        self._cited: Set[str] = frozenset()
        self._cited_known: set[str] = set()
        # Entries of groups read so far (None: not in the group), and the
        # groups the run stored, as their base and the entry on top.
        self._group_keys: dict[int, dict[StateKey, str | None]] = {}
        self._derived: dict[int, _Point] = {}
        self._whole: dict[int, Mapping[StateKey, str]] = {}
        # The current state: None while it is the stored one. The entries
        # of the current state read so far are kept until it moves: every
        # event judged reads some (the policy server's, say), and most
        # events (messages) leave it where it was.
        self._current: _Point | None = None
        self._current_keys: dict[StateKey, str | None] = {}
        # The group the last write with an effect on current state named.
        self._named: int | None = None
        self._loaded = False
        # The mark of the write whose result this run starts from without
        # reading (see settled), and the mark its own write got back.
        self._since: WriteMark | None = None
        self._written: RunWritten | None = None

    async def load(self, events: Sequence[Pdu]) -> None:
        """Read what storage holds of ``events`` and of the events they
        cite, and the room's extremities and partial state, all at once.
        """
        ids = [event.event_id for event in events]
        prevs = {prev_id for event in events for prev_id in event.prev_event_ids}
        wanted = {*ids, *prevs}
        for event in events:
            wanted.update(event.auth_event_ids)
            if event.room_version.room_id_from_create_event and event.type != CREATE_KEY[0]:
                wanted.add(create_event_id_for_room(event.room_id))
        if self._run_reader is not None:
            # The policy server's key too: each event's check reads it; and
            # the ACL's, which the next transaction's check may find here.
            keys = {
                POLICY_KEY,
                SERVER_ACL_KEY,
                *(key for event in events for key in auth_state_keys(event)),
            }
            rows = await self._run_reader.read_room_run(
                self.room_id, event_ids=ids, wanted=wanted, prev_ids=prevs, state_keys=keys
            )
            for group, entries in (rows.state_after_prevs or {}).items():
                known = self._group_keys.setdefault(group, {})
                for key in rows.state_keys:
                    known[key] = entries.get(key)
            if rows.current_state is not None:
                if rows.current_group is not None:
                    # The current state named by its group: a move to the
                    # same group (a message) keeps the entries read.
                    self._current = _Point(rows.current_group)
                for key in rows.state_keys:
                    self._current_keys[key] = rows.current_state.get(key)
            self._rows.update(rows.events)
            self._absent.update(wanted.difference(rows.events))
            self._targets = rows.redaction_targets
            self._targets_known.update(wanted)
            self._partial_room = rows.partial_state_room
            self._partial.update(rows.partial_state_events)
            self._partial_known.update(prevs)
            self._groups.update(rows.state_groups)
            self._no_groups.update(prevs.difference(rows.state_groups))
            self._extremities = set(rows.forward_extremities)
            self._cited = rows.cited
            self._cited_known.update(ids)
            self._loaded = True
            return
        store = self._store

        async def read_rows() -> None:
            rows = await store.get_events(wanted)
            self._rows.update(rows)
            self._absent.update(wanted.difference(rows))

        async def read_redaction_targets() -> None:
            self._targets = await store.get_redaction_targets(wanted)
            self._targets_known.update(wanted)

        async def read_prevs() -> None:
            # Partial state is asked before the groups are read, as
            # compute_event_context asks it: the un-partial-state task
            # redoes events without the room's lock, and a prev event redone
            # between the reads then only makes a full group look partial
            # (the events after it are redone too), never a partial group
            # look full. Without partial state in the room, none of its
            # events has any: their marks refer to the room's.
            self._partial_room = await store.is_partial_state_room(self.room_id)
            if self._partial_room and prevs:
                self._partial.update(await store.get_partial_state_event_ids(prevs))
            self._partial_known.update(prevs)
            groups = await store.get_events_state_groups(prevs)
            self._groups.update(groups)
            self._no_groups.update(prevs.difference(groups))

        async def read_extremities() -> None:
            self._extremities = set(await store.get_forward_extremities(self.room_id))

        async def read_cited() -> None:
            self._cited = await store.get_events_with_accepted_children(ids)
            self._cited_known.update(ids)

        # Independent reads, side by side: the run waits for the longest.
        try:
            async with trio.open_nursery() as nursery:
                for read in (
                    read_rows,
                    read_redaction_targets,
                    read_prevs,
                    read_extremities,
                    read_cited,
                ):
                    nursery.start_soon(read)
        except BaseExceptionGroup as group:
            raise sole_failure(group) from None
        self._loaded = True

    @property
    def held(self) -> int:
        """How many events the run holds, to be written."""
        return len(self._held)

    def takes_alone(self, event: Pdu) -> bool:
        """Whether ``event`` must be taken alone, outside the run: a
        redaction, or an event a stored redaction names (see the module's
        invariants). The run must have read its events.
        """
        return event.type == _REDACTION or event.event_id in self._targets

    async def write(self, *, answer: ReceivedTransaction | None = None) -> bool:
        """Write every event held, in one request, with ``answer`` recorded
        in its commit where the run can (it holds events, and was given
        ``answers``); return whether ``answer`` was.

        Raises :class:`~ranvier.errors.PartialStateConflictError`, writing
        none of them, when one has partial state and the room no longer
        does.
        """
        if not self._held:
            return False
        events = list(self._held.values())
        named = None if self._named is None else {self.room_id: self._named}
        if self._answers is not None:
            self._written = await self._answers.persist_run(
                self.room_id, events, answer=answer, current_state_groups=named, since=self._since
            )
            return answer is not None
        await self._persister.persist_events(events, current_state_groups=named)
        return False

    def settled(self) -> RoomRun | None:
        """The next run of the room, starting from what this one knows now
        that its write is done, or None when it cannot.

        It can when the write handed out the room's mark and left the room
        with full state, a current state that is a stored group and
        extremities whose groups are known: the next run then needs nothing
        read but what its own events bring (:meth:`assume_new`). It keeps
        the rows of the extremities and of the auth events this run's
        events cited, what is known of the groups after the extremities
        and of the current state, and the verdicts of the first two auth
        checks: nothing that grows with the room.
        """
        written = self._written
        current = self._current
        if (
            written is None
            or written.mark is None
            or self._partial_room
            or self._to_derive
            or current is None
            or current.on_top
            or not self._extremities
            or not self._extremities <= self._groups.keys()
        ):
            return None
        run = RoomRun(
            self._store,
            self._persister,
            self.room_id,
            self.room_version,
            run_reader=self._run_reader,
            answers=self._answers,
        )
        kept = set(self._extremities)
        for event in self._held.values():
            kept.update(event.auth_event_ids)
        for event_id in kept:
            row = self._rows.get(event_id)
            if row is not None:
                ordering = written.orderings.get(event_id)
                if ordering is not None and row.stream_ordering == _UNWRITTEN:
                    row = msgspec.structs.replace(row, stream_ordering=ordering)
                run._rows[event_id] = row
            if event_id in self._for_auth:
                run._for_auth[event_id] = self._for_auth[event_id]
            if event_id in self._groups:
                run._groups[event_id] = self._groups[event_id]
            elif event_id in self._no_groups:
                run._no_groups.add(event_id)
        # Every held event was checked against the redactions stored (it
        # would have been taken alone), and none has been stored since.
        run._targets_known = kept.intersection(self._targets_known) | kept.intersection(self._held)
        run._targets = frozenset(kept.intersection(self._targets))
        run._partial_known = set(kept)
        run._extremities = set(self._extremities)
        groups = {self._groups[event_id].after for event_id in self._extremities}
        groups.add(current.group)
        run._group_keys = {
            group: dict(self._group_keys[group]) for group in groups if group in self._group_keys
        }
        run._whole = dict(self._whole)
        run._current = current
        run._current_keys = dict(self._current_keys)
        if len(self.auth_verdicts) <= _VERDICTS_KEPT:
            run.auth_verdicts = dict(self.auth_verdicts)
        run.loader = self.loader.keeping(run, kept)
        run._since = written.mark
        return run

    def unchanged(self) -> bool:
        """Whether nothing wrote the room since the write :meth:`settled`
        made this run from, as far as can be told here."""
        return (
            self._since is not None
            and self._answers is not None
            and self._answers.room_mark(self.room_id) == self._since
        )

    def current_entry(self, key: StateKey) -> tuple[bool, str | None]:
        """Whether the run knows the current state's entry for ``key``
        without reading, and the entry (None: not in the state)."""
        if key in self._current_keys:
            return True, self._current_keys[key]
        return False, None

    def assume_new(self, events: Sequence[Pdu]) -> bool:
        """Take ``events`` for new, cited by no stored event and named by no
        stored redaction, as a run :meth:`settled` gave, instead of reading
        them: its write refuses them whole if they are not. False, and
        nothing taken, when they cite an event the run does not hold, or
        when the room was written since, as far as can be told here.
        """
        if not self.unchanged():
            # Written since: the write would refuse the run.
            return False
        ids = {event.event_id for event in events}
        # What an event the run holds the row of (it is stored) cites is
        # never read: it is known already.
        fresh = [event for event in events if event.event_id not in self._rows]
        prevs = {prev_id for event in fresh for prev_id in event.prev_event_ids}
        cited = prevs | {auth_id for event in fresh for auth_id in event.auth_event_ids}
        if any(event.room_version.room_id_from_create_event for event in fresh):
            cited.add(create_event_id_for_room(self.room_id))
        if not all(event_id in ids or event_id in self._rows for event_id in cited):
            return False
        # An event the run holds the row of is stored: read as such.
        self._absent.update(ids.difference(self._rows))
        self._targets_known.update(ids)
        self._cited_known.update(ids)
        self._no_groups.update(prevs & ids)
        self._loaded = True
        return True

    # --- StateReader -------------------------------------------------------------

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        wanted = set(event_ids)
        unread = [
            event_id
            for event_id in wanted
            if event_id not in self._rows and event_id not in self._absent
        ]
        if unread:
            found = await self._store.get_events(unread)
            self._rows.update(found)
            self._absent.update(event_id for event_id in unread if event_id not in found)
        return {event_id: self._rows[event_id] for event_id in wanted if event_id in self._rows}

    async def get_events_for_auth(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]:
        # An event no redaction names is read as stored, a held one as held
        # (see the module's invariants); only the others are asked for.
        found: dict[str, StoredEvent] = {}
        unread = []
        for event_id in set(event_ids):
            if event_id in self._for_auth:
                found[event_id] = self._for_auth[event_id]
            elif event_id in self._held or (
                event_id in self._targets_known and event_id not in self._targets
            ):
                if event_id in self._rows:
                    found[event_id] = self._rows[event_id]
            elif event_id not in self._absent:
                unread.append(event_id)
        if unread:
            read = await self._store.get_events_for_auth(unread)
            self._for_auth.update(read)
            found.update(read)
        return found

    async def get_event_state_groups(self, event_id: str) -> EventStateGroups | None:
        if event_id in self._to_derive:
            await self._derive(event_id)
        if event_id in self._groups:
            return self._groups[event_id]
        if event_id in self._no_groups:
            return None
        groups = await self._store.get_event_state_groups(event_id)
        if groups is None:
            self._no_groups.add(event_id)
        else:
            self._groups[event_id] = groups
        return groups

    async def get_events_state_groups(
        self, event_ids: Collection[str]
    ) -> Mapping[str, EventStateGroups]:
        found: dict[str, EventStateGroups] = {}
        unread = []
        for event_id in set(event_ids):
            if event_id in self._to_derive or event_id in self._groups:
                groups = await self.get_event_state_groups(event_id)
                assert groups is not None
                found[event_id] = groups
            elif event_id not in self._no_groups:
                unread.append(event_id)
        if unread:
            read = await self._store.get_events_state_groups(unread)
            self._groups.update(read)
            self._no_groups.update(event_id for event_id in unread if event_id not in read)
            found.update(read)
        return found

    async def get_state_ids(self, state_group: int) -> Mapping[StateKey, str]:
        # Every group the run names is stored: the whole map comes from storage.
        state = self._whole.get(state_group)
        if state is None:
            state = await self._store.get_state_ids(state_group)
            if len(self._whole) >= _WHOLE_STATES_KEPT:
                del self._whole[next(iter(self._whole))]
            self._whole[state_group] = state
        return state

    async def get_state_ids_for_keys(
        self, state_group: int, keys: Collection[StateKey]
    ) -> Mapping[StateKey, str]:
        # A group the run stored is its base with one entry on top, and the
        # base may be another such group: the chain is walked down in a
        # loop, as long as the run's held state events, to a group read
        # from storage.
        found: dict[StateKey, str] = {}
        rest = list(keys)
        group = state_group
        while (derived := self._derived.get(group)) is not None:
            on_top = derived.on_top
            if any(key in on_top for key in rest):
                found.update((key, on_top[key]) for key in rest if key in on_top)
                rest = [key for key in rest if key not in on_top]
                if not rest:
                    return found
            group = derived.group
        known = self._group_keys.setdefault(group, {})
        unread = [key for key in rest if key not in known]
        if unread:
            read = await self._store.get_state_ids_for_keys(group, unread)
            for key in unread:
                known[key] = read.get(key)
        found.update(_present(known, rest))
        return found

    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]:
        if room_id != self.room_id or self._current is None:
            return await self._store.get_current_state_ids(room_id)
        state = dict(await self.get_state_ids(self._current.group))
        state.update(self._current.on_top)
        return state

    async def get_current_state_ids_for_keys(
        self, room_id: str, keys: Collection[StateKey]
    ) -> Mapping[StateKey, str]:
        if room_id != self.room_id:
            return await self._store.get_current_state_ids_for_keys(room_id, keys)
        known = self._current_keys
        unread = [key for key in keys if key not in known]
        if unread:
            if self._current is None:
                found = await self._store.get_current_state_ids_for_keys(room_id, unread)
            else:
                found = await self._point_for_keys(self._current, unread)
            for key in unread:
                known[key] = found.get(key)
        return _present(known, keys)

    async def get_state_deltas(
        self, state_groups: Sequence[int]
    ) -> tuple[int, Mapping[int, StateDelta]]:
        return await self._store.get_state_deltas(state_groups)

    async def get_forward_extremities(self, room_id: str) -> Set[str]:
        if room_id != self.room_id:
            return await self._store.get_forward_extremities(room_id)
        return frozenset(self._extremities)

    async def is_partial_state_room(self, room_id: str) -> bool:
        if room_id != self.room_id:
            return await self._store.is_partial_state_room(room_id)
        return self._partial_room

    async def get_partial_state_events(self, room_id: str) -> Sequence[str]:
        stored = list(await self._store.get_partial_state_events(room_id))
        if room_id != self.room_id:
            return stored
        return stored + [event_id for event_id in self._held if event_id in self._partial]

    async def get_partial_state_event_ids(self, event_ids: Collection[str]) -> Set[str]:
        wanted = set(event_ids)
        unread = wanted.difference(self._partial_known)
        if unread:
            self._partial.update(await self._store.get_partial_state_event_ids(unread))
            self._partial_known.update(unread)
        return frozenset(wanted.intersection(self._partial))

    async def get_room_version(self, room_id: str) -> str | None:
        if room_id == self.room_id:
            return self.room_version.identifier
        return await self._store.get_room_version(room_id)

    async def get_events_with_accepted_children(self, event_ids: Collection[str]) -> Set[str]:
        wanted = set(event_ids)
        cited = set(await self._store.get_events_with_accepted_children(wanted))
        for held in self._held.values():
            if held.accepted:
                cited.update(wanted.intersection(held.prev_event_ids))
        return frozenset(cited)

    # --- EventPersister ----------------------------------------------------------

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> Mapping[str, int]:
        """Hold ``events`` as if written, to be written by :meth:`write`.

        They have no stream orderings until then, so none are returned.
        """
        named = dict(current_state_groups or {})
        for event in events:
            self._check_holdable(event)
        if set(named) - {self.room_id}:
            raise NotInMemoryError(f"a run of {self.room_id} holds no other room's state")
        last_accepted: EventToPersist | None = None
        for event in events:
            self._hold(event)
            if event.accepted:
                last_accepted = event
        if self.room_id in named:
            self._move_current(_Point(named[self.room_id]))
            self._named = named[self.room_id]
        elif last_accepted is not None:
            self._move_current(await self._current_after(last_accepted))
            self._named = None
        return {}

    def _move_current(self, point: _Point) -> None:
        # A point names its state exactly (a group never changes): an equal
        # one is the same state, and the entries read of it still hold.
        if point != self._current:
            self._current = point
            self._current_keys.clear()

    async def store_room(self, room_id: str, room_version: str) -> None:
        await self._persister.store_room(room_id, room_version)

    async def store_state_group(
        self, room_id: str, prev_group: int | None, delta: StateDelta
    ) -> int:
        return await self._persister.store_state_group(room_id, prev_group, delta)

    # --- Holding events ----------------------------------------------------------

    def _check_holdable(self, event: EventToPersist) -> None:
        if not self._loaded:
            raise NotInMemoryError("a run holds events only once it has read the room")
        if event.room_id != self.room_id:
            raise NotInMemoryError(f"{event.event_id} is not of {self.room_id}")
        if event.context is None:
            raise NotInMemoryError(f"{event.event_id} is an outlier")
        if event.event_id in self._held:
            raise NotInMemoryError(f"{event.event_id} is held already")
        if event.event_id not in self._cited_known:
            raise NotInMemoryError(f"{event.event_id} was not read when the run started")
        if event.type == _REDACTION or event.event_id in self._targets:
            raise NotInMemoryError(f"{event.event_id} is a redaction or one names it")

    def _hold(self, event: EventToPersist) -> None:
        context = event.context
        assert context is not None
        event_id = event.event_id
        self._held[event_id] = event
        self._rows[event_id] = StoredEvent(
            stream_ordering=_UNWRITTEN,
            event_id=event_id,
            room_id=event.room_id,
            type=event.type,
            state_key=event.state_key,
            sender=event.sender,
            depth=event.depth,
            origin_server_ts=event.origin_server_ts,
            json=event.json,
            outlier=False,
            soft_failed=event.soft_failed,
            rejected_reason=event.rejected_reason,
        )
        self._absent.discard(event_id)
        self._no_groups.discard(event_id)
        before = context.state_group_before
        if context.state_group_after is not None:
            self._groups[event_id] = EventStateGroups(before, context.state_group_after)
        elif event.state_key is not None and event.rejected_reason is None:
            self._to_derive[event_id] = (before, (event.type, event.state_key))
        else:
            self._groups[event_id] = EventStateGroups(before, before)
        self._partial_known.add(event_id)
        if context.partial_state:
            self._partial.add(event_id)
        if event.accepted:
            self._extremities.difference_update(event.prev_event_ids)
            if event_id not in self._cited:
                self._extremities.add(event_id)

    def add_to_loader(self, event: Pdu) -> None:
        """Make a held event loadable as parsed, with its verdict."""
        self.loader.add(event)
        row = self._rows.get(event.event_id)
        if row is not None and row.rejected_reason is not None:
            self.loader.rejected.add(event.event_id)

    async def _derive(self, event_id: str) -> None:
        """Store the group after a held state event, now that it is asked for."""
        before, key = self._to_derive.pop(event_id)
        after = await self._persister.store_state_group(self.room_id, before, {key: event_id})
        self._derived[after] = _Point(before, {key: event_id})
        self._groups[event_id] = EventStateGroups(before, after)
        held = self._held[event_id]
        assert held.context is not None
        self._held[event_id] = msgspec.structs.replace(
            held, context=msgspec.structs.replace(held.context, state_group_after=after)
        )

    async def _after(self, event_id: str) -> _Point | None:
        """The state after an event, without storing a group for a held one."""
        derive = self._to_derive.get(event_id)
        if derive is not None:
            before, key = derive
            return _Point(before, {key: event_id})
        groups = await self.get_event_state_groups(event_id)
        return None if groups is None else _Point(groups.after)

    async def _current_after(self, last_accepted: EventToPersist) -> _Point:
        """The current state once a write ending with ``last_accepted`` is
        done: after the sole extremity, else after that event.
        """
        if len(self._extremities) == 1:
            (sole,) = self._extremities
            point = await self._after(sole)
            if point is not None:
                return point
        point = await self._after(last_accepted.event_id)
        assert point is not None  # a held event has its state
        return point

    async def _point_for_keys(self, point: _Point, keys: Iterable[StateKey]) -> dict[StateKey, str]:
        wanted = list(keys)
        found = {key: point.on_top[key] for key in wanted if key in point.on_top}
        rest = [key for key in wanted if key not in found]
        if rest:
            found.update(await self.get_state_ids_for_keys(point.group, rest))
        return found


def _present(known: Mapping[StateKey, str | None], keys: Iterable[StateKey]) -> dict[StateKey, str]:
    return {key: event_id for key in keys if (event_id := known.get(key)) is not None}
