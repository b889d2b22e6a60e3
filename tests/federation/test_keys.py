"""The key ring against real servers over HTTPS on loopback, with the real
storage actor on a SQLite file: keys fetched, verified, cached; forged and
expired keys refused; notaries used when the origin is down; one fetch for
many lookups; and a signed request accepted end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from ranvier.federation.keys import (
    MAX_KEY_VALIDITY_MS,
    KeyRing,
    KeyUnavailableError,
    TrustedKeyServer,
    parse_key_response,
)
from ranvier.federation.transport.client import FederationHttpClient, FederationRequestError
from ranvier.federation.transport.server import KeyLookup, Request
from ranvier.protocol.signing import (
    SigningKey,
    encode_verify_key_base64,
    generate_signing_key,
    key_id,
    sign_json,
)
from ranvier.storage import Storage
from ranvier.testing import KnownKeys, Pki, RemoteHomeserver, ZoneDns, free_port

from ._servers import TEST_NAMES

NOW = 1_700_000_000_000
HOUR = 3_600_000
OURS = "ours.test"


class Clock:
    """Wall-clock milliseconds that a test moves by hand."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


class Notary(RemoteHomeserver):
    """A remote homeserver that also answers ``/_matrix/key/v2/query``
    from ``cached`` responses, which it signs as it hands them out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cached: dict[str, list[dict[str, Any]]] = {}
        self.sign = True
        self.queries: list[tuple[str, str | None]] = []
        self.app.router.add(
            "GET", "/_matrix/key/v2/query/{server_name}", self._query, authenticated=False
        )

    async def _query(self, request: Request) -> Mapping[str, Any]:
        name = request.path_params["server_name"]
        self.queries.append((name, request.query_value("minimum_valid_until_ts")))
        answers = self.cached.get(name, [])
        if self.sign:
            answers = [sign_json(answer, self.server_name, self.signing_key) for answer in answers]
        return {"server_keys": answers}


@dataclass
class World:
    pki: Pki
    zone: ZoneDns
    clock: Clock
    storage: Storage
    client: FederationHttpClient
    nursery: trio.Nursery

    async def remote(
        self,
        template: str = "remote.test:{port}",
        *,
        cls: type[RemoteHomeserver] = RemoteHomeserver,
    ) -> Any:
        remote = cls(template, key_lookup=KnownKeys(), clock=self.clock, validity_ms=HOUR)
        await remote.start(self.nursery, self.pki.server_context())
        return remote

    def ring(self, **kwargs: Any) -> KeyRing:
        return KeyRing(store=self.storage, client=self.client, clock=self.clock, **kwargs)


@pytest.fixture
async def world(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[World]:
    pki = Pki.create(tmp_path, names=TEST_NAMES)
    zone = ZoneDns()
    for name in ("remote.test", "notary.test", "a.test", "b.test"):
        zone.addresses[name] = ["127.0.0.1"]
    storage = Storage(tmp_path / "keys.db", synchronous="OFF")
    await nursery.start(storage.run)
    async with FederationHttpClient(
        OURS, generate_signing_key("o1"), ssl_context=pki.client_context(), dns=zone
    ) as client:
        yield World(pki, zone, Clock(), storage, client, nursery)


def _signed_keys(
    server_name: str,
    key: SigningKey,
    *,
    valid_until_ts: int | None = NOW + HOUR,
    old: Mapping[str, Mapping[str, Any]] | None = None,
    sign_with: SigningKey | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "server_name": server_name,
        "verify_keys": {key_id(key): {"key": encode_verify_key_base64(key.verify_key)}},
        "old_verify_keys": dict(old or {}),
    }
    if valid_until_ts is not None:
        body["valid_until_ts"] = valid_until_ts
    return sign_json(body, server_name, sign_with or key)


# Fetching and caching


async def test_fetches_verifies_and_caches(world: World) -> None:
    remote = await world.remote()
    ring = world.ring()
    key = await ring.get_verify_key(remote.server_name, "ed25519:k1")
    assert bytes(key) == bytes(remote.signing_key.verify_key)
    assert key_id(key) == "ed25519:k1"
    assert remote.key_requests == 1
    stored = (await world.storage.get_server_keys(remote.server_name))["ed25519:k1"]
    assert stored.verify_key == bytes(key)
    assert stored.valid_until_ts == NOW + HOUR
    assert stored.from_server == remote.server_name
    assert stored.fetched_ts == NOW
    assert msgspec.json.decode(stored.key_json)["server_name"] == remote.server_name
    # Memory, then storage for a new key ring: no more requests.
    await ring.get_verify_key(remote.server_name, "ed25519:k1")
    assert bytes(await world.ring().get_verify_key(remote.server_name, "ed25519:k1")) == bytes(key)
    assert remote.key_requests == 1


async def test_validity_is_capped_at_seven_days(world: World) -> None:
    remote = await world.remote()
    remote.validity_ms = 30 * 24 * HOUR
    ring = world.ring()
    await ring.get_verify_key(remote.server_name, "ed25519:k1")
    stored = (await world.storage.get_server_keys(remote.server_name))["ed25519:k1"]
    assert stored.valid_until_ts == NOW + MAX_KEY_VALIDITY_MS
    with pytest.raises(KeyUnavailableError, match="valid until"):
        await ring.get_verify_key(
            remote.server_name, "ed25519:k1", at_ts=NOW + MAX_KEY_VALIDITY_MS + 1
        )


def _tampered(response: dict[str, Any]) -> dict[str, Any]:
    return {**response, "valid_until_ts": response["valid_until_ts"] + 1}


@pytest.mark.parametrize(
    ("forge", "problem"),
    [
        (lambda name, key: _tampered(_signed_keys(name, key)), "does not match"),
        (lambda name, key: _signed_keys("other.test", key), "is for 'other.test'"),
        (lambda name, key: _signed_keys(name, key, valid_until_ts=None), "valid_until_ts"),
        (
            lambda name, key: _signed_keys(name, key, sign_with=generate_signing_key("k2")),
            "not signed by any key it publishes",
        ),
        (
            lambda name, key: {
                k: v for k, v in _signed_keys(name, key).items() if k != "signatures"
            },
            "not signed by any key it publishes",
        ),
        (lambda name, key: {**_signed_keys(name, key), "verify_keys": []}, "no verify_keys"),
    ],
    ids=[
        "bad-signature",
        "wrong-server-name",
        "no-valid-until",
        "foreign-signer",
        "unsigned",
        "malformed",
    ],
)
async def test_forged_or_broken_responses_are_refused(
    world: World, forge: Callable[[str, SigningKey], dict[str, Any]], problem: str
) -> None:
    remote = await world.remote()
    remote.key_response = forge(remote.server_name, remote.signing_key)
    with pytest.raises(KeyUnavailableError, match=problem):
        await world.ring().get_verify_key(remote.server_name, "ed25519:k1")
    assert await world.storage.get_server_keys(remote.server_name) == {}


async def test_expired_keys_are_refused_for_later_checks(world: World) -> None:
    remote = await world.remote()
    remote.validity_ms = -1000
    ring = world.ring()
    with pytest.raises(KeyUnavailableError, match=f"valid until {NOW - 1000}"):
        await ring.get_verify_key(remote.server_name, "ed25519:k1")
    # Still good for a signature made while it was valid.
    key = await ring.get_verify_key(remote.server_name, "ed25519:k1", at_ts=NOW - 2000)
    assert bytes(key) == bytes(remote.signing_key.verify_key)
    assert remote.key_requests == 1


async def test_a_key_past_its_validity_is_fetched_again(world: World) -> None:
    remote = await world.remote()
    ring = world.ring()
    await ring.get_verify_key(remote.server_name, "ed25519:k1")
    world.clock.now += 2 * HOUR
    await ring.get_verify_key(remote.server_name, "ed25519:k1")
    assert remote.key_requests == 2
    stored = (await world.storage.get_server_keys(remote.server_name))["ed25519:k1"]
    assert stored.valid_until_ts == NOW + 3 * HOUR
    # A check later than any validity the server gives: fetched, refused.
    world.clock.now += 60_000
    with pytest.raises(KeyUnavailableError, match="valid until"):
        await ring.get_verify_key(remote.server_name, "ed25519:k1", at_ts=NOW + 10 * HOUR)
    assert remote.key_requests == 3


async def test_old_verify_keys_count_until_they_expired(world: World) -> None:
    remote = await world.remote()
    old_key = generate_signing_key("old")
    remote.key_response = _signed_keys(
        remote.server_name,
        remote.signing_key,
        old={
            "ed25519:old": {
                "key": encode_verify_key_base64(old_key.verify_key),
                "expired_ts": NOW - HOUR,
            }
        },
    )
    ring = world.ring()
    key = await ring.get_verify_key(remote.server_name, "ed25519:old", at_ts=NOW - 2 * HOUR)
    assert bytes(key) == bytes(old_key.verify_key)
    stored = (await world.storage.get_server_keys(remote.server_name))["ed25519:old"]
    assert (stored.valid_until_ts, stored.expired_ts) == (NOW - HOUR, NOW - HOUR)
    with pytest.raises(KeyUnavailableError, match="valid until"):
        await ring.get_verify_key(remote.server_name, "ed25519:old")


async def test_unknown_keys_do_not_hammer_the_server(world: World) -> None:
    remote = await world.remote()
    ring = world.ring(min_refetch_interval_ms=10_000)
    for _ in range(5):
        with pytest.raises(KeyUnavailableError, match="does not publish it"):
            await ring.get_verify_key(remote.server_name, "ed25519:nope")
    assert remote.key_requests == 1
    world.clock.now += 10_000
    with pytest.raises(KeyUnavailableError):
        await ring.get_verify_key(remote.server_name, "ed25519:nope")
    assert remote.key_requests == 2


async def test_our_own_keys_need_no_fetch(world: World) -> None:
    ours = generate_signing_key("mine")
    ring = world.ring(local_server_name=OURS, local_keys=[ours.verify_key])
    assert bytes(await ring.get_verify_key(OURS, "ed25519:mine")) == bytes(ours.verify_key)
    with pytest.raises(KeyUnavailableError, match="no such key"):
        await ring.get_verify_key(OURS, "ed25519:other")


# Notaries


async def _notary_with(world: World, origin: str, *responses: dict[str, Any]) -> Notary:
    notary: Notary = await world.remote("notary.test:{port}", cls=Notary)
    notary.cached[origin] = list(responses)
    return notary


async def test_notary_answers_when_the_origin_is_down(world: World) -> None:
    origin = f"remote.test:{free_port()}"
    origin_key = generate_signing_key("k1")
    notary = await _notary_with(world, origin, _signed_keys(origin, origin_key))
    ring = world.ring(
        trusted_key_servers=[
            TrustedKeyServer(notary.server_name, {"ed25519:k1": notary.signing_key.verify_key})
        ]
    )
    key = await ring.get_verify_key(origin, "ed25519:k1")
    assert bytes(key) == bytes(origin_key.verify_key)
    assert notary.queries == [(origin, str(NOW))]
    stored = (await world.storage.get_server_keys(origin))["ed25519:k1"]
    assert stored.from_server == notary.server_name
    # The pinned key sufficed: the notary's own keys were not fetched.
    assert notary.key_requests == 0


async def test_notary_keys_are_fetched_from_the_notary(world: World) -> None:
    origin = f"remote.test:{free_port()}"
    origin_key = generate_signing_key("k1")
    notary = await _notary_with(world, origin, _signed_keys(origin, origin_key))
    ring = world.ring(trusted_key_servers=[TrustedKeyServer(notary.server_name)])
    assert bytes(await ring.get_verify_key(origin, "ed25519:k1")) == bytes(origin_key.verify_key)
    assert notary.key_requests == 1


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("unsigned", "not signed by the notary"),
        ("forged-origin", "does not match"),
        ("other-notary-key", "none of them among its configured keys"),
        ("wrong-notary-signature", "does not match"),
        ("nothing", "has no keys of"),
    ],
)
async def test_notary_answers_are_checked(world: World, change: str, problem: str) -> None:
    origin = f"remote.test:{free_port()}"
    origin_key = generate_signing_key("k1")
    response = _signed_keys(origin, origin_key)
    if change == "forged-origin":
        response = _tampered(response)
    notary = await _notary_with(world, origin, *([] if change == "nothing" else [response]))
    notary.sign = change != "unsigned"
    pinned = {
        "other-notary-key": generate_signing_key("p1"),
        # The ID the notary signs with, but another key.
        "wrong-notary-signature": generate_signing_key("k1"),
    }.get(change, notary.signing_key)
    ring = world.ring(
        trusted_key_servers=[
            TrustedKeyServer(notary.server_name, {key_id(pinned): pinned.verify_key})
        ]
    )
    with pytest.raises(KeyUnavailableError, match=problem) as caught:
        await ring.get_verify_key(origin, "ed25519:k1")
    # Both attempts are reported: the origin's and the notary's.
    assert f"from {origin}" in str(caught.value)
    assert await world.storage.get_server_keys(origin) == {}


async def test_notary_is_asked_for_keys_the_origin_no_longer_lists(world: World) -> None:
    remote = await world.remote()
    retired = generate_signing_key("retired")
    notary = await _notary_with(
        world, remote.server_name, _signed_keys(remote.server_name, retired)
    )
    ring = world.ring(
        trusted_key_servers=[
            TrustedKeyServer(notary.server_name, {"ed25519:k1": notary.signing_key.verify_key})
        ]
    )
    key = await ring.get_verify_key(remote.server_name, "ed25519:retired", at_ts=NOW)
    assert bytes(key) == bytes(retired.verify_key)
    assert remote.key_requests == 1
    assert len(notary.queries) == 1


async def test_a_key_the_origin_stops_listing_stays_kept(world: World) -> None:
    # An origin that forgets a retired key, or a forged later answer, must
    # not make this server forget it: events signed with it must still be
    # checked, here and by servers using this one as a notary.
    remote = await world.remote()
    retired = generate_signing_key("retired")
    first = _signed_keys(remote.server_name, retired, valid_until_ts=NOW - 24 * HOUR)
    remote.key_response = first
    ring = world.ring(min_refetch_interval_ms=1000)
    await ring.refresh_from_origin(remote.server_name)
    world.clock.now += 60_000
    remote.key_response = _signed_keys(
        remote.server_name, generate_signing_key("next"), valid_until_ts=NOW - 23 * HOUR
    )
    await ring.refresh_from_origin(remote.server_name)
    assert remote.key_requests == 2
    stored = await world.storage.get_server_keys(remote.server_name)
    assert set(stored) == {"ed25519:retired", "ed25519:next"}
    kept = stored["ed25519:retired"]
    assert kept.valid_until_ts == NOW - 24 * HOUR
    assert msgspec.json.decode(kept.key_json) == first
    key = await world.ring().get_verify_key(
        remote.server_name, "ed25519:retired", at_ts=NOW - 25 * HOUR
    )
    assert bytes(key) == bytes(retired.verify_key)


# One fetch for many lookups


async def test_concurrent_lookups_share_one_fetch(world: World) -> None:
    remote = await world.remote()
    remote.delay = 0.2
    ring = world.ring()
    found: list[bytes] = []

    async def look(name: str) -> None:
        try:
            found.append(bytes(await ring.get_verify_key(remote.server_name, name)))
        except KeyUnavailableError:
            found.append(b"")

    async with trio.open_nursery() as nursery:
        for index in range(20):
            nursery.start_soon(look, "ed25519:k1" if index % 4 else "ed25519:other")
    assert remote.key_requests == 1
    assert found.count(bytes(remote.signing_key.verify_key)) == 15
    assert found.count(b"") == 5


async def test_a_cancelled_fetch_is_taken_over(world: World) -> None:
    remote = await world.remote()
    remote.delay = 0.2
    ring = world.ring()
    results: list[bytes] = []
    starter_scope = trio.CancelScope()

    async def starter() -> None:
        with starter_scope:
            await ring.get_verify_key(remote.server_name, "ed25519:k1")

    async def waiter() -> None:
        results.append(bytes(await ring.get_verify_key(remote.server_name, "ed25519:k1")))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(starter)
        await remote.key_requested.wait()
        nursery.start_soon(waiter)
        # Until the waiter is parked on the starter's fetch (it may first
        # spend a while in a storage read on a worker thread).
        flight = ring._flights[remote.server_name]
        while flight.done.statistics().tasks_waiting == 0:
            await trio.testing.wait_all_tasks_blocked()
        starter_scope.cancel()
    # The waiter did not hang on the abandoned fetch: it ran its own.
    assert starter_scope.cancelled_caught
    assert results == [bytes(remote.signing_key.verify_key)]
    assert remote.key_requests == 2


# The whole round trip


async def test_signed_request_accepted_through_the_key_ring(world: World) -> None:
    """Server B authenticates a request from A with B's key ring, which
    fetches A's key from A's own server."""
    a_key = generate_signing_key("a1")
    b_ring = world.ring()
    lookup: KeyLookup = b_ring
    a_server = await world.remote("a.test:{port}")
    a_server.signing_key = a_key
    b_server = RemoteHomeserver("b.test:{port}", key_lookup=lookup, clock=world.clock)
    await b_server.start(world.nursery, world.pki.server_context())

    async with FederationHttpClient(
        a_server.server_name, a_key, ssl_context=world.pki.client_context(), dns=world.zone
    ) as a_client:
        answer = await a_client.put_json(
            b_server.server_name, "/_matrix/federation/v1/echo/t1", {"pdus": []}
        )
        assert answer["origin"] == a_server.server_name
        assert a_server.key_requests == 1
        await a_client.get_json(b_server.server_name, "/_matrix/federation/v1/echo")
        assert a_server.key_requests == 1

    # Signed with a key A does not publish: B cannot verify it.
    async with FederationHttpClient(
        a_server.server_name,
        generate_signing_key("rogue"),
        ssl_context=world.pki.client_context(),
        dns=world.zone,
    ) as rogue:
        with pytest.raises(FederationRequestError) as caught:
            await rogue.get_json(b_server.server_name, "/_matrix/federation/v1/echo")
    assert (caught.value.status, caught.value.errcode) == (401, "M_UNAUTHORIZED")
    assert "ed25519:rogue" in str(caught.value.error)
    assert len(b_server.seen) == 2


# The parser on its own


def test_parse_key_response_skips_other_algorithms() -> None:
    key = generate_signing_key("k1")
    response = _signed_keys("remote.test", key)
    response = {k: v for k, v in response.items() if k != "signatures"}
    response["verify_keys"]["curve25519:x"] = {"key": "AAAA"}
    response = sign_json(response, "remote.test", key)
    keys = parse_key_response(
        response, server_name="remote.test", from_server="remote.test", fetched_ts=NOW
    )
    assert [k.key_id for k in keys] == ["ed25519:k1"]
