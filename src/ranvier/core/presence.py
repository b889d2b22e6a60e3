"""Presence: whether a user is online, and the status message they set.

``PUT /presence/{userId}/status`` sets a local user's own presence and
status message; ``GET`` answers it with how long ago the user was last
active. A ``/sync`` marks its user ``online`` unless its ``set_presence``
says otherwise (:meth:`Presence.on_sync`). Sending an event, a receipt, a
read marker or a typing notice, and setting ``online``, is activity
(:meth:`Presence.user_active`). Another server's users' presence comes in
``m.presence`` EDUs (:meth:`Presence.on_remote_presence`), taken only for
that server's own users.

Each change of what others see of a user's presence (their state, status
message or ``currently_active``; not a mere sign of activity) is a
position of the presence stream, the sixth stream of a sync token.
``/sync`` gives the ``m.presence`` events of the users who changed since
the token and share a joined room with the syncing user (and the user's
own), and a change wakes the long-polls of those who share a room with the
user. A local user's change is sent to the servers of the rooms they are
in.

Invariants
----------

* **Held in memory.** After a restart every user is ``offline`` until they
  sync or set it again, which is what a client shows of a user it has not
  heard from. The stream starts at the wall-clock time in milliseconds,
  past any position handed out before (as the typing stream does), so a
  token from before the restart never hides a change after it.
* **Online lapses.** A local user is online while they keep syncing: each
  sync or ``PUT`` of ``online`` or ``unavailable`` keeps them so until
  :data:`SYNC_ONLINE_TIMEOUT_MS` after the sync's long-poll could end, and
  then :meth:`Presence.run` marks them offline (and tells the other
  servers). Another server's user lapses to offline when their server has
  said nothing of them for :data:`REMOTE_TIMEOUT_MS`.
* **Idle users are unavailable.** A local user online with no activity
  for ``idle_after`` (:data:`IDLE_AFTER_S` unless told) becomes
  ``unavailable``; their next activity makes them ``online`` at once. A
  sync asking for ``online`` does not: syncing is what an untouched client
  does. ``unavailable`` that the user chose (by ``PUT`` or a sync's
  ``set_presence``) is theirs: activity leaves it alone.
* **currently_active keeps its promise.** A local user online and active
  within :data:`CURRENTLY_ACTIVE_S` is ``currently_active``, which tells
  clients to count them as active until told otherwise; so the end of it
  is a change of its own, made by :meth:`Presence.run` when the time is up,
  and so is its start on activity. ``last_active_ago`` is worked out when
  an answer, a sync or an EDU is made, so it is right at that moment.
* **Trio's clock.** Activity, idleness and lapses are
  :func:`trio.current_time` values, so tests can move time.
* **Who may see.** A user's presence is for the user and for anyone
  sharing a joined room with them: ``GET`` answers others 403, and a sync
  leaves them out, as the spec's security considerations have it. The
  one widening is a room's preview (:mod:`ranvier.core.room_previews`):
  whoever may peek a ``world_readable`` room sees its joined members'
  presence, as Synapse shows it there, the members being listed in the
  room's state the peeker reads anyway.
* **One holder across processes.** With workers, the main process holds
  presence and runs its timers; a worker holds a copy
  (:class:`ranvier.core.ephemeral_replica.PresenceReplica`) made from
  :meth:`Presence.changes_after` and taken with
  :meth:`Presence.take_changes`, with the main process's positions.
  ``last_active`` travels as milliseconds ago, since each process's Trio
  clock has its own origin.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import msgspec
import trio

from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id

from .builder import Clock, wall_clock_ms
from .notifier import StreamNotifier
from .receipts import EduSink, ServersInRoom, server_of

__all__ = [
    "CURRENTLY_ACTIVE_S",
    "IDLE_AFTER_S",
    "PRESENCE_STATES",
    "REMOTE_TIMEOUT_MS",
    "SYNC_ONLINE_TIMEOUT_MS",
    "JoinedRooms",
    "Presence",
    "PresenceChange",
    "PresenceChanges",
    "PresenceState",
    "SharedRooms",
]

_log: Final = logging.getLogger(__name__)

PRESENCE_STATES: Final = frozenset({"online", "offline", "unavailable"})
_MAX_STATUS_LENGTH: Final = 4096
#: A user online and active this recently (seconds) is ``currently_active``.
CURRENTLY_ACTIVE_S: Final = 60.0
#: How long (seconds) an online user may do nothing before they are unavailable.
IDLE_AFTER_S: Final = 300.0
#: How long after a sync could have ended its user stays online.
SYNC_ONLINE_TIMEOUT_MS: Final = 30_000
#: How long another server's user stays as their server last said.
REMOTE_TIMEOUT_MS: Final = 30 * 60_000


class JoinedRooms(Protocol):
    """The rooms a user is joined to (:class:`ranvier.core.rooms.RoomReader`)."""

    async def joined_rooms(self, user_id: str) -> Collection[str]: ...


class SharedRooms(Protocol):
    """Who shares a joined room with whom
    (:class:`ranvier.storage.room_members.RoomMemberStorage`).
    """

    async def users_sharing_a_room(self, user_id: str, candidates: Collection[str]) -> set[str]:
        """Those of ``candidates`` joined to a room ``user_id`` is joined to."""
        ...


@dataclass(frozen=True, slots=True)
class PresenceState:
    """A user's presence as last set."""

    presence: str
    status_msg: str | None
    #: Trio-clock time of the user's last activity; None if unknown.
    last_active: float | None
    currently_active: bool = False


class PresenceChange(msgspec.Struct, frozen=True):
    """A user's presence as a copy in another process takes it."""

    user_id: str
    position: int
    presence: str
    status_msg: str | None
    #: Milliseconds since the user's last activity when this was made.
    last_active_ago: int | None
    currently_active: bool


class PresenceChanges(msgspec.Struct, frozen=True):
    """The users whose presence changed after a copy's position, oldest
    change first, and the stream's newest position.
    """

    position: int
    users: tuple[PresenceChange, ...] = ()


def _bad(message: str, errcode: str = "M_INVALID_PARAM") -> MatrixError:
    return MatrixError(message, errcode=errcode, http_status=400)


class Presence:
    """Users' presence, in memory. ``rooms`` decides who may see whose.

    Without ``shared`` a sync carries no presence; without ``edus`` (and
    ``servers``) nothing is sent to other servers. ``idle_after`` is how
    many seconds an online local user may do nothing before they become
    unavailable. Start :meth:`run` in a nursery so that presence lapses and
    idles.
    """

    def __init__(
        self,
        *,
        rooms: JoinedRooms,
        shared: SharedRooms | None = None,
        server_name: str | None = None,
        servers: ServersInRoom | None = None,
        edus: EduSink | None = None,
        notifier: StreamNotifier | None = None,
        clock: Clock = wall_clock_ms,
        idle_after: float = IDLE_AFTER_S,
    ) -> None:
        if idle_after <= 0:
            raise ValueError("idle_after must be positive")
        self._rooms = rooms
        self._shared = shared
        self._server_name = server_name
        self._servers = servers
        self._edus = edus
        self._notifier = notifier
        self._idle_after = idle_after
        self._states: dict[str, PresenceState] = {}
        # User ID -> the stream position of their last change, oldest first.
        self._changed: dict[str, int] = {}
        self._serial = clock()
        # User ID -> the Trio-clock time their presence lapses to offline.
        self._lapses: dict[str, float] = {}
        # Local user ID -> the Trio-clock time their currently_active ends
        # or they become idle, whichever is next.
        self._activity_due: dict[str, float] = {}
        # Local users made unavailable by idleness, not by their own choice.
        self._idle: set[str] = set()
        self._deadlines_moved = trio.Event()
        # The deadline run() sleeps until: only an earlier one need wake it,
        # so the activity of every message does not make it scan every user.
        self._next_wake = -math.inf

    # --- Local users ----------------------------------------------------------------

    async def set_presence(self, requester: str, user_id: str, body: Mapping[str, Any]) -> None:
        """``PUT /presence/{userId}/status``: only a user's own."""
        if requester != user_id:
            raise MatrixError(
                f"{requester} cannot set the presence of {user_id}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        presence = body.get("presence")
        if not isinstance(presence, str):
            raise _bad("presence is required, one of online, offline or unavailable", "M_BAD_JSON")
        if presence not in PRESENCE_STATES:
            raise _bad(f"presence must be online, offline or unavailable, not {presence[:40]!r}")
        status = body.get("status_msg")
        if status is not None and not isinstance(status, str):
            raise _bad("status_msg must be a string", "M_BAD_JSON")
        if status is not None and len(status) > _MAX_STATUS_LENGTH:
            raise _bad(f"status_msg is longer than {_MAX_STATUS_LENGTH} characters")
        current = self._states.get(user_id)
        # Setting online is activity; choosing to be away or hidden is not.
        last_active = (
            trio.current_time()
            if presence == "online"
            else (None if current is None else current.last_active)
        )
        self._idle.discard(user_id)
        await self._change_local(user_id, presence, status, last_active)
        self._lapse_after(user_id, 0, presence)

    async def on_sync(self, user_id: str, set_presence: str, timeout_ms: int) -> None:
        """A sync by ``user_id`` with ``set_presence`` (``offline``: leave the
        presence alone); it keeps the user so until its long-poll of
        ``timeout_ms`` could end, and a while after.

        A sync is no activity: a client left open syncs all day. Coming
        online is, though, so that a user idles from the moment they came.
        """
        if set_presence == "offline":
            await trio.lowlevel.checkpoint()
            return
        current = self._states.get(user_id)
        status = None if current is None else current.status_msg
        last_active = None if current is None else current.last_active
        if set_presence == "online" and user_id in self._idle:
            # Idle until they do something.
            await trio.lowlevel.checkpoint()
        else:
            if set_presence == "online" and (current is None or current.presence != "online"):
                last_active = trio.current_time()
            self._idle.discard(user_id)
            await self._change_local(user_id, set_presence, status, last_active)
        self._lapse_after(user_id, timeout_ms, set_presence)

    async def user_active(self, user_id: str) -> None:
        """``user_id``, a local user, did something just now: they are active,
        and online again if only idleness had made them unavailable.
        """
        now = trio.current_time()
        current = self._states.get(user_id)
        if current is None:
            # Never online since this process started: offline, as every
            # user is until they sync or set it, and with nothing to show.
            await trio.lowlevel.checkpoint()
            return
        presence = current.presence
        if user_id in self._idle:
            self._idle.discard(user_id)
            presence = "online"
        await self._change_local(user_id, presence, current.status_msg, now)

    async def _change_local(
        self, user_id: str, presence: str, status: str | None, last_active: float | None
    ) -> None:
        """Make a local user's presence ``presence``, with ``currently_active``
        as their last activity says, and look again when that runs out.
        """
        now = trio.current_time()
        active = (
            presence == "online"
            and last_active is not None
            and now < last_active + CURRENTLY_ACTIVE_S
        )
        await self._change(user_id, PresenceState(presence, status, last_active, active))
        self._schedule_activity(user_id)

    def _schedule_activity(self, user_id: str) -> None:
        # Set after the change it follows has been told, as lapses are.
        state = self._states.get(user_id)
        if state is None or state.presence != "online" or state.last_active is None:
            self._activity_due.pop(user_id, None)
            return
        due = state.last_active + self._idle_after
        if state.currently_active:
            due = min(due, state.last_active + CURRENTLY_ACTIVE_S)
        self._activity_due[user_id] = due
        self._deadline_at(due)

    def _deadline_at(self, at: float) -> None:
        if at < self._next_wake:
            self._deadlines_moved.set()

    def _lapse_after(self, user_id: str, timeout_ms: int, presence: str) -> None:
        # Set after the change it follows has been told: a lapse never
        # overtakes the change.
        if presence == "offline":
            self._lapses.pop(user_id, None)
            return
        wait_ms = max(0, timeout_ms) + SYNC_ONLINE_TIMEOUT_MS
        self._lapses[user_id] = at = trio.current_time() + wait_ms / 1000
        self._deadline_at(at)

    # --- Other servers' users ---------------------------------------------------------

    async def on_remote_presence(self, origin: str, pushed: Collection[Mapping[str, Any]]) -> int:
        """The ``push`` list of an ``m.presence`` EDU from ``origin``; return
        how many entries were taken (those of ``origin``'s own users).
        """
        taken = 0
        for entry in pushed:
            user_id = entry.get("user_id")
            presence = entry.get("presence")
            if not isinstance(user_id, str) or server_of(user_id) != origin:
                continue
            if not isinstance(presence, str) or presence not in PRESENCE_STATES:
                continue
            status = entry.get("status_msg")
            ago = entry.get("last_active_ago")
            last_active = (
                trio.current_time() - ago / 1000
                if isinstance(ago, int) and not isinstance(ago, bool) and ago >= 0
                else None
            )
            await self._change(
                user_id,
                PresenceState(
                    str(presence),
                    status if isinstance(status, str) else None,
                    last_active,
                    presence == "online" and entry.get("currently_active") is True,
                ),
                federate=False,
            )
            if presence == "offline":
                self._lapses.pop(user_id, None)
            else:
                self._lapses[user_id] = at = trio.current_time() + REMOTE_TIMEOUT_MS / 1000
                self._deadline_at(at)
            taken += 1
        return taken

    # --- Changes ----------------------------------------------------------------------

    async def _change(self, user_id: str, state: PresenceState, *, federate: bool = True) -> None:
        """Hold ``state`` as ``user_id``'s; a new presence, status message or
        ``currently_active`` is a position of the stream, told to those it
        concerns.
        """
        before = self._states.get(user_id)
        self._states[user_id] = state
        if before is not None and (before.presence, before.status_msg, before.currently_active) == (
            state.presence,
            state.status_msg,
            state.currently_active,
        ):
            await trio.lowlevel.checkpoint()
            return
        self._serial += 1
        self._changed.pop(user_id, None)
        self._changed[user_id] = self._serial
        rooms = await self._rooms.joined_rooms(user_id)
        if self._notifier is not None:
            self._notifier.advance_presence(self._serial, user_id, rooms)
        if federate:
            await self._federate(user_id, state, rooms)

    async def _federate(self, user_id: str, state: PresenceState, rooms: Collection[str]) -> None:
        if self._edus is None or self._servers is None:
            return
        servers: set[str] = set()
        for room_id in rooms:
            servers |= await self._servers.joined_servers(room_id)
        servers.discard(self._server_name or server_of(user_id))
        if not servers:
            return
        entry = {"user_id": user_id, **self._content(state)}
        for server in sorted(servers):
            self._edus.send_edu(server, "m.presence", {"push": [entry]})

    # --- Lapsing and idling -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Mark each user offline when their presence lapses, unavailable when
        they idle, and no longer currently active when that runs out, until
        cancelled.
        """
        task_status.started()
        while True:
            self._deadlines_moved = trio.Event()
            now = trio.current_time()
            for user_id in [u for u, at in self._lapses.items() if at <= now]:
                del self._lapses[user_id]
                try:
                    await self._lapse(user_id)
                except Exception:
                    _log.exception("marking %s offline failed", user_id)
            for user_id in [u for u, at in self._activity_due.items() if at <= now]:
                del self._activity_due[user_id]
                try:
                    await self._look_at_activity(user_id)
                except Exception:
                    _log.exception("marking %s idle or inactive failed", user_id)
            next_at = min(
                min(self._lapses.values(), default=math.inf),
                min(self._activity_due.values(), default=math.inf),
            )
            self._next_wake = next_at
            with trio.move_on_at(next_at):
                await self._deadlines_moved.wait()
            self._next_wake = -math.inf

    async def _lapse(self, user_id: str) -> None:
        current = self._states.get(user_id)
        if current is None or current.presence == "offline":
            return
        self._idle.discard(user_id)
        self._activity_due.pop(user_id, None)
        local = server_of(user_id) == self._server_name
        await self._change(
            user_id,
            replace(current, presence="offline", currently_active=False),
            federate=local,
        )

    async def _look_at_activity(self, user_id: str) -> None:
        current = self._states.get(user_id)
        if current is None or current.presence != "online" or current.last_active is None:
            return
        # Compared as the deadline was reckoned, so that a deadline met is
        # never missed by a rounding.
        if trio.current_time() >= current.last_active + self._idle_after:
            self._idle.add(user_id)
            await self._change_local(
                user_id, "unavailable", current.status_msg, current.last_active
            )
        else:
            await self._change_local(user_id, "online", current.status_msg, current.last_active)

    # --- Copies in other processes -----------------------------------------------------

    def changes_after(self, after: int | None) -> PresenceChanges:
        """The users whose presence changed after ``after`` (every user
        known, for a copy starting afresh: None), as they are now.
        """
        now = trio.current_time()
        changed: list[PresenceChange] = []
        # Oldest change first, so the newest are at the end.
        for user_id, position in reversed(self._changed.items()):
            if after is not None and position <= after:
                break
            state = self._states[user_id]
            ago = (
                None
                if state.last_active is None
                else max(0, round((now - state.last_active) * 1000))
            )
            changed.append(
                PresenceChange(
                    user_id,
                    position,
                    state.presence,
                    state.status_msg,
                    ago,
                    state.currently_active,
                )
            )
        changed.reverse()
        return PresenceChanges(self._serial, tuple(changed))

    async def take_changes(self, changes: PresenceChanges, *, full: bool) -> None:
        """Make this copy hold what ``changes`` says (all of it if ``full``:
        what was held before is dropped), and wake the long-polls of those
        sharing a room with each user.

        Everything is taken before the first read of a user's rooms, so a
        sync never sees the new position without the changes under it.
        """
        now = trio.current_time()
        if full:
            self._states.clear()
            self._changed.clear()
        for change in changes.users:
            self._states[change.user_id] = PresenceState(
                change.presence,
                change.status_msg,
                None if change.last_active_ago is None else now - change.last_active_ago / 1000,
                change.currently_active,
            )
            self._changed.pop(change.user_id, None)
            self._changed[change.user_id] = change.position
        self._serial = changes.position if full else max(self._serial, changes.position)
        if self._notifier is None:
            await trio.lowlevel.checkpoint()
            return
        for change in changes.users:
            rooms = await self._rooms.joined_rooms(change.user_id)
            self._notifier.advance_presence(change.position, change.user_id, rooms)

    # --- Reads --------------------------------------------------------------------------

    async def get_presence(self, requester: str, user_id: str) -> dict[str, Any]:
        """``GET /presence/{userId}/status``."""
        if not is_valid_user_id(user_id):
            raise _bad(f"{user_id[:60]!r} is not a user ID")
        if requester != user_id:
            mine = set(await self._rooms.joined_rooms(requester))
            if mine.isdisjoint(await self._rooms.joined_rooms(user_id)):
                raise MatrixError(
                    f"{requester} shares no room with {user_id}, and may not see their presence",
                    errcode="M_FORBIDDEN",
                    http_status=403,
                )
        state = self._states.get(user_id)
        if state is None:
            return {"presence": "offline"}
        return self._content(state)

    def _content(self, state: PresenceState) -> dict[str, Any]:
        answer: dict[str, Any] = {"presence": state.presence}
        if state.status_msg is not None:
            answer["status_msg"] = state.status_msg
        if state.last_active is not None:
            answer["last_active_ago"] = max(
                0, round((trio.current_time() - state.last_active) * 1000)
            )
        answer["currently_active"] = state.currently_active
        return answer

    async def position(self) -> int:
        """The presence stream's newest position."""
        await trio.lowlevel.checkpoint()
        return self._serial

    async def for_sync(
        self, user_id: str, after: int | None, upto: int, met: Collection[str] = ()
    ) -> list[dict[str, Any]]:
        """The ``m.presence`` events ``user_id``'s sync carries: of the users
        whose presence changed after ``after`` (every user known, on an
        initial sync) up to ``upto``, those the user may see, oldest change
        first; then the presence of the users in ``met``, who came to share a
        room with the user since ``after``: what they set earlier is news to
        the user.
        """
        changed = [
            other
            for other, at in self._changed.items()
            if at <= upto and (after is None or at > after)
        ]
        if after is not None:
            listed = set(changed)
            changed.extend(
                other
                for other in sorted(set(met) - listed)
                if other in self._states and self._changed.get(other, upto + 1) <= upto
            )
        if self._shared is None or not changed:
            await trio.lowlevel.checkpoint()
            return []
        others = [other for other in changed if other != user_id]
        visible = await self._shared.users_sharing_a_room(user_id, others) if others else set()
        visible.add(user_id)
        return [
            {"type": "m.presence", "sender": other, "content": self._content(self._states[other])}
            for other in changed
            if other in visible
        ]

    async def of_users(
        self, user_ids: Collection[str], after: int | None, upto: int
    ) -> list[dict[str, Any]]:
        """The ``m.presence`` events of those of ``user_ids`` whose presence
        changed after ``after`` (every one known, when None) up to ``upto``,
        oldest change first.

        Nothing here checks who may see them: the caller has chosen users
        its reader may see, as a room's preview chooses its members.
        """
        wanted = user_ids if isinstance(user_ids, (set, frozenset)) else frozenset(user_ids)
        await trio.lowlevel.checkpoint()
        return [
            {"type": "m.presence", "sender": other, "content": self._content(self._states[other])}
            for other, at in self._changed.items()
            if other in wanted and at <= upto and (after is None or at > after)
        ]
