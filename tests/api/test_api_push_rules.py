"""Push rules over real HTTP: the predefined set, rules of a user's own and
where they go, enabling and actions, refusals, ``m.push_rules`` in /sync,
concurrent changes, and matrix-nio's push rule calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nio  # type: ignore[import-untyped]
import pytest
import trio
import trio_asyncio  # type: ignore[import-untyped]
from _client import Client, OneServer, q
from _nio import aio, invalid_responses

from ranvier.testing.homeserver import TestUser, open_test_homeserver

Env = OneServer


_MESSAGE = [{"kind": "event_match", "key": "type", "pattern": "m.room.message"}]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client(timeout=30) as http:
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        yield Env(hs, Client(hs, http), alice, bob)


async def _rules(env: Env, user: TestUser) -> dict[str, list[dict[str, Any]]]:
    rules: dict[str, list[dict[str, Any]]] = (await env.client.ok(user, "GET", "/pushrules/"))[
        "global"
    ]
    return rules


async def _ids(env: Env, user: TestUser, kind: str) -> list[str]:
    return [rule["rule_id"] for rule in (await _rules(env, user))[kind]]


async def _put(env: Env, user: TestUser, kind: str, rule_id: str, **params: str) -> None:
    body: dict[str, Any] = {"actions": ["notify"]}
    if kind in ("override", "underride"):
        body["conditions"] = _MESSAGE
    if kind == "content":
        body["pattern"] = rule_id
    path = f"/pushrules/global/{kind}/{q(rule_id)}"
    assert await env.client.ok(user, "PUT", path, body, params=params) == {}


def _push_rules_events(sync: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in sync["account_data"]["events"] if e["type"] == "m.push_rules"]


async def test_the_predefined_set(env: Env) -> None:
    c, alice = env.client, env.alice
    rules = await _rules(env, alice)
    assert set(rules) == {"override", "content", "room", "sender", "underride"}
    override = [rule["rule_id"] for rule in rules["override"]]
    assert override[0] == ".m.rule.master"
    assert override.index(".m.rule.suppress_notices") == 1
    assert {
        ".m.rule.invite_for_me",
        ".m.rule.is_user_mention",
        ".m.rule.tombstone",
        ".m.rule.room.server_acl",
    } <= set(override)
    assert [rule["rule_id"] for rule in rules["underride"]] == [
        ".m.rule.call",
        ".m.rule.encrypted_room_one_to_one",
        ".m.rule.room_one_to_one",
        ".m.rule.message",
        ".m.rule.encrypted",
    ]
    # Spec v1.17 (MSC4210): no legacy mention rules, which looked for the
    # user's name or "@room" in the body.
    legacy = {".m.rule.contains_display_name", ".m.rule.roomnotif"}
    assert not legacy & set(override)
    assert rules["content"] == rules["room"] == rules["sender"] == []
    master = rules["override"][0]
    assert (master["enabled"], master["default"], master["actions"]) == (False, True, [])
    invite = next(r for r in rules["override"] if r["rule_id"] == ".m.rule.invite_for_me")
    assert {"kind": "event_match", "key": "state_key", "pattern": alice.user_id} in invite[
        "conditions"
    ]
    assert all(rule["default"] for kind in rules.values() for rule in kind)
    assert await c.ok(alice, "GET", "/pushrules/global/") == rules
    assert await c.ok(alice, "GET", "/pushrules/global/override/.m.rule.master") == master
    path = "/pushrules/global/override/.m.rule.master"
    assert await c.ok(alice, "GET", f"{path}/enabled") == {"enabled": False}
    assert await c.ok(alice, "GET", f"{path}/actions") == {"actions": []}
    missing = "/pushrules/global/override/.m.rule.nothing"
    await c.refused(alice, "GET", missing, status=404, errcode="M_NOT_FOUND")
    # A rule is looked for in its own kind only.
    await c.refused(
        alice,
        "GET",
        "/pushrules/global/underride/.m.rule.master",
        status=404,
        errcode="M_NOT_FOUND",
    )
    await c.refused(
        alice, "GET", "/pushrules/global/nonsense/x", status=400, errcode="M_INVALID_PARAM"
    )
    await c.refused(alice, "GET", "/pushrules/device/", status=404, errcode="M_UNRECOGNIZED")
    await c.refused(None, "GET", "/pushrules/", status=401, errcode="M_MISSING_TOKEN")


async def test_user_rules_go_where_they_are_put_and_before_the_defaults(env: Env) -> None:
    c, alice = env.client, env.alice
    await _put(env, alice, "override", "a")
    # A new rule without a place comes first of the user's rules.
    await _put(env, alice, "override", "b")
    await _put(env, alice, "override", "c", before="a")
    await _put(env, alice, "override", "d", after="a")
    # 'before' wins when both are given.
    await _put(env, alice, "override", "e", before="b", after="a")
    override = await _ids(env, alice, "override")
    assert override[:7] == [
        ".m.rule.master",
        "e",
        "b",
        "c",
        "a",
        "d",
        ".m.rule.suppress_notices",
    ]
    # Replacing a rule keeps its place and whether it is enabled; placing
    # it moves it.
    await c.ok(alice, "PUT", "/pushrules/global/override/c/enabled", {"enabled": False})
    await c.ok(
        alice,
        "PUT",
        "/pushrules/global/override/c",
        {"actions": [], "conditions": [{"kind": "contains_display_name"}]},
    )
    assert await c.ok(alice, "GET", "/pushrules/global/override/c") == {
        "rule_id": "c",
        "default": False,
        "enabled": False,
        "conditions": [{"kind": "contains_display_name"}],
        "actions": [],
    }
    assert (await _ids(env, alice, "override"))[1:6] == ["e", "b", "c", "a", "d"]
    await _put(env, alice, "override", "e", after="d")
    assert (await _ids(env, alice, "override"))[1:6] == ["b", "c", "a", "d", "e"]

    await _put(env, alice, "underride", "u1")
    await _put(env, alice, "underride", "u2", after="u1")
    assert (await _ids(env, alice, "underride"))[:3] == ["u1", "u2", ".m.rule.call"]
    await _put(env, alice, "content", "cake")
    content = (await _rules(env, alice))["content"]
    assert [rule["rule_id"] for rule in content] == ["cake"]
    assert content[0] == {
        "rule_id": "cake",
        "default": False,
        "enabled": True,
        "pattern": "cake",
        "actions": ["notify"],
    }
    room_id = "!quiet:localhost"
    await c.ok(alice, "PUT", f"/pushrules/global/room/{q(room_id)}", {"actions": []})
    await c.ok(alice, "PUT", f"/pushrules/global/sender/{q(env.bob.user_id)}", {"actions": []})
    rules = await _rules(env, alice)
    assert rules["room"] == [{"rule_id": room_id, "default": False, "enabled": True, "actions": []}]
    assert [rule["rule_id"] for rule in rules["sender"]] == [env.bob.user_id]
    # The rules are Alice's alone.
    bob = await _rules(env, env.bob)
    assert not any(rule["default"] is False for kind in bob.values() for rule in kind)


async def test_enabled_actions_and_deleting(env: Env) -> None:
    c, alice = env.client, env.alice
    master = "/pushrules/global/override/.m.rule.master"
    assert await c.ok(alice, "PUT", f"{master}/enabled", {"enabled": True}) == {}
    assert await c.ok(alice, "GET", f"{master}/enabled") == {"enabled": True}
    message = "/pushrules/global/underride/.m.rule.message"
    quiet = ["notify", {"set_tweak": "sound", "value": "bell"}]
    assert await c.ok(alice, "PUT", f"{message}/actions", {"actions": quiet}) == {}
    assert await c.ok(alice, "GET", f"{message}/actions") == {"actions": quiet}
    changed = await c.ok(alice, "GET", message)
    assert (changed["default"], changed["enabled"], changed["actions"]) == (True, True, quiet)
    # Bob's defaults are untouched.
    assert await c.ok(env.bob, "GET", f"{master}/enabled") == {"enabled": False}

    await _put(env, alice, "content", "tea")
    tea = "/pushrules/global/content/tea"
    await c.ok(alice, "PUT", f"{tea}/enabled", {"enabled": False})
    await c.ok(alice, "PUT", f"{tea}/actions", {"actions": ["dont_notify"]})
    assert await c.ok(alice, "GET", tea) == {
        "rule_id": "tea",
        "default": False,
        "enabled": False,
        "pattern": "tea",
        "actions": ["dont_notify"],
    }
    assert await c.ok(alice, "DELETE", tea) == {}
    await c.refused(alice, "GET", tea, status=404, errcode="M_NOT_FOUND")
    await c.refused(alice, "DELETE", tea, status=404, errcode="M_NOT_FOUND")
    # A server-default rule cannot be deleted, only disabled.
    await c.refused(alice, "DELETE", master, status=404, errcode="M_NOT_FOUND")
    assert (await _ids(env, alice, "content")) == []
    assert await c.ok(alice, "GET", f"{master}/enabled") == {"enabled": True}


async def test_refusals_change_nothing(env: Env) -> None:
    c, alice = env.client, env.alice
    await _put(env, alice, "override", "mine")
    before = await _rules(env, alice)
    since = (await env.sync(alice))["next_batch"]
    rule = "/pushrules/global/override"
    ok_body = {"actions": ["notify"], "conditions": _MESSAGE}
    refusals: list[tuple[str, str, Any, dict[str, str], int, str]] = [
        ("PUT", f"{rule}/.mine", ok_body, {}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{rule}/{q('a/b')}", ok_body, {}, 400, "M_INVALID_PARAM"),
        ("PUT", rule + "/" + q("a\\b"), ok_body, {}, 400, "M_INVALID_PARAM"),
        ("PUT", "/pushrules/global/nonsense/x", ok_body, {}, 400, "M_INVALID_PARAM"),
        ("PUT", "/pushrules/device/override/x", ok_body, {}, 404, "M_UNRECOGNIZED"),
        ("PUT", "/pushrules/global/content/x", {"actions": []}, {}, 400, "M_BAD_JSON"),
        (
            "PUT",
            "/pushrules/global/content/x",
            {"pattern": 1, "actions": []},
            {},
            400,
            "M_BAD_JSON",
        ),
        ("PUT", f"{rule}/x", {"conditions": _MESSAGE}, {}, 400, "M_BAD_JSON"),
        ("PUT", f"{rule}/x", {"actions": "notify"}, {}, 400, "M_BAD_JSON"),
        ("PUT", f"{rule}/x", {"actions": ["notfy"]}, {}, 400, "M_BAD_JSON"),
        ("PUT", f"{rule}/x", {"actions": [{"value": 1}]}, {}, 400, "M_BAD_JSON"),
        ("PUT", f"{rule}/x", {"actions": [3]}, {}, 400, "M_BAD_JSON"),
        ("PUT", f"{rule}/x", {"actions": [], "conditions": "all"}, {}, 400, "M_BAD_JSON"),
        ("PUT", f"{rule}/x", {"actions": [], "conditions": [{"key": "a"}]}, {}, 400, "M_BAD_JSON"),
        (
            "PUT",
            f"{rule}/x",
            {"actions": [], "conditions": [{"kind": "event_match", "key": "type"}]},
            {},
            400,
            "M_BAD_JSON",
        ),
        (
            "PUT",
            f"{rule}/x",
            {"actions": [], "conditions": [{"kind": "room_member_count", "is": "many"}]},
            {},
            400,
            "M_BAD_JSON",
        ),
        (
            "PUT",
            f"{rule}/x",
            {
                "actions": [],
                "conditions": [{"kind": "event_property_is", "key": "a", "value": 1.5}],
            },
            {},
            400,
            "M_BAD_JSON",
        ),
        ("PUT", f"{rule}/x", ok_body, {"before": "nothing"}, 400, "M_UNKNOWN"),
        ("PUT", f"{rule}/x", ok_body, {"after": ".m.rule.suppress_notices"}, 400, "M_UNKNOWN"),
        ("PUT", f"{rule}/x", ok_body, {"before": ".m.rule.master"}, 400, "M_UNKNOWN"),
        # A rule of another kind is no place either.
        ("PUT", "/pushrules/global/underride/x", ok_body, {"after": "mine"}, 400, "M_UNKNOWN"),
        ("DELETE", f"{rule}/.m.rule.master", None, {}, 404, "M_NOT_FOUND"),
        ("DELETE", f"{rule}/nothing", None, {}, 404, "M_NOT_FOUND"),
        ("DELETE", "/pushrules/global/nonsense/mine", None, {}, 400, "M_INVALID_PARAM"),
        ("PUT", f"{rule}/nothing/enabled", {"enabled": True}, {}, 404, "M_NOT_FOUND"),
        ("PUT", f"{rule}/.m.rule.call/enabled", {"enabled": True}, {}, 404, "M_NOT_FOUND"),
        ("PUT", f"{rule}/.m.rule.master/enabled", {"enabled": "yes"}, {}, 400, "M_BAD_JSON"),
        ("PUT", f"{rule}/mine/enabled", {}, {}, 400, "M_BAD_JSON"),
        ("PUT", f"{rule}/mine/actions", {"actions": "notify"}, {}, 400, "M_BAD_JSON"),
        ("PUT", f"{rule}/nothing/actions", {"actions": []}, {}, 404, "M_NOT_FOUND"),
        ("PUT", f"{rule}/mine/colour", {"colour": "red"}, {}, 404, "M_UNRECOGNIZED"),
        ("PUT", f"{rule}/x", [], {}, 400, "M_NOT_JSON"),
        # Clients cannot write the rule set as account data.
        (
            "PUT",
            f"/user/{q(alice.user_id)}/account_data/m.push_rules",
            {"global": {}},
            {},
            405,
            "M_BAD_JSON",
        ),
    ]
    for method, path, body, params, status, errcode in refusals:
        await c.refused(alice, method, path, body, params=params, status=status, errcode=errcode)
    await c.refused(None, "PUT", f"{rule}/x", ok_body, status=401, errcode="M_MISSING_TOKEN")
    assert await _rules(env, alice) == before
    after = await env.sync(alice, since=since)
    assert _push_rules_events(after) == []


async def test_sync_carries_the_rule_set_at_first_and_after_each_change(env: Env) -> None:
    c, alice = env.client, env.alice
    first = await env.sync(alice)
    (event,) = _push_rules_events(first)
    assert event["content"] == {"global": await _rules(env, alice)}
    path = f"/user/{q(alice.user_id)}/account_data/m.push_rules"
    assert await c.ok(alice, "GET", path) == event["content"]
    await c.refused(env.bob, "GET", path, status=403, errcode="M_FORBIDDEN")

    # Nothing changed: nothing again.
    again = await env.sync(alice, since=first["next_batch"])
    assert _push_rules_events(again) == []

    await _put(env, alice, "override", "mine")
    changed = await env.sync(alice, since=again["next_batch"])
    (event,) = _push_rules_events(changed)
    rules = event["content"]["global"]
    assert [rule["rule_id"] for rule in rules["override"][:2]] == [".m.rule.master", "mine"]
    assert event["content"] == {"global": await _rules(env, alice)}
    assert await c.ok(alice, "GET", path) == event["content"]
    # Bob's sync does not carry Alice's change.
    bob_first = await env.sync(env.bob)
    (bob_event,) = _push_rules_events(bob_first)
    await c.ok(alice, "PUT", "/pushrules/global/override/mine/enabled", {"enabled": False})
    bob_later = await env.sync(env.bob, since=bob_first["next_batch"])
    assert _push_rules_events(bob_later) == []
    # A later initial sync carries the whole set too.
    (latest,) = _push_rules_events(await env.sync(alice))
    assert latest["content"]["global"]["override"][1]["enabled"] is False
    assert "mine" not in [rule["rule_id"] for rule in bob_event["content"]["global"]["override"]]


async def test_a_long_poll_is_woken_by_a_push_rule_change(env: Env) -> None:
    c, alice, bob = env.client, env.alice, env.bob
    since = (await env.sync(alice))["next_batch"]
    master = "/pushrules/global/override/.m.rule.master/enabled"
    answer = await env.woken_sync(
        alice,
        since,
        # Bob's change concerns Bob only: Alice's poll sleeps on.
        quiet=lambda: c.ok(bob, "PUT", master, {"enabled": True}),
        wake=lambda: c.ok(alice, "PUT", master, {"enabled": True}),
    )
    (event,) = _push_rules_events(answer)
    assert event["content"]["global"]["override"][0]["enabled"] is True


async def test_concurrent_changes_of_one_user_all_land(env: Env) -> None:
    c, alice = env.client, env.alice

    async with trio.open_nursery() as nursery:
        for n in range(6):
            nursery.start_soon(_put, env, alice, "override", f"r{n}")
        for kind, rule_id in (("override", ".m.rule.master"), ("underride", ".m.rule.call")):
            path = f"/pushrules/global/{kind}/{rule_id}/enabled"
            nursery.start_soon(c.ok, alice, "PUT", path, {"enabled": True})
    rules = await _rules(env, alice)
    assert sorted(r["rule_id"] for r in rules["override"] if not r["default"]) == [
        f"r{n}" for n in range(6)
    ]
    assert rules["override"][0]["enabled"] is True
    assert rules["underride"][0]["enabled"] is True


# --- matrix-nio -------------------------------------------------------------------


async def test_a_matrix_nio_client_changes_its_rules_and_reads_them_from_sync(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio_asyncio.open_loop(), open_test_homeserver(tmp_path / "hs") as hs:
        client = nio.AsyncClient(hs.client_url, store_path="")
        try:
            registered = await aio(client.register, "alice", "password of alice")
            assert isinstance(registered, nio.RegisterResponse), registered
            first = await aio(client.sync, timeout=0)
            assert isinstance(first, nio.SyncResponse), first
            (event,) = [e for e in first.account_data_events if isinstance(e, nio.PushRulesEvent)]
            assert event.global_rules.override[0].id == ".m.rule.master"

            condition = nio.PushEventMatch("content.body", "*cake*")
            put = await aio(
                client.set_pushrule,
                "global",
                nio.PushRuleKind.override,
                "cake",
                actions=[nio.PushNotify()],
                conditions=[condition],
            )
            assert isinstance(put, nio.SetPushRuleResponse), put
            quiet = await aio(
                client.set_pushrule,
                "global",
                nio.PushRuleKind.room,
                "!quiet:localhost",
                before=None,
                actions=[],
            )
            assert isinstance(quiet, nio.SetPushRuleResponse), quiet
            enabled = await aio(
                client.enable_pushrule, "global", nio.PushRuleKind.override, ".m.rule.master", True
            )
            assert isinstance(enabled, nio.EnablePushRuleResponse), enabled
            actions = await aio(
                client.set_pushrule_actions,
                "global",
                nio.PushRuleKind.override,
                "cake",
                [nio.PushNotify(), nio.PushSetTweak("highlight", True)],
            )
            assert isinstance(actions, nio.SetPushRuleActionsResponse), actions
            deleted = await aio(
                client.delete_pushrule, "global", nio.PushRuleKind.room, "!quiet:localhost"
            )
            assert isinstance(deleted, nio.DeletePushRuleResponse), deleted

            later = await aio(client.sync, timeout=0)
            assert isinstance(later, nio.SyncResponse), later
            (event,) = [e for e in later.account_data_events if isinstance(e, nio.PushRulesEvent)]
            override = event.global_rules.override
            assert [rule.id for rule in override[:2]] == [".m.rule.master", "cake"]
            assert override[0].enabled is True
            cake = override[1]
            assert (cake.default, cake.enabled) == (False, True)
            assert cake.conditions == [condition]
            assert cake.actions == [nio.PushNotify(), nio.PushSetTweak("highlight", True)]
            assert event.global_rules.room == []
            # nio checks every response against the spec's schemas.
            assert not invalid_responses(caplog)
        finally:
            await aio(client.close)


async def test_every_predefined_rule_takes_new_actions_and_is_switched(env: Env) -> None:
    c, alice = env.client, env.alice
    rules = await _rules(env, alice)
    for kind, listed in rules.items():
        for rule in listed:
            path = f"/pushrules/global/{kind}/{q(rule['rule_id'])}"
            await c.ok(alice, "PUT", f"{path}/actions", {"actions": ["dont_notify"]})
            assert await c.ok(alice, "GET", f"{path}/actions") == {"actions": ["dont_notify"]}
            for enabled in (False, True, False):
                await c.ok(alice, "PUT", f"{path}/enabled", {"enabled": enabled})
                assert await c.ok(alice, "GET", f"{path}/enabled") == {"enabled": enabled}
    changed = await _rules(env, alice)
    assert [r["rule_id"] for k in changed.values() for r in k] == [
        r["rule_id"] for k in rules.values() for r in k
    ]
    assert all(
        (r["enabled"], r["actions"]) == (False, ["dont_notify"])
        for k in changed.values()
        for r in k
    )


async def test_a_rule_put_twice_is_one_rule_and_any_script_names_it(env: Env) -> None:
    c, alice = env.client, env.alice
    for _ in range(2):
        await c.ok(alice, "PUT", f"/pushrules/global/sender/{q('@a:example.org')}", {"actions": []})
    assert await _ids(env, alice, "sender") == ["@a:example.org"]
    body = {"pattern": "тест", "actions": ["notify"]}
    await c.ok(alice, "PUT", f"/pushrules/global/content/{q('тест')}", body)
    assert await c.ok(alice, "GET", f"/pushrules/global/content/{q('тест')}") == {
        "rule_id": "тест",
        "default": False,
        "enabled": True,
        "pattern": "тест",
        "actions": ["notify"],
    }


async def test_paths_short_of_a_rule_are_refused(env: Env) -> None:
    c, alice = env.client, env.alice
    body = {"actions": ["notify"]}
    for path in (
        "/pushrules/",
        "/pushrules/global",
        "/pushrules/global/room",
        "/pushrules/global/room/",
    ):
        status, answer = await c.call(alice, "PUT", path, body)
        assert 400 <= status < 500, (path, status, answer)
        assert isinstance(answer.get("errcode"), str), (path, answer)
    for path in ("/pushrules/not_a_scope/", "/pushrules/global/not_a_kind/x"):
        status, answer = await c.call(alice, "GET", path)
        assert 400 <= status < 500, (path, status, answer)
        assert isinstance(answer.get("errcode"), str), (path, answer)
    assert await _ids(env, alice, "room") == []
