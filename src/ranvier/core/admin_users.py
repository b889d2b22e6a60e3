"""Local accounts as the server's admins manage them (Synapse's user admin
API, the subset this server has the data for).

Every change goes through the parts that make it for users themselves:
accounts are made by :class:`~ranvier.core.accounts.Accounts`, passwords
hashed and devices logged out there too, profiles changed through
:class:`~ranvier.core.profiles.Profiles` (so rooms see the new member
event), and deactivation is :class:`~ranvier.core.deactivation.Deactivation`.
Only the admin flag, the lock, the suspension, the shadow ban and
reactivation are written here, being changes no user can make to
themselves. A lock, suspension or shadow ban is carried with each access
token's lookup (what a locked, suspended or shadow-banned account may do is
:class:`ranvier.api.auth.Auth`'s, :mod:`ranvier.core.suspension`'s and
:mod:`ranvier.core.shadow_bans`'), so changing one drops the user's cached
tokens, as changing the admin flag does.

A request is checked whole before anything is written: a bad field in a
``PUT`` leaves the account as it was, not half changed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, get_args

from ranvier.errors import BadJsonError, MatrixError
from ranvier.protocol.auth import is_valid_user_id
from ranvier.protocol.canonical import CANONICAL_INT_MAX
from ranvier.storage.admin_reads import DeviceRow, UserOrder, UserQuery, UserRow

from .accounts import Registration, Requester
from .profiles import MAX_DISPLAYNAME_LENGTH, ProfileField

__all__ = ["AdminUsers", "UserListRequest"]

_MAX_AVATAR_URL_LENGTH: Final = 1000
USER_ORDERS: Final[frozenset[str]] = frozenset(get_args(UserOrder))
# Orders Synapse offers by a field every account here has the same value
# of (there are no user types): they list by name.
_CONSTANT_ORDERS: Final = frozenset({"user_type"})


class AdminUserStore(Protocol):
    """:class:`ranvier.storage.admin.AdminStorage`."""

    async def list_users(self, query: UserQuery) -> tuple[list[UserRow], int]: ...

    async def user(self, user_id: str) -> UserRow | None: ...

    async def devices_of(self, user_id: str) -> list[DeviceRow]: ...

    async def joined_rooms_of(self, user_id: str) -> list[str]: ...

    async def set_admin(self, user_id: str, admin: bool) -> bool: ...

    async def reactivate_account(self, user_id: str, password_hash: str) -> bool: ...

    async def set_locked(self, user_id: str, locked: bool) -> bool: ...

    async def set_suspended(self, user_id: str, suspended: bool) -> bool: ...

    async def set_shadow_banned(self, user_id: str, shadow_banned: bool) -> bool: ...


class AccountKeeper(Protocol):
    """:class:`ranvier.core.accounts.Accounts`."""

    async def register(
        self,
        localpart: str | None,
        password: str | None,
        *,
        admin: bool = False,
        login: bool = True,
    ) -> Registration: ...

    async def hash_password(self, password: str) -> str: ...

    async def change_password(
        self, requester: Requester, new_password: str, *, logout_devices: bool
    ) -> None: ...

    def forget_tokens_of(self, user_id: str) -> None: ...

    async def issue_puppet_token(
        self, admin_id: str, user_id: str, *, expires_ts: int | None = None
    ) -> str: ...


class ProfileSetter(Protocol):
    """:class:`ranvier.core.profiles.Profiles`."""

    async def set_field(
        self, requester: str, user_id: str, field: ProfileField, value: object
    ) -> None: ...


class Deactivator(Protocol):
    """:class:`ranvier.core.deactivation.Deactivation`."""

    async def deactivate(self, user_id: str, *, erase: bool = False) -> None: ...


@dataclass(frozen=True, slots=True)
class UserListRequest:
    """A page of ``GET /_synapse/admin/v2/users`` as its parameters ask."""

    offset: int = 0
    limit: int = 100
    order_by: str = "name"
    backwards: bool = False
    name: str | None = None
    user_id: str | None = None
    deactivated: bool = False
    guests: bool = True
    admins: bool | None = None
    #: Whether locked accounts are listed (Synapse leaves them out unless asked).
    locked: bool = False


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _forbidden(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_FORBIDDEN", http_status=403)


def _not_found(user_id: str) -> MatrixError:
    return MatrixError(f"user {user_id} not found", errcode="M_NOT_FOUND", http_status=404)


def _optional(body: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int in Python, not in JSON.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BadJsonError(f"'{key}' must be {what}")
    return value


def _check_displayname(value: str | None) -> None:
    if value is not None and len(value) > MAX_DISPLAYNAME_LENGTH:
        raise _invalid(f"a display name may be at most {MAX_DISPLAYNAME_LENGTH} characters")


def _check_avatar_url(value: str | None) -> None:
    if not value:
        return
    server, slash, media_id = value.removeprefix("mxc://").partition("/")
    is_mxc = value.startswith("mxc://") and bool(server and slash and media_id)
    if len(value) > _MAX_AVATAR_URL_LENGTH or not is_mxc:
        raise _invalid(f"'avatar_url' must be an mxc:// URI, not {value[:60]!r}")


def _user_json(row: UserRow) -> dict[str, Any]:
    return {
        "name": row.user_id,
        "is_guest": row.guest,
        "admin": row.admin,
        "user_type": None,
        "deactivated": row.deactivated,
        "erased": row.erased,
        "shadow_banned": row.shadow_banned,
        "displayname": row.displayname,
        "avatar_url": row.avatar_url,
        "creation_ts": row.created_ts,
        "last_seen_ts": row.last_seen_ts,
        "locked": row.locked,
    }


@dataclass(frozen=True, slots=True)
class _Change:
    """A ``PUT`` body, checked."""

    password: str | None
    logout_devices: bool
    displayname: str | None
    avatar_url: str | None
    admin: bool | None
    deactivated: bool | None
    locked: bool | None


def _checked_change(body: Mapping[str, Any]) -> _Change:
    password = _optional(body, "password", str, "a string")
    logout_devices = _optional(body, "logout_devices", bool, "true or false")
    displayname = _optional(body, "displayname", str, "a string")
    avatar_url = _optional(body, "avatar_url", str, "a string")
    admin = _optional(body, "admin", bool, "true or false")
    deactivated = _optional(body, "deactivated", bool, "true or false")
    _check_displayname(displayname)
    _check_avatar_url(avatar_url)
    for key in ("threepids", "external_ids"):
        value = body.get(key)
        if value is not None and not isinstance(value, list):
            raise BadJsonError(f"'{key}' must be a list")
        if value:
            raise _invalid(f"'{key}' cannot be set: this server keeps none")
    if body.get("user_type") is not None:
        raise _invalid("'user_type' cannot be set: this server has no user types")
    locked = _optional(body, "locked", bool, "true or false")
    return _Change(
        password,
        True if logout_devices is None else logout_devices,
        displayname,
        avatar_url,
        admin,
        deactivated,
        locked,
    )


class AdminUsers:
    """Lists, shows and changes local accounts for admins; see the module's doc."""

    def __init__(
        self,
        *,
        server_name: str,
        store: AdminUserStore,
        accounts: AccountKeeper,
        profiles: ProfileSetter,
        deactivation: Deactivator,
        system_users: Collection[str] = (),
    ) -> None:
        self._server_name = server_name
        #: Accounts the server acts as (the server notices user): never given
        #: a password, which would let someone log in as the server, nor
        #: deactivated from under the feature that needs them.
        self._system_users = frozenset(system_users)
        self._store = store
        self._accounts = accounts
        self._profiles = profiles
        self._deactivation = deactivation

    def check_local(self, user_id: str) -> None:
        """400 ``M_INVALID_PARAM`` unless ``user_id`` is a user ID of this server."""
        if not is_valid_user_id(user_id):
            raise _invalid(f"{user_id[:255]!r} is not a user ID")
        if user_id.partition(":")[2] != self._server_name:
            raise _invalid(
                f"{user_id} is not a user of this server: only local users are managed here"
            )

    def _check_not_system(self, user_id: str) -> None:
        if user_id in self._system_users:
            raise _invalid(
                f"{user_id} is the account the server sends its notices as: it takes no"
                " password and is not deactivated"
            )

    async def _existing(self, user_id: str) -> UserRow:
        self.check_local(user_id)
        row = await self._store.user(user_id)
        if row is None:
            raise _not_found(user_id)
        return row

    async def require_user(self, user_id: str) -> None:
        """Return if ``user_id`` is an account of this server (deactivated
        or not); 400 for another server's user, 404 for no account."""
        await self._existing(user_id)

    async def list_users(self, request: UserListRequest) -> dict[str, Any]:
        """A page of accounts, with ``next_token`` while more remain."""
        order = request.order_by
        if order in _CONSTANT_ORDERS:
            order = "name"
        if order not in USER_ORDERS:
            raise _invalid(f"unknown order_by {request.order_by[:40]!r}")
        query = UserQuery(
            offset=request.offset,
            limit=request.limit,
            order_by=order,  # type: ignore[arg-type]
            backwards=request.backwards,
            name=request.name,
            user_id=request.user_id,
            deactivated=request.deactivated,
            admins=request.admins,
            locked=request.locked,
            guests=request.guests,
        )
        rows, total = await self._store.list_users(query)
        answer: dict[str, Any] = {"users": [_user_json(row) for row in rows], "total": total}
        if request.offset + len(rows) < total:
            answer["next_token"] = str(request.offset + len(rows))
        return answer

    async def get_user(self, user_id: str) -> dict[str, Any]:
        """One account as ``GET /_synapse/admin/v2/users/{userId}`` shows it."""
        row = await self._existing(user_id)
        return {
            **_user_json(row),
            "threepids": [],
            "external_ids": [],
            "appservice_id": None,
            "consent_server_notice_sent": None,
            "consent_version": None,
            "consent_ts": None,
            "suspended": row.suspended,
        }

    async def put_user(
        self, admin_id: str, user_id: str, body: Mapping[str, Any]
    ) -> tuple[bool, dict[str, Any]]:
        """Create or change ``user_id``; True with the account if it was created."""
        self.check_local(user_id)
        change = _checked_change(body)
        if user_id == admin_id and change.admin is False:
            raise _invalid("an admin may not take away their own admin rights")
        if user_id == admin_id and change.locked:
            raise _invalid("an admin may not lock their own account")
        existing = await self._store.user(user_id)
        if existing is None:
            await self._create(user_id, change)
            return True, await self.get_user(user_id)
        await self._modify(existing, change)
        return False, await self.get_user(user_id)

    async def _create(self, user_id: str, change: _Change) -> None:
        localpart = user_id[1:].partition(":")[0]
        await self._accounts.register(
            localpart, change.password, admin=bool(change.admin), login=False
        )
        await self._set_profile(user_id, None, None, change)
        if change.locked:
            await self._write_locked(user_id, True)
        if change.deactivated:
            await self._deactivation.deactivate(user_id)

    async def _modify(self, row: UserRow, change: _Change) -> None:
        user_id = row.user_id
        if change.password is not None or change.deactivated:
            self._check_not_system(user_id)
        reactivating = row.deactivated and change.deactivated is False
        if reactivating and change.password is None:
            raise MatrixError(
                "a password is needed to reactivate an account",
                errcode="M_MISSING_PARAM",
                http_status=400,
            )
        if reactivating:
            assert change.password is not None
            password_hash = await self._accounts.hash_password(change.password)
            await self._store.reactivate_account(user_id, password_hash)
        elif change.password is not None:
            await self._change_password(user_id, change.password, change.logout_devices)
        await self._set_profile(user_id, row.displayname, row.avatar_url, change)
        if change.admin is not None and change.admin != row.admin:
            await self._write_admin(user_id, change.admin)
        if change.locked is not None and change.locked != row.locked:
            await self._write_locked(user_id, change.locked)
        if change.deactivated and not row.deactivated:
            await self._deactivation.deactivate(user_id)

    async def _set_profile(
        self, user_id: str, displayname: str | None, avatar_url: str | None, change: _Change
    ) -> None:
        # Only what differs: each change is a member event in every room.
        if change.displayname is not None and (change.displayname or None) != displayname:
            await self._profiles.set_field(user_id, user_id, "displayname", change.displayname)
        if change.avatar_url is not None and (change.avatar_url or None) != avatar_url:
            await self._profiles.set_field(user_id, user_id, "avatar_url", change.avatar_url)

    async def _change_password(self, user_id: str, password: str, logout_devices: bool) -> None:
        # As the user's own change from no device of theirs: with
        # logout_devices, every device goes.
        acting = Requester(user_id, "", False, b"")
        await self._accounts.change_password(acting, password, logout_devices=logout_devices)

    async def reset_password(self, user_id: str, body: Mapping[str, Any]) -> None:
        """``POST /_synapse/admin/v1/reset_password/{userId}``."""
        password = _optional(body, "new_password", str, "a string")
        if password is None:
            raise MatrixError(
                "'new_password' is required", errcode="M_MISSING_PARAM", http_status=400
            )
        logout_devices = _optional(body, "logout_devices", bool, "true or false")
        self._check_not_system(user_id)
        row = await self._existing(user_id)
        if row.deactivated:
            raise _invalid(f"{user_id} is deactivated: reactivate the account instead")
        await self._change_password(user_id, password, logout_devices is not False)

    async def deactivate(self, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /_synapse/admin/v1/deactivate/{userId}``, with ``erase``
        as ``/account/deactivate`` takes it. An account deactivated already
        is deactivated again when asked to erase it, which marks it erased
        and changes nothing else that was done.
        """
        erase = _optional(body, "erase", bool, "true or false") is True
        self._check_not_system(user_id)
        row = await self._existing(user_id)
        if not row.deactivated or (erase and not row.erased):
            await self._deactivation.deactivate(user_id, erase=erase)
        return {"id_server_unbind_result": "success"}

    async def login_as(self, admin_id: str, user_id: str, body: Mapping[str, Any]) -> str:
        """``POST /_synapse/admin/v1/users/{userId}/login``: an access token
        with which the admin acts as ``user_id``
        (:meth:`ranvier.core.accounts.Accounts.issue_puppet_token`), expiring
        at ``valid_until_ms`` if the body gives it.

        As on Synapse, the user may be an admin too (the token then acts
        with the user's admin rights, as any token of theirs would), but
        not the admin themselves: 400, so that the endpoint makes no more
        tokens of one's own. Refused with 400 for a user of another server
        or a deactivated one (Synapse would issue a token for it) and for
        the server notices user (the server acts as it, not a person), and
        404 ``M_NOT_FOUND`` for no account.
        """
        self.check_local(user_id)
        valid_until_ms = _optional(body, "valid_until_ms", int, "an integer")
        if valid_until_ms is not None and not 0 <= valid_until_ms <= CANONICAL_INT_MAX:
            raise _invalid(
                f"'valid_until_ms' must be a time in milliseconds from 0 to {CANONICAL_INT_MAX}"
            )
        if user_id == admin_id:
            raise _invalid("an admin may not use the admin API to log in as themselves")
        row = await self._existing(user_id)
        if row.deactivated:
            raise _invalid(f"{user_id} is deactivated: reactivate the account first")
        if user_id in self._system_users:
            raise _invalid(
                f"{user_id} is the account the server sends its notices as: it is not logged in as"
            )
        return await self._accounts.issue_puppet_token(admin_id, user_id, expires_ts=valid_until_ms)

    async def is_admin(self, user_id: str) -> bool:
        return (await self._existing(user_id)).admin

    async def set_admin(self, admin_id: str, user_id: str, admin: bool) -> None:
        """Grant or take away admin rights (not one's own)."""
        if user_id == admin_id and not admin:
            raise _invalid("an admin may not take away their own admin rights")
        await self._existing(user_id)
        await self._write_admin(user_id, admin)

    async def _write_admin(self, user_id: str, admin: bool) -> None:
        # Tokens cached with the old flag go.
        await self._store.set_admin(user_id, admin)
        self._accounts.forget_tokens_of(user_id)

    async def _write_locked(self, user_id: str, locked: bool) -> None:
        await self._store.set_locked(user_id, locked)
        self._accounts.forget_tokens_of(user_id)

    async def _write_suspended(self, user_id: str, suspended: bool) -> None:
        await self._store.set_suspended(user_id, suspended)
        self._accounts.forget_tokens_of(user_id)

    # Account moderation: the spec's /admin/lock and /admin/suspend, and
    # Synapse's /suspend.

    async def _moderated(self, admin_id: str, user_id: str) -> UserRow:
        """The account an admin locks or suspends: a local, active one, not
        the admin's own nor another admin's (403, as the spec has it)."""
        row = await self._existing(user_id)
        if row.deactivated:
            raise _not_found(user_id)
        if user_id == admin_id:
            raise _forbidden("an admin may not lock or suspend their own account")
        if row.admin:
            raise _forbidden(f"{user_id} is an admin: take away their admin rights first")
        return row

    async def is_locked(self, user_id: str) -> bool:
        """Whether ``user_id`` is locked; 404 for no account or a deactivated one."""
        row = await self._existing(user_id)
        if row.deactivated:
            raise _not_found(user_id)
        return row.locked

    async def set_locked(self, admin_id: str, user_id: str, locked: bool) -> None:
        """Lock or unlock ``user_id``, an account other than an admin's."""
        row = await self._moderated(admin_id, user_id)
        if row.locked != locked:
            await self._write_locked(user_id, locked)

    async def is_suspended(self, user_id: str) -> bool:
        """Whether ``user_id`` is suspended; 404 for no account or a deactivated one."""
        row = await self._existing(user_id)
        if row.deactivated:
            raise _not_found(user_id)
        return row.suspended

    async def set_suspended(self, admin_id: str, user_id: str, suspended: bool) -> None:
        """Suspend ``user_id`` or lift the suspension, an account other than an admin's."""
        row = await self._moderated(admin_id, user_id)
        if row.suspended != suspended:
            await self._write_suspended(user_id, suspended)

    async def set_shadow_banned(self, user_id: str, shadow_banned: bool) -> None:
        """Shadow-ban ``user_id`` or lift the ban
        (``/_synapse/admin/v1/users/{userId}/shadow_ban``): 400 for another
        server's user, 404 for no account.

        As on Synapse, any account may be shadow-banned, an admin's or a
        deactivated one's too (the ban then holds if it is reactivated).
        """
        row = await self._existing(user_id)
        if row.shadow_banned != shadow_banned:
            await self._store.set_shadow_banned(user_id, shadow_banned)
            self._accounts.forget_tokens_of(user_id)

    async def whois(self, user_id: str) -> dict[str, Any]:
        """The user's devices and when each was last seen. Addresses and
        user agents are not kept here, so they are null."""
        await self._existing(user_id)
        devices = await self._store.devices_of(user_id)
        return {
            "user_id": user_id,
            "devices": {
                device.device_id: {
                    "sessions": [
                        {
                            "connections": [
                                {"ip": None, "last_seen": device.last_seen_ts, "user_agent": None}
                            ]
                        }
                    ]
                }
                for device in devices
            },
        }

    async def joined_rooms(self, user_id: str) -> dict[str, Any]:
        await self._existing(user_id)
        rooms = await self._store.joined_rooms_of(user_id)
        return {"joined_rooms": rooms, "total": len(rooms)}
