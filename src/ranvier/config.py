"""The homeserver's configuration: typed, loaded from TOML, safe by default.

Every setting has a default that is safe to run with: a server named
``localhost:8448`` keeping its data under ``./ranvier-data``, listening on
loopback only, verifying other servers' certificates. So
``Config.default()`` (or an empty TOML file) starts a working server that
nothing outside the machine can reach, and an operator writes only what
differs.

A bad file fails when it is loaded, not later when some component first
reads a setting, and the error names the key as it appears in the file
(``listeners[0].port: expected int, got str``). Unknown keys are errors too:
a misspelt key that was silently ignored would leave its default in place,
which the operator would not notice until it mattered.

Paths are used as written; a relative path is relative to the working
directory of the process, like the default ``ranvier-data``. The files that
live in the data directory unless configured elsewhere (signing key, TLS
certificate and key, database) are listed, resolved, by :attr:`Config.paths`.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
import msgspec.inspect

from ranvier.protocol.ip_ranges import DEFAULT_URL_PREVIEW_DENYLIST, parse_network
from ranvier.protocol.x_matrix import split_server_name

__all__ = [
    "Config",
    "ConfigError",
    "DataPaths",
    "DatabaseConfig",
    "EmailConfig",
    "FederationConfig",
    "FederationRateConfig",
    "ListenerConfig",
    "MediaConfig",
    "PushConfig",
    "RateConfig",
    "RateLimitConfig",
    "RegistrationConfig",
    "ReplicationConfig",
    "ServerNoticesConfig",
    "SupportContact",
    "TlsConfig",
    "UploadLimit",
    "WellKnownConfig",
    "WorkerConfig",
    "load_config",
]

_MIB: Final = 1024 * 1024
_DAY_SECONDS: Final = 24 * 60 * 60
_LOCALPART: Final = re.compile(r"[a-z0-9._=/+-]+")


class ConfigError(ValueError):
    """A configuration that cannot be used.

    ``key`` is the setting's path as written in TOML (``database.synchronous``,
    ``listeners[1].host``), or None when the problem is not one key's (a file
    that is not TOML at all). ``source`` names the file, when there is one.
    It is a ValueError, not a MatrixError: it is for the operator, and no
    request is ever answered with it.
    """

    def __init__(self, key: str | None, problem: str, *, source: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        where = "" if source is None else f"{source}: "
        super().__init__(f"{where}{problem}" if key is None else f"{where}{key}: {problem}")


class ListenerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One socket the server listens on, and what it serves there."""

    #: What is served: the federation API (with ``/_matrix/key``), the
    #: client-server API, or ``metrics``: ``GET /metrics`` for Prometheus
    #: (opt-in; it names the rooms being resynced, so keep it on loopback
    #: or a private network), or ``replication``: workers' writes to this
    #: process's storage actor (keep it on loopback or a private network;
    #: it needs ``[replication] shared_secret``).
    type: Literal["federation", "client", "metrics", "replication"]
    #: An IP address: a host name could resolve to more than one, or change.
    host: str = "127.0.0.1"
    #: 0 asks the system for a free port; the listener reports the real one.
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    #: None means the usual for the type: TLS for federation, which other
    #: servers reach directly, plain HTTP for the client API, which usually
    #: sits behind a reverse proxy, and for metrics, which a scraper nearby
    #: reads.
    tls: bool | None = None

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise ConfigError("host", f"expected an IP address, got {self.host!r}") from None

    @property
    def uses_tls(self) -> bool:
        """Whether connections to this listener are TLS."""
        return self.type == "federation" if self.tls is None else self.tls


class TlsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The certificate the federation listener presents.

    When both paths are left unset and the files do not exist, a self-signed
    certificate is generated into the data directory: enough for loopback
    and tests, though remote servers that verify certificates will refuse it.
    """

    #: PEM certificate chain; None means ``<data_dir>/tls.crt``.
    certificate_path: Path | None = None
    #: PEM private key; None means ``<data_dir>/tls.key``.
    private_key_path: Path | None = None


class DatabaseConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The SQLite database."""

    #: None means ``<data_dir>/homeserver.db``.
    path: Path | None = None
    #: SQLite's ``PRAGMA synchronous``. FULL by default: an event the server
    #: acknowledged must survive a power cut.
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"


class FederationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Talking to other homeservers."""

    #: Check remote servers' TLS certificates. Turn off only for tests.
    verify_certificates: bool = True
    #: Trust these CA certificates (PEM) instead of the system's, for
    #: private federations and tests.
    ca_file: Path | None = None
    #: How long other servers may cache our published keys
    #: (``valid_until_ts`` is now plus this).
    key_validity_seconds: Annotated[int, msgspec.Meta(gt=0)] = _DAY_SECONDS
    #: How long an outgoing request may take, from connecting to the end of
    #: the response.
    request_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    #: The largest request body accepted. A transaction is at most 50 PDUs of
    #: 64 KiB and 100 EDUs, so this leaves room.
    max_request_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 16 * _MIB
    #: How long to leave a server alone after it first fails to take a
    #: transaction; each further failure in a row doubles the wait, up to a
    #: day. A server that sends us a signed request is tried again at once.
    destination_retry_seconds: Annotated[float, msgspec.Meta(gt=0, le=_DAY_SECONDS)] = 5.0
    #: Check the signatures of big batches of events (a full transaction, a
    #: room's state) in a small process of their own, started when first
    #: needed, so they do not wait on the event loop for the GIL; off, they
    #: are checked in threads (see :mod:`ranvier.signature_process`).
    signature_process: bool = True
    #: Show other servers our users' device display names, in
    #: ``/user/devices``, ``/user/keys/query`` and ``m.device_list_update``
    #: (Synapse's key of the same name). Off by default: a name such as
    #: "Alice's work laptop" tells anyone sharing a room more than the keys
    #: they need, and users here see their peers' names all the same.
    allow_device_name_lookup_over_federation: bool = False


class RateConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One rate limit: ``burst`` actions at once, refilled at ``per_second``."""

    per_second: Annotated[float, msgspec.Meta(gt=0)]
    burst: Annotated[int, msgspec.Meta(ge=1)]


class FederationRateConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Limits on what one other server may ask of this one at a time, with
    Synapse's ``rc_federation`` names and defaults (times in milliseconds;
    see :mod:`ranvier.federation.transport.ratelimit`).
    """

    enabled: bool = True
    #: How far back requests are counted.
    window_size: Annotated[int, msgspec.Meta(ge=1)] = 1000
    #: Requests in the window beyond this many are each held ``sleep_delay``.
    sleep_limit: Annotated[int, msgspec.Meta(ge=1)] = 10
    sleep_delay: Annotated[int, msgspec.Meta(ge=0)] = 500
    #: Requests held at once (delayed or waiting their turn) beyond this many
    #: are refused with 429.
    reject_limit: Annotated[int, msgspec.Meta(ge=1)] = 50
    #: Requests of one server served at the same time.
    concurrent: Annotated[int, msgspec.Meta(ge=1)] = 3
    #: Servers never limited (another homeserver of the same operator).
    exempt_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for index, origin in enumerate(self.exempt_origins):
            try:
                split_server_name(origin)
            except ValueError as exc:
                raise ConfigError(f"exempt_origins[{index}]", str(exc)) from None


class RateLimitConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Rate limits on the client-server API (see :mod:`ranvier.api.ratelimit`).

    Events (messages and state), room creation, invites, joins and reports
    are counted per user, admins exempt; logins and registrations per client
    address. docs/decisions.md says why the defaults are what they are.
    """

    enabled: bool = True
    #: Take the client's address from the last ``X-Forwarded-For`` entry.
    #: Only behind a reverse proxy that sets it: otherwise any client can
    #: claim any address and escape the per-address limits.
    trust_x_forwarded_for: bool = False
    message: RateConfig = RateConfig(per_second=1.0, burst=20)
    room_creation: RateConfig = RateConfig(per_second=0.05, burst=10)
    invite: RateConfig = RateConfig(per_second=0.3, burst=10)
    join: RateConfig = RateConfig(per_second=0.1, burst=10)
    report: RateConfig = RateConfig(per_second=0.1, burst=10)
    login: RateConfig = RateConfig(per_second=0.003, burst=5)
    registration: RateConfig = RateConfig(per_second=0.17, burst=3)
    #: Mails asked for by ``requestToken``, per client address and per
    #: e-mail address (Synapse's ``rc_3pid_validation``).
    threepid_validation: RateConfig = RateConfig(per_second=0.003, burst=5)
    #: Uploads and ``create`` per user (Synapse's ``rc_media_create``).
    media_create: RateConfig = RateConfig(per_second=10.0, burst=50)
    #: Requests from other servers, per server (off, like the rest, when
    #: ``enabled`` is false).
    federation: FederationRateConfig = FederationRateConfig()
    #: The pause, in seconds, before each answer faked for a shadow-banned
    #: account (:mod:`ranvier.core.shadow_bans`), drawn evenly from this
    #: range: Synapse's 1 to 10 s. It slows the account's requests as a
    #: limit would, so it is off, like the rest, when ``enabled`` is false.
    shadow_ban_delay_seconds: tuple[float, float] = (1.0, 10.0)

    def __post_init__(self) -> None:
        shortest, longest = self.shadow_ban_delay_seconds
        if not 0 <= shortest <= longest:
            raise ConfigError(
                "shadow_ban_delay_seconds",
                "must be [shortest, longest] with 0 <= shortest <= longest",
            )


class RegistrationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Who may make accounts.

    ``ranvier register-user`` makes accounts whatever is set here.
    """

    #: Let anyone make an account through ``POST /_matrix/client/v3/register``.
    #: Off by default: an open server on the internet fills with spam accounts.
    enabled: bool = False
    #: With ``enabled``, registering takes a registration token an admin
    #: made (``/_synapse/admin/v1/registration_tokens``, ``ranvier
    #: registration-token``): invite-only registration. Without ``enabled``
    #: registration stays closed whatever tokens exist.
    requires_token: bool = False
    #: Let anyone make a guest account (``POST /register?kind=guest``, no
    #: credentials): a user who may call only the spec's guest subset of the
    #: client API and join only rooms whose ``m.room.guest_access`` is
    #: ``can_join`` (:mod:`ranvier.core.guests`). Off by default, as in
    #: Synapse (``allow_guest_access``); independent of ``enabled``, which
    #: upgrading a guest to a full account needs.
    allow_guest_access: bool = False
    #: Serve Synapse's shared-secret registration
    #: (``/_synapse/admin/v1/register``, used by ``register_new_matrix_user``)
    #: with this secret. Whoever knows it can make admin accounts. None (the
    #: default) leaves the endpoint out.
    shared_secret: str | None = None
    #: argon2id's passes over memory for each new password hash. The
    #: defaults (argon2-cffi's, RFC 9106's low-memory choice) cost about
    #: 0.1-0.2 s of CPU a hash, which is the point: a stolen database is
    #: slow to guess from. Lower them only where that does not matter (tests).
    password_hash_time_cost: Annotated[int, msgspec.Meta(ge=1)] = 3
    #: argon2id's memory for each new password hash, in KiB.
    password_hash_memory_kib: Annotated[int, msgspec.Meta(ge=8)] = 65536
    #: argon2id's lanes for each new password hash; the memory must be at
    #: least 8 KiB a lane.
    password_hash_parallelism: Annotated[int, msgspec.Meta(ge=1)] = 4
    #: How long an access token lasts when the client asked for a refresh
    #: token with it (``refresh_token: true``); access tokens of clients that
    #: did not never expire.
    access_token_lifetime_ms: Annotated[int, msgspec.Meta(ge=1000)] = 300_000
    #: Let users make single-use login tokens for another device
    #: (``POST /_matrix/client/v1/login/get_token``, ``m.login.token``).
    login_token_enabled: bool = False
    #: How long a login token lasts.
    login_token_lifetime_ms: Annotated[int, msgspec.Meta(ge=1000)] = 120_000

    def __post_init__(self) -> None:
        if self.shared_secret is not None and not self.shared_secret:
            raise ConfigError("shared_secret", "must not be empty (leave it out to turn it off)")
        if self.password_hash_memory_kib < 8 * self.password_hash_parallelism:
            raise ConfigError(
                "password_hash_memory_kib",
                f"must be at least 8 KiB a lane ({8 * self.password_hash_parallelism}"
                f" for password_hash_parallelism = {self.password_hash_parallelism})",
            )


class ReplicationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Workers and the main process: how workers' writes reach the storage actor."""

    #: Sent by workers as ``Authorization: Bearer`` on every replication
    #: request. Required when a ``replication`` listener is configured.
    shared_secret: str | None = None
    #: How long a worker keeps retrying a write the main process does not
    #: answer (connection refused, 5xx) before the write fails.
    retry_for_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0

    def __post_init__(self) -> None:
        if self.shared_secret is not None and not self.shared_secret:
            raise ConfigError("shared_secret", "must not be empty")


class WorkerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A worker process (``ranvier worker``): where its main process is.

    A worker shares the main process's database and signing key (point
    ``database.path`` and ``signing_key_path`` at them, or use the same
    ``data_dir``) and sends every write to the main process's
    ``replication`` listener with ``[replication] shared_secret``.
    """

    #: The main process's replication listener, such as
    #: ``http://127.0.0.1:9093``. Required to run a worker.
    main_replication_url: str | None = None
    #: Trust these CA certificates (PEM) for a replication listener on TLS.
    replication_ca_file: Path | None = None
    #: A federation_sender worker delivers events to other servers: every
    #: other process only notes them in the database for it. Set it in the
    #: main process's and every worker's configuration alike.
    federation_sender: bool = False

    def __post_init__(self) -> None:
        url = self.main_replication_url
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError(
                "main_replication_url", f"expected an http:// or https:// URL, got {url!r}"
            )


class UploadLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How much one local user may upload within a sliding window of time."""

    #: The window's length, ending at each upload.
    period_seconds: Annotated[int, msgspec.Meta(gt=0)]
    #: The most that user's uploads within the window may add up to.
    max_bytes: Annotated[int, msgspec.Meta(gt=0)]


class MediaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The content repository: files users upload, and other servers' media
    fetched for them.

    Files live under ``store_path``, their descriptions in the database.
    Workers that serve the client API write and read the same files: give
    every process the same ``store_path``, as they share the database.
    """

    #: The largest upload accepted (413 ``M_TOO_LARGE`` above it), and the
    #: largest piece of media fetched from another server (502 above it).
    #: Clients learn it from ``/media/config``.
    max_upload_bytes: Annotated[int, msgspec.Meta(gt=0)] = 50 * _MIB
    #: Caps on what one user uploads over time (``[{ period_seconds = 3600,
    #: max_bytes = 104857600 }, ...]``), each held on its own: an upload
    #: that would take a user past any is refused (403 ``M_FORBIDDEN``).
    #: Other servers' media, thumbnails and URL preview images are neither
    #: refused nor counted. None by default.
    upload_limits: tuple[UploadLimit, ...] = ()
    #: Where media files are kept; None means ``<data_dir>/media``.
    store_path: Path | None = None
    #: Images with more pixels than this are not thumbnailed (413
    #: ``M_TOO_LARGE``): decoding one takes memory in proportion.
    max_thumbnail_source_pixels: Annotated[int, msgspec.Meta(gt=0)] = 32_000_000
    #: Serve URL previews (``/media/preview_url``): the server then fetches
    #: the pages users' messages link to, within the limits below.
    url_preview_enabled: bool = True
    #: Addresses (CIDR) previews never connect to; every address a host
    #: resolves to is checked, and redirects alike. The default denies
    #: loopback, private, link-local, CGNAT, multicast and the other special
    #: ranges, so that previews are no way into this server's network.
    url_preview_ip_range_denylist: tuple[str, ...] = DEFAULT_URL_PREVIEW_DENYLIST
    #: Exceptions to the denylist (CIDR), such as one host on a private network.
    url_preview_ip_range_allowlist: tuple[str, ...] = ()
    #: The most a preview reads of a page or an image (502 ``M_TOO_LARGE``).
    url_preview_max_bytes: Annotated[int, msgspec.Meta(gt=0)] = 10 * _MIB
    #: How long fetching one page or image for a preview may take.
    url_preview_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    #: Delete media uploaded here that nobody has downloaded (or had a
    #: thumbnail of) for this many days: its file, thumbnails and rows.
    #: None keeps it forever. Quarantined and protected media is kept.
    local_media_lifetime_days: Annotated[int, msgspec.Meta(gt=0)] | None = None
    #: The same for other servers' media kept here; it is fetched again
    #: when asked for after.
    remote_media_lifetime_days: Annotated[int, msgspec.Meta(gt=0)] | None = None

    def __post_init__(self) -> None:
        for key in ("url_preview_ip_range_denylist", "url_preview_ip_range_allowlist"):
            for index, entry in enumerate(getattr(self, key)):
                try:
                    parse_network(entry)
                except ValueError as exc:
                    raise ConfigError(f"{key}[{index}]", str(exc)) from None


class PushConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Push notifications, sent to the push gateways users' pushers name."""

    #: Trust these CA certificates (PEM) for gateways instead of the system's.
    ca_file: Path | None = None
    #: Let pushers name plain-HTTP gateways (one on a private network); the
    #: spec asks for HTTPS.
    allow_http: bool = False
    #: How long a request to a gateway may take.
    request_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0


class ServerNoticesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Server notices: messages from the server's operators to a user, sent
    by a system user into a room of the user's own
    (:mod:`ranvier.core.server_notices`)."""

    #: The system user's localpart; None (the default) turns notices off.
    #: The account is made at start, without a password, so nobody logs in
    #: as it: choose a name no one has taken.
    system_mxid_localpart: str | None = None
    system_mxid_display_name: str | None = None
    #: An ``mxc://`` URL.
    system_mxid_avatar_url: str | None = None
    #: The name each user's notices room is given.
    room_name: str = "Server Notices"

    def __post_init__(self) -> None:
        localpart = self.system_mxid_localpart
        if localpart is not None and not _LOCALPART.fullmatch(localpart):
            raise ConfigError(
                "system_mxid_localpart", "a localpart holds only a-z, 0-9 and . _ = - / +"
            )
        avatar = self.system_mxid_avatar_url
        if avatar is not None and not avatar.startswith("mxc://"):
            raise ConfigError("system_mxid_avatar_url", "expected an mxc:// URL")


_NAMESPACED: Final = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+")


def _check_http_url(key: str, value: str | None) -> None:
    if value is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ConfigError(key, f"expected an http:// or https:// URL, got {value!r}")


class SupportContact(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One way to reach the server's administrators, as
    ``/.well-known/matrix/support`` lists it."""

    #: ``m.role.admin`` (anything), ``m.role.security`` (sensitive reports),
    #: or a namespaced role of the operator's own.
    role: str
    matrix_id: str | None = None
    email_address: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ("m.role.admin", "m.role.security") and not _NAMESPACED.fullmatch(
            self.role
        ):
            raise ConfigError("role", "expected m.role.admin, m.role.security or a namespaced role")
        if self.matrix_id is None and self.email_address is None:
            raise ConfigError("matrix_id", "a contact needs a matrix_id or an email_address")
        if self.matrix_id is not None and not re.fullmatch(r"@[^:\s]+:\S+", self.matrix_id):
            raise ConfigError("matrix_id", f"{self.matrix_id!r} is not a user ID")
        if self.email_address is not None and not re.fullmatch(
            r"[^@\s]+@[^@\s]+", self.email_address
        ):
            raise ConfigError("email_address", f"{self.email_address!r} is not an email address")


class WellKnownConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the ``/.well-known/matrix/*`` files say, for a server that serves
    them itself rather than from the web server of its domain.

    Each file answers 404 while what it needs is unset, as the spec asks
    of a domain with nothing to say: a wrong answer would send clients or
    servers somewhere else, a missing one only to their defaults.
    """

    #: ``m.homeserver.base_url`` of ``/.well-known/matrix/client``: the URL
    #: clients reach this server's client API at.
    client_base_url: str | None = None
    #: ``m.identity_server.base_url`` there, if the operator names one.
    identity_server_base_url: str | None = None
    #: More keys for the client file (``org.matrix.msc4143.rtc_foci``,
    #: ``m.tile_server``): namespaced, and never the two above.
    client_extra: dict[str, Any] = msgspec.field(default_factory=dict)
    #: ``m.server`` of ``/.well-known/matrix/server``: ``host[:port]`` where
    #: other servers reach this one's federation API, when that is not the
    #: server name's host on port 8448.
    server: str | None = None
    #: ``/.well-known/matrix/support``: a page for users, and contacts.
    support_page: str | None = None
    support_contacts: tuple[SupportContact, ...] = ()

    def __post_init__(self) -> None:
        _check_http_url("client_base_url", self.client_base_url)
        _check_http_url("identity_server_base_url", self.identity_server_base_url)
        _check_http_url("support_page", self.support_page)
        for key in self.client_extra:
            if key.startswith("m.") or not _NAMESPACED.fullmatch(key):
                raise ConfigError(
                    f"client_extra.{key}",
                    "extra keys must be namespaced like org.example.name, and not m.*",
                )
        if self.client_extra and self.client_base_url is None:
            raise ConfigError("client_extra", "needs client_base_url: the file must name it")
        if self.server is not None:
            try:
                split_server_name(self.server)
            except ValueError as exc:
                raise ConfigError("server", str(exc)) from None


class HousekeepingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Deleting records that have served their purpose
    (:mod:`ranvier.core.housekeeping`), run by the main process."""

    #: Run the task. Off, nothing is pruned but what requests themselves
    #: clear; test homeservers turn it off, as their clocks are the tests'.
    enabled: bool = True
    #: How often a pass runs (one runs at start too).
    interval_seconds: Annotated[int, msgspec.Meta(ge=60)] = 3600
    #: How long another server's transaction is remembered, so that it is
    #: answered as before when sent again rather than handled twice.
    federation_transaction_hours: Annotated[int, msgspec.Meta(ge=1)] = 24
    #: How long a client's transaction ID (a send, a redaction, a to-device
    #: message) is remembered, so that a retry after a restart or a lost
    #: connection is not sent twice. Those of a deleted device go at once.
    client_transaction_days: Annotated[int, msgspec.Meta(ge=1)] = 7
    #: Replace a redacted event's original content by its redacted form
    #: once ``redaction_retention_days`` have passed; off keeps it for ever.
    prune_redacted_content: bool = True
    #: How long a redacted event's original content is kept after its
    #: redaction arrives: for admins reviewing reports, and while the
    #: redaction's verdict may still change. Synapse's
    #: ``redaction_retention_period``, with its default.
    redaction_retention_days: Annotated[int, msgspec.Meta(ge=0)] = 7
    #: The most rows one write deletes, so the writer is never held long.
    batch_rows: Annotated[int, msgspec.Meta(ge=100)] = 1000


def _default_listeners() -> tuple[ListenerConfig, ...]:
    return (
        ListenerConfig(type="federation", host="127.0.0.1", port=8448),
        ListenerConfig(type="client", host="127.0.0.1", port=8008),
    )


@dataclass(frozen=True, slots=True)
class DataPaths:
    """Where the server's files are, with the data-directory defaults applied."""

    signing_key: Path
    tls_certificate: Path
    tls_private_key: Path
    database: Path


class OidcProviderConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One OpenID Connect identity provider users log in through
    (``m.login.sso``, :mod:`ranvier.core.sso`); ``[[oidc_providers]]``."""

    #: The ``id`` clients see in ``identity_providers`` and put in
    #: ``/login/sso/redirect/{idpId}``.
    idp_id: str
    #: The name clients show on the provider's button.
    idp_name: str
    #: The provider's issuer URL: its discovery document is
    #: ``{issuer}/.well-known/openid-configuration``.
    issuer: str
    client_id: str
    client_secret: str
    #: How the client secret reaches the token endpoint.
    client_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    scopes: tuple[str, ...] = ("openid", "profile")
    #: The claim a new user's localpart is made from.
    localpart_claim: str = "preferred_username"
    #: The claim a new user's display name is taken from, when it is a
    #: string of at most 256 characters once trimmed (else the user has none).
    displayname_claim: str = "name"
    #: Where the claims come from. "auto": the ID token's, and the
    #: provider's userinfo endpoint is asked too when the token answer has
    #: no ID token or a new user's ID token lacks ``localpart_claim``;
    #: "userinfo_endpoint": the userinfo endpoint's answer is asked on
    #: every login and its claims win over the ID token's.
    user_profile_method: Literal["auto", "userinfo_endpoint"] = "auto"
    #: Whether a login whose localpart names an account that exists (and
    #: is not yet this subject's) logs in as that account; by default it is
    #: refused, so that the provider cannot take over local accounts.
    allow_existing_users: bool = False
    #: CA certificates (PEM) the provider's certificate must chain to;
    #: None means the system's.
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._~-]{1,255}", self.idp_id):
            raise ConfigError("idp_id", "may hold only A-Z a-z 0-9 . _ ~ - (1 to 255)")
        if not re.fullmatch(r"https://[^\s?#]+", self.issuer):
            raise ConfigError("issuer", f"expected an https:// URL, got {self.issuer!r}")
        if "openid" not in self.scopes:
            raise ConfigError("scopes", "must include 'openid'")
        if self.user_profile_method not in ("auto", "userinfo_endpoint"):
            raise ConfigError(
                "user_profile_method",
                f"expected 'auto' or 'userinfo_endpoint', got {self.user_profile_method!r}",
            )


class EmailConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Mail the server sends itself, through the operator's SMTP server:
    validating the e-mail addresses users add to their accounts, and
    password resets (:mod:`ranvier.core.email_validation`); ``[email]``.
    Without the section no mail is sent and no address is kept."""

    smtp_host: str
    smtp_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 25
    #: Log in to the SMTP server (AUTH PLAIN or LOGIN) as this user.
    smtp_user: str | None = None
    smtp_pass: str | None = None
    #: Send nothing unless the server offers STARTTLS. It is used whenever
    #: offered either way, and its certificate checked.
    require_transport_security: bool = False
    #: Speak TLS from the first byte (port 465) instead of upgrading with STARTTLS.
    force_tls: bool = False
    #: CA certificates (PEM) the SMTP server's certificate must chain to;
    #: None means the system's.
    ca_file: Path | None = None
    #: The mails' From: ``Your Server <noreply@example.org>``.
    notif_from: str
    #: How the mails name the service (their subjects and first lines).
    app_name: str = "Matrix"
    #: Where the links in mails and the ``submit_url`` given to clients
    #: point: this server's client API as users reach it. None means
    #: ``[well_known] client_base_url``.
    client_base_url: str | None = None
    #: How long a validation token sent by mail may be used.
    validation_token_lifetime_seconds: Annotated[int, msgspec.Meta(ge=60)] = 3600
    #: How long talking to the SMTP server may take, all of one mail.
    smtp_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30.0

    def __post_init__(self) -> None:
        if not self.smtp_host.strip():
            raise ConfigError("smtp_host", "must not be empty")
        if self.smtp_pass is not None and self.smtp_user is None:
            raise ConfigError("smtp_pass", "needs smtp_user")
        _name, address = email.utils.parseaddr(self.notif_from)
        local, at, domain = address.rpartition("@")
        if not (local and at and domain) or any(ch.isspace() for ch in address):
            raise ConfigError(
                "notif_from",
                f"expected an address like 'Name <user@example.org>', got {self.notif_from!r}",
            )
        _check_http_url("client_base_url", self.client_base_url)


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The homeserver's configuration. Build it with :meth:`default`,
    :meth:`from_toml` or :func:`load_config`, or directly with keywords."""

    #: The name other servers know this one by; it is in every ID the
    #: server creates, so it cannot change once the server has federated.
    server_name: str = "localhost:8448"
    data_dir: Path = Path("ranvier-data")
    #: Synapse's key-file format; None means ``<data_dir>/signing.key``,
    #: generated if missing.
    signing_key_path: Path | None = None
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)
    listeners: tuple[ListenerConfig, ...] = msgspec.field(default_factory=_default_listeners)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    federation: FederationConfig = msgspec.field(default_factory=FederationConfig)
    ratelimit: RateLimitConfig = msgspec.field(default_factory=RateLimitConfig)
    registration: RegistrationConfig = msgspec.field(default_factory=RegistrationConfig)
    replication: ReplicationConfig = msgspec.field(default_factory=ReplicationConfig)
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    media: MediaConfig = msgspec.field(default_factory=MediaConfig)
    push: PushConfig = msgspec.field(default_factory=PushConfig)
    server_notices: ServerNoticesConfig = msgspec.field(default_factory=ServerNoticesConfig)
    housekeeping: HousekeepingConfig = msgspec.field(default_factory=HousekeepingConfig)
    well_known: WellKnownConfig = msgspec.field(default_factory=WellKnownConfig)
    #: Registration files (YAML) of application services: bridges and bots
    #: that own namespaces of users and aliases (:mod:`ranvier.core.appservices`).
    #: Read at start; a bad file stops it.
    app_service_config_files: tuple[Path, ...] = ()
    #: OpenID Connect identity providers for single sign-on; the callback
    #: URL given to them is built on ``[well_known] client_base_url``.
    oidc_providers: tuple[OidcProviderConfig, ...] = ()
    #: Mail for e-mail addresses and password resets; None sends none.
    email: EmailConfig | None = None

    def __post_init__(self) -> None:
        if (
            self.email is not None
            and self.email.client_base_url is None
            and self.well_known.client_base_url is None
        ):
            raise ConfigError(
                "email.client_base_url",
                "required with [email] unless [well_known] client_base_url is set:"
                " the links in mails are built on it",
            )
        if self.oidc_providers and self.well_known.client_base_url is None:
            raise ConfigError(
                "well_known.client_base_url",
                "required with oidc_providers: the providers' callback URL is built on it",
            )
        idp_ids = [provider.idp_id for provider in self.oidc_providers]
        if len(set(idp_ids)) != len(idp_ids):
            raise ConfigError("oidc_providers", "two providers have the same idp_id")
        try:
            split_server_name(self.server_name)
        except ValueError as exc:
            raise ConfigError("server_name", str(exc)) from None
        seen: dict[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], int] = {}
        for index, listener in enumerate(self.listeners):
            if listener.port == 0:
                continue
            address = (ipaddress.ip_address(listener.host), listener.port)
            if address in seen:
                raise ConfigError(
                    f"listeners[{index}]",
                    f"{listener.host} port {listener.port} is already used by"
                    f" listeners[{seen[address]}]",
                )
            seen[address] = index
        if self.replication.shared_secret is None and any(
            listener.type == "replication" for listener in self.listeners
        ):
            raise ConfigError(
                "replication.shared_secret", "required when a replication listener is configured"
            )

    @classmethod
    def default(cls) -> Config:
        """The configuration used when none is given."""
        return cls()

    @classmethod
    def from_toml(cls, text: str, *, source: str | None = None) -> Config:
        """Parse TOML text; raise :class:`ConfigError` naming the bad key.

        ``source`` names the text's origin (a file name) in error messages.
        """
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(None, f"not valid TOML: {exc}", source=source) from None
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str | None = None) -> Config:
        """Build a configuration from parsed TOML (or any dict shaped like it)."""
        try:
            return msgspec.convert(data, cls, dec_hook=_decode_path)
        except msgspec.ValidationError as exc:
            raise _config_error(exc, source) from None

    @property
    def paths(self) -> DataPaths:
        """The server's files, each where configured or in the data directory."""
        return DataPaths(
            signing_key=self.signing_key_path or self.data_dir / "signing.key",
            tls_certificate=self.tls.certificate_path or self.data_dir / "tls.crt",
            tls_private_key=self.tls.private_key_path or self.data_dir / "tls.key",
            database=self.database.path or self.data_dir / "homeserver.db",
        )

    @property
    def media_store(self) -> Path:
        """Where media files are kept: as configured, or in the data directory."""
        return self.media.store_path or self.data_dir / "media"


def load_config(path: str | Path) -> Config:
    """Read and check the TOML file at ``path``; raise :class:`ConfigError`."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(None, f"cannot read the file: {exc.strerror}", source=source) from None
    except UnicodeDecodeError:
        raise ConfigError(None, "the file is not UTF-8 text", source=source) from None
    return Config.from_toml(text, source=source)


def _decode_path(type_: type, obj: object) -> object:
    if type_ is Path:
        if isinstance(obj, str):
            return Path(obj)
        # A TypeError, so msgspec reports it with the key's path.
        raise TypeError(f"expected a path (str), got {_toml_type_name(obj)}")
    raise NotImplementedError(f"no decoder for {type_!r}")


def _toml_type_name(obj: object) -> str:
    names = {bool: "bool", int: "int", float: "float", dict: "table", list: "array"}
    return names.get(type(obj), type(obj).__name__)


# msgspec reports "<problem> - at `$.a.b[0]`", or just "<problem>" at the top.
_MSGSPEC_ERROR: Final = re.compile(r"(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_UNKNOWN_FIELD: Final = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`")
_MISSING_FIELD: Final = re.compile(r"Object missing required field `(?P<name>[^`]*)`")


def _config_error(exc: msgspec.ValidationError, source: str | None) -> ConfigError:
    match = _MSGSPEC_ERROR.fullmatch(str(exc))
    assert match is not None  # the pattern matches any text
    path = (match["path"] or "").removeprefix(".")
    cause = exc.__cause__
    if isinstance(cause, ConfigError):
        # Raised by a section's own checks, with the key relative to it.
        return ConfigError(_join(path, cause.key), cause.problem, source=source)
    problem = match["problem"]
    unknown = _UNKNOWN_FIELD.fullmatch(problem)
    if unknown:
        return ConfigError(_join(path, unknown["name"]), "unknown key", source=source)
    missing = _MISSING_FIELD.fullmatch(problem)
    if missing:
        return ConfigError(_join(path, missing["name"]), "required key is missing", source=source)
    if problem.startswith("Invalid enum value "):
        allowed = _literal_values(path)
        if allowed:
            shown = ", ".join(repr(value) for value in allowed)
            value = problem.removeprefix("Invalid enum value ")
            return ConfigError(
                path, f"invalid value {value}, expected one of {shown}", source=source
            )
    # msgspec speaks of JSON types; TOML calls objects tables.
    problem = problem.replace("`object`", "`table`").replace("`", "")
    problem = problem[:1].lower() + problem[1:]
    return ConfigError(path or None, problem, source=source)


def _literal_values(path: str) -> tuple[object, ...]:
    # The values a Literal-typed key allows, found by walking the Structs
    # along the key's path (list indexes dropped).
    info: msgspec.inspect.Type = msgspec.inspect.type_info(Config)
    for name in re.sub(r"\[\d+\]", "", path).split("."):
        while isinstance(info, msgspec.inspect.VarTupleType | msgspec.inspect.ListType):
            info = info.item_type
        if not isinstance(info, msgspec.inspect.StructType):
            return ()
        field = next((f for f in info.fields if f.encode_name == name), None)
        if field is None:
            return ()
        info = field.type
    return info.values if isinstance(info, msgspec.inspect.LiteralType) else ()


def _join(path: str, key: str | None) -> str | None:
    if not key:
        return path or None
    if not path:
        return key
    return path + key if key.startswith("[") else f"{path}.{key}"
