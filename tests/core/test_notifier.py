from collections.abc import Callable

import pytest
import trio
import trio.testing

from ranvier.core.notifier import LOG_SIZE, StreamNotifier, StreamPosition


def test_positions_only_grow() -> None:
    notifier = StreamNotifier()
    notifier.advance(events=5)
    notifier.advance(events=3, un_partial=2)
    assert notifier.position == StreamPosition(5, 2)
    notifier.advance(un_partial=1)
    assert notifier.position == StreamPosition(5, 2)


def test_is_beyond_in_either_stream() -> None:
    base = StreamPosition(5, 2)
    assert StreamPosition(6, 0).is_beyond(base)
    assert StreamPosition(0, 3).is_beyond(base)
    assert not StreamPosition(5, 2).is_beyond(base)
    assert not StreamPosition(4, 1).is_beyond(base)


async def test_a_waiter_wakes_on_an_advance_past_its_position_only() -> None:
    notifier = StreamNotifier()
    notifier.advance(events=10)
    woken: list[StreamPosition] = []

    async def wait() -> None:
        await notifier.wait_beyond(StreamPosition(12, 0))
        woken.append(notifier.position)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert notifier.waiting == 1
        # Moving, but not past the waiter's position: it checks and sleeps again.
        notifier.advance(events=12)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        assert notifier.waiting == 1
        notifier.advance(un_partial=1)
    assert woken == [StreamPosition(12, 1)]
    assert notifier.waiting == 0


async def test_a_position_already_passed_returns_at_once() -> None:
    notifier = StreamNotifier()
    notifier.advance(events=3)
    with trio.fail_after(1):
        await notifier.wait_beyond(StreamPosition(2, 0))


async def test_waiting_is_bounded_by_a_cancel_scope(autojump_clock: trio.testing.MockClock) -> None:
    notifier = StreamNotifier()
    with trio.move_on_after(30) as scope:
        await notifier.wait_beyond(StreamPosition(0, 0))
    assert scope.cancelled_caught
    assert notifier.waiting == 0


async def test_every_waiter_wakes() -> None:
    notifier = StreamNotifier()
    done: list[int] = []

    async def wait(n: int) -> None:
        await notifier.wait_beyond(StreamPosition(0, 0))
        done.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(wait, n)
        await trio.testing.wait_all_tasks_blocked()
        assert notifier.waiting == 5
        notifier.advance(events=1)
    assert sorted(done) == [0, 1, 2, 3, 4]


async def test_a_waiter_naming_its_rooms_sleeps_through_other_rooms() -> None:
    notifier = StreamNotifier()
    notifier.advance(events=10, rooms={"!a:x"})
    start = notifier.position
    woken: list[StreamPosition] = []

    async def wait() -> None:
        await notifier.wait_beyond(start, rooms={"!mine:x"}, user_id="@me:x")
        woken.append(notifier.position)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        notifier.advance(events=11, rooms={"!other:x"}, users={"@you:x"})
        await trio.testing.wait_all_tasks_blocked()
        assert (woken, notifier.waiting) == ([], 1)
        # Two advances before the waiter runs: the log has both.
        notifier.advance(events=12, rooms={"!mine:x"})
        notifier.advance(events=13, rooms={"!other:x"})
    assert woken == [StreamPosition(13, 0)]


def test_what_concerns_a_waiter() -> None:
    notifier = StreamNotifier()
    start = StreamPosition(5, 0)
    mine = {"!mine:x"}
    notifier.advance(events=6, rooms={"!other:x"})
    assert not notifier.concerns(start, mine, "@me:x")
    assert notifier.concerns(start, None, None)
    # An invite to a room the waiter is not in names the user.
    notifier.advance(events=7, rooms={"!new:x"}, users={"@me:x"})
    assert notifier.concerns(start, mine, "@me:x")
    assert not notifier.concerns(StreamPosition(7, 0), mine, "@me:x")
    # A cleared partial state concerns everyone.
    notifier.advance(un_partial=1, rooms={"!other:x"})
    assert notifier.concerns(StreamPosition(7, 0), mine, "@me:x")


def test_a_position_the_log_no_longer_reaches_concerns_the_waiter() -> None:
    notifier = StreamNotifier()
    for position in range(1, LOG_SIZE + 3):
        notifier.advance(events=position, rooms={"!other:x"})
    assert notifier.concerns(StreamPosition(1, 0), {"!mine:x"}, "@me:x")
    assert not notifier.concerns(StreamPosition(LOG_SIZE, 0), {"!mine:x"}, "@me:x")


def test_account_data_concerns_only_its_user() -> None:
    notifier = StreamNotifier()
    notifier.advance(events=4)
    start = StreamPosition(4, 0, 0)
    notifier.advance_account_data(3, "@other:x")
    assert notifier.position == StreamPosition(4, 0, 3)
    assert not notifier.concerns(start, {"!mine:x"}, "@me:x")
    assert notifier.concerns(start, {"!mine:x"}, "@other:x")
    notifier.advance_account_data(5, "@me:x")
    assert notifier.concerns(start, {"!mine:x"}, "@me:x")
    assert not notifier.concerns(StreamPosition(4, 0, 5), {"!mine:x"}, "@me:x")
    # Positions only grow; a late report changes nothing.
    notifier.advance_account_data(2, "@me:x")
    assert notifier.position.account_data == 5
    # Beyond the log's reach, a waiter looks for itself.
    for position in range(6, LOG_SIZE + 8):
        notifier.advance_account_data(position, "@other:x")
    assert notifier.concerns(StreamPosition(4, 0, 5), {"!mine:x"}, "@me:x")


def test_presence_concerns_its_user_and_those_in_their_rooms() -> None:
    notifier = StreamNotifier()
    start = StreamPosition(0, 0)
    notifier.advance_presence(10, "@them:x", {"!theirs:x"})
    assert notifier.position.presence == 10
    assert not notifier.concerns(start, {"!mine:x"}, "@me:x")
    assert notifier.concerns(start, {"!mine:x", "!theirs:x"}, "@me:x")
    assert notifier.concerns(start, set(), "@them:x")
    notifier.advance_presence(11, "@me:x", ())
    assert notifier.concerns(start._replace(presence=10), set(), "@me:x")
    assert not notifier.concerns(start._replace(presence=11), set(), "@me:x")
    # Positions only grow; a late report changes nothing.
    notifier.advance_presence(4, "@me:x", ())
    assert notifier.position.presence == 11
    # Beyond the log's reach, a waiter looks for itself.
    for position in range(12, LOG_SIZE + 14):
        notifier.advance_presence(position, "@them:x", {"!theirs:x"})
    assert notifier.concerns(start._replace(presence=11), {"!mine:x"}, "@me:x")


def test_to_device_concerns_only_its_recipient() -> None:
    notifier = StreamNotifier()
    start = StreamPosition(0, 0)
    notifier.advance_to_device(3, ["@them:x", "@other:x"])
    assert notifier.position.to_device == 3
    assert not notifier.concerns(start, {"!shared:x"}, "@me:x")
    assert notifier.concerns(start, set(), "@them:x")
    assert notifier.concerns(start, set(), "@other:x")
    assert not notifier.concerns(start._replace(to_device=3), set(), "@them:x")
    notifier.advance_to_device(2, ["@me:x"])
    assert notifier.position.to_device == 3
    for position in range(4, LOG_SIZE + 6):
        notifier.advance_to_device(position, ["@them:x"])
    assert notifier.concerns(start._replace(to_device=3), set(), "@me:x")


def test_device_lists_concern_their_user_and_those_in_their_rooms() -> None:
    notifier = StreamNotifier()
    start = StreamPosition(0, 0)
    notifier.advance_device_lists(5, "@them:x", {"!theirs:x"})
    assert notifier.position.device_lists == 5
    assert not notifier.concerns(start, {"!mine:x"}, "@me:x")
    assert notifier.concerns(start, {"!mine:x", "!theirs:x"}, "@me:x")
    assert notifier.concerns(start, set(), "@them:x")
    assert not notifier.concerns(start._replace(device_lists=5), {"!theirs:x"}, "@me:x")
    for position in range(6, LOG_SIZE + 8):
        notifier.advance_device_lists(position, "@them:x", {"!theirs:x"})
    assert notifier.concerns(start._replace(device_lists=5), {"!mine:x"}, "@me:x")


_LATE_REPORTS: dict[str, Callable[[StreamNotifier, int], None]] = {
    "to-device": lambda n, at: n.advance_to_device(at, ["@me:x"]),
    "account data": lambda n, at: n.advance_account_data(at, "@me:x"),
    "device lists": lambda n, at: n.advance_device_lists(at, "@them:x", {"!mine:x"}),
    "receipts": lambda n, at: n.advance_receipts(at, "!mine:x"),
}
_OTHERS_REPORTS: dict[str, Callable[[StreamNotifier, int], None]] = {
    "to-device": lambda n, at: n.advance_to_device(at, ["@other:x"]),
    "account data": lambda n, at: n.advance_account_data(at, "@other:x"),
    "device lists": lambda n, at: n.advance_device_lists(at, "@other:x", {"!theirs:x"}),
    "receipts": lambda n, at: n.advance_receipts(at, "!theirs:x"),
}


@pytest.mark.parametrize("stream", sorted(_LATE_REPORTS))
async def test_a_write_reported_after_a_later_one_still_wakes_its_waiter(stream: str) -> None:
    """Another process's write is caught up with after this process has
    reported a later position of the same stream: it is still told."""
    notifier = StreamNotifier()
    _OTHERS_REPORTS[stream](notifier, 10)
    since = notifier.position
    mine = {"!mine:x"}
    # This process's own write, for someone else, at a later position.
    _OTHERS_REPORTS[stream](notifier, 12)
    after_own = notifier.position
    assert not notifier.concerns(since, mine, "@me:x")
    woken: list[str] = []
    async with trio.open_nursery() as nursery:

        async def wait() -> None:
            await notifier.wait_beyond(since, rooms=mine, user_id="@me:x")
            woken.append("me")

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        _LATE_REPORTS[stream](notifier, 11)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert woken == ["me"]
    # The position did not move back, and a waiter past it is not concerned.
    assert notifier.position == after_own
    assert not notifier.concerns(after_own, mine, "@me:x")
    # A report below what the log reaches is left to waiters looking for
    # themselves, and wakes no one.
    for at in range(13, 13 + LOG_SIZE + 1):
        _OTHERS_REPORTS[stream](notifier, at)
    assert notifier.concerns(since, mine, "@me:x")


async def test_receipts_and_typing_wake_the_members_of_their_room_only() -> None:
    notifier = StreamNotifier()
    since = StreamPosition(0, 0, 0, 0, 0)
    woken: list[str] = []

    async def wait(name: str, rooms: set[str], user: str) -> None:
        await notifier.wait_beyond(since, rooms=frozenset(rooms), user_id=user)
        woken.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "in room", {"!a"}, "@a:x")
        nursery.start_soon(wait, "elsewhere", {"!b"}, "@b:x")
        nursery.start_soon(wait, "owner", {"!c"}, "@c:x")
        nursery.start_soon(wait, "not owner", {"!c"}, "@d:x")
        await trio.testing.wait_all_tasks_blocked()
        notifier.advance_receipts(1, "!a")
        await trio.testing.wait_all_tasks_blocked()
        assert woken == ["in room"]
        # A private receipt concerns its owner alone.
        notifier.advance_receipts(2, "!c", only_user="@c:x")
        await trio.testing.wait_all_tasks_blocked()
        assert woken == ["in room", "owner"]
        assert notifier.position.receipts == 2
        notifier.advance_typing(7, "!b")
        await trio.testing.wait_all_tasks_blocked()
        assert woken == ["in room", "owner", "elsewhere"]
        # A report below the position held does not move it back, and
        # still concerns the room's waiters, who had not seen it.
        notifier.advance_typing(3, "!c")
        await trio.testing.wait_all_tasks_blocked()
        assert notifier.position.typing == 7
        nursery.cancel_scope.cancel()
    assert woken == ["in room", "owner", "elsewhere", "not owner"]
