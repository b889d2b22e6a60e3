"""HomeServer.event_stream: every event added to a room's timeline, in
stream order, from now or from a position, through a bounded channel; on a
real server with its SQLite database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ranvier import StreamedEvent
from ranvier.server import HomeServer
from ranvier.testing.homeserver import open_test_homeserver

ALICE = "@alice:localhost"
BOB = "@bob:localhost"


async def _message(hs: HomeServer, room_id: str, body: str, sender: str = ALICE) -> str:
    content: dict[str, Any] = {"msgtype": "m.text", "body": body}
    return await hs.send_event(sender, room_id, "m.room.message", content)


async def _take(events: trio.MemoryReceiveChannel[StreamedEvent], count: int) -> list[Any]:
    taken = []
    with trio.fail_after(30):
        for _ in range(count):
            taken.append(await events.receive())
    return taken


async def test_events_from_now_on_in_order_with_their_positions(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as test_hs:
        hs = test_hs.server
        room_id = await hs.create_room(ALICE, preset="public_chat", name="Lobby")
        before = await _message(hs, room_id, "before the stream")
        async with hs.event_stream() as events:
            sent = [await _message(hs, room_id, f"m{n}") for n in range(3)]
            got = await _take(events, 3)
        assert [streamed.event["event_id"] for streamed in got] == sent
        assert before not in [streamed.event["event_id"] for streamed in got]
        first = got[0].event
        assert first["room_id"] == room_id
        assert first["sender"] == ALICE
        assert first["content"] == {"msgtype": "m.text", "body": "m0"}
        orderings = [streamed.stream_ordering for streamed in got]
        assert orderings == sorted(orderings)
        assert len(set(orderings)) == 3


async def test_since_goes_on_after_a_position_and_a_slow_reader_misses_nothing(
    tmp_path: Path,
) -> None:
    async with open_test_homeserver(tmp_path) as test_hs:
        hs = test_hs.server
        room_id = await hs.create_room(ALICE, preset="public_chat")
        async with hs.event_stream() as events:
            await _message(hs, room_id, "one")
            (one,) = await _take(events, 1)
        # Written while nobody read: a stream from the last position handled
        # gets them all, through a buffer of one.
        later = [await _message(hs, room_id, f"later {n}") for n in range(5)]
        async with hs.event_stream(since=one.stream_ordering, buffer=1) as events:
            await trio.sleep(0.05)  # The feeder waits on the reader meanwhile.
            got = await _take(events, 5)
        assert [streamed.event["event_id"] for streamed in got] == later


async def test_every_writer_and_every_kind_of_timeline_event(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as test_hs:
        hs = test_hs.server
        await test_hs.register_user("bob")
        room_id = await hs.create_room(ALICE, preset="public_chat")
        async with hs.event_stream() as events:
            await hs.join_room(BOB, room_id)
            message = await _message(hs, room_id, "hello", sender=BOB)
            got = await _take(events, 2)
        assert [(s.event["type"], s.event.get("state_key")) for s in got] == [
            ("m.room.member", BOB),
            ("m.room.message", None),
        ]
        assert got[1].event["event_id"] == message


async def test_a_state_event_says_what_it_replaced(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as test_hs:
        hs = test_hs.server
        room_id = await hs.create_room(ALICE, preset="public_chat", name="Lobby")
        old_name = (await hs.storage.get_current_state_ids(room_id))[("m.room.name", "")]
        async with hs.event_stream() as events:
            await hs.send_event(ALICE, room_id, "m.room.name", {"name": "Hall"}, state_key="")
            await hs.send_event(ALICE, room_id, "m.room.topic", {"topic": "new"}, state_key="")
            await _message(hs, room_id, "after")
            renamed, topic, message = await _take(events, 3)
        assert renamed.event["content"] == {"name": "Hall"}
        assert renamed.event["unsigned"] == {
            "replaces_state": old_name,
            "prev_content": {"name": "Lobby"},
        }
        # The room's first topic and a message replaced nothing.
        assert "unsigned" not in topic.event
        assert "unsigned" not in message.event


async def test_a_redacted_event_read_after_its_redaction_is_served_redacted(
    tmp_path: Path,
) -> None:
    async with open_test_homeserver(tmp_path) as test_hs:
        hs = test_hs.server
        room_id = await hs.create_room(ALICE, preset="public_chat")
        position = await hs.storage.event_stream.newest_stream_ordering()
        secret = await _message(hs, room_id, "secret")
        await hs.send_event(ALICE, room_id, "m.room.redaction", {"redacts": secret})
        async with hs.event_stream(since=position) as events:
            redacted, redaction = await _take(events, 2)
        assert redacted.event["event_id"] == secret
        assert redacted.event["content"] == {}
        assert (
            redacted.event["unsigned"]["redacted_because"]["event_id"]
            == (redaction.event["event_id"])
        )


async def test_leaving_the_block_stops_the_feeder_and_bad_buffers_are_refused(
    tmp_path: Path,
) -> None:
    async with open_test_homeserver(tmp_path) as test_hs:
        hs = test_hs.server
        room_id = await hs.create_room(ALICE, preset="public_chat")
        async with hs.event_stream(buffer=1) as events:
            # The feeder fills the buffer and waits to send the next.
            for n in range(3):
                await _message(hs, room_id, f"unread {n}")
            # Until it does: its read of the next may take a while on a
            # loaded machine, longer than any quiet spell.
            with trio.fail_after(30):
                while events.statistics().tasks_waiting_send < 1:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            assert events.statistics().current_buffer_used == 1
        # Left with events unread and the feeder waiting: nothing raised, the
        # channel is closed, and the server goes on.
        with pytest.raises(trio.ClosedResourceError):
            await events.receive()
        await _message(hs, room_id, "after")
        with pytest.raises(ValueError, match="buffer"):
            async with hs.event_stream(buffer=0):
                pass


async def test_an_error_in_the_readers_block_comes_out_as_itself(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as test_hs:
        hs = test_hs.server
        with pytest.raises(LookupError, match="the reader's own"):
            async with hs.event_stream():
                raise LookupError("the reader's own")
