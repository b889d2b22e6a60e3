"""Events as clients see them: the client-server API's ``ClientEvent``.

Servers exchange PDUs, with hashes, signatures, prev and auth events;
clients get the fields that say what happened and who did it. Every
endpoint that hands events to clients (``/rooms/.../event``, ``/state``,
``/members``, ``/sync``, ``/messages``) formats them with
:func:`client_event`, so they all agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ranvier.storage.records import StoredEvent
from ranvier.storage.redactions import RedactedEvent

__all__ = ["client_event", "event_content"]


class _Fields(msgspec.Struct):
    """The fields of a stored PDU that the client format keeps."""

    content: dict[str, Any] = {}
    redacts: str | None = None


_decode_fields = msgspec.json.Decoder(_Fields).decode


def event_content(event: StoredEvent) -> dict[str, Any]:
    """The event's ``content``, decoded from the JSON stored."""
    return _decode_fields(event.json).content


def thread_root(content: object) -> str | None:
    """The thread root an event's ``content`` names with an ``m.thread``
    relation, or None for an event of the main timeline.
    """
    relation = content.get("m.relates_to") if isinstance(content, Mapping) else None
    if not isinstance(relation, Mapping) or relation.get("rel_type") != "m.thread":
        return None
    root = relation.get("event_id")
    return root if isinstance(root, str) else None


def client_event(
    event: StoredEvent,
    *,
    now_ms: int | None = None,
    unsigned: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``event`` in the client format.

    ``unsigned`` gets ``age`` (milliseconds since the event was sent, as
    the sender's clock put it) when ``now_ms`` is given, and whatever the
    caller adds through ``unsigned`` (``prev_content``, ``transaction_id``
    for the sender's own device, ...). The PDU's own ``unsigned``, which
    another server filled, is not passed on. A redacted event (storage
    hands it back as a :class:`~ranvier.storage.redactions.RedactedEvent`)
    carries the redaction that applied as ``redacted_because``, as the
    spec asks, so that a client can tell it from an event sent empty.
    """
    fields = _decode_fields(event.json)
    formatted: dict[str, Any] = {
        "content": fields.content,
        "event_id": event.event_id,
        "origin_server_ts": event.origin_server_ts,
        "room_id": event.room_id,
        "sender": event.sender,
        "type": event.type,
    }
    if event.state_key is not None:
        formatted["state_key"] = event.state_key
    if fields.redacts is not None:
        # Before v11 a redaction names its target at the top level.
        formatted["redacts"] = fields.redacts
    extra: dict[str, Any] = {}
    if now_ms is not None:
        extra["age"] = max(0, now_ms - event.origin_server_ts)
    if isinstance(event, RedactedEvent):
        extra["redacted_because"] = client_event(event.redacted_because, now_ms=now_ms)
    if unsigned:
        extra.update(unsigned)
    if extra:
        formatted["unsigned"] = extra
    return formatted
