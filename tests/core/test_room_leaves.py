"""Declining an invite from another server through it, and leaving rooms here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import pytest
from _rooms import local_creator

from ranvier.core.context import out_of_band_to_persist
from ranvier.core.creation import EventCreator
from ranvier.core.room_leaves import RoomLeaves
from ranvier.errors import MatrixError
from ranvier.protocol.redaction import redact
from ranvier.protocol.signing import generate_signing_key, get_verify_key, verify_signed_json
from ranvier.storage import Storage
from ranvier.testing import RoomBuilder

SERVER = "example.org"
KEY = generate_signing_key("1")
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
ZED = "@zed:inviter.example"


class Resident:
    """The inviting server's side of the leave handshake."""

    def __init__(
        self,
        room: RoomBuilder,
        *,
        refuse: MatrixError | None = None,
        refuse_leave: MatrixError | None = None,
    ) -> None:
        self.room = room
        self.refuse = refuse
        self.refuse_leave = refuse_leave
        self.template_changes: dict[str, Any] = {}
        self.asked: list[str] = []
        self.received: list[Mapping[str, Any]] = []

    async def make_leave(self, destination: str, room_id: str, user_id: str) -> Any:
        self.asked.append(destination)
        if self.refuse is not None:
            raise self.refuse
        draft = self.room.draft_member(user_id, "leave")
        event = {k: v for k, v in draft.json.items() if k not in ("hashes", "signatures")}
        return {"room_version": self.room.version, "event": event | self.template_changes}

    async def send_leave(
        self, destination: str, room_id: str, event_id: str, event: Mapping[str, Any]
    ) -> None:
        if self.refuse_leave is not None:
            raise self.refuse_leave
        self.received.append(event)


@pytest.fixture
def creator(storage: Storage) -> EventCreator:
    return local_creator(storage, SERVER, KEY)


async def _invited(storage: Storage) -> RoomBuilder:
    # Our key too: the builder signs the draft of our leave it templates from.
    keys = {"inviter.example": generate_signing_key("k"), SERVER: KEY}
    room = RoomBuilder("10", ZED, keys=keys)
    room.public_room()
    invite = room.member(ZED, "invite", BOB)
    await storage.persist_events([out_of_band_to_persist(invite)])
    return room


def _leaves(storage: Storage, creator: EventCreator, resident: Resident) -> RoomLeaves:
    return RoomLeaves(
        server_name=SERVER,
        signing_key=KEY,
        creator=creator,
        store=storage,
        memberships=storage.room_members,
        persister=storage,
        client=resident,
        clock=lambda: 1_800_000_000_000,
    )


async def test_an_invite_from_another_server_is_declined_through_it(
    storage: Storage, creator: EventCreator
) -> None:
    room = await _invited(storage)
    resident = Resident(room)
    event_id = await _leaves(storage, creator, resident).leave(BOB, room.room_id, reason="no")
    (sent,) = resident.received
    assert resident.asked == ["inviter.example"]
    assert sent["content"] == {"membership": "leave", "reason": "no"}
    assert sent["origin_server_ts"] == 1_800_000_000_000
    verify_signed_json(redact(sent, "10"), SERVER, get_verify_key(KEY))
    stored = (await storage.get_events([event_id]))[event_id]
    assert stored.outlier
    assert await storage.room_members.get_latest_membership_event_id(BOB, room.room_id) == event_id


@pytest.mark.parametrize(
    "changes",
    [{"sender": ALICE}, {"state_key": ALICE}, {"type": "m.room.message"}, {"room_id": "!x:y.z"}],
)
async def test_a_template_that_is_not_our_leave_is_refused(
    storage: Storage, creator: EventCreator, changes: dict[str, Any]
) -> None:
    room = await _invited(storage)
    resident = Resident(room)
    resident.template_changes = changes
    with pytest.raises(MatrixError) as caught:
        await _leaves(storage, creator, resident).leave(BOB, room.room_id)
    assert caught.value.http_status == 502
    assert resident.received == []
    latest = await storage.room_members.get_latest_membership_event_id(BOB, room.room_id)
    assert latest == room.order[-1].event_id


async def test_a_refused_send_leave_comes_back_as_given(
    storage: Storage, creator: EventCreator
) -> None:
    # The server gave a template: it may yet have taken the leave, so no
    # leave of our own is made beside it.
    room = await _invited(storage)
    refusal = MatrixError("no", errcode="M_FORBIDDEN", http_status=403)
    resident = Resident(room, refuse_leave=refusal)
    with pytest.raises(MatrixError) as caught:
        await _leaves(storage, creator, resident).leave(BOB, room.room_id)
    assert (caught.value.errcode, caught.value.http_status) == ("M_FORBIDDEN", 403)
    latest = await storage.room_members.get_latest_membership_event_id(BOB, room.room_id)
    assert latest == room.order[-1].event_id


async def test_a_room_here_is_left_here(storage: Storage, creator: EventCreator) -> None:
    room_id = await creator.create_room(ALICE, preset="public_chat")
    await creator.join(BOB, room_id)
    resident = Resident(RoomBuilder("10", ZED))
    event_id = await _leaves(storage, creator, resident).leave(BOB, room_id)
    assert (await storage.get_current_state_ids(room_id))[("m.room.member", BOB)] == event_id
    assert resident.asked == []


@pytest.mark.parametrize(
    "failure",
    [
        MatrixError("not in the room", errcode="M_NOT_FOUND", http_status=404),
        MatrixError("unreachable", errcode="M_UNKNOWN", http_status=502),
        MatrixError("withdrawn", errcode="M_FORBIDDEN", http_status=403),
        MatrixError("odd", errcode="M_UNRECOGNIZED", http_status=400),
    ],
)
async def test_an_invite_no_server_can_take_the_leave_of_is_declined_here(
    storage: Storage, creator: EventCreator, failure: MatrixError
) -> None:
    """The inviting server left the room, cannot be reached, or refuses to
    make the leave (it withdrew the invite, or would hold the user to it):
    the user is not held to the invite. The leave is made here, on the
    invite alone, and kept beside it."""
    room = await _invited(storage)
    invite = room.order[-1]
    resident = Resident(room, refuse=failure)
    event_id = await _leaves(storage, creator, resident).leave(BOB, room.room_id, reason="no")
    assert resident.asked == ["inviter.example"]
    assert resident.received == []
    stored = (await storage.get_events([event_id]))[event_id]
    assert stored.outlier
    leave = msgspec.json.decode(stored.json)
    assert (leave["sender"], leave["state_key"], leave["content"]) == (
        BOB,
        BOB,
        {"membership": "leave", "reason": "no"},
    )
    assert leave["prev_events"] == leave["auth_events"] == [invite.event_id]
    assert leave["depth"] == invite.depth + 1
    verify_signed_json(redact(leave, "10"), SERVER, get_verify_key(KEY))
    assert await storage.room_members.get_latest_membership_event_id(BOB, room.room_id) == event_id
