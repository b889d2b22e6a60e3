"""The table of room versions and what each one changes.

Every rule that differs between room versions is a named field of
:class:`RoomVersion`, so the code that applies a rule asks the table
(``if rv.knock_join_rule: ...``) instead of comparing version strings. Adding
a version is adding a row.

ranvier takes part in rooms of versions 6 to 12. Versions 1 to 5 are in the
table so that they are recognised, described and refused with
M_UNSUPPORTED_ROOM_VERSION rather than treated as unknown strings: they
predate strict canonical JSON and the integer limits that the rest of ranvier
relies on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from ranvier.errors import UnsupportedRoomVersionError

__all__ = [
    "DEFAULT_ROOM_VERSION",
    "KNOWN_ROOM_VERSIONS",
    "SUPPORTED_ROOM_VERSIONS",
    "EventIdFormat",
    "RedactionAlgorithm",
    "RoomVersion",
    "RoomVersionLike",
    "StateResAlgorithm",
    "get_room_version",
]


class EventIdFormat(enum.Enum):
    """How an event's ID is formed."""

    #: ``$opaque:server``, chosen by the origin and carried in the event.
    V1 = "v1"
    #: ``$`` + standard unpadded base64 of the reference hash (room v3).
    V3 = "v3"
    #: ``$`` + URL-safe unpadded base64 of the reference hash (v4 onwards).
    V4 = "v4"


class StateResAlgorithm(enum.Enum):
    V1 = "v1"
    V2 = "v2"
    #: State resolution v2.1 (MSC4297, room v12): the iterative auth checks
    #: start from an empty state and the conflicted state subgraph is
    #: included in the full conflicted set.
    V2_1 = "v2.1"


class RedactionAlgorithm(enum.Enum):
    """The redaction algorithms, named after the first version that used each."""

    V1 = "v1"
    #: m.room.aliases no longer keeps ``aliases``.
    V6 = "v6"
    #: m.room.join_rules also keeps ``allow``.
    V8 = "v8"
    #: m.room.member also keeps ``join_authorised_via_users_server``.
    V9 = "v9"
    #: Top-level ``origin``, ``membership`` and ``prev_state`` go; create
    #: keeps its whole content; redaction keeps ``redacts``; power levels
    #: keep ``invite``; member keeps ``third_party_invite.signed``.
    V11 = "v11"


@dataclass(frozen=True, slots=True)
class RoomVersion:
    """One room version: its identifier and every rule that depends on it."""

    identifier: str
    #: Whether ranvier takes part in rooms of this version.
    supported: bool
    event_id_format: EventIdFormat
    state_res: StateResAlgorithm
    redaction: RedactionAlgorithm
    #: Signing keys must be valid (``valid_until_ts``) when the event was sent (v5+).
    enforce_key_validity: bool
    #: m.room.aliases events skip the usual auth rules (v1 to v5).
    special_case_aliases_auth: bool
    #: Events must be canonical JSON: integers within ±(2^53-1), no floats (v6+).
    strict_canonical_json: bool
    #: ``notifications`` keys of power levels are checked on change (v6+).
    limit_notifications_power_levels: bool
    #: The ``knock`` join rule and membership (v7+).
    knock_join_rule: bool
    #: The ``restricted`` join rule with ``join_authorised_via_users_server`` (v8+).
    restricted_join_rule: bool
    #: The ``knock_restricted`` join rule (v10+).
    knock_restricted_join_rule: bool
    #: Power level values must be integers, not strings of digits (v10+).
    integer_power_levels: bool
    #: The create event has no ``creator``: its sender is the creator (v11+).
    implicit_room_creator: bool
    #: m.room.redaction carries ``redacts`` in its content (v11+).
    redacts_in_content: bool
    #: The creator and ``additional_creators`` have unlimited power and may
    #: not appear in power levels' ``users`` (v12, MSC4289).
    privileged_creators: bool
    #: The room ID is ``!`` + the create event's reference hash, and the
    #: create event is never cited in ``auth_events`` (v12, MSC4291).
    room_id_from_create_event: bool

    @property
    def create_event_in_auth_events(self) -> bool:
        """Whether events cite the create event among their auth events."""
        return not self.room_id_from_create_event

    def __str__(self) -> str:
        return self.identifier


def _v1_to_v5(identifier: str, event_id_format: EventIdFormat) -> RoomVersion:
    state_res = StateResAlgorithm.V1 if identifier == "1" else StateResAlgorithm.V2
    return RoomVersion(
        identifier=identifier,
        supported=False,
        event_id_format=event_id_format,
        state_res=state_res,
        redaction=RedactionAlgorithm.V1,
        enforce_key_validity=identifier == "5",
        special_case_aliases_auth=True,
        strict_canonical_json=False,
        limit_notifications_power_levels=False,
        knock_join_rule=False,
        restricted_join_rule=False,
        knock_restricted_join_rule=False,
        integer_power_levels=False,
        implicit_room_creator=False,
        redacts_in_content=False,
        privileged_creators=False,
        room_id_from_create_event=False,
    )


_V1 = _v1_to_v5("1", EventIdFormat.V1)
_V2 = _v1_to_v5("2", EventIdFormat.V1)
_V3 = _v1_to_v5("3", EventIdFormat.V3)
_V4 = _v1_to_v5("4", EventIdFormat.V4)
_V5 = _v1_to_v5("5", EventIdFormat.V4)
_V6 = RoomVersion(
    identifier="6",
    supported=True,
    event_id_format=EventIdFormat.V4,
    state_res=StateResAlgorithm.V2,
    redaction=RedactionAlgorithm.V6,
    enforce_key_validity=True,
    special_case_aliases_auth=False,
    strict_canonical_json=True,
    limit_notifications_power_levels=True,
    knock_join_rule=False,
    restricted_join_rule=False,
    knock_restricted_join_rule=False,
    integer_power_levels=False,
    implicit_room_creator=False,
    redacts_in_content=False,
    privileged_creators=False,
    room_id_from_create_event=False,
)
# Each later version is the one before it with what it changed.
_V7 = replace(_V6, identifier="7", knock_join_rule=True)
_V8 = replace(_V7, identifier="8", redaction=RedactionAlgorithm.V8, restricted_join_rule=True)
_V9 = replace(_V8, identifier="9", redaction=RedactionAlgorithm.V9)
_V10 = replace(_V9, identifier="10", knock_restricted_join_rule=True, integer_power_levels=True)
_V11 = replace(
    _V10,
    identifier="11",
    redaction=RedactionAlgorithm.V11,
    implicit_room_creator=True,
    redacts_in_content=True,
)
_V12 = replace(
    _V11,
    identifier="12",
    state_res=StateResAlgorithm.V2_1,
    privileged_creators=True,
    room_id_from_create_event=True,
)

#: Every room version ranvier recognises, by identifier.
KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    rv.identifier: rv for rv in (_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9, _V10, _V11, _V12)
}

#: The room versions ranvier takes part in, by identifier.
SUPPORTED_ROOM_VERSIONS: dict[str, RoomVersion] = {
    identifier: rv for identifier, rv in KNOWN_ROOM_VERSIONS.items() if rv.supported
}

#: The version of rooms created when the creator does not ask for one.
DEFAULT_ROOM_VERSION: RoomVersion = _V12

#: What public functions accept as a room version: the identifier or the entry.
RoomVersionLike = str | RoomVersion


def get_room_version(room_version: RoomVersionLike, *, unsupported_ok: bool = False) -> RoomVersion:
    """The room version named by ``room_version``.

    Raises :class:`~ranvier.errors.UnsupportedRoomVersionError` for a version
    that is unknown, or known but not one ranvier takes part in. Pure
    computations that are defined for older versions too (an event ID of a
    v4 event, say) pass ``unsupported_ok=True`` to accept any known version.
    """
    if isinstance(room_version, RoomVersion):
        rv = room_version
    else:
        found = KNOWN_ROOM_VERSIONS.get(room_version)
        if found is None:
            raise UnsupportedRoomVersionError(f"unknown room version {room_version!r}")
        rv = found
    if not rv.supported and not unsupported_ok:
        raise UnsupportedRoomVersionError(
            f"room version {rv.identifier} is not supported; supported versions are "
            + ", ".join(SUPPORTED_ROOM_VERSIONS)
        )
    return rv
