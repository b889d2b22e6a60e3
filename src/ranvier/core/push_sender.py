"""Push notifications: each new event that a user's push rules say notify
them goes to the push gateways of their pushers (the spec's Push Gateway
API, ``POST /_matrix/push/v1/notify``).

The sender follows the event stream: it reads the accepted events written
after the position it last reached, in order, whoever wrote them (local
clients, federation, workers), judges each for the joined members of its
room who have pushers, and hands each notification to the pusher's own
delivery task. It records its position as it goes, so after a restart it
goes on from where it was: events are neither pushed twice by the stream
nor skipped. A server that never ran it starts from the newest event. A
server with no pushers at all passes over the stream without reading it.

Invariants
----------

* **A slow or dead gateway holds up only its own pushers.** Each pusher
  has a task and a queue of at most ``queue_size`` notifications; when the
  queue is full the oldest is dropped (a push is a nudge, and the client
  catches up on its next sync). A failed request is retried after a
  backoff that doubles up to ``max_backoff`` seconds, the notification
  kept at the head of the queue.
* **A pushkey the gateway rejects is forgotten.** The gateway's answer
  lists the pushkeys it no longer knows; their pushers are deleted, as the
  spec asks, and nothing more is sent to them.
* **Nothing is pushed for the user's own events**, nor for rooms they are
  not joined to when the event is judged, except an invite of theirs
  (``.m.rule.invite_for_me``).

Notifications waiting in a queue are in memory only: a restart drops them,
the stream position having moved past their events.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec
import trio

from ranvier.protocol.push_evaluation import PushContext, PushOutcome, evaluate_push_rules
from ranvier.storage.pushers import PushableEvent, PusherRecord, RoomPushState

from .notification_counts import NotificationCounts, PushRuleSource, count_cap, push_context
from .notifier import StreamNotifier

__all__ = [
    "PushGateway",
    "PushGatewayError",
    "PushRefusedError",
    "PushSender",
    "PushSenderStore",
]

_log: Final = logging.getLogger(__name__)

_BATCH: Final = 200
#: Seconds between writes of a position passed without pushing anything.
_RECORD_EVERY: Final = 5.0
#: Seconds between looks for pushers while there are none.
_LOOK_FOR_PUSHERS_EVERY: Final = 1.0


class PushGatewayError(Exception):
    """The gateway could not be reached or failed: try again later."""


class PushRefusedError(Exception):
    """The gateway refused this notification for good (a 4xx answer)."""


class PushGateway(Protocol):
    """Sends one notification; :class:`ranvier.push_gateway.HttpPushGateway` is one."""

    async def notify(self, url: str, notification: Mapping[str, Any]) -> list[str]:
        """``POST`` ``{"notification": notification}`` to ``url``; the
        pushkeys the gateway rejected.
        """
        ...


class PushSenderStore(Protocol):
    """Storage's side: :class:`ranvier.storage.pushers.PusherStorage`."""

    async def events_after(self, after: int, *, limit: int) -> list[PushableEvent]: ...

    async def pushers_in_rooms(
        self, room_ids: Collection[str]
    ) -> dict[str, list[PusherRecord]]: ...

    async def room_push_state(
        self, room_id: str, user_ids: Collection[str], *, count_cap: int
    ) -> RoomPushState: ...

    async def joined_rooms(self, user_id: str) -> list[str]: ...

    async def push_position(self) -> int | None: ...

    async def set_push_position(self, stream_ordering: int) -> None: ...

    async def newest_stream_ordering(self) -> int: ...

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> None: ...

    async def pushers_of(self, user_id: str) -> list[PusherRecord]: ...

    async def any_pushers(self) -> bool: ...

    async def ignoring(self, sender: str, user_ids: Collection[str]) -> frozenset[str]: ...


_PusherKey = tuple[str, str, str]


@dataclass(eq=False)
class _Delivery:
    """One pusher's queue, drained by its task."""

    url: str
    queue: deque[dict[str, Any]]


class PushSender:
    """Follows the event stream and pushes notifications; run it with
    ``await nursery.start(sender.run)``.

    ``counts`` works out the badge (the user's unread notifications across
    their joined rooms); give it a :class:`NotificationCounts` of its own,
    so its cache follows the push stream and a sync's the sync stream.
    """

    def __init__(
        self,
        store: PushSenderStore,
        notifier: StreamNotifier,
        gateway: PushGateway,
        rules: PushRuleSource,
        counts: NotificationCounts,
        *,
        queue_size: int = 100,
        first_backoff: float = 1.0,
        max_backoff: float = 900.0,
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._gateway = gateway
        self._rules = rules
        self._counts = counts
        self._queue_size = queue_size
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._deliveries: dict[_PusherKey, _Delivery] = {}
        self._nursery: trio.Nursery | None = None
        #: The stream position judged so far; for tests and status.
        self.position = 0
        self._recorded = 0
        self._recorded_at = -math.inf
        self._pushers_changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        position = await self._store.push_position()
        if position is None:
            position = await self._store.newest_stream_ordering()
            await self._store.set_push_position(position)
        self.position = self._recorded = position
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                if not await self._store.any_pushers():
                    # Nothing to judge for: the stream is passed over
                    # without reading its events, and pushers are looked
                    # for again once a second at most, not at every write,
                    # or at once when this process sets one. Events written
                    # meanwhile stay after the position, so a pusher set
                    # meanwhile (by a worker) is not short of them.
                    await self._record(max(self.position, self._notifier.position.events))
                    with trio.move_on_after(_LOOK_FOR_PUSHERS_EVERY):
                        await self._pushers_changed.wait()
                    self._pushers_changed = trio.Event()
                    await self._wait_for_events()
                    continue
                events = await self._store.events_after(self.position, limit=_BATCH)
                if not events:
                    await self._wait_for_events()
                    continue
                queued = await self._judge(events)
                await self._record(events[-1].stream_ordering, now=queued)

    async def _record(self, position: int, *, now: bool = False) -> None:
        """Move to ``position``, and write it down when something was just
        queued or :data:`_RECORD_EVERY` seconds went by: events passed over
        without a push cost nothing to judge again after a restart, so their
        positions need not each be a write.
        """
        self.position = position
        if position > self._recorded and (
            now or trio.current_time() >= self._recorded_at + _RECORD_EVERY
        ):
            await self._store.set_push_position(position)
            self._recorded, self._recorded_at = position, trio.current_time()

    async def _wait_for_events(self) -> None:
        while self._notifier.position.events <= self.position:
            await self._notifier.wait_beyond(self._notifier.position)

    async def _judge(self, events: Sequence[PushableEvent]) -> bool:
        """Queue the notifications ``events`` make; whether there were any."""
        rooms = {event.room_id for event in events}
        pushers = await self._store.pushers_in_rooms(rooms)
        invited = await self._invitees_pushers(events)
        if not pushers and not invited:
            return False
        queued = False
        rule_sets: dict[str, dict[str, list[dict[str, Any]]]] = {}
        states: dict[str, RoomPushState] = {}
        # A room's state is read once per batch, so each member's view of
        # it (three events parsed) is made once per batch too.
        contexts: dict[tuple[str, str, bytes | None], PushContext] = {}
        ignoring: dict[tuple[str, str], bool] = {}
        for event in events:
            by_user: dict[str, list[PusherRecord]] = {}
            for pusher in (*pushers.get(event.room_id, ()), *invited.get(event.event_id, ())):
                if pusher.user_id != event.sender:
                    by_user.setdefault(pusher.user_id, []).append(pusher)
            if by_user:
                # Nothing of an ignored user reaches the user, pushes included.
                for user_id in await self._ignoring(ignoring, event.sender, list(by_user)):
                    del by_user[user_id]
            if not by_user:
                continue
            for user_id in by_user:
                if user_id not in rule_sets:
                    rule_sets[user_id] = await self._rules.rule_set(user_id)
            wanted = {*by_user, event.sender}
            state = states.get(event.room_id)
            if state is None:
                cap = max(count_cap(rules) for rules in rule_sets.values())
                state = await self._store.room_push_state(event.room_id, wanted, count_cap=cap)
                states[event.room_id] = state
            elif not wanted <= state.members.keys():
                more = await self._store.room_push_state(
                    event.room_id, wanted - state.members.keys(), count_cap=state.joined + 1
                )
                state.members.update(more.members)
            body = msgspec.json.decode(event.json)
            if not isinstance(body, dict):
                continue
            for user_id, user_pushers in by_user.items():
                member = state.members.get(user_id)
                context = contexts.get((event.room_id, user_id, member))
                if context is None:
                    context = contexts[event.room_id, user_id, member] = push_context(
                        user_id,
                        room_version=state.room_version,
                        member_json=member,
                        power_levels_json=state.power_levels_json,
                        create_json=state.create_json,
                        joined=state.joined,
                    )
                outcome = evaluate_push_rules(rule_sets[user_id], body, context)
                if outcome is None or not outcome.notify:
                    continue
                unread = await self._unread(user_id, event.stream_ordering)
                for pusher in user_pushers:
                    notification = _notification(event, body, pusher, outcome, unread, state)
                    self._enqueue(pusher, notification)
                    queued = True
        return queued

    async def _ignoring(
        self, known: dict[tuple[str, str], bool], sender: str, user_ids: Collection[str]
    ) -> list[str]:
        """Those of ``user_ids`` who ignore ``sender``; ``known`` keeps what
        was read for the batch, which is mostly a few senders' messages to
        the same members.
        """
        unknown = [user_id for user_id in user_ids if (sender, user_id) not in known]
        if unknown:
            ignoring = await self._store.ignoring(sender, unknown)
            known.update(((sender, user_id), user_id in ignoring) for user_id in unknown)
        return [user_id for user_id in user_ids if known[sender, user_id]]

    async def _invitees_pushers(
        self, events: Sequence[PushableEvent]
    ) -> dict[str, list[PusherRecord]]:
        """The pushers of users the events invite, by event ID: an invitee
        is not joined to the room, yet ``.m.rule.invite_for_me`` is for them.
        """
        found: dict[str, list[PusherRecord]] = {}
        for event in events:
            if b'"invite"' not in event.json:
                continue
            body = msgspec.json.decode(event.json)
            content = body.get("content") if isinstance(body, dict) else None
            target = body.get("state_key") if isinstance(body, dict) else None
            if (
                body.get("type") == "m.room.member"
                and isinstance(content, dict)
                and content.get("membership") == "invite"
                and isinstance(target, str)
            ):
                invitee_pushers = await self._store.pushers_of(target)
                if invitee_pushers:
                    found[event.event_id] = invitee_pushers
        return found

    async def _unread(self, user_id: str, upto: int) -> int:
        rooms = await self._store.joined_rooms(user_id)
        counts = await self._counts.for_rooms(user_id, rooms, upto)
        return sum(count["notification_count"] for count in counts.values())

    def _enqueue(self, pusher: PusherRecord, notification: dict[str, Any]) -> None:
        key = (pusher.user_id, pusher.app_id, pusher.pushkey)
        delivery = self._deliveries.get(key)
        if delivery is None:
            url = msgspec.json.decode(pusher.data_json).get("url", "")
            delivery = _Delivery(url, deque(maxlen=self._queue_size))
            self._deliveries[key] = delivery
            assert self._nursery is not None
            self._nursery.start_soon(self._deliver, key, delivery)
        if len(delivery.queue) == delivery.queue.maxlen:
            _log.info("push queue of %s full; dropping its oldest notification", key)
        delivery.queue.append(notification)

    async def _deliver(self, key: _PusherKey, delivery: _Delivery) -> None:
        user_id, app_id, pushkey = key
        backoff = self._first_backoff
        while delivery.queue:
            notification = delivery.queue[0]
            try:
                rejected = await self._gateway.notify(delivery.url, notification)
            except PushGatewayError as exc:
                _log.info("push to %s failed (%s); again in %.0f s", delivery.url, exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            except PushRefusedError as exc:
                _log.warning("push gateway %s refused a notification: %s", delivery.url, exc)
                rejected = []
            backoff = self._first_backoff
            if delivery.queue and delivery.queue[0] is notification:
                delivery.queue.popleft()
            if pushkey in rejected:
                _log.info("push gateway %s rejected pushkey of %s; deleting it", delivery.url, key)
                await self._store.delete_pusher(user_id, app_id, pushkey)
                delivery.queue.clear()
        # Synchronous from the check above to here: nothing is queued in between.
        del self._deliveries[key]

    def pushers_changed(self) -> None:
        """Tell the sender that a pusher was set or deleted here."""
        self._pushers_changed.set()

    def waiting(self) -> int:
        """Notifications queued for delivery; for tests and metrics."""
        return sum(len(delivery.queue) for delivery in self._deliveries.values())


def _notification(
    stored: PushableEvent,
    event: Mapping[str, Any],
    pusher: PusherRecord,
    outcome: PushOutcome,
    unread: int,
    state: RoomPushState,
) -> dict[str, Any]:
    """The body of a notification to ``pusher`` about ``event``."""
    tweaks: dict[str, Any] = {}
    for action in outcome.actions:
        if isinstance(action, Mapping) and isinstance(action.get("set_tweak"), str):
            tweaks[action["set_tweak"]] = action.get("value", True)
    data = {
        name: value
        for name, value in msgspec.json.decode(pusher.data_json).items()
        if name != "url"
    }
    device = {
        "app_id": pusher.app_id,
        "pushkey": pusher.pushkey,
        "pushkey_ts": math.floor(pusher.pushkey_ts / 1000),
        "data": data,
        "tweaks": tweaks,
    }
    notification: dict[str, Any] = {
        "event_id": stored.event_id,
        "room_id": stored.room_id,
        "counts": {"unread": unread},
        "devices": [device],
        "prio": "high" if outcome.highlight or "sound" in tweaks else "low",
    }
    if data.get("format") == "event_id_only":
        return notification
    sender = event.get("sender")
    notification |= {"type": event.get("type"), "sender": sender}
    if isinstance(event.get("content"), dict):
        notification["content"] = event["content"]
    if state.name is not None:
        notification["room_name"] = state.name
    if state.alias is not None:
        notification["room_alias"] = state.alias
    member = state.members.get(sender) if isinstance(sender, str) else None
    if member is not None:
        name = msgspec.json.decode(member).get("content", {}).get("displayname")
        if isinstance(name, str) and name:
            notification["sender_display_name"] = name
    if event.get("type") == "m.room.member" and "state_key" in event:
        notification["user_is_target"] = event["state_key"] == pusher.user_id
    return notification
