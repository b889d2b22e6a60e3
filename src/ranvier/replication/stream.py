"""The replication stream: workers learn what the main process committed.

A worker's ``/sync`` long-polls wait on its own
:class:`~ranvier.core.notifier.StreamNotifier`, and its access-token cache
must forget tokens logged out elsewhere. Neither hears of writes another
process made, so the main process serves a long-poll on its replication
listener, ``GET`` :data:`~ranvier.replication.wire.STREAM`: given the
positions a worker knows, it answers as soon as the database is further on
(or tokens were invalidated, or events noted for other servers), or when
the poll's timeout ends, with the positions it reads now.

The answer carries positions only. The worker reads what lies between its
positions and the new ones from the shared database (the rooms and member
events of new events, the rooms whose partial state was cleared, whose
account data changed, the rooms of new receipts, the users of new
to-device messages, the users whose devices or keys changed and the rooms
they are in) and advances its notifier with them, so its waiters wake
exactly as the main process's do.

Typing and presence have no place in the database: the main process holds
them in memory (:mod:`ranvier.core.ephemeral_replica`). A worker sends its
known typing and presence positions and the ID of the main process's life
it copied them from; the main process answers once either moved (or the
life is not its own), and the answer carries the changes themselves
(:class:`~ranvier.core.ephemeral_replica.EphemeralChanges`): who types in
each room changed since the worker's position, the presence of each user
changed since, or all of it for a worker with another life's copy. Each
room or user appears once however often it changed, so an answer is at
most the size of what the main process holds, and usually one room or
user; there is nothing to read back, since nothing is written. The worker
applies them to its copies, which advance its notifier.

Servers heard from are not in the database either: a process that
authenticated a request from a server the federation sender is backing off
from tells the main process (:mod:`ranvier.replication.heard_from`), which
keeps the most recent ones numbered in its life. A worker that asks for
them (the federation_sender) sends the number it has seen, and the answer
carries the servers heard from since, each once; a worker of another life
gets none, since a missed one only means the normal backoff.

The main process does the same for itself with the same code
(:class:`PositionFollower`): a worker's account data, receipt, to-device
message or key change is committed by the main process's actor, but only
the worker's handlers know whom it concerns, so after each replicated write
the main process reads its positions back and advances its own notifier.

Invariants
----------

* **Positions are durable, so nothing is missed.** Every position is read
  from the shared database, never from memory: a worker that was cut off,
  or a main process that restarted, changes nothing but latency; the next
  answer covers everything since the worker's last one.
* **Token invalidations are not durable, so a doubt clears the cache.**
  The main process counts writes that invalidate tokens (logins replacing
  a device's token, logouts, deleted devices) and sends the count with a
  random ID of its own life: a worker that sees either change drops its
  whole token cache, which a restart of the main process therefore does too.
  The main process drops its own after each such write a worker sends.
  Writes to ``destination_rooms`` are counted the same way, for the
  federation_sender worker (:mod:`ranvier.replication.federation_sending`).
* **A worker asks for resyncs; the main process runs them.** The
  un-partial-state task runs only on the main process. A worker whose join
  left a room with partial state asks the main process to resync it
  (``POST`` :data:`~ranvier.replication.wire.RESYNC`), once the join is
  written; the main process checks the room is partial and starts its task.
  A request lost with a main process that died is not needed: the task
  resumes every partial room at start-up.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import secrets
import sqlite3
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
import msgspec
import trio

from ranvier.core.ephemeral_replica import EphemeralChanges, EphemeralReplica
from ranvier.core.notifier import StreamNotifier, StreamPosition
from ranvier.errors import BadJsonError, MatrixError, StorageUnavailableError
from ranvier.metrics import note_route
from ranvier.protocol.numbers import is_decimal_number
from ranvier.storage import Storage
from ranvier.storage.id_floors import events_top, un_partial_top
from ranvier.storage.sync_reads import joined_rooms
from ranvier.web import Receive, Router, Scope, Send, read_body

from . import wire
from .client import ReplicationClient
from .ephemeral import MAX_BODY_BYTES, EphemeralOrigin

__all__ = [
    "HEARD_NOTHING",
    "TOKEN_WRITES",
    "MainControl",
    "PositionFollower",
    "StreamFollower",
    "StreamFullStateWaiter",
    "StreamPositions",
    "StreamSource",
    "read_positions",
    "wait_either",
]

_log: Final = logging.getLogger(__name__)
_QUEUE_WRITE: Final = "writes.store_destination_rooms"
_PRIVATE_RECEIPT: Final = "m.read.private"
#: Servers heard from kept for workers that poll late; older ones are lost.
_HEARD_KEPT: Final = 1024
#: What a worker that has seen no servers heard from yet says it knows.
HEARD_NOTHING: Final = "-"

#: Registered writes after which a cached access token may be wrong.
TOKEN_WRITES: Final = frozenset(
    {
        "accounts.add_device",
        "accounts.delete_device_of_token",
        "accounts.delete_devices",
        "accounts.delete_user_devices",
        "accounts.change_password",
        "accounts.deactivate_account",
        # A guest's tokens now act for a full account.
        "accounts.upgrade_guest",
        # A password reset by mail logs the account's devices out.
        "threepids.reset_password",
        "refresh_tokens.refresh",
        "refresh_tokens.retire_older",
        "login_tokens.log_in_with_token",
        # The admin flag rides on cached tokens, as do a lock, a suspension
        # and a shadow ban.
        "admin_writes.set_admin",
        "admin_writes.set_locked",
        "admin_writes.set_suspended",
        "admin_writes.set_shadow_banned",
    }
)


class StreamPositions(msgspec.Struct, frozen=True):
    """The positions of the streams a worker follows, as the database holds them."""

    events: int = 0
    un_partial: int = 0
    account_data: int = 0
    receipts: int = 0
    to_device: int = 0
    device_lists: int = 0

    def is_beyond(self, other: StreamPositions) -> bool:
        return (
            self.events > other.events
            or self.un_partial > other.un_partial
            or self.account_data > other.account_data
            or self.receipts > other.receipts
            or self.to_device > other.to_device
            or self.device_lists > other.device_lists
        )

    def newest(self, other: StreamPositions) -> StreamPositions:
        return StreamPositions(
            max(self.events, other.events),
            max(self.un_partial, other.un_partial),
            max(self.account_data, other.account_data),
            max(self.receipts, other.receipts),
            max(self.to_device, other.to_device),
            max(self.device_lists, other.device_lists),
        )


class _Answer(msgspec.Struct, frozen=True):
    positions: StreamPositions
    #: ``<the main process's life>:<token invalidations in it>``.
    tokens: str
    #: ``<the main process's life>:<writes to destination_rooms in it>``.
    queued: str = ""
    #: Typing and presence changes, for a worker that asked for them.
    ephemeral: EphemeralChanges | None = None
    #: ``<the main process's life>:<servers heard from in it>``.
    heard: str = ""
    #: Servers heard from since the count the worker sent, if it asked.
    heard_from: tuple[str, ...] = ()


class _EphemeralKnown(msgspec.Struct, frozen=True):
    """The typing and presence positions a worker holds, of the life ``life``."""

    life: str
    typing: int
    presence: int


_answer_decoder: Final = msgspec.json.Decoder(_Answer)
_heard_decoder: Final = msgspec.msgpack.Decoder(list[str])
_json: Final = msgspec.json.Encoder()


def read_positions(conn: sqlite3.Connection) -> StreamPositions:
    """The newest position of each stream, in one snapshot."""
    events, un_partial = events_top(conn), un_partial_top(conn)
    sequences: dict[str, int] = {}
    # No sqlite_sequence (no table with AUTOINCREMENT yet): no account data,
    # receipts, to-device messages or device-list changes either.
    with contextlib.suppress(sqlite3.OperationalError):
        sequences = {
            name: int(seq)
            for name, seq in conn.execute(
                "SELECT name, seq FROM sqlite_sequence WHERE name IN"
                " ('account_data', 'receipts', 'to_device_inbox', 'device_list_changes')"
            )
        }
    return StreamPositions(
        int(events),
        int(un_partial),
        sequences.get("account_data", 0),
        sequences.get("receipts", 0),
        sequences.get("to_device_inbox", 0),
        sequences.get("device_list_changes", 0),
    )


@dataclass(frozen=True, slots=True)
class _Changes:
    """What lies between two positions, as a worker's notifier needs it."""

    rooms: frozenset[str]
    members: frozenset[str]
    un_partial_rooms: frozenset[str]
    #: ``(position, user)`` of each account data change, oldest first.
    account_data: tuple[tuple[int, str], ...]
    #: ``(position, room, the user of a private receipt)``, oldest first.
    receipts: tuple[tuple[int, str, str | None], ...] = ()
    #: ``(position, users)`` of the to-device messages still stored, oldest first.
    to_device: tuple[tuple[int, frozenset[str]], ...] = ()
    #: ``(position, user, the user's rooms)`` of device-list changes, oldest first.
    device_lists: tuple[tuple[int, str, frozenset[str]], ...] = ()


_NO_CHANGES: Final = _Changes(frozenset(), frozenset(), frozenset(), ())


def _read_changes(
    conn: sqlite3.Connection, *, after: StreamPositions, upto: StreamPositions
) -> _Changes:
    rooms: set[str] = set()
    members: set[str] = set()
    if upto.events > after.events:
        for room_id, event_type, state_key in conn.execute(
            "SELECT room_id, type, state_key FROM events"
            " WHERE stream_ordering > ? AND stream_ordering <= ?",
            (after.events, upto.events),
        ):
            rooms.add(room_id)
            if event_type == "m.room.member" and state_key is not None:
                members.add(state_key)
    cleared: set[str] = set()
    if upto.un_partial > after.un_partial:
        cleared = {
            room_id
            for (room_id,) in conn.execute(
                "SELECT room_id FROM un_partial_stated_rooms WHERE rowid > ? AND rowid <= ?",
                (after.un_partial, upto.un_partial),
            )
        }
    account_data: list[tuple[int, str]] = []
    if upto.account_data > after.account_data:
        account_data = [
            (int(position), user_id)
            for position, user_id in conn.execute(
                "SELECT stream_id, user_id FROM account_data"
                " WHERE stream_id > ? AND stream_id <= ? ORDER BY stream_id",
                (after.account_data, upto.account_data),
            )
        ]
    receipts: list[tuple[int, str, str | None]] = []
    if upto.receipts > after.receipts:
        receipts = [
            (int(position), room_id, user_id if receipt_type == _PRIVATE_RECEIPT else None)
            for position, room_id, receipt_type, user_id in conn.execute(
                "SELECT stream_id, room_id, receipt_type, user_id FROM receipts"
                " WHERE stream_id > ? AND stream_id <= ? ORDER BY stream_id",
                (after.receipts, upto.receipts),
            )
        ]
    to_device: dict[int, set[str]] = {}
    if upto.to_device > after.to_device:
        # Messages a sync acknowledged meanwhile are gone: delivered, so
        # nobody waits for them.
        for position, user_id in conn.execute(
            "SELECT stream_id, user_id FROM to_device_inbox"
            " WHERE stream_id > ? AND stream_id <= ? ORDER BY stream_id",
            (after.to_device, upto.to_device),
        ):
            to_device.setdefault(int(position), set()).add(str(user_id))
    device_lists: list[tuple[int, str, frozenset[str]]] = []
    if upto.device_lists > after.device_lists:
        changed = conn.execute(
            "SELECT stream_id, user_id FROM device_list_changes"
            " WHERE stream_id > ? AND stream_id <= ? ORDER BY stream_id",
            (after.device_lists, upto.device_lists),
        ).fetchall()
        rooms_of: dict[str, frozenset[str]] = {}
        for position, user_id in changed:
            if user_id not in rooms_of:
                rooms_of[user_id] = _joined_rooms(conn, user_id)
            device_lists.append((int(position), str(user_id), rooms_of[user_id]))
    return _Changes(
        frozenset(rooms),
        frozenset(members),
        frozenset(cleared),
        tuple(account_data),
        tuple(receipts),
        tuple((position, frozenset(users)) for position, users in to_device.items()),
        tuple(device_lists),
    )


def _joined_rooms(conn: sqlite3.Connection, user_id: str) -> frozenset[str]:
    """The rooms ``user_id`` is joined to now: those whose members a change
    of the user's devices concerns.
    """
    return frozenset(joined_rooms(conn, user_id=user_id))


class PositionFollower:
    """Turns the database's stream positions into advances of ``notifier``:
    what lies between the positions it last took and newer ones is read from
    the database and told to the notifier as the writer's own process tells
    it. A worker follows every stream with it; the main process the streams
    workers write through generic writes (``events=False``), since events
    and cleared partial states reach its notifier from its own storage.

    Not safe to run twice at once: one task takes positions at a time.
    """

    def __init__(self, storage: Storage, notifier: StreamNotifier, *, events: bool = True) -> None:
        self._storage = storage
        self._notifier = notifier
        self._events = events
        self.known = StreamPositions()

    async def start(self) -> StreamPositions:
        """Take the database's positions as known (nothing before them is told)."""
        self.known = StreamPositions()
        positions = self._followed(await self._storage.readers.read(read_positions))
        self._advance(_NO_CHANGES, self.known, positions)
        self.known = positions
        return positions

    async def take(self, positions: StreamPositions) -> None:
        """Tell the notifier what lies between the known positions and ``positions``."""
        after = self.known
        upto = self._followed(positions).newest(after)
        if upto.is_beyond(after):
            changes = await self._storage.readers.read(
                lambda conn: _read_changes(conn, after=after, upto=upto)
            )
            self._advance(changes, after, upto)
        self.known = upto

    def _followed(self, positions: StreamPositions) -> StreamPositions:
        if self._events:
            return positions
        return msgspec.structs.replace(positions, events=0, un_partial=0)

    def _advance(self, changes: _Changes, after: StreamPositions, upto: StreamPositions) -> None:
        notifier = self._notifier
        for position, user_id in changes.account_data:
            notifier.advance_account_data(position, user_id)
        if upto.account_data > after.account_data:
            notifier.advance_account_data(upto.account_data, "")
        for position, room_id, only_user in changes.receipts:
            notifier.advance_receipts(position, room_id, only_user)
        if upto.receipts > after.receipts:
            # Receipts replaced since leave gaps; the position still moves.
            notifier.advance_receipts(upto.receipts, "", None)
        for position, user_ids in changes.to_device:
            notifier.advance_to_device(position, user_ids)
        if upto.to_device > after.to_device:
            notifier.advance_to_device(upto.to_device, ())
        for position, user_id, rooms in changes.device_lists:
            notifier.advance_device_lists(position, user_id, rooms)
        if upto.device_lists > after.device_lists:
            notifier.advance_device_lists(upto.device_lists, "", ())
        notifier.advance(
            upto.events if upto.events > after.events else None,
            upto.un_partial if upto.un_partial > after.un_partial else None,
            rooms=changes.rooms | changes.un_partial_rooms,
            users=changes.members,
        )


# --- The main process's side ---------------------------------------------------------


class StreamSource:
    """What the main process's stream answers from: the database's positions,
    woken by its own notifier and by the writes workers send.

    ``forget_tokens`` drops this process's own cached access tokens after a
    worker's write that may have invalidated some (a logout through a
    worker), as a worker's follower drops its own.
    """

    def __init__(
        self,
        storage: Storage,
        notifier: StreamNotifier,
        *,
        forget_tokens: Callable[[], None] | None = None,
        ephemeral: EphemeralOrigin | None = None,
    ) -> None:
        self._storage = storage
        self._notifier = notifier
        self._forget_tokens = forget_tokens
        self._ephemeral = ephemeral
        self._life = secrets.token_hex(8)
        self._invalidations = 0
        self._queued = 0
        self._heard = 0
        self._heard_recent: collections.deque[tuple[int, str]] = collections.deque(
            maxlen=_HEARD_KEPT
        )
        self._changed = trio.Event()
        self._own = PositionFollower(storage, notifier, events=False)
        self._written = trio.Event()
        #: Catch-ups of this process's notifier after workers' writes; for tests.
        self.caught_up = 0

    @property
    def tokens(self) -> str:
        return f"{self._life}:{self._invalidations}"

    @property
    def queued(self) -> str:
        return f"{self._life}:{self._queued}"

    @property
    def heard(self) -> str:
        return f"{self._life}:{self._heard}"

    def note_heard_from(self, destinations: Sequence[str]) -> None:
        """Servers the federation sender is backing off from signed a
        request of ours, here or at a worker."""
        for destination in destinations:
            self._heard += 1
            self._heard_recent.append((self._heard, destination))
        if destinations:
            self._wake()

    def _heard_after(self, known: str) -> tuple[str, ...]:
        life, _, count = known.partition(":")
        if life != self._life or not is_decimal_number(count):
            return ()
        after = int(count)
        return tuple(dict.fromkeys(name for seen, name in self._heard_recent if seen > after))

    def note_write(self, name: str) -> None:
        """A worker's write ``name`` ran (the replication app's ``on_write``)."""
        if name in TOKEN_WRITES:
            self._invalidations += 1
            if self._forget_tokens is not None:
                self._forget_tokens()
        if name == _QUEUE_WRITE:
            self._queued += 1
        self._written.set()
        self._wake()

    async def follow_writes(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Advance this process's notifier past what workers' writes committed.

        The account data, receipts, to-device messages and device-list
        changes a worker writes are committed by this process's actor, but
        only the worker's handlers know what they concern: the positions are
        read back after each write, the same way a worker follows the stream,
        so this process's ``/sync`` long-polls wake for them too. Events and
        cleared partial states need none of this: they are persisted through
        this process's :class:`~ranvier.storage.Storage`, which tells its
        notifier itself. Writes that land together are taken in one read.
        """
        await self._own.start()
        task_status.started()
        while True:
            await self._written.wait()
            # Replaced before the read, so a write after it is read again.
            self._written = trio.Event()
            try:
                await self._own.take(await self.positions())
            except StorageUnavailableError as exc:
                # The next write reads from the same known positions again.
                _log.warning("the positions after a worker's write were not read: %s", exc)
                continue
            self.caught_up += 1

    def note_queued(self) -> None:
        """This process noted events for other servers in ``destination_rooms``."""
        self._queued += 1
        self._wake()

    def note_tokens_invalidated(self) -> None:
        """This process's own accounts invalidated tokens."""
        self._invalidations += 1
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def positions(self) -> StreamPositions:
        return await self._storage.readers.read(read_positions)

    async def wait(
        self,
        known: StreamPositions,
        tokens: str,
        queued: str,
        *,
        timeout_seconds: float,
        ephemeral: _EphemeralKnown | None = None,
        heard: str | None = None,
    ) -> _Answer:
        """The positions and counts once any differs from what the worker
        knows, or after ``timeout_seconds`` whatever they are; with
        ``ephemeral``, the typing and presence changes since the worker's
        positions too; with ``heard``, the servers heard from since.
        """
        with trio.move_on_after(timeout_seconds):
            while True:
                # Both taken before the read, so a change after it wakes us.
                changed = self._changed
                notified = self._notifier.position
                current = await self.positions()
                moved = await self._ephemeral_moved(ephemeral)
                if (
                    moved
                    or current.is_beyond(known)
                    or self.tokens != tokens
                    or self.queued != queued
                    or (heard is not None and self.heard != heard)
                ):
                    return self._answer(current, ephemeral, heard)
                await wait_either(self._notifier.wait_beyond(notified), changed.wait())
        return self._answer(await self.positions(), ephemeral, heard)

    async def _ephemeral_moved(self, known: _EphemeralKnown | None) -> bool:
        if known is None or self._ephemeral is None:
            await trio.lowlevel.checkpoint()
            return False
        if known.life != self._life:
            await trio.lowlevel.checkpoint()
            return True
        typing, presence = await self._ephemeral.positions()
        return typing > known.typing or presence > known.presence

    def _answer(
        self, current: StreamPositions, known: _EphemeralKnown | None, heard: str | None
    ) -> _Answer:
        changes = None
        if known is not None and self._ephemeral is not None:
            same = known.life == self._life
            changes = self._ephemeral.changes(
                self._life,
                typing_after=known.typing if same else None,
                presence_after=known.presence if same else None,
            )
            if same and not changes.typing.rooms and not changes.presence.users:
                changes = None
        heard_from = self._heard_after(heard) if heard is not None else ()
        return _Answer(current, self.tokens, self.queued, changes, self.heard, heard_from)


async def wait_either(first: Awaitable[object], second: Awaitable[object]) -> None:
    """Return once either awaitable is done; the other is cancelled."""
    async with trio.open_nursery() as nursery:

        async def wait(awaitable: Awaitable[object]) -> None:
            await awaitable
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, first)
        nursery.start_soon(wait, second)


class MainControl:
    """The replication listener's requests that are not writes (behind its
    secret): the stream's long-poll and workers' resync requests.

    ``resync`` starts a room's un-partial-state task (the server's own).
    ``max_timeout_seconds`` bounds a long-poll.
    """

    def __init__(
        self,
        storage: Storage,
        source: StreamSource,
        *,
        resync: Callable[[str], None],
        max_timeout_seconds: float = 60.0,
        ephemeral: EphemeralOrigin | None = None,
        heard_from: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self._storage = storage
        self.source = source
        self._resync = resync
        self._heard_from = heard_from
        self._max_timeout = max_timeout_seconds
        self._ephemeral = ephemeral
        self._router = Router()
        self._router.add("GET", wire.STREAM, self._unused, authenticated=False)
        self._router.add("POST", wire.RESYNC, self._unused, authenticated=False)
        self._router.add("POST", wire.EPHEMERAL, self._unused, authenticated=False)
        self._router.add("POST", wire.HEARD_FROM, self._unused, authenticated=False)
        #: Rooms workers asked to resync, for tests and metrics.
        self.resyncs_requested = 0

    @staticmethod
    async def _unused(request: object) -> dict[str, Any]:
        raise AssertionError("not called")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            raw_path = scope.get("raw_path")
            path = raw_path.decode("latin-1").partition("?")[0] if raw_path else scope["path"]
            match = self._router.match(scope["method"], path)
            note_route(scope, match.route)
            pattern = match.route.pattern
            limit = MAX_BODY_BYTES if pattern == wire.EPHEMERAL else 64 * 1024
            request = await read_body(receive, (), limit)
            if pattern == wire.STREAM:
                body = await self._stream(scope)
            elif pattern == wire.EPHEMERAL:
                body = await self._ephemeral_request(match.params["kind"], request)
            elif pattern == wire.HEARD_FROM:
                body = self._heard_from_request(request)
            else:
                body = await self._resync_room(match.params["room_id"])
            await _send_json(send, 200, body)
        except MatrixError as exc:
            await _send_json(send, exc.http_status, _json.encode(exc.to_json()))

    async def _stream(self, scope: Scope) -> bytes:
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            known = StreamPositions(
                int(query.get("events", ["0"])[0]),
                int(query.get("un_partial", ["0"])[0]),
                int(query.get("account_data", ["0"])[0]),
                int(query.get("receipts", ["0"])[0]),
                int(query.get("to_device", ["0"])[0]),
                int(query.get("device_lists", ["0"])[0]),
            )
            timeout = min(self._max_timeout, int(query.get("timeout_ms", ["0"])[0]) / 1000)
            ephemeral = (
                _EphemeralKnown(
                    query.get("ephemeral_life", [""])[0],
                    int(query["typing"][0]),
                    int(query.get("presence", ["0"])[0]),
                )
                if "typing" in query
                else None
            )
        except ValueError:
            raise MatrixError(
                "stream positions and timeout_ms must be integers",
                errcode="M_INVALID_PARAM",
                http_status=400,
            ) from None
        tokens = query.get("tokens", [""])[0]
        queued = query.get("queued", [""])[0]
        heard = query.get("heard", [None])[0]
        answer = await self.source.wait(
            known,
            tokens,
            queued,
            timeout_seconds=max(0, timeout),
            ephemeral=ephemeral,
            heard=heard,
        )
        return _json.encode(answer)

    async def _ephemeral_request(self, kind: str, body: bytes) -> bytes:
        if self._ephemeral is None:
            raise MatrixError(
                "this process holds no typing or presence",
                errcode="M_UNRECOGNIZED",
                http_status=404,
            )
        return await self._ephemeral.handle(kind, body)

    def _heard_from_request(self, body: bytes) -> bytes:
        if self._heard_from is None:
            raise MatrixError(
                "this process passes on no servers heard from",
                errcode="M_UNRECOGNIZED",
                http_status=404,
            )
        try:
            destinations = _heard_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadJsonError(f"servers heard from must be a list of names: {exc}") from None
        self._heard_from(destinations)
        return b"{}"

    async def _resync_room(self, room_id: str) -> bytes:
        if await self._storage.is_partial_state_room(room_id):
            self.resyncs_requested += 1
            self._resync(room_id)
            return b'{"resyncing":true}'
        return b'{"resyncing":false}'


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- A worker's side ----------------------------------------------------------------


class StreamFollower:
    """Follows the main process's stream for a worker: advances ``notifier``
    with what the main process committed, calls ``forget_tokens`` when
    tokens may have been invalidated elsewhere, and keeps ``ephemeral``, the
    worker's copies of typing and presence, as the main process's.

    Start it with ``await nursery.start(follower.run)``: ready once it has
    read the database's positions. A failed poll is tried again after a
    capped, jittered backoff, without end: a worker outlives its main
    process's restarts.
    """

    def __init__(
        self,
        client: ReplicationClient,
        storage: Storage,
        notifier: StreamNotifier,
        *,
        forget_tokens: Callable[[], None] | None = None,
        ephemeral: EphemeralReplica | None = None,
        poll_seconds: float = 30.0,
        backoff_base_seconds: float = 0.1,
        backoff_cap_seconds: float = 5.0,
    ) -> None:
        self._client = client
        self._positions = PositionFollower(storage, notifier)
        self._forget_tokens = forget_tokens
        self._ephemeral = ephemeral
        self._poll = poll_seconds
        self._backoff_base = backoff_base_seconds
        self._backoff_cap = backoff_cap_seconds
        self._tokens: str | None = None
        self._queued = ""
        #: Called when events may have been noted for other servers (the
        #: federation_sender's waker).
        self.on_queued: Callable[[], None] | None = None
        #: Called with each server heard from elsewhere while backing off
        #: (the federation_sender's sender); asked for only when set.
        self.on_heard_from: Callable[[str], None] | None = None
        self._heard = HEARD_NOTHING
        #: Answers taken, and polls that failed; for tests and metrics.
        self.answers = 0
        self.failures = 0
        self.connected = trio.Event()

    @property
    def known(self) -> StreamPositions:
        """The positions told to the notifier so far."""
        return self._positions.known

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._positions.start()
        task_status.started()
        attempt = 0
        while True:
            try:
                answer = await self._poll_once()
            except (httpx.HTTPError, StorageUnavailableError, msgspec.DecodeError) as exc:
                self.failures += 1
                wait = min(self._backoff_cap, self._backoff_base * 2.0**attempt)
                attempt += 1
                _log.debug("the replication stream failed (%s); again in %.2fs", exc, wait)
                await trio.sleep(wait * random.uniform(0.5, 1.0))
                continue
            attempt = 0
            await self._take(answer)
            self.connected.set()

    async def _poll_once(self) -> _Answer:
        known = self.known
        params = {
            "events": str(known.events),
            "un_partial": str(known.un_partial),
            "account_data": str(known.account_data),
            "receipts": str(known.receipts),
            "to_device": str(known.to_device),
            "device_lists": str(known.device_lists),
            "tokens": self._tokens or "",
            "queued": self._queued,
            "timeout_ms": str(int(self._poll * 1000)),
        }
        if self.on_heard_from is not None:
            params["heard"] = self._heard
        copies = self._ephemeral
        if copies is not None:
            params["ephemeral_life"] = copies.life
            params["typing"] = str(copies.typing_position)
            params["presence"] = str(copies.presence_position)
        response = await self._client.get(wire.STREAM, params, timeout_seconds=self._poll + 10)
        if response.status_code != 200:
            raise StorageUnavailableError(
                f"the replication stream answered {response.status_code}: {response.text[:200]}"
            )
        return _answer_decoder.decode(response.content)

    async def _take(self, answer: _Answer) -> None:
        self.answers += 1
        forget = self._forget_tokens
        if self._tokens is not None and answer.tokens != self._tokens and forget is not None:
            forget()
        self._tokens = answer.tokens
        if answer.queued != self._queued:
            self._queued = answer.queued
            if self.on_queued is not None:
                self.on_queued()
        if answer.heard:
            self._heard = answer.heard
        heard_from = self.on_heard_from
        if heard_from is not None:
            for destination in answer.heard_from:
                heard_from(destination)
        if answer.ephemeral is not None and self._ephemeral is not None:
            try:
                await self._ephemeral.take(answer.ephemeral)
            except StorageUnavailableError as exc:
                # Taken already; only some long-polls wake late.
                _log.warning("the rooms of users whose presence changed were not read: %s", exc)
        await self._positions.take(answer.positions)


class StreamFullStateWaiter:
    """What a worker's reads of a partial-state room wait on: the room's
    partial state cleared by the main process, learnt through the stream.
    """

    def __init__(self, storage: Storage, notifier: StreamNotifier) -> None:
        self._storage = storage
        self._notifier = notifier

    async def wait_for_full_state(self, room_id: str) -> None:
        while True:
            # Taken before the read, so that a clear after it still wakes us.
            position: StreamPosition = self._notifier.position
            if not await self._storage.is_partial_state_room(room_id):
                return
            # No rooms named: only a cleared partial state (or an account
            # data change of nobody) wakes this waiter.
            await self._notifier.wait_beyond(position, rooms=frozenset(), user_id=None)
