"""Stand-ins for other homeservers.

A federation test needs a server on the other side: one that publishes its
keys, holds its copy of a room, answers the reads ranvier makes of it and
sends transactions signed as itself. Two stand-ins share one copy of the
rooms:

* :class:`RemoteRooms` answers the reads in-process, as a
  :class:`~ranvier.core.interfaces.FederationEventClient`: for tests of
  core that need no network;
* :class:`RemoteHomeserver` is a real :class:`FederationApp` on HTTPS over
  loopback, with its own signing key and key route, answering
  ``/event``, ``/state_ids`` and ``/get_missing_events`` from its
  :class:`RemoteRooms`, and sending requests with a federation client that
  signs as it.

In a pytest-trio test::

    remote = RemoteHomeserver("remote.test:{port}", key_lookup=KnownKeys({ours: our_key}))
    await remote.start(nursery, pki.server_context())
    await remote.open_client(nursery, pki.client_context(), dns=zone)
    bob = f"@bob:{remote.server_name}"
    room = RoomBuilder("12", bob, keys={remote.server_name: remote.signing_key})
    remote.rooms.add(room)
    await remote.send_transaction(ours, [room.message(bob)])

Both record what they were asked (:attr:`RemoteRooms.calls`) and can hold
back ``get_missing_events`` answers, for tests of what happens meanwhile.
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from ranvier.core.interfaces import StateIdsAtEvent
from ranvier.errors import MatrixError
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.federation.transport.resolve import DnsResolver
from ranvier.federation.transport.routes import (
    add_version_route,
    server_keys_json,
    wall_clock_ms,
)
from ranvier.federation.transport.server import FederationApp, JsonResponse, KeyLookup, Request
from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import SigningKey, generate_signing_key

from .keys import KnownKeys
from .network import serve
from .rooms import RoomBuilder

__all__ = ["Canned", "RemoteHomeserver", "RemoteRooms", "Seen"]

_V1 = "/_matrix/federation/v1"
_DAY_MS = 24 * 3600 * 1000


class RemoteRooms:
    """A remote server's copies of rooms, answering the reads made of them.

    Asked of a room it does not hold, it raises :class:`KeyError`: over
    HTTP, a server error, as from a broken server. An event it does not hold
    is a :class:`~ranvier.errors.MatrixError` (502), as the federation
    client raises for a 404.
    """

    def __init__(self, *rooms: RoomBuilder) -> None:
        self.rooms: dict[str, RoomBuilder] = {}
        #: ``(read, argument)`` of every read, in order: the server asked
        #: for ``get_missing_events``, the event ID for the others.
        self.calls: list[tuple[str, str]] = []
        #: When set, get_missing_events waits for it first.
        self.hold_missing_events: trio.Event | None = None
        #: Set once get_missing_events is asked.
        self.asked_for_missing = trio.Event()
        for room in rooms:
            self.add(room)

    def add(self, room: RoomBuilder) -> None:
        """Hold ``room``, as it is and as it grows."""
        self.rooms[room.room_id] = room

    @property
    def requests(self) -> list[str]:
        """The reads made, in order."""
        return [name for name, _ in self.calls]

    def called(self, name: str) -> list[str]:
        """The arguments of every ``name`` read (see :attr:`calls`)."""
        return [argument for call, argument in self.calls if call == name]

    def event(self, event_id: str) -> Pdu:
        for room in self.rooms.values():
            if event_id in room.events:
                return room.events[event_id]
        raise MatrixError(f"no event {event_id}", errcode="M_NOT_FOUND", http_status=502)

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
        """The events before ``latest_events``, walking back breadth first
        and stopping at ``earliest_events``, oldest first. Latest events
        this copy of the room does not hold add nothing.
        """
        self.calls.append(("get_missing_events", destination))
        self.asked_for_missing.set()
        if self.hold_missing_events is not None:
            await self.hold_missing_events.wait()
        room = self.rooms[room_id]
        found: list[Pdu] = []
        level = [
            prev
            for latest in latest_events
            if latest in room.events
            for prev in room.events[latest].prev_event_ids
        ]
        seen = set(earliest_events)
        while level and len(found) < limit:
            following: list[str] = []
            for event_id in level:
                if event_id in seen or event_id not in room.events or len(found) >= limit:
                    continue
                seen.add(event_id)
                found.append(room.events[event_id])
                following.extend(room.events[event_id].prev_event_ids)
            level = following
        return [event.raw for event in sorted(found, key=lambda event: event.depth)]

    async def get_state_ids(self, destination: str, room_id: str, event_id: str) -> StateIdsAtEvent:
        """The state before ``event_id`` and the auth chain of that state."""
        await trio.lowlevel.checkpoint()
        self.calls.append(("state_ids", event_id))
        room = self.rooms[room_id]
        if event_id not in room.events:
            raise MatrixError(f"no event {event_id}", errcode="M_NOT_FOUND", http_status=502)
        state = room.state_before(event_id)
        chain: set[str] = set()
        level = set(state.values())
        while level:
            level = {a for e in level for a in room.events[e].auth_event_ids} - chain
            chain |= level
        return StateIdsAtEvent(
            pdu_ids=tuple(sorted(state.values())), auth_chain_ids=tuple(sorted(chain))
        )

    async def get_event(self, destination: str, event_id: str) -> bytes:
        await trio.lowlevel.checkpoint()
        self.calls.append(("event", event_id))
        return self.event(event_id).raw


@dataclass
class Canned:
    """One canned HTTP answer."""

    status: int = 200
    body: bytes = b"{}"
    headers: Sequence[tuple[str, str]] = (("content-type", "application/json"),)

    @classmethod
    def json(
        cls, value: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Canned:
        extra = tuple((headers or {}).items())
        return cls(
            status, msgspec.json.encode(value), (("content-type", "application/json"), *extra)
        )


@dataclass
class Seen:
    """A request as a stand-in server saw it."""

    method: str
    uri: str
    headers: dict[str, str]
    body: bytes
    origin: str | None


class RemoteHomeserver:
    """Another homeserver: the real federation app with its own key route,
    the reads of :attr:`rooms`, echo routes that record what arrives, and
    answers a test can set.

    The server name is ``name_template`` with the port filled in once it
    listens (``"remote.test:{port}"``); a template without ``{port}`` is
    the name as it is, for a server that only sends requests.
    ``key_lookup`` finds the keys of servers that make requests of it.
    ``key_response`` replaces the key route's answer when set, to serve a
    forged or broken one; ``delay`` holds the key and echo answers back that
    many seconds; ``canned`` answers echo paths as set.
    """

    def __init__(
        self,
        name_template: str = "remote.test:{port}",
        *,
        key_lookup: KeyLookup | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        signing_key: SigningKey | None = None,
        validity_ms: int = _DAY_MS,
    ) -> None:
        self.name_template = name_template
        self.server_name = name_template
        self.signing_key = signing_key or generate_signing_key("k1")
        self.app = FederationApp(
            server_name=name_template,
            key_lookup=key_lookup if key_lookup is not None else KnownKeys(),
        )
        self.port = 0
        #: Its copies of rooms, served over /event, /state_ids and /get_missing_events.
        self.rooms = RemoteRooms()
        self.seen: list[Seen] = []
        self.key_requests = 0
        #: Set when the first key request arrives.
        self.key_requested = trio.Event()
        self.key_response: Mapping[str, Any] | None = None
        self.delay = 0.0
        self.canned: dict[str, Canned] = {}
        self.clock = clock
        self.validity_ms = validity_ms
        self._client: FederationHttpClient | None = None
        self._txn_ids: Iterator[int] = itertools.count()
        router = self.app.router
        add_version_route(router)
        router.add("GET", "/_matrix/key/v2/server", self._keys, authenticated=False)
        router.add("GET", _V1 + "/event/{event_id}", self._event)
        router.add("GET", _V1 + "/state_ids/{room_id}", self._state_ids)
        router.add("POST", _V1 + "/get_missing_events/{room_id}", self._missing_events)
        for method in ("GET", "PUT", "POST"):
            router.add(method, _V1 + "/echo", self._echo)
        router.add("PUT", _V1 + "/echo/{id}", self._echo)

    async def start(self, nursery: trio.Nursery, context: ssl.SSLContext) -> str:
        """Listen on loopback until ``nursery`` ends; return the server name, port filled in."""
        self.port = await serve(nursery, self.app, context)
        self.server_name = self.name_template.format(port=self.port)
        self.app.server_name = self.server_name
        return self.server_name

    async def open_client(
        self,
        nursery: trio.Nursery,
        ssl_context: ssl.SSLContext,
        dns: DnsResolver | None = None,
    ) -> FederationHttpClient:
        """Open :attr:`client`, which signs requests as this server, until ``nursery`` ends."""
        client = FederationHttpClient(
            self.server_name, self.signing_key, ssl_context=ssl_context, dns=dns
        )
        await nursery.start(client.run)
        self._client = client
        return client

    @property
    def client(self) -> FederationHttpClient:
        """The client :meth:`open_client` opened."""
        if self._client is None:
            raise RuntimeError(f"{self.server_name} has no client: call open_client first")
        return self._client

    def transaction(self, pdus: Sequence[Mapping[str, Any]], **fields: Any) -> dict[str, Any]:
        """A transaction body from this server; ``fields`` add to or replace its fields."""
        return {
            "origin": self.server_name,
            "origin_server_ts": self.clock(),
            "pdus": list(pdus),
            **fields,
        }

    async def send_transaction(
        self,
        destination: str,
        pdus: Sequence[Pdu | Mapping[str, Any]],
        *,
        txn_id: str | None = None,
        **fields: Any,
    ) -> Any:
        """PUT /send to ``destination``; its answer. Transaction IDs are
        ``t0``, ``t1``... unless given.
        """
        body = self.transaction([p.json if isinstance(p, Pdu) else p for p in pdus], **fields)
        txn_id = txn_id or f"t{next(self._txn_ids)}"
        return await self.client.put_json(destination, f"{_V1}/send/{txn_id}", body)

    async def _keys(self, request: Request) -> Any:
        self.key_requests += 1
        self.key_requested.set()
        if self.delay:
            await trio.sleep(self.delay)
        if self.key_response is not None:
            return self.key_response
        return server_keys_json(
            self.server_name, [self.signing_key], self.clock() + self.validity_ms
        )

    async def _event(self, request: Request) -> Mapping[str, Any]:
        try:
            raw = await self.rooms.get_event(self.server_name, request.path_params["event_id"])
        except MatrixError as exc:
            # What the in-process reads say of a 404, said here as the 404.
            raise MatrixError(exc.message, errcode=exc.errcode, http_status=404) from None
        return {
            "origin": self.server_name,
            "origin_server_ts": self.clock(),
            "pdus": [msgspec.json.decode(raw)],
        }

    async def _state_ids(self, request: Request) -> Mapping[str, Any]:
        event_id = request.query_value("event_id")
        if event_id is None:
            raise MatrixError("event_id is required", errcode="M_MISSING_PARAM", http_status=400)
        answer = await self.rooms.get_state_ids(
            self.server_name, request.path_params["room_id"], event_id
        )
        return msgspec.structs.asdict(answer)

    async def _missing_events(self, request: Request) -> Mapping[str, Any]:
        body = request.content
        events = await self.rooms.get_missing_events(
            self.server_name,
            request.path_params["room_id"],
            earliest_events=body["earliest_events"],
            latest_events=body["latest_events"],
            limit=body.get("limit", 10),
            min_depth=body.get("min_depth", 0),
        )
        return {"events": [msgspec.json.decode(raw) for raw in events]}

    async def _echo(self, request: Request) -> Any:
        self.seen.append(
            Seen(request.method, request.uri, dict(request.headers), request.body, request.origin)
        )
        if self.delay:
            await trio.sleep(self.delay)
        canned = self.canned.get(request.uri.partition("?")[0])
        if canned is not None:
            return JsonResponse(msgspec.json.decode(canned.body), status=canned.status)
        return {"uri": request.uri, "origin": request.origin, "content": request.content}
