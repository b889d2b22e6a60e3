"""Bundled aggregations on real storage: what gets an ``m.thread`` or
``m.replace`` bundle and what does not, bounds on what a user may read,
and several rooms in one call.

Rooms come from :class:`ranvier.testing.RoomBuilder` and go through core
into real storage (:func:`ranvier.testing.ingest_all`); the events are
bundled in the client format, as the endpoints serve them.
"""

from __future__ import annotations

from typing import Any

from ranvier.core.aggregations import Aggregations
from ranvier.core.client_events import client_event
from ranvier.protocol.events import Pdu
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder, ingest_all

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
_TOP = 2**62


def _room() -> RoomBuilder:
    room = RoomBuilder("10", ALICE)
    room.public_room(BOB)
    return room


def _relating(room: RoomBuilder, sender: str, parent: str, rel_type: str, **more: Any) -> Pdu:
    content = {"body": "r", "m.relates_to": {"rel_type": rel_type, "event_id": parent}, **more}
    return room.send("m.room.message", sender, content)


async def _formatted(storage: Storage, *events: Pdu) -> list[dict[str, Any]]:
    found = await storage.sync.get_events([event.event_id for event in events])
    return [client_event(found[event.event_id]) for event in events]


def _bundle(event: dict[str, Any]) -> dict[str, Any] | None:
    bundle: dict[str, Any] | None = event.get("unsigned", {}).get("m.relations")
    return bundle


async def test_edits_count_from_the_original_sender_of_a_message(storage: Storage) -> None:
    room = _room()
    message = room.message(BOB, "typo")
    new_content = {"m.new_content": {"body": "fixed"}}
    first = _relating(room, BOB, message.event_id, "m.replace", **new_content)
    _relating(room, ALICE, message.event_id, "m.replace", **new_content)
    topic = room.topic(ALICE, "t")
    _relating(room, ALICE, topic.event_id, "m.replace", **new_content)
    await ingest_all(storage, room.order)
    events = await _formatted(storage, message, topic)

    await Aggregations(storage.sync, storage.relations).add_bundles(
        ALICE, room.room_id, events, upto=_TOP
    )

    message_bundle = _bundle(events[0])
    assert message_bundle is not None
    assert message_bundle["m.replace"]["event_id"] == first.event_id
    assert "m.thread" not in message_bundle
    # A state event is never edited.
    assert _bundle(events[1]) is None


async def test_threads_count_up_to_what_the_user_may_read(storage: Storage) -> None:
    room = _room()
    root = room.message(ALICE, "root")
    early = _relating(room, BOB, root.event_id, "m.thread")
    late = _relating(room, BOB, root.event_id, "m.thread")
    await ingest_all(storage, room.order)
    positions = await storage.get_events([early.event_id, late.event_id])
    aggregations = Aggregations(storage.sync, storage.relations)
    everything, bounded = await _formatted(storage, root), await _formatted(storage, root)

    await aggregations.add_bundles(BOB, room.room_id, everything, upto=_TOP)
    await aggregations.add_bundles(
        ALICE, room.room_id, bounded, upto=positions[early.event_id].stream_ordering
    )

    whole = _bundle(everything[0])
    part = _bundle(bounded[0])
    assert whole is not None
    assert part is not None
    assert (whole["m.thread"]["count"], whole["m.thread"]["latest_event"]["event_id"]) == (
        2,
        late.event_id,
    )
    assert whole["m.thread"]["current_user_participated"] is True
    assert (part["m.thread"]["count"], part["m.thread"]["latest_event"]["event_id"]) == (
        1,
        early.event_id,
    )
    # Alice sent the root.
    assert part["m.thread"]["current_user_participated"] is True


async def test_several_rooms_at_once_and_cut_down_events_left_alone(storage: Storage) -> None:
    rooms = [_room(), _room()]
    roots = []
    for room in rooms:
        roots.append(room.message(ALICE, "root"))
        _relating(room, BOB, roots[-1].event_id, "m.thread")
        await ingest_all(storage, room.order)
    whole = [await _formatted(storage, root) for root in roots]
    projected = [{"content": {"body": "root"}}]

    await Aggregations(storage.sync, storage.relations).add_bundles_in_rooms(
        ALICE,
        [
            (rooms[0].room_id, whole[0], _TOP),
            (rooms[1].room_id, [*whole[1], *projected], _TOP),
        ],
    )

    for events in whole:
        bundle = _bundle(events[0])
        assert bundle is not None
        assert bundle["m.thread"]["count"] == 1
    assert projected == [{"content": {"body": "root"}}]


async def test_a_redacted_event_keeps_its_thread_but_not_its_edit(storage: Storage) -> None:
    room = _room()
    root = room.message(BOB, "root")
    _relating(room, BOB, root.event_id, "m.thread")
    _relating(room, BOB, root.event_id, "m.replace", **{"m.new_content": {"body": "x"}})
    room.send_fields(
        {"type": "m.room.redaction", "sender": BOB, "content": {}, "redacts": root.event_id}
    )
    await ingest_all(storage, room.order)
    events = await _formatted(storage, root)
    assert "redacted_because" in events[0]["unsigned"]

    await Aggregations(storage.sync, storage.relations).add_bundles(
        ALICE, room.room_id, events, upto=_TOP
    )

    bundle = _bundle(events[0])
    assert bundle is not None
    assert set(bundle) == {"m.thread"}


async def test_only_valid_replacements_count(storage: Storage) -> None:
    room = _room()
    message = room.message(ALICE, "typo")
    new_content = {"m.new_content": {"body": "fixed"}}
    valid = _relating(room, ALICE, message.event_id, "m.replace", **new_content)
    # Each of these breaks one rule of the spec's, and comes later.
    _relating(room, ALICE, message.event_id, "m.replace")  # no m.new_content
    room.send(
        "m.sticker",
        ALICE,
        {"m.relates_to": {"rel_type": "m.replace", "event_id": message.event_id}, **new_content},
    )
    room.send(
        "m.room.message",
        ALICE,
        {"m.relates_to": {"rel_type": "m.replace", "event_id": message.event_id}, **new_content},
        state_key="",
    )
    # An edit of an edit edits nothing.
    _relating(room, ALICE, valid.event_id, "m.replace", **new_content)
    await ingest_all(storage, room.order)
    events = await _formatted(storage, message, valid)

    await Aggregations(storage.sync, storage.relations).add_bundles(
        BOB, room.room_id, events, upto=_TOP
    )

    bundle = _bundle(events[0])
    assert bundle is not None
    assert bundle["m.replace"]["event_id"] == valid.event_id
    assert _bundle(events[1]) is None


async def test_the_most_recent_edit_is_by_timestamp_then_event_id(storage: Storage) -> None:
    room = _room()
    message = room.message(BOB, "typo")

    def edit(ts: int) -> Pdu:
        return room.send_fields(
            {
                "type": "m.room.message",
                "sender": BOB,
                "origin_server_ts": ts,
                "content": {
                    "body": "* x",
                    "m.new_content": {"body": "x"},
                    "m.relates_to": {"rel_type": "m.replace", "event_id": message.event_id},
                },
            }
        )

    later = [edit(message.origin_server_ts + 10) for _ in range(2)]
    edit(message.origin_server_ts + 5)  # written last, sent earlier
    await ingest_all(storage, room.order)
    events = await _formatted(storage, message)

    await Aggregations(storage.sync, storage.relations).add_bundles(
        ALICE, room.room_id, events, upto=_TOP
    )

    bundle = _bundle(events[0])
    assert bundle is not None
    assert bundle["m.replace"]["event_id"] == max(event.event_id for event in later)


async def test_references_and_the_latest_replys_own_bundle(storage: Storage) -> None:
    room = _room()
    root = room.message(ALICE, "root")
    references = [_relating(room, BOB, root.event_id, "m.reference") for _ in range(2)]
    reply = _relating(room, BOB, root.event_id, "m.thread")
    edit = _relating(room, BOB, reply.event_id, "m.replace", **{"m.new_content": {"body": "y"}})
    await ingest_all(storage, room.order)
    events = await _formatted(storage, root)

    await Aggregations(storage.sync, storage.relations).add_bundles(
        ALICE, room.room_id, events, upto=_TOP
    )

    bundle = _bundle(events[0])
    assert bundle is not None
    assert bundle["m.reference"] == {"chunk": [{"event_id": ref.event_id} for ref in references]}
    latest = bundle["m.thread"]["latest_event"]
    assert latest["event_id"] == reply.event_id
    assert latest["unsigned"]["m.relations"]["m.replace"]["event_id"] == edit.event_id
