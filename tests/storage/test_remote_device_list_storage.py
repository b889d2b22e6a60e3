"""Other servers' users' device lists kept in a real SQLite file: a fetched
list, then the updates that follow it, repeat it or leave a gap."""

from __future__ import annotations

import msgspec

from ranvier.storage import Storage
from ranvier.storage.remote_device_lists import CachedDeviceList

CAROL = "@carol:remote.example"


def _keys(device_id: str, marker: str) -> bytes:
    return msgspec.json.encode({"user_id": CAROL, "device_id": device_id, "keys": {"m": marker}})


def _listed(stream_id: int, **devices: str) -> CachedDeviceList:
    return CachedDeviceList(
        stream_id,
        {device_id: _keys(device_id, marker) for device_id, marker in devices.items()},
        b'{"usage":["master"]}',
        None,
    )


async def _kept(storage: Storage) -> tuple[int, dict[str, bytes], bool]:
    found = await storage.remote_device_lists.entry(CAROL)
    assert found is not None
    listed, stale = found
    return listed.stream_id, listed.devices, stale


async def test_a_fetched_list_is_kept_whole_and_replaced_whole(storage: Storage) -> None:
    lists = storage.remote_device_lists
    assert await lists.entry(CAROL) is None
    assert await lists.store(CAROL, _listed(10, D1="a", D2="b"), filled_at=3)
    assert await _kept(storage) == (10, {"D1": _keys("D1", "a"), "D2": _keys("D2", "b")}, False)
    assert await lists.store(CAROL, _listed(12, D3="c"), filled_at=4)
    assert await _kept(storage) == (12, {"D3": _keys("D3", "c")}, False)


async def test_an_update_that_follows_is_applied_and_a_repeat_ignored(storage: Storage) -> None:
    lists = storage.remote_device_lists
    await lists.store(CAROL, _listed(10, D1="a"), filled_at=3)
    # The fetched list covers every update up to its stream_id: one
    # naming an earlier update follows it.
    applied = await lists.apply_update(
        CAROL, device_id="D2", stream_id=11, prev_ids=[7], deleted=False, keys=_keys("D2", "b")
    )
    assert applied == "applied"
    assert await _kept(storage) == (11, {"D1": _keys("D1", "a"), "D2": _keys("D2", "b")}, False)
    # The same update again, or an older one, changes nothing.
    for stream_id, prev_ids in ((11, [7]), (9, [8])):
        outcome = await lists.apply_update(
            CAROL,
            device_id="D2",
            stream_id=stream_id,
            prev_ids=prev_ids,
            deleted=False,
            keys=_keys("D2", "old"),
        )
        assert outcome == "repeat"
    # A change of the device's keys replaces them.
    changed = await lists.apply_update(
        CAROL, device_id="D2", stream_id=14, prev_ids=[11], deleted=False, keys=_keys("D2", "new")
    )
    assert changed == "applied"
    assert await _kept(storage) == (14, {"D1": _keys("D1", "a"), "D2": _keys("D2", "new")}, False)


async def test_devices_changed_at_once_share_a_stream_id(storage: Storage) -> None:
    lists = storage.remote_device_lists
    await lists.store(CAROL, _listed(10, D1="a", D2="b"), filled_at=3)
    for device_id, prev_ids in (("D1", [10]), ("D2", [15])):
        outcome = await lists.apply_update(
            CAROL, device_id=device_id, stream_id=15, prev_ids=prev_ids, deleted=True, keys=None
        )
        assert outcome == "applied"
    assert await _kept(storage) == (15, {}, False)


async def test_a_deleted_device_is_dropped(storage: Storage) -> None:
    lists = storage.remote_device_lists
    await lists.store(CAROL, _listed(10, D1="a", D2="b"), filled_at=3)
    outcome = await lists.apply_update(
        CAROL, device_id="D1", stream_id=11, prev_ids=[10], deleted=True, keys=None
    )
    assert outcome == "applied"
    assert await _kept(storage) == (11, {"D2": _keys("D2", "b")}, False)


async def test_a_gap_marks_the_list_stale_until_fetched_again(storage: Storage) -> None:
    lists = storage.remote_device_lists
    await lists.store(CAROL, _listed(10, D1="a"), filled_at=3)
    # Update 12 names 11, which never arrived.
    gap = await lists.apply_update(
        CAROL, device_id="D1", stream_id=12, prev_ids=[11], deleted=False, keys=_keys("D1", "x")
    )
    assert gap == "stale"
    assert await _kept(storage) == (12, {"D1": _keys("D1", "a")}, True)
    # Stale, it takes no update, even one that would follow.
    later = await lists.apply_update(
        CAROL, device_id="D1", stream_id=13, prev_ids=[12], deleted=False, keys=_keys("D1", "y")
    )
    assert later == "stale"
    assert (await _kept(storage))[1:] == ({"D1": _keys("D1", "a")}, True)
    # A list fetched as of the newest update heard of is fresh again.
    assert await lists.store(CAROL, _listed(13, D1="y"), filled_at=5)
    assert await _kept(storage) == (13, {"D1": _keys("D1", "y")}, False)


async def test_an_update_without_prev_ids_or_keys_marks_the_list_stale(storage: Storage) -> None:
    lists = storage.remote_device_lists
    await lists.store(CAROL, _listed(10, D1="a"), filled_at=3)
    # No prev_id: a new sequence, which nothing links to the list held.
    fresh_start = await lists.apply_update(
        CAROL, device_id="D1", stream_id=11, prev_ids=[], deleted=False, keys=_keys("D1", "b")
    )
    assert fresh_start == "stale"
    await lists.store(CAROL, _listed(11, D1="b"), filled_at=4)
    # A new device with no keys yet: it stays out of the list, still fresh.
    keyless = await lists.apply_update(
        CAROL, device_id="D2", stream_id=12, prev_ids=[11], deleted=False, keys=None
    )
    assert keyless == "applied"
    assert await _kept(storage) == (12, {"D1": _keys("D1", "b")}, False)
    # A device held with keys changed, and the update does not carry them.
    unknown = await lists.apply_update(
        CAROL, device_id="D1", stream_id=13, prev_ids=[12], deleted=False, keys=None
    )
    assert unknown == "stale"


async def test_an_update_heard_during_a_fetch_leaves_the_older_list_stale(
    storage: Storage,
) -> None:
    lists = storage.remote_device_lists
    # The update arrives before the fetch begun earlier is kept.
    placeholder = await lists.apply_update(
        CAROL, device_id="D1", stream_id=20, prev_ids=[19], deleted=False, keys=_keys("D1", "b")
    )
    assert placeholder == "placeholder"
    assert not await lists.store(CAROL, _listed(18, D1="a"), filled_at=3)
    assert await _kept(storage) == (20, {"D1": _keys("D1", "a")}, True)


async def test_a_signing_key_update_replaces_the_keys_it_carries(storage: Storage) -> None:
    lists = storage.remote_device_lists
    assert not await lists.replace_signing_keys(CAROL, master_key=b'{"m":2}', self_signing_key=None)
    assert await lists.entry(CAROL) is None
    await lists.store(CAROL, _listed(10, D1="a"), filled_at=3)
    assert await lists.replace_signing_keys(CAROL, master_key=None, self_signing_key=b'{"s":1}')
    found = await lists.entry(CAROL)
    assert found is not None
    assert (found[0].master_key, found[0].self_signing_key) == (b'{"usage":["master"]}', b'{"s":1}')
    assert await lists.replace_signing_keys(CAROL, master_key=b'{"m":2}', self_signing_key=None)
    found = await lists.entry(CAROL)
    assert found is not None
    assert (found[0].master_key, found[0].self_signing_key) == (b'{"m":2}', b'{"s":1}')
    assert found[0].devices == {"D1": _keys("D1", "a")}


async def test_a_user_sharing_no_room_has_no_usable_list(storage: Storage) -> None:
    lists = storage.remote_device_lists
    await lists.store(CAROL, _listed(10, D1="a"), filled_at=3)
    found = await lists.lookup([CAROL], "example.org")
    assert (found.shared, found.usable) == (set(), {})


async def test_display_names_are_kept_with_the_keys_and_replaced_by_updates(
    storage: Storage,
) -> None:
    lists = storage.remote_device_lists
    listed = CachedDeviceList(
        10,
        {"D1": _keys("D1", "a"), "D2": _keys("D2", "b")},
        None,
        None,
        {"D1": "Carol's phone"},
    )
    await lists.store(CAROL, listed, filled_at=3)
    found = await lists.entry(CAROL)
    assert found is not None
    assert found[0].display_names == {"D1": "Carol's phone"}
    # An update gives the device's name as it is now: a new one, or none.
    for stream_id, device_id, name in [
        (11, "D2", "Carol's laptop"),
        (12, "D1", None),
        (13, "D3", "Carol's tablet"),
    ]:
        outcome = await lists.apply_update(
            CAROL,
            device_id=device_id,
            stream_id=stream_id,
            prev_ids=[stream_id - 1],
            deleted=False,
            keys=_keys(device_id, "c"),
            display_name=name,
        )
        assert outcome == "applied"
    found = await lists.entry(CAROL)
    assert found is not None
    assert found[0].display_names == {"D2": "Carol's laptop", "D3": "Carol's tablet"}
    # A deleted device takes its name with it.
    await lists.apply_update(
        CAROL, device_id="D3", stream_id=14, prev_ids=[13], deleted=True, keys=None
    )
    found = await lists.entry(CAROL)
    assert found is not None
    assert found[0].display_names == {"D2": "Carol's laptop"}
    assert set(found[0].devices) == {"D1", "D2"}
