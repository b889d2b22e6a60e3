"""Room aliases: grammar, who may create and delete them, and resolving them."""

from __future__ import annotations

from typing import Any

import pytest
from _rooms import local_creator

from ranvier.core.creation import EventCreator
from ranvier.core.directory import ResolvedAlias, RoomDirectory, parse_room_alias
from ranvier.core.room_servers import RoomServers
from ranvier.errors import MatrixError
from ranvier.protocol.signing import generate_signing_key
from ranvier.storage import Storage

SERVER = "example.org"
KEY = generate_signing_key("1")
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
CAROL = "@carol:example.org"


class Remote:
    """Another server's directory, as the federation query would answer."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def query_directory(self, server_name: str, alias: str) -> ResolvedAlias:
        self.asked.append((server_name, alias))
        if alias != "#known:remote.example":
            raise MatrixError("unknown", errcode="M_NOT_FOUND", http_status=404)
        return ResolvedAlias("!far:remote.example", ("remote.example",))


@pytest.fixture
def creator(storage: Storage) -> EventCreator:
    return local_creator(storage, SERVER, KEY)


@pytest.fixture
def remote() -> Remote:
    return Remote()


@pytest.fixture
def directory(storage: Storage, remote: Remote) -> RoomDirectory:
    return RoomDirectory(
        server_name=SERVER,
        aliases=storage.aliases,
        store=storage,
        servers=RoomServers(storage),
        client=remote,
    )


async def _refused(call: Any, errcode: str, status: int) -> None:
    with pytest.raises(MatrixError) as caught:
        await call
    assert (caught.value.errcode, caught.value.http_status) == (errcode, status)


@pytest.mark.parametrize(
    "alias",
    ["room:example.org", "#:example.org", "#room", "#room:", "#room:bad_host", "#a:b:c:d", 7],
)
def test_malformed_aliases_are_refused(alias: Any) -> None:
    with pytest.raises(MatrixError) as caught:
        parse_room_alias(alias)
    assert caught.value.errcode == "M_INVALID_PARAM"


def test_an_alias_splits_at_its_first_colon() -> None:
    assert parse_room_alias("#room:example.org:8448") == ("room", "example.org:8448")
    assert parse_room_alias("#ünïcode:[::1]") == ("ünïcode", "[::1]")


async def test_an_alias_is_created_resolved_and_deleted(
    creator: EventCreator, directory: RoomDirectory, storage: Storage
) -> None:
    room_id = await creator.create_room(ALICE, preset="public_chat")
    await directory.create_alias(ALICE, "#room:example.org", room_id)
    resolved = await directory.resolve("#room:example.org")
    assert resolved == ResolvedAlias(room_id, (SERVER,))
    assert await directory.room_aliases(room_id) == ["#room:example.org"]
    await _refused(directory.create_alias(ALICE, "#room:example.org", room_id), "M_UNKNOWN", 409)
    await directory.delete_alias(ALICE, "#room:example.org")
    await _refused(directory.resolve("#room:example.org"), "M_NOT_FOUND", 404)
    await _refused(directory.delete_alias(ALICE, "#room:example.org"), "M_NOT_FOUND", 404)


async def test_creating_an_alias_is_checked(
    creator: EventCreator, directory: RoomDirectory, storage: Storage
) -> None:
    room_id = await creator.create_room(ALICE, preset="public_chat")
    await _refused(
        directory.create_alias(ALICE, "#room:other.example", room_id), "M_INVALID_PARAM", 400
    )
    await _refused(
        directory.create_alias(ALICE, "#room:example.org", "room"), "M_INVALID_PARAM", 400
    )
    await _refused(
        directory.create_alias(ALICE, "#room:example.org", "!unknown:example.org"),
        "M_NOT_FOUND",
        404,
    )
    # Only a member of the room names it.
    await _refused(directory.create_alias(BOB, "#room:example.org", room_id), "M_FORBIDDEN", 403)
    assert await storage.aliases.get_alias("#room:example.org") is None


async def test_who_may_delete_an_alias(
    creator: EventCreator, directory: RoomDirectory, storage: Storage
) -> None:
    room_id = await creator.create_room(ALICE, preset="public_chat", room_version="10")
    await creator.join(BOB, room_id)
    await creator.join(CAROL, room_id)
    await directory.create_alias(BOB, "#bobs:example.org", room_id)
    await directory.create_alias(BOB, "#again:example.org", room_id)
    await directory.create_alias(BOB, "#third:example.org", room_id)
    # Carol neither made it nor has the power to change the room's aliases.
    await _refused(directory.delete_alias(CAROL, "#bobs:example.org"), "M_FORBIDDEN", 403)
    assert await storage.aliases.get_alias("#bobs:example.org") is not None
    # A server admin may; so may the room's creator (power 100), and its creator.
    await directory.delete_alias(CAROL, "#bobs:example.org", is_admin=True)
    await directory.delete_alias(ALICE, "#again:example.org")
    await directory.delete_alias(BOB, "#third:example.org")
    assert await directory.room_aliases(room_id) == []


async def test_another_servers_alias_is_asked_of_it(
    directory: RoomDirectory, remote: Remote
) -> None:
    resolved = await directory.resolve("#known:remote.example")
    assert resolved == ResolvedAlias("!far:remote.example", ("remote.example",))
    await _refused(directory.resolve("#unknown:remote.example"), "M_NOT_FOUND", 404)
    assert remote.asked == [
        ("remote.example", "#known:remote.example"),
        ("remote.example", "#unknown:remote.example"),
    ]
    # resolve_local answers for our own aliases only.
    await _refused(directory.resolve_local("#known:remote.example"), "M_NOT_FOUND", 404)
