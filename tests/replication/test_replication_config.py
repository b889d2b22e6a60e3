"""The replication settings: a listener needs the shared secret."""

from __future__ import annotations

import pytest

from ranvier.config import Config, ConfigError


def test_a_replication_listener_needs_a_shared_secret() -> None:
    text = '[[listeners]]\ntype = "replication"\nport = 9093\n'
    with pytest.raises(ConfigError) as raised:
        Config.from_toml(text)
    assert raised.value.key == "replication.shared_secret"
    config = Config.from_toml(text + '[replication]\nshared_secret = "s"\n')
    (listener,) = config.listeners
    assert listener.type == "replication"
    assert listener.host == "127.0.0.1"
    assert not listener.uses_tls
    assert config.replication.retry_for_seconds == 60.0


def test_an_empty_secret_and_a_retry_time_of_nothing_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"replication\.shared_secret: must not be empty"):
        Config.from_toml('[replication]\nshared_secret = ""\n')
    with pytest.raises(ConfigError, match=r"replication\.retry_for_seconds"):
        Config.from_toml("[replication]\nretry_for_seconds = 0\n")


def test_tls_may_be_asked_for() -> None:
    config = Config.from_toml(
        '[[listeners]]\ntype = "replication"\nport = 9093\ntls = true\n'
        '[replication]\nshared_secret = "s"\n'
    )
    assert config.listeners[0].uses_tls
