"""Media upkeep's rows in a real SQLite file: quarantine and protection,
the media a deletion rule chooses, two-step deletion, a user's media in
pages, and every write run twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _twice import run_twice, write_call

from ranvier.replication import operations
from ranvier.storage import Storage, WriteOperation
from ranvier.storage import media_admin as module
from ranvier.storage.media_admin import DeletionRule

US = "example.org"
THEM = "other.org"
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
ADMIN = "@admin:example.org"


async def _upload(
    storage: Storage, media_id: str, *, ts: int, size: int = 3, user: str = ALICE
) -> None:
    await storage.media.add_upload(
        US, media_id, user_id=user, content_type="text/plain", upload_name=None, size=size, ts=ts
    )


async def _remote(storage: Storage, media_id: str, *, ts: int) -> None:
    await storage.media.add_remote(
        THEM, media_id, content_type=None, upload_name=None, size=1, ts=ts
    )


async def test_quarantine_spares_protected_media_and_ours_that_does_not_exist(
    storage: Storage,
) -> None:
    admin = storage.media_admin
    await _upload(storage, "plain", ts=1)
    await _upload(storage, "safe", ts=1)
    assert await admin.set_protected(US, "safe", True)
    assert not await admin.set_protected(US, "absent", True)

    count = await admin.quarantine(
        [(US, "plain"), (US, "safe"), (US, "absent"), (THEM, "not-fetched"), (US, "plain")],
        server_name=US,
        quarantined_by=ADMIN,
        ts=5,
    )

    assert count == 2
    assert await storage.media.quarantined_by(US, "plain") == ADMIN
    assert await storage.media.quarantined_by(THEM, "not-fetched") == ADMIN
    assert await storage.media.quarantined_by(US, "safe") is None
    assert await storage.media.quarantined_by(US, "absent") is None
    record = await storage.media.media(US, "plain")
    assert record is not None
    assert record.quarantined_by == ADMIN
    await admin.unquarantine(US, "plain")
    assert await storage.media.quarantined_by(US, "plain") is None


async def test_a_users_uploads_are_quarantined_protected_ones_apart(storage: Storage) -> None:
    admin = storage.media_admin
    for media_id in ("a1", "a2", "a3"):
        await _upload(storage, media_id, ts=1)
    await _upload(storage, "b1", ts=1, user=BOB)
    await admin.set_protected(US, "a3", True)

    count = await admin.quarantine_uploads(ALICE, server_name=US, quarantined_by=ADMIN, ts=2)

    assert count == 2
    quarantined = [
        await storage.media.quarantined_by(US, m) is not None for m in ("a1", "a2", "a3", "b1")
    ]
    assert quarantined == [True, True, False, False]


async def test_a_rule_chooses_media_unused_since_larger_than_unspared(storage: Storage) -> None:
    admin = storage.media_admin
    await _upload(storage, "old", ts=10)
    await _upload(storage, "old-small", ts=10, size=1)
    await _upload(storage, "new", ts=100)
    await _upload(storage, "old-but-used", ts=10)
    await storage.media.record_access(US, "old-but-used", ts=100)
    await _upload(storage, "old-quarantined", ts=10)
    await _upload(storage, "old-safe", ts=10)
    await admin.quarantine([(US, "old-quarantined")], server_name=US, quarantined_by=ADMIN, ts=1)
    await admin.set_protected(US, "old-safe", True)
    await _remote(storage, "theirs-old", ts=10)

    async def chosen(rule: DeletionRule, *, local: bool = True) -> set[str]:
        keys = await admin.deletion_candidates(
            US, local=local, rule=rule, keep_profiles=False, limit=100
        )
        return {media_id for _, media_id in keys}

    assert await chosen(DeletionRule(50)) == {"old", "old-small"}
    assert await chosen(DeletionRule(50, size_gt=2)) == {"old"}
    assert await chosen(DeletionRule(50, spare_quarantined=False, spare_protected=False)) == {
        "old",
        "old-small",
        "old-quarantined",
        "old-safe",
    }
    assert await chosen(DeletionRule(50), local=False) == {"theirs-old"}
    assert await chosen(DeletionRule(10)) == set()


async def test_marking_checks_the_rule_again_and_removal_takes_marked_rows_only(
    storage: Storage,
) -> None:
    admin = storage.media_admin
    await _upload(storage, "old", ts=10)
    await _upload(storage, "used-since", ts=10)
    await storage.media.add_thumbnail(
        US, "old", width=32, height=32, method="crop", content_type="image/png", size=1
    )
    # Chosen while unused, then served before it was marked.
    await storage.media.record_access(US, "used-since", ts=100)

    marked = await admin.mark_for_deletion([(US, "old"), (US, "used-since")], DeletionRule(50))
    pending = await admin.pending_deletions(10)
    record = await storage.media.media(US, "old")
    await admin.remove_marked([(US, "old"), (US, "used-since")], server_name=US)

    assert marked == [(US, "old")]
    assert pending == [(US, "old")]
    assert record is not None
    assert record.deleting
    assert await storage.media.media(US, "old") is None
    assert await storage.media.thumbnail(US, "old", width=32, height=32, method="crop") is None
    assert await storage.media.media(US, "used-since") is not None
    assert await admin.pending_deletions(10) == []


async def test_a_users_media_in_pages_newest_first_or_as_asked(storage: Storage) -> None:
    admin = storage.media_admin
    await _upload(storage, "m-b", ts=3, size=30)
    await _upload(storage, "m-a", ts=1, size=20)
    await _upload(storage, "m-c", ts=2, size=10)
    await _upload(storage, "bobs", ts=4, user=BOB)
    await storage.media.create(US, "not-uploaded", user_id=ALICE, created_ts=5)

    async def page(order: Any, backwards: bool, offset: int = 0, limit: int = 10) -> list[str]:
        records, total = await admin.user_media(
            ALICE, US, order_by=order, backwards=backwards, offset=offset, limit=limit
        )
        assert total == 3
        return [record.media_id for record in records]

    assert await page("created_ts", True) == ["m-b", "m-c", "m-a"]
    assert await page("media_length", False) == ["m-c", "m-a", "m-b"]
    assert await page("media_id", False, offset=1, limit=1) == ["m-b"]
    # Ties are broken by media ID, ascending whatever the direction.
    assert await page("media_type", True) == ["m-a", "m-b", "m-c"]


async def test_a_rooms_media_uris_come_from_its_events(storage: Storage) -> None:
    assert await storage.media_admin.room_media_uris("!nowhere:example.org") == []
    assert not await storage.media_admin.room_exists("!nowhere:example.org")
    assert not await storage.media_admin.user_exists(ALICE)


_KEY = [(US, "m")]
_TWICE: dict[str, WriteOperation[Any]] = {
    "media_admin.quarantine": write_call(
        module.quarantine, items=_KEY, server_name=US, quarantined_by=ADMIN, ts=1
    ),
    "media_admin.quarantine_uploads": write_call(
        module.quarantine_uploads, user_id=ALICE, server_name=US, quarantined_by=ADMIN, ts=1
    ),
    "media_admin.set_protected": write_call(
        module.set_protected, origin=US, media_id="m", protected=True
    ),
    "media_admin.mark_for_deletion": write_call(
        module.mark_for_deletion, items=_KEY, rule=DeletionRule(50, size_gt=1)
    ),
    "media_admin.remove_marked": write_call(module.remove_marked, items=_KEY, server_name=US),
    "media_admin.unquarantine": write_call(module.unquarantine, origin=US, media_id="m"),
}


def test_every_write_of_the_module_is_run_twice_here() -> None:
    names = {name for name in operations.operation_names() if name.startswith("media_admin.")}
    assert names == set(_TWICE)


@pytest.mark.parametrize("name", sorted(_TWICE))
async def test_a_write_run_twice_leaves_what_the_first_run_left(
    storage: Storage, db_path: Path, name: str
) -> None:
    """A worker's write repeated after the main process restarted."""
    await _upload(storage, "m", ts=10)
    if name == "media_admin.remove_marked":
        await storage.media_admin.mark_for_deletion(_KEY, None)
    if name == "media_admin.unquarantine":
        await storage.media_admin.quarantine(_KEY, server_name=US, quarantined_by=ADMIN, ts=1)
    answer = await run_twice(
        storage, db_path, _TWICE[name], ("media", "media_quarantine", "media_thumbnails")
    )
    if name == "media_admin.mark_for_deletion":
        assert answer == [(US, "m")]
