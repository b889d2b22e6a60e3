"""Single sign-on's pure parts: localparts made from username claims, the
client URLs taken, and the providers' settings."""

from __future__ import annotations

import pytest

from ranvier.config import Config, ConfigError, OidcProviderConfig
from ranvier.core.sso import check_client_redirect, sanitise_localpart
from ranvier.errors import MatrixError

_PROVIDER = {
    "idp_id": "corp",
    "idp_name": "Corp",
    "issuer": "https://id.corp.example",
    "client_id": "c",
    "client_secret": "s",
}


@pytest.mark.parametrize(
    ("claim", "localpart"),
    [
        ("alice", "alice"),
        ("Alice.Smith", "alice.smith"),
        ("a b", "a=20b"),
        ("zoë", "zo=c3=ab"),
        ("a=b", "a=3db"),
        ("x_y-z/+", "x_y-z/+"),
    ],
)
def test_a_claim_becomes_a_localpart(claim: str, localpart: str) -> None:
    assert sanitise_localpart(claim) == localpart


def test_different_claims_give_different_localparts() -> None:
    # "=" itself is escaped, so no claim can spell another's escape.
    assert sanitise_localpart("a b") != sanitise_localpart("a=20b")


def test_client_urls_are_http_with_a_host() -> None:
    assert check_client_redirect("https://app.example:8080/x?y=1") == "app.example"
    for bad in ("javascript:alert(1)", "data:text/html,x", "//app.example", "http://"):
        with pytest.raises(MatrixError) as raised:
            check_client_redirect(bad)
        assert raised.value.errcode == "M_INVALID_PARAM"


def test_a_provider_needs_the_client_base_url() -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_mapping({"oidc_providers": [_PROVIDER]})
    assert raised.value.key == "well_known.client_base_url"
    config = Config.from_mapping(
        {"oidc_providers": [_PROVIDER], "well_known": {"client_base_url": "https://m.example"}}
    )
    assert config.oidc_providers[0].scopes == ("openid", "profile")
    assert config.oidc_providers[0].localpart_claim == "preferred_username"
    assert config.oidc_providers[0].allow_existing_users is False
    assert config.oidc_providers[0].displayname_claim == "name"
    assert config.oidc_providers[0].user_profile_method == "auto"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"issuer": "http://id.corp.example"}, "issuer"),
        ({"idp_id": "has space"}, "idp_id"),
        ({"scopes": ["profile"]}, "scopes"),
        ({"user_profile_method": "id_token"}, "user_profile_method"),
    ],
)
def test_bad_provider_settings_are_refused(change: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_mapping(
            {
                "oidc_providers": [{**_PROVIDER, **change}],
                "well_known": {"client_base_url": "https://m.example"},
            }
        )
    assert raised.value.key == f"oidc_providers[0].{key}"


def test_two_providers_may_not_share_an_id() -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_mapping(
            {
                "oidc_providers": [_PROVIDER, _PROVIDER],
                "well_known": {"client_base_url": "https://m.example"},
            }
        )
    assert raised.value.key == "oidc_providers"


def test_a_provider_is_built_from_keywords() -> None:
    provider = OidcProviderConfig(**_PROVIDER)  # type: ignore[arg-type]
    assert provider.client_auth_method == "client_secret_basic"


def test_a_provider_built_from_keywords_checks_its_profile_method() -> None:
    with pytest.raises(ConfigError) as raised:
        OidcProviderConfig(**{**_PROVIDER, "user_profile_method": "id_token"})  # type: ignore[arg-type]
    assert raised.value.key == "user_profile_method"
