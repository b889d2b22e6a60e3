from __future__ import annotations

from ranvier.storage import Storage

ROOM = "!room:example.org"
OTHER = "!other:example.org"


async def test_an_alias_is_created_read_listed_and_deleted(storage: Storage) -> None:
    aliases = storage.aliases
    assert await aliases.get_alias("#a:example.org") is None
    assert await aliases.create_alias("#a:example.org", ROOM, "@alice:example.org", 2)
    assert await aliases.create_alias("#b:example.org", ROOM, "@bob:example.org", 1)
    assert await aliases.create_alias("#c:example.org", OTHER, "@bob:example.org", 3)
    assert await aliases.get_alias("#a:example.org") == (ROOM, "@alice:example.org")
    assert await aliases.get_room_aliases(ROOM) == ["#b:example.org", "#a:example.org"]
    assert await aliases.delete_alias("#a:example.org")
    assert not await aliases.delete_alias("#a:example.org")
    assert await aliases.get_alias("#a:example.org") is None
    assert await aliases.get_room_aliases(ROOM) == ["#b:example.org"]


async def test_a_taken_alias_is_not_moved(storage: Storage) -> None:
    aliases = storage.aliases
    assert await aliases.create_alias("#a:example.org", ROOM, "@alice:example.org", 1)
    assert not await aliases.create_alias("#a:example.org", OTHER, "@bob:example.org", 2)
    assert await aliases.get_alias("#a:example.org") == (ROOM, "@alice:example.org")
    assert await aliases.get_room_aliases(OTHER) == []
