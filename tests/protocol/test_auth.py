"""The authorization rules, one test per rule and per room-version difference.

Each test is named after the rule it exercises, as the room version pages
of the spec number and word them (v12 numbering; earlier versions lack
rules 2 and 10.4 and number the rest one lower). Rooms are built event by
event with real PDUs; the event under test is checked against the room's
state at that point.
"""

from __future__ import annotations

from typing import Any

import pytest
from _builders import ALICE, BOB, CAROL, DAVE, EVE

from ranvier.errors import AuthError, BadJsonError
from ranvier.protocol.auth import (
    CREATE_KEY,
    JOIN_RULES_KEY,
    POWER_LEVELS_KEY,
    auth_types_for_event,
    authorize_event,
    check_auth_events,
    check_auth_rules,
    is_valid_user_id,
    redaction_applies,
)
from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
    sign_json,
)
from ranvier.testing import RoomBuilder, make_pdu

ALL_VERSIONS = ["6", "7", "8", "9", "10", "11", "12"]


def versions(*, since: str = "6", until: str = "12") -> list[str]:
    return [v for v in ALL_VERSIONS if int(since) <= int(v) <= int(until)]


def verdict(room: RoomBuilder, event: Pdu) -> str | None:
    """The name of the rule that rejects ``event`` in ``room``'s state, or None if allowed."""
    try:
        check_auth_rules(event, room.state_events())
    except AuthError as exc:
        return exc.rule
    return None


def admin_levels(room: RoomBuilder, users: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Power levels content giving ``users`` their levels; the creator is
    listed at 100 only where creators are not privileged (before v12)."""
    listed = dict(users)
    if not room.room_version.privileged_creators:
        listed.setdefault(ALICE, 100)
    return {"users": listed, **extra}


def public_room(
    version: str = "10",
    *,
    join_rule: Any = "public",
    users: dict[str, int] | None = None,
    **levels: Any,
) -> RoomBuilder:
    """Alice's room: her join, power levels, a join rule, Bob joined."""
    room = RoomBuilder(version)
    room.member(ALICE, "join")
    room.power_levels(ALICE, content=admin_levels(room, users or {}, **levels))
    if join_rule is not None:
        room.join_rules(ALICE, join_rule)
        if join_rule == "public":
            room.member(BOB, "join")
    return room


# --- Rule 1: m.room.create ----------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_1_create_event_is_allowed(version: str) -> None:
    room = RoomBuilder(version)
    check_auth_rules(room.create, {})
    assert check_auth_events(room.create, {}) == {}


def _create(version: str, **fields: Any) -> Pdu:
    content: dict[str, Any] = {"room_version": version}
    if version in versions(until="10"):
        content["creator"] = ALICE
    base: dict[str, Any] = {"type": "m.room.create", "state_key": "", "sender": ALICE}
    if version != "12":
        base["room_id"] = "!room:example.org"
    return make_pdu(version, base | {"content": content} | fields)


def _create_verdict(event: Pdu) -> str | None:
    try:
        check_auth_rules(event, {})
    except AuthError as exc:
        return exc.rule
    return None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_1_1_create_with_prev_events_is_rejected(version: str) -> None:
    event = _create(version, prev_events=["$somewhere"])
    assert _create_verdict(event) == "create.prev_events"


@pytest.mark.parametrize("version", versions(until="11"))
def test_1_2_create_room_id_domain_must_be_the_senders(version: str) -> None:
    assert _create_verdict(_create(version, room_id="!room:elsewhere.example")) == "create.room_id"
    assert _create_verdict(_create(version, room_id="!room:example.org")) is None


def test_1_2_v12_create_must_not_have_a_room_id() -> None:
    # The event format refuses it before the rules see it.
    with pytest.raises(BadJsonError, match="must not have a room_id"):
        _create("12", room_id="!room:example.org")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_1_3_create_room_version_must_be_recognised(version: str) -> None:
    def with_version(value: object) -> Pdu:
        content = dict(_create(version).content, room_version=value)
        return _create(version, content=content)

    assert _create_verdict(with_version("999")) == "create.room_version"
    assert _create_verdict(with_version(12)) == "create.room_version"
    # Recognised, even if ranvier would not take part in such a room.
    assert _create_verdict(with_version("1")) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_1_4_create_without_creator_before_v11(version: str) -> None:
    event = _create(version, content={"room_version": version})
    expected = "create.creator" if int(version) <= 10 else None
    assert _create_verdict(event) == expected


def test_1_4_v12_additional_creators_must_be_user_ids() -> None:
    def with_additional(value: object) -> Pdu:
        return _create("12", content={"room_version": "12", "additional_creators": value})

    assert _create_verdict(with_additional([BOB, "@carol:example.org:8448"])) is None
    assert _create_verdict(with_additional([])) is None
    assert _create_verdict(with_additional(BOB)) == "create.additional_creators"
    assert _create_verdict(with_additional([BOB, "carol"])) == "create.additional_creators"
    assert _create_verdict(with_additional([BOB, 7])) == "create.additional_creators"


def test_1_4_v11_does_not_read_additional_creators() -> None:
    event = _create("11", content={"room_version": "11", "additional_creators": "junk"})
    assert _create_verdict(event) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create_event_state_key_must_be_empty(version: str) -> None:
    # In v12 only the create event with an empty state key makes the room ID.
    room_id = {"room_id": "!" + "A" * 43} if version == "12" else {}
    assert _create_verdict(_create(version, state_key="x", **room_id)) == "create.state_key"


# --- Rule 2 (v12): the room ID names an accepted create event -------------------


def test_2_v12_room_id_must_name_the_create_event() -> None:
    room = public_room("12")
    other = RoomBuilder("12", BOB)
    message = room.draft("m.room.message", BOB, {"body": "hi"})
    state = room.state_events() | {CREATE_KEY: other.create}
    with pytest.raises(AuthError) as raised:
        check_auth_rules(message, state)
    assert raised.value.rule in {"room_id.create_event", "auth_events.room_id"}
    # Against its own events the message passes; with its create event
    # missing or rejected it does not.
    authorize_event(message, room.events)
    events = dict(room.events)
    del events[room.create.event_id]
    with pytest.raises(AuthError, match="not known") as raised:
        authorize_event(message, events)
    assert raised.value.rule == "room_id.create_event"
    with pytest.raises(AuthError, match="rejected") as raised:
        authorize_event(message, room.events, rejected={room.create.event_id})
    assert raised.value.rule == "room_id.create_event"


# --- Rule 3: the cited auth events ------------------------------------------------


def test_auth_types_for_a_message_and_a_state_event() -> None:
    room = public_room("10")
    message = room.draft("m.room.message", BOB, {"body": "hi"})
    assert auth_types_for_event(message) == {
        CREATE_KEY,
        POWER_LEVELS_KEY,
        ("m.room.member", BOB),
    }
    assert auth_types_for_event(room.create) == set()


def test_auth_types_v12_never_include_the_create_event() -> None:
    room = public_room("12")
    message = room.draft("m.room.message", BOB, {"body": "hi"})
    assert auth_types_for_event(message) == {POWER_LEVELS_KEY, ("m.room.member", BOB)}


@pytest.mark.parametrize("membership", ["join", "invite", "knock", "leave", "ban"])
def test_auth_types_for_membership(membership: str) -> None:
    room = public_room("10")
    event = room.draft_member(ALICE, membership, CAROL)
    expected = {CREATE_KEY, POWER_LEVELS_KEY, ("m.room.member", ALICE), ("m.room.member", CAROL)}
    if membership in ("join", "invite", "knock"):
        expected.add(JOIN_RULES_KEY)
    assert auth_types_for_event(event) == expected


def test_auth_types_for_a_third_party_invite_and_a_restricted_join() -> None:
    room = public_room("10")
    invite = room.draft_member(
        ALICE, "invite", CAROL, content={"third_party_invite": {"signed": {"token": "abc"}}}
    )
    assert ("m.room.third_party_invite", "abc") in auth_types_for_event(invite)
    join = room.draft_member(CAROL, "join", content={"join_authorised_via_users_server": BOB})
    assert ("m.room.member", BOB) in auth_types_for_event(join)
    # Before restricted rooms (v8) the key means nothing.
    old = public_room("7")
    join = old.draft_member(CAROL, "join", content={"join_authorised_via_users_server": BOB})
    assert ("m.room.member", BOB) not in auth_types_for_event(join)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_3_events_built_by_the_selection_pass(version: str) -> None:
    room = public_room(version)
    for event in room.events.values():
        authorize_event(event, room.events)


def _with_auth_events(room: RoomBuilder, event: Pdu, auth_events: list[str]) -> Pdu:
    fields = dict(event.json, auth_events=auth_events)
    return make_pdu(room.room_version.identifier, fields)


def _auth_events_rule(events: dict[str, Pdu], event: Pdu, **kwargs: Any) -> str | None:
    try:
        check_auth_events(event, events, **kwargs)
    except AuthError as exc:
        return exc.rule
    return None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_3_1_duplicate_auth_event_types_are_rejected(version: str) -> None:
    room = public_room(version)
    old_levels = room.state[POWER_LEVELS_KEY]
    room.power_levels(ALICE, content=admin_levels(room, {BOB: 10}))
    message = room.draft("m.room.message", BOB, {"body": "hi"})
    doubled = _with_auth_events(room, message, [*message.auth_event_ids, old_levels])
    assert _auth_events_rule(room.events, doubled) == "auth_events.duplicate"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_3_2_auth_events_outside_the_selection_are_rejected(version: str) -> None:
    room = public_room(version)
    message = room.draft("m.room.message", BOB, {"body": "hi"})
    extra = _with_auth_events(room, message, [*message.auth_event_ids, room.state[JOIN_RULES_KEY]])
    assert _auth_events_rule(room.events, extra) == "auth_events.unexpected"


def test_3_2_v12_citing_the_create_event_is_rejected() -> None:
    room = public_room("12")
    message = room.draft("m.room.message", BOB, {"body": "hi"})
    citing = _with_auth_events(room, message, [*message.auth_event_ids, room.create.event_id])
    with pytest.raises(AuthError, match="never cited") as raised:
        check_auth_events(citing, room.events)
    assert raised.value.rule == "auth_events.unexpected"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_3_3_rejected_auth_events_are_rejected(version: str) -> None:
    room = public_room(version)
    message = room.draft("m.room.message", BOB, {"body": "hi"})
    bob_join = room.state[("m.room.member", BOB)]
    assert _auth_events_rule(room.events, message, rejected={bob_join}) == "auth_events.rejected"
    assert _auth_events_rule(room.events, message, rejected={"$unrelated"}) is None


@pytest.mark.parametrize("version", versions(until="11"))
def test_3_4_missing_create_event_is_rejected_before_v12(version: str) -> None:
    room = public_room(version)
    message = room.draft("m.room.message", BOB, {"body": "hi"})
    without = _with_auth_events(
        room, message, [e for e in message.auth_event_ids if e != room.create.event_id]
    )
    assert _auth_events_rule(room.events, without) == "auth_events.no_create"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_3_5_auth_events_from_another_room_are_rejected(version: str) -> None:
    room = public_room(version)
    # Another room of Alice's: a different room ID, or (v12) a different create event.
    other = RoomBuilder(version, room_id="!other:example.org", create_content={"topic": "other"})
    other.member(ALICE, "join")
    assert other.room_id != room.room_id
    message = room.draft("m.room.message", ALICE, {"body": "hi"})
    foreign = other.state[("m.room.member", ALICE)]
    swapped = _with_auth_events(
        room,
        message,
        [
            foreign if e == room.state[("m.room.member", ALICE)] else e
            for e in message.auth_event_ids
        ],
    )
    events = room.events | other.events
    with pytest.raises(AuthError) as raised:
        check_auth_events(swapped, events)
    assert raised.value.rule == "auth_events.room_id"


def test_unknown_auth_events_cannot_authorise() -> None:
    room = public_room("10")
    message = room.draft("m.room.message", BOB, {"body": "hi"})
    events = dict(room.events)
    del events[room.state[("m.room.member", BOB)]]
    assert _auth_events_rule(events, message) == "auth_events.missing"


# --- Rule 4: m.federate --------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_4_unfederated_room_rejects_other_servers(version: str) -> None:
    room = RoomBuilder(version, create_content={"m.federate": False})
    room.member(ALICE, "join")
    room.join_rules(ALICE, "public")
    assert verdict(room, room.draft_member(EVE, "join")) == "federate"
    assert verdict(room, room.draft_member(BOB, "join")) is None

    federating = RoomBuilder(version, create_content={"m.federate": True})
    federating.member(ALICE, "join")
    federating.join_rules(ALICE, "public")
    assert verdict(federating, federating.draft_member(EVE, "join")) is None


# --- Rule 5: m.room.member ------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_1_member_without_membership_is_rejected(version: str) -> None:
    room = public_room(version)
    event = room.draft("m.room.member", CAROL, {"displayname": "Carol"}, state_key=CAROL)
    assert verdict(room, event) == "member.membership"
    not_a_string = room.draft("m.room.member", CAROL, {"membership": 1}, state_key=CAROL)
    assert verdict(room, not_a_string) == "member.membership"


@pytest.mark.parametrize("version", versions(since="8"))
def test_5_2_authorising_server_must_have_signed(version: str) -> None:
    room = public_room(version, join_rule="restricted")
    room.member(ALICE, "invite", EVE)
    # Eve is invited, so she may join; but she names Bob's server as
    # authoriser, and that server did not sign.
    unsigned = room.draft_member(EVE, "join", content={"join_authorised_via_users_server": BOB})
    assert verdict(room, unsigned) == "member.authoriser_signature"
    signatures = {"other.example": {"ed25519:1": "x"}, "example.org": {"ed25519:1": "y"}}
    signed = room.draft(
        "m.room.member",
        EVE,
        {"membership": "join", "join_authorised_via_users_server": BOB},
        state_key=EVE,
        extra={"signatures": signatures},
    )
    assert verdict(room, signed) is None
    bad_key = room.draft_member(EVE, "join", content={"join_authorised_via_users_server": "bob"})
    assert verdict(room, bad_key) == "member.authoriser_signature"


def test_5_2_authorising_server_key_means_nothing_before_v8() -> None:
    room = public_room("7")
    event = room.draft_member(EVE, "join", content={"join_authorised_via_users_server": BOB})
    assert verdict(room, event) is None


# Rule 5.3: join


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_3_1_creator_joins_right_after_create(version: str) -> None:
    room = RoomBuilder(version)
    join = room.draft_member(ALICE, "join")
    assert join.prev_event_ids == (room.create.event_id,)
    assert verdict(room, join) is None
    # Anyone else is held to the join rules (none yet: invite only).
    assert verdict(room, room.draft_member(BOB, "join")) == "member.join.not_invited"


@pytest.mark.parametrize("version", versions(until="10"))
def test_5_3_1_creator_is_content_creator_before_v11(version: str) -> None:
    room = RoomBuilder(version, creator=ALICE, create_content={"creator": BOB})
    assert verdict(room, room.draft_member(BOB, "join")) is None
    assert verdict(room, room.draft_member(ALICE, "join")) == "member.join.not_invited"


@pytest.mark.parametrize("version", ["11", "12"])
def test_5_3_1_creator_is_the_create_sender_from_v11(version: str) -> None:
    room = RoomBuilder(version, creator=ALICE, create_content={"creator": BOB})
    assert verdict(room, room.draft_member(ALICE, "join")) is None
    assert verdict(room, room.draft_member(BOB, "join")) == "member.join.not_invited"


def test_5_3_1_v12_additional_creators_do_not_join_first() -> None:
    room = RoomBuilder("12", create_content={"additional_creators": [BOB]})
    assert verdict(room, room.draft_member(BOB, "join")) == "member.join.not_invited"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_3_1_creator_rule_needs_create_as_only_prev_event(version: str) -> None:
    room = RoomBuilder(version)
    two_prevs = room.draft(
        "m.room.member",
        ALICE,
        {"membership": "join"},
        state_key=ALICE,
        prev=[room.create.event_id, "$other"],
    )
    assert verdict(room, two_prevs) == "member.join.not_invited"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_3_2_join_for_someone_else_is_rejected(version: str) -> None:
    room = public_room(version)
    assert verdict(room, room.draft_member(BOB, "join", CAROL)) == "member.join.sender"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_3_3_banned_user_cannot_join(version: str) -> None:
    room = public_room(version)
    room.member(ALICE, "ban", CAROL)
    assert verdict(room, room.draft_member(CAROL, "join")) == "member.join.banned"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_3_4_invite_rule_admits_invited_and_joined(version: str) -> None:
    room = public_room(version, join_rule="invite")
    assert verdict(room, room.draft_member(CAROL, "join")) == "member.join.not_invited"
    room.member(ALICE, "invite", CAROL)
    assert verdict(room, room.draft_member(CAROL, "join")) is None
    room.member(CAROL, "join")
    # Already joined: a profile change is a join too.
    assert verdict(room, room.draft_member(CAROL, "join", content={"displayname": "C"})) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_3_4_knock_rule_admits_invited_from_v7(version: str) -> None:
    room = public_room(version, join_rule="knock")
    room.member(ALICE, "invite", CAROL)
    expected = None if int(version) >= 7 else "member.join.rule"
    assert verdict(room, room.draft_member(CAROL, "join")) == expected


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_3_4_no_join_rules_event_means_invite(version: str) -> None:
    room = public_room(version, join_rule=None)
    assert verdict(room, room.draft_member(CAROL, "join")) == "member.join.not_invited"
    room.member(ALICE, "invite", CAROL)
    assert verdict(room, room.draft_member(CAROL, "join")) is None


@pytest.mark.parametrize("rule", ["restricted", "knock_restricted"])
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_3_5_restricted_joins(version: str, rule: str) -> None:
    since = 8 if rule == "restricted" else 10
    room = public_room(version, join_rule=rule, users={BOB: 10}, invite=10)
    room.member(ALICE, "invite", BOB)
    room.member(BOB, "join")
    room.member(ALICE, "invite", DAVE)
    via_bob = room.draft_member(CAROL, "join", content={"join_authorised_via_users_server": BOB})
    if int(version) < since:
        # Before the version that defines it, the join rule is unknown.
        assert verdict(room, via_bob) == "member.join.rule"
        assert verdict(room, room.draft_member(DAVE, "join")) == "member.join.rule"
        return
    # 5.3.5.1: invited (or joined) users need no authoriser.
    assert verdict(room, room.draft_member(DAVE, "join")) is None
    # 5.3.5.2: otherwise a joined user able to invite must authorise it.
    assert verdict(room, room.draft_member(CAROL, "join")) == "member.join.authoriser"
    assert verdict(room, via_bob) is None
    not_joined = room.draft_member(
        CAROL, "join", content={"join_authorised_via_users_server": DAVE}
    )
    assert verdict(room, not_joined) == "member.join.authoriser"
    room.power_levels(ALICE, content=admin_levels(room, {BOB: 5}, invite=10))
    too_weak = room.draft_member(CAROL, "join", content={"join_authorised_via_users_server": BOB})
    assert verdict(room, too_weak) == "member.join.authoriser"


def test_5_3_5_v12_creator_can_always_authorise() -> None:
    room = public_room("12", join_rule="restricted", invite=100)
    event = room.draft_member(CAROL, "join", content={"join_authorised_via_users_server": ALICE})
    assert verdict(room, event) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_3_6_public_rule_admits_anyone(version: str) -> None:
    room = public_room(version)
    assert verdict(room, room.draft_member(CAROL, "join")) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_3_7_other_join_rules_admit_nobody(version: str) -> None:
    room = public_room(version, join_rule="private")
    room.member(ALICE, "invite", CAROL)
    assert verdict(room, room.draft_member(CAROL, "join")) == "member.join.rule"


# Rule 5.4: invite


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_4_2_inviter_must_be_joined(version: str) -> None:
    room = public_room(version)
    assert verdict(room, room.draft_member(CAROL, "invite", DAVE)) == "member.invite.sender"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_4_3_cannot_invite_joined_or_banned(version: str) -> None:
    room = public_room(version)
    assert verdict(room, room.draft_member(ALICE, "invite", BOB)) == "member.invite.target"
    room.member(ALICE, "ban", CAROL)
    assert verdict(room, room.draft_member(ALICE, "invite", CAROL)) == "member.invite.target"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_4_4_inviter_needs_the_invite_level(version: str) -> None:
    room = public_room(version, invite=50)
    assert verdict(room, room.draft_member(BOB, "invite", CAROL)) == "member.invite.power"
    assert verdict(room, room.draft_member(ALICE, "invite", CAROL)) is None
    room.power_levels(ALICE, content=admin_levels(room, {BOB: 50}, invite=50))
    assert verdict(room, room.draft_member(BOB, "invite", CAROL)) is None


class _IdentityServer:
    """Signs ``third_party_invite.signed`` objects as an identity server does."""

    def __init__(self) -> None:
        self.key = generate_signing_key("0")
        self.public_key = encode_verify_key_base64(get_verify_key(self.key))

    def signed(self, mxid: str, token: str) -> dict[str, Any]:
        return sign_json({"mxid": mxid, "token": token}, "id.example", self.key)


def _third_party_room(version: str, ids: _IdentityServer, **tpi: Any) -> RoomBuilder:
    room = public_room(version)
    content = {"display_name": "c...@example.com", "public_key": ids.public_key} | tpi
    room.send("m.room.third_party_invite", ALICE, content, state_key="tok")
    return room


def _third_party_invite(room: RoomBuilder, signed: object, sender: str = ALICE) -> Pdu:
    return room.draft_member(
        sender, "invite", CAROL, content={"third_party_invite": {"signed": signed}}
    )


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_4_1_third_party_invite_with_valid_signature(version: str) -> None:
    ids = _IdentityServer()
    room = _third_party_room(version, ids)
    invite = _third_party_invite(room, ids.signed(CAROL, "tok"))
    assert verdict(room, invite) is None
    authorize_event(room.send_fields(invite.json), room.events)


def test_5_4_1_7_any_of_public_keys_may_have_signed() -> None:
    ids, other = _IdentityServer(), _IdentityServer()
    room = _third_party_room(
        "10", other, public_keys=[{"public_key": "junk"}, {"public_key": ids.public_key}]
    )
    assert verdict(room, _third_party_invite(room, ids.signed(CAROL, "tok"))) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_4_1_third_party_invite_failures(version: str) -> None:
    ids = _IdentityServer()
    room = _third_party_room(version, ids)
    good = ids.signed(CAROL, "tok")
    assert verdict(room, _third_party_invite(room, None)) == "member.invite.3pid.signed"
    no_token = {k: v for k, v in good.items() if k != "token"}
    assert verdict(room, _third_party_invite(room, no_token)) == "member.invite.3pid.signed"
    wrong_mxid = ids.signed(DAVE, "tok")
    assert verdict(room, _third_party_invite(room, wrong_mxid)) == "member.invite.3pid.mxid"
    unknown = ids.signed(CAROL, "other")
    assert verdict(room, _third_party_invite(room, unknown)) == "member.invite.3pid.token"
    by_bob = _third_party_invite(room, good, sender=BOB)
    assert verdict(room, by_bob) == "member.invite.3pid.sender"
    forged = _IdentityServer().signed(CAROL, "tok")
    assert verdict(room, _third_party_invite(room, forged)) == "member.invite.3pid.signature"
    tampered = dict(good, extra="x")
    assert verdict(room, _third_party_invite(room, tampered)) == "member.invite.3pid.signature"
    room.member(ALICE, "ban", CAROL)
    assert verdict(room, _third_party_invite(room, good)) == "member.invite.3pid.banned"


# Rule 5.5: leave


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_5_1_leaving_oneself(version: str) -> None:
    room = public_room(version)
    assert verdict(room, room.draft_member(BOB, "leave")) is None
    room.member(ALICE, "invite", CAROL)
    assert verdict(room, room.draft_member(CAROL, "leave")) is None  # rejecting an invite
    assert verdict(room, room.draft_member(DAVE, "leave")) == "member.leave.self"
    room.member(ALICE, "ban", DAVE)
    assert verdict(room, room.draft_member(DAVE, "leave")) == "member.leave.self"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_5_1_retracting_a_knock_from_v7(version: str) -> None:
    room = public_room(version, join_rule="knock")
    # Put a knock into the state directly: v6 does not allow making one.
    room.member(CAROL, "knock")
    expected = None if int(version) >= 7 else "member.leave.self"
    assert verdict(room, room.draft_member(CAROL, "leave")) == expected


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_5_2_kicker_must_be_joined(version: str) -> None:
    room = public_room(version)
    room.member(ALICE, "invite", CAROL)
    assert verdict(room, room.draft_member(CAROL, "leave", BOB)) == "member.leave.sender"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_5_3_unban_needs_the_ban_level(version: str) -> None:
    room = public_room(version, users={BOB: 60}, kick=50, ban=70)
    room.member(ALICE, "ban", CAROL)
    assert verdict(room, room.draft_member(BOB, "leave", CAROL)) == "member.leave.unban"
    assert verdict(room, room.draft_member(ALICE, "leave", CAROL)) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_5_4_kick_needs_kick_level_and_more_power(version: str) -> None:
    room = public_room(version, users={BOB: 50}, kick=50)
    room.member(CAROL, "join")
    assert verdict(room, room.draft_member(BOB, "leave", CAROL)) is None
    assert verdict(room, room.draft_member(CAROL, "leave", BOB)) == "member.leave.kick"
    room.member(DAVE, "join")
    room.power_levels(ALICE, content=admin_levels(room, {BOB: 50, DAVE: 50}, kick=50))
    # Equal power is not enough.
    assert verdict(room, room.draft_member(BOB, "leave", DAVE)) == "member.leave.kick"


# Rule 5.6: ban


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_6_1_banner_must_be_joined(version: str) -> None:
    room = public_room(version)
    assert verdict(room, room.draft_member(CAROL, "ban", BOB)) == "member.ban.sender"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_6_2_ban_needs_ban_level_and_more_power(version: str) -> None:
    room = public_room(version, users={BOB: 40}, ban=50)
    room.member(CAROL, "join")
    assert verdict(room, room.draft_member(BOB, "ban", CAROL)) == "member.ban.power"
    assert verdict(room, room.draft_member(ALICE, "ban", CAROL)) is None
    assert verdict(room, room.draft_member(ALICE, "ban", DAVE)) is None  # not in the room
    assert verdict(room, room.draft_member(BOB, "ban", ALICE)) == "member.ban.power"


def test_5_6_2_v12_creators_cannot_be_banned_or_kicked() -> None:
    room = public_room("12", users={BOB: 2**53 - 1})
    assert verdict(room, room.draft_member(BOB, "ban", ALICE)) == "member.ban.power"
    assert verdict(room, room.draft_member(BOB, "leave", ALICE)) == "member.leave.kick"
    assert verdict(room, room.draft_member(ALICE, "ban", BOB)) is None


def test_5_6_2_v12_creators_cannot_ban_each_other() -> None:
    room = RoomBuilder("12", create_content={"additional_creators": [BOB]})
    room.member(ALICE, "join")
    room.power_levels(ALICE, content={})
    room.join_rules(ALICE, "public")
    room.member(BOB, "join")
    assert verdict(room, room.draft_member(ALICE, "ban", BOB)) == "member.ban.power"


# Rule 5.7: knock


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_7_knock_on_a_knock_room(version: str) -> None:
    room = public_room(version, join_rule="knock")
    expected = None if int(version) >= 7 else "member.unknown"
    assert verdict(room, room.draft_member(CAROL, "knock")) == expected


@pytest.mark.parametrize("version", versions(since="7"))
def test_5_7_1_knock_needs_a_knock_join_rule(version: str) -> None:
    room = public_room(version, join_rule="invite")
    assert verdict(room, room.draft_member(CAROL, "knock")) == "member.knock.rule"
    room = public_room(version, join_rule="knock_restricted")
    expected = None if int(version) >= 10 else "member.knock.rule"
    assert verdict(room, room.draft_member(CAROL, "knock")) == expected


@pytest.mark.parametrize("version", versions(since="7"))
def test_5_7_2_knock_for_someone_else_is_rejected(version: str) -> None:
    room = public_room(version, join_rule="knock")
    assert verdict(room, room.draft_member(ALICE, "knock", CAROL)) == "member.knock.sender"


@pytest.mark.parametrize("version", versions(since="7"))
def test_5_7_3_knock_only_from_outside(version: str) -> None:
    room = public_room(version, join_rule="knock")
    room.member(ALICE, "invite", CAROL)
    room.member(ALICE, "ban", DAVE)
    room.member(ALICE, "invite", BOB)
    room.member(BOB, "join")
    assert verdict(room, room.draft_member(CAROL, "knock")) == "member.knock.membership"
    assert verdict(room, room.draft_member(DAVE, "knock")) == "member.knock.membership"
    assert verdict(room, room.draft_member(BOB, "knock")) == "member.knock.membership"
    room.member(CAROL, "leave")
    assert verdict(room, room.draft_member(CAROL, "knock")) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_5_8_unknown_membership_is_rejected(version: str) -> None:
    room = public_room(version)
    assert verdict(room, room.draft_member(BOB, "visiting")) == "member.unknown"


# --- Rules 6-9: everything else ---------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_6_sender_must_be_joined(version: str) -> None:
    room = public_room(version)
    assert verdict(room, room.draft("m.room.message", CAROL, {"body": "hi"})) == (
        "sender_not_joined"
    )
    room.member(ALICE, "invite", CAROL)
    assert verdict(room, room.draft("m.room.message", CAROL, {"body": "hi"})) == (
        "sender_not_joined"
    )
    assert verdict(room, room.draft("m.room.message", BOB, {"body": "hi"})) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_7_third_party_invite_event_needs_invite_level(version: str) -> None:
    room = public_room(version, invite=20)
    event = room.draft("m.room.third_party_invite", BOB, {"public_key": "x"}, state_key="t")
    assert verdict(room, event) == "third_party_invite.power"
    room.power_levels(ALICE, content=admin_levels(room, {BOB: 20}, invite=20))
    # At the invite level it is allowed, though state_default (50) is higher.
    assert verdict(room, event) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_8_required_power_level(version: str) -> None:
    room = public_room(
        version, users={BOB: 10}, events={"m.room.name": 10, "m.custom": 20}, events_default=5
    )
    name = room.draft("m.room.name", BOB, {"name": "x"}, state_key="")
    topic = room.draft("m.room.topic", BOB, {"topic": "x"}, state_key="")
    message = room.draft("m.room.message", BOB, {"body": "x"})
    custom = room.draft("m.custom", BOB, {})
    assert verdict(room, name) is None
    assert verdict(room, topic) == "send_level"  # state_default 50
    assert verdict(room, message) is None  # events_default 5
    assert verdict(room, custom) == "send_level"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_8_required_power_level_without_power_levels_event(version: str) -> None:
    room = RoomBuilder(version)
    room.member(ALICE, "join")
    room.join_rules(ALICE, "public")  # the creator has 100 (v12: unlimited)
    room.member(BOB, "join")
    assert verdict(room, room.draft("m.room.topic", BOB, {"topic": "x"}, state_key="")) == (
        "send_level"
    )
    assert verdict(room, room.draft("m.room.message", BOB, {"body": "x"})) is None
    assert verdict(room, room.draft("m.room.topic", ALICE, {"topic": "x"}, state_key="")) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_9_user_state_keys_belong_to_their_user(version: str) -> None:
    room = public_room(version, users={BOB: 50})
    mine = room.draft("m.custom.state", BOB, {}, state_key=BOB)
    theirs = room.draft("m.custom.state", BOB, {}, state_key=ALICE)
    assert verdict(room, mine) is None
    assert verdict(room, theirs) == "state_key.user"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_aliases_are_ordinary_state_from_v6(version: str) -> None:
    # Versions 1-5 let any server set aliases under its own name; from 6 the
    # usual state rules apply.
    room = public_room(version)
    aliases = room.draft(
        "m.room.aliases", BOB, {"aliases": ["#a:example.org"]}, state_key="example.org"
    )
    assert verdict(room, aliases) == "send_level"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_redactions_are_authorised_like_other_events(version: str) -> None:
    # Below the redact level (50) Bob may still send a redaction: whether it
    # applies is decided when both events are known, not by the auth rules.
    room = public_room(version, redact=50)
    target = room.send("m.room.message", ALICE, {"body": "x"})
    if int(version) >= 11:
        redaction = room.draft("m.room.redaction", BOB, {"redacts": target.event_id})
    else:
        redaction = room.draft("m.room.redaction", BOB, {}, extra={"redacts": target.event_id})
    assert redaction.redacts == target.event_id
    assert verdict(room, redaction) is None
    room.power_levels(ALICE, content=admin_levels(room, {}, events={"m.room.redaction": 10}))
    assert verdict(room, redaction) == "send_level"


# --- Rule 10: m.room.power_levels --------------------------------------------------------


def _levels_verdict(room: RoomBuilder, sender: str, content: dict[str, Any]) -> str | None:
    return verdict(room, room.draft("m.room.power_levels", sender, content, state_key=""))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_10_1_named_levels_must_be_integers(version: str) -> None:
    room = public_room(version)
    stringy = admin_levels(room, {}, ban="50")
    expected = "power_levels.value" if int(version) >= 10 else None
    assert _levels_verdict(room, ALICE, stringy) == expected
    for junk in ("fifty", "5.0", True, None, [50]):
        assert _levels_verdict(room, ALICE, admin_levels(room, {}, kick=junk)) == (
            "power_levels.value"
        )


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_10_2_events_and_notifications_values_must_be_integers(version: str) -> None:
    room = public_room(version)
    for section in ("events", "notifications"):
        expected = "power_levels.value" if int(version) >= 10 else None
        stringy = admin_levels(room, {}, **{section: {"m.room.name": " +50 "}})
        assert _levels_verdict(room, ALICE, stringy) == expected
        not_an_object = admin_levels(room, {}, **{section: [50]})
        assert _levels_verdict(room, ALICE, not_an_object) == "power_levels.value"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_10_3_users_must_map_user_ids_to_integers(version: str) -> None:
    room = public_room(version)
    stringy = admin_levels(room, {BOB: "50"})
    expected = "power_levels.users" if int(version) >= 10 else None
    assert _levels_verdict(room, ALICE, stringy) == expected
    not_a_user = admin_levels(room, {"bob": 10})
    assert _levels_verdict(room, ALICE, not_a_user) == "power_levels.users"
    assert _levels_verdict(room, ALICE, {"users": [BOB]}) == "power_levels.users"
    # Floats never get this far: canonical JSON (v6+) refuses them in any event.
    with pytest.raises(BadJsonError):
        room.draft("m.room.power_levels", ALICE, admin_levels(room, {BOB: 1.5}), state_key="")


def test_10_4_v12_creators_may_not_be_listed_in_users() -> None:
    room = RoomBuilder("12", create_content={"additional_creators": [BOB]})
    room.member(ALICE, "join")
    assert _levels_verdict(room, ALICE, {"users": {ALICE: 100}}) == "power_levels.creator_in_users"
    assert _levels_verdict(room, ALICE, {"users": {BOB: 100}}) == "power_levels.creator_in_users"
    assert _levels_verdict(room, ALICE, {"users": {CAROL: 100}}) is None


def test_10_4_before_v12_the_creator_may_be_listed() -> None:
    room = RoomBuilder("11")
    room.member(ALICE, "join")
    assert _levels_verdict(room, ALICE, {"users": {ALICE: 100}}) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_10_5_first_power_levels_event_is_allowed(version: str) -> None:
    room = RoomBuilder(version)
    room.member(ALICE, "join")
    content = admin_levels(room, {BOB: 9000}, ban=9000)
    assert _levels_verdict(room, ALICE, content) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_10_6_named_level_changes(version: str) -> None:
    room = public_room(version, users={BOB: 50}, kick=40, ban=60)
    base = admin_levels(room, {BOB: 50}, kick=40, ban=60)
    # Within Bob's power: lower kick, add invite at his level.
    assert _levels_verdict(room, BOB, base | {"kick": 30, "invite": 50}) is None
    # New value above his level.
    assert _levels_verdict(room, BOB, base | {"kick": 51}) == "power_levels.change"
    # Current value above his level: he may not lower it, nor remove it.
    assert _levels_verdict(room, BOB, base | {"ban": 50}) == "power_levels.change"
    removed = {k: v for k, v in base.items() if k != "ban"}
    assert _levels_verdict(room, BOB, removed) == "power_levels.change"


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("section", ["events", "notifications"])
def test_10_7_and_10_8_events_and_notifications_changes(version: str, section: str) -> None:
    levels = {"m.room.name": 40, "m.room.tombstone": 100, "room": 60}
    room = public_room(version, users={BOB: 50}, **{section: levels})
    base = admin_levels(room, {BOB: 50}, **{section: levels})

    def changed(**entries: Any) -> dict[str, Any]:
        new = dict(levels, **entries)
        return base | {section: {k: v for k, v in new.items() if v is not None}}

    assert _levels_verdict(room, BOB, changed(**{"m.room.name": 50})) is None
    assert _levels_verdict(room, BOB, changed(**{"m.room.topic": 50})) is None
    rule = f"power_levels.change.{section}"
    assert _levels_verdict(room, BOB, changed(**{"m.room.name": 51})) == rule
    assert _levels_verdict(room, BOB, changed(**{"m.room.topic": 51})) == rule
    assert _levels_verdict(room, BOB, changed(room=10)) == rule
    assert _levels_verdict(room, BOB, changed(**{"m.room.tombstone": None})) == rule


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_10_9_and_10_10_users_changes(version: str) -> None:
    room = public_room(version, users={BOB: 50, CAROL: 50, DAVE: 20})
    base = admin_levels(room, {BOB: 50, CAROL: 50, DAVE: 20})
    users = dict(base["users"])

    def with_users(**changes: Any) -> dict[str, Any]:
        new = dict(users)
        for name, level in changes.items():
            user = {"bob": BOB, "carol": CAROL, "dave": DAVE, "eve": EVE}[name]
            if level is None:
                new.pop(user, None)
            else:
                new[user] = level
        return base | {"users": new}

    assert _levels_verdict(room, BOB, with_users(dave=50)) is None  # promote to own level
    assert _levels_verdict(room, BOB, with_users(eve=10)) is None  # add below own level
    assert _levels_verdict(room, BOB, with_users(bob=10)) is None  # demote oneself
    assert _levels_verdict(room, BOB, with_users(dave=None)) is None  # remove a lower user
    assert _levels_verdict(room, BOB, with_users(dave=51)) == "power_levels.change.users"
    # Carol's level equals Bob's: he may not change or remove it.
    assert _levels_verdict(room, BOB, with_users(carol=10)) == "power_levels.change.users"
    assert _levels_verdict(room, BOB, with_users(carol=None)) == "power_levels.change.users"
    assert _levels_verdict(room, BOB, with_users(bob=60)) == "power_levels.change.users"


@pytest.mark.parametrize("version", versions(until="9"))
def test_10_string_and_integer_forms_of_a_level_are_the_same(version: str) -> None:
    room = public_room(version, users={BOB: 50}, ban=60)
    same = admin_levels(room, {BOB: 50}, ban="  +060 ")
    assert _levels_verdict(room, BOB, same) is None


def test_10_v12_creator_may_set_any_level() -> None:
    room = public_room("12", users={BOB: 2**53 - 1})
    content = {"users": {BOB: 0, CAROL: 2**53 - 1}, "ban": 2**53 - 1}
    assert _levels_verdict(room, ALICE, content) is None
    assert _levels_verdict(room, BOB, content | {"users": {BOB: 2**53 - 1, CAROL: 1}}) is None


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_11_otherwise_allowed(version: str) -> None:
    room = public_room(version, users={BOB: 50})
    assert verdict(room, room.draft("m.room.topic", BOB, {"topic": "x"}, state_key="")) is None


# --- Odds and ends ---------------------------------------------------------------------


def test_auth_error_is_m_forbidden_and_names_the_rule() -> None:
    room = public_room("10")
    with pytest.raises(AuthError) as raised:
        check_auth_rules(room.draft("m.room.message", CAROL, {"body": "hi"}), room.state_events())
    error = raised.value
    assert (error.errcode, error.http_status, error.rule) == (
        "M_FORBIDDEN",
        403,
        "sender_not_joined",
    )
    assert CAROL in error.message
    assert error.to_json() == {"errcode": "M_FORBIDDEN", "error": error.message}


@pytest.mark.parametrize(
    ("user_id", "valid"),
    [
        ("@alice:example.org", True),
        ("@:example.org", True),  # historical: empty localpart
        ("@Üñí©ødé:example.org:8448", True),
        ("@a:[1234:5678::abcd]:5678", True),
        ("@a:1.2.3.4", True),
        ("alice:example.org", False),
        ("@alice", False),
        ("@alice:", False),
        ("@al\x00ice:example.org", False),
        ("@alice:exa_mple.org", False),
        ("@alice:example.org:123456", False),
        ("@" + "a" * 250 + ":example.org", False),
        (None, False),
    ],
)
def test_user_id_validation(user_id: object, valid: bool) -> None:
    assert is_valid_user_id(user_id) is valid


def test_state_from_another_room_is_refused() -> None:
    room = public_room("10")
    other = RoomBuilder("10", room_id="!other:example.org")
    other.member(ALICE, "join")
    state = room.state_events() | {("m.room.member", ALICE): other.events[other.last or ""]}
    with pytest.raises(AuthError) as raised:
        check_auth_rules(room.draft("m.room.message", ALICE, {"body": "x"}), state)
    assert raised.value.rule == "auth_events.room_id"


def test_no_create_event_in_state_is_refused() -> None:
    room = public_room("10")
    state = {k: v for k, v in room.state_events().items() if k != CREATE_KEY}
    with pytest.raises(AuthError) as raised:
        check_auth_rules(room.draft("m.room.message", BOB, {"body": "x"}), state)
    assert raised.value.rule == "auth_events.no_create"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_handling_redactions(version: str) -> None:
    # A redaction takes effect if its sender has the redact level or shares
    # a server with the redacted event's sender.
    room = public_room(version, redact=50)
    room.member(EVE, "join")
    by_eve = room.send("m.room.message", EVE, {"body": "x"})
    by_alice = room.send("m.room.message", ALICE, {"body": "y"})

    def redaction(sender: str, target: Pdu) -> Pdu:
        if int(version) >= 11:
            return room.draft("m.room.redaction", sender, {"redacts": target.event_id})
        return room.draft("m.room.redaction", sender, {}, extra={"redacts": target.event_id})

    state = room.state_events()
    levels = {"power_levels": state[POWER_LEVELS_KEY], "create": room.create}
    assert redaction_applies(redaction(BOB, by_alice), by_alice, **levels)  # same server
    assert not redaction_applies(redaction(BOB, by_eve), by_eve, **levels)  # below redact level
    assert redaction_applies(redaction(ALICE, by_eve), by_eve, **levels)  # admin
    assert redaction_applies(redaction(EVE, by_eve), by_eve, **levels)  # her own
    assert not redaction_applies(redaction(ALICE, by_eve), by_alice, **levels)  # names another
