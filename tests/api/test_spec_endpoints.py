"""Every client-server endpoint of the Matrix specification has a route
here, or a reason below why it has none.

``SPEC_ENDPOINTS`` is written from the specification's OpenAPI files
(``data/api/client-server/*.yaml`` in matrix-org/matrix-spec, as of its
commit d0ba2aa of July 2026), one entry per method and path, grouped by the
file that defines it (an endpoint two files define is listed once); the
deprecated ones are listed too, so that leaving them out is a decision
with a reason.
The test walks the routers of a running test server (the client API's and
the media application's in front of it) and fails when a listed endpoint
has no route, so a route that disappears is noticed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final

import msgspec
import pytest

from ranvier.config import OidcProviderConfig
from ranvier.testing.homeserver import config_for_tests, open_test_homeserver
from ranvier.testing.spec_endpoints import SpecListing

#: The specification's client-server endpoints (method, path template).
SPEC_ENDPOINTS: Final[tuple[tuple[str, str], ...]] = (
    # account-data.yaml
    ("PUT", "/_matrix/client/v3/user/{userId}/account_data/{type}"),
    ("GET", "/_matrix/client/v3/user/{userId}/account_data/{type}"),
    ("PUT", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"),
    ("GET", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"),
    # account_deactivation.yaml
    ("POST", "/_matrix/client/v3/account/deactivate"),
    # admin.yaml
    ("GET", "/_matrix/client/v3/admin/whois/{userId}"),
    ("GET", "/_matrix/client/v1/admin/suspend/{userId}"),
    ("PUT", "/_matrix/client/v1/admin/suspend/{userId}"),
    ("GET", "/_matrix/client/v1/admin/lock/{userId}"),
    ("PUT", "/_matrix/client/v1/admin/lock/{userId}"),
    # administrative_contact.yaml
    ("GET", "/_matrix/client/v3/account/3pid"),
    ("POST", "/_matrix/client/v3/account/3pid"),
    ("POST", "/_matrix/client/v3/account/3pid/add"),
    ("POST", "/_matrix/client/v3/account/3pid/bind"),
    ("POST", "/_matrix/client/v3/account/3pid/delete"),
    ("POST", "/_matrix/client/v3/account/3pid/unbind"),
    ("POST", "/_matrix/client/v3/account/3pid/email/requestToken"),
    ("POST", "/_matrix/client/v3/account/3pid/msisdn/requestToken"),
    # appservice_ping.yaml
    ("POST", "/_matrix/client/v1/appservice/{appserviceId}/ping"),
    # appservice_room_directory.yaml
    ("PUT", "/_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}"),
    # authed-content-repo.yaml
    ("GET", "/_matrix/client/v1/media/download/{serverName}/{mediaId}"),
    ("GET", "/_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}"),
    ("GET", "/_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}"),
    ("GET", "/_matrix/client/v1/media/preview_url"),
    ("GET", "/_matrix/client/v1/media/config"),
    # banning.yaml
    ("POST", "/_matrix/client/v3/rooms/{roomId}/ban"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/unban"),
    # capabilities.yaml
    ("GET", "/_matrix/client/v3/capabilities"),
    # content-repo.yaml
    ("POST", "/_matrix/media/v3/upload"),
    ("PUT", "/_matrix/media/v3/upload/{serverName}/{mediaId}"),
    ("POST", "/_matrix/media/v1/create"),
    ("GET", "/_matrix/media/v3/download/{serverName}/{mediaId}"),
    ("GET", "/_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}"),
    ("GET", "/_matrix/media/v3/thumbnail/{serverName}/{mediaId}"),
    ("GET", "/_matrix/media/v3/preview_url"),
    ("GET", "/_matrix/media/v3/config"),
    # create_room.yaml
    ("POST", "/_matrix/client/v3/createRoom"),
    # cross_signing.yaml
    ("POST", "/_matrix/client/v3/keys/device_signing/upload"),
    ("POST", "/_matrix/client/v3/keys/signatures/upload"),
    # device_management.yaml
    ("GET", "/_matrix/client/v3/devices"),
    ("GET", "/_matrix/client/v3/devices/{deviceId}"),
    ("PUT", "/_matrix/client/v3/devices/{deviceId}"),
    ("DELETE", "/_matrix/client/v3/devices/{deviceId}"),
    ("POST", "/_matrix/client/v3/delete_devices"),
    # directory.yaml
    ("PUT", "/_matrix/client/v3/directory/room/{roomAlias}"),
    ("GET", "/_matrix/client/v3/directory/room/{roomAlias}"),
    ("DELETE", "/_matrix/client/v3/directory/room/{roomAlias}"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/aliases"),
    # event_context.yaml
    ("GET", "/_matrix/client/v3/rooms/{roomId}/context/{eventId}"),
    # filter.yaml
    ("POST", "/_matrix/client/v3/user/{userId}/filter"),
    ("GET", "/_matrix/client/v3/user/{userId}/filter/{filterId}"),
    # inviting.yaml
    ("POST", "/_matrix/client/v3/rooms/{roomId}/invite"),
    # joining.yaml
    ("POST", "/_matrix/client/v3/rooms/{roomId}/join"),
    ("POST", "/_matrix/client/v3/join/{roomIdOrAlias}"),
    # key_backup.yaml
    ("POST", "/_matrix/client/v3/room_keys/version"),
    ("GET", "/_matrix/client/v3/room_keys/version"),
    ("GET", "/_matrix/client/v3/room_keys/version/{version}"),
    ("PUT", "/_matrix/client/v3/room_keys/version/{version}"),
    ("DELETE", "/_matrix/client/v3/room_keys/version/{version}"),
    ("PUT", "/_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}"),
    ("GET", "/_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}"),
    ("DELETE", "/_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}"),
    ("PUT", "/_matrix/client/v3/room_keys/keys/{roomId}"),
    ("GET", "/_matrix/client/v3/room_keys/keys/{roomId}"),
    ("DELETE", "/_matrix/client/v3/room_keys/keys/{roomId}"),
    ("PUT", "/_matrix/client/v3/room_keys/keys"),
    ("GET", "/_matrix/client/v3/room_keys/keys"),
    ("DELETE", "/_matrix/client/v3/room_keys/keys"),
    # keys.yaml
    ("POST", "/_matrix/client/v3/keys/upload"),
    ("POST", "/_matrix/client/v3/keys/query"),
    ("POST", "/_matrix/client/v3/keys/claim"),
    ("GET", "/_matrix/client/v3/keys/changes"),
    # kicking.yaml
    ("POST", "/_matrix/client/v3/rooms/{roomId}/kick"),
    # knocking.yaml
    ("POST", "/_matrix/client/v3/knock/{roomIdOrAlias}"),
    # leaving.yaml
    ("POST", "/_matrix/client/v3/rooms/{roomId}/leave"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/forget"),
    # list_joined_rooms.yaml
    ("GET", "/_matrix/client/v3/joined_rooms"),
    # list_public_rooms.yaml
    ("GET", "/_matrix/client/v3/directory/list/room/{roomId}"),
    ("PUT", "/_matrix/client/v3/directory/list/room/{roomId}"),
    ("GET", "/_matrix/client/v3/publicRooms"),
    ("POST", "/_matrix/client/v3/publicRooms"),
    # login.yaml
    ("GET", "/_matrix/client/v3/login"),
    ("POST", "/_matrix/client/v3/login"),
    # login_token.yaml
    ("POST", "/_matrix/client/v1/login/get_token"),
    # logout.yaml
    ("POST", "/_matrix/client/v3/logout"),
    ("POST", "/_matrix/client/v3/logout/all"),
    # message_pagination.yaml
    ("GET", "/_matrix/client/v3/rooms/{roomId}/messages"),
    # mutual_rooms.yaml
    ("GET", "/_matrix/client/v1/mutual_rooms"),
    # notifications.yaml
    ("GET", "/_matrix/client/v3/notifications"),
    # oauth_server_metadata.yaml
    ("GET", "/_matrix/client/v1/auth_metadata"),
    # old_sync.yaml (its /events is served in peeking_events.yaml's form only:
    # without room_id, 400 M_MISSING_PARAM, /sync being the stream of all rooms)
    ("GET", "/_matrix/client/v3/events"),
    ("GET", "/_matrix/client/v3/initialSync"),
    ("GET", "/_matrix/client/v3/events/{eventId}"),
    # openid.yaml
    ("POST", "/_matrix/client/v3/user/{userId}/openid/request_token"),
    # password_management.yaml
    ("POST", "/_matrix/client/v3/account/password"),
    ("POST", "/_matrix/client/v3/account/password/email/requestToken"),
    ("POST", "/_matrix/client/v3/account/password/msisdn/requestToken"),
    # policy_server.yaml
    ("GET", "/.well-known/matrix/policy_server"),
    # presence.yaml
    ("PUT", "/_matrix/client/v3/presence/{userId}/status"),
    ("GET", "/_matrix/client/v3/presence/{userId}/status"),
    # profile.yaml
    ("PUT", "/_matrix/client/v3/profile/{userId}/{keyName}"),
    ("GET", "/_matrix/client/v3/profile/{userId}/{keyName}"),
    ("DELETE", "/_matrix/client/v3/profile/{userId}/{keyName}"),
    ("GET", "/_matrix/client/v3/profile/{userId}"),
    # pusher.yaml
    ("GET", "/_matrix/client/v3/pushers"),
    ("POST", "/_matrix/client/v3/pushers/set"),
    # pushrules.yaml
    ("GET", "/_matrix/client/v3/pushrules/"),
    ("GET", "/_matrix/client/v3/pushrules/global/"),
    ("GET", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}"),
    ("DELETE", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}"),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}"),
    ("GET", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled"),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled"),
    ("GET", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions"),
    ("PUT", "/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions"),
    # read_markers.yaml
    ("POST", "/_matrix/client/v3/rooms/{roomId}/read_markers"),
    # receipts.yaml
    ("POST", "/_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}"),
    # redaction.yaml
    ("PUT", "/_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}"),
    # refresh.yaml
    ("POST", "/_matrix/client/v3/refresh"),
    # registration.yaml
    ("POST", "/_matrix/client/v3/register"),
    ("POST", "/_matrix/client/v3/register/email/requestToken"),
    ("POST", "/_matrix/client/v3/register/msisdn/requestToken"),
    ("GET", "/_matrix/client/v3/register/available"),
    # registration_tokens.yaml
    ("GET", "/_matrix/client/v1/register/m.login.registration_token/validity"),
    # relations.yaml
    ("GET", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}"),
    ("GET", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}"),
    ("GET", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}"),
    # report_content.yaml
    ("POST", "/_matrix/client/v3/rooms/{roomId}/report"),
    ("POST", "/_matrix/client/v3/rooms/{roomId}/report/{eventId}"),
    ("POST", "/_matrix/client/v3/users/{userId}/report"),
    # room_event_by_timestamp.yaml
    ("GET", "/_matrix/client/v1/rooms/{roomId}/timestamp_to_event"),
    # room_initial_sync.yaml
    ("GET", "/_matrix/client/v3/rooms/{roomId}/initialSync"),
    # room_send.yaml
    ("PUT", "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"),
    # room_state.yaml
    ("PUT", "/_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"),
    # room_summary.yaml
    ("GET", "/_matrix/client/v1/room_summary/{roomIdOrAlias}"),
    # room_upgrades.yaml
    ("POST", "/_matrix/client/v3/rooms/{roomId}/upgrade"),
    # rooms.yaml
    ("GET", "/_matrix/client/v3/rooms/{roomId}/event/{eventId}"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/state"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/members"),
    ("GET", "/_matrix/client/v3/rooms/{roomId}/joined_members"),
    # search.yaml
    ("POST", "/_matrix/client/v3/search"),
    # space_hierarchy.yaml
    ("GET", "/_matrix/client/v1/rooms/{roomId}/hierarchy"),
    # sso_login_redirect.yaml
    ("GET", "/_matrix/client/v3/login/sso/redirect"),
    ("GET", "/_matrix/client/v3/login/sso/redirect/{idpId}"),
    # support.yaml
    ("GET", "/.well-known/matrix/support"),
    # sync.yaml
    ("GET", "/_matrix/client/v3/sync"),
    # tags.yaml
    ("GET", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags"),
    ("PUT", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"),
    ("DELETE", "/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"),
    # third_party_lookup.yaml
    ("GET", "/_matrix/client/v3/thirdparty/protocols"),
    ("GET", "/_matrix/client/v3/thirdparty/protocol/{protocol}"),
    ("GET", "/_matrix/client/v3/thirdparty/location/{protocol}"),
    ("GET", "/_matrix/client/v3/thirdparty/user/{protocol}"),
    ("GET", "/_matrix/client/v3/thirdparty/location"),
    ("GET", "/_matrix/client/v3/thirdparty/user"),
    # threads_list.yaml
    ("GET", "/_matrix/client/v1/rooms/{roomId}/threads"),
    # to_device.yaml
    ("PUT", "/_matrix/client/v3/sendToDevice/{eventType}/{txnId}"),
    # typing.yaml
    ("PUT", "/_matrix/client/v3/rooms/{roomId}/typing/{userId}"),
    # users.yaml
    ("POST", "/_matrix/client/v3/user_directory/search"),
    # versions.yaml
    ("GET", "/_matrix/client/versions"),
    # voip.yaml
    ("GET", "/_matrix/client/v3/voip/turnServer"),
    # wellknown.yaml
    ("GET", "/.well-known/matrix/client"),
    # whoami.yaml
    ("GET", "/_matrix/client/v3/account/whoami"),
)

#: Endpoints whose path parameter is served for some values only: the
#: routes that serve them, and why the other values are not. None now.
SERVED_FOR: Final[dict[tuple[str, str], tuple[tuple[str, ...], str]]] = {}

_OLD_SYNC = "deprecated by the spec for /sync, which carries every room a user is in"

#: Endpoints of the specification with no route here, and why.
NOT_SERVED: Final[dict[tuple[str, str], str]] = {
    ("POST", "/_matrix/client/v3/account/3pid"): (
        "deprecated by the spec for /account/3pid/add and /bind, which are served"
    ),
    ("GET", "/_matrix/client/v1/auth_metadata"): (
        "OAuth 2.0 API: no authorization server; the spec's answer is then 404 M_UNRECOGNIZED"
    ),
    ("GET", "/_matrix/client/v3/initialSync"): _OLD_SYNC,
    ("GET", "/_matrix/client/v3/events/{eventId}"): (
        "deprecated by the spec for /rooms/{roomId}/event/{eventId}"
    ),
    ("GET", "/.well-known/matrix/policy_server"): "this server is not a policy server",
}

LISTING: Final = SpecListing(SPEC_ENDPOINTS, NOT_SERVED, SERVED_FOR)


def _served_routes(hs_routes: Iterable[tuple[str, str, bool]]) -> list[tuple[str, str]]:
    return [(method, pattern) for method, pattern, _ in hs_routes]


@pytest.fixture
async def routes(tmp_path: Path) -> list[tuple[str, str]]:
    """The client listener's routes, with login tokens and an identity
    provider on (their routes are added only then; the provider is not
    reached while nobody logs in)."""
    config = config_for_tests(tmp_path / "hs")
    config = msgspec.structs.replace(
        config,
        registration=msgspec.structs.replace(config.registration, login_token_enabled=True),
        well_known=msgspec.structs.replace(
            config.well_known, client_base_url="https://matrix.example"
        ),
        oidc_providers=(
            OidcProviderConfig(
                idp_id="idp",
                idp_name="IdP",
                issuer="https://idp.example",
                client_id="ranvier",
                client_secret="secret",
            ),
        ),
    )
    async with open_test_homeserver(tmp_path / "hs", config=config) as hs:
        return _served_routes(hs.server.client_app.router.routes()) + _served_routes(
            hs.server.media_app.routes()
        )


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


async def test_a_route_that_disappears_is_reported(routes: list[tuple[str, str]]) -> None:
    gone = ("GET", "/_matrix/client/v3/rooms/{room_id}/joined_members")
    assert gone in routes
    without = [route for route in routes if route != gone]
    before = LISTING.unrouted(SPEC_ENDPOINTS, routes)
    after = LISTING.unrouted(SPEC_ENDPOINTS, without)
    assert sorted(after) == sorted(
        [*before, ("GET", "/_matrix/client/v3/rooms/{roomId}/joined_members")]
    )
