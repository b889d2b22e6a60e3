"""``POST /user_directory/search``; see :mod:`ranvier.core.user_directory`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.account import json_object
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.core.user_directory import DEFAULT_RESULTS, UserDirectory
from ranvier.errors import BadJsonError
from ranvier.web import Request, Router

__all__ = ["add_user_directory_routes"]


def add_user_directory_routes(router: Router, *, auth: Auth, directory: UserDirectory) -> None:
    async def search(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        body = json_object(request)
        term = body.get("search_term")
        if not isinstance(term, str):
            raise BadJsonError("'search_term' is required and must be a string")
        limit = body.get("limit", DEFAULT_RESULTS)
        if type(limit) is not int or limit < 0:
            raise BadJsonError("'limit' must be a non-negative integer")
        return await directory.search(requester.user_id, term, limit)

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("POST", f"{prefix}/user_directory/search", search)
