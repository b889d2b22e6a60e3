"""Outgoing requests that read a remote server's copy of a room.

:class:`FederationEventFetcher` makes the reads ingestion needs to fill a
gap in our copy (the events missing before a PDU, the state at a gap, one
event), and the whole state at an event that the un-partial-state task
asks for, and another server's nearest event to a time
(``/timestamp_to_event``), over the homeserver's one
:class:`~ranvier.federation.transport.client.FederationHttpClient`. It sits
beside the transport client rather than with the ``/send`` handler, which
only receives: core is handed it as its
:class:`~ranvier.core.interfaces.FederationEventClient` and
:class:`~ranvier.core.interfaces.ResyncClient`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

import msgspec

from ranvier.core.interfaces import RoomStateAtEvent, StateIdsAtEvent
from ranvier.errors import MatrixError
from ranvier.federation.transport.client import FederationError, FederationHttpClient
from ranvier.protocol.untrusted_json import decode_untrusted_json

__all__ = ["FederationEventFetcher"]

_T = TypeVar("_T")


class _EventsBody(msgspec.Struct):
    events: list[msgspec.Raw]


class _PdusBody(msgspec.Struct):
    pdus: list[msgspec.Raw]


class _EventAtTimestamp(msgspec.Struct):
    event_id: str
    origin_server_ts: int


class _StateBody(msgspec.Struct):
    pdus: list[msgspec.Raw]
    auth_chain: list[msgspec.Raw]


class FederationEventFetcher:
    """The reads of a remote room that ingestion and the un-partial-state
    task make (:class:`ranvier.core.interfaces.ResyncClient`), over ``client``.

    Events are handed on as the bytes the remote sent. A failed request, or
    an answer not shaped as the spec says, raises
    :class:`~ranvier.errors.MatrixError` (status 502, the remote's fault).
    """

    def __init__(self, client: FederationHttpClient) -> None:
        self._client = client

    async def get_missing_events(
        self,
        destination: str,
        room_id: str,
        *,
        earliest_events: Sequence[str],
        latest_events: Sequence[str],
        limit: int,
        min_depth: int = 0,
    ) -> list[bytes]:
        body = {
            "earliest_events": list(earliest_events),
            "latest_events": list(latest_events),
            "limit": limit,
            "min_depth": min_depth,
        }
        path = f"/_matrix/federation/v1/get_missing_events/{_quote(room_id)}"
        answer = await self._request(
            destination, "POST", path, _EventsBody, content=body, query=None
        )
        return [bytes(event) for event in answer.events]

    async def get_state_ids(self, destination: str, room_id: str, event_id: str) -> StateIdsAtEvent:
        path = f"/_matrix/federation/v1/state_ids/{_quote(room_id)}"
        return await self._request(
            destination, "GET", path, StateIdsAtEvent, content=None, query={"event_id": event_id}
        )

    async def get_state(self, destination: str, room_id: str, event_id: str) -> RoomStateAtEvent:
        path = f"/_matrix/federation/v1/state/{_quote(room_id)}"
        answer = await self._request(
            destination,
            "GET",
            path,
            _StateBody,
            content=None,
            query={"event_id": event_id},
            into_buffer=True,
        )
        # Each event is handed on as received, whatever its shape: checking
        # it is the reader's part, as for every other read here. Views into
        # the body, not copies: the reader copies an event as it parses it,
        # so the body and a copy of every event are never held together.
        return RoomStateAtEvent(pdus=tuple(answer.pdus), auth_chain=tuple(answer.auth_chain))

    async def get_event(self, destination: str, event_id: str) -> bytes:
        path = f"/_matrix/federation/v1/event/{_quote(event_id)}"
        answer = await self._request(destination, "GET", path, _PdusBody, content=None, query=None)
        if len(answer.pdus) != 1:
            raise _remote_error(
                destination, f"GET {path} answered with {len(answer.pdus)} events, not one"
            )
        return bytes(answer.pdus[0])

    async def timestamp_to_event(
        self, destination: str, room_id: str, ts: int, direction: Literal["b", "f"]
    ) -> tuple[str, int]:
        """The event ``destination`` holds nearest to ``ts`` in ``direction``,
        and its timestamp; a 404 from it raises as any failure does.
        """
        path = f"/_matrix/federation/v1/timestamp_to_event/{_quote(room_id)}"
        answer = await self._request(
            destination,
            "GET",
            path,
            _EventAtTimestamp,
            content=None,
            query={"ts": str(ts), "dir": direction},
        )
        return answer.event_id, answer.origin_server_ts

    async def _request(
        self,
        destination: str,
        method: str,
        path: str,
        shape: type[_T],
        *,
        content: Any,
        query: Mapping[str, str] | None,
        into_buffer: bool = False,
    ) -> _T:
        """``into_buffer`` for an answer that may be tens of MB: read into one
        buffer, which what is decoded may keep views into.
        """
        body: bytes | bytearray
        try:
            if into_buffer:
                body = await self._client.request_into_buffer(
                    method, destination, path, content=content, query=query
                )
            else:
                body = (
                    await self._client.request(
                        method, destination, path, content=content, query=query
                    )
                ).body
        except FederationError as exc:
            raise _remote_error(destination, str(exc)) from exc
        try:
            # Every shape here holds events as msgspec.Raw, each checked as
            # it is parsed, and nothing free-form: the answer as a whole
            # need not be measured, only kept from overflowing the decoder.
            return decode_untrusted_json(body, type=shape, check_nesting=False)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _remote_error(destination, f"{method} {path}: unusable answer: {exc}") from None


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _remote_error(destination: str, message: str) -> MatrixError:
    text = message if message.startswith(f"{destination}:") else f"{destination}: {message}"
    return MatrixError(text, errcode="M_UNKNOWN", http_status=502)
