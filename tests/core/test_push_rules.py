"""Push rules: the rule set computed from what a user changed, what is
stored, the stream moved by a change, and one user's changes serialised.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.lowlevel

from ranvier.core import push_rules as module
from ranvier.core.notifier import StreamNotifier
from ranvier.core.push_rules import (
    PUSH_RULES_TYPE,
    PushRules,
    PushRulesAccountData,
    default_push_rules,
    push_rules_content,
)
from ranvier.errors import MatrixError
from ranvier.storage import Storage
from ranvier.storage.client_data import AccountDataChange

ALICE = "@alice:example.org"
_MESSAGE = [{"kind": "event_match", "key": "type", "pattern": "m.room.message"}]


class _SlowStore:
    """Account data in memory, each read and write yielding to other tasks
    first, as storage's threads and actor do.
    """

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], tuple[int, bytes]] = {}
        self.writes = 0
        self.attempts = 0

    async def replace_account_data(
        self, user_id: str, room_id: str, data_type: str, content: bytes, expected: bytes | None
    ) -> int | None:
        await trio.lowlevel.checkpoint()
        self.attempts += 1
        row = self.rows.get((user_id, room_id, data_type))
        if (None if row is None else row[1]) != expected:
            return None
        self.writes += 1
        self.rows[user_id, room_id, data_type] = (self.writes, content)
        return self.writes

    async def put_account_data(
        self, user_id: str, room_id: str, data_type: str, content: bytes
    ) -> int:
        row = self.rows.get((user_id, room_id, data_type))
        position = await self.replace_account_data(
            user_id, room_id, data_type, content, None if row is None else row[1]
        )
        assert position is not None
        return position

    async def get_account_data(self, user_id: str, room_id: str, data_type: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        row = self.rows.get((user_id, room_id, data_type))
        return None if row is None else row[1]

    async def account_data_position(self) -> int:
        return self.writes

    async def account_data_changes(
        self, user_id: str, after: int, upto: int
    ) -> list[AccountDataChange]:
        return [
            AccountDataChange(position, room_id, data_type, content)
            for (user, room_id, data_type), (position, content) in self.rows.items()
            if user == user_id and after < position <= upto
        ]


def _ids(rules: list[dict[str, Any]]) -> list[str]:
    return [rule["rule_id"] for rule in rules]


def test_nothing_stored_is_the_predefined_set() -> None:
    assert push_rules_content(ALICE, None) == {"global": default_push_rules(ALICE)}
    # What the stored form does not know is left alone.
    assert push_rules_content(ALICE, {"future": 1}) == {"global": default_push_rules(ALICE)}


def test_the_stored_choices_and_rules_are_laid_over_the_predefined_set() -> None:
    stored = {
        "rules": {
            "override": [{"rule_id": "o", "actions": [], "conditions": []}],
            "underride": [{"rule_id": "u", "actions": ["notify"], "enabled": False}],
        },
        "predefined": {
            ".m.rule.master": {"enabled": True},
            ".m.rule.message": {"actions": []},
            # A rule a later release no longer has: ignored.
            ".m.rule.gone": {"enabled": False},
        },
    }
    rules = push_rules_content(ALICE, stored)["global"]
    assert _ids(rules["override"])[:3] == [".m.rule.master", "o", ".m.rule.suppress_notices"]
    assert rules["override"][0]["enabled"] is True
    assert rules["override"][1] == {
        "rule_id": "o",
        "default": False,
        "enabled": True,
        "conditions": [],
        "actions": [],
    }
    assert _ids(rules["underride"])[:2] == ["u", ".m.rule.call"]
    assert rules["underride"][0]["enabled"] is False
    message = next(r for r in rules["underride"] if r["rule_id"] == ".m.rule.message")
    assert (message["actions"], message["default"]) == ([], True)


async def test_only_the_changes_are_stored_so_new_predefined_rules_show(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = StreamNotifier()
    rules = PushRules(storage.client_data, notifier)
    await rules.put_rule(ALICE, "override", "mine", {"actions": [], "conditions": _MESSAGE})
    await rules.set_enabled(ALICE, "override", ".m.rule.master", {"enabled": True})
    stored = await storage.client_data.get_account_data(ALICE, "", PUSH_RULES_TYPE)
    assert stored is not None
    assert msgspec.json.decode(stored) == {
        "rules": {"override": [{"rule_id": "mine", "actions": [], "conditions": _MESSAGE}]},
        "predefined": {".m.rule.master": {"enabled": True}},
    }
    assert notifier.position.account_data == await storage.client_data.account_data_position()

    # A release with one more predefined rule shows it beside the user's.
    def with_new_rule(user_id: str) -> dict[str, Any]:
        defaults = default_push_rules(user_id)
        defaults["override"].append(
            {
                "rule_id": ".m.rule.new",
                "default": True,
                "enabled": True,
                "conditions": [],
                "actions": [],
            }
        )
        return defaults

    monkeypatch.setattr(module, "default_push_rules", with_new_rule)
    assert _ids((await rules.rule_set(ALICE))["override"])[:2] == [".m.rule.master", "mine"]
    assert _ids((await rules.rule_set(ALICE))["override"])[-1] == ".m.rule.new"


async def test_a_refused_change_writes_nothing_and_moves_no_stream() -> None:
    store, notifier = _SlowStore(), StreamNotifier()
    rules = PushRules(store, notifier)
    with pytest.raises(MatrixError) as refused:
        await rules.put_rule(ALICE, "override", "x", {"actions": []}, before="nothing")
    assert (refused.value.http_status, refused.value.errcode) == (400, "M_UNKNOWN")
    with pytest.raises(MatrixError) as missing:
        await rules.delete_rule(ALICE, "override", ".m.rule.master")
    assert missing.value.errcode == "M_NOT_FOUND"
    assert (store.writes, notifier.position.account_data) == (0, 0)


async def test_concurrent_changes_of_one_user_all_land() -> None:
    store, notifier = _SlowStore(), StreamNotifier()
    rules = PushRules(store, notifier)
    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(
                rules.put_rule, ALICE, "content", f"c{n}", {"pattern": "x", "actions": []}
            )
        nursery.start_soon(
            rules.set_enabled, ALICE, "override", ".m.rule.master", {"enabled": True}
        )
    rule_set = await rules.rule_set(ALICE)
    assert sorted(_ids(rule_set["content"])) == [f"c{n}" for n in range(5)]
    assert rule_set["override"][0]["enabled"] is True
    # They took turns: none had to be tried again.
    assert notifier.position.account_data == store.writes == store.attempts == 6


class _AnotherProcessWritesBetween:
    """Storage where another process changes the user's rules right after
    the first read, before the write that follows it.
    """

    def __init__(self, storage: Storage) -> None:
        self._inner = storage.client_data
        self._other = PushRules(storage.client_data)
        self.interfered = False

    async def get_account_data(self, user_id: str, room_id: str, data_type: str) -> bytes | None:
        stored = await self._inner.get_account_data(user_id, room_id, data_type)
        if not self.interfered:
            self.interfered = True
            await self._other.put_rule(user_id, "override", "theirs", {"actions": []})
        return stored

    async def replace_account_data(
        self, user_id: str, room_id: str, data_type: str, content: bytes, expected: bytes | None
    ) -> int | None:
        return await self._inner.replace_account_data(
            user_id, room_id, data_type, content, expected
        )


async def test_a_change_written_by_another_process_in_between_is_kept(storage: Storage) -> None:
    store = _AnotherProcessWritesBetween(storage)
    notifier = StreamNotifier()
    rules = PushRules(store, notifier)
    await rules.put_rule(ALICE, "override", "mine", {"actions": []}, after="")
    assert store.interfered
    override = (await rules.rule_set(ALICE))["override"]
    assert _ids(override)[:3] == [".m.rule.master", "mine", "theirs"]
    assert notifier.position.account_data == await storage.client_data.account_data_position()


async def test_the_initial_sync_carries_the_rule_set_and_a_token_at_zero_does_not() -> None:
    store = _SlowStore()
    account_data = PushRulesAccountData(store)
    initial = await account_data.updates(ALICE, None, 0)
    assert initial.global_events == [
        {"type": PUSH_RULES_TYPE, "content": push_rules_content(ALICE, None)}
    ]
    assert (await account_data.updates(ALICE, 0, 0)).global_events == []

    await PushRules(store).put_rule(ALICE, "room", "!r:example.org", {"actions": []})
    (changed,) = (await account_data.updates(ALICE, 0, 1)).global_events
    assert changed["content"]["global"]["room"] == [
        {"rule_id": "!r:example.org", "default": False, "enabled": True, "actions": []}
    ]
    # Read as account data, it is the rule set too; for nobody else.
    assert await account_data.get(ALICE, ALICE, PUSH_RULES_TYPE) == changed["content"]
    with pytest.raises(MatrixError) as forbidden:
        await account_data.get("@bob:example.org", ALICE, PUSH_RULES_TYPE)
    assert forbidden.value.errcode == "M_FORBIDDEN"
