"""Jump to a date in a room joined over federation, whose older history is
only on the server that made it: B's user asks B for a time before B
joined, B asks A (``/federation/v1/timestamp_to_event``), fetches the event
A names, checks it as any pulled event and writes it behind the history it
holds, and answers with it. Each server's event clock is set by the test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import trio
from _client import q
from _federation import TwoServers, two_servers

from ranvier.federation.transport.client import FederationRequestError
from ranvier.testing.homeserver import TestHomeserver, TestUser

#: An hour ago: before the servers' key checks' horizon, as a stamp in the
#: future past their keys' validity would not be.
T = time.time_ns() // 1_000_000 - 3_600_000


def _clock(hs: TestHomeserver, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    now = [T]
    monkeypatch.setattr(hs.server.event_creator, "_clock", lambda: now[0])

    def set_to(ms: int) -> None:
        now[0] = ms

    return set_to


async def _lookup(
    hs: TestHomeserver, user: TestUser, room_id: str, ts: int, direction: str
) -> tuple[int, dict[str, Any]]:
    async with hs.client(user) as http:
        response = await http.get(
            f"/_matrix/client/v1/rooms/{q(room_id)}/timestamp_to_event",
            params={"ts": ts, "dir": direction},
        )
    answer: dict[str, Any] = response.json()
    return response.status_code, answer


async def _history_on_a(servers: TwoServers, set_a: Callable[[int], None]) -> tuple[str, list[str]]:
    """A room of Alice's on A with messages at T+100, T+200 and T+300,
    then Bob of B joined (his join is stamped now, by the joining code's own
    clock); the room and the messages' IDs."""
    a, b, ca, cb, alice, bob = servers
    set_a(T)
    room_id = await ca.create_room(alice, preset="public_chat")
    ids = []
    for n in (1, 2, 3):
        set_a(T + 100 * n)
        path = f"/rooms/{q(room_id)}/send/m.room.message/{n}"
        ids.append((await ca.ok(alice, "PUT", path, {"body": f"old {n}"}))["event_id"])
    await cb.ok(bob, "POST", f"/join/{q(room_id)}?via={q(a.server_name)}", {})
    with trio.fail_after(20):
        await b.server.wait_for_full_state(room_id)
    return room_id, ids


async def test_history_only_on_the_other_server_is_found_and_fetched(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, _, cb, _, bob = servers
        set_a = _clock(a, monkeypatch)
        room_id, (old1, old2, old3) = await _history_on_a(servers, set_a)
        storage = b.server.storage
        assert await storage.get_events([old1, old2]) == {}
        extremities = await storage.get_forward_extremities(room_id)

        # Nothing here before T+250: A is asked, and its event taken in.
        status, answer = await _lookup(b, bob, room_id, T + 250, "b")
        assert (status, answer) == (200, {"event_id": old2, "origin_server_ts": T + 200})
        held = (await storage.get_events([old2]))[old2]
        assert (held.outlier, held.rejected_reason, held.soft_failed) == (False, None, False)
        # Written behind what B holds: the room's tips are unmoved.
        assert await storage.get_forward_extremities(room_id) == extremities
        context = await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/context/{q(old2)}")
        assert context["event"]["content"] == {"body": "old 2"}

        # Forwards from before everything held: B's nearest is its join,
        # next to the gap; A's is nearer.
        status, answer = await _lookup(b, bob, room_id, T + 50, "f")
        assert (status, answer["event_id"]) == (200, old1)
        assert old1 in await storage.get_events([old1])

        # old3, the join's prev event, is held only as an outlier; old2,
        # which nothing in the DAG here follows, is next to that gap, so A
        # is asked and old3 takes its place in the DAG.
        assert (await storage.get_events([old3]))[old3].outlier
        status, answer = await _lookup(b, bob, room_id, T + 350, "b")
        assert (status, answer["event_id"]) == (200, old3)
        assert not (await storage.get_events([old3]))[old3].outlier
        assert await storage.get_forward_extremities(room_id) == extremities


async def test_an_event_next_to_no_gap_stands_and_nothing_after_is_404(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, _, cb, _, bob = servers
        set_a = _clock(a, monkeypatch)
        set_b = _clock(b, monkeypatch)
        room_id, _ = await _history_on_a(servers, set_a)
        set_b(T + 2000)
        said = await cb.ok(bob, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/1", {"body": "x"})

        # After everything, here or on A: 404.
        status, answer = await _lookup(b, bob, room_id, T + 10 * 3_600_000, "f")
        assert (status, answer.get("errcode")) == (404, "M_NOT_FOUND"), answer
        # B's message (a tip, after B's join) is not next to a gap: it is the
        # answer, though A holds older events nearer to T+2500 than B's
        # join is.
        status, answer = await _lookup(b, bob, room_id, T + 2500, "b")
        assert (status, answer["event_id"]) == (200, said["event_id"])


async def test_a_server_that_may_not_see_the_room_is_refused_by_the_other(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, _, alice, _ = servers
        room_id = await ca.create_room(alice, preset="private_chat")
        fetcher = b.server.federation_client
        path = f"/_matrix/federation/v1/timestamp_to_event/{q(room_id)}"
        with pytest.raises(FederationRequestError) as caught:
            await fetcher.request("GET", a.server_name, path, query={"ts": str(T * 2), "dir": "b"})
        assert (caught.value.status, caught.value.errcode) == (403, "M_FORBIDDEN")


async def test_paging_back_from_a_fetched_events_context_reaches_older_history(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec's use of the answer: /context of the event found gives
    tokens around it, and /messages back from either reaches the events
    before it, though B held none of them when asked."""
    async with two_servers(tmp_path) as servers:
        a, b, _, cb, _, bob = servers
        set_a = _clock(a, monkeypatch)
        room_id, (old1, old2, _) = await _history_on_a(servers, set_a)
        status, answer = await _lookup(b, bob, room_id, T + 250, "b")
        assert (status, answer["event_id"]) == (200, old2)
        path = f"/rooms/{q(room_id)}/context/{q(old2)}"
        context = await cb.ok(bob, "GET", path, params={"limit": "0"})
        for token, expected in (("start", [old1]), ("end", [old2, old1])):
            page = await cb.ok(
                bob,
                "GET",
                f"/rooms/{q(room_id)}/messages",
                params={"dir": "b", "limit": "100", "from": context[token]},
            )
            found = [event["event_id"] for event in page["chunk"]]
            assert [event_id for event_id in found if event_id in (old1, old2)] == expected, token
