"""Matrix rules with no I/O and no Trio: room versions, canonical JSON,
signing, events, authorization and state resolution.

Everything here is pure, so it can be used and tested on its own, the way h11
is used without a network.
"""

from ranvier.protocol.canonical import decode_canonical_json, encode_canonical_json
from ranvier.protocol.room_versions import (
    DEFAULT_ROOM_VERSION,
    KNOWN_ROOM_VERSIONS,
    SUPPORTED_ROOM_VERSIONS,
    RoomVersion,
    get_room_version,
)

__all__ = [
    "DEFAULT_ROOM_VERSION",
    "KNOWN_ROOM_VERSIONS",
    "SUPPORTED_ROOM_VERSIONS",
    "RoomVersion",
    "decode_canonical_json",
    "encode_canonical_json",
    "get_room_version",
]
