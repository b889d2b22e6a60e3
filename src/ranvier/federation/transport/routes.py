"""The endpoints every federating server answers from the start: its version
and its own signing keys.

Other servers fetch ``GET /_matrix/key/v2/server`` to learn the keys that
this server's requests and events are signed with, and may cache them until
``valid_until_ts``. The response is signed by every key it lists, so a
notary that relays it cannot change it unnoticed. Keys this server used to
have would be listed under ``old_verify_keys``; none are kept yet, so it is
empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ranvier
from ranvier.federation.transport.server import Request, Router
from ranvier.protocol.signing import (
    SigningKeyLike,
    encode_verify_key_base64,
    key_id,
    sign_json,
)

__all__ = [
    "add_key_server_route",
    "add_version_route",
    "server_keys_json",
    "wall_clock_ms",
]


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch, the unit of Matrix timestamps.

    Trio's clock is monotonic and has no epoch, so timestamps that other
    servers read come from the system clock.
    """
    return time.time_ns() // 1_000_000


def server_keys_json(
    server_name: str, signing_keys: Sequence[SigningKeyLike], valid_until_ts: int
) -> dict[str, Any]:
    """The body of ``/_matrix/key/v2/server``, signed by each of ``signing_keys``."""
    if not signing_keys:
        raise ValueError("a server publishes at least one signing key")
    body: dict[str, Any] = {
        "server_name": server_name,
        "valid_until_ts": valid_until_ts,
        "verify_keys": {
            key_id(key): {"key": encode_verify_key_base64(key.verify_key)} for key in signing_keys
        },
        "old_verify_keys": {},
    }
    for key in signing_keys:
        body = sign_json(body, server_name, key)
    return body


def add_key_server_route(
    router: Router,
    *,
    server_name: str,
    signing_keys: Sequence[SigningKeyLike],
    validity_ms: int,
    clock: Callable[[], int] = wall_clock_ms,
) -> None:
    """Serve our keys at ``GET /_matrix/key/v2/server``, valid for ``validity_ms``.

    ``clock`` gives the time in milliseconds since the epoch; tests pass a
    fixed one.
    """
    if validity_ms <= 0:
        raise ValueError(f"validity_ms must be positive, not {validity_ms}")
    keys = list(signing_keys)
    server_keys_json(server_name, keys, 0)  # refuse an empty key list now, not per request

    async def get_server_keys(request: Request) -> Mapping[str, Any]:
        return server_keys_json(server_name, keys, clock() + validity_ms)

    router.add("GET", "/_matrix/key/v2/server", get_server_keys, authenticated=False)


def add_version_route(router: Router) -> None:
    """Serve ``GET /_matrix/federation/v1/version``, which the spec leaves open."""

    async def get_version(request: Request) -> Mapping[str, Any]:
        return {"server": {"name": "ranvier", "version": ranvier.__version__}}

    router.add("GET", "/_matrix/federation/v1/version", get_version, authenticated=False)
