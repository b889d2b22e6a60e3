"""``/.well-known/matrix/{client,support,server}`` as ``[well_known]`` configures them."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from ranvier.config import Config, ConfigError, SupportContact, WellKnownConfig
from ranvier.testing.homeserver import TestHomeserver, config_for_tests, open_test_homeserver
from ranvier.testing.network import Pki

CONFIGURED = WellKnownConfig(
    client_base_url="https://matrix.example.org",
    identity_server_base_url="https://id.example.org",
    client_extra={"org.matrix.msc4143.rtc_foci": [{"type": "livekit"}]},
    server="matrix.example.org:443",
    support_page="https://example.org/help",
    support_contacts=(
        SupportContact(role="m.role.admin", matrix_id="@admin:example.org"),
        SupportContact(role="m.role.security", email_address="security@example.org"),
    ),
)


async def _get(base_url: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, **kwargs) as http:
        return await http.get(f"/.well-known/matrix/{path}")


def _config(tmp_path: Path, well_known: WellKnownConfig, pki: Pki | None = None) -> Config:
    return msgspec.structs.replace(
        config_for_tests(tmp_path / "hs", federation=pki), well_known=well_known
    )


async def test_the_configured_files_are_served(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path, config=_config(tmp_path, CONFIGURED)) as hs:
        client = await _get(hs.client_url, "client")
        assert client.status_code == 200
        assert client.json() == {
            "m.homeserver": {"base_url": "https://matrix.example.org"},
            "m.identity_server": {"base_url": "https://id.example.org"},
            "org.matrix.msc4143.rtc_foci": [{"type": "livekit"}],
        }
        # Browsers' clients read it from another origin.
        assert client.headers["access-control-allow-origin"] == "*"
        assert client.headers["cache-control"] == "max-age=3600"
        support = await _get(hs.client_url, "support")
        assert support.json() == {
            "contacts": [
                {"role": "m.role.admin", "matrix_id": "@admin:example.org"},
                {"role": "m.role.security", "email_address": "security@example.org"},
            ],
            "support_page": "https://example.org/help",
        }
        server = await _get(hs.client_url, "server")
        assert server.json() == {"m.server": "matrix.example.org:443"}


async def test_the_server_file_is_served_on_federation_listeners(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    config = _config(tmp_path, CONFIGURED, pki)
    ca = ssl.create_default_context(cafile=str(pki.ca_file))
    async with open_test_homeserver(tmp_path, config=config) as hs:
        answer = await _get(hs.federation_url, "server", verify=ca)
        assert answer.status_code == 200
        assert answer.json() == {"m.server": "matrix.example.org:443"}
        # The client files are the client listeners' alone.
        client = await _get(hs.federation_url, "client", verify=ca)
        assert client.status_code == 404


async def _unconfigured(hs: TestHomeserver, name: str) -> None:
    answer = await _get(hs.client_url, name)
    assert answer.status_code == 404
    assert answer.json()["errcode"] == "M_NOT_FOUND"
    assert name in answer.json()["error"]


async def test_nothing_configured_is_404(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs:
        for name in ("client", "support", "server"):
            await _unconfigured(hs, name)


async def test_support_with_a_page_alone(tmp_path: Path) -> None:
    config = _config(tmp_path, WellKnownConfig(support_page="https://example.org/help"))
    async with open_test_homeserver(tmp_path, config=config) as hs:
        answer = await _get(hs.client_url, "support")
        assert answer.json() == {"support_page": "https://example.org/help"}
        await _unconfigured(hs, "client")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('client_base_url = "matrix.example.org"', "well_known.client_base_url"),
        ('support_page = "javascript:alert(1)"', "well_known.support_page"),
        ('server = "bad host!"', "well_known.server"),
        (
            'client_base_url = "https://a.example"\nclient_extra = { "m.homeserver" = 1 }',
            "well_known.client_extra.m.homeserver",
        ),
        ('client_extra = { "org.example.x" = 1 }', "well_known.client_extra"),
        ('[[well_known.support_contacts]]\nrole = "m.role.admin"', "matrix_id"),
        (
            '[[well_known.support_contacts]]\nrole = "admin"\nmatrix_id = "@a:example.org"',
            "well_known.support_contacts[0].role",
        ),
        (
            '[[well_known.support_contacts]]\nrole = "m.role.admin"\nmatrix_id = "admin"',
            "well_known.support_contacts[0].matrix_id",
        ),
    ],
)
def test_a_bad_setting_names_its_key(toml: str, key: str) -> None:
    text = toml if toml.startswith("[[") else f"[well_known]\n{toml}"
    with pytest.raises(ConfigError) as caught:
        Config.from_toml(text)
    assert key in str(caught.value)
