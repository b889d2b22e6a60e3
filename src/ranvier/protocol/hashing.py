"""Content hashes, reference hashes, event IDs and v12 room IDs.

Two hashes cover an event. The content hash covers everything the sender
wrote except the hashes, signatures and ``unsigned``: it lets a receiver tell
that the content was tampered with even though the signatures, which cover
only the redacted form, still verify. The reference hash covers the redacted
form including the content hash; from room version 3 on it is the event's
ID, and from version 12 on the create event's reference hash is also the
room's ID.

The bytes the reference hash is taken of are the very bytes every signature
on the event signs: the redacted event without ``signatures`` and
``unsigned``, as canonical JSON (:func:`encode_signed_form`). Computed once,
they serve both the event ID and the signature checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from ranvier.errors import BadJsonError
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.redaction import redact
from ranvier.protocol.room_versions import (
    EventIdFormat,
    RoomVersion,
    RoomVersionLike,
    get_room_version,
)
from ranvier.protocol.signing import SigningKeyLike, sign_json
from ranvier.protocol.unpadded_base64 import encode_unpadded_base64

__all__ = [
    "compute_content_hash",
    "compute_event_id",
    "compute_reference_hash",
    "compute_room_id",
    "content_hash_matches",
    "encode_signed_form",
    "event_id_from_signed_form",
    "hash_and_sign_event",
]

_NOT_IN_CONTENT_HASH: Final = frozenset({"unsigned", "signatures", "hashes"})
_NOT_IN_REFERENCE_HASH: Final = frozenset({"unsigned", "signatures"})


def compute_content_hash(event: Mapping[str, Any]) -> str:
    """The value for ``hashes.sha256``: unpadded base64 of the content hash."""
    hashed = {key: value for key, value in event.items() if key not in _NOT_IN_CONTENT_HASH}
    digest = hashlib.sha256(encode_canonical_json(hashed)).digest()
    return encode_unpadded_base64(digest)


def content_hash_matches(event: Mapping[str, Any]) -> bool:
    """Whether ``hashes.sha256`` is the content hash of ``event``.

    A mismatch is not an error: the spec has the receiver keep the event in
    its redacted form, so the caller decides. A missing or malformed
    ``hashes`` counts as a mismatch.
    """
    hashes = event.get("hashes")
    if type(hashes) is not dict:
        return False
    claimed = hashes.get("sha256")
    return type(claimed) is str and claimed == compute_content_hash(event)


def encode_signed_form(event: Mapping[str, Any], room_version: RoomVersionLike) -> bytes:
    """The canonical JSON of the redacted event without signatures and ``unsigned``.

    It is what the reference hash is the hash of, and what each signature on
    the event signs (signing drops those two keys from the redacted form).
    """
    redacted = redact(event, room_version)
    for key in _NOT_IN_REFERENCE_HASH:
        redacted.pop(key, None)
    return encode_canonical_json(redacted)


def compute_reference_hash(event: Mapping[str, Any], room_version: RoomVersionLike) -> bytes:
    """The sha256 digest of the redacted event without signatures and ``unsigned``."""
    return hashlib.sha256(encode_signed_form(event, room_version)).digest()


def event_id_from_signed_form(signed_form: bytes, room_version: RoomVersionLike) -> str:
    """The event ID of the event whose :func:`encode_signed_form` is ``signed_form``.

    For a caller that needs those bytes anyway, to check signatures against
    them, so that the event is redacted and encoded once.
    """
    urlsafe = _urlsafe_event_ids(get_room_version(room_version, unsupported_ok=True))
    digest = hashlib.sha256(signed_form).digest()
    return "$" + encode_unpadded_base64(digest, urlsafe=urlsafe)


def compute_event_id(event: Mapping[str, Any], room_version: RoomVersionLike) -> str:
    """The event ID of ``event``: ``$`` + its reference hash in unpadded base64.

    Room version 3 uses the standard alphabet, version 4 onwards the URL-safe
    one. Versions 1 and 2 have no computed IDs (the origin chose them and put
    them in the event), so asking for one is an error.
    """
    rv = get_room_version(room_version, unsupported_ok=True)
    urlsafe = _urlsafe_event_ids(rv)
    digest = hashlib.sha256(encode_signed_form(event, rv)).digest()
    return "$" + encode_unpadded_base64(digest, urlsafe=urlsafe)


def _urlsafe_event_ids(rv: RoomVersion) -> bool:
    """Whether ``rv``'s event IDs use the URL-safe alphabet; an error for a
    version whose IDs are not computed.
    """
    if rv.event_id_format is EventIdFormat.V1:
        raise BadJsonError(
            f"room version {rv.identifier} has no computed event IDs: the ID is the"
            " event's own event_id field"
        )
    return rv.event_id_format is EventIdFormat.V4


def compute_room_id(create_event: Mapping[str, Any], room_version: RoomVersionLike = "12") -> str:
    """The room ID that a create event founds, in versions where the event makes the ID (v12+).

    It is ``!`` + the URL-safe unpadded base64 of the create event's reference
    hash, so nobody can claim a room ID without the event that makes it.
    """
    rv = get_room_version(room_version, unsupported_ok=True)
    if not rv.room_id_from_create_event:
        raise BadJsonError(
            f"room version {rv.identifier} has no computed room IDs: the creator chose the ID"
        )
    if create_event.get("type") != "m.room.create" or create_event.get("state_key") != "":
        raise BadJsonError("a room ID is computed from an m.room.create event with state_key ''")
    if "room_id" in create_event:
        raise BadJsonError(
            f"an m.room.create event of room version {rv.identifier} must not have a room_id"
        )
    return "!" + encode_unpadded_base64(compute_reference_hash(create_event, rv), urlsafe=True)


def hash_and_sign_event(
    event: Mapping[str, Any],
    room_version: RoomVersionLike,
    server_name: str,
    signing_key: SigningKeyLike,
) -> dict[str, Any]:
    """A copy of ``event`` with its content hash and ``server_name``'s signature.

    This is what the origin of an event does before sending it. The
    signature is made over the redacted event (content hash included), so it
    still verifies once the event is redacted; it is then put on the full
    event. Signatures already there are kept. ``event`` is not changed.
    """
    hashed = dict(event)
    hashes = hashed.get("hashes")
    hashed["hashes"] = (dict(hashes) if type(hashes) is dict else {}) | {
        "sha256": compute_content_hash(event)
    }
    signed_redacted = sign_json(redact(hashed, room_version), server_name, signing_key)
    hashed["signatures"] = signed_redacted["signatures"]
    return hashed
