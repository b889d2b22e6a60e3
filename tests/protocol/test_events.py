import json
from pathlib import Path
from typing import Any

import pytest

from ranvier.errors import BadJsonError, EventTooLargeError, UnsupportedRoomVersionError
from ranvier.protocol.events import Pdu
from ranvier.protocol.room_versions import KNOWN_ROOM_VERSIONS

DATA = Path(__file__).parent.parent / "data"
REFERENCE_CASES = json.loads(
    (DATA / "spec-vectors" / "derived" / "reference-hashes.json").read_text("utf-8")
)["cases"]


def _message(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "origin_server_ts": 1_700_000_000_000,
        "depth": 5,
        "prev_events": ["$prev"],
        "auth_events": ["$create", "$join"],
        "content": {"msgtype": "m.text", "body": "hi"},
        "hashes": {"sha256": "AAAA"},
        "signatures": {"example.org": {"ed25519:1": "SIG"}},
    }
    event.update(overrides)
    return event


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=lambda c: c["name"])
def test_event_ids_of_the_reference_vectors(case: dict[str, Any]) -> None:
    if not KNOWN_ROOM_VERSIONS[case["room_version"]].supported:
        with pytest.raises(UnsupportedRoomVersionError):
            Pdu.from_json(case["signed_event"], case["room_version"])
        return
    raw = json.dumps(case["signed_event"], indent=1).encode()
    pdu = Pdu.from_json(raw, case["room_version"])
    assert pdu.event_id == case["event_id"]
    assert pdu.raw == raw
    assert pdu.json == case["signed_event"]
    assert pdu.room_id == case.get("room_id", case["signed_event"].get("room_id"))


def test_typed_view_of_a_member_event() -> None:
    case = REFERENCE_CASES[-1]
    pdu = Pdu.from_json(case["signed_event"], "12")
    assert pdu.type == "m.room.member"
    assert pdu.state_key == "@alice:domain"
    assert pdu.is_state()
    assert pdu.membership == "join"
    assert pdu.sender == "@alice:domain"
    assert pdu.prev_event_ids == ("$sSsp4EyaZQx79eZbP0XCPWODnf59hLuJ-3ot0UDCjcQ",)
    assert pdu.auth_event_ids == ()
    assert pdu.depth == 2
    assert pdu.origin_server_ts == 1700000000001
    assert pdu.hashes == case["signed_event"]["hashes"]
    assert pdu.signatures == case["signed_event"]["signatures"]
    assert pdu.unsigned == {}
    assert pdu.redacts is None
    assert pdu.content is pdu.json["content"]


def test_message_is_not_state_and_has_no_membership() -> None:
    pdu = Pdu.from_json(_message(unsigned={"age": 3}), "10")
    assert not pdu.is_state()
    assert pdu.state_key is None
    assert pdu.membership is None
    assert pdu.unsigned == {"age": 3}


def test_redacts_moves_into_content_in_v11() -> None:
    before = Pdu.from_json(_message(type="m.room.redaction", redacts="$target"), "10")
    assert before.redacts == "$target"
    after = Pdu.from_json(
        _message(type="m.room.redaction", content={"redacts": "$target"}, redacts="$old"), "11"
    )
    assert after.redacts == "$target"


def test_equality_and_hash_follow_the_event_id() -> None:
    a = Pdu.from_json(_message(), "10")
    b = Pdu.from_json(json.dumps(_message(), indent=2), "10")
    c = Pdu.from_json(_message(depth=6), "10")
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2


def test_view_is_read_only() -> None:
    pdu = Pdu.from_json(_message(), "10")
    with pytest.raises(AttributeError):
        pdu.type = "m.room.topic"  # type: ignore[misc]


@pytest.mark.parametrize("room_version", ["1", "3", "5", "13"])
def test_unsupported_room_versions_are_refused(room_version: str) -> None:
    with pytest.raises(UnsupportedRoomVersionError):
        Pdu.from_json(_message(), room_version)


def test_missing_field_is_named() -> None:
    event = _message()
    del event["depth"]
    with pytest.raises(BadJsonError, match="depth"):
        Pdu.from_json(event, "10")


def test_too_many_prev_events_unless_backfilled() -> None:
    event = _message(prev_events=[f"$p{i}" for i in range(21)])
    with pytest.raises(EventTooLargeError, match="prev_events"):
        Pdu.from_json(event, "10")
    assert len(Pdu.from_json(event, "10", check_limits=False).prev_event_ids) == 21
