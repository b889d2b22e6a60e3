"""Sliding sync's extensions, answered by ``/sync``'s own streams.

* ``to_device`` (MSC3885): the device's messages after the extension's
  ``since`` (its last ``next_batch``), a page at a time; naming a
  ``since`` acknowledges (deletes) the messages up to it, as ``/sync``'s
  token does.
* ``e2ee`` (MSC3884): users whose devices changed, or who joined or left a
  shared room, since the connection's position; the device's one-time key
  counts and unused fallback key types.
* ``account_data`` (MSC3959): global account data changed since the
  connection's position (all of it on a new connection), and per room of
  the extension's rooms; a room sent ``initial`` gets all of its own.
* ``receipts`` (MSC3960) and ``typing`` (MSC3961): per room of the
  extension's rooms, the ``m.receipt`` and ``m.typing`` events changed
  since the connection's position; a room sent ``initial`` gets them whole.
* ``presence`` (MSC3575's list): the ``m.presence`` events of the users
  sharing a room with the user whose presence changed since the
  connection's position (every one known on a new connection), as
  ``/sync``'s presence section; it has no rooms of its own.

An extension's rooms are those of the lists it names (``*``: all) and the
subscriptions it names (``*``: all); naming neither means all of both.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ranvier.core.account_data import AccountData
from ranvier.core.e2e_keys import E2eSync
from ranvier.core.notifier import StreamPosition
from ranvier.core.sliding_sync_config import ANY, ExtensionConfig
from ranvier.core.sync import EndToEndSource, EphemeralSource, PresenceSource
from ranvier.errors import MatrixError
from ranvier.protocol.numbers import is_decimal_number

__all__ = ["ExtensionSources", "RoomsChosen", "extension_rooms", "extensions_response"]


@dataclass(frozen=True, slots=True)
class ExtensionSources:
    """The streams extensions read; None where the server has none."""

    account_data: AccountData | None = None
    receipts: EphemeralSource | None = None
    typing: EphemeralSource | None = None
    end_to_end: EndToEndSource | None = None
    presence: PresenceSource | None = None


@dataclass(frozen=True, slots=True)
class RoomsChosen:
    """The rooms a request chose: per list, those in its ranges; the
    subscribed rooms the user may see; those sent ``initial``; and every
    room the user is joined to."""

    by_list: Mapping[str, Collection[str]]
    subscribed: Collection[str]
    initial: Collection[str]
    joined: Collection[str]


def extension_rooms(config: ExtensionConfig, chosen: RoomsChosen) -> set[str]:
    """The rooms an extension answers for: naming only lists leaves the
    subscriptions out, and the other way round, so a client can keep an
    extension to the rooms it shows."""
    lists, subscriptions = config.lists, config.rooms
    if lists is None and subscriptions is None:
        lists = subscriptions = frozenset({ANY})
    rooms: set[str] = set()
    if lists is not None:
        for name, room_ids in chosen.by_list.items():
            if ANY in lists or name in lists:
                rooms.update(room_ids)
    if subscriptions is not None:
        rooms.update(
            room_id
            for room_id in chosen.subscribed
            if ANY in subscriptions or room_id in subscriptions
        )
    return rooms


def _to_device_since(config: ExtensionConfig) -> int:
    since = config.since
    if since is None:
        return 0
    if not is_decimal_number(since) or len(since) > 18:
        raise MatrixError(
            f"the to_device extension's since must be a next_batch it gave, not {since[:40]!r}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return int(since)


async def extensions_response(
    sources: ExtensionSources,
    extensions: Mapping[str, ExtensionConfig],
    *,
    user_id: str,
    device_id: str,
    since: StreamPosition | None,
    now: StreamPosition,
    chosen: RoomsChosen,
) -> tuple[dict[str, Any], bool]:
    """The ``extensions`` of the response, and whether any has news."""
    answer: dict[str, Any] = {}
    news = False
    config = extensions.get("account_data")
    if config is not None and sources.account_data is not None:
        rooms = extension_rooms(config, chosen)
        after = None if since is None else since.account_data
        updates = await sources.account_data.updates(user_id, after, now.account_data)
        room_events = {
            room_id: events for room_id, events in updates.room_events.items() if room_id in rooms
        }
        fresh = [room_id for room_id in chosen.initial if room_id in rooms]
        if fresh and after is not None:
            everything = await sources.account_data.updates(user_id, None, now.account_data)
            for room_id in fresh:
                if room_id in everything.room_events:
                    room_events[room_id] = everything.room_events[room_id]
        answer["account_data"] = {"global": updates.global_events, "rooms": room_events}
        news = news or bool(updates.global_events or room_events)
    for name, source, after, upto in (
        ("receipts", sources.receipts, None if since is None else since.receipts, now.receipts),
        ("typing", sources.typing, None if since is None else since.typing, now.typing),
    ):
        config = extensions.get(name)
        if config is None or source is None:
            continue
        rooms = extension_rooms(config, chosen)
        found = await source.for_sync(user_id, rooms, after, upto)
        fresh = [room_id for room_id in chosen.initial if room_id in rooms]
        if fresh and after is not None:
            found.update(await source.for_sync(user_id, fresh, None, upto))
        answer[name] = {"rooms": found}
        news = news or bool(found)
    config = extensions.get("presence")
    if config is not None and sources.presence is not None:
        after = None if since is None else since.presence
        events = await sources.presence.for_sync(user_id, after, now.presence)
        answer["presence"] = {"events": events}
        news = news or bool(events)
    to_device = extensions.get("to_device")
    e2ee = extensions.get("e2ee")
    if (to_device is not None or e2ee is not None) and sources.end_to_end is not None:
        e2e_news = await _end_to_end(
            sources.end_to_end,
            answer,
            to_device,
            e2ee,
            user_id=user_id,
            device_id=device_id,
            since=since,
            now=now,
            joined=chosen.joined,
        )
        news = news or e2e_news
    return answer, news


async def _end_to_end(
    source: EndToEndSource,
    answer: dict[str, Any],
    to_device: ExtensionConfig | None,
    e2ee: ExtensionConfig | None,
    *,
    user_id: str,
    device_id: str,
    since: StreamPosition | None,
    now: StreamPosition,
    joined: Collection[str],
) -> bool:
    """Both end-to-end extensions from one read: the device-list span is
    the connection's, the to-device span the extension's own."""
    messages_after = 0 if to_device is None else _to_device_since(to_device)
    start: StreamPosition | None
    if since is not None:
        start = since._replace(to_device=messages_after)
    elif messages_after:
        # A new connection that goes on with its messages: no device-list
        # span (now to now), messages after its since.
        start = now._replace(to_device=messages_after)
    else:
        start = None
    read: E2eSync = await source.for_sync(user_id, device_id, joined, start, now)
    news = False
    if to_device is not None:
        answer["to_device"] = {"next_batch": str(read.to_device_reached), "events": read.to_device}
        news = bool(read.to_device)
    if e2ee is not None:
        answer["e2ee"] = {
            "device_lists": {"changed": read.changed, "left": read.left},
            "device_one_time_keys_count": read.key_counts,
            "device_unused_fallback_key_types": read.unused_fallbacks,
        }
        news = news or bool(read.changed or read.left)
    return news
