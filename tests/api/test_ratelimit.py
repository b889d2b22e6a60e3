"""Rate limits: the buckets on Trio's clock, and the limits ClientApp applies."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from _client import Client, q
from trio.testing import MockClock

from ranvier.api.app import ClientApp
from ranvier.api.ratelimit import (
    DEFAULT_ROUTE_CATEGORIES,
    Rate,
    RateLimiter,
    RouteLimits,
    TokenBuckets,
)
from ranvier.config import Config, ConfigError, RateConfig, RateLimitConfig
from ranvier.core.accounts import Requester
from ranvier.errors import LimitExceededError, MatrixError
from ranvier.testing import open_test_homeserver
from ranvier.testing.homeserver import config_for_tests
from ranvier.web import Request, Router

# --- The buckets ----------------------------------------------------------------------


async def test_a_burst_is_allowed_then_one_action_per_interval(mock_clock: MockClock) -> None:
    buckets = TokenBuckets(Rate(per_second=0.5, burst=3))
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(2.0)
    mock_clock.jump(1.5)
    assert buckets.take("a") == pytest.approx(0.5)
    mock_clock.jump(0.5)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(2.0)
    # Another key has a bucket of its own.
    assert buckets.take("b") == 0.0


async def test_a_refusal_does_not_push_the_wait_further_out(mock_clock: MockClock) -> None:
    buckets = TokenBuckets(Rate(per_second=1, burst=1))
    assert buckets.take("a") == 0.0
    waits = [buckets.take("a") for _ in range(50)]
    assert waits == [pytest.approx(1.0)] * 50
    mock_clock.jump(1)
    assert buckets.take("a") == 0.0


async def test_an_idle_bucket_refills_to_its_burst_and_no_further(mock_clock: MockClock) -> None:
    buckets = TokenBuckets(Rate(per_second=10, burst=4))
    for _ in range(4):
        assert buckets.take("a") == 0.0
    mock_clock.jump(3600)
    assert [buckets.take("a") == 0.0 for _ in range(5)] == [True] * 4 + [False]


async def test_full_buckets_are_dropped(mock_clock: MockClock) -> None:
    buckets = TokenBuckets(Rate(per_second=1, burst=5))
    for n in range(5000):
        buckets.take(f"user{n}")
    held_before = len(buckets)
    assert held_before >= 1024  # under the first sweep's threshold nothing is swept
    # Every bucket has refilled; the next sweep drops them all, and the
    # table stays near what recent traffic needs however many keys pass.
    mock_clock.jump(2)
    for n in range(20_000):
        buckets.take(f"other{n}")
        mock_clock.jump(0.01)
    # At 100 new keys a second and a second to refill, about 100 buckets
    # are live at any time; sweeps at doubling keep the table within a
    # small multiple of the sweep threshold.
    assert len(buckets) <= 4 * 1024, len(buckets)
    assert all(key.startswith("other") for key in buckets._full_at)


async def test_live_buckets_survive_a_sweep(mock_clock: MockClock) -> None:
    buckets = TokenBuckets(Rate(per_second=0.001, burst=1))
    assert buckets.take("slow") == 0.0
    for n in range(5000):
        buckets.take(f"user{n}")
    mock_clock.jump(61)
    buckets.take("trigger")
    # "slow" needs 1000 s to refill: it is still held, and still refuses.
    assert buckets.take("slow") > 0


def test_rates_must_make_sense() -> None:
    with pytest.raises(ValueError, match="per_second"):
        Rate(per_second=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        Rate(per_second=1, burst=0)


async def test_the_limiter_refuses_with_retry_after_ms(mock_clock: MockClock) -> None:
    limiter = RateLimiter({"message": Rate(per_second=0.3, burst=1)})
    limiter.check("message", "@a:hs")
    with pytest.raises(LimitExceededError) as refused:
        limiter.check("message", "@a:hs")
    assert refused.value.http_status == 429
    assert refused.value.to_json()["errcode"] == "M_LIMIT_EXCEEDED"
    assert refused.value.retry_after_ms == 3334  # 1 / 0.3 s, rounded up
    # A category without a rate is not limited.
    for _ in range(100):
        limiter.check("join", "@a:hs")
    assert limiter.bucket_count("join") == 0
    assert limiter.bucket_count("message") == 1


async def test_an_own_rate_is_counted_apart_from_the_category(mock_clock: MockClock) -> None:
    limiter = RateLimiter({"message": Rate(per_second=0.1, burst=1)})
    own = Rate(per_second=1, burst=2)
    limiter.check("message", "@a:hs")
    # The category's bucket is empty; the own rate's is full.
    limiter.check_at("message", "@a:hs", own)
    limiter.check_at("message", "@a:hs", own)
    with pytest.raises(LimitExceededError) as refused:
        limiter.check_at("message", "@a:hs", own)
    assert refused.value.retry_after_ms == 1000
    mock_clock.jump(1)
    limiter.check_at("message", "@a:hs", own)
    with pytest.raises(LimitExceededError):
        limiter.check("message", "@a:hs")


# --- Configuration --------------------------------------------------------------------


def test_the_ratelimit_section_is_read_and_checked() -> None:
    config = Config.from_toml(
        "[ratelimit]\ntrust_x_forwarded_for = true\nlogin = { per_second = 2, burst = 7 }\n"
    )
    assert config.ratelimit.trust_x_forwarded_for
    assert (config.ratelimit.login.per_second, config.ratelimit.login.burst) == (2.0, 7)
    assert config.ratelimit.message == RateLimitConfig().message
    with pytest.raises(ConfigError, match=r"ratelimit\.join\.burst"):
        Config.from_toml("[ratelimit]\njoin = { per_second = 1, burst = 0 }\n")
    with pytest.raises(ConfigError, match=r"ratelimit\.mesage"):
        Config.from_toml("[ratelimit]\nmesage = { per_second = 1, burst = 1 }\n")
    # Off by default: honouring the header lets any client pick its address.
    assert not Config.default().ratelimit.trust_x_forwarded_for


async def test_a_disabled_section_limits_nothing(mock_clock: MockClock) -> None:
    limiter = RateLimiter.from_config(RateLimitConfig(enabled=False))
    for _ in range(1000):
        limiter.check("login", "127.0.0.1")
    enabled = RateLimiter.from_config(RateLimitConfig())
    for _ in range(5):
        enabled.check("login", "127.0.0.1")
    with pytest.raises(LimitExceededError):
        enabled.check("login", "127.0.0.1")


# --- Applied by the app ---------------------------------------------------------------

_USERS = {
    "alice-token": Requester("@alice:hs", "A", is_admin=False, token_hash=b"a"),
    "bob-token": Requester("@bob:hs", "B", is_admin=False, token_hash=b"b"),
    "admin-token": Requester("@admin:hs", "C", is_admin=True, token_hash=b"c"),
}


async def _identify(request: Request) -> Requester:
    """Who the request's bearer token names: the part of ``Auth.get_user``
    the limits need, over a fixed table of tokens.
    """
    for name, value in request.headers:
        if name == "authorization" and value.startswith("Bearer "):
            requester = _USERS.get(value.removeprefix("Bearer "))
            if requester is None:
                raise MatrixError("unknown token", errcode="M_UNKNOWN_TOKEN", http_status=401)
            return requester
    raise MatrixError("no token", errcode="M_MISSING_TOKEN", http_status=401)


def _app(*, trust_x_forwarded_for: bool = False) -> ClientApp:
    router = Router()
    handled: list[str] = []

    async def send(request: Request) -> Mapping[str, Any]:
        await _identify(request)
        handled.append(request.path_params["txn"])
        return {"event_id": "$x"}

    async def login(request: Request) -> Mapping[str, Any]:
        return {"ok": True}

    async def conflicted(request: Request) -> Mapping[str, Any]:
        raise LimitExceededError(retry_after_ms=1500)

    # The route module's own parameter names, not the table's.
    router.add("PUT", "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txn}", send)
    router.add("POST", "/_matrix/client/v3/login", login)
    router.add("PUT", "/_matrix/client/v3/rooms/{roomId}/state/{eventType}", conflicted)
    limiter = RateLimiter(
        {"message": Rate(per_second=0.5, burst=2), "login": Rate(per_second=0.1, burst=2)}
    )
    limits = RouteLimits(limiter, identify=_identify, trust_x_forwarded_for=trust_x_forwarded_for)
    return ClientApp(router=router, rate_limits=limits)


def _client(app: ClientApp, *, peer: str = "10.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(peer, 4321)), base_url="http://hs"
    )


def _send_path(txn: str) -> str:
    return f"/_matrix/client/v3/rooms/!r:hs/send/m.room.message/{txn}"


async def test_sends_are_limited_per_user_with_retry_after(mock_clock: MockClock) -> None:
    app = _app()
    alice = {"Authorization": "Bearer alice-token"}
    bob = {"Authorization": "Bearer bob-token"}
    async with _client(app) as client:
        statuses = [
            (await client.put(_send_path(str(n)), json={}, headers=alice)).status_code
            for n in range(2)
        ]
        refused = await client.put(_send_path("2"), json={}, headers=alice)
        # Bob's bucket is his own.
        bobs = await client.put(_send_path("3"), json={}, headers=bob)
        mock_clock.jump(2)
        again = await client.put(_send_path("4"), json={}, headers=alice)
    assert statuses == [200, 200]
    assert refused.status_code == 429
    assert refused.json()["errcode"] == "M_LIMIT_EXCEEDED"
    assert refused.json()["retry_after_ms"] == 2000
    assert refused.headers["retry-after"] == "2"
    assert refused.headers["access-control-allow-origin"] == "*"
    assert bobs.status_code == 200
    assert again.status_code == 200


async def test_admins_are_exempt(mock_clock: MockClock) -> None:
    app = _app()
    admin = {"Authorization": "Bearer admin-token"}
    async with _client(app) as client:
        statuses = {
            (await client.put(_send_path(str(n)), json={}, headers=admin)).status_code
            for n in range(20)
        }
    assert statuses == {200}


async def test_a_request_without_a_user_gets_the_handlers_answer(mock_clock: MockClock) -> None:
    app = _app()
    async with _client(app) as client:
        answers = [
            (await client.put(_send_path(str(n)), json={})).json()["errcode"] for n in range(5)
        ]
        wrong = await client.put(_send_path("x"), json={}, headers={"Authorization": "Bearer nope"})
    assert answers == ["M_MISSING_TOKEN"] * 5
    assert wrong.json()["errcode"] == "M_UNKNOWN_TOKEN"


async def test_login_is_limited_per_client_address(mock_clock: MockClock) -> None:
    app = _app()
    async with _client(app, peer="10.0.0.1") as one, _client(app, peer="10.0.0.2") as two:
        first = [(await one.post("/_matrix/client/v3/login", json={})).status_code for _ in "abc"]
        other = await two.post("/_matrix/client/v3/login", json={})
        # Without trust, the header changes nothing.
        spoofed = await one.post(
            "/_matrix/client/v3/login", json={}, headers={"X-Forwarded-For": "192.0.2.9"}
        )
    assert first == [200, 200, 429]
    assert other.status_code == 200
    assert spoofed.status_code == 429
    assert spoofed.headers["retry-after"] == "10"


async def test_behind_a_trusted_proxy_the_forwarded_address_counts(mock_clock: MockClock) -> None:
    app = _app(trust_x_forwarded_for=True)
    login = "/_matrix/client/v3/login"
    async with _client(app, peer="127.0.0.1") as proxy:
        # The proxy appended the address it saw after what the client claimed.
        for claimed in ("1.1.1.1", "2.2.2.2", "3.3.3.3"):
            last = await proxy.post(
                login, json={}, headers={"X-Forwarded-For": f"{claimed}, 203.0.113.5"}
            )
        other = await proxy.post(login, json={}, headers={"X-Forwarded-For": "203.0.113.6"})
    assert last.status_code == 429
    assert other.status_code == 200


async def test_a_handlers_limit_exceeded_gets_retry_after_too(mock_clock: MockClock) -> None:
    app = ClientApp(router=_app().router)  # no limits at all
    async with _client(app) as client:
        response = await client.put(
            "/_matrix/client/v3/rooms/!r:hs/state/m.room.topic",
            json={},
            headers={"Authorization": "Bearer alice-token"},
        )
    assert response.status_code == 429
    assert response.json()["retry_after_ms"] == 1500
    assert response.headers["retry-after"] == "2"


async def test_a_category_without_a_rate_does_not_look_up_the_requester() -> None:
    identified: list[str] = []

    async def identify(request: Request) -> Requester:
        identified.append(request.uri)
        return await _identify(request)

    router = Router()

    async def nothing(request: Request) -> Mapping[str, Any]:
        return {}

    router.add("PUT", "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txn}", nothing)
    path = "/_matrix/client/v3/rooms/!r:hs/send/m.room.message/t1"
    route = router.match("PUT", path).route
    request = Request(
        method="PUT",
        uri=path,
        path_params={},
        query={},
        headers=[("authorization", "Bearer alice-token")],
        body=b"{}",
        content={},
        origin=None,
    )
    unlimited = RouteLimits(RateLimiter({"login": Rate(per_second=1, burst=1)}), identify=identify)
    for _ in range(5):
        await unlimited.apply(route, request, ("10.0.0.1", 1))
    assert identified == []
    limited = RouteLimits(RateLimiter({"message": Rate(per_second=1, burst=5)}), identify=identify)
    await limited.apply(route, request, ("10.0.0.1", 1))
    assert identified == [path]


def test_the_table_covers_the_routes_it_means() -> None:
    limits = RouteLimits(RateLimiter({}), identify=_identify)
    router = Router()

    async def nothing(request: Request) -> Mapping[str, Any]:
        return {}

    for method, pattern in DEFAULT_ROUTE_CATEGORIES:
        router.add(method, pattern.replace("{room_id}", "{roomId}"), nothing)
    found = {
        limits.category_of(router.match(method, path).route)
        for method, path in [
            ("PUT", "/_matrix/client/v3/rooms/!r:hs/send/m.room.message/t1"),
            ("PUT", "/_matrix/client/v3/rooms/!r:hs/state/m.room.name"),
            ("PUT", "/_matrix/client/v3/rooms/!r:hs/state/m.room.member/@a:hs"),
            ("POST", "/_matrix/client/v3/createRoom"),
            ("POST", "/_matrix/client/v3/rooms/!r:hs/invite"),
            ("POST", "/_matrix/client/v3/join/%23room:hs"),
            ("POST", "/_matrix/client/v3/register"),
        ]
    }
    assert found == {"message", "room_creation", "invite", "join", "registration"}


def test_a_route_under_r0_is_limited_as_under_v3() -> None:
    limits = RouteLimits(RateLimiter({}), identify=_identify)
    router = Router()

    async def nothing(request: Request) -> Mapping[str, Any]:
        return {}

    router.add("POST", "/_matrix/client/r0/login", nothing)
    router.add("POST", "/_matrix/client/v1/login", nothing)
    assert limits.category_of(router.match("POST", "/_matrix/client/r0/login").route) == "login"
    assert limits.category_of(router.match("POST", "/_matrix/client/v1/login").route) is None


async def test_every_limited_route_is_one_the_server_serves(tmp_path: Path) -> None:
    """The table names routes by pattern; a route renamed in its module
    would silently lose its limit, so each entry must match a served route
    (of a server with every optional route turned on).
    """
    config = config_for_tests(tmp_path / "hs")
    config = msgspec.structs.replace(
        config,
        registration=msgspec.structs.replace(config.registration, login_token_enabled=True),
    )
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs:
        app = hs.server.client_app
        assert app.rate_limits is not None
        media_router = Router()
        for method, pattern, _ in hs.server.media_app.routes():
            media_router.add(method, pattern, _nothing)
        for (method, pattern), category in DEFAULT_ROUTE_CATEGORIES.items():
            if pattern.startswith("/_matrix/media/"):
                # Served by MediaApp, in front of the client API.
                for prefix in ("/_matrix/media/v3/", "/_matrix/media/r0/"):
                    path = _example_path(pattern).replace("/_matrix/media/v3/", prefix)
                    route = media_router.match(method, path).route
                    assert app.rate_limits.category_of(route) == category, (method, path)
                continue
            for prefix in ("/_matrix/client/v3/", "/_matrix/client/r0/"):
                path = _example_path(pattern).replace("/_matrix/client/v3/", prefix)
                try:
                    route = app.router.match(method, path).route
                except MatrixError:
                    assert prefix.endswith("r0/"), f"{method} {pattern} is not served"
                    continue
                assert app.rate_limits.category_of(route) == category, (method, path)
        login = app.router.match("POST", "/_matrix/client/r0/login").route
        assert app.rate_limits.category_of(login) == "login"


async def _nothing(request: Request) -> Mapping[str, Any]:
    return {}


def _example_path(pattern: str) -> str:
    return "/".join("x" if part.startswith("{") else part for part in pattern.split("/"))


async def test_a_member_event_through_state_counts_as_the_action_it_stands_for(
    tmp_path: Path,
) -> None:
    """A join or an invite sent as a member event through /state takes
    from the user's joins or invites, as the routes of its own do: one of
    each at once, here, and /state cannot be a way round the limit."""
    config = config_for_tests(tmp_path / "hs", rate_limits=True)
    one = RateConfig(per_second=0.0001, burst=1)
    config = msgspec.structs.replace(
        config,
        ratelimit=msgspec.structs.replace(config.ratelimit, join=one, invite=one),
    )
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as http:
        c = Client(hs, http)
        alice, bob = await hs.register_user("alice"), await hs.register_user("bob")
        carol, dave = await hs.register_user("carol"), await hs.register_user("dave")
        first, second = [await c.create_room(alice, preset="public_chat") for _ in range(2)]

        def member(room_id: str, user_id: str) -> str:
            return f"/rooms/{q(room_id)}/state/m.room.member/{q(user_id)}"

        await c.ok(bob, "PUT", member(first, bob.user_id), {"membership": "join"})
        for method, path in (
            ("PUT", member(second, bob.user_id)),
            ("POST", f"/rooms/{q(second)}/join"),
        ):
            await c.refused(
                bob, method, path, {"membership": "join"}, status=429, errcode="M_LIMIT_EXCEEDED"
            )
        await c.ok(alice, "PUT", member(first, carol.user_id), {"membership": "invite"})
        await c.refused(
            alice,
            "PUT",
            member(first, dave.user_id),
            {"membership": "invite"},
            status=429,
            errcode="M_LIMIT_EXCEEDED",
        )
        await c.refused(
            alice,
            "POST",
            f"/rooms/{q(first)}/invite",
            {"user_id": dave.user_id},
            status=429,
            errcode="M_LIMIT_EXCEEDED",
        )
        state = await c.state(alice, first)
        assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "join"
        assert ("m.room.member", dave.user_id) not in state
        assert ("m.room.member", bob.user_id) not in await c.state(alice, second)
        # Leaving and banning have no limit of their own.
        await c.ok(bob, "PUT", member(first, bob.user_id), {"membership": "leave"})
        await c.ok(alice, "PUT", member(first, dave.user_id), {"membership": "ban"})
