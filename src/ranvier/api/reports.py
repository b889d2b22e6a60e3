"""Reporting content: ``/rooms/{roomId}/report/{eventId}``,
``/rooms/{roomId}/report`` and ``/users/{userId}/report`` for users, and
for the server's admins the reports' lists at
``/_synapse/admin/v1/event_reports`` (rooms and events) and
``/_synapse/admin/v1/user_reports`` (users, each also at
``user_reports/{reportId}``): the paths and shapes Synapse's admin tools
know; only admins' tokens are accepted there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.api.account import json_object
from ranvier.api.admin_common import report_id_param, require_admin
from ranvier.api.app import CLIENT_VERSION_PREFIXES
from ranvier.api.auth import Auth
from ranvier.api.rooms import CLIENT_V3
from ranvier.errors import MatrixError
from ranvier.web import Request, Router

__all__ = ["REPORTS_ADMIN_PATH", "USER_REPORTS_ADMIN_PATH", "add_report_routes"]

REPORTS_ADMIN_PATH: Final = "/_synapse/admin/v1/event_reports"
USER_REPORTS_ADMIN_PATH: Final = "/_synapse/admin/v1/user_reports"
_DEFAULT_LIMIT: Final = 100
_MAX_LIMIT: Final = 1000


class ReportTaker(Protocol):
    """:class:`ranvier.core.reports.Reports`."""

    async def report_event(
        self, user_id: str, room_id: str, event_id: str, *, reason: object, score: object
    ) -> None: ...

    async def report_room(self, user_id: str, room_id: str, *, reason: object) -> None: ...

    async def report_user(self, user_id: str, target_user_id: str, *, reason: object) -> None: ...

    async def list_user_reports(
        self, *, after: int, limit: int, target_user_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]: ...

    async def user_report(self, report_id: int) -> dict[str, Any]: ...

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


def _page(name: str, entries: list[dict[str, Any]], total: int, limit: int) -> dict[str, Any]:
    """A page of a list of reports; ``next_token`` is where the next begins."""
    answer: dict[str, Any] = {name: entries, "total": total}
    if len(entries) == limit:
        answer["next_token"] = entries[-1]["id"]
    return answer


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

    async def report_user(request: Request) -> Mapping[str, Any]:
        requester = await auth.get_user(request)
        body = json_object(request)
        await reports.report_user(
            requester.user_id, request.path_params["user_id"], reason=body.get("reason")
        )
        return {}

    async def list_reports(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        after = _query_int(request, "from", 0, low=0, high=2**63 - 1)
        limit = _query_int(request, "limit", _DEFAULT_LIMIT, low=1, high=_MAX_LIMIT)
        entries, total = await reports.list(after=after, limit=limit)
        return _page("event_reports", entries, total, limit)

    async def list_user_reports(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        after = _query_int(request, "from", 0, low=0, high=2**63 - 1)
        limit = _query_int(request, "limit", _DEFAULT_LIMIT, low=1, high=_MAX_LIMIT)
        entries, total = await reports.list_user_reports(
            after=after, limit=limit, target_user_id=request.query_value("target_user_id")
        )
        return _page("user_reports", entries, total, limit)

    async def user_report(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await reports.user_report(report_id_param(request))

    for prefix in CLIENT_VERSION_PREFIXES:
        router.add("POST", f"{prefix}/rooms/{{room_id}}/report/{{event_id}}", report_event)
        router.add("POST", f"{prefix}/rooms/{{room_id}}/report", report_room)
    router.add("POST", f"{CLIENT_V3}/users/{{user_id}}/report", report_user)
    router.add("GET", REPORTS_ADMIN_PATH, list_reports)
    router.add("GET", USER_REPORTS_ADMIN_PATH, list_user_reports)
    router.add("GET", f"{USER_REPORTS_ADMIN_PATH}/{{report_id}}", user_report)
