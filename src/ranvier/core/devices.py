"""A user's devices: listing, renaming and deleting them.

Deleting a device logs it out (its access tokens stop working at once, see
:meth:`ranvier.core.accounts.Accounts.logout_devices`), so the route asks
the user to prove who they are again, through user-interactive
authentication (:mod:`ranvier.core.uia`), before it calls :meth:`Devices.delete`.

An application service manages its users' devices without that (spec
v1.17, MSC4190): it creates one by naming it in ``PUT
/devices/{deviceId}`` and deletes without user-interactive authentication,
its ``as_token`` being the proof.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final, Protocol

# Raised by the authentication that guards deleting; long imported from here.
from ranvier.core.uia import AuthRequired
from ranvier.errors import MatrixError
from ranvier.storage.client_data import DeviceRecord

__all__ = ["AuthRequired", "DeviceStore", "Devices"]

_MAX_DISPLAY_NAME: Final = 256


class DeviceStore(Protocol):
    """Devices in storage (:class:`ranvier.storage.client_data.ClientDataStorage`)."""

    async def get_devices(self, user_id: str) -> list[DeviceRecord]: ...

    async def set_device_display_name(
        self, user_id: str, device_id: str, display_name: str
    ) -> bool: ...


class DeviceAccounts(Protocol):
    """Logouts (:class:`ranvier.core.accounts.Accounts`)."""

    async def logout_devices(self, user_id: str, device_ids: Collection[str]) -> int: ...

    async def create_device(
        self, user_id: str, device_id: str, display_name: str | None
    ) -> bool: ...


def _device_json(device: DeviceRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {"device_id": device.device_id}
    if device.display_name is not None:
        entry["display_name"] = device.display_name
    if device.last_seen_ts is not None:
        entry["last_seen_ts"] = device.last_seen_ts
    return entry


class Devices:
    """The device endpoints' work; see the module's doc."""

    def __init__(
        self,
        *,
        store: DeviceStore,
        accounts: DeviceAccounts,
        on_renamed: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._accounts = accounts
        # Told (user, device) after a rename: the device list's readers
        # (E2eKeys.device_renamed) show the name with the device's keys.
        self._on_renamed = on_renamed

    async def list(self, user_id: str) -> list[dict[str, Any]]:
        return [_device_json(device) for device in await self._store.get_devices(user_id)]

    async def get(self, user_id: str, device_id: str) -> dict[str, Any]:
        for device in await self._store.get_devices(user_id):
            if device.device_id == device_id:
                return _device_json(device)
        raise _no_device(device_id)

    async def create(self, user_id: str, device_id: str, display_name: object) -> bool:
        """Create the device for an application service (named, if
        ``display_name`` is not None); False, and nothing done, when the user
        has it already."""
        name = None if display_name is None else _checked_name(display_name)
        return await self._accounts.create_device(user_id, device_id, name)

    async def rename(self, user_id: str, device_id: str, display_name: object) -> None:
        name = _checked_name(display_name)
        if not await self._store.set_device_display_name(user_id, device_id, name):
            raise _no_device(device_id)
        if self._on_renamed is not None:
            await self._on_renamed(user_id, device_id)

    async def delete(self, user_id: str, device_ids: Collection[str]) -> None:
        """Delete devices of ``user_id``, whose route has authenticated the
        user again (or an application service acting for them). Devices
        already gone are no error.
        """
        await self._accounts.logout_devices(user_id, device_ids)

    async def delete_for_admin(self, user_id: str, device_ids: Collection[str]) -> None:
        """Delete devices of ``user_id`` for a server admin, whose own token
        is the proof: the same logout, keys forgotten and device list moved,
        as the user's own deletion, without asking for the user's password.
        """
        await self._accounts.logout_devices(user_id, device_ids)


def _checked_name(display_name: object) -> str:
    if not isinstance(display_name, str):
        raise MatrixError("'display_name' must be a string", errcode="M_BAD_JSON", http_status=400)
    if len(display_name) > _MAX_DISPLAY_NAME:
        raise MatrixError(
            f"a device's display name may be at most {_MAX_DISPLAY_NAME} characters",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return display_name


def _no_device(device_id: str) -> MatrixError:
    return MatrixError(f"no device {device_id!r}", errcode="M_NOT_FOUND", http_status=404)
