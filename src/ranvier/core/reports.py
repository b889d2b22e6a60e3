"""Reporting rooms, events and users to the server's admins.

An event may be reported by a member joined to its room who can see it;
to anyone else, joined or not, an event they cannot see is answered as an
event that does not exist (404 ``M_NOT_FOUND``), so a report cannot probe
a room's history. A room may be reported by anyone, as long as this server
knows it. Anyone may report a user, whether they share a room or not: a
user of another server is kept on the reporter's word (this server cannot
know whether they exist); a user of this one who does not exist is
answered as one who does, and nothing is kept, so a report cannot probe
which accounts there are. Reports are kept for the admins, who read them
through the admin API; nobody is told of them otherwise.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from ranvier.errors import MatrixError
from ranvier.protocol.auth import is_valid_user_id
from ranvier.storage.reports import NewReport, NewUserReport, ReportRecord, UserReportRecord

__all__ = ["MAX_REASON_LENGTH", "Reports"]

#: Longer reasons are refused rather than kept: nobody reads further.
MAX_REASON_LENGTH: Final = 4096


class ReportStore(Protocol):
    """:class:`ranvier.storage.reports.ReportStorage`."""

    async def add_report(self, report: NewReport) -> int: ...

    async def list_reports(self, *, after: int, limit: int) -> tuple[list[ReportRecord], int]: ...

    async def add_user_report(self, report: NewUserReport) -> int: ...

    async def list_user_reports(
        self, *, after: int, limit: int, target_user_id: str | None = None
    ) -> tuple[list[UserReportRecord], int]: ...

    async def user_report(self, report_id: int) -> UserReportRecord | None: ...


class VisibleEvents(Protocol):
    """:class:`ranvier.core.rooms.RoomReader`."""

    async def membership(self, user_id: str, room_id: str) -> str | None: ...

    async def event(self, user_id: str, room_id: str, event_id: str) -> dict[str, Any]: ...


class KnownRooms(Protocol):
    """The rooms this server has (:class:`ranvier.storage.Storage`)."""

    async def get_room_version(self, room_id: str) -> str | None: ...


class KnownUsers(Protocol):
    """The accounts of this server (:class:`ranvier.core.accounts.Accounts`)."""

    async def user_exists(self, user_id: str) -> bool: ...


def _not_found(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_NOT_FOUND", http_status=404)


def _check_reason(reason: object) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise MatrixError("'reason' must be a string", errcode="M_BAD_JSON", http_status=400)
    if len(reason) > MAX_REASON_LENGTH:
        raise MatrixError(
            f"'reason' may be at most {MAX_REASON_LENGTH} characters",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return reason


def _check_score(score: object) -> int | None:
    if score is None:
        return None
    if isinstance(score, bool) or not isinstance(score, int):
        raise MatrixError("'score' must be an integer", errcode="M_BAD_JSON", http_status=400)
    if not -100 <= score <= 0:
        raise MatrixError(
            "'score' must be between -100 (most offensive) and 0",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return score


class Reports:
    """Takes reports and lists them for admins; see the module's doc."""

    def __init__(
        self,
        *,
        store: ReportStore,
        events: VisibleEvents,
        rooms: KnownRooms,
        users: KnownUsers,
        server_name: str,
        wall_clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self._store = store
        self._events = events
        self._rooms = rooms
        self._users = users
        self._server_name = server_name
        self._clock = wall_clock_ms if wall_clock_ms is not None else _wall_clock_ms

    async def report_event(
        self, user_id: str, room_id: str, event_id: str, *, reason: object, score: object
    ) -> None:
        """Keep a report of ``event_id``; 404 unless ``user_id`` is joined to
        the room and can see the event.
        """
        checked_reason, checked_score = _check_reason(reason), _check_score(score)
        not_found = _not_found(f"event {event_id} is not known in {room_id}, or not visible")
        if await self._events.membership(user_id, room_id) != "join":
            raise not_found
        try:
            await self._events.event(user_id, room_id, event_id)
        except MatrixError as exc:
            raise not_found from exc
        await self._add(user_id, room_id, event_id, checked_reason, checked_score)

    async def report_room(self, user_id: str, room_id: str, *, reason: object) -> None:
        """Keep a report of ``room_id``; 404 if this server does not know it."""
        checked_reason = _check_reason(reason)
        if await self._rooms.get_room_version(room_id) is None:
            raise _not_found(f"room {room_id} is not known here")
        await self._add(user_id, room_id, None, checked_reason, None)

    async def report_user(self, user_id: str, target_user_id: str, *, reason: object) -> None:
        """Keep a report of ``target_user_id`` (see the module's doc for a
        user of this server who does not exist); 400 for a malformed ID."""
        checked_reason = _check_reason(reason)
        if not is_valid_user_id(target_user_id):
            raise MatrixError(
                f"{target_user_id[:80]!r} is not a user ID",
                errcode="M_INVALID_PARAM",
                http_status=400,
            )
        if target_user_id.partition(":")[2] == self._server_name and not (
            await self._users.user_exists(target_user_id)
        ):
            return
        await self._store.add_user_report(
            NewUserReport(
                request_id=secrets.token_urlsafe(16),
                target_user_id=target_user_id,
                user_id=user_id,
                reason=checked_reason,
                received_ts=self._clock(),
            )
        )

    async def list_user_reports(
        self, *, after: int, limit: int, target_user_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Reports of users numbered above ``after``, at most ``limit`` (only
        those of ``target_user_id`` if given), as the admin API shows them,
        and how many such reports there are in all.
        """
        records, total = await self._store.list_user_reports(
            after=after, limit=limit, target_user_id=target_user_id
        )
        return [_user_report_json(record) for record in records], total

    async def user_report(self, report_id: int) -> dict[str, Any]:
        """Report of a user ``report_id``; 404 ``M_NOT_FOUND`` if there is none."""
        record = await self._store.user_report(report_id)
        if record is None:
            raise _not_found(f"user report {report_id} not found")
        return _user_report_json(record)

    async def list(self, *, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Reports numbered above ``after``, at most ``limit``, as the admin
        API shows them, and how many there are in all.
        """
        records, total = await self._store.list_reports(after=after, limit=limit)
        return [_report_json(record) for record in records], total

    async def _add(
        self,
        user_id: str,
        room_id: str,
        event_id: str | None,
        reason: str | None,
        score: int | None,
    ) -> None:
        await self._store.add_report(
            NewReport(
                request_id=secrets.token_urlsafe(16),
                room_id=room_id,
                event_id=event_id,
                user_id=user_id,
                reason=reason,
                score=score,
                received_ts=self._clock(),
            )
        )


def _report_json(record: ReportRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": record.report_id,
        "room_id": record.room_id,
        "user_id": record.user_id,
        "received_ts": record.received_ts,
        "reason": record.reason,
    }
    if record.event_id is not None:
        entry["event_id"] = record.event_id
        entry["score"] = record.score
    return entry


def _user_report_json(record: UserReportRecord) -> dict[str, Any]:
    return {
        "id": record.report_id,
        "received_ts": record.received_ts,
        "target_user_id": record.target_user_id,
        "user_id": record.user_id,
        "reason": record.reason,
    }


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000
