"""A worker's copies of typing and presence, which the main process holds.

Typing and presence live in memory, with timers (a typing's deadline, a
presence's lapse and idleness) that must run once. So one process, the
main one, holds them: a worker's :class:`TypingReplica` and
:class:`PresenceReplica` are read-only copies its ``/sync`` and ``GET
/presence`` read and its long-polls wake on, kept up to date by
:class:`EphemeralReplica` from what the main process's replication stream
carries (:class:`EphemeralChanges`). What would change them on a worker
(a client's ``PUT``, a sync's ``set_presence``, activity, another server's
EDU) goes to the main process through an :class:`EphemeralRelay` instead,
and comes back as a change like any other.

Invariants
----------

* **The holder's positions.** A copy's typing and presence positions are
  the main process's, so a sync token made by one process means the same
  in every other; a copy starts at zero, below every position, until the
  first changes arrive.
* **Nothing is timed here.** A copy holds no deadlines; the holder ends a
  typing or lapses a presence, and the copy hears of it as a change.
* **A new holder replaces the copy.** Changes come with the ID of the
  holder's life; a copy that sees another ID (the main process started
  again, with nothing of what it held) takes a whole new copy.
* **A client sees its own change.** A ``PUT`` of typing or presence and a
  sync's ``set_presence`` wait for the main process's answer (its errors
  are the client's), which gives the position the change reached; the
  copy waits until it holds that position, at most
  :data:`CATCH_UP_SECONDS`, so the client's next sync here shows it, and a
  sync shows the presence it set itself.
* **Activity does not wait.** A message or a receipt only notes its
  user's activity to the relay, which sends it in the background.
* **A sync does not wait long.** If the main process does not take a
  sync's presence within :data:`SYNC_PRESENCE_SECONDS`, the sync goes on
  without it; setting it again is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Final, Protocol

import msgspec
import trio

from ranvier.errors import MatrixError

from .presence import Presence, PresenceChanges
from .typing import TypingChanges, TypingNotices

__all__ = [
    "CATCH_UP_SECONDS",
    "SYNC_PRESENCE_SECONDS",
    "EphemeralChanges",
    "EphemeralRelay",
    "EphemeralReplica",
    "PresenceReplica",
    "TypingReplica",
]


_log: Final = logging.getLogger(__name__)

#: The longest a client's change waits for the copy to show it.
CATCH_UP_SECONDS: Final = 5.0
#: The longest a sync waits for the main process to take its presence.
SYNC_PRESENCE_SECONDS: Final = 2.0


class EphemeralChanges(msgspec.Struct, frozen=True):
    """Typing and presence changes for a copy, from the holder's life ``life``;
    ``full``: everything the holder has, to replace the copy's.
    """

    life: str
    full: bool
    typing: TypingChanges
    presence: PresenceChanges


class EphemeralRelay(Protocol):
    """Takes a worker's typing and presence changes to the main process;
    a change a client waits on answers the position it reached there.
    """

    async def set_typing(
        self,
        requester: str,
        user_id: str,
        room_id: str,
        *,
        typing: bool,
        timeout_ms: int | None,
    ) -> int: ...

    async def remote_typing(self, origin: str, room_id: str, user_id: str, typing: bool) -> bool:
        """Another server's ``m.typing``; whether it was taken."""
        ...

    async def set_presence(self, requester: str, user_id: str, body: Mapping[str, Any]) -> int: ...

    async def remote_presence(self, origin: str, pushed: Collection[Mapping[str, Any]]) -> int:
        """Another server's ``m.presence`` push list; how many entries were taken."""
        ...

    async def sync(self, user_id: str, set_presence: str, timeout_ms: int) -> int:
        """A sync's presence (:meth:`Presence.on_sync`)."""
        ...

    def note_active(self, user_id: str) -> None:
        """A user's activity, sent in the background."""
        ...


def _zero() -> int:
    return 0


class _Progress:
    """Lets a change wait until its copy holds the position it reached."""

    def __init__(self) -> None:
        self._taken = trio.Event()

    def taken(self) -> None:
        taken, self._taken = self._taken, trio.Event()
        taken.set()

    async def until(self, position: int, held: Callable[[], Awaitable[int]]) -> None:
        """Return once ``await held()`` is at least ``position``, or after
        :data:`CATCH_UP_SECONDS`.
        """
        with trio.move_on_after(CATCH_UP_SECONDS):
            while await held() < position:
                await self._taken.wait()


class TypingReplica(TypingNotices):
    """Who is typing, as the main process says; changes go to ``relay``."""

    def __init__(self, relay: EphemeralRelay, **parts: Any) -> None:
        super().__init__(**{**parts, "clock": _zero})
        self._relay = relay
        self._progress = _Progress()

    async def set_typing(
        self,
        requester: str,
        user_id: str,
        room_id: str,
        *,
        typing: bool,
        timeout_ms: int | None = None,
    ) -> None:
        reached = await self._relay.set_typing(
            requester, user_id, room_id, typing=typing, timeout_ms=timeout_ms
        )
        await self._progress.until(reached, self.position)

    def take_changes(self, changes: TypingChanges, *, full: bool) -> None:
        super().take_changes(changes, full=full)
        self._progress.taken()

    async def on_remote_typing(self, origin: str, room_id: str, user_id: str, typing: bool) -> bool:
        return await self._relay.remote_typing(origin, room_id, user_id, typing)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to time: the main process ends each typing."""
        task_status.started()
        await trio.sleep_forever()


class PresenceReplica(Presence):
    """Users' presence, as the main process says; changes go to ``relay``."""

    def __init__(self, relay: EphemeralRelay, **parts: Any) -> None:
        super().__init__(**{**parts, "clock": _zero})
        self._relay = relay
        self._progress = _Progress()

    async def set_presence(self, requester: str, user_id: str, body: Mapping[str, Any]) -> None:
        reached = await self._relay.set_presence(requester, user_id, body)
        await self._progress.until(reached, self.position)

    async def on_sync(self, user_id: str, set_presence: str, timeout_ms: int) -> None:
        if set_presence == "offline":
            # Leaves presence alone: nothing to tell.
            await trio.lowlevel.checkpoint()
            return
        reached = 0
        with trio.move_on_after(SYNC_PRESENCE_SECONDS):
            try:
                reached = await self._relay.sync(user_id, set_presence, timeout_ms)
            except MatrixError as exc:
                _log.warning("the presence of %s's sync was not taken: %s", user_id, exc)
        await self._progress.until(reached, self.position)

    async def take_changes(self, changes: PresenceChanges, *, full: bool) -> None:
        # Told once the long-polls are woken too.
        await super().take_changes(changes, full=full)
        self._progress.taken()

    async def user_active(self, user_id: str) -> None:
        self._relay.note_active(user_id)
        await trio.lowlevel.checkpoint()

    async def on_remote_presence(self, origin: str, pushed: Collection[Mapping[str, Any]]) -> int:
        return await self._relay.remote_presence(origin, pushed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to time: the main process lapses and idles presence."""
        task_status.started()
        await trio.sleep_forever()


class EphemeralReplica:
    """Keeps ``typing`` and ``presence`` as the main process's changes say."""

    def __init__(self, typing: TypingReplica, presence: PresenceReplica) -> None:
        self.typing = typing
        self.presence = presence
        #: The holder's life the copies come from; empty before the first.
        self.life = ""
        self.typing_position = 0
        self.presence_position = 0
        #: Changes taken, and of those whole copies; for tests and metrics.
        self.taken = 0
        self.full_copies = 0

    async def take(self, changes: EphemeralChanges) -> None:
        full = changes.full or changes.life != self.life
        if full and not changes.full:
            # Changes of another life than the copy's: not to be mixed in.
            await trio.lowlevel.checkpoint()
            return
        self.typing.take_changes(changes.typing, full=full)
        self.typing_position = changes.typing.position
        self.life = changes.life
        self.presence_position = changes.presence.position
        self.taken += 1
        if full:
            self.full_copies += 1
        await self.presence.take_changes(changes.presence, full=full)
