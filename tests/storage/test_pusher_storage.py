"""Pushers and the push position in a real SQLite file: replacing, moving a
pushkey between users, writes that run twice, the events the sender reads."""

from __future__ import annotations

from collections.abc import Callable

from ranvier.storage import EventToPersist, Storage
from ranvier.storage.pushers import PusherRecord

EventFactory = Callable[..., EventToPersist]
ALICE = "@alice:example.org"
BOB = "@bob:example.org"


def _pusher(user_id: str, pushkey: str = "key", **fields: object) -> PusherRecord:
    values: dict[str, object] = {
        "user_id": user_id,
        "app_id": "org.example.app",
        "pushkey": pushkey,
        "kind": "http",
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "profile_tag": None,
        "lang": "en",
        "data_json": b'{"url":"https://push.example/_matrix/push/v1/notify"}',
        "pushkey_ts": 5,
    } | fields
    return PusherRecord(**values)  # type: ignore[arg-type]


async def test_setting_twice_keeps_one_row_with_the_last_fields(storage: Storage) -> None:
    pushers = storage.pushers
    await pushers.set_pusher(_pusher(ALICE), append=False)
    await pushers.set_pusher(_pusher(ALICE, lang="fr"), append=False)
    await pushers.set_pusher(_pusher(ALICE, lang="fr"), append=False)
    assert await pushers.pushers_of(ALICE) == [_pusher(ALICE, lang="fr")]


async def test_a_pushkey_leaves_other_users_unless_appended(storage: Storage) -> None:
    pushers = storage.pushers
    await pushers.set_pusher(_pusher(ALICE), append=False)
    await pushers.set_pusher(_pusher(BOB), append=True)
    assert len(await pushers.pushers_of(ALICE)) == 1
    await pushers.set_pusher(_pusher(BOB), append=False)
    assert await pushers.pushers_of(ALICE) == []
    assert await pushers.pushers_of(BOB) == [_pusher(BOB)]
    # Another pushkey of the same app is another pusher.
    await pushers.set_pusher(_pusher(ALICE, "other"), append=False)
    assert await pushers.pushers_of(BOB) == [_pusher(BOB)]


async def test_deleting_twice_deletes_once(storage: Storage) -> None:
    pushers = storage.pushers
    await pushers.set_pusher(_pusher(ALICE), append=False)
    await pushers.set_pusher(_pusher(ALICE, "second"), append=False)
    for _ in range(2):
        await pushers.delete_pusher(ALICE, "org.example.app", "key")
    assert [p.pushkey for p in await pushers.pushers_of(ALICE)] == ["second"]


async def test_the_position_starts_unset_and_never_moves_back(storage: Storage) -> None:
    pushers = storage.pushers
    assert await pushers.push_position() is None
    await pushers.set_push_position(7)
    await pushers.set_push_position(3)
    assert await pushers.push_position() == 7
    await pushers.set_push_position(9)
    assert await pushers.push_position() == 9


async def test_only_accepted_timeline_events_are_read_in_order(
    storage: Storage, make_event: EventFactory
) -> None:
    group = await storage.store_state_group("!room:example.org", None, {})
    await storage.persist_events(
        [
            make_event("$plain", before=group, after=group),
            make_event("$outlier", outlier=True),
            make_event("$rejected", before=group, after=group, rejected="auth"),
            make_event("$soft", before=group, after=group, soft_failed=True),
            make_event("$later", before=group, after=group),
        ]
    )
    events = await storage.pushers.events_after(0, limit=10)
    assert [event.event_id for event in events] == ["$plain", "$later"]
    first = events[0].stream_ordering
    assert [e.event_id for e in await storage.pushers.events_after(first, limit=10)] == ["$later"]
    assert await storage.pushers.events_after(0, limit=1) == events[:1]
    assert await storage.pushers.newest_stream_ordering() >= events[-1].stream_ordering
