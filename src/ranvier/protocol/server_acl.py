"""Server ACLs (``m.room.server_acl``): which servers a room's ACL lets in.

The spec's algorithm, with no I/O: the federation layer applies it to the
servers that ask about a room, and event creation applies it to this
server itself, so that none of its users sends an ACL that would shut it
out of the room (the spec warns that an ACL without an allow rule denies
every server, its sender too).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["SERVER_ACL_KEY", "SERVER_ACL_TYPE", "server_allowed_by_acl"]

SERVER_ACL_TYPE: Final = "m.room.server_acl"
#: The ACL's key in a room's state: the state key is empty.
SERVER_ACL_KEY: Final = (SERVER_ACL_TYPE, "")


def _glob(pattern: str) -> re.Pattern[str]:
    """A server ACL glob: ``*`` any run of characters, ``?`` any one."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _is_ip_literal(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        return True
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _host(server_name: str) -> str:
    """The server name without its port, as ACL entries are written."""
    if server_name.startswith("["):
        return server_name[: server_name.find("]") + 1]
    return server_name.rpartition(":")[0] if ":" in server_name else server_name


def server_allowed_by_acl(server_name: str, content: Mapping[str, Any]) -> bool:
    """Whether an ``m.room.server_acl`` event with ``content`` lets ``server_name`` in.

    The spec's order: an IP literal is refused when ``allow_ip_literals`` is
    false; then any ``deny`` match refuses; then an ``allow`` match admits;
    anything else is refused (so a missing ``allow`` refuses everyone).
    Entries that are not strings are ignored, and so is a list that is not
    a list; ports never take part.
    """
    host = _host(server_name)
    allow_ip_literals = content.get("allow_ip_literals", True)
    if _is_ip_literal(host) and allow_ip_literals is False:
        return False
    deny = content.get("deny")
    allow = content.get("allow")
    for entry in deny if isinstance(deny, list) else ():
        if isinstance(entry, str) and _glob(entry).fullmatch(host):
            return False
    return any(
        isinstance(entry, str) and _glob(entry).fullmatch(host)
        for entry in (allow if isinstance(allow, list) else ())
    )
