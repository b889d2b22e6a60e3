"""EDUs read and handed on by EduDispatcher, over a real test homeserver.

The EDUs claim to come from the server itself, which is in its own rooms,
so that the checks of the users' server and of the room pass and what is
tested is how each EDU's content is read.
"""

from __future__ import annotations

import copy as copy_module
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from ranvier.errors import BadJsonError, MatrixError
from ranvier.federation.edus import EduDispatcher
from ranvier.testing.homeserver import open_test_homeserver


async def test_edus_are_read_and_broken_entries_dropped_alone(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        server = hs.server
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        room_id = await server.create_room(alice.user_id)
        event_id = await server.send_event(alice.user_id, room_id, "m.room.message", {"body": "x"})
        edus = EduDispatcher(
            receipts=server.receipts, typing=server.typing_notices, presence=server.presence
        )
        origin = server.server_name

        receipt = {"event_ids": [event_id], "data": {"ts": 5, "thread_id": "main"}}
        await edus.on_edu(
            origin,
            "m.receipt",
            {
                room_id: {
                    "m.read": {
                        alice.user_id: receipt,
                        bob.user_id: {"event_ids": "not a list", "data": {"ts": 1}},
                        "@carol:elsewhere.example": receipt,
                    },
                    "m.read.private": {bob.user_id: receipt},
                },
                "not a room": {"m.read": {alice.user_id: receipt}},
            },
        )
        upto = await server.storage.receipts.receipts_position()
        stored = await server.storage.receipts.receipt_changes([room_id], 0, upto)
        assert [(r.user_id, r.receipt_type, r.event_id, r.ts, r.thread_id) for r in stored] == [
            (alice.user_id, "m.read", event_id, 5, "main")
        ]

        await edus.on_edu(
            origin, "m.typing", {"room_id": room_id, "user_id": alice.user_id, "typing": True}
        )
        assert server.typing_notices.typing_in(room_id) == [alice.user_id]
        with pytest.raises(BadJsonError, match=r"m\.typing"):
            await edus.on_edu(origin, "m.typing", {"room_id": room_id, "typing": "yes"})

        await edus.on_edu(
            origin,
            "m.presence",
            {
                "push": [
                    {"user_id": bob.user_id, "presence": "unavailable", "last_active_ago": 10},
                    {"user_id": "@carol:elsewhere.example", "presence": "online"},
                    {"user_id": alice.user_id, "presence": "asleep"},
                ]
            },
        )
        seen = await server.presence.get_presence(bob.user_id, bob.user_id)
        assert seen["presence"] == "unavailable"
        assert seen["last_active_ago"] >= 10
        assert await server.presence.get_presence(alice.user_id, alice.user_id) == {
            "presence": "offline"
        }
        with pytest.raises(BadJsonError, match=r"m\.presence"):
            await edus.on_edu(origin, "m.presence", {"push": "nobody"})
        # Types without a handler are let go.
        await EduDispatcher().on_edu(origin, "m.receipt", {room_id: {}})


async def test_to_device_and_device_list_edus_only_from_their_users_server(
    tmp_path: Path,
) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        server = hs.server
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        await server.create_room(alice.user_id)
        edus = EduDispatcher(to_device=server.to_device, e2e_keys=server.e2e_keys)
        origin = server.server_name
        message = {
            "sender": alice.user_id,
            "type": "m.test",
            "message_id": "m1",
            "messages": {
                bob.user_id: {bob.device_id: {"n": 1}},
                "@carol:elsewhere.example": {"DEV": {"n": 2}},
            },
        }
        # Another server cannot send as Alice; nothing reaches Bob.
        await edus.on_edu("elsewhere.example", "m.direct_to_device", message)
        keys = server.storage.e2e_keys
        assert await keys.to_device_position() == 0
        await edus.on_edu(origin, "m.direct_to_device", message)
        # The same message again (a retried transaction) is queued once.
        await edus.on_edu(origin, "m.direct_to_device", message)
        upto = await keys.to_device_position()
        stored = await keys.to_device_messages(bob.user_id, bob.device_id, 0, upto, 10)
        assert [body for _, body in stored] == [
            b'{"type":"m.test","sender":"' + alice.user_id.encode() + b'","content":{"n":1}}'
        ]
        # A device list update is taken for the origin's own users who share
        # a room here, and nobody else.
        update = {"user_id": alice.user_id, "device_id": "D", "stream_id": 1, "prev_id": []}
        await edus.on_edu("elsewhere.example", "m.device_list_update", update)
        await edus.on_edu(origin, "m.device_list_update", {**update, "user_id": bob.user_id})
        assert await keys.device_lists_position() == 0
        await edus.on_edu(origin, "m.signing_key_update", {"user_id": alice.user_id})
        position = await keys.device_lists_position()
        assert await keys.device_list_changes(0, position) == {alice.user_id}


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in ``value``: each key of each object, each list item."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key)
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*path, index)
            yield from _paths(item, (*path, index))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    """A copy of ``value`` with what is at ``path`` replaced by ``new``, or
    removed when ``new`` is ``_REMOVED``.
    """
    copy = copy_module.deepcopy(value)
    holder = copy
    for step in path[:-1]:
        holder = holder[step]
    if new is _REMOVED:
        del holder[path[-1]]
    else:
        holder[path[-1]] = new
    return copy


EDU_TYPES: Final = (
    "m.receipt",
    "m.typing",
    "m.presence",
    "m.direct_to_device",
    "m.device_list_update",
    "m.signing_key_update",
)
_REMOVED: Final = object()
# No lone surrogates: the transaction's JSON parser refuses them before
# any EDU is read.
_ODD: Final[tuple[Any, ...]] = (
    _REMOVED, None, True, -1, 2**63, 2**64, 1.5, "", "x" * 10_000, [], {}, [[[]]], {"a": {}}
)  # fmt: skip


async def test_odd_edu_contents_are_dropped_with_matrix_errors_only(tmp_path: Path) -> None:
    """Each EDU a remote may send, with each value in it removed or replaced
    by a value of another kind, is taken or refused with a Matrix error:
    never an exception of another kind, which would mean content was read
    without being checked.
    """
    async with open_test_homeserver(tmp_path / "hs") as hs:
        server = hs.server
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        room_id = await server.create_room(alice.user_id, preset="public_chat")
        await server.join_room(bob.user_id, room_id)
        event_id = await server.send_event(alice.user_id, room_id, "m.room.message", {"body": "x"})
        edus = EduDispatcher(
            receipts=server.receipts,
            typing=server.typing_notices,
            presence=server.presence,
            to_device=server.to_device,
            e2e_keys=server.e2e_keys,
        )
        origin = server.server_name

        # Each try is a change (a new event read, a new message ID, a newer
        # stream ID), so that no odd value meets a store that has the same
        # thing already and looks no further.
        def good(edu_type: str, n: int, event_id: str) -> dict[str, Any]:
            contents: dict[str, dict[str, Any]] = {
                "m.receipt": {
                    room_id: {
                        "m.read": {bob.user_id: {"event_ids": [event_id], "data": {"ts": 5 + n}}}
                    }
                },
                "m.typing": {"room_id": room_id, "user_id": alice.user_id, "typing": n % 2 == 0},
                "m.presence": {
                    "push": [
                        {
                            "user_id": bob.user_id,
                            "presence": ("online", "unavailable")[n % 2],
                            "last_active_ago": 10,
                            "status_msg": f"here {n}",
                            "currently_active": True,
                        }
                    ]
                },
                "m.direct_to_device": {
                    "sender": alice.user_id,
                    "type": "m.test",
                    "message_id": f"m{n}",
                    "messages": {bob.user_id: {bob.device_id: {"n": n}}},
                },
                "m.device_list_update": {
                    "user_id": alice.user_id,
                    "device_id": "D",
                    "device_display_name": "phone",
                    "stream_id": n + 1,
                    "prev_id": [n] if n else [],
                    "deleted": False,
                    "keys": {"user_id": alice.user_id, "device_id": "D", "keys": {}},
                },
                "m.signing_key_update": {
                    "user_id": alice.user_id,
                    "master_key": {"user_id": alice.user_id, "usage": ["master"], "keys": {}},
                },
            }
            return contents[edu_type]

        tried = refused = 0
        for edu_type in EDU_TYPES:
            for path in _paths(good(edu_type, 0, event_id)):
                for odd in _ODD:
                    tried += 1
                    if edu_type == "m.receipt":
                        event_id = await server.send_event(
                            alice.user_id, room_id, "m.room.message", {"body": str(tried)}
                        )
                    content = _replaced(good(edu_type, tried, event_id), path, odd)
                    try:
                        await edus.on_edu(origin, edu_type, content)
                    except MatrixError:
                        refused += 1
        # Both kinds were there: some odd values are harmless, most are not.
        assert 0 < refused < tried
        # The dispatcher still takes a good EDU.
        await edus.on_edu(origin, "m.typing", good("m.typing", 0, event_id))
        assert server.typing_notices.typing_in(room_id) == [alice.user_id]
