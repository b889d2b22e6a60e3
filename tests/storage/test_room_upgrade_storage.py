"""Moving an upgraded room's directory entries: aliases, the room list
entry and the networks' list entries pass to the replacement together, and
nothing else moves."""

from __future__ import annotations

import sqlite3

from ranvier.storage import Storage

OLD = "!old:example.org"
NEW = "!new:example.org"
ELSEWHERE = "!elsewhere:example.org"


async def _rooms(storage: Storage) -> None:
    for room_id in (OLD, NEW, ELSEWHERE):
        await storage.store_room(room_id, "10")


async def test_aliases_and_the_listing_move_to_the_new_room(storage: Storage) -> None:
    await _rooms(storage)
    aliases = storage.aliases
    assert await aliases.create_alias("#b:example.org", OLD, "@bob:example.org", 2)
    assert await aliases.create_alias("#a:example.org", OLD, "@alice:example.org", 1)
    assert await aliases.create_alias("#c:example.org", ELSEWHERE, "@bob:example.org", 3)
    await storage.client_data.set_room_listed(OLD, True, 10)
    await storage.client_data.set_room_listed(ELSEWHERE, True, 11)

    moved = await storage.room_upgrades.move_directory_entries(OLD, NEW)

    assert moved == ["#a:example.org", "#b:example.org"]
    assert await aliases.get_room_aliases(NEW) == ["#a:example.org", "#b:example.org"]
    assert await aliases.get_room_aliases(OLD) == []
    # Who made an alias stays as it was.
    assert await aliases.get_alias("#b:example.org") == (NEW, "@bob:example.org")
    assert await aliases.get_room_aliases(ELSEWHERE) == ["#c:example.org"]
    assert not await storage.client_data.is_room_listed(OLD)
    assert await storage.client_data.is_room_listed(NEW)
    assert await storage.client_data.is_room_listed(ELSEWHERE)


async def test_an_unlisted_room_without_aliases_moves_nothing(storage: Storage) -> None:
    await _rooms(storage)
    await storage.client_data.set_room_listed(ELSEWHERE, True, 11)

    assert await storage.room_upgrades.move_directory_entries(OLD, NEW) == []

    assert not await storage.client_data.is_room_listed(NEW)
    assert await storage.client_data.is_room_listed(ELSEWHERE)
    assert await storage.aliases.get_room_aliases(NEW) == []


async def test_a_claim_is_held_until_released_or_stale(storage: Storage) -> None:
    claims = storage.room_upgrades
    alice, bob = "@alice:example.org", "@bob:example.org"
    assert await claims.take_upgrade_claim(
        OLD, alice, "11", claim_id="a1", now_ms=1000, stale_before_ms=0
    )
    assert not await claims.take_upgrade_claim(
        OLD, bob, "12", claim_id="b1", now_ms=2000, stale_before_ms=1000
    )
    # Another room's claim is its own.
    assert await claims.take_upgrade_claim(
        ELSEWHERE, bob, "12", claim_id="b2", now_ms=2000, stale_before_ms=0
    )

    # Taken over once older than the limit; its old holder cannot release it.
    assert await claims.take_upgrade_claim(
        OLD, bob, "12", claim_id="b3", now_ms=3000, stale_before_ms=1001
    )
    await claims.release_upgrade_claim(OLD, claim_id="a1")
    assert not await claims.take_upgrade_claim(
        OLD, alice, "11", claim_id="a2", now_ms=4000, stale_before_ms=0
    )

    await claims.release_upgrade_claim(OLD, claim_id="b3")
    assert await claims.take_upgrade_claim(
        OLD, alice, "11", claim_id="a3", now_ms=5000, stale_before_ms=0
    )


async def test_a_claim_taken_again_by_the_same_write_is_its_own(storage: Storage) -> None:
    # Replication runs a write again when its answer was lost.
    claims = storage.room_upgrades
    alice = "@alice:example.org"
    for _ in range(2):
        assert await claims.take_upgrade_claim(
            OLD, alice, "11", claim_id="a1", now_ms=1000, stale_before_ms=0
        )
    # Another upgrade by the same user, in the same millisecond, waits.
    assert not await claims.take_upgrade_claim(
        OLD, alice, "11", claim_id="a2", now_ms=1000, stale_before_ms=0
    )


def _network_listings(storage: Storage) -> set[tuple[str, str, str]]:
    conn = sqlite3.connect(storage.path)
    try:
        rows = conn.execute("SELECT appservice_id, network_id, room_id FROM appservice_room_list")
        return {(str(a), str(n), str(r)) for a, n, r in rows}
    finally:
        conn.close()


async def test_the_networks_listings_move_to_the_new_room(storage: Storage) -> None:
    await _rooms(storage)
    data = storage.client_data
    await data.set_room_listed_in_network("irc", "libera", OLD, True, 10)
    await data.set_room_listed_in_network("irc", "oftc", OLD, True, 10)
    await data.set_room_listed_in_network("irc", "oftc", NEW, True, 11)
    await data.set_room_listed_in_network("irc", "libera", ELSEWHERE, True, 12)

    await storage.room_upgrades.move_directory_entries(OLD, NEW)

    # The network that listed both rooms lists the new one once.
    assert _network_listings(storage) == {
        ("irc", "libera", NEW),
        ("irc", "oftc", NEW),
        ("irc", "libera", ELSEWHERE),
    }
