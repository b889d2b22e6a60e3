"""Redactions as the storage tests build them: the redaction tests and the
tests of pruning redacted content make the same ones."""

from __future__ import annotations

from typing import Any

from ranvier.protocol.events import Pdu
from ranvier.testing import RoomBuilder


def redaction_of(room: RoomBuilder, sender: str, target: str, **options: Any) -> Pdu:
    """A redaction of ``target`` where the room's version wants its ``redacts``."""
    if room.room_version.redacts_in_content:
        return room.send_fields(
            {"type": "m.room.redaction", "sender": sender, "content": {"redacts": target}},
            **options,
        )
    return room.send_fields(
        {"type": "m.room.redaction", "sender": sender, "content": {}, "redacts": target},
        **options,
    )
