"""RoomBuilder: rooms whose events the auth rules, signature checks and
content hashes accept, for every supported room version."""

from __future__ import annotations

import pytest

from ranvier.core.event_signatures import check_event_signatures
from ranvier.errors import AuthError
from ranvier.protocol.auth import authorize_event, check_auth_rules
from ranvier.protocol.hashing import content_hash_matches
from ranvier.protocol.room_versions import SUPPORTED_ROOM_VERSIONS
from ranvier.protocol.signing import generate_signing_key
from ranvier.testing import NOW_MS, KnownKeys, RoomBuilder, make_pdu

VERSIONS = sorted(SUPPORTED_ROOM_VERSIONS, key=int)
ALICE = "@alice:a.test"
BOB = "@bob:b.test"
KEYS = {"a.test": generate_signing_key("a1"), "b.test": generate_signing_key("b1")}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_public_room_passes_the_auth_rules(version: str) -> None:
    room = RoomBuilder(version, ALICE)
    room.public_room(BOB, history_visibility="shared")
    room.message(BOB, "hi")
    types = [event.type for event in room.order]
    assert types == [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.member",
        "m.room.message",
    ]
    for event in room.order:
        authorize_event(event, room.events)
        before = room.state_before(event.event_id)
        check_auth_rules(event, {key: room.events[e] for key, e in before.items()})
    assert room.state[("m.room.member", BOB)] == room.order[5].event_id
    assert all(event.room_id == room.room_id for event in room.order)


def test_an_event_the_rules_refuse_is_built_all_the_same() -> None:
    room = RoomBuilder("10", ALICE)
    room.public_room()
    # Bob never joined: his message cites no membership of his.
    stranger = room.message(BOB)
    with pytest.raises(AuthError):
        check_auth_rules(stranger, room.state_events())


def test_creators_are_left_out_of_power_levels_from_v12() -> None:
    room = RoomBuilder("12", ALICE, create_content={"additional_creators": [BOB]})
    levels = room.power_levels(ALICE, {ALICE: 100, BOB: 100, "@carol:c.test": 50})
    assert levels.content == {"users": {"@carol:c.test": 50}}
    # Content given whole is taken as it is.
    whole = room.power_levels(ALICE, content={"users": {ALICE: 100}})
    assert whole.content == {"users": {ALICE: 100}}


def test_creators_keep_their_power_levels_before_v12() -> None:
    room = RoomBuilder("11", ALICE)
    levels = room.power_levels(ALICE, {ALICE: 100}, content={"ban": 75})
    assert levels.content == {"ban": 75, "users": {ALICE: 100}}


def test_rooms_built_alike_are_different_rooms() -> None:
    first, second = RoomBuilder("12", ALICE), RoomBuilder("12", ALICE)
    assert first.room_id != second.room_id
    old_first, old_second = RoomBuilder("10", ALICE), RoomBuilder("10", ALICE)
    assert old_first.room_id != old_second.room_id
    assert old_first.room_id.endswith(":a.test")
    assert RoomBuilder("10", ALICE, room_id="!mine:a.test").room_id == "!mine:a.test"


def test_forks_follow_the_state_of_their_prev_events() -> None:
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB)
    fork = room.last
    topic = room.topic(ALICE, "one side")
    other = room.message(BOB, "other side", prev=[fork])
    assert other.prev_event_ids == (fork,)
    assert ("m.room.topic", "") not in room.state_after[other.event_id]
    assert room.state_after[topic.event_id][("m.room.topic", "")] == topic.event_id
    assert other.depth == topic.depth
    merge = room.message(ALICE, "both", prev=[topic.event_id, other.event_id])
    assert merge.depth == topic.depth + 1
    # Given a state, the auth events come from it; given auth events, those.
    bare = room.message(BOB, state={}, prev=[fork])
    assert bare.auth_event_ids == ()
    cited = room.message(BOB, auth=[room.create.event_id])
    assert cited.auth_event_ids == (room.create.event_id,)


def test_drafts_leave_the_room_as_it_was() -> None:
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB)
    last, ts = room.last, room.ts
    draft = room.draft_member(BOB, "leave")
    assert draft.event_id in room.events
    assert (room.last, room.ts) == (last, ts)
    assert draft not in room.order
    # Built again for real, the same event.
    assert room.member(BOB, "leave").event_id == draft.event_id


def test_extra_fields_and_whole_fields() -> None:
    room = RoomBuilder("10", ALICE)
    room.public_room()
    message = room.message(ALICE)
    redaction = room.send("m.room.redaction", ALICE, {}, extra={"redacts": message.event_id})
    assert redaction.redacts == message.event_id
    again = room.send_fields(room.draft("m.room.topic", ALICE, {"topic": "t"}, state_key="").json)
    assert again.content == {"topic": "t"}
    assert room.last == again.event_id


def test_placeholder_events_have_real_ids_and_nothing_checkable() -> None:
    room = RoomBuilder("12", ALICE)
    assert room.create.hashes == {"sha256": "placeholder"}
    assert not content_hash_matches(room.create.json)
    assert room.create.origin_server_ts > NOW_MS
    event = make_pdu("10", {"type": "m.room.message", "sender": BOB, "room_id": "!r:b.test"})
    assert event.signatures == {"b.test": {"ed25519:1": "placeholder"}}
    assert event.event_id.startswith("$")


@pytest.mark.parametrize("version", VERSIONS)
async def test_signed_events_carry_their_servers_signatures(version: str) -> None:
    room = RoomBuilder(version, ALICE, keys=KEYS)
    room.public_room(BOB)
    room.message(BOB)
    assert all(content_hash_matches(event.json) for event in room.order)
    assert await check_event_signatures(room.order, KnownKeys(KEYS)) == {}
    forged = room.message(BOB, key=generate_signing_key("b1"))
    failures = await check_event_signatures([forged], KnownKeys(KEYS))
    assert set(failures) == {forged.event_id}


def test_a_server_with_no_key_cannot_send_in_a_signed_room() -> None:
    room = RoomBuilder("10", ALICE, keys={"a.test": KEYS["a.test"]})
    with pytest.raises(KeyError, match=r"no signing key for b\.test"):
        room.member(BOB, "join")
    room.keys["b.test"] = KEYS["b.test"]
    assert room.member(BOB, "join").signatures.keys() == {"b.test"}
