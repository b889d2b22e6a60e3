"""What clients ask at start-up, over real HTTP: capabilities, push rules,
TURN servers and third-party protocols.
"""

from __future__ import annotations

from pathlib import Path

from _client import Client

from ranvier.protocol.room_versions import SUPPORTED_ROOM_VERSIONS
from ranvier.testing.homeserver import open_test_homeserver


async def test_capabilities_and_the_stubs(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        c = Client(hs, http)
        alice = await hs.register_user("alice")
        capabilities = (await c.ok(alice, "GET", "/capabilities"))["capabilities"]
        assert capabilities["m.change_password"] == {"enabled": False}
        assert capabilities["m.set_displayname"] == {"enabled": True}
        assert capabilities["m.set_avatar_url"] == {"enabled": True}
        assert capabilities["m.3pid_changes"] == {"enabled": False}
        versions = capabilities["m.room_versions"]
        assert versions["default"] == "12"
        assert versions["available"] == dict.fromkeys(SUPPORTED_ROOM_VERSIONS, "stable")
        assert "1" not in versions["available"]
        assert await c.ok(alice, "GET", "/voip/turnServer") == {}
        assert await c.ok(alice, "GET", "/thirdparty/protocols") == {}
        for path in ("/capabilities", "/voip/turnServer", "/thirdparty/protocols", "/pushrules/"):
            await c.refused(None, "GET", path, status=401, errcode="M_MISSING_TOKEN")


async def test_push_rules_are_the_predefined_set(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        c = Client(hs, http)
        alice = await hs.register_user("alice")
        rules = (await c.ok(alice, "GET", "/pushrules/"))["global"]
        assert set(rules) == {"override", "content", "room", "sender", "underride"}
        override = [rule["rule_id"] for rule in rules["override"]]
        assert override[0] == ".m.rule.master"
        assert override.index(".m.rule.suppress_notices") == 1
        assert {".m.rule.invite_for_me", ".m.rule.is_user_mention", ".m.rule.tombstone"} <= set(
            override
        )
        assert [rule["rule_id"] for rule in rules["underride"]] == [
            ".m.rule.call",
            ".m.rule.encrypted_room_one_to_one",
            ".m.rule.room_one_to_one",
            ".m.rule.message",
            ".m.rule.encrypted",
        ]
        (user_name,) = rules["content"]
        assert (user_name["rule_id"], user_name["pattern"]) == (
            ".m.rule.contains_user_name",
            "alice",
        )
        master = rules["override"][0]
        assert (master["enabled"], master["default"], master["actions"]) == (False, True, [])
        invite = next(r for r in rules["override"] if r["rule_id"] == ".m.rule.invite_for_me")
        assert {"kind": "event_match", "key": "state_key", "pattern": alice.user_id} in invite[
            "conditions"
        ]
        assert all(rule["default"] for kind in rules.values() for rule in kind)
        assert await c.ok(alice, "GET", "/pushrules/global/") == rules
        one = await c.ok(alice, "GET", "/pushrules/global/override/.m.rule.master")
        assert one == master
        assert await c.ok(alice, "GET", "/pushrules/global/override/.m.rule.master/enabled") == {
            "enabled": False
        }
        await c.refused(
            alice,
            "GET",
            "/pushrules/global/override/.m.rule.nothing",
            status=404,
            errcode="M_NOT_FOUND",
        )
        await c.refused(alice, "GET", "/pushrules/device/", status=404, errcode="M_NOT_FOUND")
        # Changing rules is not offered, and changes nothing.
        await c.refused(
            alice,
            "PUT",
            "/pushrules/global/content/mine",
            {"pattern": "x", "actions": []},
            status=400,
            errcode="M_UNRECOGNIZED",
        )
        await c.refused(
            alice,
            "PUT",
            "/pushrules/global/override/.m.rule.master/enabled",
            {"enabled": True},
            status=400,
            errcode="M_UNRECOGNIZED",
        )
        await c.refused(
            alice,
            "DELETE",
            "/pushrules/global/override/.m.rule.master",
            status=400,
            errcode="M_UNRECOGNIZED",
        )
        assert (await c.ok(alice, "GET", "/pushrules/"))["global"] == rules
