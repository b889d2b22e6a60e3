"""What a room upgrade keeps in the database.

Its directory: the local aliases and the room's place in the published
room list, and in the lists application services keep for their
networks, pass from the old room to its replacement in one commit, so an
alias never points nowhere and no list shows both rooms or neither.

Its claim: the main process and its client_reader workers each serve
upgrades, so "one upgrade of a room at a time" is a row in
``room_upgrade_claims``, taken and released through the writer (from a
worker, over replication) where every process sees it.
"""

from __future__ import annotations

import functools
import sqlite3

from .write_backend import WriteBackend, registered_write

__all__ = ["RoomUpgradeStorage"]


class RoomUpgradeStorage:
    """Moves directory entries from an upgraded room to its replacement,
    and holds the claims that keep a room's upgrades one at a time.
    """

    def __init__(self, actor: WriteBackend) -> None:
        self._actor = actor

    async def move_directory_entries(self, old_room_id: str, new_room_id: str) -> list[str]:
        """Point every alias of ``old_room_id`` at ``new_room_id`` and list the
        new room in the old one's place if the old one was listed; return the
        aliases moved.
        """
        return await self._actor.submit(
            functools.partial(
                _move_directory_entries, old_room_id=old_room_id, new_room_id=new_room_id
            )
        )

    async def take_upgrade_claim(
        self,
        room_id: str,
        user_id: str,
        new_version: str,
        *,
        claim_id: str,
        now_ms: int,
        stale_before_ms: int,
    ) -> bool:
        """Claim the upgrade of ``room_id`` as ``claim_id``; False if another
        claim holds it.

        A claim made before ``stale_before_ms`` is taken over: its holder
        is taken to have died half-way, and must not keep the room from
        being upgraded for ever. The claim ``claim_id`` holds already is
        taken again (replication repeats a write whose answer was lost).
        """
        return await self._actor.submit(
            functools.partial(
                _take_upgrade_claim,
                room_id=room_id,
                claim_id=claim_id,
                user_id=user_id,
                new_version=new_version,
                now_ms=now_ms,
                stale_before_ms=stale_before_ms,
            )
        )

    async def release_upgrade_claim(self, room_id: str, *, claim_id: str) -> None:
        """Give up the claim ``claim_id``; a claim that has since been taken
        over by another upgrade is left to it.
        """
        await self._actor.submit(
            functools.partial(_release_upgrade_claim, room_id=room_id, claim_id=claim_id)
        )


@registered_write
def _take_upgrade_claim(
    conn: sqlite3.Connection,
    *,
    room_id: str,
    claim_id: str,
    user_id: str,
    new_version: str,
    now_ms: int,
    stale_before_ms: int,
) -> bool:
    taken = conn.execute(
        "INSERT INTO room_upgrade_claims (room_id, claim_id, user_id, new_version, claimed_ts)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (room_id) DO UPDATE SET"
        " claim_id = excluded.claim_id, user_id = excluded.user_id,"
        " new_version = excluded.new_version, claimed_ts = excluded.claimed_ts"
        " WHERE room_upgrade_claims.claimed_ts < ?"
        " OR room_upgrade_claims.claim_id = excluded.claim_id",
        (room_id, claim_id, user_id, new_version, now_ms, stale_before_ms),
    )
    return taken.rowcount == 1


@registered_write
def _release_upgrade_claim(conn: sqlite3.Connection, *, room_id: str, claim_id: str) -> None:
    conn.execute(
        "DELETE FROM room_upgrade_claims WHERE room_id = ? AND claim_id = ?", (room_id, claim_id)
    )


@registered_write
def _move_directory_entries(
    conn: sqlite3.Connection, *, old_room_id: str, new_room_id: str
) -> list[str]:
    moved = [
        str(row[0])
        for row in conn.execute(
            "SELECT alias FROM room_aliases WHERE room_id = ? ORDER BY created_ts, alias",
            (old_room_id,),
        )
    ]
    conn.execute(
        "UPDATE room_aliases SET room_id = ? WHERE room_id = ?", (new_room_id, old_room_id)
    )
    listed = conn.execute(
        "SELECT added_ts FROM room_list WHERE room_id = ?", (old_room_id,)
    ).fetchone()
    if listed is not None:
        conn.execute("DELETE FROM room_list WHERE room_id = ?", (old_room_id,))
        conn.execute(
            "INSERT INTO room_list (room_id, added_ts) VALUES (?, ?)"
            " ON CONFLICT (room_id) DO NOTHING",
            (new_room_id, listed[0]),
        )
    # A network's list that already names the new room keeps that entry.
    conn.execute(
        "UPDATE OR IGNORE appservice_room_list SET room_id = ? WHERE room_id = ?",
        (new_room_id, old_room_id),
    )
    conn.execute("DELETE FROM appservice_room_list WHERE room_id = ?", (old_room_id,))
    return moved
