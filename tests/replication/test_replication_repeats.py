"""Every write run twice: what a worker's write repeated after a restart of
the main process does (the map of answered transactions is gone then).

Each write is run once, the database read whole, run again, read again.
Most leave the database exactly as the first run did and answer the same;
some answer differently the second time though the database is the same (a
delete finds nothing left to delete); two leave a row more that nothing
refers to (a second state group of the same state, a second filter).
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ranvier.core import compute_event_context, event_to_persist
from ranvier.protocol.signing import generate_signing_key
from ranvier.replication import operations
from ranvier.storage import (
    DestinationRetry,
    EventToPersist,
    ReceivedTransaction,
    ServerKey,
    Storage,
    WriteOperation,
    accounts,
    admin_writes,
    aliases,
    client_transactions,
    profile_fields,
    sso,
    state_groups,
    sync_reads,
    uia,
    writes,
)
from ranvier.storage.accounts import (
    NewAccount,
    NewDevice,
    NewPuppetToken,
    RegistrationClaim,
    SessionRegisteredError,
    UserInUseError,
)
from ranvier.storage.reports import NewReport
from ranvier.testing import RoomBuilder, ingest_all

ALICE = "@alice:ours.test"
BOB = "@bob:remote.test"
_TOKEN = b"\x07" * 32
_ACCOUNT = NewAccount(user_id=ALICE, password_hash="$argon2id$salted", admin=False, created_ts=5)
_DEVICE = NewDevice(
    user_id=ALICE, device_id="D", display_name="phone", token_hash=_TOKEN, created_ts=5
)
_OTHER_DEVICE = NewDevice(
    user_id=ALICE, device_id="E", display_name=None, token_hash=b"\x08" * 32, created_ts=6
)

Prepare = Callable[[Storage, RoomBuilder], Awaitable[WriteOperation[Any]]]

#: How each write fares run twice: "same" (same database, same answer),
#: "same database" (the answer differs), "extra row" (a row more that
#: nothing refers to, in the tables named). A name with a bracketed suffix
#: is the write so named, run with other arguments.
OUTCOMES: dict[str, str] = {
    "writes.PersistEvents": "same",
    "writes.PersistRun": "same database",
    "writes.store_room": "same",
    "writes.set_current_state": "same",
    "writes.store_partial_join": "same",
    "writes.update_state_for_partial_event": "same",
    "writes.clear_partial_state": "same database",
    "writes.store_resync_progress": "same",
    "writes.record_transaction": "same",
    "writes.store_server_keys": "same",
    "writes.store_destination_retry": "same",
    "writes.store_destination_rooms": "same",
    "writes.mark_destination_rooms_sent": "same",
    "state_groups.store_state_group": "extra row: state_groups state_group_rows",
    "accounts.create_account": "same",
    "accounts.add_device": "same",
    "accounts.create_device": "same database",
    "accounts.delete_device_of_token": "same database",
    # A puppet token logged out: the token alone goes.
    "accounts.delete_device_of_token[puppet]": "same database",
    # The second run finds its own token there (and nothing expired left).
    "accounts.add_puppet_token": "same",
    "accounts.delete_devices": "same database",
    "accounts.delete_user_devices": "same database",
    "accounts.set_password_hash": "same",
    "accounts.change_password": "same database",
    # The second run finds no device left to remove, and says so.
    "accounts.deactivate_account": "same database",
    # Deactivating with erase marks the account erased in the same write.
    "accounts.deactivate_account[erase]": "same database",
    # With everything deactivation removes there to remove.
    "accounts.deactivate_account[with data]": "same database",
    "accounts.add_openid_token": "same",
    # The second run finds its own password hash set: no refusal, no change.
    "accounts.upgrade_guest": "same",
    "aliases.insert_alias": "same",
    "aliases.delete_alias": "same database",
    "client_transactions.insert_client_transaction": "same",
    # A device-less token's: keyed by the token, found again by it.
    "client_transactions.insert_client_transaction[token]": "same",
    "client_transactions.delete_client_transactions_before": "same database",
    "client_transactions.persist_events_recording": "same",
    "sync_reads.store_filter": "extra row: user_filters",
    "profile_fields.set_profile_field": "same",
    "profile_fields.delete_profile_field": "same",
    "profile_fields.erase_profile": "same",
    "sso.create_sso_account": "same",
    "sso.link_sso_user": "same",
    "sso.create_sso_session": "same",
    # The second run finds the session gone and answers None: a repeated
    # take never hands the session out again.
    "sso.take_sso_session": "same database",
    "uia.open_session": "same",
    "uia.complete_stage": "same",
    "uia.finish_session": "same",
    # The admin API's writes set a flag to a value, or delete by key.
    "admin_writes.set_admin": "same",
    # Taking the flag away deletes the puppet tokens given to the admin.
    "admin_writes.set_admin[revoke]": "same",
    "admin_writes.set_locked": "same",
    "admin_writes.set_suspended": "same",
    "admin_writes.set_shadow_banned": "same",
    "admin_writes.reactivate_account": "same",
    "admin_writes.block_room": "same",
    "admin_writes.unblock_room": "same",
    "admin_writes.delete_event_report": "same database",
}


async def _partial_join(storage: Storage, room: RoomBuilder) -> None:
    await storage.store_partial_join(
        room.room_id, room.version, room.last, joined_via="remote.test", servers_in_room=[]
    )


async def _with_account(storage: Storage) -> None:
    await storage.accounts.create_account(_ACCOUNT, _DEVICE)


def _call(function: Callable[..., Any], **arguments: Any) -> WriteOperation[Any]:
    return functools.partial(function, **arguments)


def _received(transaction_id: str, *, received_ts: int) -> ReceivedTransaction:
    """A transaction of the remote's, answered."""
    return ReceivedTransaction(
        origin="remote.test",
        transaction_id=transaction_id,
        response_code=200,
        response_json=b'{"pdus": {}}',
        received_ts=received_ts,
    )


async def _message(storage: Storage, room: RoomBuilder, body: str) -> EventToPersist:
    """A new message of Bob's, as it is written."""
    message = room.message(BOB, body)
    return event_to_persist(message, await compute_event_context(message, storage, storage))


async def _persist(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    return writes.PersistEvents((await _message(storage, room, "twice"),))


async def _persist_run(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    message = await _message(storage, room, "twice, with its transaction's answer")
    return writes.PersistRun(room.room_id, (message,), answer=_received("t2", received_ts=4))


async def _persist_recording(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    message = await _message(storage, room, "twice, with the transaction that sent it")
    return _call(
        client_transactions._persist_events_recording,
        events=(message,),
        transactions=((BOB, "D", b"", "t", room.room_id, message.event_id, 5),),
    )


async def _set_current_state(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    groups = await storage.get_event_state_groups(room.last)
    assert groups is not None
    return _call(writes.set_current_state, room_id=room.room_id, state_group=groups.before)


async def _store_partial_join(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    return _call(
        writes.store_partial_join,
        room_id=room.room_id,
        room_version=room.version,
        join_event_id=room.last,
        joined_via="remote.test",
        servers_in_room=frozenset({"remote.test", "third.test"}),
    )


async def _update_partial_event(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    await _partial_join(storage, room)
    message = room.message(BOB, "with partial state")
    context = await compute_event_context(
        message,
        storage,
        storage,
        state_ids_before=room.state_before(message.event_id),
        partial_state=True,
    )
    await storage.persist_events([event_to_persist(message, context)])
    groups = await storage.get_event_state_groups(message.event_id)
    assert groups is not None
    return _call(
        writes.update_state_for_partial_event,
        event_id=message.event_id,
        state_group_before=groups.before,
        state_group_after=None,
        rejected_reason=None,
    )


async def _clear_partial_state(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    await _partial_join(storage, room)
    return _call(writes.clear_partial_state, room_id=room.room_id)


async def _store_resync_progress(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    await _partial_join(storage, room)
    return _call(
        writes.store_resync_progress,
        room_id=room.room_id,
        phase="state",
        server="remote.test",
        events_resynced=1,
        events_total=2,
        attempts=1,
        last_error=None,
        updated_ts=7,
    )


async def _store_state_group(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    groups = await storage.get_event_state_groups(room.last)
    assert groups is not None
    return _call(
        state_groups.store_state_group,
        room_id=room.room_id,
        prev_group=groups.after,
        delta={("m.room.topic", ""): room.last},
    )


def _plain(operation: WriteOperation[Any]) -> Prepare:
    async def prepare(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
        return operation

    return prepare


def _after_account(operation: WriteOperation[Any]) -> Prepare:
    async def prepare(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
        await _with_account(storage)
        return operation

    return prepare


_ROOT = "@root:ours.test"
_PUPPET = NewPuppetToken(
    token_hash=b"\x0b" * 32, user_id=ALICE, admin_id=_ROOT, created_ts=7, expires_ts=None
)


async def _with_root(storage: Storage) -> None:
    """Alice, and an admin who has a puppet token expired by now and a
    lasting one acting as her."""
    await _with_account(storage)
    await storage.accounts.create_account(
        NewAccount(user_id=_ROOT, password_hash="$argon2id$root", admin=True, created_ts=5)
    )
    expired = dataclasses.replace(_PUPPET, token_hash=b"\x0c" * 32, created_ts=5, expires_ts=6)
    await storage.accounts.add_puppet_token(expired)


async def _add_puppet_token(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    await _with_root(storage)
    return _call(accounts._add_puppet_token, token=_PUPPET)


async def _delete_puppet_token(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    await _with_root(storage)
    await storage.accounts.add_puppet_token(_PUPPET)
    return _call(accounts._delete_device_of_token, token_hash=_PUPPET.token_hash)


async def _revoke_admin(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    await _with_root(storage)
    await storage.accounts.add_puppet_token(_PUPPET)
    return _call(admin_writes.set_admin, user_id=_ROOT, admin=False)


async def _upgrade_guest(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    guest = dataclasses.replace(_ACCOUNT, password_hash=None, guest=True)
    await storage.accounts.create_account(guest, _DEVICE)
    return _call(
        accounts._upgrade_guest,
        user_id=ALICE,
        password_hash="$argon2id$chosen",
        device=_OTHER_DEVICE,
    )


async def _delete_alias(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    assert await storage.aliases.create_alias("#a:ours.test", room.room_id, ALICE, 5)
    return _call(aliases._delete_alias, alias="#a:ours.test")


async def _delete_transactions(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    await storage.client_transactions.add_client_transaction(
        ALICE, "D", b"", "t", room_id=room.room_id, event_id=room.last, created_ts=1
    )
    return _call(client_transactions._delete_client_transactions_before, created_ts=5)


async def _with_profile(storage: Storage) -> None:
    await _with_account(storage)
    await storage.client_data.set_profile(ALICE, "Alice", None)
    assert await storage.client_data.set_profile_field(ALICE, "m.tz", '"UTC"', max_bytes=1000)


def _after_profile(operation: WriteOperation[Any]) -> Prepare:
    async def prepare(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
        await _with_profile(storage)
        return operation

    return prepare


_SSO_SESSION = sso.SsoSession(
    idp_id="idp", nonce="n", code_verifier="v", redirect_url="https://c.test/", expires_ts=900
)


async def _take_sso_session(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    assert await storage.sso.create_sso_session(b"state", _SSO_SESSION, now_ms=5, max_sessions=10)
    return _call(sso._take_sso_session, state_hash=b"state", now_ms=5)


_UIA_SESSION = uia.NewUiaSession(
    session_id="uia", operation="delete_devices", user_id=ALICE, token_hash=_TOKEN, expires_ts=900
)


def _after_uia_session(operation: WriteOperation[Any]) -> Prepare:
    async def prepare(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
        await storage.uia.open_uia_session(_UIA_SESSION, now_ms=5)
        return operation

    return prepare


async def _reactivate(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    await _with_account(storage)
    # Erased too: reactivating takes the mark back.
    await storage.accounts.deactivate_account(ALICE, erase=True)
    return _call(admin_writes.reactivate_account, user_id=ALICE, password_hash="$argon2id$back")


def _fill_account(conn: sqlite3.Connection, room_id: str, event_id: str) -> None:
    """A row of Alice's in every table deactivation removes from: devices
    with keys and messages (one gone already, its keys left), a dehydrated
    device, account data, a key backup, a pusher, a filter, a sliding sync
    connection, tokens, an address and receipts."""
    run = conn.execute
    run("INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, 'E', 5)", (ALICE,))
    run("INSERT INTO devices (user_id, device_id, created_ts) VALUES (?, 'DRY', 5)", (ALICE,))
    for device_id in ("D", "DRY", "GONE"):
        run("INSERT INTO e2e_device_keys VALUES (?, ?, x'7b7d')", (ALICE, device_id))
    run("INSERT INTO e2e_one_time_keys VALUES (?, 'E', 'curve', 'k', x'7b7d')", (ALICE,))
    run("INSERT INTO e2e_fallback_keys VALUES (?, 'DRY', 'curve', 'f', x'7b7d', 0)", (ALICE,))
    run(
        "INSERT INTO to_device_inbox (user_id, device_id, message) VALUES (?, 'D', x'7b7d')",
        (ALICE,),
    )
    run(
        "INSERT INTO to_device_transactions (user_id, device_id, txn_id, created_ts)"
        " VALUES (?, 'D', 't', 5)",
        (ALICE,),
    )
    run("INSERT INTO dehydrated_devices VALUES (?, 'DRY', x'7b7d', 'up', NULL, NULL, 1)", (ALICE,))
    for room, data_type in (("", "m.push_rules"), ("", "m.ignored_user_list"), (room_id, "m.tag")):
        run(
            "INSERT INTO account_data (user_id, room_id, type, content) VALUES (?, ?, ?, x'7b7d')",
            (ALICE, room, data_type),
        )
    for version, deleted in ((1, 1), (2, 0)):
        run(
            "INSERT INTO room_key_backup_versions VALUES (?, ?, 'alg', x'7b2261223a317d', 1, ?, ?)",
            (ALICE, version, deleted, f"c{version}"),
        )
    run(
        "INSERT INTO room_key_backup_keys VALUES (?, 2, ?, 's', 0, 0, 1, x'7b7d')", (ALICE, room_id)
    )
    run(
        "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name,"
        " device_display_name, lang, data_json, pushkey_ts) VALUES"
        " (?, 'app', 'a@x.test', 'email', 'App', 'Mail', 'en', x'7b7d', 5)",
        (ALICE,),
    )
    run("INSERT INTO user_filters VALUES (?, 0, x'7b7d')", (ALICE,))
    run("INSERT INTO sliding_sync_connections VALUES (1, ?, 'D', 'c')", (ALICE,))
    run("INSERT INTO sliding_sync_positions VALUES (1, 1, 'n', 't', 5)")
    run("INSERT INTO sliding_sync_rooms VALUES (1, ?, 1, 3, '{}')", (room_id,))
    run(
        "INSERT INTO client_transactions (user_id, device_id, txn_id, room_id, event_id,"
        " created_ts) VALUES (?, 'D', 't', ?, ?, 5)",
        (ALICE, room_id, event_id),
    )
    run("INSERT INTO login_tokens VALUES (x'01', ?, 900)", (ALICE,))
    run("INSERT INTO openid_tokens VALUES (x'02', ?, 900)", (ALICE,))
    run("INSERT INTO user_threepids VALUES ('email', 'a@x.test', ?, 5, 5)", (ALICE,))
    for receipt_type in ("m.read", "m.read.private"):
        run(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts)"
            " VALUES (?, ?, ?, '', ?, 5)",
            (room_id, receipt_type, ALICE, event_id),
        )


async def _deactivate_with_data(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    await _with_account(storage)
    await storage.actor.submit(
        functools.partial(_fill_account, room_id=room.room_id, event_id=room.last)
    )
    return _call(accounts._deactivate_account, user_id=ALICE)


async def _unblock_room(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    await storage.admin.block_room(room.room_id, ALICE, 5)
    return _call(admin_writes.unblock_room, room_id=room.room_id)


async def _delete_event_report(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
    report_id = await storage.reports.add_report(
        NewReport("request", room.room_id, room.last, ALICE, "spam", None, 5)
    )
    return _call(admin_writes.delete_event_report, report_id=report_id)


def _destination_rooms(function: Callable[..., Any]) -> Prepare:
    async def prepare(storage: Storage, room: RoomBuilder) -> WriteOperation[Any]:
        return _call(function, destination="remote.test", positions={room.room_id: 3})

    return prepare


PREPARE: dict[str, Prepare] = {
    "writes.PersistEvents": _persist,
    "writes.PersistRun": _persist_run,
    "writes.store_room": _plain(_call(writes.store_room, room_id="!new:x", room_version="10")),
    "writes.set_current_state": _set_current_state,
    "writes.store_partial_join": _store_partial_join,
    "writes.update_state_for_partial_event": _update_partial_event,
    "writes.clear_partial_state": _clear_partial_state,
    "writes.store_resync_progress": _store_resync_progress,
    "writes.record_transaction": _plain(
        _call(
            writes.record_transaction,
            transaction=_received("t1", received_ts=3),
        )
    ),
    "writes.store_server_keys": _plain(
        _call(
            writes.store_server_keys,
            keys=(
                ServerKey(
                    server_name="remote.test",
                    key_id="ed25519:k",
                    verify_key=bytes(32),
                    valid_until_ts=10,
                    from_server="remote.test",
                    fetched_ts=2,
                    key_json=b"{}",
                ),
            ),
        )
    ),
    "writes.store_destination_retry": _plain(
        _call(
            writes.store_destination_retry,
            destination="remote.test",
            retry=DestinationRetry(
                destination="remote.test", failure_ts=1, retry_last_ts=2, retry_interval_ms=3
            ),
        )
    ),
    "writes.store_destination_rooms": _destination_rooms(writes.store_destination_rooms),
    "writes.mark_destination_rooms_sent": _destination_rooms(writes.mark_destination_rooms_sent),
    "state_groups.store_state_group": _store_state_group,
    "accounts.create_account": _plain(
        _call(accounts._create_account, account=_ACCOUNT, device=_DEVICE)
    ),
    "accounts.add_device": _after_account(_call(accounts._add_device, device=_OTHER_DEVICE)),
    "accounts.create_device": _after_account(
        _call(
            accounts._create_device,
            user_id=ALICE,
            device_id="NEW",
            display_name="New",
            created_ts=1,
        )
    ),
    "accounts.delete_device_of_token": _after_account(
        _call(accounts._delete_device_of_token, token_hash=_TOKEN)
    ),
    "accounts.delete_device_of_token[puppet]": _delete_puppet_token,
    "accounts.add_puppet_token": _add_puppet_token,
    "accounts.delete_devices": _after_account(_call(accounts._delete_devices, user_id=ALICE)),
    "accounts.delete_user_devices": _after_account(
        _call(accounts._delete_user_devices, user_id=ALICE, device_ids=("D",))
    ),
    "accounts.set_password_hash": _after_account(
        _call(accounts._set_password_hash, user_id=ALICE, password_hash="$argon2id$new")
    ),
    "accounts.change_password": _after_account(
        _call(
            accounts._change_password,
            user_id=ALICE,
            password_hash="$argon2id$new",
            keep_only_device="E",
        )
    ),
    "accounts.deactivate_account": _after_account(
        _call(accounts._deactivate_account, user_id=ALICE)
    ),
    "accounts.deactivate_account[erase]": _after_account(
        _call(accounts._deactivate_account, user_id=ALICE, erase=True)
    ),
    "accounts.deactivate_account[with data]": _deactivate_with_data,
    "accounts.add_openid_token": _after_account(
        _call(accounts._add_openid_token, token_hash=_TOKEN, user_id=ALICE, expires_ts=5)
    ),
    "accounts.upgrade_guest": _upgrade_guest,
    "aliases.insert_alias": _plain(
        _call(
            aliases._insert_alias,
            alias="#a:x",
            room_id="!r:x",
            creator=ALICE,
            created_ts=5,
            write_id="0123abcd",
        )
    ),
    "aliases.delete_alias": _delete_alias,
    "client_transactions.insert_client_transaction": _plain(
        _call(
            client_transactions._insert_client_transaction,
            user_id=ALICE,
            device_id="D",
            token_hash=b"",
            txn_id="t",
            room_id="!r:x",
            event_id="$e",
            created_ts=5,
        )
    ),
    "client_transactions.insert_client_transaction[token]": _plain(
        _call(
            client_transactions._insert_client_transaction,
            user_id=ALICE,
            device_id="",
            token_hash=_TOKEN,
            txn_id="t",
            room_id="!r:x",
            event_id="$e",
            created_ts=5,
        )
    ),
    "client_transactions.delete_client_transactions_before": _delete_transactions,
    "client_transactions.persist_events_recording": _persist_recording,
    "sync_reads.store_filter": _plain(
        _call(sync_reads.store_filter, user_id=ALICE, filter_json=b"{}")
    ),
    "profile_fields.set_profile_field": _after_account(
        _call(
            profile_fields.set_profile_field,
            user_id=ALICE,
            key="org.example.job",
            value_json='{"title": "smith"}',
            max_bytes=1000,
        )
    ),
    "profile_fields.delete_profile_field": _after_profile(
        _call(profile_fields.delete_profile_field, user_id=ALICE, key="m.tz")
    ),
    "profile_fields.erase_profile": _after_profile(
        _call(profile_fields.erase_profile, user_id=ALICE)
    ),
    "sso.create_sso_account": _plain(
        _call(sso._create_sso_account, account=_ACCOUNT, idp_id="idp", subject="s")
    ),
    "sso.link_sso_user": _after_account(
        _call(sso._link_sso_user, idp_id="idp", subject="s", user_id=ALICE, now_ts=5)
    ),
    "sso.create_sso_session": _plain(
        _call(
            sso._create_sso_session,
            state_hash=b"state",
            session=_SSO_SESSION,
            now_ms=5,
            max_sessions=10,
        )
    ),
    "sso.take_sso_session": _take_sso_session,
    "uia.open_session": _plain(_call(uia._open_session, session=_UIA_SESSION, now_ms=5)),
    "uia.complete_stage": _after_uia_session(
        _call(uia._complete_stage, session_id="uia", user_id=ALICE, stage="m.login.sso", now_ms=5)
    ),
    "uia.finish_session": _after_uia_session(
        _call(
            uia._finish_session,
            session_id="uia",
            user_id=ALICE,
            request_hash=b"\x01" * 32,
            result="{}",
        )
    ),
    "admin_writes.set_admin": _after_account(
        _call(admin_writes.set_admin, user_id=ALICE, admin=True)
    ),
    "admin_writes.set_admin[revoke]": _revoke_admin,
    "admin_writes.set_locked": _after_account(
        _call(admin_writes.set_locked, user_id=ALICE, locked=True)
    ),
    "admin_writes.set_suspended": _after_account(
        _call(admin_writes.set_suspended, user_id=ALICE, suspended=True)
    ),
    "admin_writes.set_shadow_banned": _after_account(
        _call(admin_writes.set_shadow_banned, user_id=ALICE, shadow_banned=True)
    ),
    "admin_writes.reactivate_account": _reactivate,
    "admin_writes.block_room": _plain(
        _call(admin_writes.block_room, room_id="!blocked:x", user_id=ALICE, blocked_ts=5)
    ),
    "admin_writes.unblock_room": _unblock_room,
    "admin_writes.delete_event_report": _delete_event_report,
}

_KNOWN_MODULES = (
    "writes.",
    "state_groups.",
    "accounts.",
    "aliases.",
    "client_transactions.",
    "profile_fields.",
    "sso.",
    "uia.",
    "admin_writes.",
)


def test_every_write_of_these_modules_is_run_twice_here() -> None:
    names = {
        name
        for name in operations.operation_names()
        if name.startswith((*_KNOWN_MODULES, "sync_reads."))
    }
    assert names == {_write_name(name) for name in OUTCOMES}
    assert set(OUTCOMES) == set(PREPARE)


def _write_name(name: str) -> str:
    """The registered write a name of :data:`OUTCOMES` runs."""
    return name.partition("[")[0]


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            table: sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for table in tables
        }
    finally:
        conn.close()


@pytest.fixture
async def storage(tmp_path: Path, nursery: trio.Nursery) -> Storage:
    store = Storage(tmp_path / "db.sqlite", synchronous="OFF")
    await nursery.start(store.run)
    return store


@pytest.mark.parametrize("name", sorted(OUTCOMES))
async def test_a_write_run_twice(name: str, storage: Storage) -> None:
    keys = {server: generate_signing_key("k1") for server in ("ours.test", "remote.test")}
    room = RoomBuilder(creator=ALICE, keys=keys)
    room.public_room(BOB)
    await ingest_all(storage, list(room.events.values()))
    operation = await PREPARE[name](storage, room)
    assert operations.operation_name(operation) == _write_name(name)
    before = _dump(Path(storage.path))
    first = await storage.actor.submit(operation)
    once = _dump(Path(storage.path))
    assert once != before  # the write wrote something
    second = await storage.actor.submit(operation)
    twice = _dump(Path(storage.path))
    outcome = OUTCOMES[name]
    if outcome == "same":
        assert (twice, second) == (once, first)
    elif outcome == "same database":
        assert twice == once
        assert second != first
    else:
        tables = outcome.removeprefix("extra row: ").split()
        assert {key: rows for key, rows in twice.items() if key not in tables} == {
            key: rows for key, rows in once.items() if key not in tables
        }
        for table in tables:
            assert len(twice[table]) == len(once[table]) + 1
            assert set(once[table]) <= set(twice[table])


async def test_another_registration_of_a_name_is_still_refused(storage: Storage) -> None:
    await storage.accounts.create_account(_ACCOUNT, _DEVICE)
    other = NewAccount(user_id=ALICE, password_hash="$argon2id$other", admin=False, created_ts=5)
    with pytest.raises(UserInUseError):
        await storage.accounts.create_account(other)
    # Without a password, the new device's token tells a repeat apart.
    bare = NewAccount(user_id="@bare:x", password_hash=None, admin=False, created_ts=5)
    device = NewDevice(
        user_id="@bare:x", device_id="D", display_name=None, token_hash=b"\x09" * 32, created_ts=5
    )
    await storage.accounts.create_account(bare, device)
    await storage.accounts.create_account(bare, device)  # the repeat
    with pytest.raises(UserInUseError):
        await storage.accounts.create_account(
            bare, _fields_replaced(device, token_hash=b"\x0a" * 32)
        )
    # With neither, nothing tells: the name counts as taken.
    with pytest.raises(UserInUseError):
        await storage.accounts.create_account(bare)


_REGISTRATION = uia.NewUiaSession(
    session_id="reg", operation="register", user_id=None, token_hash=None, expires_ts=900
)


async def _claims_the_session_alike_twice(storage: Storage, operation: WriteOperation[Any]) -> None:
    """``operation``, run twice, leaves the database as once, with Alice
    holding registration session ``reg``."""
    await storage.actor.submit(operation)
    once = _dump(Path(storage.path))
    await storage.actor.submit(operation)
    assert _dump(Path(storage.path)) == once
    session = await storage.uia.uia_session("reg")
    assert session is not None
    assert (session.user_id, session.expires_ts) == (ALICE, 999)


@pytest.mark.parametrize("with_secret", [True, False])
async def test_a_registration_in_a_session_run_twice(storage: Storage, with_secret: bool) -> None:
    """The account with its claim on the session, run twice alike; even an
    account with neither password nor device, which nothing else would
    tell apart from another registration of the name."""
    await storage.uia.open_uia_session(_REGISTRATION, now_ms=5)
    claim = RegistrationClaim(session_id="reg", write_id="w1", expires_ts=999)
    account = dataclasses.replace(
        _ACCOUNT, password_hash=_ACCOUNT.password_hash if with_secret else None, session=claim
    )
    device = _DEVICE if with_secret else None
    operation = _call(accounts._create_account, account=account, device=device)
    await _claims_the_session_alike_twice(storage, operation)


async def test_a_second_registration_in_a_session_writes_nothing(storage: Storage) -> None:
    await storage.uia.open_uia_session(_REGISTRATION, now_ms=5)
    first = RegistrationClaim(session_id="reg", write_id="w1", expires_ts=999)
    await storage.accounts.create_account(dataclasses.replace(_ACCOUNT, session=first), _DEVICE)
    before = _dump(Path(storage.path))
    other = NewAccount(
        user_id="@other:ours.test",
        password_hash="$argon2id$other",
        admin=False,
        created_ts=6,
        session=RegistrationClaim(session_id="reg", write_id="w2", expires_ts=999),
    )
    device = _fields_replaced(_OTHER_DEVICE, user_id="@other:ours.test")
    with pytest.raises(SessionRegisteredError) as raised:
        await storage.accounts.create_account(other, device)
    assert raised.value.user_id == ALICE
    assert _dump(Path(storage.path)) == before


async def test_a_guest_upgrade_in_a_session_run_twice(storage: Storage) -> None:
    """The upgrade with its claim on the session, run twice alike; a second
    upgrade in the session writes nothing."""
    await storage.uia.open_uia_session(_REGISTRATION, now_ms=5)
    guest = dataclasses.replace(_ACCOUNT, password_hash=None, guest=True)
    await storage.accounts.create_account(guest, _DEVICE)
    claim = RegistrationClaim(session_id="reg", write_id="w1", expires_ts=999)
    operation = _call(
        accounts._upgrade_guest,
        user_id=ALICE,
        password_hash="$argon2id$chosen",
        device=_OTHER_DEVICE,
        session=claim,
    )
    await _claims_the_session_alike_twice(storage, operation)

    other = "@100000000002:ours.test"
    await storage.accounts.create_account(
        NewAccount(user_id=other, password_hash=None, admin=False, created_ts=6, guest=True)
    )
    before = _dump(Path(storage.path))
    with pytest.raises(SessionRegisteredError) as raised:
        await storage.accounts.upgrade_guest(
            other,
            "$argon2id$other",
            _fields_replaced(_OTHER_DEVICE, user_id=other, token_hash=b"\x09" * 32),
            RegistrationClaim(session_id="reg", write_id="w2", expires_ts=999),
        )
    assert raised.value.user_id == ALICE
    assert _dump(Path(storage.path)) == before


async def test_another_alias_or_partial_join_is_still_refused(storage: Storage) -> None:
    assert await storage.aliases.create_alias("#a:x", "!r:x", ALICE, 5)
    # The same user, room and millisecond is still a second request.
    assert not await storage.aliases.create_alias("#a:x", "!r:x", ALICE, 5)
    assert not await storage.aliases.create_alias("#a:x", "!r:x", ALICE, 6)
    assert not await storage.aliases.create_alias("#a:x", "!other:x", ALICE, 5)
    await storage.store_partial_join("!r:x", "10", "$join", "remote.test", [])
    with pytest.raises(Exception, match="already has partial state"):
        await storage.store_partial_join("!r:x", "10", "$another", "remote.test", [])


def _fields_replaced(device: NewDevice, **changes: Any) -> NewDevice:
    return NewDevice(**{**_fields(device), **changes})


def _fields(device: NewDevice) -> dict[str, Any]:
    return {
        "user_id": device.user_id,
        "device_id": device.device_id,
        "display_name": device.display_name,
        "token_hash": device.token_hash,
        "created_ts": device.created_ts,
    }
