"""A worker process: the main homeserver's parts, writing through the main process.

``ranvier worker --role ROLE`` runs a :class:`WorkerServer`: the same
:class:`~ranvier.server.HomeServer` assembly, with four parts swapped.

* Storage reads the shared SQLite database directly (WAL, read-only
  connections) and writes through a
  :class:`~ranvier.replication.client.RemoteWriter`; events go through a
  :class:`~ranvier.replication.client.ReplicationEventPersister` of the
  right kind (federation ingestion through ``fed_send_events``, local
  users' events through ``send_event``).
* The un-partial-state task does not run here. A join that leaves a room
  with partial state asks the main process to resync it, and reads that
  wait for a room's full state wait for the stream to report it cleared.
* A :class:`~ranvier.replication.stream.StreamFollower` advances the
  worker's stream notifier from the main process's stream, waking ``/sync``
  long-polls, and drops the token cache when tokens were invalidated
  elsewhere.
* Typing and presence are the main process's: the worker holds copies
  that the stream keeps (:mod:`ranvier.core.ephemeral_replica`), sends
  their changes to the main process, and times nothing.
* A federation_reader passes on the servers it hears from that are
  backing off to the main process (:mod:`ranvier.replication.heard_from`),
  and a federation_sender hears of them from the stream.
* Only the listeners of its role run: ``federation_reader`` serves the
  federation API, ``client_reader`` the client-server API (both may add a
  ``metrics`` listener); no worker serves ``replication``.

The worker never creates the database or the signing key: the main process
does, and a worker started before them stops with an error naming the file.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Literal, get_args

import msgspec
import trio

from ranvier.config import Config, ConfigError
from ranvier.core.ephemeral_replica import EphemeralReplica, PresenceReplica, TypingReplica
from ranvier.core.interfaces import EventPersister
from ranvier.core.room_servers import PduSink
from ranvier.core.rooms import FullStateWaiter
from ranvier.errors import MatrixError
from ranvier.federation.sender.interfaces import SenderStore
from ranvier.federation.transport.tls import client_ssl_context
from ranvier.protocol.signing import SigningKey
from ranvier.server import HomeServer, _Component, _Prepared, open_server
from ranvier.storage import Storage

from . import wire
from .client import RemoteWriter, ReplicationClient, ReplicationEventPersister
from .ephemeral import EphemeralForwarder
from .federation_sending import DestinationWaker
from .heard_from import HeardFromRelay
from .stream import StreamFollower, StreamFullStateWaiter

__all__ = ["ROLES", "Role", "WorkerServer", "open_worker"]

_log: Final = logging.getLogger(__name__)

Role = Literal["federation_reader", "client_reader", "federation_sender"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

_LISTENERS: Final[dict[str, frozenset[str]]] = {
    "federation_reader": frozenset({"federation", "metrics"}),
    "client_reader": frozenset({"client", "metrics"}),
    "federation_sender": frozenset({"metrics"}),
}
# Resync requests waiting for the main process; a join is rare, and one
# lost is resumed when the main process starts again.
_RESYNC_BACKLOG: Final = 1024
_heard_encoder: Final = msgspec.msgpack.Encoder()


class WorkerServer(HomeServer):
    """A worker of ``role`` over ``config`` (which needs
    ``[worker] main_replication_url`` and ``[replication] shared_secret``).
    """

    def __init__(self, config: Config, role: Role) -> None:
        super().__init__(config)
        if role not in ROLES:
            raise ValueError(f"unknown worker role {role!r}; expected one of {', '.join(ROLES)}")
        config = self.config
        if config.worker.main_replication_url is None:
            raise ConfigError("worker.main_replication_url", "required to run a worker")
        if config.replication.shared_secret is None:
            raise ConfigError("replication.shared_secret", "required to run a worker")
        allowed = _LISTENERS[role]
        for index, listener in enumerate(config.listeners):
            if listener.type not in allowed:
                raise ConfigError(
                    f"listeners[{index}].type",
                    f"a {role} worker serves {' and '.join(sorted(allowed))} only,"
                    f" not {listener.type}",
                )
        self.role: Role = role
        self._replication: ReplicationClient | None = None
        self._follower: StreamFollower | None = None
        self._ephemeral_relay: EphemeralForwarder | None = None
        self._typing_copy: TypingReplica | None = None
        self._presence_copy: PresenceReplica | None = None
        #: On a federation_sender: wakes the destinations the database shows behind.
        self.destination_waker: DestinationWaker | None = None
        self._resyncs_send, self._resyncs_receive = trio.open_memory_channel[str](_RESYNC_BACKLOG)

    @property
    def replication_client(self) -> ReplicationClient:
        """The client of the main process's replication listener."""
        if self._replication is None:
            raise RuntimeError("the worker has not started: it has no replication client yet")
        return self._replication

    @property
    def stream_follower(self) -> StreamFollower:
        """Follows the main process's stream."""
        if self._follower is None:
            raise RuntimeError("the worker has not started: it has no stream follower yet")
        return self._follower

    # The parts that differ from the main process's.

    def _prepare(self) -> _Prepared:
        paths = self.config.paths
        for what, path, key in (
            ("signing key", paths.signing_key, "signing_key_path"),
            ("database", paths.database, "database.path"),
        ):
            if not path.is_file():
                raise ConfigError(
                    key,
                    f"no {what} at {path}: a worker uses the main process's, which makes it"
                    " on its first start",
                )
        return super()._prepare()

    def _make_storage(self) -> Storage:
        config = self.config
        url = config.worker.main_replication_url
        secret = config.replication.shared_secret
        # Both checked in __init__.
        assert url is not None
        assert secret is not None
        verify: ssl.SSLContext | bool = True
        if config.worker.replication_ca_file is not None:
            verify = client_ssl_context(ca_file=config.worker.replication_ca_file)
        self._replication = ReplicationClient(
            url,
            shared_secret=secret,
            retry_for_seconds=config.replication.retry_for_seconds,
            verify=verify,
        )
        return Storage(config.paths.database, writer=RemoteWriter(self._replication))

    def _event_persister(self, kind: Literal["federation", "client"]) -> EventPersister:
        return ReplicationEventPersister(self.replication_client, self.storage, kind=kind)

    def _sender_store(self) -> SenderStore:
        if self.role == "federation_sender":
            return self.storage
        return super()._sender_store()

    def _pdu_sink(self) -> PduSink:
        if self.role == "federation_sender":
            return self.federation_sender
        return super()._pdu_sink()

    def _full_state_waiter(self) -> FullStateWaiter:
        return StreamFullStateWaiter(self.storage, self.stream_notifier)

    @property
    def ephemeral_relay(self) -> EphemeralForwarder:
        """Sends typing and presence changes to the main process."""
        if self._ephemeral_relay is None:
            self._ephemeral_relay = EphemeralForwarder(self.replication_client)
        return self._ephemeral_relay

    def _make_presence(self, **parts: Any) -> PresenceReplica:
        self._presence_copy = PresenceReplica(self.ephemeral_relay, **parts)
        return self._presence_copy

    def _make_typing(self, **parts: Any) -> TypingReplica:
        self._typing_copy = TypingReplica(self.ephemeral_relay, **parts)
        return self._typing_copy

    def _build_handlers(self, signing_key: SigningKey) -> None:
        super()._build_handlers(signing_key)
        assert self._typing_copy is not None
        assert self._presence_copy is not None
        self._follower = StreamFollower(
            self.replication_client,
            self.storage,
            self.stream_notifier,
            forget_tokens=self.accounts.forget_cached_tokens,
            ephemeral=EphemeralReplica(self._typing_copy, self._presence_copy),
        )
        if self.role == "federation_reader":
            self._heard_relay = HeardFromRelay(self.storage, self._tell_main)

    async def _tell_main(self, destinations: Sequence[str]) -> None:
        await self.replication_client.post(wire.HEARD_FROM, _heard_encoder.encode(destinations))

    async def _wake_reset_destination(self, destination: str) -> None:
        # The main process passes it on to whichever process delivers.
        try:
            await self._tell_main([destination])
        except MatrixError as exc:
            _log.warning("%s: the reset backoff is left to run out: %s", destination, exc)

    def _resync(self, room_id: str) -> None:
        try:
            self._resyncs_send.send_nowait(room_id)
        except (trio.WouldBlock, trio.ClosedResourceError):
            _log.warning(
                "%s has partial state; the main process resyncs it when it next starts", room_id
            )

    async def _ask_for_resyncs(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        async for room_id in self._resyncs_receive:
            path = wire.RESYNC.format(room_id=room_id)
            try:
                await self.replication_client.post(path, b"")
            except MatrixError as exc:
                _log.warning("the main process did not take the resync of %s: %s", room_id, exc)

    async def wait_for_full_state(self, room_id: str) -> None:
        await self._full_state_waiter().wait_for_full_state(room_id)

    def _components(self) -> list[_Component]:
        components = []
        for component in super()._components():
            if component.name in (
                "un-partial-state task",
                "push sender",
                "media retention",
                "housekeeping",
                "search index scrub",
                "application service sender",
                "typing expiry",
                "presence lapses",
                "guest evictions",
            ):
                # The main process's alone.
                continue
            components.append(component)
            if component.name == "storage":
                # The replication client runs with storage; the stream and
                # the resync requests go through it.
                components.append(_Component("replication stream", self.stream_follower.run))
                components.append(_Component("resync requests", self._ask_for_resyncs))
                components.append(_Component("typing and presence relay", self.ephemeral_relay.run))
            if component.name == "federation sender" and self.role == "federation_sender":
                waker = DestinationWaker(self.federation_sender, self.storage, self.stream_notifier)
                self.destination_waker = waker
                self.stream_follower.on_queued = waker.poke
                self.stream_follower.on_heard_from = self.federation_sender.heard_from
                components.append(_Component("destination waker", waker.run))
        return components


@asynccontextmanager
async def open_worker(config: Config, role: Role) -> AsyncIterator[WorkerServer]:
    """Run a worker for the duration of an ``async with`` block, as
    :func:`~ranvier.server.open_homeserver` runs a main process.
    """
    async with open_server(WorkerServer(config, role)) as worker:
        yield worker
