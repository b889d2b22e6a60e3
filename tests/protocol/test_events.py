import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ranvier.errors import BadJsonError, EventTooLargeError, UnsupportedRoomVersionError
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.events import MAX_EVENT_BYTES, MAX_ID_BYTES, Pdu, pdu_room_id
from ranvier.protocol.hashing import (
    compute_content_hash,
    compute_event_id,
    compute_room_id,
    content_hash_matches,
    encode_signed_form,
)
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


@pytest.mark.parametrize(
    "case",
    [c for c in REFERENCE_CASES if KNOWN_ROOM_VERSIONS[c["room_version"]].supported],
    ids=lambda c: c["name"],
)
def test_the_signed_form_is_kept_for_signature_checks(case: dict[str, Any]) -> None:
    annotated = case["signed_event"] | {"unsigned": {"age": 3}}
    pdu = Pdu.from_json(annotated, case["room_version"])
    assert pdu.signed_form == case["reference_hash_preimage"].encode()
    assert pdu.event_id == compute_event_id(annotated, case["room_version"])


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


def test_gomatrixserverlib_event_is_refused_as_v3_and_v4() -> None:
    # Parsing is for room versions ranvier takes part in; the IDs of these
    # are checked in test_hashing.
    cases = json.loads(
        (DATA / "peer-vectors" / "gomatrixserverlib-event-ids.json").read_text("utf-8")
    )["cases"]
    for case in cases:
        with pytest.raises(UnsupportedRoomVersionError):
            Pdu.from_json(case["event"], case["room_version"])


# --- the original JSON is kept ---


def test_dict_input_is_encoded_canonically_and_copied() -> None:
    event = _message()
    pdu = Pdu.from_json(event, "10")
    assert pdu.raw == encode_canonical_json(event)
    event["content"]["body"] = "changed"
    assert pdu.content["body"] == "hi"
    assert pdu.json["content"]["body"] == "hi"


def test_str_input_keeps_its_utf8_bytes() -> None:
    text = json.dumps(_message(content={"body": "héllo"}), ensure_ascii=False, indent=3)
    pdu = Pdu.from_json(text, "10")
    assert pdu.raw == text.encode("utf-8")
    assert pdu.content == {"body": "héllo"}


# Fields that some redaction algorithm keeps (and so are in the event ID), or that we read.
_KNOWN_TOP_LEVEL = set(_message()) | {
    "state_key",
    "unsigned",
    "redacts",
    "event_id",
    "origin",
    "membership",
    "prev_state",
}
_KEPT_CONTENT = {"membership", "join_authorised_via_users_server", "third_party_invite"}
_json_scalars = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text()
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=5,
)


@given(
    extra_top=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k not in _KNOWN_TOP_LEVEL),
        _json_values,
        max_size=4,
    ),
    extra_content=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in _KEPT_CONTENT), _json_values, max_size=4
    ),
    indent=st.sampled_from([None, 0, 2]),
    ensure_ascii=st.booleans(),
    order=st.randoms(use_true_random=False),
    room_version=st.sampled_from(["10", "12"]),
)
def test_unknown_fields_survive_byte_for_byte(
    extra_top: dict[str, Any],
    extra_content: dict[str, Any],
    indent: int | None,
    ensure_ascii: bool,
    order: random.Random,
    room_version: str,
) -> None:
    base = _message() if room_version == "10" else dict(REFERENCE_CASES[-1]["signed_event"])
    event = base | extra_top | {"content": base["content"] | extra_content}
    keys = list(event)
    order.shuffle(keys)
    raw = json.dumps({k: event[k] for k in keys}, indent=indent, ensure_ascii=ensure_ascii)
    raw_bytes = raw.encode()
    pdu = Pdu.from_json(raw_bytes, room_version)
    assert pdu.raw == raw_bytes
    assert pdu.json == event
    for key, value in extra_top.items():
        assert pdu.json[key] == value
    # The ID depends on the event, not on how its JSON was written.
    assert pdu.event_id == Pdu.from_json(event, room_version).event_id
    assert pdu.event_id == compute_event_id(event, room_version)
    # Unknown top-level fields are not kept by redaction, so they do not change the ID.
    assert pdu.event_id == compute_event_id(base, room_version)
    # The parse encodes what it vetted without the checks, to the same bytes.
    assert pdu.signed_form == encode_signed_form(event, room_version)
    assert pdu.content_hash_matches() == content_hash_matches(event)
    hashed = event | {"hashes": {"sha256": compute_content_hash(event)}}
    assert Pdu.from_json(encode_canonical_json(hashed), room_version).content_hash_matches()


@pytest.mark.parametrize("room_version", ["6", "10", "11", "12"])
def test_the_content_hash_is_checked_over_the_whole_event(room_version: str) -> None:
    base = _message() if room_version != "12" else dict(REFERENCE_CASES[-1]["signed_event"])
    event = base | {"content": base["content"] | {"body": "héllo 👋", "n": [1, {"x": None}]}}
    event["hashes"] = {"sha256": compute_content_hash(event)}
    whole = Pdu.from_json(encode_canonical_json(event), room_version)
    assert whole.content_hash_matches()
    assert Pdu.from_json(event, room_version).content_hash_matches()
    altered = event | {"content": event["content"] | {"body": "hello"}}
    assert not Pdu.from_json(encode_canonical_json(altered), room_version).content_hash_matches()
    # Fields outside the content count too; unsigned and signatures do not.
    assert not Pdu.from_json(event | {"depth": 6}, room_version).content_hash_matches()
    assert Pdu.from_json(event | {"unsigned": {"age": 1}}, room_version).content_hash_matches()


# --- validation: shapes ---


@pytest.mark.parametrize(
    ("sender", "ok"),
    [
        ("@alice:example.org", True),
        ("@:example.org", True),  # historical: an empty localpart
        ("@Ünïcode name:example.org", True),  # historical: any code point but ':' and NUL
        ("@a:example.org:8448", True),
        ("@a:1.2.3.4", True),
        ("@a:[1234:5678::abcd]:5678", True),
        ("alice:example.org", False),
        ("@alice", False),
        ("@alice:", False),
        ("@a:exa mple.org", False),
        ("@a:example.org:", False),
        ("@a:example.org:123456", False),
        ("@a\x00b:example.org", False),
        ("!a:example.org", False),
    ],
)
def test_sender_must_be_a_user_id(sender: str, ok: bool) -> None:
    event = _message(sender=sender)
    if ok:
        assert Pdu.from_json(event, "10").sender == sender
    else:
        with pytest.raises(BadJsonError, match="sender"):
            Pdu.from_json(event, "10")


V12_ROOM_ID = "!" + "A" * 42 + "_"


@pytest.mark.parametrize(
    ("room_version", "room_id", "ok"),
    [
        ("10", "!room:example.org", True),
        ("10", "!:example.org", True),
        ("10", "!r:[::1]:8448", True),
        ("10", "room:example.org", False),
        ("10", "!room", False),
        ("10", V12_ROOM_ID, False),
        ("12", V12_ROOM_ID, True),
        ("12", "!room:example.org", False),
        ("12", V12_ROOM_ID[:-1], False),
        ("12", V12_ROOM_ID + "A", False),
        ("12", V12_ROOM_ID[:-1] + "+", False),
    ],
)
def test_room_id_shape_per_room_version(room_version: str, room_id: str, ok: bool) -> None:
    event = _message(room_id=room_id)
    if ok:
        assert Pdu.from_json(event, room_version).room_id == room_id
    else:
        with pytest.raises(BadJsonError, match="room_id"):
            Pdu.from_json(event, room_version)


def _create(**overrides: Any) -> dict[str, Any]:
    return _message(type="m.room.create", state_key="", content={"room_version": "12"}) | overrides


def test_v12_create_has_no_room_id_and_gets_the_computed_one() -> None:
    create = _create()
    del create["room_id"]
    pdu = Pdu.from_json(create, "12")
    assert pdu.room_id == compute_room_id(create)
    assert pdu.room_id == "!" + pdu.event_id[1:]
    with pytest.raises(BadJsonError, match="must not have a room_id"):
        Pdu.from_json(_create(room_id=V12_ROOM_ID), "12")


def test_create_before_v12_needs_a_room_id() -> None:
    create = _create()
    del create["room_id"]
    with pytest.raises(BadJsonError, match="room_id"):
        Pdu.from_json(create, "11")
    assert Pdu.from_json(_create(), "11").room_id == "!room:example.org"


@pytest.mark.parametrize(
    "field",
    [
        "type",
        "sender",
        "room_id",
        "content",
        "prev_events",
        "auth_events",
        "depth",
        "origin_server_ts",
        "hashes",
        "signatures",
    ],
)
def test_every_required_field_is_required(field: str) -> None:
    event = _message()
    del event[field]
    with pytest.raises(BadJsonError, match=field):
        Pdu.from_json(event, "10")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type", 5),
        ("state_key", None),
        ("state_key", 1),
        ("sender", ["@a:b"]),
        ("room_id", None),
        ("content", []),
        ("content", "x"),
        ("prev_events", "$a"),
        ("prev_events", [["$a", {"sha256": "x"}]]),  # the v1/v2 shape
        ("auth_events", [1]),
        ("depth", "5"),
        ("depth", True),
        ("origin_server_ts", "1"),
        ("origin_server_ts", None),
        ("hashes", {"sha256": 1}),
        ("hashes", []),
        ("signatures", {"example.org": "SIG"}),
        ("signatures", {"example.org": {"ed25519:1": 5}}),
        ("unsigned", []),
    ],
)
def test_wrong_types_are_named(field: str, value: Any) -> None:
    with pytest.raises(BadJsonError, match=field):
        Pdu.from_json(_message(**{field: value}), "10")


def test_hashes_need_sha256() -> None:
    with pytest.raises(BadJsonError, match="sha256"):
        Pdu.from_json(_message(hashes={"sha512": "x"}), "10")


@pytest.mark.parametrize(
    "raw",
    [b"[]", b'"x"', b"{", b"", b'{"a":1.5}', b'{"depth":9007199254740992}', b"\xff"],
)
def test_bad_json_is_refused(raw: bytes) -> None:
    with pytest.raises(BadJsonError):
        Pdu.from_json(raw, "10")


def test_str_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(BadJsonError):
        Pdu.from_json('{"type": "\ud800"}', "10")


def test_redacts_of_a_redaction_must_be_a_string() -> None:
    with pytest.raises(BadJsonError, match="redacts"):
        Pdu.from_json(_message(type="m.room.redaction", redacts=5), "10")
    with pytest.raises(BadJsonError, match=r"content\.redacts"):
        Pdu.from_json(_message(type="m.room.redaction", content={"redacts": 5}), "11")
    # Top-level redacts means nothing from v11 on; in other events it is just content.
    assert Pdu.from_json(_message(type="m.room.redaction", redacts=5), "11").redacts is None
    assert Pdu.from_json(_message(content={"redacts": 5}), "11").redacts is None
    assert Pdu.from_json(_message(content={"redacts": "$x"}), "10").redacts is None


def test_membership_is_only_read_from_member_events() -> None:
    member = _message(type="m.room.member", state_key="@alice:example.org")
    assert Pdu.from_json(member | {"content": {"membership": "leave"}}, "10").membership == "leave"
    assert Pdu.from_json(member | {"content": {"membership": 1}}, "10").membership is None
    assert Pdu.from_json(_message(content={"membership": "join"}), "10").membership is None


# --- validation: limits, at and just past each boundary ---


def _of_bytes(n: int, prefix: str = "", suffix: str = "") -> str:
    """A string of exactly ``n`` UTF-8 bytes, mostly two-byte characters."""
    middle = n - len(prefix.encode()) - len(suffix.encode())
    return prefix + "é" * (middle // 2) + "x" * (middle % 2) + suffix


@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("type", lambda n: _of_bytes(n)),
        ("state_key", lambda n: _of_bytes(n)),
        ("sender", lambda n: _of_bytes(n, "@", ":example.org")),
        ("room_id", lambda n: _of_bytes(n, "!", ":example.org")),
        ("prev_events", lambda n: [_of_bytes(n, "$")]),
        ("auth_events", lambda n: ["$a", _of_bytes(n, "$")]),
    ],
)
def test_255_byte_limits(field: str, make: Callable[[int], Any]) -> None:
    at_limit = make(255)
    pdu = Pdu.from_json(_message(**{field: at_limit}), "10")
    assert pdu.json[field] == at_limit
    with pytest.raises(EventTooLargeError, match=field):
        Pdu.from_json(_message(**{field: make(256)}), "10")
    # The limit is on bytes: 256 bytes are fewer than 256 characters here.
    assert len(str(make(256))) < 256


@given(
    length=st.integers(40, 300),
    char=st.sampled_from(["a", "é", "€", "😀"]),
    field=st.sampled_from(["type", "state_key"]),
)
def test_length_limits_count_utf8_bytes(length: int, char: str, field: str) -> None:
    value = char * length
    event = _message(**{field: value})
    if len(value.encode()) <= MAX_ID_BYTES:
        assert Pdu.from_json(event, "10").json[field] == value
    else:
        with pytest.raises(EventTooLargeError, match=field):
            Pdu.from_json(event, "10")


@pytest.mark.parametrize(("field", "most"), [("prev_events", 20), ("auth_events", 10)])
def test_event_count_limits(field: str, most: int) -> None:
    at_limit = _message(**{field: [f"$e{i}" for i in range(most)]})
    assert Pdu.from_json(at_limit, "10").json[field] == at_limit[field]
    past = _message(**{field: [f"$e{i}" for i in range(most + 1)]})
    with pytest.raises(EventTooLargeError, match=field):
        Pdu.from_json(past, "10")
    # /backfill responses are exempt from the counts, not from the ID length.
    pdu = Pdu.from_json(past, "10", check_limits=False)
    assert len(pdu.json[field]) == most + 1
    too_long = _message(**{field: [*past[field], _of_bytes(256, "$")]})
    with pytest.raises(EventTooLargeError, match=field):
        Pdu.from_json(too_long, "10", check_limits=False)


@pytest.mark.parametrize(
    ("depth", "ok"), [(0, True), (-1, False), (2**53 - 1, True), (2**53, False)]
)
def test_depth_range(depth: int, ok: bool) -> None:
    raw = json.dumps(_message(depth=depth)).encode()
    if ok:
        assert Pdu.from_json(raw, "10").depth == depth
        assert Pdu.from_json(_message(depth=depth), "10").depth == depth
    else:
        # Past 2^53-1 the JSON itself is refused, before fields are looked at.
        with pytest.raises(BadJsonError, match="depth" if depth < 0 else "canonical JSON"):
            Pdu.from_json(raw, "10")
        with pytest.raises(BadJsonError, match="depth"):
            Pdu.from_json(_message(depth=depth), "10")


def test_origin_server_ts_must_be_an_integer() -> None:
    assert Pdu.from_json(_message(origin_server_ts=0), "10").origin_server_ts == 0
    for value in (1.5, 2**53, -(2**53)):
        with pytest.raises(BadJsonError, match="canonical JSON"):
            Pdu.from_json(json.dumps(_message(origin_server_ts=value)).encode(), "10")
        with pytest.raises(BadJsonError, match="origin_server_ts"):
            Pdu.from_json(_message(origin_server_ts=value), "10")


def _of_canonical_size(n: int) -> dict[str, Any]:
    event = _message(content={"body": ""})
    padding = n - len(encode_canonical_json(event))
    return _message(content={"body": "x" * padding})


def test_whole_pdu_size_limit() -> None:
    at_limit = _of_canonical_size(MAX_EVENT_BYTES)
    assert len(encode_canonical_json(at_limit)) == MAX_EVENT_BYTES
    assert Pdu.from_json(at_limit, "10").raw == encode_canonical_json(at_limit)
    # What counts is the canonical size: whitespace in the input does not.
    spaced = json.dumps(at_limit, indent=4).encode()
    assert len(spaced) > MAX_EVENT_BYTES
    assert Pdu.from_json(spaced, "10").raw == spaced
    past = _of_canonical_size(MAX_EVENT_BYTES + 1)
    with pytest.raises(EventTooLargeError, match="65536"):
        Pdu.from_json(past, "10")
    with pytest.raises(EventTooLargeError, match="65536"):
        Pdu.from_json(json.dumps(past, indent=4).encode(), "10")


def test_signatures_count_towards_the_size_limit() -> None:
    at_limit = _of_canonical_size(MAX_EVENT_BYTES)
    signatures = at_limit["signatures"] | {"x.org": {"ed25519:1": "S"}}
    with pytest.raises(EventTooLargeError):
        Pdu.from_json(at_limit | {"signatures": signatures}, "10")


def test_the_room_of_a_pdu_is_read_without_building_it() -> None:
    assert pdu_room_id(b'{"room_id": "!a:example.org", "depth": "not checked here"}') == (
        "!a:example.org"
    )
    for raw in (b'{"room_id": 5}', b'{"type": "m.room.message"}', b"[1]", b"{not json"):
        assert pdu_room_id(raw) is None
