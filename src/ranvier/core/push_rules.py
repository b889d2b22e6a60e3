"""Push rules: the spec's predefined (server-default) rule set.

Every user has the predefined rules of the spec's "Predefined Rules"
section, in its order, with the user's ID and localpart filled in. Rules
of the user's own are not kept yet: changing rules is refused with
``M_UNRECOGNIZED`` by the client API, so clients keep the defaults.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["default_push_rules"]

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
    """The ``global`` rule set of ``GET /pushrules/`` for ``user_id``."""
    localpart = user_id[1:].partition(":")[0]
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
            ".m.rule.contains_display_name",
            [{"kind": "contains_display_name"}],
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
            ".m.rule.roomnotif",
            [
                {"kind": "sender_notification_permission", "key": "room"},
                _match("content.body", "@room"),
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
            ".m.rule.server_acl",
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
    contains_user_name = _rule(".m.rule.contains_user_name", [], _NOTIFY_SOUND_HIGHLIGHT)
    del contains_user_name["conditions"]
    contains_user_name["pattern"] = localpart
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
        "content": [contains_user_name],
        "room": [],
        "sender": [],
        "underride": underride,
    }
