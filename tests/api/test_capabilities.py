"""What clients ask at start-up, over real HTTP: capabilities, TURN servers
and, without bridges, third-party protocols (push rules:
test_api_push_rules.py; third-party lookups: test_third_party.py).
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
        assert capabilities["m.change_password"] == {"enabled": True}
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
