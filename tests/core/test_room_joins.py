"""The one join path: rooms here joined here, others through the servers
that may know them, in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import pytest
from _rooms import local_creator

from ranvier.core.context import out_of_band_to_persist
from ranvier.core.creation import EventCreator
from ranvier.core.directory import RoomDirectory
from ranvier.core.joins import RemoteJoiner, RemoteJoinError
from ranvier.core.restricted_joins import RestrictedJoins
from ranvier.core.room_joins import RoomJoins
from ranvier.core.room_servers import RoomServers
from ranvier.errors import MatrixError
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import Storage
from ranvier.testing import KnownKeys, RoomBuilder, ingest_all

SERVER = "example.org"
KEY = generate_signing_key("1")
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
ZED = "@zed:inviter.example"


class Unreachable:
    """Every server the join is tried through is down; the order is kept."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def make_join(
        self, destination: str, room_id: str, user_id: str, room_versions: Sequence[str]
    ) -> Any:
        self.asked.append(destination)
        raise MatrixError(f"{destination} is down", errcode="M_UNKNOWN", http_status=502)

    async def send_join(
        self,
        destination: str,
        room_id: str,
        event_id: str,
        event: Mapping[str, Any],
        *,
        omit_members: bool = False,
    ) -> bytes:
        raise AssertionError("no make_join succeeded")


@pytest.fixture
def network() -> Unreachable:
    return Unreachable()


@pytest.fixture
def joins(storage: Storage, network: Unreachable) -> RoomJoins:
    creator = local_creator(storage, SERVER, KEY)
    remote = RemoteJoiner(
        server_name=SERVER,
        signing_key=KEY,
        client=network,
        keys=KnownKeys({}),
        store=storage,
        persister=storage,
    )
    directory = RoomDirectory(
        server_name=SERVER, aliases=storage.aliases, store=storage, servers=RoomServers(storage)
    )
    return RoomJoins(
        creator=creator,
        remote=remote,
        store=storage,
        memberships=storage.room_members,
        directory=directory,
        restricted=RestrictedJoins(storage, SERVER),
    )


async def test_a_room_here_is_joined_here_by_id_or_alias(
    joins: RoomJoins, storage: Storage, network: Unreachable
) -> None:
    creator = EventCreator(server_name=SERVER, signing_key=KEY, store=storage, persister=storage)
    room_id = await creator.create_room(ALICE, preset="public_chat")
    await storage.aliases.create_alias("#open:example.org", room_id, ALICE, 1)
    joined = await joins.join(BOB, "#open:example.org", ["ignored.example"])
    assert joined.room_id == room_id
    state = await storage.get_current_state_ids(room_id)
    assert state[("m.room.member", BOB)] == joined.event_id
    again = await joins.join(BOB, room_id)
    assert again.room_id == room_id
    assert network.asked == []


@pytest.mark.parametrize("name", ["room", "@user:example.org", ""])
async def test_a_name_that_is_neither_id_nor_alias_is_refused(joins: RoomJoins, name: str) -> None:
    with pytest.raises(MatrixError) as caught:
        await joins.join(BOB, name)
    assert (caught.value.errcode, caught.value.http_status) == ("M_INVALID_PARAM", 400)


async def test_an_unknown_local_alias_is_not_found(joins: RoomJoins) -> None:
    with pytest.raises(MatrixError) as caught:
        await joins.join(BOB, "#nothing:example.org")
    assert (caught.value.errcode, caught.value.http_status) == ("M_NOT_FOUND", 404)


async def test_a_remote_room_is_tried_through_given_named_then_inviting_servers(
    joins: RoomJoins, storage: Storage, network: Unreachable
) -> None:
    room = RoomBuilder(
        "10", ZED, keys={"inviter.example": generate_signing_key("k")}, room_id="!far:named.example"
    )
    room.public_room()
    invite = room.member(ZED, "invite", BOB)
    await storage.persist_events([out_of_band_to_persist(invite)])
    with pytest.raises(RemoteJoinError) as caught:
        await joins.join(BOB, room.room_id, ["first.example", "second.example", "first.example"])
    assert network.asked == ["first.example", "second.example", "named.example", "inviter.example"]
    assert [server for server, _ in caught.value.failures] == network.asked


async def test_servers_that_cannot_exist_are_not_asked(
    joins: RoomJoins, network: Unreachable
) -> None:
    named = ["exa mple", "x" * 300, "-1:99999", "good.example", "[::zz]", ""]
    with pytest.raises(RemoteJoinError):
        await joins.join(BOB, "!far:bad name", named)
    assert network.asked == ["good.example"]


async def test_a_remote_room_with_no_server_to_ask_is_not_found(joins: RoomJoins) -> None:
    # A version 12 room ID names no server, and no server was given.
    with pytest.raises(RemoteJoinError) as caught:
        await joins.join(BOB, "!" + "a" * 43, ["not a server"])
    assert (caught.value.errcode, caught.value.http_status) == ("M_NOT_FOUND", 404)
    assert "no server to join through" in caught.value.message


def _restricted_to(*room_ids: str) -> dict[str, Any]:
    allow = [{"type": "m.room_membership", "room_id": room_id} for room_id in room_ids]
    return {"type": "m.room.join_rules", "content": {"join_rule": "restricted", "allow": allow}}


async def test_a_restricted_room_here_is_joined_vouched_for_by_a_local_inviter(
    joins: RoomJoins, storage: Storage, network: Unreachable
) -> None:
    creator = EventCreator(server_name=SERVER, signing_key=KEY, store=storage, persister=storage)
    space = await creator.create_room(ALICE, preset="public_chat")
    room_id = await creator.create_room(
        ALICE, initial_state=[_restricted_to(space)], power_level_content_override={"invite": 50}
    )
    await joins.join(BOB, space)
    joined = await joins.join(BOB, room_id)
    event = await storage.get_event(joined.event_id)
    assert event is not None
    assert msgspec.json.decode(event.json)["content"] == {
        "membership": "join",
        "join_authorised_via_users_server": ALICE,
    }
    carol = "@carol:example.org"
    with pytest.raises(MatrixError) as caught:
        await joins.join(carol, room_id)
    assert (caught.value.errcode, caught.value.http_status) == ("M_FORBIDDEN", 403)
    assert ("m.room.member", carol) not in await storage.get_current_state_ids(room_id)
    assert network.asked == []


async def test_a_restricted_room_no_one_here_may_vouch_in_is_joined_through_an_inviter(
    joins: RoomJoins, storage: Storage, network: Unreachable
) -> None:
    creator = EventCreator(server_name=SERVER, signing_key=KEY, store=storage, persister=storage)
    space = await creator.create_room(ALICE, preset="public_chat")
    await joins.join(BOB, space)
    # Zed's room, which Alice joined without the power to invite.
    room = RoomBuilder("10", ZED)
    room.member(ZED, "join")
    room.power_levels(ZED, {ZED: 100}, content={"invite": 50})
    room.join_rules(ZED, "public")
    room.member(ALICE, "join")
    room.send("m.room.join_rules", ZED, _restricted_to(space)["content"], state_key="")
    await ingest_all(storage, room.order)
    with pytest.raises(RemoteJoinError):
        await joins.join(BOB, room.room_id, ["first.example"])
    # The server of the user able to invite first, then those named.
    assert network.asked == ["inviter.example", "first.example"]
