"""Knocking on a room for a local user: asking its members to be let in.

A room this server is in is knocked on here: the knock is a membership
event like any other (:meth:`EventCreator.send_event`), and the auth rules
decide whether the room's join rule allows it. Any other room is knocked
on through a server in it, as the spec's ``make_knock`` and ``send_knock``
handshake: that server makes a knock template, we sign it, and it takes
the knock into the room, answering with stripped state that identifies
the room (``knock_room_state``). The servers tried are those the caller
named (a client's ``via`` and ``server_name``), an alias's servers, then
the server a room ID names.

The knock is then kept here as an outlier, as a declined invite is
(:mod:`ranvier.core.room_leaves`), with that stripped state in its
``unsigned.knock_room_state``: /sync shows it in ``rooms.knock``, and a
leave withdrawing the knock finds the servers to send it through among the
senders of that state. The server that took the knock is recorded with
it: only that server's refusal of the knock is believed
(:mod:`ranvier.core.out_of_band`).

From room version 12 the spec has ``knock_room_state`` hold whole events of
the room, and entries improperly signed or formatted removed before a
client sees them (spec v1.16, MSC4311): each entry must be an event of the
room's version, of this room, a state event, with the content its hash
names and signed as the checks on receipt require; the others are dropped, the rest kept. Older
versions' servers still send stripped events, which cannot be checked and
are taken as they come, as invites' ``invite_room_state`` is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import content_hash_matches, hash_and_sign_event
from ranvier.protocol.room_versions import SUPPORTED_ROOM_VERSIONS, RoomVersion
from ranvier.protocol.signing import SigningKeyLike

from .builder import Clock, wall_clock_ms
from .context import out_of_band_to_persist
from .creation import EventCreator, member_event_content
from .directory import RoomDirectory
from .event_signatures import check_event_signatures
from .interfaces import EventPersister, VerifyKeySource

__all__ = [
    "KNOCK_ROOM_STATE",
    "KnockClient",
    "KnockMemberships",
    "Knocked",
    "RoomKnocks",
    "knock_servers",
]

_MEMBER: Final = "m.room.member"
#: Where a knock kept as an outlier holds the state its room's server sent.
KNOCK_ROOM_STATE: Final = "knock_room_state"
#: The room versions offered to ``make_knock``: those that have knocking.
_KNOCK_VERSIONS: Final = tuple(
    identifier for identifier, rv in SUPPORTED_ROOM_VERSIONS.items() if rv.knock_join_rule
)
#: Room versions whose servers may send ``knock_room_state`` stripped, unchecked.
_UNCHECKED_STATE_VERSIONS: Final = frozenset(str(number) for number in range(1, 12))


class KnockClient(Protocol):
    """The knock handshake with a server in the room
    (:class:`ranvier.federation.knocks.FederationKnockClient`).

    Both raise :class:`~ranvier.errors.MatrixError`: with the server's own
    errcode and status when it refuses, 502 when it gives no usable answer.
    """

    async def make_knock(
        self, destination: str, room_id: str, user_id: str, room_versions: Sequence[str]
    ) -> Any:
        """The decoded answer to ``make_knock``: ``room_version`` and ``event``."""
        ...

    async def send_knock(
        self, destination: str, room_id: str, event_id: str, event: Mapping[str, Any]
    ) -> Any:
        """The decoded answer to ``send_knock``, with ``knock_room_state``."""
        ...


class KnockMemberships(Protocol):
    """Whether this server is in a room
    (:class:`ranvier.storage.room_members.RoomMemberStorage`)."""

    async def server_has_joined_member(self, room_id: str, server_name: str) -> bool: ...


class _StrippedEvent(msgspec.Struct):
    type: str
    state_key: str
    content: dict[str, Any]
    sender: str


def _stripped_state(entries: Any) -> list[dict[str, Any]]:
    """The stripped state events among ``entries``; whole events are cut
    down to their stripped fields, and anything else is left out."""
    if not isinstance(entries, list):
        return []
    stripped = []
    for entry in entries:
        try:
            event = msgspec.convert(entry, _StrippedEvent)
        except msgspec.ValidationError:
            continue
        stripped.append(msgspec.structs.asdict(event))
    return stripped


def knock_servers(knock: Pdu) -> list[str]:
    """Servers that were in the room of a knock kept as an outlier: those
    of the senders of the state its room's server sent, then the server the
    room ID names."""
    unsigned = knock.json.get("unsigned")
    state = _stripped_state(unsigned.get(KNOCK_ROOM_STATE) if isinstance(unsigned, dict) else None)
    servers = [event["sender"].partition(":")[2] for event in state]
    servers.append(knock.room_id.partition(":")[2])
    return [server for server in dict.fromkeys(servers) if server]


def _worth_trying_elsewhere(exc: MatrixError) -> bool:
    return exc.http_status >= 500 or exc.http_status in (404, 429)


@dataclass(frozen=True, slots=True)
class Knocked:
    """A knock made: the room and the knock's event ID."""

    room_id: str
    event_id: str


class RoomKnocks:
    """Knocks on rooms for local users, here or through a server in the room."""

    def __init__(
        self,
        *,
        server_name: str,
        signing_key: SigningKeyLike,
        creator: EventCreator,
        memberships: KnockMemberships,
        persister: EventPersister,
        directory: RoomDirectory | None = None,
        client: KnockClient | None = None,
        clock: Clock = wall_clock_ms,
        keys: VerifyKeySource | None = None,
    ) -> None:
        self.server_name = server_name
        # Checks the signatures of knock_room_state entries from v12; without
        # it, those entries are all dropped, as none can be shown valid.
        self._keys = keys
        self._signing_key = signing_key
        self._creator = creator
        self._memberships = memberships
        self._persister = persister
        self._directory = directory
        self._client = client
        self._clock = clock

    async def knock(
        self,
        user_id: str,
        room_id_or_alias: str,
        servers: Sequence[str] = (),
        *,
        reason: str | None = None,
    ) -> str:
        """Knock on a room named by ID or alias (resolved first); return its ID."""
        knocked = await self.knock_event(user_id, room_id_or_alias, servers, reason=reason)
        return knocked.room_id

    async def knock_event(
        self,
        user_id: str,
        room_id_or_alias: str,
        servers: Sequence[str] = (),
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> Knocked:
        """:meth:`knock`, answering with the knock's event ID too; the keys
        of ``content`` go into the knock (see
        :func:`~ranvier.core.creation.member_event_content`), and
        ``origin_server_ts`` dates a knock made here, as
        :meth:`EventCreator.send_event` takes it.
        """
        if type(user_id) is not str or user_id.partition(":")[2] != self.server_name:
            raise MatrixError(
                f"{user_id!r} is not a user of {self.server_name}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        knock = member_event_content("knock", content, reason)
        room_id, candidates = await self._resolve(room_id_or_alias, servers)
        if await self._memberships.server_has_joined_member(room_id, self.server_name):
            event_id = await self._creator.send_event(
                user_id,
                room_id,
                _MEMBER,
                knock,
                state_key=user_id,
                origin_server_ts=origin_server_ts,
            )
            return Knocked(room_id, event_id)
        named = room_id.partition(":")[2]
        if named:
            candidates.append(named)
        remote = [server for server in dict.fromkeys(candidates) if server != self.server_name]
        return Knocked(room_id, await self._knock_remotely(user_id, room_id, remote, knock))

    async def _resolve(
        self, room_id_or_alias: str, servers: Sequence[str]
    ) -> tuple[str, list[str]]:
        """The room ID, and the servers to try for it: those given first."""
        candidates = [server for server in servers if type(server) is str and server]
        if type(room_id_or_alias) is str and room_id_or_alias.startswith("#"):
            if self._directory is None:
                raise MatrixError(
                    "this server resolves no room aliases", errcode="M_NOT_FOUND", http_status=404
                )
            resolved = await self._directory.resolve(room_id_or_alias)
            return resolved.room_id, [*candidates, *resolved.servers]
        if type(room_id_or_alias) is str and room_id_or_alias.startswith("!"):
            return room_id_or_alias, candidates
        raise MatrixError(
            f"{room_id_or_alias!r} is neither a room ID nor a room alias",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )

    async def _knock_remotely(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> str:
        if self._client is None:
            raise MatrixError(
                f"{room_id} is not joined here and this server does not speak to others",
                errcode="M_UNKNOWN",
                http_status=501,
            )
        if not servers:
            raise MatrixError(
                f"no server to knock on {room_id} through; name one with via",
                errcode="M_NOT_FOUND",
                http_status=404,
            )
        failures: list[str] = []
        for server in servers:
            try:
                answer = await self._client.make_knock(server, room_id, user_id, _KNOCK_VERSIONS)
                event = self._signed_knock(answer, room_id, user_id, content)
                sent = await self._client.send_knock(server, room_id, event.event_id, event.json)
            except MatrixError as exc:
                if not _worth_trying_elsewhere(exc):
                    raise
                failures.append(f"{server}: {exc.message}")
                continue
            entries = sent.get(KNOCK_ROOM_STATE) if isinstance(sent, dict) else None
            state = _stripped_state(await self._valid_entries(event.room_version, room_id, entries))
            # Kept outside the signed part, as an invite keeps the state its
            # server sent: the event's ID and signatures do not cover it.
            kept = Pdu.from_json(
                event.json | {"unsigned": {KNOCK_ROOM_STATE: state}}, event.room_version
            )
            # The server that took the knock is the one whose refusal of
            # it is believed (ranvier.core.out_of_band).
            await self._persister.persist_events(
                [out_of_band_to_persist(kept, sent_through=server)]
            )
            return event.event_id
        raise MatrixError(
            f"could not knock on {room_id}: {'; '.join(failures)}",
            errcode="M_UNKNOWN",
            http_status=502,
        )

    async def _valid_entries(self, rv: RoomVersion, room_id: str, entries: Any) -> Any:
        """``entries`` without those the spec has removed (see the module's
        notes); as given for versions before 12."""
        if rv.identifier in _UNCHECKED_STATE_VERSIONS or not isinstance(entries, list):
            return entries
        events: list[Pdu] = []
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            try:
                event = Pdu.from_json(entry, rv, check_limits=False)
            except MatrixError:
                continue
            # A content hash that does not match would have the event
            # redacted on receipt: its content, all a client sees, is not
            # the one signed.
            if (
                event.room_id == room_id
                and event.state_key is not None
                and content_hash_matches(event.json)
            ):
                events.append(event)
        if self._keys is None:
            return []
        # Failures are told by event ID, which a forged copy of an event
        # shares with it (its ID does not cover what redaction removes): each
        # round checks one entry per ID.
        valid: set[int] = set()
        pending = events
        while pending:
            this_round: dict[str, Pdu] = {}
            later: list[Pdu] = []
            for event in pending:
                if event.event_id in this_round:
                    later.append(event)
                else:
                    this_round[event.event_id] = event
            failures = await check_event_signatures(list(this_round.values()), self._keys)
            valid.update(id(e) for e in this_round.values() if e.event_id not in failures)
            pending = later
        return [event.json for event in events if id(event) in valid]

    def _signed_knock(
        self, answer: Any, room_id: str, user_id: str, content: Mapping[str, Any]
    ) -> Pdu:
        """Our knock from a ``make_knock`` template, checked to be one, signed."""
        if not isinstance(answer, dict) or not isinstance(answer.get("event"), dict):
            raise _bad_template("the answer has no event template")
        rv = _knock_version(answer.get("room_version"), room_id)
        template: dict[str, Any] = dict(answer["event"])
        expected = {"type": _MEMBER, "room_id": room_id, "sender": user_id, "state_key": user_id}
        for name, value in expected.items():
            if template.get(name) != value:
                raise _bad_template(f"its {name} is {template.get(name)!r}, not {value!r}")
        template.update(content=dict(content), origin_server_ts=self._clock())
        for name in ("signatures", "hashes", "unsigned"):
            template.pop(name, None)
        try:
            return Pdu.from_json(
                hash_and_sign_event(template, rv, self.server_name, self._signing_key), rv
            )
        except MatrixError as exc:
            raise _bad_template(exc.message) from None


def _knock_version(identifier: Any, room_id: str) -> RoomVersion:
    """The room version a template names, refused unless it has knocking here."""
    rv = SUPPORTED_ROOM_VERSIONS.get(identifier) if type(identifier) is str else None
    if rv is None or not rv.knock_join_rule:
        raise MatrixError(
            f"{room_id} is a room of version {identifier!r}, which this server cannot knock on",
            errcode="M_INCOMPATIBLE_ROOM_VERSION",
            http_status=400,
            room_version=str(identifier),
        )
    return rv


def _bad_template(message: str) -> MatrixError:
    return MatrixError(
        f"unusable make_knock answer: {message}", errcode="M_UNKNOWN", http_status=502
    )
