"""``GET /notifications``; see :mod:`ranvier.core.notification_list`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.api.query_params import integer_param
from ranvier.core.notification_list import NotificationList
from ranvier.web import Request, Router

__all__ = ["add_notification_routes"]


def add_notification_routes(router: Router, *, auth: Auth, notifications: NotificationList) -> None:
    """Serve the requester's list of notifications."""

    async def list_notifications(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        return await notifications.page(
            requester.user_id,
            from_token=request.query_value("from"),
            limit=integer_param(request, "limit"),
            # The spec names one filter; any other value filters nothing.
            only_highlight=request.query_value("only") == "highlight",
        )

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("GET", f"{prefix}/notifications", list_notifications)
