"""Reports of rooms, events and users, kept for the server's admins.

Invariants
----------

* **A report is written once.** Its ``request_id`` is drawn by the request
  that made it, so the write run again (a worker's, repeated after the main
  process restarted) finds its own row instead of adding a second.
* **Reports are numbered in the order they arrive**, so an admin pages
  through them by number: reports of users apart from those of rooms and
  events, in a table of their own.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass

from .readers import ReaderPool
from .write_backend import WriteBackend, registered_write

__all__ = ["NewReport", "NewUserReport", "ReportRecord", "ReportStorage", "UserReportRecord"]


@dataclass(frozen=True, slots=True)
class NewReport:
    """A report to keep. ``event_id`` is None when the room is reported."""

    request_id: str
    room_id: str
    event_id: str | None
    user_id: str
    reason: str | None
    score: int | None
    received_ts: int


@dataclass(frozen=True, slots=True)
class ReportRecord:
    """A kept report and its number."""

    report_id: int
    room_id: str
    event_id: str | None
    user_id: str
    reason: str | None
    score: int | None
    received_ts: int


@dataclass(frozen=True, slots=True)
class NewUserReport:
    """A report of ``target_user_id`` by ``user_id`` to keep."""

    request_id: str
    target_user_id: str
    user_id: str
    reason: str | None
    received_ts: int


@dataclass(frozen=True, slots=True)
class UserReportRecord:
    """A kept report of a user and its number."""

    report_id: int
    target_user_id: str
    user_id: str
    reason: str | None
    received_ts: int


class ReportStorage:
    """Reports over the storage actor (writes) and the reader pool (reads)."""

    def __init__(self, actor: WriteBackend, readers: ReaderPool) -> None:
        self._actor = actor
        self._readers = readers

    async def add_report(self, report: NewReport) -> int:
        """Keep ``report``; return its number."""
        return await self._actor.submit(functools.partial(_add_report, report=report))

    async def list_reports(self, *, after: int, limit: int) -> tuple[list[ReportRecord], int]:
        """Up to ``limit`` reports numbered above ``after``, oldest first,
        and how many reports there are in all.
        """
        return await self._readers.read(functools.partial(_list_reports, after=after, limit=limit))

    async def add_user_report(self, report: NewUserReport) -> int:
        """Keep ``report``; return its number."""
        return await self._actor.submit(functools.partial(_add_user_report, report=report))

    async def list_user_reports(
        self, *, after: int, limit: int, target_user_id: str | None = None
    ) -> tuple[list[UserReportRecord], int]:
        """Up to ``limit`` reports of users numbered above ``after``, oldest
        first (only those of ``target_user_id`` if given), and how many such
        reports there are in all.
        """
        return await self._readers.read(
            functools.partial(
                _list_user_reports, after=after, limit=limit, target_user_id=target_user_id
            )
        )

    async def user_report(self, report_id: int) -> UserReportRecord | None:
        """Report of a user ``report_id``, or None."""
        return await self._readers.read(functools.partial(_user_report, report_id=report_id))


@registered_write
def _add_report(conn: sqlite3.Connection, *, report: NewReport) -> int:
    conn.execute(
        "INSERT INTO event_reports"
        " (request_id, room_id, event_id, user_id, reason, score, received_ts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
        (
            report.request_id,
            report.room_id,
            report.event_id,
            report.user_id,
            report.reason,
            report.score,
            report.received_ts,
        ),
    )
    (report_id,) = conn.execute(
        "SELECT report_id FROM event_reports WHERE request_id = ?", (report.request_id,)
    ).fetchone()
    return int(report_id)


def _list_reports(
    conn: sqlite3.Connection, *, after: int, limit: int
) -> tuple[list[ReportRecord], int]:
    rows = conn.execute(
        "SELECT report_id, room_id, event_id, user_id, reason, score, received_ts"
        " FROM event_reports WHERE report_id > ? ORDER BY report_id LIMIT ?",
        (after, limit),
    ).fetchall()
    (total,) = conn.execute("SELECT COUNT(*) FROM event_reports").fetchone()
    return [ReportRecord(*row) for row in rows], int(total)


@registered_write
def _add_user_report(conn: sqlite3.Connection, *, report: NewUserReport) -> int:
    conn.execute(
        "INSERT INTO user_reports (request_id, target_user_id, user_id, reason, received_ts)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
        (
            report.request_id,
            report.target_user_id,
            report.user_id,
            report.reason,
            report.received_ts,
        ),
    )
    (report_id,) = conn.execute(
        "SELECT report_id FROM user_reports WHERE request_id = ?", (report.request_id,)
    ).fetchone()
    return int(report_id)


_USER_REPORT_COLUMNS = "report_id, target_user_id, user_id, reason, received_ts"


def _list_user_reports(
    conn: sqlite3.Connection, *, after: int, limit: int, target_user_id: str | None
) -> tuple[list[UserReportRecord], int]:
    where = ""
    arguments: tuple[str, ...] = ()
    if target_user_id is not None:
        where, arguments = " AND target_user_id = ?", (target_user_id,)
    rows = conn.execute(
        f"SELECT {_USER_REPORT_COLUMNS} FROM user_reports WHERE report_id > ?{where}"
        " ORDER BY report_id LIMIT ?",
        (after, *arguments, limit),
    ).fetchall()
    (total,) = conn.execute(
        f"SELECT COUNT(*) FROM user_reports WHERE 1{where}", arguments
    ).fetchone()
    return [UserReportRecord(*row) for row in rows], int(total)


def _user_report(conn: sqlite3.Connection, *, report_id: int) -> UserReportRecord | None:
    row = conn.execute(
        f"SELECT {_USER_REPORT_COLUMNS} FROM user_reports WHERE report_id = ?", (report_id,)
    ).fetchone()
    return None if row is None else UserReportRecord(*row)
