"""Dehydrated devices (MSC3814): ``PUT``, ``GET`` and ``DELETE
/dehydrated_device`` and ``POST /dehydrated_device/{deviceId}/events``.

A client keeps a device on the server, its private part encrypted in
``device_data`` (which the server never reads), so that what others
encrypt for the user while all their devices are offline can be read
later: the device's keys are served like any device's, its to-device
messages wait, and a later login fetches the device and its messages,
rehydrates it and uploads a new one.

Invariants
----------

* **The device and its keys come in one request and one write**: a
  dehydrated device that cannot receive encrypted messages is never
  stored. The keys are checked as ``/keys/upload`` checks them, for the
  device named (:meth:`ranvier.core.e2e_keys.E2eKeys.checked_keys`).
* **One per user.** Uploading another deletes the previous one with its
  keys and messages; others hear of both changes as device-list updates,
  as of any device created or deleted.
* **Its messages are read page by page and not deleted** by reading: the
  MSC asks that a rehydration aborted halfway can start again from the
  beginning. They go with the device, when it is replaced or deleted.
* **Only the owner reads them, and only of their current dehydrated
  device.** Another device ID is refused (403), as is asking without one
  (404).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping
from typing import Any, Final, Protocol

import msgspec

from ranvier.core.builder import Clock, wall_clock_ms
from ranvier.core.e2e_keys import TO_DEVICE_PAGE, CheckedKeys
from ranvier.errors import BadJsonError, MatrixError
from ranvier.protocol.numbers import is_decimal_number
from ranvier.storage.dehydrated_devices import DehydratedUpload, StoredDehydration

__all__ = ["DehydratedDeviceKeys", "DehydratedDeviceStore", "DehydratedDevices"]

_MAX_DEVICE_ID: Final = 255
_MAX_DISPLAY_NAME: Final = 256


class DehydratedDeviceStore(Protocol):
    """Dehydrated devices in storage
    (:class:`ranvier.storage.dehydrated_devices.DehydratedDeviceStorage`).
    """

    async def dehydrated_device(self, user_id: str) -> tuple[str, bytes] | None: ...

    async def store_dehydrated_device(self, upload: DehydratedUpload) -> StoredDehydration: ...

    async def delete_dehydrated_device(self, user_id: str) -> tuple[str, int] | None: ...

    async def dehydrated_device_messages(
        self, user_id: str, after: int, limit: int
    ) -> tuple[str, list[tuple[int, bytes]]] | None: ...


class DehydratedDeviceKeys(Protocol):
    """Key checks and device-list updates (:class:`ranvier.core.e2e_keys.E2eKeys`)."""

    def checked_keys(
        self, user_id: str, device_id: str, body: Mapping[str, Any]
    ) -> CheckedKeys: ...

    async def devices_changed(
        self, user_id: str, position: int, devices: Collection[str], *, deleted: bool = False
    ) -> None: ...


def _none_found() -> MatrixError:
    return MatrixError("no dehydrated device", errcode="M_NOT_FOUND", http_status=404)


def _device_id(body: Mapping[str, Any]) -> str:
    device_id = body.get("device_id")
    if device_id is None:
        raise MatrixError("'device_id' is required", errcode="M_MISSING_PARAM", http_status=400)
    if not isinstance(device_id, str):
        raise BadJsonError("'device_id' must be a string")
    if not device_id or len(device_id) > _MAX_DEVICE_ID:
        raise MatrixError(
            f"a device ID must be 1 to {_MAX_DEVICE_ID} characters",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return device_id


def _device_data(body: Mapping[str, Any]) -> bytes:
    data = body.get("device_data")
    if data is None:
        raise MatrixError("'device_data' is required", errcode="M_MISSING_PARAM", http_status=400)
    if not isinstance(data, dict):
        raise BadJsonError("'device_data' must be an object")
    # The one field the MSC names: a client reads it to know how to
    # rehydrate, so data without it could never be used.
    if not isinstance(data.get("algorithm"), str):
        raise BadJsonError("'device_data.algorithm' must be a string")
    return msgspec.json.encode(data)


def _display_name(body: Mapping[str, Any]) -> str | None:
    name = body.get("initial_device_display_name")
    if name is None:
        return None
    if not isinstance(name, str):
        raise BadJsonError("'initial_device_display_name' must be a string")
    if len(name) > _MAX_DISPLAY_NAME:
        raise MatrixError(
            f"a device's display name may be at most {_MAX_DISPLAY_NAME} characters",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return name


def _after(body: Mapping[str, Any]) -> int:
    """The position ``next_batch`` stands for: 0 when not given."""
    token = body.get("next_batch")
    if token is None:
        return 0
    if not isinstance(token, str):
        raise BadJsonError("'next_batch' must be a string")
    # At most 18 digits: a stream position fits SQLite's 64-bit integers.
    if not is_decimal_number(token) or len(token) > 18:
        raise MatrixError(
            f"{token[:80]!r} is not a next_batch this server gave",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return int(token)


class DehydratedDevices:
    """The dehydrated device endpoints' work; see the module's doc."""

    def __init__(
        self,
        *,
        store: DehydratedDeviceStore,
        keys: DehydratedDeviceKeys,
        clock: Clock = wall_clock_ms,
        page: int = TO_DEVICE_PAGE,
    ) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock
        self._page = page

    async def get(self, user_id: str) -> dict[str, Any]:
        """``GET /dehydrated_device``."""
        found = await self._store.dehydrated_device(user_id)
        if found is None:
            raise _none_found()
        device_id, data = found
        return {"device_id": device_id, "device_data": msgspec.json.decode(data)}

    async def put(self, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /dehydrated_device``: the device, replacing the previous one."""
        device_id = _device_id(body)
        data = _device_data(body)
        display_name = _display_name(body)
        if body.get("device_keys") is None:
            raise MatrixError(
                "'device_keys' is required: a dehydrated device must be able to"
                " receive encrypted messages",
                errcode="M_MISSING_PARAM",
                http_status=400,
            )
        keys = self._keys.checked_keys(user_id, device_id, body)
        assert keys.device_keys is not None
        stored = await self._store.store_dehydrated_device(
            DehydratedUpload(
                user_id=user_id,
                device_id=device_id,
                display_name=display_name,
                device_data=data,
                device_keys=keys.device_keys,
                one_time_keys=keys.one_time_keys,
                fallback_keys=keys.fallback_keys,
                upload_id=secrets.token_urlsafe(16),
                created_ts=self._clock(),
            )
        )
        if stored.replaced is not None and stored.replaced_position is not None:
            await self._keys.devices_changed(
                user_id, stored.replaced_position, [stored.replaced], deleted=True
            )
        await self._keys.devices_changed(user_id, stored.position, [device_id])
        return {"device_id": device_id}

    async def delete(self, user_id: str) -> dict[str, Any]:
        """``DELETE /dehydrated_device``: the device, its keys and messages."""
        deleted = await self._store.delete_dehydrated_device(user_id)
        if deleted is None:
            raise _none_found()
        device_id, position = deleted
        await self._keys.devices_changed(user_id, position, [device_id], deleted=True)
        return {"device_id": device_id}

    async def events(self, user_id: str, device_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /dehydrated_device/{deviceId}/events``: a page of the
        device's messages after ``next_batch``, and the token of the next.
        The last page's token answers an empty page, which tells the client
        it has them all.
        """
        after = _after(body)
        found = await self._store.dehydrated_device_messages(user_id, after, self._page)
        if found is None:
            raise _none_found()
        current, messages = found
        if device_id != current:
            raise MatrixError(
                "only the messages of your own dehydrated device may be read",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        reached = messages[-1][0] if messages else after
        return {
            "events": [msgspec.json.decode(message) for _, message in messages],
            "next_batch": str(reached),
        }
