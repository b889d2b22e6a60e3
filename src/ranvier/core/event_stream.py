"""Events as they land, for programs that embed a homeserver.

A bot or bridge running in the same Trio program as its homeserver needs
no HTTP to follow the rooms: :meth:`EventStream.open` hands it a memory
channel of every event added to a room's timeline here, whoever wrote it
(local clients, other servers, workers), in stream order, each with its
stream ordering so that a restart can go on from the last one handled.

The channel is bounded: a slow reader holds back only its own feeder,
which reads a page from storage when there is room, so nothing is dropped
and nothing piles up in memory. Events are read from the database, not
handed over from the write path, so a reader that falls behind, or starts
from an old position, misses nothing the database holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from ranvier.failures import sole_failure
from ranvier.storage.records import StoredEvent

from .client_events import client_event
from .notifier import StreamNotifier
from .replaced_state import ReplacedStateSource, replaced_unsigned, with_replaced

__all__ = ["DEFAULT_BUFFER", "EventStream", "EventStreamStore", "StreamedEvent"]

#: Events a stream's channel holds before its feeder waits for the reader.
DEFAULT_BUFFER: Final = 100
#: Events read from storage at a time.
_PAGE: Final = 100


class EventStreamStore(ReplacedStateSource, Protocol):
    """Storage's side: :class:`ranvier.storage.event_stream.EventStreamReads`."""

    async def timeline_events_after(
        self, after: int, *, limit: int, as_served: bool = False
    ) -> list[StoredEvent]: ...

    async def newest_stream_ordering(self) -> int: ...


@dataclass(frozen=True, slots=True)
class StreamedEvent:
    """One event of a room's timeline, as the stream hands it over."""

    #: Its place in the stream: give it as ``since`` to go on after it.
    stream_ordering: int
    #: The event as clients get it (``room_id`` included), redacted if a
    #: redaction applied when it was read, a state event with what it
    #: replaced (``unsigned.replaces_state`` and ``prev_content``).
    event: dict[str, Any]


class EventStream:
    """Opens streams of the events stored here; see the module docstring."""

    def __init__(self, store: EventStreamStore, notifier: StreamNotifier) -> None:
        self._store = store
        self._notifier = notifier

    @asynccontextmanager
    async def open(
        self, *, since: int | None = None, buffer: int = DEFAULT_BUFFER
    ) -> AsyncIterator[trio.MemoryReceiveChannel[StreamedEvent]]:
        """A channel of the events after stream ordering ``since`` (after the
        newest stored now, when not given), fed until the block ends.
        """
        if buffer < 1:
            raise ValueError(f"an event stream needs a buffer of at least 1, not {buffer}")
        position = since if since is not None else await self._store.newest_stream_ordering()
        send, receive = trio.open_memory_channel[StreamedEvent](buffer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._feed, position, send)
                try:
                    yield receive
                finally:
                    # The feeder first, so that it is cancelled rather than
                    # told that nobody reads any more.
                    nursery.cancel_scope.cancel()
                    receive.close()
        except BaseExceptionGroup as group:
            raise sole_failure(group) from None

    async def _feed(self, position: int, send: trio.MemorySendChannel[StreamedEvent]) -> None:
        async with send:
            while True:
                events = await self._store.timeline_events_after(
                    position, limit=_PAGE, as_served=True
                )
                if not events:
                    await self._wait_beyond(position)
                    continue
                replaced = await replaced_unsigned(self._store, events)
                for event in events:
                    formatted = client_event(
                        event, unsigned=with_replaced(replaced, event.event_id, None)
                    )
                    await send.send(StreamedEvent(event.stream_ordering, formatted))
                    position = event.stream_ordering

    async def _wait_beyond(self, position: int) -> None:
        """Until the notifier reports an event after ``position``."""
        while self._notifier.position.events <= position:
            await self._notifier.wait_beyond(self._notifier.position)
