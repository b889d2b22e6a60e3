"""A user's devices: listing, renaming and deleting them.

Deleting a device logs it out (its access tokens stop working at once, see
:meth:`ranvier.core.accounts.Accounts.logout_devices`), so it takes the
user's password again, through user-interactive authentication with one
flow of one stage, ``m.login.password``: a request without ``auth`` is
answered 401 with the flows and a session, and the same request with the
password deletes. The session only threads the exchange: the password is
the proof, checked on the request that carries it.

An application service manages its users' devices without a password
(spec v1.17, MSC4190): it creates one by naming it in ``PUT
/devices/{deviceId}`` and deletes without user-interactive authentication,
its ``as_token`` being the proof.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Final, Protocol

from ranvier.errors import MatrixError
from ranvier.storage.client_data import DeviceRecord

__all__ = ["PASSWORD_FLOWS", "AuthRequired", "DeviceStore", "Devices"]

_PASSWORD: Final = "m.login.password"
PASSWORD_FLOWS: Final = [{"stages": [_PASSWORD]}]
_MAX_DISPLAY_NAME: Final = 256


class DeviceStore(Protocol):
    """Devices in storage (:class:`ranvier.storage.client_data.ClientDataStorage`)."""

    async def get_devices(self, user_id: str) -> list[DeviceRecord]: ...

    async def set_device_display_name(
        self, user_id: str, device_id: str, display_name: str
    ) -> bool: ...


class DeviceAccounts(Protocol):
    """Passwords and logouts (:class:`ranvier.core.accounts.Accounts`)."""

    async def check_password(self, user_id: str, password: str) -> bool: ...

    async def logout_devices(self, user_id: str, device_ids: Collection[str]) -> int: ...

    async def create_device(
        self, user_id: str, device_id: str, display_name: str | None
    ) -> bool: ...


class AuthRequired(Exception):
    """User-interactive authentication must be (re)done: ``body`` is the
    401 answer's body.
    """

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", "authentication required"))
        self.body = body


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

    async def delete(
        self,
        user_id: str,
        device_ids: Collection[str],
        auth: object,
        *,
        by_app_service: bool = False,
    ) -> None:
        """Delete devices of ``user_id`` once ``auth`` proves the password
        (at once for an application service); raises :class:`AuthRequired`
        until it does. Devices already gone are no error.
        """
        if not by_app_service:
            await self.authenticate(user_id, auth)
        await self._accounts.logout_devices(user_id, device_ids)

    async def delete_for_admin(self, user_id: str, device_ids: Collection[str]) -> None:
        """Delete devices of ``user_id`` for a server admin, whose own token
        is the proof: the same logout, keys forgotten and device list moved,
        as the user's own deletion, without asking for the user's password.
        """
        await self._accounts.logout_devices(user_id, device_ids)

    async def authenticate(self, user_id: str, auth: object) -> None:
        """Return once ``auth`` proves ``user_id``'s password; raise
        :class:`AuthRequired` until it does. Every request that asks for the
        password again (changing it, deactivating) goes through here.
        """
        if auth is None:
            raise AuthRequired(_flows(None))
        if not isinstance(auth, Mapping):
            raise MatrixError("'auth' must be an object", errcode="M_BAD_JSON", http_status=400)
        session = auth.get("session")
        session = session if isinstance(session, str) else None
        stage = auth.get("type")
        if stage != _PASSWORD:
            raise MatrixError(
                f"unknown authentication type {stage!r} (this server offers {_PASSWORD})",
                errcode="M_UNRECOGNIZED",
                http_status=400,
            )
        password = auth.get("password")
        who = _identified_user(auth)
        if not isinstance(password, str):
            raise MatrixError("'password' must be a string", errcode="M_BAD_JSON", http_status=400)
        localpart = user_id[1:].partition(":")[0]
        if who is not None and who.lower() not in (user_id.lower(), localpart.lower()):
            # Another user's credentials can never authorise this request,
            # however often they are retried: refused outright, not asked again.
            raise MatrixError(
                f"the authentication names {who}, not the requesting user {user_id}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )
        if not await self._accounts.check_password(user_id, password):
            body = _flows(session)
            body["errcode"] = "M_FORBIDDEN"
            body["error"] = "invalid password"
            raise AuthRequired(body)


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


def _identified_user(auth: Mapping[str, Any]) -> str | None:
    identifier = auth.get("identifier")
    if isinstance(identifier, Mapping) and isinstance(identifier.get("user"), str):
        return str(identifier["user"])
    user = auth.get("user")
    return user if isinstance(user, str) else None


def _flows(session: str | None) -> dict[str, Any]:
    return {
        "flows": PASSWORD_FLOWS,
        "params": {},
        "session": session or secrets.token_urlsafe(16),
        "completed": [],
    }


def _no_device(device_id: str) -> MatrixError:
    return MatrixError(f"no device {device_id!r}", errcode="M_NOT_FOUND", http_status=404)
