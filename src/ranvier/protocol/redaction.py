"""Redaction: what is left of an event once its content is stripped.

Redaction is not only what happens to a message a user deletes. The redacted
form of every event is what its signatures and its reference hash (and so its
event ID) are computed over, so every server must redact byte for byte alike,
and a server that receives an event whose content hash does not match keeps
only the redacted form. The keys that survive are fixed per room version; the
table of :class:`~ranvier.protocol.room_versions.RedactionAlgorithm` says
which algorithm applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ranvier.protocol.room_versions import RedactionAlgorithm, RoomVersionLike, get_room_version

__all__ = ["redact"]

_A = RedactionAlgorithm

#: Top-level keys that survive, per algorithm. Anything else goes, including
#: ``unsigned`` and, before v11, a redaction event's top-level ``redacts``.
_TOP_LEVEL_BEFORE_V11: Final = frozenset(
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
        "prev_state",
        "auth_events",
        "origin",
        "origin_server_ts",
        "membership",
    }
)
_TOP_LEVEL_V11: Final = _TOP_LEVEL_BEFORE_V11 - {"origin", "membership", "prev_state"}

_POWER_LEVELS_V1: Final = frozenset(
    {"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"}
)

_CONTENT_V1: Final[dict[str, frozenset[str]]] = {
    "m.room.member": frozenset({"membership"}),
    "m.room.create": frozenset({"creator"}),
    "m.room.join_rules": frozenset({"join_rule"}),
    "m.room.power_levels": _POWER_LEVELS_V1,
    "m.room.aliases": frozenset({"aliases"}),
    "m.room.history_visibility": frozenset({"history_visibility"}),
}
_CONTENT_V6: Final = {k: v for k, v in _CONTENT_V1.items() if k != "m.room.aliases"}
_CONTENT_V8: Final = _CONTENT_V6 | {"m.room.join_rules": frozenset({"join_rule", "allow"})}
_CONTENT_V9: Final = _CONTENT_V8 | {
    "m.room.member": frozenset({"membership", "join_authorised_via_users_server"})
}
# m.room.create keeps its whole content in v11 and m.room.member keeps part of
# ``third_party_invite``: both are handled in _redact_content, not by this table.
_CONTENT_V11: Final = _CONTENT_V9 | {
    "m.room.power_levels": _POWER_LEVELS_V1 | {"invite"},
    "m.room.redaction": frozenset({"redacts"}),
}

_RULES: Final[dict[RedactionAlgorithm, tuple[frozenset[str], dict[str, frozenset[str]]]]] = {
    _A.V1: (_TOP_LEVEL_BEFORE_V11, _CONTENT_V1),
    _A.V6: (_TOP_LEVEL_BEFORE_V11, _CONTENT_V6),
    _A.V8: (_TOP_LEVEL_BEFORE_V11, _CONTENT_V8),
    _A.V9: (_TOP_LEVEL_BEFORE_V11, _CONTENT_V9),
    _A.V11: (_TOP_LEVEL_V11, _CONTENT_V11),
}


def _redact_content(
    event_type: Any, content: Any, algorithm: RedactionAlgorithm, keep: Mapping[str, frozenset[str]]
) -> dict[str, Any]:
    if type(content) is not dict:
        return {}
    if algorithm is _A.V11 and event_type == "m.room.create":
        return dict(content)
    allowed = keep.get(event_type) if type(event_type) is str else None
    if allowed is None:
        return {}
    kept = {key: value for key, value in content.items() if key in allowed}
    if algorithm is _A.V11 and event_type == "m.room.member":
        invite = content.get("third_party_invite")
        # Only ``signed`` survives. An object without it leaves an empty
        # object, as Synapse does: the spec is silent and every server must
        # hash the same bytes.
        if type(invite) is dict:
            kept["third_party_invite"] = {"signed": invite["signed"]} if "signed" in invite else {}
    return kept


def redact(event: Mapping[str, Any], room_version: RoomVersionLike) -> dict[str, Any]:
    """The redacted form of ``event`` under ``room_version``'s rules, as a new dict.

    ``event`` is left as it was. Nested values that survive are shared with
    it, not copied: treat both as read-only. An event without ``content``
    gets an empty one, which is what every implementation signs.
    """
    algorithm = get_room_version(room_version, unsupported_ok=True).redaction
    top_level, content_keep = _RULES[algorithm]
    redacted = {key: value for key, value in event.items() if key in top_level}
    redacted["content"] = _redact_content(
        event.get("type"), event.get("content"), algorithm, content_keep
    )
    return redacted
