"""The main process's replication endpoints: workers' writes, run on the one
storage actor.

Invariants
----------

* **Secret first.** Every request must carry ``Authorization: Bearer``
  with the shared secret, compared in constant time
  (:func:`hmac.compare_digest`); without it the answer is 401
  ``M_UNAUTHORIZED`` before the body is read or anything runs.
* **Only registered writes run.** The generic endpoint runs a write only
  if its name is among the storage modules' registered writes
  (:func:`~ranvier.replication.operations.operation_names`), with arguments
  decoded against its own type hints; anything else is a 400. Events go
  through the two event endpoints alone, to :meth:`Storage.persist_events`,
  so that this process's stream listeners hear of them as of its own.
* **A transaction runs once.** A request whose transaction ID (with its
  path) was answered before gets that first answer again and writes
  nothing; one that arrives while the first is still running waits for
  its answer. Answers are remembered in a bounded map of the most recent
  ones, 5xx answers not at all (a retry should run again: the write
  failed and was rolled back). Across a restart of this process the map
  is gone and a repeated write runs again, which the writes are made to
  survive (see docs/decisions.md, "Replication: writes repeated across a
  restart").
* **A started write finishes.** Once a write is handed to the actor, the
  request's own cancellation (a worker that hung up) does not stop it or
  the recording of its answer, so the worker's retry finds the answer.
"""

from __future__ import annotations

import collections
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import trio

from ranvier.errors import MatrixError
from ranvier.federation.transport.listener import AsgiApp
from ranvier.metrics import note_route
from ranvier.storage import Storage
from ranvier.web import (
    Disconnected,
    Receive,
    Router,
    Scope,
    Send,
    only_http,
    read_body,
)

from . import operations, wire

__all__ = ["ReplicationApp"]

_log: Final = logging.getLogger(__name__)
_json: Final = msgspec.json.Encoder()
_UNAUTHORIZED: Final = {
    "errcode": "M_UNAUTHORIZED",
    "error": "the replication secret is missing or wrong",
}


@dataclass(eq=False, slots=True)
class _Answer:
    """A transaction's answer, or the promise of one while it runs."""

    done: trio.Event = field(default_factory=trio.Event)
    status: int = 0
    content_type: str = ""
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class _Write:
    """What one matched request asks for."""

    key: tuple[str, ...]
    kind: str
    params: dict[str, str]


class ReplicationApp:
    """The ASGI application of a ``replication`` listener, over ``storage``
    (which must write through this process's own storage actor).

    ``remembered`` bounds how many answered transactions are kept to answer
    a repeat; ``max_body_bytes`` how large a request may be. ``control``
    serves the authenticated requests under :data:`~ranvier.replication.wire.CONTROL`
    (the stream of positions, resync requests); ``on_write`` is told the
    name of each generic write once it has run.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        shared_secret: str,
        remembered: int = 10_000,
        max_body_bytes: int = 64 * 1024 * 1024,
        control: AsgiApp | None = None,
        on_write: Callable[[str], None] | None = None,
    ) -> None:
        if not shared_secret:
            raise ValueError("the replication shared secret must not be empty")
        if remembered < 1:
            raise ValueError(f"remembered must be at least 1, not {remembered}")
        self._storage = storage
        self._control = control
        self._on_write = on_write
        self._expected = f"Bearer {shared_secret}".encode()
        self._remembered = remembered
        self._max_body_bytes = max_body_bytes
        self._answers: collections.OrderedDict[tuple[str, ...], _Answer] = collections.OrderedDict()
        #: Writes handed to the actor so far by endpoint (``fed_send_events``,
        #: ``send_event``, ``write``): not repeats answered from memory, nor
        #: requests refused before running.
        self.writes_run: collections.Counter[str] = collections.Counter()
        self._router = Router()
        for pattern in (wire.FED_SEND_EVENTS, wire.SEND_EVENT, wire.WRITE):
            self._router.add("POST", pattern, self._unused, authenticated=False)

    @staticmethod
    async def _unused(request: object) -> dict[str, Any]:
        # The router only matches paths here; requests are run by _run.
        raise AssertionError("not called")

    @property
    def writes_remembered(self) -> int:
        """How many transactions' answers are kept now."""
        return len(self._answers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if not await only_http(scope, receive, send):
            return
        if not self._authorised(scope):
            await _send_error(send, 401, _UNAUTHORIZED)
            return
        if self._control is not None and scope["path"].startswith(wire.CONTROL):
            await self._control(scope, receive, send)
            return
        try:
            write = self._match(scope)
            body = await read_body(receive, _headers(scope), self._max_body_bytes)
        except MatrixError as exc:
            await _send_error(send, exc.http_status, exc.to_json())
            return
        except Disconnected:
            return
        answer = await self._answer(write, body)
        await _send(send, answer.status, answer.content_type, answer.body)

    def _authorised(self, scope: Scope) -> bool:
        given = b""
        for name, value in scope.get("headers", ()):
            if bytes(name).lower() == b"authorization":
                given = bytes(value)
                break
        return hmac.compare_digest(given, self._expected)

    def _match(self, scope: Scope) -> _Write:
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1").partition("?")[0] if raw_path else scope["path"]
        match = self._router.match(scope["method"], path)
        note_route(scope, match.route)
        pattern = match.route.pattern
        params = match.params
        key: tuple[str, ...]
        if pattern == wire.WRITE:
            key = ("write", params["operation"], params["txn_id"])
        elif pattern == wire.SEND_EVENT:
            key = ("send_event", params["event_id"], params["txn_id"])
        else:
            key = ("fed_send_events", params["txn_id"])
        return _Write(key, key[0], params)

    async def _answer(self, write: _Write, body: bytes) -> _Answer:
        answer = self._answers.get(write.key)
        if answer is not None:
            await answer.done.wait()
            return answer
        answer = self._answers[write.key] = _Answer()
        # Shielded: the write and the recording of its answer outlive a
        # worker that hangs up, so that its retry finds the answer.
        with trio.CancelScope(shield=True):
            try:
                answer.body = await self._run(write, body)
                answer.status, answer.content_type = 200, wire.BODY_TYPE
            except Exception as exc:
                status, content = wire.error_answer(exc)
                if status >= 500:
                    _log.warning("a replicated write %s failed", write.key, exc_info=exc)
                answer.status, answer.content_type = status, "application/json"
                answer.body = _json.encode(content)
            if answer.status >= 500:
                del self._answers[write.key]
            else:
                self._forget_oldest()
            answer.done.set()
        return answer

    def _forget_oldest(self) -> None:
        while len(self._answers) > self._remembered:
            key, oldest = next(iter(self._answers.items()))
            if not oldest.done.is_set():
                # Still running: kept, and with it everything newer.
                break
            del self._answers[key]

    async def _run(self, write: _Write, body: bytes) -> bytes:
        storage = self._storage
        if write.kind == "write":
            name = write.params["operation"]
            if name == operations.PERSIST_EVENTS:
                raise MatrixError(
                    "events are persisted through fed_send_events or send_event",
                    errcode="M_UNRECOGNIZED",
                    http_status=400,
                )
            operation = operations.decode_operation(name, body)
            self.writes_run[write.kind] += 1
            result = await storage.actor.submit(operation)
            if self._on_write is not None:
                self._on_write(name)
            return operations.encode_result(name, result)
        persist = operations.decode_persist_events(body)
        if write.kind == "send_event":
            event_id = write.params["event_id"]
            if event_id not in {event.event_id for event in persist.events}:
                raise MatrixError(
                    f"{event_id} is not among the events sent",
                    errcode="M_INVALID_PARAM",
                    http_status=400,
                )
        self.writes_run[write.kind] += 1
        orderings = await storage.persist_events(
            persist.events, current_state_groups=persist.current_state_groups or None
        )
        return operations.encode_result(operations.PERSIST_EVENTS, orderings)


def _headers(scope: Scope) -> list[tuple[str, str]]:
    return [
        (bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1"))
        for name, value in scope.get("headers", ())
    ]


async def _send_error(send: Send, status: int, content: dict[str, Any]) -> None:
    await _send(send, status, "application/json", _json.encode(content))


async def _send(send: Send, status: int, content_type: str, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode("ascii")),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
