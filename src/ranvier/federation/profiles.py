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
#: A profile stays under 64 KiB as compact JSON; twice that leaves room
#: for another server's spacing, and anything larger is not a profile.
_MAX_ANSWER_BYTES: Final = 128 * 1024
_WHAT: Final = "profile"


class FederationProfileClient:
    """Asks a user's server for their profile, or one field of it."""

    def __init__(self, client: FederationHttpClient) -> None:
        self._client = client

    async def query_profile(
        self, server_name: str, user_id: str, field: str | None = None
    ) -> Mapping[str, Any]:
        query = {"user_id": user_id} if field is None else {"user_id": user_id, "field": field}
        body = await query_server(
            self._client,
            server_name,
            PROFILE_PATH,
            query,
            what=_WHAT,
            not_found=f"{server_name} knows no user {user_id}",
            forbidden=f"{server_name} does not disclose the profile of {user_id}",
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
    """Our users' profiles as other servers' ``/query/profile`` sees them:
    every field, as the client API shows them.
    """

    def __init__(self, profiles: Profiles) -> None:
        self._profiles = profiles

    async def get_profile(self, user_id: str) -> Mapping[str, Any] | None:
        return await self._profiles.local_fields(user_id)
