"""Unread notification counts for ``/sync``: per joined room, how many
events since the user last read it notify them, and how many highlight.

The spec's "Receiving notifications": the server counts the events after
the user's read receipt (the later of ``m.read`` and ``m.read.private``)
whose push rules say ``notify``, and those whose ``highlight`` tweak is
set. An event the user sent marks everything before it read, as a receipt
there would.

Counts are worked out when a sync asks for them, not when events are
written: ingestion stays as fast for rooms whose members never look, and a
change of push rules applies from the next sync. What was counted is kept
per user and room (a bounded cache, per process): while the user's
receipt stays where it was and the rules are the same, a sync evaluates
only the events since the last one. The room state the rules read (the
user's display name, the member count, the power levels) is the current
state when an event is evaluated, which for events counted as they come is
the state they came in.

At most :data:`SCAN_LIMIT` events after the receipt are evaluated at once:
in a room read long ago the counts cover its newest events only.

A sync whose filter asks for ``unread_thread_notifications`` gets the
counts split as the spec's threaded notifications have them: the main
timeline's, read up to its ``main`` receipt, and each thread's (events
whose ``m.relates_to`` is an ``m.thread`` relation to its root), read up
to its own receipt; an unthreaded receipt reads them all. Once a user has
a threaded receipt in a room, the room's count is the sum of those: a
receipt in a thread reads that thread alone, and one on the main timeline
leaves the threads unread, as the spec has it for a client that did not
ask for the split. Such a room is counted afresh whenever an event or a
receipt changed it, as each timeline may have moved apart; a room with
unthreaded receipts alone is counted on from the last count.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.events import Pdu
from ranvier.protocol.numbers import is_decimal_number
from ranvier.protocol.power_levels import get_notification_level, get_user_power_level
from ranvier.protocol.push_evaluation import PushContext, evaluate_push_rules
from ranvier.storage.notification_reads import Counted, UnreadEvents

from .client_events import thread_root

__all__ = [
    "SCAN_LIMIT",
    "NotificationCounts",
    "PushRuleSource",
    "UnreadEventReader",
    "count_cap",
    "push_context",
    "room_push_context",
]

#: Events evaluated per room and sync at most.
SCAN_LIMIT: Final = 1_000
#: Joined members are counted up to this many more than any rule asks about.
_COUNT_MARGIN: Final = 2
_DEFAULT_CACHE: Final = 20_000


class UnreadEventReader(Protocol):
    """Storage's side: :class:`ranvier.storage.notification_reads.NotificationReads`."""

    async def unread_events(
        self,
        user_id: str,
        rooms: Mapping[str, Counted | None],
        *,
        upto: int,
        limit: int,
        count_cap: int,
        by_thread: bool = False,
    ) -> dict[str, UnreadEvents]: ...

    async def ignored_users(self, user_id: str) -> frozenset[str]: ...


class PushRuleSource(Protocol):
    """A user's rule set as ``GET /pushrules/`` shows it under ``global``."""

    async def rule_set(self, user_id: str) -> dict[str, list[dict[str, Any]]]: ...


@dataclass(frozen=True, slots=True)
class _Counted:
    rules: bytes
    read_upto: int
    counted_upto: int
    receipts_seen: int
    notifications: int
    highlights: int


class NotificationCounts:
    """Counts for ``/sync``'s ``unread_notifications``."""

    def __init__(
        self,
        store: UnreadEventReader,
        rules: PushRuleSource,
        *,
        cache_size: int = _DEFAULT_CACHE,
    ) -> None:
        self._store = store
        self._rules = rules
        self._cache_size = cache_size
        self._counted: OrderedDict[tuple[str, str], _Counted] = OrderedDict()

    async def for_rooms(
        self, user_id: str, room_ids: Collection[str], upto: int
    ) -> dict[str, dict[str, int]]:
        """Each room's ``{"notification_count", "highlight_count"}`` as of
        stream ordering ``upto``.
        """
        if not room_ids:
            return {}
        rule_set = await self._rules.rule_set(user_id)
        ignored = await self._store.ignored_users(user_id)
        # What was counted under other rules, or another ignore list, is
        # counted again.
        fingerprint = msgspec.json.encode([rule_set, sorted(ignored)])
        known: dict[str, Counted | None] = {}
        for room_id in room_ids:
            counted = self._counted.get((user_id, room_id))
            known[room_id] = (
                None
                if counted is None or counted.rules != fingerprint
                else (counted.read_upto, counted.counted_upto, counted.receipts_seen)
            )
        unread = await self._store.unread_events(
            user_id, known, upto=upto, limit=SCAN_LIMIT, count_cap=count_cap(rule_set)
        )
        answer: dict[str, dict[str, int]] = {}
        for room_id, found in unread.items():
            counts = (0, 0)
            before = self._counted.get((user_id, room_id))
            was = known[room_id]
            if before is not None and was is not None and was[:2] == (found.read_upto, found.after):
                # Storage went on from where the last count stopped, or
                # found nothing changed since.
                counts = (before.notifications, before.highlights)
            if found.thread_reads:
                # Threaded receipts: storage read every timeline from the
                # unthreaded receipt, each counted to its own.
                split = _count(user_id, rule_set, found, (0, 0), by_thread=True, ignored=ignored)
                counts = (
                    sum(thread[0] for thread in split.values()),
                    sum(thread[1] for thread in split.values()),
                )
            elif found.events:
                counts = _count(user_id, rule_set, found, counts, ignored=ignored)[None]
            self._remember(
                (user_id, room_id),
                _Counted(
                    fingerprint,
                    found.read_upto,
                    max(found.after, upto),
                    found.receipts_seen,
                    *counts,
                ),
            )
            answer[room_id] = _shown(counts)
        return answer

    async def for_rooms_by_thread(
        self, user_id: str, room_ids: Collection[str], upto: int
    ) -> dict[str, tuple[dict[str, int], dict[str, dict[str, int]]]]:
        """Each room's counts as the spec's threaded notifications split
        them: the main timeline's, and each thread's that has any, by its
        root. Each timeline is read up to its own receipt (``main`` for the
        main timeline), or the unthreaded one when later. Not kept between
        syncs: the receipts of threads move too often for it to pay.
        """
        if not room_ids:
            return {}
        rule_set = await self._rules.rule_set(user_id)
        ignored = await self._store.ignored_users(user_id)
        unread = await self._store.unread_events(
            user_id,
            dict.fromkeys(room_ids),
            upto=upto,
            limit=SCAN_LIMIT,
            count_cap=count_cap(rule_set),
            by_thread=True,
        )
        answer: dict[str, tuple[dict[str, int], dict[str, dict[str, int]]]] = {}
        for room_id, found in unread.items():
            counts = _count(user_id, rule_set, found, (0, 0), by_thread=True, ignored=ignored)
            threads = {
                root: _shown(thread)
                for root, thread in counts.items()
                if root is not None and thread != (0, 0)
            }
            answer[room_id] = (_shown(counts[None]), threads)
        return answer

    def _remember(self, key: tuple[str, str], counted: _Counted) -> None:
        self._counted[key] = counted
        self._counted.move_to_end(key)
        while len(self._counted) > self._cache_size:
            self._counted.popitem(last=False)


def _count(
    user_id: str,
    rule_set: Mapping[str, Sequence[Mapping[str, Any]]],
    found: UnreadEvents,
    start: tuple[int, int],
    *,
    by_thread: bool = False,
    ignored: frozenset[str] = frozenset(),
) -> dict[str | None, tuple[int, int]]:
    """The counts after ``found.events``, the room's (None) starting from
    ``start``; ``by_thread``, the main timeline's (None) and each thread's
    apart, each from its own receipt. The events of ``ignored`` users
    never count, as they are never served.
    """
    counts: dict[str | None, tuple[int, int]] = {None: start}
    context = room_push_context(user_id, found)
    for ordering, sender, raw in found.events:
        if sender == user_id and not by_thread:
            counts[None] = (0, 0)
            continue
        if sender in ignored:
            continue
        event = msgspec.json.decode(raw)
        if not isinstance(event, dict):
            continue
        thread = thread_root(event.get("content")) if by_thread else None
        if by_thread and ordering <= found.thread_reads.get(thread or "main", found.read_upto):
            continue
        if sender == user_id:
            # Sending an event marks its timeline read up to it.
            counts[thread] = (0, 0)
            continue
        outcome = evaluate_push_rules(rule_set, event, context)
        if outcome is not None and outcome.notify:
            notifications, highlights = counts.get(thread, (0, 0))
            counts[thread] = (notifications + 1, highlights + outcome.highlight)
    return counts


def _shown(counts: tuple[int, int]) -> dict[str, int]:
    return {"notification_count": counts[0], "highlight_count": counts[1]}


class RoomPushFields(Protocol):
    """What a read of a room holds for the push rules of one of its members."""

    @property
    def room_version(self) -> str | None: ...
    @property
    def member_json(self) -> bytes | None: ...
    @property
    def power_levels_json(self) -> bytes | None: ...
    @property
    def create_json(self) -> bytes | None: ...
    @property
    def joined(self) -> int: ...


def room_push_context(user_id: str, room: RoomPushFields) -> PushContext:
    """:func:`push_context` from a read of the room."""
    return push_context(
        user_id,
        room_version=room.room_version,
        member_json=room.member_json,
        power_levels_json=room.power_levels_json,
        create_json=room.create_json,
        joined=room.joined,
    )


def push_context(
    user_id: str,
    *,
    room_version: str | None,
    member_json: bytes | None,
    power_levels_json: bytes | None,
    create_json: bytes | None,
    joined: int,
) -> PushContext:
    """What the push rules of ``user_id`` read of a room, from its stored
    member, power levels and create events.
    """
    power_levels = _parsed(power_levels_json, room_version)
    create = _parsed(create_json, room_version)
    member = _parsed(member_json, room_version)
    name = None if member is None else member.content.get("displayname")

    def may_notify(sender: str, key: str) -> bool:
        level = get_user_power_level(sender, power_levels=power_levels, create=create)
        return level >= get_notification_level(power_levels, key)

    return PushContext(
        user_id=user_id,
        display_name=name if isinstance(name, str) else None,
        member_count=joined,
        may_notify=may_notify,
    )


def _parsed(raw: bytes | None, version: str | None) -> Pdu | None:
    if raw is None or version is None:
        return None
    try:
        return Pdu.from_json(raw, version, check_limits=False)
    except MatrixError:
        return None


def count_cap(rule_set: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
    """How far the joined members must be counted for every
    ``room_member_count`` condition of ``rule_set`` to be decided.
    """
    most = 0
    for rules in rule_set.values():
        for rule in rules:
            for condition in rule.get("conditions", ()) or ():
                if isinstance(condition, Mapping) and condition.get("kind") == "room_member_count":
                    bound = condition.get("is")
                    digits = bound.lstrip("<>=") if isinstance(bound, str) else ""
                    if is_decimal_number(digits):
                        most = max(most, int(digits))
    return most + _COUNT_MARGIN
