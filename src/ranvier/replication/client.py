"""A worker's side of replication: its writes, sent to the main process.

:class:`ReplicationClient` is the transport: one pooled HTTP client to the
main process's replication listener, with the shared secret, and retries.
:class:`RemoteWriter` is the write backend a worker's
:class:`~ranvier.storage.Storage` is given instead of a storage actor, and
:class:`ReplicationEventPersister` the event persister its federation
ingester (``kind="federation"``) and its event creator (``kind="client"``)
are given: core cannot tell either from the real thing.

Invariants
----------

* **One transaction ID per write.** Each write gets a random transaction ID
  before its first attempt and keeps it through every retry, so the main
  process runs it once however often it is sent.
* **Retry what may not have happened.** A connection failure, a timeout or
  a 5xx answer is retried with capped exponential backoff and jitter, on
  Trio's clock, until ``retry_for_seconds`` after the first attempt; then
  the write fails with :class:`~ranvier.errors.StorageUnavailableError`. A
  4xx answer is the write's own error and is raised at once (see
  :mod:`ranvier.replication.wire` for which become which exception).
* **A refused secret is the operator's problem, not the requester's.** The
  main process refusing the secret (401) is raised as
  :class:`~ranvier.errors.StorageUnavailableError`, never as an error a
  Matrix client would take to be about its own access token.
"""

from __future__ import annotations

import random
import secrets
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TypeVar

import httpx
import trio

from ranvier.errors import StorageUnavailableError
from ranvier.http_transport import DirectTransport
from ranvier.storage import EventToPersist, Storage, WriteOperation
from ranvier.storage.records import StateDelta
from ranvier.storage.writes import PersistEvents

from . import operations, wire

__all__ = ["RemoteWriter", "ReplicationClient", "ReplicationEventPersister", "new_txn_id"]

T = TypeVar("T")

_RETRIED_STATUS_FLOOR: Final = 500


def new_txn_id() -> str:
    """A transaction ID no other write of any worker will have."""
    return secrets.token_urlsafe(16)


class ReplicationClient:
    """Sends requests to the main process's replication listener at
    ``base_url`` (``http://127.0.0.1:9093``), with ``shared_secret``.

    Start it with ``await nursery.start(client.run)``; it holds one pooled
    HTTP client until cancelled. ``verify`` is an SSL context to check a
    TLS listener's certificate with, or False to skip the check.
    Retries wait ``backoff_base_seconds`` doubled per attempt, at most
    ``backoff_cap_seconds``, each wait between half and all of that.
    """

    def __init__(
        self,
        base_url: str,
        *,
        shared_secret: str,
        retry_for_seconds: float = 60.0,
        request_timeout_seconds: float = 30.0,
        backoff_base_seconds: float = 0.05,
        backoff_cap_seconds: float = 5.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        if not shared_secret:
            raise ValueError("the replication shared secret must not be empty")
        if retry_for_seconds <= 0 or request_timeout_seconds <= 0:
            raise ValueError("retry_for_seconds and request_timeout_seconds must be positive")
        if backoff_base_seconds <= 0 or backoff_cap_seconds < backoff_base_seconds:
            raise ValueError("the backoff must be positive and its cap at least its base")
        self.base_url = base_url.rstrip("/")
        self._headers = {
            "authorization": f"Bearer {shared_secret}",
            "content-type": wire.BODY_TYPE,
        }
        self._retry_for = retry_for_seconds
        self._timeout = request_timeout_seconds
        self._backoff_base = backoff_base_seconds
        self._backoff_cap = backoff_cap_seconds
        self._verify = verify
        self._http: httpx.AsyncClient | None = None
        #: Requests sent, retries included, for tests and metrics.
        self.attempts = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the HTTP client until cancelled."""
        if self._http is not None:
            raise RuntimeError("a ReplicationClient runs once at a time")
        transport = DirectTransport(ssl_context=httpx.create_ssl_context(verify=self._verify))
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self._timeout, transport=transport
        ) as http:
            self._http = http
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._http = None

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (0 for the first), with jitter."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0**attempt)
        return ceiling * random.uniform(0.5, 1.0)

    async def post(self, path: str, body: bytes) -> bytes:
        """POST ``body`` to ``path`` (which holds the transaction ID) until an
        answer other than a failure to retry; return a 200's body or raise
        the error it stands for.
        """
        deadline = trio.current_time() + self._retry_for
        attempt = 0
        while True:
            http = self._http
            if http is None:
                raise StorageUnavailableError("the replication client is not running")
            self.attempts += 1
            try:
                response = await http.post(path, content=body, headers=self._headers)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return response.content
                if response.status_code == 401:
                    raise StorageUnavailableError(
                        "the main process refused this worker's replication secret"
                    )
                if response.status_code < _RETRIED_STATUS_FLOOR:
                    raise wire.error_from_answer(response.status_code, response.content)
                problem = f"{response.status_code}: {response.text[:200]}"
            wait = self.backoff(attempt)
            attempt += 1
            if trio.current_time() + wait > deadline:
                raise StorageUnavailableError(
                    f"the main process at {self.base_url} did not take a write for"
                    f" {self._retry_for:g}s ({attempt} attempts; last: {problem})"
                )
            await trio.sleep(wait)

    async def get(
        self, path: str, params: Mapping[str, str], *, timeout_seconds: float
    ) -> httpx.Response:
        """One GET of ``path`` with the secret, not retried (the caller
        decides); raises httpx's errors as they come.
        """
        http = self._http
        if http is None:
            raise StorageUnavailableError("the replication client is not running")
        return await http.get(
            path,
            params=params,
            headers={"authorization": self._headers["authorization"]},
            timeout=timeout_seconds,
        )

    async def write(self, operation: WriteOperation[T]) -> T:
        """Run a registered write on the main process; see :class:`RemoteWriter`."""
        if isinstance(operation, PersistEvents):
            result: Any = await self.persist_events(operation, kind="federation")
            return result  # type: ignore[no-any-return]
        name, body = operations.encode_operation(operation)
        path = wire.WRITE.format(operation=_quote(name), txn_id=new_txn_id())
        answer = await self.post(path, body)
        decoded: T = operations.decode_result(name, answer)
        return decoded

    async def persist_events(
        self, operation: PersistEvents, *, kind: Literal["federation", "client"]
    ) -> dict[str, int]:
        """Persist events through ``fed_send_events`` or ``send_event``."""
        if not operation.events:
            return {}
        name, body = operations.encode_operation(operation)
        txn_id = new_txn_id()
        if kind == "client":
            path = wire.SEND_EVENT.format(
                event_id=_quote(operation.events[0].event_id), txn_id=txn_id
            )
        else:
            path = wire.FED_SEND_EVENTS.format(txn_id=txn_id)
        orderings: dict[str, int] = operations.decode_result(name, await self.post(path, body))
        return orderings


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class RemoteWriter:
    """A write backend that sends each write to the main process.

    Events submitted through it (:class:`~ranvier.storage.writes.PersistEvents`)
    go to ``fed_send_events``; every other write to the generic endpoint,
    which runs only registered writes. Its ``run`` is the client's.
    """

    def __init__(self, client: ReplicationClient) -> None:
        self.client = client

    async def submit(self, operation: WriteOperation[T]) -> T:
        return await self.client.write(operation)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.client.run(task_status=task_status)


class ReplicationEventPersister:
    """The event persister of a worker's event path: events through the
    endpoint for ``kind`` (``federation``: ``fed_send_events``; ``client``:
    ``send_event``), rooms and state groups through the worker's
    ``storage`` (which writes through the main process too).

    Like :meth:`Storage.persist_events`, it tells ``storage``'s stream
    listener of the events written.
    """

    def __init__(
        self,
        client: ReplicationClient,
        storage: Storage,
        *,
        kind: Literal["federation", "client"],
    ) -> None:
        self._client = client
        self._storage = storage
        self.kind = kind

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> dict[str, int]:
        events = tuple(events)
        orderings = await self._client.persist_events(
            PersistEvents(events, dict(current_state_groups or {})), kind=self.kind
        )
        self._storage.events_written(orderings, events)
        return orderings

    async def store_room(self, room_id: str, room_version: str) -> None:
        await self._storage.store_room(room_id, room_version)

    async def store_state_group(
        self, room_id: str, prev_group: int | None, delta: StateDelta
    ) -> int:
        return await self._storage.store_state_group(room_id, prev_group, delta)
