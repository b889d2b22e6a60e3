"""The chain of a local user's device-list updates (``prev_id``) as other
servers receive it, with stand-ins for the room's servers and the
federation sender: each update names the one before even when another
E2eKeys (a restart, another process) sent that one."""

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
    """Bob's one room, fully stated, shared with ``there.example``."""

    async def joined_rooms(self, user_id: str) -> list[str]:
        return [ROOM]

    async def users_sharing_a_room(self, user_id: str, candidates: object) -> set[str]:
        return set()

    async def get_current_membership_event_ids(self, user_id: str) -> dict[str, str]:
        return {}

    async def joined_servers(self, room_id: str) -> Collection[str]:
        return {HERE, "there.example"}

    async def partial_state_point(self, room_id: str) -> Collection[str] | None:
        return None

    async def servers_after(self, event_ids: Iterable[str]) -> Collection[str]:
        raise AssertionError("the room is not partial")


class _Sent:
    def __init__(self) -> None:
        self.edus: list[tuple[str, str, dict[str, Any]]] = []

    def chain(self) -> list[tuple[str, int, list[int]]]:
        return [
            (content["device_id"], content["stream_id"], content["prev_id"])
            for _, edu_type, content in self.edus
            if edu_type == "m.device_list_update"
        ]

    def send_edu(self, destination: str, edu_type: str, content: Any) -> None:
        self.edus.append((destination, edu_type, content))


async def _refuse(user_id: str, auth: object) -> None:
    raise AssertionError("no password is asked here")


def _keys(storage: Storage, sent: _Sent) -> E2eKeys:
    room = _Room()
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
    )


async def test_each_update_names_the_one_before_across_restarts(storage: Storage) -> None:
    sent = _Sent()
    first = await storage.e2e_keys.mark_device_list_changed(BOB)
    await _keys(storage, sent).devices_changed(BOB, first, ["PHONE"])
    # Another E2eKeys (the server restarted, or another process) sends the next.
    second = await storage.e2e_keys.mark_device_list_changed(BOB)
    await _keys(storage, sent).devices_changed(BOB, second, ["LAPTOP", "TABLET"])
    # Another user's change in between is no link in Bob's chain.
    await storage.e2e_keys.mark_device_list_changed("@carol:here.example")
    third = await storage.e2e_keys.mark_device_list_changed(BOB)
    await _keys(storage, sent).devices_changed(BOB, third, ["PHONE"])

    assert sent.chain() == [
        ("PHONE", first, []),
        # The devices of one change follow each other under one position.
        ("LAPTOP", second, [first]),
        ("TABLET", second, [second]),
        ("PHONE", third, [second]),
    ]
