"""The federation queries: events, the state at an event, auth chains,
history, and profiles.

Other servers call these to fill gaps in what they know of a room:

* ``GET /v1/event/{eventId}``: one event;
* ``GET /v1/state/{roomId}`` and ``/v1/state_ids/{roomId}?event_id=``: the
  state *before* an event (the state its prev events lead to), with the auth
  chain of that state; ``state_ids`` gives IDs only;
* ``GET /v1/event_auth/{roomId}/{eventId}``: an event's auth chain;
* ``GET /v1/backfill/{roomId}?v=&limit=``: the given events and those
  before them, deepest first;
* ``POST /v1/get_missing_events/{roomId}``: the events between what the
  caller has (``earliest_events``) and what it got (``latest_events``);
* ``GET /v1/query/profile?user_id=&field=``: a local user's public profile,
  any field of it or all; a field the user has not set is left out of the
  answer (the spec's choice between leaving it out and null).

While the room's state here is partial, ``/state``, ``/state_ids`` and
``/event_auth`` are refused with 403 (see
:meth:`~ranvier.federation.room_access.RoomAccess.check_full_state`).
History (``/event``, ``/backfill``, ``/get_missing_events``) is not: a
server that missed this server's events pulls the gap from here, and the
partial state may not show it in the room, so the servers the join named
count as in the room too.

Who may see what is :mod:`ranvier.federation.room_access`'s business; every
room endpoint here applies the room's server ACL first. Events are sent as
stored, byte for byte: the stored JSON is embedded in the answer without
being decoded (``msgspec.Raw``), which also keeps fields ranvier does not
know. Events the asking server may not see go out redacted, and so do
events a redaction applies to, when the routes are given the events as
served (``served``): the spec has a redacted event returned redacted to
whoever asks, and its signatures still hold on the redacted form.

Rejected events and outliers are left out of pulled history: they are not
part of the room's graph as this server accepted it.

**Erased users.** The events of a local user who deactivated with
``erase`` go to a server that may see them redacted unless one of its
users was joined to the room at the event (when
:meth:`~ranvier.federation.room_access.RoomAccess.joined_at_event`): the
spec's erasure serves servers that join after it as it serves users. It
applies to ``/event``, ``/backfill`` and ``/get_missing_events``, as
Synapse applies it; the state answers (``/state``, ``/state_ids``,
``/event_auth``) are what a server checks the room's authorisation with,
and go out as ever.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping, Sequence
from typing import Any, Final, Generic, Protocol, TypeVar

import msgspec
import trio

from ranvier.core.erasure import ErasedForms
from ranvier.core.redactions import ServedEvents
from ranvier.core.room_servers import RoomServersReader
from ranvier.errors import MatrixError
from ranvier.federation.transport.routes import wall_clock_ms
from ranvier.federation.transport.server import Request, Router
from ranvier.protocol.auth import create_event_id_for_room, is_valid_user_id
from ranvier.protocol.redaction import redact
from ranvier.protocol.room_versions import get_room_version
from ranvier.storage.records import StoredEvent

from .room_access import RoomAccess

__all__ = [
    "DEFAULT_MISSING_EVENTS_LIMIT",
    "MAX_BACKFILL_LIMIT",
    "MAX_MISSING_EVENTS_LIMIT",
    "AuthChainReader",
    "ProfileSource",
    "QueryStore",
    "add_query_routes",
]

#: The most events one ``/backfill`` answer holds, whatever ``limit`` asks.
MAX_BACKFILL_LIMIT: Final = 100
#: The most events one ``/get_missing_events`` answer holds.
MAX_MISSING_EVENTS_LIMIT: Final = 100
#: The spec's default ``limit`` for ``/get_missing_events``.
DEFAULT_MISSING_EVENTS_LIMIT: Final = 10
_PREFIX: Final = "/_matrix/federation/v1"


class ProfileSource(Protocol):
    """Where local users' profiles come from.

    ``get_profile`` returns the fields of ``user_id``'s profile that may be
    shown to other servers, or None when there is no such user.
    """

    async def get_profile(self, user_id: str) -> Mapping[str, Any] | None: ...


class AuthChainReader(Protocol):
    """The reads behind the state answers, which cover every member of a
    room: auth chains followed in storage and events' JSON alone.
    """

    async def get_auth_chain_ids(self, event_ids: Collection[str]) -> frozenset[str]:
        """The union of the events' auth chains: what following
        ``auth_events`` reaches, rejected events and outliers followed, events
        not stored included but not followed.
        """
        ...

    async def get_event_jsons(
        self, event_ids: Collection[str], *, as_served: bool
    ) -> Mapping[str, bytes]:
        """The stored JSON of the stored events of ``event_ids``, by ID; with
        ``as_served``, redacted where a redaction applies.
        """
        ...


class QueryStore(RoomServersReader, Protocol):
    """What the queries read: the room's state and events, and
    :class:`AuthChainReader`'s reads.
    """

    @property
    def auth_chains(self) -> AuthChainReader: ...


class _Links(msgspec.Struct):
    """The fields of a stored event that walking the room's graph reads."""

    prev_events: tuple[str, ...] = ()


_decode_links = msgspec.json.Decoder(_Links).decode


class _MissingEventsBody(msgspec.Struct, forbid_unknown_fields=False):
    earliest_events: list[str]
    latest_events: list[str]
    limit: int = DEFAULT_MISSING_EVENTS_LIMIT
    min_depth: int = 0


def _not_found(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_NOT_FOUND", http_status=404)


def _forbidden(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_FORBIDDEN", http_status=403)


def _required_query(request: Request, name: str) -> str:
    value = request.query_value(name)
    if value is None:
        raise MatrixError(
            f"the query parameter {name!r} is required", errcode="M_MISSING_PARAM", http_status=400
        )
    return value


def _origin(request: Request) -> str:
    # Every route here is authenticated, so the app has set the origin.
    assert request.origin is not None
    return request.origin


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _InFlight(Generic[_K, _V]):
    """Calls for one key that overlap in time run once, and share the answer.

    Nothing is kept once no call waits: an answer worked out later may
    differ, and a big one should not outlive its requests. A call whose
    shared work failed, or was cancelled with the request that started it,
    does the work itself.
    """

    def __init__(self) -> None:
        self._running: dict[_K, _Flight[_V]] = {}

    async def run(self, key: _K, work: Callable[[], Awaitable[_V]]) -> _V:
        flight = self._running.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.answer is not None:
                return flight.answer[0]
            return await work()
        flight = self._running[key] = _Flight()
        try:
            answer = await work()
            flight.answer = (answer,)
            return answer
        finally:
            del self._running[key]
            flight.done.set()


class _Flight(Generic[_V]):
    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.answer: tuple[_V] | None = None
        self.done = trio.Event()


class _Queries:
    def __init__(
        self,
        server_name: str,
        store: QueryStore,
        profiles: ProfileSource | None,
        clock: Callable[[], int],
        served: ServedEvents | None = None,
        erasure: ErasedForms | None = None,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._served = served
        self._erasure = erasure
        self._profiles = profiles
        self._clock = clock
        self._states_in_flight: _InFlight[tuple[str, int], tuple[list[str], list[str]]] = (
            _InFlight()
        )

    # Helpers.

    async def _get_events(self, event_ids: Sequence[str]) -> Mapping[str, StoredEvent]:
        """The stored events of ``event_ids`` as they are served."""
        if self._served is None:
            return await self._store.get_events(event_ids)
        return await self._served.get_served_events(event_ids)

    def _access(self) -> RoomAccess:
        return RoomAccess(self._store, partial_rooms=self._store)

    async def _room_version(self, room_id: str) -> str:
        version = await self._store.get_room_version(room_id)
        if version is None:
            raise _not_found(f"{room_id} is not known here")
        return version

    async def _event_in_room(self, room_id: str | None, event_id: str) -> StoredEvent:
        event = (await self._get_events([event_id])).get(event_id)
        if event is None or (room_id is not None and event.room_id != room_id):
            where = f" in {room_id}" if room_id is not None else ""
            raise _not_found(f"event {event_id} is not known here{where}")
        return event

    def _transaction(self, pdus: list[Any]) -> dict[str, Any]:
        return {"origin": self._server_name, "origin_server_ts": self._clock(), "pdus": pdus}

    async def _as_seen_by(
        self, access: RoomAccess, events: Sequence[StoredEvent], origin: str, room_version: str
    ) -> list[Any]:
        """The events as ``origin`` may see them: whole, or redacted."""
        erased = await self._erased_forms(events)
        pdus: list[Any] = []
        for event in events:
            if await access.can_see_event(event, origin):
                pdus.append(await self._seen(access, event, origin, erased))
            else:
                pdus.append(redact(msgspec.json.decode(event.json), room_version))
        return pdus

    async def _erased_forms(self, events: Sequence[StoredEvent]) -> Mapping[str, StoredEvent]:
        """The redacted forms of those of ``events`` whose sender is erased."""
        if self._erasure is None or not events:
            return {}
        return await self._erasure.erased_forms(events)

    async def _seen(
        self,
        access: RoomAccess,
        event: StoredEvent,
        origin: str,
        erased: Mapping[str, StoredEvent],
    ) -> msgspec.Raw:
        """``event``, which ``origin`` may see, as it is sent there: its
        redacted form in ``erased`` unless ``origin`` had a user joined at it.
        """
        form = erased.get(event.event_id)
        if form is not None and not await access.joined_at_event(event, origin):
            return msgspec.Raw(form.json)
        return msgspec.Raw(event.json)

    async def _state_before(self, request: Request) -> tuple[list[str], list[str]]:
        """The state before the event that /state and /state_ids ask for (its
        event IDs) and that state's auth chain, once the origin is found
        allowed to have them.

        A joining server asks for both at once: the state and its auth chain
        are worked out once for the requests in flight at the same state
        group, which a big room's state makes worth it. Only the checks of
        who asks are made per request.
        """
        room_id = request.path_params["room_id"]
        event_id = _required_query(request, "event_id")
        origin = _origin(request)
        version = await self._room_version(room_id)
        access = self._access()
        await access.check_server_acl(room_id, origin)
        await access.check_full_state(room_id)
        event = await self._event_in_room(room_id, event_id)
        await self._check_may_see_state(access, event, origin)
        groups = await self._store.get_event_state_groups(event_id)
        if groups is None or event.rejected_reason is not None:
            raise _not_found(f"the state at {event_id} is not known here")
        if await self._store.get_partial_state_event_ids([event_id]):
            raise _not_found(f"the state at {event_id} is not yet fully known here")

        async def work() -> tuple[list[str], list[str]]:
            state = await access.state_group(groups.before)
            state_ids = sorted(state.values())
            return state_ids, await self._auth_chain(room_id, version, state_ids)

        return await self._states_in_flight.run((room_id, groups.before), work)

    async def _check_may_see_state(
        self, access: RoomAccess, event: StoredEvent, origin: str
    ) -> None:
        # The state and auth chain at an event are what a server in the
        # room needs to take part in it, whatever the history visibility.
        if await access.server_in_room(event.room_id, origin):
            return
        if await access.can_see_event(event, origin):
            return
        raise _forbidden(f"{origin} is not in {event.room_id} and may not see {event.event_id}")

    async def _auth_chain(
        self, room_id: str, room_version: str, event_ids: Sequence[str]
    ) -> list[str]:
        """The union of the events' auth chains.

        From v12 no event cites the room's create event, yet every event's
        authorisation rests on it, so it is part of every chain here.
        """
        rv = get_room_version(room_version)
        chain = set(await self._store.auth_chains.get_auth_chain_ids(event_ids))
        create_id = create_event_id_for_room(room_id)
        if rv.room_id_from_create_event and any(e != create_id for e in event_ids):
            chain.add(create_id)
        return sorted(chain)

    async def _stored_json(self, event_ids: Sequence[str]) -> list[Any]:
        """The events of ``event_ids`` that are stored, in that order, as they
        are served (or as stored, without ``served``).

        Only their JSON is read: a state answer embeds every member's event
        and needs nothing else of them.
        """
        stored = await self._store.auth_chains.get_event_jsons(
            event_ids, as_served=self._served is not None
        )
        return [msgspec.Raw(stored[event_id]) for event_id in event_ids if event_id in stored]

    async def _check_may_pull(self, access: RoomAccess, room_id: str, origin: str) -> None:
        await access.check_server_acl(room_id, origin)
        if await access.server_in_room(room_id, origin) or await access.world_readable(room_id):
            return
        raise _forbidden(f"{origin} is not in {room_id}")

    # Handlers.

    async def get_event(self, request: Request) -> Mapping[str, Any]:
        origin = _origin(request)
        event = await self._event_in_room(None, request.path_params["event_id"])
        access = self._access()
        await access.check_server_acl(event.room_id, origin)
        if await access.can_see_event(event, origin):
            erased = await self._erased_forms([event])
            return self._transaction([await self._seen(access, event, origin, erased)])
        if await access.server_in_room(event.room_id, origin):
            version = await self._room_version(event.room_id)
            return self._transaction([redact(msgspec.json.decode(event.json), version)])
        raise _forbidden(f"{origin} may not see {event.event_id}")

    async def get_state_ids(self, request: Request) -> Mapping[str, Any]:
        state_ids, chain = await self._state_before(request)
        return {"pdu_ids": state_ids, "auth_chain_ids": chain}

    async def get_state(self, request: Request) -> Mapping[str, Any]:
        state_ids, chain = await self._state_before(request)
        return {
            "pdus": await self._stored_json(state_ids),
            "auth_chain": await self._stored_json(chain),
        }

    async def get_event_auth(self, request: Request) -> Mapping[str, Any]:
        room_id = request.path_params["room_id"]
        origin = _origin(request)
        version = await self._room_version(room_id)
        access = self._access()
        await access.check_server_acl(room_id, origin)
        await access.check_full_state(room_id)
        event = await self._event_in_room(room_id, request.path_params["event_id"])
        await self._check_may_see_state(access, event, origin)
        chain = await self._auth_chain(room_id, version, [event.event_id])
        return {"auth_chain": await self._stored_json(chain)}

    async def backfill(self, request: Request) -> Mapping[str, Any]:
        room_id = request.path_params["room_id"]
        origin = _origin(request)
        starts = list(request.query.get("v", ()))
        if not starts:
            raise MatrixError(
                "the query parameter 'v' is required", errcode="M_MISSING_PARAM", http_status=400
            )
        limit = _int_param(_required_query(request, "limit"), "limit")
        version = await self._room_version(room_id)
        access = self._access()
        await self._check_may_pull(access, room_id, origin)
        events = await self._walk_back(
            room_id, starts, include_starts=True, limit=min(limit, MAX_BACKFILL_LIMIT)
        )
        return self._transaction(await self._as_seen_by(access, events, origin, version))

    async def get_missing_events(self, request: Request) -> Mapping[str, Any]:
        room_id = request.path_params["room_id"]
        origin = _origin(request)
        try:
            body = msgspec.convert(request.content, _MissingEventsBody)
        except msgspec.ValidationError as exc:
            raise MatrixError(
                f"invalid get_missing_events body: {exc}", errcode="M_BAD_JSON", http_status=400
            ) from None
        version = await self._room_version(room_id)
        access = self._access()
        await self._check_may_pull(access, room_id, origin)
        events = await self._walk_back(
            room_id,
            body.latest_events,
            include_starts=False,
            limit=min(max(body.limit, 0), MAX_MISSING_EVENTS_LIMIT),
            skip=frozenset(body.earliest_events),
            min_depth=body.min_depth,
        )
        events.sort(key=lambda event: (event.depth, event.stream_ordering))
        return {"events": await self._as_seen_by(access, events, origin, version)}

    async def get_profile(self, request: Request) -> Mapping[str, Any]:
        user_id = _required_query(request, "user_id")
        field = request.query_value("field")
        if not is_valid_user_id(user_id):
            raise MatrixError(
                f"{user_id!r} is not a user ID", errcode="M_INVALID_PARAM", http_status=400
            )
        if user_id.partition(":")[2] != self._server_name:
            raise MatrixError(
                f"{user_id} is not a user of {self._server_name}",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        profile = None if self._profiles is None else await self._profiles.get_profile(user_id)
        if profile is None:
            raise _not_found(f"{user_id} has no profile here")
        if field is not None:
            return {field: profile[field]} if field in profile else {}
        return dict(profile)

    # The walk through the room's graph.

    async def _walk_back(
        self,
        room_id: str,
        starts: Sequence[str],
        *,
        include_starts: bool,
        limit: int,
        skip: frozenset[str] = frozenset(),
        min_depth: int = 0,
    ) -> list[StoredEvent]:
        """Events of the room reached from ``starts`` through ``prev_events``,
        deepest first, at most ``limit``.

        Events in ``skip`` and those below ``min_depth`` are neither returned
        nor walked past; nor are events not stored here, rejected ones and
        outliers.
        """
        found: list[StoredEvent] = []
        if limit <= 0:
            return found
        seen: set[str] = set(skip)
        # (-depth, event_id): the deepest event first, ties broken by ID.
        queue: list[tuple[int, str, StoredEvent]] = []

        async def enqueue(event_ids: Sequence[str]) -> None:
            new = [event_id for event_id in dict.fromkeys(event_ids) if event_id not in seen]
            seen.update(new)
            if not new:
                return
            stored = await self._get_events(new)
            for event_id in new:
                event = stored.get(event_id)
                if (
                    event is None
                    or event.room_id != room_id
                    or event.outlier
                    or event.rejected_reason is not None
                    or event.depth < min_depth
                ):
                    continue
                heapq.heappush(queue, (-event.depth, event_id, event))

        if include_starts:
            await enqueue(starts)
        else:
            stored = await self._get_events([s for s in starts if s not in skip])
            seen.update(starts)
            await enqueue(
                [
                    prev
                    for event_id in starts
                    if (event := stored.get(event_id)) is not None and event.room_id == room_id
                    for prev in _decode_links(event.json).prev_events
                ]
            )
        while queue and len(found) < limit:
            _, _, event = heapq.heappop(queue)
            found.append(event)
            await enqueue(_decode_links(event.json).prev_events)
        return found


def _int_param(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise MatrixError(
            f"the query parameter {name!r} must be an integer, not {value!r}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        ) from None


def add_query_routes(
    router: Router,
    *,
    server_name: str,
    store: QueryStore,
    profiles: ProfileSource | None = None,
    clock: Callable[[], int] = wall_clock_ms,
    served: ServedEvents | None = None,
    erasure: ErasedForms | None = None,
) -> None:
    """Serve the federation queries from ``store``.

    ``server_name`` is ours: it is the ``origin`` of the transactions
    answered and the only server whose users' profiles are served, from
    ``profiles`` (none without it). ``clock`` gives ``origin_server_ts``
    in milliseconds since the epoch. ``served`` reads events as they are
    served, redacted where a redaction applies; without it they go out as
    stored. The state answers read only the JSON of the events they embed,
    through ``store.auth_chains``, redacted there the same way when
    ``served`` is given: ``served`` is to read the same storage as ``store``.
    ``erasure`` gives erased users' events their redacted forms (see the
    module's doc); without it they go out as any other.
    """
    queries = _Queries(server_name, store, profiles, clock, served, erasure)
    router.add("GET", f"{_PREFIX}/event/{{event_id}}", queries.get_event)
    router.add("GET", f"{_PREFIX}/state/{{room_id}}", queries.get_state)
    router.add("GET", f"{_PREFIX}/state_ids/{{room_id}}", queries.get_state_ids)
    router.add("GET", f"{_PREFIX}/event_auth/{{room_id}}/{{event_id}}", queries.get_event_auth)
    router.add("GET", f"{_PREFIX}/backfill/{{room_id}}", queries.backfill)
    router.add("POST", f"{_PREFIX}/get_missing_events/{{room_id}}", queries.get_missing_events)
    router.add("GET", f"{_PREFIX}/query/profile", queries.get_profile)
