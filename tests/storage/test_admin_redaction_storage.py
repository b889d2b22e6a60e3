"""Admins' redaction jobs in a real SQLite file: one active job per user,
failures merged, finished jobs forgotten after the keep time, and every
write repeated through the replication encoding changing nothing more."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from _twice import run_twice, write_call

from ranvier.storage import Storage
from ranvier.storage.admin_redactions import (
    RedactionJob,
    _finish_job,
    _record_failures,
    _restart_job,
    _start_job,
)

_TABLES = ("user_redactions",)
_JOB = RedactionJob(
    redact_id="r1",
    user_id="@spam:example.org",
    admin_id="@admin:example.org",
    rooms=["!a:example.org", "!b:example.org"],
    reason="spam",
    per_room_limit=10,
    before_ts=None,
    after_ts=3,
    use_admin=True,
    created_ts=100,
)


async def _failed(storage: Storage) -> dict[str, str] | None:
    job = await storage.admin_redactions.job("r1")
    assert job is not None
    return job.failed


async def test_a_job_is_recorded_and_read_back(storage: Storage) -> None:
    jobs = storage.admin_redactions
    assert await jobs.start_job(_JOB, forget_before_ts=0)
    assert await jobs.job("r1") == replace(_JOB, failed={})
    assert await jobs.active_jobs() == [replace(_JOB, failed={})]
    # The same user's second job waits for the first; another user's does not.
    assert not await jobs.start_job(replace(_JOB, redact_id="r2"), forget_before_ts=0)
    other = replace(_JOB, redact_id="r3", user_id="@other:example.org", created_ts=101)
    assert await jobs.start_job(other, forget_before_ts=0)
    assert await jobs.job("r2") is None

    await jobs.record_failures("r1", {"$x": "refused"})
    await jobs.record_failures("r1", {"$y": "refused too", "$x": "refused again"})
    assert await _failed(storage) == {"$x": "refused again", "$y": "refused too"}
    await jobs.restart_job("r1")
    assert await _failed(storage) == {}

    await jobs.finish_job("r1", "complete", error=None, finished_ts=200)
    finished = await jobs.job("r1")
    assert finished is not None
    assert (finished.status, finished.finished_ts) == ("complete", 200)
    assert [job.redact_id for job in await jobs.active_jobs()] == ["r3"]
    # A restart of a finished job changes nothing.
    await jobs.record_failures("r1", {"$z": "late"})
    await jobs.restart_job("r1")
    assert await _failed(storage) == {"$z": "late"}
    # With the first finished, the user may have another.
    assert await jobs.start_job(replace(_JOB, redact_id="r2"), forget_before_ts=0)


async def test_finished_jobs_are_forgotten_after_the_keep_time(storage: Storage) -> None:
    jobs = storage.admin_redactions
    assert await jobs.start_job(_JOB, forget_before_ts=0)
    await jobs.finish_job("r1", "failed", error="broke", finished_ts=500)
    failed = await jobs.job("r1")
    assert failed is not None
    assert (failed.status, failed.error) == ("failed", "broke")
    active = replace(_JOB, redact_id="r2", user_id="@other:example.org")
    assert await jobs.start_job(active, forget_before_ts=500)
    assert await jobs.job("r1") is not None
    later = replace(_JOB, redact_id="r3", user_id="@third:example.org")
    assert await jobs.start_job(later, forget_before_ts=501)
    assert await jobs.job("r1") is None
    # Active jobs are never forgotten, however old.
    assert await jobs.job("r2") is not None


async def test_each_write_run_twice_changes_nothing_more(storage: Storage, db_path: Path) -> None:
    start = write_call(
        _start_job,
        redact_id="r1",
        user_id=_JOB.user_id,
        admin_id=_JOB.admin_id,
        rooms='["!a:example.org"]',
        reason=None,
        per_room_limit=5,
        before_ts=None,
        after_ts=None,
        use_admin=False,
        created_ts=1,
        forget_before_ts=0,
    )
    assert await run_twice(storage, db_path, start, _TABLES) is True
    failures = write_call(_record_failures, redact_id="r1", failures={"$x": "no"})
    await run_twice(storage, db_path, failures, _TABLES)
    await run_twice(storage, db_path, write_call(_restart_job, redact_id="r1"), _TABLES)
    finish = write_call(_finish_job, redact_id="r1", status="complete", error=None, finished_ts=9)
    await run_twice(storage, db_path, finish, _TABLES)
