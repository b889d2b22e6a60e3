"""``GET /_synapse/admin/v1/event_reports/{reportId}``: one kept report in
detail (:class:`ranvier.core.admin_reports.AdminReports`); ``DELETE``
forgets it. The list of
reports is served beside the endpoints that take them
(:mod:`ranvier.api.reports`). Admins only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ranvier.api.admin_common import ADMIN_V1, report_id_param, require_admin
from ranvier.api.auth import Auth
from ranvier.core.admin_reports import AdminReports
from ranvier.web import Request, Router

__all__ = ["add_admin_report_routes"]


def add_admin_report_routes(router: Router, *, auth: Auth, reports: AdminReports) -> None:
    """Serve a report's details and its deletion."""

    async def get_report(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        return await reports.report(report_id_param(request))

    async def delete_report(request: Request) -> Mapping[str, Any]:
        await require_admin(auth, request)
        await reports.delete(report_id_param(request))
        return {}

    router.add("GET", f"{ADMIN_V1}/event_reports/{{report_id}}", get_report)
    router.add("DELETE", f"{ADMIN_V1}/event_reports/{{report_id}}", delete_report)
