"""A homeserver's metrics, scraped over real HTTP after real traffic: two
servers federating, a user of each, messages sent, a typing notice, and a
/sync held open until something new comes.

Each scrape is read by the parser of test_metrics.py, which checks the
text format line by line; the numbers are compared with what the traffic
must have done, exactly where the traffic decides them.
"""

from __future__ import annotations

import math
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from nacl.signing import SigningKey

from ranvier.api.sliding_sync import SLIDING_SYNC_PATH
from ranvier.config import ListenerConfig
from ranvier.metrics import CONTENT_TYPE, Histogram, MetricFamily, MetricsRegistry, render_metrics
from ranvier.testing import Pki
from ranvier.testing.homeserver import TestHomeserver, config_for_tests, open_test_homeserver
from test_metrics import Exposition, parse_exposition

V3 = "/_matrix/client/v3"
SEND = f"{V3}/rooms/{{room_id}}/send/{{event_type}}/{{txn_id}}"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _metrics_url(hs: TestHomeserver) -> str:
    (bound,) = [bound for bound in hs.server.listeners if bound.config.type == "metrics"]
    return bound.url + "/metrics"


async def _scrape(hs: TestHomeserver) -> Exposition:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(_metrics_url(hs))
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    parsed = parse_exposition(response.text)
    _check_histograms(parsed)
    return parsed


def _check_histograms(parsed: Exposition) -> None:
    """Every histogram's buckets grow with ``le``, and the last is its count."""
    for family, kind in parsed.types.items():
        if kind != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        for labels, value in parsed.of(f"{family}_bucket").items():
            le = dict(labels)["le"]
            rest = tuple(pair for pair in labels if pair[0] != "le")
            series.setdefault(rest, []).append((float(le), value))
        for rest, buckets in series.items():
            buckets.sort()
            counts = [count for _, count in buckets]
            assert counts == sorted(counts), (family, rest)
            assert math.isinf(buckets[-1][0])
            assert parsed.value(f"{family}_count", **dict(rest)) == counts[-1]


def _total(parsed: Exposition, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value for found, value in parsed.of(name).items() if labels.items() <= dict(found).items()
    )


async def _until(check: Any, what: str) -> None:
    with trio.move_on_after(20):
        while True:
            if await check():
                return
            await trio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


async def _ok(http: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    response = await http.request(method, path, json=body)
    assert response.status_code == 200, (method, path, response.text)
    return response.json()


def _with_metrics(data_dir: Path, pki: Pki) -> Any:
    config = config_for_tests(data_dir, federation=pki)
    metrics = ListenerConfig(type="metrics", host="127.0.0.1", port=0)
    return msgspec.structs.replace(config, listeners=(*config.listeners, metrics))


async def test_traffic_moves_the_metrics_as_it_must(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", config=_with_metrics(tmp_path / "a", pki)) as a,
        open_test_homeserver(tmp_path / "b", config=_with_metrics(tmp_path / "b", pki)) as b,
    ):
        alice = await a.register_user("alice")
        bob = await b.register_user("bob")
        before_a, before_b = await _scrape(a), await _scrape(b)
        assert before_a.value("ranvier_registered_users") == 1
        assert before_a.value("ranvier_rooms") == 0
        assert before_b.value("ranvier_federation_transactions_received_total") == 0

        async with a.client(alice, timeout=30) as as_alice, b.client(bob, timeout=30) as as_bob:
            created = await _ok(as_alice, "POST", f"{V3}/createRoom", {"preset": "public_chat"})
            room_id = created["room_id"]
            await _ok(as_bob, "POST", f"{V3}/join/{_q(room_id)}?server_name={a.server_name}")
            first = await _ok(as_bob, "GET", f"{V3}/sync")
            for number in range(3):
                await _ok(
                    as_alice,
                    "PUT",
                    f"{V3}/rooms/{_q(room_id)}/send/m.room.message/t{number}",
                    {"msgtype": "m.text", "body": f"message {number}"},
                )
            await _ok(
                as_alice,
                "PUT",
                f"{V3}/rooms/{_q(room_id)}/typing/{_q(alice.user_id)}",
                {"typing": True, "timeout": 30_000},
            )

            async def arrived() -> bool:
                parsed = await _scrape(b)
                return (
                    _total(parsed, "ranvier_federation_pdus_received_total") >= 3
                    and parsed.value("ranvier_federation_edus_received_total", edu_type="m.typing")
                    >= 1
                )

            await _until(arrived, "the messages and the typing notice at b")

            # A /sync with nothing new to tell waits, and is seen waiting.
            async with trio.open_nursery() as nursery:
                answered: list[Any] = []
                seen_waiting = trio.Event()

                async def long_poll() -> None:
                    since = (await _ok(as_bob, "GET", f"{V3}/sync?since={first['next_batch']}"))[
                        "next_batch"
                    ]
                    while True:
                        answer = await _ok(as_bob, "GET", f"{V3}/sync?since={since}&timeout=20000")
                        answered.append(answer)
                        if seen_waiting.is_set():
                            return
                        # Something new came first (an EDU from the other
                        # server, late on a slow machine): wait again.
                        since = answer["next_batch"]

                nursery.start_soon(long_poll)

                async def waiting() -> bool:
                    if (await _scrape(b)).value("ranvier_sync_long_polls") == 1:
                        seen_waiting.set()
                    return seen_waiting.is_set()

                await _until(waiting, "the /sync to wait")
                await _ok(
                    as_alice,
                    "PUT",
                    f"{V3}/rooms/{_q(room_id)}/send/m.room.message/t3",
                    {"msgtype": "m.text", "body": "the last"},
                )
            assert answered
            missing = await as_alice.get("/_matrix/client/v3/no/such/route")
            assert missing.status_code == 404

        async def delivered() -> bool:
            return _total(await _scrape(b), "ranvier_federation_pdus_received_total") >= 4

        await _until(delivered, "the last message at b")
        after_a, after_b = await _scrape(a), await _scrape(b)

    def moved(after: Exposition, before: Exposition, name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    # The HTTP requests, by route pattern and status class.
    sent = {"listener": "client", "method": "PUT", "endpoint": SEND}
    assert moved(after_a, before_a, "ranvier_http_requests_total", **sent, code="2xx") == 4
    unmatched = {"listener": "client", "endpoint": "unmatched", "code": "4xx"}
    assert moved(after_a, before_a, "ranvier_http_requests_total", **unmatched) == 1
    joined = {"listener": "federation", "code": "2xx"}
    for endpoint in (
        "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
        "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
    ):
        assert moved(after_a, before_a, "ranvier_http_requests_total", **joined, endpoint=endpoint)
    syncs = {"listener": "client", "method": "GET", "endpoint": f"{V3}/sync", "code": "2xx"}
    # The first, the one from it, and each long-poll (asked again when
    # something came before the gauge was seen).
    assert moved(after_b, before_b, "ranvier_http_requests_total", **syncs) == 2 + len(answered)
    for parsed in (after_a, after_b):
        for listener in ("client", "federation"):
            requests = _total(parsed, "ranvier_http_requests_total", listener=listener)
            durations = parsed.value(
                "ranvier_http_request_duration_seconds_count", listener=listener
            )
            assert durations == requests > 0
        # No raw path: every endpoint is a route pattern or "unmatched".
        endpoints = {
            dict(labels)["endpoint"] for labels in parsed.of("ranvier_http_requests_total")
        }
        assert all(e == "unmatched" or e.startswith("/_matrix/") for e in endpoints)
        assert not any("!" in e or "@" in e for e in endpoints), endpoints

    # Federation in (b) and out (a): the four messages and the typing notice.
    received = after_b.value("ranvier_federation_transactions_received_total")
    assert received >= 1
    put_send = {"listener": "federation", "method": "PUT", "code": "2xx"}
    put_send["endpoint"] = "/_matrix/federation/v1/send/{txn_id}"
    assert moved(after_b, before_b, "ranvier_http_requests_total", **put_send) == received
    pdus = "ranvier_federation_pdus_received_total"
    assert moved(after_b, before_b, pdus, outcome="accepted") == 4
    for outcome in ("rejected", "soft_failed", "dropped"):
        assert after_b.value(pdus, outcome=outcome) == 0
    assert after_b.value("ranvier_federation_edus_received_total", edu_type="m.typing") == 1
    assert moved(after_a, before_a, "ranvier_federation_pdus_sent_total") == 4
    assert moved(after_a, before_a, "ranvier_federation_edus_sent_total") >= 1
    assert after_a.value("ranvier_federation_transactions_sent_total") >= 1
    assert after_a.value("ranvier_federation_transactions_failed_total") == 0
    assert after_a.value("ranvier_federation_destinations_backing_off") == 0

    # Events persisted, by origin: a's room and messages are local there,
    # b's join comes over federation; at b, the reverse.
    persisted = "ranvier_events_persisted_total"
    assert after_a.value(persisted, origin="federation") == 1
    assert after_a.value(persisted, origin="local") >= 4 + 5
    assert after_b.value(persisted, origin="local") == 1
    assert after_b.value(persisted, origin="federation") >= 4
    assert after_a.value(persisted, origin="backfill") == 0
    assert after_a.value("ranvier_partial_state_conflicts_total") == 0
    assert after_a.value("ranvier_partial_state_conflicts_refused_total") == 0

    # Storage: every write committed was in a batch, reads ran.
    committed = moved(after_a, before_a, "ranvier_storage_writes_committed_total")
    assert committed >= 4
    batches = after_a.value("ranvier_storage_write_batch_size_count")
    assert batches == after_a.value("ranvier_storage_write_batch_duration_seconds_count")
    assert after_a.value("ranvier_storage_write_batch_size_sum") == after_a.value(
        "ranvier_storage_writes_committed_total"
    ) + after_a.value("ranvier_storage_writes_failed_total")
    assert moved(after_a, before_a, "ranvier_storage_reads_total") > 0
    assert after_a.value("ranvier_storage_write_queue_depth") == 0

    # Clients: one account each, one room, no /sync left waiting.
    for parsed in (after_a, after_b):
        assert parsed.value("ranvier_registered_users") == 1
        assert parsed.value("ranvier_rooms") == 1
        assert parsed.value("ranvier_sync_long_polls") == 0

    # The process.
    assert after_a.value("process_resident_memory_bytes") > 10 * 2**20
    assert after_a.value("process_cpu_seconds_total") > 0
    assert after_a.value("process_open_fds") > 3
    assert time.time() - 3600 < after_a.value("process_start_time_seconds") <= time.time()
    assert after_a.types["process_cpu_seconds_total"] == "counter"
    assert after_a.types["ranvier_http_request_duration_seconds"] == "histogram"
    assert set(after_a.helps) == set(after_a.types)


def test_a_histogram_counts_each_value_in_its_bucket() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    families = (MetricFamily("h_seconds", "histogram", "Times."),)
    parsed = parse_exposition(
        render_metrics(histogram.samples("h_seconds", api="x"), families).decode()
    )
    assert parsed.types == {"h_seconds": "histogram"}
    assert parsed.of("h_seconds_bucket") == {
        (("api", "x"), ("le", "0.1")): 2,
        (("api", "x"), ("le", "1.0")): 4,
        (("api", "x"), ("le", "+Inf")): 5,
    }
    assert parsed.value("h_seconds_count", api="x") == 5
    assert parsed.value("h_seconds_sum", api="x") == pytest.approx(8.65)


@pytest.mark.parametrize("bounds", [(), (1.0, 1.0), (2.0, 1.0)])
def test_histogram_bounds_must_increase(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram(bounds)


async def test_a_registry_reads_every_collector_and_refuses_a_family_twice() -> None:
    registry = MetricsRegistry()
    family = MetricFamily("x_total", "counter", "X.")
    counts = {"x": 1}
    registry.add([family], lambda: {"x_total": counts["x"]})

    async def later() -> dict[str, int | float]:
        await trio.lowlevel.checkpoint()
        return {"y": 2}

    registry.add([MetricFamily("y", "gauge", "Y.")], later)
    counts["x"] = 5
    assert await registry.collect() == {"x_total": 5, "y": 2}
    assert [f.name for f in registry.families] == ["x_total", "y"]
    with pytest.raises(ValueError, match="twice"):
        registry.add([family], dict)


async def test_a_sliding_sync_request_waiting_is_counted_apart_from_sync(tmp_path: Path) -> None:
    config = config_for_tests(tmp_path / "hs")
    metrics = ListenerConfig(type="metrics", host="127.0.0.1", port=0)
    config = msgspec.structs.replace(config, listeners=(*config.listeners, metrics))
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs:
        alice = await hs.register_user("alice")
        async with hs.client(alice, timeout=30) as as_alice:
            room_id = (await _ok(as_alice, "POST", f"{V3}/createRoom", {}))["room_id"]
            body = {"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1}}}
            first = await _ok(as_alice, "POST", SLIDING_SYNC_PATH, body)
            async with trio.open_nursery() as nursery:
                answered: list[Any] = []

                async def long_poll() -> None:
                    path = f"{SLIDING_SYNC_PATH}?pos={first['pos']}&timeout=20000"
                    answered.append(await _ok(as_alice, "POST", path, body))

                nursery.start_soon(long_poll)

                async def waiting() -> bool:
                    return (await _scrape(hs)).value("ranvier_sliding_sync_long_polls") == 1

                await _until(waiting, "the sliding sync request to wait")
                assert (await _scrape(hs)).value("ranvier_sync_long_polls") == 0
                await _ok(
                    as_alice,
                    "PUT",
                    f"{V3}/rooms/{_q(room_id)}/send/m.room.message/t1",
                    {"msgtype": "m.text", "body": "news"},
                )
            assert answered[0]["rooms"][room_id]["timeline"][-1]["content"]["body"] == "news"
            assert (await _scrape(hs)).value("ranvier_sliding_sync_long_polls") == 0


async def test_the_signature_process_is_seen_once_it_runs(tmp_path: Path) -> None:
    config = config_for_tests(tmp_path / "hs")
    metrics = ListenerConfig(type="metrics", host="127.0.0.1", port=0)
    config = msgspec.structs.replace(config, listeners=(*config.listeners, metrics))
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs:
        before = await _scrape(hs)
        assert before.value("ranvier_signature_process_up") == 0
        assert before.value("ranvier_signature_process_starts_total") == 0
        process = hs.server.signature_process
        assert process is not None
        key = SigningKey(bytes(32))
        messages = [
            (key.verify_key.encode(), key.sign(body).signature, body) for body in (b"a", b"b")
        ]
        with trio.fail_after(30):
            assert await process.verify(messages) == [True, True]
        after = await _scrape(hs)
        assert after.value("ranvier_signature_process_up") == 1
        assert after.value("ranvier_signature_process_starts_total") == 1
        assert after.value("ranvier_signature_process_signatures_checked_total") == 2
