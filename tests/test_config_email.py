"""The ``[email]`` section: absent by default, read from TOML, and a bad
value named by its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ranvier.config import Config, ConfigError

_MINIMAL = '[email]\nsmtp_host = "mail.example.org"\nnotif_from = "Example <noreply@example.org>"\n'
_BASE = '[well_known]\nclient_base_url = "https://matrix.example.org"\n'


def test_absent_by_default() -> None:
    assert Config.default().email is None
    assert Config.from_toml(_BASE).email is None


def test_defaults_and_read_from_toml() -> None:
    default = Config.from_toml(_MINIMAL + _BASE).email
    assert default is not None
    assert (default.smtp_host, default.smtp_port) == ("mail.example.org", 25)
    assert (default.smtp_user, default.smtp_pass, default.ca_file) == (None, None, None)
    assert not default.require_transport_security
    assert not default.force_tls
    assert default.client_base_url is None
    assert default.validation_token_lifetime_seconds == 3600
    read = Config.from_toml(
        _MINIMAL + 'smtp_port = 465\nsmtp_user = "u"\nsmtp_pass = "p"\nforce_tls = true\n'
        'require_transport_security = true\nca_file = "/etc/ca.pem"\n'
        'client_base_url = "https://chat.example.org"\nvalidation_token_lifetime_seconds = 600\n'
        'app_name = "Example Chat"\nsmtp_timeout_seconds = 5\n'
    ).email
    assert read is not None
    assert (read.smtp_port, read.smtp_user, read.smtp_pass) == (465, "u", "p")
    assert read.force_tls
    assert read.require_transport_security
    assert read.ca_file == Path("/etc/ca.pem")
    assert read.client_base_url == "https://chat.example.org"
    assert (read.validation_token_lifetime_seconds, read.app_name) == (600, "Example Chat")
    assert read.smtp_timeout_seconds == 5


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("smtp_port = 0", "email.smtp_port"),
        ("smtp_port = 70000", "email.smtp_port"),
        ('smtp_pass = "p"', "email.smtp_pass"),
        ("validation_token_lifetime_seconds = 10", "email.validation_token_lifetime_seconds"),
        ('client_base_url = "ftp://x"', "email.client_base_url"),
        ("force_tls = 1", "email.force_tls"),
        ("smtp_timeout_seconds = 0", "email.smtp_timeout_seconds"),
        ("smtp_hots = 1", "email.smtp_hots"),
    ],
)
def test_a_bad_value_names_its_key(extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_toml(_MINIMAL + extra + "\n" + _BASE)
    assert caught.value.key == key


@pytest.mark.parametrize("notif_from", ["nobody", "", "a b@example.org", "@example.org"])
def test_notif_from_must_hold_an_address(notif_from: str) -> None:
    text = f'[email]\nsmtp_host = "h"\nnotif_from = "{notif_from}"\n' + _BASE
    with pytest.raises(ConfigError) as caught:
        Config.from_toml(text)
    assert caught.value.key == "email.notif_from"


def test_required_keys() -> None:
    for text, key in (
        ('[email]\nnotif_from = "a@b.c"\n', "email.smtp_host"),
        ('[email]\nsmtp_host = "h"\n', "email.notif_from"),
        ('[email]\nsmtp_host = " "\nnotif_from = "a@b.c"\n', "email.smtp_host"),
    ):
        with pytest.raises(ConfigError) as caught:
            Config.from_toml(text + _BASE)
        assert caught.value.key == key


def test_links_need_a_base_url() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_toml(_MINIMAL)
    assert caught.value.key == "email.client_base_url"
    own = Config.from_toml(_MINIMAL + 'client_base_url = "https://m.example.org"\n').email
    assert own is not None
    assert own.client_base_url == "https://m.example.org"
