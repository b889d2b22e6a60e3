"""Application services: bridges and bots registered with the server by a file.

An operator lists registration files (YAML, the spec's ``Registration``)
under ``app_service_config_files``. Each names a service: where it listens
(``url``, or null for a service that wants no traffic), the token it acts
with (``as_token``) and the token the server calls it with (``hs_token``),
its own user (``sender_localpart``) and the namespaces of user IDs, room
aliases and room IDs it is interested in, each ``exclusive`` or not.

This module reads those files into :class:`AppService` values and answers
the questions the rest of the server asks of them: whose is this token,
is this user, alias or room interesting to a service, does a service own
it exclusively.

Invariants
----------

* **A bad file stops the start.** A file that is not YAML, lacks a key,
  has a key of the wrong type or a regex that does not compile is refused
  with a :class:`~ranvier.config.ConfigError` naming the file and the key,
  and so are two services sharing an ``id``, ``as_token`` or ``hs_token``:
  the tokens identify the service each way, so a shared one would let one
  service act as, or hear what is meant for, another.
* **A regex matches the whole ID.** ``@_irc_.*`` covers
  ``@_irc_bob:example.org`` and not ``@x_irc_:example.org``: a pattern is
  matched as if it began with ``^`` and ended with ``$``, so an operator
  reading a file sees exactly what it covers.
* **Users are local.** A users namespace covers only user IDs of this
  server, as the spec has it, whatever its regex says.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import msgspec

from ranvier.config import ConfigError
from ranvier.errors import MatrixError

__all__ = [
    "AppService",
    "AppServiceClient",
    "AppServiceQueries",
    "AppServiceUnavailableError",
    "AppServices",
    "NamespaceRule",
    "Namespaces",
    "Registration",
    "exclusive_error",
    "load_app_services",
    "third_party_instance_id",
]

#: The localparts the server makes for new users; a service's sender needs one.
_LOCALPART: Final = re.compile(r"[a-z0-9._=\-/+]+")

NamespaceKind = Literal["users", "aliases", "rooms"]


class NamespaceRule(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a namespace list."""

    exclusive: bool
    regex: str


class Namespaces(msgspec.Struct, frozen=True, kw_only=True):
    users: list[NamespaceRule] = []
    aliases: list[NamespaceRule] = []
    rooms: list[NamespaceRule] = []


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    """A registration file as the spec defines it. Keys this server does
    not know (other servers' extensions) are left aside, as Synapse does.
    """

    id: str
    #: Required, but may be null: such a service is sent nothing.
    url: str | None
    as_token: str
    hs_token: str
    sender_localpart: str
    namespaces: Namespaces
    #: Whether masqueraded users are rate limited; the sender never is.
    rate_limited: bool = True
    protocols: list[str] = []
    #: Whether transactions carry typing, receipts and presence (MSC2409).
    receive_ephemeral: bool = False
    #: The same, as bridges written before MSC2409 was accepted say it.
    push_ephemeral: bool = msgspec.field(default=False, name="de.sorunome.msc2409.push_ephemeral")
    #: Whether the service does end-to-end encryption itself (MSC3202, the
    #: encrypted application services that MSC4203 is part of). With
    #: ``receive_ephemeral`` it is what has transactions carry the
    #: to-device messages of the service's users (MSC4203). MSC4203 names
    #: no switch of its own, and Synapse reads its to-device part from a
    #: server-wide setting (``msc2409_to_device_messages_enabled``) beside
    #: ``receive_ephemeral``; here the switch is per service, and this is
    #: the key bridges that encrypt already write, for the same servers.
    msc3202: bool = msgspec.field(default=False, name="org.matrix.msc3202")


@dataclass(frozen=True, slots=True)
class _Pattern:
    exclusive: bool
    regex: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class AppService:
    """A registered service, its regexes compiled."""

    registration: Registration
    #: The service's own user, ``@sender_localpart:server``.
    sender: str
    server_name: str
    users: tuple[_Pattern, ...] = field(default=())
    aliases: tuple[_Pattern, ...] = field(default=())
    rooms: tuple[_Pattern, ...] = field(default=())

    @property
    def id(self) -> str:
        return self.registration.id

    @property
    def url(self) -> str | None:
        return self.registration.url

    @property
    def as_token(self) -> str:
        return self.registration.as_token

    @property
    def hs_token(self) -> str:
        return self.registration.hs_token

    @property
    def receives_ephemeral(self) -> bool:
        """Whether the service asked for typing, receipts and presence, by
        the accepted key or the older prefixed one.
        """
        return self.registration.receive_ephemeral or self.registration.push_ephemeral

    @property
    def receives_to_device(self) -> bool:
        """Whether transactions carry the to-device messages of the
        service's users: it asked for ephemeral events and does encryption.
        """
        return self.receives_ephemeral and self.registration.msc3202

    def is_local(self, user_id: str) -> bool:
        return user_id.partition(":")[2] == self.server_name

    def owns_user(self, user_id: str) -> bool:
        """Whether the service may act as ``user_id``: its sender, or a
        local user of its users namespace.
        """
        if user_id == self.sender:
            return True
        return self.is_local(user_id) and _matches(self.users, user_id)

    def owns_user_exclusively(self, user_id: str) -> bool:
        return self.is_local(user_id) and _matches(self.users, user_id, exclusive=True)

    def is_interested_in_alias(self, alias: str) -> bool:
        return _matches(self.aliases, alias)

    def owns_alias_exclusively(self, alias: str) -> bool:
        return _matches(self.aliases, alias, exclusive=True)

    def is_interested_in_room_id(self, room_id: str) -> bool:
        return _matches(self.rooms, room_id)

    def is_interested_in_room(
        self, room_id: str, *, members: Iterable[str], aliases: Iterable[str]
    ) -> bool:
        """Whether every event of the room concerns the service: its ID or
        one of its aliases is in a namespace, or one of its joined or
        invited ``members`` is the service's.
        """
        return (
            self.is_interested_in_room_id(room_id)
            or any(self.is_interested_in_alias(alias) for alias in aliases)
            or any(self.owns_user(member) for member in members)
        )

    def is_interested_in_event(self, event: Mapping[str, Any]) -> bool:
        """Whether the event itself names one of the service's users, as
        sender or as the member an ``m.room.member`` event is about.
        """
        sender = event.get("sender")
        if isinstance(sender, str) and self.owns_user(sender):
            return True
        target = event.get("state_key")
        return (
            event.get("type") == "m.room.member"
            and isinstance(target, str)
            and self.owns_user(target)
        )


def _matches(patterns: Sequence[_Pattern], value: str, *, exclusive: bool = False) -> bool:
    return any(
        pattern.regex.fullmatch(value) is not None
        for pattern in patterns
        if pattern.exclusive or not exclusive
    )


def third_party_instance_id(service_id: str, network_id: str) -> str:
    """The ``instance_id`` a client knows a service's network by.

    Services choose their networks' IDs, so two may choose the same; the
    service's ID, unique among services, before it makes the instance ID
    unique on this server, as the spec asks. The form is Synapse's, which
    bridges and their tests already write by hand.
    """
    return f"{service_id}|{network_id}"


def exclusive_error(what: str) -> MatrixError:
    """The spec's answer to taking a name that is not the taker's to take."""
    return MatrixError(what, errcode="M_EXCLUSIVE", http_status=400)


class AppServices:
    """Every registered service, found by token, ID or namespace."""

    def __init__(self, services: Sequence[AppService] = ()) -> None:
        self.services: tuple[AppService, ...] = tuple(services)
        self._by_token = {service.as_token: service for service in self.services}
        self._by_id = {service.id: service for service in self.services}

    def __bool__(self) -> bool:
        return bool(self.services)

    def __iter__(self) -> Iterator[AppService]:
        return iter(self.services)

    def by_as_token(self, token: str) -> AppService | None:
        return self._by_token.get(token)

    def by_id(self, service_id: str) -> AppService | None:
        return self._by_id.get(service_id)

    def networks_of_instance(self, instance_id: str) -> list[tuple[str, str]]:
        """The ``(service ID, network ID)`` pairs that
        :func:`third_party_instance_id` turns into ``instance_id``: none for
        an ID no registered service could have made, more than one only
        when service IDs hold the separator themselves.
        """
        return [
            (service.id, instance_id[len(service.id) + 1 :])
            for service in self.services
            if instance_id.startswith(f"{service.id}|") and len(instance_id) > len(service.id) + 1
        ]

    def user_owner(self, user_id: str) -> AppService | None:
        """The service whose exclusive namespace covers ``user_id``, if one does."""
        return next((s for s in self.services if s.owns_user_exclusively(user_id)), None)

    def alias_owner(self, alias: str) -> AppService | None:
        """The service whose exclusive namespace covers ``alias``, if one does."""
        return next((s for s in self.services if s.owns_alias_exclusively(alias)), None)

    def check_user_registration(self, user_id: str, service: AppService | None) -> None:
        """Raise ``M_EXCLUSIVE`` unless ``user_id`` may be registered by
        ``service`` (None: by anyone else, a person or the admin API).

        A service registers only in its own users namespace; nobody else
        registers in an exclusive one.
        """
        if service is not None:
            if not service.owns_user(user_id):
                raise exclusive_error(
                    f"{user_id} is outside the users namespace of application service {service.id}"
                )
            return
        owner = self.user_owner(user_id)
        if owner is not None:
            raise exclusive_error(f"{user_id} is reserved by application service {owner.id}")

    def check_alias_change(self, user_id: str, alias: str) -> None:
        """Raise ``M_EXCLUSIVE`` unless ``user_id`` may create or delete
        ``alias``: an alias in a service's exclusive namespace is that
        service's users' alone.
        """
        owner = self.alias_owner(alias)
        if owner is not None and not owner.owns_user(user_id):
            raise exclusive_error(f"{alias} is reserved by application service {owner.id}")


class AppServiceUnavailableError(Exception):
    """The service was not reached, or did not answer 2xx: try again later."""


class AppServiceClient(Protocol):
    """Requests to services (:class:`ranvier.appservice_client.HttpAppServiceClient`)."""

    async def send_transaction(self, service: AppService, txn_id: str, body: bytes) -> None:
        """``PUT /_matrix/app/v1/transactions/{txn_id}``; raises
        :class:`AppServiceUnavailableError` unless answered 2xx.
        """
        ...

    async def query_user(self, service: AppService, user_id: str) -> bool:
        """``GET /_matrix/app/v1/users/{user_id}``: whether the service says it exists now."""
        ...

    async def query_alias(self, service: AppService, alias: str) -> bool:
        """``GET /_matrix/app/v1/rooms/{alias}``: whether the service says it exists now."""
        ...

    async def ping(self, service: AppService, transaction_id: str | None) -> int:
        """``POST /_matrix/app/v1/ping``; the milliseconds it took. Raises
        the spec's errors as MatrixError.
        """
        ...

    async def query_third_party(
        self, service: AppService, path: str, params: Sequence[tuple[str, str]]
    ) -> Any:
        """``GET /_matrix/app/v1/thirdparty/{path}``: the answer's JSON, not
        yet checked; raises :class:`AppServiceUnavailableError` unless it is
        a 200 with JSON of a bounded size.
        """
        ...


class AppServiceQueries:
    """Asks services about users and aliases nobody here knows, so that a
    bridge may make them on demand before the lookup is tried again.
    """

    def __init__(self, services: AppServices, client: AppServiceClient) -> None:
        self._services = services
        self._client = client

    async def query_alias(self, alias: str) -> bool:
        """Whether a service interested in ``alias`` says it made it."""
        for service in self._services:
            if (
                service.url is not None
                and service.is_interested_in_alias(alias)
                and await self._client.query_alias(service, alias)
            ):
                return True
        return False

    async def ping(self, service_id: str, transaction_id: str | None) -> int:
        """Have the server call the service's ``/ping``; the milliseconds it
        took. Raises the spec's errors (``M_URL_NOT_SET``,
        ``M_CONNECTION_TIMEOUT``, ``M_CONNECTION_FAILED``, ``M_BAD_STATUS``).
        """
        service = self._services.by_id(service_id)
        if service is None:
            raise MatrixError(
                f"no application service {service_id}", errcode="M_FORBIDDEN", http_status=403
            )
        return await self._client.ping(service, transaction_id)

    async def query_user(self, user_id: str) -> bool:
        """Whether a service whose namespace covers ``user_id`` says it made it."""
        for service in self._services:
            if (
                service.url is not None
                and service.owns_user(user_id)
                and await self._client.query_user(service, user_id)
            ):
                return True
        return False


# Loading.


def load_app_services(paths: Sequence[Path], server_name: str) -> AppServices:
    """Read and check every registration file; raise :class:`ConfigError`.

    PyYAML is imported only here, when a file is configured, so that a
    server without services does not carry it.
    """
    if not paths:
        return AppServices()
    import yaml

    services: list[AppService] = []
    seen: dict[tuple[str, str], str] = {}
    for path in paths:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                None, f"cannot read the file: {exc.strerror}", source=source
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(None, "the file is not UTF-8 text", source=source) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(None, f"not valid YAML: {exc}", source=source) from None
        if not isinstance(data, dict):
            raise ConfigError(None, "expected a YAML mapping of keys", source=source)
        service = _service(data, server_name, source)
        for key in ("id", "as_token", "hs_token"):
            value = getattr(service.registration, key)
            other = seen.get((key, value))
            if other is not None:
                raise ConfigError(key, f"the same {key} as in {other}", source=source)
            seen[key, value] = source
        services.append(service)
    return AppServices(services)


def _service(data: dict[str, Any], server_name: str, source: str) -> AppService:
    try:
        registration = msgspec.convert(data, Registration)
    except msgspec.ValidationError as exc:
        raise _validation_error(exc, source) from None
    for key in ("id", "as_token", "hs_token"):
        if not getattr(registration, key):
            raise ConfigError(key, "must not be empty", source=source)
    url = registration.url
    if url is not None and (not url.startswith(("http://", "https://")) or not _host_of(url)):
        raise ConfigError(
            "url", f"expected an http:// or https:// URL with a host, got {url!r}", source=source
        )
    if not _LOCALPART.fullmatch(registration.sender_localpart):
        raise ConfigError(
            "sender_localpart",
            f"{registration.sender_localpart!r} is not a user ID's localpart"
            " (a-z, 0-9 and . _ = - / +)",
            source=source,
        )
    compiled: dict[NamespaceKind, tuple[_Pattern, ...]] = {}
    for kind in ("users", "aliases", "rooms"):
        rules: list[NamespaceRule] = getattr(registration.namespaces, kind)
        patterns = []
        for index, rule in enumerate(rules):
            try:
                patterns.append(_Pattern(rule.exclusive, re.compile(rule.regex)))
            except re.error as exc:
                raise ConfigError(
                    f"namespaces.{kind}[{index}].regex",
                    f"not a regular expression: {exc}",
                    source=source,
                ) from None
        compiled[kind] = tuple(patterns)
    return AppService(
        registration,
        sender=f"@{registration.sender_localpart}:{server_name}",
        server_name=server_name,
        users=compiled["users"],
        aliases=compiled["aliases"],
        rooms=compiled["rooms"],
    )


def _host_of(url: str) -> str | None:
    try:
        return urllib.parse.urlsplit(url).hostname
    except ValueError:
        return None


_MSGSPEC_ERROR: Final = re.compile(r"(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_MISSING_FIELD: Final = re.compile(r"Object missing required field `(?P<name>[^`]*)`")


def _validation_error(exc: msgspec.ValidationError, source: str) -> ConfigError:
    match = _MSGSPEC_ERROR.fullmatch(str(exc))
    assert match is not None  # the pattern matches any text
    path = (match["path"] or "").removeprefix(".")
    problem = match["problem"]
    missing = _MISSING_FIELD.fullmatch(problem)
    if missing:
        key = missing["name"] if not path else f"{path}.{missing['name']}"
        return ConfigError(key, "required key is missing", source=source)
    problem = problem.replace("`object`", "mapping").replace("`", "")
    return ConfigError(path or None, problem[:1].lower() + problem[1:], source=source)
