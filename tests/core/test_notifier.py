import trio
import trio.testing

from ranvier.core.notifier import StreamNotifier, StreamPosition


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
