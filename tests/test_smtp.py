"""The SMTP client against a stand-in SMTP server on loopback."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import pytest
import trio

from ranvier.smtp import SmtpError, SmtpSettings, dot_stuff, send_mail
from ranvier.testing.network import Pki
from ranvier.testing.smtp import FakeSmtpServer


def _message(body: str = "Hello.\n", *, to: str = "alice@example.org") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Ranvier <noreply@example.org>"
    message["To"] = to
    message["Subject"] = "Votre mot de passe réinitialisé"
    message.set_content(body)
    return message


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path, names=("localhost",))


def _settings(port: int, pki: Pki | None = None, **kw: object) -> SmtpSettings:
    context = None if pki is None else pki.client_context()
    return SmtpSettings(
        host="localhost",
        port=port,
        ssl_context=context,
        timeout_seconds=kw.pop("timeout_seconds", 10.0),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_dot_stuffing() -> None:
    assert dot_stuff(b".a\r\nb\r\n.\r\n..c\r\n") == b"..a\r\nb\r\n..\r\n...c\r\n"
    assert dot_stuff(b"plain\r\n") == b"plain\r\n"


async def test_plain_delivery(nursery: trio.Nursery) -> None:
    smtp = FakeSmtpServer()
    port = await smtp.start(nursery)
    await send_mail(_settings(port), _message())
    mail = await smtp.next()
    assert (mail.sender, mail.recipients) == ("noreply@example.org", ["alice@example.org"])
    assert not mail.encrypted
    assert mail.message["Subject"] == "Votre mot de passe réinitialisé"
    # Non-ASCII headers travel as encoded words.
    assert b"=?utf-8?" in mail.wire_data
    assert mail.text() == "Hello.\n"
    assert smtp.commands[0] == "EHLO localhost"
    assert smtp.commands[-1] == "QUIT"


async def test_lines_starting_with_a_dot_are_stuffed(nursery: trio.Nursery) -> None:
    smtp = FakeSmtpServer()
    port = await smtp.start(nursery)
    body = ".first\nmiddle\n.\n..two\nlast\n"
    await send_mail(_settings(port), _message(body))
    mail = await smtp.next()
    assert b"\r\n..first\r\n" in mail.wire_data
    assert b"\r\n..\r\n" in mail.wire_data
    assert b"\r\n...two\r\n" in mail.wire_data
    assert mail.text() == body


async def test_starttls_is_used_when_offered(nursery: trio.Nursery, pki: Pki) -> None:
    smtp = FakeSmtpServer(starttls=pki.server_context("localhost"))
    port = await smtp.start(nursery)
    await send_mail(_settings(port, pki, starttls_required=True), _message())
    mail = await smtp.next()
    assert mail.encrypted
    assert "STARTTLS" in smtp.commands
    # Greeted again once encrypted, as RFC 3207 asks.
    assert smtp.commands.count("EHLO localhost") == 2


async def test_starttls_required_but_not_offered(nursery: trio.Nursery) -> None:
    smtp = FakeSmtpServer()
    port = await smtp.start(nursery)
    with pytest.raises(SmtpError, match="does not offer STARTTLS"):
        await send_mail(_settings(port, starttls_required=True), _message())
    assert smtp.received == []
    assert not any(command.startswith("MAIL") for command in smtp.commands)


async def test_a_certificate_from_an_unknown_ca_is_refused(
    nursery: trio.Nursery, pki: Pki, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = Pki.create(tmp_path / "other", names=("localhost",))
    smtp = FakeSmtpServer(starttls=other.server_context("localhost"))
    port = await smtp.start(nursery)
    with pytest.raises(SmtpError, match="TLS with the SMTP server"):
        await send_mail(_settings(port, pki), _message())
    assert smtp.received == []


async def test_implicit_tls(nursery: trio.Nursery, pki: Pki) -> None:
    smtp = FakeSmtpServer(implicit_tls=pki.server_context("localhost"))
    port = await smtp.start(nursery)
    await send_mail(_settings(port, pki, implicit_tls=True), _message())
    mail = await smtp.next()
    assert mail.encrypted
    assert "STARTTLS" not in smtp.commands


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_auth(nursery: trio.Nursery, pki: Pki, mechanism: str) -> None:
    smtp = FakeSmtpServer(
        starttls=pki.server_context("localhost"),
        users={"mailer": "s3cret"},
        auth_mechanisms=(mechanism,),
    )
    port = await smtp.start(nursery)
    await send_mail(_settings(port, pki, user="mailer", password="s3cret"), _message())
    mail = await smtp.next()
    assert mail.user == "mailer"
    assert any(command.startswith(f"AUTH {mechanism}") for command in smtp.commands)


async def test_a_wrong_password_is_an_error(nursery: trio.Nursery, pki: Pki) -> None:
    smtp = FakeSmtpServer(starttls=pki.server_context("localhost"), users={"mailer": "s3cret"})
    port = await smtp.start(nursery)
    with pytest.raises(SmtpError, match="refused AUTH PLAIN: 535"):
        await send_mail(_settings(port, pki, user="mailer", password="wrong"), _message())
    assert smtp.received == []


async def test_no_password_in_the_clear(nursery: trio.Nursery) -> None:
    smtp = FakeSmtpServer(users={"mailer": "s3cret"})
    port = await smtp.start(nursery)
    with pytest.raises(SmtpError, match="not sent in the clear"):
        await send_mail(_settings(port, user="mailer", password="s3cret"), _message())
    assert not any(command.startswith("AUTH") for command in smtp.commands)


async def test_no_known_auth_mechanism(nursery: trio.Nursery, pki: Pki) -> None:
    smtp = FakeSmtpServer(
        starttls=pki.server_context("localhost"),
        users={"mailer": "s3cret"},
        auth_mechanisms=("CRAM-MD5",),
    )
    port = await smtp.start(nursery)
    with pytest.raises(SmtpError, match="offers CRAM-MD5"):
        await send_mail(_settings(port, pki, user="mailer", password="s3cret"), _message())


async def test_a_refused_recipient(nursery: trio.Nursery) -> None:
    smtp = FakeSmtpServer(refused_recipients={"nobody@example.org"})
    port = await smtp.start(nursery)
    with pytest.raises(SmtpError, match=r"refused RCPT TO nobody@example\.org: 550"):
        await send_mail(_settings(port), _message(to="nobody@example.org"))
    assert smtp.received == []
    assert "DATA" not in smtp.commands


@pytest.mark.parametrize("after", ["MAIL", "DATA", "DATA-END"])
async def test_a_server_that_hangs_up(nursery: trio.Nursery, after: str) -> None:
    smtp = FakeSmtpServer(hang_up_after=after)
    port = await smtp.start(nursery)
    with pytest.raises(SmtpError, match=r"closed the connection|connection to the SMTP server"):
        await send_mail(_settings(port), _message())
    assert smtp.received == []


async def test_a_server_that_never_answers(nursery: trio.Nursery) -> None:
    smtp = FakeSmtpServer(stall_after="MAIL")
    port = await smtp.start(nursery)
    with pytest.raises(SmtpError, match=r"did not finish within 2 s"):
        await send_mail(_settings(port, timeout_seconds=2), _message())
    assert smtp.received == []
    # It was the silence that ended it, not a slow start.
    assert smtp.commands[-1] == "MAIL FROM:<noreply@example.org>"


async def test_nobody_listening() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(SmtpError, match="cannot connect"):
        await send_mail(_settings(port), _message())


async def test_a_non_ascii_address_needs_smtputf8(nursery: trio.Nursery) -> None:
    smtp = FakeSmtpServer(smtputf8=False)
    port = await smtp.start(nursery)
    with pytest.raises(SmtpError, match="SMTPUTF8"):
        await send_mail(_settings(port), _message(to="strauß@example.org"))
    accepting = FakeSmtpServer()
    port = await accepting.start(nursery)
    await send_mail(_settings(port), _message(to="strauß@example.org"))
    mail = await accepting.next()
    assert mail.recipients == ["strauß@example.org"]
    assert any(c.endswith(" SMTPUTF8") for c in accepting.commands if c.startswith("MAIL"))
