"""Push rule evaluation against the spec's push module: its examples for
each condition, rule kinds and their order, and the actions' meaning."""

from __future__ import annotations

from typing import Any

import pytest

from ranvier.core.push_rules import default_push_rules
from ranvier.protocol.property_paths import property_path
from ranvier.protocol.push_evaluation import (
    PushContext,
    PushOutcome,
    evaluate_push_rules,
)

ALICE = "@alice:example.org"
ROOM = "!room:example.org"


def _context(
    *, name: str | None = "Alice Liddell", members: int = 3, notifiers: frozenset[str] = frozenset()
) -> PushContext:
    return PushContext(
        user_id=ALICE,
        display_name=name,
        member_count=members,
        may_notify=lambda sender, key: key == "room" and sender in notifiers,
    )


def _override(*conditions: dict[str, Any], actions: list[Any] | None = None) -> dict[str, Any]:
    rule = {"rule_id": "mine", "enabled": True, "conditions": list(conditions)}
    rule["actions"] = ["notify"] if actions is None else actions
    return {"override": [rule]}


def _matches(rules: dict[str, Any], event: dict[str, Any], **context: Any) -> bool:
    return evaluate_push_rules(rules, event, _context(**context)) is not None


def _message(body: str, **content: Any) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "room_id": ROOM,
        "sender": "@bob:example.org",
        "content": {"msgtype": "m.text", "body": body, **content},
    }


def _default(event: dict[str, Any], **context: Any) -> PushOutcome | None:
    return evaluate_push_rules(default_push_rules(ALICE), event, _context(**context))


# event_match


@pytest.mark.parametrize(
    ("topic", "matched"),
    [("Lunch plans", True), ("LUNCH", True), (" lunch", False), ("lunc", False), (None, False)],
)
def test_event_match_is_a_whole_value_case_insensitive_glob(topic: Any, matched: bool) -> None:
    rules = _override({"kind": "event_match", "key": "content.topic", "pattern": "lunc?*"})
    event = {"type": "m.room.topic", "state_key": "", "content": {"topic": topic}}
    assert _matches(rules, event) is matched


def test_event_match_on_an_absent_property_does_not_match_even_a_star() -> None:
    rules = _override({"kind": "event_match", "key": "content.topic", "pattern": "*"})
    assert not _matches(rules, {"type": "m.room.topic", "content": {}})
    assert _matches(rules, {"type": "m.room.topic", "content": {"topic": ""}})


@pytest.mark.parametrize(
    ("body", "matched"),
    [
        ("An example event.", True),
        ("exple", True),
        ("An exciting triple-whammy", True),
        ("counterexample", False),
        ("examples", False),
        ("an_example", False),
    ],
)
def test_event_match_on_the_body_matches_between_word_boundaries(body: str, matched: bool) -> None:
    rules = _override({"kind": "event_match", "key": "content.body", "pattern": "ex*ple"})
    assert _matches(rules, _message(body)) is matched


def test_glob_characters_of_regular_expressions_are_taken_literally() -> None:
    rules = _override({"kind": "event_match", "key": "content.topic", "pattern": "a.c"})
    assert _matches(rules, {"content": {"topic": "a.c"}})
    assert not _matches(rules, {"content": {"topic": "abc"}})


# event_property_is and event_property_contains


@pytest.mark.parametrize(("value", "matched"), [(True, True), ("true", False), (1, False)])
def test_event_property_is_matches_exactly_without_casting(value: Any, matched: bool) -> None:
    rules = _override({"kind": "event_property_is", "key": "content.m\\.federate", "value": True})
    event = {"type": "m.room.create", "content": {"m.federate": value}}
    assert _matches(rules, event) is matched


def test_event_property_is_tells_null_from_absent() -> None:
    rules = _override({"kind": "event_property_is", "key": "content.x", "value": None})
    assert _matches(rules, {"content": {"x": None}})
    assert not _matches(rules, {"content": {}})


@pytest.mark.parametrize(
    ("aliases", "matched"),
    [
        (["#somewhere:example.org", "#myroom:example.com"], True),
        ([":example.com"], False),
        ("#myroom:example.com", False),
    ],
)
def test_event_property_contains_matches_an_array_element_exactly(
    aliases: Any, matched: bool
) -> None:
    rules = _override(
        {
            "kind": "event_property_contains",
            "key": "content.alt_aliases",
            "value": "#myroom:example.com",
        }
    )
    event = {"type": "m.room.canonical_alias", "content": {"alt_aliases": aliases}}
    assert _matches(rules, event) is matched


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("content.body", ("content", "body")),
        ("content.m\\.mentions.room", ("content", "m.mentions", "room")),
        ("a\\\\b.c", ("a\\b", "c")),
        ("a\\xb", ("a\\xb",)),
    ],
)
def test_property_paths_split_at_unescaped_dots(key: str, path: tuple[str, ...]) -> None:
    assert property_path(key) == path


# contains_display_name, room_member_count, sender_notification_permission


@pytest.mark.parametrize(
    ("body", "matched"),
    [("hello alice liddell!", True), ("Alice Liddells", False), ("hello", False)],
)
def test_contains_display_name_matches_the_name_between_word_boundaries(
    body: str, matched: bool
) -> None:
    rules = _override({"kind": "contains_display_name"})
    assert _matches(rules, _message(body)) is matched


def test_contains_display_name_needs_a_name() -> None:
    rules = _override({"kind": "contains_display_name"})
    assert not _matches(rules, _message("anything"), name=None)
    assert not _matches(rules, _message("anything"), name="")


@pytest.mark.parametrize(
    ("bound", "members", "matched"),
    [
        ("2", 2, True),
        ("2", 3, False),
        ("==3", 3, True),
        ("<3", 2, True),
        ("<3", 3, False),
        (">3", 4, True),
        ("<=3", 3, True),
        (">=3", 2, False),
        ("=3", 3, False),
        ("3x", 3, False),
    ],
)
def test_room_member_count(bound: str, members: int, matched: bool) -> None:
    rules = _override({"kind": "room_member_count", "is": bound})
    assert _matches(rules, _message("x"), members=members) is matched


def test_sender_notification_permission_asks_the_power_levels() -> None:
    rules = _override({"kind": "sender_notification_permission", "key": "room"})
    assert _matches(rules, _message("x"), notifiers=frozenset({"@bob:example.org"}))
    assert not _matches(rules, _message("x"))


def test_an_unknown_condition_disables_its_rule() -> None:
    rules = _override({"kind": "org.example.unknown"}, {"kind": "contains_display_name"})
    assert not _matches(rules, _message("alice liddell"))


# Rules, kinds and actions


def test_the_first_matching_rule_decides_in_kind_order() -> None:
    rules = {
        "underride": [{"rule_id": "u", "enabled": True, "conditions": [], "actions": ["notify"]}],
        "sender": [{"rule_id": "@bob:example.org", "enabled": True, "actions": []}],
        "room": [{"rule_id": ROOM, "enabled": True, "actions": ["notify"]}],
    }
    outcome = evaluate_push_rules(rules, _message("x"), _context())
    assert outcome is not None
    assert (outcome.rule_id, outcome.notify) == (ROOM, True)
    rules["room"][0]["enabled"] = False
    outcome = evaluate_push_rules(rules, _message("x"), _context())
    assert outcome is not None
    assert (outcome.rule_id, outcome.notify) == ("@bob:example.org", False)


def test_content_rules_match_the_body_at_word_boundaries() -> None:
    rules = {
        "content": [
            {"rule_id": "cake", "enabled": True, "pattern": "cake*lie", "actions": ["notify"]}
        ]
    }
    assert _matches(rules, _message("the cake is a lie"))
    assert not _matches(rules, _message("the pancake is a lie"))
    assert not _matches(rules, _message("the cake is a liesurely read"))


def test_historical_actions_mean_no_notification() -> None:
    outcome = evaluate_push_rules(_override(actions=["dont_notify"]), _message("x"), _context())
    assert outcome is not None
    assert not outcome.notify


@pytest.mark.parametrize(
    ("tweak", "highlight"),
    [({"set_tweak": "highlight"}, True), ({"set_tweak": "highlight", "value": False}, False)],
)
def test_a_highlight_tweak_without_a_value_is_true(tweak: dict[str, Any], highlight: bool) -> None:
    outcome = evaluate_push_rules(_override(actions=["notify", tweak]), _message("x"), _context())
    assert outcome is not None
    assert outcome.highlight is highlight


# The predefined rules


def test_a_plain_message_notifies_without_highlight() -> None:
    outcome = _default(_message("hello"))
    assert outcome is not None
    assert (outcome.rule_id, outcome.notify, outcome.highlight) == (".m.rule.message", True, False)


def test_a_message_in_a_room_of_two_is_a_one_to_one_message() -> None:
    outcome = _default(_message("hello"), members=2)
    assert outcome is not None
    assert outcome.rule_id == ".m.rule.room_one_to_one"


def test_notices_edits_and_reactions_do_not_notify() -> None:
    edit = _message("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$e"}})
    reaction = {"type": "m.reaction", "sender": "@bob:example.org", "content": {}}
    for event in (_message("bot says", msgtype="m.notice"), edit, reaction):
        outcome = _default(event)
        assert outcome is not None
        assert not outcome.notify


def test_only_m_mentions_highlight_the_user() -> None:
    mentioned = _message("hi", **{"m.mentions": {"user_ids": [ALICE]}})
    outcome = _default(mentioned)
    assert outcome is not None
    assert (outcome.rule_id, outcome.highlight) == (".m.rule.is_user_mention", True)
    # Spec v1.17 (MSC4210): the name or localpart in the body is no mention.
    for event in (_message("hi Alice Liddell"), _message("hi alice")):
        outcome = _default(event)
        assert outcome is not None
        assert (outcome.rule_id, outcome.highlight) == (".m.rule.message", False), event


def test_an_event_with_m_mentions_is_not_matched_by_name_or_localpart() -> None:
    event = _message("hi alice", **{"m.mentions": {}})
    outcome = _default(event)
    assert outcome is not None
    assert (outcome.rule_id, outcome.highlight) == (".m.rule.message", False)


def test_an_at_room_highlights_only_from_a_sender_allowed_to() -> None:
    allowed = frozenset({"@bob:example.org"})
    room_mention = _message("lunch", **{"m.mentions": {"room": True}})
    outcome = _default(room_mention, notifiers=allowed)
    assert outcome is not None
    assert (outcome.rule_id, outcome.highlight) == (".m.rule.is_room_mention", True)
    outcome = _default(room_mention)
    assert outcome is not None
    assert not outcome.highlight
    # Spec v1.17 (MSC4210): "@room" in the body is no room mention.
    outcome = _default(_message("@room lunch"), notifiers=allowed)
    assert outcome is not None
    assert (outcome.rule_id, outcome.highlight) == (".m.rule.message", False)


def test_an_invite_for_the_user_notifies_other_member_events_do_not() -> None:
    invite = {
        "type": "m.room.member",
        "state_key": ALICE,
        "sender": "@bob:example.org",
        "content": {"membership": "invite"},
    }
    outcome = _default(invite)
    assert outcome is not None
    assert (outcome.rule_id, outcome.notify) == (".m.rule.invite_for_me", True)
    outcome = _default(invite | {"state_key": "@carol:example.org"})
    assert outcome is not None
    assert (outcome.rule_id, outcome.notify) == (".m.rule.member_event", False)


def test_the_master_rule_silences_everything_when_enabled() -> None:
    rules = default_push_rules(ALICE)
    rules["override"][0]["enabled"] = True
    outcome = evaluate_push_rules(rules, _message("hi alice"), _context())
    assert outcome is not None
    assert (outcome.rule_id, outcome.notify) == (".m.rule.master", False)


def test_no_matching_rule_means_no_outcome() -> None:
    assert (
        _default({"type": "org.example.custom", "sender": "@bob:example.org", "content": {}})
        is None
    )
