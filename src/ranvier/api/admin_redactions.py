"""``POST /_synapse/admin/v1/user/{userId}/redact`` and
``GET /_synapse/admin/v1/user/redact_status/{redactId}`` at Synapse's paths
(:class:`ranvier.core.admin_redactions.UserRedactions`). Admins only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.admin_common import ADMIN_V1, body_object, require_admin
from ranvier.api.auth import Auth
from ranvier.core.admin_redactions import UserRedactions
from ranvier.web import Request, Router

__all__ = ["add_admin_redaction_routes"]


def add_admin_redaction_routes(router: Router, *, auth: Auth, redactions: UserRedactions) -> None:
    """Serve the user redaction endpoints."""

    async def redact(request: Request) -> Mapping[str, Any]:
        admin = await require_admin(auth, request)
        return await redactions.start(
            admin.user_id, request.path_params["user_id"], body_object(request)
        )

    async def redact_status(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await redactions.status(request.path_params["redact_id"])

    router.add("POST", f"{ADMIN_V1}/user/{{user_id}}/redact", redact)
    router.add("GET", f"{ADMIN_V1}/user/redact_status/{{redact_id}}", redact_status)
