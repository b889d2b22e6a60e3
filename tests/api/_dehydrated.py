"""Calls to the dehydrated device endpoints (MSC3814, at their unstable
paths) and upload bodies, for the tests of dehydrated devices."""

from __future__ import annotations

from typing import Any

import msgspec
from _client import Client
from _e2e import OTK, DeviceKeys, device_keys, one_time_keys

from ranvier.protocol.signing import sign_json
from ranvier.testing.homeserver import TestUser

PATH = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"


async def call(
    client: Client, user: TestUser | None, method: str, path: str = "", body: Any = None
) -> tuple[int, Any]:
    """``(status, JSON)`` of a request to the dehydrated device ``path``."""
    headers = {} if user is None else {"Authorization": f"Bearer {user.access_token}"}
    content = None if body is None else msgspec.json.encode(body)
    response = await client.http.request(method, PATH + path, content=content, headers=headers)
    return response.status_code, response.json()


async def ok(client: Client, user: TestUser, method: str, path: str = "", body: Any = None) -> Any:
    status, answer = await call(client, user, method, path, body)
    assert status == 200, (method, path, answer)
    return answer


async def refused(
    client: Client,
    user: TestUser | None,
    method: str,
    path: str = "",
    body: Any = None,
    *,
    status: int,
    errcode: str,
) -> None:
    got, answer = await call(client, user, method, path, body)
    assert (got, answer.get("errcode")) == (status, errcode), (method, path, answer)
    assert answer["error"]


def dehydrated_body(
    user: TestUser, device_id: str, *otks: str
) -> tuple[dict[str, Any], DeviceKeys]:
    """A ``PUT`` body for a dehydrated device ``device_id`` of ``user``, and its keys."""
    keys = device_keys(user, device_id=device_id)
    body = {
        "device_id": device_id,
        "device_data": {"algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": device_id},
        "initial_device_display_name": "Dehydrated device",
        "device_keys": keys.body,
        "one_time_keys": one_time_keys(keys, user, *otks),
        "fallback_keys": {
            f"{OTK}:fb": sign_json(
                {"key": "fallback", "fallback": True}, user.user_id, keys.signing_key
            )
        },
    }
    return body, keys
