"""The ``[housekeeping]`` section: safe defaults, read from TOML, and a bad
value named by its key."""

from __future__ import annotations

import pytest

from ranvier.config import Config, ConfigError


def test_defaults_and_read_from_toml() -> None:
    default = Config.default().housekeeping
    assert default.enabled
    assert (default.interval_seconds, default.batch_rows) == (3600, 1000)
    assert (default.federation_transaction_hours, default.client_transaction_days) == (24, 7)
    assert (default.prune_redacted_content, default.redaction_retention_days) == (True, 7)
    config = Config.from_toml(
        "[housekeeping]\ninterval_seconds = 600\nfederation_transaction_hours = 48\n"
        "client_transaction_days = 30\nbatch_rows = 500\nenabled = false\n"
        "prune_redacted_content = false\nredaction_retention_days = 0\n"
    )
    read = config.housekeeping
    assert not read.enabled
    assert (read.interval_seconds, read.batch_rows) == (600, 500)
    assert (read.federation_transaction_hours, read.client_transaction_days) == (48, 30)
    assert (read.prune_redacted_content, read.redaction_retention_days) == (False, 0)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("interval_seconds = 1", "housekeeping.interval_seconds"),
        ("client_transaction_days = 0", "housekeeping.client_transaction_days"),
        ("federation_transaction_hours = 0", "housekeeping.federation_transaction_hours"),
        ("batch_rows = 10", "housekeeping.batch_rows"),
        ("redaction_retention_days = -1", "housekeeping.redaction_retention_days"),
        ("prune_redacted_content = 1", "housekeeping.prune_redacted_content"),
        ("batch_row = 1000", "housekeeping.batch_row"),
    ],
)
def test_a_bad_setting_is_named(line: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_toml(f"[housekeeping]\n{line}\n")
    assert raised.value.key == key
