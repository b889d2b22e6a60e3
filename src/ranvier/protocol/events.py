"""PDUs: a typed, read-only view of an event as servers exchange it.

The original JSON is the source of truth. Hashes and signatures cover every
field, including ones ranvier does not know, so a PDU keeps the bytes it was
parsed from (``raw``) and the dict decoded from them (``json``), and the
typed attributes are a view onto them, never a replacement: storage writes
``raw``, and nothing re-serialises the view.

:meth:`Pdu.from_json` checks what any server must check before it looks at
an event at all: the shape of each field the room version's event format
requires and the spec's size limits. Signatures, hashes and the auth rules
are later layers' business.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final

import msgspec

from ranvier.errors import BadJsonError, EventTooLargeError
from ranvier.protocol.canonical import (
    CANONICAL_INT_MAX,
    decode_canonical_json,
    encode_canonical_json,
)
from ranvier.protocol.hashing import (
    content_hash_matches,
    encode_signed_form,
    event_id_from_signed_form,
)
from ranvier.protocol.redaction import redact
from ranvier.protocol.room_versions import RoomVersion, RoomVersionLike, get_room_version
from ranvier.protocol.unpadded_base64 import encode_unpadded_base64
from ranvier.protocol.untrusted_json import (
    DECODE_ERRORS,
    JsonNestedTooDeeplyError,
    check_json_nesting,
    untrusted_json_decoder,
)

__all__ = [
    "MAX_AUTH_EVENTS",
    "MAX_EVENT_BYTES",
    "MAX_ID_BYTES",
    "MAX_PREV_EVENTS",
    "Pdu",
    "pdu_room_id",
]

#: The largest PDU, as canonical JSON including signatures.
MAX_EVENT_BYTES: Final = 65_536
#: The largest ``type``, ``state_key``, ``sender``, ``room_id`` or event ID.
MAX_ID_BYTES: Final = 255
#: The most ``prev_events`` and ``auth_events`` a PDU may cite (backfill is exempt).
MAX_PREV_EVENTS: Final = 20
MAX_AUTH_EVENTS: Final = 10

# Server names as the appendices' grammar has them: a DNS name or IPv4
# address (both drawn from the same characters), or a bracketed IPv6 address,
# then an optional port.
_SERVER_NAME: Final = r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Za-z.\-]{1,255})(?::[0-9]{1,5})?"
# Localparts are checked as historical IDs are: servers must accept any code
# point except ':' and NUL, the empty localpart included.
_USER_ID: Final = re.compile(r"@[^:\x00]*:" + _SERVER_NAME)
_ROOM_ID_WITH_SERVER: Final = re.compile(r"![^:\x00]*:" + _SERVER_NAME)
# From v12 the room ID is the create event's reference hash: 32 bytes make 43
# characters of URL-safe unpadded base64.
_ROOM_ID_FROM_HASH: Final = re.compile(r"![0-9A-Za-z_\-]{43}")

_Depth = Annotated[int, msgspec.Meta(ge=0, le=CANONICAL_INT_MAX)]

# Canonical JSON of a tree whose every value is known to be allowed, which
# spares encode_canonical_json's walk over it (about half the cost of
# parsing a PDU): what decode_canonical_json returns, or what decoding
# encode_canonical_json's output returns. msgspec sorts the keys.
_encode_vetted: Final = msgspec.json.Encoder(order="sorted").encode
_NOT_SIGNED: Final = ("signatures", "unsigned")
_NOT_IN_CONTENT_HASH: Final = frozenset({"unsigned", "signatures", "hashes"})


class _Fields(msgspec.Struct, frozen=True):
    """The fields every supported event format requires, with their types.

    Decoding into it is the type check; dict-valued fields are then taken
    from the decoded JSON itself so that the view shares them.
    """

    type: str
    sender: str
    content: dict[str, Any]
    prev_events: tuple[str, ...]
    auth_events: tuple[str, ...]
    depth: _Depth
    origin_server_ts: int
    hashes: dict[str, str]
    signatures: dict[str, dict[str, str]]
    room_id: str | msgspec.UnsetType = msgspec.UNSET
    state_key: str | msgspec.UnsetType = msgspec.UNSET
    unsigned: dict[str, Any] = {}


def _check_id_bytes(value: str, field: str) -> None:
    # Every character is at most 4 bytes of UTF-8: short strings need no encoding.
    if len(value) * 4 > MAX_ID_BYTES and len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise EventTooLargeError(f"{field} is longer than {MAX_ID_BYTES} bytes")


def _vetted(data: bytes | msgspec.Raw | str | Mapping[str, Any], rv: RoomVersion) -> bool:
    """Whether :func:`_decode` vets every value of the tree it returns."""
    return rv.strict_canonical_json or isinstance(data, Mapping)


def _decode(
    data: bytes | msgspec.Raw | str | Mapping[str, Any], rv: RoomVersion
) -> tuple[bytes, Any]:
    if isinstance(data, Mapping):
        raw = encode_canonical_json(dict(data))
        _check_nesting(raw)
        # Decoding our own encoding gives a tree the caller cannot change under us.
        return raw, msgspec.json.decode(raw)
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadJsonError(f"PDU is not valid Unicode: {exc.reason}") from None
    else:
        raw = bytes(data)
    _check_nesting(raw)
    if rv.strict_canonical_json:
        return raw, decode_canonical_json(raw)
    try:
        return raw, msgspec.json.decode(raw)
    except DECODE_ERRORS as exc:
        raise BadJsonError(f"invalid JSON: {exc}") from None


def _check_nesting(raw: bytes) -> None:
    # Whoever made the PDU, it is refused as invalid JSON when it nests
    # deeper than JSON from outside may: every server then agrees on it,
    # and nothing that walks it later can run out of stack.
    try:
        check_json_nesting(raw)
    except JsonNestedTooDeeplyError as exc:
        raise BadJsonError(f"invalid PDU: {exc}") from None


class _RoomIdOnly(msgspec.Struct):
    """A PDU read for its room ID alone: the rest is parsed but not built."""

    room_id: str


# The PDU's nesting is checked when it is parsed as a PDU, after this.
_decode_room_id = untrusted_json_decoder(_RoomIdOnly, check_nesting=False)


def pdu_room_id(raw: bytes) -> str | None:
    """The room a PDU as received names, read without building the event
    (to find its room's version first); None when it is not JSON or names
    no room as a string."""
    try:
        return _decode_room_id(raw).room_id
    except msgspec.DecodeError:
        return None


class Pdu(msgspec.Struct, frozen=True, eq=False):
    """One PDU of one room version: the original JSON and a typed view of it.

    Build it with :meth:`from_json`. Two views are equal when their event IDs
    are, which is when their redacted forms are: a PDU and its redacted copy
    are the same event.
    """

    #: Computed from the reference hash (room version 3 onwards); never read from the JSON.
    event_id: str
    room_version: RoomVersion
    #: The decoded original. Shared, not copied: never change it.
    json: dict[str, Any]
    #: The bytes it was decoded from, or a dict's canonical encoding: what storage keeps.
    raw: bytes
    #: The redacted event without signatures and ``unsigned``, as canonical
    #: JSON: the event ID is its hash, and every signature on the event signs
    #: it. Kept so that checking the signatures need not redact and encode
    #: the event again.
    signed_form: bytes
    type: str
    state_key: str | None
    sender: str
    #: For a create event of a version whose room ID comes from it: that computed ID.
    room_id: str
    content: dict[str, Any]
    prev_event_ids: tuple[str, ...]
    auth_event_ids: tuple[str, ...]
    depth: int
    origin_server_ts: int
    #: The event a redaction redacts: ``content.redacts`` from v11, top-level before.
    redacts: str | None
    hashes: dict[str, str]
    signatures: dict[str, dict[str, str]]
    unsigned: dict[str, Any]
    #: ``content.membership`` of an m.room.member event, when it is a string.
    membership: str | None

    def is_state(self) -> bool:
        return self.state_key is not None

    def content_hash_matches(self) -> bool:
        """Whether ``hashes.sha256`` is the content hash of the event
        (:func:`~ranvier.protocol.hashing.content_hash_matches`), encoding
        without checking again the values the parse vetted.
        """
        if not self.room_version.strict_canonical_json:
            return content_hash_matches(self.json)
        hashed = {key: value for key, value in self.json.items() if key not in _NOT_IN_CONTENT_HASH}
        digest = hashlib.sha256(_encode_vetted(hashed)).digest()
        return self.hashes["sha256"] == encode_unpadded_base64(digest)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Pdu):
            return self.event_id == other.event_id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.event_id)

    def __repr__(self) -> str:
        state = "" if self.state_key is None else f", state_key={self.state_key!r}"
        return f"Pdu({self.event_id!r}, type={self.type!r}{state}, room_id={self.room_id!r})"

    @classmethod
    def from_json(
        cls,
        data: bytes | msgspec.Raw | str | Mapping[str, Any],
        room_version: RoomVersionLike,
        *,
        check_limits: bool = True,
    ) -> Pdu:
        """Parse and check a PDU of ``room_version``.

        Raises :class:`~ranvier.errors.UnsupportedRoomVersionError` for a room
        version ranvier does not take part in, :class:`~ranvier.errors.BadJsonError`
        for JSON that is invalid or not shaped as the event format requires,
        and :class:`~ranvier.errors.EventTooLargeError` for a PDU over the size
        limits. ``check_limits=False`` lifts only the limits on the number of
        ``prev_events`` and ``auth_events``, which /backfill responses are
        exempt from.
        """
        rv = get_room_version(room_version)
        raw, obj = _decode(data, rv)
        if type(obj) is not dict:
            raise BadJsonError("a PDU must be a JSON object")
        # Canonical JSON is never longer than any other encoding of the same
        # value, so only a long input needs encoding to be measured.
        if len(raw) > MAX_EVENT_BYTES and len(encode_canonical_json(obj)) > MAX_EVENT_BYTES:
            raise EventTooLargeError(
                f"PDU is larger than {MAX_EVENT_BYTES} bytes as canonical JSON"
            )
        try:
            fields = msgspec.convert(obj, _Fields)
        except msgspec.ValidationError as exc:
            raise BadJsonError(f"invalid PDU: {exc}") from None

        _check_id_bytes(fields.type, "type")
        _check_id_bytes(fields.sender, "sender")
        if _USER_ID.fullmatch(fields.sender) is None:
            raise BadJsonError(f"sender is not a user ID: {fields.sender!r}")
        state_key = None if fields.state_key is msgspec.UNSET else fields.state_key
        if state_key is not None:
            _check_id_bytes(state_key, "state_key")
        if "sha256" not in fields.hashes:
            raise BadJsonError("hashes has no sha256")
        _check_event_ids(fields.prev_events, "prev_events", MAX_PREV_EVENTS, check_limits)
        _check_event_ids(fields.auth_events, "auth_events", MAX_AUTH_EVENTS, check_limits)

        signed_form = _signed_form(obj, rv) if _vetted(data, rv) else encode_signed_form(obj, rv)
        event_id = event_id_from_signed_form(signed_form, rv)
        room_id = _room_id(fields, rv, state_key, event_id)
        content = obj["content"]
        return cls(
            event_id=event_id,
            room_version=rv,
            json=obj,
            raw=raw,
            signed_form=signed_form,
            type=fields.type,
            state_key=state_key,
            sender=fields.sender,
            room_id=room_id,
            content=content,
            prev_event_ids=fields.prev_events,
            auth_event_ids=fields.auth_events,
            depth=fields.depth,
            origin_server_ts=fields.origin_server_ts,
            redacts=_redacts(obj, content, fields.type, rv),
            hashes=obj["hashes"],
            signatures=obj["signatures"],
            unsigned=obj.get("unsigned", fields.unsigned),
            membership=_membership(fields.type, content),
        )


def _signed_form(obj: dict[str, Any], rv: RoomVersion) -> bytes:
    """:func:`~ranvier.protocol.hashing.encode_signed_form` of a vetted tree."""
    redacted = redact(obj, rv)
    for key in _NOT_SIGNED:
        redacted.pop(key, None)
    return _encode_vetted(redacted)


def _check_event_ids(event_ids: tuple[str, ...], field: str, most: int, check_limits: bool) -> None:
    if check_limits and len(event_ids) > most:
        raise EventTooLargeError(f"{field} lists {len(event_ids)} events; at most {most} allowed")
    for event_id in event_ids:
        _check_id_bytes(event_id, f"an event ID in {field}")


def _room_id(fields: _Fields, rv: RoomVersion, state_key: str | None, event_id: str) -> str:
    if rv.room_id_from_create_event:
        if fields.type == "m.room.create" and state_key == "":
            if fields.room_id is not msgspec.UNSET:
                raise BadJsonError(
                    f"an m.room.create event of room version {rv.identifier} must not have a"
                    " room_id: the room ID is computed from it"
                )
            # Both IDs are the same URL-safe encoding of the reference hash.
            return "!" + event_id[1:]
        shape = _ROOM_ID_FROM_HASH
    else:
        shape = _ROOM_ID_WITH_SERVER
    if fields.room_id is msgspec.UNSET:
        raise BadJsonError("invalid PDU: Object missing required field `room_id`")
    _check_id_bytes(fields.room_id, "room_id")
    if shape.fullmatch(fields.room_id) is None:
        raise BadJsonError(
            f"room_id {fields.room_id!r} is not a room ID of room version {rv.identifier}"
        )
    return fields.room_id


def _redacts(
    obj: dict[str, Any], content: dict[str, Any], event_type: str, rv: RoomVersion
) -> str | None:
    redacts = content.get("redacts") if rv.redacts_in_content else obj.get("redacts")
    if redacts is None or type(redacts) is str:
        return redacts
    if event_type == "m.room.redaction":
        where = "content.redacts" if rv.redacts_in_content else "redacts"
        raise BadJsonError(f"{where} of an m.room.redaction event must be an event ID string")
    # Elsewhere the key means nothing to the protocol: it is just content.
    return None


def _membership(event_type: str, content: dict[str, Any]) -> str | None:
    if event_type != "m.room.member":
        return None
    membership = content.get("membership")
    return membership if type(membership) is str else None
