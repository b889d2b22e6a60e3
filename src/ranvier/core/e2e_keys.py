"""End-to-end encryption keys: ``/keys/upload``, ``/keys/query``,
``/keys/claim``, ``/keys/changes``, cross-signing and signature uploads,
and the device-list parts of ``/sync``.

The server never reads an encrypted message; it keeps devices' public keys
and hands them to other devices, which decide whom to trust by the
signatures the keys carry. So what it checks is what a client cannot: that
a device's keys are uploaded by that device, signed with the device's own
ed25519 key, and that signatures are added only by their signer.

Invariants
----------

* **A device uploads its own keys.** ``device_keys`` must name the
  requester and its device, and carry a valid signature of the device's
  own ``ed25519:<device_id>`` key; otherwise nothing of the upload is
  stored.
* **Cross-signing keys belong to their user**: each names the user and
  its usage, and the self-signing and user-signing keys are signed by the
  master key. Replacing keys takes the user's password (user-interactive
  authentication, as deleting a device does); the first upload, or one
  that repeats the keys held, does not.
* **A signature upload adds only verified signatures of the uploader**, on
  an object that is exactly the key stored, signatures aside.
* **A user's private cross-signing key is theirs alone**: ``/keys/query``
  shows ``user_signing_keys`` only to the user themself.
* **Every change of a device's or user's keys moves the device-list
  stream** and wakes the long-polls of the user and of those sharing a
  room with them; other servers sharing a room hear of it by an
  ``m.device_list_update`` EDU.
* **Device display names stay here** unless the operator shares them
  (``[federation] allow_device_name_lookup_over_federation``): every
  answer and update for other servers is made by :meth:`E2eKeys.local_query`
  without a requester or by :meth:`E2eKeys.devices_for_servers`, the two
  places that decide.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import msgspec
import trio

from ranvier.core.devices import DeviceAccounts
from ranvier.core.notifier import StreamNotifier, StreamPosition
from ranvier.core.presence import JoinedRooms, SharedRooms
from ranvier.core.receipts import EduSink
from ranvier.core.remote_answers import answer_within
from ranvier.core.remote_device_lists import RemoteDeviceLists, cached_answer
from ranvier.errors import BadJsonError, InvalidSignatureError, MatrixError
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.signing import decode_verify_key_base64, verify_signed_json
from ranvier.storage.e2e_keys import E2eSyncRead
from ranvier.storage.partial_state_device_updates import RememberedUpdate

__all__ = [
    "TO_DEVICE_PAGE",
    "CheckedKeys",
    "E2eKeyStore",
    "E2eKeys",
    "E2eSync",
    "ForgettingDeletedDevices",
    "PartialStateUpdates",
    "RemoteKeys",
]

_log: Final = logging.getLogger(__name__)

_ED25519: Final = "ed25519"
_SIGNED_CURVE25519: Final = "signed_curve25519"
_CROSS_SIGNING: Final = {
    "master_key": "master",
    "self_signing_key": "self_signing",
    "user_signing_key": "user_signing",
}
#: The most to-device messages one sync hands a device.
TO_DEVICE_PAGE: Final = 100
#: How long a question to another server about its users' keys may take.
REMOTE_TIMEOUT_S: Final = 10.0
#: Updates remembered per partial-state room, the oldest forgotten first.
_MAX_SENT_ON_PARTIAL_STATE: Final = 1000


class E2eKeyStore(Protocol):
    """Key storage (:class:`ranvier.storage.e2e_keys.E2eKeyStorage`)."""

    async def upload_keys(
        self,
        *,
        user_id: str,
        device_id: str,
        device_keys: bytes | None,
        one_time_keys: Sequence[tuple[str, str, bytes]],
        fallback_keys: Sequence[tuple[str, str, bytes]],
    ) -> tuple[dict[str, int], int | None]: ...

    async def device_keys(
        self, wanted: Mapping[str, Collection[str]]
    ) -> dict[str, dict[str, tuple[bytes, str | None]]]: ...

    async def claim_keys(
        self, wanted: Sequence[tuple[str, str, str]]
    ) -> list[tuple[str, str, str, str, bytes]]: ...

    async def set_cross_signing_keys(self, user_id: str, keys: Mapping[str, bytes]) -> int: ...

    async def cross_signing_keys(
        self, user_ids: Collection[str]
    ) -> dict[str, dict[str, bytes]]: ...

    async def add_signatures(
        self, signatures: Sequence[tuple[str, str, bytes]]
    ) -> tuple[list[tuple[str, str]], int | None]: ...

    async def sync_positions(self) -> tuple[int, int]: ...

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
    ) -> E2eSyncRead: ...

    async def acknowledge_to_device(self, user_id: str, device_id: str, upto: int) -> int: ...

    async def mark_device_list_changed(self, user_id: str) -> int: ...

    async def forget_devices(self, user_id: str, device_ids: Collection[str]) -> int: ...

    async def forget_gone_devices(self, user_id: str) -> tuple[int | None, list[str]]: ...

    async def previous_device_list_change(self, user_id: str, before: int) -> int | None: ...

    async def device_list_changes(self, after: int, upto: int) -> set[str]: ...

    async def rooms_completed(self, after: int, upto: int) -> set[str]: ...

    async def membership_changes(
        self, room_ids: Collection[str], after: int, upto: int
    ) -> list[tuple[str, str, str | None]]: ...

    async def joined_members(self, room_ids: Collection[str]) -> set[str]: ...


@dataclass(frozen=True, slots=True)
class CheckedKeys:
    """A device's keys from an upload body, checked, encoded as stored."""

    #: The canonical JSON of ``device_keys``, None when not given.
    device_keys: bytes | None
    #: ``(algorithm, key ID, canonical JSON)`` of each key.
    one_time_keys: list[tuple[str, str, bytes]]
    fallback_keys: list[tuple[str, str, bytes]]


@dataclass(frozen=True, slots=True)
class E2eSync:
    """The end-to-end encryption parts of one ``/sync`` answer."""

    to_device: list[dict[str, Any]]
    #: The to-device position the messages reach: the next sync's start.
    to_device_reached: int
    changed: list[str]
    left: list[str]
    key_counts: dict[str, int]
    unused_fallbacks: list[str]


class RemoteKeys(Protocol):
    """Other servers' answers about their users' keys
    (:class:`ranvier.federation.e2e_keys.FederationKeyClient`).
    """

    async def query_keys(
        self, server: str, device_keys: Mapping[str, list[str]]
    ) -> dict[str, Any]: ...

    async def claim_keys(
        self, server: str, one_time_keys: Mapping[str, Mapping[str, str]]
    ) -> dict[str, Any]: ...


class Memberships(Protocol):
    """The rooms a user has a membership in
    (:class:`ranvier.storage.room_members.RoomMemberStorage`).
    """

    async def get_current_membership_event_ids(self, user_id: str) -> dict[str, str]: ...


class RoomServers(Protocol):
    """The servers joined to a room (:class:`ranvier.core.room_servers.RoomServers`)."""

    async def joined_servers(self, room_id: str) -> Collection[str]: ...

    async def partial_state_point(self, room_id: str) -> Collection[str] | None: ...

    async def servers_after(self, event_ids: Collection[str]) -> Collection[str]: ...


class PartialStateUpdates(Protocol):
    """Updates sent while a room's state was partial, with to whom and the
    room's forward extremities then, where the full state will say who
    else was in the room; kept in the database, so that whichever process
    completes the resync, now or after a restart, sends what was missed
    (:class:`ranvier.storage.partial_state_device_updates.PartialStateDeviceUpdateStorage`).
    """

    async def remember(
        self,
        rooms: Sequence[tuple[str, Collection[str], Collection[str]]],
        *,
        user_id: str,
        position: int,
        edus: Sequence[tuple[str, dict[str, Any]]],
        keep: int,
    ) -> list[str]: ...

    async def remembered(self, room_id: str) -> list[RememberedUpdate]: ...

    async def forget(self, room_id: str, upto: int) -> int: ...

    async def rooms_completed_with_updates(self) -> list[str]: ...


#: Re-authenticates a user for a sensitive request (user-interactive
#: authentication), raising :class:`ranvier.core.devices.AuthRequired`.
Reauthenticate = Callable[[str, object], Awaitable[None]]


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def _object(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadJsonError(f"'{name}' must be an object")
    return value


def _keys_by_id(keys: Mapping[str, Any], what: str) -> list[tuple[str, str, bytes]]:
    """``(algorithm, key ID, canonical JSON)`` of ``{"<algorithm>:<key ID>": key}``."""
    found = []
    for name, key in keys.items():
        algorithm, sep, key_id = name.partition(":")
        if not sep or not algorithm or not key_id:
            raise _invalid(f"{what} {name[:80]!r} is not named <algorithm>:<key ID>")
        if not isinstance(key, str | dict):
            raise BadJsonError(f"{what} {name[:80]!r} must be a string or an object")
        found.append((algorithm, key_id, encode_canonical_json(key)))
    return found


def _verify(signed: Mapping[str, Any], user_id: str, key_id: str, key_base64: object) -> None:
    """Check ``user_id``'s signature with the ed25519 key ``key_id``
    (``ed25519:<version>``) whose public part is ``key_base64``.
    """
    algorithm, _, version = key_id.partition(":")
    if algorithm != _ED25519 or not isinstance(key_base64, str):
        raise _invalid(f"{key_id[:80]!r} is not an ed25519 key")
    try:
        verify_key = decode_verify_key_base64(algorithm, version, key_base64)
        verify_signed_json(signed, user_id, verify_key)
    except (BadJsonError, InvalidSignatureError) as exc:
        raise MatrixError(
            f"signature of {user_id} with {key_id[:80]}: {exc}",
            errcode="M_INVALID_SIGNATURE",
            http_status=400,
        ) from None


def _only_key(key: Mapping[str, Any]) -> tuple[str, str]:
    """The one ``(key ID, public key)`` of a cross-signing key."""
    keys = key.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise _invalid("a cross-signing key must hold exactly one key")
    ((key_id, public),) = keys.items()
    if not isinstance(public, str) or key_id != f"{_ED25519}:{public}":
        raise _invalid("a cross-signing key must be named ed25519:<its public key>")
    return key_id, public


def _unsigned_form(key: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in key.items() if name not in ("signatures", "unsigned")}


_T = TypeVar("_T")


@dataclass(slots=True)
class _ServerPlan:
    """How one server's users' keys are found for a query."""

    #: The events stream position read before any list is fetched.
    position: int
    #: Users answered from kept lists, then fetched ones and the answer
    #: asked, in ``/user/keys/query``'s shape.
    answered: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Users whose lists are fetched, and those asked: device IDs each.
    fill: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    ask: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def _merge(into: dict[str, Any], found: Mapping[str, Any]) -> None:
    """Add one answer's users to another, field by field."""
    for field_name, part in found.items():
        if isinstance(part, dict):
            into.setdefault(field_name, {}).update(part)


def _own_devices(user_id: str, devices: object) -> dict[str, Any]:
    """Of another server's answer for ``user_id``, the device keys that say
    they are that user's and that device's: a server answers for its own
    users only, and a client is not to be handed another's keys under a
    device's name.
    """
    if not isinstance(devices, dict):
        return {}
    return {
        device_id: keys
        for device_id, keys in devices.items()
        if isinstance(keys, dict)
        and keys.get("user_id") == user_id
        and keys.get("device_id") == device_id
    }


def _with_signed_curve25519(counts: dict[str, int]) -> dict[str, int]:
    """The counts, with ``signed_curve25519`` at 0 when there are none of
    them: some clients take a count left out as unchanged, and so would
    never upload more once the last was claimed.
    """
    return {_SIGNED_CURVE25519: 0, **counts}


def _timeout(body: Mapping[str, Any]) -> float:
    """The seconds other servers are given: the request's ``timeout`` (in
    milliseconds), at most :data:`REMOTE_TIMEOUT_S`.
    """
    timeout_ms = body.get("timeout")
    if isinstance(timeout_ms, int) and not isinstance(timeout_ms, bool) and timeout_ms >= 0:
        return min(timeout_ms / 1000, REMOTE_TIMEOUT_S)
    return REMOTE_TIMEOUT_S


async def _ask_each(
    servers: Mapping[str, _T],
    ask: Callable[[str, _T, float], Awaitable[dict[str, Any] | None]],
    timeout_s: float,
) -> dict[str, dict[str, Any] | None]:
    """Every server's answer (None: none in time), asked all at once."""
    answers: dict[str, dict[str, Any] | None] = {}

    async def one(server: str, question: _T) -> None:
        answers[server] = await ask(server, question, timeout_s)

    async with trio.open_nursery() as nursery:
        for server, question in servers.items():
            nursery.start_soon(one, server, question)
    return answers


class ForgettingDeletedDevices:
    """The accounts as :class:`ranvier.core.devices.Devices` uses them, with
    a deleted device's keys and messages forgotten and its user's device
    list moved, so that other devices stop encrypting for it.
    """

    def __init__(self, accounts: DeviceAccounts, keys: E2eKeys) -> None:
        self._accounts = accounts
        self._keys = keys

    async def logout_devices(self, user_id: str, device_ids: Collection[str]) -> int:
        deleted = await self._accounts.logout_devices(user_id, device_ids)
        await self._keys.devices_deleted(user_id, device_ids)
        return deleted

    async def create_device(self, user_id: str, device_id: str, display_name: str | None) -> bool:
        # A new device has no keys yet: its uploading them moves the list.
        return await self._accounts.create_device(user_id, device_id, display_name)


class E2eKeys:
    """The keys endpoints' work and the device lists of ``/sync``."""

    def __init__(
        self,
        *,
        server_name: str,
        store: E2eKeyStore,
        notifier: StreamNotifier,
        rooms: JoinedRooms,
        shared: SharedRooms,
        memberships: Memberships,
        reauthenticate: Reauthenticate,
        remote: RemoteKeys | None = None,
        servers: RoomServers | None = None,
        edus: EduSink | None = None,
        device_lists: RemoteDeviceLists | None = None,
        partial_state_updates: PartialStateUpdates | None = None,
        device_names_over_federation: bool = False,
    ) -> None:
        self._server_name = server_name
        #: Whether other servers are shown devices' display names.
        self._names_over_federation = device_names_over_federation
        #: Other servers' users' device lists kept here (none kept without).
        self.device_lists = device_lists
        self._store = store
        self._notifier = notifier
        self._rooms = rooms
        self._shared = shared
        self._memberships = memberships
        self._reauthenticate = reauthenticate
        self.remote = remote
        self._servers = servers
        self._edus = edus
        # The updates sent while rooms' state was partial (none kept without).
        self._partial_state_updates = partial_state_updates

    # Uploads.

    async def upload(self, user_id: str, device_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /keys/upload``."""
        checked = self.checked_keys(user_id, device_id, body)
        counts, position = await self._store.upload_keys(
            user_id=user_id,
            device_id=device_id,
            device_keys=checked.device_keys,
            one_time_keys=checked.one_time_keys,
            fallback_keys=checked.fallback_keys,
        )
        if position is not None:
            await self._changed(user_id, position, devices=[device_id])
        return {"one_time_key_counts": _with_signed_curve25519(counts)}

    def checked_keys(self, user_id: str, device_id: str, body: Mapping[str, Any]) -> CheckedKeys:
        """The keys of an upload body of ``user_id``'s ``device_id``, checked
        as ``/keys/upload`` checks them and encoded as stored: a dehydrated
        device's upload carries the same fields.
        """
        device_keys = body.get("device_keys")
        encoded = None
        if device_keys is not None:
            if not isinstance(device_keys, dict):
                raise BadJsonError("'device_keys' must be an object")
            self._check_device_keys(user_id, device_id, device_keys)
            encoded = encode_canonical_json(device_keys)
        return CheckedKeys(
            encoded,
            _keys_by_id(_object(body, "one_time_keys"), "one-time key"),
            _keys_by_id(_object(body, "fallback_keys"), "fallback key"),
        )

    async def devices_changed(
        self, user_id: str, position: int, devices: Collection[str], *, deleted: bool = False
    ) -> None:
        """After a write of another module moved the device-list stream to
        ``position`` for ``devices`` (created, their keys changed, or
        ``deleted``): tell long-polls and the servers sharing a room, as an
        upload here does.
        """
        await self._changed(user_id, position, devices=devices, deleted=deleted)

    def _check_device_keys(self, user_id: str, device_id: str, keys: Mapping[str, Any]) -> None:
        if keys.get("user_id") != user_id or keys.get("device_id") != device_id:
            raise _invalid(
                f"device_keys must be those of {user_id}'s device {device_id}, the requester"
            )
        algorithms = keys.get("algorithms")
        if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
            raise BadJsonError("'device_keys.algorithms' must be a list of strings")
        published = keys.get("keys")
        if not isinstance(published, dict) or not all(
            isinstance(value, str) for value in published.values()
        ):
            raise BadJsonError("'device_keys.keys' must be an object of key IDs to keys")
        own = f"{_ED25519}:{device_id}"
        if own not in published:
            raise _invalid(f"device_keys must hold the device's own {own} key")
        _verify(keys, user_id, own, published[own])

    async def upload_cross_signing(
        self,
        user_id: str,
        body: Mapping[str, Any],
        *,
        by_app_service: bool = False,
        reauthenticate: Reauthenticate | None = None,
    ) -> dict[str, Any]:
        """``POST /keys/device_signing/upload``; raises
        :class:`~ranvier.core.devices.AuthRequired` while the user must
        prove who they are and has not, through ``reauthenticate`` (the
        request's own, which knows its session) or the one given at
        construction. An application service is never asked (spec v1.17):
        its token is the proof, and its users have no password.
        """
        given: dict[str, dict[str, Any]] = {}
        for field, key_type in _CROSS_SIGNING.items():
            key = body.get(field)
            if key is None:
                continue
            if not isinstance(key, dict):
                raise BadJsonError(f"'{field}' must be an object")
            if key.get("user_id") != user_id:
                raise _invalid(f"{field} must be a key of {user_id}, the requester")
            usage = key.get("usage")
            if not isinstance(usage, list) or key_type not in usage:
                raise _invalid(f"{field}'s usage must include {key_type!r}")
            _only_key(key)
            given[key_type] = key
        if not given:
            raise _invalid("no cross-signing key given")
        held = {
            key_type: msgspec.json.decode(key)
            for key_type, key in (await self._store.cross_signing_keys([user_id]))
            .get(user_id, {})
            .items()
        }
        master = given.get("master", held.get("master"))
        if master is None:
            raise _invalid("a master key must be uploaded before the keys it signs")
        master_id, master_public = _only_key(master)
        for key_type in ("self_signing", "user_signing"):
            if key_type in given:
                _verify(given[key_type], user_id, master_id, master_public)
        # The first keys, or the very keys held, need no password: a client
        # setting up cross-signing, or retrying, has nothing to replace.
        replaces = "master" in held and any(
            held.get(key_type) != key for key_type, key in given.items()
        )
        if replaces and not by_app_service:
            check = reauthenticate if reauthenticate is not None else self._reauthenticate
            await check(user_id, body.get("auth"))
        if all(held.get(key_type) == key for key_type, key in given.items()):
            return {}
        position = await self._store.set_cross_signing_keys(
            user_id, {key_type: encode_canonical_json(key) for key_type, key in given.items()}
        )
        await self._changed(user_id, position, cross_signing=True)
        return {}

    async def upload_signatures(self, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /keys/signatures/upload``: signatures of ``user_id`` on keys
        of theirs and of other local users; ``failures`` per key refused.
        """
        signing_keys = await self._signing_keys(user_id)
        failures: dict[str, dict[str, Any]] = {}
        accepted: list[tuple[str, str, bytes]] = []
        targets = [target for target in body if isinstance(body[target], dict)]
        stored_devices = await self._store.device_keys(
            {
                target: list(body[target])
                for target in targets
                if _server_of(target) == self._server_name
            }
        )
        stored_cross = await self._store.cross_signing_keys(targets)
        for target in targets:
            for name, signed in body[target].items():
                try:
                    accepted.append(
                        self._checked_signature(
                            user_id,
                            target,
                            name,
                            signed,
                            signing_keys,
                            stored_devices.get(target, {}),
                            stored_cross.get(target, {}),
                        )
                    )
                except MatrixError as refused:
                    failures.setdefault(target, {})[name] = {
                        "errcode": refused.errcode,
                        "error": str(refused),
                    }
        if accepted:
            missing, position = await self._store.add_signatures(accepted)
            for target, name in missing:
                failures.setdefault(target, {})[name] = {
                    "errcode": "M_NOT_FOUND",
                    "error": "no such key",
                }
            if position is not None:
                gone = set(missing)
                for target in sorted({target for target, _, _ in accepted}):
                    names = {name for who, name, _ in accepted if who == target}
                    device_names = {
                        name
                        for name in names
                        if name in stored_devices.get(target, {}) and (target, name) not in gone
                    }
                    await self._changed(
                        target,
                        position,
                        devices=device_names,
                        cross_signing=bool(names - device_names),
                    )
        return {"failures": failures}

    async def _signing_keys(self, user_id: str) -> dict[str, str]:
        """The ed25519 keys ``user_id`` may sign with, by key ID: their
        devices' and their cross-signing keys.
        """
        found: dict[str, str] = {}
        for key_json, _ in (await self._store.device_keys({user_id: ()}))[user_id].values():
            for key_id, public in msgspec.json.decode(key_json).get("keys", {}).items():
                if key_id.startswith(f"{_ED25519}:") and isinstance(public, str):
                    found[key_id] = public
        for key_json in (await self._store.cross_signing_keys([user_id])).get(user_id, {}).values():
            key_id, public = _only_key(msgspec.json.decode(key_json))
            found[key_id] = public
        return found

    def _checked_signature(
        self,
        signer: str,
        target: str,
        name: str,
        signed: object,
        signing_keys: Mapping[str, str],
        devices: Mapping[str, tuple[bytes, str | None]],
        cross: Mapping[str, bytes],
    ) -> tuple[str, str, bytes]:
        if not isinstance(signed, dict):
            raise BadJsonError("a signed key must be an object")
        if _server_of(target) != self._server_name:
            raise MatrixError(
                "signatures of other servers' users' keys are not accepted here",
                errcode="M_UNRECOGNIZED",
                http_status=400,
            )
        if name in devices:
            stored = msgspec.json.decode(devices[name][0])
        else:
            stored = None
            for key_json in cross.values():
                key = msgspec.json.decode(key_json)
                if f"{_ED25519}:{name}" in key.get("keys", {}):
                    stored = key
            if stored is None:
                raise MatrixError("no such key", errcode="M_NOT_FOUND", http_status=404)
        if _unsigned_form(stored) != _unsigned_form(signed):
            raise _invalid("the signed object is not the key stored")
        by_signer = signed.get("signatures", {}).get(signer)
        if not isinstance(by_signer, dict) or not by_signer:
            raise _invalid(f"no signature of {signer}")
        for key_id in by_signer:
            if key_id not in signing_keys:
                raise _invalid(f"{key_id[:80]!r} is not a key of {signer}")
            _verify(
                {**signed, "signatures": {signer: {key_id: by_signer[key_id]}}},
                signer,
                key_id,
                signing_keys[key_id],
            )
        return target, name, msgspec.json.encode({signer: by_signer})

    async def _changed(
        self,
        user_id: str,
        position: int,
        *,
        devices: Collection[str] = (),
        deleted: bool = False,
        cross_signing: bool = False,
    ) -> None:
        """Tell long-polls, and the servers sharing a room with the user,
        that the user's keys changed: ``devices``' keys (the devices
        themselves when ``deleted``), or their cross-signing keys.
        """
        rooms = await self._rooms.joined_rooms(user_id)
        self._notifier.advance_device_lists(position, user_id, rooms)
        if self._edus is None or self._servers is None:
            return
        destinations: set[str] = set()
        partial: dict[str, tuple[Collection[str], frozenset[str]]] = {}
        for room_id in rooms:
            servers = frozenset(await self._servers.joined_servers(room_id))
            destinations.update(servers)
            point = await self._servers.partial_state_point(room_id)
            if point is not None:
                partial[room_id] = (point, servers)
        destinations.discard(self._server_name)
        if not destinations and not partial:
            return
        edus: list[tuple[str, dict[str, Any]]] = []
        shown = await self.devices_for_servers(user_id, devices)
        # Each update names the one before, so a server that missed one
        # knows to ask for the whole list (GET /user/devices). The one
        # before is read from the stream, which every process shares and a
        # restart keeps; the updates of one change follow each other.
        previous = await self._store.previous_device_list_change(user_id, position)
        for device_id in sorted(devices):
            update: dict[str, Any] = {
                "user_id": user_id,
                "device_id": device_id,
                "stream_id": position,
                "prev_id": [] if previous is None else [previous],
                "deleted": deleted,
            }
            update.update(shown["devices"].get(device_id, {}))
            edus.append(("m.device_list_update", update))
            previous = position
        if cross_signing:
            update = {"user_id": user_id}
            for field in ("master_key", "self_signing_key"):
                if field in shown:
                    update[field] = shown[field]
            edus.append(("m.signing_key_update", update))
        for server in sorted(destinations):
            for edu_type, content in edus:
                self._edus.send_edu(server, edu_type, content)
        if partial and self._partial_state_updates is not None:
            complete = await self._partial_state_updates.remember(
                [(room_id, point, servers) for room_id, (point, servers) in partial.items()],
                user_id=user_id,
                position=position,
                edus=edus,
                keep=_MAX_SENT_ON_PARTIAL_STATE,
            )
            # Completed since it was looked at, before the update could be
            # remembered: whoever completed it will not see the update.
            for room_id in complete:
                point, servers = partial[room_id]
                await self._send_missed(point, servers, edus, {})

    async def room_fully_stated(self, room_id: str) -> None:
        """After ``room_id``'s partial state was completed: the updates sent
        meanwhile (by any process) go to the servers the full state shows
        were in the room when each was made and that the partial state
        left out (absent from the join's answer, or wrongly kicked),
        whether or not they are still there: they missed the update.
        """
        store = self._partial_state_updates
        if store is None or self._edus is None or self._servers is None:
            return
        remembered = await store.remembered(room_id)
        known: dict[frozenset[str], frozenset[str]] = {}
        for update in remembered:
            await self._send_missed(update.point, update.sent_to, update.edus, known)
        if remembered:
            await store.forget(room_id, remembered[-1].number)

    async def resume_fully_stated(self) -> None:
        """At start-up: the rooms whose partial state was completed but
        whose updates were not yet sent on when the server stopped.
        """
        store = self._partial_state_updates
        if store is None:
            return
        for room_id in await store.rooms_completed_with_updates():
            await self.room_fully_stated(room_id)

    async def _send_missed(
        self,
        point: Collection[str],
        sent_to: Collection[str],
        edus: Sequence[tuple[str, dict[str, Any]]],
        known: dict[frozenset[str], frozenset[str]],
    ) -> None:
        """Send ``edus`` to the servers in the room after ``point`` that
        were not ``sent_to``; ``known`` holds the servers of points already
        read (updates made between two events share one).
        """
        assert self._edus is not None
        assert self._servers is not None
        key = frozenset(point)
        servers = known.get(key)
        if servers is None:
            servers = known[key] = frozenset(await self._servers.servers_after(key))
        for server in sorted(servers - set(sent_to) - {self._server_name}):
            for edu_type, content in edus:
                self._edus.send_edu(server, edu_type, content)

    async def device_renamed(self, user_id: str, device_id: str) -> None:
        """After a rename of ``user_id``'s device: the new name is part of
        the device as this server's users see it (``unsigned.device_display_name``
        of its keys), so those sharing a room hear of it as of a key change.
        Other servers hear of a change too, as a peer's clients would
        expect; the name itself only where names are shared with them.
        """
        position = await self._store.mark_device_list_changed(user_id)
        await self._changed(user_id, position, devices=[device_id])

    async def device_added(self, user_id: str, device_id: str) -> None:
        """After a login that created ``user_id``'s device: the server-server
        spec has the other servers told of new devices, and those sharing a
        room with the user, the user's own devices among them, hear of it
        as of a key change, before the device has uploaded any keys.
        """
        position = await self._store.mark_device_list_changed(user_id)
        await self._changed(user_id, position, devices=[device_id])

    async def devices_deleted(self, user_id: str, device_ids: Collection[str]) -> None:
        """Forget deleted devices' keys and waiting messages, and tell those
        sharing a room with the user, here and on other servers.
        """
        if not device_ids:
            return
        position = await self._store.forget_devices(user_id, device_ids)
        await self._changed(user_id, position, devices=device_ids, deleted=True)

    async def devices_logged_out(self, user_id: str) -> None:
        """After a logout: forget the keys and waiting messages of
        ``user_id``'s devices that are gone, and tell those sharing a room
        with the user, as :meth:`devices_deleted` does.
        """
        position, devices = await self._store.forget_gone_devices(user_id)
        if position is not None:
            await self._changed(user_id, position, devices=devices, deleted=True)

    async def devices_removed(self, user_id: str, position: int, device_ids: list[str]) -> None:
        """After a write that removed ``user_id``'s devices with their keys
        and moved the device-list stream to ``position`` (a deactivation):
        tell those sharing a room with the user, as :meth:`devices_deleted`
        does.
        """
        await self._changed(user_id, position, devices=device_ids, deleted=True)

    async def on_remote_update(
        self,
        origin: str,
        content: Mapping[str, Any],
        *,
        edu_type: str = "m.device_list_update",
    ) -> bool:
        """An ``m.device_list_update`` or ``m.signing_key_update`` EDU from
        ``origin``: its user's devices changed, so the kept list follows,
        and the local users sharing a room with them hear of it in
        ``device_lists.changed`` and ask again. Dropped (False) unless the
        user is ``origin``'s own and shares a room with someone here.
        """
        user_id = content.get("user_id")
        if not isinstance(user_id, str) or _server_of(user_id) != origin:
            _log.info("dropping a device list update from %s about %r", origin, user_id)
            return False
        rooms = await self._rooms.joined_rooms(user_id)
        if not rooms:
            # Nobody here shares a room with them: nobody to tell.
            return False
        # The kept list first, so that a client told asks and finds it current.
        if self.device_lists is not None:
            if edu_type == "m.signing_key_update":
                await self.device_lists.on_signing_key_update(user_id, content)
            else:
                await self.device_lists.on_device_list_update(user_id, content)
        position = await self._store.mark_device_list_changed(user_id)
        self._notifier.advance_device_lists(position, user_id, rooms)
        return True

    # Queries.

    async def query(self, requester: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /keys/query``: local users' keys from storage; other
        servers' users sharing a room here from their kept device lists
        (fetched with ``GET /user/devices`` when none is kept or it cannot
        be trusted current), the rest asked of their servers in one
        request each (``failures`` for servers that did not answer).
        """
        wanted = _object(body, "device_keys")
        local: dict[str, list[str]] = {}
        remote: dict[str, dict[str, list[str]]] = {}
        for user_id, devices in wanted.items():
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise BadJsonError(f"the devices of {user_id[:80]} must be a list of device IDs")
            if _server_of(user_id) == self._server_name:
                local[user_id] = devices
            else:
                remote.setdefault(_server_of(user_id), {})[user_id] = devices
        answer = await self.local_query(local, requester=requester)
        answer["failures"] = {}
        plans = await self._plan(remote)
        asked = await _ask_each(plans, self._answer_server, _timeout(body))
        for server, users in sorted(remote.items()):
            found = asked[server]
            if found is None:
                answer["failures"][server] = {"status": 503, "message": "not reachable"}
                found = plans[server].answered
            for field in ("device_keys", "master_keys", "self_signing_keys"):
                part = found.get(field)
                if not isinstance(part, dict):
                    continue
                for user_id, keys in part.items():
                    if user_id not in users:
                        continue
                    if field == "device_keys":
                        keys = _own_devices(user_id, keys)
                    elif not isinstance(keys, dict) or keys.get("user_id") != user_id:
                        continue
                    answer[field][user_id] = keys
        return answer

    async def _plan(self, remote: Mapping[str, Mapping[str, list[str]]]) -> dict[str, _ServerPlan]:
        """How each server's users are answered: from kept lists, by
        fetching theirs, or by asking.
        """
        lookup = None
        if self.device_lists is not None and remote:
            lookup = await self.device_lists.lookup(
                [user_id for users in remote.values() for user_id in users]
            )
        plans: dict[str, _ServerPlan] = {}
        for server, users in remote.items():
            plan = plans[server] = _ServerPlan(0 if lookup is None else lookup.position)
            for user_id, devices in users.items():
                if lookup is None or user_id not in lookup.shared:
                    plan.ask[user_id] = devices
                elif user_id in lookup.usable:
                    _merge(plan.answered, cached_answer(user_id, lookup.usable[user_id], devices))
                else:
                    plan.fill[user_id] = devices
        return plans

    async def _answer_server(
        self, server: str, plan: _ServerPlan, timeout_s: float
    ) -> dict[str, Any] | None:
        """The keys of ``server``'s users as :meth:`_plan` planned: fetched
        lists and the one question about the rest, at once; None when any
        of it failed (what was answered then is in ``plan.answered``).
        """
        failed = False

        async def fill(user_id: str, devices: list[str]) -> None:
            nonlocal failed
            assert self.device_lists is not None
            listed = await self.device_lists.fill(
                server, user_id, position=plan.position, timeout_s=timeout_s
            )
            if listed is None:
                failed = True
            else:
                _merge(plan.answered, cached_answer(user_id, listed, devices))

        async def ask() -> None:
            nonlocal failed
            found = await self._ask(server, plan.ask, timeout_s)
            if found is None:
                failed = True
            else:
                _merge(plan.answered, found)

        async with trio.open_nursery() as nursery:
            for user_id, devices in plan.fill.items():
                nursery.start_soon(fill, user_id, devices)
            if plan.ask:
                nursery.start_soon(ask)
        return None if failed else plan.answered

    async def _ask(
        self, server: str, users: Mapping[str, list[str]], timeout_s: float
    ) -> dict[str, Any] | None:
        remote = self.remote
        if remote is None:
            return None
        return await answer_within(
            lambda: remote.query_keys(server, users), timeout_s, f"keys of {server}'s users"
        )

    async def local_query(
        self, wanted: Mapping[str, Sequence[str]], *, requester: str | None = None
    ) -> dict[str, Any]:
        """Local users' device and cross-signing keys, as a local
        ``requester`` sees them, or another server when None:
        ``user_signing_keys`` only of the requester themself, and devices'
        display names (``unsigned.device_display_name``) to other servers
        only where the operator shares them, as in Synapse (a name such as
        "Alice's phone" says more than a key needs to).
        """
        stored = await self._store.device_keys(wanted)
        named = requester is not None or self._names_over_federation
        device_keys: dict[str, Any] = {}
        for user_id, devices in stored.items():
            shown = device_keys.setdefault(user_id, {})
            for device_id, (key_json, display_name) in devices.items():
                key = msgspec.json.decode(key_json)
                if display_name is not None and named:
                    key.setdefault("unsigned", {})["device_display_name"] = display_name
                shown[device_id] = key
        answer: dict[str, Any] = {
            "device_keys": device_keys,
            "master_keys": {},
            "self_signing_keys": {},
        }
        if requester is not None:
            answer["user_signing_keys"] = {}
        cross = await self._store.cross_signing_keys(list(wanted))
        for user_id, keys in cross.items():
            for key_type, key_json in keys.items():
                field = f"{key_type}_keys"
                if key_type == "user_signing" and user_id != requester:
                    continue
                answer[field][user_id] = msgspec.json.decode(key_json)
        return answer

    async def devices_for_servers(
        self, user_id: str, device_ids: Collection[str] = ()
    ) -> dict[str, Any]:
        """A local user's devices with keys (those of ``device_ids``, every
        one when empty) as other servers are shown them in ``GET
        /user/devices`` and ``m.device_list_update``: ``devices`` by device
        ID, each ``{"keys": ...}`` with the keys as uploaded, and
        ``device_display_name`` where names are shared and the device has
        one (these two carry the name beside the keys, not in them); and
        the user's ``master_key`` and ``self_signing_key`` if they have them.
        """
        stored = await self._store.device_keys({user_id: sorted(device_ids)})
        devices: dict[str, dict[str, Any]] = {}
        for device_id, (key_json, display_name) in stored.get(user_id, {}).items():
            entry: dict[str, Any] = {"keys": msgspec.json.decode(key_json)}
            if display_name is not None and self._names_over_federation:
                entry["device_display_name"] = display_name
            devices[device_id] = entry
        answer: dict[str, Any] = {"devices": devices}
        cross = (await self._store.cross_signing_keys([user_id])).get(user_id, {})
        for key_type in ("master", "self_signing"):
            if key_type in cross:
                answer[f"{key_type}_key"] = msgspec.json.decode(cross[key_type])
        return answer

    async def claim(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /keys/claim``."""
        wanted = _object(body, "one_time_keys")
        local: list[tuple[str, str, str]] = []
        remote: dict[str, dict[str, dict[str, str]]] = {}
        for user_id, devices in wanted.items():
            if not isinstance(devices, dict) or not all(
                isinstance(algorithm, str) for algorithm in devices.values()
            ):
                raise BadJsonError(
                    f"the devices of {user_id[:80]} must be an object of device IDs to algorithms"
                )
            for device_id, algorithm in devices.items():
                if _server_of(user_id) == self._server_name:
                    local.append((user_id, device_id, algorithm))
                else:
                    remote.setdefault(_server_of(user_id), {}).setdefault(user_id, {})[
                        device_id
                    ] = algorithm
        one_time_keys = await self.local_claim(local)
        failures: dict[str, Any] = {}
        asked = await _ask_each(remote, self._claim_remote, _timeout(body))
        for server, users in sorted(remote.items()):
            found = asked[server]
            if found is None:
                failures[server] = {"status": 503, "message": "not reachable"}
                continue
            for user_id, devices in found.items():
                if user_id in users and isinstance(devices, dict):
                    # Only the devices asked about, one key each.
                    one_time_keys[user_id] = {
                        device_id: keys
                        for device_id, keys in devices.items()
                        if device_id in users[user_id] and isinstance(keys, dict) and len(keys) == 1
                    }
        return {"one_time_keys": one_time_keys, "failures": failures}

    async def _claim_remote(
        self, server: str, users: Mapping[str, Mapping[str, str]], timeout_s: float
    ) -> dict[str, Any] | None:
        remote = self.remote
        if remote is None:
            return None
        answer = await answer_within(
            lambda: remote.claim_keys(server, users),
            timeout_s,
            f"one-time keys of {server}'s users",
        )
        if answer is None:
            return None
        found = answer.get("one_time_keys")
        return found if isinstance(found, dict) else None

    async def local_claim(self, wanted: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
        """One key for each local ``(user, device, algorithm)``, as
        ``{user: {device: {"<algorithm>:<key ID>": key}}}``.
        """
        found: dict[str, Any] = {}
        for user_id, device_id, algorithm, key_id, key_json in await self._store.claim_keys(wanted):
            found.setdefault(user_id, {}).setdefault(device_id, {})[f"{algorithm}:{key_id}"] = (
                msgspec.json.decode(key_json)
            )
        return found

    # Device lists.

    async def sync_positions(self) -> tuple[int, int]:
        """The to-device and device-list positions a sync starts from."""
        return await self._store.sync_positions()

    async def device_lists_position(self) -> int:
        return (await self._store.sync_positions())[1]

    async def for_sync(
        self,
        user_id: str,
        device_id: str,
        room_ids: Collection[str],
        since: StreamPosition | None,
        now: StreamPosition,
        *,
        newly_full: Collection[str] = (),
    ) -> E2eSync:
        """What ``/sync`` says of the device's end-to-end encryption between
        ``since`` (None: an initial sync) and ``now``, read in one go; the
        messages ``since`` acknowledges are deleted on the way.
        ``newly_full`` is the user's joined rooms whose partial state was
        cleared in that range: their members are listed as if the user had
        just joined, for until then they were not known here, nor were
        their key changes heard of.
        """
        after = 0 if since is None else since.to_device
        read = await self._store.sync_read(
            user_id=user_id,
            device_id=device_id,
            to_device=(after, now.to_device),
            limit=TO_DEVICE_PAGE,
            device_lists=None if since is None else (since.device_lists, now.device_lists),
            room_ids=room_ids,
            events=None if since is None else (since.events, now.events),
        )
        if read.acknowledged_left:
            await self._store.acknowledge_to_device(user_id, device_id, after)
        messages = read.messages
        reached = messages[-1][0] if len(messages) == TO_DEVICE_PAGE else now.to_device
        changed: list[str] = []
        left: list[str] = []
        if since is not None:
            changed, left = await self._device_lists_of(
                user_id, read.changed_users, read.memberships, newly_full
            )
        return E2eSync(
            to_device=[msgspec.json.decode(message) for _, message in messages],
            to_device_reached=max(reached, after),
            changed=changed,
            left=left,
            key_counts=_with_signed_curve25519(read.key_counts),
            unused_fallbacks=read.unused_fallbacks,
        )

    async def changes(
        self, user_id: str, since: StreamPosition, upto: StreamPosition
    ) -> dict[str, list[str]]:
        """``GET /keys/changes`` between two sync tokens' positions."""
        rooms = await self._memberships.get_current_membership_event_ids(user_id)
        keys_changed = (
            await self._store.device_list_changes(since.device_lists, upto.device_lists)
            if upto.device_lists > since.device_lists
            else set()
        )
        memberships = (
            await self._store.membership_changes(rooms, since.events, upto.events)
            if upto.events > since.events and rooms
            else []
        )
        # As in a sync: the members of a room whose partial state was
        # completed meanwhile were not known here, nor their key changes.
        newly_full: set[str] = set()
        if upto.un_partial > since.un_partial:
            completed = await self._store.rooms_completed(since.un_partial, upto.un_partial)
            if completed:
                newly_full = completed & set(await self._rooms.joined_rooms(user_id))
        changed, left = await self._device_lists_of(user_id, keys_changed, memberships, newly_full)
        return {"changed": changed, "left": left}

    async def _device_lists_of(
        self,
        user_id: str,
        keys_changed: Collection[str],
        memberships: Sequence[tuple[str, str, str | None]],
        newly_full: Collection[str] = (),
    ) -> tuple[list[str], list[str]]:
        """Who to list in ``device_lists.changed`` and ``left``, given the
        users whose keys changed and the member events of ``user_id``'s rooms
        in the same range: users sharing a room with ``user_id`` whose keys
        changed or who came to share one, and users who no longer share any.
        The members of ``newly_full`` rooms count as having come to share one.
        """
        candidates = set(keys_changed)
        gone: set[str] = set()
        joined_rooms: set[str] = set(newly_full)
        left_rooms: set[str] = set()
        for room_id, member, membership in memberships:
            if membership == "join":
                candidates.add(member)
                if member == user_id:
                    joined_rooms.add(room_id)
                    left_rooms.discard(room_id)
            elif membership in ("leave", "ban"):
                gone.add(member)
                if member == user_id:
                    left_rooms.add(room_id)
                    joined_rooms.discard(room_id)
        if joined_rooms:
            candidates |= await self._store.joined_members(joined_rooms)
        if left_rooms:
            gone |= await self._store.joined_members(left_rooms)
        if not candidates and not gone:
            return [], []
        sharing = await self._shared.users_sharing_a_room(user_id, candidates | gone)
        changed = {user for user in candidates if user in sharing or user == user_id}
        left = {user for user in gone if user not in sharing and user != user_id}
        return sorted(changed), sorted(left - changed)
