"""A test homeserver that sends mail, to a stand-in SMTP server over
STARTTLS from a test CA; and reading the token out of the mails."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import trio

from ranvier.config import (
    EmailConfig,
    ListenerConfig,
    RateLimitConfig,
    ReplicationConfig,
    WellKnownConfig,
)
from ranvier.testing.homeserver import TestHomeserver, config_for_tests, open_test_homeserver
from ranvier.testing.network import Pki
from ranvier.testing.smtp import FakeSmtpServer, ReceivedMail

#: What the links in mails are built on; tests follow them to the test server.
BASE_URL = "https://matrix.example.org"
SUBMIT_PATH = "/_ranvier/client/email/submit_token"
_LINK = re.compile(r"https://\S+")
_CODE = re.compile(r"enter this code where you were asked for it: (\S+)")


@dataclass(frozen=True)
class Mailed:
    """What a validation mail carries."""

    mail: ReceivedMail
    link: str
    token: str
    sid: str
    client_secret: str

    @property
    def local_link(self) -> str:
        """The link's path and query, to open on the test server."""
        parts = urllib.parse.urlsplit(self.link)
        return f"{parts.path}?{parts.query}"


def read_mail(mail: ReceivedMail) -> Mailed:
    text = mail.text()
    link = _LINK.search(text)
    code = _CODE.search(text)
    assert link is not None, text
    assert code is not None, text
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(link[0]).query)
    assert query["token"] == [code[1]]
    return Mailed(mail, link[0], code[1], query["sid"][0], query["client_secret"][0])


@asynccontextmanager
async def mailing_homeserver(
    tmp_path: Path,
    nursery: trio.Nursery,
    *,
    smtp: FakeSmtpServer | None = None,
    rate_limits: bool = False,
    extra_listeners: tuple[ListenerConfig, ...] = (),
    replication: ReplicationConfig | None = None,
) -> AsyncIterator[tuple[TestHomeserver, FakeSmtpServer]]:
    """A test homeserver whose ``[email]`` names a stand-in SMTP server
    that offers STARTTLS (``smtp``, or a new one) and asks for a login;
    with ``extra_listeners`` and ``replication`` for workers."""
    pki = Pki.create(tmp_path, names=("localhost",))
    if smtp is None:
        smtp = FakeSmtpServer(users={"mailer": "s3cret"})
    smtp.starttls = pki.server_context("localhost")
    port = await smtp.start(nursery)
    config = config_for_tests(tmp_path / "hs")
    config = msgspec.structs.replace(
        config,
        email=EmailConfig(
            smtp_host="localhost",
            smtp_port=port,
            smtp_user="mailer" if smtp.users else None,
            smtp_pass="s3cret" if smtp.users else None,
            require_transport_security=True,
            ca_file=pki.ca_file,
            notif_from="Example Chat <noreply@example.org>",
            app_name="Example Chat",
            smtp_timeout_seconds=30,
        ),
        well_known=WellKnownConfig(client_base_url=BASE_URL),
        ratelimit=RateLimitConfig(enabled=rate_limits, trust_x_forwarded_for=True),
        listeners=(*config.listeners, *extra_listeners),
        replication=replication if replication is not None else config.replication,
    )
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs:
        yield hs, smtp


async def open_link(http: httpx.AsyncClient, mailed: Mailed) -> httpx.Response:
    """Open the mail's link as a browser would."""
    return await http.get(mailed.local_link)
