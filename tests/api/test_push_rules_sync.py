"""Each kind of push rule change wakes a long-polling ``/sync``, which
carries the rule set as changed; a rule reads back the same each time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q

_ROOM = "!foo:example.com"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


def _global_rules(answer: dict[str, Any]) -> dict[str, Any]:
    (event,) = [
        event
        for event in answer.get("account_data", {}).get("events", [])
        if event["type"] == "m.push_rules"
    ]
    rules: dict[str, Any] = event["content"]["global"]
    return rules


def _room_rule(rules: dict[str, Any]) -> dict[str, Any]:
    (rule,) = [rule for rule in rules["room"] if rule["rule_id"] == _ROOM]
    found: dict[str, Any] = rule
    return found


async def test_every_kind_of_change_wakes_a_long_poll(env: SharedRoom) -> None:
    c, alice = env.client, env.alice
    first = await env.sync(alice)
    assert "override" in _global_rules(first)
    since = first["next_batch"]
    rule = f"/pushrules/global/room/{q(_ROOM)}"
    changes = [
        (rule, {"actions": ["notify"]}, {"enabled": True, "actions": ["notify"]}),
        (f"{rule}/enabled", {"enabled": False}, {"enabled": False, "actions": ["notify"]}),
        (f"{rule}/enabled", {"enabled": True}, {"enabled": True, "actions": ["notify"]}),
        (f"{rule}/actions", {"actions": ["dont_notify"]}, {"enabled": True, "actions": []}),
    ]
    for path, body, expected in changes:
        answer = await env.woken_sync(
            alice,
            since,
            quiet=lambda: c.ok(env.bob, "PUT", rule, {"actions": ["notify"]}),
            wake=lambda path=path, body=body: c.ok(alice, "PUT", path, body),  # type: ignore[misc]
        )
        shown = _room_rule(_global_rules(answer))
        # dont_notify is the same as no action; either form is the spec's.
        actions = [action for action in shown["actions"] if action != "dont_notify"]
        assert {"enabled": shown["enabled"], "actions": actions} == expected, path
        since = answer["next_batch"]


async def test_a_sender_rule_reads_back_the_same_every_time(env: SharedRoom) -> None:
    c, alice = env.client, env.alice
    path = f"/pushrules/global/sender/{q(alice.user_id)}"
    await c.ok(alice, "PUT", path, {"actions": ["dont_notify"]})
    for _ in range(2):
        rules = await c.ok(alice, "GET", "/pushrules/")
        (rule,) = rules["global"]["sender"]
        assert (rule["rule_id"], rule["actions"]) == (alice.user_id, ["dont_notify"])
        assert (await c.ok(alice, "GET", path))["actions"] == ["dont_notify"]
