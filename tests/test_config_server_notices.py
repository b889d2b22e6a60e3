"""The ``[server_notices]`` section: off by default, read from TOML, and a
bad localpart or avatar named by its key."""

from __future__ import annotations

import pytest

from ranvier.config import Config, ConfigError


def test_off_by_default_and_read_from_toml() -> None:
    assert Config.default().server_notices.system_mxid_localpart is None
    config = Config.from_toml(
        '[server_notices]\nsystem_mxid_localpart = "notices"\n'
        'system_mxid_display_name = "Notices"\nroom_name = "News"\n'
    )
    notices = config.server_notices
    assert (notices.system_mxid_localpart, notices.system_mxid_display_name) == (
        "notices",
        "Notices",
    )
    assert (notices.room_name, notices.system_mxid_avatar_url) == ("News", None)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('system_mxid_localpart = "Notices!"', "server_notices.system_mxid_localpart"),
        ('system_mxid_avatar_url = "https://x/a.png"', "server_notices.system_mxid_avatar_url"),
        ("room_names = 1", "server_notices.room_names"),
    ],
)
def test_a_bad_setting_is_named(line: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_toml(f"[server_notices]\n{line}\n")
    assert raised.value.key == key
