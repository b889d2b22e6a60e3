"""Who vouches for a join of a restricted room (spec: "Restricted rooms",
room versions 8 and later for ``restricted``, 10 and later for
``knock_restricted``).

A user who is neither joined nor invited joins such a room only when they
are joined to one of the rooms its ``m.room.join_rules`` ``allow`` names
(``m.room_membership`` conditions), and the join names, as
``join_authorised_via_users_server``, a joined member able to invite,
whose server signs the join. The server judging the conditions is the one
whose user vouches, so the three answers come from here:

* for another server's user asking through ``make_join``: our user to
  name, or the spec's refusals: 403 ``M_FORBIDDEN`` when the user meets no
  condition, 400 ``M_UNABLE_TO_AUTHORISE_JOIN`` when this server cannot
  tell (it is in none of the allowed rooms with their full state), 400
  ``M_UNABLE_TO_GRANT_JOIN`` when the user qualifies but no user here may
  invite;
* for ``send_join``: the same conditions checked again for a join naming
  our user, since a server may skip ``make_join`` and ask us to sign
  whatever it likes;
* for our own user's join of a room this server is in: our user to name,
  or, when none here may invite, the servers whose users may, to join
  through instead (as a remote join).

A room whose state here is partial lacks most memberships: a user found
joined there counts, one not found leaves the question open. Our own
users' memberships are always known, so a local user not found joined to
an allowed room is refused outright.

Reads are at state keys wherever the answer allows, so a big room's whole
state is read only when its ``users_default`` lets any member invite.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ranvier.errors import MatrixError
from ranvier.protocol.auth import CREATE_KEY, JOIN_RULES_KEY, POWER_LEVELS_KEY
from ranvier.protocol.events import Pdu
from ranvier.protocol.power_levels import get_creators, get_named_level, get_user_power_level
from ranvier.protocol.room_versions import SUPPORTED_ROOM_VERSIONS, RoomVersion

from .client_events import event_content
from .interfaces import StateReader

__all__ = [
    "AUTHORISER",
    "JoinVouching",
    "RestrictedJoins",
    "RestrictedJoinsReader",
    "is_restricted_rule",
]

#: The content key naming the user who vouches for a restricted join.
AUTHORISER: Final = "join_authorised_via_users_server"
_MEMBER: Final = "m.room.member"


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def is_restricted_rule(rv: RoomVersion, join_rule: object) -> bool:
    """Whether ``join_rule`` restricts joins in a room of version ``rv``
    (a rule the version does not know is no restriction: its auth rules
    treat it as no rule at all).
    """
    return (rv.restricted_join_rule and join_rule == "restricted") or (
        rv.knock_restricted_join_rule and join_rule == "knock_restricted"
    )


class RestrictedJoinsReader(StateReader, Protocol):
    """The reads the judgement needs (:class:`ranvier.storage.Storage`)."""

    async def server_has_joined_member(self, room_id: str, server_name: str) -> bool:
        """Whether a user of ``server_name`` is joined in the room's current state."""
        ...


@dataclass(frozen=True, slots=True)
class JoinVouching:
    """How one of our users joins a room this server is in.

    ``authoriser`` is the user to name in the join (None when the join
    rules need none); ``through`` is set instead when no user here may
    invite: the servers whose users may, to join through.
    """

    authoriser: str | None = None
    through: tuple[str, ...] = ()


class RestrictedJoins:
    """Judges joins of restricted rooms for the server named ``server_name``."""

    def __init__(self, store: RestrictedJoinsReader, server_name: str) -> None:
        self._store = store
        self._server_name = server_name

    async def for_remote_user(self, room_id: str, rv: RoomVersion, user_id: str) -> str | None:
        """The user of ours to name in ``user_id``'s join (a user of another
        server, asking through ``make_join``), or None when the room's join
        rules need no one to vouch. Raises the spec's refusals (see the
        module's notes).
        """
        rules = await self._restricting_rules(room_id, rv, user_id)
        if rules is None:
            return None
        await self._check_conditions(room_id, rules, user_id, local=False)
        authoriser = await self._local_inviter(room_id, rv)
        if authoriser is None:
            raise MatrixError(
                f"no user of {self._server_name} in {room_id} may invite, so none can vouch"
                f" for {user_id}'s join; try another server",
                errcode="M_UNABLE_TO_GRANT_JOIN",
                http_status=400,
            )
        return authoriser

    async def check_join_received(self, event: Pdu) -> None:
        """Refuse, before we sign it, a join sent to ``send_join`` that names
        one of our users to vouch for a user who does not meet the room's
        conditions (or whose meeting them cannot be told here).

        A join naming another server's user is left to the auth rules,
        which want that server's signature; one needing no vouching at all
        is left to them too.
        """
        authoriser = event.content.get(AUTHORISER)
        if type(authoriser) is not str or _server_of(authoriser) != self._server_name:
            return
        assert event.state_key is not None  # a membership event
        rules = await self._restricting_rules(event.room_id, event.room_version, event.state_key)
        if rules is not None:
            await self._check_conditions(event.room_id, rules, event.state_key, local=False)

    async def for_local_user(self, room_id: str, user_id: str) -> JoinVouching:
        """How ``user_id``, one of ours, joins a room: raises 403
        ``M_FORBIDDEN`` when they meet none of its conditions. A room this
        server is not in needs no one here (its join goes through another
        server, which judges it).
        """
        version = await self._store.get_room_version(room_id)
        if version is None or version not in SUPPORTED_ROOM_VERSIONS:
            return JoinVouching()
        if not await self._store.server_has_joined_member(room_id, self._server_name):
            return JoinVouching()
        rv = SUPPORTED_ROOM_VERSIONS[version]
        rules = await self._restricting_rules(room_id, rv, user_id)
        if rules is None:
            return JoinVouching()
        await self._check_conditions(room_id, rules, user_id, local=True)
        authoriser = await self._local_inviter(room_id, rv)
        if authoriser is not None:
            return JoinVouching(authoriser=authoriser)
        through = await self._inviting_servers(room_id, rv)
        if not through:
            raise MatrixError(
                f"no member of {room_id} may invite, so none can vouch for {user_id}'s join",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        return JoinVouching(through=through)

    # The parts.

    async def _restricting_rules(
        self, room_id: str, rv: RoomVersion, user_id: str
    ) -> dict[str, Any] | None:
        """The content of the room's join rules when they restrict
        ``user_id``'s join; None when they do not (another rule, or the user
        is already joined or invited, whom the auth rules let in).
        """
        keyed = await self._store.get_current_state_ids_for_keys(
            room_id, (JOIN_RULES_KEY, (_MEMBER, user_id))
        )
        contents = await self._contents(keyed.values())
        rules = contents.get(keyed.get(JOIN_RULES_KEY, ""), {})
        if not is_restricted_rule(rv, rules.get("join_rule")):
            return None
        member = contents.get(keyed.get((_MEMBER, user_id), ""), {})
        if member.get("membership") in ("join", "invite"):
            return None
        return rules

    async def _check_conditions(
        self, room_id: str, rules: Mapping[str, Any], user_id: str, *, local: bool
    ) -> None:
        """Return when ``user_id`` is joined to a room the rules allow."""
        allow = rules.get("allow")
        allowed = [
            entry["room_id"]
            for entry in (allow if isinstance(allow, list) else ())
            if isinstance(entry, dict)
            and entry.get("type") == "m.room_membership"
            and type(entry.get("room_id")) is str
        ]
        judged = False
        for other in dict.fromkeys(allowed):
            if not await self._store.server_has_joined_member(other, self._server_name):
                continue
            member_id = (
                await self._store.get_current_state_ids_for_keys(other, ((_MEMBER, user_id),))
            ).get((_MEMBER, user_id))
            if member_id is not None:
                membership = (await self._contents((member_id,)))[member_id].get("membership")
                if membership == "join":
                    return
            if local or not await self._store.is_partial_state_room(other):
                judged = True
        if allowed and not judged and not local:
            raise MatrixError(
                f"{self._server_name} cannot tell whether {user_id} is joined to any of the"
                f" rooms whose members may join {room_id}; try another server",
                errcode="M_UNABLE_TO_AUTHORISE_JOIN",
                http_status=400,
            )
        raise MatrixError(
            f"{user_id} is not joined to any of the rooms whose members may join {room_id}",
            errcode="M_FORBIDDEN",
            http_status=403,
        )

    async def _local_inviter(self, room_id: str, rv: RoomVersion) -> str | None:
        """Our joined user with the most power in the room, able to invite."""
        able = await self._joined_inviters(room_id, rv, local_only=True)
        return able[0][1] if able else None

    async def _inviting_servers(self, room_id: str, rv: RoomVersion) -> tuple[str, ...]:
        """The servers of the joined users able to invite, the most powerful
        user's first.
        """
        able = await self._joined_inviters(room_id, rv, local_only=False)
        return tuple(dict.fromkeys(_server_of(user) for _, user in able))

    async def _joined_inviters(
        self, room_id: str, rv: RoomVersion, *, local_only: bool
    ) -> list[tuple[int, str]]:
        """``(-level, user)`` of each joined member able to invite (ours
        alone with ``local_only``), most powerful first.
        """
        keyed = await self._store.get_current_state_ids_for_keys(
            room_id, (CREATE_KEY, POWER_LEVELS_KEY)
        )
        events = await self._pdus(keyed.values(), rv)
        create = events.get(keyed.get(CREATE_KEY, ""))
        power_levels = events.get(keyed.get(POWER_LEVELS_KEY, ""))
        needed = get_named_level(power_levels, "invite")
        # Who may invite: the users the power levels raise (and, from
        # version 12, the creators); every member when the default may.
        candidates: set[str] = set()
        if create is not None and (rv.privileged_creators or power_levels is None):
            candidates.update(get_creators(create))
        users = None if power_levels is None else power_levels.content.get("users")
        if isinstance(users, dict):
            candidates.update(user for user in users if type(user) is str)
        if get_named_level(power_levels, "users_default") >= needed:
            state = await self._store.get_current_state_ids(room_id)
            candidates.update(key for kind, key in state if kind == _MEMBER)
        if local_only:
            candidates = {user for user in candidates if _server_of(user) == self._server_name}
        levels = {
            user: get_user_power_level(user, power_levels=power_levels, create=create)
            for user in candidates
        }
        able = [user for user, level in levels.items() if level >= needed]
        joined = await self._joined(room_id, able)
        return sorted((-levels[user], user) for user in joined)

    async def _joined(self, room_id: str, users: Collection[str]) -> list[str]:
        if not users:
            return []
        keyed = await self._store.get_current_state_ids_for_keys(
            room_id, [(_MEMBER, user) for user in users]
        )
        contents = await self._contents(keyed.values())
        return [
            user
            for user in users
            if contents.get(keyed.get((_MEMBER, user), ""), {}).get("membership") == "join"
        ]

    async def _contents(self, event_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = list(dict.fromkeys(event_ids))
        stored = await self._store.get_events(wanted)
        # An event not stored reads as one without content (no membership).
        return {
            event_id: event_content(stored[event_id]) if event_id in stored else {}
            for event_id in wanted
        }

    async def _pdus(self, event_ids: Iterable[str], rv: RoomVersion) -> dict[str, Pdu]:
        stored = await self._store.get_events(list(event_ids))
        return {
            event_id: Pdu.from_json(row.json, rv, check_limits=False)
            for event_id, row in stored.items()
        }
