"""Knocking on a room this server is not in, through a stand-in for a
server in it: the servers tried and in what order, the knock signed here,
kept as an outlier with the stripped state answered, and what is refused.
Knocks on rooms here, and the handshake over real HTTP, are tested in
tests/api/test_knock.py and test_knock_federation.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import pytest
from _rooms import local_creator

from ranvier.core.creation import EventCreator
from ranvier.core.knocks import KNOCK_ROOM_STATE, RoomKnocks, knock_servers
from ranvier.errors import MatrixError
from ranvier.protocol.events import Pdu
from ranvier.protocol.redaction import redact
from ranvier.protocol.signing import generate_signing_key, get_verify_key, verify_signed_json
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder
from ranvier.testing.keys import KnownKeys

SERVER = "example.org"
KEY = generate_signing_key("1")
BOB = "@bob:example.org"
ZED = "@zed:resident.example"
NOW = 1_800_000_000_000


class Resident:
    """A server in the room: answers each destination as ``answers`` says
    (an error raised, or the templates and state of ``room``)."""

    def __init__(self, room: RoomBuilder) -> None:
        self.room = room
        self.refusals: dict[str, MatrixError] = {}
        self.template_changes: dict[str, Any] = {}
        self.room_version: str = room.version
        self.state: Any = [dict(event.json) for event in room.state_events().values()] + [
            "not an event",
            {"type": "m.room.name"},
        ]
        self.asked: list[tuple[str, tuple[str, ...]]] = []
        self.received: list[tuple[str, Mapping[str, Any]]] = []

    async def make_knock(
        self, destination: str, room_id: str, user_id: str, room_versions: Sequence[str]
    ) -> Any:
        self.asked.append((destination, tuple(room_versions)))
        if destination in self.refusals:
            raise self.refusals[destination]
        draft = self.room.draft_member(user_id, "knock")
        event = {k: v for k, v in draft.json.items() if k not in ("hashes", "signatures")}
        return {"room_version": self.room_version, "event": event | self.template_changes}

    async def send_knock(
        self, destination: str, room_id: str, event_id: str, event: Mapping[str, Any]
    ) -> Any:
        self.received.append((destination, event))
        return {KNOCK_ROOM_STATE: self.state}


@pytest.fixture
def creator(storage: Storage) -> EventCreator:
    return local_creator(storage, SERVER, KEY)


def _room() -> RoomBuilder:
    keys = {"resident.example": generate_signing_key("k"), SERVER: KEY}
    room = RoomBuilder("10", ZED, keys=keys, room_id="!door:named.example")
    room.public_room()
    room.join_rules(ZED, "knock")
    return room


def _knocks(storage: Storage, creator: EventCreator, resident: Resident) -> RoomKnocks:
    return RoomKnocks(
        server_name=SERVER,
        signing_key=KEY,
        creator=creator,
        memberships=storage.room_members,
        persister=storage,
        client=resident,
        clock=lambda: NOW,
    )


async def test_a_knock_is_signed_here_sent_and_kept_with_the_state_answered(
    storage: Storage, creator: EventCreator
) -> None:
    room = _room()
    resident = Resident(room)
    knocks = _knocks(storage, creator, resident)
    answer = await knocks.knock(BOB, room.room_id, ["resident.example"], reason="hi")
    assert answer == room.room_id
    # Only the versions with knocking are offered.
    ((destination, offered),) = resident.asked
    assert destination == "resident.example"
    assert "7" in offered
    assert "10" in offered
    assert "12" in offered
    assert "6" not in offered
    assert "1" not in offered
    ((_, sent),) = resident.received
    assert sent["content"] == {"membership": "knock", "reason": "hi"}
    assert sent["origin_server_ts"] == NOW
    assert "unsigned" not in sent
    verify_signed_json(redact(sent, "10"), SERVER, get_verify_key(KEY))

    event_id = await storage.room_members.get_latest_membership_event_id(BOB, room.room_id)
    assert event_id is not None
    stored = (await storage.get_events([event_id]))[event_id]
    assert stored.outlier
    kept = msgspec.json.decode(stored.json)
    # Cut down to stripped state; entries that are not events left out.
    state = kept["unsigned"][KNOCK_ROOM_STATE]
    assert len(state) == len(room.state_events())
    assert all(set(event) == {"type", "state_key", "content", "sender"} for event in state)
    join_rules = {
        "type": "m.room.join_rules",
        "state_key": "",
        "content": {"join_rule": "knock"},
        "sender": ZED,
    }
    assert join_rules in state
    # The stored event is the one signed and sent, with the state beside it.
    assert {k: v for k, v in kept.items() if k != "unsigned"} == sent
    pdu = Pdu.from_json(stored.json, "10")
    assert knock_servers(pdu) == ["resident.example", "named.example"]


async def test_servers_are_tried_in_turn_until_one_answers(
    storage: Storage, creator: EventCreator
) -> None:
    room = _room()
    resident = Resident(room)
    resident.refusals = {
        "first.example": MatrixError("gone", errcode="M_UNKNOWN", http_status=502),
        "second.example": MatrixError("not here", errcode="M_NOT_FOUND", http_status=404),
    }
    knocks = _knocks(storage, creator, resident)
    # Our own name and repeats are skipped; the room ID's server comes last.
    await knocks.knock(
        BOB, room.room_id, ["first.example", SERVER, "second.example", "first.example"]
    )
    assert [server for server, _ in resident.asked] == [
        "first.example",
        "second.example",
        "named.example",
    ]
    assert [server for server, _ in resident.received] == ["named.example"]
    # The server that took the knock is recorded with it: only its
    # refusal of the knock is believed.
    event_id = await storage.room_members.get_latest_membership_event_id(BOB, room.room_id)
    assert event_id is not None
    assert await storage.room_members.get_knock_server(event_id) == "named.example"


async def test_a_refusal_is_given_back_and_nothing_is_kept(
    storage: Storage, creator: EventCreator
) -> None:
    room = _room()
    resident = Resident(room)
    resident.refusals = {
        "named.example": MatrixError("no knocking", errcode="M_FORBIDDEN", http_status=403)
    }
    knocks = _knocks(storage, creator, resident)
    with pytest.raises(MatrixError) as caught:
        await knocks.knock(BOB, room.room_id, ["named.example", "other.example"])
    assert (caught.value.errcode, caught.value.http_status) == ("M_FORBIDDEN", 403)
    assert [server for server, _ in resident.asked] == ["named.example"]
    assert await storage.room_members.get_latest_membership_event_id(BOB, room.room_id) is None


async def test_every_server_failing_is_a_bad_gateway(
    storage: Storage, creator: EventCreator
) -> None:
    room = _room()
    resident = Resident(room)
    resident.refusals = {
        "named.example": MatrixError("down", errcode="M_UNKNOWN", http_status=503),
        "other.example": MatrixError("slow down", errcode="M_LIMIT_EXCEEDED", http_status=429),
    }
    with pytest.raises(MatrixError) as caught:
        await _knocks(storage, creator, resident).knock(BOB, room.room_id, ["other.example"])
    assert caught.value.http_status == 502
    assert "other.example" in caught.value.message
    assert "named.example" in caught.value.message


@pytest.mark.parametrize(
    "changes",
    [
        {"sender": "@carol:example.org"},
        {"state_key": "@carol:example.org"},
        {"type": "m.room.message"},
        {"room_id": "!other:named.example"},
    ],
)
async def test_a_template_that_is_not_our_knock_is_refused(
    storage: Storage, creator: EventCreator, changes: dict[str, Any]
) -> None:
    room = _room()
    resident = Resident(room)
    resident.template_changes = changes
    with pytest.raises(MatrixError) as caught:
        await _knocks(storage, creator, resident).knock(BOB, room.room_id)
    assert caught.value.http_status == 502
    assert resident.received == []
    assert await storage.room_members.get_latest_membership_event_id(BOB, room.room_id) is None


@pytest.mark.parametrize("version", ["6", "no-such-version", None])
async def test_a_room_version_without_knocking_is_refused(
    storage: Storage, creator: EventCreator, version: str | None
) -> None:
    room = _room()
    resident = Resident(room)
    resident.room_version = version  # type: ignore[assignment]
    with pytest.raises(MatrixError) as caught:
        await _knocks(storage, creator, resident).knock(BOB, room.room_id)
    assert (caught.value.errcode, caught.value.http_status) == ("M_INCOMPATIBLE_ROOM_VERSION", 400)
    assert resident.received == []


async def test_only_local_users_knock_and_some_server_is_needed(
    storage: Storage, creator: EventCreator
) -> None:
    room = _room()
    resident = Resident(room)
    knocks = _knocks(storage, creator, resident)
    with pytest.raises(MatrixError) as caught:
        await knocks.knock("@eve:elsewhere.example", room.room_id, ["resident.example"])
    assert (caught.value.errcode, caught.value.http_status) == ("M_FORBIDDEN", 403)
    with pytest.raises(MatrixError) as caught:
        await knocks.knock(BOB, "!serverless", [SERVER])
    assert (caught.value.errcode, caught.value.http_status) == ("M_NOT_FOUND", 404)
    assert resident.asked == []


async def test_knock_room_state_entries_not_validly_signed_are_dropped(
    storage: Storage, creator: EventCreator
) -> None:
    resident_key = generate_signing_key("k")
    room = RoomBuilder("12", ZED, keys={"resident.example": resident_key, SERVER: KEY})
    room.public_room()
    room.join_rules(ZED, "knock")
    topic = room.topic(ZED, "the real topic")
    other = RoomBuilder("12", ZED, keys={"resident.example": resident_key})
    other.public_room()
    forged_topic = dict(topic.json) | {"content": {"topic": "a forged topic"}}
    unsigned_topic = dict(topic.json) | {"signatures": {}}
    resident = Resident(room)
    valid = [dict(event.json) for event in room.state_events().values()]
    resident.state = [
        *valid,
        forged_topic,
        unsigned_topic,
        dict(other.create.json),  # another room's
        {"type": "m.room.name", "state_key": "", "content": {"name": "x"}, "sender": ZED},
    ]
    knocks = RoomKnocks(
        server_name=SERVER,
        signing_key=KEY,
        creator=creator,
        memberships=storage.room_members,
        persister=storage,
        client=resident,
        clock=lambda: NOW,
        keys=KnownKeys({"resident.example": resident_key}),
    )
    await knocks.knock(BOB, room.room_id, ["resident.example"])
    event_id = await storage.room_members.get_latest_membership_event_id(BOB, room.room_id)
    assert event_id is not None
    kept = msgspec.json.decode((await storage.get_events([event_id]))[event_id].json)
    state = kept["unsigned"][KNOCK_ROOM_STATE]
    stripped = [
        {k: event[k] for k in ("type", "state_key", "content", "sender")} for event in valid
    ]
    assert state == stripped
    assert {"topic": "the real topic"} in [event["content"] for event in state]
