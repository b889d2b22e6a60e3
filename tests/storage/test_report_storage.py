"""Reports in a real SQLite file: numbered in order, paged, and each write
run twice through the replication encoding."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from ranvier.replication import operations
from ranvier.storage import Storage
from ranvier.storage import reports as module
from ranvier.storage.reports import NewReport, ReportRecord


def _report(request_id: str, *, event_id: str | None = "$e", ts: int = 5) -> NewReport:
    return NewReport(request_id, "!r:x", event_id, "@a:x", "spam", -50, ts)


def _dump(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT * FROM event_reports ORDER BY report_id").fetchall()
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
    assert names == {"reports.add_report"}


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
