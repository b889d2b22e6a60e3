"""Push rules: the spec's predefined (server-default) rules and the rules a
user sets, as ``GET /pushrules/`` and ``/sync``'s ``m.push_rules`` show them.

Storage
-------

A user's changes are their global account data of type ``m.push_rules``,
written by this module alone (:class:`~ranvier.core.account_data.AccountData`
refuses the type to clients, 405 ``M_BAD_JSON``). What is stored is not the
rule set but what the user changed, from which the set is computed on every
read::

    {"rules": {"override": [{"rule_id", "enabled", "conditions", "actions"}],
               "content": [{"rule_id", "enabled", "pattern", "actions"}],
               "room": [...], "sender": [...], "underride": [...]},
     "predefined": {".m.rule.master": {"enabled": true},
                    ".m.rule.message": {"actions": [...]}}}

``rules`` holds the user's own rules, most important first within each
kind; ``predefined`` the ``enabled`` and ``actions`` the user set on
server-default rules. A release that adds, changes or removes predefined
rules therefore shows its own set to every user at once, with the user's
choices laid over the rules that remain; a choice about a rule that is
gone is ignored.

Order
-----

Kinds come in the spec's order (override, content, room, sender,
underride). Within a kind the user's rules come before the server-default
ones, except ``.m.rule.master``, which comes before everything (the spec's
"Predefined Rules").

Invariants
----------

* **No lost update.** A change reads the stored form, applies itself and
  writes it back only if the stored form is still what it read (one
  storage write checks and replaces); if another process (a
  ``client_reader`` worker, or the main process) wrote in between, the
  change is applied again to what that wrote. Within a process, a user's
  changes take turns under the user's lock, so they never need to.
* **A refused change writes nothing.** Every check runs on the read form
  before the write is submitted.
* **The stored form never reaches a client.** Every read of
  ``m.push_rules`` (``/pushrules``, ``GET`` of the account data,
  ``/sync``) goes through :func:`push_rules_content`;
  :class:`PushRulesAccountData` does it for the account data endpoints and
  ``/sync``, and puts the rule set into every initial sync.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol

import msgspec
import trio

from ranvier.errors import BadJsonError, MatrixError
from ranvier.protocol.push_evaluation import is_scalar_value

from .account_data import AccountData, AccountDataUpdates
from .notifier import StreamNotifier

__all__ = [
    "KINDS",
    "PUSH_RULES_TYPE",
    "PushRuleStore",
    "PushRules",
    "PushRulesAccountData",
    "default_push_rules",
    "push_rules_content",
]

#: The account data type that carries a user's rule set.
PUSH_RULES_TYPE: Final = "m.push_rules"
#: The kinds of rule, most important first.
KINDS: Final = ("override", "content", "room", "sender", "underride")
_MASTER: Final = ".m.rule.master"
_ACTIONS: Final = frozenset({"notify", "dont_notify", "coalesce"})
_MEMBER_COUNT: Final = re.compile(r"(==|<|>|<=|>=)?[0-9]+")

_NOTIFY_SOUND: Final = ["notify", {"set_tweak": "sound", "value": "default"}]
_NOTIFY_SOUND_HIGHLIGHT: Final = [*_NOTIFY_SOUND, {"set_tweak": "highlight"}]
_NOTIFY_SOUND_NO_HIGHLIGHT: Final = [*_NOTIFY_SOUND, {"set_tweak": "highlight", "value": False}]


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _rule(rule_id: str, conditions: list[dict[str, Any]], actions: list[Any]) -> dict[str, Any]:
    return {
        "rule_id": rule_id,
        "default": True,
        "enabled": True,
        "conditions": conditions,
        "actions": actions,
    }


def default_push_rules(user_id: str) -> dict[str, Any]:
    """The ``global`` rule set of ``GET /pushrules/`` for ``user_id``.

    The spec's set as of v1.17, which dropped the legacy mention rules
    (``.m.rule.contains_display_name``, ``.m.rule.roomnotif`` and the
    content rule ``.m.rule.contains_user_name``, MSC4210): mentions are
    ``m.mentions``, no longer words in the body.
    """
    master = _rule(".m.rule.master", [], [])
    master["enabled"] = False
    override = [
        master,
        _rule(".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
        _rule(
            ".m.rule.invite_for_me",
            [
                _match("type", "m.room.member"),
                _match("content.membership", "invite"),
                _match("state_key", user_id),
            ],
            _NOTIFY_SOUND_NO_HIGHLIGHT,
        ),
        _rule(".m.rule.member_event", [_match("type", "m.room.member")], []),
        _rule(
            ".m.rule.is_user_mention",
            [
                {
                    "kind": "event_property_contains",
                    "key": "content.m\\.mentions.user_ids",
                    "value": user_id,
                }
            ],
            _NOTIFY_SOUND_HIGHLIGHT,
        ),
        _rule(
            ".m.rule.is_room_mention",
            [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            ["notify", {"set_tweak": "highlight"}],
        ),
        _rule(
            ".m.rule.tombstone",
            [_match("type", "m.room.tombstone"), _match("state_key", "")],
            ["notify", {"set_tweak": "highlight"}],
        ),
        _rule(".m.rule.reaction", [_match("type", "m.reaction")], []),
        _rule(
            ".m.rule.room.server_acl",
            [_match("type", "m.room.server_acl"), _match("state_key", "")],
            [],
        ),
        _rule(
            ".m.rule.suppress_edits",
            [
                {
                    "kind": "event_property_is",
                    "key": "content.m\\.relates_to.rel_type",
                    "value": "m.replace",
                }
            ],
            [],
        ),
    ]
    one_to_one = {"kind": "room_member_count", "is": "2"}
    underride = [
        _rule(
            ".m.rule.call",
            [_match("type", "m.call.invite")],
            [
                "notify",
                {"set_tweak": "sound", "value": "ring"},
                {"set_tweak": "highlight", "value": False},
            ],
        ),
        _rule(
            ".m.rule.encrypted_room_one_to_one",
            [one_to_one, _match("type", "m.room.encrypted")],
            _NOTIFY_SOUND_NO_HIGHLIGHT,
        ),
        _rule(
            ".m.rule.room_one_to_one",
            [one_to_one, _match("type", "m.room.message")],
            _NOTIFY_SOUND_NO_HIGHLIGHT,
        ),
        _rule(
            ".m.rule.message",
            [_match("type", "m.room.message")],
            ["notify", {"set_tweak": "highlight", "value": False}],
        ),
        _rule(
            ".m.rule.encrypted",
            [_match("type", "m.room.encrypted")],
            ["notify", {"set_tweak": "highlight", "value": False}],
        ),
    ]
    return {
        "override": override,
        "content": [],
        "room": [],
        "sender": [],
        "underride": underride,
    }


# --- The stored form ---------------------------------------------------------------


class _Rule(msgspec.Struct, omit_defaults=True):
    """A rule of the user's own; ``conditions`` for override and underride
    rules, ``pattern`` for content rules, neither for room and sender rules.
    """

    rule_id: str
    actions: list[Any]
    enabled: bool = True
    conditions: list[dict[str, Any]] | None = None
    pattern: str | None = None


class _Choice(msgspec.Struct, omit_defaults=True):
    """What the user set on a server-default rule."""

    enabled: bool | None = None
    actions: list[Any] | None = None


class _Changes(msgspec.Struct, omit_defaults=True):
    """The stored form (see the module's docstring)."""

    rules: dict[str, list[_Rule]] = {}
    predefined: dict[str, _Choice] = {}


def _changes(stored: Mapping[str, Any] | None) -> _Changes:
    if stored is None:
        return _Changes()
    return msgspec.convert(stored, _Changes)


def _shown(rule: _Rule) -> dict[str, Any]:
    shown: dict[str, Any] = {"rule_id": rule.rule_id, "default": False, "enabled": rule.enabled}
    if rule.conditions is not None:
        shown["conditions"] = rule.conditions
    if rule.pattern is not None:
        shown["pattern"] = rule.pattern
    shown["actions"] = rule.actions
    return shown


def _rule_set(user_id: str, changes: _Changes) -> dict[str, list[dict[str, Any]]]:
    defaults = default_push_rules(user_id)
    for rules in defaults.values():
        for rule in rules:
            choice = changes.predefined.get(rule["rule_id"])
            if choice is None:
                continue
            if choice.enabled is not None:
                rule["enabled"] = choice.enabled
            if choice.actions is not None:
                rule["actions"] = choice.actions
    rule_set: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        own = [_shown(rule) for rule in changes.rules.get(kind, [])]
        first = [rule for rule in defaults[kind] if rule["rule_id"] == _MASTER]
        rest = [rule for rule in defaults[kind] if rule["rule_id"] != _MASTER]
        rule_set[kind] = [*first, *own, *rest]
    return rule_set


def push_rules_content(user_id: str, stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """The content of ``user_id``'s ``m.push_rules`` event, from what is
    stored under that type (None when nothing is).
    """
    return {"global": _rule_set(user_id, _changes(stored))}


# --- Checks of what clients send -------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise MatrixError(
            f"{kind!r} is not a kind of push rule (one of {', '.join(KINDS)})",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )


def _check_new_rule_id(rule_id: str) -> None:
    if rule_id.startswith("."):
        raise MatrixError(
            "rule IDs starting with '.' are reserved for server-default rules",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    if "/" in rule_id or "\\" in rule_id:
        raise MatrixError(
            "a rule ID may not contain '/' or '\\'", errcode="M_INVALID_PARAM", http_status=400
        )


def _actions(body: Mapping[str, Any]) -> list[Any]:
    actions = body.get("actions")
    if not isinstance(actions, list):
        raise BadJsonError("'actions' must be a list")
    for action in actions:
        if isinstance(action, str):
            if action not in _ACTIONS:
                raise BadJsonError(f"unknown action {action!r}")
            continue
        if not isinstance(action, dict) or not isinstance(action.get("set_tweak"), str):
            raise BadJsonError("an action is a string or an object with a 'set_tweak' string")
        tweak, value = action["set_tweak"], action.get("value")
        if tweak == "sound" and not isinstance(value, str):
            raise BadJsonError("the sound tweak's 'value' must be a string")
        if tweak == "highlight" and "value" in action and not isinstance(value, bool):
            raise BadJsonError("the highlight tweak's 'value' must be true or false")
    return actions


def _string(condition: Mapping[str, Any], key: str) -> None:
    if not isinstance(condition.get(key), str):
        raise BadJsonError(f"a {condition['kind']} condition needs a '{key}' string")


def _conditions(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The conditions of an override or underride rule; none given is none
    at all (a rule that always matches). Kinds the spec does not define are
    kept: they never match, as the spec says.
    """
    conditions = body.get("conditions", [])
    if not isinstance(conditions, list):
        raise BadJsonError("'conditions' must be a list")
    for condition in conditions:
        if not isinstance(condition, dict) or not isinstance(condition.get("kind"), str):
            raise BadJsonError("a condition is an object with a 'kind' string")
        kind = condition["kind"]
        if kind == "event_match":
            _string(condition, "key")
            _string(condition, "pattern")
        elif kind in ("event_property_is", "event_property_contains"):
            _string(condition, "key")
            if "value" not in condition or not is_scalar_value(condition["value"]):
                raise BadJsonError(
                    f"a {kind} condition needs a 'value': a string, integer, boolean or null"
                )
        elif kind == "room_member_count":
            count = condition.get("is")
            if not isinstance(count, str) or not _MEMBER_COUNT.fullmatch(count):
                raise BadJsonError("a room_member_count condition needs an 'is' like '2' or '<=10'")
        elif kind == "sender_notification_permission":
            _string(condition, "key")
    return conditions


def _new_rule(kind: str, rule_id: str, body: Mapping[str, Any]) -> _Rule:
    actions = _actions(body)
    if kind in ("override", "underride"):
        return _Rule(rule_id, actions, conditions=_conditions(body))
    if kind == "content":
        pattern = body.get("pattern")
        if not isinstance(pattern, str):
            raise BadJsonError("a content rule needs a 'pattern' string")
        return _Rule(rule_id, actions, pattern=pattern)
    return _Rule(rule_id, actions)


def _not_found(kind: str, rule_id: str) -> MatrixError:
    return MatrixError(
        f"there is no {kind} push rule {rule_id!r}", errcode="M_NOT_FOUND", http_status=404
    )


# --- Changes, applied to the stored form -------------------------------------------


def _put(
    changes: _Changes,
    kind: str,
    rule_id: str,
    body: Mapping[str, Any],
    before: str | None,
    after: str | None,
) -> None:
    """Create or replace a rule of the user's own. A new rule comes first
    of its kind unless placed; a replaced one stays where it was unless
    placed, and stays enabled or disabled. ``before`` wins over ``after``.
    """
    _check_kind(kind)
    _check_new_rule_id(rule_id)
    rule = _new_rule(kind, rule_id, body)
    rules = changes.rules.get(kind, [])
    old = next((i for i, r in enumerate(rules) if r.rule_id == rule_id), None)
    if old is not None:
        rule.enabled = rules[old].enabled
    anchor = before or after
    if anchor:
        others = [r for r in rules if r.rule_id != rule_id]
        at = next((i for i, r in enumerate(others) if r.rule_id == anchor), None)
        if at is None:
            raise MatrixError(
                f"before/after rule not found: {anchor!r} is not a {kind} rule of the user's own",
                errcode="M_UNKNOWN",
                http_status=400,
            )
        others.insert(at if before else at + 1, rule)
        rules = others
    elif old is not None:
        rules = [*rules[:old], rule, *rules[old + 1 :]]
    else:
        rules = [rule, *rules]
    changes.rules[kind] = rules


def _delete(changes: _Changes, kind: str, rule_id: str) -> None:
    _check_kind(kind)
    rules = changes.rules.get(kind, [])
    kept = [r for r in rules if r.rule_id != rule_id]
    if len(kept) == len(rules):
        raise _not_found(kind, rule_id)
    if kept:
        changes.rules[kind] = kept
    else:
        del changes.rules[kind]


def _set(
    user_id: str,
    changes: _Changes,
    kind: str,
    rule_id: str,
    *,
    enabled: bool | None = None,
    actions: list[Any] | None = None,
) -> None:
    """Set ``enabled`` or ``actions`` of a rule of the user's or a
    server-default one of ``kind``.
    """
    for rule in changes.rules.get(kind, []):
        if rule.rule_id == rule_id:
            if enabled is not None:
                rule.enabled = enabled
            if actions is not None:
                rule.actions = actions
            return
    if not any(rule["rule_id"] == rule_id for rule in default_push_rules(user_id)[kind]):
        raise _not_found(kind, rule_id)
    choice = changes.predefined.setdefault(rule_id, _Choice())
    if enabled is not None:
        choice.enabled = enabled
    if actions is not None:
        choice.actions = actions


def _copy_room_rule(changes: _Changes, old_room_id: str, new_room_id: str) -> bool:
    """Give the new room a copy of the user's ``room`` rule for the old one,
    placed just after it, unless the new room has a rule already or the
    old one has none. Whether a copy was made.
    """
    rules = changes.rules.get("room", [])
    if any(rule.rule_id == new_room_id for rule in rules):
        return False
    at = next((i for i, rule in enumerate(rules) if rule.rule_id == old_room_id), None)
    if at is None:
        return False
    old = rules[at]
    copy = _Rule(new_room_id, list(old.actions), enabled=old.enabled)
    changes.rules["room"] = [*rules[: at + 1], copy, *rules[at + 1 :]]
    return True


# --- The handler ---------------------------------------------------------------------


class _UserLocks:
    """A lock per user, dropped once nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, user_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(user_id, (trio.Lock(), 0))
        self._locks[user_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[user_id]
            if users == 1:
                del self._locks[user_id]
            else:
                self._locks[user_id] = (lock, users - 1)


class PushRuleStore(Protocol):
    """Account data in storage, with the write that changes an entry only
    if it still holds what was read
    (:class:`ranvier.storage.client_data.ClientDataStorage`).
    """

    async def get_account_data(
        self, user_id: str, room_id: str, data_type: str
    ) -> bytes | None: ...

    async def replace_account_data(
        self, user_id: str, room_id: str, data_type: str, content: bytes, expected: bytes | None
    ) -> int | None: ...


class PushRules:
    """A user's push rules: read, and changed one request at a time per
    user; every change moves the account data stream and wakes the user's
    long-polls.
    """

    def __init__(self, store: PushRuleStore, notifier: StreamNotifier | None = None) -> None:
        self._store = store
        self._notifier = notifier
        self._locks = _UserLocks()

    async def _stored(self, user_id: str) -> tuple[bytes | None, _Changes]:
        stored = await self._store.get_account_data(user_id, "", PUSH_RULES_TYPE)
        changes = _Changes() if stored is None else msgspec.json.decode(stored, type=_Changes)
        return stored, changes

    async def rule_set(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        """The ``global`` rule set of ``user_id``."""
        _, changes = await self._stored(user_id)
        return _rule_set(user_id, changes)

    async def rule(self, user_id: str, kind: str, rule_id: str) -> dict[str, Any]:
        """One rule of ``user_id``'s set; ``M_NOT_FOUND`` if there is none."""
        _check_kind(kind)
        for rule in (await self.rule_set(user_id))[kind]:
            if rule["rule_id"] == rule_id:
                return rule
        raise _not_found(kind, rule_id)

    async def put_rule(
        self,
        user_id: str,
        kind: str,
        rule_id: str,
        body: Mapping[str, Any],
        *,
        before: str | None = None,
        after: str | None = None,
    ) -> None:
        """Create or replace a rule of the user's own (``PUT`` of a rule)."""
        await self._change(
            user_id, lambda changes: _put(changes, kind, rule_id, body, before, after)
        )

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        """Delete a rule of the user's own; server-default rules cannot be."""
        await self._change(user_id, lambda changes: _delete(changes, kind, rule_id))

    async def set_enabled(
        self, user_id: str, kind: str, rule_id: str, body: Mapping[str, Any]
    ) -> None:
        """Enable or disable a rule, the user's own or a server-default one."""
        _check_kind(kind)
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            raise BadJsonError("'enabled' must be true or false")
        await self._change(
            user_id, lambda changes: _set(user_id, changes, kind, rule_id, enabled=enabled)
        )

    async def set_actions(
        self, user_id: str, kind: str, rule_id: str, body: Mapping[str, Any]
    ) -> None:
        """Set the actions of a rule, the user's own or a server-default one."""
        _check_kind(kind)
        actions = _actions(body)
        await self._change(
            user_id, lambda changes: _set(user_id, changes, kind, rule_id, actions=actions)
        )

    async def copy_room_rule(self, user_id: str, old_room_id: str, new_room_id: str) -> bool:
        """Copy the user's ``room`` rule for ``old_room_id`` to
        ``new_room_id``, a room that replaced it, unless there is none or
        the new room has one already. Whether a copy was made.
        """
        _, changes = await self._stored(user_id)
        if not _copy_room_rule(changes, old_room_id, new_room_id):
            return False
        made = False

        def copy(changes: _Changes) -> None:
            nonlocal made
            made = _copy_room_rule(changes, old_room_id, new_room_id)

        await self._change(user_id, copy)
        return made

    async def _change(self, user_id: str, apply: Callable[[_Changes], None]) -> None:
        """Apply a change to what is stored and write it back, unless another
        process wrote in between: then read again and apply it to that.
        """
        async with self._locks.hold(user_id):
            while True:
                stored, changes = await self._stored(user_id)
                apply(changes)
                position = await self._store.replace_account_data(
                    user_id, "", PUSH_RULES_TYPE, msgspec.json.encode(changes), stored
                )
                if position is not None:
                    break
        if self._notifier is not None:
            self._notifier.advance_account_data(position, user_id)


class PushRulesAccountData(AccountData):
    """Account data whose ``m.push_rules`` is the user's rule set, computed
    from the stored form, and present in every initial sync (as the spec's
    "Push Rules: Events" has clients expect).
    """

    async def get(
        self, requester: str, user_id: str, data_type: str, *, room_id: str | None = None
    ) -> dict[str, Any]:
        if data_type != PUSH_RULES_TYPE or room_id is not None:
            return await super().get(requester, user_id, data_type, room_id=room_id)
        try:
            stored: dict[str, Any] | None = await super().get(requester, user_id, data_type)
        except MatrixError as error:
            if error.errcode != "M_NOT_FOUND":
                raise
            stored = None
        return push_rules_content(user_id, stored)

    async def updates(self, user_id: str, after: int | None, upto: int) -> AccountDataUpdates:
        updates = await super().updates(user_id, after, upto)
        found = False
        for event in updates.global_events:
            if event["type"] == PUSH_RULES_TYPE:
                event["content"] = push_rules_content(user_id, event["content"])
                found = True
        if after is None and not found:
            updates.global_events.append(
                {"type": PUSH_RULES_TYPE, "content": push_rules_content(user_id, None)}
            )
        return updates
