"""E-mail addresses on accounts: adding one the user proved they receive
mail at, listing and deleting them, logging in with one, and resetting a
forgotten password through one.

An address is proved by a validation session
(:mod:`ranvier.core.email_validation`); this module decides what a
session may be asked for and what a validated one is good for:

* ``/account/3pid/email/requestToken`` mails a token only for an address
  on no account (400 ``M_THREEPID_IN_USE`` otherwise), and
  ``/account/3pid/add`` then puts the validated address on the requesting
  account, after the password (user-interactive authentication);
* ``/register/email/requestToken`` mails a token only for an address on
  no account too, and registering with ``m.login.email.identity`` then
  creates the account with the address on it, in one write;
* ``/account/password/email/requestToken`` mails a token only for an
  address on an account (400 ``M_THREEPID_NOT_FOUND`` otherwise), and
  ``/account/password`` with ``m.login.email.identity`` then sets that
  account's password, logging its devices out unless asked not to.

Either way the session is used up by what it proved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from ranvier.core.email_validation import (
    EMAIL,
    EmailValidation,
    canonical_email,
    check_client_secret,
    check_request,
)
from ranvier.errors import MatrixError
from ranvier.storage.accounts import NewAccount, NewDevice
from ranvier.storage.threepids import PasswordReset, UserThreepid

__all__ = ["PasswordResetter", "ThreepidStore", "Threepids"]


class ThreepidStore(Protocol):
    """:class:`ranvier.storage.threepids.ThreepidStorage`."""

    async def owner(self, medium: str, address: str) -> str | None: ...

    async def threepids_of(self, user_id: str) -> list[UserThreepid]: ...

    async def add_threepid(
        self, user_id: str, sid: str, client_secret: str, medium: str, *, now_ms: int
    ) -> Literal["added", "unvalidated", "in_use"]: ...

    async def create_account_with_threepid(
        self,
        account: NewAccount,
        device: NewDevice | None,
        sid: str,
        client_secret: str,
        medium: str,
        *,
        now_ms: int,
    ) -> Literal["created", "unvalidated", "in_use"]: ...

    async def delete_threepid(self, user_id: str, medium: str, address: str) -> bool: ...

    async def reset_password(
        self,
        sid: str,
        client_secret: str,
        medium: str,
        password_hash: str,
        *,
        logout_devices: bool,
        now_ms: int,
    ) -> PasswordReset | Literal["unvalidated", "no_account"]: ...


class PasswordResetter(Protocol):
    """:meth:`ranvier.core.accounts.Accounts.reset_password`."""

    async def reset_password(
        self,
        new_password: str,
        write: Callable[[str], Awaitable[tuple[str, int]]],
        *,
        logout_devices: bool,
    ) -> str: ...


def _auth_failed() -> MatrixError:
    return MatrixError(
        "no validated session has this sid and client_secret: open the link in the mail"
        " (or submit its token) first, within its lifetime",
        errcode="M_THREEPID_AUTH_FAILED",
        http_status=400,
    )


class Threepids:
    """Account e-mail addresses; see the module's doc."""

    def __init__(
        self, store: ThreepidStore, validation: EmailValidation, accounts: PasswordResetter
    ) -> None:
        self._store = store
        #: The mails and sessions (tests set its clock).
        self.validation = validation
        self._accounts = accounts

    @property
    def submit_url(self) -> str:
        return self.validation.submit_url

    async def request_add_token(
        self, address: str, client_secret: str, send_attempt: int, next_link: str | None
    ) -> str:
        """Mail a token to add ``address`` (canonical) to an account; the ``sid``."""
        return await self._request_for_unused(
            address, client_secret, send_attempt, next_link, purpose="add"
        )

    async def request_register_token(
        self, address: str, client_secret: str, send_attempt: int, next_link: str | None
    ) -> str:
        """Mail a token to register an account with ``address`` (canonical)."""
        return await self._request_for_unused(
            address, client_secret, send_attempt, next_link, purpose="register"
        )

    async def _request_for_unused(
        self,
        address: str,
        client_secret: str,
        send_attempt: int,
        next_link: str | None,
        *,
        purpose: Literal["add", "register"],
    ) -> str:
        """A mail to ``address``, which must be on no account yet; the ``sid``."""
        check_request(client_secret, send_attempt)
        if await self._store.owner(EMAIL, address) is not None:
            raise MatrixError(
                f"{address} is already on an account here",
                errcode="M_THREEPID_IN_USE",
                http_status=400,
            )
        return await self.validation.request_token(
            address, client_secret, send_attempt, next_link=next_link, purpose=purpose
        )

    def registering(
        self, sid: str, client_secret: str
    ) -> Callable[[NewAccount, NewDevice | None], Awaitable[None]]:
        """The write that creates an account with the session's validated
        address on it (``create`` of :meth:`ranvier.core.accounts.Accounts.register`)."""
        check_client_secret(client_secret)

        async def create(account: NewAccount, device: NewDevice | None) -> None:
            outcome = await self._store.create_account_with_threepid(
                account, device, sid, client_secret, EMAIL, now_ms=self.validation.clock_ms()
            )
            if outcome == "unvalidated":
                raise _auth_failed()
            if outcome == "in_use":
                raise MatrixError(
                    "the address was added to another account meanwhile",
                    errcode="M_THREEPID_IN_USE",
                    http_status=400,
                )

        return create

    async def request_reset_token(
        self, address: str, client_secret: str, send_attempt: int, next_link: str | None
    ) -> str:
        """Mail a token to reset the password of the account ``address`` is on."""
        check_request(client_secret, send_attempt)
        if await self._store.owner(EMAIL, address) is None:
            raise MatrixError(
                f"{address} is on no account here",
                errcode="M_THREEPID_NOT_FOUND",
                http_status=400,
            )
        return await self.validation.request_token(
            address, client_secret, send_attempt, next_link=next_link, purpose="reset"
        )

    async def submit_token(self, sid: str, client_secret: str, token: str) -> str | None:
        """Validate a session (see :meth:`EmailValidation.submit_token`)."""
        return await self.validation.submit_token(sid, client_secret, token)

    async def threepids_of(self, user_id: str) -> list[UserThreepid]:
        return await self._store.threepids_of(user_id)

    async def owner(self, address: str) -> str | None:
        """Whose account the e-mail ``address`` (canonical) is on."""
        return await self._store.owner(EMAIL, address)

    async def add(self, user_id: str, sid: str, client_secret: str) -> None:
        """Put the session's validated address on ``user_id``'s account;
        400 ``M_THREEPID_AUTH_FAILED`` or ``M_THREEPID_IN_USE``."""
        check_client_secret(client_secret)
        outcome = await self._store.add_threepid(
            user_id, sid, client_secret, EMAIL, now_ms=self.validation.clock_ms()
        )
        if outcome == "unvalidated":
            raise _auth_failed()
        if outcome == "in_use":
            raise MatrixError(
                "the address was added to another account meanwhile",
                errcode="M_THREEPID_IN_USE",
                http_status=400,
            )

    async def delete(self, user_id: str, medium: str, address: str) -> bool:
        """Take an address off ``user_id``'s account; False if not on it."""
        if medium == EMAIL:
            # An address that was never valid is on no account: not an error.
            with contextlib.suppress(MatrixError):
                address = canonical_email(address)
        return await self._store.delete_threepid(user_id, medium, address)

    async def reset_password(
        self, sid: str, client_secret: str, new_password: str, *, logout_devices: bool
    ) -> str:
        """Set the password of the account the session's address is on; whose it was."""
        check_client_secret(client_secret)

        async def write(password_hash: str) -> tuple[str, int]:
            outcome = await self._store.reset_password(
                sid,
                client_secret,
                EMAIL,
                password_hash,
                logout_devices=logout_devices,
                now_ms=self.validation.clock_ms(),
            )
            if outcome == "unvalidated":
                raise _auth_failed()
            if outcome == "no_account":
                raise MatrixError(
                    "the address is on no account any more",
                    errcode="M_THREEPID_NOT_FOUND",
                    http_status=400,
                )
            return outcome.user_id, outcome.devices_gone

        return await self._accounts.reset_password(
            new_password, write, logout_devices=logout_devices
        )
