"""Building an event of this server: from the fields its sender chose to a
signed PDU placed in the room's DAG.

A *template* holds what the sender decides: ``type``, ``sender``,
``content``, ``room_id`` (none for a v12 create event, whose hash becomes
the room ID), ``state_key`` for a state event, and ``redacts`` for a
redaction before v11. The builder adds what places the event in the room:

- ``prev_events``: the room's forward extremities, at most
  :data:`~ranvier.protocol.events.MAX_PREV_EVENTS` of them, the deepest
  first, so an event joins up the forks the room has grown;
- ``depth``: one more than the deepest prev event, capped at the largest
  integer canonical JSON allows;
- ``auth_events``: the spec's auth events selection, looked up in the state
  the event is based on (the state after its prev events, resolved when
  they differ); from v12 the create event is never among them;
- ``origin_server_ts`` from a wall clock the caller may replace;
- the content hash and this server's signature.

:func:`prepare_event` stops before hashing and signing, for an event whose
sender is on another server: a remote user joining through us signs the
event that make_join hands out. :func:`build_event` goes all the way.

The caller builds one room's events one at a time and writes each before
building the next; otherwise two events get the same prev events and the
room forks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final

from ranvier.errors import BadJsonError, MatrixError
from ranvier.protocol.auth import CREATE_KEY, StateKey, auth_state_keys
from ranvier.protocol.canonical import CANONICAL_INT_MAX
from ranvier.protocol.events import MAX_PREV_EVENTS, Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.room_versions import RoomVersionLike, get_room_version
from ranvier.protocol.signing import SigningKeyLike

from .interfaces import StateReader
from .state import resolve_state_maps

__all__ = ["Clock", "build_event", "prepare_event", "wall_clock_ms"]

#: Wall-clock milliseconds since the Unix epoch.
Clock = Callable[[], int]

#: Fields the builder fills in; a template that sets them is refused, so a
#: caller cannot place an event in the DAG by hand by accident.
_BUILT_FIELDS: Final = frozenset(
    {"prev_events", "auth_events", "depth", "origin_server_ts", "hashes", "signatures", "event_id"}
)


def wall_clock_ms() -> int:
    """The system time in milliseconds.

    ``origin_server_ts`` is read by other servers and clients, so it needs
    the epoch, which Trio's monotonic clock does not have.
    """
    return time.time_ns() // 1_000_000


async def prepare_event(
    template: Mapping[str, Any],
    *,
    room_version: RoomVersionLike,
    store: StateReader,
    prev_event_ids: Sequence[str] | None = None,
    clock: Clock = wall_clock_ms,
) -> dict[str, Any]:
    """The event ``template`` describes, placed in its room, not yet hashed or signed.

    ``prev_event_ids`` overrides the choice of the room's forward
    extremities; the events must be stored with their state. Raises
    :class:`~ranvier.errors.BadJsonError` for a template that sets a field
    the builder fills in or that is not a valid event,
    :class:`~ranvier.errors.MatrixError` (M_NOT_FOUND) for a room with no
    event here to follow, or a prev event that is not stored here with its
    state.
    """
    rv = get_room_version(room_version)
    if not isinstance(template, Mapping):
        raise BadJsonError("an event template must be a JSON object")
    preset = sorted(_BUILT_FIELDS.intersection(template))
    if preset:
        raise BadJsonError(
            f"an event template must not set {', '.join(preset)}: the builder fills them in"
        )
    event = dict(template)

    if event.get("type") == CREATE_KEY[0] and event.get("state_key") == CREATE_KEY[1]:
        if prev_event_ids:
            raise BadJsonError("an m.room.create event has no prev events")
        prev_ids: list[str] = []
        depth = 1
    else:
        room_id = event.get("room_id")
        if type(room_id) is not str:
            raise BadJsonError("an event template other than m.room.create needs a room_id")
        if prev_event_ids is None:
            prev_ids, depth = await _choose_prev_events(store, room_id)
        else:
            prev_ids = list(dict.fromkeys(prev_event_ids))
            depth = await _depth_after(store, room_id, prev_ids)
    event["prev_events"] = prev_ids
    event["auth_events"] = []
    event["depth"] = depth
    event["origin_server_ts"] = clock()

    # The auth events selection depends on the event itself (its sender, a
    # membership's target and kind), so it is asked of a draft view.
    draft = Pdu.from_json(event | {"hashes": {"sha256": ""}, "signatures": {}}, rv)
    keys = auth_state_keys(draft)
    if keys:
        state = await _auth_state(store, draft, prev_ids, keys)
        event["auth_events"] = [state[key] for key in keys if key in state]
    return event


async def build_event(
    template: Mapping[str, Any],
    *,
    room_version: RoomVersionLike,
    store: StateReader,
    server_name: str,
    signing_key: SigningKeyLike,
    prev_event_ids: Sequence[str] | None = None,
    clock: Clock = wall_clock_ms,
) -> Pdu:
    """The event ``template`` describes, placed in its room, hashed and signed
    by ``server_name``.

    The sender must be a user of ``server_name``: only its own server may
    sign an event for it. See :func:`prepare_event` for the rest.
    """
    sender = template.get("sender") if isinstance(template, Mapping) else None
    if type(sender) is not str or sender.partition(":")[2] != server_name:
        raise MatrixError(
            f"sender {sender!r} is not a user of {server_name}, which cannot sign events for it",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    rv = get_room_version(room_version)
    event = await prepare_event(
        template, room_version=rv, store=store, prev_event_ids=prev_event_ids, clock=clock
    )
    return Pdu.from_json(hash_and_sign_event(event, rv, server_name, signing_key), rv)


async def _choose_prev_events(store: StateReader, room_id: str) -> tuple[list[str], int]:
    """The room's deepest forward extremities, at most MAX_PREV_EVENTS, and the
    depth an event after them has.

    Among extremities of equal depth the one written last goes first.
    Extremities left out stay extremities: a later event picks them up.
    """
    extremities = await store.get_forward_extremities(room_id)
    if not extremities:
        raise MatrixError(
            f"room {room_id} has no event here for a new event to follow",
            errcode="M_NOT_FOUND",
            http_status=404,
        )
    stored = await store.get_events(extremities)
    _check_stored(room_id, extremities, stored.keys())
    newest = sorted(
        stored.values(), key=lambda row: (row.depth, row.stream_ordering), reverse=True
    )[:MAX_PREV_EVENTS]
    return [row.event_id for row in newest], _next_depth(row.depth for row in newest)


async def _depth_after(store: StateReader, room_id: str, prev_ids: Collection[str]) -> int:
    if not prev_ids:
        raise BadJsonError("an event other than m.room.create needs at least one prev event")
    stored = await store.get_events(prev_ids)
    _check_stored(room_id, prev_ids, stored.keys())
    return _next_depth(row.depth for row in stored.values())


def _next_depth(depths: Iterable[int]) -> int:
    return min(max(depths, default=0) + 1, CANONICAL_INT_MAX)


def _check_stored(room_id: str, wanted: Collection[str], found: Collection[str]) -> None:
    missing = sorted(set(wanted).difference(found))
    if missing:
        raise MatrixError(
            f"prev events {', '.join(missing)} of a new event in {room_id} are not stored here",
            errcode="M_NOT_FOUND",
            http_status=404,
        )


async def _auth_state(
    store: StateReader, draft: Pdu, prev_ids: Sequence[str], keys: Collection[StateKey]
) -> Mapping[StateKey, str]:
    """The entries at ``keys`` of the state the event is based on: the state
    after its prev events.

    Only those keys are read, unless the prev events' states differ and must
    be resolved whole.
    """
    groups: dict[int, None] = {}
    for prev_id in prev_ids:
        found = await store.get_event_state_groups(prev_id)
        if found is None:
            # Stored, as _check_stored saw, but outside the DAG.
            raise MatrixError(
                f"prev event {prev_id} of a new event in {draft.room_id} is an outlier:"
                " the state after it is not known here",
                errcode="M_NOT_FOUND",
                http_status=404,
            )
        groups[found.after] = None
    if len(groups) == 1:
        return await store.get_state_ids_for_keys(next(iter(groups)), keys)
    if set(prev_ids) == set(await store.get_forward_extremities(draft.room_id)):
        # The room's current state is the resolution of exactly these.
        return await store.get_current_state_ids_for_keys(draft.room_id, keys)
    states = [await store.get_state_ids(group) for group in groups]
    resolved = await resolve_state_maps(store, draft.room_id, draft.room_version, states)
    return {key: resolved[key] for key in keys if key in resolved}
