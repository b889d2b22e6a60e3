"""Application services' registration files: read, checked, and their
namespaces matched as the spec has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ranvier.config import Config, ConfigError
from ranvier.core.appservices import AppServices, load_app_services
from ranvier.errors import MatrixError
from ranvier.server import open_homeserver

IRC = """\
id: "IRC Bridge"
url: "http://127.0.0.1:1234"
as_token: "as-irc"
hs_token: "hs-irc"
sender_localpart: "_irc_bot"
namespaces:
  users:
    - exclusive: true
      regex: "@_irc_.*"
  aliases:
    - exclusive: false
      regex: "#_irc_.*"
  rooms:
    - exclusive: false
      regex: "!bridged.*"
rate_limited: false
protocols: ["irc"]
org.example.extension: 1
"""

LOGGER = """\
id: logger
url: null
as_token: as-log
hs_token: hs-log
sender_localpart: logger
namespaces:
  users:
    - exclusive: false
      regex: "@log_.*:example.org"
  aliases:
    - exclusive: true
      regex: "#logs_.*"
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _load(tmp_path: Path, *texts: str) -> AppServices:
    paths = [_write(tmp_path, f"as{index}.yaml", text) for index, text in enumerate(texts)]
    return load_app_services(paths, "example.org")


def test_a_registration_file_is_read(tmp_path: Path) -> None:
    services = _load(tmp_path, IRC, LOGGER)
    irc = services.by_as_token("as-irc")
    assert irc is not None
    assert irc is services.by_id("IRC Bridge")
    assert irc.sender == "@_irc_bot:example.org"
    assert irc.url == "http://127.0.0.1:1234"
    assert irc.hs_token == "hs-irc"
    assert irc.registration.rate_limited is False
    assert irc.registration.protocols == ["irc"]
    logger = services.by_id("logger")
    assert logger is not None
    assert logger.url is None
    assert logger.registration.rate_limited is True
    assert services.by_as_token("hs-irc") is None


def test_ephemeral_events_are_asked_for_by_either_key(tmp_path: Path) -> None:
    accepted = LOGGER.replace("id: logger", "id: a").replace("as-log", "as-a")
    older = LOGGER.replace("id: logger", "id: b").replace("as-log", "as-b")
    services = _load(
        tmp_path,
        IRC,
        accepted.replace("hs-log", "hs-a") + "receive_ephemeral: true\n",
        older.replace("hs-log", "hs-b") + "de.sorunome.msc2409.push_ephemeral: true\n",
    )
    asking = {service.id: service.receives_ephemeral for service in services}
    assert asking == {"IRC Bridge": False, "a": True, "b": True}


def test_no_files_no_services() -> None:
    services = load_app_services([], "example.org")
    assert not services
    assert services.by_as_token("anything") is None


def test_regexes_match_the_whole_id(tmp_path: Path) -> None:
    irc = _load(tmp_path, IRC).by_id("IRC Bridge")
    assert irc is not None
    assert irc.owns_user("@_irc_alice:example.org")
    assert irc.owns_user("@_irc_bot:example.org")
    # Not at the start: a search would find it, a full match does not.
    assert not irc.owns_user("@x_irc_alice:example.org")
    # Users of other servers are never a service's.
    assert not irc.owns_user("@_irc_alice:elsewhere.org")
    assert irc.is_interested_in_alias("#_irc_chan:example.org")
    assert not irc.is_interested_in_alias("#other_irc_chan:example.org")
    assert irc.is_interested_in_room_id("!bridged123:example.org")
    assert not irc.is_interested_in_room_id("!other:example.org")


def test_a_pattern_anchored_at_the_end_still_matches(tmp_path: Path) -> None:
    logger = _load(tmp_path, LOGGER).by_id("logger")
    assert logger is not None
    assert logger.owns_user("@log_1:example.org")
    assert not logger.owns_user("@log_1:example.org.evil")


def test_interest_in_events_and_rooms(tmp_path: Path) -> None:
    irc = _load(tmp_path, IRC).by_id("IRC Bridge")
    assert irc is not None
    message = {"type": "m.room.message", "sender": "@_irc_bob:example.org"}
    assert irc.is_interested_in_event(message)
    invite = {"type": "m.room.member", "sender": "@alice:example.org"}
    assert not irc.is_interested_in_event(invite)
    assert irc.is_interested_in_event({**invite, "state_key": "@_irc_bob:example.org"})
    # A non-member event's state key names nobody.
    assert not irc.is_interested_in_event(
        {"type": "m.room.topic", "sender": "@alice:example.org", "state_key": "@_irc_x:example.org"}
    )
    room = "!plain:example.org"
    assert irc.is_interested_in_room(room, members=["@_irc_bob:example.org"], aliases=[])
    assert irc.is_interested_in_room(room, members=[], aliases=["#_irc_x:example.org"])
    assert not irc.is_interested_in_room(room, members=["@alice:example.org"], aliases=[])


def test_exclusive_namespaces(tmp_path: Path) -> None:
    services = _load(tmp_path, IRC, LOGGER)
    irc, logger = services.by_id("IRC Bridge"), services.by_id("logger")
    assert irc is not None
    assert logger is not None
    assert services.user_owner("@_irc_x:example.org") is irc
    # Logger's users namespace is not exclusive.
    assert services.user_owner("@log_1:example.org") is None
    assert services.alias_owner("#logs_a:example.org") is logger
    assert services.alias_owner("#_irc_a:example.org") is None

    services.check_user_registration("@_irc_x:example.org", irc)
    services.check_user_registration("@log_1:example.org", None)
    for user_id, service in (
        ("@_irc_x:example.org", None),
        ("@_irc_x:example.org", logger),
        ("@alice:example.org", irc),
    ):
        with pytest.raises(MatrixError) as refused:
            services.check_user_registration(user_id, service)
        assert (refused.value.errcode, refused.value.http_status) == ("M_EXCLUSIVE", 400)

    services.check_alias_change("@logger:example.org", "#logs_a:example.org")
    services.check_alias_change("@alice:example.org", "#_irc_a:example.org")
    with pytest.raises(MatrixError) as refused:
        services.check_alias_change("@alice:example.org", "#logs_a:example.org")
    assert refused.value.errcode == "M_EXCLUSIVE"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (IRC.replace('as_token: "as-irc"\n', ""), "as_token", "required key is missing"),
        (IRC.replace('url: "http://127.0.0.1:1234"\n', ""), "url", "required key is missing"),
        (IRC.replace("rate_limited: false", "rate_limited: 3"), "rate_limited", "expected bool"),
        (
            IRC.replace('regex: "!bridged.*"', 'regex: "!(unclosed"'),
            "namespaces.rooms[0].regex",
            "not a regular expression",
        ),
        (
            IRC.replace('- exclusive: true\n      regex: "@_irc_.*"', '- regex: "@_irc_.*"'),
            "namespaces.users[0].exclusive",
            "required key is missing",
        ),
        (IRC.replace('"_irc_bot"', '"Not Valid"'), "sender_localpart", "not a user ID"),
        (IRC.replace('"http://127.0.0.1:1234"', '"ftp://x"'), "url", "http"),
        (IRC.replace('"http://127.0.0.1:1234"', '"http:///path"'), "url", "with a host"),
        (IRC.replace('"http://127.0.0.1:1234"', '"http://[::1"'), "url", "with a host"),
        (IRC.replace('id: "IRC Bridge"', 'id: ""'), "id", "must not be empty"),
    ],
)
def test_a_bad_file_names_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as refused:
        load_app_services([path], "example.org")
    assert refused.value.source == str(path)
    assert refused.value.key == key
    assert problem in refused.value.problem
    assert str(path) in str(refused.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("id: [unclosed", "not valid YAML"), ("- a list\n", "mapping")],
)
def test_a_file_that_is_not_a_registration(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as refused:
        load_app_services([path], "example.org")
    assert refused.value.source == str(path)
    assert problem in str(refused.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_app_services([tmp_path / "nowhere.yaml"], "example.org")
    assert "cannot read" in str(refused.value)


@pytest.mark.parametrize(
    ("replace", "key"),
    [
        (("as-log", "as-irc"), "as_token"),
        (("hs-log", "hs-irc"), "hs_token"),
        (("id: logger", 'id: "IRC Bridge"'), "id"),
    ],
)
def test_two_services_may_not_share_an_identity(
    tmp_path: Path, replace: tuple[str, str], key: str
) -> None:
    first = _write(tmp_path, "irc.yaml", IRC)
    second = _write(tmp_path, "log.yaml", LOGGER.replace(*replace))
    with pytest.raises(ConfigError) as refused:
        load_app_services([first, second], "example.org")
    assert refused.value.key == key
    assert refused.value.source == str(second)
    assert str(first) in refused.value.problem


def test_the_config_key_lists_files(tmp_path: Path) -> None:
    config = Config.from_toml('app_service_config_files = ["a.yaml", "b.yaml"]')
    assert config.app_service_config_files == (Path("a.yaml"), Path("b.yaml"))
    assert Config.default().app_service_config_files == ()


async def test_a_server_with_a_bad_file_does_not_start(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.yaml", IRC.replace('hs_token: "hs-irc"\n', ""))
    config = Config(data_dir=tmp_path / "data", listeners=(), app_service_config_files=(path,))
    with pytest.raises(ConfigError) as refused:
        async with open_homeserver(config):
            pass
    assert refused.value.source == str(path)
    assert refused.value.key == "hs_token"
