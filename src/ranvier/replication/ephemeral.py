"""Typing and presence across processes: workers' changes to the main
process, and the main process's changes back in its stream.

The main process holds typing and presence (see
:mod:`ranvier.core.ephemeral_replica`). A worker's
:class:`EphemeralForwarder` sends what would change them there, ``POST``
:data:`~ranvier.replication.wire.EPHEMERAL` with the kind of change, behind
the replication secret like every request; the main process's
:class:`EphemeralOrigin` runs each on its own
:class:`~ranvier.core.typing.TypingNotices` or
:class:`~ranvier.core.presence.Presence`, as if its own client or
federation listener had taken it, so its errors are the worker's answer,
its timers run, and its federation sender tells other servers, once. The
changes come back to every worker with the stream's answers
(:class:`~ranvier.replication.stream.StreamSource`), built by
:meth:`EphemeralOrigin.changes`.

Invariants
----------

* **Repeating a change is harmless.** Setting the same typing or presence
  twice, or taking the same EDU twice, leaves what once did (a typing's
  deadline moves by the retry's delay, no more), so these requests carry
  no transaction ID and a retry simply runs again.
* **Activity is best effort.** Signs of activity (a message, a receipt)
  are queued in a bounded channel and sent in batches by
  :meth:`EphemeralForwarder.run`, so no message waits on the main process;
  a full queue drops the newest, and a batch the main process does not
  take within the client's retry time is dropped with a warning. The
  user's next sign says the same again.
* **A client sees its own change.** A ``PUT`` of typing or presence, and a
  sync's ``set_presence``, are answered with the position the change
  reached, which the worker's copy reaches before the client is answered.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, Final, Literal

import msgspec
import trio

from ranvier.core.ephemeral_replica import EphemeralChanges
from ranvier.core.presence import Presence
from ranvier.core.typing import TypingNotices
from ranvier.errors import BadJsonError, MatrixError, StorageUnavailableError
from ranvier.protocol.untrusted_json import DECODE_ERRORS

from . import wire
from .client import ReplicationClient

__all__ = ["MAX_BODY_BYTES", "EphemeralForwarder", "EphemeralOrigin"]

_log: Final = logging.getLogger(__name__)

#: The largest request: a batch of activity, or another server's presence list.
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
_BACKLOG: Final = 10_000
_BATCH: Final = 1_000

_encoder: Final = msgspec.msgpack.Encoder()


class _SetTyping(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    requester: str
    user_id: str
    room_id: str
    typing: bool
    timeout_ms: int | None = None


class _RemoteTyping(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    origin: str
    room_id: str
    user_id: str
    typing: bool


class _SetPresence(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    requester: str
    user_id: str
    body: dict[str, Any]


class _RemotePresence(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    origin: str
    push: list[dict[str, Any]]


class _Sync(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user_id: str
    set_presence: str
    timeout_ms: int


class _Active(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Users who did something, oldest first."""

    user_ids: list[str]


_Kind = Literal["set_typing", "remote_typing", "set_presence", "remote_presence", "sync", "active"]
_REQUESTS: Final[dict[str, type[msgspec.Struct]]] = {
    "set_typing": _SetTyping,
    "remote_typing": _RemoteTyping,
    "set_presence": _SetPresence,
    "remote_presence": _RemotePresence,
    "sync": _Sync,
    "active": _Active,
}
_decoders: Final = {kind: msgspec.msgpack.Decoder(struct) for kind, struct in _REQUESTS.items()}


# --- The main process's side -------------------------------------------------------------


class EphemeralOrigin:
    """The main process's typing and presence, as workers reach them."""

    def __init__(self, typing: TypingNotices, presence: Presence) -> None:
        self._typing = typing
        self._presence = presence
        #: Requests run, by kind; for tests and metrics.
        self.requests: dict[str, int] = {}

    async def positions(self) -> tuple[int, int]:
        """The typing and presence positions now."""
        return await self._typing.position(), await self._presence.position()

    def changes(
        self, life: str, *, typing_after: int | None, presence_after: int | None
    ) -> EphemeralChanges:
        """What changed after the positions given; everything if both are None."""
        full = typing_after is None and presence_after is None
        return EphemeralChanges(
            life,
            full,
            self._typing.changes_after(None if full else typing_after),
            self._presence.changes_after(None if full else presence_after),
        )

    async def handle(self, kind: str, body: bytes) -> bytes:
        """Run a worker's request of ``kind``; the answer's body.

        Raises MatrixError: ``M_UNRECOGNIZED`` for an unknown kind,
        ``M_BAD_JSON`` for a body that does not fit it, and whatever the
        handler raises (a user not in the room, a bad presence).
        """
        decoder = _decoders.get(kind)
        if decoder is None:
            raise MatrixError(
                f"there is no typing or presence request {kind[:40]!r}",
                errcode="M_UNRECOGNIZED",
                http_status=404,
            )
        try:
            request = decoder.decode(body)
        except (*DECODE_ERRORS, msgspec.ValidationError) as exc:
            raise BadJsonError(f"the {kind} request does not fit: {exc}") from None
        self.requests[kind] = self.requests.get(kind, 0) + 1
        # Changes a client waits on answer the position they reached, for
        # the worker to show them once its copy is there.
        result: object = None
        if isinstance(request, _SetTyping):
            await self._typing.set_typing(
                request.requester,
                request.user_id,
                request.room_id,
                typing=request.typing,
                timeout_ms=request.timeout_ms,
            )
            result = await self._typing.position()
        elif isinstance(request, _RemoteTyping):
            result = await self._typing.on_remote_typing(
                request.origin, request.room_id, request.user_id, request.typing
            )
        elif isinstance(request, _SetPresence):
            await self._presence.set_presence(request.requester, request.user_id, request.body)
            result = await self._presence.position()
        elif isinstance(request, _RemotePresence):
            result = await self._presence.on_remote_presence(request.origin, request.push)
        elif isinstance(request, _Sync):
            await self._presence.on_sync(request.user_id, request.set_presence, request.timeout_ms)
            result = await self._presence.position()
        else:
            assert isinstance(request, _Active)
            for user_id in request.user_ids:
                await self._presence.user_active(user_id)
        return _encoder.encode(result)


# --- A worker's side ---------------------------------------------------------------------


class EphemeralForwarder:
    """A worker's :class:`~ranvier.core.ephemeral_replica.EphemeralRelay`:
    sends to the main process through ``client``. Start :meth:`run` in a
    nursery, so that notes of syncs and activity are sent.
    """

    def __init__(self, client: ReplicationClient, *, backlog: int = _BACKLOG) -> None:
        self._client = client
        self._send, self._receive = trio.open_memory_channel[str](backlog)
        #: Signs of activity sent, and dropped; for tests and metrics.
        self.active_sent = 0
        self.active_dropped = 0

    async def _post(self, kind: _Kind, request: msgspec.Struct) -> Any:
        answer = await self._client.post(wire.EPHEMERAL.format(kind=kind), _encoder.encode(request))
        try:
            return msgspec.msgpack.decode(answer)
        except msgspec.DecodeError as exc:
            raise StorageUnavailableError(f"the main process's answer to {kind}: {exc}") from None

    async def set_typing(
        self,
        requester: str,
        user_id: str,
        room_id: str,
        *,
        typing: bool,
        timeout_ms: int | None,
    ) -> int:
        return _position(
            await self._post(
                "set_typing", _SetTyping(requester, user_id, room_id, typing, timeout_ms)
            )
        )

    async def remote_typing(self, origin: str, room_id: str, user_id: str, typing: bool) -> bool:
        taken = await self._post("remote_typing", _RemoteTyping(origin, room_id, user_id, typing))
        return taken is True

    async def set_presence(self, requester: str, user_id: str, body: Mapping[str, Any]) -> int:
        return _position(
            await self._post("set_presence", _SetPresence(requester, user_id, dict(body)))
        )

    async def remote_presence(self, origin: str, pushed: Collection[Mapping[str, Any]]) -> int:
        taken = await self._post(
            "remote_presence", _RemotePresence(origin, [dict(entry) for entry in pushed])
        )
        return _position(taken)

    async def sync(self, user_id: str, set_presence: str, timeout_ms: int) -> int:
        return _position(await self._post("sync", _Sync(user_id, set_presence, timeout_ms)))

    def note_active(self, user_id: str) -> None:
        try:
            self._send.send_nowait(user_id)
        except trio.WouldBlock:
            self.active_dropped += 1
            _log.warning("too much activity waits for the main process: %s's dropped", user_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send the activity waiting, a batch at a time, until cancelled."""
        task_status.started()
        async for first in self._receive:
            # Each user once, in the order they first came.
            waiting = {first: None}
            while len(waiting) < _BATCH:
                try:
                    waiting[self._receive.receive_nowait()] = None
                except trio.WouldBlock:
                    break
            batch = list(waiting)
            try:
                await self._post("active", _Active(batch))
            except MatrixError as exc:
                self.active_dropped += len(batch)
                _log.warning(
                    "the activity of %d users was not taken by the main process: %s",
                    len(batch),
                    exc,
                )
                continue
            self.active_sent += len(batch)


def _position(answer: object) -> int:
    """A position (or a count) the main process answered; 0 if it is not one."""
    return answer if isinstance(answer, int) and not isinstance(answer, bool) else 0
