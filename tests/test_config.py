import json
from pathlib import Path

import pytest

from ranvier.config import (
    Config,
    ConfigError,
    DatabaseConfig,
    DataPaths,
    FederationConfig,
    ListenerConfig,
    RegistrationConfig,
    TlsConfig,
    UploadLimit,
    load_config,
)
from ranvier.server import HomeServer
from ranvier.signature_process import SignatureProcess

IDENTIFIERS = json.loads(
    (Path(__file__).parent / "data" / "spec-vectors" / "identifiers-and-limits.json").read_text(
        "utf-8"
    )
)

FULL_EXAMPLE = """
server_name = "matrix.example.org"
data_dir = "/var/lib/ranvier"
signing_key_path = "/etc/ranvier/signing.key"

[tls]
certificate_path = "/etc/ranvier/fullchain.pem"
private_key_path = "/etc/ranvier/privkey.pem"

[[listeners]]
type = "federation"
host = "::"
port = 8448

[[listeners]]
type = "federation"
host = "0.0.0.0"
port = 8448

[[listeners]]
type = "client"
host = "127.0.0.1"
port = 8008
tls = true

[database]
path = "/srv/ranvier.db"
synchronous = "NORMAL"

[federation]
verify_certificates = false
ca_file = "/etc/ranvier/ca.pem"
key_validity_seconds = 604800
request_timeout_seconds = 30
max_request_body_bytes = 1048576
"""


def test_defaults_are_safe() -> None:
    config = Config.default()
    assert config == Config.from_toml("")
    assert config.server_name == "localhost:8448"
    assert config.data_dir == Path("./ranvier-data")
    assert config.listeners == (
        ListenerConfig(type="federation", host="127.0.0.1", port=8448),
        ListenerConfig(type="client", host="127.0.0.1", port=8008),
    )
    assert [listener.uses_tls for listener in config.listeners] == [True, False]
    assert config.database.synchronous == "FULL"
    assert config.federation.verify_certificates is True
    assert config.federation.ca_file is None
    assert config.federation.key_validity_seconds == 24 * 60 * 60
    assert config.federation.request_timeout_seconds > 0
    assert config.federation.max_request_body_bytes >= 50 * 65536
    assert config.federation.destination_retry_seconds == 5.0
    assert config.federation.allow_device_name_lookup_over_federation is False
    assert config.registration == RegistrationConfig(enabled=False, shared_secret=None)
    # argon2-cffi's own defaults (RFC 9106's low-memory choice).
    assert config.registration.password_hash_time_cost == 3
    assert config.registration.password_hash_memory_kib == 64 * 1024
    assert config.registration.password_hash_parallelism == 4
    data = Path("ranvier-data")
    assert config.paths == DataPaths(
        signing_key=data / "signing.key",
        tls_certificate=data / "tls.crt",
        tls_private_key=data / "tls.key",
        database=data / "homeserver.db",
    )


def test_files_follow_the_data_dir() -> None:
    config = Config.from_toml('data_dir = "/srv/hs"')
    assert config.paths == DataPaths(
        signing_key=Path("/srv/hs/signing.key"),
        tls_certificate=Path("/srv/hs/tls.crt"),
        tls_private_key=Path("/srv/hs/tls.key"),
        database=Path("/srv/hs/homeserver.db"),
    )


def test_full_example() -> None:
    config = Config.from_toml(FULL_EXAMPLE)
    assert config == Config(
        server_name="matrix.example.org",
        data_dir=Path("/var/lib/ranvier"),
        signing_key_path=Path("/etc/ranvier/signing.key"),
        tls=TlsConfig(
            certificate_path=Path("/etc/ranvier/fullchain.pem"),
            private_key_path=Path("/etc/ranvier/privkey.pem"),
        ),
        listeners=(
            ListenerConfig(type="federation", host="::", port=8448),
            ListenerConfig(type="federation", host="0.0.0.0", port=8448),
            ListenerConfig(type="client", host="127.0.0.1", port=8008, tls=True),
        ),
        database=DatabaseConfig(path=Path("/srv/ranvier.db"), synchronous="NORMAL"),
        federation=FederationConfig(
            verify_certificates=False,
            ca_file=Path("/etc/ranvier/ca.pem"),
            key_validity_seconds=604800,
            request_timeout_seconds=30.0,
            max_request_body_bytes=1048576,
        ),
    )
    assert config.paths == DataPaths(
        signing_key=Path("/etc/ranvier/signing.key"),
        tls_certificate=Path("/etc/ranvier/fullchain.pem"),
        tls_private_key=Path("/etc/ranvier/privkey.pem"),
        database=Path("/srv/ranvier.db"),
    )
    assert [listener.uses_tls for listener in config.listeners] == [True, True, True]


def test_empty_listener_list_and_free_ports() -> None:
    assert Config.from_toml("listeners = []").listeners == ()
    # Port 0 asks for a free port, so two such listeners do not clash.
    config = Config.from_toml(
        '[[listeners]]\ntype = "federation"\nport = 0\n'
        '[[listeners]]\ntype = "federation"\nport = 0\ntls = false\n'
    )
    assert [(listener.port, listener.uses_tls) for listener in config.listeners] == [
        (0, True),
        (0, False),
    ]


@pytest.mark.parametrize("name", IDENTIFIERS["server_name"]["valid_examples"])
def test_spec_server_names_are_accepted(name: str) -> None:
    assert Config.from_toml(f'server_name = "{name}"').server_name == name


_LISTENER = '[[listeners]]\ntype = "client"\nport = 8008\n'


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (
            '[[listeners]]\ntype = "client"\nport = "8008"',
            "listeners[0].port",
            "listeners[0].port: expected int, got str",
        ),
        (
            _LISTENER + '[[listeners]]\ntype = "client"\nport = 70000',
            "listeners[1].port",
            "listeners[1].port: expected int <= 65535",
        ),
        (
            '[[listeners]]\ntype = "gossip"\nport = 1',
            "listeners[0].type",
            "listeners[0].type: invalid value 'gossip', expected one of 'client', 'federation'",
        ),
        ("[[listeners]]\nport = 1", "listeners[0].type", "listeners[0].type: required key"),
        (
            _LISTENER + "bind = 1",
            "listeners[0].bind",
            "listeners[0].bind: unknown key",
        ),
        (
            '[[listeners]]\ntype = "client"\nport = 1\nhost = "localhost"',
            "listeners[0].host",
            "listeners[0].host: expected an IP address, got 'localhost'",
        ),
        (
            _LISTENER + '[[listeners]]\ntype = "federation"\nhost = "127.0.0.1"\nport = 8008',
            "listeners[1]",
            "listeners[1]: 127.0.0.1 port 8008 is already used by listeners[0]",
        ),
        (
            _LISTENER + 'tls = "yes"',
            "listeners[0].tls",
            "listeners[0].tls: expected bool | null, got str",
        ),
        ("listeners = {}", "listeners", "listeners: expected array, got table"),
        ("server_nmae = 'x'", "server_nmae", "server_nmae: unknown key"),
        (
            'server_name = "matrix_org"',
            "server_name",
            "server_name: server name 'matrix_org' has characters not allowed",
        ),
        (
            'server_name = "matrix.org:0"',
            "server_name",
            "server_name: server name 'matrix.org:0' has port 0",
        ),
        ("server_name = 8448", "server_name", "server_name: expected str, got int"),
        ("data_dir = 1", "data_dir", "data_dir: expected a path (str), got int"),
        (
            "signing_key_path = true",
            "signing_key_path",
            "signing_key_path: expected a path (str), got bool",
        ),
        ("[tls]\ncert = 'x'", "tls.cert", "tls.cert: unknown key"),
        (
            "[tls]\nprivate_key_path = ['x']",
            "tls.private_key_path",
            "tls.private_key_path: expected a path (str), got array",
        ),
        (
            "[database]\nsynchronous = 'FAST'",
            "database.synchronous",
            "database.synchronous: invalid value 'FAST', expected one of",
        ),
        ("database = 3", "database", "database: expected table, got int"),
        (
            "[federation]\nverify_certificates = 'no'",
            "federation.verify_certificates",
            "federation.verify_certificates: expected bool, got str",
        ),
        (
            "[federation]\nkey_validity_seconds = 0",
            "federation.key_validity_seconds",
            "federation.key_validity_seconds: expected int >= 1",
        ),
        (
            "[federation]\nrequest_timeout_seconds = -1.5",
            "federation.request_timeout_seconds",
            "federation.request_timeout_seconds: expected float > 0.0",
        ),
        (
            "[federation]\nmax_request_body_bytes = 1.5",
            "federation.max_request_body_bytes",
            "federation.max_request_body_bytes: expected int, got float",
        ),
        ("[federation]\nca_file = 1", "federation.ca_file", "federation.ca_file: expected a path"),
        (
            "[federation]\ndestination_retry_seconds = 0",
            "federation.destination_retry_seconds",
            "federation.destination_retry_seconds: expected float > 0.0",
        ),
        (
            "[federation]\ndestination_retry_seconds = 86401",
            "federation.destination_retry_seconds",
            "federation.destination_retry_seconds: expected float <= 86400",
        ),
        (
            "[federation]\nallow_device_name_lookup_over_federation = 1",
            "federation.allow_device_name_lookup_over_federation",
            "federation.allow_device_name_lookup_over_federation: expected bool, got int",
        ),
        (
            "[federation]\nsignature_process = 'no'",
            "federation.signature_process",
            "federation.signature_process: expected bool, got str",
        ),
        (
            "[registration]\nenabled = 'yes'",
            "registration.enabled",
            "registration.enabled: expected bool, got str",
        ),
        (
            "[registration]\nshared_secret = ''",
            "registration.shared_secret",
            "registration.shared_secret: must not be empty",
        ),
        (
            "[registration]\npassword_hash_time_cost = 0",
            "registration.password_hash_time_cost",
            "registration.password_hash_time_cost: expected int >= 1",
        ),
        (
            "[registration]\npassword_hash_memory_kib = 16\npassword_hash_parallelism = 4",
            "registration.password_hash_memory_kib",
            "registration.password_hash_memory_kib: must be at least 8 KiB a lane (32",
        ),
        (
            "[ratelimit]\nshadow_ban_delay_seconds = [5.0, 1.0]",
            "ratelimit.shadow_ban_delay_seconds",
            "ratelimit.shadow_ban_delay_seconds: must be [shortest, longest]",
        ),
        (
            "[ratelimit]\nshadow_ban_delay_seconds = [-1.0, 1.0]",
            "ratelimit.shadow_ban_delay_seconds",
            "ratelimit.shadow_ban_delay_seconds: must be [shortest, longest]",
        ),
    ],
)
def test_bad_key_is_named(text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_toml(text)
    assert info.value.key == key
    assert str(info.value).startswith(message)


async def test_the_signature_process_is_on_unless_turned_off() -> None:
    default = HomeServer(Config.from_toml(""))
    assert isinstance(default.signature_process, SignatureProcess)
    # Started at the first batch to check, not with the server.
    assert default.signature_process.pid is None
    off = Config.from_toml("[federation]\nsignature_process = false\n")
    assert off.federation.signature_process is False
    assert HomeServer(off).signature_process is None


def test_device_names_are_shared_over_federation_when_allowed() -> None:
    config = Config.from_toml("[federation]\nallow_device_name_lookup_over_federation = true\n")
    assert config.federation.allow_device_name_lookup_over_federation is True


def test_text_that_is_not_toml() -> None:
    with pytest.raises(ConfigError, match=r"^not valid TOML: .*line 2") as info:
        Config.from_toml("listeners = []\nserver_name = = 'a'\n")
    assert info.value.key is None


def test_checks_hold_when_built_in_code() -> None:
    with pytest.raises(ConfigError, match=r"^server_name: ") as info:
        Config(server_name="bad name")
    assert info.value.key == "server_name"
    with pytest.raises(ConfigError, match=r"^host: expected an IP address"):
        ListenerConfig(type="client", host="example.org", port=1)


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ranvier.toml"
    path.write_text(FULL_EXAMPLE, encoding="utf-8")
    assert load_config(path) == Config.from_toml(FULL_EXAMPLE)

    path.write_text("[database]\nsynchronous = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: database.synchronous: expected str, got int"
    assert info.value.source == str(path)

    path.write_bytes(b"server_name = '\xff'\n")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_config(path)

    with pytest.raises(ConfigError, match="cannot read the file: No such file") as missing:
        load_config(tmp_path / "absent.toml")
    assert str(missing.value).startswith(str(tmp_path / "absent.toml"))


def test_url_preview_address_lists_are_checked_when_loaded() -> None:
    config = Config.from_toml(
        '[media]\nurl_preview_ip_range_allowlist = ["127.0.0.1", "fd00::/8"]\n'
    )
    assert config.media.url_preview_ip_range_allowlist == ("127.0.0.1", "fd00::/8")
    assert "127.0.0.0/8" in Config.default().media.url_preview_ip_range_denylist
    with pytest.raises(ConfigError) as info:
        Config.from_toml('[media]\nurl_preview_ip_range_denylist = ["10.0.0.0/8", "intranet"]\n')
    assert info.value.key == "media.url_preview_ip_range_denylist[1]"
    assert "'intranet'" in info.value.problem


def test_upload_limits_are_a_list_of_windows_and_none_by_default() -> None:
    assert Config.default().media.upload_limits == ()
    config = Config.from_toml(
        "[media]\nupload_limits = [\n"
        "  { period_seconds = 3600, max_bytes = 104857600 },\n"
        "  { period_seconds = 86400, max_bytes = 524288000 },\n"
        "]\n"
    )
    assert config.media.upload_limits == (
        UploadLimit(period_seconds=3600, max_bytes=104_857_600),
        UploadLimit(period_seconds=86_400, max_bytes=524_288_000),
    )


@pytest.mark.parametrize(
    ("entries", "key", "problem"),
    [
        ("{ period_seconds = 3600, max_bytes = 0 }", "media.upload_limits[0].max_bytes", ">= 1"),
        (
            "{ period_seconds = 60, max_bytes = 1 }, { period_seconds = -5, max_bytes = 1 }",
            "media.upload_limits[1].period_seconds",
            ">= 1",
        ),
        (
            "{ period_seconds = 60, max_bytes = 1, max_files = 3 }",
            "media.upload_limits[0].max_files",
            "unknown key",
        ),
        ("{ period_seconds = 60 }", "media.upload_limits[0].max_bytes", "missing"),
        (
            "{ period_seconds = '1h', max_bytes = 1 }",
            "media.upload_limits[0].period_seconds",
            "str",
        ),
    ],
)
def test_a_bad_upload_limit_is_refused_by_its_key(entries: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_toml(f"[media]\nupload_limits = [{entries}]\n")
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert problem in info.value.problem
