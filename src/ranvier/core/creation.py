"""Events created by local users: new rooms, messages and state, memberships.

This is what the client-server API calls. Every event takes one path:
built (:mod:`ranvier.core.builder`), given its context, checked by the auth
rules at all three points, written, and then handed to the
:class:`~ranvier.core.interfaces.EventNotifier`, which tells the other
servers in the room.

Invariants
----------

* **One event at a time per room.** A room's events are built and written
  under that room's lock, so each event's prev events are the room's
  forward extremities at the moment it is written: a room's local events
  form a chain, never a fork. Different rooms do not wait for each other.
* **Messages waiting together are written together.** Messages queue per
  room; the first of them takes the room's lock, and with it the queue,
  builds and checks the messages in order, each on the one before (not
  yet written), and writes them in one request: one commit for all. Each
  is answered only once it is written; one refused fails alone; if the
  write fails, none of them is written and the next event follows what
  was. Messages with partial state, and state events, go one at a time.
* **The next group is built while one is written, never written on a
  failed one.** While a group's commit is on disk, the lock still held,
  the messages that come meanwhile are built on it; they are written once
  it has landed. If it failed (or met the partial-state conflict, which
  is then handled as below), they are built again on what the room holds.
  One hold of the lock takes new messages for a bounded number of writes,
  so other writers of the room, and the sender's own client, do not wait
  long.
* **Refused means not written.** An event that fails the auth rules at any
  point (soft failure included) raises :class:`~ranvier.errors.AuthError`
  (403 M_FORBIDDEN) and is not persisted. A state group computed for it may
  remain; nothing refers to it.
* **A new room is checked whole before any of it is written.** The events
  a room creation implies are run through the auth rules in memory first,
  so a request that would leave a half-made room (an override taking the
  creator's power away) makes no room at all (400 M_INVALID_ROOM_STATE).
* **A conflict is retried once, then handed back.** When the room's partial
  state is cleared between computing an event's context and writing it,
  the persister raises PartialStateConflictError; the context is computed
  again and the write tried once more. A second conflict raises
  :class:`~ranvier.errors.LimitExceededError` (429) so that the client
  tries again later.
* **The notifier hears of an event only once it is written**, under the
  room's lock, so it hears a room's events in the order they were written.
  Once the write has begun, cancelling the caller does not stop it or the
  notification: a written event is always announced.
"""

from __future__ import annotations

import base64
import secrets
import string
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, Protocol, get_args, runtime_checkable

import trio

from ranvier.errors import AuthError, LimitExceededError, MatrixError, PartialStateConflictError
from ranvier.protocol.auth import (
    CREATE_KEY,
    POWER_LEVELS_KEY,
    StateKey,
    check_auth_rules,
    is_valid_user_id,
)
from ranvier.protocol.canonical import CANONICAL_INT_MAX
from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import (
    DEFAULT_ROOM_VERSION,
    RoomVersion,
    RoomVersionLike,
    get_room_version,
)
from ranvier.protocol.server_acl import SERVER_ACL_TYPE, server_allowed_by_acl
from ranvier.protocol.signing import SigningKeyLike
from ranvier.storage.records import EventToPersist

from .activity import ActivityListener
from .builder import Clock, build_event, wall_clock_ms
from .client_events import event_content
from .client_txns import PendingTransaction, TxnRow, claim_client_transaction
from .context import (
    EventContext,
    compute_current_state_after,
    compute_event_context,
    event_to_persist,
)
from .creation_reads import CreationReads
from .event_auth import (
    check_against_auth_events,
    check_against_current_state,
    check_against_state_before,
    run_auth_checks,
)
from .ingest import RoomLocks
from .interfaces import EventNotifier, EventPersister, RemoteInviter, StateReader
from .invite_permission import InvitePermission
from .loading import EventLoader
from .policy_servers import POLICY_KEY, PolicyServers
from .restricted_joins import AUTHORISER

__all__ = ["CreatorStore", "EventCreator", "NotInRoomError", "Preset", "member_event_content"]

#: The room presets of the client-server API's ``/createRoom``.
Preset = Literal["private_chat", "public_chat", "trusted_private_chat"]

_MEMBER: Final = "m.room.member"
#: The create event's key that keeps a room to its creator's server.
_FEDERATE: Final = "m.federate"


class MemberProfiles(Protocol):
    """The profile fields (``displayname``, ``avatar_url``) a local user's
    join carries (:class:`ranvier.core.profiles.Profiles`).
    """

    async def member_content(self, user_id: str) -> dict[str, str]: ...

    async def ask_services_about(self, user_id: str) -> None:
        """Give the application service whose namespace holds ``user_id``,
        a local user without an account, the chance to make it.
        """
        ...


_JOIN_RULES: Final = "m.room.join_rules"
_HISTORY_VISIBILITY: Final = "m.room.history_visibility"
_GUEST_ACCESS: Final = "m.room.guest_access"
_NAME: Final = "m.room.name"
_TOPIC: Final = "m.room.topic"

#: What each preset sets: join rule, history visibility, guest access.
_PRESET_STATE: Final[Mapping[str, tuple[str, str, str]]] = {
    "private_chat": ("invite", "shared", "can_join"),
    "trusted_private_chat": ("invite", "shared", "can_join"),
    "public_chat": ("public", "shared", "forbidden"),
}

#: The power level of a room's creator where creators are not privileged
#: (before v12), and of trusted_private_chat's invitees there.
_CREATOR_LEVEL: Final = 100

_ROOM_ID_CHARS: Final = string.ascii_letters
_ROOM_ID_LENGTH: Final = 18


class NotInRoomError(MatrixError):
    """A local user asked to join a room this server is not in.

    The join must go through a server that is in the room (make_join and
    send_join over federation); the caller catches this by name and takes
    that path instead.
    """

    errcode = "M_NOT_FOUND"
    http_status = 404

    def __init__(self, room_id: str) -> None:
        super().__init__(
            f"this server is not in room {room_id}: joining it goes through a server that is"
        )
        self.room_id = room_id


class _SentTransactions:
    """The event each recent ``(sender, txn_id)`` produced.

    Held in memory, so it is lost on restart, and bounded: beyond
    ``capacity`` pairs the oldest are forgotten. A client that retries a
    send across a restart, or after that many newer sends, gets a second
    event.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._sent: OrderedDict[tuple[str, str], str] = OrderedDict()

    def get(self, sender: str, txn_id: str) -> str | None:
        return self._sent.get((sender, txn_id))

    def add(self, sender: str, txn_id: str, event_id: str) -> None:
        self._sent[(sender, txn_id)] = event_id
        while len(self._sent) > self._capacity:
            self._sent.popitem(last=False)


class CreatorStore(StateReader, Protocol):
    """The reads of an :class:`EventCreator`: state, and one that tells
    whether this server is in a room without reading its whole state.
    """

    async def server_has_joined_member(self, room_id: str, server_name: str) -> bool:
        """Whether a user of ``server_name`` is joined in the room's current state."""
        ...


@runtime_checkable
class BatchEventNotifier(EventNotifier, Protocol):
    """An :class:`~ranvier.core.interfaces.EventNotifier` that can be told
    of several events written together at once
    (:class:`ranvier.core.room_servers.RoomEventSender`).
    """

    async def on_new_events(
        self,
        events: Sequence[tuple[Pdu, int]],
        *,
        state_group: int | None = None,
        full_state: bool = False,
    ) -> None:
        """``events`` were written, in this order, with these stream orderings;
        ``state_group``, if given, is the group of their room's current state
        after them, and ``full_state`` true if that state is known not to be
        partial (messages written under the room's lock, which is still held).
        """
        ...


class TransactionRecordingPersister(Protocol):
    """An :class:`~ranvier.core.interfaces.EventPersister` that can record
    the client transactions that sent events in the same commit as the
    events (:class:`ranvier.storage.Storage`).
    """

    async def persist_events_recording_transactions(
        self,
        events: Sequence[EventToPersist],
        transactions: Sequence[TxnRow],
    ) -> tuple[Mapping[str, int], Sequence[str]]:
        """Write ``events``, naming no current state, and record
        ``transactions`` (rows as :meth:`PendingTransaction.row` makes
        them); return the orderings and the event recorded per transaction.
        """
        ...


class _QueuedMessage:
    """A message waiting to be sent, and what became of it."""

    __slots__ = (
        "error",
        "event_id",
        "taken",
        "template",
        "timestamp",
        "transaction",
        "txn_id",
        "wake",
    )

    def __init__(
        self,
        template: dict[str, Any],
        txn_id: str | None,
        transaction: PendingTransaction | None,
        timestamp: int | None = None,
    ) -> None:
        self.template = template
        self.txn_id = txn_id
        #: The ``origin_server_ts`` its sender chose, if any (see
        #: :meth:`EventCreator.send_event`); a rebuild after a failed write
        #: keeps it.
        self.timestamp = timestamp
        #: The client transaction to record in the message's commit.
        self.transaction = transaction
        #: Taken by a sender of the room's queue: it is sent whatever happens.
        self.taken = False
        self.event_id: str | None = None
        self.error: Exception | None = None
        #: Set to rouse the message's task: the message is done, or the
        #: room's sender left and the message may send the queue itself.
        self.wake = trio.Event()

    @property
    def done(self) -> bool:
        return self.event_id is not None or self.error is not None

    def succeed(self, event_id: str) -> None:
        self.event_id = event_id
        self.wake.set()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.wake.set()

    def result(self) -> str:
        if self.error is not None:
            raise self.error
        assert self.event_id is not None  # a taken message ends with one or the other
        return self.event_id


class _Flight:
    """Staged messages being written while the next ones are built."""

    __slots__ = ("failure", "landed", "written")

    def __init__(self, written: list[tuple[_QueuedMessage, Pdu, EventContext]]) -> None:
        self.written = written
        self.landed = trio.Event()
        #: Why the write failed; None once it succeeded (or while under way).
        self.failure: Exception | None = None


#: The most groups of messages one hold of a room's lock sends. The sender's
#: own client waits for all of them, and so does any other writer of the room.
_MOST_GROUPS_PER_HOLD: Final = 8


class EventCreator:
    """Creates the events of this server's users and writes them.

    ``store`` and ``persister`` are storage as core sees it (the main
    process passes :class:`~ranvier.storage.Storage` for both). ``notifier``
    hears of every event written; ``remote_inviter`` sends invites of users
    of other servers to their server. ``room_locks`` must be the locks the
    rest of the server writes a room's events under (ingestion, the
    membership routes, remote joins): a local event and a remote one
    written at once would both take the same forward extremities as their
    prev events, or move them under each other. ``clock`` gives
    ``origin_server_ts``;
    ``conflict_retry_after_ms`` is what a client is told to wait after a
    second partial-state conflict; ``remembered_transactions`` bounds the
    memory of transaction IDs (see :meth:`send_event`).
    ``transaction_recorder``, which must write where ``persister`` does,
    writes messages with the client transactions that sent them
    (:mod:`ranvier.core.client_txns`) in one commit; without it they are
    recorded in a commit of their own.
    """

    def __init__(
        self,
        *,
        server_name: str,
        signing_key: SigningKeyLike,
        store: CreatorStore,
        persister: EventPersister,
        notifier: EventNotifier | None = None,
        remote_inviter: RemoteInviter | None = None,
        room_locks: RoomLocks | None = None,
        clock: Clock = wall_clock_ms,
        conflict_retry_after_ms: int = 500,
        remembered_transactions: int = 10_000,
        member_profiles: MemberProfiles | None = None,
        transaction_recorder: TransactionRecordingPersister | None = None,
    ) -> None:
        self.server_name = server_name
        #: Where a join's display name and avatar come from; settable, as
        #: the profiles send their changes through this creator.
        self.member_profiles = member_profiles
        #: Refuses invites of users who block them (spec v1.18); settable,
        #: as it reads account data, which is made after this creator.
        self.invite_permission: InvitePermission | None = None
        #: Hears that a user sent an event; settable, as presence, which
        #: listens, is made after this creator.
        self.activity: ActivityListener | None = None
        #: Signs our events in rooms that use a policy server (spec v1.18);
        #: settable, as it asks over federation, which is made after this
        #: creator. Without it events are sent unsigned, as before v1.18.
        self.policy_servers: PolicyServers | None = None
        self._signing_key = signing_key
        self._store = store
        # Building, checking and writing read through this, which keeps
        # what cannot change (see ranvier.core.creation_reads).
        self._reads = CreationReads(store)
        self._persister = persister
        self._transaction_recorder = transaction_recorder
        self._notifier = notifier
        self._remote_inviter = remote_inviter
        self._clock = clock
        self._retry_after_ms = conflict_retry_after_ms
        #: Events answered with 429 for a second partial-state conflict, for metrics.
        self.conflicts_refused = 0
        self._locks = room_locks if room_locks is not None else RoomLocks()
        self._transactions = _SentTransactions(remembered_transactions)
        # Per room, the messages waiting to be taken (see _send_message),
        # and the rooms whose queue a task is sending or about to.
        self._queued: dict[str, list[_QueuedMessage]] = {}
        self._senders: set[str] = set()
        # Per room whose sender waits for a write: set when the write lands
        # or a message joins the queue, whichever comes first.
        self._stirred: dict[str, trio.Event] = {}

    # --- Rooms ----------------------------------------------------------------------

    async def create_room(
        self,
        creator: str,
        *,
        preset: Preset = "private_chat",
        name: str | None = None,
        topic: str | None = None,
        invite: Iterable[str] = (),
        initial_state: Iterable[Mapping[str, Any]] = (),
        power_level_content_override: Mapping[str, Any] | None = None,
        creation_content: Mapping[str, Any] | None = None,
        room_version: RoomVersionLike = DEFAULT_ROOM_VERSION,
        is_direct: bool = False,
        send_invites: bool = True,
    ) -> str:
        """Create a room as ``/createRoom`` does; return its ID.

        The events follow the spec's order: the create event, the creator's
        join, power levels, the preset's join rules, history visibility and
        guest access, ``initial_state``, name, topic, then an invite for
        each of ``invite`` (marked ``is_direct`` when ``is_direct``, for a
        direct chat). Aliases are not handled here.

        Where the spec leaves a choice: an ``initial_state`` event takes the
        place of the preset's event for its key, and an
        ``m.room.power_levels`` there replaces the default power levels (at
        their place in the order, with ``power_level_content_override``
        still applied on top); ``name`` and ``topic`` replace
        ``initial_state`` events for their keys; ``initial_state`` may not
        hold the create event or memberships.

        Without ``send_invites`` (a shadow-banned creator's request,
        :mod:`ranvier.core.shadow_bans`) the ``invite`` list is checked as
        ever, and the room made without the invites.

        Everything the rules would refuse is refused before anything is
        written. What can still fail once writing has begun is outside the
        request: storage, or an invitee's server refusing its invite, which
        raises with the room and the events before that invite written.
        """
        rv = get_room_version(room_version)
        self._check_local(creator)
        if preset not in get_args(Preset):
            raise _invalid_param(
                f"unknown preset {preset!r}; presets are {', '.join(get_args(Preset))}"
            )
        invitees = await self._invitable(_invitees(invite, creator))
        remote = [user for user in invitees if not self._is_local(user)]
        if remote and self._remote_inviter is None:
            raise _no_remote_invites(remote[0])
        if (
            remote
            and isinstance(creation_content, Mapping)
            and creation_content.get(_FEDERATE) is False
        ):
            raise _not_federated(None, remote[0])
        if not send_invites:
            invitees = []

        room_id = None if rv.room_id_from_create_event else self._new_room_id()
        templates = _room_templates(
            rv,
            creator,
            preset=preset,
            name=name,
            topic=topic,
            invitees=invitees,
            initial_state=initial_state,
            power_level_content_override=power_level_content_override,
            creation_content=creation_content,
            is_direct=is_direct,
        )
        if self.member_profiles is not None:
            profile = await self.member_profiles.member_content(creator)
            for template in templates:
                if template["type"] == _MEMBER and template.get("state_key") == creator:
                    template["content"] = {**profile, **template["content"]}
        for template in templates:
            if template["type"] == SERVER_ACL_TYPE and template["state_key"] == "":
                self._check_acl_admits_us(template["content"])
        _rehearse(rv, room_id, templates)

        create_template = templates[0] if room_id is None else templates[0] | {"room_id": room_id}
        create = await self._build(rv, create_template)
        room_id = create.room_id
        async with self._locks.hold(room_id):
            await self._write(create)
            self._reads.room_created(room_id, rv.identifier)
            for template in templates[1:]:
                event = await self._build(rv, template | {"room_id": room_id})
                await self._write(event, countersign=self._countersigner(event))
        return room_id

    # --- Messages and state ---------------------------------------------------------

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        txn_id: str | None = None,
        origin_server_ts: int | None = None,
    ) -> str:
        """Send a message event, or a state event when ``state_key`` is given;
        return its ID.

        A ``txn_id`` already used by the same sender returns the event it
        produced without sending another. Transaction IDs are remembered in
        memory only (see :class:`EventCreator`); across restarts, storage
        would need a table of ``(sender, txn_id) -> event_id``.

        ``origin_server_ts`` replaces the clock's time as the event's
        timestamp: an application service's timestamp massaging, which
        tells when a bridged message was really sent. The event still goes
        at the tip of the room's DAG, after everything written before it.
        """
        self._check_event_request(sender, event_type, content, state_key)
        _check_timestamp(origin_server_ts)
        content = _without_voucher(event_type, content)
        if txn_id is not None and type(txn_id) is not str:
            raise _invalid_param("a transaction ID must be a string")
        if txn_id is not None and (sent := self._transactions.get(sender, txn_id)) is not None:
            return sent
        if self.activity is not None:
            await self.activity.user_active(sender)
        if event_type == SERVER_ACL_TYPE and state_key == "":
            self._check_acl_admits_us(content)
        elif event_type == "m.room.redaction":
            await self._check_not_an_acl(room_id, content.get("redacts"))

        rv = await self._room_version(room_id)
        template = _event_template(rv, sender, room_id, event_type, content, state_key)
        if state_key is None:
            return await self._send_message(template, rv, txn_id, origin_server_ts)
        if event_type == _MEMBER and content.get("membership") == "invite":
            await self._check_invite(room_id, state_key)
        async with self._locks.hold(room_id):
            if txn_id is not None and (sent := self._transactions.get(sender, txn_id)):
                return sent  # a concurrent send of the same transaction won the lock
            event = await self._build(rv, template, timestamp=origin_server_ts)
            # A membership sent as plain state still needs an invitee's server.
            event = await self._write(event, countersign=self._countersigner(event))
            if txn_id is not None:
                self._transactions.add(sender, txn_id, event.event_id)
        return event.event_id

    def _check_event_request(
        self, sender: str, event_type: str, content: Mapping[str, Any], state_key: str | None
    ) -> None:
        """Refuse a message or state event that no room could take."""
        self._check_local(sender)
        if type(event_type) is not str or not event_type:
            raise _invalid_param("an event type must be a non-empty string")
        if not isinstance(content, Mapping):
            raise _invalid_param("an event's content must be a JSON object")
        if state_key is not None and type(state_key) is not str:
            raise _invalid_param("a state key must be a string")
        if event_type == CREATE_KEY[0]:
            # It would start the room's DAG over; the rules see nothing
            # wrong with a create event on its own.
            raise MatrixError(
                f"a room has one {CREATE_KEY[0]} event, sent when it is created",
                errcode="M_FORBIDDEN",
                http_status=403,
            )

    # --- Rehearsals: a shadow-banned sender's events, checked and dropped ------------

    async def rehearse_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        origin_server_ts: int | None = None,
    ) -> str:
        """The ID of the event :meth:`send_event` would send, sending nothing
        (:mod:`ranvier.core.shadow_bans`).

        The event is built on the room's forward extremities and checked by
        the auth rules against its auth events, which the builder took from
        the room's current state: a request :meth:`send_event` refuses is
        refused alike, with the same error. Nothing is written (not even a
        state group), announced, or shown to a policy server, and the
        room's lock is not taken, so a flood of rehearsals holds up no
        real send.
        """
        self._check_event_request(sender, event_type, content, state_key)
        _check_timestamp(origin_server_ts)
        content = _without_voucher(event_type, content)
        rv = await self._room_version(room_id)
        if event_type == _MEMBER and content.get("membership") == "invite":
            assert state_key is not None  # a member event's type needs one
            await self._check_invite(room_id, state_key)
        template = _event_template(rv, sender, room_id, event_type, content, state_key)
        return await self._rehearse(rv, template, origin_server_ts)

    async def rehearse_invite(
        self,
        sender: str,
        room_id: str,
        target: str,
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
    ) -> str:
        """The ID of the invite :meth:`invite` would send, sending nothing:
        checked as :meth:`rehearse_event` checks, and not shown to the
        invitee's server, nor to an application service whose user it is.
        """
        self._check_local(sender)
        if not is_valid_user_id(target):
            raise _invalid_param(f"{target!r} is not a user ID")
        if not self._is_local(target) and self._remote_inviter is None:
            raise _no_remote_invites(target)
        invited = member_event_content("invite", content, reason)
        return await self.rehearse_event(sender, room_id, _MEMBER, invited, state_key=target)

    def made_up_room_id(self, room_version: RoomVersionLike) -> str:
        """A room ID no room has, of the shape a new room of
        ``room_version`` gets here: what a rehearsed upgrade answers."""
        rv = get_room_version(room_version)
        if not rv.room_id_from_create_event:
            return self._new_room_id()
        # From v12 a room ID is the hash of its create event: 32 bytes in
        # unpadded URL-safe base64.
        return "!" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")

    async def _rehearse(
        self, rv: RoomVersion, template: Mapping[str, Any], timestamp: int | None = None
    ) -> str:
        # The plain store, not the creation reads: those are staged under
        # the room's lock, which a rehearsal does not take.
        event = await build_event(
            template,
            room_version=rv,
            store=self._store,
            server_name=self.server_name,
            signing_key=self._signing_key,
            clock=self._clock_for(timestamp),
        )
        failure = await check_against_auth_events(event, self._store)
        if failure is not None:
            raise _as_client_error(failure.error)
        return event.event_id

    async def _send_message(
        self,
        template: dict[str, Any],
        rv: RoomVersion,
        txn_id: str | None,
        timestamp: int | None = None,
    ) -> str:
        """Send a message, written together with the room's other messages
        waiting to be sent.

        The message joins the room's queue. If no task is sending the
        room's queue, this one does (:meth:`_send_queue`), taking the room's
        lock; otherwise it waits to be told that its message was sent, or
        that the sender left it untaken, when it sends the queue itself. A
        message given up before it is taken leaves the queue; once taken it
        is sent regardless.
        """
        room_id: str = template["room_id"]
        queued = _QueuedMessage(template, txn_id, claim_client_transaction(room_id), timestamp)
        self._queued.setdefault(room_id, []).append(queued)
        self._stir(room_id)
        try:
            while not queued.done:
                if queued.taken or room_id in self._senders:
                    await queued.wake.wait()
                    queued.wake = trio.Event()
                    continue
                self._senders.add(room_id)
                try:
                    async with self._locks.hold(room_id):
                        with trio.CancelScope(shield=True):
                            await self._send_queue(room_id, rv)
                finally:
                    self._senders.discard(room_id)
                    self._rouse(room_id)
        except BaseException:
            if not queued.taken:
                waiting = self._queued.get(room_id, [])
                waiting.remove(queued)
                if not waiting:
                    self._queued.pop(room_id, None)
                self._rouse(room_id)
            raise
        return queued.result()

    def _stir(self, room_id: str) -> None:
        """Wake a room's sender waiting for a write to land (see :meth:`_send_queue`)."""
        stirred = self._stirred.pop(room_id, None)
        if stirred is not None:
            stirred.set()

    def _rouse(self, room_id: str) -> None:
        """Wake the first message waiting in a room's queue that no task sends."""
        waiting = self._queued.get(room_id)
        if waiting and room_id not in self._senders:
            waiting[0].wake.set()

    def _take_queue(self, room_id: str) -> list[_QueuedMessage]:
        batch = self._queued.pop(room_id, [])
        for message in batch:
            message.taken = True
        return batch

    async def _send_queue(self, room_id: str, rv: RoomVersion) -> None:
        """Send the room's queue (the room's lock held).

        Messages are built and checked in order, each on the one before,
        which is staged, not yet written (see
        :class:`~ranvier.core.creation_reads.CreationReads`). The staged
        ones are written in one request, and so share a commit, as a
        :class:`_Flight`: while it is on disk, the messages that come are
        built on it, and written together once it has landed. If a write
        fails, the messages built since followed events that are not there,
        and are built again (:meth:`_settle`). A message that is refused
        fails alone. One that cannot be staged (with partial state, or
        leaving other extremities) is written on its own once those before
        it are, as :meth:`_write` would. The lock is held until every write
        is done, and new messages are taken for at most
        ``_MOST_GROUPS_PER_HOLD`` writes; those left then are sent by the
        next of them to take the lock.
        """
        self._reads.begin(room_id)
        # The auth events of a room's messages are mostly the same few; they
        # are parsed once per hold. The lock keeps every other writer out,
        # and messages, all that is written meanwhile, are no one's auth
        # events, so what the loader holds stays true until the lock goes.
        # A redaction among them can change how the checks read an auth
        # event, never in what a message's checks read: redacted power
        # levels keep the levels of events and users, a member event its
        # membership.
        loader = EventLoader(self._reads, rv)
        taken: list[_QueuedMessage] = []
        flights: list[_Flight] = []
        todo: deque[_QueuedMessage] = deque()
        staged: list[tuple[_QueuedMessage, Pdu, EventContext]] = []
        groups = 0
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    if not todo and groups < _MOST_GROUPS_PER_HOLD:
                        batch = self._take_queue(room_id)
                        taken.extend(batch)
                        todo.extend(batch)
                    if todo:
                        await self._send_one(room_id, rv, todo, staged, flights, loader)
                        continue
                    if (
                        flights
                        and not flights[-1].landed.is_set()
                        and groups < _MOST_GROUPS_PER_HOLD
                    ):
                        # Until the write lands or a message comes to build.
                        stirred = self._stirred[room_id] = trio.Event()
                        await stirred.wait()
                        continue
                    if staged:
                        if await self._settle(room_id, flights, staged, todo):
                            flight = _Flight(list(staged))
                            staged.clear()
                            flights.append(flight)
                            groups += 1
                            nursery.start_soon(self._fly, room_id, flight)
                    elif flights:
                        await self._settle(room_id, flights, staged, todo)
                    else:
                        return
        finally:
            self._stirred.pop(room_id, None)
            for message in taken:
                if not message.done:
                    message.fail(
                        MatrixError(
                            f"sending to {room_id} failed", errcode="M_UNKNOWN", http_status=500
                        )
                    )

    async def _send_one(
        self,
        room_id: str,
        rv: RoomVersion,
        todo: deque[_QueuedMessage],
        staged: list[tuple[_QueuedMessage, Pdu, EventContext]],
        flights: list[_Flight],
        loader: EventLoader,
    ) -> None:
        """Build and check the first message of ``todo``: stage it, or write
        it on its own after those staged (see :meth:`_send_queue`).
        ``loader`` is the hold's, used while the room is known to have full
        state (partial state may be cleared, and events' rejections worked
        out again, under the lock).
        """
        message = todo.popleft()
        sender: str = message.template["sender"]
        txn_id = message.txn_id
        if txn_id is not None and any(
            other.txn_id == txn_id and event.sender == sender for other, event, _ in staged
        ):
            if not await self._settle(room_id, flights, staged, todo, message):
                return
            await self._write_staged(room_id, staged)
        if txn_id is not None and (sent := self._transactions.get(sender, txn_id)):
            message.succeed(sent)
            return
        try:
            event = await self._build(
                rv, message.template, begin=False, timestamp=message.timestamp
            )
            full = self._reads.known_full(room_id)
            context = await self._authorise(event, loader=loader if full else None)
            event = await self._policy_signed(event, context)
        except Exception as error:
            message.fail(error)
            return
        if not context.partial_state and self._reads.follows_every_extremity(event):
            self._reads.stage(event, context)
            staged.append((message, event, context))
            return
        if not await self._settle(room_id, flights, staged, todo, message):
            return
        await self._write_staged(room_id, staged)
        try:
            await self._persist_announced(event, context)
        except Exception as error:
            message.fail(error)
            return
        message.succeed(event.event_id)
        if txn_id is not None:
            self._transactions.add(sender, txn_id, event.event_id)

    async def _settle(
        self,
        room_id: str,
        flights: list[_Flight],
        staged: list[tuple[_QueuedMessage, Pdu, EventContext]],
        todo: deque[_QueuedMessage],
        *built: _QueuedMessage,
    ) -> bool:
        """Wait for the write in flight, if any; whether it was written.

        If it was not, the messages built since (``staged``, then
        ``built``) followed events that are not there: they are put back at
        the head of ``todo`` to be built again on what the room holds. The
        written messages' failure is theirs, as :meth:`_write_staged` has it.
        """
        if not flights:
            return True
        flight = flights.pop()
        await flight.landed.wait()
        failure = flight.failure
        if failure is None:
            return True
        self._reads.unstage(room_id, [event.event_id for _, event, _ in staged])
        self._reads.unstage(room_id, [event.event_id for _, event, _ in flight.written])
        if isinstance(failure, PartialStateConflictError):
            await self._rewrite_one_by_one(room_id, [(m, e) for m, e, _ in flight.written])
        else:
            for message, _, _ in flight.written:
                message.fail(failure)
        todo.extendleft(reversed([*(message for message, _, _ in staged), *built]))
        staged.clear()
        self._reads.begin(room_id)
        return False

    async def _fly(self, room_id: str, flight: _Flight) -> None:
        """Write a flight's messages and announce them; a failed write is
        kept for :meth:`_settle`, which handles it under the room's lock.
        """
        try:
            try:
                orderings = await self._persist_staged(flight.written)
            except Exception as error:
                flight.failure = error
                return
            await self._staged_written(room_id, flight.written, orderings, keep_head=True)
        finally:
            flight.landed.set()
            self._stir(room_id)

    async def _write_staged(
        self, room_id: str, staged: list[tuple[_QueuedMessage, Pdu, EventContext]]
    ) -> None:
        """Write the staged messages in one request and announce them; empty ``staged``."""
        if not staged:
            return
        written = list(staged)
        staged.clear()
        try:
            orderings = await self._persist_staged(written)
        except PartialStateConflictError:
            # The room's partial state was cleared under the write; each
            # message is checked again and written on its own, as _write does.
            self._reads.unstage(room_id, [event.event_id for _, event, _ in written])
            await self._rewrite_one_by_one(room_id, [(m, e) for m, e, _ in written])
            return
        except Exception as error:
            self._reads.unstage(room_id, [event.event_id for _, event, _ in written])
            for message, _, _ in written:
                message.fail(error)
            return
        await self._staged_written(room_id, written, orderings, keep_head=False)

    async def _persist_staged(
        self, written: Sequence[tuple[_QueuedMessage, Pdu, EventContext]]
    ) -> Mapping[str, int]:
        """Write staged messages, with their client transactions, in one request."""
        events = [event_to_persist(event, context) for _, event, context in written]
        recording = [
            (message.transaction, event.event_id)
            for message, event, _ in written
            if message.transaction is not None
        ]
        if not recording or self._transaction_recorder is None:
            return await self._persister.persist_events(events)
        recorder = self._transaction_recorder
        orderings, recorded = await recorder.persist_events_recording_transactions(
            events, [transaction.row(event_id) for transaction, event_id in recording]
        )
        for (transaction, _), event_id in zip(recording, recorded, strict=True):
            transaction.recorded = event_id
        return orderings

    async def _staged_written(
        self,
        room_id: str,
        written: Sequence[tuple[_QueuedMessage, Pdu, EventContext]],
        orderings: Mapping[str, int],
        *,
        keep_head: bool,
    ) -> None:
        """Note written staged messages, answer them and announce them;
        ``keep_head`` keeps the room's extremities, which messages staged
        since lead (see :meth:`CreationReads.written`).
        """
        for message, event, context in written:
            self._reads.written(event, context, orderings[event.event_id], keep_head=keep_head)
            message.succeed(event.event_id)
            if message.txn_id is not None:
                self._transactions.add(event.sender, message.txn_id, event.event_id)
        # Staged messages followed every extremity and left the state as it
        # was: the room's current state is the group they were built on, and
        # partial only if the room was read to be so under this hold of its lock.
        await self._announce(
            [(event, orderings[event.event_id]) for _, event, _ in written],
            state_group=written[-1][2].state_group_before,
            full_state=self._reads.known_full(room_id),
        )

    async def _rewrite_one_by_one(
        self, room_id: str, messages: Sequence[tuple[_QueuedMessage, Pdu]]
    ) -> None:
        """Check and write messages once more, one at a time, after a conflict.

        A second conflict is handed back as a 429 to that message's client
        and, as each message follows the one before, to the clients of the
        messages after it.
        """
        for index, (message, event) in enumerate(messages):
            self._reads.begin(room_id)
            try:
                context = await self._authorise(event)
                ordering = await self._persist(event, context)
            except Exception as error:
                if isinstance(error, PartialStateConflictError):
                    self.conflicts_refused += 1
                    error = LimitExceededError(
                        f"the state of room {room_id} changed twice while"
                        f" {event.event_id} was being written; try again",
                        retry_after_ms=self._retry_after_ms,
                    )
                for unsent, _ in messages[index:]:
                    unsent.fail(error)
                return
            message.succeed(event.event_id)
            if message.txn_id is not None:
                self._transactions.add(event.sender, message.txn_id, event.event_id)
            await self._announce([(event, ordering)])

    async def _announce(
        self,
        events: Sequence[tuple[Pdu, int]],
        *,
        state_group: int | None = None,
        full_state: bool = False,
    ) -> None:
        """Tell the notifier of written events, in the order they were written;
        ``state_group`` and ``full_state`` as
        :meth:`BatchEventNotifier.on_new_events` takes them.
        """
        if self._notifier is None:
            return
        if isinstance(self._notifier, BatchEventNotifier):
            await self._notifier.on_new_events(
                events, state_group=state_group, full_state=full_state
            )
            return
        for event, ordering in events:
            await self._notifier.on_new_event(event, ordering)

    # --- Memberships ----------------------------------------------------------------

    async def invite(
        self,
        sender: str,
        room_id: str,
        target: str,
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> str:
        """Invite ``target``; return the invite's event ID.

        A user of another server is invited through ``remote_inviter``: the
        invite is checked here first, then sent to the invitee's server,
        and written with that server's signature once it agrees. A room
        whose create event says ``m.federate: false`` takes no such invite.

        ``content`` holds the keys the client gave the event besides the
        membership (``reason``, ``is_direct``, its own); ``origin_server_ts``
        is an application service's timestamp, as :meth:`send_event` takes
        it. Every membership method here takes both.
        """
        if not self._is_local(target) and self._remote_inviter is None:
            raise _no_remote_invites(target)
        if self._is_local(target) and self.member_profiles is not None:
            # A bridge makes its users when they are first needed, as the
            # Application Service API's user query has it: an invite is one.
            await self.member_profiles.ask_services_about(target)
        return await self._membership(
            sender,
            room_id,
            target,
            member_event_content("invite", content, reason),
            origin_server_ts=origin_server_ts,
        )

    async def join(
        self,
        user: str,
        room_id: str,
        *,
        reason: str | None = None,
        authoriser: str | None = None,
        content: Mapping[str, Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> str:
        """Join a room this server is in; return the join's event ID.

        ``authoriser`` is the user named to vouch for the join of a
        restricted room (:mod:`ranvier.core.restricted_joins` picks one).
        Raises :class:`NotInRoomError` for a room this server is not in
        (unknown here, or every local user has left): such a join goes
        through another server. The user's profile fills in the display
        name and avatar that ``content`` does not give.
        """
        self._check_local(user)
        joined = member_event_content("join", content, reason)
        if authoriser is not None:
            joined[AUTHORISER] = authoriser
        # A room not known here at all is not one this server is in either.
        await self._room_version(room_id, not_known=NotInRoomError(room_id))
        if not await self._server_in_room(room_id):
            raise NotInRoomError(room_id)
        return await self._membership(
            user, room_id, user, joined, origin_server_ts=origin_server_ts
        )

    async def leave(
        self,
        user: str,
        room_id: str,
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> str:
        """Leave a room, or decline an invite; return the leave's event ID."""
        return await self._membership(
            user,
            room_id,
            user,
            member_event_content("leave", content, reason),
            origin_server_ts=origin_server_ts,
        )

    async def kick(
        self,
        sender: str,
        room_id: str,
        target: str,
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> str:
        """Make ``target`` leave: a leave sent by someone else, which needs the kick level.

        The rules would let a leave be written for a user who already left
        or never came; the API refuses that kick instead, as a no-op.
        """
        left = member_event_content("leave", content, reason)
        rv = await self._room_version(room_id)
        if await self._current_membership(room_id, rv, target) not in ("join", "invite", "knock"):
            raise MatrixError(
                f"{target} is not in {room_id}", errcode="M_FORBIDDEN", http_status=403
            )
        return await self._membership(
            sender, room_id, target, left, origin_server_ts=origin_server_ts
        )

    async def ban(
        self,
        sender: str,
        room_id: str,
        target: str,
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> str:
        return await self._membership(
            sender,
            room_id,
            target,
            member_event_content("ban", content, reason),
            origin_server_ts=origin_server_ts,
        )

    async def unban(
        self,
        sender: str,
        room_id: str,
        target: str,
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> str:
        """Lift a ban: a leave of a banned user, which needs the ban level."""
        return await self._membership(
            sender,
            room_id,
            target,
            member_event_content("leave", content, reason),
            origin_server_ts=origin_server_ts,
        )

    async def _membership(
        self,
        sender: str,
        room_id: str,
        target: str,
        content: dict[str, Any],
        *,
        origin_server_ts: int | None = None,
    ) -> str:
        """Write the member event of ``target`` with ``content``, made by
        :func:`member_event_content`."""
        self._check_local(sender)
        if not is_valid_user_id(target):
            raise _invalid_param(f"{target!r} is not a user ID")
        _check_timestamp(origin_server_ts)
        membership = content["membership"]
        if membership == "join" and self.member_profiles is not None:
            content = {**await self.member_profiles.member_content(target), **content}
        if membership == "invite":
            await self._check_invite(room_id, target)
        rv = await self._room_version(room_id)
        template = {
            "type": _MEMBER,
            "sender": sender,
            "room_id": room_id,
            "state_key": target,
            "content": content,
        }
        async with self._locks.hold(room_id):
            event = await self._build(rv, template, timestamp=origin_server_ts)
            written = await self._write(event, countersign=self._countersigner(event))
        return written.event_id

    async def _check_invite(self, room_id: str, invitee: str) -> None:
        if not self._is_local(invitee) and not await self._federates(room_id):
            raise _not_federated(room_id, invitee)
        if self.invite_permission is not None:
            await self.invite_permission.check_invite(invitee)

    async def _federates(self, room_id: str) -> bool:
        """Whether users of other servers may join the room: its create
        event does not say ``m.federate: false``.

        The auth rules alone would let the invite of another server's user
        through, as it comes from this server, and then refuse every join,
        leave or answer from theirs: the invite would only ever be a
        dead end. The plain store is read, as rehearsals do, since the
        create event does not change under anyone.
        """
        ids = await self._store.get_current_state_ids_for_keys(room_id, (CREATE_KEY,))
        create_id = ids.get(CREATE_KEY)
        if create_id is None:
            return True
        row = (await self._store.get_events([create_id])).get(create_id)
        return row is None or event_content(row).get(_FEDERATE) is not False

    async def _invitable(self, invitees: list[str]) -> list[str]:
        """``invitees`` without those who block invites: the spec has the
        room made all the same, without their invites."""
        if self.invite_permission is None:
            return invitees
        return [
            user_id
            for user_id in invitees
            if not await self.invite_permission.refuses_invite(user_id)
        ]

    # --- The path of every event ----------------------------------------------------

    async def _build(
        self,
        rv: RoomVersion,
        template: Mapping[str, Any],
        *,
        begin: bool = True,
        timestamp: int | None = None,
    ) -> Pdu:
        room_id = template.get("room_id")
        if begin and type(room_id) is str:
            self._reads.begin(room_id)
        return await build_event(
            template,
            room_version=rv,
            store=self._reads,
            server_name=self.server_name,
            signing_key=self._signing_key,
            clock=self._clock_for(timestamp),
        )

    def _clock_for(self, timestamp: int | None) -> Clock:
        """The clock of an event: the server's, or stopped at the
        ``origin_server_ts`` its sender chose."""
        if timestamp is None:
            return self._clock
        return lambda: timestamp

    async def _write(
        self,
        event: Pdu,
        *,
        countersign: Callable[[Pdu], Awaitable[Pdu]] | None = None,
    ) -> Pdu:
        """Check and write ``event`` (the room's lock held); return it as written.

        ``countersign`` runs between the checks and the write, once: an
        invite goes to the invitee's server only when this server would
        accept it, and is written as that server returned it.
        """
        context = await self._authorise(event)
        event = await self._policy_signed(event, context)
        if countersign is not None:
            event = await countersign(event)
        await self._persist_announced(event, context)
        return event

    async def _persist_announced(self, event: Pdu, context: EventContext) -> None:
        """Write a checked event and announce it; see :meth:`_write`."""
        # From here the event is written and announced even if the caller
        # gives up: an event written but never sent to the room's other
        # servers would leave them without it until something else pulls it.
        with trio.CancelScope(shield=True):
            try:
                ordering = await self._persist(event, context)
            except PartialStateConflictError:
                # The room's partial state was cleared under us: the state
                # before the event is now known in full, and may differ.
                self._reads.begin(event.room_id)
                context = await self._authorise(event)
                try:
                    ordering = await self._persist(event, context)
                except PartialStateConflictError:
                    self.conflicts_refused += 1
                    raise LimitExceededError(
                        f"the state of room {event.room_id} changed twice while"
                        f" {event.event_id} was being written; try again",
                        retry_after_ms=self._retry_after_ms,
                    ) from None
            await self._announce([(event, ordering)])

    async def _authorise(self, event: Pdu, *, loader: EventLoader | None = None) -> EventContext:
        """The event's context, once the auth rules accept it at all three points.

        ``loader`` carries the events parsed for the messages before it in
        the same hold of the room's lock (see :meth:`_send_queue`); the
        checks are :func:`~ranvier.core.event_auth.run_auth_checks`', run
        one by one to hand it over.
        """
        context = await compute_event_context(event, self._reads, self._persister)
        if loader is None:
            outcome = await run_auth_checks(event, context, self._reads)
            if outcome.failure is not None:
                raise _as_client_error(outcome.failure.error)
            return outcome.context
        failure = await check_against_auth_events(event, self._reads, loader=loader)
        if failure is None and not context.is_outlier:
            failure = await check_against_state_before(event, context, self._reads, loader=loader)
            if failure is None:
                failure = await check_against_current_state(
                    event, context, self._reads, loader=loader
                )
        if failure is not None:
            raise _as_client_error(failure.error)
        return context

    async def _policy_signed(self, event: Pdu, context: EventContext) -> Pdu:
        """``event`` with its room's policy server's signature, when the room
        uses one; raises the policy server's refusal, before anything is
        written.

        The ``m.room.policy`` entry is read from the state the event was
        checked against, the room's current state for an event that follows
        every extremity: its state group's entries were just read for the
        auth rules, and :class:`~ranvier.core.creation_reads.CreationReads`
        reads this key with them, so a room without a policy server costs no
        read.
        """
        if self.policy_servers is None or context.is_outlier:
            return event
        state = await context.get_state_before_for_keys(self._reads, (POLICY_KEY,))
        return await self.policy_servers.sign_ours(event, state.get(POLICY_KEY))

    async def _persist(self, event: Pdu, context: EventContext) -> int:
        current = await compute_current_state_after(event, context, self._reads, self._persister)
        orderings = await self._persister.persist_events(
            [event_to_persist(event, context)],
            current_state_groups=None if current is None else {event.room_id: current},
        )
        ordering = orderings[event.event_id]
        self._reads.written(event, context, ordering)
        return ordering

    def _countersigner(self, event: Pdu) -> Callable[[Pdu], Awaitable[Pdu]] | None:
        """How an invite of a user of another server gets that server's signature."""
        if event.membership != "invite" or event.state_key is None:
            return None
        target = event.state_key
        if self._is_local(target):
            return None
        inviter = self._remote_inviter
        if inviter is None:
            raise _no_remote_invites(target)

        async def countersign(invite: Pdu) -> Pdu:
            # Only the invitee's server's signatures are taken from its
            # answer: the event written is the one checked here, whatever
            # else came back. Verifying that signature is the sender's job.
            server = target.partition(":")[2]
            answered = await inviter.send_invite(invite)
            theirs = answered.signatures.get(server)
            if not isinstance(theirs, dict) or not theirs:
                raise MatrixError(
                    f"{server} answered invite {invite.event_id} without its signature",
                    errcode="M_UNKNOWN",
                    http_status=502,
                )
            signatures = dict(invite.signatures) | {server: dict(theirs)}
            return Pdu.from_json(invite.json | {"signatures": signatures}, invite.room_version)

        return countersign

    # --- Helpers --------------------------------------------------------------------

    def _check_acl_admits_us(self, content: Mapping[str, Any]) -> None:
        """Refuse a server ACL that would deny this server.

        The room's other servers would refuse every event of our users,
        and answer none of our requests about the room, from then on; an
        ACL without an allow list does this to every server, as the spec
        warns. Only a server still let in could send the ACL that undoes it.
        """
        if not server_allowed_by_acl(self.server_name, content):
            raise _invalid_param(
                f"this server ACL would deny {self.server_name}, the server sending it,"
                " so that no other server would take its users' events in the room;"
                ' allow it (an allow list of ["*"] lets in every server not denied)'
            )

    async def _check_not_an_acl(self, room_id: str, redacts: object) -> None:
        """Refuse to redact a server ACL of the room.

        Redaction keeps none of an ACL's content, and an ACL with no allow
        list denies every server, this one too (see
        :meth:`_check_acl_admits_us`); a new ACL replaces one instead.
        """
        if not isinstance(redacts, str):
            return
        target = (await self._store.get_events([redacts])).get(redacts)
        if target is None or target.room_id != room_id:
            return
        if target.type == SERVER_ACL_TYPE and target.state_key == "":
            raise MatrixError(
                f"{redacts} is a server ACL, which may not be redacted: an ACL stripped"
                " of its content denies every server, this one included; send a new one",
                errcode="M_FORBIDDEN",
                http_status=403,
            )

    def _is_local(self, user_id: str) -> bool:
        return type(user_id) is str and user_id.partition(":")[2] == self.server_name

    def _check_local(self, user_id: str) -> None:
        if type(user_id) is not str or not user_id.startswith("@") or not self._is_local(user_id):
            raise MatrixError(
                f"{user_id!r} is not a user of {self.server_name}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )

    def _new_room_id(self) -> str:
        localpart = "".join(secrets.choice(_ROOM_ID_CHARS) for _ in range(_ROOM_ID_LENGTH))
        return f"!{localpart}:{self.server_name}"

    async def _room_version(
        self, room_id: str, *, not_known: MatrixError | None = None
    ) -> RoomVersion:
        identifier = await self._reads.get_room_version(room_id)
        if identifier is None:
            raise not_known or MatrixError(
                f"room {room_id} is not known here", errcode="M_NOT_FOUND", http_status=404
            )
        return get_room_version(identifier)

    async def _current_membership(self, room_id: str, rv: RoomVersion, user_id: str) -> str | None:
        """``user_id``'s membership in the room's current state, if any."""
        state = await self._store.get_current_state_ids_for_keys(room_id, [(_MEMBER, user_id)])
        event_id = state.get((_MEMBER, user_id))
        if event_id is None:
            return None
        row = (await self._store.get_events([event_id])).get(event_id)
        if row is None:
            return None
        return Pdu.from_json(row.json, rv, check_limits=False).membership

    async def _server_in_room(self, room_id: str) -> bool:
        """Whether some user of this server is joined to the room, asked of
        storage, which finds one without reading a big room's whole state.
        """
        return await self._store.server_has_joined_member(room_id, self.server_name)


# --- Room creation, worked out before anything is written ----------------------------


def _invalid_param(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


#: Auth rules an event fails by its content alone, whoever sends it.
_CONTENT_RULES: Final = frozenset(
    {"power_levels.value", "power_levels.users", "power_levels.creator_in_users"}
)


class MalformedEventError(AuthError):
    """An event of ours the auth rules refuse for its content, which no
    sender could send: a malformed request (400 M_BAD_JSON) rather than one
    its sender lacks the power for. Still an :class:`AuthError`, so that
    whoever passes over an event the rules refuse passes over this one too.
    """

    errcode = "M_BAD_JSON"
    http_status = 400


def _as_client_error(error: AuthError) -> AuthError:
    if error.rule in _CONTENT_RULES:
        return MalformedEventError(error.message, rule=error.rule)
    return error


def _without_voucher(event_type: str, content: Mapping[str, Any]) -> Mapping[str, Any]:
    """``content`` less a ``join_authorised_via_users_server`` a client sent.

    The auth rules hold any member event naming an authoriser to that
    user's server's signature, which only a join this server vouches for
    carries (:meth:`EventCreator.join`). A client echoing its join's
    content back with a new display name would otherwise be refused for a
    key it cannot sign; the spec tells clients to drop it, and servers
    drop it for those that do not.
    """
    if event_type != _MEMBER or AUTHORISER not in content:
        return content
    return {key: value for key, value in content.items() if key != AUTHORISER}


def member_event_content(
    membership: str, given: Mapping[str, Any] | None, reason: str | None = None
) -> dict[str, Any]:
    """The content of a member event a local user asks for: the keys they
    gave (a per-room display name, ``is_direct``, their own), ``membership``
    over whatever they said of it, and ``reason`` when given apart.

    An authoriser they named is dropped (see :func:`_without_voucher`):
    only this server names one, for a join it vouches for.
    """
    if given is not None and not isinstance(given, Mapping):
        raise _invalid_param("a member event's content must be a JSON object")
    content = dict(_without_voucher(_MEMBER, given or {}))
    content["membership"] = membership
    if reason is not None:
        content["reason"] = reason
    if "reason" in content and type(content["reason"]) is not str:
        raise _invalid_param("a reason must be a string")
    return content


def _not_federated(room_id: str | None, user_id: str) -> MatrixError:
    room = "this room" if room_id is None else f"room {room_id}"
    return MatrixError(
        f"{room} is not federated (its create event sets {_FEDERATE} to false):"
        f" {user_id}, a user of another server, could never join it",
        errcode="M_FORBIDDEN",
        http_status=403,
    )


def _event_template(
    rv: RoomVersion,
    sender: str,
    room_id: str,
    event_type: str,
    content: Mapping[str, Any],
    state_key: str | None,
) -> dict[str, Any]:
    """A client's message or state event, as the builder takes it."""
    template: dict[str, Any] = {
        "type": event_type,
        "sender": sender,
        "room_id": room_id,
        "content": dict(content),
    }
    if state_key is not None:
        template["state_key"] = state_key
    if event_type == "m.room.redaction" and "redacts" in content and not rv.redacts_in_content:
        # Before v11 the redacted event is named at the top level.
        template["redacts"] = content["redacts"]
    return template


def _check_timestamp(origin_server_ts: int | None) -> None:
    """Refuse a chosen ``origin_server_ts`` that no event may carry: the
    field is a non-negative integer that canonical JSON can hold."""
    if origin_server_ts is None:
        return
    if type(origin_server_ts) is not int or not 0 <= origin_server_ts <= CANONICAL_INT_MAX:
        raise _invalid_param(
            "an event's origin_server_ts must be an integer from 0 to"
            f" {CANONICAL_INT_MAX}, not {origin_server_ts!r}"
        )


def _no_remote_invites(user_id: str) -> MatrixError:
    return MatrixError(
        f"{user_id} is a user of another server, and this server sends no invites to others",
        errcode="M_UNKNOWN",
        http_status=501,
    )


def _invitees(invite: Iterable[str], creator: str) -> list[str]:
    if isinstance(invite, str):
        raise _invalid_param("invite must be a list of user IDs, not one string")
    invitees = list(dict.fromkeys(invite))
    for user_id in invitees:
        if not is_valid_user_id(user_id):
            raise _invalid_param(f"cannot invite {user_id!r}: it is not a user ID")
    if creator in invitees:
        raise _invalid_param(f"{creator} creates the room and cannot also be invited to it")
    return invitees


def _state(
    event_type: str, sender: str, content: Mapping[str, Any], state_key: str = ""
) -> dict[str, Any]:
    return {"type": event_type, "state_key": state_key, "sender": sender, "content": dict(content)}


def _room_templates(
    rv: RoomVersion,
    creator: str,
    *,
    preset: str,
    name: str | None,
    topic: str | None,
    invitees: Collection[str],
    initial_state: Iterable[Mapping[str, Any]],
    power_level_content_override: Mapping[str, Any] | None,
    creation_content: Mapping[str, Any] | None,
    is_direct: bool = False,
) -> list[dict[str, Any]]:
    """The events of a new room in the spec's order, without room IDs."""
    trusted = preset == "trusted_private_chat"
    create_content = _create_content(rv, creator, creation_content, invitees if trusted else ())

    initial = [_initial_state_event(creator, item) for item in initial_state]
    if name is not None:
        initial = [event for event in initial if (event["type"], event["state_key"]) != (_NAME, "")]
    if topic is not None:
        initial = [
            event for event in initial if (event["type"], event["state_key"]) != (_TOPIC, "")
        ]
    initial_keys = {(event["type"], event["state_key"]) for event in initial}

    power_levels: dict[str, Any] = _default_power_levels(rv, creator, preset, invitees)
    for event in initial:
        if (event["type"], event["state_key"]) == POWER_LEVELS_KEY:
            power_levels = dict(event["content"])
    initial = [
        event for event in initial if (event["type"], event["state_key"]) != POWER_LEVELS_KEY
    ]
    if power_level_content_override is not None:
        if not isinstance(power_level_content_override, Mapping):
            raise _invalid_param("power_level_content_override must be a JSON object")
        power_levels.update(power_level_content_override)

    join_rule, history_visibility, guest_access = _PRESET_STATE[preset]
    preset_events = [
        _state(_JOIN_RULES, creator, {"join_rule": join_rule}),
        _state(_HISTORY_VISIBILITY, creator, {"history_visibility": history_visibility}),
        _state(_GUEST_ACCESS, creator, {"guest_access": guest_access}),
    ]
    templates = [
        _state(CREATE_KEY[0], creator, create_content),
        _state(_MEMBER, creator, {"membership": "join"}, creator),
        _state(POWER_LEVELS_KEY[0], creator, power_levels),
        *(e for e in preset_events if (e["type"], e["state_key"]) not in initial_keys),
        *initial,
    ]
    if name is not None:
        if type(name) is not str:
            raise _invalid_param("a room name must be a string")
        templates.append(_state(_NAME, creator, {"name": name}))
    if topic is not None:
        if type(topic) is not str:
            raise _invalid_param("a room topic must be a string")
        templates.append(_state(_TOPIC, creator, _topic_content(topic)))
    invite: dict[str, Any] = {"membership": "invite"}
    if is_direct:
        invite["is_direct"] = True
    templates.extend(_state(_MEMBER, creator, invite, user) for user in invitees)
    return templates


def _create_content(
    rv: RoomVersion,
    creator: str,
    creation_content: Mapping[str, Any] | None,
    additional_creators: Collection[str],
) -> dict[str, Any]:
    if creation_content is not None and not isinstance(creation_content, Mapping):
        raise _invalid_param("creation_content must be a JSON object")
    content = dict(creation_content or {})
    # The server decides these two, whatever the request says.
    content["room_version"] = rv.identifier
    if rv.implicit_room_creator:
        content.pop("creator", None)
    else:
        content["creator"] = creator
    if rv.privileged_creators and additional_creators:
        # trusted_private_chat: invitees get the creator's power, which from
        # v12 only the create event can give.
        named = content.get("additional_creators", [])
        if not isinstance(named, list):
            raise _invalid_param("creation_content.additional_creators must be a list of user IDs")
        content["additional_creators"] = list(dict.fromkeys([*named, *additional_creators]))
    return content


def _default_power_levels(
    rv: RoomVersion, creator: str, preset: str, invitees: Collection[str]
) -> dict[str, Any]:
    """The power levels a new room starts with, before any override.

    The creator can do everything (from v12 by being a creator, which
    ``users`` must not mention); everyone else may talk and, in a private
    chat, invite their friends. Changing the power levels, who can read the
    history, encryption, server ACLs and upgrading the room need more than
    a moderator's 50; from v12 the upgrade (tombstone) needs more than an
    admin's 100, as the spec asks.
    """
    users: dict[str, int] = {}
    if not rv.privileged_creators:
        users[creator] = _CREATOR_LEVEL
        if preset == "trusted_private_chat":
            users.update((user, _CREATOR_LEVEL) for user in invitees)
    return {
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.encryption": 100,
            "m.room.server_acl": 100,
            "m.room.tombstone": 150 if rv.privileged_creators else 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 50 if preset == "public_chat" else 0,
    }


def _topic_content(topic: str) -> dict[str, Any]:
    # The plain ``topic`` for older clients, and the same text as a
    # text/plain representation of ``m.topic``.
    return {"topic": topic, "m.topic": {"m.text": [{"mimetype": "text/plain", "body": topic}]}}


def _initial_state_event(creator: str, item: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise _invalid_param("each initial_state entry must be a JSON object")
    event_type, state_key, content = (
        item.get("type"),
        item.get("state_key", ""),
        item.get("content"),
    )
    if type(event_type) is not str or not event_type:
        raise _invalid_param("an initial_state entry needs a type")
    if type(state_key) is not str:
        raise _invalid_param(f"the state_key of initial_state entry {event_type} must be a string")
    if not isinstance(content, Mapping):
        raise _invalid_param(f"initial_state entry {event_type} needs a content object")
    if event_type in (CREATE_KEY[0], _MEMBER):
        raise MatrixError(
            f"initial_state may not hold {event_type} events: the server sends them",
            errcode="M_INVALID_ROOM_STATE",
            http_status=400,
        )
    return _state(event_type, creator, content, state_key)


def _rehearse(rv: RoomVersion, room_id: str | None, templates: list[dict[str, Any]]) -> None:
    """Run a new room's events through the auth rules in memory, before any is written.

    The events here are drafts (no hashes, no signatures, a zero
    timestamp), chained as the real ones will be; the rules read none of
    what differs. Raises M_INVALID_ROOM_STATE naming the first event the
    rules would refuse, or the error that makes an event invalid.
    """
    state: dict[StateKey, Pdu] = {}
    prev: list[str] = []
    for depth, template in enumerate(templates, start=1):
        fields = template | {
            "prev_events": prev,
            "auth_events": [],
            "depth": depth,
            "origin_server_ts": 0,
            "hashes": {"sha256": ""},
            "signatures": {},
        }
        if room_id is not None:
            fields["room_id"] = room_id
        draft = Pdu.from_json(fields, rv)
        try:
            check_auth_rules(draft, state)
        except AuthError as error:
            key = (draft.type, draft.state_key)
            raise MatrixError(
                f"the room's {key} event would be refused: {error.message}",
                errcode="M_INVALID_ROOM_STATE",
                http_status=400,
            ) from None
        room_id = draft.room_id
        state[(template["type"], template["state_key"])] = draft
        prev = [draft.event_id]
