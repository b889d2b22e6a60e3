from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _builders import ALICE, BOB, CAROL

from ranvier.protocol.events import Pdu
from ranvier.protocol.power_levels import (
    CREATOR_POWER_LEVEL,
    DEFAULT_LEVELS,
    get_creators,
    get_named_level,
    get_notification_level,
    get_send_level,
    get_user_power_level,
    parse_power_level,
)
from ranvier.protocol.room_versions import get_room_version
from ranvier.testing import RoomBuilder

LEGACY = json.loads(
    (
        Path(__file__).parent.parent / "data" / "spec-vectors" / "power-levels-legacy-values.json"
    ).read_text("utf-8")
)


@pytest.mark.parametrize("version", ["6", "7", "8", "9", "10", "11", "12"])
def test_string_levels_follow_the_spec_grammar_before_v10(version: str) -> None:
    rv = get_room_version(version)
    examples = LEGACY["string_integer_format"]["valid_examples_from_spec"]
    for text, value in examples.items():
        expected = value if int(version) < 10 else None
        assert parse_power_level(text, rv) == expected, text


@pytest.mark.parametrize("version", ["9", "10"])
@pytest.mark.parametrize(
    "value", ["", " ", "1.0", "1e2", "++1", "1_000", "\u0661\u0662", "0x10", True, None, [1], {}]
)
def test_values_that_are_never_levels(version: str, value: object) -> None:
    assert parse_power_level(value, get_room_version(version)) is None


def test_integers_are_levels_in_every_version() -> None:
    for version in ("6", "10", "12"):
        assert parse_power_level(-5, get_room_version(version)) == -5


def _room(version: str, levels: dict[str, Any] | None, **create: Any) -> tuple[Pdu, Pdu | None]:
    room = RoomBuilder(version, create_content=create)
    room.member(ALICE, "join")
    power_levels = room.power_levels(ALICE, content=levels) if levels is not None else None
    return room.create, power_levels


@pytest.mark.parametrize("version", ["6", "10", "11"])
def test_without_power_levels_the_creator_has_100(version: str) -> None:
    create, _ = _room(version, None)
    assert get_user_power_level(ALICE, power_levels=None, create=create) == 100
    assert get_user_power_level(BOB, power_levels=None, create=create) == 0


def test_before_v11_the_creator_is_named_in_content() -> None:
    create, _ = _room("10", None, creator=BOB)
    assert get_creators(create) == {BOB}
    assert get_user_power_level(BOB, power_levels=None, create=create) == 100
    assert get_user_power_level(ALICE, power_levels=None, create=create) == 0


def test_from_v11_the_creator_is_the_sender() -> None:
    create, _ = _room("11", None, creator=BOB, additional_creators=[CAROL])
    assert get_creators(create) == {ALICE}


def test_v12_creators_have_unlimited_power() -> None:
    create, power_levels = _room(
        "12", {"users": {BOB: 2**53 - 1}, "users_default": 10}, additional_creators=[CAROL, 5]
    )
    assert get_creators(create) == {ALICE, CAROL}
    for levels in (None, power_levels):
        assert get_user_power_level(ALICE, power_levels=levels, create=create) == (
            CREATOR_POWER_LEVEL
        )
        assert get_user_power_level(CAROL, power_levels=levels, create=create) == (
            CREATOR_POWER_LEVEL
        )
    assert get_user_power_level(BOB, power_levels=power_levels, create=create) == 2**53 - 1
    assert CREATOR_POWER_LEVEL > 2**53 - 1
    # Without power levels, everyone else has 0 (not 100: nobody is "the creator" there).
    assert get_user_power_level(BOB, power_levels=None, create=create) == 0
    assert get_user_power_level("@x:y", power_levels=power_levels, create=create) == 10


def test_user_levels_and_default() -> None:
    create, power_levels = _room("9", {"users": {ALICE: "100", BOB: " 7 "}, "users_default": "3"})
    assert get_user_power_level(ALICE, power_levels=power_levels, create=create) == 100
    assert get_user_power_level(BOB, power_levels=power_levels, create=create) == 7
    assert get_user_power_level(CAROL, power_levels=power_levels, create=create) == 3


def test_named_levels_and_their_defaults() -> None:
    assert DEFAULT_LEVELS == {
        "users_default": 0,
        "events_default": 0,
        "state_default": 50,
        "invite": 0,
        "kick": 50,
        "ban": 50,
        "redact": 50,
    }
    _, power_levels = _room("10", {"users": {ALICE: 100}, "ban": 70, "invite": 5})
    for name, default in DEFAULT_LEVELS.items():
        assert get_named_level(None, name) == default
    assert get_named_level(power_levels, "ban") == 70
    assert get_named_level(power_levels, "invite") == 5
    assert get_named_level(power_levels, "kick") == 50


def test_unreadable_named_level_falls_back_to_the_default() -> None:
    _, power_levels = _room("9", {"users": {ALICE: 100}, "kick": "lots"})
    assert get_named_level(power_levels, "kick") == 50


def test_send_levels() -> None:
    _, power_levels = _room(
        "10",
        {"users": {}, "events": {"m.room.name": 20}, "events_default": 1, "state_default": 40},
    )
    assert get_send_level(power_levels, "m.room.name", state=True) == 20
    assert get_send_level(power_levels, "m.room.topic", state=True) == 40
    assert get_send_level(power_levels, "m.room.message", state=False) == 1
    assert get_send_level(None, "m.room.topic", state=True) == 50
    assert get_send_level(None, "m.room.message", state=False) == 0


def test_notification_levels() -> None:
    _, power_levels = _room("10", {"users": {}, "notifications": {"room": 20}})
    assert get_notification_level(power_levels) == 20
    assert get_notification_level(power_levels, "other") == 50
    assert get_notification_level(None) == 50
