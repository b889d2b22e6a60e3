"""Which of this server's users may act in a room, and how much power each
has: what the admin API reads before it acts in a room through one of them
(:mod:`ranvier.core.admin_room_membership`, :mod:`ranvier.core.admin_redactions`).

It is read from the room's current state once, before acting: the event
then sent is checked by the auth rules as every event is, so a change of
power between the read and the send refuses the event, never lets it
through.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from ranvier.protocol.auth import CREATE_KEY, JOIN_RULES_KEY, POWER_LEVELS_KEY, StateKey
from ranvier.protocol.events import Pdu
from ranvier.protocol.power_levels import (
    CREATOR_POWER_LEVEL,
    get_creators,
    get_named_level,
    get_send_level,
    get_user_power_level,
    parse_power_level,
)
from ranvier.protocol.room_versions import RoomVersion, get_room_version
from ranvier.storage.records import StoredEvent

__all__ = ["LocalPowers", "PowerReader", "read_local_powers"]

_MEMBER = "m.room.member"
# Member events read per request: a big room's local members come in pieces.
_BATCH = 200


class PowerReader(Protocol):
    """:class:`ranvier.storage.Storage`."""

    async def get_room_version(self, room_id: str) -> str | None: ...

    async def get_current_state_ids(self, room_id: str) -> Mapping[StateKey, str]: ...

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]: ...


@dataclass(frozen=True, slots=True)
class LocalPowers:
    """A room's create, power levels and join rules events as they stand,
    and the memberships of this server's users and of the users asked about.
    """

    room_id: str
    room_version: RoomVersion
    create: Pdu
    power_levels: Pdu | None
    join_rule: str | None
    #: user ID -> membership, for this server's users with a member event
    #: and the users asked about that have one.
    memberships: Mapping[str, str]
    server_name: str

    def level(self, user_id: str) -> int:
        return get_user_power_level(user_id, power_levels=self.power_levels, create=self.create)

    def is_creator(self, user_id: str) -> bool:
        """Whether ``user_id`` is a creator whose power is above every level (v12)."""
        return self.room_version.privileged_creators and user_id in get_creators(self.create)

    def named_level(self, name: str) -> int:
        """The level the power levels require for ``invite``, ``redact`` …"""
        return get_named_level(self.power_levels, name)

    def state_level(self, event_type: str) -> int:
        """The level sending a state event of ``event_type`` requires."""
        return get_send_level(self.power_levels, event_type, state=True)

    def joined_local(self) -> list[str]:
        """This server's users joined to the room, by user ID."""
        return sorted(
            user_id
            for user_id, membership in self.memberships.items()
            if membership == "join" and user_id.partition(":")[2] == self.server_name
        )

    def strongest(self, required: int, *, prefer: str | None = None) -> str | None:
        """A local user joined to the room with at least ``required``:
        ``prefer`` if it qualifies, else the one with the most power (the
        first by user ID of equals); None if none has enough."""
        joined = self.joined_local()
        if prefer is not None and prefer in joined and self.level(prefer) >= required:
            return prefer
        able = [user_id for user_id in joined if self.level(user_id) >= required]
        if not able:
            return None
        return min(able, key=lambda user_id: (-self.level(user_id), user_id))

    def highest_grantable(self, granter: str) -> int:
        """The level ``granter`` gives a user it raises to its own power: its
        own level, or for a creator of a v12 room (whose power is above any
        level an event can name, and who is never in ``users``) the highest
        of 100 and the levels ``users`` gives."""
        level = self.level(granter)
        if level < CREATOR_POWER_LEVEL:
            return level
        users = self.power_levels.content.get("users") if self.power_levels is not None else None
        named = [
            parsed
            for value in (users.values() if isinstance(users, dict) else ())
            if (parsed := parse_power_level(value, self.room_version)) is not None
        ]
        return max([100, *named])


async def read_local_powers(
    store: PowerReader, server_name: str, room_id: str, *, about: Collection[str] = ()
) -> LocalPowers | None:
    """What :class:`LocalPowers` holds of ``room_id`` now; None for a room
    this server has no state of."""
    version = await store.get_room_version(room_id)
    if version is None:
        return None
    rv = get_room_version(version, unsupported_ok=True)
    state = await store.get_current_state_ids(room_id)
    if CREATE_KEY not in state:
        return None
    wanted = set(about)
    members = [
        event_id
        for (event_type, state_key), event_id in state.items()
        if event_type == _MEMBER
        and (state_key.partition(":")[2] == server_name or state_key in wanted)
    ]
    singles = [state[key] for key in (CREATE_KEY, POWER_LEVELS_KEY, JOIN_RULES_KEY) if key in state]
    found = await store.get_events(singles)
    parsed = {
        event_id: Pdu.from_json(row.json, rv, check_limits=False) for event_id, row in found.items()
    }

    def single(key: StateKey) -> Pdu | None:
        event_id = state.get(key)
        return None if event_id is None else parsed.get(event_id)

    create = single(CREATE_KEY)
    if create is None:
        return None
    memberships: dict[str, str] = {}
    for start in range(0, len(members), _BATCH):
        rows = await store.get_events(members[start : start + _BATCH])
        for row in rows.values():
            event = Pdu.from_json(row.json, rv, check_limits=False)
            if event.state_key is not None and event.membership is not None:
                memberships[event.state_key] = event.membership
    join_rules = single(JOIN_RULES_KEY)
    rule = join_rules.content.get("join_rule") if join_rules is not None else None
    return LocalPowers(
        room_id=room_id,
        room_version=rv,
        create=create,
        power_levels=single(POWER_LEVELS_KEY),
        join_rule=rule if type(rule) is str else None,
        memberships=memberships,
        server_name=server_name,
    )
