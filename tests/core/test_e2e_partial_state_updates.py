"""E2eKeys's device-list updates made while a room's state is partial, with
stand-ins for the room's servers and the federation sender: an update made
as the resync completes is not lost, and updates a restart left between
the completion and their sending are sent at start-up."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from ranvier.core.e2e_keys import E2eKeys
from ranvier.core.notifier import StreamNotifier
from ranvier.storage import Storage

HERE = "here.example"
ROOM = "!room:there.example"
BOB = f"@bob:{HERE}"


class _Room:
    """Bob's one room, looking partial whatever storage says (as it did to
    a caller that looked just before the resync completed): joined by
    ``there.example`` as the partial state has it, and by
    ``left-out.example`` too once the state is complete.
    """

    async def joined_rooms(self, user_id: str) -> list[str]:
        return [ROOM]

    async def users_sharing_a_room(self, user_id: str, candidates: object) -> set[str]:
        return set()

    async def get_current_membership_event_ids(self, user_id: str) -> dict[str, str]:
        return {}

    async def joined_servers(self, room_id: str) -> Collection[str]:
        return {HERE, "there.example"}

    async def partial_state_point(self, room_id: str) -> Collection[str] | None:
        return ["$point"]

    async def servers_after(self, event_ids: Iterable[str]) -> Collection[str]:
        assert list(event_ids) == ["$point"]
        return {HERE, "there.example", "left-out.example"}


class _Sent:
    def __init__(self) -> None:
        self.edus: list[tuple[str, str, dict[str, Any]]] = []

    def send_edu(self, destination: str, edu_type: str, content: Any) -> None:
        self.edus.append((destination, edu_type, content))


async def _refuse(user_id: str, auth: object) -> None:
    raise AssertionError("no password is asked here")


def _keys(storage: Storage, room: _Room, sent: _Sent) -> E2eKeys:
    return E2eKeys(
        server_name=HERE,
        store=storage.e2e_keys,
        notifier=StreamNotifier(),
        rooms=room,
        shared=room,
        memberships=room,
        reauthenticate=_refuse,
        servers=room,
        edus=sent,
        partial_state_updates=storage.partial_state_device_updates,
    )


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


def _to(sent: _Sent, destination: str) -> list[int]:
    return [content["stream_id"] for server, _, content in sent.edus if server == destination]


async def test_an_update_made_as_the_room_completes_goes_to_the_left_out_server_at_once(
    storage: Storage,
) -> None:
    room, sent = _Room(), _Sent()
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
    room, sent = _Room(), _Sent()
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
