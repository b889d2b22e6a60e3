"""Typing notifications: who is typing in each room, held in memory.

``PUT /rooms/{roomId}/typing/{userId}`` marks a local user as typing for
``timeout`` milliseconds (at most :data:`MAX_TIMEOUT_MS`), or as not typing;
an ``m.typing`` EDU from another server does the same for that server's
user, for :data:`REMOTE_TIMEOUT_MS` unless it says otherwise sooner. Each
change of who is typing in a room is a position of the typing stream, the
fifth stream a sync token carries: ``/sync`` gives a joined room whose
typing users changed since the token an ``m.typing`` event listing everyone
typing there now, and the change wakes the long-polls of the room's
members.

Invariants
----------

* **Expiry on Trio's clock.** Deadlines are :func:`trio.current_time`
  values; :meth:`TypingNotices.run`, a task of the server's nursery, ends
  each typing at its deadline as a change of its own, so a long-poll sees
  a user stop typing without anyone asking. A local user's typing that
  ends by its timeout is told to the other servers as ``typing: false``.
* **Positions survive a restart.** Nothing of who was typing is kept, but
  the stream starts at the wall-clock time in milliseconds, past any
  position handed out before (short of a sustained thousand changes a
  second), and every room counts as changed at that start: a token from
  before the restart gets each of its rooms' (empty) typing list once, so
  no client keeps showing someone typing who is not.
* **Only those in the room.** A local user must be joined to type in a
  room; another server's typing is taken only for its own users, in rooms
  it is joined to as this server sees them.
* **One holder across processes.** With workers, the main process holds
  who is typing and runs the deadlines; a worker holds a copy
  (:class:`ranvier.core.ephemeral_replica.TypingReplica`) made from
  :meth:`TypingNotices.changes_after` and taken with
  :meth:`TypingNotices.take_changes`, with the main process's positions,
  so a sync token means the same in every process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from typing import Any, Final

import msgspec
import trio

from ranvier.errors import MatrixError

from .activity import ActivityListener
from .builder import Clock, wall_clock_ms
from .notifier import StreamNotifier
from .receipts import EduSink, Membership, ServersInRoom, server_of

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "MAX_TIMEOUT_MS",
    "REMOTE_TIMEOUT_MS",
    "TypingChanges",
    "TypingNotices",
    "TypingRoom",
]

_log: Final = logging.getLogger(__name__)

#: A client's typing without a ``timeout`` lasts this long.
DEFAULT_TIMEOUT_MS: Final = 30_000
#: The longest a client's typing lasts without being renewed.
MAX_TIMEOUT_MS: Final = 120_000
#: How long another server's user counts as typing after its EDU; that
#: server says when they stop, and renews the EDU while they go on.
REMOTE_TIMEOUT_MS: Final = 60_000


class TypingRoom(msgspec.Struct, frozen=True):
    """Who is typing in a room now, and the position of its last change."""

    room_id: str
    position: int
    user_ids: tuple[str, ...]


class TypingChanges(msgspec.Struct, frozen=True):
    """What a copy needs to catch up: the rooms changed after its position,
    oldest change first, and the stream's start and newest position.
    """

    start: int
    position: int
    rooms: tuple[TypingRoom, ...] = ()


class TypingNotices:
    """Who is typing where, in memory; start :meth:`run` in a nursery so
    that typing ends at its deadline.
    """

    def __init__(
        self,
        *,
        server_name: str,
        rooms: Membership,
        servers: ServersInRoom,
        edus: EduSink,
        notifier: StreamNotifier | None = None,
        clock: Clock = wall_clock_ms,
        activity: ActivityListener | None = None,
    ) -> None:
        self.server_name = server_name
        self._activity = activity
        self._rooms = rooms
        self._servers = servers
        self._edus = edus
        self._notifier = notifier
        # room ID -> user ID -> Trio-clock deadline.
        self._typing: dict[str, dict[str, float]] = {}
        self._start = self._serial = clock()
        self._changed: dict[str, int] = {}
        self._deadlines_moved = trio.Event()

    # --- Changes ------------------------------------------------------------------

    async def set_typing(
        self,
        requester: str,
        user_id: str,
        room_id: str,
        *,
        typing: bool,
        timeout_ms: int | None = None,
    ) -> None:
        """``PUT /rooms/{roomId}/typing/{userId}`` by ``requester``."""
        await self.check_typing(requester, user_id, room_id, timeout_ms=timeout_ms)
        if self._activity is not None:
            await self._activity.user_active(user_id)
        if typing:
            chosen = DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms
            self._start_typing(room_id, user_id, min(chosen, MAX_TIMEOUT_MS))
        elif not self._stop_typing(room_id, user_id):
            return
        await self._federate(room_id, user_id, typing)

    async def check_typing(
        self, requester: str, user_id: str, room_id: str, *, timeout_ms: int | None = None
    ) -> None:
        """Raise what :meth:`set_typing` would refuse the request with; a
        shadow-banned user's typing is checked so, and goes no further
        (:mod:`ranvier.core.shadow_bans`)."""
        if requester != user_id:
            raise MatrixError(
                f"{requester} cannot set the typing state of {user_id}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        if timeout_ms is not None and timeout_ms < 0:
            raise MatrixError(
                "timeout must not be negative", errcode="M_INVALID_PARAM", http_status=400
            )
        if await self._rooms.membership(user_id, room_id) != "join":
            raise MatrixError(
                f"{user_id} is not in room {room_id}", errcode="M_FORBIDDEN", http_status=403
            )

    async def on_remote_typing(self, origin: str, room_id: str, user_id: str, typing: bool) -> bool:
        """An ``m.typing`` EDU from ``origin``; whether it was taken."""
        if server_of(user_id) != origin:
            _log.info("%s sent the typing state of %s: dropped", origin, user_id)
            return False
        if origin not in await self._servers.joined_servers(room_id):
            _log.info("%s sent typing in %s, which it is not in: dropped", origin, room_id)
            return False
        if typing:
            self._start_typing(room_id, user_id, REMOTE_TIMEOUT_MS)
        else:
            self._stop_typing(room_id, user_id)
        return True

    def _start_typing(self, room_id: str, user_id: str, timeout_ms: int) -> None:
        users = self._typing.setdefault(room_id, {})
        already = user_id in users
        users[user_id] = trio.current_time() + timeout_ms / 1000
        self._deadlines_moved.set()
        if not already:
            self._changed_in(room_id)

    def _stop_typing(self, room_id: str, user_id: str) -> bool:
        users = self._typing.get(room_id)
        if users is None or users.pop(user_id, None) is None:
            return False
        if not users:
            del self._typing[room_id]
        self._changed_in(room_id)
        return True

    def _changed_in(self, room_id: str) -> None:
        self._serial += 1
        self._changed[room_id] = self._serial
        if self._notifier is not None:
            self._notifier.advance_typing(self._serial, room_id)

    async def _federate(self, room_id: str, user_id: str, typing: bool) -> None:
        content = {"room_id": room_id, "user_id": user_id, "typing": typing}
        for server in sorted(await self._servers.joined_servers(room_id)):
            if server != self.server_name:
                self._edus.send_edu(server, "m.typing", content)

    # --- Expiry -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """End each typing at its deadline, until cancelled."""
        task_status.started()
        while True:
            self._deadlines_moved = trio.Event()
            for room_id, user_id in self._expire(trio.current_time()):
                if server_of(user_id) == self.server_name:
                    try:
                        await self._federate(room_id, user_id, False)
                    except Exception:
                        _log.exception("telling other servers %s stopped typing failed", user_id)
            with trio.move_on_at(self._next_deadline()):
                await self._deadlines_moved.wait()

    def _expire(self, now: float) -> list[tuple[str, str]]:
        ended = [
            (room_id, user_id)
            for room_id, users in self._typing.items()
            for user_id, deadline in users.items()
            if deadline <= now
        ]
        for room_id, user_id in ended:
            self._stop_typing(room_id, user_id)
        return ended

    def _next_deadline(self) -> float:
        return min(
            (deadline for users in self._typing.values() for deadline in users.values()),
            default=math.inf,
        )

    # --- Copies in other processes ---------------------------------------------------

    def changes_after(self, after: int | None) -> TypingChanges:
        """The rooms whose typing changed after ``after`` (every room ever
        changed, for a copy starting afresh: None), with who types there now.
        """
        changed = sorted(
            (position, room_id)
            for room_id, position in self._changed.items()
            if after is None or position > after
        )
        return TypingChanges(
            self._start,
            self._serial,
            tuple(
                TypingRoom(room_id, position, tuple(self.typing_in(room_id)))
                for position, room_id in changed
            ),
        )

    def take_changes(self, changes: TypingChanges, *, full: bool) -> None:
        """Make this copy hold what ``changes`` says (all of it if ``full``:
        what was held before is dropped), and wake the rooms' long-polls.

        No deadlines here: the holder ends each typing and says so.
        """
        touched: set[str] = set()
        if full:
            touched.update(self._typing)
            self._typing.clear()
            self._changed.clear()
            self._start = changes.start
        for room in changes.rooms:
            if room.user_ids:
                self._typing[room.room_id] = dict.fromkeys(room.user_ids, math.inf)
            else:
                self._typing.pop(room.room_id, None)
            self._changed[room.room_id] = room.position
        self._serial = changes.position if full else max(self._serial, changes.position)
        if self._notifier is None:
            return
        for room in changes.rooms:
            touched.discard(room.room_id)
            self._notifier.advance_typing(room.position, room.room_id)
        for room_id in sorted(touched):
            # Nobody types there any more; nor is a change of it on record.
            self._notifier.advance_typing(changes.position, room_id)

    # --- Reads --------------------------------------------------------------------

    def typing_in(self, room_id: str) -> list[str]:
        """The users typing in ``room_id`` now, sorted."""
        return sorted(self._typing.get(room_id, ()))

    async def position(self) -> int:
        """The typing stream's newest position."""
        await trio.lowlevel.checkpoint()
        return self._serial

    async def for_sync(
        self, user_id: str, room_ids: Collection[str], after: int | None, upto: int
    ) -> dict[str, dict[str, Any]]:
        """The ``m.typing`` event of each of ``room_ids`` whose typing users
        changed after ``after``; on an initial sync (``after`` None), of
        those where someone is typing.
        """
        await trio.lowlevel.checkpoint()
        events: dict[str, dict[str, Any]] = {}
        for room_id in room_ids:
            users = self.typing_in(room_id)
            if after is None:
                wanted = bool(users)
            else:
                wanted = self._changed.get(room_id, self._start) > after
            if wanted:
                events[room_id] = {"type": "m.typing", "content": {"user_ids": users}}
        return events
