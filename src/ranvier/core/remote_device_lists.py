"""Other servers' users' device lists, kept while they share a room with
this server: filled from ``GET /user/devices`` the first time
``/keys/query`` needs one, then kept current by the user's server's
``m.device_list_update`` and ``m.signing_key_update`` EDUs.

Invariants
----------

* **A kept list answers exactly as its server would.** Device keys and
  cross-signing keys are kept as that server served them (signatures
  included), and only those that name the user (and the device) as theirs.
* **A list is used only while it can be trusted current**: not stale, and
  its user has shared a room with this server without a break since it
  was fetched (see :mod:`ranvier.storage.remote_device_lists`); otherwise
  it is fetched again. An update that does not follow what is kept marks
  it stale.
* **Only the user's own server changes a kept list**: EDUs about another
  server's users are dropped before they reach here.
* **A device's display name is the one its server gave last**, beside its
  keys (``device_display_name`` in ``GET /user/devices`` and in
  ``m.device_list_update``, which a server sends only when its operator
  shares names), and none when it gave none. It is shown in ``/keys/query``
  answers as the keys' ``unsigned.device_display_name``, as the spec's
  answer has it, in place of any the keys carry. A name that is not a
  string, or is longer than :data:`MAX_DEVICE_NAME_LENGTH`, is not kept:
  the device is, without a name.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, Protocol, TypeGuard

import msgspec

from ranvier.storage.remote_device_lists import (
    CachedDeviceList,
    RemoteDeviceLookup,
    UpdateOutcome,
)

from .remote_answers import answer_within

__all__ = [
    "MAX_DEVICE_NAME_LENGTH",
    "RemoteDeviceListStore",
    "RemoteDeviceLists",
    "UserDevices",
    "cached_answer",
    "listed_devices",
]

_log: Final = logging.getLogger(__name__)


class RemoteDeviceListStore(Protocol):
    """The kept lists (:class:`ranvier.storage.remote_device_lists.RemoteDeviceListStorage`)."""

    async def lookup(self, user_ids: Collection[str], server_name: str) -> RemoteDeviceLookup: ...

    async def store(self, user_id: str, listed: CachedDeviceList, *, filled_at: int) -> bool: ...

    async def apply_update(
        self,
        user_id: str,
        *,
        device_id: str,
        stream_id: int,
        prev_ids: Sequence[int],
        deleted: bool,
        keys: bytes | None,
        display_name: str | None = None,
    ) -> UpdateOutcome: ...

    async def replace_signing_keys(
        self, user_id: str, *, master_key: bytes | None, self_signing_key: bytes | None
    ) -> bool: ...


class UserDevices(Protocol):
    """Another server's answer to ``GET /user/devices/{userId}``
    (:class:`ranvier.federation.e2e_keys.FederationKeyClient`).
    """

    async def user_devices(self, server: str, user_id: str) -> dict[str, Any]: ...


#: The longest device display name kept, in characters: the most this
#: server lets its own users set (:mod:`ranvier.core.devices`), and more
#: than Synapse's (100). Each name kept is served in every ``/keys/query``
#: answer about its user, so a server naming its devices at will could
#: otherwise make those answers and this server's storage as large as it
#: likes; a longer name is no one's considered choice, and cutting it
#: would show a name its owner never gave.
MAX_DEVICE_NAME_LENGTH: Final = 256

#: Stream IDs are kept as SQLite integers: signed, 64 bits.
_MAX_STREAM_ID: Final = 2**63 - 1


def _is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` can be a stream ID: an integer SQLite can hold."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and -_MAX_STREAM_ID <= value <= _MAX_STREAM_ID
    )


def _own_device_keys(user_id: str, device_id: object, keys: object) -> bytes | None:
    """``keys`` encoded, when they say they are ``user_id``'s ``device_id``'s."""
    if (
        isinstance(device_id, str)
        and isinstance(keys, dict)
        and keys.get("user_id") == user_id
        and keys.get("device_id") == device_id
    ):
        return msgspec.json.encode(keys)
    return None


def _device_name(name: object) -> str | None:
    """``name`` if it can be kept as a device's display name, else None."""
    if isinstance(name, str) and len(name) <= MAX_DEVICE_NAME_LENGTH:
        return name
    return None


def _own_cross_signing_key(user_id: str, key: object) -> bytes | None:
    if isinstance(key, dict) and key.get("user_id") == user_id:
        return msgspec.json.encode(key)
    return None


def listed_devices(user_id: str, answer: Mapping[str, Any]) -> tuple[CachedDeviceList, bool]:
    """A ``GET /user/devices`` answer as kept, and whether it may be kept
    (it has an integer ``stream_id`` and is about ``user_id``). Devices
    without keys, or whose keys name another user or device, are left
    out, as a key query leaves them out; display names as the module says.
    """
    devices: dict[str, bytes] = {}
    names: dict[str, str] = {}
    listed = answer.get("devices")
    for device in listed if isinstance(listed, list) else []:
        if not isinstance(device, dict):
            continue
        device_id = device.get("device_id")
        keys = _own_device_keys(user_id, device_id, device.get("keys"))
        if keys is not None and isinstance(device_id, str):
            devices[device_id] = keys
            name = _device_name(device.get("device_display_name"))
            if name is not None:
                names[device_id] = name
            else:
                names.pop(device_id, None)
    stream_id = answer.get("stream_id")
    keepable = _is_int(stream_id) and answer.get("user_id", user_id) == user_id
    return (
        CachedDeviceList(
            stream_id if _is_int(stream_id) else 0,
            devices,
            _own_cross_signing_key(user_id, answer.get("master_key")),
            _own_cross_signing_key(user_id, answer.get("self_signing_key")),
            names,
        ),
        keepable,
    )


def cached_answer(
    user_id: str, listed: CachedDeviceList, device_ids: Collection[str]
) -> dict[str, dict[str, Any]]:
    """A kept list as ``/user/keys/query`` answers it: ``device_keys``
    (the devices named, all when none is) with their display names,
    ``master_keys`` and ``self_signing_keys``.
    """
    wanted = set(device_ids)
    answer: dict[str, dict[str, Any]] = {
        "device_keys": {
            user_id: {
                device_id: _named_keys(keys, listed.display_names.get(device_id))
                for device_id, keys in sorted(listed.devices.items())
                if not wanted or device_id in wanted
            }
        },
        "master_keys": {},
        "self_signing_keys": {},
    }
    if listed.master_key is not None:
        answer["master_keys"][user_id] = msgspec.json.decode(listed.master_key)
    if listed.self_signing_key is not None:
        answer["self_signing_keys"][user_id] = msgspec.json.decode(listed.self_signing_key)
    return answer


def _named_keys(keys: bytes, name: str | None) -> dict[str, Any]:
    """A device's kept keys with ``name`` as ``unsigned.device_display_name``,
    in place of any name they came with: the unsigned part is outside what
    the device signed, and a name there was never bounded."""
    decoded: dict[str, Any] = msgspec.json.decode(keys)
    unsigned = decoded.pop("unsigned", None)
    shown = (
        {k: v for k, v in unsigned.items() if k != "device_display_name"}
        if isinstance(unsigned, dict)
        else {}
    )
    if name is not None:
        shown["device_display_name"] = name
    if shown:
        decoded["unsigned"] = shown
    return decoded


class RemoteDeviceLists:
    """Fills, answers from and updates the kept lists."""

    def __init__(
        self, *, server_name: str, store: RemoteDeviceListStore, remote: UserDevices | None
    ) -> None:
        self._server_name = server_name
        self._store = store
        self.remote = remote

    async def lookup(self, user_ids: Collection[str]) -> RemoteDeviceLookup:
        """Who of ``user_ids`` shares a room here, and whose kept lists answer."""
        return await self._store.lookup(user_ids, self._server_name)

    async def fill(
        self, server: str, user_id: str, *, position: int, timeout_s: float
    ) -> CachedDeviceList | None:
        """Fetch ``user_id``'s list from ``server`` and keep it as of the
        events stream ``position`` (read before asking); None when the
        server gave none in time.
        """
        remote = self.remote
        if remote is None:
            return None
        answer = await answer_within(
            lambda: remote.user_devices(server, user_id), timeout_s, f"devices of {user_id}"
        )
        if answer is None:
            return None
        listed, keepable = listed_devices(user_id, answer)
        if keepable:
            await self._store.store(user_id, listed, filled_at=position)
        return listed

    async def on_device_list_update(self, user_id: str, content: Mapping[str, Any]) -> None:
        """Apply an ``m.device_list_update`` from ``user_id``'s own server."""
        device_id = content.get("device_id")
        stream_id = content.get("stream_id")
        prev_ids = content.get("prev_id")
        if prev_ids is None:
            prev_ids = []
        deleted = content.get("deleted", False)
        if (
            not isinstance(device_id, str)
            or not _is_int(stream_id)
            or not isinstance(prev_ids, list)
            or not all(_is_int(prev_id) for prev_id in prev_ids)
            or not isinstance(deleted, bool)
        ):
            _log.info("ignoring a malformed device list update about %s", user_id)
            return
        outcome = await self._store.apply_update(
            user_id,
            device_id=device_id,
            stream_id=stream_id,
            prev_ids=prev_ids,
            deleted=deleted,
            keys=None if deleted else _own_device_keys(user_id, device_id, content.get("keys")),
            display_name=None if deleted else _device_name(content.get("device_display_name")),
        )
        if outcome == "stale":
            _log.info("the device list of %s missed an update: fetched at the next query", user_id)

    async def on_signing_key_update(self, user_id: str, content: Mapping[str, Any]) -> None:
        """Apply an ``m.signing_key_update`` from ``user_id``'s own server."""
        master = _own_cross_signing_key(user_id, content.get("master_key"))
        self_signing = _own_cross_signing_key(user_id, content.get("self_signing_key"))
        if master is not None or self_signing is not None:
            await self._store.replace_signing_keys(
                user_id, master_key=master, self_signing_key=self_signing
            )
