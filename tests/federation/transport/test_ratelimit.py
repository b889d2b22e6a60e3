"""Per-origin limits on incoming federation requests, applied by FederationApp.

The app is called directly over ASGI with requests signed as a remote
server signs them, on Trio's mock clock: the delays are observed by moving
the clock, not by waiting.
"""

from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from ranvier.config import Config, ConfigError
from ranvier.federation.transport.ratelimit import FederationRate, FederationRateLimiter
from ranvier.federation.transport.server import FederationApp, Request
from ranvier.http_metrics import HttpMetrics
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.signing import SigningKey, generate_signing_key
from ranvier.protocol.x_matrix import format_authorization, sign_request
from ranvier.server_metrics import homeserver_metrics
from ranvier.testing import open_test_homeserver
from ranvier.testing.homeserver import config_for_tests
from ranvier.testing.keys import KnownKeys

SERVER_NAME = "ours.test"
EVENT = "/_matrix/federation/v1/event/{event_id}"
SEND = "/_matrix/federation/v1/send/{txn_id}"

_KEYS: dict[str, SigningKey] = {
    name: generate_signing_key("k1") for name in ("busy.test", "quiet.test", "friend.test")
}


class _Served:
    """A FederationApp whose handlers count how many run at once."""

    def __init__(self, limiter: FederationRateLimiter | None) -> None:
        self.app = FederationApp(
            server_name=SERVER_NAME, key_lookup=KnownKeys(_KEYS), rate_limiter=limiter
        )
        self.app.router.add("GET", EVENT, self._event)
        # As the transaction route is registered (federation/server.py).
        self.app.router.add("PUT", SEND, self._event, rate_limited=False)
        self.app.router.add(
            "GET", "/_matrix/federation/v1/version", self._event, authenticated=False
        )
        self.running = 0
        self.most_running = 0
        self.served: list[tuple[str | None, str]] = []
        #: The headers of the last answer.
        self.headers: dict[bytes, bytes] = {}
        #: When set, handlers wait for it: requests stay in flight.
        self.gate: trio.Event | None = None

    async def _event(self, request: Request) -> Mapping[str, Any]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            self.served.append((request.origin, request.uri))
            return {"ok": True}
        finally:
            self.running -= 1

    async def call(
        self,
        origin: str | None,
        uri: str = "/_matrix/federation/v1/event/$e",
        method: str = "GET",
        *,
        key: SigningKey | None = None,
    ) -> tuple[int, dict[str, Any]]:
        content: dict[str, Any] | None = {"pdus": [], "edus": []} if method == "PUT" else None
        body = b"" if content is None else encode_canonical_json(content)
        headers = [(b"host", SERVER_NAME.encode())]
        if origin is not None:
            authorization = sign_request(
                method=method,
                uri=uri,
                origin=origin,
                destination=SERVER_NAME,
                signing_key=key or _KEYS[origin],
                content=content,
            )
            headers.append((b"authorization", format_authorization(authorization).encode()))
        if body:
            headers += [(b"content-type", b"application/json")]
            headers += [(b"content-length", str(len(body)).encode())]
        scope = {
            "type": "http",
            "method": method,
            "path": uri,
            "raw_path": uri.encode(),
            "query_string": b"",
            "headers": headers,
        }
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        self.headers = dict(sent[0]["headers"])
        status = sent[0]["status"]
        answer = b"".join(message.get("body", b"") for message in sent[1:])
        return status, msgspec.json.decode(answer)


def _limiter(**overrides: Any) -> FederationRateLimiter:
    rate = FederationRate(
        **{
            "window_seconds": 1.0,
            "sleep_limit": 3,
            "sleep_seconds": 0.5,
            "reject_limit": 4,
            "concurrent": 2,
            **overrides,
        }
    )
    return FederationRateLimiter(rate, exempt=("friend.test",))


async def _start(
    nursery: trio.Nursery, served: _Served, origin: str, count: int
) -> list[tuple[int, dict[str, Any]]]:
    results: list[tuple[int, dict[str, Any]]] = []

    async def one(n: int) -> None:
        results.append(await served.call(origin, f"/_matrix/federation/v1/event/$e{n}"))

    for n in range(count):
        nursery.start_soon(one, n)
        # One at a time, so that they arrive in order.
        await trio.testing.wait_all_tasks_blocked()
    return results


# --- the window: delays, then refusals ----------------------------------------------------


async def test_requests_beyond_the_sleep_limit_are_delayed(mock_clock: MockClock) -> None:
    served = _Served(_limiter(concurrent=10))
    async with trio.open_nursery() as nursery:
        results = await _start(nursery, served, "busy.test", 5)
        # Three fit in the window; the fourth and fifth are held half a second.
        assert len(results) == 3
        assert served.app.rate_limiter is not None
        assert served.app.rate_limiter.delayed == 2
        mock_clock.jump(0.49)
        await trio.testing.wait_all_tasks_blocked()
        assert len(results) == 3
        mock_clock.jump(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert len(results) == 5
    assert [status for status, _ in results] == [200] * 5
    # A window later the count starts again: nothing is delayed.
    mock_clock.jump(1.0)
    async with trio.open_nursery() as nursery:
        results = await _start(nursery, served, "busy.test", 3)
        assert len(results) == 3


async def test_beyond_the_reject_limit_requests_are_refused_with_retry_after(
    mock_clock: MockClock,
) -> None:
    limiter = _limiter(concurrent=10)
    served = _Served(limiter)
    async with trio.open_nursery() as nursery:
        results = await _start(nursery, served, "busy.test", 7)
        # Three served; four held (the reject limit); the eighth is refused
        # at once, without waiting and without reaching the handler.
        assert len(results) == 3
        late: list[tuple[int, dict[str, Any]]] = []

        async def call_late() -> None:
            late.append(await served.call("busy.test", "/_matrix/federation/v1/event/$late"))

        nursery.start_soon(call_late)
        await trio.testing.wait_all_tasks_blocked()
        assert len(late) == 1, "the request over the reject limit was held, not refused"
        status, body = late[0]
        assert status == 429
        assert body["errcode"] == "M_LIMIT_EXCEEDED"
        assert body["retry_after_ms"] == 334  # a window's worth shared by the sleep limit
        # And as HTTP says it, in whole seconds rounded up.
        assert served.headers[b"retry-after"] == b"1"
        assert limiter.rejected == 1
        assert ("busy.test", "/_matrix/federation/v1/event/$late") not in served.served
        mock_clock.jump(0.5)
    assert [status for status, _ in results] == [200] * 7
    assert limiter.delayed == 4


async def test_a_forger_naming_an_origin_spends_none_of_its_allowance(
    mock_clock: MockClock,
) -> None:
    """A request is counted only once its signature holds: one naming
    busy.test but signed by another key is refused and leaves busy.test's
    allowance as it was."""
    limiter = _limiter(sleep_limit=1, reject_limit=1, concurrent=1)
    served = _Served(limiter)
    forged = generate_signing_key("k1")
    for n in range(5):
        status, body = await served.call(
            "busy.test", f"/_matrix/federation/v1/event/$forged{n}", key=forged
        )
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
    assert limiter.origin_count() == 0
    before = trio.current_time()
    assert (await served.call("busy.test"))[0] == 200
    assert trio.current_time() == before
    assert (limiter.delayed, limiter.rejected) == (0, 0)


async def test_a_claim_of_an_origin_over_its_limit_is_refused_and_not_counted(
    mock_clock: MockClock,
) -> None:
    """While busy.test is over its limit, a request naming it is refused
    from its headers, whoever signed it, and takes no place in its window."""
    limiter = _limiter(sleep_limit=1, reject_limit=1, concurrent=1)
    served = _Served(limiter)
    served.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        await _start(nursery, served, "busy.test", 2)
        assert (served.running, limiter.delayed) == (1, 1)
        arrivals = list(limiter._origins["busy.test"].arrivals)
        for key in (_KEYS["busy.test"], generate_signing_key("k1")):
            status, body = await served.call("busy.test", key=key)
            assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        assert list(limiter._origins["busy.test"].arrivals) == arrivals
        assert limiter.rejected == 2
        # Another origin is not affected.
        served.gate.set()
        assert (await served.call("quiet.test"))[0] == 200
        mock_clock.jump(0.5)
    assert len(served.served) == 3


async def test_send_is_not_counted(mock_clock: MockClock) -> None:
    """/send is left to the per-origin queues of its PDUs: a sender's burst
    past every limit is served at once, and counts for nothing else."""
    limiter = _limiter(concurrent=1, reject_limit=1, sleep_limit=1)
    served = _Served(limiter)
    before = trio.current_time()
    for n in range(5):
        status, _ = await served.call("busy.test", f"/_matrix/federation/v1/send/t{n}", "PUT")
        assert status == 200
    assert trio.current_time() == before
    assert limiter.delayed == limiter.rejected == 0
    # The origin's other requests still start from a full allowance.
    status, _ = await served.call("busy.test")
    assert status == 200
    assert limiter.delayed == 0


async def test_the_transaction_route_is_not_rate_limited(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        router = hs.server.federation_app.router
        send = router.match("PUT", "/_matrix/federation/v1/send/t1").route
        event = router.match("GET", "/_matrix/federation/v1/event/$e").route
        assert (send.rate_limited, event.rate_limited) == (False, True)


# --- concurrency ----------------------------------------------------------------------------


async def test_requests_beyond_concurrent_wait_their_turn(mock_clock: MockClock) -> None:
    limiter = _limiter(sleep_limit=100, reject_limit=100)
    served = _Served(limiter)
    served.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        results = await _start(nursery, served, "busy.test", 5)
        assert served.running == 2
        assert limiter.queued == 3
        served.gate.set()
        served.gate = None
        await trio.testing.wait_all_tasks_blocked()
    assert served.most_running == 2
    assert len(results) == 5
    assert [status for status, _ in results] == [200] * 5


async def test_another_origin_is_not_slowed(mock_clock: MockClock) -> None:
    limiter = _limiter()
    served = _Served(limiter)
    served.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        await _start(nursery, served, "busy.test", 6)
        assert limiter.rejected == 0
        # busy.test has its slots taken and a queue; quiet.test is served now.
        served.gate = None
        status, _ = await served.call("quiet.test")
        assert status == 200
        assert limiter.delayed == 3  # all busy.test's
        mock_clock.jump(0.5)
        assert served.running == 2
        nursery.cancel_scope.cancel()


async def test_an_exempt_origin_is_never_limited(mock_clock: MockClock) -> None:
    limiter = _limiter()
    served = _Served(limiter)
    served.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        await _start(nursery, served, "friend.test", 20)
        assert served.running == 20
        served.gate.set()
    assert (limiter.delayed, limiter.queued, limiter.rejected) == (0, 0, 0)
    assert len(served.served) == 20


async def test_without_a_limiter_nothing_is_limited(mock_clock: MockClock) -> None:
    served = _Served(None)
    served.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        await _start(nursery, served, "busy.test", 60)
        assert served.running == 60
        served.gate.set()
    assert len(served.served) == 60


async def test_unsigned_requests_are_not_counted(mock_clock: MockClock) -> None:
    limiter = _limiter(sleep_limit=1, reject_limit=1, concurrent=1)
    served = _Served(limiter)
    for _ in range(10):
        status, _ = await served.call(None, "/_matrix/federation/v1/version")
        assert status == 200
    assert limiter.origin_count() == 0


# --- memory ---------------------------------------------------------------------------------


async def test_idle_origins_are_dropped(mock_clock: MockClock) -> None:
    limiter = _limiter()
    served = _Served(limiter)
    for origin in ("busy.test", "quiet.test"):
        assert (await served.call(origin))[0] == 200
    assert limiter.origin_count() == 2
    mock_clock.jump(0.5)
    # Still in the window: kept.
    assert (await served.call("busy.test"))[0] == 200
    assert limiter.origin_count() == 2
    mock_clock.jump(0.8)
    # quiet.test's request has left the window and it has none in flight.
    assert (await served.call("busy.test"))[0] == 200
    assert limiter.origin_count() == 1
    assert limiter._origins.keys() == {"busy.test"}


async def test_an_origin_with_requests_in_flight_is_kept(mock_clock: MockClock) -> None:
    limiter = _limiter()
    served = _Served(limiter)
    served.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        await _start(nursery, served, "quiet.test", 1)
        served.gate = None
        mock_clock.jump(5.0)
        assert (await served.call("busy.test"))[0] == 200
        assert limiter._origins.keys() == {"quiet.test", "busy.test"}
        nursery.cancel_scope.cancel()
    # Cancelled, its request gave its slot back.
    assert limiter._origins["quiet.test"].in_flight == 0


# --- configuration and wiring -----------------------------------------------------------------


def test_the_section_has_synapses_defaults_and_names_bad_keys() -> None:
    config = Config.from_toml("")
    rate = FederationRate.from_config(config.ratelimit.federation)
    assert rate == FederationRate(
        window_seconds=1.0, sleep_limit=10, sleep_seconds=0.5, reject_limit=50, concurrent=3
    )
    assert config.ratelimit.media_create.per_second == 10.0
    assert config.ratelimit.media_create.burst == 50
    for section, key, value in [
        ("ratelimit.federation", "concurrent", "0"),
        ("ratelimit.federation", "window_size", "0"),
        ("ratelimit.federation", "sleep_delay", "-1"),
        ("ratelimit.federation", "reject_limit", "0"),
        ("ratelimit.federation", "exempt_origins", '["bad name!"]'),
        ("ratelimit.media_create", "burst", "0"),
    ]:
        with pytest.raises(ConfigError) as info:
            Config.from_toml(f"[{section}]\n{key} = {value}\n")
        assert info.value.key is not None
        assert info.value.key.startswith(f"{section}.{key}"), info.value.key


def test_rates_must_make_sense() -> None:
    bad: list[tuple[str, Any]] = [
        ("window_seconds", 0.0),
        ("sleep_seconds", -1.0),
        ("sleep_limit", 0),
        ("reject_limit", 0),
        ("concurrent", 0),
    ]
    for name, value in bad:
        with pytest.raises(ValueError, match=name):
            FederationRate(**{name: value})


async def test_the_server_applies_the_section(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "off") as hs:
        assert hs.server.federation_app.rate_limiter is None
    config = config_for_tests(tmp_path / "fed-off", rate_limits=True)
    limits = config.ratelimit
    config = msgspec.structs.replace(
        config,
        ratelimit=msgspec.structs.replace(
            limits, federation=msgspec.structs.replace(limits.federation, enabled=False)
        ),
    )
    async with open_test_homeserver(tmp_path / "fed-off", config=config) as hs:
        assert hs.server.federation_app.rate_limiter is None
    async with open_test_homeserver(tmp_path / "on", rate_limits=True) as hs:
        limiter = hs.server.federation_app.rate_limiter
        assert limiter is not None
        assert limiter.rate.concurrent == 3
        limiter.rejected = 7
        samples = await homeserver_metrics(hs.server, HttpMetrics(), lambda: None).collect()
        assert samples["ranvier_federation_requests_rejected_total"] == 7
        assert samples["ranvier_federation_requests_delayed_total"] == 0
