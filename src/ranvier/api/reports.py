"""Reporting content: ``/rooms/{roomId}/report/{eventId}`` and
``/rooms/{roomId}/report`` for users, and the reports' list for the
server's admins at ``/_synapse/admin/v1/event_reports`` (the path Synapse's
admin tools know; only admins' tokens are accepted there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.api.account import json_object
from ranvier.api.admin_common import require_admin
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["REPORTS_ADMIN_PATH", "add_report_routes"]

REPORTS_ADMIN_PATH: Final = "/_synapse/admin/v1/event_reports"
_DEFAULT_LIMIT: Final = 100
_MAX_LIMIT: Final = 1000


class ReportTaker(Protocol):
    """:class:`ranvier.core.reports.Reports`."""

    async def report_event(
        self, user_id: str, room_id: str, event_id: str, *, reason: object, score: object
    ) -> None: ...

    async def report_room(self, user_id: str, room_id: str, *, reason: object) -> None: ...

    async def list(self, *, after: int, limit: int) -> tuple[list[dict[str, Any]], int]: ...


def _query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query_value(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise MatrixError(
            f"'{name}' must be an integer from {low} to {high}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return value


def add_report_routes(router: Router, *, auth: Auth, reports: ReportTaker) -> None:
    """Serve the report endpoints and the admins' list of reports."""

    async def report_event(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        body = json_object(request)
        await reports.report_event(
            requester.user_id,
            request.path_params["room_id"],
            request.path_params["event_id"],
            reason=body.get("reason"),
            score=body.get("score"),
        )
        return {}

    async def report_room(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        body = json_object(request)
        await reports.report_room(
            requester.user_id, request.path_params["room_id"], reason=body.get("reason")
        )
        return {}

    async def list_reports(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        after = _query_int(request, "from", 0, low=0, high=2**63 - 1)
        limit = _query_int(request, "limit", _DEFAULT_LIMIT, low=1, high=_MAX_LIMIT)
        entries, total = await reports.list(after=after, limit=limit)
        answer: dict[str, Any] = {"event_reports": entries, "total": total}
        if len(entries) == limit:
            answer["next_token"] = entries[-1]["id"]
        return answer

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("POST", f"{prefix}/rooms/{{room_id}}/report/{{event_id}}", report_event)
        router.add("POST", f"{prefix}/rooms/{{room_id}}/report", report_room)
    router.add("GET", REPORTS_ADMIN_PATH, list_reports)
