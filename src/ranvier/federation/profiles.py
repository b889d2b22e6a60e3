"""Profiles over federation: asking another server for one of its users'
profile (``GET /_matrix/federation/v1/query/profile``), for
:class:`~ranvier.core.profiles.Profiles`, and the source our own answer
to that query reads (:func:`ranvier.federation.queries.add_query_routes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from ranvier.core.profiles import Profiles
from ranvier.errors import MatrixError
from ranvier.federation.transport.client import (
    FederationError,
    FederationHttpClient,
    FederationRequestError,
)

__all__ = ["PROFILE_PATH", "FederationProfileClient", "LocalProfileSource"]

PROFILE_PATH: Final = "/_matrix/federation/v1/query/profile"
#: A profile is two short strings; anything much larger is not one.
_MAX_ANSWER_BYTES: Final = 64 * 1024


class FederationProfileClient:
    """Asks a user's server for their profile."""

    def __init__(self, client: FederationHttpClient) -> None:
        self._client = client

    async def query_profile(self, server_name: str, user_id: str) -> Mapping[str, Any]:
        try:
            response = await self._client.request(
                "GET",
                server_name,
                PROFILE_PATH,
                query={"user_id": user_id},
                max_response_bytes=_MAX_ANSWER_BYTES,
            )
        except FederationRequestError as exc:
            if exc.status == 404:
                raise MatrixError(
                    f"{server_name} knows no user {user_id}",
                    errcode="M_NOT_FOUND",
                    http_status=404,
                ) from None
            raise _unusable(server_name, str(exc)) from None
        except FederationError as exc:
            raise _unusable(server_name, str(exc)) from None
        try:
            answer = msgspec.json.decode(response.body)
        except msgspec.DecodeError as exc:
            raise _unusable(server_name, f"not JSON: {exc}") from None
        if not isinstance(answer, dict):
            raise _unusable(server_name, "the answer is not a JSON object")
        return answer


class LocalProfileSource:
    """Our users' profiles as other servers' ``/query/profile`` sees them."""

    def __init__(self, profiles: Profiles) -> None:
        self._profiles = profiles

    async def get_profile(self, user_id: str) -> Mapping[str, Any] | None:
        return await self._profiles.local_profile(user_id)


def _unusable(server_name: str, message: str) -> MatrixError:
    return MatrixError(
        f"{server_name} gave no usable profile: {message}", errcode="M_UNKNOWN", http_status=502
    )
