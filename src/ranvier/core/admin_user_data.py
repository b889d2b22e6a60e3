"""What an admin reads and manages of a local account's own data: its
devices, its pushers and its account data, at Synapse's paths and in its
shapes, so that admin UIs built for Synapse show them.

Devices are renamed and deleted through :class:`ranvier.core.devices.Devices`,
the path a user's own request takes: a deleted device's tokens stop working,
its keys are forgotten and its user's device list moves (and reaches other
servers), only without the password the user would be asked for. Every
request names a local account that exists (deactivated ones included, as
Synapse has it): another server's user is a 400, no account a 404.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from ranvier.errors import MatrixError

from .account_data import AccountDataUpdates

__all__ = ["AdminUserData"]


class AccountChecker(Protocol):
    """:class:`ranvier.core.admin_users.AdminUsers`."""

    async def require_user(self, user_id: str) -> None: ...


class UserDevices(Protocol):
    """:class:`ranvier.core.devices.Devices`."""

    async def list(self, user_id: str) -> list[dict[str, Any]]: ...

    async def get(self, user_id: str, device_id: str) -> dict[str, Any]: ...

    async def rename(self, user_id: str, device_id: str, display_name: object) -> None: ...

    async def delete_for_admin(self, user_id: str, device_ids: Collection[str]) -> None: ...


class DehydratedDeviceLookup(Protocol):
    """:class:`ranvier.storage.dehydrated_devices.DehydratedDeviceStorage`."""

    async def dehydrated_device(self, user_id: str) -> tuple[str, bytes] | None: ...


class UserPushers(Protocol):
    """:class:`ranvier.core.pushers.Pushers`."""

    async def list(self, user_id: str) -> list[dict[str, Any]]: ...


class UserAccountData(Protocol):
    """:class:`ranvier.core.account_data.AccountData` (the stored entries
    only: push rules are not account data here, nor on Synapse)."""

    async def position(self) -> int: ...

    async def updates(self, user_id: str, after: int | None, upto: int) -> AccountDataUpdates: ...


def _admin_device(user_id: str, device: dict[str, Any], dehydrated: str | None) -> dict[str, Any]:
    # Addresses and user agents are not kept here: null, as Synapse shows
    # a device it has not seen since they were recorded.
    shown = {
        **device,
        "last_seen_ts": device.get("last_seen_ts"),
        "last_seen_ip": None,
        "last_seen_user_agent": None,
        "user_id": user_id,
    }
    if dehydrated is not None:
        shown["dehydrated"] = device["device_id"] == dehydrated
    return shown


class AdminUserData:
    """An account's devices, pushers and account data for admins; see the
    module's doc."""

    def __init__(
        self,
        *,
        users: AccountChecker,
        devices: UserDevices,
        dehydrated: DehydratedDeviceLookup,
        pushers: UserPushers,
        account_data: UserAccountData,
    ) -> None:
        self._users = users
        self._devices = devices
        self._dehydrated = dehydrated
        self._pushers = pushers
        self._account_data = account_data

    async def _dehydrated_id(self, user_id: str) -> str:
        found = await self._dehydrated.dehydrated_device(user_id)
        return "" if found is None else found[0]

    async def devices(self, user_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v2/users/{userId}/devices``."""
        await self._users.require_user(user_id)
        dehydrated = await self._dehydrated_id(user_id)
        devices = [
            _admin_device(user_id, device, dehydrated)
            for device in await self._devices.list(user_id)
        ]
        return {"devices": devices, "total": len(devices)}

    async def device(self, user_id: str, device_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}``."""
        await self._users.require_user(user_id)
        return _admin_device(user_id, await self._devices.get(user_id, device_id), None)

    async def rename_device(self, user_id: str, device_id: str, display_name: object) -> None:
        """``PUT``: a body without ``display_name`` changes nothing, but the
        device must exist."""
        await self._users.require_user(user_id)
        if display_name is None:
            await self._devices.get(user_id, device_id)
            return
        await self._devices.rename(user_id, device_id, display_name)

    async def delete_device(self, user_id: str, device_id: str) -> None:
        """``DELETE`` one device; 404 if the user has no such device."""
        await self._users.require_user(user_id)
        await self._devices.get(user_id, device_id)
        await self._devices.delete_for_admin(user_id, [device_id])

    async def delete_devices(self, user_id: str, device_ids: object) -> None:
        """``POST .../delete_devices``: devices already gone are no error,
        as in the client API's ``/delete_devices``."""
        if not isinstance(device_ids, list) or not all(isinstance(d, str) for d in device_ids):
            raise MatrixError(
                "'devices' must be a list of device IDs", errcode="M_BAD_JSON", http_status=400
            )
        await self._users.require_user(user_id)
        await self._devices.delete_for_admin(user_id, device_ids)

    async def pushers(self, user_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v1/users/{userId}/pushers``."""
        await self._users.require_user(user_id)
        pushers = await self._pushers.list(user_id)
        return {"pushers": pushers, "total": len(pushers)}

    async def account_data(self, user_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v1/users/{userId}/accountdata``: every
        entry, global and per room, by type."""
        await self._users.require_user(user_id)
        everything = await self._account_data.updates(
            user_id, None, await self._account_data.position()
        )
        rooms: dict[str, dict[str, Any]] = {}
        for room_id, events in everything.room_events.items():
            rooms[room_id] = {event["type"]: event["content"] for event in events}
        return {
            "account_data": {
                "global": {event["type"]: event["content"] for event in everything.global_events},
                "rooms": rooms,
            }
        }
