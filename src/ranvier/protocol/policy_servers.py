"""Policy servers (spec v1.18, MSC4284): the rules a server that is not one
follows in a room that names one.

A room uses a policy server when its current state holds a valid
``m.room.policy`` event with an empty state key (a string ``via`` and a
string ``public_keys.ed25519``) and the server ``via`` names has a joined
user in the room. The policy server recommends an event by signing it with
the key the state event publishes, under ``via`` and the fixed key ID
``ed25519:policy_server``; the signature covers what every event signature
covers, the redacted event without ``signatures`` and ``unsigned``
(:attr:`Pdu.signed_form <ranvier.protocol.events.Pdu.signed_form>`). The
key is not the policy server's published signing key, so the usual
signature checks skip it and only :func:`has_policy_signature` reads it.

The state event that names the policy server is never sent to it for
signing, so it needs no signature (:func:`needs_policy_signature`); every
other event, state or not, does. An event without a valid signature still
goes through the auth rules as usual; it is soft failed, which is the
caller's business, not this module's. A signature the policy server gives
on request is added to the event's own (:func:`with_policy_signature`),
never in their place: the policy server may share the origin's name
(spec v1.19), and the origin's signature must stay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import nacl.exceptions

from ranvier.errors import BadJsonError
from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import VerifyKey, decode_verify_key_bytes
from ranvier.protocol.unpadded_base64 import decode_unpadded_base64
from ranvier.protocol.x_matrix import is_server_name

__all__ = [
    "POLICY_EVENT_TYPE",
    "POLICY_KEY_ID",
    "POLICY_STATE_KEY",
    "RoomPolicy",
    "has_policy_signature",
    "needs_policy_signature",
    "room_policy",
    "with_policy_signature",
]

POLICY_EVENT_TYPE: Final = "m.room.policy"
#: The state key of the ``m.room.policy`` event that names the room's policy server.
POLICY_STATE_KEY: Final = ""
#: The key ID of every policy server signature: the spec fixes it.
POLICY_KEY_ID: Final = "ed25519:policy_server"


@dataclass(frozen=True, slots=True)
class RoomPolicy:
    """The policy server an ``m.room.policy`` event names, and its key."""

    via: str
    verify_key: VerifyKey


def room_policy(content: Mapping[str, Any]) -> RoomPolicy | None:
    """The policy server the ``content`` of an ``m.room.policy`` state event
    names, or None when the content is not a valid one (which leaves the
    room without a policy server, as an absent event does).

    Beyond the spec's two strings, ``via`` must be a server name and the key
    32 bytes of unpadded base64: a signature could never be checked against
    anything else, and a room that cannot have a recommended event is better
    read as having no policy server than as refusing every event.
    """
    via = content.get("via")
    keys = content.get("public_keys")
    key = keys.get("ed25519") if isinstance(keys, dict) else None
    if type(via) is not str or not is_server_name(via) or type(key) is not str:
        return None
    try:
        return RoomPolicy(via, decode_verify_key_bytes(POLICY_KEY_ID, decode_unpadded_base64(key)))
    except BadJsonError:
        return None


def needs_policy_signature(event: Pdu) -> bool:
    """Whether ``event`` must carry the policy server's signature in a room
    that uses one: all but the state event naming the policy server."""
    return not (event.type == POLICY_EVENT_TYPE and event.state_key == POLICY_STATE_KEY)


def has_policy_signature(event: Pdu, policy: RoomPolicy) -> bool:
    """Whether ``event`` carries a valid signature by ``policy``'s key.

    Other signatures under the same server name (a policy server may also
    be the event's origin) are neither needed nor in the way.
    """
    signatures = event.json.get("signatures")
    by_server = signatures.get(policy.via) if isinstance(signatures, dict) else None
    encoded = by_server.get(POLICY_KEY_ID) if isinstance(by_server, dict) else None
    if type(encoded) is not str:
        return False
    try:
        policy.verify_key.verify(event.signed_form, decode_unpadded_base64(encoded))
    except (BadJsonError, nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


def with_policy_signature(event: Pdu, policy: RoomPolicy, signature: str) -> Pdu:
    """``event`` with ``signature`` added as ``policy``'s, every signature it
    had kept (the one it may have had by the policy key is replaced)."""
    signatures = event.json.get("signatures")
    kept = dict(signatures) if isinstance(signatures, dict) else {}
    by_server = kept.get(policy.via)
    kept[policy.via] = {
        **(by_server if isinstance(by_server, dict) else {}),
        POLICY_KEY_ID: signature,
    }
    return Pdu.from_json({**event.json, "signatures": kept}, event.room_version)
