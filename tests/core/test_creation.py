from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from _rooms import DAVE, CountingStorage

from ranvier.core import check_against_auth_events
from ranvier.core.creation import EventCreator, NotInRoomError
from ranvier.core.ingest import RoomLocks
from ranvier.errors import AuthError, LimitExceededError, MatrixError, PartialStateConflictError
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import compute_room_id
from ranvier.protocol.power_levels import CREATOR_POWER_LEVEL, get_user_power_level
from ranvier.protocol.redaction import redact
from ranvier.protocol.signing import (
    generate_signing_key,
    get_verify_key,
    sign_json,
    verify_signed_json,
)
from ranvier.storage import EventToPersist, StateDelta, Storage
from ranvier.testing import RoomBuilder, ingest

SERVER = "example.org"
KEY = generate_signing_key("1")
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"
ERIN = "@erin:example.org"
ZED = "@zed:remote.example"

CREATE = ("m.room.create", "")
POWER_LEVELS = ("m.room.power_levels", "")
JOIN_RULES = ("m.room.join_rules", "")
HISTORY = ("m.room.history_visibility", "")
GUEST = ("m.room.guest_access", "")
NAME = ("m.room.name", "")
TOPIC = ("m.room.topic", "")


def member(user: str) -> tuple[str, str]:
    return ("m.room.member", user)


class Heard:
    """An event notifier that keeps what it hears."""

    def __init__(self) -> None:
        self.events: list[tuple[Pdu, int]] = []

    async def on_new_event(self, event: Pdu, stream_ordering: int) -> None:
        self.events.append((event, stream_ordering))

    def in_room(self, room_id: str) -> list[Pdu]:
        return [event for event, _ in self.events if event.room_id == room_id]


def _creator(
    storage: Storage,
    heard: Heard,
    *,
    persister: Any = None,
    server_name: str = SERVER,
    **kwargs: Any,
) -> EventCreator:
    clock = itertools.count(1_700_000_000_000)
    return EventCreator(
        server_name=server_name,
        signing_key=KEY,
        store=storage,
        persister=persister or storage,
        notifier=heard,
        clock=lambda: next(clock),
        **kwargs,
    )


@pytest.fixture
def heard() -> Heard:
    return Heard()


@pytest.fixture
def creator(storage: Storage, heard: Heard) -> EventCreator:
    return _creator(storage, heard)


def _event_count(db_path: str | os.PathLike[str]) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


async def _state_contents(storage: Storage, room_id: str) -> dict[tuple[str, str], Any]:
    state = await storage.get_current_state_ids(room_id)
    rows = await storage.get_events(state.values())
    version = await storage.get_room_version(room_id)
    assert version is not None
    return {
        key: Pdu.from_json(rows[event_id].json, version).content for key, event_id in state.items()
    }


async def _check_written(storage: Storage, events: Sequence[Pdu]) -> None:
    """Each event is stored as built, accepted, after the one before it."""
    rows = await storage.get_events([event.event_id for event in events])
    for i, event in enumerate(events):
        row = rows[event.event_id]
        assert row.json == event.raw
        assert row.rejected_reason is None
        assert not row.soft_failed
        assert await check_against_auth_events(event, storage) is None
        if i:
            assert event.prev_event_ids == (events[i - 1].event_id,)
            assert event.depth == events[i - 1].depth + 1
            assert row.stream_ordering > rows[events[i - 1].event_id].stream_ordering


async def _membership(storage: Storage, room_id: str, user: str) -> str | None:
    contents = await _state_contents(storage, room_id)
    content = contents.get(member(user))
    return None if content is None else content["membership"]


# --- Creating rooms -----------------------------------------------------------------


@pytest.mark.parametrize("preset", ["private_chat", "public_chat", "trusted_private_chat"])
@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_create_room_presets(
    storage: Storage, creator: EventCreator, heard: Heard, version: str, preset: Any
) -> None:
    room_id = await creator.create_room(ALICE, preset=preset, room_version=version)
    events = heard.in_room(room_id)
    assert [(e.type, e.state_key) for e in events] == [
        CREATE,
        member(ALICE),
        POWER_LEVELS,
        JOIN_RULES,
        HISTORY,
        GUEST,
    ]
    assert all(e.sender == ALICE for e in events)
    await _check_written(storage, events)
    create = events[0]
    assert create.depth == 1
    if version == "12":
        assert room_id == compute_room_id(create.json, version)
        assert "room_id" not in create.json
    else:
        assert room_id == create.json["room_id"]
        assert room_id.startswith("!")
        assert room_id.endswith(":example.org")
    verify_signed_json(redact(create.json, version), SERVER, get_verify_key(KEY))

    contents = await _state_contents(storage, room_id)
    assert set(contents) == {CREATE, member(ALICE), POWER_LEVELS, JOIN_RULES, HISTORY, GUEST}
    assert contents[CREATE] == (
        {"room_version": version, "creator": ALICE}
        if version == "10"
        else {"room_version": version}
    )
    assert contents[member(ALICE)] == {"membership": "join"}
    public = preset == "public_chat"
    assert contents[JOIN_RULES] == {"join_rule": "public" if public else "invite"}
    assert contents[HISTORY] == {"history_visibility": "shared"}
    assert contents[GUEST] == {"guest_access": "forbidden" if public else "can_join"}
    power = contents[POWER_LEVELS]
    assert power["invite"] == (50 if public else 0)
    if version == "12":
        # Creators have unlimited power and are never listed.
        assert power["users"] == {}
        assert power["events"]["m.room.tombstone"] == 150
    else:
        assert power["users"] == {ALICE: 100}
        assert power["events"]["m.room.tombstone"] == 100
    assert power["state_default"] == 50
    assert power["events_default"] == 0
    assert await storage.get_forward_extremities(room_id) == {events[-1].event_id}
    assert await storage.get_room_version(room_id) == version


@pytest.mark.parametrize("version", ["10", "12"])
async def test_create_room_with_everything(
    storage: Storage, creator: EventCreator, heard: Heard, version: str
) -> None:
    room_id = await creator.create_room(
        ALICE,
        preset="public_chat",
        name="The Pub",
        topic="Happy hour",
        invite=[BOB, CAROL, BOB],
        initial_state=[
            {"type": "m.room.history_visibility", "content": {"history_visibility": "invited"}},
            {"type": "m.room.name", "content": {"name": "overwritten by name"}},
            {"type": "org.example.custom", "state_key": "x", "content": {"n": 1}},
        ],
        power_level_content_override={"events_default": 10, "kick": 60},
        creation_content={"m.federate": False, "creator": CAROL},
        room_version=version,
    )
    events = heard.in_room(room_id)
    assert [(e.type, e.state_key) for e in events] == [
        CREATE,
        member(ALICE),
        POWER_LEVELS,
        JOIN_RULES,
        GUEST,
        HISTORY,
        ("org.example.custom", "x"),
        NAME,
        TOPIC,
        member(BOB),
        member(CAROL),
    ]
    await _check_written(storage, events)
    contents = await _state_contents(storage, room_id)
    assert contents[HISTORY] == {"history_visibility": "invited"}
    assert contents[NAME] == {"name": "The Pub"}
    assert contents[TOPIC]["topic"] == "Happy hour"
    assert contents[TOPIC]["m.topic"] == {
        "m.text": [{"mimetype": "text/plain", "body": "Happy hour"}]
    }
    assert contents[("org.example.custom", "x")] == {"n": 1}
    assert contents[member(BOB)] == {"membership": "invite"}
    assert contents[member(CAROL)] == {"membership": "invite"}
    # The override lands on top of the defaults.
    assert contents[POWER_LEVELS]["events_default"] == 10
    assert contents[POWER_LEVELS]["kick"] == 60
    assert contents[POWER_LEVELS]["ban"] == 50
    # The server decides the creator, whatever creation_content says.
    assert contents[CREATE]["m.federate"] is False
    if version == "10":
        assert contents[CREATE]["creator"] == ALICE
    else:
        assert "creator" not in contents[CREATE]


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_trusted_private_chat_gives_invitees_the_creators_power(
    storage: Storage, creator: EventCreator, heard: Heard, version: str
) -> None:
    room_id = await creator.create_room(
        ALICE, preset="trusted_private_chat", invite=[BOB], room_version=version
    )
    contents = await _state_contents(storage, room_id)
    if version == "12":
        assert contents[CREATE]["additional_creators"] == [BOB]
        assert contents[POWER_LEVELS]["users"] == {}
    else:
        assert "additional_creators" not in contents[CREATE]
        assert contents[POWER_LEVELS]["users"] == {ALICE: 100, BOB: 100}
    await creator.join(BOB, room_id)
    events = heard.in_room(room_id)
    await _check_written(storage, events)
    create, power = events[0], events[2]
    level = get_user_power_level(BOB, power_levels=power, create=create)
    assert level == (CREATOR_POWER_LEVEL if version == "12" else 100)
    assert level == get_user_power_level(ALICE, power_levels=power, create=create)


@pytest.mark.parametrize(
    ("version", "kwargs", "errcode", "match"),
    [
        # Alice's own override takes the power to set the join rules from her.
        (
            "10",
            {"power_level_content_override": {"users": {ALICE: 0}}},
            "M_INVALID_ROOM_STATE",
            "join_rules",
        ),
        # From v12 creators may not be listed in users.
        (
            "12",
            {"power_level_content_override": {"users": {ALICE: 100}}},
            "M_INVALID_ROOM_STATE",
            "power_levels",
        ),
        (
            "12",
            {
                "initial_state": [
                    {"type": "m.room.member", "state_key": BOB, "content": {"membership": "join"}}
                ]
            },
            "M_INVALID_ROOM_STATE",
            "m.room.member",
        ),
        ("12", {"initial_state": [{"type": "m.room.topic"}]}, "M_INVALID_PARAM", "content"),
        ("12", {"preset": "party"}, "M_INVALID_PARAM", "unknown preset"),
        ("12", {"invite": ["bob"]}, "M_INVALID_PARAM", "not a user ID"),
        ("12", {"invite": [ALICE]}, "M_INVALID_PARAM", "cannot also be invited"),
        ("12", {"invite": [ZED]}, "M_UNKNOWN", "another server"),
        ("12", {"name": "x" * 70_000}, "M_TOO_LARGE", "larger"),
        ("12", {"creation_content": {"m.federate": 1.5}}, "M_BAD_JSON", "float"),
        ("5", {}, "M_UNSUPPORTED_ROOM_VERSION", "not supported"),
    ],
)
async def test_create_room_refused_writes_nothing(
    storage: Storage,
    creator: EventCreator,
    heard: Heard,
    db_path: Path,
    version: str,
    kwargs: dict[str, Any],
    errcode: str,
    match: str,
) -> None:
    with pytest.raises(MatrixError, match=match) as caught:
        await creator.create_room(ALICE, room_version=version, **kwargs)
    assert caught.value.errcode == errcode
    assert heard.events == []
    assert _event_count(db_path) == 0


async def test_only_local_users_create_rooms(
    creator: EventCreator, heard: Heard, db_path: Path
) -> None:
    with pytest.raises(MatrixError, match=r"not a user of example\.org") as caught:
        await creator.create_room(ZED)
    assert caught.value.errcode == "M_FORBIDDEN"
    assert _event_count(db_path) == 0


# --- Messages and state -------------------------------------------------------------


@pytest.mark.parametrize("version", ["10", "12"])
async def test_send_messages_and_state(
    storage: Storage, creator: EventCreator, heard: Heard, version: str
) -> None:
    room_id = await creator.create_room(ALICE, room_version=version)
    message_id = await creator.send_event(ALICE, room_id, "m.room.message", {"body": "hi"})
    topic_id = await creator.send_event(
        ALICE, room_id, "m.room.topic", {"topic": "news"}, state_key=""
    )
    events = heard.in_room(room_id)
    assert [e.event_id for e in events[-2:]] == [message_id, topic_id]
    assert events[-2].state_key is None
    assert events[-2].content == {"body": "hi"}
    await _check_written(storage, events)
    state = await storage.get_current_state_ids(room_id)
    assert state[TOPIC] == topic_id
    assert message_id not in state.values()
    assert await storage.get_forward_extremities(room_id) == {topic_id}
    # Each event was told with the ordering storage gave it.
    for event, ordering in heard.events:
        row = await storage.get_event(event.event_id)
        assert row is not None
        assert row.stream_ordering == ordering


async def test_a_transaction_id_sends_once(
    storage: Storage, creator: EventCreator, heard: Heard, db_path: Path
) -> None:
    room_id = await creator.create_room(ALICE, preset="public_chat")
    await creator.join(BOB, room_id)
    first = await creator.send_event(ALICE, room_id, "m.room.message", {"body": "1"}, txn_id="t")
    count = _event_count(db_path)
    again = await creator.send_event(ALICE, room_id, "m.room.message", {"body": "1"}, txn_id="t")
    assert again == first
    assert _event_count(db_path) == count
    # Another sender's transaction of the same name is another event.
    other = await creator.send_event(BOB, room_id, "m.room.message", {"body": "1"}, txn_id="t")
    assert other != first
    # Concurrent retries of one transaction still make one event.
    sent: list[str] = []

    async def send() -> None:
        sent.append(
            await creator.send_event(ALICE, room_id, "m.room.message", {"body": "2"}, txn_id="u")
        )

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(send)
    assert len(set(sent)) == 1
    assert _event_count(db_path) == count + 2
    assert [e.event_id for e in heard.in_room(room_id)].count(sent[0]) == 1


async def test_remembered_transactions_are_bounded(storage: Storage, heard: Heard) -> None:
    creator = _creator(storage, heard, remembered_transactions=2)
    room_id = await creator.create_room(ALICE)
    ids = [
        await creator.send_event(ALICE, room_id, "m.room.message", {}, txn_id=str(i))
        for i in range(3)
    ]
    assert await creator.send_event(ALICE, room_id, "m.room.message", {}, txn_id="2") == ids[2]
    # The oldest was forgotten: a retry of it is a new event.
    assert await creator.send_event(ALICE, room_id, "m.room.message", {}, txn_id="0") != ids[0]


async def test_redactions_name_their_event_where_the_version_wants(
    creator: EventCreator, heard: Heard
) -> None:
    for version, top_level in (("10", True), ("11", False)):
        room_id = await creator.create_room(ALICE, room_version=version)
        target = await creator.send_event(ALICE, room_id, "m.room.message", {"body": "oops"})
        await creator.send_event(ALICE, room_id, "m.room.redaction", {"redacts": target})
        redaction = heard.in_room(room_id)[-1]
        assert redaction.redacts == target
        assert ("redacts" in redaction.json) is top_level


async def test_bad_sends_are_refused(
    storage: Storage, creator: EventCreator, heard: Heard, db_path: Path
) -> None:
    room_id = await creator.create_room(ALICE)
    count = _event_count(db_path)
    cases: list[tuple[str, dict[str, Any], str]] = [
        (ZED, {}, "M_FORBIDDEN"),
        (ALICE, {"content": ["not", "an", "object"]}, "M_INVALID_PARAM"),
        (ALICE, {"event_type": ""}, "M_INVALID_PARAM"),
        (ALICE, {"room_id": "!unknown:example.org"}, "M_NOT_FOUND"),
        (ALICE, {"content": {"n": 2**60}}, "M_BAD_JSON"),
    ]
    for sender, change, errcode in cases:
        args: dict[str, Any] = {
            "room_id": room_id,
            "event_type": "m.room.message",
            "content": {},
        } | change
        with pytest.raises(MatrixError) as caught:
            await creator.send_event(sender, args["room_id"], args["event_type"], args["content"])
        assert caught.value.errcode == errcode, (change, caught.value)
    assert _event_count(db_path) == count


@pytest.mark.parametrize(
    "content",
    [
        # No allow list: the spec warns that this denies every server.
        {"deny": ["evil.example"]},
        {"allow": []},
        # This server's host, its port aside, and globs matching it.
        {"allow": ["*"], "deny": ["example.org"]},
        {"allow": ["*"], "deny": ["EXAMPLE.*"]},
        {"allow": ["*.example.org"]},
    ],
)
async def test_a_server_acl_denying_this_server_is_refused(
    storage: Storage, heard: Heard, db_path: Path, content: dict[str, Any]
) -> None:
    creator = _creator(storage, heard)
    room_id = await creator.create_room(ALICE)
    count = _event_count(db_path)
    with pytest.raises(MatrixError, match=r"would deny example\.org") as caught:
        await creator.send_event(ALICE, room_id, "m.room.server_acl", content, state_key="")
    assert (caught.value.http_status, caught.value.errcode) == (400, "M_INVALID_PARAM")
    with pytest.raises(MatrixError, match=r"would deny example\.org"):
        await creator.create_room(
            ALICE, initial_state=[{"type": "m.room.server_acl", "content": content}]
        )
    assert _event_count(db_path) == count
    # An ACL's type with another state key is some other state.
    await creator.send_event(ALICE, room_id, "m.room.server_acl", content, state_key="other")


async def test_ip_literals_are_refused_only_to_a_server_named_by_one(
    storage: Storage, heard: Heard
) -> None:
    no_literals = {"allow": ["*"], "allow_ip_literals": False}
    named = _creator(storage, heard)
    room_id = await named.create_room(ALICE)
    await named.send_event(ALICE, room_id, "m.room.server_acl", no_literals, state_key="")
    literal = _creator(storage, heard, server_name="127.0.0.1:8448")
    with pytest.raises(MatrixError, match=r"would deny 127\.0\.0\.1:8448"):
        await literal.create_room(
            "@carol:127.0.0.1:8448",
            initial_state=[{"type": "m.room.server_acl", "content": no_literals}],
        )


async def test_a_server_acl_that_lets_this_server_in_is_sent_and_not_redacted(
    storage: Storage, creator: EventCreator, db_path: Path
) -> None:
    acl = {"allow": ["*"], "deny": ["evil.example"]}
    room_id = await creator.create_room(
        ALICE, initial_state=[{"type": "m.room.server_acl", "content": acl}]
    )
    state = await storage.get_current_state_ids(room_id)
    first = state[("m.room.server_acl", "")]
    second = await creator.send_event(
        ALICE,
        room_id,
        "m.room.server_acl",
        {"allow": ["*.example.org", "example.org"]},
        state_key="",
    )
    count = _event_count(db_path)
    # A redacted ACL keeps no allow list, which denies every server: both
    # the ACL in force and an older one are refused.
    for acl_id in (second, first):
        with pytest.raises(MatrixError, match="may not be redacted") as caught:
            await creator.send_event(ALICE, room_id, "m.room.redaction", {"redacts": acl_id})
        assert (caught.value.http_status, caught.value.errcode) == (403, "M_FORBIDDEN")
    assert _event_count(db_path) == count
    # Other redactions go on, and so does one naming no event here.
    message = await creator.send_event(ALICE, room_id, "m.room.message", {"body": "oops"})
    await creator.send_event(ALICE, room_id, "m.room.redaction", {"redacts": message})
    await creator.send_event(ALICE, room_id, "m.room.redaction", {"redacts": "$unknown"})


async def test_a_room_is_created_once(
    storage: Storage, creator: EventCreator, db_path: Path
) -> None:
    room_id = await creator.create_room(ALICE, room_version="10")
    count = _event_count(db_path)
    # A second create event would pass the rules on its own, and start the room over.
    with pytest.raises(MatrixError, match=r"one m\.room\.create") as caught:
        await creator.send_event(
            ALICE,
            room_id,
            "m.room.create",
            {"room_version": "10", "creator": ALICE},
            state_key="",
        )
    assert caught.value.errcode == "M_FORBIDDEN"
    assert _event_count(db_path) == count


# --- Memberships --------------------------------------------------------------------


@pytest.mark.parametrize("version", ["10", "12"])
async def test_invite_join_leave(
    storage: Storage, creator: EventCreator, heard: Heard, db_path: Path, version: str
) -> None:
    room_id = await creator.create_room(ALICE, room_version=version)
    tip = await storage.get_forward_extremities(room_id)
    count = _event_count(db_path)

    # Not invited to a private room: refused, and nothing written.
    with pytest.raises(AuthError) as caught:
        await creator.join(BOB, room_id)
    assert caught.value.errcode == "M_FORBIDDEN"
    assert caught.value.rule == "member.join.not_invited"
    assert _event_count(db_path) == count
    assert await storage.get_forward_extremities(room_id) == tip

    invite_id = await creator.invite(ALICE, room_id, BOB, reason="come in")
    assert await _membership(storage, room_id, BOB) == "invite"
    join_id = await creator.join(BOB, room_id)
    assert await _membership(storage, room_id, BOB) == "join"
    said = await creator.send_event(BOB, room_id, "m.room.message", {"body": "hello"})
    leave_id = await creator.leave(BOB, room_id)
    assert await _membership(storage, room_id, BOB) == "leave"
    events = heard.in_room(room_id)
    assert [e.event_id for e in events[-4:]] == [invite_id, join_id, said, leave_id]
    assert events[-4].content == {"membership": "invite", "reason": "come in"}
    await _check_written(storage, events)

    # Having left, Bob can no longer talk.
    with pytest.raises(AuthError) as caught:
        await creator.send_event(BOB, room_id, "m.room.message", {"body": "still here?"})
    assert caught.value.rule == "sender_not_joined"


async def test_kick_and_ban_need_power(
    storage: Storage, creator: EventCreator, heard: Heard, db_path: Path
) -> None:
    room_id = await creator.create_room(ALICE, preset="public_chat", room_version="10")
    await creator.join(BOB, room_id)
    await creator.join(CAROL, room_id)
    tip = await storage.get_forward_extremities(room_id)
    count = _event_count(db_path)

    for attempt in (creator.kick, creator.ban):
        with pytest.raises(AuthError) as caught:
            await attempt(BOB, room_id, CAROL)
        assert caught.value.errcode == "M_FORBIDDEN"
        assert caught.value.rule in ("member.leave.kick", "member.ban.power")
    assert _event_count(db_path) == count
    assert await storage.get_forward_extremities(room_id) == tip
    assert await _membership(storage, room_id, CAROL) == "join"

    await creator.kick(ALICE, room_id, CAROL, reason="calm down")
    assert await _membership(storage, room_id, CAROL) == "leave"
    await creator.join(CAROL, room_id)
    await creator.ban(ALICE, room_id, CAROL)
    assert await _membership(storage, room_id, CAROL) == "ban"
    with pytest.raises(AuthError) as caught:
        await creator.join(CAROL, room_id)
    assert caught.value.rule == "member.join.banned"
    with pytest.raises(AuthError):
        await creator.unban(BOB, room_id, CAROL)
    await creator.unban(ALICE, room_id, CAROL)
    assert await _membership(storage, room_id, CAROL) == "leave"
    await creator.join(CAROL, room_id)
    assert await _membership(storage, room_id, CAROL) == "join"
    await _check_written(storage, heard.in_room(room_id))


async def test_non_members_cannot_send(
    storage: Storage, creator: EventCreator, db_path: Path
) -> None:
    room_id = await creator.create_room(ALICE, preset="public_chat")
    count = _event_count(db_path)
    for state_key in (None, ""):
        with pytest.raises(AuthError) as caught:
            await creator.send_event(ERIN, room_id, "m.room.topic", {}, state_key=state_key)
        assert caught.value.errcode == "M_FORBIDDEN"
        assert caught.value.rule == "sender_not_joined"
    assert _event_count(db_path) == count


async def test_join_only_rooms_this_server_is_in(
    storage: Storage, creator: EventCreator, db_path: Path
) -> None:
    with pytest.raises(NotInRoomError) as caught:
        await creator.join(BOB, "!unknown:example.org")
    assert caught.value.errcode == "M_NOT_FOUND"
    assert caught.value.room_id == "!unknown:example.org"

    room_id = await creator.create_room(ALICE, preset="public_chat")
    await creator.leave(ALICE, room_id)
    count = _event_count(db_path)
    # Everyone here has left: the state held here may be stale.
    with pytest.raises(NotInRoomError):
        await creator.join(BOB, room_id)
    assert _event_count(db_path) == count


# --- Invites to other servers --------------------------------------------------------


class RemoteServer:
    """The invitee's server: signs invites it agrees to, as /invite does."""

    def __init__(self, *, refuse: bool = False, sign: bool = True, tamper: bool = False) -> None:
        self.key = generate_signing_key("remote")
        self.refuse = refuse
        self.sign = sign
        self.tamper = tamper
        self.asked: list[Pdu] = []

    async def send_invite(self, event: Pdu) -> Pdu:
        self.asked.append(event)
        if self.refuse:
            raise MatrixError("no invites please", errcode="M_FORBIDDEN", http_status=403)
        full = dict(event.json)
        if self.sign:
            redacted = redact(event.json, event.room_version)
            full["signatures"] = sign_json(redacted, "remote.example", self.key)["signatures"]
        if self.tamper:
            full["content"] = dict(full["content"]) | {"reason": "changed"}
        return Pdu.from_json(full, event.room_version)


async def test_remote_invites_carry_the_invitees_signature(storage: Storage, heard: Heard) -> None:
    # A server that also changes what it was sent: only its signature is kept.
    remote = RemoteServer(tamper=True)
    creator = _creator(storage, heard, remote_inviter=remote)
    room_id = await creator.create_room(ALICE, invite=[ZED], room_version="12")
    invite = heard.in_room(room_id)[-1]
    assert remote.asked[0].event_id == invite.event_id
    row = await storage.get_event(invite.event_id)
    assert row is not None
    stored = Pdu.from_json(row.json, "12")
    assert stored.content == {"membership": "invite"}
    assert stored.json == invite.json
    for server, key in (("remote.example", remote.key), (SERVER, KEY)):
        verify_signed_json(redact(stored.json, "12"), server, get_verify_key(key))

    await creator.invite(ALICE, room_id, "@yan:remote.example")
    assert len(remote.asked) == 2
    # An invite the rules refuse is never sent.
    with pytest.raises(AuthError):
        await creator.invite(ERIN, room_id, "@xia:remote.example")
    assert len(remote.asked) == 2


@pytest.mark.parametrize(
    ("remote", "errcode"),
    [
        (None, "M_UNKNOWN"),
        (RemoteServer(refuse=True), "M_FORBIDDEN"),
        (RemoteServer(sign=False), "M_UNKNOWN"),
    ],
)
async def test_remote_invites_that_fail_write_nothing(
    storage: Storage, heard: Heard, db_path: Path, remote: RemoteServer | None, errcode: str
) -> None:
    creator = _creator(storage, heard, remote_inviter=remote)
    room_id = await creator.create_room(ALICE)
    count = _event_count(db_path)
    with pytest.raises(MatrixError) as caught:
        await creator.invite(ALICE, room_id, ZED)
    assert caught.value.errcode == errcode
    assert _event_count(db_path) == count
    # Sent as plain member state it goes the same way.
    with pytest.raises(MatrixError) as caught:
        await creator.send_event(
            ALICE, room_id, "m.room.member", {"membership": "invite"}, state_key=ZED
        )
    assert caught.value.errcode == errcode
    assert _event_count(db_path) == count


# --- One room at a time, rooms side by side -------------------------------------------


async def test_concurrent_sends_form_one_chain(
    storage: Storage, creator: EventCreator, heard: Heard
) -> None:
    room_id = await creator.create_room(ALICE)
    before = len(heard.in_room(room_id))

    async def send(i: int) -> None:
        await creator.send_event(ALICE, room_id, "m.room.message", {"body": str(i)})

    async with trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(send, i)
    events = heard.in_room(room_id)
    assert len(events) == before + 30
    await _check_written(storage, events)
    assert await storage.get_forward_extremities(room_id) == {events[-1].event_id}
    assert sorted(e.content["body"] for e in events[before:]) == sorted(map(str, range(30)))


class GatedPersister:
    """Storage's writes, held for the rooms in ``gated`` until ``opened``."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.gated: set[str] = set()
        self.reached = trio.Event()
        self.opened = trio.Event()
        self.calls: list[str] = []
        self.partial: list[bool] = []

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> Mapping[str, int]:
        self.calls.append(events[0].room_id)
        if events[0].room_id in self.gated:
            self.reached.set()
            await self.opened.wait()
        return await self.storage.persist_events(events, current_state_groups=current_state_groups)

    async def store_room(self, room_id: str, room_version: str) -> None:
        await self.storage.store_room(room_id, room_version)

    async def store_state_group(
        self, room_id: str, prev_group: int | None, delta: StateDelta
    ) -> int:
        return await self.storage.store_state_group(room_id, prev_group, delta)


async def test_one_room_waits_while_others_go_on(storage: Storage, heard: Heard) -> None:
    gate = GatedPersister(storage)
    creator = _creator(storage, heard, persister=gate)
    slow = await creator.create_room(ALICE)
    fast = await creator.create_room(ALICE)
    gate.gated.add(slow)
    gate.calls.clear()

    async def send(room_id: str, body: str) -> None:
        await creator.send_event(ALICE, room_id, "m.room.message", {"body": body})

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, slow, "first")
            await gate.reached.wait()
            nursery.start_soon(send, slow, "second")
            # The other room's event is written while the first room's hangs.
            await send(fast, "meanwhile")
            await trio.testing.wait_all_tasks_blocked()
            assert [e.content.get("body") for e in heard.in_room(fast)][-1] == "meanwhile"
            assert gate.calls == [slow, fast]
            assert [e.content.get("body") for e in heard.in_room(slow)][-1] != "first"
            gate.opened.set()
    bodies = [e.content.get("body") for e in heard.in_room(slow)]
    assert bodies[-2:] == ["first", "second"]
    # The second was built after the first was written: one chain.
    await _check_written(storage, heard.in_room(slow))


async def test_local_events_wait_for_the_room_lock_the_server_shares(
    storage: Storage, heard: Heard
) -> None:
    locks = RoomLocks()
    creator = _creator(storage, heard, room_locks=locks)
    room_id = await creator.create_room(ALICE)
    sent: list[str] = []

    async def send() -> None:
        sent.append(await creator.send_event(ALICE, room_id, "m.room.message", {"body": "x"}))

    with trio.fail_after(10):
        # Held as ingestion holds it while writing a remote event.
        async with trio.open_nursery() as nursery, locks.hold(room_id):
            nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == []
            assert len(locks) == 1
    assert len(sent) == 1
    assert len(locks) == 0


async def test_a_cancelled_send_that_began_writing_is_written_and_told(
    storage: Storage, heard: Heard
) -> None:
    gate = GatedPersister(storage)
    creator = _creator(storage, heard, persister=gate)
    room_id = await creator.create_room(ALICE)
    gate.gated.add(room_id)
    scope = trio.CancelScope()

    async def send() -> None:
        with scope:
            await creator.send_event(ALICE, room_id, "m.room.message", {"body": "late"})

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await gate.reached.wait()
            scope.cancel()
            gate.opened.set()
    told = heard.in_room(room_id)[-1]
    assert told.content == {"body": "late"}
    assert await storage.get_forward_extremities(room_id) == {told.event_id}
    # The room's lock was let go: the next send goes ahead.
    await creator.send_event(ALICE, room_id, "m.room.message", {"body": "next"})
    await _check_written(storage, heard.in_room(room_id))


async def test_a_send_cancelled_before_writing_leaves_no_trace(
    storage: Storage, heard: Heard, db_path: Path
) -> None:
    creator = _creator(storage, heard)
    room_id = await creator.create_room(ALICE)
    count = _event_count(db_path)
    with trio.CancelScope() as scope:
        scope.cancel()
        await creator.send_event(ALICE, room_id, "m.room.message", {"body": "never"})
    assert scope.cancelled_caught
    assert _event_count(db_path) == count
    await creator.send_event(ALICE, room_id, "m.room.message", {"body": "next"})
    await _check_written(storage, heard.in_room(room_id))


# --- Messages written together ------------------------------------------------------


async def _waiting_sends(
    creator: EventCreator,
    locks: RoomLocks,
    room_id: str,
    sends: Sequence[tuple[str, str, str | None]],
) -> dict[str, str | BaseException]:
    """Send ``(sender, body, txn_id)`` messages while the room's lock is held
    elsewhere, so that they all wait for it; return each body's event ID or error.
    """
    outcomes: dict[str, str | BaseException] = {}

    async def send(sender: str, body: str, txn_id: str | None) -> None:
        try:
            outcomes[body] = await creator.send_event(
                sender, room_id, "m.room.message", {"body": body}, txn_id=txn_id
            )
        except MatrixError as error:
            outcomes[body] = error

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, locks.hold(room_id):
            for sender, body, txn_id in sends:
                nursery.start_soon(send, sender, body, txn_id)
            # Until every message waits in the room's queue, not in a read.
            while len(creator._queued.get(room_id, ())) < len(sends):
                await trio.testing.wait_all_tasks_blocked()
                await trio.sleep(0.001)
            assert outcomes == {}
    return outcomes


async def test_messages_waiting_for_the_lock_are_written_together(
    storage: Storage, heard: Heard
) -> None:
    locks = RoomLocks()
    gate = GatedPersister(storage)
    creator = _creator(storage, heard, persister=gate, room_locks=locks)
    room_id = await creator.create_room(ALICE, preset="public_chat")
    await creator.join(BOB, room_id)
    gate.calls.clear()
    outcomes = await _waiting_sends(
        creator, locks, room_id, [(ALICE if n % 2 else BOB, str(n), None) for n in range(8)]
    )
    # One write for all eight, each built on the one before.
    assert gate.calls == [room_id]
    told = heard.in_room(room_id)
    assert sorted(e.event_id for e in told[-8:]) == sorted(str(o) for o in outcomes.values())
    await _check_written(storage, told)
    assert await storage.get_forward_extremities(room_id) == {told[-1].event_id}
    orderings = [ordering for event, ordering in heard.events if event.room_id == room_id]
    assert orderings == sorted(orderings)


class HeardTogether(Heard):
    """A batch notifier that also keeps what it is told of the room's state."""

    def __init__(self) -> None:
        super().__init__()
        self.told: list[tuple[int, int | None, bool]] = []

    async def on_new_events(
        self,
        events: Sequence[tuple[Pdu, int]],
        *,
        state_group: int | None = None,
        full_state: bool = False,
    ) -> None:
        self.events.extend(events)
        self.told.append((len(events), state_group, full_state))


async def test_messages_written_together_name_the_room_s_current_state(
    storage: Storage,
) -> None:
    locks = RoomLocks()
    heard = HeardTogether()
    creator = _creator(storage, heard, room_locks=locks)
    room_id = await creator.create_room(ALICE, preset="public_chat")
    await creator.join(BOB, room_id)
    heard.told.clear()
    await _waiting_sends(creator, locks, room_id, [(ALICE, "a", None), (BOB, "b", None)])
    # Messages leave the state as it was: the current state is the group
    # of the join before them, which the room servers may key on.
    join = heard.in_room(room_id)[-3]
    groups = await storage.get_event_state_groups(join.event_id)
    assert groups is not None
    assert heard.told == [(2, groups.after, True)]


async def test_a_refused_message_fails_alone(storage: Storage, heard: Heard) -> None:
    locks = RoomLocks()
    creator = _creator(storage, heard, room_locks=locks)
    room_id = await creator.create_room(ALICE, preset="public_chat")
    outcomes = await _waiting_sends(
        creator, locks, room_id, [(ALICE, "a", None), (CAROL, "c", None), (ALICE, "b", None)]
    )
    refused = outcomes["c"]
    assert isinstance(refused, AuthError)
    assert refused.http_status == 403
    bodies = [str(e.content.get("body")) for e in heard.in_room(room_id)]
    assert sorted(bodies[-2:]) == ["a", "b"]
    assert "c" not in bodies
    await _check_written(storage, heard.in_room(room_id))


async def test_one_transaction_sent_twice_together_is_one_event(
    storage: Storage, heard: Heard, db_path: Path
) -> None:
    locks = RoomLocks()
    creator = _creator(storage, heard, room_locks=locks)
    room_id = await creator.create_room(ALICE)
    count = _event_count(db_path)
    outcomes = await _waiting_sends(
        creator, locks, room_id, [(ALICE, "once", "t1"), (ALICE, "twice", "t1")]
    )
    assert outcomes["once"] == outcomes["twice"]
    assert _event_count(db_path) == count + 1


async def test_a_queued_message_given_up_is_not_sent(
    storage: Storage, heard: Heard, db_path: Path
) -> None:
    locks = RoomLocks()
    creator = _creator(storage, heard, room_locks=locks)
    room_id = await creator.create_room(ALICE)
    count = _event_count(db_path)
    scope = trio.CancelScope()
    sent: list[str] = []

    async def send(body: str, cancel: trio.CancelScope | None) -> None:
        with cancel or trio.CancelScope():
            sent.append(await creator.send_event(ALICE, room_id, "m.room.message", {"body": body}))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, locks.hold(room_id):
            nursery.start_soon(send, "given up", scope)
            nursery.start_soon(send, "kept", None)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
    assert len(sent) == 1
    assert [e.content.get("body") for e in heard.in_room(room_id)][-1] == "kept"
    assert _event_count(db_path) == count + 1
    assert len(locks) == 0


class FailingWrites(GatedPersister):
    """Storage whose writes of events fail while ``failing`` is set."""

    failing = False

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> Mapping[str, int]:
        self.calls.append(events[0].room_id)
        print("PERSIST", [e.type for e in events], self.failing)
        if self.failing:
            raise MatrixError("the disk is full", errcode="M_UNKNOWN", http_status=500)
        return await self.storage.persist_events(events, current_state_groups=current_state_groups)


async def test_messages_whose_write_failed_are_not_followed(storage: Storage, heard: Heard) -> None:
    locks = RoomLocks()
    failing = FailingWrites(storage)
    creator = _creator(storage, heard, persister=failing, room_locks=locks)
    room_id = await creator.create_room(ALICE)
    failing.failing = True
    failing.calls.clear()
    sends = [(ALICE, "a", None), (ALICE, "b", None)]
    outcomes = await _waiting_sends(creator, locks, room_id, sends)
    assert all(isinstance(outcome, MatrixError) for outcome in outcomes.values()), outcomes
    assert failing.calls == [room_id]
    failing.failing = False
    # The next message follows what was written, not the messages that were not.
    await creator.send_event(ALICE, room_id, "m.room.message", {"body": "c"})
    await _check_written(storage, heard.in_room(room_id))
    assert [e.content.get("body") for e in heard.in_room(room_id)][-1] == "c"


class Conflicting(GatedPersister):
    """Storage whose first ``times`` writes of events meet the
    partial-state conflict (every write, with ``times`` None).
    """

    def __init__(self, storage: Storage, times: int | None = None) -> None:
        super().__init__(storage)
        self.times = times

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> Mapping[str, int]:
        self.calls.append(events[0].room_id)
        if self.times is None or len(self.calls) <= self.times:
            raise PartialStateConflictError()
        return await self.storage.persist_events(events, current_state_groups=current_state_groups)


async def test_messages_written_together_that_conflict_are_checked_again_one_by_one(
    storage: Storage, heard: Heard
) -> None:
    locks = RoomLocks()
    creator = _creator(storage, heard, room_locks=locks)
    room_id = await creator.create_room(ALICE)
    conflicting = Conflicting(storage, times=1)
    creator = _creator(storage, heard, persister=conflicting, room_locks=locks)
    outcomes = await _waiting_sends(
        creator, locks, room_id, [(ALICE, "a", None), (ALICE, "b", None), (ALICE, "c", None)]
    )
    # One write of the three, then one write each.
    assert conflicting.calls == [room_id] * 4
    told = heard.in_room(room_id)
    assert {str(e.content.get("body")): e.event_id for e in told[-3:]} == outcomes
    await _check_written(storage, told)


# --- Messages built while the ones before are written ------------------------------


class HeldWrites(GatedPersister):
    """Storage whose first write of the room's events waits for ``opened``,
    then fails if ``failing``; the events of every write are kept.
    """

    failing = False

    def __init__(self, storage: Storage) -> None:
        super().__init__(storage)
        self.written: list[list[EventToPersist]] = []

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> Mapping[str, int]:
        self.written.append(list(events))
        if len(self.written) == 1:
            self.reached.set()
            await self.opened.wait()
            if self.failing:
                raise MatrixError("the disk is full", errcode="M_UNKNOWN", http_status=500)
        return await self.storage.persist_events(events, current_state_groups=current_state_groups)


async def _sends_during_a_held_write(
    creator: EventCreator, held: HeldWrites, room_id: str
) -> dict[str, str | BaseException]:
    """Send "a", and "b" and "c" while a's write is held; once b and c
    have been taken off the queue, let the write go on. Return each body's
    event ID or error.
    """
    outcomes: dict[str, str | BaseException] = {}

    async def send(body: str) -> None:
        try:
            outcomes[body] = await creator.send_event(
                ALICE, room_id, "m.room.message", {"body": body}
            )
        except MatrixError as error:
            outcomes[body] = error

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "a")
            await held.reached.wait()
            nursery.start_soon(send, "b")
            nursery.start_soon(send, "c")
            await trio.testing.wait_all_tasks_blocked()
            # Taken and built on "a" while its write is still on its way.
            assert room_id not in creator._queued
            assert len(held.written) == 1
            held.opened.set()
    return outcomes


async def test_messages_that_come_during_a_write_are_built_on_it(
    storage: Storage, heard: Heard
) -> None:
    held = HeldWrites(storage)
    creator = _creator(storage, heard, persister=held)
    room_id = await _creator(storage, heard).create_room(ALICE)
    outcomes = await _sends_during_a_held_write(creator, held, room_id)
    # Two writes: "a", then "b" and "c" together, a chain.
    assert [sorted(e.event_id for e in write) for write in held.written] == [
        [outcomes["a"]],
        sorted([str(outcomes["b"]), str(outcomes["c"])]),
    ]
    told = heard.in_room(room_id)
    assert [e.content.get("body") for e in told[-3:]] in (["a", "b", "c"], ["a", "c", "b"])
    await _check_written(storage, told)
    assert await storage.get_forward_extremities(room_id) == {told[-1].event_id}


async def test_messages_sent_together_parse_the_room_s_auth_events_once(
    storage: Storage, heard: Heard, monkeypatch: pytest.MonkeyPatch
) -> None:
    locks = RoomLocks()
    creator = _creator(storage, heard, room_locks=locks)
    room_id = await creator.create_room(ALICE, preset="public_chat")
    await creator.join(BOB, room_id)
    parsed: list[str] = []
    original = Pdu.from_json

    def counting(data: Any, room_version: Any, *, check_limits: bool = True) -> Pdu:
        event = original(data, room_version, check_limits=check_limits)
        parsed.append(event.event_id)
        return event

    monkeypatch.setattr(Pdu, "from_json", counting)
    outcomes = await _waiting_sends(
        creator, locks, room_id, [(ALICE if n % 2 else BOB, str(n), None) for n in range(6)]
    )
    assert all(isinstance(outcome, str) for outcome in outcomes.values())
    told = heard.in_room(room_id)
    cited = {auth_id for event in told[-6:] for auth_id in event.auth_event_ids}
    # The power levels and two joins (and the create event before v12):
    # each parsed once, not once per message that cites it.
    assert len(cited) >= 3
    assert {event_id: parsed.count(event_id) for event_id in cited} == dict.fromkeys(cited, 1)
    await _check_written(storage, told)


async def test_messages_built_on_a_write_that_failed_are_built_again(
    storage: Storage, heard: Heard, db_path: Path
) -> None:
    held = HeldWrites(storage)
    held.failing = True
    creator = _creator(storage, heard, persister=held)
    room_id = await _creator(storage, heard).create_room(ALICE)
    before = await storage.get_forward_extremities(room_id)
    count = _event_count(db_path)
    outcomes = await _sends_during_a_held_write(creator, held, room_id)
    refused = outcomes["a"]
    assert isinstance(refused, MatrixError)
    assert refused.http_status == 500
    [failed] = held.written[0]
    # "b" was first built on "a"; it is written built again on what the
    # room held, never on the event that was not written.
    assert held.written[1][0].prev_event_ids != (failed.event_id,)
    written = held.written[-1]
    assert sorted(e.event_id for e in written) == sorted([str(outcomes["b"]), str(outcomes["c"])])
    assert written[0].prev_event_ids == tuple(before)
    assert _event_count(db_path) == count + 2
    assert not await storage.get_events([failed.event_id])
    told = heard.in_room(room_id)
    assert sorted(str(e.content.get("body")) for e in told[-2:]) == ["b", "c"]
    await _check_written(storage, told[-2:])
    assert await storage.get_forward_extremities(room_id) == {told[-1].event_id}


async def test_messages_built_on_a_write_that_conflicted_are_built_again(
    storage: Storage, heard: Heard
) -> None:
    class ConflictingLate(HeldWrites):
        async def persist_events(
            self,
            events: Sequence[EventToPersist],
            *,
            current_state_groups: Mapping[str, int] | None = None,
        ) -> Mapping[str, int]:
            if not self.written:
                self.written.append(list(events))
                self.reached.set()
                await self.opened.wait()
                raise PartialStateConflictError()
            self.written.append(list(events))
            return await self.storage.persist_events(
                events, current_state_groups=current_state_groups
            )

    held = ConflictingLate(storage)
    creator = _creator(storage, heard, persister=held)
    room_id = await _creator(storage, heard).create_room(ALICE)
    outcomes = await _sends_during_a_held_write(creator, held, room_id)
    # "a" is checked again and written alone; "b" and "c" built again after it.
    assert [sorted(e.event_id for e in write) for write in held.written] == [
        [outcomes["a"]],
        [outcomes["a"]],
        sorted([str(outcomes["b"]), str(outcomes["c"])]),
    ]
    told = heard.in_room(room_id)
    assert [e.content.get("body") for e in told[-3:]] in (["a", "b", "c"], ["a", "c", "b"])
    await _check_written(storage, told)


# --- Conflicts with the un-partial-state task ----------------------------------------


async def _partial_join(storage: Storage) -> tuple[RoomBuilder, str]:
    """A room of example.org that Dave of other.example joined with partial state."""
    room = RoomBuilder()
    room.public_room(BOB, CAROL, users={BOB: 50})
    state = dict(room.state_after[room.last])
    join = room.member(DAVE, "join")
    for event_id in state.values():
        await ingest(storage, room.events[event_id], outlier=True)
    await storage.store_partial_join(
        room.room_id, "10", join.event_id, "example.org", {"example.org"}
    )
    outcome = await ingest(storage, join, state_ids_before=state, partial_state=True)
    assert outcome.failure is None
    assert outcome.context.partial_state
    return room, join.event_id


class ResyncingPersister(GatedPersister):
    """Finishes the room's resync just before the first write: the
    un-partial-state task winning the race. Storage then refuses the write.
    """

    def __init__(self, storage: Storage, join_id: str) -> None:
        super().__init__(storage)
        self.join_id = join_id

    async def persist_events(
        self,
        events: Sequence[EventToPersist],
        *,
        current_state_groups: Mapping[str, int] | None = None,
    ) -> Mapping[str, int]:
        context = events[0].context
        self.partial.append(context is not None and context.partial_state)
        if not self.calls:
            groups = await self.storage.get_event_state_groups(self.join_id)
            assert groups is not None
            await self.storage.update_state_for_partial_event(
                self.join_id, groups.before, groups.after
            )
            assert await self.storage.clear_partial_state(events[0].room_id)
        self.calls.append(events[0].room_id)
        return await self.storage.persist_events(events, current_state_groups=current_state_groups)


async def test_a_conflict_is_retried_with_a_new_context(storage: Storage, heard: Heard) -> None:
    room, join_id = await _partial_join(storage)
    persister = ResyncingPersister(storage, join_id)
    creator = _creator(storage, heard, persister=persister, server_name="other.example")
    event_id = await creator.send_event(DAVE, room.room_id, "m.room.message", {"body": "hi"})

    assert persister.calls == [room.room_id, room.room_id]
    # The second write carried a context computed again, with full state.
    assert persister.partial == [True, False]
    assert [e.event_id for e, _ in heard.events] == [event_id]
    assert await storage.get_partial_state_event_ids([event_id]) == set()
    assert await storage.get_forward_extremities(room.room_id) == {event_id}
    row = await storage.get_event(event_id)
    assert row is not None
    assert row.rejected_reason is None


async def test_a_second_conflict_asks_the_client_to_retry(
    storage: Storage, heard: Heard, db_path: Path
) -> None:
    room, _ = await _partial_join(storage)
    persister = Conflicting(storage)
    creator = _creator(
        storage,
        heard,
        persister=persister,
        server_name="other.example",
        conflict_retry_after_ms=750,
    )
    tip = await storage.get_forward_extremities(room.room_id)
    count = _event_count(db_path)
    with pytest.raises(LimitExceededError) as caught:
        await creator.send_event(DAVE, room.room_id, "m.room.message", {"body": "hi"})
    assert caught.value.errcode == "M_LIMIT_EXCEEDED"
    assert caught.value.http_status == 429
    assert caught.value.retry_after_ms == 750
    assert caught.value.to_json()["retry_after_ms"] == 750
    assert persister.calls == [room.room_id, room.room_id]
    assert heard.events == []
    assert _event_count(db_path) == count
    assert await storage.get_forward_extremities(room.room_id) == tip


async def test_power_levels_no_one_could_send_are_a_bad_request(
    storage: Storage, creator: EventCreator, db_path: Path
) -> None:
    """Power levels listing a v12 room's creator, or with a level that is
    not an integer or a key that is not a user ID, fail the auth rules for
    whoever sends them: the request is malformed (400), not one the sender
    lacks the power for (403). Still an AuthError, so callers that skip an
    event the rules refuse still do."""
    room_id = await creator.create_room(
        ALICE, preset="public_chat", creation_content={"additional_creators": [BOB]}
    )
    await creator.join(BOB, room_id)
    count = _event_count(db_path)
    for users in ({ALICE: 100}, {BOB: 100}, {CAROL: "fifty"}, {"carol": 50}):
        with pytest.raises(AuthError) as caught:
            await creator.send_event(
                ALICE, room_id, "m.room.power_levels", {"users": users}, state_key=""
            )
        assert (caught.value.http_status, caught.value.errcode) == (400, "M_BAD_JSON"), users
    assert _event_count(db_path) == count
    # Without the power to change them, the refusal is still 403.
    await creator.join(CAROL, room_id)
    with pytest.raises(AuthError) as caught:
        await creator.send_event(
            CAROL, room_id, "m.room.power_levels", {"users": {CAROL: 100}}, state_key=""
        )
    assert (caught.value.http_status, caught.value.errcode) == (403, "M_FORBIDDEN")


async def test_local_joins_and_kicks_read_no_whole_state(
    tmp_path: Path, nursery: trio.Nursery, heard: Heard
) -> None:
    # Whether this server is in the room and the target's membership are
    # asked narrowly: in a big room, reading its whole state for each local
    # join or kick made joining it cost as much as its membership.
    counting = CountingStorage(tmp_path / "counting.db")
    await nursery.start(counting.run)
    creator = _creator(counting, heard)
    room_id = await creator.create_room(ALICE, preset="public_chat")
    users = [f"@user{n}:{SERVER}" for n in range(20)]
    for user in users:
        await creator.join(user, room_id)
    counting.state_reads = counting.current_state_reads = 0
    await creator.join(f"@late:{SERVER}", room_id)
    await creator.kick(ALICE, room_id, users[0])
    assert (counting.state_reads, counting.current_state_reads) == (0, 0)
    state = await counting.get_current_state_ids(room_id)
    kicked = await counting.get_events([state[("m.room.member", users[0])]])
    assert b'"leave"' in next(iter(kicked.values())).json
    with pytest.raises(MatrixError, match="is not in"):
        await creator.kick(ALICE, room_id, f"@stranger:{SERVER}")
