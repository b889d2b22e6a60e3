"""Synapse's admin API for registration tokens
(``/_synapse/admin/v1/registration_tokens``), admins only: list them (all,
or only those valid or not), read, create (a given token or a random one),
change ``uses_allowed`` and ``expiry_time``, delete
(:class:`ranvier.core.registration_tokens.RegistrationTokens`).

The answers and errors have Synapse's shapes, so its admin tools work
here: a token object of ``token``, ``uses_allowed``, ``pending``,
``completed`` and ``expiry_time``; 404 ``M_NOT_FOUND`` for an unknown
token; 400 ``M_INVALID_PARAM`` for values of the wrong type or range.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ranvier.api.admin_common import ADMIN_V1, body_object, require_admin
from ranvier.api.auth import Auth
from ranvier.api.query_params import flag_param, invalid_param
from ranvier.core.registration_tokens import RegistrationTokens, token_json
from ranvier.protocol.canonical import CANONICAL_INT_MAX, CANONICAL_INT_MIN
from ranvier.web import Request, Router

__all__ = ["add_admin_registration_token_routes"]

_TOKENS: Final = f"{ADMIN_V1}/registration_tokens"


def _optional_int(body: Mapping[str, Any], key: str, what: str) -> int | None:
    """``body[key]``: an integer (not a boolean) or null.

    Bounded by canonical JSON's integers: anything larger is no count or
    timestamp, and SQLite cannot store it.
    """
    value = body.get(key)
    if value is not None and (
        type(value) is not int or not CANONICAL_INT_MIN <= value <= CANONICAL_INT_MAX
    ):
        raise invalid_param(f"{key} must be {what} or null")
    return value


def add_admin_registration_token_routes(
    router: Router, *, auth: Auth, tokens: RegistrationTokens
) -> None:
    """Serve the registration token admin API."""

    async def list_tokens(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        records = await tokens.list(flag_param(request, "valid"))
        return {"registration_tokens": [token_json(record) for record in records]}

    async def new_token(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        body = body_object(request)
        token = body.get("token")
        if token is not None and not isinstance(token, str):
            raise invalid_param("token must be a string")
        record = await tokens.create(
            token,
            length=_optional_int(body, "length", "an integer from 1 to 64"),
            uses_allowed=_optional_int(body, "uses_allowed", "a non-negative integer"),
            expiry_time=_optional_int(body, "expiry_time", "an integer"),
        )
        return token_json(record)

    async def get_token(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return token_json(await tokens.get(request.path_params["token"]))

    async def update_token(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        body = body_object(request)
        changes: dict[str, int | None] = {}
        if "uses_allowed" in body:
            changes["uses_allowed"] = _optional_int(body, "uses_allowed", "a non-negative integer")
        if "expiry_time" in body:
            changes["expiry_time"] = _optional_int(body, "expiry_time", "an integer")
        token = request.path_params["token"]
        if not changes:
            return token_json(await tokens.get(token))
        return token_json(await tokens.update(token, **changes))

    async def delete_token(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        await tokens.delete(request.path_params["token"])
        return {}

    router.add("GET", _TOKENS, list_tokens)
    router.add("POST", f"{_TOKENS}/new", new_token)
    router.add("GET", f"{_TOKENS}/{{token}}", get_token)
    router.add("PUT", f"{_TOKENS}/{{token}}", update_token)
    router.add("DELETE", f"{_TOKENS}/{{token}}", delete_token)
