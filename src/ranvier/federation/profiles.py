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
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.protocol.untrusted_json import decode_untrusted_json

from .query_client import query_server, unusable_answer

__all__ = ["PROFILE_PATH", "FederationProfileClient", "LocalProfileSource"]

PROFILE_PATH: Final = "/_matrix/federation/v1/query/profile"
#: A profile is two short strings; anything much larger is not one.
_MAX_ANSWER_BYTES: Final = 64 * 1024
_WHAT: Final = "profile"


class FederationProfileClient:
    """Asks a user's server for their profile."""

    def __init__(self, client: FederationHttpClient) -> None:
        self._client = client

    async def query_profile(self, server_name: str, user_id: str) -> Mapping[str, Any]:
        body = await query_server(
            self._client,
            server_name,
            PROFILE_PATH,
            {"user_id": user_id},
            what=_WHAT,
            not_found=f"{server_name} knows no user {user_id}",
            max_response_bytes=_MAX_ANSWER_BYTES,
        )
        try:
            answer = decode_untrusted_json(body)
        except msgspec.DecodeError as exc:
            raise unusable_answer(server_name, _WHAT, f"not JSON: {exc}") from None
        if not isinstance(answer, dict):
            raise unusable_answer(server_name, _WHAT, "the answer is not a JSON object")
        return answer


class LocalProfileSource:
    """Our users' profiles as other servers' ``/query/profile`` sees them."""

    def __init__(self, profiles: Profiles) -> None:
        self._profiles = profiles

    async def get_profile(self, user_id: str) -> Mapping[str, Any] | None:
        return await self._profiles.local_profile(user_id)
