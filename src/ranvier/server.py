"""The homeserver: one object that owns every long-lived task, in one nursery.

:class:`HomeServer` wires the real parts together (storage, the outgoing
federation client and sender, the key ring, the handlers of local and
remote events, the federation HTTP app and its listeners) and
:meth:`HomeServer.run` runs them. :func:`open_homeserver` is the way to
embed one in a Trio program: the server runs inside the ``async with``
block and is gone, every socket closed and every task ended, when the block
is left. A program (and the client-server API) acts for local users with
:meth:`~HomeServer.create_room`, :meth:`~HomeServer.send_event`,
:meth:`~HomeServer.invite`, :meth:`~HomeServer.join_room` and
:meth:`~HomeServer.leave_room`.

A room joined through another server is joined with partial state
(MSC3706): the join returns once the room's state without most of its
members is checked and stored, and the un-partial-state task
(:class:`~ranvier.core.unpartial.UnpartialStater`) fetches the rest in the
background while the room is used as usual. :meth:`~HomeServer.wait_for_full_state`
waits for it; :meth:`~HomeServer.resync_status` and
:meth:`~HomeServer.metrics` tell how far it has come, a ``metrics``
listener serves the latter to Prometheus (:mod:`ranvier.metrics`), and the
task records each room's progress in storage for ``ranvier status``.

Invariants
----------

* **Owned tasks only.** Every task the server starts lives in the nursery
  :meth:`HomeServer.run` opens; when ``run`` returns or raises, none is
  left.
* **Ready means ready.** ``run`` reports started only once every component
  is ready: the database open and migrated, every listener accepting
  connections on the port it reports.
* **Ordered start and stop.** Components start one after another in one
  place (:meth:`HomeServer._components`), each ready before the next, and
  stop in the reverse order, each gone before the one below it is told to
  stop: the listeners first, so that no new request arrives, then the
  federation sender, before the client it sends with, and storage last,
  so that a request still being answered can write, and the storage actor
  finishes the batch in hand. Each component runs in a cancel scope
  of its own, shielded from cancellation of the server as a whole, and is
  cancelled by the server when its turn comes.
* **One writer per room at a time.** Every path that writes a room's
  events (local events, incoming transactions, the membership handshakes
  answered here, joins through other servers) takes the room's lock from
  the one :class:`~ranvier.core.ingest.RoomLocks` the server holds, so no
  two of them compute an event's prev events or context from extremities
  the other is about to move. The un-partial-state task clears a room's
  partial state under the same lock, so a join never makes a room that
  just got its full state partial again.
* **Every partial room has its task.** A join that leaves a room with
  partial state hands the room to the un-partial-state task before
  :meth:`HomeServer.join_room` returns, and the task, started before the
  listeners, resumes every room still partial when the server starts; it
  stops before the federation sender and client it reads through.
* **Listening before reaching out.** The federation sender and the
  un-partial-state task send nothing, not even what was left from before
  a restart, until every listener accepts connections. A server we send
  to or ask for state tries at once what it holds for us; finding nobody
  listening, it would back off and keep it waiting.
* **Full mesh.** Each event written for a local user, and each join or
  leave another server makes through this one, is handed to the federation
  sender for every other server joined in the room once it is written;
  events received from other servers are never sent on.
* **Start failures come out plain.** A problem found while starting (a bad
  configuration, key file or certificate, a port in use, a database that
  cannot be opened) is raised by ``run`` and by :func:`open_homeserver` as
  itself, not inside an exception group, after whatever had started has
  stopped; its message names the setting or file at fault. A component
  that fails once the server runs stops the server, and the failure comes
  out of the nursery as Trio reports it.

Files
-----

The data directory is created (mode 0700) if missing. The signing key and,
when a listener uses TLS and no certificate is configured, a self-signed
certificate are generated into it on the first start and reused on every
later one, as is the database.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import argon2
import msgspec
import trio

from ranvier.api.account import add_account_routes
from ranvier.api.account_data import add_account_data_routes
from ranvier.api.account_management import add_account_management_routes
from ranvier.api.admin import add_admin_routes
from ranvier.api.admin_common import add_server_version_route
from ranvier.api.admin_federation import add_admin_federation_routes
from ranvier.api.admin_media import add_admin_media_routes
from ranvier.api.admin_ratelimit import add_admin_ratelimit_routes
from ranvier.api.admin_redactions import add_admin_redaction_routes
from ranvier.api.admin_registration_tokens import add_admin_registration_token_routes
from ranvier.api.admin_reports import add_admin_report_routes
from ranvier.api.admin_room_membership import add_admin_room_membership_routes
from ranvier.api.admin_rooms import add_admin_room_messages_route, add_admin_room_routes
from ranvier.api.admin_server_notices import add_admin_server_notice_routes
from ranvier.api.admin_user_data import add_admin_user_data_routes
from ranvier.api.admin_users import add_admin_user_routes, add_username_available_route
from ranvier.api.app import ClientApp
from ranvier.api.appservices import add_appservice_routes
from ranvier.api.auth import Auth
from ranvier.api.capabilities import add_capability_routes
from ranvier.api.dehydrated_devices import add_dehydrated_device_routes
from ranvier.api.devices import add_device_routes
from ranvier.api.directory import add_directory_routes
from ranvier.api.event_context import add_event_context_route
from ranvier.api.hierarchy import add_hierarchy_route
from ranvier.api.keys import add_key_routes
from ranvier.api.login_tokens import add_login_token_route
from ranvier.api.media import MediaApp
from ranvier.api.notifications import add_notification_routes
from ranvier.api.openid import add_openid_routes
from ranvier.api.presence import add_presence_routes
from ranvier.api.profile import add_profile_routes
from ranvier.api.push_rules import add_push_rule_routes
from ranvier.api.pushers import add_pusher_routes
from ranvier.api.ratelimit import RateLimiter, RouteLimits, UserLimits
from ranvier.api.receipts import add_receipt_routes
from ranvier.api.relations import add_relation_routes
from ranvier.api.reports import add_report_routes
from ranvier.api.room_keys import add_room_key_routes
from ranvier.api.room_list import add_room_list_routes
from ranvier.api.room_previews import add_room_preview_routes
from ranvier.api.room_summary import add_room_summary_routes
from ranvier.api.rooms import add_room_routes
from ranvier.api.search import add_search_route
from ranvier.api.sliding_sync import add_sliding_sync_route
from ranvier.api.sso import add_sso_routes
from ranvier.api.sync import add_sync_routes
from ranvier.api.third_party import add_third_party_routes
from ranvier.api.threepids import add_threepid_routes
from ranvier.api.timestamps import add_timestamp_route
from ranvier.api.to_device import add_to_device_routes
from ranvier.api.typing import add_typing_routes
from ranvier.api.upgrade import add_upgrade_routes
from ranvier.api.user_directory import add_user_directory_routes
from ranvier.api.versions import add_versions_route
from ranvier.api.well_known import add_client_well_known_routes, add_server_well_known_route
from ranvier.appservice_client import HttpAppServiceClient
from ranvier.config import Config, ConfigError, ListenerConfig
from ranvier.core.account_data import AccountData
from ranvier.core.accounts import Accounts
from ranvier.core.admin_federation import AdminFederation
from ranvier.core.admin_media import AdminMedia
from ranvier.core.admin_redactions import UserRedactions
from ranvier.core.admin_reports import AdminReports
from ranvier.core.admin_room_membership import AdminRoomMembership
from ranvier.core.admin_rooms import AdminRooms
from ranvier.core.admin_user_data import AdminUserData
from ranvier.core.admin_users import AdminUsers
from ranvier.core.aggregations import (
    Aggregations,
    BundlingRoomMessages,
    BundlingRoomReader,
    BundlingSyncHandler,
)
from ranvier.core.appservice_ephemeral import AppServiceEphemeral
from ranvier.core.appservice_sender import AppServiceSender
from ranvier.core.appservice_to_device import AppServiceToDevice
from ranvier.core.appservices import AppServiceQueries, AppServices, load_app_services
from ranvier.core.backfill import Backfiller
from ranvier.core.client_txns import ClientTransactions
from ranvier.core.creation import EventCreator, Preset
from ranvier.core.deactivation import Deactivation
from ranvier.core.dehydrated_devices import DehydratedDevices
from ranvier.core.devices import Devices
from ranvier.core.directory import RoomDirectory
from ranvier.core.e2e_keys import E2eKeys, ForgettingDeletedDevices
from ranvier.core.email_validation import EmailValidation
from ranvier.core.event_context import EventContexts
from ranvier.core.event_stream import DEFAULT_BUFFER as DEFAULT_EVENT_BUFFER
from ranvier.core.event_stream import EventStream, StreamedEvent
from ranvier.core.filters import UserFilters
from ranvier.core.guests import GuestEviction
from ranvier.core.hierarchy import RoomHierarchy
from ranvier.core.housekeeping import HOUR_MS, Housekeeping, HousekeepingAges
from ranvier.core.ingest import EventVerifier, FederationIngester, RoomLocks
from ranvier.core.interfaces import EventPersister
from ranvier.core.invite_permission import InvitePermission
from ranvier.core.joins import RemoteJoiner
from ranvier.core.knocks import RoomKnocks
from ranvier.core.login_tokens import LoginTokens
from ranvier.core.media import MediaRepository, UnlimitedUploads, UploadWindow
from ranvier.core.media_deletion import MediaDeleter
from ranvier.core.media_retention import DAY_MS, MediaRetention
from ranvier.core.notification_counts import NotificationCounts
from ranvier.core.notification_list import NotificationList
from ranvier.core.notifier import StreamNotifier
from ranvier.core.out_of_band import OutOfBandMemberships
from ranvier.core.pagination import RoomMessages
from ranvier.core.policy_servers import PolicyServers
from ranvier.core.presence import Presence
from ranvier.core.profiles import Profiles
from ranvier.core.push_rules import PushRules, PushRulesAccountData
from ranvier.core.push_sender import PushSender
from ranvier.core.pushers import Pushers
from ranvier.core.ratelimit_overrides import RateLimitOverrides
from ranvier.core.receipts import Receipts
from ranvier.core.redactions import ServedStateReader
from ranvier.core.registration_tokens import RegistrationTokens
from ranvier.core.relations import Relations
from ranvier.core.remote_device_lists import RemoteDeviceLists
from ranvier.core.reports import Reports
from ranvier.core.restricted_joins import RestrictedJoins
from ranvier.core.room_forgetting import RoomForgetting
from ranvier.core.room_joins import RoomJoins
from ranvier.core.room_keys import RoomKeyBackups
from ranvier.core.room_leaves import RoomLeaves
from ranvier.core.room_list import RoomList
from ranvier.core.room_previews import RoomPreviews
from ranvier.core.room_servers import PduSink, RoomEventSender, RoomServers
from ranvier.core.room_summary import RoomSummaries
from ranvier.core.rooms import FullStateWaiter, RoomReader
from ranvier.core.search import Search
from ranvier.core.search_scrub import ScrubbingPurger, SearchScrubber
from ranvier.core.server_notices import NoticeGuardedLeaves, ServerNotices
from ranvier.core.shadow_bans import NO_DELAY, ShadowBans
from ranvier.core.sliding_sync import SlidingSyncHandler
from ranvier.core.sso import SsoProviders
from ranvier.core.third_party import ThirdPartyLookups
from ranvier.core.threepids import Threepids
from ranvier.core.timestamps import EventsByTimestamp
from ranvier.core.to_device import ToDevice
from ranvier.core.typing import TypingNotices
from ranvier.core.uia import CROSS_SIGNING, UserInteractiveAuth
from ranvier.core.unpartial import ResyncStatus, UnpartialStater
from ranvier.core.upgrade import RoomUpgrader
from ranvier.core.upgrade_settings import UpgradedRoomSettings
from ranvier.core.url_previews import UrlPreviewer
from ranvier.core.user_directory import UserDirectory
from ranvier.errors import MatrixError
from ranvier.federation.backfill import FederationBackfillClient
from ranvier.federation.client import FederationEventFetcher
from ranvier.federation.directory import FederationDirectoryClient, add_directory_route
from ranvier.federation.e2e_keys import FederationKeyClient, add_e2e_key_routes
from ranvier.federation.edus import EduDispatcher
from ranvier.federation.hierarchy import FederationHierarchyClient
from ranvier.federation.hierarchy import add_hierarchy_route as add_federation_hierarchy_route
from ranvier.federation.keys import KeyRing
from ranvier.federation.knocks import FederationKnockClient
from ranvier.federation.leaves import FederationLeaveClient
from ranvier.federation.media import FederationMediaClient, add_media_routes
from ranvier.federation.membership import (
    FederationInviter,
    FederationJoinClient,
    add_membership_routes,
)
from ranvier.federation.notary import add_notary_routes
from ranvier.federation.openid import add_openid_route
from ranvier.federation.persistence import ReceivedTransactions
from ranvier.federation.policy_client import FederationPolicyClient
from ranvier.federation.profiles import FederationProfileClient, LocalProfileSource
from ranvier.federation.queries import add_query_routes
from ranvier.federation.room_list import FederationRoomListClient, add_public_rooms_routes
from ranvier.federation.sender import BackoffPolicy, FederationSender
from ranvier.federation.sender.interfaces import SenderStore
from ranvier.federation.server import TransactionHandler, add_transaction_routes
from ranvier.federation.timestamps import add_timestamp_route as add_federation_timestamp_route
from ranvier.federation.transaction_acl import AclCheckedEdus, AclCheckedPdus
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.federation.transport.listener import AsgiApp, HttpListener
from ranvier.federation.transport.ratelimit import FederationRateLimiter
from ranvier.federation.transport.routes import add_key_server_route, add_version_route
from ranvier.federation.transport.server import FederationApp, Router
from ranvier.federation.transport.tls import ensure_certificate, server_ssl_context
from ranvier.http_metrics import HttpMetrics
from ranvier.keyfile import load_or_create_signing_key
from ranvier.metrics import MetricsApp, sample_name
from ranvier.protocol.ip_ranges import AddressPolicy
from ranvier.protocol.room_versions import DEFAULT_ROOM_VERSION, RoomVersionLike
from ranvier.protocol.signing import SigningKey
from ranvier.push_gateway import HttpPushGateway
from ranvier.replication.ephemeral import EphemeralOrigin
from ranvier.replication.federation_sending import EduOnlySenderStore, QueueingPduSink
from ranvier.replication.heard_from import HeardFromRelay
from ranvier.replication.server import ReplicationApp
from ranvier.replication.stream import MainControl, StreamSource
from ranvier.server_metrics import homeserver_metrics
from ranvier.signature_process import SignatureProcess
from ranvier.smtp import SmtpMailer, SmtpSettings
from ranvier.storage import Storage, StorageActor
from ranvier.storage.media_files import MediaFiles
from ranvier.url_fetcher import UrlFetcher

__all__ = ["BoundListener", "HomeServer", "open_homeserver"]

_log: Final = logging.getLogger(__name__)
_T = TypeVar("_T")
_S = TypeVar("_S", bound="HomeServer")


@dataclass(frozen=True, slots=True)
class BoundListener:
    """A configured listener, as it listens once the server runs."""

    config: ListenerConfig
    #: The port listened on: the configured one, or the one the system
    #: chose for port 0.
    port: int
    #: ``https`` or ``http``.
    scheme: str

    @property
    def url(self) -> str:
        """The listener's base URL, such as ``https://127.0.0.1:8448``."""
        host = self.config.host
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class _Component:
    """A long-lived part of the server, started with ``nursery.start(run)``."""

    name: str
    run: Callable[..., Awaitable[object]]


@dataclass(eq=False, slots=True)
class _Running:
    """What the server holds of a component it started, to stop it."""

    name: str
    scope: trio.CancelScope
    done: trio.Event


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What the start reads from disk before any task runs."""

    signing_key: SigningKey
    #: The TLS listeners' context; None when no listener uses TLS.
    server_ssl_context: ssl.SSLContext | None
    #: The application services the registration files name.
    app_services: AppServices


class HomeServer:
    """A Matrix homeserver: its configuration, its parts and their tasks.

    Construct it with a :class:`~ranvier.config.Config` (the configuration
    is checked here, and :class:`~ranvier.config.ConfigError` names the bad
    key), then run it with ``await nursery.start(hs.run)``, or use
    :func:`open_homeserver`. A HomeServer runs once. Its parts
    (:attr:`storage`, :attr:`federation_app` and so on) exist from the
    moment ``run`` reports started.
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = _checked(config if config is not None else Config.default())
        self._ran = False
        self._signing_key: SigningKey | None = None
        self._storage: Storage | None = None
        self._federation_client: FederationHttpClient | None = None
        self._key_ring: KeyRing | None = None
        self._room_locks = RoomLocks()
        #: Checks the signatures of big batches of events away from the
        #: event loop's GIL; None when ``[federation] signature_process`` is off.
        self.signature_process = (
            SignatureProcess() if self.config.federation.signature_process else None
        )
        self._room_servers: RoomServers | None = None
        self._federation_sender: FederationSender | None = None
        self._ingester: FederationIngester | None = None
        self._transaction_handler: TransactionHandler | None = None
        self._sync_handler: BundlingSyncHandler | None = None
        self._sliding_sync_handler: SlidingSyncHandler | None = None
        self._event_creator: EventCreator | None = None
        self._remote_joiner: RemoteJoiner | None = None
        self._unpartial_stater: UnpartialStater | None = None
        self._room_directory: RoomDirectory | None = None
        self._room_reader: RoomReader | None = None
        self._e2e_keys: E2eKeys | None = None
        self._room_joins: RoomJoins | None = None
        self._room_leaves: RoomLeaves | None = None
        #: With guest access allowed: the task that makes guests leave rooms
        #: that stop letting them in.
        self.guest_eviction: GuestEviction | None = None
        self._room_knocks: RoomKnocks | None = None
        self._events_by_timestamp: EventsByTimestamp | None = None
        self._federation_app: FederationApp | None = None
        self._client_app: ClientApp | None = None
        self._media_app: MediaApp | None = None
        self._media: MediaRepository | None = None
        self._media_deleter: MediaDeleter | None = None
        self._media_retention: MediaRetention | None = None
        self._housekeeping: Housekeeping | None = None
        self._accounts: Accounts | None = None
        self._registration_tokens: RegistrationTokens | None = None
        self._login_tokens: LoginTokens | None = None
        self._sso: SsoProviders | None = None
        self._uia: UserInteractiveAuth | None = None
        self._threepids: Threepids | None = None
        self._client_limiter: RateLimiter | None = None
        self._user_limits: UserLimits | None = None
        self._auth: Auth | None = None
        self._profiles: Profiles | None = None
        self._room_list: RoomList | None = None
        self._third_party: ThirdPartyLookups | None = None
        self._room_hierarchy: RoomHierarchy | None = None
        self._room_summaries: RoomSummaries | None = None
        self._server_notices: ServerNotices | None = None
        self._user_redactions: UserRedactions | None = None
        self._listeners: list[tuple[ListenerConfig, HttpListener]] = []
        self._bound: tuple[BoundListener, ...] | None = None
        #: Set once every listener accepts connections: the federation
        #: sender and the un-partial-state task reach other servers only then.
        self._serving = trio.Event()
        self._notifier: RoomEventSender | None = None
        self._pdu_queue: QueueingPduSink | None = None
        #: With a replication listener: what workers' stream answers from.
        self._stream_source: StreamSource | None = None
        #: Passes on servers heard from to the process that delivers PDUs.
        self._heard_relay: HeardFromRelay | None = None
        self._edus = EduDispatcher()
        self._app_services = AppServices()
        #: Woken by storage after each commit that a ``/sync`` may report.
        self.stream_notifier = StreamNotifier()

    # The parts, once built.

    @property
    def server_name(self) -> str:
        return self.config.server_name

    @property
    def signing_key(self) -> SigningKey:
        """The key this server signs events and requests with."""
        return _built(self._signing_key, "signing_key")

    @property
    def storage(self) -> Storage:
        return _built(self._storage, "storage")

    @property
    def federation_client(self) -> FederationHttpClient:
        """The one client for requests to other homeservers."""
        return _built(self._federation_client, "federation_client")

    @property
    def key_ring(self) -> KeyRing:
        """Other servers' keys, for checking their requests and events."""
        return _built(self._key_ring, "key_ring")

    @property
    def room_locks(self) -> RoomLocks:
        """The rooms' locks, shared by every path that writes a room's events."""
        return self._room_locks

    @property
    def room_servers(self) -> RoomServers:
        """Which servers are joined in each room, from its current state."""
        return _built(self._room_servers, "room_servers")

    @property
    def federation_sender(self) -> FederationSender:
        """The queues of PDUs and EDUs to other servers."""
        return _built(self._federation_sender, "federation_sender")

    @property
    def ingester(self) -> FederationIngester:
        """Takes other servers' events in: checked, gaps filled, authorised, written."""
        return _built(self._ingester, "ingester")

    @property
    def transaction_handler(self) -> TransactionHandler:
        """Answers ``PUT /send``: other servers' transactions."""
        return _built(self._transaction_handler, "transaction_handler")

    @property
    def event_creator(self) -> EventCreator:
        """Creates local users' events; the methods below act through it."""
        return _built(self._event_creator, "event_creator")

    @property
    def remote_joiner(self) -> RemoteJoiner:
        """Joins local users to rooms through servers that are in them."""
        return _built(self._remote_joiner, "remote_joiner")

    @property
    def room_directory(self) -> RoomDirectory:
        """Room aliases: ours kept here, other servers' asked of them."""
        return _built(self._room_directory, "room_directory")

    @property
    def room_reader(self) -> RoomReader:
        """Rooms' state, events and members as local users may see them."""
        return _built(self._room_reader, "room_reader")

    @property
    def room_joins(self) -> RoomJoins:
        """Joins local users to rooms, here or through a server in them."""
        return _built(self._room_joins, "room_joins")

    @property
    def room_leaves(self) -> RoomLeaves:
        """Makes local users leave rooms, declining other servers' invites through them."""
        return _built(self._room_leaves, "room_leaves")

    @property
    def unpartial_stater(self) -> UnpartialStater:
        """Completes the state of rooms joined with partial state, one task per room."""
        return _built(self._unpartial_stater, "unpartial_stater")

    @property
    def federation_app(self) -> FederationApp:
        """The app every federation listener serves; its router holds the routes."""
        return _built(self._federation_app, "federation_app")

    @property
    def accounts(self) -> Accounts:
        """Local accounts: registration, login, and whose an access token is."""
        return _built(self._accounts, "accounts")

    @property
    def registration_tokens(self) -> RegistrationTokens:
        """Registration tokens: the token stage of registration, and the admin's tokens."""
        return _built(self._registration_tokens, "registration_tokens")

    @property
    def login_tokens(self) -> LoginTokens | None:
        """Login tokens (``m.login.token``); None unless
        ``[registration] login_token_enabled``."""
        return self._login_tokens

    @property
    def uia(self) -> UserInteractiveAuth:
        """User-interactive authentication's sessions and stages."""
        return _built(self._uia, "uia")

    @property
    def sso(self) -> SsoProviders | None:
        """Single sign-on through OpenID Connect; None unless
        ``oidc_providers`` are configured."""
        return self._sso

    @property
    def threepids(self) -> Threepids | None:
        """E-mail addresses on accounts and password resets by mail; None
        unless ``[email]`` is configured."""
        return self._threepids

    @property
    def auth(self) -> Auth:
        """Turns a client request's access token into its requester."""
        return _built(self._auth, "auth")

    @property
    def profiles(self) -> Profiles:
        """Users' display names and avatars, here and on other servers."""
        return _built(self._profiles, "profiles")

    @property
    def room_hierarchy(self) -> RoomHierarchy:
        """Space hierarchies, for clients and other servers."""
        return _built(self._room_hierarchy, "room_hierarchy")

    @property
    def room_list(self) -> RoomList:
        """The public room list: which rooms are published, and pages of them."""
        return _built(self._room_list, "room_list")

    @property
    def third_party_lookups(self) -> ThirdPartyLookups:
        """The third-party lookups passed on to application services."""
        return _built(self._third_party, "third_party")

    @property
    def receipts(self) -> Receipts:
        """Users' receipts and read markers: set, stored, sent and synced."""
        return _built(self._edus.receipts, "receipts")

    @property
    def typing_notices(self) -> TypingNotices:
        """Who is typing in each room, in memory."""
        return _built(self._edus.typing, "typing notices")

    @property
    def presence(self) -> Presence:
        """Users' presence, in memory."""
        return _built(self._edus.presence, "presence")

    @property
    def to_device(self) -> ToDevice:
        """To-device messages: sent, received over federation, handed to syncs."""
        return _built(self._edus.to_device, "to-device messages")

    @property
    def e2e_keys(self) -> E2eKeys:
        """Devices' and users' end-to-end encryption keys."""
        return _built(self._e2e_keys, "keys")

    @property
    def client_app(self) -> ClientApp:
        """The client-server API's ASGI application, for embedding it elsewhere."""
        return _built(self._client_app, "client_app")

    @property
    def media_app(self) -> MediaApp:
        """The client listener's ASGI application: media paths, then the client API."""
        return _built(self._media_app, "media_app")

    @property
    def media(self) -> MediaRepository:
        """The content repository: uploads, downloads and thumbnails."""
        return _built(self._media, "media")

    @property
    def server_notices(self) -> ServerNotices | None:
        """Notices to local users from the system user; None when they are off."""
        return self._server_notices

    @property
    def media_retention(self) -> MediaRetention:
        """Deletes media unused for its configured lifetime (main process)."""
        return _built(self._media_retention, "media_retention")

    @property
    def housekeeping(self) -> Housekeeping:
        """Deletes records past their use (main process)."""
        return _built(self._housekeeping, "housekeeping")

    @property
    def listeners(self) -> tuple[BoundListener, ...]:
        """The listeners, in configuration order, as they listen once started."""
        return _built(self._bound, "listeners")

    @property
    def federation_port(self) -> int:
        """The port of the first federation listener, once started."""
        for bound in self.listeners:
            if bound.config.type == "federation":
                return bound.port
        raise RuntimeError("the configuration has no federation listener")

    # Acting for local users.

    async def create_room(
        self,
        creator: str,
        *,
        preset: Preset = "private_chat",
        name: str | None = None,
        topic: str | None = None,
        invite: Iterable[str] = (),
        initial_state: Iterable[Mapping[str, Any]] = (),
        power_level_content_override: Mapping[str, Any] | None = None,
        creation_content: Mapping[str, Any] | None = None,
        room_version: RoomVersionLike = DEFAULT_ROOM_VERSION,
    ) -> str:
        """Create a room as ``/createRoom`` does; return its ID.

        See :meth:`ranvier.core.creation.EventCreator.create_room`. Users of
        other servers in ``invite`` are invited over federation.
        """
        return await self.event_creator.create_room(
            creator,
            preset=preset,
            name=name,
            topic=topic,
            invite=invite,
            initial_state=initial_state,
            power_level_content_override=power_level_content_override,
            creation_content=creation_content,
            room_version=room_version,
        )

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = None,
        txn_id: str | None = None,
    ) -> str:
        """Send a message, or a state event when ``state_key`` is given; return its ID."""
        return await self.event_creator.send_event(
            sender, room_id, event_type, content, state_key=state_key, txn_id=txn_id
        )

    async def invite(
        self, sender: str, room_id: str, target: str, *, reason: str | None = None
    ) -> str:
        """Invite ``target``, through its server if it is another's; return the invite's ID."""
        return await self.event_creator.invite(sender, room_id, target, reason=reason)

    async def join_room(self, user: str, room_id: str, servers: Sequence[str] = ()) -> str:
        """Join ``user`` to ``room_id``; return the join's event ID.

        In a room this server is in, the join is made here. Otherwise it
        goes through the first of ``servers`` that can take it (make_join
        and send_join), then the server the room ID names, if it names one,
        then the server of whoever invited ``user``
        (:class:`~ranvier.core.room_joins.RoomJoins`, which the client
        API's joins take too). Only room IDs are taken here.

        A room this server is not in yet is joined with partial state when
        the resident offers it: the join returns before the room's members
        are known here, and the un-partial-state task completes the state
        (see :meth:`wait_for_full_state`). The room can be used at once.
        """
        if type(room_id) is not str or not room_id.startswith("!"):
            raise MatrixError(
                f"{room_id!r} is not a room ID", errcode="M_INVALID_PARAM", http_status=400
            )
        joined = await self.room_joins.join(user, room_id, servers)
        return joined.event_id

    async def knock_room(
        self,
        user: str,
        room_id_or_alias: str,
        servers: Sequence[str] = (),
        *,
        reason: str | None = None,
    ) -> str:
        """Knock on a room for ``user``, as ``POST /knock`` does: here if the
        room is ours, else through the first of ``servers`` (then the
        alias's or room ID's server) that takes it; return the room ID.
        """
        return await _built(self._room_knocks, "room_knocks").knock(
            user, room_id_or_alias, servers, reason=reason
        )

    async def find_event_at(
        self, user: str, room_id: str, ts: int, direction: Literal["b", "f"] = "f"
    ) -> tuple[str, int]:
        """The event of ``room_id`` nearest to ``ts`` (milliseconds since the
        epoch) that ``user`` may see, after it (``"f"``) or before it
        (``"b"``), as ``/timestamp_to_event`` finds it, asking the room's
        other servers for history not held here: ``(event ID,
        origin_server_ts)``.
        """
        found = await _built(self._events_by_timestamp, "events_by_timestamp").find(
            user, room_id, ts, direction
        )
        return found["event_id"], found["origin_server_ts"]

    def event_stream(
        self, *, since: int | None = None, buffer: int = DEFAULT_EVENT_BUFFER
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[StreamedEvent]]:
        """The events added to rooms' timelines here from now on (or after
        stream ordering ``since``), whoever wrote them, as a channel::

            async with hs.event_stream() as events:
                async for streamed in events:
                    handle(streamed.event)

        At most ``buffer`` events wait for the reader; the feeder reads on
        when there is room, so a slow reader misses nothing.
        """
        return EventStream(self.storage.event_stream, self.stream_notifier).open(
            since=since, buffer=buffer
        )

    async def leave_room(self, user: str, room_id: str, *, reason: str | None = None) -> str:
        """Make ``user`` leave a room, or decline an invite to it (through the
        inviting server when no user of ours is in the room); return the
        leave's event ID.
        """
        return await self.room_leaves.leave(user, room_id, reason=reason)

    # Rooms joined with partial state.

    async def wait_for_full_state(self, room_id: str) -> None:
        """Return once ``room_id`` has its full state here (at once if it has).

        A room whose last local user left stays partial and this waits on:
        bound the wait with a cancel scope.
        """
        await self.unpartial_stater.wait_for_full_state(room_id)

    def resync_status(self) -> dict[str, ResyncStatus]:
        """Each room whose state is being completed, and how far it has come."""
        return self.unpartial_stater.status()

    def metrics(self) -> dict[str, int]:
        """The server's background work, for a monitoring system to poll:
        how many rooms' state is being completed, how many were completed
        (or stopped) since the start, and each room's progress.

        Each sample is keyed by its name in Prometheus' exposition syntax,
        labels and all (``ranvier_resync_attempts{room_id="!r:example.org"}``,
        see :func:`ranvier.metrics.sample_name`); :mod:`ranvier.metrics`
        lists the families and renders them for a ``metrics`` listener.
        """
        stater = self.unpartial_stater
        statuses = stater.status()
        samples = {
            "ranvier_resync_rooms": len(statuses),
            "ranvier_resync_rooms_waiting": sum(
                status.phase == "waiting" for status in statuses.values()
            ),
            "ranvier_resync_completed_total": stater.completed_resyncs,
            "ranvier_resync_stopped_total": stater.stopped_resyncs,
        }
        for room_id, status in sorted(statuses.items()):
            room = {"room_id": room_id}
            samples[sample_name("ranvier_resync_phase", **room, phase=status.phase)] = 1
            samples[sample_name("ranvier_resync_events_resynced", **room)] = status.events_resynced
            samples[sample_name("ranvier_resync_events_remaining", **room)] = max(
                0, status.events_total - status.events_resynced
            )
            samples[sample_name("ranvier_resync_attempts", **room)] = status.attempts
        return samples

    def _heard_from(self, origin: str) -> None:
        """``origin`` signed a request of ours: it is up, which the
        federation sender here, and the one delivering PDUs if that is
        another process's, want to know of a server they back off from.
        """
        self.federation_sender.heard_from(origin)
        if self._heard_relay is not None:
            self._heard_relay.heard_from(origin)

    async def _tell_stream(self, destinations: Sequence[str]) -> None:
        """Servers backing off that this process heard from, for the
        federation_sender worker."""
        await trio.lowlevel.checkpoint()
        if self._stream_source is not None:
            self._stream_source.note_heard_from(destinations)

    def _heard_from_elsewhere(self, destinations: Sequence[str]) -> None:
        """A worker heard from servers backing off (``MainControl``)."""
        for destination in destinations:
            self.federation_sender.heard_from(destination)
        if self._pdu_queue is not None and self._stream_source is not None:
            self._stream_source.note_heard_from(destinations)

    async def _wake_reset_destination(self, destination: str) -> None:
        """An admin cleared ``destination``'s backoff: the sender delivering
        to it hears of it as of a server heard from, and tries it now."""
        await trio.lowlevel.checkpoint()
        self._heard_from_elsewhere([destination])

    def _resync(self, room_id: str) -> None:
        try:
            self.unpartial_stater.start_resync(room_id)
        except RuntimeError:
            # The server is stopping: the task has gone, and picks the room
            # up when the server starts again.
            _log.info("%s has partial state; its resync starts with the server", room_id)

    # Running.

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every component, report started, and serve until cancelled.

        Raises the problem that stopped the start as itself; see the module's
        invariants.
        """
        if self._ran:
            raise RuntimeError("a HomeServer runs once; make a new one to start again")
        self._ran = True
        # Reading and perhaps generating files: off the event loop, which an
        # embedding program may be using for other things.
        prepared = await trio.to_thread.run_sync(self._prepare)
        self._build(prepared)
        failure: Exception | None = None
        running: list[_Running] = []
        async with trio.open_nursery() as nursery:
            try:
                for component in self._components():
                    entry = _Running(component.name, trio.CancelScope(shield=True), trio.Event())
                    # Recorded before it is started, so the shutdown below
                    # waits for it however far its start got.
                    running.append(entry)
                    await nursery.start(
                        self._run_component, component, entry, name=f"ranvier {component.name}"
                    )
                self._bound = tuple(
                    BoundListener(config, port=_bound_port(listener), scheme=listener.scheme)
                    for config, listener in self._listeners
                )
                for bound in self._bound:
                    _log.info("listening on %s (%s)", bound.url, bound.config.type)
                self._serving.set()
                _freeze_start_up_objects()
                task_status.started()
                await trio.sleep_forever()
            except Exception as exc:
                # Only a start can fail here: once started, the body just
                # sleeps, and a component's failure cancels it.
                failure = exc
            finally:
                with trio.CancelScope(shield=True):
                    for entry in reversed(running):
                        entry.scope.cancel()
                        await entry.done.wait()
        if failure is not None:
            raise failure

    @staticmethod
    async def _run_component(
        component: _Component,
        entry: _Running,
        *,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with entry.scope:
                await component.run(task_status=task_status)
                if not entry.scope.cancel_called:
                    # A component that ends by itself would leave the server
                    # running without it.
                    raise RuntimeError(f"the {component.name} stopped by itself")
        finally:
            entry.done.set()

    def _prepare(self) -> _Prepared:
        config = self.config
        paths = config.paths
        _make_private_directory(config.data_dir)
        paths.database.parent.mkdir(parents=True, exist_ok=True)
        signing_key = load_or_create_signing_key(paths.signing_key)
        context = None
        if any(listener.uses_tls for listener in config.listeners):
            certificate, private_key = paths.tls_certificate, paths.tls_private_key
            configured = config.tls.certificate_path or config.tls.private_key_path
            # A configured certificate that is missing is the operator's to
            # fix: replacing it with a self-signed one would hide that.
            if not configured and ensure_certificate(certificate, private_key, config.server_name):
                _log.info(
                    "generated a self-signed TLS certificate for %s in %s; servers that"
                    " verify certificates will not accept it",
                    config.server_name,
                    certificate,
                )
            context = server_ssl_context(certificate, private_key)
        app_services = load_app_services(config.app_service_config_files, config.server_name)
        return _Prepared(signing_key, context, app_services)

    def _build(self, prepared: _Prepared) -> None:
        """Make the parts; nothing runs yet."""
        config = self.config
        self._signing_key = prepared.signing_key
        self._storage = self._make_storage()
        self._storage.server_name = config.server_name
        self._federation_client = FederationHttpClient.from_config(config, prepared.signing_key)
        self._key_ring = KeyRing(
            store=self._storage,
            client=self._federation_client,
            local_server_name=config.server_name,
            local_keys=[prepared.signing_key.verify_key],
        )
        self._app_services = prepared.app_services
        self._build_handlers(prepared.signing_key)
        self._server_notices = self._make_server_notices()
        media_files = MediaFiles(config.media_store)
        self._media = MediaRepository(
            server_name=config.server_name,
            rows=self._storage.media,
            files=media_files,
            remote=FederationMediaClient(self._federation_client),
            max_upload_bytes=config.media.max_upload_bytes,
            upload_windows=tuple(
                UploadWindow(limit.period_seconds * 1000, limit.max_bytes)
                for limit in config.media.upload_limits
            ),
            max_thumbnail_pixels=config.media.max_thumbnail_source_pixels,
        )
        self._media_deleter = MediaDeleter(
            server_name=config.server_name, store=self._storage.media_admin, files=media_files
        )
        local_days, remote_days = (
            config.media.local_media_lifetime_days,
            config.media.remote_media_lifetime_days,
        )
        self._media_retention = MediaRetention(
            deleter=self._media_deleter,
            local_lifetime_ms=None if local_days is None else local_days * DAY_MS,
            remote_lifetime_ms=None if remote_days is None else remote_days * DAY_MS,
        )
        self.search_scrubber = SearchScrubber(self._storage.search_scrub)
        self._housekeeping = Housekeeping(
            self._storage.housekeeping,
            ages=_housekeeping_ages(config),
            interval_ms=config.housekeeping.interval_seconds * 1000,
            batch_rows=config.housekeeping.batch_rows,
        )
        self._federation_app = FederationApp(
            server_name=config.server_name,
            key_lookup=self._key_ring,
            router=self._federation_router(prepared.signing_key),
            max_body_bytes=config.federation.max_request_body_bytes,
            on_authenticated=self._heard_from,
            rate_limiter=_federation_rate_limiter(config),
        )
        self._ratelimit_overrides = RateLimitOverrides(store=self._storage.ratelimit_overrides)
        self._client_limiter = RateLimiter.from_config(config.ratelimit)
        rate_limits = RouteLimits(
            self._client_limiter,
            identify=self.auth.get_user,
            trust_x_forwarded_for=config.ratelimit.trust_x_forwarded_for,
            overrides=self._ratelimit_overrides,
        )
        self._user_limits = rate_limits.users
        self._shadow_bans = ShadowBans(
            delay_seconds=(
                config.ratelimit.shadow_ban_delay_seconds if config.ratelimit.enabled else NO_DELAY
            )
        )
        self._client_app = ClientApp(router=self._client_router(), rate_limits=rate_limits)
        self._listeners = []
        # Media paths first: their bodies are streamed and not JSON.
        self._media_app = MediaApp(
            media=self._media,
            auth=self.auth,
            fallback=self._client_app,
            previews=self._url_previewer(self._media),
            rate_limits=rate_limits,
        )
        http_metrics = HttpMetrics()
        registry = homeserver_metrics(
            self, http_metrics, lambda: self._sync_handler, lambda: self._sliding_sync_handler
        )
        apps: dict[str, AsgiApp] = {
            "federation": self._federation_app,
            "client": self._media_app,
            "metrics": MetricsApp(registry.collect, registry.families),
        }
        if any(listener.type == "replication" for listener in config.listeners):
            secret = config.replication.shared_secret
            assert secret is not None  # the configuration requires it
            # Typing and presence are held here, for workers too.
            ephemeral = EphemeralOrigin(self.typing_notices, self.presence)
            source = self._stream_source = StreamSource(
                self._storage,
                self.stream_notifier,
                forget_tokens=self.accounts.forget_cached_tokens,
                ephemeral=ephemeral,
            )
            self.accounts.on_tokens_invalidated = source.note_tokens_invalidated
            if self._pdu_queue is not None:
                self._pdu_queue.on_noted = source.note_queued
                self._heard_relay = HeardFromRelay(self._storage, self._tell_stream)
            apps["replication"] = ReplicationApp(
                self._storage,
                shared_secret=secret,
                control=MainControl(
                    self._storage,
                    source,
                    resync=self._resync,
                    ephemeral=ephemeral,
                    heard_from=self._heard_from_elsewhere,
                ),
                on_write=source.note_write,
            )
        for index, listener in enumerate(config.listeners):
            if (
                listener.type == "replication"
                and not ipaddress.ip_address(listener.host).is_loopback
            ):
                _log.warning(
                    "listeners[%d]: replication on %s takes writes from whoever reaches that"
                    " address and knows the shared secret",
                    index,
                    listener.host,
                )
            if listener.type == "metrics" and not ipaddress.ip_address(listener.host).is_loopback:
                _log.warning(
                    "listeners[%d]: metrics on %s are open to whoever reaches that address,"
                    " and name the rooms being resynced",
                    index,
                    listener.host,
                )
            app = apps[listener.type]
            http = HttpListener(
                app if listener.type == "metrics" else http_metrics.wrap(listener.type, app),
                host=listener.host,
                port=listener.port,
                ssl_context=prepared.server_ssl_context if listener.uses_tls else None,
            )
            self._listeners.append((listener, http))

    def _make_server_notices(self) -> ServerNotices | None:
        """Server notices as configured: None when no system user is named."""
        settings = self.config.server_notices
        if settings.system_mxid_localpart is None:
            return None
        return ServerNotices(
            server_name=self.server_name,
            localpart=settings.system_mxid_localpart,
            display_name=settings.system_mxid_display_name,
            avatar_url=settings.system_mxid_avatar_url,
            room_name=settings.room_name,
            rooms=self.storage.server_notices,
            tags=self.storage.client_data,
            accounts=self.accounts,
            profiles=self.profiles,
            sender=self.event_creator,
            memberships=self.room_reader,
            notifier=self.stream_notifier,
        )

    def _url_previewer(self, media: MediaRepository) -> UrlPreviewer | None:
        """URL previews as configured: None when they are turned off."""
        settings = self.config.media
        if not settings.url_preview_enabled:
            return None
        fetcher = UrlFetcher(
            policy=AddressPolicy.from_strings(
                settings.url_preview_ip_range_denylist, settings.url_preview_ip_range_allowlist
            ),
            max_bytes=settings.url_preview_max_bytes,
            timeout_seconds=settings.url_preview_timeout_seconds,
        )
        return UrlPreviewer(
            source=fetcher, rows=self.storage.url_previews, images=UnlimitedUploads(media)
        )

    def _make_storage(self) -> Storage:
        """This process's storage; a worker's writes through the main process."""
        config = self.config
        return Storage(config.paths.database, synchronous=config.database.synchronous)

    def _event_persister(self, kind: Literal["federation", "client"]) -> EventPersister:
        """Where events from federation or from local clients are persisted."""
        return self.storage

    def _sender_store(self) -> SenderStore:
        """What the federation sender keeps its queues in; with a
        federation_sender worker, one that leaves PDUs to the worker.
        """
        if self.config.worker.federation_sender:
            return EduOnlySenderStore(self.storage)
        return self.storage

    def _pdu_sink(self) -> PduSink:
        """Where events for other servers go: the federation sender, or only
        ``destination_rooms`` when a federation_sender worker delivers them.
        """
        if self.config.worker.federation_sender:
            self._pdu_queue = QueueingPduSink(self.storage, server_name=self.server_name)
            return self._pdu_queue
        return self.federation_sender

    def _make_presence(self, **parts: Any) -> Presence:
        """Users' presence, held here; a worker holds the main process's."""
        return Presence(**parts)

    def _make_typing(self, **parts: Any) -> TypingNotices:
        """Who is typing, held here; a worker holds the main process's."""
        return TypingNotices(**parts)

    def _full_state_waiter(self) -> FullStateWaiter:
        """What reads of a partial-state room wait on for its full state."""
        return self.unpartial_stater

    def _build_handlers(self, signing_key: SigningKey) -> None:
        """The handlers of local and remote events, over storage, the client
        and the key ring (built before them).
        """
        server_name = self.config.server_name
        storage, client, keys = self.storage, self.federation_client, self.key_ring
        self._room_servers = RoomServers(storage)
        retry_ms = round(self.config.federation.destination_retry_seconds * 1000)
        sender_store = self._sender_store()
        self._federation_sender = FederationSender(
            server_name,
            client,
            sender_store,
            outbox=storage.e2e_keys,
            # PDUs leave from the process that catches destinations up.
            pdu_outbox=None if isinstance(sender_store, EduOnlySenderStore) else storage.pdu_outbox,
            deliveries=storage.federation_admin,
            backoff=BackoffPolicy(initial_ms=retry_ms),
            serving=self._serving,
        )
        notifier = RoomEventSender(server_name, self._room_servers, self._pdu_sink())
        fetcher = FederationEventFetcher(client)
        verifier = EventVerifier(keys, offload=self.signature_process)
        federation_persister = self._event_persister("federation")
        self._ingester = FederationIngester(
            store=storage,
            persister=federation_persister,
            client=fetcher,
            verifier=verifier,
            room_locks=self._room_locks,
            run_reader=storage.run_reads,
            out_of_band=OutOfBandMemberships(
                server_name=server_name,
                store=storage,
                memberships=storage.room_members,
                persister=federation_persister,
            ),
            # Transactions' answers and their events in one commit, where
            # this process writes its own events.
            answers=storage if federation_persister is storage else None,
        )
        self._ingester.policy_servers = PolicyServers(storage, FederationPolicyClient(client))
        self._backfiller = Backfiller(
            server_name=server_name,
            store=storage.backfill,
            versions=storage,
            client=FederationBackfillClient(client),
            servers=self._room_servers,
            ingester=self._ingester,
        )
        self._transaction_handler = TransactionHandler(
            pdus=AclCheckedPdus(self._ingester, storage, known=self._ingester.known_current_entry),
            transactions=ReceivedTransactions(storage),
            edus=AclCheckedEdus(self._edus, storage),
        )
        client_persister = self._event_persister("client")
        self._event_creator = EventCreator(
            server_name=server_name,
            signing_key=signing_key,
            store=storage,
            persister=client_persister,
            notifier=notifier,
            remote_inviter=FederationInviter(
                client, store=storage, keys=keys, served=storage.redactions
            ),
            room_locks=self._room_locks,
            # Messages and their client transactions in one commit, where
            # this process writes its own events.
            transaction_recorder=storage if client_persister is storage else None,
        )
        self._event_creator.policy_servers = self._ingester.policy_servers
        self._remote_joiner = RemoteJoiner(
            server_name=server_name,
            signing_key=signing_key,
            client=FederationJoinClient(client),
            keys=keys,
            store=storage,
            persister=storage,
            room_lock=self._room_locks.hold,
        )
        self._unpartial_stater = UnpartialStater(
            server_name=server_name,
            serving=self._serving,
            store=storage,
            client=fetcher,
            verifier=verifier,
            room_locks=self._room_locks,
            progress_store=storage,
        )
        self._push_gateway = HttpPushGateway(
            ca_file=self.config.push.ca_file, timeout=self.config.push.request_timeout_seconds
        )
        self.push_sender = PushSender(
            storage.pushers,
            self.stream_notifier,
            self._push_gateway,
            PushRules(storage.client_data),
            # Its own counts: their cache follows the push stream, not syncs.
            NotificationCounts(storage.notifications, PushRules(storage.client_data)),
        )
        self._room_directory = RoomDirectory(
            server_name=server_name,
            aliases=storage.aliases,
            store=storage,
            servers=self._room_servers,
            client=FederationDirectoryClient(client),
        )
        self._aggregations = Aggregations(storage.sync, storage.relations)
        self._room_reader = BundlingRoomReader(
            self._aggregations,
            ServedStateReader(storage, storage.redactions),
            storage.room_members,
            full_state=self._full_state_waiter(),
            server_name=server_name,
            forgotten=storage.forgotten_rooms,
            transactions=storage.sync,
            erasure=storage.erasure,
        )
        self._upgraded_room_settings = UpgradedRoomSettings(
            state=storage,
            rules=PushRules(storage.client_data, self.stream_notifier),
            tags=storage.client_data,
            notifier=self.stream_notifier,
        )
        self._room_joins = RoomJoins(
            on_joined=self._upgraded_room_settings.joined,
            creator=self._event_creator,
            remote=self._remote_joiner,
            store=storage,
            memberships=storage.room_members,
            directory=self._room_directory,
            on_partial_state=self._resync,
            blocked=storage.admin,
            restricted=RestrictedJoins(storage, server_name),
        )
        self._room_leaves = RoomLeaves(
            server_name=server_name,
            signing_key=signing_key,
            creator=self._event_creator,
            store=storage,
            memberships=storage.room_members,
            persister=storage,
            client=FederationLeaveClient(client),
        )
        self._events_by_timestamp = EventsByTimestamp(
            server_name=server_name,
            store=storage.sync,
            timestamps=storage.timestamps,
            remote=FederationEventFetcher(client),
            servers=self._room_servers,
            versions=storage,
            ingester=self._ingester,
            backfill=storage.backfill,
        )
        self._room_knocks = RoomKnocks(
            server_name=server_name,
            signing_key=signing_key,
            creator=self._event_creator,
            memberships=storage.room_members,
            persister=storage,
            directory=self._room_directory,
            client=FederationKnockClient(client),
            keys=keys,
        )
        self._notifier = notifier
        storage.on_stream_advance = self.stream_notifier.advance
        hashing = self.config.registration
        self._accounts = Accounts(
            server_name=server_name,
            store=storage.accounts,
            password_hasher=argon2.PasswordHasher(
                time_cost=hashing.password_hash_time_cost,
                memory_cost=hashing.password_hash_memory_kib,
                parallelism=hashing.password_hash_parallelism,
            ),
            refresh_store=storage.refresh_tokens,
            access_token_lifetime_ms=hashing.access_token_lifetime_ms,
        )
        self._registration_tokens = RegistrationTokens(storage.registration_tokens)
        if hashing.login_token_enabled:
            self._login_tokens = LoginTokens(
                storage.login_tokens,
                self._accounts,
                lifetime_ms=hashing.login_token_lifetime_ms,
            )
        if self.config.oidc_providers:
            base_url = self.config.well_known.client_base_url
            assert base_url is not None  # the configuration checks it
            self._sso = SsoProviders(
                self.config.oidc_providers,
                client_base_url=base_url,
                accounts=self._accounts,
                store=storage.sso,
                login_tokens=self._login_tokens
                or LoginTokens(
                    storage.login_tokens,
                    self._accounts,
                    lifetime_ms=hashing.login_token_lifetime_ms,
                ),
            )
        self._uia = UserInteractiveAuth(
            store=storage.uia,
            accounts=self._accounts,
            sso_links=None if self._sso is None else self._sso.has_link,
        )
        if self._sso is not None:
            self._sso.confirmations = self._uia
        if self.config.email is not None:
            self._threepids = _email_threepids(self.config, storage, self._accounts)
        self._auth = Auth(self._accounts, self._app_services)
        self._room_directory.app_services = self._app_services
        self._appservice_client = HttpAppServiceClient()
        self._appservice_queries = AppServiceQueries(self._app_services, self._appservice_client)
        self._third_party = ThirdPartyLookups(self._app_services, self._appservice_client)
        if self._app_services:
            self._room_directory.app_service_queries = self._appservice_queries
        self.appservice_sender = AppServiceSender(
            storage.appservices,
            self.stream_notifier,
            self._app_services,
            self._appservice_client,
            self._accounts,
        )
        self._profiles = Profiles(
            server_name=server_name,
            store=storage.client_data,
            rooms=self._room_reader,
            events=self._event_creator,
            remote=FederationProfileClient(client),
        )
        self._event_creator.member_profiles = self._profiles
        self._invite_permission = InvitePermission(
            storage.client_data, is_local=lambda user_id: user_id.partition(":")[2] == server_name
        )
        self._event_creator.invite_permission = self._invite_permission
        if self._app_services:
            self._profiles.app_service_queries = self._appservice_queries
        self._remote_joiner.member_profiles = self._profiles
        self._room_list = RoomList(
            store=storage.client_data,
            permissions=self._room_directory,
            server_name=server_name,
            remote=FederationRoomListClient(client),
            app_services=self._app_services,
        )
        self._room_directory.room_list = self._room_list
        self._room_directory.state_sender = self._event_creator
        remote_spaces = FederationHierarchyClient(client, server_name=server_name)
        self._room_hierarchy = RoomHierarchy(
            server_name=server_name, store=storage.hierarchy, remote=remote_spaces
        )
        self._room_summaries = RoomSummaries(
            server_name=server_name,
            store=storage.hierarchy,
            remote=remote_spaces,
            aliases=self._room_directory,
        )
        self._edus.presence = self._make_presence(
            rooms=self._room_reader,
            shared=storage.room_members,
            server_name=server_name,
            servers=self._room_servers,
            edus=self._federation_sender,
            notifier=self.stream_notifier,
        )
        # Events, receipts and typing are the activity presence follows.
        self._event_creator.activity = self._edus.presence
        self._edus.receipts = Receipts(
            server_name=server_name,
            store=storage.receipts,
            account_data=storage.client_data,
            rooms=self._room_reader,
            events=storage,
            servers=self._room_servers,
            edus=self._federation_sender,
            notifier=self.stream_notifier,
            activity=self._edus.presence,
        )
        self._edus.typing = self._make_typing(
            server_name=server_name,
            rooms=self._room_reader,
            servers=self._room_servers,
            edus=self._federation_sender,
            notifier=self.stream_notifier,
            activity=self._edus.presence,
        )
        self.appservice_sender.ephemeral = AppServiceEphemeral(
            store=storage.appservices,
            typing=self._edus.typing,
            presence=self._edus.presence,
            rooms=self._room_reader,
        )
        self.appservice_sender.to_device = AppServiceToDevice(
            store=storage.appservices, services=self._app_services
        )
        self._edus.to_device = ToDevice(
            server_name=server_name,
            store=storage.e2e_keys,
            notifier=self.stream_notifier,
            edus=self._federation_sender,
            keep_ms=_housekeeping_ages(self.config).client_transaction_ms,
        )
        uia = _built(self._uia, "uia")

        async def reauthenticate(user_id: str, auth: object) -> None:
            await uia.check(user_id, None, CROSS_SIGNING, auth, request={})

        self._e2e_keys = E2eKeys(
            server_name=server_name,
            store=storage.e2e_keys,
            notifier=self.stream_notifier,
            rooms=self._room_reader,
            shared=storage.room_members,
            memberships=storage.room_members,
            # The route's own check, which knows the request's token and
            # keeps its session's answer, is the one used; this one serves
            # any other caller.
            reauthenticate=reauthenticate,
            remote=FederationKeyClient(client),
            servers=self._room_servers,
            edus=self._federation_sender,
            device_lists=RemoteDeviceLists(
                server_name=server_name,
                store=storage.remote_device_lists,
                remote=FederationKeyClient(client),
            ),
            partial_state_updates=storage.partial_state_device_updates,
            device_names_over_federation=(
                self.config.federation.allow_device_name_lookup_over_federation
            ),
        )
        self._edus.e2e_keys = self._e2e_keys
        self.unpartial_stater.on_full_state.append(self._e2e_keys.room_fully_stated)
        self.unpartial_stater.on_start.append(self._e2e_keys.resume_fully_stated)
        self._accounts.on_devices_logged_out = self._e2e_keys.devices_logged_out
        self._accounts.on_devices_removed = self._e2e_keys.devices_removed
        self._accounts.on_device_added = self._e2e_keys.device_added

    def _federation_router(self, signing_key: SigningKey) -> Router:
        """Every federation and key route this server answers, registered here."""
        config = self.config
        router = Router()
        add_version_route(router)
        add_server_well_known_route(router, config.well_known)
        add_key_server_route(
            router,
            server_name=config.server_name,
            signing_keys=[signing_key],
            validity_ms=config.federation.key_validity_seconds * 1000,
        )
        add_notary_routes(
            router,
            server_name=config.server_name,
            signing_keys=[signing_key],
            validity_ms=config.federation.key_validity_seconds * 1000,
            store=self.storage,
            origin=self.key_ring,
        )
        add_transaction_routes(router, self.transaction_handler)
        add_query_routes(
            router,
            server_name=config.server_name,
            store=self.storage,
            profiles=LocalProfileSource(self.profiles),
            served=self.storage.redactions,
            erasure=self.storage.erasure,
        )
        add_membership_routes(
            router,
            server_name=config.server_name,
            signing_key=signing_key,
            store=self.storage,
            persister=self.storage,
            keys=self.key_ring,
            notifier=self._notifier,
            room_lock=self._room_locks.hold,
            invite_permission=self._invite_permission,
            policy_servers=self.ingester.policy_servers,
            served=self.storage.redactions,
            servers=self.room_servers.by_group,
        )
        add_directory_route(router, self.room_directory)
        add_e2e_key_routes(router, server_name=config.server_name, keys=self.e2e_keys)
        add_media_routes(router, media=self.media)
        add_openid_route(router, self.accounts)
        add_federation_hierarchy_route(router, self.room_hierarchy)
        add_public_rooms_routes(router, self.room_list)
        add_federation_timestamp_route(router, store=self.storage)
        return router

    def _client_router(self) -> Router:
        """Every client-server API route this server answers, registered here."""
        router = Router()
        add_versions_route(router)
        add_client_well_known_routes(router, self.config.well_known)
        add_server_well_known_route(router, self.config.well_known)
        account_data = PushRulesAccountData(self.storage.client_data, self.stream_notifier)
        aggregations = self._aggregations
        relations = Relations(self.storage.sync, self.storage.relations, aggregations)
        sync = self._sync_handler = BundlingSyncHandler(
            aggregations,
            self.storage.sync,
            self.stream_notifier,
            account_data,
            receipts=self._edus.receipts,
            typing=self._edus.typing,
            presence=self._edus.presence,
            end_to_end=self.e2e_keys,
            notifications=NotificationCounts(
                self.storage.notifications, PushRules(self.storage.client_data)
            ),
            invite_permission=self._invite_permission,
        )
        add_sync_routes(
            router,
            auth=self.auth,
            sync=sync,
            filters=UserFilters(self.storage.sync),
            messages=BundlingRoomMessages(
                self.storage.sync, aggregations, backfill=self._backfiller
            ),
        )
        sliding = self._sliding_sync_handler = SlidingSyncHandler(
            self.storage.sliding_sync,
            self.storage.sync,
            self.stream_notifier,
            account_data=account_data,
            receipts=self._edus.receipts,
            typing=self._edus.typing,
            presence=self._edus.presence,
            end_to_end=self.e2e_keys,
            notifications=NotificationCounts(
                self.storage.notifications, PushRules(self.storage.client_data)
            ),
            aggregations=aggregations,
            invite_permission=self._invite_permission,
        )
        add_sliding_sync_route(router, auth=self.auth, sliding_sync=sliding)
        registration = self.config.registration
        add_account_routes(
            router,
            accounts=self.accounts,
            auth=self.auth,
            registration_enabled=registration.enabled,
            app_services=self._app_services,
            registration_tokens=self.registration_tokens if registration.requires_token else None,
            login_tokens=self.login_tokens or _sso_login_tokens(self._sso),
            get_login_token=self.login_tokens is not None,
            identity_providers=self._sso.identity_providers if self._sso is not None else (),
            email_owner=None if self._threepids is None else self._threepids.owner,
            email_registration=self._threepids if _register_by_email(self.config) else None,
            allow_guests=registration.allow_guest_access,
            uia=self.uia,
        )
        if self._sso is not None:
            add_sso_routes(router, self._sso, self.uia)
        if self.login_tokens is not None:
            add_login_token_route(router, auth=self.auth, uia=self.uia, tokens=self.login_tokens)
        add_admin_routes(router, accounts=self.accounts, shared_secret=registration.shared_secret)
        directory, reader = self.room_directory, self.room_reader
        add_room_routes(
            router,
            server_name=self.config.server_name,
            auth=self.auth,
            creator=self.event_creator,
            reader=reader,
            joins=self.room_joins,
            leaves=(
                self.room_leaves
                if self._server_notices is None
                else NoticeGuardedLeaves(self.room_leaves, self._server_notices)
            ),
            transactions=ClientTransactions(
                self.storage.client_transactions,
                keep_ms=_housekeeping_ages(self.config).client_transaction_ms,
            ),
            directory=directory,
            forgetting=RoomForgetting(self.storage.forgotten_rooms),
            shadow_bans=self._shadow_bans,
            knocks=_built(self._room_knocks, "room_knocks"),
            limits=self._user_limits,
        )
        add_directory_routes(router, auth=self.auth, directory=directory, reader=reader)
        add_event_context_route(
            router, auth=self.auth, contexts=EventContexts(self.storage.sync, aggregations)
        )
        add_room_preview_routes(
            router,
            auth=self.auth,
            previews=RoomPreviews(
                self.storage.sync,
                reader,
                self.stream_notifier,
                account_data=account_data,
                directory=self.room_list,
                receipts=self._edus.receipts,
                presence=self._edus.presence,
            ),
        )
        add_relation_routes(router, auth=self.auth, relations=relations)
        add_timestamp_route(
            router,
            auth=self.auth,
            lookup=_built(self._events_by_timestamp, "events_by_timestamp"),
        )
        add_search_route(
            router,
            auth=self.auth,
            search=Search(self.storage.sync, self.storage.search, aggregations),
        )
        add_hierarchy_route(router, auth=self.auth, hierarchy=self.room_hierarchy)
        add_room_summary_routes(
            router, auth=self.auth, summaries=_built(self._room_summaries, "room_summaries")
        )
        auth, client_data = self.auth, self.storage.client_data
        add_capability_routes(
            router,
            auth=auth,
            login_token_enabled=self.login_tokens is not None,
            threepid_changes=self._threepids is not None,
        )
        add_third_party_routes(router, auth=auth, lookups=self.third_party_lookups)
        add_threepid_routes(
            router,
            auth=auth,
            threepids=self._threepids,
            uia=self.uia,
            limiter=self._client_limiter,
            register_by_email=_register_by_email(self.config),
        )
        add_push_rule_routes(
            router, auth=auth, push_rules=PushRules(client_data, self.stream_notifier)
        )
        add_notification_routes(
            router,
            auth=auth,
            notifications=NotificationList(
                self.storage.notifications, self.storage.redactions, PushRules(client_data)
            ),
        )
        add_pusher_routes(
            router,
            auth=auth,
            pushers=Pushers(
                self.storage.pushers,
                allow_http=self.config.push.allow_http,
                on_change=self.push_sender.pushers_changed,
            ),
        )
        add_profile_routes(router, auth=auth, profiles=self.profiles, shadow_bans=self._shadow_bans)
        add_account_data_routes(router, auth=auth, account_data=account_data)
        forgetting = ForgettingDeletedDevices(self.accounts, self.e2e_keys)
        devices = Devices(
            store=client_data, accounts=forgetting, on_renamed=self.e2e_keys.device_renamed
        )
        add_device_routes(router, auth=auth, devices=devices, uia=self.uia)
        deactivation = Deactivation(
            accounts=self.accounts,
            rooms=self.storage.accounts,
            leaves=self.room_leaves,
            profiles=client_data,
        )
        add_account_management_routes(
            router,
            auth=auth,
            uia=self.uia,
            accounts=self.accounts,
            deactivation=deactivation,
            reset=self._threepids,
        )
        self._add_admin_api_routes(router, deactivation, devices)
        add_room_list_routes(router, auth=auth, room_list=self.room_list)
        hidden = () if self._server_notices is None else (self._server_notices.system_user_id,)
        add_user_directory_routes(
            router, auth=auth, directory=UserDirectory(client_data, hidden=hidden)
        )
        add_receipt_routes(router, auth=auth, receipts=self.receipts)
        add_report_routes(
            router,
            auth=auth,
            reports=Reports(
                store=self.storage.reports,
                events=reader,
                rooms=self.storage,
                users=self.accounts,
                server_name=self.config.server_name,
            ),
        )
        add_openid_routes(router, auth=auth, issuer=self.accounts)
        add_typing_routes(
            router, auth=auth, typing=self.typing_notices, shadow_bans=self._shadow_bans
        )
        add_presence_routes(router, auth=auth, presence=self.presence)
        add_key_routes(router, auth=auth, keys=self.e2e_keys, uia=self.uia)
        add_dehydrated_device_routes(
            router,
            auth=auth,
            dehydrated=DehydratedDevices(store=self.storage.dehydrated_devices, keys=self.e2e_keys),
        )
        add_room_key_routes(router, auth=auth, backups=RoomKeyBackups(self.storage.room_keys))
        add_to_device_routes(router, auth=auth, to_device=self.to_device)
        upgrades = RoomUpgrader(
            events=self.event_creator,
            store=self.storage,
            directory=self.storage.room_upgrades,
            claims=self.storage.room_upgrades,
            settings=self._upgraded_room_settings,
        )
        add_upgrade_routes(router, auth=auth, upgrades=upgrades, shadow_bans=self._shadow_bans)
        add_appservice_routes(router, auth=auth, pinger=self._appservice_queries)
        return router

    def _add_admin_api_routes(
        self, router: Router, deactivation: Deactivation, devices: Devices
    ) -> None:
        """The admin API's users, rooms and reports (shared-secret
        registration is wired with the account routes)."""
        server_name, store = self.config.server_name, self.storage.admin
        add_server_version_route(router)
        users = AdminUsers(
            server_name=server_name,
            store=store,
            accounts=self.accounts,
            profiles=self.profiles,
            deactivation=deactivation,
            system_users=()
            if self._server_notices is None
            else (self._server_notices.system_user_id,),
        )
        add_admin_user_routes(router, auth=self.auth, users=users)
        add_username_available_route(
            router, auth=self.auth, accounts=self.accounts, app_services=self._app_services
        )
        add_admin_ratelimit_routes(
            router, auth=self.auth, users=users, overrides=self._ratelimit_overrides
        )
        user_data = AdminUserData(
            users=users,
            devices=devices,
            dehydrated=self.storage.dehydrated_devices,
            pushers=Pushers(self.storage.pushers),
            account_data=AccountData(self.storage.client_data),
        )
        add_admin_user_data_routes(router, auth=self.auth, data=user_data)
        rooms = AdminRooms(
            server_name=server_name,
            store=store,
            state=self.storage,
            leaves=self.room_leaves,
            aliases=self.room_directory,
            room_list=self.room_list,
            purger=ScrubbingPurger(self.storage.room_purge, self.search_scrubber),
            owed_pdus=self.federation_sender,
        )
        add_admin_room_routes(router, auth=self.auth, rooms=rooms)
        add_admin_room_membership_routes(
            router,
            auth=self.auth,
            membership=AdminRoomMembership(
                server_name=server_name,
                accounts=store,
                joins=self.room_joins,
                directory=self.room_directory,
                events=self.event_creator,
                state=self.storage,
            ),
        )
        self._user_redactions = UserRedactions(
            server_name=server_name,
            store=self.storage.admin_redactions,
            state=self.storage,
            events=self.event_creator,
            accounts=store,
            # Jobs a stop left unfinished are the main process's to resume.
            resume=isinstance(self.storage.writer, StorageActor),
        )
        add_admin_redaction_routes(router, auth=self.auth, redactions=self._user_redactions)
        add_admin_room_messages_route(
            router,
            auth=self.auth,
            rooms=rooms,
            messages=RoomMessages(self.storage.sync, backfill=self._backfiller),
        )
        reports = AdminReports(server_name=server_name, store=store)
        add_admin_report_routes(router, auth=self.auth, reports=reports)
        federation = AdminFederation(
            store=self.storage.federation_admin, wake=self._wake_reset_destination
        )
        add_admin_federation_routes(router, auth=self.auth, federation=federation)
        media = AdminMedia(
            server_name=server_name,
            store=self.storage.media_admin,
            media=self.storage.media,
            deleter=_built(self._media_deleter, "media_deleter"),
        )
        add_admin_media_routes(router, auth=self.auth, media=media)
        add_admin_registration_token_routes(router, auth=self.auth, tokens=self.registration_tokens)
        add_admin_server_notice_routes(
            router,
            auth=self.auth,
            notices=self._server_notices,
            transactions=ClientTransactions(
                self.storage.client_transactions,
                keep_ms=_housekeeping_ages(self.config).client_transaction_ms,
            ),
        )

    def _guest_eviction(self) -> GuestEviction:
        self.guest_eviction = GuestEviction(
            self.storage.guests, self.room_leaves, self.stream_notifier
        )
        return self.guest_eviction

    async def _run_push_sender(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await self.push_sender.run(task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                await self._push_gateway.aclose()

    async def _run_appservice_sender(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await self.appservice_sender.run(task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                await self._appservice_client.aclose()

    def _components(self) -> list[_Component]:
        """The long-lived parts in the order they start; they stop in reverse."""
        components = [
            _Component("storage", self.storage.run),
            *(
                [_Component("signature process", self.signature_process.run)]
                if self.signature_process is not None
                else []
            ),
            _Component("federation client", self.federation_client.run),
            _Component("federation sender", self.federation_sender.run),
            *(
                [_Component("federation queue", self._pdu_queue.run)]
                if self._pdu_queue is not None
                else []
            ),
            *(
                [_Component("servers heard from", self._heard_relay.run)]
                if self._heard_relay is not None
                else []
            ),
            _Component("typing expiry", self.typing_notices.run),
            _Component("presence lapses", self.presence.run),
            _Component("push sender", self._run_push_sender),
            _Component("media retention", self.media_retention.run),
            *(
                [_Component("housekeeping", self.housekeeping.run)]
                if self.config.housekeeping.enabled
                else []
            ),
            _Component("search index scrub", self.search_scrubber.run),
            _Component("application service sender", self._run_appservice_sender),
            *(
                [_Component("guest evictions", self._guest_eviction().run)]
                if self.config.registration.allow_guest_access
                else []
            ),
            *(
                [_Component("server notices user", self._server_notices.run)]
                if self._server_notices is not None
                else []
            ),
            _Component(
                "admin redaction jobs", _built(self._user_redactions, "user_redactions").run
            ),
            # After what it reads and writes through, before the listeners:
            # the rooms left partial are resumed before anything new arrives.
            _Component("un-partial-state task", self.unpartial_stater.run),
        ]
        if self._stream_source is not None:
            # Before the listeners: no worker's write goes untold.
            components.append(
                _Component("replicated writes' wake-ups", self._stream_source.follow_writes)
            )
        components.extend(
            _Component(
                f"{config.type} listener on {listener.host} port {config.port}", listener.run
            )
            for config, listener in self._listeners
        )
        return components


@asynccontextmanager
async def open_homeserver(config: Config | None = None) -> AsyncIterator[HomeServer]:
    """Run a homeserver for the duration of an ``async with`` block.

    The block starts once the server is ready (its ports listening, see
    :attr:`HomeServer.federation_port`); leaving it stops the server and
    waits until every task and socket is gone. A problem at start is raised
    from the ``async with`` as itself; an exception raised in the block
    comes out as itself too, unless the server also failed.
    """
    async with open_server(HomeServer(config)) as server:
        yield server


@asynccontextmanager
async def open_server(server: _S) -> AsyncIterator[_S]:
    """Run ``server`` (a :class:`HomeServer` not yet started, or a worker)
    for the duration of an ``async with`` block, as :func:`open_homeserver` does.
    """
    failure: Exception | None = None
    raised: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(server.run)
            except Exception as exc:
                failure = exc
            else:
                try:
                    yield server
                except BaseException as exc:
                    raised = exc
                    raise
                finally:
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if raised is not None and len(group.exceptions) == 1 and group.exceptions[0] is raised:
            raise raised from None
        raise
    if failure is not None:
        raise failure


def _checked(config: Config) -> Config:
    # A Config built with keywords skips the type and range checks that
    # loading applies (msgspec checks those when decoding, not in
    # __init__), so it is checked again the way a file would be.
    return Config.from_mapping(msgspec.to_builtins(config, enc_hook=_encode_path))


def _encode_path(obj: object) -> object:
    if isinstance(obj, Path):
        return str(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _make_private_directory(path: Path) -> None:
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(
                f"the data directory {path} exists and is not a directory"
            ) from None
        return
    # mkdir's mode is reduced by the umask; set it outright. An existing
    # directory keeps the mode its operator gave it.
    path.chmod(0o700)


def _federation_rate_limiter(config: Config) -> FederationRateLimiter | None:
    """Limits on each other server's requests, unless rate limits are off."""
    limits = config.ratelimit
    if not (limits.enabled and limits.federation.enabled):
        return None
    return FederationRateLimiter.from_config(limits.federation)


def _register_by_email(config: Config) -> bool:
    """Whether registering with a validated e-mail address is offered: with
    mail, open registration, and no registration tokens (whose flows
    have no e-mail stage)."""
    registration = config.registration
    return config.email is not None and registration.enabled and not registration.requires_token


def _email_threepids(config: Config, storage: Storage, accounts: Accounts) -> Threepids:
    """E-mail addresses on accounts, validated by mail through ``[email]``'s relay."""
    email = config.email
    assert email is not None
    base_url = email.client_base_url or config.well_known.client_base_url
    assert base_url is not None  # the configuration checks it
    try:
        context = ssl.create_default_context(
            cafile=None if email.ca_file is None else str(email.ca_file)
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("email.ca_file", f"cannot read CA certificates: {exc}") from None
    mailer = SmtpMailer(
        SmtpSettings(
            host=email.smtp_host,
            port=email.smtp_port,
            user=email.smtp_user,
            password=email.smtp_pass,
            starttls_required=email.require_transport_security,
            implicit_tls=email.force_tls,
            ssl_context=context,
            timeout_seconds=email.smtp_timeout_seconds,
        )
    )
    validation = EmailValidation(
        storage.threepids,
        mailer,
        server_name=config.server_name,
        base_url=base_url,
        notif_from=email.notif_from,
        app_name=email.app_name,
        token_lifetime_ms=email.validation_token_lifetime_seconds * 1000,
    )
    return Threepids(storage.threepids, validation, accounts)


def _sso_login_tokens(sso: SsoProviders | None) -> LoginTokens | None:
    """The login tokens single sign-on hands out, which ``/login`` takes."""
    return None if sso is None else sso.login_tokens


def _housekeeping_ages(config: Config) -> HousekeepingAges:
    """How long records are kept, as configured."""
    ages = config.housekeeping
    return HousekeepingAges(
        federation_transaction_ms=ages.federation_transaction_hours * HOUR_MS,
        client_transaction_ms=ages.client_transaction_days * 24 * HOUR_MS,
        redacted_content_ms=(
            ages.redaction_retention_days * 24 * HOUR_MS if ages.prune_redacted_content else None
        ),
    )


def _built(part: _T | None, name: str) -> _T:
    if part is None:
        raise RuntimeError(f"the homeserver has not started: it has no {name} yet")
    return part


def _freeze_start_up_objects() -> None:
    """Leave what exists once a server has started out of the cyclic
    collector's full passes, once per process (:func:`gc.freeze`).

    Modules, classes and functions loaded by then live as long as the
    process, yet each full collection walked all of them again: some
    70,000 objects, about 40 ms a pass on a two-core machine, one pass
    every 40 transactions of 50 PDUs or so while ingesting, the loop
    stalled throughout. Frozen objects are still freed when nothing refers
    to them; only cycles among them are never collected, so garbage is
    collected first. A process that froze its objects already is left as
    it is.
    """
    if gc.get_freeze_count():
        return
    gc.collect()
    gc.freeze()


def _bound_port(listener: HttpListener) -> int:
    assert listener.port is not None  # set before the listener reports started
    return listener.port
