"""A main process for the restart tests: storage and the replication app on
one port, in a process of its own.

    python _main_process.py DB PORT SECRET [CRASH_AFTER_EVENT_ID]

Prints ``ready`` once it listens. Given an event ID, it dies (``os._exit``)
after the write persisting that event has committed and before the worker
hears the answer: the worst moment for a main process to go.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import msgspec
import trio

from ranvier.federation.transport.listener import HttpListener
from ranvier.replication.server import ReplicationApp
from ranvier.storage import Storage
from ranvier.web import Message, Receive, Scope, Send


class _DiesAfterCommit:
    """The app, ended with the process once it answers for ``event_id``."""

    def __init__(self, app: ReplicationApp, event_id: str) -> None:
        self._app = app
        self._event_id = event_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        bodies: list[bytes] = []

        async def receiving() -> Message:
            message = await receive()
            bodies.append(message.get("body", b""))
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and self._names_event(b"".join(bodies)):
                # The answer exists only after the commit: die before it leaves.
                os._exit(3)
            await send(message)

        await self._app(scope, receiving, sending)

    def _names_event(self, body: bytes) -> bool:
        try:
            content: Any = msgspec.msgpack.decode(body)
        except msgspec.DecodeError:
            return False
        events = content.get("events", []) if isinstance(content, dict) else []
        return any(event.get("event_id") == self._event_id for event in events)


async def _main(db: str, port: int, secret: str, crash_after: str | None) -> None:
    storage = Storage(db, synchronous="NORMAL")
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        app = ReplicationApp(storage, shared_secret=secret)
        served: Any = app if crash_after is None else _DiesAfterCommit(app, crash_after)
        listener = HttpListener(served, host="127.0.0.1", port=port, ssl_context=None)
        await nursery.start(listener.run)
        print("ready", flush=True)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    trio.run(
        _main,
        arguments[0],
        int(arguments[1]),
        arguments[2],
        arguments[3] if len(arguments) > 3 else None,
    )
