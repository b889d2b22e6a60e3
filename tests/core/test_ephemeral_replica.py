"""A worker's copies of typing and presence (core.ephemeral_replica) kept
from a holder's changes: what a sync reads of the copy is what it reads of
the holder, changes go to the relay, and a client's own change waits until
the copy shows it."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import trio

from ranvier.core.ephemeral_replica import (
    EphemeralChanges,
    EphemeralReplica,
    PresenceReplica,
    TypingReplica,
)
from ranvier.core.notifier import StreamNotifier
from ranvier.core.presence import Presence
from ranvier.core.typing import TypingNotices

ALICE = "@alice:here"
BOB = "@bob:here"
ROOMS = ("!one:here", "!two:here")


class _Rooms:
    """Alice and Bob in both rooms."""

    async def membership(self, user_id: str, room_id: str) -> str | None:
        await trio.lowlevel.checkpoint()
        return "join" if room_id in ROOMS and user_id in (ALICE, BOB) else None

    async def joined_servers(self, room_id: str) -> frozenset[str]:
        await trio.lowlevel.checkpoint()
        return frozenset({"here"})

    async def joined_rooms(self, user_id: str) -> Collection[str]:
        await trio.lowlevel.checkpoint()
        return ROOMS if user_id in (ALICE, BOB) else ()

    async def users_sharing_a_room(self, user_id: str, candidates: Collection[str]) -> set[str]:
        await trio.lowlevel.checkpoint()
        return {other for other in candidates if other in (ALICE, BOB)}

    def send_edu(self, destination: str, edu_type: str, content: Mapping[str, Any]) -> None:
        raise AssertionError("nothing leaves for other servers here")


class _Relay:
    """Records what a copy sends, and answers with a position to reach."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.answer = 0

    async def set_typing(
        self, requester: str, user_id: str, room_id: str, *, typing: bool, timeout_ms: int | None
    ) -> int:
        await trio.lowlevel.checkpoint()
        self.calls.append(("set_typing", requester, user_id, room_id, typing, timeout_ms))
        return self.answer

    async def remote_typing(self, origin: str, room_id: str, user_id: str, typing: bool) -> bool:
        await trio.lowlevel.checkpoint()
        self.calls.append(("remote_typing", origin, room_id, user_id, typing))
        return True

    async def set_presence(self, requester: str, user_id: str, body: Mapping[str, Any]) -> int:
        await trio.lowlevel.checkpoint()
        self.calls.append(("set_presence", requester, user_id, dict(body)))
        return self.answer

    async def remote_presence(self, origin: str, pushed: Collection[Mapping[str, Any]]) -> int:
        await trio.lowlevel.checkpoint()
        self.calls.append(("remote_presence", origin, list(pushed)))
        return len(pushed)

    async def sync(self, user_id: str, set_presence: str, timeout_ms: int) -> int:
        await trio.lowlevel.checkpoint()
        self.calls.append(("sync", user_id, set_presence, timeout_ms))
        return self.answer

    def note_active(self, user_id: str) -> None:
        self.calls.append(("active", user_id))


def _holders(rooms: _Rooms) -> tuple[TypingNotices, Presence]:
    typing = TypingNotices(server_name="here", rooms=rooms, servers=rooms, edus=rooms)
    presence = Presence(rooms=rooms, shared=rooms, server_name="here")
    return typing, presence


def _copies(rooms: _Rooms, relay: _Relay, notifier: StreamNotifier) -> EphemeralReplica:
    typing = TypingReplica(
        relay, server_name="here", rooms=rooms, servers=rooms, edus=rooms, notifier=notifier
    )
    presence = PresenceReplica(
        relay, rooms=rooms, shared=rooms, server_name="here", notifier=notifier
    )
    return EphemeralReplica(typing, presence)


def _changes(
    life: str, typing: TypingNotices, presence: Presence, after: tuple[int, int] | None
) -> EphemeralChanges:
    return EphemeralChanges(
        life,
        after is None,
        typing.changes_after(None if after is None else after[0]),
        presence.changes_after(None if after is None else after[1]),
    )


async def test_a_copy_reads_as_its_holder_and_wakes_for_each_change() -> None:
    rooms, relay, notifier = _Rooms(), _Relay(), StreamNotifier()
    typing, presence = _holders(rooms)
    copies = _copies(rooms, relay, notifier)
    # Before anything is taken: below every position the holder hands out.
    assert await copies.typing.position() == 0
    assert await copies.presence.position() == 0

    await typing.set_typing(ALICE, ALICE, ROOMS[0], typing=True)
    await presence.set_presence(BOB, BOB, {"presence": "online", "status_msg": "here"})
    await copies.take(_changes("life-1", typing, presence, None))
    assert copies.full_copies == 1
    assert await copies.typing.position() == await typing.position()
    assert await copies.presence.position() == await presence.position()
    assert copies.typing.typing_in(ROOMS[0]) == [ALICE]
    first = await copies.typing.for_sync(ALICE, ROOMS, None, await typing.position())
    assert first == await typing.for_sync(ALICE, ROOMS, None, await typing.position())
    said = await copies.presence.get_presence(ALICE, BOB)
    assert (said["presence"], said["status_msg"], said["currently_active"]) == (
        "online",
        "here",
        True,
    )
    assert 0 <= said["last_active_ago"] < 1000

    # A change after the copy's positions: only it travels, and it wakes
    # the room's long-polls.
    known = (copies.typing_position, copies.presence_position)
    before = notifier.position
    await typing.set_typing(BOB, BOB, ROOMS[1], typing=True)
    changes = _changes("life-1", typing, presence, known)
    assert [room.room_id for room in changes.typing.rooms] == [ROOMS[1]]
    assert changes.presence.users == ()
    await copies.take(changes)
    assert copies.full_copies == 1
    assert notifier.concerns(before, {ROOMS[1]}, ALICE)
    assert not notifier.concerns(before, {"!elsewhere:here"}, "@carol:here")
    after = await copies.typing.for_sync(ALICE, ROOMS, known[0], await typing.position())
    assert after == {ROOMS[1]: {"type": "m.typing", "content": {"user_ids": [BOB]}}}


async def test_a_copy_of_another_life_is_replaced_whole() -> None:
    rooms, relay, notifier = _Rooms(), _Relay(), StreamNotifier()
    typing, presence = _holders(rooms)
    copies = _copies(rooms, relay, notifier)
    await typing.set_typing(ALICE, ALICE, ROOMS[0], typing=True)
    await presence.set_presence(ALICE, ALICE, {"presence": "unavailable"})
    await copies.take(_changes("life-1", typing, presence, None))
    assert copies.typing.typing_in(ROOMS[0]) == [ALICE]

    # The holder starts again with nothing, and a later start.
    await trio.sleep(0.01)
    typing, presence = _holders(rooms)
    await presence.set_presence(BOB, BOB, {"presence": "online"})
    # Changes of another life that are not whole are not mixed in.
    await copies.take(_changes("life-2", typing, presence, (0, 0)))
    assert copies.life == "life-1"
    assert copies.typing.typing_in(ROOMS[0]) == [ALICE]
    await copies.take(_changes("life-2", typing, presence, None))
    assert copies.life == "life-2"
    assert copies.full_copies == 2
    assert copies.typing.typing_in(ROOMS[0]) == []
    assert (await copies.presence.get_presence(ALICE, ALICE)) == {"presence": "offline"}
    assert (await copies.presence.get_presence(BOB, BOB))["presence"] == "online"
    # A token of the old life is told once that nobody types in its rooms.
    told = await copies.typing.for_sync(ALICE, ROOMS, 1, await typing.position())
    assert told == {room: {"type": "m.typing", "content": {"user_ids": []}} for room in ROOMS}


async def test_a_copys_changes_go_to_the_relay_and_wait_for_the_copy() -> None:
    rooms, relay, notifier = _Rooms(), _Relay(), StreamNotifier()
    typing, presence = _holders(rooms)
    copies = _copies(rooms, relay, notifier)
    await copies.take(_changes("life-1", typing, presence, None))
    # The relay answers a position the copy has not reached yet: the change
    # returns only once the copy holds it.
    await typing.set_typing(ALICE, ALICE, ROOMS[0], typing=True, timeout_ms=5000)
    relay.answer = await typing.position()
    returned = trio.Event()

    async def set_typing() -> None:
        await copies.typing.set_typing(ALICE, ALICE, ROOMS[0], typing=True, timeout_ms=5000)
        returned.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(set_typing)
        await trio.testing.wait_all_tasks_blocked()
        assert relay.calls == [("set_typing", ALICE, ALICE, ROOMS[0], True, 5000)]
        assert not returned.is_set()
        await copies.take(_changes("life-1", typing, presence, (0, 0)))
    assert returned.is_set()
    assert copies.typing.typing_in(ROOMS[0]) == [ALICE]

    # Activity is only noted; another server's EDUs go as they are.
    await copies.presence.user_active(ALICE)
    assert await copies.typing.on_remote_typing("there", ROOMS[0], "@dan:there", True)
    pushed = [{"user_id": "@dan:there", "presence": "online"}]
    assert await copies.presence.on_remote_presence("there", pushed) == 1
    # A sync that leaves presence alone tells nothing.
    await copies.presence.on_sync(ALICE, "offline", 0)
    relay.answer = 0
    await copies.presence.on_sync(ALICE, "online", 30_000)
    assert relay.calls[1:] == [
        ("active", ALICE),
        ("remote_typing", "there", ROOMS[0], "@dan:there", True),
        ("remote_presence", "there", pushed),
        ("sync", ALICE, "online", 30_000),
    ]
    # Nothing of it is held until the holder says so.
    assert (await copies.presence.get_presence(ALICE, ALICE)) == {"presence": "offline"}
    assert copies.typing.typing_in(ROOMS[0]) == [ALICE]
