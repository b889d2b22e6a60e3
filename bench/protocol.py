"""Protocol operations on realistic events: ranvier beside the reference libraries.

Every federated event is decoded, hashed, and has its signatures checked;
every event a local user sends is encoded, hashed and signed. Each
operation's rate here is measured beside a reference implementation in the
same run: the ``canonicaljson`` package for canonical JSON, ``signedjson``
for signing and verifying, and for event IDs a straightforward version
written below from canonicaljson, hashlib and base64. Before timing, each
pair is checked to give the same answer, so the rates compare equal work.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Callable
from typing import Any

import canonicaljson
import signedjson.key
import signedjson.sign

from bench import ops_per_second
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.hashing import compute_event_id
from ranvier.protocol.signing import (
    SigningKey,
    encode_signing_key_base64,
    sign_json,
    verify_signed_json,
)

ROOM_VERSION = "12"
SERVER = "example.com"

_AUTH_EVENTS = [
    "$Sx3cQ3PZ0a8kL2p9vYqzX5b1mN7eRfTgHjKuIoPlWe0",
    "$2bXn9mQk7LpRt4sVw1yZa3cD5eFgHiJkLmNoPqRsTuv",
    "$yR8tWq3eLk5nM2pB7vXc9zA1sD4fG6hJ0kL8mN3bV5c",
]
_SIGNATURE = (
    "v9QhZ3Kx8mW2pN5rT1yB7cF4dG6hJ0kL3sA9eU2iO5qR8tY1wE4zX7cV0bN3mL6kJ9hG2fD5sA8pO1iU4yT7rE0w"
)


def _message() -> dict[str, Any]:
    return {
        "auth_events": _AUTH_EVENTS,
        "content": {
            "body": "Has anyone tried the new build on the staging cluster yet?"
            " It fails on start-up for me.",
            "msgtype": "m.text",
            "m.mentions": {"user_ids": ["@bob:example.org"]},
        },
        "depth": 48213,
        "hashes": {"sha256": "eQ4x2n3Kj8hVb5mL9pR1tY7wZ0aS6dF4gH2jK8lQ3xC"},
        "origin_server_ts": 1721563200123,
        "prev_events": ["$Pq7rS9tU1vW3xY5zA7bC9dE1fG3hI5jK7lM9nO1pQ3r"],
        "room_id": "!Pq7rS9tU1vW3xY5zA7bC9dE1fG3hI5jK7lM9nO1pQ3r",
        "sender": "@alice:example.com",
        "signatures": {"example.com": {"ed25519:a_JaEG": _SIGNATURE}},
        "type": "m.room.message",
        "unsigned": {"age": 1234},
    }


def _membership() -> dict[str, Any]:
    displayname = "Alexandra \u00c9lise \u65e5\u672c \U0001f431 " + "of the very long names " * 10
    return {
        "auth_events": [*_AUTH_EVENTS, "$aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2yZ3aB4c"],
        "content": {
            "avatar_url": "mxc://example.net/SEsfnsuifSDFSSEFqwertyuiop",
            "displayname": displayname,
            "membership": "join",
        },
        "depth": 48214,
        "hashes": {"sha256": "Zx4c2n3Kj8hVb5mL9pR1tY7wZ0aS6dF4gH2jK8lQ3xC"},
        "origin_server_ts": 1721563200456,
        "prev_events": [
            "$Pq7rS9tU1vW3xY5zA7bC9dE1fG3hI5jK7lM9nO1pQ3r",
            "$Zz7rS9tU1vW3xY5zA7bC9dE1fG3hI5jK7lM9nO1pQ3r",
        ],
        "room_id": "!Pq7rS9tU1vW3xY5zA7bC9dE1fG3hI5jK7lM9nO1pQ3r",
        "sender": "@alexandra:example.net",
        "signatures": {"example.net": {"ed25519:auto": _SIGNATURE}},
        "state_key": "@alexandra:example.net",
        "type": "m.room.member",
        "unsigned": {},
    }


def _power_levels() -> dict[str, Any]:
    users = {f"@user{i}:server{i % 7}.example.org": 100 if i < 3 else 50 for i in range(40)}
    return {
        "auth_events": _AUTH_EVENTS,
        "content": {
            "ban": 50,
            "events": {
                "m.reaction": 0,
                "m.room.avatar": 50,
                "m.room.canonical_alias": 50,
                "m.room.encryption": 100,
                "m.room.history_visibility": 100,
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.server_acl": 100,
                "m.room.tombstone": 100,
                "m.room.topic": 50,
            },
            "events_default": 0,
            "invite": 0,
            "kick": 50,
            "notifications": {"room": 50},
            "redact": 50,
            "state_default": 50,
            "users": users,
            "users_default": 0,
        },
        "depth": 12,
        "hashes": {"sha256": "Pw4x2n3Kj8hVb5mL9pR1tY7wZ0aS6dF4gH2jK8lQ3xC"},
        "origin_server_ts": 1721563200789,
        "prev_events": ["$Pq7rS9tU1vW3xY5zA7bC9dE1fG3hI5jK7lM9nO1pQ3r"],
        "room_id": "!Pq7rS9tU1vW3xY5zA7bC9dE1fG3hI5jK7lM9nO1pQ3r",
        "sender": "@user0:server0.example.org",
        "signatures": {"server0.example.org": {"ed25519:a_abcd": _SIGNATURE}},
        "state_key": "",
        "type": "m.room.power_levels",
        "unsigned": {"age": 99},
    }


EVENTS = [_message(), _membership(), _power_levels()]

# The redaction algorithm of room versions 11 and 12, as the spec tables it.
_KEPT_AT_TOP = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
)
_KEPT_IN_CONTENT = {
    "m.room.member": {"membership", "join_authorised_via_users_server"},
    "m.room.join_rules": {"join_rule", "allow"},
    "m.room.power_levels": {
        "ban",
        "events",
        "events_default",
        "invite",
        "kick",
        "redact",
        "state_default",
        "users",
        "users_default",
    },
    "m.room.history_visibility": {"history_visibility"},
    "m.room.redaction": {"redacts"},
}


def reference_event_id(event: dict[str, Any]) -> str:
    """The event ID as the spec describes it, written plainly (room v11/v12)."""
    kind = event["type"]
    content = event.get("content", {})
    if kind == "m.room.create":
        kept_content = dict(content)
    else:
        kept = _KEPT_IN_CONTENT.get(kind, set())
        kept_content = {key: value for key, value in content.items() if key in kept}
        if kind == "m.room.member" and "signed" in content.get("third_party_invite", {}):
            kept_content["third_party_invite"] = {"signed": content["third_party_invite"]["signed"]}
    redacted = {key: value for key, value in event.items() if key in _KEPT_AT_TOP}
    redacted["content"] = kept_content
    redacted.pop("signatures", None)
    digest = hashlib.sha256(canonicaljson.encode_canonical_json(redacted)).digest()
    return "$" + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _rate(operation: Callable[[dict[str, Any]], object], events: list[dict[str, Any]]) -> float:
    def all_events() -> None:
        for event in events:
            operation(event)

    return ops_per_second(all_events, ops_per_call=len(events))


def _same(name: str, ours: object, theirs: object) -> None:
    if ours != theirs:
        raise RuntimeError(f"{name}: ranvier and the reference disagree: {ours!r} != {theirs!r}")


def run() -> dict[str, Any]:
    key = SigningKey(bytes(range(32)), "a_bnch")
    their_key = signedjson.key.decode_signing_key_base64(
        "ed25519", "a_bnch", encode_signing_key_base64(key)
    )
    their_verify_key = signedjson.key.get_verify_key(their_key)
    signed = [sign_json(event, SERVER, key) for event in EVENTS]

    def their_sign(event: dict[str, Any]) -> dict[str, Any]:
        # signedjson signs in place; a shallow copy keeps the input as it was,
        # which is what ranvier's sign_json guarantees too.
        return signedjson.sign.sign_json(dict(event), SERVER, their_key)

    def their_verify(event: dict[str, Any]) -> None:
        signedjson.sign.verify_signed_json(event, SERVER, their_verify_key)

    def our_verify(event: dict[str, Any]) -> None:
        verify_signed_json(event, SERVER, key.verify_key)

    operations: dict[str, tuple[Callable[..., object], Callable[..., object], list[Any]]] = {
        "canonical_json": (
            encode_canonical_json,
            canonicaljson.encode_canonical_json,
            EVENTS,
        ),
        "event_id": (
            lambda event: compute_event_id(event, ROOM_VERSION),
            reference_event_id,
            EVENTS,
        ),
        "sign": (lambda event: sign_json(event, SERVER, key), their_sign, EVENTS),
        "verify": (our_verify, their_verify, signed),
    }
    for name, (ours, theirs, events) in operations.items():
        for event in events:
            _same(name, ours(copy.deepcopy(event)), theirs(copy.deepcopy(event)))

    figures: dict[str, Any] = {}
    for name, (ours, theirs, events) in operations.items():
        figures[f"{name}_ops_per_s"] = round(_rate(ours, events))
        figures[f"{name}_reference_ops_per_s"] = round(_rate(theirs, events))
        figures[f"{name}_speedup"] = round(
            figures[f"{name}_ops_per_s"] / figures[f"{name}_reference_ops_per_s"], 2
        )
    figures["event_bytes"] = [len(encode_canonical_json(event)) for event in EVENTS]
    return figures
