"""Matrix rules with no I/O and no Trio: room versions, canonical JSON,
signing, events, authorization and state resolution.

Everything here is pure, so it can be used and tested on its own, the way h11
is used without a network.
"""

from ranvier.protocol.canonical import decode_canonical_json, encode_canonical_json
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import (
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    compute_room_id,
    content_hash_matches,
    hash_and_sign_event,
)
from ranvier.protocol.redaction import redact
from ranvier.protocol.room_versions import (
    DEFAULT_ROOM_VERSION,
    KNOWN_ROOM_VERSIONS,
    SUPPORTED_ROOM_VERSIONS,
    RoomVersion,
    get_room_version,
)
from ranvier.protocol.signing import (
    SigningKey,
    VerifyKey,
    generate_signing_key,
    read_signing_keys,
    sign_json,
    verify_signed_json,
    write_signing_keys,
)

__all__ = [
    "DEFAULT_ROOM_VERSION",
    "KNOWN_ROOM_VERSIONS",
    "SUPPORTED_ROOM_VERSIONS",
    "Pdu",
    "RoomVersion",
    "SigningKey",
    "VerifyKey",
    "compute_content_hash",
    "compute_event_id",
    "compute_reference_hash",
    "compute_room_id",
    "content_hash_matches",
    "decode_canonical_json",
    "encode_canonical_json",
    "generate_signing_key",
    "get_room_version",
    "hash_and_sign_event",
    "read_signing_keys",
    "redact",
    "sign_json",
    "verify_signed_json",
    "write_signing_keys",
]
