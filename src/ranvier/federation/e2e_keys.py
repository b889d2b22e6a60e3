"""End-to-end encryption keys over federation.

Served to other servers, for this server's users only:

* ``POST /v1/user/keys/query``: device keys and the master and
  self-signing keys (never a user-signing key: that is its user's alone);
* ``POST /v1/user/keys/claim``: one-time keys, each handed out once;
* ``GET /v1/user/devices/{userId}``: a user's devices with their keys, and
  the device-list stream position they are as of.

Devices' display names go with them only where the operator shares them
(``[federation] allow_device_name_lookup_over_federation``), as
:class:`~ranvier.core.e2e_keys.E2eKeys` decides.

And asked of other servers by ``/keys/query`` and ``/keys/claim`` for
their users, and for a user's whole device list to keep
(:class:`FederationKeyClient`).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from ranvier.core.e2e_keys import E2eKeys
from ranvier.errors import BadJsonError, MatrixError
from ranvier.federation.transport.client import FederationError, FederationHttpClient
from ranvier.federation.transport.server import Request, Router
from ranvier.protocol.untrusted_json import decode_untrusted_json

from .query_client import unusable_answer

__all__ = ["FederationKeyClient", "add_e2e_key_routes"]

_PREFIX: Final = "/_matrix/federation/v1"
#: A key answer for a handful of users' devices; far beyond is not one.
_MAX_ANSWER_BYTES: Final = 4 * 1024 * 1024


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


class FederationKeyClient:
    """Asks another server for its users' keys."""

    def __init__(self, client: FederationHttpClient) -> None:
        self._client = client

    async def _post(self, server: str, path: str, content: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("POST", server, path, content)

    async def _request(
        self, method: str, server: str, path: str, content: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        what = "key answer"
        try:
            response = await self._client.request(
                method,
                server,
                f"{_PREFIX}{path}",
                content=content,
                max_response_bytes=_MAX_ANSWER_BYTES,
            )
        except FederationError as exc:
            raise unusable_answer(server, what, str(exc)) from None
        try:
            answer = decode_untrusted_json(response.body)
        except msgspec.DecodeError as exc:
            raise unusable_answer(server, what, f"not JSON: {exc}") from None
        if not isinstance(answer, dict):
            raise unusable_answer(server, what, "the answer is not a JSON object")
        return answer

    async def query_keys(self, server: str, device_keys: Mapping[str, list[str]]) -> dict[str, Any]:
        return await self._post(server, "/user/keys/query", {"device_keys": dict(device_keys)})

    async def user_devices(self, server: str, user_id: str) -> dict[str, Any]:
        """``GET /user/devices/{userId}``: the user's devices with their keys."""
        path = f"/user/devices/{urllib.parse.quote(user_id, safe='')}"
        return await self._request("GET", server, path, None)

    async def claim_keys(
        self, server: str, one_time_keys: Mapping[str, Mapping[str, str]]
    ) -> dict[str, Any]:
        wanted = {user_id: dict(devices) for user_id, devices in one_time_keys.items()}
        return await self._post(server, "/user/keys/claim", {"one_time_keys": wanted})


def add_e2e_key_routes(router: Router, *, server_name: str, keys: E2eKeys) -> None:
    """Serve our users' keys to other servers."""

    def body_object(request: Request, name: str) -> dict[str, Any]:
        content = request.content
        part = content.get(name) if isinstance(content, dict) else None
        if not isinstance(part, dict):
            raise BadJsonError(f"'{name}' must be an object")
        return part

    async def query(request: Request) -> Mapping[str, Any]:
        wanted: dict[str, list[str]] = {}
        for user_id, devices in body_object(request, "device_keys").items():
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise BadJsonError(f"the devices of {user_id[:80]} must be a list of device IDs")
            if _server_of(user_id) == server_name:
                wanted[user_id] = devices
        return await keys.local_query(wanted)

    async def claim(request: Request) -> Mapping[str, Any]:
        wanted: list[tuple[str, str, str]] = []
        for user_id, devices in body_object(request, "one_time_keys").items():
            if not isinstance(devices, dict) or not all(
                isinstance(algorithm, str) for algorithm in devices.values()
            ):
                raise BadJsonError(
                    f"the devices of {user_id[:80]} must be an object of device IDs to algorithms"
                )
            if _server_of(user_id) == server_name:
                wanted.extend((user_id, device, algorithm) for device, algorithm in devices.items())
        return {"one_time_keys": await keys.local_claim(wanted)}

    async def devices(request: Request) -> Mapping[str, Any]:
        user_id = request.path_params["user_id"]
        if _server_of(user_id) != server_name:
            raise MatrixError(
                f"{user_id[:80]} is not a user of this server",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        position = await keys.device_lists_position()
        found = await keys.devices_for_servers(user_id)
        listed = [
            {"device_id": device_id, **entry}
            for device_id, entry in sorted(found.pop("devices").items())
        ]
        return {"user_id": user_id, "stream_id": position, "devices": listed, **found}

    router.add("POST", f"{_PREFIX}/user/keys/query", query)
    router.add("POST", f"{_PREFIX}/user/keys/claim", claim)
    router.add("GET", f"{_PREFIX}/user/devices/{{user_id}}", devices)
