"""E2eKeys's device-list updates made while a room's state is partial, with
stand-ins for the room's servers and the federation sender: an update made
as the resync completes is not lost, and updates a restart left between
the completion and their sending are sent at start-up."""

from __future__ import annotations

from _device_list_room import BOB, HERE, ROOM, OneRoom, SentEdus, e2e_keys

from ranvier.core.e2e_keys import E2eKeys
from ranvier.storage import Storage


def _room() -> OneRoom:
    """Bob's one room, looking partial whatever storage says (as it did to
    a caller that looked just before the resync completed)."""
    return OneRoom(point="$point")


def _keys(storage: Storage, room: OneRoom, sent: SentEdus) -> E2eKeys:
    return e2e_keys(storage, room, sent, storage.partial_state_device_updates)


async def _partial(storage: Storage) -> None:
    await storage.store_room(ROOM, "10")
    await storage.writer.submit(
        lambda conn: conn.execute(
            "INSERT INTO partial_state_rooms VALUES (?, '$join', 'there.example')", (ROOM,)
        )
    )


async def _clear(storage: Storage) -> None:
    await storage.writer.submit(
        lambda conn: conn.execute("DELETE FROM partial_state_rooms WHERE room_id = ?", (ROOM,))
    )


def _to(sent: SentEdus, destination: str) -> list[int]:
    return [content["stream_id"] for server, _, content in sent.edus if server == destination]


async def test_an_update_made_as_the_room_completes_goes_to_the_left_out_server_at_once(
    storage: Storage,
) -> None:
    room, sent = _room(), SentEdus()
    keys = _keys(storage, room, sent)
    # The room looked partial, but its resync completed before the update
    # could be remembered: the completing side would never see it.
    await storage.store_room(ROOM, "10")
    position = await storage.e2e_keys.mark_device_list_changed(BOB)
    await keys.devices_changed(BOB, position, ["PHONE"])
    assert _to(sent, "there.example") == [position]
    assert _to(sent, "left-out.example") == [position]
    assert await storage.partial_state_device_updates.remembered(ROOM) == []


async def test_updates_left_by_a_restart_after_the_completion_are_sent_at_start_up(
    storage: Storage,
) -> None:
    room, sent = _room(), SentEdus()
    await _partial(storage)
    first = await storage.e2e_keys.mark_device_list_changed(BOB)
    await _keys(storage, room, sent).devices_changed(BOB, first, ["PHONE"])
    second = await storage.e2e_keys.mark_device_list_changed(BOB)
    await _keys(storage, room, sent).devices_changed(BOB, second, ["LAPTOP"])
    assert _to(sent, "there.example") == [first, second]
    assert _to(sent, "left-out.example") == []
    # Nothing to do while the room is partial.
    await _keys(storage, room, sent).resume_fully_stated()
    assert _to(sent, "left-out.example") == []

    # The room completed, and the server stopped before telling anyone:
    # the next start finds the updates.
    await _clear(storage)
    restarted = _keys(storage, room, sent)
    await restarted.resume_fully_stated()
    assert _to(sent, "left-out.example") == [first, second]
    assert await storage.partial_state_device_updates.remembered(ROOM) == []
    await restarted.resume_fully_stated()
    assert _to(sent, "left-out.example") == [first, second]
    assert _to(sent, HERE) == []
