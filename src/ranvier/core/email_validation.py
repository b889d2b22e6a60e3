"""Proving that a user receives mail at an address: the homeserver's own
``requestToken`` / ``submit_token`` sessions (the spec's "homeserver
validates the email itself"), with the mail sent through the operator's
SMTP relay.

A ``requestToken`` draws a session ID and a random token, mails the
token (as a link, and as a code to type) to the address, then stores the
session with the token's SHA-256. The user proves the address by
submitting the token, with the session ID and the client's secret: the
client at ``submit_url`` (JSON), or the browser at the link in the mail
(an HTML page). What the validated session is then good for is
:mod:`ranvier.core.threepids`'s.

Invariants
----------

* **No mail, no session.** The mail is sent before the session is
  written: a mail the relay refuses leaves nothing, and the client, told
  500, may retry with the same ``send_attempt``. (A session whose write
  fails after its mail went out is a mail with a dead link: the user asks
  again.)
* **One mail per attempt.** A repeat of a ``requestToken`` with the same
  client secret and address and a ``send_attempt`` no higher than the
  session's answers the same ``sid`` and sends nothing (the spec's rule
  for retried requests); a higher one mails a new token for the same
  ``sid``, the old token no longer working.
* **Addresses are compared in canonical form** (the spec's appendix): the
  domain lower-cased and the whole address case-folded, so that
  ``Strauß@Example.com`` and ``strauss@example.com`` are one address.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Final, Literal, Protocol

from ranvier.errors import MatrixError
from ranvier.storage.threepids import NewValidationSession, ValidationSession

__all__ = [
    "EMAIL",
    "SUBMIT_TOKEN_PATH",
    "EmailValidation",
    "MailNotSentError",
    "MailSender",
    "Purpose",
    "ValidationStore",
    "canonical_email",
    "check_client_secret",
    "check_request",
]

EMAIL: Final = "email"
#: Where tokens are submitted (``submit_url``) and where the mails' links
#: lead, on the client API's base URL.
SUBMIT_TOKEN_PATH: Final = "/_ranvier/client/email/submit_token"

#: What a session is asked for: the mails say so.
Purpose = Literal["add", "reset", "register"]

_CLIENT_SECRET: Final = re.compile(r"[0-9a-zA-Z.=_-]{1,255}")
_TOKEN_ALPHABET: Final = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
_TOKEN_LENGTH: Final = 32
#: RFC 5321's limit on a path, less its angle brackets.
_MAX_ADDRESS: Final = 254
_MAX_SEND_ATTEMPT: Final = 2**53 - 1


class MailNotSentError(Exception):
    """The relay did not take a mail; the message says why, for the logs."""


class MailSender(Protocol):
    """Hands one mail to the operator's relay (:class:`ranvier.smtp.SmtpMailer`);
    raises :class:`MailNotSentError`."""

    async def send(self, message: EmailMessage) -> None: ...


class ValidationStore(Protocol):
    """:class:`ranvier.storage.threepids.ThreepidStorage`."""

    async def open_session(
        self, medium: str, address: str, client_secret: str, *, now_ms: int
    ) -> ValidationSession | None: ...

    async def save_session(self, session: NewValidationSession) -> str: ...

    async def validate_session(
        self, sid: str, client_secret: str, token_hash: bytes, *, now_ms: int
    ) -> tuple[str, str | None]: ...


def canonical_email(address: str) -> str:
    """``address`` as the spec's appendix has it compared; 400
    ``M_INVALID_PARAM`` for what is not a bare ``user@domain``."""
    stripped = address.strip()
    local, at, domain = stripped.rpartition("@")
    if (
        not (local and at and domain)
        or len(stripped) > _MAX_ADDRESS
        or any(ch.isspace() or ch in "<>,;\"'()[]\\" or ord(ch) < 32 for ch in stripped)
        or "@" in local
    ):
        raise MatrixError(
            f"{address!r} is not an e-mail address", errcode="M_INVALID_PARAM", http_status=400
        )
    return f"{local.casefold()}@{domain.lower().casefold()}"


def check_client_secret(client_secret: str) -> None:
    """400 ``M_INVALID_PARAM`` unless the secret has the spec's grammar."""
    if not _CLIENT_SECRET.fullmatch(client_secret):
        raise MatrixError(
            "'client_secret' must be 1 to 255 of 0-9 a-z A-Z . = _ -",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )


def check_request(client_secret: str, send_attempt: int) -> None:
    """400 ``M_INVALID_PARAM`` for a ``requestToken``'s bad secret or attempt."""
    check_client_secret(client_secret)
    if not 0 <= send_attempt <= _MAX_SEND_ATTEMPT:
        raise MatrixError(
            "'send_attempt' must be a non-negative integer",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )


@dataclass(frozen=True, slots=True)
class _Mail:
    subject: str
    intro: str
    after: str


class EmailValidation:
    """Sends validation tokens and takes them back; see the module's doc.

    ``base_url`` is the client API as users reach it (links and
    ``submit_url`` are built on it); ``notif_from`` the mails' From;
    ``app_name`` what the mails call the service.
    """

    def __init__(
        self,
        store: ValidationStore,
        mailer: MailSender,
        *,
        server_name: str,
        base_url: str,
        notif_from: str,
        app_name: str,
        token_lifetime_ms: int,
        wall_clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self._store = store
        self._mailer = mailer
        self._server_name = server_name
        self._submit_url = base_url.rstrip("/") + SUBMIT_TOKEN_PATH
        self._from = notif_from
        self._app_name = app_name
        self._lifetime_ms = token_lifetime_ms
        #: Wall-clock milliseconds; tests replace it to expire sessions.
        self.clock_ms = wall_clock_ms if wall_clock_ms is not None else _wall_clock_ms

    @property
    def submit_url(self) -> str:
        """Where clients submit tokens (``submit_url`` of ``requestToken``)."""
        return self._submit_url

    async def request_token(
        self,
        address: str,
        client_secret: str,
        send_attempt: int,
        *,
        next_link: str | None,
        purpose: Purpose,
    ) -> str:
        """Mail a token for ``address`` (canonical already) unless this
        attempt was mailed before; the session's ``sid``. Raises 500
        ``M_UNKNOWN`` when the relay does not take the mail."""
        check_request(client_secret, send_attempt)
        now = self.clock_ms()
        existing = await self._store.open_session(EMAIL, address, client_secret, now_ms=now)
        if existing is not None and send_attempt <= existing.send_attempt:
            return existing.sid
        sid = existing.sid if existing is not None else secrets.token_urlsafe(18)
        token = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(_TOKEN_LENGTH))
        message = self._message(address, sid, client_secret, token, purpose)
        try:
            await self._mailer.send(message)
        except MailNotSentError as exc:
            raise MatrixError(
                f"the mail to {address} could not be sent; try again later",
                errcode="M_UNKNOWN",
                http_status=500,
            ) from exc
        return await self._store.save_session(
            NewValidationSession(
                sid=sid,
                medium=EMAIL,
                address=address,
                client_secret=client_secret,
                token_hash=_token_hash(token),
                send_attempt=send_attempt,
                next_link=next_link,
                created_ts=now,
                expires_ts=now + self._lifetime_ms,
            )
        )

    async def submit_token(self, sid: str, client_secret: str, token: str) -> str | None:
        """Mark the session validated; its ``next_link``. Raises 400
        ``M_INVALID_PARAM`` (no such session for this secret),
        ``M_SESSION_EXPIRED`` or ``M_TOKEN_INCORRECT``: the codes of the
        Identity Service API's ``submitToken``, which the spec has ours share."""
        outcome, next_link = await self._store.validate_session(
            sid, client_secret, _token_hash(token), now_ms=self.clock_ms()
        )
        if outcome == "validated":
            return next_link
        if outcome == "expired":
            raise MatrixError(
                "the validation session has expired: ask for a new mail",
                errcode="M_SESSION_EXPIRED",
                http_status=400,
            )
        if outcome == "incorrect":
            raise MatrixError(
                "the token is not the one mailed for this session",
                errcode="M_TOKEN_INCORRECT",
                http_status=400,
            )
        raise MatrixError(
            "no validation session has this sid and client_secret",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )

    def _message(
        self, address: str, sid: str, client_secret: str, token: str, purpose: Purpose
    ) -> EmailMessage:
        query = urllib.parse.urlencode({"sid": sid, "client_secret": client_secret, "token": token})
        link = f"{self._submit_url}?{query}"
        minutes = self._lifetime_ms // 60_000
        mail = _MAILS[purpose]
        message = EmailMessage()
        message["From"] = self._from
        message["To"] = _address_header(address)
        message["Subject"] = f"[{self._app_name}] {mail.subject}"
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain=parseaddr(self._from)[1].rpartition("@")[2])
        message.set_content(
            f"{mail.intro.format(app=self._app_name, server=self._server_name)}\n\n"
            f"To confirm, open this link:\n\n{link}\n\n"
            f"or enter this code where you were asked for it: {token}\n\n"
            f"{mail.after}\n\n"
            f"The link and the code work for {minutes} minutes. If you did not ask"
            " for this, ignore this mail: nothing changes without them.\n"
        )
        return message


_MAILS: Final[dict[Purpose, _Mail]] = {
    "add": _Mail(
        "Confirm your e-mail address",
        "Someone asked to add this address to a {app} account on {server}.",
        "Once confirmed, the address can be used to reset the account's password.",
    ),
    "register": _Mail(
        "Confirm your e-mail address",
        "Someone asked to register a {app} account on {server} with this address.",
        "Once confirmed, go back to your client to finish registering.",
    ),
    "reset": _Mail(
        "Reset your password",
        "Someone asked to reset the password of the {app} account on {server}"
        " that this address belongs to.",
        "Once confirmed, go back to your client to choose the new password.",
    ),
}


def _address_header(address: str) -> Address:
    local, _, domain = address.rpartition("@")
    return Address(username=local, domain=domain)


def _token_hash(token: str) -> bytes:
    """A token is random (about 187 bits): a fast hash keeps it unusable from the table."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000
