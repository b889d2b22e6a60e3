"""Every server-server endpoint of the Matrix specification has a route on
the federation listener, or a reason below why it has none.

``SPEC_ENDPOINTS`` is written from the specification's OpenAPI files
(``data/api/server-server/*.yaml`` in matrix-org/matrix-spec, as of its
commit d0ba2aa of July 2026): the federation API, the key server's, the
policy server's and ``/.well-known/matrix/server``, one entry per method
and path, grouped by the file that defines it. The test walks the
federation router of a running test server and fails when a listed
endpoint has no route, so a route that disappears is noticed. Endpoints
the specification removed (``REMOVED``) must have none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from ranvier.testing.homeserver import open_test_homeserver
from ranvier.testing.spec_endpoints import SpecListing

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
}

#: Endpoints the specification removed, and when: none may have a route.
REMOVED: Final[dict[tuple[str, str], str]] = {
    ("PUT", "/_matrix/federation/v1/send_join/{roomId}/{eventId}"): "v1.18, MSC4376",
    ("PUT", "/_matrix/federation/v1/send_leave/{roomId}/{eventId}"): "v1.18, MSC4376",
}

LISTING: Final = SpecListing(SPEC_ENDPOINTS, NOT_SERVED, SERVED_FOR)


@pytest.fixture
async def routes(tmp_path: Path) -> list[tuple[str, str]]:
    """The federation listener's routes."""
    async with open_test_homeserver(tmp_path / "hs") as hs:
        return [(method, path) for method, path, _ in hs.server.federation_app.router.routes()]


def test_the_list_is_well_formed() -> None:
    """Each endpoint once, and every exception names a real endpoint and
    says why in one line."""
    assert LISTING.faults() == []


async def test_every_spec_endpoint_is_routed_unless_listed_not_served(
    routes: list[tuple[str, str]],
) -> None:
    assert LISTING.unrouted(LISTING.wanted(), routes) == []


async def test_not_served_endpoints_have_no_route(routes: list[tuple[str, str]]) -> None:
    """An endpoint built later must leave NOT_SERVED."""
    assert sorted(LISTING.unrouted(NOT_SERVED, routes)) == sorted(NOT_SERVED)


async def test_removed_endpoints_have_no_route(routes: list[tuple[str, str]]) -> None:
    """Their v2 successors serve the same purpose; a server still calling
    the v1 ones gets the 404 of an unknown endpoint and retries with v2."""
    assert not set(REMOVED) & set(SPEC_ENDPOINTS)
    assert sorted(LISTING.unrouted(REMOVED, routes)) == sorted(REMOVED)


async def test_a_route_that_disappears_is_reported(routes: list[tuple[str, str]]) -> None:
    gone = ("GET", "/_matrix/federation/v1/user/devices/{user_id}")
    assert gone in routes
    without = [route for route in routes if route != gone]
    before = LISTING.unrouted(SPEC_ENDPOINTS, routes)
    after = LISTING.unrouted(SPEC_ENDPOINTS, without)
    assert sorted(after) == sorted(
        [*before, ("GET", "/_matrix/federation/v1/user/devices/{userId}")]
    )
