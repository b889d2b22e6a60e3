"""Policy servers (spec v1.18, MSC4284): which ``m.room.policy`` contents
name one, which events need its signature, and whether an event carries a
valid one, with real ed25519 keys."""

from __future__ import annotations

from typing import Any

import pytest

from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.policy_servers import (
    POLICY_KEY_ID,
    RoomPolicy,
    has_policy_signature,
    needs_policy_signature,
    room_policy,
    with_policy_signature,
)
from ranvier.protocol.room_versions import get_room_version
from ranvier.protocol.signing import SigningKey
from ranvier.protocol.unpadded_base64 import encode_unpadded_base64
from ranvier.testing import make_pdu

_RV = get_room_version("11")
_ROOM = "!room:origin.test"
_POLICY_KEY = SigningKey(b"p" * 32, "policy_server")
_OTHER_KEY = SigningKey(b"o" * 32, "policy_server")
_ORIGIN_KEY = SigningKey(b"s" * 32, "1")
_PUBLIC = encode_unpadded_base64(bytes(_POLICY_KEY.verify_key))


def _policy(via: str = "policy.test") -> RoomPolicy:
    policy = room_policy({"via": via, "public_keys": {"ed25519": _PUBLIC}})
    assert policy is not None
    return policy


def _message(**fields: Any) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "room_id": _ROOM,
        "sender": "@alice:origin.test",
        "content": {"msgtype": "m.text", "body": "hi"},
        "prev_events": [],
        "auth_events": [],
        "depth": 3,
        "origin_server_ts": 1_700_000_000_000,
        **fields,
    }


def _signed(event: dict[str, Any], *signers: tuple[str, SigningKey]) -> Pdu:
    for server, key in signers:
        event = hash_and_sign_event(event, _RV, server, key)
    return Pdu.from_json(event, _RV)


def test_a_valid_policy_event_names_the_server_and_its_key() -> None:
    policy = room_policy({"via": "policy.test:8448", "public_keys": {"ed25519": _PUBLIC}})
    assert policy is not None
    assert policy.via == "policy.test:8448"
    assert bytes(policy.verify_key) == bytes(_POLICY_KEY.verify_key)


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"public_keys": {"ed25519": _PUBLIC}},
        {"via": 1, "public_keys": {"ed25519": _PUBLIC}},
        {"via": "not a server name", "public_keys": {"ed25519": _PUBLIC}},
        {"via": "policy.test"},
        {"via": "policy.test", "public_keys": []},
        {"via": "policy.test", "public_keys": {"curve25519": _PUBLIC}},
        {"via": "policy.test", "public_keys": {"ed25519": 5}},
        {"via": "policy.test", "public_keys": {"ed25519": "!!!"}},
        {"via": "policy.test", "public_keys": {"ed25519": encode_unpadded_base64(b"short")}},
    ],
)
def test_an_invalid_policy_event_names_no_policy_server(content: dict[str, Any]) -> None:
    assert room_policy(content) is None


@pytest.mark.parametrize(
    ("event_type", "state_key", "needed"),
    [
        ("m.room.policy", "", False),
        ("m.room.policy", "other", True),
        ("m.room.policy", None, True),
        ("m.room.message", None, True),
        ("m.room.power_levels", "", True),
        ("m.room.member", "@alice:origin.test", True),
    ],
)
def test_every_event_but_the_policy_state_event_needs_a_signature(
    event_type: str, state_key: str | None, needed: bool
) -> None:
    fields: dict[str, Any] = {"type": event_type, "sender": "@alice:origin.test", "room_id": _ROOM}
    if state_key is not None:
        fields["state_key"] = state_key
    assert needs_policy_signature(make_pdu(_RV, fields)) is needed


def test_the_policy_servers_signature_recommends_the_event() -> None:
    event = _signed(_message(), ("origin.test", _ORIGIN_KEY), ("policy.test", _POLICY_KEY))
    assert event.json["signatures"]["policy.test"].keys() == {POLICY_KEY_ID}
    assert has_policy_signature(event, _policy())


def test_no_signature_or_one_by_another_key_or_server_does_not() -> None:
    assert not has_policy_signature(_signed(_message(), ("origin.test", _ORIGIN_KEY)), _policy())
    by_other_key = _signed(_message(), ("origin.test", _ORIGIN_KEY), ("policy.test", _OTHER_KEY))
    assert not has_policy_signature(by_other_key, _policy())
    under_other_name = _signed(_message(), ("elsewhere.test", _POLICY_KEY))
    assert not has_policy_signature(under_other_name, _policy())


def test_a_signature_over_another_event_does_not() -> None:
    signed = _signed(_message(), ("policy.test", _POLICY_KEY))
    moved = dict(_message(origin_server_ts=1_700_000_000_001))
    moved["hashes"] = signed.json["hashes"]
    moved["signatures"] = signed.json["signatures"]
    assert not has_policy_signature(Pdu.from_json(moved, _RV), _policy())


def test_a_malformed_signature_does_not() -> None:
    for bad in ("not base64!", encode_unpadded_base64(b"x" * 10)):
        event = _message(signatures={"policy.test": {POLICY_KEY_ID: bad}})
        event["hashes"] = {"sha256": "A" * 43}
        assert not has_policy_signature(Pdu.from_json(event, _RV), _policy())


def test_the_policy_server_may_be_the_origin_itself() -> None:
    """Spec v1.19: the policy server may share the origin's name; its two
    signatures sit side by side and each is read with its own key."""
    event = _signed(_message(), ("origin.test", _ORIGIN_KEY), ("origin.test", _POLICY_KEY))
    assert event.json["signatures"]["origin.test"].keys() == {"ed25519:1", POLICY_KEY_ID}
    assert has_policy_signature(event, _policy("origin.test"))


def test_a_signature_given_later_is_added_beside_the_origins_own() -> None:
    """Spec v1.19: a policy server sharing the origin's name answers with its
    signature alone; the origin's must not be lost when it is added."""
    event = _signed(_message(), ("origin.test", _ORIGIN_KEY))
    answer = _signed(_message(), ("origin.test", _POLICY_KEY))
    signature = answer.json["signatures"]["origin.test"][POLICY_KEY_ID]
    policy = _policy("origin.test")
    signed = with_policy_signature(event, policy, signature)
    assert signed.json["signatures"]["origin.test"] == {
        "ed25519:1": event.json["signatures"]["origin.test"]["ed25519:1"],
        POLICY_KEY_ID: signature,
    }
    assert signed.event_id == event.event_id
    assert has_policy_signature(signed, policy)
    assert not has_policy_signature(event, policy)
