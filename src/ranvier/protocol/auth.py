"""The authorization rules, room versions 6 to 12.

An event is authorised against a set of state: first against the events it
cites in ``auth_events``, then against the state before it, then against
the room's current state (a failure there "soft fails" it). The rules are
the same each time; only the state differs. So the work is split in two:

- :func:`check_auth_events` applies the rules about the cited events
  themselves (no duplicates, only the types the auth events selection
  allows, none rejected, all in this room, the create event present or, from
  v12, implied by the room ID) and returns them as a state map;
- :func:`check_auth_rules` applies every other rule against a state map,
  whichever state it was taken from.

:func:`authorize_event` does both, which is step 4 of the server-server
spec's "Checks performed on receipt of a PDU". A rejection raises
:class:`~ranvier.errors.AuthError` whose ``rule`` names the rule that failed.

Where the spec leaves a case open, ranvier does what Synapse, ruma and
gomatrixserverlib agree on, so that every server reaches the same verdict:

- a room without an ``m.room.join_rules`` event, or whose event has no
  ``join_rule``, is treated as ``invite``;
- in versions 6-9, a power levels event with a named level, or an ``events``
  or ``notifications`` value, that is neither an integer nor a string of one
  is rejected (the spec only says so for ``users``, but a level nobody can
  read cannot be compared).

Two checks need more than the event and its state and are left to the
caller: the signature of the server of ``join_authorised_via_users_server``
(rule "the event is not validly signed by the homeserver of the user ID
denoted by the key") is verified with the event's other signatures, and
here it is only required to be present; and whether an auth event was
itself rejected is known only to storage, which passes ``rejected``.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any, Final

from ranvier.errors import AuthError, BadJsonError, InvalidSignatureError
from ranvier.protocol.events import Pdu
from ranvier.protocol.power_levels import (
    get_creators,
    get_named_level,
    get_send_level,
    get_user_power_level,
    parse_power_level,
)
from ranvier.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from ranvier.protocol.signing import decode_verify_key_bytes, verify_signed_json
from ranvier.protocol.unpadded_base64 import decode_unpadded_base64

__all__ = [
    "CREATE_KEY",
    "JOIN_RULES_KEY",
    "POWER_LEVELS_KEY",
    "StateKey",
    "auth_state_keys",
    "auth_types_for_event",
    "authorize_event",
    "check_auth_events",
    "check_auth_rules",
    "create_event_id_for_room",
    "is_valid_user_id",
    "membership_auth_types",
    "redaction_applies",
]

#: A state map's key: ``(event type, state key)``.
StateKey = tuple[str, str]

CREATE_KEY: Final[StateKey] = ("m.room.create", "")
POWER_LEVELS_KEY: Final[StateKey] = ("m.room.power_levels", "")
JOIN_RULES_KEY: Final[StateKey] = ("m.room.join_rules", "")

_MEMBER: Final = "m.room.member"
_THIRD_PARTY_INVITE: Final = "m.room.third_party_invite"
_AUTHORISER: Final = "join_authorised_via_users_server"

_NAMED_LEVELS: Final = (
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "redact",
    "kick",
    "invite",
)
_LEVEL_MAPS: Final = ("events", "notifications")

# Server names as the appendices' grammar has them, for user IDs in content
# (additional_creators, the keys of power levels' users), which get the same
# check the event format gives ``sender``.
_SERVER_NAME_CHARS: Final = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-"
)
_IPV6_CHARS: Final = frozenset("0123456789abcdefABCDEF:.")


def _is_server_name(name: str) -> bool:
    host, port = name, ""
    if name.startswith("["):
        end = name.find("]")
        if end < 0:
            return False
        host, rest = name[1:end], name[end + 1 :]
        if not 2 <= len(host) <= 45 or not set(host) <= _IPV6_CHARS:
            return False
        if rest:
            if not rest.startswith(":"):
                return False
            port = rest[1:]
            return 1 <= len(port) <= 5 and port.isascii() and port.isdigit()
        return True
    host, sep, port = name.partition(":")
    if sep and not (1 <= len(port) <= 5 and port.isascii() and port.isdigit()):
        return False
    return 1 <= len(host) <= 255 and set(host) <= _SERVER_NAME_CHARS


def is_valid_user_id(value: object) -> bool:
    """Whether ``value`` is a user ID as servers must accept them in events.

    Historical localparts are allowed (any code point but ``:`` and NUL,
    even none), as the appendices require of servers; the whole ID is at
    most 255 bytes and the server name follows the grammar.
    """
    if type(value) is not str or not value.startswith("@"):
        return False
    if len(value.encode("utf-8")) > 255:
        return False
    localpart, sep, server_name = value[1:].partition(":")
    return bool(sep) and "\x00" not in localpart and _is_server_name(server_name)


def _domain(user_id: str) -> str:
    return user_id.partition(":")[2]


def create_event_id_for_room(room_id: str) -> str:
    """The event ID of the create event of a room whose ID comes from it (v12).

    Both are the same URL-safe hash; only the sigil differs.
    """
    return "$" + room_id[1:]


def _reject(message: str, rule: str) -> AuthError:
    return AuthError(message, rule=rule)


# --- Which auth events an event cites ------------------------------------------


def auth_types_for_event(event: Pdu) -> set[StateKey]:
    """The ``(type, state_key)`` pairs ``event`` may cite in ``auth_events``.

    This is the server-server spec's auth events selection: the create event
    (not from v12, where the room ID stands for it), the power levels, the
    sender's membership and, for a membership event, the target's
    membership, the join rules (join, invite, knock), the third-party invite
    that an invite redeems, and the membership of the user who authorised a
    restricted join. The event needs only those that exist in the room.
    """
    return set(auth_state_keys(event))


def auth_state_keys(event: Pdu) -> tuple[StateKey, ...]:
    """The pairs of :func:`auth_types_for_event` as a tuple, each once.

    State resolution looks these keys up for every event it replays; a
    tuple spares it hashing each pair into a set first.
    """
    if event.type == CREATE_KEY[0]:
        return ()
    if event.room_version.room_id_from_create_event:
        return (POWER_LEVELS_KEY, *membership_auth_types(event))
    return (CREATE_KEY, POWER_LEVELS_KEY, *membership_auth_types(event))


def membership_auth_types(event: Pdu) -> list[StateKey]:
    """The pairs of :func:`auth_types_for_event` other than the create and power levels events.

    Those two are in every event's selection (but the create event's own,
    which has none); the rest depends on the event: the sender's membership
    and, for a membership event, the target's, the join rules, the redeemed
    third-party invite and the authorising user's membership. Each comes
    once; :data:`JOIN_RULES_KEY` is that very object.
    """
    sender = event.sender
    target = event.state_key
    if event.type != _MEMBER or target is None:
        return [] if event.type == CREATE_KEY[0] else [(_MEMBER, sender)]
    keys: list[StateKey] = [(_MEMBER, sender)]
    if target != sender:
        keys.append((_MEMBER, target))
    membership = event.membership
    if membership in ("join", "invite", "knock"):
        keys.append(JOIN_RULES_KEY)
    if membership == "invite":
        token = _third_party_invite_token(event.content)
        if token is not None:
            keys.append((_THIRD_PARTY_INVITE, token))
    if membership == "join" and event.room_version.restricted_join_rule:
        authoriser = event.content.get(_AUTHORISER)
        if type(authoriser) is str and authoriser != sender and authoriser != target:
            keys.append((_MEMBER, authoriser))
    return keys


def _third_party_invite_token(content: Mapping[str, Any]) -> str | None:
    invite = content.get("third_party_invite")
    signed = invite.get("signed") if isinstance(invite, dict) else None
    token = signed.get("token") if isinstance(signed, dict) else None
    return token if type(token) is str else None


def check_auth_events(
    event: Pdu,
    events: Mapping[str, Pdu],
    *,
    rejected: Container[str] = frozenset(),
) -> dict[StateKey, Pdu]:
    """Apply the rules about ``event``'s cited ``auth_events``; return them as a state map.

    ``events`` maps event IDs to events and must hold every event ``event``
    cites and, from v12, the room's create event (whose ID the room ID
    gives). ``rejected`` holds the IDs of events known to have been
    rejected. The returned map is what :func:`check_auth_rules` checks the
    event against; from v12 it includes the create event although the event
    does not cite it.

    A create event cites nothing and gets an empty map.
    """
    rv = event.room_version
    if event.type == CREATE_KEY[0]:
        return {}
    allowed = auth_types_for_event(event)
    state: dict[StateKey, Pdu] = {}
    for event_id in event.auth_event_ids:
        auth_event = events.get(event_id)
        if auth_event is None:
            raise _reject(
                f"auth event {event_id} is not known, so the event cannot be authorised",
                "auth_events.missing",
            )
        if auth_event.room_id != event.room_id:
            raise _reject(
                f"auth event {event_id} is in room {auth_event.room_id}, not {event.room_id}",
                "auth_events.room_id",
            )
        if auth_event.state_key is None:
            raise _reject(f"auth event {event_id} is not a state event", "auth_events.unexpected")
        key = (auth_event.type, auth_event.state_key)
        if key in state:
            raise _reject(
                f"auth events cite two events for {key}: {state[key].event_id} and {event_id}",
                "auth_events.duplicate",
            )
        if key not in allowed:
            raise _reject(
                f"auth event {event_id} for {key} is not one the auth events selection allows"
                + (
                    " (from room version 12 the create event is never cited)"
                    if key == CREATE_KEY
                    else ""
                ),
                "auth_events.unexpected",
            )
        if event_id in rejected:
            raise _reject(f"auth event {event_id} was itself rejected", "auth_events.rejected")
        state[key] = auth_event
    if rv.room_id_from_create_event:
        create_id = create_event_id_for_room(event.room_id)
        create = events.get(create_id)
        if create is None or create.type != CREATE_KEY[0] or create.state_key != "":
            raise _reject(
                f"the room's create event {create_id} is not known",
                "room_id.create_event",
            )
        if create_id in rejected:
            raise _reject(
                f"room ID {event.room_id} names create event {create_id}, which was rejected",
                "room_id.create_event",
            )
        state[CREATE_KEY] = create
    elif CREATE_KEY not in state:
        raise _reject("auth events do not include the room's create event", "auth_events.no_create")
    return state


def authorize_event(
    event: Pdu,
    events: Mapping[str, Pdu],
    *,
    rejected: Container[str] = frozenset(),
) -> None:
    """Authorise ``event`` against the events it cites: :func:`check_auth_events`
    then :func:`check_auth_rules` on what it returns.
    """
    check_auth_rules(event, check_auth_events(event, events, rejected=rejected))


# --- The rules against a state --------------------------------------------------


def check_auth_rules(event: Pdu, auth_state: Mapping[StateKey, Pdu]) -> None:
    """Raise :class:`~ranvier.errors.AuthError` unless the rules allow ``event``.

    ``auth_state`` maps ``(type, state_key)`` to the state events in force:
    a room's whole state, or just the keys :func:`auth_types_for_event`
    lists, plus the create event (which from v12 that list leaves out). The
    rules about the cited ``auth_events`` themselves are
    :func:`check_auth_events`'s.
    """
    if event.type == CREATE_KEY[0]:
        _check_create(event)
        return
    create = _state_event(auth_state, CREATE_KEY, event)
    if create is None:
        raise _reject("the room has no create event", "auth_events.no_create")
    rv = event.room_version
    if rv.room_id_from_create_event and create.event_id != create_event_id_for_room(event.room_id):
        raise _reject(
            f"room ID {event.room_id} is not that of create event {create.event_id}",
            "room_id.create_event",
        )
    if create.content.get("m.federate") is False and _domain(event.sender) != _domain(
        create.sender
    ):
        raise _reject(
            f"the room does not federate and {event.sender} is not on the creator's server",
            "federate",
        )
    power_levels = _state_event(auth_state, POWER_LEVELS_KEY, event)

    if event.type == _MEMBER:
        _check_member(event, auth_state, create, power_levels)
        return

    if _membership_of(auth_state, event.sender, event) != "join":
        raise _reject(f"{event.sender} is not joined to the room", "sender_not_joined")

    sender_level = get_user_power_level(event.sender, power_levels=power_levels, create=create)
    if event.type == _THIRD_PARTY_INVITE:
        invite_level = get_named_level(power_levels, "invite")
        if sender_level < invite_level:
            raise _reject(
                f"{event.sender} has power level {sender_level}, below the invite level"
                f" {invite_level}",
                "third_party_invite.power",
            )
        return

    required = get_send_level(power_levels, event.type, state=event.is_state())
    if required > sender_level:
        raise _reject(
            f"sending {event.type} requires power level {required}; {event.sender} has"
            f" {sender_level}",
            "send_level",
        )
    if (
        event.state_key is not None
        and event.state_key.startswith("@")
        and event.state_key != event.sender
    ):
        raise _reject(
            f"state key {event.state_key!r} names a user other than the sender {event.sender}",
            "state_key.user",
        )
    if event.type == POWER_LEVELS_KEY[0]:
        _check_power_levels(event, create, power_levels, sender_level)


def _state_event(auth_state: Mapping[StateKey, Pdu], key: StateKey, event: Pdu) -> Pdu | None:
    found = auth_state.get(key)
    if found is not None and found.room_id != event.room_id:
        raise _reject(
            f"state event {found.event_id} for {key} is in room {found.room_id}, not"
            f" {event.room_id}",
            "auth_events.room_id",
        )
    return found


def _membership_of(auth_state: Mapping[StateKey, Pdu], user_id: str, event: Pdu) -> str | None:
    member = _state_event(auth_state, (_MEMBER, user_id), event)
    return member.membership if member is not None else None


def redaction_applies(
    redaction: Pdu, redacted: Pdu, *, power_levels: Pdu | None, create: Pdu | None
) -> bool:
    """Whether an authorised ``redaction`` of ``redacted`` is to be carried out.

    The auth rules let any redaction in that the sender may send; whether it
    takes effect is the "Handling redactions" rule of the room versions
    (from v3): it does if its sender has the *redact level* (given by the
    room's current ``power_levels`` and ``create`` events), or is on the
    same server as the sender of the event it redacts. The two events must
    be of the same room, and the redaction must name the event.
    """
    if redaction.redacts != redacted.event_id or redaction.room_id != redacted.room_id:
        return False
    if _domain(redaction.sender) == _domain(redacted.sender):
        return True
    level = get_user_power_level(redaction.sender, power_levels=power_levels, create=create)
    return level >= get_named_level(power_levels, "redact")


# --- m.room.create ----------------------------------------------------------------


def _check_create(event: Pdu) -> None:
    rv = event.room_version
    if event.state_key != "":
        raise _reject("an m.room.create event must have an empty state key", "create.state_key")
    if event.prev_event_ids:
        raise _reject("an m.room.create event must have no prev_events", "create.prev_events")
    if rv.room_id_from_create_event:
        if "room_id" in event.json:
            raise _reject(
                f"in room version {rv.identifier} an m.room.create event has no room_id",
                "create.room_id",
            )
    elif _domain(event.room_id) != _domain(event.sender):
        raise _reject(
            f"room ID {event.room_id} is not on the server of the sender {event.sender}",
            "create.room_id",
        )
    room_version = event.content.get("room_version", "1")
    if type(room_version) is not str or room_version not in KNOWN_ROOM_VERSIONS:
        raise _reject(f"room version {room_version!r} is not recognised", "create.room_version")
    if not rv.implicit_room_creator and "creator" not in event.content:
        raise _reject(
            f"in room version {rv.identifier} the create event's content names the creator",
            "create.creator",
        )
    if rv.privileged_creators and "additional_creators" in event.content:
        additional = event.content["additional_creators"]
        if type(additional) is not list or not all(map(is_valid_user_id, additional)):
            raise _reject(
                "additional_creators must be a list of user IDs", "create.additional_creators"
            )


# --- m.room.member ----------------------------------------------------------------


def _join_rule(auth_state: Mapping[StateKey, Pdu], event: Pdu) -> object:
    join_rules = _state_event(auth_state, JOIN_RULES_KEY, event)
    if join_rules is None:
        return "invite"
    return join_rules.content.get("join_rule", "invite")


def _check_member(
    event: Pdu,
    auth_state: Mapping[StateKey, Pdu],
    create: Pdu,
    power_levels: Pdu | None,
) -> None:
    rv = event.room_version
    target = event.state_key
    membership = event.membership
    if target is None:
        raise _reject("an m.room.member event must have a state key", "member.state_key")
    if membership is None:
        raise _reject("an m.room.member event's content has no membership", "member.membership")
    if rv.restricted_join_rule and _AUTHORISER in event.content:
        authoriser = event.content[_AUTHORISER]
        if not is_valid_user_id(authoriser):
            raise _reject(f"{_AUTHORISER} is not a user ID", "member.authoriser_signature")
        if not event.signatures.get(_domain(authoriser)):
            raise _reject(
                f"the event is not signed by {_domain(authoriser)}, the server of {_AUTHORISER}",
                "member.authoriser_signature",
            )

    def level(user_id: str) -> int:
        return get_user_power_level(user_id, power_levels=power_levels, create=create)

    sender = event.sender
    sender_membership = _membership_of(auth_state, sender, event)
    if target == sender:
        target_membership = sender_membership
    else:
        target_membership = _membership_of(auth_state, target, event)

    if membership == "join":
        _check_join(event, auth_state, create, power_levels, target_membership)
    elif membership == "invite":
        if "third_party_invite" in event.content:
            _check_third_party_invite(event, auth_state, target_membership)
            return
        if sender_membership != "join":
            raise _reject(f"{sender} is not joined, so cannot invite", "member.invite.sender")
        if target_membership in ("join", "ban"):
            raise _reject(
                f"{target} is {'joined' if target_membership == 'join' else 'banned'}",
                "member.invite.target",
            )
        invite_level = get_named_level(power_levels, "invite")
        if level(sender) < invite_level:
            raise _reject(
                f"{sender} has power level {level(sender)}, below the invite level {invite_level}",
                "member.invite.power",
            )
    elif membership == "leave":
        if sender == target:
            may_leave = ("invite", "join", "knock") if rv.knock_join_rule else ("invite", "join")
            if target_membership not in may_leave:
                raise _reject(
                    f"{sender} cannot leave from membership {target_membership!r}",
                    "member.leave.self",
                )
            return
        if sender_membership != "join":
            raise _reject(f"{sender} is not joined, so cannot kick", "member.leave.sender")
        sender_level = level(sender)
        ban_level = get_named_level(power_levels, "ban")
        if target_membership == "ban" and sender_level < ban_level:
            raise _reject(
                f"unbanning requires the ban level {ban_level}; {sender} has {sender_level}",
                "member.leave.unban",
            )
        kick_level = get_named_level(power_levels, "kick")
        if sender_level < kick_level or level(target) >= sender_level:
            raise _reject(
                f"kicking requires the kick level {kick_level} and more power than {target}"
                f" ({level(target)}); {sender} has {sender_level}",
                "member.leave.kick",
            )
    elif membership == "ban":
        if sender_membership != "join":
            raise _reject(f"{sender} is not joined, so cannot ban", "member.ban.sender")
        sender_level = level(sender)
        ban_level = get_named_level(power_levels, "ban")
        if sender_level < ban_level or level(target) >= sender_level:
            raise _reject(
                f"banning requires the ban level {ban_level} and more power than {target}"
                f" ({level(target)}); {sender} has {sender_level}",
                "member.ban.power",
            )
    elif membership == "knock" and rv.knock_join_rule:
        join_rule = _join_rule(auth_state, event)
        knock_rules = ("knock", "knock_restricted") if rv.knock_restricted_join_rule else ("knock",)
        if join_rule not in knock_rules:
            raise _reject(
                f"the join rule {join_rule!r} does not allow knocking", "member.knock.rule"
            )
        if sender != target:
            raise _reject(f"{sender} cannot knock for {target}", "member.knock.sender")
        if sender_membership in ("ban", "invite", "join"):
            raise _reject(
                f"{sender} cannot knock from membership {sender_membership!r}",
                "member.knock.membership",
            )
    else:
        raise _reject(
            f"membership {membership!r} is unknown in room version {rv.identifier}",
            "member.unknown",
        )


def _check_join(
    event: Pdu,
    auth_state: Mapping[StateKey, Pdu],
    create: Pdu,
    power_levels: Pdu | None,
    membership: str | None,
) -> None:
    rv = event.room_version
    sender = event.sender
    # The creator's own join right after the create event.
    if (
        len(event.prev_event_ids) == 1
        and event.prev_event_ids[0] == create.event_id
        and event.state_key == _creator_for_first_join(create)
    ):
        return
    if sender != event.state_key:
        raise _reject(f"{sender} cannot join on behalf of {event.state_key}", "member.join.sender")
    if membership == "ban":
        raise _reject(f"{sender} is banned", "member.join.banned")
    join_rule = _join_rule(auth_state, event)
    invite_rules = ("invite", "knock") if rv.knock_join_rule else ("invite",)
    restricted_rules = (
        ("restricted", "knock_restricted")
        if rv.knock_restricted_join_rule
        else ("restricted",)
        if rv.restricted_join_rule
        else ()
    )
    if join_rule in invite_rules:
        if membership not in ("invite", "join"):
            raise _reject(
                f"the join rule is {join_rule} and {sender} is not invited",
                "member.join.not_invited",
            )
        return
    if join_rule in restricted_rules:
        if membership in ("invite", "join"):
            return
        authoriser = event.content.get(_AUTHORISER)
        if type(authoriser) is not str:
            raise _reject(
                f"the join rule is {join_rule}: {sender} is neither invited nor authorised"
                f" by {_AUTHORISER}",
                "member.join.authoriser",
            )
        if _membership_of(auth_state, authoriser, event) != "join":
            raise _reject(
                f"the authorising user {authoriser} is not joined to the room",
                "member.join.authoriser",
            )
        invite_level = get_named_level(power_levels, "invite")
        authoriser_level = get_user_power_level(
            authoriser, power_levels=power_levels, create=create
        )
        if authoriser_level < invite_level:
            raise _reject(
                f"the authorising user {authoriser} has power level {authoriser_level}, below"
                f" the invite level {invite_level}",
                "member.join.authoriser",
            )
        return
    if join_rule == "public":
        return
    raise _reject(f"the join rule {join_rule!r} does not let {sender} join", "member.join.rule")


def _creator_for_first_join(create: Pdu) -> object:
    # v6-v10 name the creator in content; from v11 the sender is the creator
    # (additional creators of v12 do not count for this rule).
    if create.room_version.implicit_room_creator:
        return create.sender
    return create.content.get("creator")


def _check_third_party_invite(
    event: Pdu, auth_state: Mapping[StateKey, Pdu], target_membership: str | None
) -> None:
    if target_membership == "ban":
        raise _reject(f"{event.state_key} is banned", "member.invite.3pid.banned")
    invite = event.content["third_party_invite"]
    signed = invite.get("signed") if isinstance(invite, dict) else None
    if not isinstance(signed, dict):
        raise _reject("third_party_invite has no signed object", "member.invite.3pid.signed")
    if "mxid" not in signed or "token" not in signed:
        raise _reject("third_party_invite.signed lacks mxid or token", "member.invite.3pid.signed")
    if signed["mxid"] != event.state_key:
        raise _reject(
            f"third_party_invite.signed.mxid {signed['mxid']!r} is not the invitee"
            f" {event.state_key}",
            "member.invite.3pid.mxid",
        )
    token = signed["token"]
    tpi = (
        _state_event(auth_state, (_THIRD_PARTY_INVITE, token), event)
        if type(token) is str
        else None
    )
    if tpi is None:
        raise _reject(
            f"no m.room.third_party_invite with token {token!r} is in the room",
            "member.invite.3pid.token",
        )
    if tpi.sender != event.sender:
        raise _reject(
            f"the third-party invite was sent by {tpi.sender}, not {event.sender}",
            "member.invite.3pid.sender",
        )
    if not _signed_by_any(signed, _public_keys(tpi.content)):
        raise _reject(
            "no signature in third_party_invite.signed matches a public key of the invite",
            "member.invite.3pid.signature",
        )


def _public_keys(content: Mapping[str, Any]) -> list[bytes]:
    encoded: list[object] = [content.get("public_key")]
    public_keys = content.get("public_keys")
    if isinstance(public_keys, list):
        encoded += [k.get("public_key") for k in public_keys if isinstance(k, dict)]
    keys = []
    for text in encoded:
        if type(text) is not str:
            continue
        # Identity servers publish keys in standard or URL-safe unpadded base64.
        for urlsafe in (False, True):
            try:
                keys.append(decode_unpadded_base64(text, urlsafe=urlsafe))
                break
            except BadJsonError:
                continue
    return keys


def _signed_by_any(signed: dict[str, Any], public_keys: list[bytes]) -> bool:
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict):
        return False
    for server_name, by_key in signatures.items():
        if not isinstance(by_key, dict):
            continue
        for key_id in by_key:
            for public_key in public_keys:
                try:
                    verify_key = decode_verify_key_bytes(key_id, public_key)
                    verify_signed_json(signed, server_name, verify_key)
                except (BadJsonError, InvalidSignatureError):
                    continue
                return True
    return False


# --- m.room.power_levels ----------------------------------------------------------


def _check_power_levels(event: Pdu, create: Pdu, current: Pdu | None, sender_level: int) -> None:
    rv = event.room_version
    new = event.content
    _check_power_level_values(new, rv)
    if rv.privileged_creators:
        users = new.get("users", {})
        named = sorted(get_creators(create) & users.keys())
        if named:
            raise _reject(
                f"room creators have unlimited power and may not be listed in users: {named}",
                "power_levels.creator_in_users",
            )
    if current is None:
        return
    old = current.content

    def parsed(mapping: object, key: str) -> int | None:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        return parse_power_level(mapping[key], rv)

    def check(section: str, key: str, old_level: int | None, new_level: int | None) -> None:
        where = key if section == "" else f"{section}[{key!r}]"
        if old_level is not None and old_level > sender_level:
            raise _reject(
                f"{where} is {old_level}, above the sender's power level {sender_level}, so"
                " they cannot change it",
                f"power_levels.change{'.' + section if section else ''}",
            )
        if new_level is not None and new_level > sender_level:
            raise _reject(
                f"{where} would be {new_level}, above the sender's power level {sender_level}",
                f"power_levels.change{'.' + section if section else ''}",
            )

    for name in _NAMED_LEVELS:
        old_level, new_level = parsed(old, name), parsed(new, name)
        if old_level != new_level:
            check("", name, old_level, new_level)
    for section in _LEVEL_MAPS:
        old_map, new_map = old.get(section), new.get(section)
        for key in _keys(old_map) | _keys(new_map):
            old_level, new_level = parsed(old_map, key), parsed(new_map, key)
            if old_level != new_level:
                check(section, key, old_level, new_level)
    old_users, new_users = old.get("users"), new.get("users")
    for user_id in _keys(old_users) | _keys(new_users):
        old_level, new_level = parsed(old_users, user_id), parsed(new_users, user_id)
        if old_level == new_level:
            continue
        if user_id != event.sender and old_level is not None and old_level >= sender_level:
            raise _reject(
                f"{user_id} has power level {old_level}, not below the sender's {sender_level},"
                " so the sender cannot change it",
                "power_levels.change.users",
            )
        if new_level is not None and new_level > sender_level:
            raise _reject(
                f"{user_id} would get power level {new_level}, above the sender's {sender_level}",
                "power_levels.change.users",
            )


def _keys(mapping: object) -> set[str]:
    return set(mapping) if isinstance(mapping, dict) else set()


def _check_power_level_values(content: Mapping[str, Any], rv: RoomVersion) -> None:
    kind = "an integer" if rv.integer_power_levels else "an integer or a string of one"
    for name in _NAMED_LEVELS:
        if name in content and parse_power_level(content[name], rv) is None:
            raise _reject(f"{name} must be {kind}", "power_levels.value")
    for section in _LEVEL_MAPS:
        if section not in content:
            continue
        mapping = content[section]
        if not isinstance(mapping, dict) or any(
            parse_power_level(value, rv) is None for value in mapping.values()
        ):
            raise _reject(
                f"{section} must be an object whose values are {kind}s", "power_levels.value"
            )
    if "users" in content:
        users = content["users"]
        if not isinstance(users, dict):
            raise _reject("users must be an object", "power_levels.users")
        for user_id, value in users.items():
            if not is_valid_user_id(user_id):
                raise _reject(
                    f"users has a key that is not a user ID: {user_id!r}", "power_levels.users"
                )
            if parse_power_level(value, rv) is None:
                raise _reject(f"users[{user_id!r}] must be {kind}", "power_levels.users")
