"""Stand-ins for E2eKeys's tests of outgoing device-list updates: Bob's one
room with the servers in it, the federation sender recording the EDUs,
and an E2eKeys over real storage wired to them."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from ranvier.core.e2e_keys import E2eKeys, PartialStateUpdates
from ranvier.core.notifier import StreamNotifier
from ranvier.storage import Storage

HERE = "here.example"
ROOM = "!room:there.example"
BOB = f"@bob:{HERE}"


class OneRoom:
    """Bob's one room, joined by ``there.example``. With a ``point``, its
    state is partial (as it looks to the caller), and the full state after
    that point has ``left-out.example`` too."""

    def __init__(self, point: str | None = None) -> None:
        self._point = point

    async def joined_rooms(self, user_id: str) -> list[str]:
        return [ROOM]

    async def users_sharing_a_room(self, user_id: str, candidates: object) -> set[str]:
        return set()

    async def get_current_membership_event_ids(self, user_id: str) -> dict[str, str]:
        return {}

    async def joined_servers(self, room_id: str) -> Collection[str]:
        return {HERE, "there.example"}

    async def partial_state_point(self, room_id: str) -> Collection[str] | None:
        return None if self._point is None else [self._point]

    async def servers_after(self, event_ids: Iterable[str]) -> Collection[str]:
        assert self._point is not None, "the room is not partial"
        assert list(event_ids) == [self._point]
        return {HERE, "there.example", "left-out.example"}


class SentEdus:
    """The federation sender: the EDUs handed to it, in order."""

    def __init__(self) -> None:
        self.edus: list[tuple[str, str, dict[str, Any]]] = []

    def send_edu(self, destination: str, edu_type: str, content: Any) -> None:
        self.edus.append((destination, edu_type, content))


async def _refuse(user_id: str, auth: object) -> None:
    raise AssertionError("no password is asked here")


def e2e_keys(
    storage: Storage,
    room: OneRoom,
    sent: SentEdus,
    partial_state_updates: PartialStateUpdates | None = None,
) -> E2eKeys:
    """An E2eKeys of this server over ``storage``, ``room`` and ``sent``."""
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
        partial_state_updates=partial_state_updates,
    )
