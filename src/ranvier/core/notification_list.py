"""``GET /notifications``: the events a user was, or would have been,
notified about, newest first.

Like the counts of :mod:`ranvier.core.notification_counts`, the list is
worked out when asked for, from the user's push rules as they are now, not
kept as events are written: ingestion pays nothing for it, and most users
never open the list. So it answers "would have been notified": an event
whose rule was since muted, or whose sender the user now ignores, drops
out of it. The room state the rules read is the room's current state, as
for the counts.

A page evaluates at most :data:`SCAN_LIMIT` events. When that many held
fewer notifications than asked for, the page is short and its
``next_token`` goes on from the last event looked at, so a user whose
rooms are busy but who is rarely notified never makes one request walk
their whole history.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.canonical import CANONICAL_INT_MAX, CANONICAL_INT_MIN
from ranvier.protocol.numbers import is_decimal_number
from ranvier.protocol.push_evaluation import PushOutcome, evaluate_push_rules
from ranvier.storage.notification_reads import NotificationCandidates, NotificationRoom
from ranvier.storage.records import StoredEvent

from .client_events import client_event, thread_root
from .notification_counts import PushRuleSource, count_cap, room_push_context
from .replaced_state import ReplacedStateSource, replaced_unsigned, with_replaced

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "SCAN_LIMIT",
    "NotificationCandidateReader",
    "NotificationList",
    "ServedEventSource",
]

#: Notifications per page when the client names no limit.
DEFAULT_LIMIT: Final = 20
#: Notifications per page at most, whatever the client asks.
MAX_LIMIT: Final = 100
#: Events evaluated per page at most.
SCAN_LIMIT: Final = 1_000
#: Events read from storage at a time while a page is filled.
_READ_BATCH: Final = 200


class NotificationCandidateReader(ReplacedStateSource, Protocol):
    """Storage's side: :class:`ranvier.storage.notification_reads.NotificationReads`."""

    async def notification_candidates(
        self, user_id: str, *, before: int | None, limit: int, count_cap: int
    ) -> NotificationCandidates: ...

    async def ignored_users(self, user_id: str) -> frozenset[str]: ...


class ServedEventSource(Protocol):
    """Events as clients are served them, redactions applied."""

    async def get_served_events(self, event_ids: Collection[str]) -> dict[str, StoredEvent]: ...


@dataclass(frozen=True, slots=True)
class _Found:
    ordering: int
    room_id: str
    event_id: str
    outcome: PushOutcome
    read: bool


class NotificationList:
    """Pages of a user's notifications."""

    def __init__(
        self,
        store: NotificationCandidateReader,
        events: ServedEventSource,
        rules: PushRuleSource,
    ) -> None:
        self._store = store
        self._events = events
        self._rules = rules

    async def page(
        self,
        user_id: str,
        *,
        from_token: str | None,
        limit: int | None,
        only_highlight: bool,
    ) -> dict[str, Any]:
        """The body of a ``/notifications`` answer."""
        before = _parse_token(from_token)
        wanted = _limit(limit)
        rule_set = await self._rules.rule_set(user_id)
        ignored = await self._store.ignored_users(user_id)
        cap = count_cap(rule_set)
        found: list[_Found] = []
        scanned = 0
        more = True
        while more and len(found) < wanted and scanned < SCAN_LIMIT:
            batch = await self._store.notification_candidates(
                user_id,
                before=before,
                limit=min(_READ_BATCH, SCAN_LIMIT - scanned),
                count_cap=cap,
            )
            more = batch.more
            contexts = {
                room_id: room_push_context(user_id, room) for room_id, room in batch.rooms.items()
            }
            for ordering, room_id, event_id, raw in batch.events:
                scanned += 1
                before = ordering
                event = msgspec.json.decode(raw)
                if not isinstance(event, dict) or event.get("sender") in ignored:
                    continue
                outcome = evaluate_push_rules(rule_set, event, contexts[room_id])
                if outcome is None or not outcome.notify:
                    continue
                if only_highlight and not outcome.highlight:
                    continue
                found.append(
                    _Found(
                        ordering=ordering,
                        room_id=room_id,
                        event_id=event_id,
                        outcome=outcome,
                        read=_read(ordering, event, batch.rooms[room_id]),
                    )
                )
                if len(found) == wanted:
                    more = more or ordering != batch.events[-1][0]
                    break
        return await self._answer(found, before if more else None)

    async def _answer(self, found: list[_Found], next_from: int | None) -> dict[str, Any]:
        served = await self._events.get_served_events([entry.event_id for entry in found])
        # A state event that notifies (a topic or name change, an invite)
        # says what it replaced, as every other endpoint serves it.
        replaced = await replaced_unsigned(self._store, served.values())
        notifications = []
        for entry in found:
            event = served.get(entry.event_id)
            if event is None:
                continue
            formatted = client_event(event, unsigned=with_replaced(replaced, event.event_id, None))
            formatted.pop("room_id", None)
            notifications.append(
                {
                    "actions": list(entry.outcome.actions),
                    "event": formatted,
                    "read": entry.read,
                    "room_id": entry.room_id,
                    "ts": event.origin_server_ts,
                }
            )
        answer: dict[str, Any] = {"notifications": notifications}
        if next_from is not None:
            answer["next_token"] = str(next_from)
        return answer


def _read(ordering: int, event: Mapping[str, Any], room: NotificationRoom) -> bool:
    """Whether the user's receipts read the event: an unthreaded one, or
    the one of the event's own timeline (its thread, or ``main``).
    """
    timeline = thread_root(event.get("content")) or "main"
    return ordering <= max(room.read_upto, room.thread_reads.get(timeline, 0))


def _parse_token(token: str | None) -> int | None:
    if token is None:
        return None
    # Tokens are stream positions, which SQLite holds in 64 bits; within
    # canonical JSON's integers, so a larger number is no token of ours.
    if (
        not is_decimal_number(token.removeprefix("-"))
        or len(token) > 20
        or not CANONICAL_INT_MIN <= int(token) <= CANONICAL_INT_MAX
    ):
        raise MatrixError(
            f"from is not a token this server gave: {token[:40]!r}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return int(token)


def _limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if limit < 1:
        raise MatrixError(
            f"limit must be a positive number, not {limit}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return min(limit, MAX_LIMIT)
