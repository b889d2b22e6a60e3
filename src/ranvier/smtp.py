"""Sending one mail through an SMTP server, on Trio (RFC 5321).

The server is the operator's relay, not the recipient's mail exchanger:
ranvier hands it every mail, and it does the delivery. One connection per
mail, for the few mails a homeserver sends (address validation, password
resets), so there is no pool to keep healthy.

What is spoken: EHLO; STARTTLS whenever the server offers it (and the
mail refused when ``starttls_required`` and it does not), or TLS from the
first byte with ``implicit_tls``; AUTH PLAIN, or LOGIN, when a user is
set (and never in the clear: a server that would take the password
unencrypted is refused, as the password would be exposed on the wire);
MAIL FROM, RCPT TO, DATA with its lines dot-stuffed; QUIT. The whole
exchange has one deadline, ``timeout_seconds``.

Every failure is an :class:`SmtpError` saying what went wrong in words an
operator can act on; the caller decides what its own client is told.
"""

from __future__ import annotations

import base64
import contextlib
import email.policy
import re
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Final

import trio

from ranvier.core.email_validation import MailNotSentError

__all__ = ["SmtpError", "SmtpMailer", "SmtpSettings", "dot_stuff", "send_mail"]

#: The longest reply line read; RFC 5321 allows 512 octets, servers send more.
_MAX_LINE: Final = 8192
_REPLY_LINE: Final = re.compile(rb"(\d{3})(?:([ -])(.*))?", re.DOTALL)


class SmtpError(MailNotSentError):
    """A mail could not be handed to the SMTP server: the message says why."""


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """How to reach the SMTP server (``[email]`` of the configuration)."""

    host: str
    port: int = 25
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    #: Send nothing unless the server offers STARTTLS.
    starttls_required: bool = False
    #: TLS from the first byte (port 465), no STARTTLS.
    implicit_tls: bool = False
    #: Checks the server's certificate; the system's CAs by default.
    ssl_context: ssl.SSLContext | None = None
    timeout_seconds: float = 30.0
    #: The name we greet with; any name will do for a relay.
    local_hostname: str = "localhost"


class SmtpMailer:
    """Sends each mail it is given through the relay ``settings`` name: a
    :class:`ranvier.core.email_validation.MailSender`."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    async def send(self, message: EmailMessage) -> None:
        await send_mail(self.settings, message)


def dot_stuff(data: bytes) -> bytes:
    """``data`` (lines ending CRLF) as DATA carries it: a line starting with
    a dot gets one more, so that no line of the mail reads as its end."""
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


async def send_mail(settings: SmtpSettings, message: EmailMessage) -> None:
    """Hand ``message`` to the SMTP server for its ``From`` and ``To``
    addresses; raise :class:`SmtpError` if the server does not take it."""
    sender = _single_address(message, "From")
    recipients = [address for _name, address in getaddresses(message.get_all("To", []))]
    if not recipients or not all("@" in address for address in recipients):
        raise SmtpError("the mail has no recipient address")
    # Headers as RFC 2047 encoded words, unless an address itself needs
    # UTF-8, which only a server offering SMTPUTF8 takes.
    utf8 = not (sender + "".join(recipients)).isascii()
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    data = message.as_bytes(policy=policy)
    with trio.move_on_after(settings.timeout_seconds) as scope:
        await _send(settings, sender, recipients, data, utf8=utf8)
    if scope.cancelled_caught:
        raise SmtpError(
            f"the SMTP server {settings.host}:{settings.port} did not finish within"
            f" {settings.timeout_seconds:g} s"
        )


def _single_address(message: EmailMessage, header: str) -> str:
    addresses = getaddresses(message.get_all(header, []))
    if len(addresses) != 1 or "@" not in addresses[0][1]:
        raise SmtpError(f"the mail needs one {header} address")
    return addresses[0][1]


async def _send(
    settings: SmtpSettings, sender: str, recipients: list[str], data: bytes, *, utf8: bool
) -> None:
    where = f"{settings.host}:{settings.port}"
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(settings.host, settings.port)
    except OSError as exc:
        raise SmtpError(f"cannot connect to the SMTP server {where}: {exc}") from None
    try:
        if settings.implicit_tls:
            stream = await _tls(stream, settings)
        session = _Session(stream, where)
        await session.expect(220, "greeting")
        extensions = await session.ehlo(settings.local_hostname)
        if not settings.implicit_tls:
            if "STARTTLS" in extensions:
                await session.command(b"STARTTLS", 220, "STARTTLS")
                if session.buffered:
                    # Sent before the TLS began, so anyone on the way could
                    # have: it must not be read as the server's.
                    raise SmtpError(f"the SMTP server {where} sent more after agreeing to STARTTLS")
                session = _Session(await _tls(session.stream, settings), where)
                extensions = await session.ehlo(settings.local_hostname)
            elif settings.starttls_required:
                raise SmtpError(f"the SMTP server {where} does not offer STARTTLS")
        encrypted = settings.implicit_tls or isinstance(session.stream, trio.SSLStream)
        if settings.user is not None:
            if not encrypted:
                raise SmtpError(
                    f"the SMTP server {where} offers no TLS: the password is not sent in the clear"
                )
            await _authenticate(session, extensions, settings.user, settings.password or "")
        if utf8 and "SMTPUTF8" not in extensions:
            raise SmtpError(f"the SMTP server {where} cannot take non-ASCII addresses (SMTPUTF8)")
        mail_from = f"MAIL FROM:<{sender}>" + (" SMTPUTF8" if utf8 else "")
        await session.command(mail_from.encode(), 250, "MAIL FROM")
        for recipient in recipients:
            await session.command(f"RCPT TO:<{recipient}>".encode(), 250, f"RCPT TO {recipient}")
        await session.command(b"DATA", 354, "DATA")
        await session.send(dot_stuff(data if data.endswith(b"\r\n") else data + b"\r\n") + b".\r\n")
        await session.expect(250, "the mail's content")
        # The mail is taken; a QUIT that goes wrong changes nothing.
        with contextlib.suppress(SmtpError, trio.BrokenResourceError, OSError):
            await session.command(b"QUIT", 221, "QUIT")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise SmtpError(f"the connection to the SMTP server {where} failed: {exc}") from None
    finally:
        await trio.aclose_forcefully(stream)


async def _tls(stream: trio.abc.Stream, settings: SmtpSettings) -> trio.SSLStream[trio.abc.Stream]:
    context = settings.ssl_context or ssl.create_default_context()
    tls = trio.SSLStream(stream, context, server_hostname=settings.host, https_compatible=True)
    try:
        await tls.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise SmtpError(
            f"TLS with the SMTP server {settings.host}:{settings.port} failed: {cause}"
        ) from None
    return tls


async def _authenticate(
    session: _Session, extensions: dict[str, str], user: str, password: str
) -> None:
    mechanisms = extensions.get("AUTH", "").upper().split()
    if "PLAIN" in mechanisms:
        credentials = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        await session.command(f"AUTH PLAIN {credentials}".encode(), 235, "AUTH PLAIN")
    elif "LOGIN" in mechanisms:
        await session.command(b"AUTH LOGIN", 334, "AUTH LOGIN")
        await session.command(base64.b64encode(user.encode()), 334, "AUTH LOGIN (user)")
        await session.command(base64.b64encode(password.encode()), 235, "AUTH LOGIN (password)")
    else:
        raise SmtpError(
            f"the SMTP server {session.where} offers no AUTH mechanism known here"
            f" (PLAIN, LOGIN): it offers {' '.join(mechanisms) or 'none'}"
        )


class _Session:
    """Replies read line by line off one stream (plain, or TLS after STARTTLS)."""

    def __init__(self, stream: trio.abc.Stream, where: str) -> None:
        self.stream = stream
        self.where = where
        self._buffer = bytearray()

    @property
    def buffered(self) -> bool:
        """Whether bytes were received beyond the last reply read."""
        return bool(self._buffer)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def command(self, line: bytes, code: int, what: str) -> list[str]:
        await self.send(line + b"\r\n")
        return await self.expect(code, what)

    async def ehlo(self, name: str) -> dict[str, str]:
        """The extensions the server offers, by upper-case keyword."""
        lines = await self.command(f"EHLO {name}".encode(), 250, "EHLO")
        extensions: dict[str, str] = {}
        for line in lines[1:]:
            keyword, _, params = line.partition(" ")
            extensions[keyword.upper()] = params
        return extensions

    async def expect(self, code: int, what: str) -> list[str]:
        """The lines of the next reply, which must have ``code``."""
        got, lines = await self._reply()
        if got != code:
            text = " / ".join(lines)
            raise SmtpError(f"the SMTP server {self.where} refused {what}: {got} {text}")
        return lines

    async def _reply(self) -> tuple[int, list[str]]:
        lines: list[str] = []
        while True:
            raw = await self._line()
            match = _REPLY_LINE.fullmatch(raw)
            if match is None:
                raise SmtpError(f"the SMTP server {self.where} sent a line that is not a reply")
            lines.append((match[3] or b"").decode("utf-8", "replace"))
            if match[2] != b"-":
                return int(match[1]), lines

    async def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line
            if len(self._buffer) > _MAX_LINE:
                raise SmtpError(f"the SMTP server {self.where} sent a reply line too long")
            chunk = await self.stream.receive_some(_MAX_LINE)
            if not chunk:
                raise SmtpError(f"the SMTP server {self.where} closed the connection")
            self._buffer += chunk
