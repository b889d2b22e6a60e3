"""Third-party lookups: what the client API's ``/thirdparty/*`` asks of the
application services that bridge other networks.

A service names the protocols it bridges in its registration
(``protocols``). Each lookup is passed on to the services concerned with
the service's ``hs_token`` (:meth:`AppServiceClient.query_third_party`):
a protocol's metadata and its forward lookups to the services that
declare the protocol, the reverse lookups (by Matrix alias or user ID) to
every service that declares one at all, since a service with no protocol
has no network to map to. The answers are merged: a protocol's instances
from every service, one after another in registration order, its fields
united, its icon the first given; lookups' results concatenated.

Invariants
----------

* **A service is never trusted.** Each is given
  :attr:`ThirdPartyLookups.timeout_s` to answer, and its answer is read
  only as far as
  :data:`~ranvier.appservice_client.MAX_THIRD_PARTY_ANSWER_BYTES` (the
  client's bound). An answer that is not of the spec's shape is left out
  whole; an entry of a list that is not (an instance, a location, a user)
  is left out alone, so one bad entry does not hide a service's good
  ones. Only the spec's keys are passed on, each of the spec's type (the
  objects the spec leaves open, ``fields`` and a field's type, as they
  came), and at most :data:`MAX_ENTRIES` entries of a service's answer.
* **Instance IDs are unique.** Each instance with a ``network_id`` gets
  an ``instance_id`` made with the service's ID
  (:func:`~ranvier.core.appservices.third_party_instance_id`), the name
  ``/publicRooms`` takes for the network's room list; an instance that
  would repeat one already given is left out.
* **A failing service is left out, not an error.** The lookup answers
  with what the others said; a protocol none of whose services answered
  is as unknown as one nobody declares (404 ``M_NOT_FOUND``), and is left
  out of ``/thirdparty/protocols``.
* **A protocol's metadata is remembered, briefly and boundedly.** A
  service's answer for a protocol is kept for :data:`PROTOCOL_CACHE_S`,
  a failure for :data:`FAILURE_CACHE_S`, at most
  :data:`MAX_CACHED_PROTOCOLS` of them; requests that find none wait for
  the one ask already under way rather than each asking again.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import trio

from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id

from .appservices import (
    AppService,
    AppServiceClient,
    AppServices,
    AppServiceUnavailableError,
    third_party_instance_id,
)

__all__ = [
    "FAILURE_CACHE_S",
    "MAX_CACHED_PROTOCOLS",
    "MAX_ENTRIES",
    "PROTOCOL_CACHE_S",
    "Kind",
    "ThirdPartyLookups",
]

_log: Final = logging.getLogger(__name__)

#: The most entries (instances, locations, users) taken from one answer.
MAX_ENTRIES: Final = 1000

#: How long, in seconds, a service's metadata for a protocol is used before
#: the service is asked again. The metadata names the bridge's networks and
#: the fields to search them by, which change only when its operator
#: reconfigures it, while clients ask for it each time they open a dialog
#: to find a bridged room and ``/publicRooms`` consults it for every page of
#: a network's list: without a cache each of those waits on the bridge, and
#: a bridge that is down holds each up for the whole
#: :attr:`~ThirdPartyLookups.timeout_s`. Five minutes keeps a busy server
#: to one ask per service and protocol every five minutes, and a
#: reconfigured bridge is shown within five.
PROTOCOL_CACHE_S: Final = 300.0
#: How long, in seconds, a failed ask (no answer in time, an error, an
#: answer of the wrong shape) is remembered: long enough that a burst of
#: requests while a bridge is down waits on it once, short enough that it
#: is shown again soon after it is back.
FAILURE_CACHE_S: Final = 15.0
#: The most (service, protocol) answers remembered, least recently used
#: dropped first. Only the protocols the registrations declare are ever
#: asked about, so this bounds only a configuration that declares more;
#: each answer is at most
#: :data:`~ranvier.appservice_client.MAX_THIRD_PARTY_ANSWER_BYTES` of JSON.
MAX_CACHED_PROTOCOLS: Final = 256

_T = TypeVar("_T")
Kind = Literal["location", "user"]


@dataclass(slots=True)
class _Cached:
    expires: float
    #: The checked metadata; None for a failed ask.
    answer: dict[str, Any] | None


def _not_found(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_NOT_FOUND", http_status=404)


def _is_string_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_alias(value: object) -> bool:
    return isinstance(value, str) and value.startswith("#") and is_valid_user_id("@" + value[1:])


def _instance(raw: object) -> dict[str, Any] | None:
    """The spec's fields of a protocol instance, or None if it is not one.

    ``desc`` is required. ``network_id`` and ``fields`` are too, by the
    spec, but services older than the spec's text send instances without
    them, and Synapse passes those on; such an instance is shown, only no
    room list can be asked of it, having no ``instance_id``.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("desc"), str):
        return None
    fields = raw.get("fields", {})
    network_id = raw.get("network_id")
    icon = raw.get("icon")
    if not isinstance(fields, dict):
        return None
    if network_id is not None and (not isinstance(network_id, str) or not network_id):
        return None
    if icon is not None and not isinstance(icon, str):
        return None
    instance: dict[str, Any] = {"desc": raw["desc"], "fields": fields}
    if icon is not None:
        instance["icon"] = icon
    if network_id is not None:
        instance["network_id"] = network_id
    return instance


def _protocol(raw: object) -> dict[str, Any] | None:
    """A protocol's metadata as the spec has it, or None for an answer of
    another shape. ``instances`` must be a list; the other keys, required
    by the spec but left out by some services, are read as empty when
    absent and must have the spec's types when present.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("instances"), list):
        return None
    user_fields = raw.get("user_fields", [])
    location_fields = raw.get("location_fields", [])
    field_types = raw.get("field_types", {})
    icon = raw.get("icon")
    if not (_is_string_list(user_fields) and _is_string_list(location_fields)):
        return None
    if max(len(user_fields), len(location_fields), len(field_types)) > MAX_ENTRIES:
        return None
    if not isinstance(field_types, dict) or not all(
        isinstance(definition, dict) for definition in field_types.values()
    ):
        return None
    if icon is not None and not isinstance(icon, str):
        return None
    instances = [
        instance
        for raw_instance in raw["instances"][:MAX_ENTRIES]
        if (instance := _instance(raw_instance)) is not None
    ]
    protocol: dict[str, Any] = {
        "user_fields": user_fields,
        "location_fields": location_fields,
        "field_types": field_types,
        "instances": instances,
    }
    if icon is not None:
        protocol["icon"] = icon
    return protocol


def _merge(answers: Sequence[tuple[AppService, dict[str, Any]]]) -> dict[str, Any]:
    """One protocol's metadata from its services' answers, in order."""
    merged: dict[str, Any] = {
        "user_fields": [],
        "location_fields": [],
        "field_types": {},
        "instances": [],
    }
    seen: set[str] = set()
    for service, answer in answers:
        for key in ("user_fields", "location_fields"):
            merged[key] = list(dict.fromkeys([*merged[key], *answer[key]]))
        for field, definition in answer["field_types"].items():
            merged["field_types"].setdefault(field, definition)
        if "icon" in answer:
            merged.setdefault("icon", answer["icon"])
        for instance in answer["instances"]:
            network_id = instance.get("network_id")
            if network_id is not None:
                instance_id = third_party_instance_id(service.id, network_id)
                if instance_id in seen:
                    continue
                seen.add(instance_id)
                instance = {**instance, "instance_id": instance_id}
            merged["instances"].append(instance)
    return merged


def _entries(raw: object, kind: Kind, protocols: Sequence[str]) -> list[dict[str, Any]] | None:
    """The locations or users of a lookup's answer in ``protocols``, or
    None when the answer is not a list."""
    if not isinstance(raw, list):
        return None
    key, valid = ("alias", _is_alias) if kind == "location" else ("userid", is_valid_user_id)
    entries = []
    for entry in raw[:MAX_ENTRIES]:
        if (
            isinstance(entry, dict)
            and valid(entry.get(key))
            and entry.get("protocol") in protocols
            and isinstance(entry.get("fields"), dict)
        ):
            entries.append(
                {key: entry[key], "protocol": entry["protocol"], "fields": entry["fields"]}
            )
    return entries


class ThirdPartyLookups:
    """Passes the client API's third-party lookups on to the services."""

    def __init__(
        self,
        services: AppServices,
        client: AppServiceClient,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = trio.current_time,
        cache_s: float = PROTOCOL_CACHE_S,
        failure_cache_s: float = FAILURE_CACHE_S,
        cache_entries: int = MAX_CACHED_PROTOCOLS,
    ) -> None:
        self._services = services
        self._client = client
        #: How long a service has to answer one lookup.
        self.timeout_s = timeout_s
        #: How long an answer and a failure of a protocol's metadata are kept.
        self.cache_s = cache_s
        self.failure_cache_s = failure_cache_s
        self._clock = clock
        self._cache_entries = cache_entries
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        # The asks under way, each set once its answer is in the cache (or
        # it was cancelled, when a waiter asks in its place).
        self._asking: dict[tuple[str, str], trio.Event] = {}

    def _declaring(self, protocol: str | None) -> list[AppService]:
        """The services that can answer about ``protocol`` (None: about any)."""
        return [
            service
            for service in self._services
            if service.url is not None
            and (
                protocol in service.registration.protocols
                if protocol is not None
                else service.registration.protocols
            )
        ]

    async def _ask_each(
        self,
        asks: Sequence[tuple[AppService, str, Sequence[tuple[str, str]]]],
        read: Callable[[AppService, Any], _T | None],
    ) -> list[_T | None]:
        """Ask every ``(service, path, params)`` at once; what ``read``
        makes of each answer, in the order asked. A service that fails, is
        late or answers what ``read`` refuses has None.
        """
        answers: list[_T | None] = [None] * len(asks)

        async def ask(index: int) -> None:
            service, path, params = asks[index]
            answers[index] = await self._ask(service, path, params, read)

        async with trio.open_nursery() as nursery:
            for index in range(len(asks)):
                nursery.start_soon(ask, index)
        return answers

    async def _ask(
        self,
        service: AppService,
        path: str,
        params: Sequence[tuple[str, str]],
        read: Callable[[AppService, Any], _T | None],
    ) -> _T | None:
        """What ``read`` makes of one service's answer; None when it fails,
        is late or answers what ``read`` refuses."""
        with trio.move_on_after(self.timeout_s):
            try:
                raw = await self._client.query_third_party(service, path, params)
            except AppServiceUnavailableError as exc:
                _log.info("third-party lookup %s left out: %s", path, exc)
                return None
            answer = read(service, raw)
            if answer is None:
                _log.info("third-party lookup %s of %s left out: malformed", path, service.id)
            return answer
        _log.info("third-party lookup %s of %s left out: no answer in time", path, service.id)
        return None

    async def _protocol_of(self, service: AppService, protocol: str) -> dict[str, Any] | None:
        """The service's metadata for ``protocol``, as the cache has it;
        None when it has none. Never changed once cached: callers copy
        what they change."""
        key = (service.id, protocol)
        while True:
            asking = self._asking.get(key)
            if asking is not None:
                await asking.wait()
                continue
            cached = self._cache.get(key)
            if cached is not None and cached.expires > self._clock():
                self._cache.move_to_end(key)
                return cached.answer
            break
        asking = self._asking[key] = trio.Event()
        try:
            answer = await self._ask(
                service, _protocol_path(protocol), (), lambda _service, raw: _protocol(raw)
            )
            lasts = self.cache_s if answer is not None else self.failure_cache_s
            self._cache[key] = _Cached(self._clock() + lasts, answer)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
            return answer
        finally:
            del self._asking[key]
            asking.set()

    async def _protocols_of(
        self, pairs: Sequence[tuple[AppService, str]]
    ) -> list[dict[str, Any] | None]:
        """:meth:`_protocol_of` of each ``(service, protocol)``, at once."""
        answers: list[dict[str, Any] | None] = [None] * len(pairs)

        async def ask(index: int) -> None:
            service, protocol = pairs[index]
            answers[index] = await self._protocol_of(service, protocol)

        async with trio.open_nursery() as nursery:
            for index in range(len(pairs)):
                nursery.start_soon(ask, index)
        return answers

    async def protocols(self) -> dict[str, dict[str, Any]]:
        """``GET /thirdparty/protocols``: every protocol some service
        declares and answers for, with its merged metadata."""
        pairs = [
            (service, protocol)
            for service in self._declaring(None)
            for protocol in dict.fromkeys(service.registration.protocols)
        ]
        answers = await self._protocols_of(pairs)
        by_protocol: dict[str, list[tuple[AppService, dict[str, Any]]]] = {}
        for (service, protocol), answer in zip(pairs, answers, strict=True):
            if answer is not None:
                by_protocol.setdefault(protocol, []).append((service, answer))
        return {protocol: _merge(found) for protocol, found in by_protocol.items()}

    async def protocol(self, protocol: str) -> dict[str, Any]:
        """``GET /thirdparty/protocol/{protocol}``."""
        services = self._require(protocol)
        answers = await self._protocols_of([(service, protocol) for service in services])
        found = [
            (service, answer)
            for service, answer in zip(services, answers, strict=True)
            if answer is not None
        ]
        if not found:
            raise _not_found(f"no application service answered for the protocol {protocol!r}")
        return _merge(found)

    async def lookup(
        self, kind: Kind, protocol: str, fields: Sequence[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        """``GET /thirdparty/{location,user}/{protocol}``: the portal rooms
        or users the services find by ``fields`` (passed on as they came),
        404 when none is found, as the spec has it."""
        services = self._require(protocol)
        asks = [(service, f"{kind}/{_segment(protocol)}", fields) for service in services]
        answers = await self._ask_each(asks, lambda _service, raw: _entries(raw, kind, [protocol]))
        found = [entry for entries in answers if entries for entry in entries]
        if not found:
            raise _not_found(f"no {kind} of the protocol {protocol!r} matches those fields")
        return found

    async def reverse_lookup(self, kind: Kind, matrix_id: str) -> list[dict[str, Any]]:
        """``GET /thirdparty/location?alias=`` or ``/thirdparty/user?userid=``:
        what the services map the Matrix alias or user to, in the
        protocols each declares."""
        param = "alias" if kind == "location" else "userid"
        asks = [(service, kind, [(param, matrix_id)]) for service in self._declaring(None)]
        answers = await self._ask_each(
            asks, lambda service, raw: _entries(raw, kind, service.registration.protocols)
        )
        return [entry for entries in answers if entries for entry in entries]

    def _require(self, protocol: str) -> list[AppService]:
        services = self._declaring(protocol)
        if not services:
            raise _not_found(f"no application service here bridges the protocol {protocol!r}")
        return services


def _segment(protocol: str) -> str:
    return urllib.parse.quote(protocol, safe="")


def _protocol_path(protocol: str) -> str:
    return f"protocol/{_segment(protocol)}"
