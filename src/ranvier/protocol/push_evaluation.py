"""Which push rule an event matches for a user, and whether it notifies.

The client-server spec's push module defines the rule kinds, their order,
the conditions and the actions; a user's rule set is what ``GET
/pushrules/`` shows under ``global`` (:mod:`ranvier.core.push_rules` makes
it). The first enabled rule that matches, in kind order and then in the
order within its kind, decides; no match means no notification.

What an evaluation needs besides the event is a :class:`PushContext`: the
user, their display name in the room, the room's joined member count, and
whether the sender may trigger a notification of a given kind (``@room``),
which the power levels decide. The caller works those out from the room's
state; this module only reads them, so it stays free of I/O.

Deviations the spec asks for and this module follows:

* Historical actions (``dont_notify``, ``coalesce``) are ignored: such a
  rule matches and decides "no notification".
* An unrecognised condition never matches, which disables its rule.
* ``.m.rule.contains_display_name``, ``.m.rule.roomnotif`` and
  ``.m.rule.contains_user_name`` stand aside for an event whose content has
  an ``m.mentions`` property (spec v1.7): such an event says itself whom it
  mentions.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .canonical import CANONICAL_INT_MAX, CANONICAL_INT_MIN
from .property_paths import property_path

__all__ = [
    "PushContext",
    "PushOutcome",
    "evaluate_push_rules",
    "is_scalar_value",
]

#: The rule kinds, most important first.
_KINDS: Final = ("override", "content", "room", "sender", "underride")
#: Rules that the spec (v1.7) turns off for events carrying ``m.mentions``.
_LEGACY_MENTION_RULES: Final = frozenset(
    {".m.rule.contains_display_name", ".m.rule.roomnotif", ".m.rule.contains_user_name"}
)
_MEMBER_COUNT: Final = re.compile(r"(==|<=|>=|<|>)?([0-9]+)")
_WORD: Final = "A-Za-z0-9_"


@dataclass(frozen=True, slots=True)
class PushContext:
    """What the conditions read besides the event itself."""

    user_id: str
    #: The user's display name in the room, if they have one.
    display_name: str | None
    #: Joined members of the room.
    member_count: int
    #: Whether a sender has the power level a notification kind (``room``) needs.
    may_notify: Callable[[str, str], bool]


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """The matching rule's verdict."""

    rule_id: str
    notify: bool
    highlight: bool
    actions: tuple[Any, ...]


def evaluate_push_rules(
    rule_set: Mapping[str, Sequence[Mapping[str, Any]]],
    event: Mapping[str, Any],
    context: PushContext,
) -> PushOutcome | None:
    """The outcome of the first enabled rule of ``rule_set`` that ``event``
    matches for ``context.user_id``, or None when none matches.

    ``rule_set`` maps each kind to its rules in order, as ``GET
    /pushrules/`` shows them. The user's own events never notify them: the
    caller leaves those out.
    """
    content = event.get("content")
    mentions_itself = isinstance(content, Mapping) and "m.mentions" in content
    for kind in _KINDS:
        for rule in rule_set.get(kind, ()):
            if rule.get("enabled") is False:
                continue
            rule_id = rule.get("rule_id")
            if not isinstance(rule_id, str):
                continue
            if mentions_itself and rule_id in _LEGACY_MENTION_RULES:
                continue
            if _matches(kind, rule, rule_id, event, context):
                return _outcome(rule_id, rule.get("actions"))
    return None


def _matches(
    kind: str,
    rule: Mapping[str, Any],
    rule_id: str,
    event: Mapping[str, Any],
    context: PushContext,
) -> bool:
    if kind == "room":
        return event.get("room_id") == rule_id
    if kind == "sender":
        return event.get("sender") == rule_id
    if kind == "content":
        pattern = rule.get("pattern")
        body = _value_at(event, ("content", "body"))
        return isinstance(pattern, str) and isinstance(body, str) and _in_words(pattern, body)
    conditions = rule.get("conditions", ())
    if not isinstance(conditions, list):
        return False
    return all(
        isinstance(condition, Mapping) and _holds(condition, event, context)
        for condition in conditions
    )


def _holds(condition: Mapping[str, Any], event: Mapping[str, Any], context: PushContext) -> bool:
    kind = condition.get("kind")
    if kind == "event_match":
        key, pattern = condition.get("key"), condition.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return False
        path = property_path(key)
        value = _value_at(event, path)
        if not isinstance(value, str):
            return False
        if path == ("content", "body"):
            return _in_words(pattern, value)
        return _glob(pattern).fullmatch(value) is not None
    if kind in ("event_property_is", "event_property_contains"):
        key = condition.get("key")
        expected = condition.get("value")
        if not isinstance(key, str) or not is_scalar_value(expected):
            return False
        found = _value_at(event, property_path(key))
        if kind == "event_property_is":
            return is_scalar_value(found) and _same(found, expected)
        return isinstance(found, list) and any(
            is_scalar_value(value) and _same(value, expected) for value in found
        )
    if kind == "contains_display_name":
        name = context.display_name
        body = _value_at(event, ("content", "body"))
        # An empty name would be in every message.
        if not name or not isinstance(body, str):
            return False
        return _contains_words(name, body)
    if kind == "room_member_count":
        bound = condition.get("is")
        return isinstance(bound, str) and _count_is(context.member_count, bound)
    if kind == "sender_notification_permission":
        key, sender = condition.get("key"), event.get("sender")
        return isinstance(key, str) and isinstance(sender, str) and context.may_notify(sender, key)
    return False


def _outcome(rule_id: str, actions: object) -> PushOutcome:
    kept = tuple(actions) if isinstance(actions, list) else ()
    highlight = False
    for action in kept:
        if isinstance(action, Mapping) and action.get("set_tweak") == "highlight":
            # A highlight tweak without a value means true.
            highlight = action.get("value", True) is True
    return PushOutcome(rule_id, notify="notify" in kept, highlight=highlight, actions=kept)


#: A property that is not there, as distinct from one whose value is null.
_ABSENT: Final = object()


def _value_at(event: Mapping[str, Any], path: Sequence[str]) -> object:
    value: object = event
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def is_scalar_value(value: object) -> bool:
    """Whether ``value`` is what ``event_property_is`` and
    ``event_property_contains`` compare: a string, a boolean, null, or an
    integer that canonical JSON holds.
    """
    if value is None or isinstance(value, (str, bool)):
        return True
    return isinstance(value, int) and CANONICAL_INT_MIN <= value <= CANONICAL_INT_MAX


def _same(value: object, expected: object) -> bool:
    # True == 1 in Python; JSON keeps booleans and numbers apart.
    return type(value) is type(expected) and value == expected


def _count_is(count: int, bound: str) -> bool:
    match = _MEMBER_COUNT.fullmatch(bound)
    if match is None:
        return False
    operator, number = match[1] or "==", int(match[2])
    if operator == "==":
        return count == number
    if operator == "<":
        return count < number
    if operator == ">":
        return count > number
    if operator == "<=":
        return count <= number
    return count >= number


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    """The glob as a regular expression: ``*`` any run of characters, ``?``
    exactly one, everything else itself; case-insensitive.
    """
    translated = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    return re.compile(translated, re.IGNORECASE | re.DOTALL)


@functools.lru_cache(maxsize=1024)
def _word_glob(pattern: str) -> re.Pattern[str]:
    """The glob matching a run of the text that starts and ends at word
    boundaries: the text's ends, or a character outside ``[A-Za-z0-9_]``.
    """
    return re.compile(
        rf"(?:^|(?<=[^{_WORD}])){_glob(pattern).pattern}(?:$|(?=[^{_WORD}]))",
        re.IGNORECASE | re.DOTALL,
    )


def _in_words(pattern: str, text: str) -> bool:
    return _word_glob(pattern).search(text) is not None


def _contains_words(name: str, text: str) -> bool:
    """Whether ``name``, taken literally, appears in ``text`` between word boundaries."""
    escaped = re.escape(name)
    found = re.search(rf"(?:^|(?<=[^{_WORD}])){escaped}(?:$|(?=[^{_WORD}]))", text, re.IGNORECASE)
    return found is not None
