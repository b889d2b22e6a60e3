"""Power levels: what a user's level is and what each action requires.

The auth rules, state resolution and the homeserver's own checks (may this
user send that event, redact another's event, trigger an ``@room``
notification?) all read the same two events, ``m.room.power_levels`` and
``m.room.create``, so they share these helpers and cannot disagree.

Defaults come from the spec's description of ``m.room.power_levels``: with
no power levels event, or without the key, ``users_default``,
``events_default`` and ``invite`` are 0 and ``state_default``, ``kick``,
``ban`` and ``redact`` are 50. With no power levels event at all, the room's
creator has 100 (versions before 12).

Values are integers. Room versions before 10 also accept strings of an
integer (``" +100 "``), kept for early implementations; from version 10 the
auth rules reject them. A value neither form accepts counts as absent, so a
malformed level never raises here: the auth rules refuse a power levels
event carrying one, and everything else falls back to the default.

From room version 12 (MSC4289) the room's creators, the create event's
sender and its ``additional_creators``, have a power level above every
other: :data:`CREATOR_POWER_LEVEL`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import RoomVersion

__all__ = [
    "CREATOR_POWER_LEVEL",
    "DEFAULT_LEVELS",
    "get_creators",
    "get_named_level",
    "get_notification_level",
    "get_send_level",
    "get_user_power_level",
    "parse_power_level",
]

#: The power level of a room creator in versions with privileged creators
#: (v12). Those versions only accept integers within canonical JSON's range,
#: ±(2**53 - 1), so this is above any level an event can give.
CREATOR_POWER_LEVEL: Final = 2**53

#: The level each named property has when the power levels event leaves it
#: out, or the room has none.
DEFAULT_LEVELS: Final[Mapping[str, int]] = {
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "invite": 0,
    "kick": 50,
    "ban": 50,
    "redact": 50,
}

#: The level ``notifications.room`` (``@room`` mentions) defaults to.
_DEFAULT_NOTIFICATION_LEVEL: Final = 50

# The spec's grammar for levels written as strings (rooms v1-v9): optional
# whitespace, at most one sign, decimal digits, optional whitespace.
_STRING_LEVEL: Final = re.compile(r"[ \t\n\r\f\v]*[+-]?[0-9]+[ \t\n\r\f\v]*")


def parse_power_level(value: object, room_version: RoomVersion) -> int | None:
    """``value`` as a power level in ``room_version``, or None if it is not one.

    JSON booleans are not integers here, although Python's are.
    """
    if type(value) is int:
        return value
    if (
        not room_version.integer_power_levels
        and type(value) is str
        and _STRING_LEVEL.fullmatch(value) is not None
    ):
        return int(value)
    return None


def _level_in(mapping: object, key: str, default: int, room_version: RoomVersion) -> int:
    if not isinstance(mapping, dict):
        return default
    level = parse_power_level(mapping.get(key), room_version)
    return default if level is None else level


def get_creators(create: Pdu) -> frozenset[str]:
    """The room's creators as the create event's room version defines them.

    Versions 6-10 name the creator in ``content.creator``; 11 makes the
    sender the creator; 12 adds the user IDs in ``content.additional_creators``
    (the auth rules reject a create event whose list is malformed, so
    entries that are not strings are ignored here).
    """
    rv = create.room_version
    if not rv.implicit_room_creator:
        creator = create.content.get("creator")
        return frozenset((creator,)) if type(creator) is str else frozenset()
    creators = {create.sender}
    if rv.privileged_creators:
        additional = create.content.get("additional_creators")
        if type(additional) is list:
            creators.update(user for user in additional if type(user) is str)
    return frozenset(creators)


def _is_creator(user_id: str, create: Pdu) -> bool:
    # ``user_id in get_creators(create)``, without building the set: state
    # resolution asks this for every sender it sorts or checks.
    rv = create.room_version
    if not rv.implicit_room_creator:
        return create.content.get("creator") == user_id
    if user_id == create.sender:
        return True
    if rv.privileged_creators:
        additional = create.content.get("additional_creators")
        return type(additional) is list and user_id in additional
    return False


def get_user_power_level(user_id: str, *, power_levels: Pdu | None, create: Pdu | None) -> int:
    """The power level of ``user_id`` given the room's current power levels and create events.

    ``create`` may be None only where the room version does not need it: it
    names the creators (v12) and the creator's level when the room has no
    power levels event (v6-v11).
    """
    if create is not None and create.room_version.privileged_creators:
        if _is_creator(user_id, create):
            return CREATOR_POWER_LEVEL
    elif power_levels is None:
        return 100 if create is not None and _is_creator(user_id, create) else 0
    if power_levels is None:
        return 0
    rv = power_levels.room_version
    content = power_levels.content
    users_default = _level_in(content, "users_default", DEFAULT_LEVELS["users_default"], rv)
    return _level_in(content.get("users"), user_id, users_default, rv)


def get_named_level(power_levels: Pdu | None, name: str) -> int:
    """One of the named levels (``invite``, ``kick``, ``ban``, ``redact``,
    ``users_default``, ``events_default``, ``state_default``), defaults applied.
    """
    default = DEFAULT_LEVELS[name]
    if power_levels is None:
        return default
    return _level_in(power_levels.content, name, default, power_levels.room_version)


def get_send_level(power_levels: Pdu | None, event_type: str, *, state: bool) -> int:
    """The *required power level* to send an event of ``event_type``.

    It is ``events[event_type]`` if set, else ``state_default`` for a state
    event and ``events_default`` for any other.
    """
    fallback = get_named_level(power_levels, "state_default" if state else "events_default")
    if power_levels is None:
        return fallback
    return _level_in(
        power_levels.content.get("events"), event_type, fallback, power_levels.room_version
    )


def get_notification_level(power_levels: Pdu | None, key: str = "room") -> int:
    """The level needed to trigger the notification ``key`` (``room``: ``@room``).

    The spec defines only ``room``, defaulting to 50; other keys default the same.
    """
    if power_levels is None:
        return _DEFAULT_NOTIFICATION_LEVEL
    return _level_in(
        power_levels.content.get("notifications"),
        key,
        _DEFAULT_NOTIFICATION_LEVEL,
        power_levels.room_version,
    )
