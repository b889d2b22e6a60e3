"""One kept report as an admin reads it: the report with the reported
event (its sender and JSON, when this server holds it) and the room's
name and canonical alias, as Synapse's report details show them; and a
report dealt with, deleted.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from ranvier.errors import MatrixError
from ranvier.storage.admin_reads import ReportDetail, RoomRow

__all__ = ["AdminReports"]


class AdminReportStore(Protocol):
    """:class:`ranvier.storage.admin.AdminStorage`."""

    async def report(self, report_id: int) -> ReportDetail | None: ...

    async def delete_report(self, report_id: int) -> bool: ...

    async def room(self, server_name: str, room_id: str) -> RoomRow | None: ...


class AdminReports:
    """Reads kept reports for admins; see the module's doc."""

    def __init__(self, *, server_name: str, store: AdminReportStore) -> None:
        self._server_name = server_name
        self._store = store

    async def report(self, report_id: int) -> dict[str, Any]:
        """Report ``report_id``; 404 ``M_NOT_FOUND`` if there is none."""
        detail = await self._store.report(report_id)
        if detail is None:
            raise _no_report(report_id)
        room = await self._store.room(self._server_name, detail.room_id)
        answer: dict[str, Any] = {
            "id": detail.report_id,
            "received_ts": detail.received_ts,
            "room_id": detail.room_id,
            "name": None if room is None else room.name,
            "canonical_alias": None if room is None else room.canonical_alias,
            "user_id": detail.user_id,
            "reason": detail.reason,
        }
        if detail.event_id is not None:
            answer["event_id"] = detail.event_id
            answer["score"] = detail.score
            answer["sender"] = detail.sender
            answer["event_json"] = (
                None if detail.event_json is None else msgspec.json.decode(detail.event_json)
            )
        return answer

    async def delete(self, report_id: int) -> None:
        """Delete report ``report_id``; 404 ``M_NOT_FOUND`` if there is none."""
        if not await self._store.delete_report(report_id):
            raise _no_report(report_id)


def _no_report(report_id: int) -> MatrixError:
    return MatrixError(f"report {report_id} not found", errcode="M_NOT_FOUND", http_status=404)
