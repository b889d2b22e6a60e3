"""End-to-end encryption's server side: devices' keys, to-device messages
and the device-list stream.

Tables (the schema's ``_end_to_end`` migration)
-----------------------------------------------

``e2e_device_keys``, ``e2e_one_time_keys``, ``e2e_fallback_keys`` and
``e2e_cross_signing_keys`` hold keys as the JSON the client uploaded.
``to_device_inbox`` holds each device's messages under a stream position;
``to_device_transactions`` the transaction IDs already sent, per device (or
device-less token).
``device_list_changes`` logs, under a stream position, each user whose
devices or keys changed.

Invariants
----------

* **A one-time key is handed out once.** Claiming deletes the row it
  returns in the same write, and writes are serialised by the storage
  actor, so two claims never get the same key. A device without one-time
  keys of the algorithm hands out its fallback key instead, as often as
  asked, and the key is marked used.
* **A key ID keeps its key.** Uploading a one-time key under an ID the
  device already holds with other content is refused whole: a client
  cannot silently swap a key another device may have claimed.
* **A to-device send happens once per transaction ID.** The transaction's
  row and the messages go in one write; a retry finds the row and writes
  nothing.
* **A message lives until acknowledged.** A sync hands out a device's
  messages above its token; the next sync's token acknowledges them and
  only then are they deleted.
* **Every change of a user's keys moves the device-list stream**, in the
  write that changed them, so a sync whose token is below it reports the
  user.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from ranvier.errors import MatrixError

from .membership_sql import MEMBERSHIP
from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = [
    "E2eKeyStorage",
    "E2eSyncRead",
    "forget_device_keys",
    "kept_device_ids",
    "store_device_keys",
]

#: Users or rooms bound per statement.
_BATCH: Final = 500


def _sequence(conn: sqlite3.Connection, table: str) -> int:
    # The sequence, not max(stream_id): the newest row may have been deleted
    # since (an acknowledged message), and positions must not go back.
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return 0 if row is None else int(row[0])


def _chunks(values: Sequence[str]) -> list[Sequence[str]]:
    return [values[start : start + _BATCH] for start in range(0, len(values), _BATCH)]


@dataclass(frozen=True, slots=True)
class E2eSyncRead:
    """What one ``/sync`` reads of a device's end-to-end encryption."""

    #: ``(position, JSON)`` of the device's messages in the range asked.
    messages: list[tuple[int, bytes]]
    #: Whether messages the sync's token acknowledges are still stored.
    acknowledged_left: bool
    #: The users whose keys changed in the range asked.
    changed_users: set[str]
    #: ``(room, user, membership)`` of the rooms' member events in range.
    memberships: list[tuple[str, str, str | None]]
    #: The device's one-time key count per algorithm.
    key_counts: dict[str, int]
    #: The algorithms of its unused fallback keys.
    unused_fallbacks: list[str]


class E2eKeyStorage:
    """Keys, to-device messages and device-list changes over the write
    backend and the reader pool.
    """

    def __init__(self, writer: WriteBackend, readers: ReaderPool) -> None:
        self._writer = writer
        self._readers = readers

    # Keys.

    async def upload_keys(
        self,
        *,
        user_id: str,
        device_id: str,
        device_keys: bytes | None,
        one_time_keys: Sequence[tuple[str, str, bytes]],
        fallback_keys: Sequence[tuple[str, str, bytes]],
    ) -> tuple[dict[str, int], int | None]:
        """Store a device's keys (``(algorithm, key ID, JSON)`` for one-time
        and fallback keys) in one write; the device's one-time key counts
        after it, and the device-list position when its device keys changed.
        ``M_INVALID_PARAM`` (nothing written) for a one-time key ID already
        held with other content.
        """
        return await self._writer.submit(
            functools.partial(
                _upload_keys,
                user_id=user_id,
                device_id=device_id,
                device_keys=device_keys,
                one_time_keys=list(one_time_keys),
                fallback_keys=list(fallback_keys),
            )
        )

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        """The device's one-time key count per algorithm, and the algorithms
        of its unused fallback keys.
        """
        return await self._readers.read(
            functools.partial(_key_counts, user_id=user_id, device_id=device_id)
        )

    async def device_keys(
        self, wanted: Mapping[str, Collection[str]]
    ) -> dict[str, dict[str, tuple[bytes, str | None]]]:
        """Per user of ``wanted``, the keys of the devices named (all the
        user's devices when none are), with each device's display name;
        only devices that still exist.
        """
        asked = {user_id: sorted(devices) for user_id, devices in wanted.items()}
        return await self._readers.read(functools.partial(_device_keys, wanted=asked))

    async def claim_keys(
        self, wanted: Sequence[tuple[str, str, str]]
    ) -> list[tuple[str, str, str, str, bytes]]:
        """Take one key for each ``(user, device, algorithm)`` of ``wanted``:
        ``(user, device, algorithm, key ID, JSON)`` of those found.
        """
        return await self._writer.submit(functools.partial(_claim_keys, wanted=list(wanted)))

    async def set_cross_signing_keys(self, user_id: str, keys: Mapping[str, bytes]) -> int:
        """Store the user's cross-signing keys by type (``master``,
        ``self_signing``, ``user_signing``); the device-list position.
        """
        return await self._writer.submit(
            functools.partial(_set_cross_signing_keys, user_id=user_id, keys=dict(keys))
        )

    async def cross_signing_keys(self, user_ids: Collection[str]) -> dict[str, dict[str, bytes]]:
        """Per user, their cross-signing keys by type."""
        users = sorted(set(user_ids))
        return await self._readers.read(functools.partial(_cross_signing_keys, user_ids=users))

    async def add_signatures(
        self, signatures: Sequence[tuple[str, str, bytes]]
    ) -> tuple[list[tuple[str, str]], int | None]:
        """Merge signatures into stored keys: each ``(user, key's name,
        signatures JSON)``, the name a device ID or a cross-signing key's
        public part. Returns the ``(user, name)`` pairs of no stored key,
        and the device-list position when something changed.
        """
        return await self._writer.submit(
            functools.partial(_add_signatures, signatures=list(signatures))
        )

    # To-device messages.

    async def send_to_device(
        self,
        *,
        sender: str,
        sender_device: str | None,
        txn_id: str | None,
        messages: Sequence[tuple[str, str, bytes]],
        now_ms: int,
        remote: Sequence[tuple[str, bytes]] = (),
        txn_token: bytes = b"",
    ) -> tuple[bool, int | None, list[tuple[str, str]]]:
        """Queue messages ``(user, device or '*', JSON)`` for local devices,
        and ``m.direct_to_device`` EDUs ``(destination, JSON)`` in the
        outbox, once per ``(sender, sender_device, txn_token, txn_id)``:
        whether this is the first time, the new position (None when nothing
        was queued) and the ``(user, device)`` pairs reached. ``txn_token``
        is the hash of a device-less request's access token, whose
        transaction IDs are its own (:class:`ranvier.core.client_txns.TxnOwner`).
        """
        return await self._writer.submit(
            functools.partial(
                _send_to_device,
                sender=sender,
                sender_device=sender_device,
                txn_id=txn_id,
                txn_token=txn_token,
                messages=list(messages),
                now_ms=now_ms,
                remote=list(remote),
            )
        )

    # The outbox of m.direct_to_device EDUs.

    async def outbox_destinations(self, after: str | None, limit: int) -> list[str]:
        """Destinations with EDUs waiting in the outbox, in name order,
        after ``after``, at most ``limit``.
        """
        return await self._readers.read(
            functools.partial(_outbox_destinations, after=after or "", limit=limit)
        )

    async def outbox_edus(
        self, destination: str, after: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """``(position, JSON)`` of ``destination``'s waiting EDUs after
        ``after``, oldest first, at most ``limit``.
        """
        return await self._readers.read(
            functools.partial(_outbox_edus, destination=destination, after=after, limit=limit)
        )

    async def delete_outbox_edus(self, destination: str, upto: int) -> int:
        """Forget ``destination``'s EDUs up to ``upto``, which it took; how many went."""
        return await self._writer.submit(
            functools.partial(_delete_outbox_edus, destination=destination, upto=upto)
        )

    async def forget_to_device_transactions(self, before_ms: int) -> int:
        """Forget the to-device transactions recorded before ``before_ms``;
        how many went.
        """
        return await self._writer.submit(
            functools.partial(_forget_to_device_transactions, before_ms=before_ms)
        )

    async def to_device_messages(
        self, user_id: str, device_id: str, after: int, upto: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """The device's messages in ``(after, upto]``, oldest first, at most ``limit``."""
        return await self._readers.read(
            functools.partial(
                _to_device_messages,
                user_id=user_id,
                device_id=device_id,
                after=after,
                upto=upto,
                limit=limit,
            )
        )

    async def acknowledge_to_device(self, user_id: str, device_id: str, upto: int) -> int:
        """Delete the device's messages up to ``upto``, which a sync's token
        says its client holds; how many went. A sync asks only when
        :meth:`sync_read` found some, so that a sync costs no write.
        """
        return await self._writer.submit(
            functools.partial(
                _acknowledge_to_device, user_id=user_id, device_id=device_id, upto=upto
            )
        )

    async def to_device_position(self) -> int:
        return await self._readers.read(functools.partial(_sequence, table="to_device_inbox"))

    async def sync_positions(self) -> tuple[int, int]:
        """The to-device and device-list streams' positions, in one read."""
        return await self._readers.read(_sync_positions)

    async def sync_read(
        self,
        *,
        user_id: str,
        device_id: str,
        to_device: tuple[int, int],
        limit: int,
        device_lists: tuple[int, int] | None,
        room_ids: Collection[str],
        events: tuple[int, int] | None,
    ) -> E2eSyncRead:
        """Everything a sync reads of ``device_id``'s end-to-end
        encryption, in one read: its messages in ``to_device`` (``(after,
        upto]``, at most ``limit``), the device-list changes in
        ``device_lists`` and the member events of ``room_ids`` in
        ``events`` (None: an initial sync, which reads neither), and its
        key counts.
        """
        return await self._readers.read(
            functools.partial(
                _sync_read,
                user_id=user_id,
                device_id=device_id,
                to_device=to_device,
                limit=limit,
                device_lists=device_lists,
                room_ids=sorted(set(room_ids)),
                events=events,
            )
        )

    # Device lists.

    async def device_lists_position(self) -> int:
        return await self._readers.read(functools.partial(_sequence, table="device_list_changes"))

    async def forget_devices(self, user_id: str, device_ids: Collection[str]) -> int:
        """Delete deleted devices' keys and waiting messages, and move the
        device-list stream for their user; the new position.
        """
        return await self._writer.submit(
            functools.partial(_forget_devices, user_id=user_id, device_ids=sorted(device_ids))
        )

    async def forget_gone_devices(self, user_id: str) -> tuple[int | None, list[str]]:
        """Delete the keys and waiting messages of ``user_id``'s devices
        that no longer exist (logged out), and move the device-list stream
        for the user if there were any: the new position (None if none) and
        those devices.
        """
        return await self._writer.submit(functools.partial(_forget_gone_devices, user_id=user_id))

    async def mark_device_list_changed(self, user_id: str) -> int:
        """Move the device-list stream for ``user_id`` (a device gone, a new
        one); the new position.
        """
        return await self._writer.submit(
            functools.partial(_mark_device_list_changed, user_id=user_id)
        )

    async def previous_device_list_change(self, user_id: str, before: int) -> int | None:
        """The newest position below ``before`` at which ``user_id``'s device
        list moved, or None: what an update at ``before`` follows."""
        return await self._readers.read(
            functools.partial(_previous_device_list_change, user_id=user_id, before=before)
        )

    async def device_list_changes(self, after: int, upto: int) -> set[str]:
        """The users whose devices or keys changed in ``(after, upto]``."""
        return await self._readers.read(
            functools.partial(_device_list_changes, after=after, upto=upto)
        )

    async def rooms_completed(self, after: int, upto: int) -> set[str]:
        """The rooms whose partial state was completed in ``(after, upto]``
        of the un-partial-state stream.
        """
        return await self._readers.read(functools.partial(_rooms_completed, after=after, upto=upto))

    async def membership_changes(
        self, room_ids: Collection[str], after: int, upto: int
    ) -> list[tuple[str, str, str | None]]:
        """``(room, user, membership)`` of the member events of ``room_ids``
        in the timeline in ``(after, upto]``, oldest first.
        """
        rooms = sorted(set(room_ids))
        return await self._readers.read(
            functools.partial(_membership_changes, room_ids=rooms, after=after, upto=upto)
        )

    async def joined_members(self, room_ids: Collection[str]) -> set[str]:
        """The users joined to any of ``room_ids`` now."""
        rooms = sorted(set(room_ids))
        return await self._readers.read(functools.partial(joined_members_now, room_ids=rooms))


def _changed(conn: sqlite3.Connection, user_id: str) -> int:
    cursor = conn.execute("INSERT INTO device_list_changes (user_id) VALUES (?)", (user_id,))
    assert cursor.lastrowid is not None
    return cursor.lastrowid


@registered_write
def _forget_devices(conn: sqlite3.Connection, *, user_id: str, device_ids: list[str]) -> int:
    for device_id in device_ids:
        for table in _DEVICE_TABLES:
            conn.execute(
                f"DELETE FROM {table} WHERE user_id = ? AND device_id = ?", (user_id, device_id)
            )
    return _changed(conn, user_id)


#: The tables holding something of a device, each with user_id and device_id.
_DEVICE_TABLES: Final = (
    "e2e_device_keys",
    "e2e_one_time_keys",
    "e2e_fallback_keys",
    "to_device_inbox",
)


def forget_device_keys(conn: sqlite3.Connection, *, user_id: str, device_ids: list[str]) -> int:
    """Forget devices' keys and messages inside another module's write (one
    that deletes devices itself); the device-list position.
    """
    return _forget_devices(conn, user_id=user_id, device_ids=device_ids)


def store_device_keys(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    device_id: str,
    device_keys: bytes | None,
    one_time_keys: list[tuple[str, str, bytes]],
    fallback_keys: list[tuple[str, str, bytes]],
) -> tuple[dict[str, int], int | None]:
    """Store a device's keys inside another module's write, as
    :meth:`E2eKeyStorage.upload_keys` does in its own.
    """
    return _upload_keys(
        conn,
        user_id=user_id,
        device_id=device_id,
        device_keys=device_keys,
        one_time_keys=one_time_keys,
        fallback_keys=fallback_keys,
    )


def kept_device_ids(conn: sqlite3.Connection, *, user_id: str) -> set[str]:
    """The devices of ``user_id`` that keys or waiting messages are kept
    for, whether or not the devices still exist."""
    kept: set[str] = set()
    for table in _DEVICE_TABLES:
        kept.update(
            str(device_id)
            for (device_id,) in conn.execute(
                f"SELECT DISTINCT device_id FROM {table} WHERE user_id = ?", (user_id,)
            )
        )
    return kept


@registered_write
def _forget_gone_devices(conn: sqlite3.Connection, *, user_id: str) -> tuple[int | None, list[str]]:
    existing = {
        str(device_id)
        for (device_id,) in conn.execute(
            "SELECT device_id FROM devices WHERE user_id = ?", (user_id,)
        )
    }
    gone = kept_device_ids(conn, user_id=user_id) - existing
    if not gone:
        return None, []
    devices = sorted(gone)
    return _forget_devices(conn, user_id=user_id, device_ids=devices), devices


@registered_write
def _mark_device_list_changed(conn: sqlite3.Connection, *, user_id: str) -> int:
    return _changed(conn, user_id)


@registered_write
def _upload_keys(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    device_id: str,
    device_keys: bytes | None,
    one_time_keys: list[tuple[str, str, bytes]],
    fallback_keys: list[tuple[str, str, bytes]],
) -> tuple[dict[str, int], int | None]:
    position = None
    if device_keys is not None:
        held = conn.execute(
            "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
            (user_id, device_id),
        ).fetchone()
        if held is None or bytes(held[0]) != device_keys:
            conn.execute(
                "INSERT OR REPLACE INTO e2e_device_keys (user_id, device_id, key_json)"
                " VALUES (?, ?, ?)",
                (user_id, device_id, device_keys),
            )
            position = _changed(conn, user_id)
    for algorithm, key_id, key_json in one_time_keys:
        held = conn.execute(
            "SELECT key_json FROM e2e_one_time_keys"
            " WHERE user_id = ? AND device_id = ? AND algorithm = ? AND key_id = ?",
            (user_id, device_id, algorithm, key_id),
        ).fetchone()
        if held is None:
            conn.execute(
                "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json)"
                " VALUES (?, ?, ?, ?, ?)",
                (user_id, device_id, algorithm, key_id, key_json),
            )
        elif msgspec.json.decode(bytes(held[0])) != msgspec.json.decode(key_json):
            raise MatrixError(
                f"one-time key {algorithm}:{key_id} already exists with other content",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
    for algorithm, key_id, key_json in fallback_keys:
        held = conn.execute(
            "SELECT key_id, key_json FROM e2e_fallback_keys"
            " WHERE user_id = ? AND device_id = ? AND algorithm = ?",
            (user_id, device_id, algorithm),
        ).fetchone()
        if held is not None and held[0] == key_id and bytes(held[1]) == key_json:
            continue
        conn.execute(
            "INSERT OR REPLACE INTO e2e_fallback_keys"
            " (user_id, device_id, algorithm, key_id, key_json, used) VALUES (?, ?, ?, ?, ?, 0)",
            (user_id, device_id, algorithm, key_id, key_json),
        )
    return _key_counts(conn, user_id=user_id, device_id=device_id)[0], position


def _key_counts(
    conn: sqlite3.Connection, *, user_id: str, device_id: str
) -> tuple[dict[str, int], list[str]]:
    counts = {
        str(algorithm): int(count)
        for algorithm, count in conn.execute(
            "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys"
            " WHERE user_id = ? AND device_id = ? GROUP BY algorithm",
            (user_id, device_id),
        )
    }
    unused = [
        str(algorithm)
        for (algorithm,) in conn.execute(
            "SELECT algorithm FROM e2e_fallback_keys"
            " WHERE user_id = ? AND device_id = ? AND used = 0 ORDER BY algorithm",
            (user_id, device_id),
        )
    ]
    return counts, unused


def _device_keys(
    conn: sqlite3.Connection, *, wanted: dict[str, list[str]]
) -> dict[str, dict[str, tuple[bytes, str | None]]]:
    found: dict[str, dict[str, tuple[bytes, str | None]]] = {}
    for user_id, device_ids in wanted.items():
        query = (
            "SELECT k.device_id, k.key_json, d.display_name FROM e2e_device_keys AS k"
            " JOIN devices AS d ON d.user_id = k.user_id AND d.device_id = k.device_id"
            " WHERE k.user_id = ?"
        )
        rows: list[tuple[Any, ...]] = []
        if device_ids:
            for chunk in _chunks(device_ids):
                marks = ", ".join("?" * len(chunk))
                rows.extend(
                    conn.execute(f"{query} AND k.device_id IN ({marks})", (user_id, *chunk))
                )
        else:
            rows.extend(conn.execute(query, (user_id,)))
        found[user_id] = {
            str(device_id): (bytes(key_json), None if name is None else str(name))
            for device_id, key_json, name in rows
        }
    return found


@registered_write
def _claim_keys(
    conn: sqlite3.Connection, *, wanted: list[tuple[str, str, str]]
) -> list[tuple[str, str, str, str, bytes]]:
    claimed: list[tuple[str, str, str, str, bytes]] = []
    for user_id, device_id, algorithm in wanted:
        exists = conn.execute(
            "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        ).fetchone()
        if exists is None:
            # A deleted device's keys are not handed out: nobody could
            # read what was encrypted for it.
            continue
        # The oldest key goes first (rowids grow with each insert): a client
        # may have thrown away the private halves of keys left unclaimed long.
        row = conn.execute(
            "DELETE FROM e2e_one_time_keys WHERE rowid = (SELECT rowid FROM e2e_one_time_keys"
            " WHERE user_id = ? AND device_id = ? AND algorithm = ? ORDER BY rowid LIMIT 1)"
            " RETURNING key_id, key_json",
            (user_id, device_id, algorithm),
        ).fetchone()
        if row is None:
            row = conn.execute(
                "UPDATE e2e_fallback_keys SET used = 1"
                " WHERE user_id = ? AND device_id = ? AND algorithm = ?"
                " RETURNING key_id, key_json",
                (user_id, device_id, algorithm),
            ).fetchone()
        if row is not None:
            claimed.append((user_id, device_id, algorithm, str(row[0]), bytes(row[1])))
    return claimed


@registered_write
def _set_cross_signing_keys(
    conn: sqlite3.Connection, *, user_id: str, keys: dict[str, bytes]
) -> int:
    for key_type, key_json in sorted(keys.items()):
        conn.execute(
            "INSERT OR REPLACE INTO e2e_cross_signing_keys (user_id, key_type, key_json)"
            " VALUES (?, ?, ?)",
            (user_id, key_type, key_json),
        )
    return _changed(conn, user_id)


def _cross_signing_keys(
    conn: sqlite3.Connection, *, user_ids: list[str]
) -> dict[str, dict[str, bytes]]:
    found: dict[str, dict[str, bytes]] = {}
    for chunk in _chunks(user_ids):
        marks = ", ".join("?" * len(chunk))
        for user_id, key_type, key_json in conn.execute(
            "SELECT user_id, key_type, key_json FROM e2e_cross_signing_keys"
            f" WHERE user_id IN ({marks})",
            tuple(chunk),
        ):
            found.setdefault(str(user_id), {})[str(key_type)] = bytes(key_json)
    return found


def _merged(key_json: bytes, signatures: bytes) -> bytes:
    key: dict[str, Any] = msgspec.json.decode(key_json)
    held = key.setdefault("signatures", {})
    for signer, by_key in msgspec.json.decode(signatures).items():
        held.setdefault(signer, {}).update(by_key)
    return msgspec.json.encode(key)


@registered_write
def _add_signatures(
    conn: sqlite3.Connection, *, signatures: list[tuple[str, str, bytes]]
) -> tuple[list[tuple[str, str]], int | None]:
    missing: list[tuple[str, str]] = []
    changed: set[str] = set()
    for user_id, name, signed in signatures:
        row = conn.execute(
            "SELECT key_json FROM e2e_device_keys WHERE user_id = ? AND device_id = ?",
            (user_id, name),
        ).fetchone()
        if row is not None:
            conn.execute(
                "UPDATE e2e_device_keys SET key_json = ? WHERE user_id = ? AND device_id = ?",
                (_merged(bytes(row[0]), signed), user_id, name),
            )
            changed.add(user_id)
            continue
        found = False
        for key_type, key_json in conn.execute(
            "SELECT key_type, key_json FROM e2e_cross_signing_keys WHERE user_id = ?",
            (user_id,),
        ).fetchall():
            key = msgspec.json.decode(bytes(key_json))
            if f"ed25519:{name}" in key.get("keys", {}):
                conn.execute(
                    "UPDATE e2e_cross_signing_keys SET key_json = ?"
                    " WHERE user_id = ? AND key_type = ?",
                    (_merged(bytes(key_json), signed), user_id, key_type),
                )
                changed.add(user_id)
                found = True
        if not found:
            missing.append((user_id, name))
    position = None
    for user_id in sorted(changed):
        position = _changed(conn, user_id)
    return missing, position


@registered_write
def _send_to_device(
    conn: sqlite3.Connection,
    *,
    sender: str,
    sender_device: str | None,
    txn_id: str | None,
    messages: list[tuple[str, str, bytes]],
    now_ms: int,
    remote: list[tuple[str, bytes]] | None = None,
    txn_token: bytes = b"",
) -> tuple[bool, int | None, list[tuple[str, str]]]:
    if txn_id is not None:
        seen = conn.execute(
            "INSERT OR IGNORE INTO to_device_transactions"
            " (user_id, device_id, token_hash, txn_id, created_ts) VALUES (?, ?, ?, ?, ?)",
            (sender, sender_device or "", txn_token, txn_id, now_ms),
        )
        if seen.rowcount == 0:
            return False, None, []
    conn.executemany("INSERT INTO to_device_outbox (destination, edu) VALUES (?, ?)", remote or ())
    position = None
    reached: list[tuple[str, str]] = []
    for user_id, device_id, message in messages:
        if device_id == "*":
            targets = [
                str(found)
                for (found,) in conn.execute(
                    "SELECT device_id FROM devices WHERE user_id = ? ORDER BY device_id",
                    (user_id,),
                )
            ]
        else:
            exists = conn.execute(
                "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ).fetchone()
            targets = [] if exists is None else [device_id]
        for target in targets:
            cursor = conn.execute(
                "INSERT INTO to_device_inbox (user_id, device_id, message) VALUES (?, ?, ?)",
                (user_id, target, message),
            )
            position = cursor.lastrowid
            reached.append((user_id, target))
    return True, position, reached


def _outbox_destinations(conn: sqlite3.Connection, *, after: str, limit: int) -> list[str]:
    return [
        str(destination)
        for (destination,) in conn.execute(
            "SELECT DISTINCT destination FROM to_device_outbox WHERE destination > ?"
            " ORDER BY destination LIMIT ?",
            (after, limit),
        )
    ]


def _outbox_edus(
    conn: sqlite3.Connection, *, destination: str, after: int, limit: int
) -> list[tuple[int, bytes]]:
    return [
        (int(stream_id), bytes(edu))
        for stream_id, edu in conn.execute(
            "SELECT stream_id, edu FROM to_device_outbox WHERE destination = ? AND stream_id > ?"
            " ORDER BY stream_id LIMIT ?",
            (destination, after, limit),
        )
    ]


@registered_write
def _delete_outbox_edus(conn: sqlite3.Connection, *, destination: str, upto: int) -> int:
    return conn.execute(
        "DELETE FROM to_device_outbox WHERE destination = ? AND stream_id <= ?",
        (destination, upto),
    ).rowcount


@registered_write
def _forget_to_device_transactions(conn: sqlite3.Connection, *, before_ms: int) -> int:
    return conn.execute(
        "DELETE FROM to_device_transactions WHERE created_ts < ?", (before_ms,)
    ).rowcount


def _to_device_messages(
    conn: sqlite3.Connection, *, user_id: str, device_id: str, after: int, upto: int, limit: int
) -> list[tuple[int, bytes]]:
    return [
        (int(stream_id), bytes(message))
        for stream_id, message in conn.execute(
            "SELECT stream_id, message FROM to_device_inbox"
            " WHERE user_id = ? AND device_id = ? AND stream_id > ? AND stream_id <= ?"
            " ORDER BY stream_id LIMIT ?",
            (user_id, device_id, after, upto, limit),
        )
    ]


def _has_messages(conn: sqlite3.Connection, *, user_id: str, device_id: str, upto: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM to_device_inbox WHERE user_id = ? AND device_id = ? AND stream_id <= ?"
        " LIMIT 1",
        (user_id, device_id, upto),
    ).fetchone()
    return row is not None


@registered_write
def _acknowledge_to_device(
    conn: sqlite3.Connection, *, user_id: str, device_id: str, upto: int
) -> int:
    return conn.execute(
        "DELETE FROM to_device_inbox WHERE user_id = ? AND device_id = ? AND stream_id <= ?",
        (user_id, device_id, upto),
    ).rowcount


def _sync_positions(conn: sqlite3.Connection) -> tuple[int, int]:
    return _sequence(conn, "to_device_inbox"), _sequence(conn, "device_list_changes")


def _sync_read(
    conn: sqlite3.Connection,
    *,
    user_id: str,
    device_id: str,
    to_device: tuple[int, int],
    limit: int,
    device_lists: tuple[int, int] | None,
    room_ids: list[str],
    events: tuple[int, int] | None,
) -> E2eSyncRead:
    after, upto = to_device
    messages = (
        _to_device_messages(
            conn, user_id=user_id, device_id=device_id, after=after, upto=upto, limit=limit
        )
        if upto > after
        else []
    )
    changed: set[str] = set()
    if device_lists is not None and device_lists[1] > device_lists[0]:
        changed = _device_list_changes(conn, after=device_lists[0], upto=device_lists[1])
    memberships: list[tuple[str, str, str | None]] = []
    if events is not None and events[1] > events[0] and room_ids:
        memberships = _membership_changes(conn, room_ids=room_ids, after=events[0], upto=events[1])
    counts, unused = _key_counts(conn, user_id=user_id, device_id=device_id)
    return E2eSyncRead(
        messages=messages,
        acknowledged_left=after > 0
        and _has_messages(conn, user_id=user_id, device_id=device_id, upto=after),
        changed_users=changed,
        memberships=memberships,
        key_counts=counts,
        unused_fallbacks=unused,
    )


def _previous_device_list_change(
    conn: sqlite3.Connection, *, user_id: str, before: int
) -> int | None:
    (found,) = conn.execute(
        "SELECT MAX(stream_id) FROM device_list_changes WHERE user_id = ? AND stream_id < ?",
        (user_id, before),
    ).fetchone()
    return None if found is None else int(found)


def _device_list_changes(conn: sqlite3.Connection, *, after: int, upto: int) -> set[str]:
    return {
        str(user_id)
        for (user_id,) in conn.execute(
            "SELECT DISTINCT user_id FROM device_list_changes"
            " WHERE stream_id > ? AND stream_id <= ?",
            (after, upto),
        )
    }


def _rooms_completed(conn: sqlite3.Connection, *, after: int, upto: int) -> set[str]:
    return {
        str(room_id)
        for (room_id,) in conn.execute(
            "SELECT room_id FROM un_partial_stated_rooms WHERE rowid > ? AND rowid <= ?",
            (after, upto),
        )
    }


def _membership_changes(
    conn: sqlite3.Connection, *, room_ids: list[str], after: int, upto: int
) -> list[tuple[str, str, str | None]]:
    found: list[tuple[int, str, str, str | None]] = []
    for chunk in _chunks(room_ids):
        marks = ", ".join("?" * len(chunk))
        for ordering, room_id, user_id, membership in conn.execute(
            f"SELECT e.stream_ordering, e.room_id, e.state_key, {MEMBERSHIP} FROM events AS e"
            f" WHERE e.room_id IN ({marks}) AND e.type = 'm.room.member'"
            " AND e.stream_ordering > ? AND e.stream_ordering <= ?"
            " AND e.outlier = 0 AND e.rejected_reason IS NULL AND e.soft_failed = 0",
            (*chunk, after, upto),
        ):
            found.append(
                (
                    int(ordering),
                    str(room_id),
                    str(user_id),
                    membership if isinstance(membership, str) else None,
                )
            )
    found.sort()
    return [(room_id, user_id, membership) for _, room_id, user_id, membership in found]


def joined_members_now(conn: sqlite3.Connection, *, room_ids: list[str]) -> set[str]:
    """The users joined to any of ``room_ids`` in their current state."""
    found: set[str] = set()
    for chunk in _chunks(room_ids):
        marks = ", ".join("?" * len(chunk))
        found.update(
            str(user_id)
            for (user_id,) in conn.execute(
                "SELECT DISTINCT cs.state_key FROM current_state AS cs"
                " JOIN events AS e ON e.event_id = cs.event_id"
                f" WHERE cs.type = 'm.room.member' AND cs.room_id IN ({marks})"
                f" AND {MEMBERSHIP} = 'join'",
                tuple(chunk),
            )
        )
    return found
