"""Reports in a real SQLite file: numbered in order, paged, reports of users
apart and filtered by the reported user, and each write run twice through
the replication encoding."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from ranvier.replication import operations
from ranvier.storage import Storage
from ranvier.storage import reports as module
from ranvier.storage.reports import NewReport, NewUserReport, ReportRecord, UserReportRecord


def _report(request_id: str, *, event_id: str | None = "$e", ts: int = 5) -> NewReport:
    return NewReport(request_id, "!r:x", event_id, "@a:x", "spam", -50, ts)


def _user_report(request_id: str, target: str, *, ts: int = 5) -> NewUserReport:
    return NewUserReport(request_id, target, "@a:x", "rude", ts)


def _dump(path: Path, table: str = "event_reports") -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY report_id").fetchall()
    finally:
        conn.close()


async def test_reports_are_numbered_in_order_and_paged(storage: Storage) -> None:
    reports = storage.reports
    first = await reports.add_report(_report("r1"))
    second = await reports.add_report(_report("r2", event_id=None, ts=6))
    assert second > first
    records, total = await reports.list_reports(after=0, limit=10)
    assert total == 2
    assert records == [
        ReportRecord(first, "!r:x", "$e", "@a:x", "spam", -50, 5),
        ReportRecord(second, "!r:x", None, "@a:x", "spam", -50, 6),
    ]
    assert await reports.list_reports(after=first, limit=10) == ([records[1]], 2)
    assert await reports.list_reports(after=0, limit=1) == ([records[0]], 2)


def test_every_write_of_the_module_is_run_twice_here() -> None:
    names = {name for name in operations.operation_names() if name.startswith("reports.")}
    assert names == {"reports.add_report", "reports.add_user_report"}


async def test_a_report_written_twice_is_kept_once(storage: Storage, db_path: Path) -> None:
    operation = functools.partial(module._add_report, report=_report("once"))
    sent_name, body = operations.encode_operation(operation)
    received = operations.decode_operation(sent_name, body)
    first = await storage.actor.submit(received)
    once = _dump(db_path)
    assert len(once) == 1
    second = await storage.actor.submit(received)
    assert (_dump(db_path), second) == (once, first)
    assert operations.decode_result(sent_name, operations.encode_result(sent_name, first)) == first


async def test_reports_of_users_are_kept_apart_and_found_by_the_reported_user(
    storage: Storage,
) -> None:
    reports = storage.reports
    await reports.add_report(_report("r1"))
    first = await reports.add_user_report(_user_report("u1", "@spam:x"))
    second = await reports.add_user_report(_user_report("u2", "@rude:y", ts=6))
    third = await reports.add_user_report(_user_report("u3", "@spam:x", ts=7))
    assert first < second < third
    records, total = await reports.list_user_reports(after=0, limit=10)
    assert total == 3
    assert records == [
        UserReportRecord(first, "@spam:x", "@a:x", "rude", 5),
        UserReportRecord(second, "@rude:y", "@a:x", "rude", 6),
        UserReportRecord(third, "@spam:x", "@a:x", "rude", 7),
    ]
    assert await reports.list_user_reports(after=first, limit=1) == ([records[1]], 3)
    assert await reports.list_user_reports(after=0, limit=10, target_user_id="@spam:x") == (
        [records[0], records[2]],
        2,
    )
    assert await reports.list_user_reports(after=first, limit=10, target_user_id="@spam:x") == (
        [records[2]],
        2,
    )
    assert await reports.user_report(second) == records[1]
    assert await reports.user_report(third + 1) is None
    # The event reports are not among them, nor they among the event reports.
    assert (await reports.list_reports(after=0, limit=10))[1] == 1


async def test_a_user_report_written_twice_is_kept_once(storage: Storage, db_path: Path) -> None:
    operation = functools.partial(module._add_user_report, report=_user_report("once", "@b:x"))
    sent_name, body = operations.encode_operation(operation)
    received = operations.decode_operation(sent_name, body)
    first = await storage.actor.submit(received)
    once = _dump(db_path, "user_reports")
    assert len(once) == 1
    assert await storage.actor.submit(received) == first
    assert _dump(db_path, "user_reports") == once
