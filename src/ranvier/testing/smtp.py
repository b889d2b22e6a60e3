"""An SMTP server to test mail against: it speaks enough of RFC 5321 for
a client that relays (EHLO, STARTTLS, AUTH PLAIN and LOGIN, MAIL, RCPT,
DATA, QUIT) on 127.0.0.1, keeps every mail it takes, and misbehaves as the
test tells it (refusing a recipient, hanging up, never answering).

    smtp = FakeSmtpServer(starttls=pki.server_context("localhost"))
    port = await smtp.start(nursery)
    ...  # the server under test sends a mail to localhost:port
    mail = await smtp.next()
    assert mail.recipients == ["alice@example.org"]
"""

from __future__ import annotations

import base64
import email.policy
import functools
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Final, cast

import trio

__all__ = ["FakeSmtpServer", "ReceivedMail"]

_HOSTNAME: Final = "smtp.test"


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """One mail taken: the envelope, DATA as it came over the wire
    (dot-stuffed), and the message parsed from it once unstuffed."""

    sender: str
    recipients: list[str]
    wire_data: bytes
    message: EmailMessage
    #: Whether the session was encrypted (STARTTLS or TLS from the start).
    encrypted: bool
    #: The user who logged in (AUTH), if any.
    user: str | None

    def text(self) -> str:
        """The message's plain-text body."""
        part = self.message.get_body(("plain",))
        assert part is not None, "the mail has no text part"
        return str(cast(EmailMessage, part).get_content())


class _Hangup(Exception):
    """The session ends here, as the test asked."""


@dataclass
class FakeSmtpServer:
    """An SMTP server on loopback; :meth:`start` serves it.

    ``starttls`` offers STARTTLS with that server context; ``implicit_tls``
    speaks TLS from the first byte instead. ``users`` (name to password)
    makes it offer ``auth_mechanisms`` and refuse mail until one logs in.
    A recipient in ``refused_recipients`` is refused (550). After the
    command named in ``hang_up_after`` (``"MAIL"``, ``"DATA"``...) the
    connection is closed without an answer; after ``stall_after`` nothing
    is answered at all, for ever.
    """

    starttls: ssl.SSLContext | None = None
    implicit_tls: ssl.SSLContext | None = None
    users: dict[str, str] | None = None
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    smtputf8: bool = True
    refused_recipients: set[str] = field(default_factory=set)
    hang_up_after: str | None = None
    stall_after: str | None = None
    #: Mails taken and not yet handed out by :meth:`next`.
    received: list[ReceivedMail] = field(default_factory=list)
    #: Every command line received, all sessions, in order (AUTH's secrets too).
    commands: list[str] = field(default_factory=list)
    port: int = 0
    _arrived: trio.Event = field(default_factory=trio.Event)

    async def start(self, nursery: trio.Nursery) -> int:
        """Serve on 127.0.0.1 until ``nursery`` ends; the port."""
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), self._serve, 0
        )
        self.port = int(listeners[0].socket.getsockname()[1])
        return self.port

    async def next(self) -> ReceivedMail:
        """The oldest mail not yet handed out, waiting for one if need be
        (bound the wait with a cancel scope)."""
        while not self.received:
            self._arrived = trio.Event()
            await self._arrived.wait()
        return self.received.pop(0)

    async def _serve(self, tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        try:
            if self.implicit_tls is not None:
                stream = trio.SSLStream(tcp, self.implicit_tls, server_side=True)
            await _Session(self, stream, encrypted=self.implicit_tls is not None).run()
        except (_Hangup, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def _took(self, mail: ReceivedMail) -> None:
        self.received.append(mail)
        self._arrived.set()


class _Session:
    def __init__(self, server: FakeSmtpServer, stream: trio.abc.Stream, *, encrypted: bool) -> None:
        self._server = server
        self._stream = stream
        self._buffer = bytearray()
        self._encrypted = encrypted
        self._user: str | None = None
        self._sender: str | None = None
        self._recipients: list[str] = []

    async def run(self) -> None:
        await self._reply(220, f"{_HOSTNAME} ESMTP ready")
        while True:
            line = (await self._line()).decode("utf-8", "replace")
            self._server.commands.append(line)
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == self._server.stall_after:
                await trio.sleep_forever()
            if verb == self._server.hang_up_after:
                raise _Hangup
            if verb == "QUIT":
                await self._reply(221, "bye")
                return
            await self._command(verb, arg)

    async def _command(self, verb: str, arg: str) -> None:
        server = self._server
        if verb == "EHLO":
            offered = []
            if server.starttls is not None and not self._encrypted:
                offered.append("STARTTLS")
            if server.users is not None:
                offered.append("AUTH " + " ".join(server.auth_mechanisms))
            if server.smtputf8:
                offered.append("SMTPUTF8")
            await self._reply(250, _HOSTNAME, *offered)
        elif verb == "STARTTLS" and server.starttls is not None and not self._encrypted:
            await self._reply(220, "go ahead")
            self._stream = trio.SSLStream(self._stream, server.starttls, server_side=True)
            self._encrypted = True
            self._user = self._sender = None
        elif verb == "AUTH" and server.users is not None:
            await self._auth(arg)
        elif verb == "MAIL":
            if server.users is not None and self._user is None:
                await self._reply(530, "authentication required")
                return
            self._sender = _angled(arg)
            self._recipients = []
            await self._reply(250, "ok")
        elif verb == "RCPT" and self._sender is not None:
            recipient = _angled(arg)
            if recipient in server.refused_recipients:
                await self._reply(550, f"no such user {recipient}")
                return
            self._recipients.append(recipient)
            await self._reply(250, "ok")
        elif verb == "DATA" and self._recipients:
            await self._data()
        else:
            await self._reply(502, f"{verb} not expected here")

    async def _auth(self, arg: str) -> None:
        users = self._server.users
        assert users is not None
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in self._server.auth_mechanisms:
            await self._reply(504, "unknown mechanism")
            return
        if mechanism == "PLAIN":
            _authzid, user, password = base64.b64decode(initial).decode().split("\0")
        else:
            await self._reply(334, base64.b64encode(b"Username:").decode())
            user = base64.b64decode(await self._line()).decode()
            await self._reply(334, base64.b64encode(b"Password:").decode())
            password = base64.b64decode(await self._line()).decode()
        if users.get(user) != password:
            await self._reply(535, "authentication failed")
            return
        self._user = user
        await self._reply(235, "authenticated")

    async def _data(self) -> None:
        await self._reply(354, "end with <CRLF>.<CRLF>")
        wire = bytearray()
        lines = []
        while True:
            line = await self._line()
            if line == b".":
                break
            wire += line + b"\r\n"
            lines.append(line[1:] if line.startswith(b".") else line)
        if self._server.hang_up_after == "DATA-END":
            raise _Hangup
        parsed = BytesParser(policy=email.policy.default).parsebytes(b"\n".join(lines) + b"\n")
        assert self._sender is not None
        self._server._took(
            ReceivedMail(
                self._sender,
                self._recipients,
                bytes(wire),
                parsed,
                self._encrypted,
                self._user,
            )
        )
        self._sender, self._recipients = None, []
        await self._reply(250, "queued")

    async def _reply(self, code: int, *lines: str) -> None:
        text = "".join(
            f"{code}{'-' if index < len(lines) - 1 else ' '}{line}\r\n"
            for index, line in enumerate(lines)
        )
        await self._stream.send_all(text.encode())

    async def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise _Hangup
            self._buffer += chunk


def _angled(arg: str) -> str:
    """The address of ``FROM:<a@b> SMTPUTF8`` or ``TO:<a@b>``."""
    start, end = arg.find("<"), arg.find(">")
    return arg[start + 1 : end]
