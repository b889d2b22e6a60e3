"""Every server-server endpoint of the Matrix specification has a route on
the federation listener, or a reason below why it has none.

``SPEC_ENDPOINTS`` is written from the specification's OpenAPI files
(``data/api/server-server/*.yaml`` in matrix-org/matrix-spec, as of its
commit d0ba2aa of July 2026): the federation API, the key server's, the
policy server's and ``/.well-known/matrix/server``, one entry per method
and path, grouped by the file that defines it. The test walks the
federation router of a running test server and fails when a listed
endpoint has no route, so a route that disappears is noticed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import pytest

from ranvier.testing.homeserver import open_test_homeserver

#: The specification's server-server endpoints (method, path template).
SPEC_ENDPOINTS: Final[tuple[tuple[str, str], ...]] = (
    # backfill.yaml
    ("GET", "/_matrix/federation/v1/backfill/{roomId}"),
    ("POST", "/_matrix/federation/v1/get_missing_events/{roomId}"),
    # content_repository.yaml
    ("GET", "/_matrix/federation/v1/media/download/{mediaId}"),
    ("GET", "/_matrix/federation/v1/media/thumbnail/{mediaId}"),
    # event_auth.yaml
    ("GET", "/_matrix/federation/v1/event_auth/{roomId}/{eventId}"),
    # events.yaml
    ("GET", "/_matrix/federation/v1/state/{roomId}"),
    ("GET", "/_matrix/federation/v1/state_ids/{roomId}"),
    ("GET", "/_matrix/federation/v1/event/{eventId}"),
    ("GET", "/_matrix/federation/v1/timestamp_to_event/{roomId}"),
    # invites-v1.yaml
    ("PUT", "/_matrix/federation/v1/invite/{roomId}/{eventId}"),
    # invites-v2.yaml
    ("PUT", "/_matrix/federation/v2/invite/{roomId}/{eventId}"),
    # joins-v1.yaml
    ("GET", "/_matrix/federation/v1/make_join/{roomId}/{userId}"),
    # joins-v2.yaml
    ("PUT", "/_matrix/federation/v2/send_join/{roomId}/{eventId}"),
    # keys_query.yaml
    ("GET", "/_matrix/key/v2/query/{serverName}"),
    ("POST", "/_matrix/key/v2/query"),
    # keys_server.yaml
    ("GET", "/_matrix/key/v2/server"),
    # knocks.yaml
    ("GET", "/_matrix/federation/v1/make_knock/{roomId}/{userId}"),
    ("PUT", "/_matrix/federation/v1/send_knock/{roomId}/{eventId}"),
    # leaving-v1.yaml
    ("GET", "/_matrix/federation/v1/make_leave/{roomId}/{userId}"),
    # leaving-v2.yaml
    ("PUT", "/_matrix/federation/v2/send_leave/{roomId}/{eventId}"),
    # openid.yaml
    ("GET", "/_matrix/federation/v1/openid/userinfo"),
    # public_rooms.yaml
    ("GET", "/_matrix/federation/v1/publicRooms"),
    ("POST", "/_matrix/federation/v1/publicRooms"),
    # query.yaml
    ("GET", "/_matrix/federation/v1/query/{queryType}"),
    ("GET", "/_matrix/federation/v1/query/directory"),
    ("GET", "/_matrix/federation/v1/query/profile"),
    # room_policy.yaml
    ("POST", "/_matrix/policy/v1/sign"),
    # space_hierarchy.yaml
    ("GET", "/_matrix/federation/v1/hierarchy/{roomId}"),
    # third_party_invite.yaml
    ("PUT", "/_matrix/federation/v1/exchange_third_party_invite/{roomId}"),
    ("PUT", "/_matrix/federation/v1/3pid/onbind"),
    # transactions.yaml
    ("PUT", "/_matrix/federation/v1/send/{txnId}"),
    # user_devices.yaml
    ("GET", "/_matrix/federation/v1/user/devices/{userId}"),
    # user_keys.yaml
    ("POST", "/_matrix/federation/v1/user/keys/claim"),
    ("POST", "/_matrix/federation/v1/user/keys/query"),
    # version.yaml
    ("GET", "/_matrix/federation/v1/version"),
    # wellknown.yaml
    ("GET", "/.well-known/matrix/server"),
)

#: Endpoints whose path parameter is served for some values only: the
#: routes that serve them, and why the other values are not.
SERVED_FOR: Final[dict[tuple[str, str], tuple[tuple[str, ...], str]]] = {
    ("GET", "/_matrix/federation/v1/query/{queryType}"): (
        ("/_matrix/federation/v1/query/directory", "/_matrix/federation/v1/query/profile"),
        "the spec defines no other query type: others are unknown endpoints",
    ),
}

#: Endpoints of the specification with no route here, and why.
NOT_SERVED: Final[dict[tuple[str, str], str]] = {
    ("PUT", "/_matrix/federation/v1/invite/{roomId}/{eventId}"): (
        "v1 invites are for room versions 1 and 2, which this server does not support"
    ),
    ("POST", "/_matrix/policy/v1/sign"): "this server is not a policy server",
    ("PUT", "/_matrix/federation/v1/exchange_third_party_invite/{roomId}"): (
        "third-party invites: none are made here, so none are exchanged"
    ),
    ("PUT", "/_matrix/federation/v1/3pid/onbind"): (
        "third-party invites: no identity server binds identifiers to invites here"
    ),
    ("GET", "/.well-known/matrix/server"): (
        "served by the web server of the server name's domain, not by the homeserver"
    ),
}

_PARAM: Final = re.compile(r"\{[^}/]*\}")


def _shape(method: str, path: str) -> tuple[str, str]:
    """An endpoint with its path parameters' names dropped and no trailing ``/``."""
    return method, _PARAM.sub("{}", path).rstrip("/")


def _unrouted(
    endpoints: Iterable[tuple[str, str]], routes: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The endpoints (and the routes of SERVED_FOR's) with no route."""
    routed = {_shape(method, path) for method, path in routes}
    missing = []
    for method, path in endpoints:
        served_as = SERVED_FOR.get((method, path), ((path,), ""))[0]
        missing += [(method, p) for p in served_as if _shape(method, p) not in routed]
    return missing


@pytest.fixture
async def routes(tmp_path: Path) -> list[tuple[str, str]]:
    """The federation listener's routes."""
    async with open_test_homeserver(tmp_path / "hs") as hs:
        return [(method, path) for method, path, _ in hs.server.federation_app.router.routes()]


def test_the_list_has_each_endpoint_once() -> None:
    assert len(set(SPEC_ENDPOINTS)) == len(SPEC_ENDPOINTS)
    assert all(method in {"GET", "PUT", "POST", "DELETE"} for method, _ in SPEC_ENDPOINTS)


async def test_every_spec_endpoint_is_routed_unless_listed_not_served(
    routes: list[tuple[str, str]],
) -> None:
    wanted = [endpoint for endpoint in SPEC_ENDPOINTS if endpoint not in NOT_SERVED]
    assert _unrouted(wanted, routes) == []


async def test_not_served_endpoints_are_the_specs_and_have_no_route(
    routes: list[tuple[str, str]],
) -> None:
    """An endpoint built later must leave NOT_SERVED, and every entry
    names a real endpoint and says why in one line."""
    assert set(NOT_SERVED) <= set(SPEC_ENDPOINTS)
    assert set(SERVED_FOR) <= set(SPEC_ENDPOINTS)
    assert not set(NOT_SERVED) & set(SERVED_FOR)
    assert sorted(_unrouted(NOT_SERVED, routes)) == sorted(NOT_SERVED)
    assert all(reason and "\n" not in reason for reason in NOT_SERVED.values())
    assert all(reason and "\n" not in reason for _, reason in SERVED_FOR.values())


async def test_a_route_that_disappears_is_reported(routes: list[tuple[str, str]]) -> None:
    gone = ("GET", "/_matrix/federation/v1/user/devices/{user_id}")
    assert gone in routes
    without = [route for route in routes if route != gone]
    before = _unrouted(SPEC_ENDPOINTS, routes)
    after = _unrouted(SPEC_ENDPOINTS, without)
    assert sorted(after) == sorted(
        [*before, ("GET", "/_matrix/federation/v1/user/devices/{userId}")]
    )
