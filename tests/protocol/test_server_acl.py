"""Server ACLs as the spec's algorithm applies them."""

from __future__ import annotations

from typing import Any

import pytest

from ranvier.protocol.server_acl import server_allowed_by_acl


@pytest.mark.parametrize(
    ("server", "content", "allowed"),
    [
        # No allow list lets no one in.
        ("a.test", {}, False),
        ("a.test", {"deny": []}, False),
        ("a.test", {"allow": ["*"]}, True),
        # Deny wins over allow.
        ("evil.test", {"allow": ["*"], "deny": ["evil.test"]}, False),
        ("good.test", {"allow": ["*"], "deny": ["evil.test"]}, True),
        # Globs: * any run, ? one character, anchored at both ends.
        ("sub.evil.test", {"allow": ["*"], "deny": ["*.evil.test"]}, False),
        ("evil.test", {"allow": ["*"], "deny": ["*.evil.test"]}, True),
        ("a1.test", {"allow": ["a?.test"]}, True),
        ("a12.test", {"allow": ["a?.test"]}, False),
        ("xa.test", {"allow": ["a.test"]}, False),
        ("localhost", {"allow": ["*"], "deny": ["l?calhost?", "?localhost", "localhos"]}, True),
        ("localhost", {"allow": ["*"], "deny": ["l?calh*st"]}, False),
        # Ports never take part; case does not matter.
        ("evil.test:8448", {"allow": ["*"], "deny": ["evil.test"]}, False),
        ("EVIL.test", {"allow": ["*"], "deny": ["evil.test"]}, False),
        # Regex characters are literal.
        ("aXtest", {"allow": ["a.test"]}, False),
        # IP literals only when allowed (they are by default).
        ("1.2.3.4", {"allow": ["*"]}, True),
        ("1.2.3.4:8448", {"allow": ["*"], "allow_ip_literals": False}, False),
        ("[::1]:8448", {"allow": ["*"], "allow_ip_literals": False}, False),
        ("a.test", {"allow": ["*"], "allow_ip_literals": False}, True),
        # A value that is not a boolean counts as the default, true.
        ("1.2.3.4", {"allow": ["*"], "allow_ip_literals": "false"}, True),
        ("1.2.3.4", {"allow": ["*"], "allow_ip_literals": 0}, True),
        # Malformed entries and lists are ignored.
        ("a.test", {"allow": ["*"], "deny": "a.test"}, True),
        ("a.test", {"allow": [3, "a.test"], "deny": [None]}, True),
        ("a.test", {"allow": "*"}, False),
    ],
)
def test_server_acl(server: str, content: dict[str, Any], allowed: bool) -> None:
    assert server_allowed_by_acl(server, content) is allowed
